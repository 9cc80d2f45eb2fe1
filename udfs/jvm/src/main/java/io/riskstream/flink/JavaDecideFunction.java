package io.riskstream.flink;

import java.nio.FloatBuffer;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

import ai.onnxruntime.OnnxTensor;
import ai.onnxruntime.OrtEnvironment;
import ai.onnxruntime.OrtSession;

import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.JsonNode;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.ObjectMapper;
import org.apache.flink.streaming.api.functions.ProcessFunction;
import org.apache.flink.types.Row;
import org.apache.flink.util.Collector;

/**
 * The decide stage scored in Java: a bench contender (benchmarks/java_job.py), not the production path.
 * Record Rows of the JVM entity stages (udfs.chain.ROW_FIELDS) in, decision record bytes out (the fields
 * of udfs.decision.decision_record), scored one row at a time by onnxruntime's Java binding on the same
 * model file, with the policy's thresholds and rules (udfs.policy: score band, then every rule whose
 * conditions hold, strongest decision wins, late_event last).
 *
 * <p>Not carried over from the Python stage: the live control (challenger, model switch, rules updates)
 * and its metrics. A row that fails is a {@code review} record with {@code processing_error}, as there.
 *
 * <p>Pitfall: onnxruntime loads its native library once per JVM and class loader; a second job in the same
 * JVM with the jar in a new user class loader fails with "already loaded in another classloader". Run
 * each job of this stage in its own process (the bench and the tests do).
 */
public final class JavaDecideFunction extends ProcessFunction<Row, byte[]> {
    private static final long serialVersionUID = 1L;
    private static final int EVENT_ID = 0, EVENT_TYPE = 1, USER_ID = 2, DEVICE_ID = 3, IP = 4, TS = 7,
            PAYMENT_REF = 9, VALUES = 10, LATE = 11, SIGNALS = 12, ARRIVED_AT = 13;
    private static final char[] HEX = "0123456789abcdef".toCharArray();

    private final String modelPath;
    private final String modelVersion;
    private final String configJson;

    private transient OrtEnvironment env;
    private transient OrtSession session;
    private transient String input;
    private transient String output;
    private transient String[] featureNames;
    private transient int[] eventFields; // per event feature: the Row field of a value, or -1 for the type index
    private transient Map<String, Integer> typeIndex;
    private transient String[] signalNames;
    private transient String policyVersion;
    private transient double reviewAt, blockAt;
    private transient Rule[] rules;
    private transient float[] x;
    private transient FloatBuffer buf;
    private transient MessageDigest sha;

    /**
     * {@code configJson}: {"feature_names": [...], "event_features": [[field index or -1], ...],
     * "event_types": [...], "signals": [...], "policy_version": "p1", "review_threshold": 0.5,
     * "block_threshold": 0.9, "rules": [{"code", "decision", "event_types" or null, "conditions":
     * [[name, op, value], ...]}]} (benchmarks/java_job.py writes it from the spec and the Policy).
     */
    public JavaDecideFunction(String modelPath, String modelVersion, String configJson) {
        this.modelPath = modelPath;
        this.modelVersion = modelVersion;
        this.configJson = configJson;
    }

    private static final class Rule {
        String code;
        int rank;
        String decision;
        java.util.Set<String> eventTypes;
        int[] kind; // 0 feature, 1 score, 2 signal
        int[] index;
        String[] op;
        double[] value;
    }

    private static int rank(String d) {
        return "block".equals(d) ? 2 : "review".equals(d) ? 1 : 0;
    }

