package io.riskstream.flink.graph;

import java.io.Serializable;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.JsonNode;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.ObjectMapper;

/**
 * One stage's part in the graph features (docs/features.md#graph-features), compiled from the spec document
 * ({@code udfs.chain.spec_document}): its role ({@code entities[].graph}: user, members, link), the graph's
 * constants (the document's {@code "graph"} section: horizons, caps, the label store's cap, the no-fraud
 * time, the kinds {@code graph_shared_entities} pairs), the members stages in chain order, and the entity's
 * graph aggregates in feature order. Nothing here restates a constant of udfs/graph.py; a spec that names
 * graph features without the section, a graph aggregate on an entity whose role cannot compute it, or a
 * record without the {@code graph} field fails here, when the job is built.
 */
public final class GraphSpec implements Serializable {
    private static final long serialVersionUID = 1L;

    public static final String USER = "user", MEMBERS = "members", LINK = "link";
    public static final String USERS = "graph_users", FRAUD_USERS = "graph_fraud_users",
        GROUP_USERS = "graph_group_users", GROUP_SHARE = "graph_group_fraud_share", SHARED = "graph_shared_entities";
    private static final List<String> AGGS = Arrays.asList(USERS, FRAUD_USERS, GROUP_USERS, GROUP_SHARE, SHARED);

    public final String entity, role;
    public final long horizonMs, labelHorizonMs, lateness, noFraud;
    public final int membersCap, entitiesCap, pairsCap, maxLabels;
    /** the members stages' names in chain order; this entity's place among them (-1 unless members). */
    public final String[] members;
    public final int memberIndex;
    /** the entity's graph aggregates, in the spec's feature order (its values after its window values). */
    public final String[] aggs;
    /** graph_shared_entities: the kinds it pairs with the event's user, and their key fields' Row positions. */
    public final String[] pairKinds;
    public final int[] pairFields;
    public final int graphIndex, userIdIndex, tsIndex;

    /** Whether an aggregate name is a graph one (its value comes from here, not from the windows). */
    public static boolean isGraphAgg(String agg) {
        return AGGS.contains(agg);
    }

    /** The entity's graph part, or null when it has none (no graph features in the spec, or no role). */
    public static GraphSpec parse(String specJson, String entity) {
        try {
            return parse(new ObjectMapper().readTree(specJson), entity);
        } catch (java.io.IOException e) {
            throw new IllegalArgumentException("spec JSON: " + e.getMessage(), e);
        }
    }

    public static GraphSpec parse(JsonNode spec, String entity) {
        boolean any = false;
        for (JsonNode f : spec.get("features")) {
            any |= isGraphAgg(f.get("agg").asText());
        }
        JsonNode g = spec.get("graph");
        if (!any) {
            if (g != null && !g.isNull()) {
                throw new IllegalArgumentException("spec has a graph section but no graph features");
            }
            return null;
        }
        if (g == null || !g.isObject()) {
            throw new IllegalArgumentException("spec has graph features but no \"graph\" section with the graph's "
                + "constants (udfs.chain.spec_document writes it)");
        }
        JsonNode ent = null;
        for (JsonNode e : spec.get("entities")) {
            if (e.get("name").asText().equals(entity)) {
                ent = e;
            }
        }
        if (ent == null) {
            throw new IllegalArgumentException("no entity " + entity + " in the spec");
        }
        JsonNode r = ent.get("graph");
        String role = r == null || r.isNull() ? null : r.asText();
        if (role == null) {
            for (JsonNode f : spec.get("features")) {
                if (f.get("entity").asText().equals(entity) && isGraphAgg(f.get("agg").asText())) {
                    throw new IllegalArgumentException(f.get("name").asText() + ": a graph feature of " + entity
                        + ", which has no graph role in the spec");
                }
            }
            return null;
        }
        return new GraphSpec(spec, g, entity, role);
    }

    private static long positive(JsonNode g, String name) {
        JsonNode v = g.get(name);
        if (v == null || !v.isIntegralNumber() || v.asLong() <= 0) {
            throw new IllegalArgumentException("spec graph." + name + " must be a positive integer, got " + v);
        }
        return v.asLong();
    }

