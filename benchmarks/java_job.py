"""Contender ``limit_java_eps``: the same job scored in Java, so the bench shows what Python scoring costs.

The graph is the job's fast path (``pipelines.decision_job``, ``stage_runtime=jvm``) up to the decide
stage: the Kafka source (read_committed), the JVM parser with its dead letters, event time, one JVM entity
stage per entity of the spec (``io.riskstream.flink.EntityWindowsFunction``, the same spec JSON), then
``io.riskstream.flink.JavaDecideFunction`` instead of the batched Python UDF: onnxruntime's Java binding
on the same model file, one row per call, the same thresholds and the policy's built-in rules, the
decision record (``udfs.decision`` fields) to an exactly-once sink keyed by user, as the job's.

Differences from the job, on purpose (a bench contender, not a production path):
- no control input (no live model switch, challenger or rule updates) and no labels input (the
  known-fraud signal reads 0): both are Python operators in the job (validate-control, parse-labels), and
  this contender has none;
- no Python worker at all, so there is nothing to bundle: records flow one at a time through the JVM.

Jars: the job's (``jars_dir``) plus onnxruntime, which only this contender needs. It is ~140 MB (native
libraries for every platform), so it is not put on every job's ``pipeline.jars`` (a cluster submission
uploads all of them) nor shaded into the module jar (which every job loads): ``pom-deps.txt`` has it in
its own ``[bench]`` section, which ``riskstream jars`` fetches beside ``[flink]``
(``<jars root>/bench``, the sibling of ``jars_dir``).

Pitfall: onnxruntime's native library can be loaded by one class loader per JVM, so each run is its own
process (``python -m benchmarks.java_job``): :func:`run` starts one.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson

BENCH_SECTION = "bench"


def bench_jars(jars_dir: Path) -> list[Path]:
    """onnxruntime's jar(s): ``<jars_dir>/../bench`` (the layout of ``riskstream jars``), else the jars root's."""
    from riskstream import paths

    for d in (Path(jars_dir).parent / BENCH_SECTION, paths.jars_root() / BENCH_SECTION):
        jars = sorted(d.glob("*.jar"))
        if jars:
            return jars
    raise FileNotFoundError(f"no [{BENCH_SECTION}] jars (onnxruntime) beside {jars_dir}: run `riskstream jars`, "
                            "which fetches every section of pom-deps.txt")


def split_config(split: dict, policy, model_version: str, project_root: Path | None = None) -> dict:
    """The ``split`` of ``JavaDecideFunction``'s config from a split message (``udfs.split``): each arm's
    bucket range, model file and version, policy version and thresholds, as the Python stage resolves them
    (``udfs.control.Control``), the champion's arm last; the key field, the salt and ``udfs.split.BUCKETS``."""
    from udfs.control import parse_control
    from udfs.scoring import check_spec, load_model_spec
    from udfs.split import BUCKETS, Arm, arm_policy

    msg = parse_control(orjson.dumps({**split, "kind": "split"}))
    arms = []
    for a in msg["arms"]:
        path = None
        version = model_version
        if a.get("path") is not None:
            p = Path(a["path"])
            if not p.is_absolute() and project_root is not None:
                p = Path(project_root) / p
            spec = load_model_spec(p)
            check_spec(spec, p)
            path, version = str(p), str(spec["model_version"])
        pol = arm_policy(policy, Arm(a["name"], a["lo"], a["hi"], None, a.get("review_threshold"),
                                     a.get("block_threshold")))
        arms.append({"name": a["name"], "lo": a["lo"], "hi": a["hi"], "model_path": path, "model_version": version,
                     "policy_version": pol.version, "review_threshold": pol.review_threshold,
                     "block_threshold": pol.block_threshold})
    return {"key_field": msg["key_field"], "salt": msg["salt"], "buckets": BUCKETS, "arms": arms}


def decide_config(policy, model_path: Path, split: dict | None = None,
                  project_root: Path | None = None) -> tuple[str, str]:
    """(model version, the JSON that configures ``JavaDecideFunction``) from the spec, the model's spec file
    and the policy; ``split``: a split message (``udfs.split``), fixed for the run."""
    from udfs.chain import writer_layout
    from udfs.scoring import check_spec, load_model_spec

    spec = load_model_spec(model_path)
    check_spec(spec, model_path)
    conf = {
        **writer_layout(),
        "policy_version": policy.version, "review_threshold": policy.review_threshold,
        "block_threshold": policy.block_threshold,
        "rules": [{"code": r.code, "decision": r.decision,
                   "event_types": list(r.event_types) if r.event_types else None,
                   "conditions": [[n, op, float(v)] for n, op, v in r.conditions]} for r in policy.rules],
    }
    if split is not None and split.get("arms"):
        conf["split"] = split_config(split, policy, str(spec["model_version"]), project_root)
    return str(spec["model_version"]), orjson.dumps(conf).decode()


