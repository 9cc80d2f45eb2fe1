"""Integration with the real broker: labelled stream with malformed records in -> every valid event has
exactly one decision visible to read_committed readers, every malformed record exactly one dead letter."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
from collections import Counter

import orjson
import pytest

from riskstream import paths, topics
from riskstream.config import JobConfig
from riskstream.kafka_io import produce
from udfs.events import Event, parse_event

pytestmark = [pytest.mark.kafka, pytest.mark.flink]


def read_all(bootstrap: str, topic: str, isolation: str = "read_committed") -> list:
    """Every record up to the end offsets as of now (a bounded read, no idle timeout guessing)."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, isolation_level=isolation, enable_auto_commit=False,
                      group_id=None)
    try:
        tps = [TopicPartition(topic, p) for p in c.partitions_for_topic(topic)]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        end = c.end_offsets(tps)  # for read_committed: the last stable offset
        out = []
        deadline = time.monotonic() + 60
        while any(c.position(tp) < end[tp] for tp in tps):
            assert time.monotonic() < deadline, "could not read to the end offsets within 60 s"
            for msgs in c.poll(timeout_ms=500).values():
                out.extend(msgs)
        return out
    finally:
        c.close()


@pytest.mark.parametrize("runtime,backend", [("jvm", "rocksdb"), ("python", "hashmap")])
def test_bounded_job_decides_every_event_exactly_once(kafka_bootstrap, labelled_stream, runtime, backend):
    """Every valid event one read_committed decision, keyed by user, carrying the event record's broker append
    time as ``arrived_at``; every malformed record one dead letter. Both stage runtimes; the JVM stages on
    RocksDB with incremental checkpoints (the production configuration), the Python ones on the heap."""
    from pipelines import decision_job

    names = (f"it-{runtime}.events", f"it-{runtime}.decisions", f"it-{runtime}.dead")
    topics.ensure_topics(kafka_bootstrap, topics.topic_specs(*names, partitions=2))
    assert produce(kafka_bootstrap, names[0], labelled_stream) == len(labelled_stream)

    cfg = JobConfig(bootstrap_servers=kafka_bootstrap, events_topic=names[0], decisions_topic=names[1],
                    dead_letter_topic=names[2], bounded=True, parallelism=2, starting_offsets="earliest",
                    transactional_id_prefix=f"it-{runtime}-decisions", checkpoint_interval_ms=500,
                    stage_runtime=runtime, state_backend=backend, job_name=f"it-{runtime}-{backend}")
    decision_job.run(cfg, wait=True)
    from riskstream.ops import lineage

    run = [r for r in lineage.read(cfg.job_name) if r["kind"] == "run"][-1]
    assert run["flink_settings"]["state.backend.type"] == backend

    valid = {r.label["event_id"] for r in labelled_stream if r.raw is None}
    bad = sorted(r.raw for r in labelled_stream if r.raw is not None)
    assert valid and bad

    msgs = read_all(kafka_bootstrap, names[1])
    decisions = [orjson.loads(m.value) for m in msgs]
    # keyed by user: one user's decisions share a partition
    assert all(m.key == d["user_id"].encode() for m, d in zip(msgs, decisions))
    parts: dict[str, set] = {}
    for m, d in zip(msgs, decisions):
        parts.setdefault(d["user_id"], set()).add(m.partition)
    assert max(len(p) for p in parts.values()) == 1 and len({m.partition for m in msgs}) == 2
    counts = Counter(d["event_id"] for d in decisions)
    assert set(counts) == valid and max(counts.values()) == 1
    assert {d["decision"] for d in decisions} <= {"allow", "review", "block"}
    assert all(d["decision_id"] and d["model_version"] == "risk_gbdt_v1" for d in decisions)
    # arrived_at is the event record's timestamp on the events topic: its broker append time
    events = read_all(kafka_bootstrap, names[0])
    assert len(events) == len(labelled_stream) and {m.timestamp_type for m in events} == {1}  # LogAppendTime
    appended, parsed = {}, {}
    for m in events:
        ev = parse_event(m.value)
        if isinstance(ev, Event):
            appended[ev.event_id], parsed[ev.event_id] = m.timestamp, ev
    assert set(appended) == valid and len(set(appended.values())) > 1
    assert all(d["arrived_at"] == appended[d["event_id"]] <= d["decided_at"] for d in decisions)
    # and the event's ip and payment instrument (null without one), which a label made from it names
    assert all((d["ip"], d["payment_ref"]) == (parsed[d["event_id"]].ip, parsed[d["event_id"]].payment_ref)
               for d in decisions)
    assert {d["payment_ref"] is None for d in decisions} == {True, False}

    dead = [orjson.loads(m.value) for m in read_all(kafka_bootstrap, names[2])]
    assert sorted(base64.b64decode(d["original_b64"]) for d in dead) == bad
    expected_reasons = Counter(r.label["expected_reason"] for r in labelled_stream if r.raw is not None)
    assert Counter(d["reason"] for d in dead) == expected_reasons


