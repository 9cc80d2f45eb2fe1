package io.riskstream.flink;

import java.io.BufferedInputStream;
import java.io.BufferedOutputStream;
import java.io.BufferedReader;
import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.IOException;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.BitSet;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.PriorityQueue;

import org.apache.flink.api.common.RuntimeExecutionMode;
import org.apache.flink.api.common.functions.FlatMapFunction;
import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.state.ValueState;
import org.apache.flink.api.common.state.ValueStateDescriptor;
import org.apache.flink.api.common.typeinfo.PrimitiveArrayTypeInfo;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.api.java.tuple.Tuple4;
import org.apache.flink.configuration.Configuration;
import org.apache.flink.configuration.JobManagerOptions;
import org.apache.flink.configuration.PipelineOptions;
import org.apache.flink.runtime.checkpoint.Checkpoints;
import org.apache.flink.runtime.checkpoint.OperatorState;
import org.apache.flink.runtime.checkpoint.OperatorSubtaskState;
import org.apache.flink.runtime.checkpoint.metadata.CheckpointMetadata;
import org.apache.flink.runtime.jobgraph.OperatorID;
import org.apache.flink.runtime.state.KeyGroupRange;
import org.apache.flink.runtime.state.KeyGroupRangeAssignment;
import org.apache.flink.runtime.state.KeyedStateHandle;
import org.apache.flink.runtime.state.hashmap.HashMapStateBackend;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.JsonNode;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.ObjectMapper;
import org.apache.flink.state.api.OperatorIdentifier;
import org.apache.flink.state.api.OperatorTransformation;
import org.apache.flink.state.api.SavepointWriter;
import org.apache.flink.state.api.StateBootstrapTransformation;
import org.apache.flink.state.api.functions.KeyedStateBootstrapFunction;
import org.apache.flink.streaming.api.datastream.DataStream;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;
import org.apache.flink.types.Row;
import org.apache.flink.util.Collector;

/**
 * Warm start: the entity stages' state after a history of events and labels, written as a savepoint the
 * job restores (riskstream bootstrap). Two steps:
 * <ol>
 * <li>{@link ChainState}: the whole chain over the history in arrival order, in memory, exactly as the
 * stages would fold it (udfs.chain.Chain: dedup in the first stage, labels folded by the stages that read
 * them, cleanup timers fired by the same watermark rule), keys as their stages' encoded state;</li>
 * <li>{@link #write}: one keyed state transformation per entity under its stage's uid
 * ({@code <entity>-windows-jvm}), same state names and serializers as {@link EntityWindowsFunction}, the
 * cleanup timers registered, into a new savepoint (State Processor API, BATCH mode).</li>
 * </ol>
 * Pitfalls: the savepoint's max parallelism must be the job's (pipeline.max-parallelism); the folder must
 * be new (FLINK-30807); sources have no state in it, so the restored job starts reading where its
 * starting_offsets say.
 */
public final class Bootstrap {
    private static final ObjectMapper JSON = new ObjectMapper();
    static final byte[] NONE = new byte[0]; // "no such state" (a serializer refuses null)

    private Bootstrap() {}

    /** The chain's state over a history: per entity, key -> (windows bytes, labels bytes, timer). */
    public static final class ChainState {
        final List<EntitySpec> specs = new ArrayList<>();
        final List<EntityWindows> windows = new ArrayList<>();
        final List<Map<String, byte[]>> stores = new ArrayList<>();
        final List<Map<String, KnownFraud>> known = new ArrayList<>();
        final long dedupHorizonMs, outOfOrdernessMs;
        final PriorityQueue<long[]> timers = new PriorityQueue<>((a, b) -> Long.compare(a[0], b[0]));
        final List<String> timerKeys = new ArrayList<>();
        long maxTs = Long.MIN_VALUE;
        public long events, duplicates, labels;

        public ChainState(String specJson, long dedupHorizonMs, long outOfOrdernessMs) throws IOException {
            if (JSON.readTree(specJson).get("graph") != null) { // a warm windows state with a cold graph: refuse
                throw new IllegalArgumentException("bootstrap does not write the graph features' state yet: unset "
                    + "RISKSTREAM_GRAPH_FEATURES to bootstrap");
            }
            for (JsonNode e : JSON.readTree(specJson).get("entities")) {
                EntitySpec s = EntitySpec.parse(specJson, e.get("name").asText());
                specs.add(s);
                windows.add(new EntityWindows(s));
                stores.add(new HashMap<>());
                known.add(new HashMap<>());
            }
            this.dedupHorizonMs = dedupHorizonMs;
            this.outOfOrdernessMs = outOfOrdernessMs;
        }

