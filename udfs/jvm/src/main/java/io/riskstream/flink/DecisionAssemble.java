package io.riskstream.flink;

import java.util.ArrayList;
import java.util.List;

import org.apache.flink.api.common.functions.MapFunction;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.JsonNode;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.ObjectMapper;
import org.apache.flink.types.Row;

/**
 * The decision record of the fast path: the record Row (udfs.chain.ROW_FIELDS, never sent to Python) plus
 * the verdict the batched Python stage computed for it (udfs.decide_batch: decision, score, versions,
 * reasons, the challenger's shadow, the split's arm, or an error), written by {@link DecisionWriter}.
 *
 * <p>The verdict is the Row's field after the record's fields. A missing or unreadable verdict (a bug, not
 * bad input) still gives a decision: {@code review} with {@code processing_error}.
 */
public final class DecisionAssemble implements MapFunction<Row, byte[]> {
    private static final long serialVersionUID = 1L;
    private static final ObjectMapper JSON = new ObjectMapper();

    private final DecisionWriter writer;
    private final int verdict;
    private final String policyVersion;

    /** {@code layoutJson}: udfs.decision.writer_layout; {@code policyVersion} names error records. */
    public DecisionAssemble(String layoutJson, String policyVersion) throws Exception {
        this.writer = new DecisionWriter(layoutJson);
        this.verdict = JSON.readTree(layoutJson).get("record_fields").size();
        this.policyVersion = policyVersion;
    }

    @Override
    public byte[] map(Row row) {
        return assemble(row, System.currentTimeMillis());
    }

    byte[] assemble(Row row, long now) {
        JsonNode v;
        try {
            v = JSON.readTree((byte[]) row.getField(verdict));
        } catch (Exception e) {
            return writer.error(row, null, policyVersion, "unreadable verdict: " + e, now);
        }
        String model = text(v, "model_version");
        String policy = v.hasNonNull("policy_version") ? v.get("policy_version").asText() : policyVersion;
        if (v.hasNonNull("error") || !v.hasNonNull("decision")) {
            return writer.error(row, model, policy, v.hasNonNull("error") ? v.get("error").asText() : "no verdict",
                    text(v, "arm"), now);
        }
        try {
            List<String> reasons = new ArrayList<>(4);
            for (JsonNode r : v.get("reasons")) {
                reasons.add(r.asText());
            }
            JsonNode shadow = v.get("shadow");
            return writer.record(row, writer.features(row), v.get("decision").asText(), v.get("score").asDouble(),
                    model, policy, reasons, text(v, "rules_version"),
                    shadow == null || shadow.isNull() ? null : shadow.toString(), text(v, "arm"), now);
        } catch (Exception e) {
            return writer.error(row, model, policy, e.getClass().getSimpleName() + ": " + e.getMessage(), now);
        }
    }

    private static String text(JsonNode v, String name) {
        JsonNode n = v.get(name);
        return n == null || n.isNull() ? null : n.asText();
    }

    /** For tests (no Flink): one record per (Row fields as JSON array, verdict text) line pair. */
    public static String assembleMany(String layoutJson, String policyVersion, String rowsJson, String verdictsJson)
            throws Exception {
        DecisionAssemble a = new DecisionAssemble(layoutJson, policyVersion);
        JsonNode rows = JSON.readTree(rowsJson);
        JsonNode verdicts = JSON.readTree(verdictsJson);
        StringBuilder out = new StringBuilder("[");
        for (int i = 0; i < rows.size(); i++) {
            JsonNode r = rows.get(i);
            Row row = new Row(r.size() + 1);
            for (int f = 0; f < r.size(); f++) {
                row.setField(f, plain(r.get(f)));
            }
            JsonNode vt = verdicts.get(i);
            row.setField(r.size(), vt.isNull() ? null : vt.asText().getBytes(java.nio.charset.StandardCharsets.UTF_8));
            if (i > 0) {
                out.append(',');
            }
            out.append(new String(a.assemble(row, 0L), java.nio.charset.StandardCharsets.UTF_8));
        }
        return out.append(']').toString();
    }

    static Object plain(JsonNode n) {
        if (n == null || n.isNull()) {
            return null;
        }
        if (n.isArray()) {
            double[] d = new double[n.size()];
            for (int i = 0; i < d.length; i++) {
                d[i] = n.get(i).isNull() ? Double.NaN : n.get(i).asDouble();
            }
            return d;
        }
        if (n.isBoolean()) {
            return n.asBoolean();
        }
        if (n.isIntegralNumber()) {
            return n.asLong();
        }
        if (n.isNumber()) {
            return n.asDouble();
        }
        return n.asText();
    }
}