    @Override
    public void open(OpenContext ctx) throws Exception {
        JsonNode c = new ObjectMapper().readTree(configJson);
        featureNames = strings(c.get("feature_names"));
        JsonNode ef = c.get("event_features");
        eventFields = new int[ef.size()];
        for (int i = 0; i < eventFields.length; i++) {
            eventFields[i] = ef.get(i).asInt();
        }
        String[] types = strings(c.get("event_types"));
        typeIndex = new HashMap<>();
        for (int i = 0; i < types.length; i++) {
            typeIndex.put(types[i], i);
        }
        signalNames = strings(c.get("signals"));
        policyVersion = c.get("policy_version").asText();
        reviewAt = c.get("review_threshold").asDouble();
        blockAt = c.get("block_threshold").asDouble();
        Map<String, Integer> feat = new HashMap<>();
        for (int i = 0; i < featureNames.length; i++) {
            feat.put(featureNames[i], i);
        }
        Map<String, Integer> sig = new HashMap<>();
        for (int i = 0; i < signalNames.length; i++) {
            sig.put(signalNames[i], i);
        }
        List<Rule> rs = new ArrayList<>();
        for (JsonNode r : c.get("rules")) {
            Rule rule = new Rule();
            rule.code = r.get("code").asText();
            rule.decision = r.get("decision").asText();
            rule.rank = rank(rule.decision);
            JsonNode et = r.get("event_types");
            rule.eventTypes = et == null || et.isNull() ? null : new java.util.HashSet<>(List.of(strings(et)));
            JsonNode conds = r.get("conditions");
            int n = conds.size();
            rule.kind = new int[n];
            rule.index = new int[n];
            rule.op = new String[n];
            rule.value = new double[n];
            for (int i = 0; i < n; i++) {
                String name = conds.get(i).get(0).asText();
                if ("score".equals(name)) {
                    rule.kind[i] = 1;
                } else if (feat.containsKey(name)) {
                    rule.index[i] = feat.get(name);
                } else if (sig.containsKey(name)) {
                    rule.kind[i] = 2;
                    rule.index[i] = sig.get(name);
                } else {
                    throw new IllegalArgumentException("rule " + rule.code + ": unknown name " + name);
                }
                rule.op[i] = conds.get(i).get(1).asText();
                rule.value[i] = conds.get(i).get(2).asDouble();
            }
            rs.add(rule);
        }
        rules = rs.toArray(new Rule[0]);
        env = OrtEnvironment.getEnvironment();
        OrtSession.SessionOptions opts = new OrtSession.SessionOptions();
        opts.setIntraOpNumThreads(1);
        opts.setInterOpNumThreads(1);
        session = env.createSession(modelPath, opts);
        input = session.getInputNames().iterator().next();
        output = session.getOutputNames().contains("probabilities") ? "probabilities"
                : new ArrayList<>(session.getOutputNames()).get((int) session.getNumOutputs() - 1);
        x = new float[featureNames.length];
        buf = java.nio.ByteBuffer.allocateDirect(4 * featureNames.length).order(java.nio.ByteOrder.nativeOrder())
                .asFloatBuffer();
        sha = MessageDigest.getInstance("SHA-256");
    }

    private static String[] strings(JsonNode a) {
        String[] s = new String[a.size()];
        for (int i = 0; i < s.length; i++) {
            s[i] = a.get(i).asText();
        }
        return s;
    }

    @Override
    public void close() throws Exception {
        if (session != null) {
            session.close();
        }
    }

    /** The champion's fraud probability of one feature vector (model order), as the Python Scorer. */
    public double score(double[] features) throws Exception {
        for (int i = 0; i < features.length; i++) {
            x[i] = (float) features[i];
        }
        buf.clear();
        buf.put(x);
        buf.flip();
        try (OnnxTensor t = OnnxTensor.createTensor(env, buf, new long[] {1, x.length});
             OrtSession.Result r = session.run(Map.of(input, t), java.util.Set.of(output))) {
            float[][] probs = (float[][]) r.get(0).getValue();
            return probs[0][1];
        }
    }

    @Override
    public void processElement(Row row, Context ctx, Collector<byte[]> out) throws Exception {
        long now = System.currentTimeMillis();
        String eventId = (String) row.getField(EVENT_ID);
        String eventType = (String) row.getField(EVENT_TYPE);
        double[] feats = null;
        try {
            double[] values = (double[]) row.getField(VALUES);
            int ne = eventFields.length;
            feats = new double[ne + (values == null ? 0 : values.length)];
            for (int i = 0; i < ne; i++) {
                int f = eventFields[i];
                feats[i] = f < 0 ? typeIndex.get(eventType) : ((Number) row.getField(f)).doubleValue();
            }
            if (values != null) {
                System.arraycopy(values, 0, feats, ne, values.length);
            }
            if (feats.length != featureNames.length) {
                throw new IllegalStateException(feats.length + " feature values, the model takes " + featureNames.length);
            }
            double score = score(feats);
            Boolean lateField = (Boolean) row.getField(LATE);
            boolean late = lateField != null && lateField;
            double[] signals = (double[]) row.getField(SIGNALS);
            out.collect(record(row, eventId, eventType, score, feats, late, signals, now));
        } catch (Exception e) {
            out.collect(errorRecord(row, eventId, eventType, e.getClass().getSimpleName() + ": " + e.getMessage(), now));
        }
    }

    private static boolean holds(String op, double a, double b) {
        switch (op) {
            case ">=": return a >= b;
            case ">": return a > b;
            case "<=": return a <= b;
            case "<": return a < b;
            case "==": return a == b;
            default: throw new IllegalArgumentException("operator " + op);
        }
    }

