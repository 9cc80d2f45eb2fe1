"""The decision job: Kafka events -> parse/validate -> one keyed window stage per entity of the spec (user,
ip, device, ... in ``udfs.features.ENTITIES`` order) -> score + policy -> Kafka decisions (exactly once),
with rejected records to the dead-letter topic (exactly once). Two more inputs: the control topic (model
switch, challenger, rules; broadcast to the decide stage) and the labels topic (known-fraud users, folded
by the entity stages that read labels: ``label_signals`` or label features).

Exactly-once pitfalls: the sinks' transactions commit on checkpoint completion, so decisions become
visible to ``read_committed`` readers one checkpoint interval (plus checkpoint time) after they are made;
``transaction.timeout.ms`` must stay below the broker's ``transaction.max.timeout.ms`` and well above the
checkpoint interval plus restart time; each sink needs its own stable transactional-id prefix.
"""

from __future__ import annotations

import os
import sys

import orjson

from pyflink.common import Configuration, Duration, Types, WatermarkStrategy
from pyflink.datastream import CheckpointingMode, DataStream, StreamExecutionEnvironment
from pyflink.datastream.connectors.base import DeliveryGuarantee
from pyflink.datastream.connectors.kafka import (
    KafkaOffsetResetStrategy,
    KafkaOffsetsInitializer,
    KafkaSink,
    KafkaSource,
)

from riskstream.config import CHANGELOG_BASE_PATH, MATERIALIZE_INTERVAL, JobConfig, changelog_in_effect
from riskstream.ops.jars import flink_jar_urls
from riskstream.ops.preflight import preflight
from riskstream.ops.restore import resolve_restore_path
from riskstream.paths import PROJECT_ROOT
from riskstream.topics import DEAD_LETTER_MAX_BYTES
from udfs.chain import state_layout
from udfs.features import ENTITIES, FEATURES, has_graph
from udfs.flink import (
    BYTES,
    CONTROL_STATE,
    DEAD_LETTER_TAG,
    STAGE_VALUE,
    EntityKey,
    EntityStage,
    EventTime,
    ParseLabel,
    ParseValidate,
    ScoreDecide,
    ScoreDecideControlled,
    ValidateControl,
)
from udfs.policy import Policy

DEFAULT_MAX_REQUEST_BYTES = 1024 * 1024  # the Kafka producer's default max.request.size


def python_conf(cfg: JobConfig) -> dict[str, str]:
    """Python settings for a local run: the workers use *this* interpreter and see its packages.

    Without ``python.executable`` Flink starts the ``python`` on PATH (not the virtual environment) and
    fails with "No module named 'pyflink'"; in thread mode the embedded interpreter sees only
    ``python.pythonpath``, so it gets this process's import path (project root and site-packages).
    """
    pythonpath = os.pathsep.join(dict.fromkeys(p for p in sys.path if p and os.path.isdir(p)))
    return {
        "python.executable": sys.executable,
        "python.client.executable": sys.executable,
        "python.execution-mode": cfg.python_execution_mode,
        "python.pythonpath": pythonpath,
        "python.fn-execution.bundle.time": str(cfg.bundle_time_ms),
        "python.fn-execution.bundle.size": str(cfg.bundle_size),
        "python.fn-execution.arrow.batch.size": str(cfg.arrow_batch_size),
    }


def flink_conf_dir_settings() -> dict[str, str]:
    """The settings of ``$FLINK_CONF_DIR/config.yaml`` (flattened keys), or none without the variable. A
    local run starts from them, as a cluster's jobs start from the cluster's config."""
    d = os.environ.get("FLINK_CONF_DIR")
    if not d:
        return {}
    path = os.path.join(d, "config.yaml")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"FLINK_CONF_DIR={d} has no config.yaml: point it at a Flink conf folder or unset it")
    import yaml  # PyYAML: a dependency of apache-beam, which apache-flink requires

    def flat(d: dict, prefix: str = "") -> dict[str, str]:
        out: dict[str, str] = {}
        for k, v in (d or {}).items():
            if isinstance(v, dict):
                out.update(flat(v, f"{prefix}{k}."))
            elif isinstance(v, bool):
                out[f"{prefix}{k}"] = "true" if v else "false"
            elif isinstance(v, list):
                out[f"{prefix}{k}"] = ";".join(str(x) for x in v)
            elif v is not None:
                out[f"{prefix}{k}"] = str(v)
        return out

    with open(path) as f:
        return flat(yaml.safe_load(f))


def state_settings(cfg: JobConfig, local: bool, base: dict[str, str] | None = None) -> dict[str, str]:
    """The job's state backend, memory and ``flink_conf`` settings as they take effect: a configured
    backend, else the one ``base`` (FLINK_CONF_DIR's config) names, else the run's default (hashmap locally,
    rocksdb on a cluster); ``flink_conf`` items last. Printed at start and recorded in the lineage."""
    backend = (base or {}).get("state.backend.type")
    if cfg.state_backend is None and backend in ("hashmap", "rocksdb"):
        cfg = cfg.model_copy(update={"state_backend": backend})
    out = cfg.flink_settings(local)
    if cfg.changelog is None:  # FLINK_CONF_DIR's changelog takes effect (make_env applies base first): shown
        out.update({k: v for k, v in (base or {}).items() if k.startswith("state.changelog.")})
    if local and cfg.taskmanager_heap:
        out["riskstream.local-heap"] = cfg.taskmanager_heap  # applied as -Xmx through JVM_ARGS, see make_env
    return out


