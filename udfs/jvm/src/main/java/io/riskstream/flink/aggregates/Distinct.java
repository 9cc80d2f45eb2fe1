package io.riskstream.flink.aggregates;

import java.util.Arrays;
import java.util.Collections;
import java.util.HashSet;
import java.util.Map;

import io.riskstream.flink.Hll;

/**
 * Distinct values of a string field (udfs/aggregates.py Distinct). A bucket's accumulator is an exact set
 * up to "exact_up_to" values (a {@code String[]} up to {@link #SMALL_SET} values, never changed in place: a
 * bucket that grows one gets a new array; a {@code HashSet<String>} beyond), then a HyperLogLog sketch
 * ({@code byte[]} registers, {@link Hll}). A window is exact while all its buckets are, else an estimate
 * rounded half to even. State bytes: exact {@code 2k, k string indices} | dense sketch {@code 1, registers}
 * | sparse sketch {@code 3 + 2m, m x (index, rank)}.
 */
public class Distinct extends Aggregate {
    /** Up to this many values an exact set is a String[] (a linear scan beats hashing a fresh string). */
    public static final int SMALL_SET = 16;
    static final String[] NO_STRINGS = new String[0];

    private int exactUpTo = 256;

    /** A window: the reused union and registers, and the value. */
    static final class Window {
        HashSet<String> union = new HashSet<>();
        byte[] reg;
        double value;
    }

    @Override
    public String accumulator() {
        return "distinct";
    }

    @Override
    public boolean takesField() {
        return true;
    }

    @Override
    public void configure(Map<String, Object> params) {
        Object e = params.get("exact_up_to"), p = params.get("hll_p");
        if (!(e instanceof Number) || !(p instanceof Number)) {
            throw new IllegalArgumentException("Distinct: params need numbers \"exact_up_to\" and \"hll_p\"");
        }
        if (((Number) p).intValue() != Hll.P) {
            throw new IllegalArgumentException("Distinct: spec HLL P " + p + " differs from the JVM's " + Hll.P);
        }
        exactUpTo = ((Number) e).intValue();
    }

    @Override
    public Object initialize() {
        return NO_STRINGS;
    }

    @Override
    public Object add(Object acc, Object value) {
        String v = (String) value;
        if (acc instanceof byte[]) {
            Hll.add((byte[]) acc, v);
            return acc;
        }
        int size;
        if (acc instanceof String[]) {
            String[] a = (String[]) acc;
            if (contains(a, v)) {
                return acc;
            }
            if (a.length < SMALL_SET) {
                String[] grown = Arrays.copyOf(a, a.length + 1);
                grown[a.length] = v;
                acc = grown;
                size = grown.length;
            } else {
                HashSet<String> set = new HashSet<>(a.length * 2 + 2);
                Collections.addAll(set, a);
                set.add(v);
                acc = set;
                size = set.size();
            }
        } else {
            @SuppressWarnings("unchecked")
            HashSet<String> set = (HashSet<String>) acc;
            if (!set.add(v)) {
                return acc;
            }
            size = set.size();
        }
        if (size > exactUpTo) {
            byte[] reg = new byte[Hll.M];
            for (String x : values(acc)) {
                Hll.add(reg, x);
            }
            return reg;
        }
        return acc;
    }

    @Override
    public Object merge(Object reuse, Object[] accs, int n) {
        Window w = reuse == null ? new Window() : (Window) reuse;
        boolean exact = true;
        for (int i = 0; i < n; i++) {
            if (accs[i] instanceof byte[]) {
                exact = false;
                break;
            }
        }
        if (exact && n <= 1) { // one bucket: its size
            w.value = n == 0 ? 0.0 : (double) size(accs[0]);
        } else if (exact) {
            HashSet<String> u = w.union;
            u.clear();
            for (int i = 0; i < n; i++) {
                if (accs[i] instanceof String[]) {
                    Collections.addAll(u, (String[]) accs[i]);
                } else {
                    @SuppressWarnings("unchecked")
                    HashSet<String> s = (HashSet<String>) accs[i];
                    u.addAll(s);
                }
            }
            w.value = (double) u.size();
            if (u.size() > 4 * SMALL_SET) {
                w.union = new HashSet<>(); // a window of many values does not keep them (or their table)
            }
        } else {
            if (w.reg == null) {
                w.reg = new byte[Hll.M];
            } else {
                Arrays.fill(w.reg, (byte) 0);
            }
            for (int i = 0; i < n; i++) {
                if (accs[i] instanceof byte[]) {
                    Hll.mergeInto(w.reg, (byte[]) accs[i]);
                } else {
                    for (String x : values(accs[i])) {
                        Hll.add(w.reg, x);
                    }
                }
            }
            w.value = Hll.roundHalfEven(Hll.estimate(w.reg));
        }
        return w;
    }

    @Override
    public double result(Object window) {
        return ((Window) window).value;
    }

    @Override
    public void encode(Object acc, StateBytes.Out o, StateBytes.Strings table) {
        if (!(acc instanceof byte[])) {
            o.v(2L * size(acc));
            for (String v : values(acc)) {
                o.v(table.index(v));
            }
            return;
        }
        byte[] reg = (byte[]) acc;
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

    @Override
    public Object decode(StateBytes.In in, String[] strings) {
        long tag = in.v();
        if ((tag & 1) == 0) {
            int n = (int) (tag >>> 1);
            if (n == 0) {
                return NO_STRINGS;
            }
            String[] set = new String[n];
            for (int i = 0; i < n; i++) {
                set[i] = strings[(int) in.v()];
            }
            return set;
        }
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
        return reg;
    }

    /** The values of an exact set (HashSet or String[]). */
    @SuppressWarnings("unchecked")
    static Iterable<String> values(Object set) {
        return set instanceof String[] ? Arrays.asList((String[]) set) : (HashSet<String>) set;
    }

    static int size(Object set) {
        return set instanceof String[] ? ((String[]) set).length : ((HashSet<?>) set).size();
    }

    static boolean contains(String[] a, String v) {
        for (String x : a) {
            if (x.equals(v)) {
                return true;
            }
        }
        return false;
    }
}