        long watermark() {
            return maxTs == Long.MIN_VALUE ? Long.MIN_VALUE : maxTs - outOfOrdernessMs - 1;
        }

        /** udfs.chain.Chain._fire_timers: every timer at or before the watermark, in time order. */
        void fireTimers() {
            long wm = watermark();
            while (!timers.isEmpty() && timers.peek()[0] <= wm) {
                long[] t = timers.poll();
                int i = (int) t[1];
                String key = timerKeys.get((int) t[2]);
                Map<String, byte[]> store = stores.get(i);
                KeyState st = KeyState.decode(store.get(key), specs.get(i));
                int what = windows.get(i).cleanup(st, t[0]);
                if (what == 1) {
                    store.remove(key);
                } else if (what == 2) {
                    store.put(key, st.encode(specs.get(i)));
                    addTimer(st.timer, i, key);
                }
            }
        }

        void addTimer(long ts, int stage, String key) {
            timerKeys.add(key);
            timers.add(new long[] {ts, stage, timerKeys.size() - 1});
        }

        /** One event (Event fields as JSON), as udfs.chain.Chain.process: false for a duplicate. */
        public boolean event(JsonNode o) {
            fireTimers();
            Row row = LocalRunner.toRow(o, specs.get(0));
            long ts = (Long) row.getField(specs.get(0).tsIndex);
            try {
                events++;
                for (int i = 0; i < specs.size(); i++) {
                    EntitySpec spec = specs.get(i);
                    String key = (String) row.getField(spec.keyIndex);
                    if (key == null) {
                        continue;
                    }
                    Map<String, byte[]> store = stores.get(i);
                    KeyState st = KeyState.decode(store.get(key), spec);
                    long horizon = spec.dedup ? dedupHorizonMs : 0;
                    if (horizon != 0 && windows.get(i).duplicate(st, (String) row.getField(spec.eventIdIndex), ts, horizon)) {
                        duplicates++;
                        return false; // the first stage: nothing stored anywhere yet
                    }
                    KnownFraud kf = spec.readsLabels ? known.get(i).get(key) : null;
                    EntityWindows.Step r = windows.get(i).step(st, row, horizon, kf == null ? null : kf.lab);
                    store.put(key, r.state.encode(spec));
                    if (r.hasTimer) {
                        addTimer(r.timer, i, key);
                    }
                }
                return true;
            } finally { // every parsed event moves the watermark, duplicates included
                maxTs = Math.max(maxTs, ts);
            }
        }

        /** One label, as EntityWindowsFunction.label in every stage that reads labels and whose key it names. */
        public void label(JsonNode l) {
            labels++;
            boolean fraud = l.get("label").asText().equals("fraud");
            long ets = l.get("ts").asLong();
            for (int i = 0; i < specs.size(); i++) {
                EntitySpec spec = specs.get(i);
                if (!spec.readsLabels) {
                    continue;
                }
                JsonNode k = l.get(spec.recordFields[spec.keyIndex]);
                if (k == null || k.isNull() || k.asText().isEmpty()) {
                    continue;
                }
                String key = k.asText();
                KnownFraud kf = known.get(i).computeIfAbsent(key, x -> new KnownFraud());
                if (spec.labelSignals) {
                    kf.apply(l.get("user_id").asText(), ets, fraud);
                }
                if (spec.labelKeepMs > 0) {
                    kf.applyFraudLabel(l.get("event_id").asText(), ets, fraud, spec.labelKeepMs);
                }
                if (kf.isEmpty()) {
                    known.get(i).remove(key);
                }
            }
        }

        /** The end of the history: the keys whose expiry the last watermark reached are dropped. */
        public void finish() {
            fireTimers();
        }

        public long keys(int stage) {
            return stores.get(stage).size();
        }