def build(env, cfg) -> None:
    """The contender's operators on ``env`` (a ``make_env`` environment of ``cfg``)."""
    from pyflink.datastream import DataStream
    from pyflink.common import Types, WatermarkStrategy

    from pipelines.decision_job import kafka_sink, kafka_source, source_values, start_offsets
    from riskstream.topics import DEAD_LETTER_MAX_BYTES
    from udfs import jvm, jvm_parse
    from udfs.features import ENTITIES
    from udfs.flink import DEAD_LETTER_TAG
    from udfs.policy import Policy
    from udfs.chain import spec_document

    raw, nulls = source_values(env, cfg, kafka_source(cfg, cfg.events_topic, cfg.group_id, start_offsets(cfg)),
                               WatermarkStrategy.no_watermarks(), "kafka-events")
    parsed = jvm_parse.parse_stage(raw, cfg.job_name)
    stream = jvm.event_time(parsed, cfg.out_of_orderness_ms, cfg.idleness_ms)
    spec = orjson.dumps(spec_document(cfg.allowed_lateness_ms)).decode()
    stages = []
    for entity in ENTITIES:
        stream = jvm.entity_stage(stream, entity, spec, cfg.dedup_horizon_ms, False, cfg.job_name)
        stages.append(stream)
    policy = Policy(version=cfg.policy_version, review_threshold=cfg.review_threshold,
                    block_threshold=cfg.block_threshold)
    model = cfg.resolved_model_path()
    version, conf = decide_config(policy, model)
    from pyflink.java_gateway import get_gateway

    fn = get_gateway().jvm.io.riskstream.flink.JavaDecideFunction(str(model), version, conf)
    j = stream._j_data_stream.process(fn, Types.PRIMITIVE_ARRAY(Types.BYTE()).get_java_type_info())
    decisions = DataStream(j).name("score-decide-java").uid("score-decide-java")
    (decisions.sink_to(kafka_sink(cfg, cfg.decisions_topic, "decisions", keyed_by_user=True))
     .name("decisions-sink").uid("decisions-sink"))
    dead = jvm.side_output(parsed, DEAD_LETTER_TAG).union(*(jvm.side_output(s, DEAD_LETTER_TAG) for s in stages), nulls)
    (dead.sink_to(kafka_sink(cfg, cfg.dead_letter_topic, "dead-letter", DEAD_LETTER_MAX_BYTES))
     .name("dead-letter-sink").uid("dead-letter-sink"))


def execute(cfg, extra_conf: dict[str, str] | None = None) -> float:
    """Build and run the contender on a local MiniCluster until the (bounded) source is drained."""
    from pipelines.decision_job import make_env
    from riskstream.ops.jars import flink_jar_urls

    jars = flink_jar_urls(cfg.jars_dir) + [j.resolve().as_uri() for j in bench_jars(cfg.jars_dir)]
    env = make_env(cfg, {"pipeline.jars": ";".join(jars), **(extra_conf or {})}, restore="")
    build(env, cfg)
    t0 = time.perf_counter()
    env.execute(cfg.job_name)
    return time.perf_counter() - t0


def run(bootstrap: str, events_topic: str, out_topic: str, expected: int, workdir: Path, parallelism: int = 2,
        log=sys.stderr, checkpoint_interval_ms: int | None = None, deadline_s: float = 900) -> dict:
    """The bench's entry (as the other contenders'): drain the preloaded ``events_topic`` into ``out_topic``
    in a process of its own; ``expected`` is only logged (the caller counts the output)."""
    import os

    from riskstream import paths
    from riskstream.topics import ensure_topics, topic_specs

    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    dead = f"{out_topic}.dead-letter"
    ensure_topics(bootstrap, topic_specs(events_topic, out_topic, dead, parallelism))
    tag = uuid.uuid4().hex[:6]
    args = [sys.executable, "-m", "benchmarks.java_job", "--bootstrap-servers", bootstrap,
            "--events-topic", events_topic, "--decisions-topic", out_topic, "--dead-letter-topic", dead,
            "--parallelism", str(parallelism), "--checkpoint-dir", (workdir / "checkpoints-java").as_uri(),
            "--group-id", f"bench-java-{tag}", "--transactional-id-prefix", f"bench-java-{tag}"]
    if checkpoint_interval_ms:
        args += ["--checkpoint-interval-ms", str(checkpoint_interval_ms)]
    print(f"[java_job] JVM parse + entity stages + Java ONNX decide, parallelism {parallelism}, {expected} "
          "events expected", file=log, flush=True)
    t0 = time.perf_counter()
    logfile = workdir / "java-job.log"
    with open(logfile, "wb") as out:
        proc = subprocess.run(args, stdout=out, stderr=subprocess.STDOUT, cwd=paths.PROJECT_ROOT,
                              env=dict(os.environ), timeout=deadline_s)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"the Java-scored job exited with {proc.returncode}; see {logfile}: "
                           + logfile.read_text(errors="replace")[-1500:])
    print(f"[java_job] finished in {seconds:.1f}s", file=log, flush=True)
    return {"seconds": round(seconds, 1), "parallelism": parallelism,
            "what": "the job's JVM parse and entity stages, decide in Java (onnxruntime Java, same model, "
                    "thresholds and built-in rules), exactly once; no control or labels input"}


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.java_job --bootstrap-servers ... --events-topic ... --decisions-topic ...``: the
    job's settings as flags (``riskstream run``'s), bounded, from the earliest offsets, no control or labels."""
    from riskstream.jobflags import add_job_flags, job_config

    ap = argparse.ArgumentParser(prog="benchmarks.java_job", description=__doc__.split("\n")[0])
    add_job_flags(ap, skip=("control_topic", "labels_topic", "bounded", "starting_offsets", "stage_runtime"))
    cfg = job_config(ap.parse_args(argv), control_topic="", labels_topic="", bounded=True,
                     starting_offsets="earliest", job_name="riskstream-bench-java")
    seconds = execute(cfg)
    print(f"[java_job] executed in {seconds:.1f}s", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
