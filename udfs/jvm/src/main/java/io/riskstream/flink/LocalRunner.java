package io.riskstream.flink;

import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.JsonNode;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.ObjectMapper;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.node.ArrayNode;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.node.ObjectNode;
import org.apache.flink.types.Row;

/**
 * One entity's window logic over an in-memory map of encoded key states, without Flink: for parity tests
 * and state-size measurements called from Python (one call per stream). Pitfall: timers are not run and
 * there is no watermark. An event at or past its key's expiry reads the key as fresh anyway, but one just
 * before the expiry that the job would see after the watermark passed it (the timer dropped the key) reads
 * the old key here; tests/test_jvm_windows.py runs the real timers on a MiniCluster for that
 * ({@link PerRecordWatermarks}).
 */
public final class LocalRunner {
    private static final ObjectMapper JSON = new ObjectMapper();

    private LocalRunner() {}

    /**
     * {@code eventsJsonl}: one event per line (udfs.events.Event fields). Returns JSON
     * {"values": [[...] or null for a duplicate], "late": [...], "state_bytes": [per key, sorted],
     * "timers_registered": {key: cleanup timers the stage registered for it}}.
     */
    public static String run(String specJson, String entity, long dedupHorizonMs, String eventsJsonl) throws Exception {
        EntitySpec spec = EntitySpec.parse(specJson, entity);
        EntityWindows w = new EntityWindows(spec);
        long horizon = spec.dedup ? dedupHorizonMs : 0;
        Map<String, byte[]> store = new HashMap<>();
        Map<String, Integer> timers = new HashMap<>(); // timers each key asked its stage to register
        ObjectNode res = JSON.createObjectNode();
        ArrayNode values = res.putArray("values");
        ArrayNode lates = res.putArray("late");
        List<Row> rows = new ArrayList<>();
        for (String line : eventsJsonl.split("\n")) {
            if (!line.isEmpty()) {
                rows.add(toRow(JSON.readTree(line), spec));
            }
        }
        java.lang.management.ThreadMXBean mx = java.lang.management.ManagementFactory.getThreadMXBean();
        long cpu0 = mx.getCurrentThreadCpuTime();
        for (Row row : rows) {
            String key = (String) row.getField(spec.keyIndex);
            if (key == null) {
                ArrayNode a = values.addArray();
                for (double d : w.emptyValues()) {
                    a.add(d);
                }
                lates.add(false);
                continue;
            }
            KeyState st = KeyState.decode(store.get(key), spec);
            long ts = (Long) row.getField(spec.tsIndex);
            if (horizon != 0 && w.duplicate(st, (String) row.getField(spec.eventIdIndex), ts, horizon)) {
                values.addNull();
                lates.add(false);
                continue;
            }
            EntityWindows.Step r = w.step(st, row, horizon);
            store.put(key, r.state.encode(spec));
            if (r.hasTimer) {
                timers.merge(key, 1, Integer::sum);
            }
            ArrayNode a = values.addArray();
            for (double d : r.values) {
                a.add(d);
            }
            lates.add(r.late);
        }
        res.put("cpu_ns", mx.getCurrentThreadCpuTime() - cpu0); // the window logic, state coding, result JSON
        List<Integer> sizes = new ArrayList<>();
        for (byte[] b : store.values()) {
            sizes.add(b.length);
        }
        sizes.sort(null);
        ArrayNode sb = res.putArray("state_bytes");
        sizes.forEach(sb::add);
        ObjectNode tm = res.putObject("timers_registered");
        timers.forEach(tm::put);
        return JSON.writeValueAsString(res);
    }