        /**
         * Writes every key's state of stage {@code i} into {@code shards} files (key, windows, labels, timer
         * or MIN_VALUE; no state: 0 bytes) and frees it here; returns the number of keys.
         */
        long dump(int i, long labelsAt, Path dir, int shards) throws IOException {
            EntitySpec spec = specs.get(i);
            LinkedHashSet<String> keys = new LinkedHashSet<>(stores.get(i).keySet());
            keys.addAll(known.get(i).keySet());
            DataOutputStream[] outs = new DataOutputStream[shards];
            for (int k = 0; k < shards; k++) {
                outs[k] = new DataOutputStream(new BufferedOutputStream(
                    Files.newOutputStream(shard(dir, spec.entity, k)), 1 << 16));
            }
            long n = 0;
            try {
                for (String key : keys) {
                    byte[] w = stores.get(i).get(key);
                    KeyState st = w == null ? null : KeyState.decode(w, spec);
                    KnownFraud kf = known.get(i).get(key);
                    if (st != null) { // as the stage keeps it: whether the label store holds something
                        st.labels = kf != null;
                        w = st.encode(spec);
                    }
                    byte[] lab = NONE;
                    if (kf != null) {
                        kf.at = labelsAt;
                        lab = kf.encode();
                    }
                    DataOutputStream o = outs[(int) (n++ % shards)];
                    o.writeBoolean(true);
                    o.writeUTF(key);
                    o.writeInt(w == null ? 0 : w.length);
                    o.write(w == null ? NONE : w);
                    o.writeInt(lab.length);
                    o.write(lab);
                    o.writeLong(st != null && st.hasTimer ? st.timer : Long.MIN_VALUE);
                }
            } finally {
                for (DataOutputStream o : outs) {
                    o.writeBoolean(false);
                    o.close();
                }
            }
            stores.set(i, new HashMap<>());
            known.set(i, new HashMap<>());
            return n;
        }
    }

    /** Folds a history file (JSON lines: {"event": {...}} or {"label": {...}}, in arrival order). */
    public static ChainState fold(String specJson, String historyPath, long dedupHorizonMs, long outOfOrdernessMs)
            throws IOException {
        ChainState cs = new ChainState(specJson, dedupHorizonMs, outOfOrdernessMs);
        try (BufferedReader in = new BufferedReader(new InputStreamReader(
                Files.newInputStream(Paths.get(historyPath)), StandardCharsets.UTF_8), 1 << 16)) {
            String line;
            while ((line = in.readLine()) != null) {
                if (line.isEmpty()) {
                    continue;
                }
                JsonNode o = JSON.readTree(line);
                if (o.has("event")) {
                    cs.event(o.get("event"));
                } else {
                    cs.label(o.get("label"));
                }
            }
        }
        cs.finish();
        return cs;
    }

    /**
     * Folds the history and writes the savepoint to {@code savepointPath} (a new folder or URI); returns a
     * JSON summary {events, duplicates, labels, keys: {entity: n}}. Runs a local BATCH job in this JVM.
     * The folded state goes through files in {@code workDir} (a few shards per entity, read in parallel):
     * handing millions of entries to the job as a collection would copy them all into the job graph.
     */
    public static String write(String specJson, String historyPath, String savepointPath, String workDir,
                               long dedupHorizonMs, long outOfOrdernessMs, int maxParallelism, int parallelism,
                               boolean labels, String jobName, String jars) throws Exception {
        ChainState cs = fold(specJson, historyPath, dedupHorizonMs, outOfOrdernessMs);
        long now = System.currentTimeMillis();
        int shards = shards(parallelism);
        List<EntitySpec> specs = new ArrayList<>(cs.specs);
        long[] counts = new long[specs.size()];
        for (int i = 0; i < specs.size(); i++) {
            counts[i] = cs.dump(i, now, Paths.get(workDir), shards);
        }
        StringBuilder summary = new StringBuilder("{\"events\": ").append(cs.events).append(", \"duplicates\": ")
            .append(cs.duplicates).append(", \"labels\": ").append(cs.labels).append(", \"keys\": {");
        cs = null; // the state is in the files now: let the job have the heap
        for (int i = 0; i < specs.size(); i++) {
            summary.append(i == 0 ? "" : ", ").append('"').append(specs.get(i).entity).append("\": ").append(counts[i]);
        }
        writeShards(specJson, workDir, savepointPath, maxParallelism, parallelism, labels, jobName, jars);
        return summary.append("}}").toString();
    }

    /** The shard files per entity for a job at {@code parallelism}. */
    public static int shards(int parallelism) {
        return Math.max(1, parallelism * 2);
    }

