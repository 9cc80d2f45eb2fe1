package io.riskstream.flink.graph;

import java.util.LinkedHashMap;
import java.util.Map;

import io.riskstream.flink.aggregates.StateBytes;

/**
 * A sketch {user: (edge time, fraud time)} of udfs/graph.py as a map user id -> {@code long[]{edge, fraud}},
 * with the reference's operations on it and the helpers every graph encoding shares.
 * Pitfalls: user ids stay strings (no hashes: the values must be exact); an entry's array is never mutated
 * once it is in a map another sketch may share (merges put new arrays); ties in the caps are broken by
 * {@link #compareCodePoints} (Python's str order), not {@link String#compareTo} (UTF-16 units).
 */
public final class Sketch {
    private Sketch() {}

    public static Map<String, long[]> of() {
        return new LinkedHashMap<>();
    }

    /** udfs.graph.merge_into: per user the newer of each time (new arrays, {@code src} untouched). */
    public static void mergeInto(Map<String, long[]> dst, Map<String, long[]> src) {
        for (Map.Entry<String, long[]> e : src.entrySet()) {
            long[] s = e.getValue();
            long[] old = dst.get(e.getKey());
            dst.put(e.getKey(), old == null ? new long[] {s[0], s[1]}
                : new long[] {Math.max(old[0], s[0]), Math.max(old[1], s[1])});
        }
    }

    /** udfs.graph.live merged into {@code dst}: the entries of {@code src} whose edge time is {@code >= lo}. */
    public static void mergeLive(Map<String, long[]> dst, Map<String, long[]> src, long lo) {
        for (Map.Entry<String, long[]> e : src.entrySet()) {
            long[] s = e.getValue();
            if (s[0] < lo) {
                continue;
            }
            long[] old = dst.get(e.getKey());
            dst.put(e.getKey(), old == null ? new long[] {s[0], s[1]}
                : new long[] {Math.max(old[0], s[0]), Math.max(old[1], s[1])});
        }
    }

    /** udfs.graph.fraud_count: entries whose fraud time is {@code >= lo} (no upper bound, as the reference). */
    public static int fraudCount(Map<String, long[]> users, long lo) {
        int n = 0;
        for (long[] e : users.values()) {
            if (e[1] >= lo) {
                n++;
            }
        }
        return n;
    }

    /** Python's str order: by code point (String.compareTo orders an astral character, a surrogate pair,
     * before U+E000..U+FFFF). */
    public static int compareCodePoints(String a, String b) {
        int i = 0, j = 0, na = a.length(), nb = b.length();
        while (i < na && j < nb) {
            int ca = a.codePointAt(i), cb = b.codePointAt(j);
            if (ca != cb) {
                return Integer.compare(ca, cb);
            }
            i += Character.charCount(ca);
            j += Character.charCount(cb);
        }
        return Boolean.compare(i < na, j < nb);
    }

    // -- encoding helpers: times as zigzag varints relative to a base, wrapping (exact for every long) ----
    static void time(StateBytes.Out o, long base, long t) {
        o.v(StateBytes.zz(base - t));
    }

    static long time(StateBytes.In in, long base) {
        return base - StateBytes.unzz(in.v());
    }

    /** A fraud time: 0 for {@code noFraud} (most entries), else its zigzag delta + 1. Pitfall: a time exactly
     * 2^63 from the base (never an event time) would read back as noFraud. */
    static void fraud(StateBytes.Out o, long base, long t, long noFraud) {
        o.v(t == noFraud ? 0 : StateBytes.zz(base - t) + 1);
    }

    static long fraud(StateBytes.In in, long base, long noFraud) {
        long c = in.v();
        return c == 0 ? noFraud : base - StateBytes.unzz(c - 1);
    }

    /** A string table: each distinct string once, referenced by index. */
    static final class Table {
        final LinkedHashMap<String, Integer> index = new LinkedHashMap<>();

        int id(String s) {
            Integer i = index.get(s);
            if (i == null) {
                i = index.size();
                index.put(s, i);
            }
            return i;
        }

        void write(StateBytes.Out o) {
            o.v(index.size());
            for (String s : index.keySet()) {
                o.str(s);
            }
        }

        static String[] read(StateBytes.In in) {
            String[] s = new String[(int) in.v()];
            for (int i = 0; i < s.length; i++) {
                s[i] = in.str();
            }
            return s;
        }
    }

    /** A sketch's entries: n, then per entry (string index, edge, fraud). */
    static void write(StateBytes.Out o, Map<String, long[]> sk, Table table, long base, long noFraud) {
        o.v(sk.size());
        for (Map.Entry<String, long[]> e : sk.entrySet()) {
            o.v(table.id(e.getKey()));
            time(o, base, e.getValue()[0]);
            fraud(o, base, e.getValue()[1], noFraud);
        }
    }

    static Map<String, long[]> read(StateBytes.In in, String[] strings, long base, long noFraud) {
        int n = (int) in.v();
        Map<String, long[]> sk = new LinkedHashMap<>(Math.max(4, 2 * n));
        for (int i = 0; i < n; i++) {
            String u = strings[(int) in.v()];
            long edge = time(in, base);
            sk.put(u, new long[] {edge, fraud(in, base, noFraud)});
        }
        return sk;
    }
}