def _local_heap(heap: str) -> None:
    """Give the local run's JVM ``-Xmx<heap>`` through JVM_ARGS, read once when PyFlink starts its JVM."""
    import pyflink.java_gateway as gw

    if gw._gateway is not None:
        print(f"[run] taskmanager_heap {heap} not applied: this process's JVM is already running; set it before "
              "the first Flink call (or JVM_ARGS=-Xmx...)", file=sys.stderr, flush=True)
        return
    unit = heap.replace(" ", "").lower().rstrip("b") or "0"  # 2g, 1536m; -Xmx takes no "b" and no space
    os.environ["JVM_ARGS"] = f"{os.environ.get('JVM_ARGS', '')} -Xmx{unit}".strip()


RESTART_STRATEGY = {
    "restart-strategy.type": "exponential-delay",
    "restart-strategy.exponential-delay.initial-backoff": "250 ms",
    "restart-strategy.exponential-delay.backoff-multiplier": "2.0",
    "restart-strategy.exponential-delay.max-backoff": "10 s",
    "restart-strategy.exponential-delay.reset-backoff-threshold": "1 min",
    "restart-strategy.exponential-delay.jitter-factor": "0.1",
}


def make_env(cfg: JobConfig, extra: dict[str, str] | None = None, restore: str | None = None,
             job_id: str | None = None, local: bool = True, claim_mode: str | None = None) -> StreamExecutionEnvironment:
    """The environment: jars, Python, checkpointing into ``cfg.checkpoint_dir``, restarts, the state
    backend (:func:`state_settings`). ``restore`` is the snapshot URI to restore (default:
    ``cfg.restore_from`` resolved) and ``claim_mode`` its Flink restore mode (``run`` picks it per snapshot:
    ``riskstream.ops.lineage.restore_mode``; unset: CLAIM with the changelog, else Flink's NO_CLAIM);
    ``job_id`` fixes the Flink job id (32 hex digits), so the run is in the
    job's lineage before it is submitted. ``local``: a MiniCluster in this process (FLINK_CONF_DIR's config
    is its base, ``taskmanager_heap`` its -Xmx), else the job of ``flink run`` on a cluster.

    Precedence, lowest first: FLINK_CONF_DIR's config (local), riskstream's settings, the state settings,
    ``extra`` (code: tests, the bench), ``cfg.flink_conf`` (the operator's last word)."""
    # A pandas UDF's Python worker would otherwise run inside this process on a MiniCluster ("loopback")
    # and copy the job's settings into os.environ (PYFLINK_GATEWAY_DISABLED among them), breaking any
    # later PyFlink client among this process's children. Its own process, as on a cluster.
    os.environ.setdefault("_python_worker_execution_mode", "process")
    base = flink_conf_dir_settings() if local else {}
    state = state_settings(cfg, local, base)
    if "riskstream.local-heap" in state:  # before the first Java object: JVM_ARGS is read when the JVM starts
        _local_heap(state.pop("riskstream.local-heap"))
    conf = Configuration()
    for k, v in base.items():
        conf.set_string(k, v)
    conf.set_string("pipeline.jars", ";".join(flink_jar_urls(cfg.jars_dir)))
    for k, v in python_conf(cfg).items():
        conf.set_string(k, v)
    conf.set_string("pipeline.name", cfg.job_name)
    # filesystem checkpoint storage: the default (JobManager heap) refuses state above 5 MB
    conf.set_string("execution.checkpointing.storage", "filesystem")
    conf.set_string("execution.checkpointing.dir", cfg.checkpoint_dir)
    # keep the newest checkpoint when the job is cancelled or its process dies: `restore_from=latest`
    # (and `riskstream chaos`) restart from it
    conf.set_string("execution.checkpointing.externalized-checkpoint-retention", "RETAIN_ON_CANCELLATION")
    if cfg.unaligned_checkpoints:
        conf.set_string("execution.checkpointing.unaligned.enabled", "true")
        conf.set_string("execution.checkpointing.aligned-checkpoint-timeout", "0 ms")  # unaligned from the start
    if restore is None:
        restore = resolve_restore_path(cfg)
    if job_id:
        conf.set_string("$internal.pipeline.job-id", job_id)  # PipelineOptionsInternal.PIPELINE_FIXED_JOB_ID
    if restore:
        conf.set_string("execution.state-recovery.path", restore)
        if claim_mode is None and cfg.changelog:  # it cannot write the full first checkpoint NO_CLAIM needs
            claim_mode = "CLAIM"
        if claim_mode:
            conf.set_string("execution.state-recovery.claim-mode", claim_mode)
    if cfg.rest_port:
        for k in ("rest.port", "rest.bind-port"):
            conf.set_string(k, str(cfg.rest_port))
        for k in ("rest.address", "rest.bind-address"):
            conf.set_string(k, "127.0.0.1")
        # fresh figures over REST (the commit watch, `riskstream chaos`): by default metrics are fetched at most
        # every 10 s, and job details and checkpoint statistics are cached for 3 s
        conf.set_string("metrics.fetcher.update-interval", "1000")
        conf.set_string("web.refresh-interval", "500")
        conf.set_string("rest.cache.checkpoint-statistics.timeout", "100 ms")
    # restarts: the first after 250 ms (a fixed 2 s delay was a sixth of a task failure's recovery), then
    # doubling up to 10 s, so ``restart_attempts`` cover about a minute of a lasting fault (a broker down)
    # before the job fails for good; a minute of stable running resets the count
    if cfg.restart_attempts == 0:  # the first failure fails the job (Flink's exponential delay needs >= 1)
        conf.set_string("restart-strategy.type", "none")
    else:
        for k, v in RESTART_STRATEGY.items():
            conf.set_string(k, v)
        conf.set_string("restart-strategy.exponential-delay.attempts-before-reset-backoff",
                        str(cfg.restart_attempts))
    # a fixed max parallelism (the key-group count): savepoints restore at any parallelism up to it, and
    # `riskstream bootstrap` writes state for the same key groups
    conf.set_string("pipeline.max-parallelism", str(cfg.max_parallelism))
    overrides = dict(item.split("=", 1) for item in cfg.flink_conf)
    for k, v in state.items():
        if k not in overrides:
            conf.set_string(k, v)
    for k, v in (extra or {}).items():
        conf.set_string(k, v)
    for k, v in overrides.items():
        conf.set_string(k, v)
    env = StreamExecutionEnvironment.get_execution_environment(conf)
    env.set_parallelism(cfg.parallelism)
    env.set_buffer_timeout(cfg.buffer_timeout_ms)
    env.enable_checkpointing(cfg.checkpoint_interval_ms, CheckpointingMode.EXACTLY_ONCE)
    return env


