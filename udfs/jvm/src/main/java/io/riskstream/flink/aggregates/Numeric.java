package io.riskstream.flink.aggregates;

import java.util.Map;

/**
 * The family of Sum, Mean, Max and Min of a numeric field: one {@link Acc} (n, sum, max, min) per bucket;
 * the subclasses differ in {@link #result} only. Over an empty window a mean, max or min is the spec's
 * "missing" value (a sum is 0).
 */
public abstract class Numeric extends Aggregate {
    /** n values, their sum, max and min (-inf and +inf when n is 0). */
    public static final class Acc {
        public long n;
        public double sum, max = Double.NEGATIVE_INFINITY, min = Double.POSITIVE_INFINITY;
    }

    protected double missing = -1.0;

    @Override
    public final String accumulator() {
        return "numeric";
    }

    @Override
    public final boolean takesField() {
        return true;
    }

    @Override
    public void configure(Map<String, Object> params) {
        Object m = params.get("missing");
        if (!(m instanceof Number)) {
            throw new IllegalArgumentException(getClass().getSimpleName() + ": params need a number \"missing\"");
        }
        missing = ((Number) m).doubleValue();
    }

    @Override
    public final Object initialize() {
        return new Acc();
    }

    @Override
    public final Object add(Object acc, Object value) {
        Acc a = (Acc) acc;
        double v = ((Number) value).doubleValue();
        a.n++;
        a.sum += v;
        if (v > a.max) {
            a.max = v;
        }
        if (v < a.min) {
            a.min = v;
        }
        return a;
    }

    @Override
    public final Object merge(Object reuse, Object[] accs, int n) {
        long c = 0;
        double sum = 0.0, mx = Double.NEGATIVE_INFINITY, mn = Double.POSITIVE_INFINITY;
        for (int i = 0; i < n; i++) { // in bucket order: the sum's rounding is Python's
            Acc a = (Acc) accs[i];
            c += a.n;
            sum += a.sum;
            if (a.max > mx) {
                mx = a.max;
            }
            if (a.min < mn) {
                mn = a.min;
            }
        }
        Acc w = reuse == null ? new Acc() : (Acc) reuse;
        w.n = c;
        w.sum = sum;
        w.max = mx;
        w.min = mn;
        return w;
    }

    @Override
    public final void encode(Object acc, StateBytes.Out out, StateBytes.Strings table) {
        Acc a = (Acc) acc;
        out.v(a.n);
        if (a.n > 0) {
            out.d(a.sum);
            out.d(a.max);
            out.d(a.min);
        }
    }

    @Override
    public final Object decode(StateBytes.In in, String[] strings) {
        Acc a = new Acc();
        a.n = in.v();
        if (a.n > 0) {
            a.sum = in.d();
            a.max = in.d();
            a.min = in.d();
        }
        return a;
    }
}
