package io.riskstream.flink.aggregates;

/** The smallest value of a numeric field over the window (udfs/aggregates.py Min). */
public class Min extends Numeric {
    @Override
    public double result(Object window) {
        Acc w = (Acc) window;
        return w.n == 0 ? missing : w.min;
    }
}