def start_offsets(cfg: JobConfig) -> KafkaOffsetsInitializer:
    if cfg.starting_offsets == "earliest":
        return KafkaOffsetsInitializer.earliest()
    if cfg.starting_offsets == "latest":
        return KafkaOffsetsInitializer.latest()
    return KafkaOffsetsInitializer.committed_offsets(KafkaOffsetResetStrategy.EARLIEST)


def kafka_sink(cfg: JobConfig, topic: str, suffix: str, max_request_bytes: int | None = None,
          keyed_by_user: bool = False) -> KafkaSink:
    """An exactly-once byte sink behind a size guard (udfs/jvm ``SinkGuard``: a record the producer would
    refuse for its size is counted as ``records_unwritable``, logged and skipped, never retried forever).
    ``keyed_by_user``: records are decision records, keyed by their user_id (``DecisionRecords``), so one
    user's decisions share a partition; else unkeyed (``DeadLetterRecords``)."""
    from pyflink.java_gateway import get_gateway

    pkg = get_gateway().jvm.io.riskstream.flink
    limit = max_request_bytes or DEFAULT_MAX_REQUEST_BYTES
    b = KafkaSink.builder().set_bootstrap_servers(cfg.bootstrap_servers)
    b._j_builder.setRecordSerializer(pkg.DecisionRecords(topic, limit) if keyed_by_user
                                     else pkg.DeadLetterRecords(topic, limit))
    b = (b.set_delivery_guarantee(DeliveryGuarantee.EXACTLY_ONCE)
         .set_transactional_id_prefix(f"{cfg.transactional_id_prefix}-{suffix}")
         .set_property("transaction.timeout.ms", str(cfg.transaction_timeout_ms)))
    if max_request_bytes:
        b = b.set_property("max.request.size", str(max_request_bytes))
    for k, v in cfg.kafka_client_properties().items():
        b = b.set_property(k, v)
    return b.build()


def describe_spec(features: tuple = FEATURES) -> str:
    """The spec the job computes, for its start line: fingerprint, features, graph features on or off, stages."""
    from udfs.features import spec_entities, spec_fingerprint

    return (f"feature spec {spec_fingerprint(features)} ({len(features)} features, graph features "
            f"{'on' if has_graph(features) else 'off'}; stages {', '.join(e.name for e in spec_entities(features))})")


# the stage runtimes whose stages compute the graph features (docs/features.md#graph-features): the JVM
# stages (io.riskstream.flink.graph) and the Python stages (udfs.flink.EntityStage), both as udfs.chain.Chain
GRAPH_RUNTIMES: tuple[str, ...] = ("jvm", "python")


def check_spec_runs_in_the_job(runtime: str, features: tuple = FEATURES) -> None:
    """Refuse, at build time, a spec the job's stages cannot compute: graph features
    (``RISKSTREAM_GRAPH_FEATURES``) on a stage runtime without them."""
    if has_graph(features) and runtime not in GRAPH_RUNTIMES:
        raise ValueError(f"the spec has graph features (RISKSTREAM_GRAPH_FEATURES is on) but the {runtime} stages "
                         "do not compute them: "
                         + (f"run with stage_runtime={GRAPH_RUNTIMES[0]}" if GRAPH_RUNTIMES
                            else "unset RISKSTREAM_GRAPH_FEATURES to run the job (the replay and training compute them)"))


