package io.riskstream.flink;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.util.Arrays;
import java.util.Base64;

import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.state.ValueState;
import org.apache.flink.api.common.state.ValueStateDescriptor;
import org.apache.flink.api.common.typeinfo.PrimitiveArrayTypeInfo;
import org.apache.flink.metrics.Counter;
import org.apache.flink.metrics.MetricGroup;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonFactory;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonGenerator;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.JsonNode;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.ObjectMapper;
import org.apache.flink.streaming.api.TimeDomain;
import org.apache.flink.streaming.api.functions.KeyedProcessFunction;
import org.apache.flink.types.Row;
import org.apache.flink.util.Collector;
import org.apache.flink.util.OutputTag;

import io.riskstream.flink.graph.GraphContext;
import io.riskstream.flink.graph.GraphLabels;
import io.riskstream.flink.graph.GraphSpec;
import io.riskstream.flink.graph.MemberPart;
import io.riskstream.flink.graph.UserPart;

/**
 * One entity's keyed stage in the JVM, interpreting the spec as udfs/flink.py EntityStage does with the
 * Python reference (udfs/chain.py EntityStep): dedup (entity.dedup) -> window update -> remember, the
 * entity's values appended to the record; an optional entity's keyless events get the empty values.
 * Duplicates and processing errors go to the side output "dead-letter" (byte[]), as udfs/flink.py's.
 * State: one ValueState&lt;byte[]&gt; per key ({@link KeyState}); labels a second one ({@link KnownFraud}).
 * <p>With graph features in the spec ({@link GraphSpec}), the user stage starts the record's graph context
 * (the user's known-fraud time from its graph label store) and a members stage (ip, device, payment) runs
 * its {@link MemberPart} after the windows: its graph values after its window values, its sketch into the
 * context. Its graph state is a third ValueState, cleared with the window state; the graph label store a
 * fourth, folded from the label records and dropped by the label stores' processing-time TTL rule. The
 * link stage is {@link GraphLinkFunction}. Pitfall: a keyless event (an optional entity) reads the window
 * empty values plus graph zeros and attaches no sketch.
 */
public class EntityWindowsFunction extends KeyedProcessFunction<String, Row, Row> {
    private static final long serialVersionUID = 1L;

    public static final OutputTag<byte[]> DEAD_LETTER =
        new OutputTag<>("dead-letter", PrimitiveArrayTypeInfo.BYTE_PRIMITIVE_ARRAY_TYPE_INFO);
    public static final String LABEL_MARK = "\u0000label";
    public static final long LABEL_TTL_MS = 8L * 24 * 3600 * 1000;
    private static final ObjectMapper JSON = new ObjectMapper();
    private static final JsonFactory JSON_FACTORY = new JsonFactory();

    private final String specJson;
    private final String entity;
    private final long dedupHorizonMs;
    private final boolean labels;
    private final String jobName;
    private boolean forwardLabels;

    private transient EntitySpec spec;
    private transient EntityWindows windows;
    private transient long horizon;
    private transient boolean labelsOn;
    private transient long labelTtl;
    private transient ValueState<byte[]> state;
    private transient ValueState<byte[]> known;
    private transient Counter lateCounter, errorCounter, dupCounter, fraudCounter, legitCounter;
    private transient GraphSpec graph; // null: no graph part
    private transient MemberPart members; // the members role's part, else null
    private transient boolean graphLabelsOn;
    private transient long graphLabelTtl;
    private transient ValueState<byte[]> graphState, graphLabels;

    public EntityWindowsFunction(String specJson, String entity, long dedupHorizonMs, boolean labels, String jobName) {
        this.specJson = specJson;
        this.entity = entity;
        this.dedupHorizonMs = dedupHorizonMs;
        this.labels = labels;
        this.jobName = jobName;
        EntitySpec.parse(specJson, entity); // refuse a bad spec when the job is built, not when it runs
        GraphSpec g = GraphSpec.parse(specJson, entity);
        if (g != null && g.role.equals(GraphSpec.LINK)) {
            throw new IllegalArgumentException(entity + " is the graph link stage: GraphLinkFunction runs it");
        }
    }

