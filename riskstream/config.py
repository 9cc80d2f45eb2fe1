"""One frozen, validated configuration for the decision job (unknown keys rejected, secrets masked).

Every field has a CLI flag and an environment-variable fallback ``RISKSTREAM_<FIELD>`` (see
``riskstream run --help``). Invalid values fail at start with a message that names the field and the fix.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from . import paths, topics
from .topics import BROKER_MAX_TRANSACTION_TIMEOUT_MS

_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_HOSTPORT = re.compile(r"^[A-Za-z0-9.\-\[\]:]+:\d{1,5}$")
_MEMORY = re.compile(r"^\d+\s*(b|k|kb|m|mb|g|gb|t|tb)?$", re.IGNORECASE)
# a local rocksdb run's managed memory when none is given: MiniCluster's default (128m) starves RocksDB's
# block cache and write buffers once the state holds millions of keys
LOCAL_ROCKSDB_MANAGED_MEMORY = "512m"

# The production RocksDB settings besides the backend and incremental checkpoints: one source for the job's
# own settings (JobConfig.flink_settings), `cluster up`'s config.yaml (riskstream.ops.cluster) and the
# Kubernetes manifest (deploy/k8s/flinkdeployment.yaml; tests/test_deploy.py holds it to this).
ROCKSDB_SETTINGS: dict[str, str] = {
    # timers stay in RocksDB: heap timers would be written in full at every checkpoint, undoing incremental
    # checkpoints
    "state.backend.rocksdb.timer-service.factory": "ROCKSDB",
    # every new key's first read misses: a bloom filter per file answers it without reading the file
    "state.backend.rocksdb.use-bloom-filter": "true",
}

MATERIALIZE_INTERVAL = "state.changelog.periodic-materialize.interval"
CHANGELOG_BASE_PATH = "state.changelog.dstl.dfs.base-path"  # <base>/<flink job id>/dstl/ holds a run's log

# The changelog's settings besides ``state.changelog.enabled`` and its folder (``state.changelog.dstl.dfs.base-path``):
# one source for the job's settings, `cluster up`'s config.yaml and the Kubernetes manifest (tests/test_deploy.py).
CHANGELOG_SETTINGS: dict[str, str] = {
    # the log goes to files beside the checkpoints; Flink's default ("memory") would put every change into
    # the checkpoint's _metadata
    "state.changelog.storage": "filesystem",
    # how often the backend's own files are snapshotted ("materialized") so the log before it can go. The
    # log holds the changes since the last materialization and a restore replays them: at ~0.9 KB of changes
    # per event (four stages; 15 MB per 1 s checkpoint at 16.9k events/s, docs/benchmarks.md) Flink's default
    # 10 min is up to 9 GB at full speed on 2 cores; 3 min bounds it to ~2.7 GB (160 MB at 1k events/s).
    # A materialization flushes RocksDB's memtables in the stage's thread (0.6-1 s under load, as every
    # checkpoint of RocksDB alone does): every 3 min, about one 1 s checkpoint in 180 waits on it, under
    # the 1 % that p99 reads.
    MATERIALIZE_INTERVAL: "3 min",
}

DEFAULT_MODEL = "models/risk_gbdt_v1.onnx"
# the shipped model of the spec with graph features (RISKSTREAM_GRAPH_FEATURES=1), trained with the rings
DEFAULT_GRAPH_MODEL = "models/risk_gbdt_graph_v1.onnx"


def default_model() -> str:
    """The shipped model of the spec in force: the graph model when the graph features are on (a model of
    the other spec is refused at start by its fingerprint)."""
    from udfs.features import GRAPH_FEATURES

    return DEFAULT_GRAPH_MODEL if GRAPH_FEATURES else DEFAULT_MODEL

# ``profile=low-latency``: the settings it changes (flags and RISKSTREAM_* variables still beat them), each
# cutting a term of p99 (docs/benchmarks.md "Where p99 goes"): smaller Python bundles and Arrow batches
# (a record waits at most bundle_time_ms for its batch), a shorter network buffer timeout (waited at each of
# the keyed exchanges), unaligned checkpoints (a barrier overtakes the buffered records instead of
# blocking the channels it arrived on), a shorter checkpoint interval (decisions commit, so become
# visible, sooner). Costs throughput: more, smaller batches and more frequent checkpoints.
PROFILES: dict[str, dict[str, object]] = {
    "default": {},
    "low-latency": {"bundle_time_ms": 5, "bundle_size": 200, "arrow_batch_size": 200, "buffer_timeout_ms": 1,
                    "checkpoint_interval_ms": 500, "unaligned_checkpoints": True},
}


def changelog_in_effect(job: dict[str, str], cluster: dict[str, str]) -> dict[str, str]:
    """The changelog settings a job submitted to a cluster runs with, from its own settings (``job``) and the
    cluster's config (``cluster``): on or off as the job says (``state.changelog.enabled``), else as the
    cluster says, else off; the storage and its folder are the cluster's (Flink's TaskManagers read them from
    their own config only, a job's are ignored); the materialization interval the job's, else the cluster's,
    else :data:`CHANGELOG_SETTINGS`'. A storage other than ``filesystem`` with a folder is for the caller to
    refuse (Flink's default, ``memory``, puts every change into the checkpoint's ``_metadata``)."""
    enabled = str(job.get("state.changelog.enabled") or cluster.get("state.changelog.enabled") or "false").lower()
    out = {"state.changelog.enabled": "true" if enabled == "true" else "false"}
    if enabled == "true":
        out["state.changelog.storage"] = cluster.get("state.changelog.storage") or "memory"
        if cluster.get(CHANGELOG_BASE_PATH):
            out[CHANGELOG_BASE_PATH] = cluster[CHANGELOG_BASE_PATH]
        out[MATERIALIZE_INTERVAL] = (job.get(MATERIALIZE_INTERVAL) or cluster.get(MATERIALIZE_INTERVAL)
                                     or CHANGELOG_SETTINGS[MATERIALIZE_INTERVAL])
    return out


def changelog_dir(checkpoint_dir: str) -> str:
    """Where the changelog goes: beside the checkpoints (``.../checkpoints`` -> ``.../changelog``), on the
    same durable file system (it is part of every checkpoint)."""
    base = checkpoint_dir.rstrip("/")
    return base[: -len("/checkpoints")] + "/changelog" if base.endswith("/checkpoints") else base + "-changelog"


class JobConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    bootstrap_servers: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers, host:port[,host:port]")
    events_topic: str = Field(topics.EVENTS, description="input topic of JSON events")
    decisions_topic: str = Field(topics.DECISIONS, description="output topic of decision records")
    dead_letter_topic: str = Field(topics.DEAD_LETTER, description="output topic of rejected records")
    control_topic: str = Field(
        topics.CONTROL, description="topic of live control messages (model switch, challenger, rules); "
                                          "created by the job if missing; empty: no live control")
    labels_topic: str = Field(
        topics.LABELS, description="topic of fraud/legit labels (chargebacks, analyst verdicts) that feed "
                                         "the known-fraud device signal; created by the job if missing; empty: none")
    group_id: str = Field("riskstream-decisions", description="consumer group of the Kafka source")
    job_name: str = Field("riskstream-decisions", description="Flink job name")
    transactional_id_prefix: str = Field(
        "riskstream-decisions",
        description="Kafka transactional-id prefix; unique per job on a cluster, stable across restarts")
    parallelism: int = Field(1, ge=1, le=256, description="job parallelism")
    checkpoint_interval_ms: int = Field(
        1000, ge=100, description="checkpoint interval; decisions become visible to read_committed "
                                  "readers only when the checkpoint that covers them completes")
    checkpoint_dir: str = Field(
        "", description="checkpoint storage URI (file://, s3://, ...); never the JobManager heap, whose 5 MB cap "
                        "fails checkpoints once window state grows; default: the job's own folder, "
                        "<home>/jobs/<job_name>/checkpoints")
    transaction_timeout_ms: int = Field(
        600_000, ge=60_000, description="Kafka transaction timeout of the exactly-once sinks; must exceed "
                                        "checkpoint + restart time and not exceed the broker's maximum")
    out_of_orderness_ms: int = Field(5_000, ge=0, description="watermark bound on event-time disorder")
    idleness_ms: int = Field(5_000, ge=0, description="a source split silent this long stops holding watermarks")
    allowed_lateness_ms: int = Field(60_000, ge=0, description="older than the key's newest event by more: late")
    dedup_horizon_ms: int = Field(
        600_000, ge=0, description="a record whose event_id its user sent within this much event time is "
                                   "dead-lettered as duplicate_event_id, not scored (0: off)")
    model_path: Path = Field(default_factory=lambda: Path(default_model()),
                             description="ONNX model (its .json spec sits beside it) [default the shipped model of "
                                         "the spec: risk_gbdt_v1, or risk_gbdt_graph_v1 with graph features]")
    review_threshold: float = Field(0.5, ge=0, le=1, description="score at or above which to review")
    block_threshold: float = Field(0.9, ge=0, le=1, description="score at or above which to block")
    policy_version: str = Field("p1", min_length=1, max_length=32, description="policy version (in decision ids)")
    jars_dir: Path = Field(default_factory=paths.flink_jars_dir,
                           description="folder of the connector jars handed to the job (pipeline.jars)")
    python_execution_mode: Literal["process", "thread"] = Field(
        "thread", description="PyFlink Python mode; thread (embedded) avoids a JVM round trip per state "
                              "access, measured ~14k vs ~0.7k keyed events/s here")
    stage_runtime: Literal["jvm", "python"] = Field(
        "jvm", description="where parsing and the keyed entity stages run: jvm (udfs/jvm, driven by the same "
                           "spec, decisions scored in batches; the fast path) or python (udfs/flink.py, the "
                           "reference the replay and training run)")
    starting_offsets: Literal["earliest", "latest", "committed"] = Field(
        "committed", description="where the source starts without a checkpoint (committed: group offsets, "
                                 "else earliest)")
    bounded: bool = Field(False, description="stop at the end offsets found at start (batch-like runs)")
    bundle_time_ms: int = Field(
        20, ge=1, description="max time a Python operator holds records before processing them "
                              "(python.fn-execution.bundle.time; Flink's default 1000 adds ~1 s per stage)")
    bundle_size: int = Field(1000, ge=1, description="max records per Python bundle (python.fn-execution.bundle.size)")
    arrow_batch_size: int = Field(
        1000, ge=1, description="max rows per batch of the vectorized decide UDF "
                                "(python.fn-execution.arrow.batch.size; at most bundle_size)")
    unaligned_checkpoints: bool = Field(
        False, description="unaligned checkpoints (execution.checkpointing.unaligned.enabled): barriers overtake "
                           "buffered records, so a checkpoint does not block the keyed exchanges while it aligns")
    profile: Literal["default", "low-latency"] = Field(
        "default", description="a set of settings for one goal: low-latency = bundle_time_ms 5, bundle_size 200, "
                               "arrow_batch_size 200, buffer_timeout_ms 1, checkpoint_interval_ms 500, "
                               "unaligned_checkpoints; settings given explicitly beat the profile's")
    buffer_timeout_ms: int = Field(
        5, ge=0, le=1000, description="max time a network buffer waits to fill before it is sent to the next "
                                      "operator (Flink's default 100 ms costs up to 100 ms per keyBy at low rates)")
    restart_attempts: int = Field(
        10, ge=0, description="restarts before the job fails for good (the first after 250 ms, then doubling up "
                              "to 10 s: 10 cover about a minute; a minute of stable running resets the count); a "
                              "job that keeps failing must surface, not loop forever")
    rest_port: int | None = Field(
        None, ge=1, le=65535, description="local MiniCluster REST/web port on 127.0.0.1 (metrics, savepoints, "
                                          "`riskstream cancel`); unset: `riskstream run` picks a free port "
                                          "and records it in the job's lineage")
    restore_from: str | None = Field(
        None, description="start from this savepoint or retained checkpoint (path or URI), or 'latest' for "
                          "the job's newest completed checkpoint or savepoint, from its lineage "
                          "(<home>/jobs/<job_name>/lineage.jsonl); refused when the job ran but nothing can be named")
    allow_reprocess: bool = Field(
        False, description="start even if the start would decide again events whose decisions are already "
                           "committed (an older snapshot, or no state on a topic with decisions); the repeats "
                           "carry the same decision_ids")
    retain_snapshots: int = Field(
        3, ge=1, le=1000, description="completed checkpoints and savepoints kept per job (newest first, in "
                                      "jobs/<job_name>/) when a run starts and when it stops; half-written "
                                      "checkpoint and savepoint folders are removed then too")
    max_parallelism: int = Field(
        128, ge=1, le=32768, description="key groups of the keyed state (pipeline.max-parallelism): the highest "
                                         "parallelism a savepoint can be restored at; changing it makes earlier "
                                         "snapshots unrestorable")
    state_backend: Literal["hashmap", "rocksdb"] | None = Field(
        None, description="keyed state backend: hashmap (objects on the JVM heap, a full snapshot at every "
                          "checkpoint: up to ~100k users) or rocksdb (local disk, incremental checkpoints: "
                          "millions of users); unset: hashmap for `run`, rocksdb for `submit` (and `cluster up`)")
    incremental_checkpoints: bool = Field(
        True, description="with rocksdb: each checkpoint uploads only the files written since the last one "
                          "(execution.checkpointing.incremental); restores read the whole chain")
    changelog: bool | None = Field(
        None, description="the changelog state backend over the chosen one (state.changelog.enabled): a checkpoint "
                          "uploads the state changes since the last one, the backend's own files every 3 min; "
                          "measured shorter checkpoints than RocksDB's incremental ones (docs/benchmarks.md). "
                          "Flink restores it only in CLAIM mode: a savepoint is then restored from a private copy "
                          "(jobs/<job>/claimed/) so that the savepoint itself stays. Unset: off for `run`; for "
                          "`submit`, the cluster's setting (on with `cluster up` and the manifest); false turns it "
                          "off for this job on a cluster that has it on")
    rocksdb_local_dir: str = Field(
        "", description="with rocksdb: local folder of the working RocksDB files (state.backend.rocksdb.localdir), "
                        "on a fast local disk; unset: Flink's temp folders (io.tmp.dirs)")
    managed_memory: str = Field(
        "", description="TaskManager managed memory (taskmanager.memory.managed.size: RocksDB's block cache and "
                        "write buffers, Python workers) of a local run, e.g. 512m; unset: 512m with rocksdb, else Flink's; "
                        "a cluster's: `riskstream cluster up --managed-memory`")
    taskmanager_heap: str = Field(
        "", description="heap of the local run's JVM, which holds hashmap state (-Xmx through JVM_ARGS before the "
                        "JVM starts; unset: a quarter of RAM), e.g. 2g; a cluster's: `riskstream cluster up "
                        "--taskmanager-heap`")
    flink_conf: tuple[str, ...] = Field(
        (), description="any Flink setting as KEY=VALUE, applied last (beats every other setting); repeat the flag, "
                        "or separate items with ';' in the variable (a JSON list for values that hold ';')")
    sasl_username: str | None = Field(None, description="SASL/PLAIN user, if the brokers need one")
    sasl_password: SecretStr | None = Field(None, description="SASL/PLAIN password (masked in logs)")

    @field_validator("events_topic", "decisions_topic", "dead_letter_topic", "control_topic", "labels_topic")
    @classmethod
    def _topic(cls, v: str, info) -> str:
        if info.field_name in ("control_topic", "labels_topic") and v == "":
            return v
        if not _TOPIC.match(v) or v in (".", ".."):
            raise ValueError(f"{v!r} is not a valid Kafka topic name (1-249 of letters, digits, '.', '_', '-')")
        return v

    @model_validator(mode="before")
    @classmethod
    def _profile(cls, data):
        """The profile's settings, where the caller gave none (a flag or a RISKSTREAM_* variable wins)."""
        if isinstance(data, dict) and data.get("profile") in PROFILES:
            data = {**PROFILES[data["profile"]], **{k: v for k, v in data.items() if v is not None}}
        return data

    @model_validator(mode="before")
    @classmethod
    def _job_folder(cls, data):
        """Without a checkpoint_dir the job checkpoints into its own folder, so runs of different jobs never
        share one (``restore_from=latest`` reads the job's lineage, not file times)."""
        if isinstance(data, dict) and not data.get("checkpoint_dir"):
            name = data.get("job_name") or cls.model_fields["job_name"].default
            if isinstance(name, str) and re.match(r"^[A-Za-z0-9._-]{1,200}$", name):
                data = {**data, "checkpoint_dir": paths.home().joinpath("jobs", name, "checkpoints").as_uri()}
        return data

    @field_validator("checkpoint_dir")
    @classmethod
    def _ckdir(cls, v: str) -> str:
        if not v:
            raise ValueError("checkpoint_dir must not be empty")
        if "://" not in v:
            p = Path(v).expanduser()
            if not p.is_absolute():
                p = Path.cwd() / p
            return p.resolve().as_uri()
        return v

    @field_validator("bootstrap_servers")
    @classmethod
    def _servers(cls, v: str) -> str:
        for part in v.split(","):
            if not _HOSTPORT.match(part.strip()):
                raise ValueError(f"{part!r} is not host:port (e.g. 127.0.0.1:9092)")
        return v

    @field_validator("flink_conf", mode="before")
    @classmethod
    def _flink_conf_items(cls, v):
        """A string (the variable) is split on ';', or parsed as a JSON list when it starts with '['."""
        if isinstance(v, str):
            text = v.strip()
            if text.startswith("["):
                import json

                try:
                    v = json.loads(text)
                except ValueError as e:
                    raise ValueError(f"flink_conf starts with '[' but is not a JSON list: {e}") from None
            else:
                v = [x for x in text.split(";") if x.strip()]
        return tuple(v)

    @field_validator("flink_conf")
    @classmethod
    def _flink_conf(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        out = []
        for item in v:
            key, sep, value = str(item).partition("=")
            if not sep or not key.strip() or not re.match(r"^[A-Za-z0-9$][A-Za-z0-9._$-]*$", key.strip()):
                raise ValueError(f"{item!r} is not KEY=VALUE with a Flink option key (e.g. "
                                 "state.backend.rocksdb.block.cache-size=256m)")
            out.append(f"{key.strip()}={value.strip()}")
        return tuple(out)

    @field_validator("managed_memory", "taskmanager_heap")
    @classmethod
    def _memory(cls, v: str) -> str:
        if v and not _MEMORY.match(v.strip()):
            raise ValueError(f"{v!r} is not a memory size (a number with an optional unit: 512m, 2g, 1536mb)")
        return v.strip()

    @field_validator("transactional_id_prefix", "group_id", "job_name")
    @classmethod
    def _ident(cls, v: str) -> str:
        if not re.match(r"^[A-Za-z0-9._-]{1,200}$", v):
            raise ValueError(f"{v!r} must be 1-200 of letters, digits, '.', '_', '-'")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "JobConfig":
        named = [self.events_topic, self.decisions_topic, self.dead_letter_topic] + \
            [t for t in (self.control_topic, self.labels_topic) if t]
        if len(set(named)) != len(named):
            raise ValueError("events, decisions, dead-letter, control and labels topics must all be different topics")
        if self.dedup_horizon_ms > 24 * 3600 * 1000:
            raise ValueError("dedup_horizon_ms must be at most 24 h: the user stage drops an idle user's state "
                             "(and its remembered ids) after its longest window")
        if self.review_threshold > self.block_threshold:
            raise ValueError("review_threshold must not exceed block_threshold")
        if self.transaction_timeout_ms > BROKER_MAX_TRANSACTION_TIMEOUT_MS:
            raise ValueError(
                f"transaction_timeout_ms {self.transaction_timeout_ms} exceeds the broker's "
                f"transaction.max.timeout.ms ({BROKER_MAX_TRANSACTION_TIMEOUT_MS}): the sink would fail to start")
        if self.parallelism > self.max_parallelism:
            raise ValueError(f"parallelism {self.parallelism} exceeds max_parallelism {self.max_parallelism}")
        if self.arrow_batch_size > self.bundle_size:
            raise ValueError("arrow_batch_size must not exceed bundle_size (a batch is cut from one bundle)")
        if self.transaction_timeout_ms < 10 * self.checkpoint_interval_ms:
            raise ValueError("transaction_timeout_ms should be at least 10x checkpoint_interval_ms, or a slow "
                             "checkpoint lets the broker abort a transaction that Flink will still commit")
        return self

    def effective_state_backend(self, local: bool) -> str:
        """The backend a run uses: the configured one, else hashmap locally and rocksdb on a cluster."""
        return self.state_backend or ("hashmap" if local else "rocksdb")

    def flink_settings(self, local: bool) -> dict[str, str]:
        """The Flink settings of the state backend, memory and ``flink_conf`` (in that order, so a
        ``flink_conf`` item beats the rest). ``local``: a MiniCluster run in this process's JVM (its heap is
        set through JVM_ARGS, not here), else a job submitted to a cluster.

        Pitfalls: RocksDB timers stay in RocksDB (``timer-service.factory: ROCKSDB``): heap timers would
        be written in full at every checkpoint, undoing incremental checkpoints; the local dir must not be
        shared by two TaskManagers' runs at once."""
        backend = self.effective_state_backend(local)
        out = {"state.backend.type": backend}
        if backend == "rocksdb":
            out["execution.checkpointing.incremental"] = "true" if self.incremental_checkpoints else "false"
            out.update(ROCKSDB_SETTINGS)
            if self.rocksdb_local_dir:
                out["state.backend.rocksdb.localdir"] = self.rocksdb_local_dir
        if self.changelog:
            out["state.changelog.enabled"] = "true"
            out[MATERIALIZE_INTERVAL] = CHANGELOG_SETTINGS[MATERIALIZE_INTERVAL]
            if local:  # a cluster's TaskManagers write the log where their own config says (Flink reads the
                # changelog storage from the TaskManager's config only): `cluster up`, the manifest
                out.update(CHANGELOG_SETTINGS)
                out[CHANGELOG_BASE_PATH] = changelog_dir(self.checkpoint_dir)
        elif self.changelog is False:  # off for this job, whatever the cluster's (or FLINK_CONF_DIR's) config says
            out["state.changelog.enabled"] = "false"
        managed = self.managed_memory or (LOCAL_ROCKSDB_MANAGED_MEMORY if backend == "rocksdb" else "")
        if managed and local:  # a cluster's TaskManagers are sized by the cluster (`cluster up`, the manifest)
            out["taskmanager.memory.managed.size"] = managed
        for item in self.flink_conf:
            k, _, v = item.partition("=")
            out[k] = v
        return out

    def resolved_model_path(self) -> Path:
        p = self.model_path
        return p if p.is_absolute() else (paths.PROJECT_ROOT / p if not p.exists() else p.resolve())

    def kafka_client_properties(self) -> dict[str, str]:
        if not self.sasl_username:
            return {}
        pw = self.sasl_password.get_secret_value() if self.sasl_password else ""
        return {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "PLAIN",
                "sasl.jaas.config": "org.apache.kafka.common.security.plain.PlainLoginModule required "
                                    f'username="{self.sasl_username}" password="{pw}";'}

    def kafka_python_properties(self) -> dict:
        """The same settings for kafka-python clients (admin, consumers in start-up checks)."""
        if not self.sasl_username:
            return {}
        return {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN",
                "sasl_plain_username": self.sasl_username,
                "sasl_plain_password": self.sasl_password.get_secret_value() if self.sasl_password else ""}
