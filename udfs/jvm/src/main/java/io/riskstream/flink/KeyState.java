package io.riskstream.flink;

import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.TreeMap;

/**
 * One key's window state (the Python state dict of udfs/windows.py + udfs/dedup.py) and its compact byte
 * encoding. Layout (all integers LEB128 varints, signed ones zigzag):
 * <pre>
 * version(2) | flags (bit 0: the key may have label state) | last | last-first
 * | timer? (0 = none, else zigzag(timer-last)+1)
 * | strings: n, then n x (utf8 length, bytes)       -- every distinct-set value of the key, once
 * | per width of the spec: n buckets (creation order), per bucket zigzag((start - floor(last/g)*g)/g),
 *   then per slot: count: n | numeric: n [, sum, max, min as 8-byte doubles when n > 0]
 *   | distinct: 2k then k string indices (exact set) | 1 + 2048 register bytes | 3 + m, m x (index, rank)
 * | ids: n, then n x (utf8 length, bytes, zigzag(ts-last))   -- dedup, in arrival order
 * | version 3 only, per delayed-count width of the spec (EntitySpec.dWidths): n buckets in ascending start,
 *   the first as zigzag((start - floor(last/g)*g)/g), each later one as (start - previous start)/g, each
 *   followed by its event count
 * </pre>
 * Version 1 (no flags byte) is read as "may have label state". Version 3 is written when the spec has
 * delayed fraud shares; versions 1 and 2 read with such a spec have no delayed counts yet.
 */
final class KeyState {
    long first, last, timer;
    boolean hasTimer;
    /**
     * Whether the key's label store may hold something: the stage reads that second state only then, one
     * state access per event saved on most keys (RocksDB reads each). Kept true whenever the store is
     * written while this state exists; a key without window state always reads its store.
     */
    boolean labels = true;
    final ArrayList<Bucket>[] buckets;
    LinkedHashMap<String, Long> ids;
    /** per delayed-count width (EntitySpec.dWidths): bucket start -> {stored events} (udfs.windows state "d"). */
    final TreeMap<Long, long[]>[] delayed;

    /** Up to this many values an exact set is a String[] (a linear scan beats hashing a fresh string). */
    static final int SMALL_SET = 16;
    static final String[] NO_STRINGS = new String[0];

    static final class Bucket {
        final long start;
        final long[] n;
        final double[] sum, max, min;
        // an exact set: String[] while it has at most SMALL_SET values (never changed in place: a bucket
        // that grows one gets a new array), HashSet<String> beyond; a sketch: byte[] (HyperLogLog registers)
        final Object[] set;

        Bucket(long start, int[] kinds) {
            this.start = start;
            int k = kinds.length;
            n = new long[k];
            sum = new double[k];
            max = new double[k];
            min = new double[k];
            set = new Object[k];
            for (int s = 0; s < k; s++) {
                if (kinds[s] == EntitySpec.NUM) {
                    max[s] = Double.NEGATIVE_INFINITY;
                    min[s] = Double.POSITIVE_INFINITY;
                } else if (kinds[s] == EntitySpec.SET) {
                    set[s] = NO_STRINGS;
                }
            }
        }
    }

    @SuppressWarnings("unchecked")
    KeyState(int nWidths, int nDelayed) {
        buckets = new ArrayList[nWidths];
        for (int w = 0; w < nWidths; w++) {
            buckets[w] = new ArrayList<>(4);
        }
        delayed = new TreeMap[nDelayed];
        for (int d = 0; d < nDelayed; d++) {
            delayed[d] = new TreeMap<>();
        }
    }

    KeyState(EntitySpec spec) {
        this(spec.widths.length, spec.dWidths.length);
    }

