"""Warm start from the topics (`riskstream bootstrap --from-topic --from-time --to-time`): the history read
from the broker (read_committed, a time range of record timestamps, events parsed by the job's parser,
labels arriving at their record's timestamp) is the history the same events and labels give as files.

The topics hold, besides the history: older events before ``--from-time``, later ones after ``--to-time``,
an aborted transaction's events inside the range, records the job dead-letters (malformed events and a
tombstone) and a malformed label. None of them may reach the state; the rejected ones are counted by reason
exactly as the job's parser rejects them."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections import Counter

import orjson
import pytest

from riskstream import paths, topics
from riskstream.config import JobConfig
from riskstream.generator import TrafficGenerator
from tests.test_bootstrap import DEDUP, LATENESS, _traffic, assert_stages_match, live_records, replayed
from udfs.events import NULL_VALUE, Rejection, parse_event

pytestmark = pytest.mark.kafka


def _arrivals(events) -> list[int]:
    """Broker arrival times for events in file order: their ``ts``, never going back (a late event arrives
    after the ones before it), 1 ms apart at least so that partitions merge back into file order."""
    out, prev = [], 0
    for ev in events:
        prev = max(ev.ts, prev + 1)
        out.append(prev)
    return out


def _produce(bootstrap: str, history, labels, topic: str, labels_topic: str) -> dict:
    """The topics as a live system fills them; returns the time range of the history's records and the
    rejected records' expected reasons (what the job's parser says about each)."""
    from kafka import KafkaProducer

    older = [r for r in TrafficGenerator(seed=41, bad_share=0.0, days=3).generate(300) if r.event is not None]
    bad = [r.raw for r in TrafficGenerator(seed=42, bad_share=0.2).generate(400) if r.raw is not None][:40]
    assert len(bad) >= 20
    arrive = _arrivals(history)
    from_ms, to_ms = arrive[0], arrive[-1] + 1
    p = KafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    send = lambda t, key, value, ts: p.send(t, key=key, value=value, timestamp_ms=ts)  # noqa: E731
    for i, r in enumerate(older):  # before --from-time: not history
        send(topic, r.key.encode(), orjson.dumps(r.event), from_ms - 10_000 + i)
    reasons: Counter = Counter()
    every = len(history) // len(bad)
    for i, (ev, ts) in enumerate(zip(history, arrive)):
        send(topic, ev.user_id.encode(), orjson.dumps(ev.to_dict()), ts)
        if i % every == 0 and i // every < len(bad):  # a malformed record among them, at the same time
            raw = bad[i // every]
            send(topic, b"bad", raw, ts)
            reasons[parse_event(raw).reason] += 1
    send(topic, b"gone", None, arrive[len(arrive) // 2])  # a tombstone: null_value in the job
    reasons[NULL_VALUE] += 1
    for x in labels:
        send(labels_topic, x["user_id"].encode(),
             orjson.dumps({k: v for k, v in x.items() if v is not None and k != "arrival_ts"}), x["arrival_ts"])
    send(labels_topic, b"bad", b'{"event_id": "e1", "label": "maybe"}', arrive[10])  # refused by parse-labels
    for i, r in enumerate(older[:50]):  # after --to-time: not history
        send(topic, r.key.encode(), orjson.dumps(r.event), to_ms + i)
    p.flush()
    p.close()
    # an aborted transaction inside the range: read_committed never returns its records
    tx = KafkaProducer(bootstrap_servers=bootstrap, acks="all", transactional_id=f"aborted-{uuid.uuid4().hex[:6]}")
    tx.init_transactions()
    tx.begin_transaction()
    for r in older[:20]:
        tx.send(topic, key=r.key.encode(), value=orjson.dumps(r.event), timestamp_ms=from_ms + 5)
    tx.flush()
    tx.abort_transaction()
    tx.close()
    assert all(isinstance(parse_event(raw), Rejection) for raw in bad)
    return {"from_ms": from_ms, "to_ms": to_ms, "reasons": dict(reasons), "older": len(older)}


@pytest.fixture(scope="module")
def topic_history(kafka_bootstrap, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bootstrap-topic")
    history, rest, labels, late = _traffic(4000, seed=5)
    run = f"bt{uuid.uuid4().hex[:8]}"
    names = (f"{run}.events", f"{run}.labels")
    # CreateTime, so that the test sets each record's arrival (the job's topics use the broker's append time)
    topics.ensure_topics(kafka_bootstrap, [topics.TopicSpec(n, 2, {}) for n in names])
    got = _produce(kafka_bootstrap, history, labels, *names)
    hist_file, label_file = tmp / "history.jsonl", tmp / "labels.jsonl"
    hist_file.write_bytes(b"".join(orjson.dumps(e.to_dict()) + b"\n" for e in history))
    label_file.write_bytes(b"".join(orjson.dumps({k: v for k, v in x.items() if v is not None}) + b"\n"
                                    for x in labels))
    cfg = JobConfig(job_name=f"{run}-job", bootstrap_servers=kafka_bootstrap, events_topic=names[0],
                    labels_topic=names[1], allowed_lateness_ms=LATENESS, dedup_horizon_ms=DEDUP)
    return {**got, "history": history, "rest": rest, "labels": labels, "late": late, "cfg": cfg,
            "hist_file": hist_file, "label_file": label_file, "tmp": tmp}


def test_the_topics_give_the_files_history(topic_history):
    """The fold's input read from the topics is byte for byte the one the files give (so the Java fold,
    the same code on the same lines, writes the same state); the rejects are the job's dead letters."""
    from riskstream.ops.bootstrap import TopicRange, read_topics, write_history

    t = topic_history
    want = write_history(t["hist_file"], t["tmp"] / "from-file.jsonl", labels_path=t["label_file"])
    got, read = read_topics(t["cfg"], TopicRange(t["from_ms"], t["to_ms"]), t["tmp"] / "from-topic.jsonl")
    assert (t["tmp"] / "from-topic.jsonl").read_bytes() == (t["tmp"] / "from-file.jsonl").read_bytes()
    assert {k: got[k] for k in ("events", "labels", "labels_later", "first_ts", "last_ts")} == \
        {k: want[k] for k in ("events", "labels", "labels_later", "first_ts", "last_ts")}
    assert got["events"] == len(t["history"]) and got["labels"] == len(t["labels"])
    assert read.dead_letters == t["reasons"] and got["rejected"] == sum(t["reasons"].values())
    assert read.bad_labels == 1
    ev_topic = t["cfg"].events_topic
    assert read.records[ev_topic] == len(t["history"]) + sum(t["reasons"].values())  # no older, later or aborted

    # without a range: everything committed on the topic, the older and later events too (and still no
    # aborted one): the fold's input then has 300 + 50 more events
    whole, _ = read_topics(t["cfg"], TopicRange(), t["tmp"] / "whole.jsonl")
    assert whole["events"] == len(t["history"]) + t["older"] + 50


