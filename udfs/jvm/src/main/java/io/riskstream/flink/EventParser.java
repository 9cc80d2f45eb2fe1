package io.riskstream.flink;

import java.io.Serializable;
import java.math.BigInteger;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Collections;
import java.util.HashMap;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;

import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.api.java.typeutils.RowTypeInfo;
import org.apache.flink.types.Row;

/**
 * The event contract's validating parser, in the JVM: the same reason codes as the Python reference
 * {@code udfs.events.parse_event} (which stays the definition), checked in the same order. Pure: bytes in,
 * a typed {@link Row} (the stage record of {@code udfs.chain.ROW_FIELDS}) or a rejection out; never throws.
 *
 * <p>The contract's constants come from Python ({@code udfs.events.contract_json()}), the Row layout from
 * {@code udfs.chain.ROW_FIELDS} (a JSON list of [name, type]), so neither is restated here. JSON is read by
 * {@link StrictJson} with orjson's semantics; "blank" and "length" are Python's ({@code str.strip()}
 * whitespace, code points).
 */
public final class EventParser implements Serializable {
    private static final long serialVersionUID = 1L;

    public static final String OVERSIZED = "oversized";
    public static final String INVALID_UTF8 = "invalid_utf8";
    public static final String INVALID_JSON = "invalid_json";
    public static final String NOT_AN_OBJECT = "not_an_object";
    public static final String MISSING_FIELD = "missing_field";
    public static final String UNKNOWN_FIELD = "unknown_field";
    public static final String WRONG_TYPE = "wrong_type";
    public static final String NULL_KEY = "null_key";
    public static final String UNKNOWN_EVENT_TYPE = "unknown_event_type";
    public static final String INVALID_AMOUNT = "invalid_amount";
    public static final String INVALID_CURRENCY = "invalid_currency";
    public static final String INVALID_TS = "invalid_ts";
    public static final String PROCESSING_ERROR = "processing_error";

    /** Python's str.isspace() code points (what str.strip() removes). */
    private static final int[] PY_WHITESPACE = {0x9, 0xA, 0xB, 0xC, 0xD, 0x1C, 0x1D, 0x1E, 0x1F, 0x20, 0x85,
        0xA0, 0x1680, 0x2000, 0x2001, 0x2002, 0x2003, 0x2004, 0x2005, 0x2006, 0x2007, 0x2008, 0x2009, 0x200A,
        0x2028, 0x2029, 0x202F, 0x205F, 0x3000};
    private static final double[] NO_VALUES = new double[0];
    private static final String[] ID_FIELDS = {"event_id", "user_id", "device_id"};

    /** A parse outcome: {@link #row} for an event, else {@link #reason} and {@link #detail}. */
    public static final class Result {
        public final Row row;
        public final String reason;
        public final String detail;

        Result(Row row, String reason, String detail) {
            this.row = row;
            this.reason = reason;
            this.detail = detail;
        }

        public boolean isEvent() {
            return row != null;
        }

        public Row getRow() {
            return row;
        }

        public String getReason() {
            return reason;
        }

        public String getDetail() {
            return detail;
        }
    }

    private final Set<String> eventTypes;
    private final String[] required;
    private final Set<String> known;
    private final String[] optionalNames;
    private final List<Set<String>> optionalTypes; // null entry: any event type
    private final String[] optionalReasons;
    private final int maxEventBytes;
    private final int maxIdLen;
    private final int maxIpLen;
    private final long minTs;
    private final long maxTs;
    private final double maxAmount;
    private final String[] keyStrings; // the known fields, shared by every parse
    private final byte[][] keyBytes;
    private final String[] rowNames;
    private final String[] rowTypes;
    // where each Row position takes its value from: the index into the validated values (see parse), or
    // -1 values (empty), -2 late (false), -3 null
    private final int[] rowSource;

