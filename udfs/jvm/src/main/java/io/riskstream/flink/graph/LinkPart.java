package io.riskstream.flink.graph;

import java.util.ArrayList;
import java.util.Comparator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

import io.riskstream.flink.aggregates.StateBytes;

/**
 * The link stage's part (udfs.graph.LinkPart), keyed by user: per user the entities it used ("stage\0key",
 * the {@code entitiesCap} most recent by time, then key in code-point order), each with the sketch that
 * entity attached to the user's last event there; the user's two-hop users and the group. Pitfalls: an
 * entity's stored time is the max of its events' but its sketch is the last event's (even out of order);
 * each stored sketch is evaluated on its own (liveness per sketch, then the union); the user itself is
 * dropped from the two-hop users but is in the group (with the event's time and the context's fraud time,
 * merged with what the sketches and sides say of it).
 */
public final class LinkPart {
    final GraphSpec g;

    public LinkPart(GraphSpec g) {
        this.g = g;
    }

    /** An entity the user used: the newest time, the sketch its last event there carried. */
    public static final class Entity {
        public long last;
        public Map<String, long[]> sketch;

        public Entity(long last, Map<String, long[]> sketch) {
            this.last = last;
            this.sketch = sketch;
        }
    }

    /** One user's link state; {@code timer}: its one pending cleanup timer (hasTimer). */
    public static final class State {
        public long newest, timer;
        public boolean hasTimer;
        public final LinkedHashMap<String, Entity> e = new LinkedHashMap<>();

        /**
         * version(1) | zigzag newest | timer (0 none, else zigzag(timer - newest) + 1)
         * | strings: n, n x (utf8 length, bytes) -- entity keys and user ids
         * | entities: n, n x (key index, time, sketch: m, m x (user index, edge, fraud)); times relative
         * to newest.
         */
        public byte[] encode(long noFraud) {
            StateBytes.Out body = new StateBytes.Out();
            Sketch.Table table = new Sketch.Table();
            body.v(e.size());
            for (Map.Entry<String, Entity> x : e.entrySet()) {
                body.v(table.id(x.getKey()));
                Sketch.time(body, newest, x.getValue().last);
                Sketch.write(body, x.getValue().sketch, table, newest, noFraud);
            }
            StateBytes.Out head = new StateBytes.Out();
            head.b(1);
            head.v(StateBytes.zz(newest));
            head.v(hasTimer ? StateBytes.zz(timer - newest) + 1 : 0);
            table.write(head);
            return head.concat(body);
        }

        public static State decode(byte[] data, long noFraud) {
            if (data == null) {
                return null;
            }
            StateBytes.In in = new StateBytes.In(data);
            int version = in.b();
            if (version != 1) {
                throw new IllegalStateException("unknown graph link state version " + version);
            }
            State s = new State();
            s.newest = StateBytes.unzz(in.v());
            long t = in.v();
            if (t != 0) {
                s.hasTimer = true;
                s.timer = s.newest + StateBytes.unzz(t - 1);
            }
            String[] strings = Sketch.Table.read(in);
            int n = (int) in.v();
            for (int i = 0; i < n; i++) {
                String k = strings[(int) in.v()];
                long last = Sketch.time(in, s.newest);
                s.e.put(k, new Entity(last, Sketch.read(in, strings, s.newest, noFraud)));
            }
            return s;
        }
    }

    /** LinkPart.expires_at: the event time from which no event can read the key's state. */
    public long expiresAt(State st) {
        return st.newest + g.horizonMs + g.lateness + 1;
    }

    /** One event of {@code user} at {@code t}: the updated state (null in: a new key), values in {@code out}. */
    public State step(State st, String user, long t, GraphContext ctx, double[] out) {
        if (st == null) {
            st = new State();
            st.newest = t;
        } else {
            st.newest = Math.max(st.newest, t);
        }
        for (int i = 0; i < g.members.length; i++) {
            if (ctx.sketch[i] != null) {
                String ek = g.members[i] + "\u0000" + ctx.keys[i];
                Entity old = st.e.get(ek);
                if (old == null) {
                    st.e.put(ek, new Entity(t, ctx.sketch[i]));
                } else {
                    old.last = Math.max(old.last, t);
                    old.sketch = ctx.sketch[i];
                }
            }
        }
        long floor = st.newest - g.horizonMs - g.lateness;
        st.e.values().removeIf(x -> x.last < floor);
        if (st.e.size() > g.entitiesCap) {
            List<Map.Entry<String, Entity>> all = new ArrayList<>(st.e.entrySet());
            all.sort(Comparator.<Map.Entry<String, Entity>>comparingLong(x -> x.getValue().last)
                .thenComparing((a, b) -> Sketch.compareCodePoints(a.getKey(), b.getKey())));
            for (int i = 0; i < all.size() - g.entitiesCap; i++) {
                st.e.remove(all.get(i).getKey());
            }
        }
        long lo = t - g.horizonMs;
        Map<String, long[]> n2 = Sketch.of();
        for (Entity x : st.e.values()) {
            if (x.last >= lo) {
                Sketch.mergeLive(n2, x.sketch, lo);
            }
        }
        n2.remove(user);
        Map<String, long[]> group = Sketch.of();
        group.put(user, new long[] {t, ctx.fraud});
        Sketch.mergeInto(group, n2);
        Sketch.mergeInto(group, ctx.side);
        long flo = t - g.labelHorizonMs;
        for (int i = 0; i < g.aggs.length; i++) {
            String a = g.aggs[i];
            out[i] = a.equals(GraphSpec.USERS) ? n2.size()
                : a.equals(GraphSpec.FRAUD_USERS) ? Sketch.fraudCount(n2, flo)
                : a.equals(GraphSpec.GROUP_USERS) ? group.size()
                : (double) Sketch.fraudCount(group, flo) / (double) group.size();
        }
        return st;
    }
}
