package io.riskstream.flink.aggregates;

/** The mean of a numeric field over the window (udfs/aggregates.py Mean). */
public class Mean extends Numeric {
    @Override
    public double result(Object window) {
        Acc w = (Acc) window;
        return w.n == 0 ? missing : w.sum / w.n;
    }
}