    private GraphSpec(JsonNode spec, JsonNode g, String entity, String role) {
        this.entity = entity;
        this.role = role;
        if (!role.equals(USER) && !role.equals(MEMBERS) && !role.equals(LINK)) {
            throw new IllegalArgumentException(entity + ": unknown graph role " + role);
        }
        horizonMs = positive(g, "horizon_ms");
        labelHorizonMs = positive(g, "label_horizon_ms");
        membersCap = Math.toIntExact(positive(g, "members_cap"));
        entitiesCap = Math.toIntExact(positive(g, "entities_cap"));
        pairsCap = Math.toIntExact(positive(g, "pairs_cap"));
        maxLabels = Math.toIntExact(positive(g, "max_labels"));
        JsonNode nf = g.get("no_fraud");
        if (nf == null || !nf.isIntegralNumber()) {
            throw new IllegalArgumentException("spec graph.no_fraud must be an integer, got " + nf);
        }
        noFraud = nf.asLong();
        lateness = spec.get("allowed_lateness_ms").asLong();
        List<String> fields = new ArrayList<>();
        for (JsonNode f : spec.get("record_fields")) {
            fields.add(f.asText());
        }
        graphIndex = fields.indexOf("graph");
        if (graphIndex < 0) {
            throw new IllegalArgumentException("the record has no \"graph\" field (udfs.chain.ROW_FIELDS): the "
                + "graph context cannot travel between the stages");
        }
        userIdIndex = fields.indexOf("user_id");
        tsIndex = fields.indexOf("ts");
        Map<String, String> keyField = new HashMap<>();
        List<String> mem = new ArrayList<>();
        for (JsonNode e : spec.get("entities")) {
            keyField.put(e.get("name").asText(), e.get("key_field").asText());
            JsonNode er = e.get("graph");
            if (er != null && MEMBERS.equals(er.asText())) {
                mem.add(e.get("name").asText());
            }
        }
        if (mem.size() > 127) {
            throw new IllegalArgumentException("more than 127 graph members stages");
        }
        members = mem.toArray(new String[0]);
        memberIndex = mem.indexOf(entity);
        List<String> a = new ArrayList<>();
        for (JsonNode f : spec.get("features")) {
            String agg = f.get("agg").asText();
            if (!f.get("entity").asText().equals(entity) || !isGraphAgg(agg)) {
                continue;
            }
            String name = f.get("name").asText();
            JsonNode h = f.get("horizon_ms");
            if (h == null || h.asLong() != horizonMs) {
                throw new IllegalArgumentException(name + ": a graph feature's horizon must be graph.horizon_ms ("
                    + horizonMs + " ms), got " + h);
            }
            boolean ok = agg.equals(GROUP_USERS) || agg.equals(GROUP_SHARE) ? role.equals(LINK)
                : agg.equals(SHARED) ? role.equals(MEMBERS) : role.equals(LINK) || role.equals(MEMBERS);
            if (!ok) {
                throw new IllegalArgumentException(name + ": " + agg + " cannot be computed by a graph " + role
                    + " stage");
            }
            a.add(agg);
        }
        aggs = a.toArray(new String[0]);
        List<String> kinds = new ArrayList<>();
        List<Integer> pos = new ArrayList<>();
        if (a.contains(SHARED)) {
            JsonNode lk = g.get("link_kinds");
            if (lk == null || !lk.isArray() || lk.size() == 0) {
                throw new IllegalArgumentException("spec graph.link_kinds (the kinds graph_shared_entities pairs) "
                    + "missing");
            }
            for (JsonNode k : lk) {
                String kind = k.asText();
                if (!keyField.containsKey(kind)) {
                    throw new IllegalArgumentException("spec graph.link_kinds: no entity " + kind);
                }
                if (kind.equals(entity)) {
                    continue;
                }
                int p = fields.indexOf(keyField.get(kind));
                if (p < 0) {
                    throw new IllegalArgumentException("graph.link_kinds " + kind + ": no record field "
                        + keyField.get(kind));
                }
                kinds.add(kind);
                pos.add(p);
            }
        }
        pairKinds = kinds.toArray(new String[0]);
        pairFields = pos.stream().mapToInt(Integer::intValue).toArray();
    }

    /** udfs.graph.GraphParams.label_keep_ms: how far behind its newest labelled event a label store keeps. */
    public long labelKeepMs() {
        return labelHorizonMs + horizonMs;
    }

    public boolean has(String agg) {
        return Arrays.asList(aggs).contains(agg);
    }

    /** The members stages before this one (whose sketches a members stage stores per member). */
    public int upstream() {
        return Math.max(memberIndex, 0);
    }
}
