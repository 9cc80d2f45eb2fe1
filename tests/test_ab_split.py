"""A 50/50 traffic split on the real broker with `riskstream run` MiniCluster processes (JVM stages, batched
Python decide stage, parallelism 2):

run A: a split message (arm b: risk_gbdt_v2 with its own thresholds, 50 %) -> the first half of the traffic
-> `riskstream cancel` (stop-with-savepoint) -> run B `--restore-from latest`: the control source resumes past
the split message, so the split B decides with can only come from the savepoint's state -> a refused split
(arms adding up to 1.2) -> the second half -> stop.

Checked against brute force on the records: every event decided exactly once; each user on one arm in both
runs, the arm of the written-out hash; each arm's score is its own model's on the record's features and its
decision the job's policy with the arm's thresholds; the refused split is a control_rejected dead letter
and changes nothing; the report's per-arm figures equal a hand count.
"""

from __future__ import annotations

import base64
import os
import sys
import time
from collections import defaultdict
from dataclasses import replace
from fractions import Fraction

import orjson
import pytest

from riskstream import paths, topics
from riskstream.ops import flink_rest
from tests.test_restore_lineage import Job, cli, decisions, produce_events, same_path, wait_decided
from tests.test_split import _brute_arm, _brute_bucket

pytestmark = [pytest.mark.kafka, pytest.mark.flink, pytest.mark.long]

V2 = "models/risk_gbdt_v2.onnx"
SPLIT = {"kind": "split", "version": "ab50", "salt": "it",
         "arms": [{"name": "b", "share": 0.5, "path": V2, "review_threshold": 0.4, "block_threshold": 0.8}]}


def _send(bootstrap: str, topic: str, msg: dict) -> None:
    from kafka import KafkaProducer

    p = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        p.send(topic, orjson.dumps(msg)).get(timeout=30)
    finally:
        p.close()


def _applied(rest: str, job_id: str, n: int, deadline_s: float = 120) -> None:
    """Poll validate-control's counter until ``n`` control messages were accepted."""
    t_end = time.monotonic() + deadline_s
    while flink_rest.user_counters(rest, job_id, ("control_applied",)).get("control_applied", 0) < n:
        assert time.monotonic() < t_end, f"{n} control message(s) not applied within {deadline_s}s"
        time.sleep(0.3)  # polling interval


