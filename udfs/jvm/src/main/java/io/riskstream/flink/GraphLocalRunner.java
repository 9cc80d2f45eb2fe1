package io.riskstream.flink;

import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;

import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.JsonNode;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.ObjectMapper;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.node.ArrayNode;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.node.ObjectNode;
import org.apache.flink.types.Row;

import io.riskstream.flink.graph.GraphContext;
import io.riskstream.flink.graph.GraphLabels;
import io.riskstream.flink.graph.GraphSpec;
import io.riskstream.flink.graph.LinkPart;
import io.riskstream.flink.graph.MemberPart;
import io.riskstream.flink.graph.Sketch;
import io.riskstream.flink.graph.UserPart;

/**
 * The whole JVM chain with graph features over in-memory encoded states, without Flink (as
 * {@link LocalRunner} for one stage): every stage of the spec in order, the window label stores and the graph
 * label stores folded from label records, the graph context encoded and decoded between stages as on the
 * record. For fast parity tests against udfs.chain.Chain and for the graph state's bytes per key. Pitfall: no
 * timers run (an expired key reads as fresh in the windows; the graph parts evict what an expired key held),
 * and the label stores' processing-time TTL never fires.
 */
public final class GraphLocalRunner {
    private static final ObjectMapper JSON = new ObjectMapper();

    private GraphLocalRunner() {}

    /**
     * {@code recordsJsonl}: per line the record's event fields (udfs.chain.label_record's for a label: its
     * event_type is the label mark). Returns JSON {"values": [per event the values in chain order, or null
     * for a duplicate], "context_bytes": [the graph field's size at the link stage, per event, sorted],
     * "graph_state_bytes": {stage: {key: bytes}}, "graph_label_bytes": {...}}.
     */
    public static String run(String specJson, long dedupHorizonMs, String recordsJsonl) throws Exception {
        JsonNode doc = JSON.readTree(specJson);
        List<String> names = new ArrayList<>();
        for (JsonNode e : doc.get("entities")) {
            names.add(e.get("name").asText());
        }
        int n = names.size();
        EntitySpec[] specs = new EntitySpec[n];
        EntityWindows[] windows = new EntityWindows[n];
        GraphSpec[] graphs = new GraphSpec[n];
        List<Map<String, byte[]>> states = new ArrayList<>(), known = new ArrayList<>(), gstates = new ArrayList<>(),
            glabels = new ArrayList<>();
        for (int i = 0; i < n; i++) {
            specs[i] = EntitySpec.parse(specJson, names.get(i));
            graphs[i] = GraphSpec.parse(specJson, names.get(i));
            boolean link = graphs[i] != null && graphs[i].role.equals(GraphSpec.LINK);
            windows[i] = link ? null : new EntityWindows(specs[i]);
            states.add(new HashMap<>());
            known.add(new HashMap<>());
            gstates.add(new TreeMap<>());
            glabels.add(new TreeMap<>());
        }
        EntitySpec s0 = specs[0];
        ObjectNode res = JSON.createObjectNode();
        ArrayNode values = res.putArray("values");
        List<Integer> contextBytes = new ArrayList<>(); // the record's graph field as the link stage reads it
        for (String line : recordsJsonl.split("\n")) {
            if (line.isEmpty()) {
                continue;
            }
            Row row = LocalRunner.toRow(JSON.readTree(line), s0);
            boolean label = EntityWindowsFunction.LABEL_MARK.equals(row.getField(s0.eventTypeIndex));
            long ts = (Long) row.getField(s0.tsIndex);
            String user = (String) row.getField(s0.userIdIndex);
            if (label) {
                boolean fraud = JSON.readTree((String) row.getField(s0.extrasIndex)).get("label").asText().equals("fraud");
                String ident = (String) row.getField(s0.eventIdIndex);
                for (int i = 0; i < n; i++) {
                    String key = (String) row.getField(specs[i].keyIndex);
                    if (key == null || key.isEmpty() || !specs[i].readsLabels) {
                        continue;
                    }
                    KnownFraud k = KnownFraud.decode(known.get(i).get(key));
                    k = k == null ? new KnownFraud() : k;
                    if (specs[i].labelSignals) {
                        k.apply(user, ts, fraud);
                    }
                    if (specs[i].labelKeepMs > 0) {
                        k.applyFraudLabel(ident, ts, fraud, specs[i].labelKeepMs);
                    }
                    put(known.get(i), key, k.isEmpty() ? null : k.encode());
                    if (graphs[i] != null) {
                        GraphLabels g = GraphLabels.decode(glabels.get(i).get(key));
                        g = g == null ? new GraphLabels() : g;
                        g.fold(ident, user, ts, fraud, graphs[i].labelKeepMs(), graphs[i].maxLabels);
                        put(glabels.get(i), key, g.isEmpty() ? null : g.encode());
                    }
                }
                continue;
            }
            List<Double> out = new ArrayList<>();
            GraphContext ctx = null;
            boolean dup = false;
            for (int i = 0; i < n && !dup; i++) {
                EntitySpec sp = specs[i];
                GraphSpec g = graphs[i];
                String key = (String) row.getField(sp.keyIndex);
                if (g != null && g.role.equals(GraphSpec.LINK)) {
                    byte[] wire = ctx == null ? null : ctx.encode(ts, g.noFraud);
                    contextBytes.add(wire == null ? 0 : wire.length);
                    GraphContext c = GraphContext.decode(wire, g.members.length, ts, g.noFraud);
                    double[] gv = new double[g.aggs.length];
                    LinkPart lp = new LinkPart(g);
                    LinkPart.State st = lp.step(LinkPart.State.decode(gstates.get(i).get(key), g.noFraud), user, ts, c, gv);
                    gstates.get(i).put(key, st.encode(g.noFraud));
                    add(out, gv);
                    continue;
                }
                MemberPart mp = g != null && g.role.equals(GraphSpec.MEMBERS) ? new MemberPart(g) : null;
                if (key == null) {
                    add(out, windows[i].emptyValues());
                    if (mp != null) {
                        add(out, mp.emptyValues());
                    }
                    continue;
                }
                KeyState st = KeyState.decode(states.get(i).get(key), sp);
                long horizon = sp.dedup ? dedupHorizonMs : 0;
                if (horizon != 0 && windows[i].duplicate(st, (String) row.getField(sp.eventIdIndex), ts, horizon)) {
                    dup = true;
                    break;
                }
                KnownFraud kf = KnownFraud.decode(known.get(i).get(key));
                EntityWindows.Step r = windows[i].step(st, row, horizon, kf == null ? null : kf.lab);
                states.get(i).put(key, r.state.encode(sp));
                add(out, r.values);
                if (g == null) {
                    continue;
                }
                GraphLabels gl = GraphLabels.decode(glabels.get(i).get(key));
                if (mp == null) {
                    ctx = new UserPart(g).step(gl, user);
                } else {
                    GraphContext c = GraphContext.decode(ctx == null ? null : ctx.encode(ts, g.noFraud),
                        g.members.length, ts, g.noFraud);
                    String[] pk = new String[g.pairFields.length];
                    for (int j = 0; j < pk.length; j++) {
                        pk[j] = (String) row.getField(g.pairFields[j]);
                    }
                    double[] gv = new double[g.aggs.length];
                    MemberPart.State gs = mp.step(MemberPart.State.decode(gstates.get(i).get(key), g.noFraud), gl,
                        key, user, ts, pk, c, gv);
                    gstates.get(i).put(key, gs.encode(g.noFraud));
                    add(out, gv);
                    ctx = c;
                }
            }
            if (dup) {
                values.addNull();
            } else {
                ArrayNode a = values.addArray();
                out.forEach(a::add);
            }
        }
        contextBytes.sort(null);
        ArrayNode cb = res.putArray("context_bytes");
        contextBytes.forEach(cb::add);
        ObjectNode sb = res.putObject("graph_state_bytes");
        ObjectNode lb = res.putObject("graph_label_bytes");
        for (int i = 0; i < n; i++) {
            ObjectNode o = sb.putObject(names.get(i));
            gstates.get(i).forEach((k, v) -> o.put(k, v.length));
            ObjectNode l = lb.putObject(names.get(i));
            glabels.get(i).forEach((k, v) -> l.put(k, v.length));
        }
        return JSON.writeValueAsString(res);
    }

