package io.riskstream.flink;

import org.apache.flink.api.common.functions.MapFunction;
import org.apache.flink.types.Row;

/** One field of a Row (e.g. the decision bytes of the decide stage's one-column result). */
public final class RowField<T> implements MapFunction<Row, T> {
    private static final long serialVersionUID = 1L;
    private final int index;

    public RowField(int index) {
        this.index = index;
    }

    @Override
    @SuppressWarnings("unchecked")
    public T map(Row row) {
        return (T) row.getField(index);
    }
}