    private byte[] record(Row row, String eventId, String eventType, double score, double[] feats, boolean late,
                          double[] signals, long now) {
        String decision = "allow";
        List<String> reasons = new ArrayList<>(2);
        if (score >= blockAt) {
            decision = "block";
            reasons.add("score_block");
        } else if (score >= reviewAt) {
            decision = "review";
            reasons.add("score_review");
        }
        for (Rule rule : rules) {
            if (rule.eventTypes != null && !rule.eventTypes.contains(eventType)) {
                continue;
            }
            boolean all = true;
            for (int i = 0; i < rule.op.length && all; i++) {
                double v;
                if (rule.kind[i] == 1) {
                    v = score;
                } else if (rule.kind[i] == 0) {
                    v = feats[rule.index[i]];
                } else {
                    v = signals == null || Double.isNaN(signals[rule.index[i]]) ? 0.0 : signals[rule.index[i]];
                }
                all = holds(rule.op[i], v, rule.value[i]);
            }
            if (all) {
                reasons.add("rule:" + rule.code);
                if (rule.rank > rank(decision)) {
                    decision = rule.decision;
                }
            }
        }
        if (late) {
            reasons.add("late_event");
        }
        StringBuilder b = new StringBuilder(1600);
        recordHead(b, row, eventId, eventType);
        b.append(",\"decision\":\"").append(decision).append('"');
        b.append(",\"score\":");
        num(b, Math.round(score * 1e6) / 1e6);
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
        b.append("},\"late\":").append(late);
        b.append(",\"event_ts\":").append(row.getField(TS));
        arrivedAt(b, row);
        b.append(",\"decided_at\":").append(now);
        if (signals != null) {
            b.append(",\"signals\":{");
            boolean first = true;
            for (int i = 0; i < signals.length; i++) {
                if (!Double.isNaN(signals[i])) {
                    if (!first) {
                        b.append(',');
                    }
                    first = false;
                    b.append('"').append(signalNames[i]).append("\":");
                    num(b, signals[i]);
                }
            }
            b.append('}');
        }
        return b.append('}').toString().getBytes(StandardCharsets.UTF_8);
    }

    /** The fields every decision record starts with, in udfs.decision's order. */
    private void recordHead(StringBuilder b, Row row, String eventId, String eventType) {
        b.append("{\"decision_id\":");
        str(b, decisionId(eventId, modelVersion));
        b.append(",\"event_id\":");
        str(b, eventId);
        b.append(",\"event_type\":");
        str(b, eventType);
        b.append(",\"user_id\":");
        str(b, (String) row.getField(USER_ID));
        b.append(",\"device_id\":");
        str(b, (String) row.getField(DEVICE_ID));
        b.append(",\"ip\":");
        str(b, (String) row.getField(IP));
        b.append(",\"payment_ref\":");
        str(b, (String) row.getField(PAYMENT_REF)); // null without one
    }

    private byte[] errorRecord(Row row, String eventId, String eventType, String detail, long now) {
        StringBuilder b = new StringBuilder(400);
        recordHead(b, row, eventId, eventType);
        b.append(",\"decision\":\"review\",\"score\":null,\"model_version\":");
        str(b, modelVersion);
        b.append(",\"policy_version\":");
        str(b, policyVersion);
        b.append(",\"reasons\":[\"processing_error\"],\"error\":");
        str(b, detail.length() > 200 ? detail.substring(0, 200) : detail);
        b.append(",\"features\":{},\"late\":false,\"event_ts\":null");
        arrivedAt(b, row);
        b.append(",\"decided_at\":").append(now).append('}');
        return b.toString().getBytes(StandardCharsets.UTF_8);
    }

    /** {@code "arrived_at"} when the record knows it (udfs.decision writes it only then). */
    private static void arrivedAt(StringBuilder b, Row row) {
        Object t = row.getArity() > ARRIVED_AT ? row.getField(ARRIVED_AT) : null;
        if (t != null) {
            b.append(",\"arrived_at\":").append(t);
        }
    }

    /** udfs.decision.decision_id: sha256(event_id \x1f model_version \x1f policy_version), 32 hex digits. */
    private String decisionId(String eventId, String model) {
        byte[] h = sha.digest((eventId + '\u001f' + model + '\u001f' + policyVersion).getBytes(StandardCharsets.UTF_8));
        char[] c = new char[32];
        for (int i = 0; i < 16; i++) {
            c[2 * i] = HEX[(h[i] >> 4) & 15];
            c[2 * i + 1] = HEX[h[i] & 15];
        }
        return new String(c);
    }

    private static void num(StringBuilder b, double v) {
        if (Double.isNaN(v) || Double.isInfinite(v)) {
            b.append("null");
        } else {
            b.append(v);
        }
    }

    private static void str(StringBuilder b, String s) {
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