    private static void put(Map<String, byte[]> m, String key, byte[] v) {
        if (v == null) {
            m.remove(key);
        } else {
            m.put(key, v);
        }
    }

    private static void add(List<Double> out, double[] v) {
        for (double d : v) {
            out.add(d);
        }
    }

    // -- encodings, for round-trip tests: JSON in, decoded-after-encoded JSON out, plus the byte size ------
    /** {"fraud", "ts", "sketch": {stage index: {"key", "users": {user: [edge, fraud]}}}, "side": {...}}. */
    public static String contextRoundTrip(String specJson, String entity, String json) throws Exception {
        GraphSpec g = GraphSpec.parse(specJson, entity);
        JsonNode o = JSON.readTree(json);
        long ts = o.get("ts").asLong();
        GraphContext c = new GraphContext(g.members.length, o.get("fraud").asLong());
        o.get("sketch").fields().forEachRemaining(e -> {
            int i = Integer.parseInt(e.getKey());
            c.keys[i] = e.getValue().get("key").asText();
            c.sketch[i] = sketch(e.getValue().get("users"));
        });
        c.side.putAll(sketch(o.get("side")));
        byte[] b = c.encode(ts, g.noFraud);
        GraphContext d = GraphContext.decode(b, g.members.length, ts, g.noFraud);
        ObjectNode r = JSON.createObjectNode();
        r.put("bytes", b.length);
        r.put("fraud", d.fraud);
        r.put("ts", ts);
        ObjectNode sk = r.putObject("sketch");
        for (int i = 0; i < d.sketch.length; i++) {
            if (d.sketch[i] != null) {
                ObjectNode x = sk.putObject(String.valueOf(i));
                x.put("key", d.keys[i]);
                x.set("users", json(d.sketch[i]));
            }
        }
        r.set("side", json(d.side));
        return JSON.writeValueAsString(r);
    }