    /**
     * @param contractJson {@code udfs.events.contract_json()}
     * @param layoutJson the Row layout, a JSON list of [name, type] ({@code udfs.chain.ROW_FIELDS})
     */
    @SuppressWarnings("unchecked")
    public EventParser(String contractJson, String layoutJson) {
        Map<String, Object> c;
        List<Object> layout;
        try {
            c = (Map<String, Object>) StrictJson.parse(contractJson);
            layout = (List<Object>) StrictJson.parse(layoutJson);
        } catch (StrictJson.Fail e) {
            throw new IllegalArgumentException("contract or layout is not JSON: " + e.getMessage(), e);
        }
        eventTypes = new HashSet<>(strings(c.get("event_types")));
        required = strings(c.get("required_fields")).toArray(new String[0]);
        Map<String, Object> opt = (Map<String, Object>) c.get("optional_keys");
        optionalNames = opt.keySet().toArray(new String[0]);
        optionalTypes = new ArrayList<>();
        optionalReasons = new String[optionalNames.length];
        for (int i = 0; i < optionalNames.length; i++) {
            Object types = opt.get(optionalNames[i]);
            optionalTypes.add(types == StrictJson.NULL ? null : new HashSet<>(strings(types)));
            optionalReasons[i] = "invalid_" + optionalNames[i];
        }
        known = new HashSet<>();
        Collections.addAll(known, required);
        known.add("extras");
        Collections.addAll(known, optionalNames);
        keyStrings = known.toArray(new String[0]);
        keyBytes = StrictJson.keyBytes(keyStrings);
        maxEventBytes = ((Number) c.get("max_event_bytes")).intValue();
        maxIdLen = ((Number) c.get("max_id_len")).intValue();
        maxIpLen = ((Number) c.get("max_ip_len")).intValue();
        minTs = ((Number) c.get("min_ts_ms")).longValue();
        maxTs = ((Number) c.get("max_ts_ms")).longValue();
        maxAmount = ((Number) c.get("max_amount")).doubleValue();
        for (String f : new String[] {"event_id", "event_type", "user_id", "device_id", "ip", "amount",
            "currency", "ts"}) {
            if (!known.contains(f)) {
                throw new IllegalArgumentException("the contract lacks the field " + f);
            }
        }

        int n = layout.size();
        rowNames = new String[n];
        rowTypes = new String[n];
        rowSource = new int[n];
        Map<String, Integer> slot = slots();
        for (int i = 0; i < n; i++) {
            List<Object> f = (List<Object>) layout.get(i);
            rowNames[i] = (String) f.get(0);
            rowTypes[i] = (String) f.get(1);
            Integer s = slot.get(rowNames[i]);
            if (s != null) {
                rowSource[i] = s;
            } else if (rowNames[i].equals("values")) {
                rowSource[i] = -1;
            } else if (rowNames[i].equals("late")) {
                rowSource[i] = -2;
            } else {
                rowSource[i] = -3;
            }
        }
    }

    /** Validated values by name: the required fields, extras, then the optional keys. */
    private Map<String, Integer> slots() {
        Map<String, Integer> slot = new HashMap<>();
        for (String f : required) {
            slot.put(f, slot.size());
        }
        slot.put("extras", slot.size());
        for (String f : optionalNames) {
            slot.put(f, slot.size());
        }
        return slot;
    }

    private static List<String> strings(Object list) {
        List<String> out = new ArrayList<>();
        for (Object o : (List<?>) list) {
            out.add((String) o);
        }
        return out;
    }

    /** The Row position of a layout field, or -1 when the layout has no such field. */
    public int fieldIndex(String name) {
        for (int i = 0; i < rowNames.length; i++) {
            if (rowNames[i].equals(name)) {
                return i;
            }
        }
        return -1;
    }

    /** The Flink type of the Row this parser emits. */
    public RowTypeInfo rowTypeInfo() {
        TypeInformation<?>[] types = new TypeInformation<?>[rowTypes.length];
        for (int i = 0; i < types.length; i++) {
            types[i] = flinkType(rowTypes[i]);
        }
        return new RowTypeInfo(types, rowNames.clone());
    }

    static TypeInformation<?> flinkType(String t) {
        switch (t) {
            case "STRING":
            case "JSON": // extras travel as their JSON text
                return Types.STRING;
            case "DOUBLE":
                return Types.DOUBLE;
            case "BIGINT":
                return Types.LONG;
            case "BOOLEAN":
                return Types.BOOLEAN;
            case "DOUBLE[]":
                return Types.PRIMITIVE_ARRAY(Types.DOUBLE);
            case "BYTES": // the graph context (null from the parser: the user stage starts it)
                return Types.PRIMITIVE_ARRAY(Types.BYTE);
            default:
                throw new IllegalArgumentException("unknown Row field type " + t);
        }
    }

    private static Result reject(String reason, String detail) {
        return new Result(null, reason, detail);
    }

    /** Validate one record's bytes (never throws, like parse_event). */
    public Result parse(byte[] raw) {
        try {
            return parseUnchecked(raw == null ? new byte[0] : raw);
        } catch (RuntimeException | StackOverflowError e) { // a bug, not bad input: still a verdict
            return reject(PROCESSING_ERROR, truncate("parse: " + e, 200));
        }
    }