    /**
     * Tests only: pass label records on downstream after folding them, so a chain of stages sees each label
     * at the same place among the events as the first stage (the job unions the labels into every stage
     * instead, where their order against the events is the network's).
     */
    public EntityWindowsFunction withLabelsForwarded() {
        forwardLabels = true;
        return this;
    }

    @Override
    public void open(OpenContext openContext) {
        spec = EntitySpec.parse(specJson, entity);
        windows = new EntityWindows(spec);
        horizon = spec.dedup ? dedupHorizonMs : 0;
        labelsOn = labels && spec.readsLabels;
        labelTtl = Math.max(LABEL_TTL_MS, spec.labelKeepMs + 24L * 3600 * 1000);
        state = getRuntimeContext().getState(
            new ValueStateDescriptor<>(entity + "_windows", PrimitiveArrayTypeInfo.BYTE_PRIMITIVE_ARRAY_TYPE_INFO));
        graph = GraphSpec.parse(specJson, entity);
        if (graph != null) {
            members = graph.role.equals(GraphSpec.MEMBERS) ? new MemberPart(graph) : null;
            graphLabelsOn = labels;
            // as udfs/flink.py graph_label_ttl_ms: the window labels' TTL, at least the store's keep plus a day
            graphLabelTtl = Math.max(labelTtl, graph.labelKeepMs() + 24L * 3600 * 1000);
            if (members != null) {
                graphState = getRuntimeContext().getState(new ValueStateDescriptor<>(
                    entity + "_graph", PrimitiveArrayTypeInfo.BYTE_PRIMITIVE_ARRAY_TYPE_INFO));
            }
            if (graphLabelsOn) {
                graphLabels = getRuntimeContext().getState(new ValueStateDescriptor<>(
                    entity + "_graph_labels", PrimitiveArrayTypeInfo.BYTE_PRIMITIVE_ARRAY_TYPE_INFO));
            }
        }
        MetricGroup g = getRuntimeContext().getMetricGroup();
        lateCounter = g.counter("late_events");
        errorCounter = g.counter("processing_errors");
        dupCounter = horizon != 0 ? g.counter("duplicate_events") : null;
        if (labelsOn) {
            known = getRuntimeContext().getState(
                new ValueStateDescriptor<>(entity + "_labels", PrimitiveArrayTypeInfo.BYTE_PRIMITIVE_ARRAY_TYPE_INFO));
            if (spec.countsLabels) {
                fraudCounter = g.counter("labels_fraud");
                legitCounter = g.counter("labels_legit");
            }
        }
    }

