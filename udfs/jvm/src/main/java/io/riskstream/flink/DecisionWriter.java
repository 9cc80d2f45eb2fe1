package io.riskstream.flink;

import java.io.Serializable;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.JsonNode;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.ObjectMapper;
import org.apache.flink.types.Row;

/**
 * Writes decision records (the fields and order of udfs.decision.decision_record and
 * error_decision_record) from a record Row of the JVM chain (udfs.chain.ROW_FIELDS) and the verdict.
 *
 * <p>Configured by the JSON of udfs.chain.writer_layout: the record's field names (each field is found
 * by name; an optional field the layout lacks is not written), the key fields a label names (after
 * user_id: each entity's, udfs.features.LABEL_KEYS), the feature names in vector order, the event features (a Row field name, or {@code null} for the event-type index), the event types and the
 * signal names.
 *
 * <p>Pitfalls: numbers are written by {@link Double#toString} (e.g. {@code 1.0E-5}), which parses to the same
 * double as the Python writer's text, not to the same bytes; a NaN signal (none of the stages set it) is
 * absent, as in the Python record; a Row from the Table API may carry a {@code Double[]} where the
 * DataStream Row carries a {@code double[]}.
 */
public final class DecisionWriter implements Serializable {
    private static final long serialVersionUID = 1L;
    private static final char[] HEX = "0123456789abcdef".toCharArray();

    final String[] featureNames;
    final String[] signalNames;
    final int eventId, eventType, userId, ts, values, late, signals;
    private final int arrivedAt; // -1 when the layout has no such field
    /** the key fields a decision record carries for labels (layout "label_keys", udfs.features.LABEL_KEYS),
     * in order, after user_id, and their Row fields (-1: not a field of the record, left out). */
    private final String[] keyNames;
    private final int[] keyFields;
    private final int[] eventFeatures; // per event feature: its Row field, or -1 for the event-type index
    private final Map<String, Integer> typeIndex = new HashMap<>();
    private transient MessageDigest sha;

    public DecisionWriter(String layoutJson) {
        try {
            JsonNode c = new ObjectMapper().readTree(layoutJson);
            Map<String, Integer> field = new HashMap<>();
            JsonNode rf = c.get("record_fields");
            for (int i = 0; i < rf.size(); i++) {
                field.put(rf.get(i).asText(), i);
            }
            eventId = field.get("event_id");
            eventType = field.get("event_type");
            userId = field.get("user_id");
            ts = field.get("ts");
            values = field.get("values");
            late = field.get("late");
            signals = field.get("signals");
            arrivedAt = field.getOrDefault("arrived_at", -1);
            JsonNode lk = c.get("label_keys");
            if (lk == null || !lk.isArray() || lk.size() == 0 || !lk.get(0).asText().equals("user_id")) {
                throw new IllegalArgumentException("no label_keys starting with user_id (udfs.chain.writer_layout)");
            }
            keyNames = new String[lk.size() - 1];
            keyFields = new int[keyNames.length];
            for (int i = 0; i < keyNames.length; i++) {
                keyNames[i] = lk.get(i + 1).asText();
                keyFields[i] = field.getOrDefault(keyNames[i], -1);
            }
            featureNames = strings(c.get("feature_names"));
            signalNames = strings(c.get("signals"));
            JsonNode ef = c.get("event_features");
            eventFeatures = new int[ef.size()];
            for (int i = 0; i < eventFeatures.length; i++) {
                eventFeatures[i] = ef.get(i).isNull() ? -1 : field.get(ef.get(i).asText());
            }
            String[] types = strings(c.get("event_types"));
            for (int i = 0; i < types.length; i++) {
                typeIndex.put(types[i], i);
            }
        } catch (Exception e) {
            throw new IllegalArgumentException("decision writer layout: " + e, e);
        }
    }

    static String[] strings(JsonNode a) {
        String[] s = new String[a.size()];
        for (int i = 0; i < s.length; i++) {
            s[i] = a.get(i).asText();
        }
        return s;
    }

    /** The model's input: the event features then the entity stages' values (udfs.chain.Decider.vector). */
    public double[] features(Row row) {
        double[] vals = doubles(row.getField(values));
        int ne = eventFeatures.length;
        double[] feats = new double[ne + (vals == null ? 0 : vals.length)];
        for (int i = 0; i < ne; i++) {
            int f = eventFeatures[i];
            feats[i] = f < 0 ? typeIndex.get((String) row.getField(eventType)) : ((Number) row.getField(f)).doubleValue();
        }
        if (vals != null) {
            System.arraycopy(vals, 0, feats, ne, vals.length);
        }
        if (feats.length != featureNames.length) {
            throw new IllegalStateException(feats.length + " feature values, the spec has " + featureNames.length);
        }
        return feats;
    }

    /** A DOUBLE[] field as double[] (null stays null; a null element, never expected, is NaN). */
    static double[] doubles(Object v) {
        if (v == null || v instanceof double[]) {
            return (double[]) v;
        }
        Object[] a = (Object[]) v;
        double[] d = new double[a.length];
        for (int i = 0; i < a.length; i++) {
            d[i] = a[i] == null ? Double.NaN : ((Number) a[i]).doubleValue();
        }
        return d;
    }

    public boolean late(Row row) {
        Boolean l = (Boolean) row.getField(late);
        return l != null && l;
    }

    public double[] signals(Row row) {
        return doubles(row.getField(signals));
    }

