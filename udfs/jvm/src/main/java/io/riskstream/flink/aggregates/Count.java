package io.riskstream.flink.aggregates;

/** Events in the window (of the feature's event types); accumulator: a {@code long[1]}. */
public class Count extends Aggregate {
    @Override
    public String accumulator() {
        return "count";
    }

    @Override
    public boolean takesField() {
        return false;
    }

    @Override
    public Object initialize() {
        return new long[1];
    }

    @Override
    public Object add(Object acc, Object value) {
        ((long[]) acc)[0]++;
        return acc;
    }

    @Override
    public Object merge(Object reuse, Object[] accs, int n) {
        long c = 0;
        for (int i = 0; i < n; i++) {
            c += ((long[]) accs[i])[0];
        }
        long[] w = reuse == null ? new long[1] : (long[]) reuse;
        w[0] = c;
        return w;
    }

    @Override
    public double result(Object window) {
        return (double) ((long[]) window)[0];
    }

    @Override
    public void encode(Object acc, StateBytes.Out out, StateBytes.Strings table) {
        out.v(((long[]) acc)[0]);
    }

    @Override
    public Object decode(StateBytes.In in, String[] strings) {
        return new long[] {in.v()};
    }
}