def build_core(raw: DataStream, cfg: JobConfig, control: DataStream | None = None,
               labels: DataStream | None = None) -> tuple[DataStream, DataStream]:
    """raw event bytes -> (decision record bytes, dead-letter record bytes). Source- and sink-agnostic,
    so tests feed it from a collection and collect its output. One keyed stage per entity of the spec, in
    chain order (uid ``<entity>-windows``; with graph features the ``link`` stage, keyed by user, after the
    others), then the decide stage. ``control`` (bytes of control messages, ``udfs.control``) is broadcast to
    the decide stage; without it the model and rules are fixed. ``labels`` (bytes of labels, ``udfs.labels``)
    join the input of every entity stage that reads labels (``Entity.reads_labels``: label signals, label
    features, a graph part that folds labels).
    ``cfg.stage_runtime`` picks the JVM stages (the fast path) or the Python reference stages."""
    check_spec_runs_in_the_job(cfg.stage_runtime)
    if cfg.stage_runtime == "jvm":
        return _build_core_jvm(raw, cfg, control, labels)
    parsed = (raw.process(ParseValidate(cfg.job_name), output_type=STAGE_VALUE)
              .name("parse-validate").uid("parse-validate"))

    watermarks = (WatermarkStrategy
                  .for_bounded_out_of_orderness(Duration.of_millis(cfg.out_of_orderness_ms))
                  .with_idleness(Duration.of_millis(cfg.idleness_ms))
                  .with_timestamp_assigner(EventTime()))
    stream = parsed.assign_timestamps_and_watermarks(watermarks).name("event-time").uid("event-time")

    label_rows = timed_labels = None
    if labels is not None:
        label_rows, timed_labels = _label_stream(labels, cfg, STAGE_VALUE)

    stages = []
    for entity in ENTITIES:
        inp = stream.union(timed_labels) if timed_labels is not None and entity.reads_labels else stream
        stream = (inp.key_by(EntityKey(entity), key_type=Types.STRING())
                  .process(EntityStage(entity.name, cfg.allowed_lateness_ms, cfg.job_name, cfg.dedup_horizon_ms,
                                       labels is not None), output_type=STAGE_VALUE)
                  .name(f"{entity.name}-windows").uid(f"{entity.name}-windows"))
        stages.append(stream)

    policy = Policy(version=cfg.policy_version, review_threshold=cfg.review_threshold,
                    block_threshold=cfg.block_threshold)
    model, root = str(cfg.resolved_model_path()), str(PROJECT_ROOT)
    if control is None:
        decisions = stream.process(ScoreDecide(model, policy, cfg.job_name, root), output_type=BYTES)
    else:
        decisions = stream.connect(control.broadcast(CONTROL_STATE)).process(
            ScoreDecideControlled(model, policy, cfg.job_name, root), output_type=BYTES)
    decisions = decisions.name("score-decide").uid("score-decide")
    # bad input from the parser; duplicates and processing errors from the entity stages; refused control
    # messages from the decide stage (which turns its own errors into review decisions); bad labels
    sources = stages + ([decisions] if control is not None else []) + ([label_rows] if label_rows is not None else [])
    dead = parsed.get_side_output(DEAD_LETTER_TAG).union(*(s.get_side_output(DEAD_LETTER_TAG) for s in sources))
    return decisions, dead


def _label_stream(labels: DataStream, cfg: JobConfig, output_type) -> tuple[DataStream, DataStream]:
    """(parsed label records, the same with event-time watermarks). Labels carry the labelled event's
    time: their watermark trails the newest labelled event, so late labels hold the label stages' cleanup
    timers back by their lag (bounded), never jump them ahead, and the input goes idle when none come."""
    rows = (labels.process(ParseLabel(cfg.job_name, rows=output_type is not STAGE_VALUE), output_type=output_type)
            .name("parse-labels").uid("parse-labels"))
    wm = (WatermarkStrategy.for_bounded_out_of_orderness(Duration.of_millis(cfg.out_of_orderness_ms))
          .with_idleness(Duration.of_millis(cfg.idleness_ms))
          .with_timestamp_assigner(EventTime()))
    return rows, rows.assign_timestamps_and_watermarks(wm).name("label-time").uid("label-time")


def _build_core_jvm(raw: DataStream, cfg: JobConfig, control: DataStream | None,
                    labels: DataStream | None) -> tuple[DataStream, DataStream]:
    """The fast path: parse and the entity stages in the JVM (udfs/jvm, interpreting the spec), decide in
    Python in batches. The same operator names as the Python path; the entity stages' uids end in ``-jvm``
    (their state is not the Python stages'), and ``validate-control`` / ``control-attach`` carry the live
    control to the decide stage. With graph features (``RISKSTREAM_GRAPH_FEATURES``) ``ENTITIES`` ends in the
    link stage (``link-windows``, uid ``link-windows-jvm``, keyed by user, no labels): the stages before it
    carry the graph context in the record's ``graph`` field, which it sets back to null."""
    from udfs import jvm, jvm_decide, jvm_parse
    from udfs.chain import spec_document

    parsed = jvm_parse.parse_stage(raw, cfg.job_name)
    stream = jvm.event_time(parsed, cfg.out_of_orderness_ms, cfg.idleness_ms)
    label_rows = timed_labels = None
    if labels is not None:
        label_rows, timed_labels = _label_stream(labels, cfg, jvm.record_type_info())
    spec = orjson.dumps(spec_document(cfg.allowed_lateness_ms)).decode()
    stages = []
    for entity in ENTITIES:
        inp = stream.union(timed_labels) if timed_labels is not None and entity.reads_labels else stream
        stream = jvm.entity_stage(inp, entity, spec, cfg.dedup_horizon_ms, labels is not None, cfg.job_name)
        stages.append(stream)
    policy = Policy(version=cfg.policy_version, review_threshold=cfg.review_threshold,
                    block_threshold=cfg.block_threshold)
    model, root = str(cfg.resolved_model_path()), str(PROJECT_ROOT)
    python_dead = [label_rows] if label_rows is not None else []
    if control is not None:
        validated = (control.process(ValidateControl(model, policy, cfg.job_name, root),
                                     output_type=jvm_decide.CONTROL_MESSAGE)
                     .set_parallelism(1).name("validate-control").uid("validate-control"))
        python_dead.append(validated)
        stream = jvm_decide.attach_control(stream, validated)
    decisions = jvm_decide.decide(stream, model, policy, root, with_control=control is not None)
    # dead letters: the JVM operators' side outputs stay in the JVM; the Python ones (bad labels, refused
    # control messages) come through PyFlink's side-output map
    dead = jvm.side_output(parsed, DEAD_LETTER_TAG).union(
        *(jvm.side_output(s, DEAD_LETTER_TAG) for s in stages),
        *(s.get_side_output(DEAD_LETTER_TAG) for s in python_dead))
    return decisions, dead