    /**
     * A decision record. {@code shadowJson}: the challenger's {"model_version", "score", "decision"} as JSON
     * text, or null; {@code rulesVersion} null when the rules are the start-up ones; {@code arm} the split's
     * arm that decided, null without a split.
     */
    public byte[] record(Row row, double[] feats, String decision, double score, String modelVersion,
                         String policyVersion, List<String> reasons, String rulesVersion, String shadowJson,
                         String arm, long decidedAt) {
        StringBuilder b = new StringBuilder(1700);
        head(b, row, modelVersion, policyVersion);
        b.append(",\"decision\":");
        str(b, decision);
        b.append(",\"score\":");
        num(b, score);
        b.append(",\"model_version\":");
        str(b, modelVersion);
        b.append(",\"policy_version\":");
        str(b, policyVersion);
        b.append(",\"reasons\":[");
        for (int i = 0; i < reasons.size(); i++) {
            if (i > 0) {
                b.append(',');
            }
            str(b, reasons.get(i));
        }
        b.append("],\"features\":{");
        for (int i = 0; i < feats.length; i++) {
            if (i > 0) {
                b.append(',');
            }
            b.append('"').append(featureNames[i]).append("\":");
            num(b, feats[i]);
        }
        b.append("},\"late\":").append(late(row));
        b.append(",\"event_ts\":").append(row.getField(ts));
        arrived(b, row);
        b.append(",\"decided_at\":").append(decidedAt);
        if (rulesVersion != null) {
            b.append(",\"rules_version\":");
            str(b, rulesVersion);
        }
        if (shadowJson != null) {
            b.append(",\"shadow\":").append(shadowJson);
        }
        if (arm != null) {
            b.append(",\"arm\":");
            str(b, arm);
        }
        double[] sig = signals(row);
        if (sig != null) {
            b.append(",\"signals\":{");
            boolean first = true;
            for (int i = 0; i < sig.length; i++) {
                if (!Double.isNaN(sig[i])) {
                    if (!first) {
                        b.append(',');
                    }
                    first = false;
                    b.append('"').append(signalNames[i]).append("\":");
                    num(b, sig[i]);
                }
            }
            b.append('}');
        }
        return b.append('}').toString().getBytes(StandardCharsets.UTF_8);
    }

    /** A valid event that could not be scored: {@code review} with {@code processing_error}. */
    public byte[] error(Row row, String modelVersion, String policyVersion, String detail, long decidedAt) {
        return error(row, modelVersion, policyVersion, detail, null, decidedAt);
    }

    /** As {@link #error(Row, String, String, String, long)}, with the split's arm (null without a split). */
    public byte[] error(Row row, String modelVersion, String policyVersion, String detail, String arm, long decidedAt) {
        StringBuilder b = new StringBuilder(400);
        head(b, row, modelVersion == null ? "none" : modelVersion, policyVersion);
        b.append(",\"decision\":\"review\",\"score\":null,\"model_version\":");
        str(b, modelVersion);
        b.append(",\"policy_version\":");
        str(b, policyVersion);
        b.append(",\"reasons\":[\"processing_error\"],\"error\":");
        str(b, detail.length() > 200 ? detail.substring(0, 200) : detail);
        b.append(",\"features\":{},\"late\":false,\"event_ts\":null");
        arrived(b, row);
        b.append(",\"decided_at\":").append(decidedAt);
        if (arm != null) {
            b.append(",\"arm\":");
            str(b, arm);
        }
        b.append('}');
        return b.toString().getBytes(StandardCharsets.UTF_8);
    }

    /** The fields every decision record starts with, in udfs.decision's order. */
    private void head(StringBuilder b, Row row, String idModel, String policyVersion) {
        String id = (String) row.getField(eventId);
        b.append("{\"decision_id\":");
        str(b, decisionId(id, idModel, policyVersion));
        b.append(",\"event_id\":");
        str(b, id);
        b.append(",\"event_type\":");
        str(b, (String) row.getField(eventType));
        b.append(",\"user_id\":");
        str(b, (String) row.getField(userId));
        for (int i = 0; i < keyNames.length; i++) { // device_id, ip, payment_ref, ...: null without one
            if (keyFields[i] >= 0) {
                b.append(",\"").append(keyNames[i]).append("\":");
                str(b, (String) row.getField(keyFields[i]));
            }
        }
    }

    /** {@code "arrived_at"} when the record knows it (udfs.decision writes it only then). */
    private void arrived(StringBuilder b, Row row) {
        Object t = arrivedAt >= 0 && row.getArity() > arrivedAt ? row.getField(arrivedAt) : null;
        if (t != null) {
            b.append(",\"arrived_at\":").append(((Number) t).longValue());
        }
    }

    /** udfs.decision.decision_id: sha256(event_id \x1f model_version \x1f policy_version), 32 hex digits. */
    public String decisionId(String eventId, String model, String policyVersion) {
        if (sha == null) {
            try {
                sha = MessageDigest.getInstance("SHA-256");
            } catch (NoSuchAlgorithmException e) {
                throw new IllegalStateException(e);
            }
        }
        byte[] h = sha.digest((eventId + '\u001f' + model + '\u001f' + policyVersion).getBytes(StandardCharsets.UTF_8));
        char[] c = new char[32];
        for (int i = 0; i < 16; i++) {
            c[2 * i] = HEX[(h[i] >> 4) & 15];
            c[2 * i + 1] = HEX[h[i] & 15];
        }
        return new String(c);
    }

    static void num(StringBuilder b, double v) {
        if (Double.isNaN(v) || Double.isInfinite(v)) {
            b.append("null");
        } else {
            b.append(v);
        }
    }

    static void str(StringBuilder b, String s) {
        if (s == null) {
            b.append("null");
            return;
        }
        b.append('"');
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            if (c == '"' || c == '\\') {
                b.append('\\').append(c);
            } else if (c < 0x20) {
                b.append(String.format("\\u%04x", (int) c));
            } else {
                b.append(c);
            }
        }
        b.append('"');
    }
}
