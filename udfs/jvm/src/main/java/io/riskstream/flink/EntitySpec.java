package io.riskstream.flink;

import java.io.Serializable;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeSet;

import io.riskstream.flink.aggregates.Aggregate;
import io.riskstream.flink.aggregates.Aggregates;

import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.JsonNode;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.ObjectMapper;

/**
 * One entity's window layout compiled from the spec document ({@code udfs.chain.spec_document}), as
 * {@code udfs.windows.EntityWindows} builds it: bucket widths, slots per width (one per distinct accumulator
 * family, field and event-type filter, in feature order, each with the {@link Aggregate} the spec names),
 * which slots each event type feeds, the windows read (width, horizon, slot), and per feature how to read
 * its value. Nothing here names a feature, nor a window aggregate but count (a fraud share's denominator).
 */
public final class EntitySpec implements Serializable {
    private static final long serialVersionUID = 1L;

    /**
     * The chain record as a Row ({@code udfs.chain.ROW_FIELDS}, handed over as the spec's "record_fields"):
     * names in position order, and where the fields this stage reads sit. Nothing here is hard-coded, so a
     * new contract field (a new entity's key) needs no Java change.
     */
    public final String[] recordFields;
    public final int eventIdIndex, eventTypeIndex, userIdIndex, tsIndex, extrasIndex, nEvent, valuesIndex,
        lateIndex, signalsIndex, arity;
    /** the record's graph context field ("graph", BYTES), -1 in a layout without it (an older spec). */
    public final int graphIndex;

    // plan kinds: a key's age or time since its previous event, a window aggregate's result, a label feature
    public static final int P_SINCE_PREV = 0, P_AGE = 1, P_WINDOW = 2, P_FRAUD_LABELS = 3, P_FRAUD_SHARE = 4;

    public final String entity;
    public final int keyIndex;
    public final boolean optional, dedup, labelSignals;
    /** the stage folds labels (for its signal or its label features); label features keep labels this far
     * behind the newest labelled event time (udfs.features.label_keep_ms), 0 without label features. */
    public final boolean readsLabels;
    /** the first stage of the chain that reads labels counts them (labels_fraud, labels_legit): once each. */
    public final boolean countsLabels;
    public final long labelKeepMs;
    /** retention: the longest reach (horizon + offset) + lateness; fresh: the longest horizon without
     * offsets + lateness, after which a quiet key starts over but for its delayed counts (udfs.windows). */
    public final long lateness, retention, fresh;
    public final double missing;
    public final String[] eventTypes;
    public final Map<String, Integer> typeIndex = new HashMap<>();
    public final String[] featureNames;
    /** widths in order of first use by a feature; per width its longest horizon. */
    public final long[] widths, maxHorizon;
    /** per width: each slot's aggregate and the record position of its input field (-1 without one). */
    public final Aggregate[][] slotAgg;
    public final int[][] slotField;
    /** per width, per event type: the slots that type feeds. */
    public final int[][][] feeds;
    /** the windows read from buckets, one per (width, horizon, slot) some feature reads. */
    public final int[] readWidth, readSlot;
    public final long[] readHorizon;
    /**
     * per feature: kind, its read (a window aggregate's or an undelayed fraud share's denominator, else -1),
     * the aggregate whose result it is (P_WINDOW), horizon, bucket width.
     */
    public final int[] planKind, planRead;
    public final Aggregate[] planAgg;
    public final long[] planHorizon, planBucket;
    /**
     * per feature: its offset (a delayed label window ends this far before the event's bucket; 0 for the
     * others), and for a delayed fraud share the index of its delayed-count width, else -1.
     */
    public final long[] planOffset;
    public final int[] planDelayed;
    /**
     * Delayed fraud shares' denominators (udfs.windows: state "d"): the key's stored events per bucket of
     * these widths, kept back to the longest horizon + offset of a delayed share of that width (dReach).
     */
    public final long[] dWidths, dReach;
    /** signals: the entity's position in features.SIGNALS order (entities with label_signals), and how many. */
    public final int signalIndex, nSignals;
    public final String signalName;

    public int rowIndex(String field) {
        for (int i = 0; i < recordFields.length; i++) {
            if (recordFields[i].equals(field)) {
                return i;
            }
        }
        throw new IllegalArgumentException("not a record field: " + field + " (record_fields: "
            + String.join(", ", recordFields) + ")");
    }

    public static EntitySpec parse(String specJson, String entity) {
        try {
            return new EntitySpec(new ObjectMapper().readTree(specJson), entity);
        } catch (java.io.IOException e) {
            throw new IllegalArgumentException("spec JSON: " + e.getMessage(), e);
        }
    }