    // -- encoding ------------------------------------------------------------------------------------
    byte[] encode(EntitySpec spec) {
        Out o = new Out();
        o.b(delayed.length > 0 ? 3 : 2);
        o.b(labels ? 1 : 0);
        o.v(last);
        o.v(last - first);
        o.v(hasTimer ? zz(timer - last) + 1 : 0);
        Strings table = new Strings();
        for (int w = 0; w < buckets.length; w++) {
            for (Bucket b : buckets[w]) {
                for (Object x : b.set) {
                    if (x instanceof String[]) {
                        for (String v : (String[]) x) {
                            table.add(v);
                        }
                    } else if (x != null && !(x instanceof byte[])) {
                        for (String v : values(x)) {
                            table.add(v);
                        }
                    }
                }
            }
        }
        o.v(table.n);
        for (int i = 0; i < table.n; i++) {
            o.str(table.list[i]);
        }
        for (int w = 0; w < buckets.length; w++) {
            long g = spec.widths[w];
            long base = last - Math.floorMod(last, g);
            int[] kinds = spec.slotKind[w];
            o.v(buckets[w].size());
            for (Bucket b : buckets[w]) {
                o.v(zz((b.start - base) / g));
                for (int s = 0; s < kinds.length; s++) {
                    if (kinds[s] == EntitySpec.CNT) {
                        o.v(b.n[s]);
                    } else if (kinds[s] == EntitySpec.NUM) {
                        o.v(b.n[s]);
                        if (b.n[s] > 0) {
                            o.d(b.sum[s]);
                            o.d(b.max[s]);
                            o.d(b.min[s]);
                        }
                    } else if (!(b.set[s] instanceof byte[])) {
                        o.v(2L * size(b.set[s]));
                        if (b.set[s] instanceof String[]) {
                            for (String v : (String[]) b.set[s]) {
                                o.v(table.index(v));
                            }
                        } else {
                            for (String v : values(b.set[s])) {
                                o.v(table.index(v));
                            }
                        }
                    } else {
                        byte[] reg = (byte[]) b.set[s];
                        int nz = 0;
                        for (byte r : reg) {
                            if (r != 0) {
                                nz++;
                            }
                        }
                        if (nz * 3 < reg.length) {
                            o.v(3 + 2L * nz);
                            for (int i = 0; i < reg.length; i++) {
                                if (reg[i] != 0) {
                                    o.v(i);
                                    o.b(reg[i]);
                                }
                            }
                        } else {
                            o.v(1);
                            o.bytes(reg);
                        }
                    }
                }
            }
        }
        if (ids == null) {
            o.v(0);
        } else {
            o.v(ids.size());
            for (Map.Entry<String, Long> e : ids.entrySet()) {
                o.str(e.getKey());
                o.v(zz(e.getValue() - last));
            }
        }
        for (int d = 0; d < delayed.length; d++) {
            long g = spec.dWidths[d];
            long prev = last - Math.floorMod(last, g);
            o.v(delayed[d].size());
            boolean first = true;
            for (Map.Entry<Long, long[]> e : delayed[d].entrySet()) {
                long rel = (e.getKey() - prev) / g;
                o.v(first ? zz(rel) : rel);
                o.v(e.getValue()[0]);
                prev = e.getKey();
                first = false;
            }
        }
        return o.toArray();
    }

    static KeyState decode(byte[] data, EntitySpec spec) {
        if (data == null) {
            return null;
        }
        In in = new In(data);
        int version = in.b();
        if (version < 1 || version > 3) {
            throw new IllegalStateException("unknown state version " + version);
        }
        KeyState st = new KeyState(spec);
        st.labels = version == 1 || (in.b() & 1) != 0;
        st.last = in.v();
        st.first = st.last - in.v();
        long t = in.v();
        if (t != 0) {
            st.hasTimer = true;
            st.timer = st.last + unzz(t - 1);
        }
        String[] strings = new String[(int) in.v()];
        for (int i = 0; i < strings.length; i++) {
            strings[i] = in.str();
        }
        for (int w = 0; w < spec.widths.length; w++) {
            long g = spec.widths[w];
            long base = st.last - Math.floorMod(st.last, g);
            int[] kinds = spec.slotKind[w];
            int nb = (int) in.v();
            for (int k = 0; k < nb; k++) {
                Bucket b = new Bucket(base + unzz(in.v()) * g, kinds);
                for (int s = 0; s < kinds.length; s++) {
                    if (kinds[s] == EntitySpec.CNT) {
                        b.n[s] = in.v();
                    } else if (kinds[s] == EntitySpec.NUM) {
                        b.n[s] = in.v();
                        if (b.n[s] > 0) {
                            b.sum[s] = in.d();
                            b.max[s] = in.d();
                            b.min[s] = in.d();
                        }
                    } else {
                        long tag = in.v();
                        if ((tag & 1) == 0) {
                            int n = (int) (tag >>> 1);
                            String[] set = new String[n];
                            for (int i = 0; i < n; i++) {
                                set[i] = strings[(int) in.v()];
                            }
                            b.set[s] = set;
                        } else {
                            byte[] reg = new byte[Hll.M];
                            if (tag == 1) {
                                in.bytes(reg);
                            } else {
                                int m = (int) ((tag - 3) >>> 1);
                                for (int i = 0; i < m; i++) {
                                    int idx = (int) in.v();
                                    reg[idx] = (byte) in.b();
                                }
                            }
                            b.set[s] = reg;
                        }
                    }
                }
                st.buckets[w].add(b);
            }
        }
        int nIds = (int) in.v();
        if (nIds > 0) {
            st.ids = new LinkedHashMap<>(nIds * 2);
            for (int i = 0; i < nIds; i++) {
                String id = in.str();
                st.ids.put(id, st.last + unzz(in.v()));
            }
        }
        if (version == 3) {
            if (spec.dWidths.length == 0) {
                return st; // written with delayed shares in the spec, read without: their counts are not needed
            }
            for (int d = 0; d < spec.dWidths.length; d++) {
                long g = spec.dWidths[d];
                long start = st.last - Math.floorMod(st.last, g);
                int n = (int) in.v();
                for (int i = 0; i < n; i++) {
                    start += (i == 0 ? unzz(in.v()) : in.v()) * g;
                    st.delayed[d].put(start, new long[] {in.v()});
                }
            }
        }
        return st;
    }