    @Override
    public void processElement(Row row, Context ctx, Collector<Row> out) throws Exception {
        if (LABEL_MARK.equals(row.getField(spec.eventTypeIndex))) {
            if (labelsOn) {
                label(row, ctx);
            }
            if (forwardLabels) {
                out.collect(row);
            }
            return;
        }
        Row result;
        boolean late;
        try {
            if (row.getField(spec.keyIndex) == null) { // no sketch for this stage: the context passes on
                double[] empty = windows.emptyValues();
                if (members != null) {
                    empty = concat(empty, members.emptyValues());
                }
                out.collect(extend(row, empty, false, Double.NaN, graphField(row)));
                return;
            }
            KeyState st = KeyState.decode(state.value(), spec);
            long ts = (Long) row.getField(spec.tsIndex);
            if (horizon != 0 && windows.duplicate(st, (String) row.getField(spec.eventIdIndex), ts, horizon)) {
                dupCounter.inc();
                ctx.output(DEAD_LETTER, deadLetter(row, "duplicate_event_id",
                    "event_id seen for this " + entity + " within " + horizon + " ms", jobName));
                return;
            }
            // the label store is read only when it may hold something (KeyState.labels): a second state
            // access per event on every key would double the RocksDB reads
            KnownFraud kf = labelsOn && (st == null || st.labels) ? KnownFraud.decode(known.value()) : null;
            GraphLabels gl = graphLabelsOn && (st == null || st.labels) ? GraphLabels.decode(graphLabels.value()) : null;
            EntityWindows.Step r = windows.step(st, row, horizon, kf == null ? null : kf.lab);
            r.state.labels = kf != null || gl != null;
            double[] values = r.values;
            Object context = graphField(row);
            if (graph != null) {
                String user = (String) row.getField(spec.userIdIndex);
                GraphContext gc;
                if (members == null) { // the user stage: the context starts here
                    gc = new UserPart(graph).step(gl, user);
                } else {
                    gc = GraphContext.decode((byte[]) context, graph.members.length, ts, graph.noFraud);
                    String[] pairKeys = new String[graph.pairFields.length];
                    for (int i = 0; i < pairKeys.length; i++) {
                        pairKeys[i] = (String) row.getField(graph.pairFields[i]);
                    }
                    double[] gv = new double[graph.aggs.length];
                    MemberPart.State gs = members.step(MemberPart.State.decode(graphState.value(), graph.noFraud), gl,
                        (String) row.getField(spec.keyIndex), user, ts, pairKeys, gc, gv);
                    graphState.update(gs.encode(graph.noFraud));
                    values = concat(values, gv);
                }
                context = gc.encode(ts, graph.noFraud);
            }
            if (r.hasTimer) {
                ctx.timerService().registerEventTimeTimer(r.timer);
            }
            state.update(r.state.encode(spec));
            double signal = Double.NaN;
            if (labelsOn && spec.labelSignals) {
                signal = KnownFraud.count(kf, ts);
            }
            late = r.late;
            result = extend(row, values, late, signal, context);
        } catch (Exception e) {
            errorCounter.inc();
            ctx.output(DEAD_LETTER, deadLetter(row, "processing_error",
                entity + " stage: " + e.getClass().getSimpleName() + ": " + e.getMessage(), jobName));
            return;
        }
        if (late) {
            lateCounter.inc();
        }
        out.collect(result);
    }

    /** The record after this stage: values appended, late merged, this entity's signal set (NaN: none);
     * every other field (the event's, arrived_at) passed through as it came. */
    private Row extend(Row row, double[] values, boolean late, double signal, Object context) {
        Row r = Row.withPositions(spec.arity);
        for (int i = 0; i < spec.arity; i++) {
            r.setField(i, row.getField(i));
        }
        if (spec.graphIndex >= 0) {
            r.setField(spec.graphIndex, context);
        }
        double[] prev = (double[]) row.getField(spec.valuesIndex);
        if (prev == null || prev.length == 0) {
            r.setField(spec.valuesIndex, values);
        } else {
            double[] all = Arrays.copyOf(prev, prev.length + values.length);
            System.arraycopy(values, 0, all, prev.length, values.length);
            r.setField(spec.valuesIndex, all);
        }
        Boolean prevLate = (Boolean) row.getField(spec.lateIndex);
        r.setField(spec.lateIndex, late || (prevLate != null && prevLate));
        double[] sig = (double[]) row.getField(spec.signalsIndex);
        if (!Double.isNaN(signal)) {
            if (sig == null) {
                sig = new double[spec.nSignals];
                Arrays.fill(sig, Double.NaN); // NaN: a signal no stage set (absent from the Python dict)
            } else {
                sig = sig.clone();
            }
            sig[spec.signalIndex] = signal;
        }
        r.setField(spec.signalsIndex, sig);
        return r;
    }

    private Object graphField(Row row) {
        return spec.graphIndex >= 0 && spec.graphIndex < row.getArity() ? row.getField(spec.graphIndex) : null;
    }

    static double[] concat(double[] a, double[] b) {
        if (b.length == 0) {
            return a;
        }
        double[] all = Arrays.copyOf(a, a.length + b.length);
        System.arraycopy(b, 0, all, a.length, b.length);
        return all;
    }

