package io.riskstream.flink;

import org.apache.flink.api.java.functions.KeySelector;
import org.apache.flink.types.Row;

/**
 * Keys a chain record by one of its fields (an entity's key field). An optional entity's keyless events
 * (null field) share the key "": they touch no state, so one key for all of them costs skew, not state.
 */
public final class RecordKey implements KeySelector<Row, String> {
    private static final long serialVersionUID = 1L;
    private final int index;

    public RecordKey(int index) {
        this.index = index;
    }

    @Override
    public String getKey(Row row) {
        Object v = row.getField(index);
        return v == null ? "" : (String) v;
    }
}