def test_a_split_keeps_each_user_on_one_arm_across_a_savepoint_and_each_arm_decides_with_its_model(
        kafka_bootstrap, tmp_path):
    from riskstream.generator import TrafficGenerator
    from udfs.features import FEATURE_NAMES
    from udfs.policy import Policy
    from udfs.scoring import Scorer

    job = "ab-split"
    home = tmp_path / "home"
    env = {**os.environ, "RISKSTREAM_HOME": str(home), "RISKSTREAM_JARS_ROOT": str(paths.jars_root())}
    names = tuple(f"{job}.{t}" for t in ("events", "decisions", "dead", "control"))
    topics.ensure_topics(kafka_bootstrap, topics.topic_specs(*names[:3], partitions=2)
                         + [topics.control_topic_spec(names[3])])
    flags = ["--bootstrap-servers", kafka_bootstrap, "--events-topic", names[0], "--decisions-topic", names[1],
             "--dead-letter-topic", names[2], "--control-topic", names[3], "--labels-topic", "", "--group-id",
             f"{job}-group", "--job-name", job, "--transactional-id-prefix", f"{job}-tx", "--starting-offsets",
             "earliest", "--checkpoint-interval-ms", "1000", "--stage-runtime", "jvm", "--parallelism", "2"]
    gen = list(TrafficGenerator(seed=41, bad_share=0.0).generate(1600))
    events = [r.event for r in gen]
    halves = [events[:800], events[800:]]
    times: dict[str, float] = {}
    savepoint = None
    try:
        for i, part in enumerate(halves):
            t0 = time.monotonic()
            run = Job(env, tmp_path, flags, ("--restore-from", "latest") if i else ())
            try:
                run.running(checkpoint=False)
                times[f"run {'AB'[i]}: start -> running"] = time.monotonic() - t0
                if i == 0:
                    _send(kafka_bootstrap, names[3], SPLIT)
                    _applied(run.rest, run.job_id, 1)
                else:
                    restored = run.restored()
                    assert restored.get("is_savepoint") and same_path(restored["external_path"], savepoint), restored
                    bad = dict(SPLIT, version="ab-bad", arms=[*SPLIT["arms"], {"name": "c", "share": 0.7, "path": V2}])
                    _send(kafka_bootstrap, names[3], bad)
                produce_events(kafka_bootstrap, names[0], part)
                t1 = time.monotonic()
                wait_decided(kafka_bootstrap, names[1], sum(len(h) for h in halves[:i + 1]))
                times[f"run {'AB'[i]}: its half decided"] = time.monotonic() - t1
                t1 = time.monotonic()
                res = cli(env, "cancel", job)
                assert res.returncode == 0, res.stderr + run.text()
                savepoint = res.stdout.strip().splitlines()[-1]
                times[f"run {'AB'[i]}: stop with savepoint"] = time.monotonic() - t1
                run.proc.wait(timeout=60)
            finally:
                run.kill()
    finally:
        for k, v in times.items():
            print(f"[ab-split] {k}: {v:.1f}s", file=sys.stderr)

    got = decisions(kafka_bootstrap, names[1])
    assert sorted(d["event_id"] for d in got) == sorted(e["event_id"] for e in events), "not exactly once"
    dead = decisions(kafka_bootstrap, names[2])
    assert [d["reason"] for d in dead] == ["control_rejected"], dead
    assert "split refused" in dead[0]["detail"] and "more than 1" in dead[0]["detail"], dead[0]
    assert orjson.loads(base64.b64decode(dead[0]["original_b64"]))["version"] == "ab-bad"

    # every user on one arm, in both runs, the arm of the written-out hash
    shares = [("b", Fraction(1, 2))]
    half_of = {e["event_id"]: i for i, h in enumerate(halves) for e in h}
    arms_of: dict[str, set] = defaultdict(set)
    for d in got:
        assert d["arm"] == _brute_arm(_brute_bucket(d["user_id"], "it"), shares), d
        arms_of[d["user_id"]].add((d["arm"], half_of[d["event_id"]]))
    both = [u for u, s in arms_of.items() if {h for _, h in s} == {0, 1}]
    assert len(both) >= 150 and all(len({a for a, _ in arms_of[u]}) == 1 for u in both)
    by_arm = defaultdict(list)
    for d in got:
        by_arm[d["arm"]].append(d)
    users = {a: {d["user_id"] for d in ds} for a, ds in by_arm.items()}
    assert set(by_arm) == {"b", "champion"} and min(len(u) for u in users.values()) >= 0.35 * len(arms_of)

    # each arm decided with its own model and thresholds (brute force on the record's features)
    models = {"b": Scorer(V2), "champion": Scorer("models/risk_gbdt_v1.onnx")}
    policies = {"b": replace(Policy(), version="p1+b", review_threshold=0.4, block_threshold=0.8), "champion": Policy()}
    for arm, ds in by_arm.items():
        for d in ds:
            x = [d["features"][n] for n in FEATURE_NAMES]
            score = models[arm].score(x)
            assert abs(d["score"] - score) <= 1e-6, d
            assert (d["model_version"], d["policy_version"]) == (models[arm].version, policies[arm].version)
            assert [d["decision"], d["reasons"]] == list(policies[arm].decide(score, x, d["event_type"], d["late"])), d
    # the arms differ where they should: some event gets another decision than the other arm would give
    assert any(policies["champion"].decide(models["champion"].score([d["features"][n] for n in FEATURE_NAMES]),
                                           [d["features"][n] for n in FEATURE_NAMES], d["event_type"], d["late"])[0]
               != d["decision"] for d in by_arm["b"])

    # the report's per-arm figures against a hand count on the same records and labels
    from riskstream.tools.report import build_report, render_text
    from tests.test_report import assert_arm_figures, hand_arm_figures

    labels = {r.label["event_id"]: r.label for r in gen}
    fig = build_report(got, labels)
    assert_arm_figures(fig, hand_arm_figures(got, labels))
    print(render_text(fig), file=sys.stderr)