def kafka_source(cfg: JobConfig, topic: str, group_id: str, offsets: KafkaOffsetsInitializer) -> KafkaSource:
    """A read_committed source of whole records (``io.riskstream.flink.SourceRecords``: value, key, topic,
    partition, offset, the value null for a tombstone), bounded at the end offsets found at start when
    ``cfg.bounded``. A value-only deserializer would drop a tombstone without a trace; :func:`source_values`
    turns it into a ``null_value`` dead letter."""
    from pyflink.java_gateway import get_gateway

    b = (KafkaSource.builder()
         .set_bootstrap_servers(cfg.bootstrap_servers)
         .set_topics(topic)
         .set_group_id(group_id)
         .set_starting_offsets(offsets)
         .set_property("isolation.level", "read_committed")
         .set_property("commit.offsets.on.checkpoint", "true"))
    b._j_builder.setDeserializer(get_gateway().jvm.io.riskstream.flink.SourceRecords())
    for k, v in cfg.kafka_client_properties().items():
        b = b.set_property(k, v)
    if cfg.bounded:
        b = b.set_bounded(KafkaOffsetsInitializer.latest())
    return b.build()


SOURCE_RECORD = Types.ROW_NAMED(["value", "key", "topic", "partition", "offset"],
                                [BYTES, BYTES, Types.STRING(), Types.INT(), Types.LONG()])


def source_values(env: StreamExecutionEnvironment, cfg: JobConfig, source: KafkaSource, watermarks, name: str,
                  parallelism: int | None = None) -> tuple[DataStream, DataStream]:
    """(record values as bytes, ``null_value`` dead letters) of a :func:`kafka_source`: the JVM's
    ``NullValues`` right after the source (uid ``<name>-source`` and ``<name>-values``) passes each value on
    (an empty one too: the parser dead-letters it) and turns a tombstone into a dead letter with its key,
    partition and offset."""
    from pyflink.java_gateway import get_gateway

    rows = env.from_source(source, watermarks, name, type_info=SOURCE_RECORD).uid(f"{name}-source")
    fn = get_gateway().jvm.io.riskstream.flink.NullValues(cfg.job_name)
    values = DataStream(rows._j_data_stream.process(fn, fn.getProducedType())).name(f"{name}-values").uid(
        f"{name}-values")
    if parallelism is not None:
        rows.set_parallelism(parallelism)
        values.set_parallelism(parallelism)
    from udfs import jvm

    return values, jvm.side_output(values, DEAD_LETTER_TAG)


def build(env: StreamExecutionEnvironment, cfg: JobConfig) -> None:
    """Add the decision job's operators to ``env`` (no broker needed to build the graph)."""
    raw, nulls = source_values(env, cfg, kafka_source(cfg, cfg.events_topic, cfg.group_id, start_offsets(cfg)),
                               WatermarkStrategy.no_watermarks(), "kafka-events")
    null_dead = [nulls]
    control = None
    if cfg.control_topic:
        # The device stage's cleanup timers follow the smallest watermark of its inputs. A control source
        # without watermarks would hold them back forever; one stamped with wall-clock time would jump
        # them ahead of event time. So it trails far behind while a message is in flight and goes idle
        # (ignored) when quiet.
        control_wm = (WatermarkStrategy.for_bounded_out_of_orderness(Duration.of_days(36500))
                      .with_idleness(Duration.of_millis(cfg.idleness_ms)))
        # the whole history from the start (newest message of each kind wins), then from checkpoints
        csrc = kafka_source(cfg, cfg.control_topic, f"{cfg.group_id}-control", KafkaOffsetsInitializer.earliest())
        control, cnulls = source_values(env, cfg, csrc, control_wm, "kafka-control", parallelism=1)
        null_dead.append(cnulls)
    labels = None
    if cfg.labels_topic:
        # event time for labels comes from the labelled event's ts (parse-labels), not from the broker
        lsrc = kafka_source(cfg, cfg.labels_topic, f"{cfg.group_id}-labels", start_offsets(cfg))
        labels, lnulls = source_values(env, cfg, lsrc, WatermarkStrategy.no_watermarks(), "kafka-labels")
        null_dead.append(lnulls)
    decisions, dead = build_core(raw, cfg, control, labels)
    dead = dead.union(*null_dead)
    # The sink's own task: at each checkpoint its writer flushes and starts the next transaction (a
    # blocking round trip to the transaction coordinator); chained to the decide stage, that stall would
    # hold every decision in flight behind it.
    (decisions.sink_to(kafka_sink(cfg, cfg.decisions_topic, "decisions", keyed_by_user=True))
     .name("decisions-sink").uid("decisions-sink").disable_chaining())
    (dead.sink_to(kafka_sink(cfg, cfg.dead_letter_topic, "dead-letter", DEAD_LETTER_MAX_BYTES))
     .name("dead-letter-sink").uid("dead-letter-sink"))