    @SuppressWarnings("unchecked")
    private Result parseUnchecked(byte[] raw) {
        if (raw.length > maxEventBytes) {
            return reject(OVERSIZED, raw.length + " bytes > " + maxEventBytes);
        }
        int bad = firstInvalidUtf8(raw);
        if (bad >= 0) {
            return reject(INVALID_UTF8, "invalid UTF-8 at byte " + bad);
        }
        Object top;
        try {
            top = StrictJson.parse(raw, keyBytes, keyStrings);
        } catch (StrictJson.Fail e) {
            return reject(INVALID_JSON, e.getMessage());
        }
        if (!(top instanceof Map)) {
            return reject(NOT_AN_OBJECT, "top level is " + pyType(top) + ", not an object");
        }
        Map<String, Object> obj = (Map<String, Object>) top;
        for (String name : required) {
            if (!obj.containsKey(name)) {
                return reject(MISSING_FIELD, name);
            }
        }
        List<String> extra = null;
        for (String k : obj.keySet()) {
            if (!known.contains(k)) {
                if (extra == null) {
                    extra = new ArrayList<>();
                }
                extra.add(k);
            }
        }
        if (extra != null) {
            Collections.sort(extra);
            return reject(UNKNOWN_FIELD, truncate(String.join(",", extra), 200)
                    + " (put free-form data under 'extras')");
        }
        for (String name : ID_FIELDS) {
            Result r = checkId(obj, name, maxIdLen);
            if (r != null) {
                return r;
            }
        }
        Object et = obj.get("event_type");
        if (!(et instanceof String)) {
            return reject(WRONG_TYPE, "event_type must be a string, got " + pyType(et));
        }
        if (!eventTypes.contains(et)) {
            return reject(UNKNOWN_EVENT_TYPE, truncate((String) et, 64));
        }
        Result r = checkId(obj, "ip", maxIdLen);
        if (r != null) {
            return r;
        }
        if (codePoints((String) obj.get("ip")) > maxIpLen) {
            return reject(WRONG_TYPE, "ip longer than " + maxIpLen + " characters");
        }
        Object a = obj.get("amount");
        double amount;
        if (a instanceof Long) {
            amount = (double) (Long) a; // float(int): an integer zero is +0.0
        } else if (a instanceof BigInteger) {
            amount = ((BigInteger) a).doubleValue(); // correctly rounded, like Python's float(int)
        } else if (a instanceof Double) {
            amount = (Double) a; // keeps -0.0, as Python does
        } else {
            return reject(WRONG_TYPE, "amount must be a number, got " + pyType(a));
        }
        if (!Double.isFinite(amount) || amount < 0 || amount > maxAmount) {
            return reject(INVALID_AMOUNT, "amount " + amount + " not in [0, " + maxAmount + "]");
        }
        Object cur = obj.get("currency");
        if (!(cur instanceof String)) {
            return reject(WRONG_TYPE, "currency must be a string, got " + pyType(cur));
        }
        if (!isCurrencyCode((String) cur)) {
            return reject(INVALID_CURRENCY, "currency " + truncate((String) cur, 16) + " is not an ISO 4217 code");
        }
        Object t = obj.get("ts");
        long ts;
        if (t instanceof Long) {
            ts = (Long) t;
        } else if (t instanceof BigInteger) { // above 2^63 - 1: an integer, but past any bound
            return reject(INVALID_TS, "ts " + t + " outside [" + minTs + ", " + maxTs + ") epoch ms");
        } else {
            return reject(WRONG_TYPE, "ts must be an integer (epoch ms), got " + pyType(t));
        }
        if (ts < minTs || ts >= maxTs) {
            return reject(INVALID_TS, "ts " + ts + " outside [" + minTs + ", " + maxTs + ") epoch ms");
        }
        Object extras = obj.get("extras");
        if (extras == StrictJson.NULL) {
            extras = null;
        }
        if (extras != null && !(extras instanceof Map)) {
            return reject(WRONG_TYPE, "extras must be an object");
        }
        Object[] vals = new Object[required.length + 1 + optionalNames.length];
        for (int i = 0; i < optionalNames.length; i++) {
            String name = optionalNames[i];
            Object v = obj.get(name);
            if (v == null || v == StrictJson.NULL) {
                continue;
            }
            if (!(v instanceof String) || isBlank((String) v) || codePoints((String) v) > maxIdLen) {
                return reject(optionalReasons[i], name + " must be a non-blank string of at most " + maxIdLen
                        + " characters, or null");
            }
            Set<String> types = optionalTypes.get(i);
            if (types != null && !types.contains(et)) {
                return reject(optionalReasons[i], "a " + et + " event carries no " + name);
            }
            vals[required.length + 1 + i] = v;
        }
        // orjson parses 1024 levels but re-encodes 254: deeper extras could not be re-encoded by the job
        if (extras != null && !((Map<?, ?>) extras).isEmpty()
                && 1 + StrictJson.depth(extras, StrictJson.MAX_ENCODE_DEPTH + 1) > StrictJson.MAX_ENCODE_DEPTH) {
            return reject(INVALID_JSON, "extras nested too deeply (orjson re-encodes at most 254 levels)");
        }
        for (int i = 0; i < required.length; i++) {
            String f = required[i];
            if (f.equals("amount")) {
                vals[i] = amount;
            } else if (f.equals("ts")) {
                vals[i] = ts;
            } else {
                vals[i] = obj.get(f); // validated strings
            }
        }
        if (extras != null) {
            StringBuilder sb = new StringBuilder(64);
            StrictJson.write(sb, extras);
            vals[required.length] = sb.toString();
        }
        Row row = Row.withPositions(rowSource.length);
        for (int i = 0; i < rowSource.length; i++) {
            int s = rowSource[i];
            row.setField(i, s >= 0 ? vals[s] : s == -1 ? NO_VALUES : s == -2 ? Boolean.FALSE : null);
        }
        return new Result(row, null, null);
    }

