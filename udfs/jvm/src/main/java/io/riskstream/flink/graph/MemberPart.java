package io.riskstream.flink.graph;

import java.util.ArrayList;
import java.util.Comparator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;

import io.riskstream.flink.aggregates.StateBytes;

/**
 * A members stage's part (udfs.graph.MemberPart: ip, device, payment) over one key's {@link State}.
 * Order of one step, as the reference: the key's newest time, its pairs (graph_shared_entities), the
 * member's entry (edge time the max, fraud time and the upstream sketches' union those of this event, even
 * when it is out of order), eviction below newest - horizon - lateness, the members cap (the most recent by
 * edge time, then user id in code-point order), then the sketch of live members (fraud time the newer of
 * the entry's and the key's labels) and the values. Pitfall: liveness applies to the stored union of
 * upstream sketches, not to each sketch.
 */
public final class MemberPart {
    final GraphSpec g;

    public MemberPart(GraphSpec g) {
        this.g = g;
    }

    /** A member: newest edge time, the fraud time and upstream sketches its last event here carried. */
    public static final class Member {
        public long edge, fraud;
        public Map<String, long[]> snap;

        public Member(long edge, long fraud, Map<String, long[]> snap) {
            this.edge = edge;
            this.fraud = fraud;
            this.snap = snap;
        }
    }

    /** A (user, entity) pair of graph_shared_entities; {@code ek} is "kind\0key" as in the reference. */
    public static final class Pair {
        public final String user, ek;

        public Pair(String user, String ek) {
            this.user = user;
            this.ek = ek;
        }

        @Override
        public boolean equals(Object o) {
            return o instanceof Pair && ((Pair) o).user.equals(user) && ((Pair) o).ek.equals(ek);
        }

        @Override
        public int hashCode() {
            return Objects.hash(user, ek);
        }
    }

    /** One key's graph state. */
    public static final class State {
        public long newest;
        public final LinkedHashMap<String, Member> m = new LinkedHashMap<>();
        public final LinkedHashMap<Pair, Long> pairs = new LinkedHashMap<>();

