package io.riskstream.flink;

import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.state.ValueState;
import org.apache.flink.api.common.state.ValueStateDescriptor;
import org.apache.flink.api.common.typeinfo.PrimitiveArrayTypeInfo;
import org.apache.flink.metrics.Counter;
import org.apache.flink.streaming.api.functions.KeyedProcessFunction;
import org.apache.flink.types.Row;
import org.apache.flink.util.Collector;

import io.riskstream.flink.graph.GraphContext;
import io.riskstream.flink.graph.GraphSpec;
import io.riskstream.flink.graph.LinkPart;

/**
 * The graph features' link stage in the JVM (docs/features.md#graph-features; udfs.chain.Chain runs
 * udfs.graph.LinkPart), keyed by user after the members stages: reads the record's graph context, keeps the
 * user's entities and their last sketches ({@link LinkPart.State}, one ValueState&lt;byte[]&gt;), appends the
 * link's graph values and sets the context to null (the decide stage never reads it). Cleanup: one pending
 * event-time timer per key at {@link LinkPart#expiresAt}, re-armed when it fires before the key's current
 * expiry (Chain._fire_link_timer). Labels never reach it; a record it cannot process is a processing_error
 * dead letter, as the entity stages'.
 */
public class GraphLinkFunction extends KeyedProcessFunction<String, Row, Row> {
    private static final long serialVersionUID = 1L;

    private final String specJson;
    private final String entity;
    private final String jobName;

    private transient EntitySpec spec;
    private transient GraphSpec graph;
    private transient LinkPart link;
    private transient ValueState<byte[]> state;
    private transient Counter errorCounter;

    public GraphLinkFunction(String specJson, String entity, String jobName) {
        this.specJson = specJson;
        this.entity = entity;
        this.jobName = jobName;
        check(specJson, entity);
    }

    private static GraphSpec check(String specJson, String entity) {
        GraphSpec g = GraphSpec.parse(specJson, entity);
        if (g == null || !g.role.equals(GraphSpec.LINK)) {
            throw new IllegalArgumentException(entity + " is not the spec's graph link stage");
        }
        return g;
    }

    @Override
    public void open(OpenContext openContext) {
        spec = EntitySpec.parse(specJson, entity);
        graph = check(specJson, entity);
        link = new LinkPart(graph);
        state = getRuntimeContext().getState(
            new ValueStateDescriptor<>(entity + "_graph", PrimitiveArrayTypeInfo.BYTE_PRIMITIVE_ARRAY_TYPE_INFO));
        errorCounter = getRuntimeContext().getMetricGroup().counter("processing_errors");
    }

    @Override
    public void processElement(Row row, Context ctx, Collector<Row> out) throws Exception {
        if (EntityWindowsFunction.LABEL_MARK.equals(row.getField(spec.eventTypeIndex))) {
            return;
        }
        Row result;
        try {
            long ts = (Long) row.getField(spec.tsIndex);
            GraphContext gc = GraphContext.decode((byte[]) row.getField(graph.graphIndex), graph.members.length, ts,
                graph.noFraud);
            double[] gv = new double[graph.aggs.length];
            LinkPart.State st = link.step(LinkPart.State.decode(state.value(), graph.noFraud),
                (String) row.getField(graph.userIdIndex), ts, gc, gv);
            if (!st.hasTimer) {
                st.hasTimer = true;
                st.timer = link.expiresAt(st);
                ctx.timerService().registerEventTimeTimer(st.timer);
            }
            state.update(st.encode(graph.noFraud));
            result = Row.withPositions(spec.arity);
            for (int i = 0; i < spec.arity; i++) {
                result.setField(i, row.getField(i));
            }
            double[] prev = (double[]) row.getField(spec.valuesIndex);
            result.setField(spec.valuesIndex, prev == null ? gv : EntityWindowsFunction.concat(prev, gv));
            result.setField(graph.graphIndex, null);
        } catch (Exception e) {
            errorCounter.inc();
            ctx.output(EntityWindowsFunction.DEAD_LETTER, EntityWindowsFunction.deadLetter(row, spec, "processing_error",
                entity + " stage: " + e.getClass().getSimpleName() + ": " + e.getMessage(), jobName));
            return;
        }
        out.collect(result);
    }

    @Override
    public void onTimer(long timestamp, OnTimerContext ctx, Collector<Row> out) throws Exception {
        LinkPart.State st = LinkPart.State.decode(state.value(), graph.noFraud);
        if (st == null) {
            return;
        }
        long expiry = link.expiresAt(st);
        if (expiry <= timestamp) {
            state.clear();
        } else if (st.hasTimer && st.timer == timestamp) {
            st.timer = expiry;
            ctx.timerService().registerEventTimeTimer(expiry);
            state.update(st.encode(graph.noFraud));
        }
    }
}