    private Result checkId(Map<String, Object> obj, String name, int maxLen) {
        Object v = obj.get(name);
        if (v == StrictJson.NULL) {
            return reject(NULL_KEY, name + " is null");
        }
        if (!(v instanceof String)) {
            return reject(WRONG_TYPE, name + " must be a string, got " + pyType(v));
        }
        String s = (String) v;
        if (isBlank(s)) {
            return reject(NULL_KEY, name + " is empty");
        }
        if (codePoints(s) > maxLen) {
            return reject(WRONG_TYPE, name + " longer than " + maxLen + " characters");
        }
        return null;
    }

    // -- Python's string semantics ---------------------------------------------------------------------

    static boolean isPyWhitespace(int cp) {
        if (cp < 0x80) {
            return (cp >= 0x9 && cp <= 0xD) || (cp >= 0x1C && cp <= 0x20);
        }
        for (int w : PY_WHITESPACE) {
            if (w == cp) {
                return true;
            }
        }
        return false;
    }

    /** {@code not s.strip()}: empty or only Python whitespace. */
    static boolean isBlank(String s) {
        for (int i = 0, n = s.length(); i < n; i++) {
            if (!isPyWhitespace(s.charAt(i))) { // every Python whitespace is in the BMP
                return false;
            }
        }
        return true;
    }

    /** Python's len(): code points (a surrogate pair is one). */
    static int codePoints(String s) {
        return s.codePointCount(0, s.length());
    }

    /** {@code len(c) == 3 and c.isascii() and c.isalpha() and c.isupper()}, i.e. three of A-Z. */
    static boolean isCurrencyCode(String c) {
        if (c.length() != 3) {
            return false;
        }
        for (int i = 0; i < 3; i++) {
            char ch = c.charAt(i);
            if (ch < 'A' || ch > 'Z') {
                return false;
            }
        }
        return true;
    }

    private static String pyType(Object v) {
        if (v instanceof String) {
            return "str";
        }
        if (v instanceof Long || v instanceof BigInteger) {
            return "int";
        }
        if (v instanceof Double) {
            return "float";
        }
        if (v instanceof Boolean) {
            return "bool";
        }
        if (v instanceof Map) {
            return "dict";
        }
        if (v instanceof List) {
            return "list";
        }
        return "NoneType";
    }

    /** At most n code points (never splits a surrogate pair). */
    static String truncate(String s, int n) {
        if (s.length() <= n) {
            return s;
        }
        int cps = s.codePointCount(0, s.length());
        return cps <= n ? s : s.substring(0, s.offsetByCodePoints(0, n));
    }

    /** Index of the first byte where strict UTF-8 (as Python decodes it) fails, or -1. */
    static int firstInvalidUtf8(byte[] b) {
        int i = 0;
        int n = b.length;
        while (i < n) {
            int c = b[i];
            if (c >= 0) {
                i++;
                continue;
            }
            c &= 0xFF;
            int need;
            int lo = 0x80;
            int hi = 0xBF;
            if (c >= 0xC2 && c <= 0xDF) {
                need = 1;
            } else if (c >= 0xE0 && c <= 0xEF) {
                need = 2;
                if (c == 0xE0) {
                    lo = 0xA0; // overlong
                } else if (c == 0xED) {
                    hi = 0x9F; // surrogates
                }
            } else if (c >= 0xF0 && c <= 0xF4) {
                need = 3;
                if (c == 0xF0) {
                    lo = 0x90; // overlong
                } else if (c == 0xF4) {
                    hi = 0x8F; // beyond U+10FFFF
                }
            } else {
                return i;
            }
            int d = i + 1 < n ? b[i + 1] & 0xFF : -1;
            if (d < lo || d > hi) {
                return i;
            }
            for (int k = 2; k <= need; k++) {
                int e = i + k < n ? b[i + k] & 0xFF : -1;
                if (e < 0x80 || e > 0xBF) {
                    return i;
                }
            }
            i += need + 1;
        }
        return -1;
    }

