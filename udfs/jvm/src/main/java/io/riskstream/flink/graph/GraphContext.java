package io.riskstream.flink.graph;

import java.util.Map;

import io.riskstream.flink.aggregates.StateBytes;

/**
 * What a record carries between the graph stages (udfs.graph.new_context): the user's known-fraud time
 * (set by the user stage), per members stage the sketch it attached and the key it had, and the union of
 * the members stages' side sets (the reference keeps one per stage; the link stage only merges them all
 * into the group, and the merge is per user the max of each time, so one union gives the same group).
 * <p>Encoding (the Row's {@code graph} field), times relative to the event's ts (zigzag varint deltas; a
 * fraud time 0 for none, see {@link Sketch#fraud}):
 * <pre>
 * version(1) | fraud | strings: n, n x (utf8 length, bytes)     -- every user id, once
 * | stages: n, n x (members index byte, key as utf8 length + bytes, sketch: m, m x (user index, edge, fraud))
 * | side: m, m x (user index, edge, fraud)
 * </pre>
 * Pitfall: a stage without a key (an optional entity's keyless event) attaches no sketch: absent, not empty.
 */
public final class GraphContext {
    static final int VERSION = 1;

    public long fraud;
    /** per members stage (GraphSpec.members order): its sketch and key, null when it attached none. */
    public final Map<String, long[]>[] sketch;
    public final String[] keys;
    public final Map<String, long[]> side = Sketch.of();

    @SuppressWarnings("unchecked")
    public GraphContext(int nMembers, long fraud) {
        this.fraud = fraud;
        sketch = new Map[nMembers];
        keys = new String[nMembers];
    }

    public byte[] encode(long ts, long noFraud) {
        StateBytes.Out body = new StateBytes.Out();
        Sketch.Table table = new Sketch.Table();
        int n = 0;
        for (Map<String, long[]> s : sketch) {
            n += s == null ? 0 : 1;
        }
        body.v(n);
        for (int i = 0; i < sketch.length; i++) {
            if (sketch[i] != null) {
                body.b(i);
                body.str(keys[i]);
                Sketch.write(body, sketch[i], table, ts, noFraud);
            }
        }
        Sketch.write(body, side, table, ts, noFraud);
        StateBytes.Out head = new StateBytes.Out();
        head.b(VERSION);
        Sketch.fraud(head, ts, fraud, noFraud);
        table.write(head);
        return head.concat(body);
    }

    /** The context of {@code data} (null: a fresh one, no known fraud). */
    public static GraphContext decode(byte[] data, int nMembers, long ts, long noFraud) {
        if (data == null) {
            return new GraphContext(nMembers, noFraud);
        }
        StateBytes.In in = new StateBytes.In(data);
        int version = in.b();
        if (version != VERSION) {
            throw new IllegalStateException("unknown graph context version " + version);
        }
        GraphContext c = new GraphContext(nMembers, Sketch.fraud(in, ts, noFraud));
        String[] strings = Sketch.Table.read(in);
        int n = (int) in.v();
        for (int k = 0; k < n; k++) {
            int i = in.b();
            if (i >= nMembers) {
                throw new IllegalStateException("graph context names members stage " + i + " of " + nMembers);
            }
            c.keys[i] = in.str();
            c.sketch[i] = Sketch.read(in, strings, ts, noFraud);
        }
        c.side.putAll(Sketch.read(in, strings, ts, noFraud));
        return c;
    }
}
