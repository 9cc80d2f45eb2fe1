package io.riskstream.flink.aggregates;

/** The largest value of a numeric field over the window (udfs/aggregates.py Max). */
public class Max extends Numeric {
    @Override
    public double result(Object window) {
        Acc w = (Acc) window;
        return w.n == 0 ? missing : w.max;
    }
}
