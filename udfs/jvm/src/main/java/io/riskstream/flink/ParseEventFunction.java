package io.riskstream.flink;

import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;

import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.typeinfo.PrimitiveArrayTypeInfo;
import org.apache.flink.api.java.typeutils.ResultTypeQueryable;
import org.apache.flink.api.java.typeutils.RowTypeInfo;
import org.apache.flink.metrics.Counter;
import org.apache.flink.streaming.api.functions.ProcessFunction;
import org.apache.flink.types.Row;
import org.apache.flink.util.Collector;
import org.apache.flink.util.OutputTag;

/**
 * The job's parse-validate stage in the JVM (udfs/flink.py ParseValidate's twin): record bytes -> the stage
 * record as a typed Row, or a dead letter (udfs.events.dead_letter_record's fields, the exact original bytes)
 * to the side output {@link #DEAD_LETTER}. Counters {@code dead_letters} and {@code events_valid}; the
 * chaos hook of {@code riskstream chaos} (env RISKSTREAM_CHAOS_DIR, trigger file "fail-task").
 *
 * <p>The Row's {@code arrived_at} is the element's timestamp (a Kafka source's: the record's timestamp, the
 * events topic's append time), null without one. It must be read here: the event-time assigner that follows
 * replaces the timestamp with the event's own {@code ts}.
 */
public class ParseEventFunction extends ProcessFunction<byte[], Row> implements ResultTypeQueryable<Row> {
    private static final long serialVersionUID = 1L;

    public static final OutputTag<byte[]> DEAD_LETTER =
            new OutputTag<>("dead-letter", PrimitiveArrayTypeInfo.BYTE_PRIMITIVE_ARRAY_TYPE_INFO);
    public static final String CHAOS_ENV = "RISKSTREAM_CHAOS_DIR";
    public static final String CHAOS_TASK_FAILURE = "fail-task";
    private static final long CHAOS_CHECK_NANOS = 100_000_000L;

    private final String contractJson;
    private final String jobName;
    private final String layoutJson;

    private String chaosDir; // null: RISKSTREAM_CHAOS_DIR when the task opens

    private transient EventParser parser;
    private transient int arrivedIndex; // -1: the layout has no arrived_at
    private transient Counter dead;
    private transient Counter valid;
    private transient Path chaosTrigger;
    private transient long chaosNext;

    /** Thrown by the chaos hook: the task fails and Flink restarts it from the last checkpoint. */
    public static final class InjectedFailure extends RuntimeException {
        private static final long serialVersionUID = 1L;

        InjectedFailure(String message) {
            super(message);
        }
    }

    /**
     * @param contractJson {@code udfs.events.contract_json()}
     * @param jobName the job's name, written into dead letters
     * @param layoutJson the Row layout ({@code udfs.chain.ROW_FIELDS} as a JSON list of [name, type])
     */
    public ParseEventFunction(String contractJson, String jobName, String layoutJson) {
        this.contractJson = contractJson;
        this.jobName = jobName;
        this.layoutJson = layoutJson;
        new EventParser(contractJson, layoutJson); // fail at job build time, not in the task
    }

    /** The type of the emitted Row (named fields of the layout). */
    @Override
    public RowTypeInfo getProducedType() {
        return new EventParser(contractJson, layoutJson).rowTypeInfo();
    }

    /** The chaos folder in place of the environment's RISKSTREAM_CHAOS_DIR (tests). */
    public ParseEventFunction withChaosDir(String dir) {
        this.chaosDir = dir;
        return this;
    }

    public static OutputTag<byte[]> deadLetterTag() {
        return DEAD_LETTER;
    }

    @Override
    public void open(OpenContext openContext) throws Exception {
        parser = new EventParser(contractJson, layoutJson);
        arrivedIndex = parser.fieldIndex("arrived_at");
        dead = getRuntimeContext().getMetricGroup().counter("dead_letters");
        valid = getRuntimeContext().getMetricGroup().counter("events_valid");
        String dir = chaosDir != null ? chaosDir : System.getenv(CHAOS_ENV);
        chaosTrigger = dir == null || dir.isEmpty() ? null : Paths.get(dir, CHAOS_TASK_FAILURE);
        chaosNext = System.nanoTime();
    }

    /** The first subtask to claim (delete) the trigger file fails; checked at most every 100 ms. */
    private void maybeFail() {
        long now = System.nanoTime();
        if (now - chaosNext < 0) {
            return;
        }
        chaosNext = now + CHAOS_CHECK_NANOS;
        boolean claimed;
        try {
            claimed = Files.deleteIfExists(chaosTrigger);
        } catch (Exception e) {
            return;
        }
        if (claimed) {
            throw new InjectedFailure("riskstream chaos: injected task failure");
        }
    }

    @Override
    public void processElement(byte[] value, Context ctx, Collector<Row> out) {
        if (chaosTrigger != null) {
            maybeFail();
        }
        if (value == null) { // a tombstone; from Kafka, NullValues dead-letters it (with its key) before this
            dead.inc();
            ctx.output(DEAD_LETTER, DeadLetters.nullValue(null, null, null, null, jobName, System.currentTimeMillis()));
            return;
        }
        byte[] raw = value;
        EventParser.Result r = parser.parse(raw); // never throws: a bug becomes processing_error
        if (r.isEvent()) {
            valid.inc();
            if (arrivedIndex >= 0) {
                Long ts = ctx.timestamp(); // null without one; Kafka's -1 means none as well
                r.row.setField(arrivedIndex, ts != null && ts >= 0 ? ts : null);
            }
            out.collect(r.row);
        } else {
            dead.inc();
            ctx.output(DEAD_LETTER,
                    EventParser.deadLetterRecord(raw, r.reason, r.detail, jobName, System.currentTimeMillis()));
        }
    }
}
