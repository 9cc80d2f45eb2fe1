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
 * this instance (and after every restart); otherwise null. Pitfall: that works because the decide stage
 * reads this instance's output through a forward channel, in order, and loses its cache exactly when
 * this operator does (a restart).
 */
public final class ControlAttach extends BroadcastProcessFunction<Row, Row, Row> {
    private static final long serialVersionUID = 1L;
    public static final MapStateDescriptor<String, String> STATE =
            new MapStateDescriptor<>("control-raw", Types.STRING, Types.STRING);
    private static final String VERSION = "\u0000version";

    private transient long sentVersion = -1;

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
        int n = record.getArity();
        Row r = new Row(RowKind.INSERT, n + 2);
        for (int i = 0; i < n; i++) {
            r.setField(i, record.getField(i));
        }
        r.setField(n, v);
        r.setField(n + 1, control);
        out.collect(r);
    }

    @Override
    public void processBroadcastElement(Row message, Context ctx, Collector<Row> out) throws Exception {
        BroadcastState<String, String> state = ctx.getBroadcastState(STATE);
        state.put((String) message.getField(0), (String) message.getField(1));
        state.put(VERSION, Long.toString(version(state) + 1));
    }
}