    /**
     * The savepoint from the entities' shard files in {@code workDir} ({@link ChainState#dump}, {@link #shards}
     * per entity; an entity without its files is left out). Runs the BATCH job under {@link BootstrapWatch}
     * (a bootstrap task whose inner task died fails it instead of hanging it) and then checks the savepoint
     * holds the key groups of every key written: a failure Flink did not report fails here, with its entity.
     */
    public static void writeShards(String specJson, String workDir, String savepointPath, int maxParallelism,
                                   int parallelism, boolean labels, String jobName, String jars) throws Exception {
        int shards = shards(parallelism);
        List<EntitySpec> specs = new ArrayList<>();
        for (JsonNode e : JSON.readTree(specJson).get("entities")) {
            specs.add(EntitySpec.parse(specJson, e.get("name").asText()));
        }
        Configuration conf = new Configuration();
        // this module and the State Processor API for the job's class loader (';'-separated URLs)
        conf.set(PipelineOptions.JARS, java.util.Arrays.asList(jars.split(";")));
        // the static scheduler: the adaptive batch scheduler (BATCH's default) lets a keyed consumer subtask read
        // key groups sized by data volume, not KeyGroupRangeAssignment's ranges, and the State Processor API's
        // keyed backend refuses a key outside its range (the job hung on 100k users)
        conf.set(JobManagerOptions.SCHEDULER, JobManagerOptions.SchedulerType.Default);
        StreamExecutionEnvironment env = StreamExecutionEnvironment.getExecutionEnvironment(conf);
        env.setRuntimeMode(RuntimeExecutionMode.BATCH);
        env.setParallelism(parallelism);
        SavepointWriter w = SavepointWriter.newSavepoint(env, new HashMapStateBackend(), maxParallelism);
        Map<String, BitSet> groups = new LinkedHashMap<>();
        for (EntitySpec spec : specs) {
            BitSet used = keyGroups(Paths.get(workDir), spec.entity, shards, maxParallelism);
            if (used == null || used.isEmpty()) {
                continue;
            }
            groups.put(spec.entity, used);
            DataStream<Tuple4<String, byte[], byte[], Long>> data = env.fromSequence(0, shards - 1)
                .flatMap(new ReadShard(workDir, spec.entity), ENTRY);
            boolean labelsOn = labels && spec.readsLabels;
            long labelTtl = Math.max(EntityWindowsFunction.LABEL_TTL_MS, spec.labelKeepMs + 24L * 3600 * 1000);
            StateBootstrapTransformation<Tuple4<String, byte[], byte[], Long>> t = OperatorTransformation
                .bootstrapWith(data)
                .keyBy(e -> e.f0, Types.STRING)
                .transform(new WriteStage(spec.entity, labelsOn, labelTtl));
            w = w.withOperator(OperatorIdentifier.forUid(uid(spec.entity)), t);
        }
        if (groups.isEmpty()) {
            throw new IllegalArgumentException("no entity has a key in " + workDir + ": nothing to write");
        }
        w.write(savepointPath);
        BootstrapWatch.run(env, "riskstream-bootstrap-" + jobName);
        checkKeyGroups(savepointPath, groups);
    }

    static String uid(String entity) {
        return entity + "-windows-jvm";
    }

    /** The key groups of the keys in an entity's shard files (null: no files). */
    static BitSet keyGroups(Path dir, String entity, int shards, int maxParallelism) throws IOException {
        if (!Files.exists(shard(dir, entity, 0))) {
            return null;
        }
        BitSet used = new BitSet(maxParallelism);
        for (int i = 0; i < shards; i++) {
            try (DataInputStream in = new DataInputStream(new BufferedInputStream(
                    Files.newInputStream(shard(dir, entity, i)), 1 << 16))) {
                while (in.readBoolean()) {
                    used.set(KeyGroupRangeAssignment.assignToKeyGroup(in.readUTF(), maxParallelism));
                    in.skipNBytes(in.readInt());
                    in.skipNBytes(in.readInt());
                    in.skipNBytes(8);
                }
            }
        }
        return used;
    }