    /**
     * The distinct strings of a key's sets in first-seen order, with their index: a linear scan while there
     * are few (most keys hold a handful), a hash map beyond.
     */
    static final class Strings {
        private static final int SCAN = 16;
        String[] list = new String[8];
        int n;
        private HashMap<String, Integer> map;

        void add(String v) {
            if (index(v) < 0) {
                if (n == list.length) {
                    list = java.util.Arrays.copyOf(list, n * 2);
                }
                list[n] = v;
                if (map != null) {
                    map.put(v, n);
                } else if (n + 1 > SCAN) {
                    map = new HashMap<>(n * 4);
                    for (int i = 0; i <= n; i++) {
                        map.put(list[i], i);
                    }
                }
                n++;
            }
        }

        int index(String v) {
            if (map != null) {
                Integer i = map.get(v);
                return i == null ? -1 : i;
            }
            for (int i = 0; i < n; i++) {
                if (list[i].equals(v)) {
                    return i;
                }
            }
            return -1;
        }
    }

    /** The values of an exact set (HashSet or decoded String[]). */
    @SuppressWarnings("unchecked")
    static Iterable<String> values(Object set) {
        return set instanceof String[] ? java.util.Arrays.asList((String[]) set) : (HashSet<String>) set;
    }

    static int size(Object set) {
        return set instanceof String[] ? ((String[]) set).length : ((HashSet<?>) set).size();
    }

    static boolean contains(Object set, String v) {
        if (set instanceof String[]) {
            for (String x : (String[]) set) {
                if (x.equals(v)) {
                    return true;
                }
            }
            return false;
        }
        return ((HashSet<?>) set).contains(v);
    }

    static long zz(long v) {
        return (v << 1) ^ (v >> 63);
    }

    static long unzz(long v) {
        return (v >>> 1) ^ -(v & 1);
    }

    /** A growable output buffer with varints. */
    static final class Out {
        byte[] buf = new byte[512];
        int n;

        void ensure(int k) {
            if (n + k > buf.length) {
                buf = java.util.Arrays.copyOf(buf, Math.max(buf.length * 2, n + k));
            }
        }

        void b(int x) {
            ensure(1);
            buf[n++] = (byte) x;
        }

        void v(long x) {
            ensure(10);
            while ((x & ~0x7fL) != 0) {
                buf[n++] = (byte) ((x & 0x7f) | 0x80);
                x >>>= 7;
            }
            buf[n++] = (byte) x;
        }

        void d(double x) {
            long bits = Double.doubleToRawLongBits(x);
            ensure(8);
            for (int i = 0; i < 8; i++) {
                buf[n++] = (byte) (bits >>> (8 * i));
            }
        }

        void bytes(byte[] x) {
            ensure(x.length);
            System.arraycopy(x, 0, buf, n, x.length);
            n += x.length;
        }

        void str(String s) {
            byte[] u = s.getBytes(StandardCharsets.UTF_8);
            v(u.length);
            bytes(u);
        }

        byte[] toArray() {
            return java.util.Arrays.copyOf(buf, n);
        }
    }

    static final class In {
        final byte[] buf;
        int p;

        In(byte[] buf) {
            this.buf = buf;
        }

        int b() {
            return buf[p++] & 0xff;
        }

        long v() {
            long x = 0;
            int shift = 0;
            while (true) {
                int c = buf[p++];
                x |= (long) (c & 0x7f) << shift;
                if ((c & 0x80) == 0) {
                    return x;
                }
                shift += 7;
            }
        }

        double d() {
            long bits = 0;
            for (int i = 0; i < 8; i++) {
                bits |= (long) (buf[p++] & 0xff) << (8 * i);
            }
            return Double.longBitsToDouble(bits);
        }

        void bytes(byte[] dst) {
            System.arraycopy(buf, p, dst, 0, dst.length);
            p += dst.length;
        }

        String str() {
            int len = (int) v();
            String s = new String(buf, p, len, StandardCharsets.UTF_8);
            p += len;
            return s;
        }
    }
}