FROM_SAVEPOINT_ENV = "RISKSTREAM_FROM_SAVEPOINT"  # set by riskstream.ops.submit for `flink run -s`
SUBMIT_REST_ENV = "RISKSTREAM_SUBMIT_REST_URL"  # set by riskstream.ops.submit: the cluster's REST address
RESTORE_COPY_ENV = "RISKSTREAM_RESTORE_COPY"  # set by riskstream.ops.submit: the savepoint copy `flink run -s` claims


def cluster_changelog(state: dict[str, str], rest_url: str | None) -> dict[str, str]:
    """The changelog settings a job with the state settings ``state`` runs with on its cluster
    (:func:`riskstream.config.changelog_in_effect`): the cluster's config from its JobManager (``rest_url``,
    set by ``riskstream submit``), else from FLINK_CONF_DIR (the client of ``flink run``, the operator's
    JobManager). Refuses a changelog the cluster has no storage for: Flink would fall back to keeping every
    change in memory and in the checkpoint's ``_metadata``."""
    from riskstream.ops import flink_rest
    from riskstream.ops.preflight import StartupError

    cluster_conf: dict[str, str] = {}
    if rest_url:
        try:
            cluster_conf = flink_rest.cluster_config(rest_url)
        except (OSError, ValueError, flink_rest.FlinkError):
            cluster_conf = {}
    if not cluster_conf:
        cluster_conf = flink_conf_dir_settings()
    out = changelog_in_effect(state, cluster_conf)
    if out["state.changelog.enabled"] == "true" and (
            out["state.changelog.storage"] != "filesystem" or not out.get(CHANGELOG_BASE_PATH)):
        raise StartupError(
            f"the changelog is on for this job, but its cluster{' at ' + rest_url if rest_url else ''} has no "
            "changelog storage (state.changelog.storage: filesystem and state.changelog.dstl.dfs.base-path in the "
            "cluster's config; Flink reads them from the TaskManagers' config only): restart the cluster with "
            "`riskstream cluster up` (it configures one), add both to its config (the manifest has them), or "
            "submit with --no-changelog")
    return out


def check_claim_mode(state: dict[str, str], flink_conf: tuple[str, ...]) -> None:
    """Refuse a restore mode Flink cannot run with the changelog (``--flink-conf
    execution.state-recovery.claim-mode=NO_CLAIM``): it would fail at the first checkpoint after the restore,
    since the changelog cannot make it the full one NO_CLAIM needs. riskstream picks the mode per snapshot."""
    from riskstream.ops.preflight import StartupError

    modes = [v.strip().upper() for k, _, v in (i.partition("=") for i in flink_conf)
             if k.strip() == "execution.state-recovery.claim-mode"]
    if modes and modes[-1] != "CLAIM" and str(state.get("state.changelog.enabled", "")).lower() == "true":
        raise StartupError(
            f"execution.state-recovery.claim-mode={modes[-1]} with the changelog on: Flink restores the changelog "
            "only in CLAIM mode. Drop the --flink-conf item (riskstream restores a savepoint from a private copy "
            "in CLAIM mode, so the savepoint stays), or turn the changelog off for this job with --no-changelog")


def claim_forced(flink_conf: tuple[str, ...]) -> bool:
    """Whether a ``flink_conf`` item sets ``execution.state-recovery.claim-mode=CLAIM`` (riskstream restores a
    savepoint without the changelog in NO_CLAIM mode otherwise)."""
    modes = [v.strip().upper() for k, _, v in (i.partition("=") for i in flink_conf)
             if k.strip() == "execution.state-recovery.claim-mode"]
    return bool(modes) and modes[-1] == "CLAIM"


def describe_state(settings: dict[str, str]) -> str:
    """One line for the operator: the state backend and the settings that size it."""
    parts = [f"state backend {settings.get('state.backend.type', '?')}"]
    if settings.get("state.backend.type") == "rocksdb":
        inc = settings.get("execution.checkpointing.incremental") == "true"
        parts.append("incremental checkpoints" if inc else "full checkpoints")
        parts.append(f"local dir {settings.get('state.backend.rocksdb.localdir', '(Flink temp dirs)')}")
    if str(settings.get("state.changelog.enabled", "")).lower() == "true":
        parts.append(f"changelog on (into {settings.get(CHANGELOG_BASE_PATH, '(the cluster folder)')}, materialized "
                     f"every {settings.get(MATERIALIZE_INTERVAL, '10 min')})")
    else:
        parts.append("changelog off")
    for key, name in (("taskmanager.memory.managed.size", "managed memory"),
                      ("taskmanager.memory.task.heap.size", "task heap"), ("riskstream.local-heap", "heap")):
        if key in settings:
            parts.append(f"{name} {settings[key]}")
    return ", ".join(parts)


