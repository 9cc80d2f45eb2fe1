package io.riskstream.flink;

import org.apache.flink.api.common.accumulators.LongCounter;
import org.apache.flink.api.common.accumulators.LongMaximum;
import org.apache.flink.api.common.accumulators.LongMinimum;
import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.functions.RichMapFunction;
import org.apache.flink.types.Row;

/**
 * Passes records through and keeps, as accumulators, the wall-clock time of the first and the last record
 * that passed ({@code first_record_ms}, {@code last_record_ms}) and how many passed ({@code records}): the
 * key-count benchmark
 * (benchmarks/scale.py) times the drain of the events to the last record out of the stages, apart from what
 * a bounded job does after its input ends (the final watermark fires every key's cleanup timer at once,
 * which an unbounded job never does).
 */
public final class DrainClock extends RichMapFunction<Row, Row> {
    private static final long serialVersionUID = 1L;
    private transient LongMinimum first;
    private transient LongMaximum last;
    private transient LongCounter records;

    @Override
    public void open(OpenContext openContext) {
        first = new LongMinimum();
        last = new LongMaximum();
        records = new LongCounter();
        getRuntimeContext().addAccumulator("first_record_ms", first);
        getRuntimeContext().addAccumulator("last_record_ms", last);
        getRuntimeContext().addAccumulator("records", records);
    }

    @Override
    public Row map(Row row) {
        long now = System.currentTimeMillis();
        first.add(now);
        last.add(now);
        records.add(1L);
        return row;
    }
}
