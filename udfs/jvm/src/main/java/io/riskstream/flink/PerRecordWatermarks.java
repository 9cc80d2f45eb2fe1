package io.riskstream.flink;

import org.apache.flink.api.common.eventtime.Watermark;
import org.apache.flink.api.common.eventtime.WatermarkGenerator;
import org.apache.flink.api.common.eventtime.WatermarkGeneratorSupplier;
import org.apache.flink.api.common.eventtime.WatermarkOutput;
import org.apache.flink.api.common.eventtime.WatermarkStrategy;
import org.apache.flink.types.Row;

/**
 * Bounded-out-of-orderness watermarks emitted after every record, at the value Flink's periodic
 * {@code BoundedOutOfOrdernessWatermarks} would emit (newest timestamp - bound - 1): for tests that need
 * the watermark at an exact point when a given record reaches a stage (tests/test_jvm_windows.py, the
 * cleanup timers). Pitfall: not for the job; a periodic emitter makes the watermark a record sees depend
 * on timing, this one costs a watermark per record downstream.
 */
public final class PerRecordWatermarks implements WatermarkGenerator<Row> {
    private final long boundMs;
    private long newest = Long.MIN_VALUE;

    public PerRecordWatermarks(long boundMs) {
        this.boundMs = boundMs;
    }

    @Override
    public void onEvent(Row event, long timestamp, WatermarkOutput output) {
        newest = Math.max(newest, timestamp);
        output.emitWatermark(new Watermark(newest - boundMs - 1));
    }

    @Override
    public void onPeriodicEmit(WatermarkOutput output) {
        // every record emitted its watermark already
    }

    /** The strategy: timestamps from the record's {@code ts} field ({@link RecordTimestamps}), a watermark
     * after each record. */
    public static WatermarkStrategy<Row> strategy(int tsIndex, long boundMs, long maxFutureSkewMs) {
        WatermarkGeneratorSupplier<Row> gen = ctx -> new PerRecordWatermarks(boundMs);
        return WatermarkStrategy.forGenerator(gen).withTimestampAssigner(new RecordTimestamps(tsIndex, maxFutureSkewMs));
    }
}
