"""The review service's consumer against the real broker: killed (SIGKILL) twice mid-stream and restarted,
it ends with every committed decision exactly once in its database, resuming from the offsets stored with
the cases; decisions of an aborted transaction never appear (read_committed). Against SQLite and against
a real PostgreSQL server (named there by the review command's environment variable, not by --db)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import orjson
import pytest

from riskstream import paths, topics

pytestmark = [pytest.mark.kafka]


def record(i: int) -> bytes:
    now = int(time.time() * 1000)  # within the service's decision history (older decisions are pruned)
    kind = ("allow", "review", "block")[i % 3]
    return orjson.dumps({"decision_id": f"k{i}", "event_id": f"e{i}", "event_type": "payment", "user_id": f"u{i % 97}",
                         "device_id": f"d{i % 31}", "decision": kind, "score": (i % 100) / 100, "model_version": "m1",
                         "policy_version": "p1", "reasons": [], "features": {"amount": float(i)}, "late": False,
                         "event_ts": now, "decided_at": now})


def rows(db: str, sql: str, args=()) -> list[tuple]:
    """Read the consumer's database from outside it (its own client, not the store)."""
    if db.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(db, connect_timeout=10) as c:
            return [tuple(r) for r in c.execute(sql.replace("%", "%%").replace("?", "%s"), args).fetchall()]
    with sqlite3.connect(db.removeprefix("sqlite:///"), timeout=30) as c:
        return c.execute(sql, args).fetchall()


def count(db: str, sql="SELECT count(*) FROM decisions") -> int:
    try:
        return rows(db, sql)[0][0]
    except sqlite3.OperationalError as e:
        if "no such table" in str(e) or "unable to open" in str(e):  # not created yet
            return 0
        raise
    except Exception as e:
        if type(e).__name__ == "UndefinedTable":  # PostgreSQL: not created yet
            return 0
        raise


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_consumer_killed_mid_stream_loses_and_doubles_nothing(kafka_bootstrap, tmp_path, request, backend):
    from kafka import KafkaProducer

    topic = f"rvk.decisions.{backend}"
    topics.ensure_topics(kafka_bootstrap, [topics.TopicSpec(topic, 2, topics.APPEND_TIME)])
    total = 12_000
    # an aborted transaction first: a read_committed consumer must never store these
    tx = KafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=f"rvk-aborted-{backend}")
    tx.init_transactions()
    tx.begin_transaction()
    for i in range(200):
        tx.send(topic, orjson.dumps({"decision_id": f"x{i}", "event_id": f"aborted{i}", "user_id": "ux",
                                     "device_id": "dx", "decision": "review"}))
    tx.flush()
    tx.abort_transaction()
    tx.close()

    def feed():
        p = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=5)
        t0 = time.monotonic()
        for i in range(total):
            p.send(topic, record(i))
            ahead = (i + 1) / 1500 - (time.monotonic() - t0)
            if ahead > 0.002:
                time.sleep(ahead)  # pacing: 1,500 decisions/s, so the kills land mid-stream
        p.flush()
        p.close()

    env = {**os.environ, "RISKSTREAM_HOME": str(tmp_path / "home")}
    cmd = [sys.executable, "-m", "riskstream.cli", "review", "ingest", "--bootstrap-servers", kafka_bootstrap,
           "--decisions-topic", topic, "--events-topic", "", "--control-topic", ""]
    if backend == "sqlite":
        db = f"sqlite:///{tmp_path / 'review.db'}"
        cmd += ["--db", db]
    else:
        db = request.getfixturevalue("pg_url")
        env["RISKSTREAM_REVIEW_DB"] = db  # the review command's variable names the database

    log = open(tmp_path / "ingest.log", "ab")

    def start():
        return subprocess.Popen(cmd, env=env, cwd=paths.PROJECT_ROOT, stdout=log, stderr=log)

    def tail() -> str:
        return (tmp_path / "ingest.log").read_text(errors="replace")[-2000:]

    feeder = threading.Thread(target=feed)
    feeder.start()
    proc = start()
    kills = []
    try:
        for at in (2500, 7000):  # kill -9 while decisions stream in, then restart
            deadline = time.monotonic() + 120
            while count(db) < at:
                assert proc.poll() is None, tail()
                assert time.monotonic() < deadline, f"only {count(db)} decisions stored"
                time.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            kills.append(count(db))
            proc = start()
        feeder.join()
        deadline = time.monotonic() + 120
        while count(db) < total:
            assert proc.poll() is None, tail()
            assert time.monotonic() < deadline, f"only {count(db)} of {total} decisions stored"
            time.sleep(0.1)
        time.sleep(1.0)  # anything beyond would be a duplicate: give it the chance to show
    finally:
        proc.send_signal(signal.SIGTERM if proc.poll() is None else 0)
        proc.kill()
        proc.wait(timeout=30)
        feeder.join()
    assert all(0 < k < total for k in kills), kills
    assert count(db) == total
    assert count(db, "SELECT count(DISTINCT decision_id) FROM decisions") == total
    assert count(db, "SELECT count(*) FROM decisions WHERE event_id LIKE 'aborted%'") == 0
    want_cases = sum(1 for i in range(total) if i % 3)
    assert count(db, "SELECT count(*) FROM cases") == want_cases
    assert count(db, "SELECT count(DISTINCT event_id) FROM cases") == want_cases
    # the stored offset of each partition is just past its last stored decision, and every decision
    # offset after the aborted transaction is there once (the primary key is the topic position)
    stored = dict(rows(db, "SELECT part, next_offset FROM offsets WHERE topic = ?", (topic,)))
    for part, lo, hi, n in rows(db, "SELECT part, min(off), max(off), count(*) FROM decisions GROUP BY part"):
        assert stored[part] == hi + 1 and n == hi - lo + 1, (part, lo, hi, n, stored)
    if backend == "postgresql":
        assert "postgresql://" in tail()  # the consumer said where it writes