    private void label(Row row, Context ctx) {
        try {
            Object key = row.getField(spec.keyIndex);
            if (key == null || "".equals(key)) { // the label does not name this entity's key
                return;
            }
            JsonNode extras = JSON.readTree((String) row.getField(spec.extrasIndex));
            String label = extras.get("label").asText();
            if (!label.equals("fraud") && !label.equals("legit")) {
                throw new IllegalArgumentException("label " + label);
            }
            KnownFraud k = KnownFraud.decode(known.value());
            boolean armed = k != null; // a key's label store holds one pending cleanup timer (onTimer re-arms it)
            if (k == null) {
                k = new KnownFraud();
            }
            long ets = (Long) row.getField(spec.tsIndex);
            if (spec.labelSignals) {
                k.apply((String) row.getField(spec.userIdIndex), ets, label.equals("fraud"));
            }
            if (spec.labelKeepMs > 0) {
                k.applyFraudLabel((String) row.getField(spec.eventIdIndex), ets, label.equals("fraud"), spec.labelKeepMs);
            }
            if (spec.countsLabels) {
                (label.equals("fraud") ? fraudCounter : legitCounter).inc();
            }
            long now = System.currentTimeMillis();
            boolean held = graphLabelsOn && graphLabel(row, ets, label.equals("fraud"), now, ctx);
            if (k.isEmpty()) {
                known.clear();
                armed = true; // nothing to clean up
            } else {
                k.at = now;
                known.update(k.encode());
                held = true;
            }
            if (!held) {
                return;
            }
            byte[] w = state.value();
            if (w != null) { // tell the key's window state that its label store holds something now
                KeyState st = KeyState.decode(w, spec);
                if (!st.labels) {
                    st.labels = true;
                    state.update(st.encode(spec));
                }
            }
            if (!armed) {
                ctx.timerService().registerProcessingTimeTimer(EntityWindows.gridTimer(now + labelTtl));
            }
        } catch (Exception e) { // a label must never fail the job
            errorCounter.inc();
            System.out.println("[riskstream] " + entity + " stage: label for " + row.getField(spec.eventIdIndex) + " not applied: "
                + e.getClass().getSimpleName() + ": " + e.getMessage());
        }
    }

    /** The key's graph label store after one label (udfs.graph.fold_label); whether it holds something. A
     * store that was empty arms its processing-time cleanup timer (one pending, as the window label store's). */
    private boolean graphLabel(Row row, long ets, boolean fraud, long now, Context ctx) throws Exception {
        GraphLabels gl = GraphLabels.decode(graphLabels.value());
        boolean armed = gl != null;
        if (gl == null) {
            gl = new GraphLabels();
        }
        gl.fold((String) row.getField(spec.eventIdIndex), (String) row.getField(spec.userIdIndex), ets, fraud,
            graph.labelKeepMs(), graph.maxLabels);
        if (gl.isEmpty()) {
            graphLabels.clear();
            return false;
        }
        gl.at = now;
        graphLabels.update(gl.encode());
        if (!armed) {
            ctx.timerService().registerProcessingTimeTimer(EntityWindows.gridTimer(now + graphLabelTtl));
        }
        return true;
    }

    @Override
    public void onTimer(long timestamp, OnTimerContext ctx, Collector<Row> out) throws Exception {
        if (ctx.timeDomain() == TimeDomain.PROCESSING_TIME) { // only label cleanup uses processing time
            if (graphLabelsOn) {
                GraphLabels gl = GraphLabels.decode(graphLabels.value());
                if (gl != null) {
                    if (gl.at + graphLabelTtl <= timestamp) {
                        graphLabels.clear();
                    } else {
                        ctx.timerService().registerProcessingTimeTimer(EntityWindows.gridTimer(gl.at + graphLabelTtl));
                    }
                }
            }
            if (labelsOn) {
                KnownFraud k = KnownFraud.decode(known.value());
                if (k != null) {
                    if (k.at + labelTtl <= timestamp) {
                        known.clear();
                    } else { // labels came since it was armed; timers at one grid point collapse into one
                        ctx.timerService().registerProcessingTimeTimer(EntityWindows.gridTimer(k.at + labelTtl));
                    }
                }
            }
            return;
        }
        KeyState st = KeyState.decode(state.value(), spec);
        int what = windows.cleanup(st, timestamp);
        if (what == 1) {
            clearKey(); // idle past the longest horizon + lateness: no event can read it again
        } else if (what == 2) {
            if (st.timer <= ctx.timerService().currentWatermark()) {
                // the re-armed timer would fire in this same watermark advance and clear the key (a late
                // watermark jump, or the end of a bounded input): clear it now, without the timer's write,
                // delete and second read
                clearKey();
            } else {
                ctx.timerService().registerEventTimeTimer(st.timer);
                state.update(st.encode(spec));
            }
        }
    }