def test_demo_command_end_to_end(tmp_path):
    """`riskstream demo --json` on a fresh home: starts its own broker, decides every event, stops it."""
    from riskstream.ops import broker
    from riskstream.ops.procs import free_port

    env = {**os.environ, "RISKSTREAM_HOME": str(tmp_path / "home"),
           "RISKSTREAM_JARS_ROOT": str(paths.jars_root())}
    port = free_port()
    proc = subprocess.run([sys.executable, "-m", "riskstream.cli", "demo", "--json", "--events", "3000",
                           "--rate", "600", "--port", str(port), "--deadline", "300"],
                          env=env, capture_output=True, text=True, timeout=600, cwd=paths.PROJECT_ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = orjson.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["events"] == 3000
    assert summary["missing"] == 0 and summary["duplicates"] == 0
    assert sum(summary["decisions"].values()) + summary["dead_letter"] == 3000
    assert summary["dead_letter"] == summary["expected_dead_letter"] > 0
    fraud = [v for k, v in summary["scenarios"].items() if k != "normal"]
    assert sum(s["caught"] for s in fraud) > 0.6 * sum(s["events"] for s in fraud)
    assert summary["scenarios"]["normal"]["allowed"] > 0.97 * summary["scenarios"]["normal"]["events"]
    assert summary["latency_ms"]["p50"] is not None and summary["latency_ms"]["p99"] >= summary["latency_ms"]["p50"]
    # the broker the demo started is gone
    assert broker.read_pid(broker.layout(root=tmp_path / "home" / "kafka")) is None


def _split_arm(user_id: str, salt: str, v2_share: float) -> str:
    """The arm docs/models.md promises, by brute force: bucket = first 8 bytes of sha256(salt, 0x1f, key),
    big-endian, mod 10,000; the listed arm takes the buckets from 0, the champion the rest."""
    import hashlib

    digest = hashlib.sha256(salt.encode() + b"\x1f" + user_id.encode()).digest()
    b = sum(byte << (8 * (7 - i)) for i, byte in enumerate(digest[:8])) % 10_000
    return "v2" if b < v2_share * 10_000 else "champion"


@pytest.mark.long  # 2 min 24 s at load 14-40: a second demo run; the plain demo's test stays in the default run
def test_demo_ab_splits_users_by_the_hash_and_reports_what_the_records_say(tmp_path):
    """`riskstream demo --ab --json`: read back from the topics it wrote (its broker kept for that), every
    valid event has exactly one decision carrying an arm; each user's arm is the brute-force hash of its
    id under the split message on the control topic; each arm decided with its own model; the summary's
    per-arm counts and block rates (JSON and printed) equal a count of the decision records."""
    from riskstream.ops import broker
    from riskstream.ops.procs import free_port
    from udfs.events import Event, parse_event

    home = tmp_path / "home"
    env = {**os.environ, "RISKSTREAM_HOME": str(home), "RISKSTREAM_JARS_ROOT": str(paths.jars_root())}
    names = {"events": "ab.events", "decisions": "ab.decisions", "dead-letter": "ab.dead", "control": "ab.control"}
    port = free_port()
    bootstrap = f"127.0.0.1:{port}"
    try:
        proc = subprocess.run([sys.executable, "-m", "riskstream.cli", "demo", "--ab", "--json", "--keep-broker",
                               "--events", "2000", "--rate", "600", "--port", str(port), "--deadline", "300",
                               *(a for k, v in names.items() for a in (f"--{k}-topic", v))],
                              env=env, capture_output=True, text=True, timeout=600, cwd=paths.PROJECT_ROOT)
        assert proc.returncode == 0, proc.stderr[-3000:]
        summary = orjson.loads(proc.stdout.strip().splitlines()[-1])
        control = [orjson.loads(m.value) for m in read_all(bootstrap, names["control"], "read_uncommitted")]
        events = read_all(bootstrap, names["events"])
        msgs = read_all(bootstrap, names["decisions"])
    finally:
        broker.down(root=home / "kafka")
    assert broker.read_pid(broker.layout(root=home / "kafka")) is None

    # the one control message: the 50/50 split by user, v2 listed first
    assert [c["kind"] for c in control] == ["split"]
    split = control[0]
    assert split.get("key", "user") == "user" and [a["name"] for a in split["arms"]] == ["v2"]
    share, salt = split["arms"][0]["share"], split.get("salt", "")
    assert share == 0.5

    parsed = [parse_event(m.value) for m in events]
    valid = {e.event_id: e for e in parsed if isinstance(e, Event)}
    assert len(events) == 2000 and 0 < len(events) - len(valid) < 100  # malformed ones are dead letters
    decisions = [orjson.loads(m.value) for m in msgs]
    counts = Counter(d["event_id"] for d in decisions)
    assert set(counts) == set(valid) and max(counts.values()) == 1, "not every valid event decided exactly once"

    # every decision in exactly one arm: the hash's, its user's; each arm with its own model
    assert {d.get("arm") for d in decisions} == {"v2", "champion"}
    assert all(d["user_id"] == valid[d["event_id"]].user_id for d in decisions)
    wrong = [(d["user_id"], d["arm"]) for d in decisions if d["arm"] != _split_arm(d["user_id"], salt, share)]
    assert not wrong, f"{len(wrong)} records on another arm than their user's hash, e.g. {wrong[:3]}"
    users = {a: {d["user_id"] for d in decisions if d["arm"] == a} for a in ("v2", "champion")}
    assert not users["v2"] & users["champion"]
    assert min(len(u) for u in users.values()) > 0.35 * sum(len(u) for u in users.values())
    assert {(d["arm"], d["model_version"]) for d in decisions} == {("v2", "risk_gbdt_v2"),
                                                                  ("champion", "risk_gbdt_v1")}

    # the summary's per-arm figures against a count of the records
    assert summary["missing"] == 0 and summary["duplicates"] == 0
    assert sum(summary["decisions"].values()) == len(decisions)
    arms = summary["report"]["arms"]
    for a in ("v2", "champion"):
        mine = [d for d in decisions if d["arm"] == a]
        assert arms[a]["events"] == len(mine), a
        assert arms[a]["model_versions"] == {mine[0]["model_version"]: len(mine)}, a
        assert arms[a]["block_rate"] == pytest.approx(sum(d["decision"] == "block" for d in mine) / len(mine)), a
        assert arms[a]["review_rate"] == pytest.approx(sum(d["decision"] == "review" for d in mine) / len(mine)), a
        printed = f"arm {a:<12} {mine[0]['model_version']}: {len(mine):,} events, {len(users[a]):,} users"
        assert printed in proc.stdout, (printed, proc.stdout[-3000:])
    assert len(arms["verdicts"]) == 1 and arms["verdicts"][0].startswith("v2 (risk_gbdt_v2) against the champion")


def test_stack_refuses_a_taken_port(tmp_path):
    import socket

    from riskstream.ops import broker

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(RuntimeError, match="is taken by another process"):
            broker.up(port=s.getsockname()[1], root=tmp_path)


def test_run_refuses_an_unreachable_broker():
    from riskstream.cli import main

    with pytest.raises(SystemExit, match="no Kafka broker answers at 127.0.0.1:1"):
        main(["run", "--bootstrap-servers", "127.0.0.1:1"])


def test_every_bad_record_goes_to_the_dead_letter_topic_and_nothing_restarts_the_job(kafka_bootstrap):
    """The whole bad-input corpus (incl. a 900 KB record) and producer-retry duplicates through the broker,
    with restarts disabled: any exception would fail the job and this test."""
    from kafka import KafkaProducer

    from pipelines import decision_job
    from riskstream.generator import TrafficGenerator
    from tests.bad_corpus import CORPUS

    names = ("bad.events", "bad.decisions", "bad.dead")
    topics.ensure_topics(kafka_bootstrap, topics.topic_specs(*names, partitions=2))
    good = [orjson.dumps(r.event) for r in TrafficGenerator(seed=5, bad_share=0.0).generate(300)]
    retried = good[::50]  # sent twice: the second copy must be refused as a duplicate event id
    sent = good + retried + [raw for _, raw, _ in CORPUS]
    p = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", max_request_size=2 * 1024 * 1024)
    try:
        for raw in good + retried:  # keyed by user: a retry lands after its original, in the same partition
            p.send(names[0], key=orjson.loads(raw)["user_id"].encode(), value=raw)
        for _, raw, _ in CORPUS:
            p.send(names[0], value=raw)
        p.flush(timeout=60)
    finally:
        p.close()

    cfg = JobConfig(bootstrap_servers=kafka_bootstrap, events_topic=names[0], decisions_topic=names[1],
                    dead_letter_topic=names[2], bounded=True, parallelism=2, starting_offsets="earliest",
                    transactional_id_prefix="it-bad", checkpoint_interval_ms=500, restart_attempts=0)
    decision_job.run(cfg, wait=True)

    decisions = [orjson.loads(m.value) for m in read_all(kafka_bootstrap, names[1])]
    assert sorted(d["event_id"] for d in decisions) == sorted(orjson.loads(r)["event_id"] for r in good)
    dead = [orjson.loads(m.value) for m in read_all(kafka_bootstrap, names[2])]
    assert len(dead) + len(decisions) == len(sent)
    by_bytes = {base64.b64decode(d["original_b64"]): d for d in dead if not d.get("original_reencoded")}
    for name, raw, reason in CORPUS:
        assert raw in by_bytes, name
        assert by_bytes[raw]["reason"] == reason, (name, by_bytes[raw]["reason"])
        assert by_bytes[raw]["original_size"] == len(raw)
    dups = [d for d in dead if d.get("original_reencoded")]
    assert {d["reason"] for d in dups} == {"duplicate_event_id"}
    assert sorted(orjson.loads(base64.b64decode(d["original_b64"]))["event_id"] for d in dups) == \
        sorted(orjson.loads(r)["event_id"] for r in retried)