def run(cfg: JobConfig, wait: bool = True, extra_conf: dict[str, str] | None = None, on_cluster: bool = False):
    """Claim the job (a second start of a live job is refused here, before anything is touched:
    ``riskstream.ops.runguard``), preflight, resolve the restore and check it against the committed output
    (refusing a start that would go back in time), apply the job's snapshot retention, record the run in the
    job's lineage, then run the job (``wait``: on a local MiniCluster until it ends, then record how it ended
    and apply retention again) or submit it (``on_cluster``: the client of ``flink run``).

    A ``wait`` run always has a REST address: ``cfg.rest_port``, else a free port, recorded in the lineage so
    ``riskstream cancel <job_name>`` finds it. The claim (a ``flock``-ed ``jobs/<job_name>/run.lock``) is held
    until the run ended (``wait``) or until the job is submitted (``wait=False``: to a cluster, or to an
    in-process MiniCluster, whose liveness a later start then reads from the REST address it recorded)."""
    import uuid

    from riskstream.ops import lineage, runguard
    from riskstream.ops.procs import free_port
    from riskstream.ops.restore import check_backend, plan_start

    import time

    took: dict[str, float] = {}  # start-up phases before Flink, printed with the job id
    t = time.monotonic()

    def lap(name: str) -> None:
        nonlocal t
        took[name], t = time.monotonic() - t, time.monotonic()

    guard = runguard.claim(cfg.job_name, "riskstream submit" if on_cluster else "riskstream run")
    try:
        preflight(cfg)
        lap("preflight")
        # `riskstream submit --from-savepoint` restores through `flink run -s`; it names the snapshot here too,
        # so the start is checked and recorded like --restore-from (Flink itself restores it from -s)
        by_flink = os.environ.get(FROM_SAVEPOINT_ENV) if not cfg.restore_from else None
        plan = plan_start(cfg.model_copy(update={"restore_from": by_flink}) if by_flink else cfg)
        lap("restore check")
        job_id = uuid.uuid4().hex
        conf = dict(extra_conf or {})
        rest_port = cfg.rest_port or (int(conf["rest.port"]) if conf.get("rest.port") else None)
        if wait and not rest_port:  # every run can be stopped by job name: a REST address, recorded below
            rest_port = free_port()
            conf.update({"rest.port": str(rest_port), "rest.bind-port": str(rest_port),
                         "rest.address": "127.0.0.1", "rest.bind-address": "127.0.0.1"})
        rest_url = os.environ.get(SUBMIT_REST_ENV) if on_cluster else (
            f"http://127.0.0.1:{rest_port}" if rest_port else None)
        local_ck = lineage.local_path(cfg.checkpoint_dir) is not None
        if wait and local_ck:  # a MiniCluster has no savepoint folder of its own: the job's
            conf.setdefault("execution.checkpointing.savepoint-dir",
                            lineage.savepoints_dir(cfg.job_name).resolve().as_uri())
        # what takes effect (make_env's precedence): the state settings, flink_conf items among them, with
        # the caller's own state and memory settings over the former
        local = not on_cluster
        state = state_settings(cfg, local, flink_conf_dir_settings() if local else {})
        overridden = {item.split("=", 1)[0] for item in cfg.flink_conf}
        state.update({k: v for k, v in conf.items()
                      if k.startswith(("state.", "taskmanager.memory.")) and k not in overridden})
        if on_cluster:  # the cluster's changelog (`cluster up`, the manifest), unless the job says otherwise
            state.update(cluster_changelog(state, rest_url))
            if state["state.changelog.enabled"] == "true":
                conf.setdefault(MATERIALIZE_INTERVAL, state[MATERIALIZE_INTERVAL])
        check_claim_mode(state, cfg.flink_conf)
        # a native savepoint or a checkpoint restores only on the backend that wrote it, and a native savepoint
        # claimed by the changelog leaves checkpoints Flink 2.2.1 cannot restore: refused here, before retention,
        # a private copy or the job's submission, not by Flink at restore (a job failing over and over)
        changelog_on = str(state.get("state.changelog.enabled", "")).lower() == "true"
        check_backend(cfg.job_name, plan.snapshot, state.get("state.backend.type"), changelog=changelog_on,
                      claim=changelog_on or claim_forced(cfg.flink_conf))
        if local_ck:
            protect = (plan.snapshot.path,) if plan.snapshot is not None else ()
            copy = os.environ.get(RESTORE_COPY_ENV) if by_flink else None
            if copy and lineage.local_path(copy) is not None:  # `submit --from-savepoint`'s private copy, which
                protect += (lineage.local_path(copy),)  # `flink run -s` restores after this: keep it
            _retention(cfg, protect, "at start")
        restore, claim_mode = None, None
        if plan.snapshot is not None and not by_flink:
            if plan.snapshot.checkpoint_id < 0:  # a remote snapshot riskstream cannot read: Flink's defaults,
                restore = str(plan.snapshot.path)  # but CLAIM with the changelog (Flink refuses NO_CLAIM there)
                if str(state.get("state.changelog.enabled", "")).lower() == "true":
                    claim_mode = "CLAIM"
                    print(f"[restore] {cfg.job_name}: changelog on: restoring {restore} in CLAIM mode; Flink deletes "
                          "it once later checkpoints subsume it (copy it first to keep it)", file=sys.stderr, flush=True)
            else:
                changelog = str(state.get("state.changelog.enabled", "")).lower() == "true"
                restore, claim_mode, note = lineage.restore_mode(cfg.job_name, plan.snapshot, changelog)
                if note:
                    print(f"[restore] {cfg.job_name}: {note}", file=sys.stderr, flush=True)
        print(f"[run] {cfg.job_name}: {describe_state(state)}"
              + (f"; flink_conf {', '.join(cfg.flink_conf)}" if cfg.flink_conf else ""), file=sys.stderr, flush=True)
        print(f"[run] {cfg.job_name}: {describe_spec()}, model {cfg.resolved_model_path().name}", file=sys.stderr,
              flush=True)
        env = make_env(cfg, conf, restore=restore or "", job_id=job_id, local=local, claim_mode=claim_mode)
        lap("environment")
        build(env, cfg)
        lap("job graph")
        lineage.record_run(cfg.job_name, job_id, cfg.checkpoint_dir, plan.snapshot if restore or by_flink else None, extra={
            "transactional_id_prefix": cfg.transactional_id_prefix, "group_id": cfg.group_id,
            "events_topic": cfg.events_topic, "decisions_topic": cfg.decisions_topic,
            "stage_runtime": cfg.stage_runtime, "retain_snapshots": cfg.retain_snapshots,
            "state_layout": state_layout(cfg.allowed_lateness_ms),
            "flink_settings": state, "max_parallelism": cfg.max_parallelism,
            "reprocess": plan.check.reprocess if plan.check is not None and plan.check.refused else 0,
            "kafka_cluster_id": plan.check.cluster_id if plan.check is not None else None,
            **guard.run_fields(rest_url, "cluster" if on_cluster else "local" if wait else "inproc")})
        guard.note(job_id=job_id, rest_url=rest_url)
    except BaseException:
        guard.release()
        raise
    if not wait:  # submitted: from now on the job's REST state says whether it is alive (see runguard)
        try:
            client = env.execute_async(cfg.job_name)
            if local:
                watch_taskmanagers(client)
            return client
        finally:
            guard.release()
    print(f"[run] {cfg.job_name}: job id {job_id}, REST {rest_url}; before Flink: "
          + ", ".join(f"{k} {v:.1f} s" for k, v in took.items()), file=sys.stderr, flush=True)
    watch = None
    if cfg.rest_port:  # a log line while the sinks cannot commit (riskstream/ops/commitwatch.py)
        from riskstream.ops.commitwatch import CommitWatch

        watch = CommitWatch(f"http://127.0.0.1:{cfg.rest_port}", job_id, cfg.checkpoint_interval_ms)
        watch.start()
    state = "FAILED"
    try:
        client = env.execute_async(cfg.job_name)
        watch_taskmanagers(client)
        result = client.get_job_execution_result().result()
        state = "FINISHED"
        return result
    except Exception as e:
        state = "CANCELED" if "JobCancellationException" in str(e) or "was cancelled" in str(e) else "FAILED"
        raise
    except BaseException:  # Ctrl-C, SystemExit: the MiniCluster ends with this process
        state = "INTERRUPTED"
        raise
    finally:  # a stop-with-savepoint ends this process before the caller can ask where it went
        try:
            if watch is not None:
                watch.stop()
            for sp in sorted(lineage.savepoints_dir(cfg.job_name).glob(f"savepoint-{job_id[:6]}-*")):
                lineage.record_savepoint(cfg.job_name, job_id, sp.as_uri(), stopped=True)
            lineage.record_end(cfg.job_name, job_id, state)
            print(f"[run] {cfg.job_name}: job {job_id} {state}", file=sys.stderr, flush=True)
            if local_ck:  # the run is over: its folder keeps no more than the retention
                _retention(cfg, (), "at stop")
        finally:
            guard.release()