    /** The key's window state, and its graph state with it (udfs.chain.Chain._fire_timers). */
    private void clearKey() {
        state.clear();
        if (members != null) {
            graphState.clear();
        }
    }

    // -- dead letters (udfs.events.dead_letter_record(encode_event(ev), ..., reencoded=True)) ----------
    byte[] deadLetter(Row row, String reason, String detail, String job) {
        return deadLetter(row, spec, reason, detail, job);
    }

    static byte[] deadLetter(Row row, EntitySpec spec, String reason, String detail, String job) {
        byte[] raw;
        try {
            raw = encodeEvent(row, spec);
        } catch (Exception e) {
            raw = String.valueOf(row).getBytes(StandardCharsets.UTF_8);
        }
        try {
            ByteArrayOutputStream buf = new ByteArrayOutputStream();
            try (JsonGenerator g = JSON_FACTORY.createGenerator(buf)) {
                g.writeStartObject();
                g.writeStringField("reason", reason);
                g.writeStringField("detail", detail.length() > 200 ? detail.substring(0, 200) : detail);
                // bounded as every dead letter (DeadLetters): a prefix, the size and the SHA-256 above the bound
                boolean cut = raw.length > DeadLetters.ORIGINAL_MAX_BYTES;
                g.writeStringField("original_b64", Base64.getEncoder().encodeToString(
                    cut ? Arrays.copyOf(raw, DeadLetters.ORIGINAL_MAX_BYTES) : raw));
                g.writeNumberField("original_size", raw.length);
                if (cut) {
                    g.writeStringField("original_sha256", DeadLetters.sha256Hex(raw));
                    g.writeBooleanField("original_truncated", true);
                }
                g.writeStringField("job", job);
                g.writeNumberField("dead_at", System.currentTimeMillis());
                g.writeBooleanField("original_reencoded", true);
                g.writeEndObject();
            }
            return buf.toByteArray();
        } catch (IOException e) {
            throw new IllegalStateException(e);
        }
    }

    /** The event as udfs.events.encode_event writes it: its fields in order, extras/payment_ref when set. */
    static byte[] encodeEvent(Row row, EntitySpec spec) throws IOException {
        ByteArrayOutputStream buf = new ByteArrayOutputStream();
        try (JsonGenerator g = JSON_FACTORY.createGenerator(buf)) {
            g.writeStartObject();
            for (int i = 0; i < spec.nEvent; i++) {
                String name = spec.recordFields[i];
                Object v = row.getField(i);
                if (v == null) {  // only optional fields are ever null in a parsed event: absent
                    continue;
                }
                g.writeFieldName(name);
                if (v == null) {
                    g.writeNull();
                } else if (name.equals("extras")) {
                    g.writeRawValue((String) v); // already JSON text (orjson's)
                } else if (v instanceof Double) {
                    g.writeNumber(formatDouble((Double) v));
                } else if (v instanceof Long) {
                    g.writeNumber((Long) v);
                } else {
                    g.writeString(String.valueOf(v));
                }
            }
            g.writeEndObject();
        }
        return buf.toByteArray();
    }

    /** A float as orjson writes it for the usual amounts: 12.0, 12.5 (not Java's 1.0E9 forms). */
    static String formatDouble(double v) {
        if (v == Math.rint(v) && Math.abs(v) < 1e16) {
            return (long) v + ".0";
        }
        String s = Double.toString(v);
        int e = s.indexOf('E');
        if (e < 0) {
            return s;
        }
        String mant = s.substring(0, e);
        if (mant.endsWith(".0")) {
            mant = mant.substring(0, mant.length() - 2);
        }
        return mant + "e" + s.substring(e + 1);
    }
}