    // -- dead letters ------------------------------------------------------------------------------------

    /** The dead-letter payload, field for field {@code udfs.events.dead_letter_record}: reason, detail,
     * the original bytes (base64, exact; bounded by {@link DeadLetters#ORIGINAL_MAX_BYTES}, above which a
     * prefix, the SHA-256 and {@code original_truncated}), their size, the job and the time (epoch ms).
     * ASCII JSON. */
    public static byte[] deadLetterRecord(byte[] raw, String reason, String detail, String job, long deadAtMs) {
        return DeadLetters.record(raw, reason, detail, job, deadAtMs);
    }

    // -- for tests and benchmarks from Python (one gateway call for many records) ------------------------

    /** Records framed as a 4-byte big-endian length then the bytes, back to back. */
    static List<byte[]> unframe(byte[] framed) {
        List<byte[]> out = new ArrayList<>();
        int i = 0;
        while (i < framed.length) {
            int len = ((framed[i] & 0xFF) << 24) | ((framed[i + 1] & 0xFF) << 16) | ((framed[i + 2] & 0xFF) << 8)
                    | (framed[i + 3] & 0xFF);
            i += 4;
            byte[] r = new byte[len];
            System.arraycopy(framed, i, r, 0, len);
            out.add(r);
            i += len;
        }
        return out;
    }

    /** Framed records as a list (a JVM-side collection source for benchmarks: {@code env.fromData}). */
    public static List<byte[]> framedRecords(byte[] framed) {
        return unframe(framed);
    }

    /** Parse framed records; a JSON array with per record {"row": [...]} or {"reason": .., "detail": ..}
     * (ASCII: every non-ASCII character escaped). */
    public String parseFramedToJson(byte[] framed) {
        StringBuilder sb = new StringBuilder();
        sb.append('[');
        boolean first = true;
        for (byte[] raw : unframe(framed)) {
            if (!first) {
                sb.append(',');
            }
            first = false;
            Result r = parse(raw);
            if (r.isEvent()) {
                sb.append("{\"row\":[");
                for (int i = 0; i < r.row.getArity(); i++) {
                    if (i > 0) {
                        sb.append(',');
                    }
                    Object v = r.row.getField(i);
                    if (v instanceof String) {
                        StrictJson.writeString(sb, (String) v, true);
                    } else if (v instanceof double[]) {
                        sb.append('[');
                        double[] d = (double[]) v;
                        for (int k = 0; k < d.length; k++) {
                            sb.append(k > 0 ? "," : "").append(d[k]);
                        }
                        sb.append(']');
                    } else {
                        StrictJson.write(sb, v);
                    }
                }
                sb.append("]}");
            } else {
                sb.append("{\"reason\":");
                StrictJson.writeString(sb, r.reason, true);
                sb.append(",\"detail\":");
                StrictJson.writeString(sb, r.detail, true);
                sb.append('}');
            }
        }
        return sb.append(']').toString();
    }

    /** Nanoseconds to parse every framed record {@code rounds} times (after one warm-up round), and the
     * number of events among them, as "nanos,events". */
    public String benchmark(byte[] framed, int rounds) {
        List<byte[]> records = unframe(framed);
        int events = 0;
        for (byte[] r : records) {
            events += parse(r).isEvent() ? 1 : 0;
        }
        long sink = 0;
        long t0 = System.nanoTime();
        for (int k = 0; k < rounds; k++) {
            for (byte[] r : records) {
                sink += parse(r).isEvent() ? 1 : 0;
            }
        }
        long ns = System.nanoTime() - t0;
        if (sink < 0) {
            throw new IllegalStateException();
        }
        return ns + "," + events;
    }

    /** Python's whitespace as this parser knows it, for a test against str.isspace(). */
    public static int[] pythonWhitespace() {
        List<Integer> out = new ArrayList<>();
        for (int cp = 0; cp <= 0x10FFFF; cp++) {
            if (isPyWhitespace(cp)) {
                out.add(cp);
            }
        }
        int[] a = new int[out.size()];
        for (int i = 0; i < a.length; i++) {
            a[i] = out.get(i);
        }
        return a;
    }
}
