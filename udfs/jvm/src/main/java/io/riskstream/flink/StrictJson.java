package io.riskstream.flink;

import java.math.BigInteger;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * A strict JSON reader with orjson's semantics (the Python reference, udfs/events.py, parses with orjson):
 * RFC 8259 grammar only (no NaN/Infinity, comments, trailing commas, BOM, leading zeros or '+'); whitespace is
 * space, tab, LF and CR; duplicate keys: the last value wins (at the first key's position, like a Python
 * dict); at most {@link #MAX_PARSE_DEPTH} nested containers; lone surrogate escapes refused; integers in
 * [-2^63, 2^64-1] are integers (a {@link Long}, or a {@link BigInteger} above Long.MAX_VALUE), other
 * integers and all numbers with a fraction or exponent are {@link Double}s, refused if they overflow to
 * infinity. The input must already be valid UTF-8 (the parser checks that first, as parse_event does).
 *
 * <p>Values: String, Long, BigInteger, Double, Boolean, {@link #NULL}, LinkedHashMap, ArrayList.
 */
final class StrictJson {
    /** JSON null (a Java null would be ambiguous with an absent key). */
    static final Object NULL = new Object() {
        @Override
        public String toString() {
            return "null";
        }
    };

    /** orjson parses at most this many nested containers. */
    static final int MAX_PARSE_DEPTH = 1024;
    /** orjson serialises at most this many nested containers. */
    static final int MAX_ENCODE_DEPTH = 254;

    private static final BigInteger U64_MAX = BigInteger.ONE.shiftLeft(64).subtract(BigInteger.ONE);

    /** Why a document is not JSON (no stack trace: bad input is data, not a bug). */
    static final class Fail extends Exception {
        private static final long serialVersionUID = 1L;

        Fail(String message, int pos) {
            super(message + " at byte " + pos, null, false, false);
        }
    }

    private static final byte[][] NO_KEYS = new byte[0][];
    private static final String[] NO_KEY_STRINGS = new String[0];

    private final byte[] b;
    private final int end;
    private final byte[][] keyBytes;
    private final String[] keyStrings;
    private int pos;
    private int depth;

    private StrictJson(byte[] b, byte[][] keyBytes, String[] keyStrings) {
        this.b = b;
        this.end = b.length;
        this.keyBytes = keyBytes;
        this.keyStrings = keyStrings;
    }

    /** The ASCII keys {@link #parse(byte[], byte[][], String[])} hands out as shared String instances. */
    static byte[][] keyBytes(String[] keys) {
        byte[][] out = new byte[keys.length][];
        for (int i = 0; i < keys.length; i++) {
            out[i] = keys[i].getBytes(StandardCharsets.UTF_8);
        }
        return out;
    }

    /** The document's value; throws {@link Fail} on anything orjson refuses. */
    static Object parse(byte[] b) throws Fail {
        return parse(b, NO_KEYS, NO_KEY_STRINGS);
    }

    /** As {@link #parse(byte[])}; object keys spelled (unescaped) like one of {@code keyStrings} come back as
     * that instance (no copy, its hash already known): the contract's field names. */
    static Object parse(byte[] b, byte[][] keyBytes, String[] keyStrings) throws Fail {
        StrictJson r = new StrictJson(b, keyBytes, keyStrings);
        r.skipWs();
        Object v = r.value();
        r.skipWs();
        if (r.pos != r.end) {
            throw new Fail("trailing characters", r.pos);
        }
        return v;
    }

    static Object parse(String s) throws Fail {
        return parse(s.getBytes(StandardCharsets.UTF_8));
    }

    private void skipWs() {
        while (pos < end) {
            byte c = b[pos];
            if (c == ' ' || c == '\n' || c == '\r' || c == '\t') {
                pos++;
            } else {
                return;
            }
        }
    }

    private Object value() throws Fail {
        if (pos >= end) {
            throw new Fail("unexpected end of data", pos);
        }
        byte c = b[pos];
        switch (c) {
            case '{':
                return object();
            case '[':
                return array();
            case '"':
                return string();
            case 't':
                literal("true");
                return Boolean.TRUE;
            case 'f':
                literal("false");
                return Boolean.FALSE;
            case 'n':
                literal("null");
                return NULL;
            default:
                if (c == '-' || (c >= '0' && c <= '9')) {
                    return number();
                }
                throw new Fail("unexpected character", pos);
        }
    }

    private void literal(String word) throws Fail {
        int n = word.length();
        if (pos + n > end) {
            throw new Fail("unexpected end of data", pos);
        }
        for (int i = 0; i < n; i++) {
            if (b[pos + i] != word.charAt(i)) {
                throw new Fail("invalid literal", pos);
            }
        }
        pos += n;
    }

    private void enter() throws Fail {
        if (++depth > MAX_PARSE_DEPTH) {
            throw new Fail("depth limit exceeded", pos);
        }
    }

    private Map<String, Object> object() throws Fail {
        enter();
        pos++; // '{'
        LinkedHashMap<String, Object> m = new LinkedHashMap<>();
        skipWs();
        if (pos < end && b[pos] == '}') {
            pos++;
            depth--;
            return m;
        }
        while (true) {
            if (pos >= end) {
                throw new Fail("unexpected end of data", pos);
            }
            if (b[pos] != '"') {
                throw new Fail("expected a string key", pos);
            }
            String key = knownKey();
            if (key == null) {
                key = string();
            }
            skipWs();
            if (pos >= end || b[pos] != ':') {
                throw new Fail("expected ':'", pos);
            }
            pos++;
            skipWs();
            m.put(key, value()); // a duplicate key keeps its first position and takes the last value
            skipWs();
            if (pos >= end) {
                throw new Fail("unexpected end of data", pos);
            }
            byte c = b[pos++];
            if (c == '}') {
                depth--;
                return m;
            }
            if (c != ',') {
                throw new Fail("expected ',' or '}'", pos - 1);
            }
            skipWs();
        }
    }

    private List<Object> array() throws Fail {
        enter();
        pos++; // '['
        ArrayList<Object> a = new ArrayList<>();
        skipWs();
        if (pos < end && b[pos] == ']') {
            pos++;
            depth--;
            return a;
        }
        while (true) {
            a.add(value());
            skipWs();
            if (pos >= end) {
                throw new Fail("unexpected end of data", pos);
            }
            byte c = b[pos++];
            if (c == ']') {
                depth--;
                return a;
            }
            if (c != ',') {
                throw new Fail("expected ',' or ']'", pos - 1);
            }
            skipWs();
        }
    }

    /** A key equal to one of keyStrings (pos at its opening quote), or null (pos unchanged). */
    private String knownKey() {
        int start = pos + 1;
        for (int k = 0; k < keyBytes.length; k++) {
            byte[] kb = keyBytes[k];
            int close = start + kb.length;
            if (close < end && b[close] == '"' && Arrays.equals(b, start, close, kb, 0, kb.length)) {
                pos = close + 1;
                return keyStrings[k];
            }
        }
        return null;
    }

    private String string() throws Fail {
        int start = ++pos; // after '"'
        boolean ascii = true;
        while (pos < end) {
            int c = b[pos] & 0xFF;
            if (c == '"') {
                String s = new String(b, start, pos - start,
                        ascii ? StandardCharsets.ISO_8859_1 : StandardCharsets.UTF_8);
                pos++;
                return s;
            }
            if (c == '\\') {
                return escaped(start);
            }
            if (c < 0x20) {
                throw new Fail("control character in string", pos);
            }
            if (c >= 0x80) {
                ascii = false;
            }
            pos++;
        }
        throw new Fail("unterminated string", start - 1);
    }

    /** The rest of a string with escapes; pos is at the first backslash, start at the first character. */
    private String escaped(int start) throws Fail {
        StringBuilder sb = new StringBuilder(pos - start + 16);
        sb.append(new String(b, start, pos - start, StandardCharsets.UTF_8));
        while (pos < end) {
            int c = b[pos] & 0xFF;
            if (c == '"') {
                pos++;
                return sb.toString();
            }
            if (c < 0x20) {
                throw new Fail("control character in string", pos);
            }
            if (c != '\\') {
                int run = pos;
                while (pos < end) {
                    int d = b[pos] & 0xFF;
                    if (d == '"' || d == '\\' || d < 0x20) {
                        break;
                    }
                    pos++;
                }
                sb.append(new String(b, run, pos - run, StandardCharsets.UTF_8));
                continue;
            }
            if (pos + 1 >= end) {
                throw new Fail("unterminated escape", pos);
            }
            byte e = b[pos + 1];
            pos += 2;
            switch (e) {
                case '"': sb.append('"'); break;
                case '\\': sb.append('\\'); break;
                case '/': sb.append('/'); break;
                case 'b': sb.append('\b'); break;
                case 'f': sb.append('\f'); break;
                case 'n': sb.append('\n'); break;
                case 'r': sb.append('\r'); break;
                case 't': sb.append('\t'); break;
                case 'u': {
                    int u = hex4();
                    if (u >= 0xD800 && u <= 0xDBFF) {
                        if (pos + 1 < end && b[pos] == '\\' && b[pos + 1] == 'u') {
                            pos += 2;
                            int lo = hex4();
                            if (lo < 0xDC00 || lo > 0xDFFF) {
                                throw new Fail("lone surrogate escape", pos - 6);
                            }
                            sb.append((char) u).append((char) lo);
                        } else {
                            throw new Fail("lone surrogate escape", pos - 6);
                        }
                    } else if (u >= 0xDC00 && u <= 0xDFFF) {
                        throw new Fail("lone surrogate escape", pos - 6);
                    } else {
                        sb.append((char) u);
                    }
                    break;
                }
                default:
                    throw new Fail("invalid escape", pos - 2);
            }
        }
        throw new Fail("unterminated string", start - 1);
    }

    private int hex4() throws Fail {
        if (pos + 4 > end) {
            throw new Fail("truncated \\u escape", pos);
        }
        int v = 0;
        for (int i = 0; i < 4; i++) {
            int c = b[pos + i];
            int d;
            if (c >= '0' && c <= '9') {
                d = c - '0';
            } else if (c >= 'a' && c <= 'f') {
                d = c - 'a' + 10;
            } else if (c >= 'A' && c <= 'F') {
                d = c - 'A' + 10;
            } else {
                throw new Fail("invalid \\u escape", pos + i);
            }
            v = (v << 4) | d;
        }
        pos += 4;
        return v;
    }

    private Object number() throws Fail {
        int start = pos;
        boolean neg = false;
        if (b[pos] == '-') {
            neg = true;
            pos++;
        }
        int intStart = pos;
        if (pos >= end) {
            throw new Fail("invalid number", start);
        }
        if (b[pos] == '0') {
            pos++;
        } else if (b[pos] >= '1' && b[pos] <= '9') {
            while (pos < end && b[pos] >= '0' && b[pos] <= '9') {
                pos++;
            }
        } else {
            throw new Fail("invalid number", start);
        }
        int intDigits = pos - intStart;
        boolean isFloat = false;
        if (pos < end && b[pos] == '.') {
            pos++;
            int f = pos;
            while (pos < end && b[pos] >= '0' && b[pos] <= '9') {
                pos++;
            }
            if (pos == f) {
                throw new Fail("invalid number", start);
            }
            isFloat = true;
        }
        if (pos < end && (b[pos] == 'e' || b[pos] == 'E')) {
            pos++;
            if (pos < end && (b[pos] == '+' || b[pos] == '-')) {
                pos++;
            }
            int x = pos;
            while (pos < end && b[pos] >= '0' && b[pos] <= '9') {
                pos++;
            }
            if (pos == x) {
                throw new Fail("invalid number", start);
            }
            isFloat = true;
        }
        if (!isFloat) {
            if (intDigits <= 18) {
                long v = 0;
                for (int i = intStart; i < pos; i++) {
                    v = v * 10 + (b[i] - '0');
                }
                return neg ? -v : v;
            }
            String text = new String(b, start, pos - start, StandardCharsets.ISO_8859_1);
            if (intDigits <= 20) {
                BigInteger big = new BigInteger(text);
                if (big.bitLength() < 64) {
                    return big.longValue(); // covers -2^63 too (bitLength 63)
                }
                if (!neg && big.compareTo(U64_MAX) <= 0) {
                    return big;
                }
            }
            return finite(Double.parseDouble(text), start); // outside 64 bits: a float, as orjson reads it
        }
        return finite(Double.parseDouble(new String(b, start, pos - start, StandardCharsets.ISO_8859_1)), start);
    }

    private static Double finite(double d, int at) throws Fail {
        if (Double.isInfinite(d)) {
            throw new Fail("number out of range", at);
        }
        return d;
    }

    // -- writing -------------------------------------------------------------------------------------------

    /** Nesting depth of a value: 0 for a scalar, 1 + the deepest member for a container. */
    static int depth(Object v, int cap) {
        if (cap <= 0) {
            return 0;
        }
        int d = 0;
        if (v instanceof Map) {
            for (Object x : ((Map<?, ?>) v).values()) {
                d = Math.max(d, depth(x, cap - 1));
            }
            return d + 1;
        }
        if (v instanceof List) {
            for (Object x : (List<?>) v) {
                d = Math.max(d, depth(x, cap - 1));
            }
            return d + 1;
        }
        return 0;
    }

    /** Compact JSON (orjson.dumps's separators and string escapes; floats in Java's round-trip form). */
    static void write(StringBuilder sb, Object v) {
        if (v instanceof String) {
            writeString(sb, (String) v, false);
        } else if (v instanceof Map) {
            sb.append('{');
            boolean first = true;
            for (Map.Entry<?, ?> e : ((Map<?, ?>) v).entrySet()) {
                if (!first) {
                    sb.append(',');
                }
                first = false;
                writeString(sb, (String) e.getKey(), false);
                sb.append(':');
                write(sb, e.getValue());
            }
            sb.append('}');
        } else if (v instanceof List) {
            sb.append('[');
            boolean first = true;
            for (Object x : (List<?>) v) {
                if (!first) {
                    sb.append(',');
                }
                first = false;
                write(sb, x);
            }
            sb.append(']');
        } else if (v instanceof Double) {
            double d = (Double) v;
            if (Double.isNaN(d) || Double.isInfinite(d)) {
                sb.append("null"); // cannot come from a parse (orjson refuses them); keep the output JSON
            } else {
                sb.append(Double.toString(d));
            }
        } else if (v == null || v == NULL) {
            sb.append("null");
        } else {
            sb.append(v); // Long, BigInteger, Boolean
        }
    }

    /** A JSON string; {@code asciiOnly} escapes everything outside ASCII as \\uXXXX (UTF-16 units). */
    static void writeString(StringBuilder sb, String s, boolean asciiOnly) {
        sb.append('"');
        for (int i = 0, n = s.length(); i < n; i++) {
            char c = s.charAt(i);
            switch (c) {
                case '"': sb.append("\\\""); break;
                case '\\': sb.append("\\\\"); break;
                case '\n': sb.append("\\n"); break;
                case '\r': sb.append("\\r"); break;
                case '\t': sb.append("\\t"); break;
                case '\b': sb.append("\\b"); break;
                case '\f': sb.append("\\f"); break;
                default:
                    if (c < 0x20 || (asciiOnly && c > 0x7E)) {
                        sb.append("\\u");
                        String h = Integer.toHexString(c);
                        for (int k = h.length(); k < 4; k++) {
                            sb.append('0');
                        }
                        sb.append(h);
                    } else {
                        sb.append(c);
                    }
            }
        }
        sb.append('"');
    }
}
