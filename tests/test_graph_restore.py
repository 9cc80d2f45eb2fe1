"""The graph features' state (docs/features.md#graph-features) across a stop with a savepoint and a restore, on
the real broker with `riskstream run` MiniCluster processes, ``RISKSTREAM_GRAPH_FEATURES=1`` in their
environment (the test process keeps the switch off; the replay runs in a subprocess with it on), per stage
runtime:

A decides the first part of two weeks of ring traffic, fraud labels arriving days late on the labels topic
-> `riskstream cancel --format canonical` (stop-with-savepoint) -> B restores it (`--restore-from PATH`) and
decides the rest -> every decision of B has exactly the replay's 78 features (the whole stream, the labels at
their arrival), and every event has one committed decision across A and B. C, a job started without state on
the rest alone (same pacing, same labels from the split on), differs from the replay on many events' graph
features: B's graph values came from the savepoint (the check can fail). Then the switch off against the
savepoint of the graph spec: refused at start (``check_layout``), before Flink.

The feed is paced as tests/test_graph_job.py's source is: before a label batch, every earlier event is
decided (committed on the decisions topic); before the events after it, every label-reading stage took it in
(``numRecordsIn`` on the job's REST API). One partition per topic and parallelism 1: every stage sees the
input's order, the order the replay folds.

And the other direction: a savepoint written with the switch off restores with it on (the graph state
starts empty, the link stage without state) and the job decides on with the 78 features.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from riskstream import paths, topics
from riskstream.ops import lineage
from riskstream.ops.procs import free_port
from tests.test_graph_job import GRAPH_NAMES, NAMES, interleave, ring_traffic
from tests.test_job_flink import _Pace
from tests.test_restore_lineage import Job, cli, decisions, produce_events, same_path, wait_decided
from udfs.features import FEATURES_WITH_GRAPH, spec_entities

pytestmark = [pytest.mark.kafka, pytest.mark.flink, pytest.mark.long]

ROOT = Path(__file__).resolve().parent.parent
EVENTS = 2400
SPLIT = 0.55  # the share of the events A decides
LABEL_STAGES = tuple(f"{e.name}-windows" for e in spec_entities(FEATURES_WITH_GRAPH) if e.reads_labels)


def _env(home: Path, graph: bool) -> dict:
    env = {**os.environ, "RISKSTREAM_HOME": str(home), "RISKSTREAM_JARS_ROOT": str(paths.jars_root()),
           "PYTHONPATH": str(ROOT)}
    env["RISKSTREAM_GRAPH_FEATURES"] = "1" if graph else "0"
    env.pop("RISKSTREAM_SAVEPOINT_FORMAT", None)
    return env


def _stack(bootstrap: str, prefix: str, runtime: str, labels: bool = True) -> tuple[tuple[str, ...], list[str]]:
    """One-partition topics (events, decisions, dead letters, labels) and the `run` flags of a job on them."""
    names = tuple(f"{prefix}.{t}" for t in ("events", "decisions", "dead", "labels"))
    topics.ensure_topics(bootstrap, topics.topic_specs(*names[:3], partitions=1)
                         + [topics.TopicSpec(names[3], 1, topics.APPEND_TIME)])
    flags = ["--bootstrap-servers", bootstrap, "--events-topic", names[0], "--decisions-topic", names[1],
             "--dead-letter-topic", names[2], "--control-topic", "", "--labels-topic", names[3] if labels else "",
             "--group-id", f"{prefix}-group", "--job-name", prefix, "--transactional-id-prefix", f"{prefix}-tx",
             "--starting-offsets", "earliest", "--checkpoint-interval-ms", "1000", "--stage-runtime", runtime,
             "--parallelism", "1"]
    return names, flags


def feed(bootstrap: str, names: tuple[str, ...], job: Job, seq: list[tuple[str, dict]], decided_before: int) -> None:
    """Produce ``seq`` (("E", event) / ("L", label)) to the job's topics in runs, paced as the job test's source
    (tests/test_job_flink.py ``_Pace``): a label run once every earlier event has a committed decision, the
    event run after it once every label-reading stage took the labels in (its ``numRecordsIn``, counted since
    this job started: its events and labels). Ends with all of ``seq`` decided and taken in."""
    from kafka import KafkaProducer

    probe = _Pace("", job.rest, LABEL_STAGES)
    p = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    sent = {"E": 0, "L": 0}

    def decided():
        wait_decided(bootstrap, names[1], decided_before + sent["E"])

    def taken_in():
        n = sent["E"] + sent["L"]
        probe._until(lambda: all(k >= n for k in probe._received()), "the labels taken in by every stage")

    try:
        prev = None
        for kind, x in seq:
            if kind != prev and prev is not None:
                (decided if kind == "L" else taken_in)()
            if kind == "E":
                p.send(names[0], key=x["user_id"].encode(), value=orjson.dumps(x))
            else:
                p.send(names[3], value=orjson.dumps(x))
            p.flush(timeout=60)
            sent[kind] += 1
            prev = kind
        decided()
        taken_in()
    finally:
        p.close()


def _replay(tmp_path: Path, events: list[dict], labels: list[tuple[int, dict]] = (), applied: int = 0
            ) -> dict[str, dict]:
    """``udfs.replay.replay_file`` over the whole stream, the labels at their arrival, with the switch on (a
    subprocess: the spec is fixed at import): event_id -> the 78 features. ``applied``: the labels that arrive
    before the last event (the ones the jobs were fed)."""
    ev, lab, out = tmp_path / "events.jsonl", tmp_path / "labels.jsonl", tmp_path / "features.jsonl"
    ev.write_bytes(b"\n".join(orjson.dumps(e) for e in events) + b"\n")
    lab.write_bytes(b"".join(orjson.dumps({**b, "arrival_ts": a}) + b"\n" for a, b in labels))
    code = ("import sys; from udfs.replay import replay_file; from udfs.features import GRAPH_FEATURES; "
            "assert GRAPH_FEATURES; s = replay_file(sys.argv[1], sys.argv[2], labels_path=sys.argv[3]); "
            "assert s['labels_applied'] == int(sys.argv[4]), s")
    env = {**os.environ, "RISKSTREAM_GRAPH_FEATURES": "1", "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", code, str(ev), str(out), str(lab), str(applied)], cwd=ROOT, env=env,
                   check=True, timeout=300)
    want = {}
    for line in out.read_bytes().splitlines():
        row = orjson.loads(line)
        want[row["event_id"]] = {n: row[n] for n in NAMES}
    return want


def _once(recs: list[dict]) -> dict[str, dict]:
    got = {}
    for r in recs:
        assert r["event_id"] not in got, ("decided twice", r["event_id"])
        got[r["event_id"]] = r["features"]
    return got


@pytest.mark.parametrize("runtime", ["jvm", "python"])
def test_graph_state_survives_a_stop_with_savepoint_and_a_restore(runtime, kafka_bootstrap, tmp_path):
    """A decides the first 55 % of the events (with the labels that arrive before them), stops with a canonical
    savepoint; B restores it and decides the rest: every feature of every event the replay's, one decision per
    event across both; C, without the savepoint, differs on the graph features of a good share of the rest;
    the switch off refuses the savepoint at start."""
    home = tmp_path / "home"
    env = _env(home, graph=True)
    events, labels = ring_traffic(EVENTS)
    seq = interleave(events, labels)
    cut = [i for i, (kind, _) in enumerate(seq) if kind == "E"][int(SPLIT * len(events))]  # at an event
    first, rest = seq[:cut], seq[cut:]
    first_ids = [x["event_id"] for kd, x in first if kd == "E"]
    rest_ids = [x["event_id"] for kd, x in rest if kd == "E"]
    times: dict[str, float] = {}
    prefix = f"gr-{runtime}"
    names, flags = _stack(kafka_bootstrap, prefix, runtime)

    # -- A: the first part, then stop-with-savepoint (canonical) -----------------------------------------------
    t0 = time.monotonic()
    a = Job(env, tmp_path, flags)
    try:
        a.running(checkpoint=True)
        times["A: start"] = time.monotonic() - t0
        t0 = time.monotonic()
        feed(kafka_bootstrap, names, a, first, 0)
        times["A: feed"] = time.monotonic() - t0
        t0 = time.monotonic()
        res = cli(env, "cancel", prefix, "--format", "canonical")
        times["A: stop with a savepoint"] = time.monotonic() - t0
        assert res.returncode == 0, res.stderr + a.text()
        sp = res.stdout.strip().splitlines()[-1]
        a.proc.wait(timeout=60)
    finally:
        a.kill()
    got_a = _once(decisions(kafka_bootstrap, names[1]))
    assert sorted(got_a) == sorted(first_ids), "A: not one decision per event of the first part"

    # -- the switch off against this savepoint: refused at start, before Flink ---------------------------------
    runs = [r["job_id"] for r in lineage.read(prefix, home) if r["kind"] == "run"]
    t0 = time.monotonic()
    res = cli(_env(home, graph=False), "run", "--rest-port", str(free_port()), *flags, "--restore-from", sp,
              timeout=180)
    times["refused: the switch off"] = time.monotonic() - t0
    assert res.returncode != 0, res.stdout + res.stderr[-3000:]
    assert "stage(s) link" in res.stderr and "RISKSTREAM_GRAPH_FEATURES=1" in res.stderr, res.stderr[-3000:]
    assert [r["job_id"] for r in lineage.read(prefix, home) if r["kind"] == "run"] == runs  # nothing started

    # -- B: restores the savepoint, the rest -------------------------------------------------------------------
    t0 = time.monotonic()
    b = Job(env, tmp_path, flags, ("--restore-from", sp))
    try:
        b.running(checkpoint=True)
        times["B: start from the savepoint"] = time.monotonic() - t0
        assert same_path(b.restored()["external_path"], sp), b.restored()
        t0 = time.monotonic()
        feed(kafka_bootstrap, names, b, rest, len(first_ids))
        times["B: feed"] = time.monotonic() - t0
    finally:
        cli(env, "cancel", prefix, "--no-savepoint")
        b.kill()
    got = _once(decisions(kafka_bootstrap, names[1]))  # A's and B's: one per event id, none twice
    assert sorted(got) == sorted(e["event_id"] for e in events), "not one decision per event across A and B"
    assert decisions(kafka_bootstrap, names[2]) == []

    # -- C: no state, the rest alone (the labels from the split on) -------------------------------------------
    c_names, c_flags = _stack(kafka_bootstrap, f"{prefix}-c", runtime)
    t0 = time.monotonic()
    c = Job(env, tmp_path, c_flags)
    try:
        c.running(checkpoint=True)
        feed(kafka_bootstrap, c_names, c, rest, 0)
        times["C: start and feed"] = time.monotonic() - t0
    finally:
        cli(env, "cancel", f"{prefix}-c", "--no-savepoint")
        c.kill()
    got_c = _once(decisions(kafka_bootstrap, c_names[1]))
    assert sorted(got_c) == sorted(rest_ids)

    for key, v in times.items():
        print(f"[graph-restore {runtime}] {key}: {v:.1f}s", file=sys.stderr)
    t0 = time.monotonic()
    want = _replay(tmp_path, events, labels, sum(1 for kd, _ in seq if kd == "L"))
    times["replay"] = time.monotonic() - t0

    # A, and B after the restore: every feature of every event, the replay's
    for eid in first_ids + rest_ids:
        g, w = got[eid], want[eid]
        diff = {n: (g.get(n), w[n]) for n in GRAPH_NAMES if g.get(n) != w[n]}
        assert not diff, (eid, eid in rest_ids, diff)
        assert g == w, (eid, eid in rest_ids, {n: (g.get(n), w[n]) for n in w if g.get(n) != w[n]})
    for name in GRAPH_NAMES:  # exercised after the restore
        assert sum(1 for eid in rest_ids if want[eid][name] > 0) > 10, name
    # C without the savepoint's state: many of the rest's events differ in their graph features
    differ = [eid for eid in rest_ids if any(got_c[eid][n] != want[eid][n] for n in GRAPH_NAMES)]
    per_name = {n: sum(1 for eid in rest_ids if got_c[eid][n] != want[eid][n]) for n in GRAPH_NAMES}
    print(f"[graph-restore {runtime}] without the savepoint: {len(differ)} of {len(rest_ids)} events differ in a "
          f"graph feature; per feature {per_name}", file=sys.stderr)
    assert len(differ) > len(rest_ids) // 5, (len(differ), per_name)  # 263 of 1,080 (jvm)


@pytest.mark.parametrize("runtime", ["jvm", "python"])
def test_a_savepoint_without_the_graph_features_restores_with_them(runtime, kafka_bootstrap, tmp_path):
    """The switch off -> on: the savepoint has no graph state and no link stage; the job restores it (the graph
    state starts empty), decides the rest with the 78 features, every event has one decision, and the window
    features after the restore are the replay's over the whole stream (the window state came through)."""
    from riskstream.generator import TrafficGenerator

    home = tmp_path / "home"
    prefix = f"gr-on-{runtime}"
    names, flags = _stack(kafka_bootstrap, prefix, runtime, labels=False)
    events = [r.event for r in TrafficGenerator(seed=29, bad_share=0.0).generate(400)]
    produce_events(kafka_bootstrap, names[0], events[:200])
    a = Job(_env(home, graph=False), tmp_path, flags)
    try:
        a.running(checkpoint=True)
        wait_decided(kafka_bootstrap, names[1], 200)
        res = cli(_env(home, graph=False), "cancel", prefix, "--format", "canonical")
        assert res.returncode == 0, res.stderr + a.text()
        sp = res.stdout.strip().splitlines()[-1]
        a.proc.wait(timeout=60)
    finally:
        a.kill()
    produce_events(kafka_bootstrap, names[0], events[200:])
    b = Job(_env(home, graph=True), tmp_path, flags, ("--restore-from", sp))
    try:
        b.running(checkpoint=True)
        assert same_path(b.restored()["external_path"], sp), b.restored()
        got = wait_decided(kafka_bootstrap, names[1], 400)
    finally:
        cli(_env(home, graph=True), "cancel", prefix, "--no-savepoint")
        b.kill()
    by_id = _once(got)
    assert sorted(by_id) == sorted(e["event_id"] for e in events)
    assert all(len(by_id[e["event_id"]]) == len(NAMES) - len(GRAPH_NAMES) for e in events[:200])
    assert all(set(by_id[e["event_id"]]) == set(NAMES) for e in events[200:])
    assert decisions(kafka_bootstrap, names[2]) == []
    want = _replay(tmp_path, events)
    window = [n for n in NAMES if n not in GRAPH_NAMES]
    for e in events:
        g, w = by_id[e["event_id"]], want[e["event_id"]]
        assert {n: g[n] for n in window} == {n: w[n] for n in window}, (e["event_id"], {
            n: (g[n], w[n]) for n in window if g[n] != w[n]})