    /** A members state {"newest", "m": {user: [edge, fraud, {user: [edge, fraud]}]}, "p": [[user, ek, ts]]}. */
    public static String memberStateRoundTrip(String specJson, String entity, String json) throws Exception {
        GraphSpec g = GraphSpec.parse(specJson, entity);
        JsonNode o = JSON.readTree(json);
        MemberPart.State s = new MemberPart.State();
        s.newest = o.get("newest").asLong();
        o.get("m").fields().forEachRemaining(e -> s.m.put(e.getKey(), new MemberPart.Member(
            e.getValue().get(0).asLong(), e.getValue().get(1).asLong(), sketch(e.getValue().get(2)))));
        for (JsonNode p : o.get("p")) {
            s.pairs.put(new MemberPart.Pair(p.get(0).asText(), p.get(1).asText()), p.get(2).asLong());
        }
        byte[] b = s.encode(g.noFraud);
        MemberPart.State d = MemberPart.State.decode(b, g.noFraud);
        ObjectNode r = JSON.createObjectNode();
        r.put("bytes", b.length);
        r.put("newest", d.newest);
        ObjectNode m = r.putObject("m");
        d.m.forEach((u, x) -> {
            ArrayNode a = m.putArray(u);
            a.add(x.edge);
            a.add(x.fraud);
            a.add(json(x.snap));
        });
        ArrayNode p = r.putArray("p");
        d.pairs.forEach((k, t) -> {
            ArrayNode a = p.addArray();
            a.add(k.user);
            a.add(k.ek);
            a.add(t);
        });
        return JSON.writeValueAsString(r);
    }

    /** A link state {"newest", "timer" (or null), "e": {ek: [last, {user: [edge, fraud]}]}}. */
    public static String linkStateRoundTrip(String specJson, String entity, String json) throws Exception {
        GraphSpec g = GraphSpec.parse(specJson, entity);
        JsonNode o = JSON.readTree(json);
        LinkPart.State s = new LinkPart.State();
        s.newest = o.get("newest").asLong();
        if (!o.get("timer").isNull()) {
            s.hasTimer = true;
            s.timer = o.get("timer").asLong();
        }
        o.get("e").fields().forEachRemaining(e -> s.e.put(e.getKey(), new LinkPart.Entity(
            e.getValue().get(0).asLong(), sketch(e.getValue().get(1)))));
        byte[] b = s.encode(g.noFraud);
        LinkPart.State d = LinkPart.State.decode(b, g.noFraud);
        ObjectNode r = JSON.createObjectNode();
        r.put("bytes", b.length);
        r.put("newest", d.newest);
        if (d.hasTimer) {
            r.put("timer", d.timer);
        } else {
            r.putNull("timer");
        }
        ObjectNode e = r.putObject("e");
        d.e.forEach((k, x) -> {
            ArrayNode a = e.putArray(k);
            a.add(x.last);
            a.add(json(x.sketch));
        });
        return JSON.writeValueAsString(r);
    }

    /** A graph label store [[ident, user, ts], ...] (in order) with its "at". */
    public static String labelsRoundTrip(String json) throws Exception {
        JsonNode o = JSON.readTree(json);
        GraphLabels g = new GraphLabels();
        g.at = o.get("at").asLong();
        for (JsonNode x : o.get("lab")) {
            g.lab.put(x.get(0).asText(), new Object[] {x.get(1).asText(), x.get(2).asLong()});
        }
        byte[] b = g.encode();
        GraphLabels d = GraphLabels.decode(b);
        ObjectNode r = JSON.createObjectNode();
        r.put("bytes", b.length);
        r.put("at", d.at);
        ArrayNode lab = r.putArray("lab");
        d.lab.forEach((k, v) -> {
            ArrayNode a = lab.addArray();
            a.add(k);
            a.add((String) v[0]);
            a.add((Long) v[1]);
        });
        return JSON.writeValueAsString(r);
    }

    /** Python's str order of a JSON array of strings (for the code-point comparison's test). */
    public static String sortCodePoints(String json) throws Exception {
        List<String> s = new ArrayList<>();
        JSON.readTree(json).forEach(x -> s.add(x.asText()));
        s.sort(Sketch::compareCodePoints);
        return JSON.writeValueAsString(s);
    }

    private static Map<String, long[]> sketch(JsonNode o) {
        Map<String, long[]> m = Sketch.of();
        o.fields().forEachRemaining(e -> m.put(e.getKey(), new long[] {e.getValue().get(0).asLong(),
            e.getValue().get(1).asLong()}));
        return m;
    }

    private static ObjectNode json(Map<String, long[]> m) {
        ObjectNode o = JSON.createObjectNode();
        m.forEach((u, e) -> {
            ArrayNode a = o.putArray(u);
            a.add(e[0]);
            a.add(e[1]);
        });
        return o;
    }
}