    /**
     * The encoded state of every key after {@code eventsJsonl} (as {@link #run}, without timers), as JSON
     * {key: base64 of the KeyState bytes}: for the byte-compatibility test of the state encoding.
     */
    public static String states(String specJson, String entity, long dedupHorizonMs, String eventsJsonl) throws Exception {
        EntitySpec spec = EntitySpec.parse(specJson, entity);
        EntityWindows w = new EntityWindows(spec);
        long horizon = spec.dedup ? dedupHorizonMs : 0;
        Map<String, byte[]> store = new java.util.TreeMap<>();
        for (String line : eventsJsonl.split("\n")) {
            if (line.isEmpty()) {
                continue;
            }
            Row row = toRow(JSON.readTree(line), spec);
            String key = (String) row.getField(spec.keyIndex);
            if (key == null) {
                continue;
            }
            KeyState st = KeyState.decode(store.get(key), spec);
            long ts = (Long) row.getField(spec.tsIndex);
            if (horizon != 0 && w.duplicate(st, (String) row.getField(spec.eventIdIndex), ts, horizon)) {
                continue;
            }
            store.put(key, w.step(st, row, horizon).state.encode(spec));
        }
        ObjectNode res = JSON.createObjectNode();
        java.util.Base64.Encoder b64 = java.util.Base64.getEncoder();
        store.forEach((k, v) -> res.put(k, b64.encodeToString(v)));
        return JSON.writeValueAsString(res);
    }

    /** Decode then encode again each state of {@code statesJson} ({key: base64}), as {key: base64}. */
    public static String reencode(String specJson, String entity, String statesJson) throws Exception {
        EntitySpec spec = EntitySpec.parse(specJson, entity);
        ObjectNode res = JSON.createObjectNode();
        java.util.Base64.Decoder d = java.util.Base64.getDecoder();
        java.util.Base64.Encoder e = java.util.Base64.getEncoder();
        JSON.readTree(statesJson).fields().forEachRemaining(kv -> res.put(kv.getKey(),
            e.encodeToString(KeyState.decode(d.decode(kv.getValue().asText()), spec).encode(spec))));
        return JSON.writeValueAsString(res);
    }

    static Row toRow(JsonNode o, EntitySpec spec) {
        Row r = Row.withPositions(spec.arity);
        for (int i = 0; i < spec.nEvent; i++) {
            String name = spec.recordFields[i];
            JsonNode v = o.get(name);
            if (v == null || v.isNull()) {
                continue;
            }
            if (name.equals("ts")) {
                r.setField(i, v.asLong());
            } else if (name.equals("amount")) {
                r.setField(i, v.asDouble());
            } else if (name.equals("extras")) {
                r.setField(i, v.toString());
            } else {
                r.setField(i, v.asText());
            }
        }
        r.setField(spec.valuesIndex, new double[0]);
        r.setField(spec.lateIndex, false);
        return r;
    }

    /** For parity tests: the HLL estimate of registers given as bytes, and BLAKE2b-64 of strings. */
    public static double hllEstimate(byte[] reg) {
        return Hll.estimate(reg);
    }

    public static String blakeMany(String jsonArrayOfStrings) throws Exception {
        ArrayNode out = JSON.createArrayNode();
        for (JsonNode s : JSON.readTree(jsonArrayOfStrings)) {
            out.add(Long.toUnsignedString(Blake2b64.hash(s.asText())));
        }
        return JSON.writeValueAsString(out);
    }

    /** Registers after adding the given strings (JSON array), for HLL parity with udfs/hll.py. */
    public static byte[] hllRegisters(String jsonArrayOfStrings) throws Exception {
        byte[] reg = new byte[Hll.M];
        for (JsonNode s : JSON.readTree(jsonArrayOfStrings)) {
            Hll.add(reg, s.asText());
        }
        return reg;
    }

    public static String logs() {
        // M * log(M / zeros) for every zeros count: the linear-counting branch of the estimate
        ArrayNode out = JSON.createArrayNode();
        for (int z = 1; z <= Hll.M; z++) {
            out.add(Hll.M * Math.log((double) Hll.M / z));
        }
        return out.toString();
    }
}