@pytest.mark.flink
@pytest.mark.long
def test_bootstrap_from_the_topics_restores_the_replayed_state(topic_history):
    """(`long`: 2 min 10 s here at load 17, the fold and a MiniCluster run.) The CLI end to end: `riskstream bootstrap --from-topic` writes a savepoint; the JVM stages restored from
    it give the events that follow exactly the features the Python replay computes over history + rest."""
    from tests.jvm_jar import build_jar
    from tests.test_jvm_windows import _run_branches

    t = topic_history
    cfg, out = t["cfg"], t["tmp"] / "savepoint"
    proc = subprocess.run(
        [sys.executable, "-m", "riskstream.cli", "bootstrap", "--from-topic", "--from-time", str(t["from_ms"]),
         "--to-time", str(t["to_ms"]), "--bootstrap-servers", cfg.bootstrap_servers, "--events-topic",
         cfg.events_topic, "--labels-topic", cfg.labels_topic, "--job-name", cfg.job_name,
         "--allowed-lateness-ms", str(LATENESS), "--dedup-horizon-ms", str(DEDUP), "--output", str(out)],
        capture_output=True, text=True, timeout=300, cwd=paths.PROJECT_ROOT,
        env={**os.environ, "RISKSTREAM_HOME": str(t["tmp"] / "home"), "RISKSTREAM_JARS_ROOT": str(paths.jars_root())})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == str(out.resolve()) and (out / "_metadata").is_file()
    assert "null_value 1" in proc.stderr and "malformed labels 1" in proc.stderr, proc.stderr
    from riskstream.ops import lineage  # recorded in the job's lineage: `--restore-from latest` picks it
    assert out.resolve().as_uri() in lineage.lineage_path(cfg.job_name, home=t["tmp"] / "home").read_text()

    history, rest, labels, late = t["history"], t["rest"], t["labels"], t["late"]
    all_labels = t["tmp"] / "all-labels.jsonl"
    all_labels.write_bytes(b"".join(orjson.dumps({k: v for k, v in x.items() if v is not None}) + b"\n"
                                    for x in labels + late))
    want, _ = replayed(history, rest, all_labels)
    records = live_records(rest, late)
    run_dir = t["tmp"] / "restored"
    run_dir.mkdir()
    got = _run_branches(build_jar(), records, 1, run_dir, extra={"execution.state-recovery.path": out.as_uri()})
    assert_stages_match(got, want)


def test_bootstrap_flags_that_do_not_fit_are_refused(kafka_bootstrap, tmp_path):
    """Bad flags fail at once, saying what to fix, and write nothing."""
    env = {**os.environ, "RISKSTREAM_HOME": str(tmp_path), "RISKSTREAM_JARS_ROOT": str(paths.jars_root())}
    for args, says in ((["--input", "h.jsonl", "--from-topic"], "not both"),
                       (["--input", "h.jsonl", "--from-time", "2026-01-01"], "give --from-topic"),
                       (["--from-topic", "--from-time", "yesterday"], "neither epoch milliseconds"),
                       (["--from-topic", "--from-time", "2026-01-02", "--to-time", "2026-01-01"], "before --to-time"),
                       (["--from-topic", "--bootstrap-servers", kafka_bootstrap, "--events-topic", "no.such.topic",
                         "--labels-topic", ""], "'no.such.topic' does not exist")):
        proc = subprocess.run([sys.executable, "-m", "riskstream.cli", "bootstrap", *args], capture_output=True,
                              text=True, timeout=120, cwd=paths.PROJECT_ROOT, env=env)
        assert proc.returncode != 0 and says in proc.stderr, (args, proc.stderr[-2000:])
    assert not (tmp_path / "jobs").exists() or not list((tmp_path / "jobs").rglob("_metadata"))
