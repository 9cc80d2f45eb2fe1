package io.riskstream.flink;

import java.util.Map;
import java.util.TreeMap;

import org.apache.flink.api.common.state.BroadcastState;
import org.apache.flink.api.common.state.MapStateDescriptor;
import org.apache.flink.api.common.state.ReadOnlyBroadcastState;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.streaming.api.functions.co.BroadcastProcessFunction;
import org.apache.flink.types.Row;
import org.apache.flink.types.RowKind;
import org.apache.flink.util.Collector;

/**
 * Carries the live control settings (udfs.control: champion, challenger, rules) to the batched decide
 * stage, which cannot hold broadcast state itself (it is a vectorized Python UDF).
 *
 * <p>Control messages arrive already validated, as Row(key, raw JSON text), key being
 * {@code udfs.control.state_key}. The newest message per key and a version counter live in broadcast
 * state (checkpointed, identical on every instance: messages apply in the same order everywhere). Each
 * record leaves with two more fields: {@code control_version} and {@code control}, the whole settings as
 * JSON ({@code {"champion": raw, ...}}), but only on the first record after the version changed on
 * this instance (and after every restart); otherwise null. A third field, {@code arm_bucket}, is the
 * record's bucket under the traffic split in force (udfs.split: the hash of the split's key field with its
 * salt, {@link ArmBucket}), or -1 without a split or without a key: the split's canonical message (key_field,
 * salt) is in the state under "split". Pitfall: that works because the decide stage
 * reads this instance's output through a forward channel, in order, and loses its cache exactly when
 * this operator does (a restart).
 */
public final class ControlAttach extends BroadcastProcessFunction<Row, Row, Row> {
    private static final long serialVersionUID = 1L;
    public static final MapStateDescriptor<String, String> STATE =
            new MapStateDescriptor<>("control-raw", Types.STRING, Types.STRING);
    private static final String VERSION = "\u0000version";

    private final String[] recordFields;
    private final int buckets;

    private transient long sentVersion = -1;
    private transient long splitVersion = -1;
    private transient int splitField = -1; // the Row field of the split's key, -1 without a split
    private transient String splitSalt;
    private transient ArmBucket hash;

    /**
     * {@code recordFieldsJson}: the record Row's field names (udfs.chain.ROW_FIELDS); {@code buckets}:
     * udfs.split.BUCKETS.
     */
    public ControlAttach(String recordFieldsJson, int buckets) throws Exception {
        org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.JsonNode f =
                new org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.ObjectMapper().readTree(recordFieldsJson);
        this.recordFields = DecisionWriter.strings(f);
        this.buckets = buckets;
    }

    private void readSplit(ReadOnlyBroadcastState<String, String> state, long v) throws Exception {
        splitVersion = v;
        splitField = -1;
        String raw = state.get("split");
        if (raw == null) {
            return;
        }
        org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.JsonNode s =
                new org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.ObjectMapper().readTree(raw);
        if (s.get("arms").size() == 0) {
            return;
        }
        String field = s.get("key_field").asText();
        for (int i = 0; i < recordFields.length; i++) {
            if (recordFields[i].equals(field)) {
                splitField = i;
            }
        }
        if (splitField < 0) {
            throw new IllegalStateException("split key field " + field + " is not a record field");
        }
        splitSalt = s.get("salt").asText();
    }

    private static long version(ReadOnlyBroadcastState<String, String> state) throws Exception {
        String v = state.get(VERSION);
        return v == null ? 0L : Long.parseLong(v);
    }

    private static String settings(ReadOnlyBroadcastState<String, String> state) throws Exception {
        Map<String, String> sorted = new TreeMap<>();
        for (Map.Entry<String, String> e : state.immutableEntries()) {
            if (!VERSION.equals(e.getKey())) {
                sorted.put(e.getKey(), e.getValue());
            }
        }
        StringBuilder b = new StringBuilder("{");
        for (Map.Entry<String, String> e : sorted.entrySet()) {
            if (b.length() > 1) {
                b.append(',');
            }
            b.append(quote(e.getKey())).append(':').append(e.getValue());
        }
        return b.append('}').toString();
    }

    private static String quote(String s) {
        StringBuilder b = new StringBuilder(s.length() + 2);
        DecisionWriter.str(b, s);
        return b.toString();
    }

    @Override
    public void processElement(Row record, ReadOnlyContext ctx, Collector<Row> out) throws Exception {
        ReadOnlyBroadcastState<String, String> state = ctx.getBroadcastState(STATE);
        long v = version(state);
        String control = null;
        if (v != sentVersion) {
            control = settings(state);
            sentVersion = v;
        }
        if (v != splitVersion) {
            readSplit(state, v);
        }
        long bucket = -1L;
        if (splitField >= 0) {
            if (hash == null) {
                hash = new ArmBucket();
            }
            bucket = hash.of(splitSalt, (String) record.getField(splitField), buckets);
        }
        int n = record.getArity();
        Row r = new Row(RowKind.INSERT, n + 3);
        for (int i = 0; i < n; i++) {
            r.setField(i, record.getField(i));
        }
        r.setField(n, v);
        r.setField(n + 1, control);
        r.setField(n + 2, bucket);
        out.collect(r);
    }

    @Override
    public void processBroadcastElement(Row message, Context ctx, Collector<Row> out) throws Exception {
        BroadcastState<String, String> state = ctx.getBroadcastState(STATE);
        state.put((String) message.getField(0), (String) message.getField(1));
        state.put(VERSION, Long.toString(version(state) + 1));
    }
}
