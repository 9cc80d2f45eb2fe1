package io.riskstream.flink.aggregates;

/** The sum of a numeric field over the window, 0 when empty (udfs/aggregates.py Sum). */
public class Sum extends Numeric {
    @Override
    public double result(Object window) {
        Acc w = (Acc) window;
        return w.sum;
    }
}