        /**
         * version(1) | zigzag newest | strings: n, n x (utf8 length, bytes) -- user ids and pair entities
         * | members: n, n x (user index, edge, fraud, upstream union: m, m x (user index, edge, fraud))
         * | pairs: n, n x (user index, entity index, time); times relative to newest ({@link Sketch#time}).
         */
        public byte[] encode(long noFraud) {
            StateBytes.Out body = new StateBytes.Out();
            Sketch.Table table = new Sketch.Table();
            body.v(m.size());
            for (Map.Entry<String, Member> e : m.entrySet()) {
                Member x = e.getValue();
                body.v(table.id(e.getKey()));
                Sketch.time(body, newest, x.edge);
                Sketch.fraud(body, newest, x.fraud, noFraud);
                Sketch.write(body, x.snap, table, newest, noFraud);
            }
            body.v(pairs.size());
            for (Map.Entry<Pair, Long> e : pairs.entrySet()) {
                body.v(table.id(e.getKey().user));
                body.v(table.id(e.getKey().ek));
                Sketch.time(body, newest, e.getValue());
            }
            StateBytes.Out head = new StateBytes.Out();
            head.b(1);
            head.v(StateBytes.zz(newest));
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
                throw new IllegalStateException("unknown graph member state version " + version);
            }
            State s = new State();
            s.newest = StateBytes.unzz(in.v());
            String[] strings = Sketch.Table.read(in);
            int n = (int) in.v();
            for (int i = 0; i < n; i++) {
                String u = strings[(int) in.v()];
                long edge = Sketch.time(in, s.newest);
                long fraud = Sketch.fraud(in, s.newest, noFraud);
                s.m.put(u, new Member(edge, fraud, Sketch.read(in, strings, s.newest, noFraud)));
            }
            n = (int) in.v();
            for (int i = 0; i < n; i++) {
                String u = strings[(int) in.v()];
                String ek = strings[(int) in.v()];
                s.pairs.put(new Pair(u, ek), Sketch.time(in, s.newest));
            }
            return s;
        }
    }

    public double[] emptyValues() {
        return new double[g.aggs.length];
    }

    /**
     * One event of {@code user} at {@code t} on this key: updates {@code st} (null: a new key; the state is
     * returned), attaches the sketch (and, with graph_users / graph_fraud_users, merges the side set into
     * the context's union) to {@code ctx}, writes the graph values to {@code out} (length aggs).
     * {@code pairKeys}: the event's keys of {@link GraphSpec#pairKinds} (null or "" for none).
     */
    public State step(State st, GraphLabels lab, String key, String user, long t, String[] pairKeys,
                      GraphContext ctx, double[] out) {
        if (st == null) {
            st = new State();
            st.newest = t;
        } else {
            st.newest = Math.max(st.newest, t);
        }
        long floor = st.newest - g.horizonMs - g.lateness;
        int shared = g.pairKinds.length > 0 ? pairs(st, user, t, pairKeys, floor) : 0;
        Map<String, long[]> snap = Sketch.of();
        for (int i = 0; i < g.upstream(); i++) {
            if (ctx.sketch[i] != null) {
                Sketch.mergeInto(snap, ctx.sketch[i]);
            }
        }
        Member old = st.m.get(user);
        if (old == null) {
            st.m.put(user, new Member(t, ctx.fraud, snap));
        } else {
            old.edge = Math.max(old.edge, t);
            old.fraud = ctx.fraud;
            old.snap = snap;
        }
        st.m.values().removeIf(x -> x.edge < floor);
        if (st.m.size() > g.membersCap) {
            List<Map.Entry<String, Member>> all = new ArrayList<>(st.m.entrySet());
            all.sort(Comparator.<Map.Entry<String, Member>>comparingLong(e -> e.getValue().edge)
                .thenComparing((a, b) -> Sketch.compareCodePoints(a.getKey(), b.getKey())));
            for (int i = 0; i < all.size() - g.membersCap; i++) {
                st.m.remove(all.get(i).getKey());
            }
        }
        Map<String, Long> labs = GraphLabels.fraudByUser(lab);
        long lo = t - g.horizonMs;
        Map<String, long[]> sketch = Sketch.of();
        for (Map.Entry<String, Member> e : st.m.entrySet()) {
            Member x = e.getValue();
            if (x.edge >= lo) {
                Long lf = labs.get(e.getKey());
                sketch.put(e.getKey(), new long[] {x.edge, lf == null ? x.fraud : Math.max(x.fraud, lf)});
            }
        }
        ctx.sketch[g.memberIndex] = sketch;
        ctx.keys[g.memberIndex] = key;
        if (g.aggs.length == 0) {
            return st;
        }
        double users = 0, fraudUsers = 0;
        if (g.has(GraphSpec.USERS) || g.has(GraphSpec.FRAUD_USERS)) { // the side joins the link's group
            Map<String, long[]> side = Sketch.of();
            Sketch.mergeInto(side, sketch);
            for (String v : sketch.keySet()) {
                Sketch.mergeLive(side, st.m.get(v).snap, lo);
            }
            Sketch.mergeInto(ctx.side, side);
            users = side.size();
            fraudUsers = Sketch.fraudCount(side, t - g.labelHorizonMs);
        }
        for (int i = 0; i < g.aggs.length; i++) {
            String a = g.aggs[i];
            out[i] = a.equals(GraphSpec.SHARED) ? shared : a.equals(GraphSpec.USERS) ? users : fraudUsers;
        }
        return st;
    }

    /** MemberPart._pairs: stores the event's pairs (newest time kept), evicts and caps them, and counts the
     * entities two or more users used with the key, each pair live. */
    private int pairs(State st, String user, long t, String[] pairKeys, long floor) {
        for (int i = 0; i < g.pairKinds.length; i++) {
            String k = pairKeys[i];
            if (k != null && !k.isEmpty()) {
                st.pairs.merge(new Pair(user, g.pairKinds[i] + "\u0000" + k), t, Math::max);
            }
        }
        st.pairs.values().removeIf(x -> x < floor);
        if (st.pairs.size() > g.pairsCap) {
            List<Map.Entry<Pair, Long>> all = new ArrayList<>(st.pairs.entrySet());
            all.sort(Comparator.<Map.Entry<Pair, Long>>comparingLong(Map.Entry::getValue)
                .thenComparing((a, b) -> Sketch.compareCodePoints(a.getKey().user, b.getKey().user))
                .thenComparing((a, b) -> Sketch.compareCodePoints(a.getKey().ek, b.getKey().ek)));
            for (int i = 0; i < all.size() - g.pairsCap; i++) {
                st.pairs.remove(all.get(i).getKey());
            }
        }
        long lo = t - g.horizonMs;
        Map<String, Object> first = new LinkedHashMap<>(); // ek -> its first live user, or Boolean.TRUE once two
        int n = 0;
        for (Map.Entry<Pair, Long> e : st.pairs.entrySet()) {
            if (e.getValue() < lo) {
                continue;
            }
            String ek = e.getKey().ek;
            Object seen = first.get(ek);
            if (seen == null) {
                first.put(ek, e.getKey().user);
            } else if (seen != Boolean.TRUE && !seen.equals(e.getKey().user)) {
                first.put(ek, Boolean.TRUE);
                n++;
            }
        }
        return n;
    }
}
