package io.riskstream.flink;

import java.nio.FloatBuffer;
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
 * Record Rows of the JVM entity stages (udfs.chain.ROW_FIELDS) in, decision record bytes out (written by
 * {@link DecisionWriter}, as the production path writes them), scored one row at a time by onnxruntime's Java binding on the same
 * model file, with the policy's thresholds and rules (udfs.policy: score band, then every rule whose
 * conditions hold, strongest decision wins, late_event last).
 *
 * <p>A traffic split (udfs.split) is fixed at start: the config's optional "split" names each arm's bucket
 * range, model and thresholds (computed in Python from a split message); each row's arm is the bucket of its
 * split key ({@link ArmBucket}), and its record carries {@code arm}, as the Python stage's.
 *
 * <p>Not carried over from the Python stage: the live control (challenger, model switch, rules updates,
 * split changes) and its metrics. A row that fails is a {@code review} record with {@code processing_error},
 * as there.
 *
 * <p>Pitfall: onnxruntime loads its native library once per JVM and class loader; a second job in the same
 * JVM with the jar in a new user class loader fails with "already loaded in another classloader". Run
 * each job of this stage in its own process (the bench and the tests do).
 */
public final class JavaDecideFunction extends ProcessFunction<Row, byte[]> {
    private static final long serialVersionUID = 1L;

    private final String modelPath;
    private final String modelVersion;
    private final String configJson;

    private transient OrtEnvironment env;
    private transient OrtSession session;
    private transient String input;
    private transient String output;
    private transient DecisionWriter writer;
    private transient String policyVersion;
    private transient double reviewAt, blockAt;
    private transient Rule[] rules;
    private transient float[] x;
    private transient FloatBuffer buf;
    private transient Arm[] arms; // null without a split; the champion's arm last
    private transient int splitField;
    private transient String splitSalt;
    private transient int buckets;
    private transient ArmBucket hash;

    /** One arm of a split: its bucket range, model (null: the champion's session) and policy. */
    private static final class Arm {
        String name;
        long lo, hi;
        OrtSession session;
        String input, output, modelVersion, policyVersion;
        double reviewAt, blockAt;
    }

    /**
     * {@code configJson}: udfs.decision.writer_layout plus "policy_version", "review_threshold",
     * "block_threshold" and "rules": [{"code", "decision", "event_types" or null, "conditions": [[name, op,
     * value], ...]}] (benchmarks/java_job.py writes it from the spec and the Policy).
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
        writer = new DecisionWriter(configJson);
        String[] featureNames = writer.featureNames;
        String[] signalNames = writer.signalNames;
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
            rule.eventTypes = et == null || et.isNull() ? null : new java.util.HashSet<>(List.of(DecisionWriter.strings(et)));
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
        session = session(modelPath);
        input = session.getInputNames().iterator().next();
        output = outputName(session);
        JsonNode split = c.get("split");
        arms = null;
        if (split != null && !split.isNull()) {
            String field = split.get("key_field").asText();
            JsonNode rf = c.get("record_fields");
            splitField = -1;
            for (int i = 0; i < rf.size(); i++) {
                if (rf.get(i).asText().equals(field)) {
                    splitField = i;
                }
            }
            if (splitField < 0) {
                throw new IllegalArgumentException("split key field " + field + " is not a record field");
            }
            splitSalt = split.get("salt").asText();
            buckets = split.get("buckets").asInt();
            hash = new ArmBucket();
            JsonNode as = split.get("arms");
            arms = new Arm[as.size()];
            for (int i = 0; i < arms.length; i++) {
                JsonNode a = as.get(i);
                Arm arm = new Arm();
                arm.name = a.get("name").asText();
                arm.lo = a.get("lo").asLong();
                arm.hi = a.get("hi").asLong();
                arm.modelVersion = a.get("model_version").asText();
                arm.policyVersion = a.get("policy_version").asText();
                arm.reviewAt = a.get("review_threshold").asDouble();
                arm.blockAt = a.get("block_threshold").asDouble();
                if (a.hasNonNull("model_path")) {
                    arm.session = session(a.get("model_path").asText());
                    arm.input = arm.session.getInputNames().iterator().next();
                    arm.output = outputName(arm.session);
                } else {
                    arm.session = session;
                    arm.input = input;
                    arm.output = output;
                }
                arms[i] = arm;
            }
        }
        x = new float[featureNames.length];
        buf = java.nio.ByteBuffer.allocateDirect(4 * featureNames.length).order(java.nio.ByteOrder.nativeOrder())
                .asFloatBuffer();
    }


    private OrtSession session(String path) throws Exception {
        OrtSession.SessionOptions opts = new OrtSession.SessionOptions();
        opts.setIntraOpNumThreads(1);
        opts.setInterOpNumThreads(1);
        return env.createSession(path, opts);
    }

    private static String outputName(OrtSession s) throws Exception {
        return s.getOutputNames().contains("probabilities") ? "probabilities"
                : new ArrayList<>(s.getOutputNames()).get((int) s.getNumOutputs() - 1);
    }

    @Override
    public void close() throws Exception {
        if (arms != null) {
            for (Arm a : arms) {
                if (a.session != session) {
                    a.session.close();
                }
            }
        }
        if (session != null) {
            session.close();
        }
    }

    /** The champion's fraud probability of one feature vector (model order), as the Python Scorer. */
    public double score(double[] features) throws Exception {
        return score(session, input, output, features);
    }