    private EntitySpec(JsonNode spec, String entity) {
        this.entity = entity;
        JsonNode fields = spec.get("record_fields");
        if (fields == null || !fields.isArray()) {
            throw new IllegalArgumentException("spec JSON has no record_fields (udfs.chain.spec_document writes them)");
        }
        recordFields = new String[fields.size()];
        for (int i = 0; i < recordFields.length; i++) {
            recordFields[i] = fields.get(i).asText();
        }
        eventIdIndex = rowIndex("event_id");
        eventTypeIndex = rowIndex("event_type");
        userIdIndex = rowIndex("user_id");
        tsIndex = rowIndex("ts");
        extrasIndex = rowIndex("extras");
        valuesIndex = rowIndex("values");
        nEvent = valuesIndex;
        lateIndex = rowIndex("late");
        signalsIndex = rowIndex("signals");
        arity = recordFields.length;
        graphIndex = java.util.Arrays.asList(recordFields).indexOf("graph");
        lateness = spec.get("allowed_lateness_ms").asLong();
        missing = spec.get("missing").asDouble();
        if (spec.get("distinct").get("hll_p").asInt() != Hll.P) {
            throw new IllegalArgumentException("spec HLL P differs from " + Hll.P);
        }
        JsonNode aggDocs = spec.get("aggregates");
        if (aggDocs == null || !aggDocs.isObject()) {
            throw new IllegalArgumentException("spec JSON has no aggregates (udfs.chain.spec_document writes them)");
        }
        Map<String, Aggregate> aggs = new HashMap<>();
        JsonNode types = spec.get("event_types");
        eventTypes = new String[types.size()];
        for (int i = 0; i < eventTypes.length; i++) {
            eventTypes[i] = types.get(i).asText();
            typeIndex.put(eventTypes[i], i);
        }
        Map<Long, Long> bucketMs = new HashMap<>();
        spec.get("bucket_ms").fields().forEachRemaining(e -> bucketMs.put(Long.parseLong(e.getKey()), e.getValue().asLong()));
        JsonNode ent = null;
        int sigIdx = -1, nSig = 0;
        String firstReader = null;
        for (JsonNode e : spec.get("entities")) {
            JsonNode rl = e.get("reads_labels");
            if (firstReader == null && ((rl != null && rl.asBoolean()) || e.get("label_signals").asBoolean())) {
                firstReader = e.get("name").asText();
            }
            if (e.get("name").asText().equals(entity)) {
                ent = e;
                if (e.get("label_signals").asBoolean()) {
                    sigIdx = nSig;
                }
            }
            if (e.get("label_signals").asBoolean()) {
                nSig++;
            }
        }
        if (ent == null) {
            throw new IllegalArgumentException("no entity " + entity + " in the spec");
        }
        countsLabels = entity.equals(firstReader);
        signalIndex = sigIdx;
        nSignals = nSig;
        signalName = entity + "_known_fraud_users_7d";
        keyIndex = rowIndex(ent.get("key_field").asText());
        optional = ent.get("optional").asBoolean();
        dedup = ent.get("dedup").asBoolean();
        labelSignals = ent.get("label_signals").asBoolean();

        List<Long> ws = new ArrayList<>();
        List<Long> mh = new ArrayList<>();
        List<List<String>> slotKeys = new ArrayList<>();
        List<List<Aggregate>> slotAggs = new ArrayList<>();
        List<List<Integer>> slotFields = new ArrayList<>();
        List<List<Integer>> slotTypeMasks = new ArrayList<>();
        List<long[]> reads = new ArrayList<>(); // {width, horizon, slot}
        List<String> names = new ArrayList<>();
        List<int[]> plan = new ArrayList<>(); // {kind, read}
        List<Aggregate> planA = new ArrayList<>();
        List<Long> planH = new ArrayList<>();
        List<Long> planG = new ArrayList<>();
        List<Long> planO = new ArrayList<>();
        List<Integer> planD = new ArrayList<>();
        List<Long> dws = new ArrayList<>();
        List<Long> dreach = new ArrayList<>();
        long longest = 0, longestUndelayed = 0, keep = 0, graphReach = 0;
        for (JsonNode f : spec.get("features")) {
            if (!f.get("entity").asText().equals(entity)) {
                continue;
            }
            if (io.riskstream.flink.graph.GraphSpec.isGraphAgg(f.get("agg").asText())) {
                // computed by the stage's graph part (io.riskstream.flink.graph), not by the windows: as
                // udfs.chain.EntityStep, the windows leave it out (but the spec's retention counts it)
                graphReach = Math.max(graphReach, f.get("horizon_ms").asLong());
                continue;
            }
            names.add(f.get("name").asText());
            String agg = f.get("agg").asText();
            if (agg.equals("since_prev") || agg.equals("age")) {
                plan.add(new int[] {agg.equals("age") ? P_AGE : P_SINCE_PREV, -1});
                planA.add(null);
                planH.add(0L);
                planG.add(0L);
                planO.add(0L);
                planD.add(-1);
                continue;
            }
            long h = f.get("horizon_ms").asLong();
            Long g = bucketMs.get(h);
            if (g == null) {
                throw new IllegalArgumentException(f.get("name").asText() + ": horizon without bucket width");
            }
            boolean label = agg.equals("fraud_labels") || agg.equals("fraud_share");
            JsonNode on = f.get("offset_ms");
            long off = on == null || on.isNull() ? 0L : on.asLong();
            if (off != 0 && (!label || off < 0 || off % g != 0)) {
                throw new IllegalArgumentException(f.get("name").asText() + ": offset " + off
                    + " (only label features, a positive multiple of the bucket width " + g + ")");
            }
            longest = Math.max(longest, h + off); // the key's retention: longest horizon + offset
            longestUndelayed = Math.max(longestUndelayed, h);
            if (label) {
                keep = Math.max(keep, h + off + g);
            }
            if (agg.equals("fraud_labels")) { // read from the label store only: no bucket slot
                plan.add(new int[] {P_FRAUD_LABELS, -1});
                planA.add(null);
                planH.add(h);
                planG.add(g);
                planO.add(off);
                planD.add(-1);
                continue;
            }
            if (off != 0) { // a delayed fraud share: its denominator from the delayed event counts
                int d = dws.indexOf(g);
                if (d < 0) {
                    d = dws.size();
                    dws.add(g);
                    dreach.add(0L);
                }
                dreach.set(d, Math.max(dreach.get(d), h + off));
                plan.add(new int[] {P_FRAUD_SHARE, -1});
                planA.add(null);
                planH.add(h);
                planG.add(g);
                planO.add(off);
                planD.add(d);
                continue;
            }
            // fraud_share's denominator: the key's events (every type) in the same window, a count
            String aggName = label ? "count" : agg;
            Aggregate a = aggs.get(aggName);
            if (a == null) {
                JsonNode doc = aggDocs.get(aggName);
                if (doc == null) {
                    throw new IllegalArgumentException(f.get("name").asText() + ": aggregate " + aggName
                        + " is not in the spec's aggregates (udfs.aggregates.AGGREGATES has no such class?)");
                }
                Map<String, Object> params = new HashMap<>();
                JsonNode pn = doc.get("params");
                if (pn != null) {
                    pn.fields().forEachRemaining(e -> params.put(e.getKey(), e.getValue().isTextual()
                        ? e.getValue().asText() : e.getValue().isIntegralNumber() ? (Object) e.getValue().asLong()
                        : (Object) e.getValue().asDouble()));
                }
                a = Aggregates.load(aggName, doc.get("class").asText(), doc.get("accumulator").asText(),
                    doc.get("takes_field").asBoolean(), params);
                aggs.put(aggName, a);
            }
            int field = a.takesField() ? rowIndex(f.get("field").asText()) : -1;
            int mask = -1;
            String typesKey = "*";
            JsonNode et = label ? null : f.get("event_types");
            if (et != null && !et.isNull()) {
                mask = 0;
                TreeSet<String> sorted = new TreeSet<>();
                for (JsonNode t : et) {
                    Integer ti = typeIndex.get(t.asText());
                    if (ti == null) {
                        throw new IllegalArgumentException("unknown event type " + t.asText());
                    }
                    mask |= 1 << ti;
                    sorted.add(t.asText());
                }
                typesKey = String.join(",", sorted);
            }
            int w = ws.indexOf(g);
            if (w < 0) {
                w = ws.size();
                ws.add(g);
                mh.add(0L);
                slotKeys.add(new ArrayList<>());
                slotAggs.add(new ArrayList<>());
                slotFields.add(new ArrayList<>());
                slotTypeMasks.add(new ArrayList<>());
            }
            mh.set(w, Math.max(mh.get(w), h));
            String key = a.accumulator() + "|" + field + "|" + typesKey;
            int s = slotKeys.get(w).indexOf(key);
            if (s < 0) {
                s = slotKeys.get(w).size();
                slotKeys.get(w).add(key);
                slotAggs.get(w).add(a);
                slotFields.get(w).add(field);
                slotTypeMasks.get(w).add(mask);
            }
            int r = -1;
            for (int i = 0; i < reads.size(); i++) {
                long[] x = reads.get(i);
                if (x[0] == w && x[1] == h && x[2] == s) {
                    r = i;
                }
            }
            if (r < 0) {
                r = reads.size();
                reads.add(new long[] {w, h, s});
            }
            plan.add(new int[] {label ? P_FRAUD_SHARE : P_WINDOW, r});
            planA.add(label ? null : a);
            planH.add(h);
            planG.add(g);
            planO.add(0L);
            planD.add(-1);
        }
        retention = longest + lateness;
        fresh = longestUndelayed + lateness;
        labelKeepMs = keep;
        // udfs.features.Entity.reads_labels_in: a graph user or members stage folds labels too
        JsonNode role = ent.get("graph");
        boolean graphLabels = spec.get("graph") != null && role != null
            && (role.asText().equals("user") || role.asText().equals("members"));
        readsLabels = labelSignals || keep > 0 || graphLabels;
        JsonNode specReads = ent.get("reads_labels");
        if (specReads != null && specReads.asBoolean() != readsLabels) {
            throw new IllegalArgumentException("spec reads_labels " + specReads + " != " + readsLabels);
        }
        JsonNode specKeep = ent.get("label_keep_ms");
        if (specKeep != null && specKeep.asLong() != labelKeepMs) {
            throw new IllegalArgumentException("spec label_keep_ms " + specKeep + " != " + labelKeepMs);
        }
        JsonNode specFresh = ent.get("fresh_ms");
        // the spec's retention and fresh time count the entity's graph features (udfs.windows.retention_ms);
        // the windows' own do not (udfs.chain.EntityStep builds its windows without them)
        if (specFresh != null && specFresh.asLong() != Math.max(fresh, graphReach + lateness)) {
            throw new IllegalArgumentException("spec fresh_ms " + specFresh + " != " + fresh);
        }
        JsonNode specRetention = ent.get("retention_ms");
        if (specRetention != null && specRetention.asLong() != Math.max(retention, graphReach + lateness)) {
            throw new IllegalArgumentException("spec retention " + specRetention + " != " + retention);
        }
        featureNames = names.toArray(new String[0]);
        int nw = ws.size();
        widths = new long[nw];
        maxHorizon = new long[nw];
        slotAgg = new Aggregate[nw][];
        slotField = new int[nw][];
        feeds = new int[nw][eventTypes.length][];
        for (int w = 0; w < nw; w++) {
            widths[w] = ws.get(w);
            maxHorizon[w] = mh.get(w);
            int ns = slotAggs.get(w).size();
            slotAgg[w] = slotAggs.get(w).toArray(new Aggregate[0]);
            slotField[w] = new int[ns];
            for (int s = 0; s < ns; s++) {
                slotField[w][s] = slotFields.get(w).get(s);
            }
            for (int t = 0; t < eventTypes.length; t++) {
                int[] fed = new int[ns];
                int k = 0;
                for (int s = 0; s < ns; s++) {
                    if ((slotTypeMasks.get(w).get(s) & (1 << t)) != 0) {
                        fed[k++] = s;
                    }
                }
                feeds[w][t] = Arrays.copyOf(fed, k);
            }
        }
        readWidth = new int[reads.size()];
        readSlot = new int[reads.size()];
        readHorizon = new long[reads.size()];
        for (int r = 0; r < reads.size(); r++) {
            readWidth[r] = (int) reads.get(r)[0];
            readHorizon[r] = reads.get(r)[1];
            readSlot[r] = (int) reads.get(r)[2];
        }
        planKind = new int[plan.size()];
        planRead = new int[plan.size()];
        planAgg = planA.toArray(new Aggregate[0]);
        planHorizon = new long[plan.size()];
        planBucket = new long[plan.size()];
        planOffset = new long[plan.size()];
        planDelayed = new int[plan.size()];
        dWidths = new long[dws.size()];
        dReach = new long[dws.size()];
        for (int d = 0; d < dws.size(); d++) {
            dWidths[d] = dws.get(d);
            dReach[d] = dreach.get(d);
        }
        for (int i = 0; i < plan.size(); i++) {
            planOffset[i] = planO.get(i);
            planDelayed[i] = planD.get(i);
            planBucket[i] = planG.get(i);
            planKind[i] = plan.get(i)[0];
            planRead[i] = plan.get(i)[1];
            planHorizon[i] = planH.get(i);
        }
    }

    public int nFeatures() {
        return planKind.length;
    }
}