TASKMANAGER_WATCH_MS = 1000


def watch_taskmanagers(client) -> bool:
    """Replace a local MiniCluster's TaskManager that stopped while the job runs
    (``io.riskstream.flink.TaskManagerWatch``): a task failure can end in a FATAL error in PyFlink's
    process-mode operator cleanup (docs/exactly-once.md), which stops the TaskManager, and a MiniCluster never
    starts another, so the restarted job would wait for slots forever. False for a remote cluster's client."""
    from pyflink.java_gateway import get_gateway

    watch = get_gateway().jvm.io.riskstream.flink.TaskManagerWatch.start(client._j_job_client, TASKMANAGER_WATCH_MS)
    return watch is not None


def _retention(cfg: JobConfig, protect: tuple, when: str) -> None:
    from riskstream.ops import lineage

    removed = lineage.prune(cfg.job_name, cfg.retain_snapshots, protect)
    logs = [p for p in removed if p.parent.name == "dstl"]
    if removed:
        print(f"[restore] {cfg.job_name}: retention {when} ({cfg.retain_snapshots} newest kept) removed "
              f"{len(removed) - len(logs)} snapshot folder(s)" + (f" and {len(logs)} changelog file(s) no kept "
                                                                   "snapshot reads" if logs else ""),
              file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> str:
    """Cluster entry point: ``flink run -py pipelines/decision_job.py [--job-flag value ...]`` (flags, else
    ``RISKSTREAM_*`` environment variables, else defaults, as ``riskstream run --help`` lists them).
    Submits the job without waiting for it to end and prints its id."""
    import argparse

    from riskstream.jobflags import add_job_flags, job_config

    ap = argparse.ArgumentParser(prog="decision_job", description="Submit the riskstream decision job.")
    add_job_flags(ap)
    cfg = job_config(ap.parse_args(argv))
    from riskstream.ops.preflight import StartupError
    from udfs.scoring import ModelError

    try:
        client = run(cfg, wait=False, on_cluster=True)
    except (ModelError, FileNotFoundError, StartupError, ValueError) as e:
        raise SystemExit(f"riskstream decision job: {e}")
    job_id = str(client.get_job_id())
    print(f"riskstream job id: {job_id}", flush=True)
    return job_id


if __name__ == "__main__":
    main()
