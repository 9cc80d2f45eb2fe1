package io.riskstream.flink;

import org.apache.flink.api.common.eventtime.SerializableTimestampAssigner;
import org.apache.flink.types.Row;

/**
 * Event time of a chain record: its {@code ts} field, clamped to the wall clock plus a bound. Pitfall
 * (as udfs.flink.EventTime): one record stamped in the future would push the watermark ahead and fire
 * every key's cleanup timer.
 */
public final class RecordTimestamps implements SerializableTimestampAssigner<Row> {
    private static final long serialVersionUID = 1L;
    private final int tsIndex;
    private final long maxFutureSkewMs;

    public RecordTimestamps(int tsIndex, long maxFutureSkewMs) {
        this.tsIndex = tsIndex;
        this.maxFutureSkewMs = maxFutureSkewMs;
    }

    @Override
    public long extractTimestamp(Row row, long recordTimestamp) {
        long ts = (Long) row.getField(tsIndex);
        return Math.min(ts, System.currentTimeMillis() + maxFutureSkewMs);
    }
}