    /**
     * Every key group that a written key falls in has keyed state in the savepoint, per entity. A bootstrap
     * subtask whose inner task died after its last record (BootstrapStreamTaskRunner ignores the error and its
     * endInput returns) leaves its key groups out of a savepoint that is otherwise complete.
     */
    static void checkKeyGroups(String savepointPath, Map<String, BitSet> groups) throws IOException {
        org.apache.flink.core.fs.Path meta = new org.apache.flink.core.fs.Path(savepointPath, "_metadata");
        CheckpointMetadata md;
        try (DataInputStream in = new DataInputStream(meta.getFileSystem().open(meta))) {
            md = Checkpoints.loadCheckpointMetadata(in, Bootstrap.class.getClassLoader(), savepointPath);
        }
        for (Map.Entry<String, BitSet> e : groups.entrySet()) {
            OperatorID id = OperatorIdentifier.forUid(uid(e.getKey())).getOperatorId();
            BitSet missing = (BitSet) e.getValue().clone();
            for (OperatorState op : md.getOperatorStates()) {
                if (!op.getOperatorID().equals(id)) {
                    continue;
                }
                for (OperatorSubtaskState st : op.getStates()) {
                    for (KeyedStateHandle h : st.getManagedKeyedState()) {
                        KeyGroupRange r = h.getKeyGroupRange();
                        if (r.getNumberOfKeyGroups() > 0) {
                            missing.clear(r.getStartKeyGroup(), r.getEndKeyGroup() + 1);
                        }
                    }
                }
            }
            if (!missing.isEmpty()) {
                throw new IllegalStateException("the bootstrap job finished but the savepoint " + savepointPath
                    + " lacks the state of " + e.getKey() + " in key groups " + missing + ": a bootstrap task "
                    + "failed and Flink's State Processor API did not report it (" + BootstrapWatch.HINT + ")");
            }
        }
    }

    static final TypeInformation<Tuple4<String, byte[], byte[], Long>> ENTRY = Types.TUPLE(Types.STRING,
        PrimitiveArrayTypeInfo.BYTE_PRIMITIVE_ARRAY_TYPE_INFO, PrimitiveArrayTypeInfo.BYTE_PRIMITIVE_ARRAY_TYPE_INFO,
        Types.LONG);

    static Path shard(Path dir, String entity, long i) {
        return dir.resolve(entity + "-" + i + ".bin");
    }

    /** Shard {@code i} of an entity's dumped entries (key, windows, labels, timer; 0 bytes: no state). */
    static final class ReadShard implements FlatMapFunction<Long, Tuple4<String, byte[], byte[], Long>> {
        private static final long serialVersionUID = 1L;
        private final String dir, entity;

        ReadShard(String dir, String entity) {
            this.dir = dir;
            this.entity = entity;
        }

        @Override
        public void flatMap(Long i, Collector<Tuple4<String, byte[], byte[], Long>> out) throws IOException {
            try (DataInputStream in = new DataInputStream(new BufferedInputStream(
                    Files.newInputStream(shard(Paths.get(dir), entity, i)), 1 << 16))) {
                while (in.readBoolean()) {
                    String key = in.readUTF();
                    byte[] w = new byte[in.readInt()];
                    in.readFully(w);
                    byte[] lab = new byte[in.readInt()];
                    in.readFully(lab);
                    out.collect(Tuple4.of(key, w, lab, in.readLong()));
                }
            }
        }
    }

    /** One stage's keyed state, as {@link EntityWindowsFunction} declares it, and its timers. */
    static final class WriteStage extends KeyedStateBootstrapFunction<String, Tuple4<String, byte[], byte[], Long>> {
        private static final long serialVersionUID = 1L;
        private final String entity;
        private final boolean labels;
        private final long labelTtl;
        private transient ValueState<byte[]> state, known;

        WriteStage(String entity, boolean labels, long labelTtl) {
            this.entity = entity;
            this.labels = labels;
            this.labelTtl = labelTtl;
        }

        @Override
        public void open(OpenContext ctx) {
            state = getRuntimeContext().getState(
                new ValueStateDescriptor<>(entity + "_windows", PrimitiveArrayTypeInfo.BYTE_PRIMITIVE_ARRAY_TYPE_INFO));
            known = getRuntimeContext().getState(
                new ValueStateDescriptor<>(entity + "_labels", PrimitiveArrayTypeInfo.BYTE_PRIMITIVE_ARRAY_TYPE_INFO));
        }

        @Override
        public void processElement(Tuple4<String, byte[], byte[], Long> e, Context ctx) throws Exception {
            if (e.f1.length > 0) {
                state.update(e.f1);
            }
            if (e.f3 != Long.MIN_VALUE) {
                ctx.timerService().registerEventTimeTimer(e.f3);
            }
            if (labels && e.f2.length > 0) {
                known.update(e.f2);
                KnownFraud k = KnownFraud.decode(e.f2);
                ctx.timerService().registerProcessingTimeTimer(EntityWindows.gridTimer(k.at + labelTtl));
            }
        }
    }
}