    private double score(OrtSession s, String in, String outName, double[] features) throws Exception {
        for (int i = 0; i < features.length; i++) {
            x[i] = (float) features[i];
        }
        buf.clear();
        buf.put(x);
        buf.flip();
        try (OnnxTensor t = OnnxTensor.createTensor(env, buf, new long[] {1, x.length});
             OrtSession.Result r = s.run(Map.of(in, t), java.util.Set.of(outName))) {
            float[][] probs = (float[][]) r.get(0).getValue();
            return probs[0][1];
        }
    }

    /** The row's arm under the split (the champion's, last, without a key). */
    private Arm arm(Row row) {
        long b = hash.of(splitSalt, (String) row.getField(splitField), buckets);
        if (b >= 0) {
            for (Arm a : arms) {
                if (a.lo <= b && b < a.hi) {
                    return a;
                }
            }
        }
        return arms[arms.length - 1];
    }

    @Override
    public void processElement(Row row, Context ctx, Collector<byte[]> out) throws Exception {
        long now = System.currentTimeMillis();
        Arm arm = null;
        try {
            arm = arms == null ? null : arm(row);
            double[] feats = writer.features(row);
            double score = arm == null ? score(feats) : score(arm.session, arm.input, arm.output, feats);
            out.collect(record(row, score, feats, writer.late(row), writer.signals(row), arm, now));
        } catch (Exception e) {
            out.collect(writer.error(row, arm == null ? modelVersion : arm.modelVersion,
                    arm == null ? policyVersion : arm.policyVersion,
                    e.getClass().getSimpleName() + ": " + e.getMessage(), arm == null ? null : arm.name, now));
        }
    }

    /** For tests (no Flink): the records of rows given as a JSON array of Row field arrays, as a JSON array. */
    public static String decideMany(String modelPath, String modelVersion, String configJson, String rowsJson)
            throws Exception {
        JavaDecideFunction f = new JavaDecideFunction(modelPath, modelVersion, configJson);
        f.open(null);
        JsonNode rows = new ObjectMapper().readTree(rowsJson);
        StringBuilder out = new StringBuilder("[");
        List<byte[]> got = new ArrayList<>();
        Collector<byte[]> c = new Collector<byte[]>() {
            public void collect(byte[] r) {
                got.add(r);
            }

            public void close() {
            }
        };
        try {
            for (int i = 0; i < rows.size(); i++) {
                JsonNode r = rows.get(i);
                Row row = new Row(r.size());
                for (int k = 0; k < r.size(); k++) {
                    row.setField(k, DecisionAssemble.plain(r.get(k)));
                }
                f.processElement(row, null, c);
            }
        } finally {
            f.close();
        }
        for (int i = 0; i < got.size(); i++) {
            if (i > 0) {
                out.append(',');
            }
            out.append(new String(got.get(i), java.nio.charset.StandardCharsets.UTF_8));
        }
        return out.append(']').toString();
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

    private byte[] record(Row row, double score, double[] feats, boolean late, double[] signals, Arm arm, long now) {
        String eventType = (String) row.getField(writer.eventType);
        String decision = "allow";
        List<String> reasons = new ArrayList<>(2);
        double blockAt = arm == null ? this.blockAt : arm.blockAt;
        double reviewAt = arm == null ? this.reviewAt : arm.reviewAt;
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
        return writer.record(row, feats, decision, Math.round(score * 1e6) / 1e6,
                arm == null ? modelVersion : arm.modelVersion, arm == null ? policyVersion : arm.policyVersion,
                reasons, null, null, arm == null ? null : arm.name, now);
    }
}
