"""The issue's sequence in small, on the real broker with `riskstream run` MiniCluster processes:

run A -> `riskstream savepoint` (SP1) -> more events -> `riskstream cancel` (stop-with-savepoint, SP2; Flink
deletes A's checkpoints) -> B `--restore-from latest` restores SP2 and is SIGKILLed before its first
checkpoint -> C `--restore-from latest` restores SP2 again (B's restore), not anything older -> restoring
SP1 is refused with the number of events it would decide twice -> `--allow-reprocess` re-decides them with
the same decision_ids.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict

import orjson
import pytest

from riskstream import paths, topics
from riskstream.config import JobConfig
from riskstream.ops import flink_rest, lineage
from riskstream.ops.restore import read_downstream
from riskstream.ops.procs import free_port
from tests.test_kafka_integration import read_all

pytestmark = [pytest.mark.kafka, pytest.mark.flink]

JOB = "rl-job"


class Job:
    def __init__(self, env, log_dir, flags, extra=()):
        self.port = free_port()
        self.rest = f"http://127.0.0.1:{self.port}"
        self.log = log_dir / f"job-{self.port}.log"
        args = [sys.executable, "-m", "riskstream.cli", "run", "--rest-port", str(self.port), *flags, *extra]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env,
                                         cwd=paths.PROJECT_ROOT, start_new_session=True)
        self.job_id = None

    def running(self, checkpoint: bool, deadline_s: float = 180) -> str:
        t_end = time.monotonic() + deadline_s
        while self.job_id is None:
            assert self.proc.poll() is None, self.text()
            assert time.monotonic() < t_end, "no job id in time\n" + self.text()
            try:
                jobs = flink_rest.jobs_overview(self.rest, retry_s=0)
                self.job_id = next((j["jid"] for j in jobs if j["state"] in ("INITIALIZING", "RUNNING")), None)
            except (OSError, ValueError):
                pass
            time.sleep(0.2)  # polling interval
        flink_rest.wait_running(self.rest, self.job_id, deadline_s=max(10, t_end - time.monotonic()),
                                checkpoint=checkpoint)
        return self.job_id

    def restored(self) -> dict:
        return (flink_rest.checkpoints(self.rest, self.job_id).get("latest") or {}).get("restored") or {}

    def kill(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=60)

    def text(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def cli(env, *args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "riskstream.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=paths.PROJECT_ROOT)


def produce_events(bootstrap, topic, events) -> None:
    from kafka import KafkaProducer

    p = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        for e in events:
            p.send(topic, key=e["user_id"].encode(), value=orjson.dumps(e))
        p.flush(timeout=60)
    finally:
        p.close()


def decisions(bootstrap, topic) -> list[dict]:
    return [orjson.loads(m.value) for m in read_all(bootstrap, topic)]


def wait_decided(bootstrap, topic, n, deadline_s=180) -> list[dict]:
    t_end = time.monotonic() + deadline_s
    while True:
        got = decisions(bootstrap, topic)
        if len(got) >= n:
            return got
        assert time.monotonic() < t_end, f"{len(got)} of {n} decisions committed within {deadline_s}s"
        time.sleep(0.5)  # polling interval


def same_path(a: str, b: str) -> bool:
    return lineage.local_path(a).resolve() == lineage.local_path(b).resolve()


@pytest.mark.long  # 70-95 s; the default chaos run restores from latest after a kill in a savepoint and refuses a stale restore
def test_latest_restores_the_savepoint_and_older_state_is_refused(kafka_bootstrap, tmp_path):
    from riskstream.generator import TrafficGenerator

    home = tmp_path / "home"
    env = {**os.environ, "RISKSTREAM_HOME": str(home), "RISKSTREAM_JARS_ROOT": str(paths.jars_root())}
    names = ("rl.events", "rl.decisions", "rl.dead")
    topics.ensure_topics(kafka_bootstrap, topics.topic_specs(*names, partitions=2))
    flags = ["--bootstrap-servers", kafka_bootstrap, "--events-topic", names[0], "--decisions-topic", names[1],
             "--dead-letter-topic", names[2], "--control-topic", "", "--labels-topic", "", "--group-id", "rl-group",
             "--job-name", JOB, "--transactional-id-prefix", "rl-tx", "--starting-offsets", "earliest",
             "--checkpoint-interval-ms", "1000"]
    events = [r.event for r in TrafficGenerator(seed=21, bad_share=0.0).generate(700)]
    first, second, third = events[:300], events[300:500], events[500:]
    rest_of = lambda j: f"127.0.0.1:{j.port}"  # noqa: E731

    # -- A: a first start, a savepoint, more events, stop-with-savepoint ---------------------------------
    produce_events(kafka_bootstrap, names[0], first)
    a = Job(env, tmp_path, flags)
    try:
        a_id = a.running(checkpoint=True)
        assert [r["job_id"] for r in lineage.read(JOB, home) if r["kind"] == "run"] == [a_id]  # fixed before submission
        wait_decided(kafka_bootstrap, names[1], 300)
        res = cli(env, "savepoint", a_id, "--jobmanager", rest_of(a))
        assert res.returncode == 0, res.stderr
        sp1 = res.stdout.strip().splitlines()[-1]
        assert lineage.savepoints_dir(JOB, home).resolve() in lineage.local_path(sp1).resolve().parents
        assert "recorded in job rl-job's lineage" in res.stderr
        produce_events(kafka_bootstrap, names[0], second)
        wait_decided(kafka_bootstrap, names[1], 500)
        t0 = time.monotonic()
        res = cli(env, "cancel", a_id, "--jobmanager", rest_of(a))
        took = time.monotonic() - t0
        assert res.returncode == 0, res.stderr + a.text()
        sp2 = res.stdout.strip().splitlines()[-1]
        assert lineage.read_snapshot(sp2).checkpoint_id > lineage.read_snapshot(sp1).checkpoint_id
        assert took < 60, (took, res.stderr)
        a.proc.wait(timeout=60)
    finally:
        a.kill()
    recorded = [r["path"] for r in lineage.read(JOB, home) if r["kind"] == "savepoint"]
    assert len(recorded) == 2 and same_path(recorded[0], sp1) and same_path(recorded[1], sp2)

    # -- B: --restore-from latest is SP2; killed before its first checkpoint ------------------------------
    b = Job(env, tmp_path, flags, ("--restore-from", "latest", "--checkpoint-interval-ms", "60000"))
    try:
        b.running(checkpoint=False)
        assert same_path(b.restored()["external_path"], sp2), b.restored()
    finally:
        b.kill()
    assert re.search(r"\[restore\] rl-job: restoring savepoint \d+ at \S+ \(written \d+ s ago\)", b.text()), b.text()

    # -- C: latest is still SP2 (B completed nothing; it had restored SP2) -------------------------------
    c = Job(env, tmp_path, flags, ("--restore-from", "latest"))
    try:
        c.running(checkpoint=True)
        assert same_path(c.restored()["external_path"], sp2), c.restored()
        assert "completed no snapshot" in c.text()  # B committed nothing: skipped, A's SP2 is latest
        produce_events(kafka_bootstrap, names[0], third)
        wait_decided(kafka_bootstrap, names[1], 700)
        # the source commits the group's offsets asynchronously after the checkpoint that committed them
        cfg = JobConfig(bootstrap_servers=kafka_bootstrap, events_topic=names[0], decisions_topic=names[1],
                        dead_letter_topic=names[2], group_id="rl-group", job_name=JOB)
        t_end = time.monotonic() + 60
        while sum(read_downstream(cfg).group.values()) < 700:
            assert time.monotonic() < t_end, read_downstream(cfg)
            time.sleep(0.5)  # polling interval
    finally:
        res = cli(env, "cancel", c.job_id, "--jobmanager", rest_of(c), "--no-savepoint")
        c.kill()
    assert res.returncode == 0, res.stderr
    once = decisions(kafka_bootstrap, names[1])
    assert len(once) == 700 and len({d["event_id"] for d in once}) == 700

    # -- SP1 is older than the committed output: refused, with what would happen -------------------------
    res = cli(env, "run", *flags, "--restore-from", sp1, timeout=120)
    assert res.returncode != 0
    assert "refusing to go back in time" in res.stderr and "would decide again about 400 events" in res.stderr, \
        res.stderr[-2000:]
    assert "--allow-reprocess" in res.stderr
    # a start without state from the earliest offsets is refused the same way
    res = cli(env, "run", *flags, timeout=120)
    assert res.returncode != 0 and "would decide again about 700 events" in res.stderr, res.stderr[-2000:]

    # -- --allow-reprocess: the 400 events after SP1 are decided again, with the same decision_ids ---------
    d = Job(env, tmp_path, flags, ("--restore-from", sp1, "--allow-reprocess"))
    try:
        d.running(checkpoint=True)
        assert "--allow-reprocess: deciding again about 400 events" in d.text()
        got = wait_decided(kafka_bootstrap, names[1], 1100)
    finally:
        d.kill()
    by_event = defaultdict(set)
    for rec in got:
        by_event[rec["event_id"]].add(rec["decision_id"])
    counts = Counter(rec["event_id"] for rec in got)
    again = {e["event_id"] for e in second + third}
    assert {e for e, n in counts.items() if n == 2} == again and max(counts.values()) == 2
    assert all(len(ids) == 1 for ids in by_event.values())  # identical decision_ids


@pytest.mark.long  # 30-40 s
def test_the_changelog_restores_a_private_copy_and_the_savepoint_stays(kafka_bootstrap, tmp_path):
    """With the changelog (which Flink restores only in CLAIM mode), a run stopped with a savepoint resumes
    from a private copy: once the new run's checkpoints subsume what it restored, the savepoint is still
    complete, file for file, for a roll-back; every event is decided once across both runs."""
    from riskstream.generator import TrafficGenerator

    home = tmp_path / "home"
    env = {**os.environ, "RISKSTREAM_HOME": str(home), "RISKSTREAM_JARS_ROOT": str(paths.jars_root())}
    names = ("cl.events", "cl.decisions", "cl.dead")
    topics.ensure_topics(kafka_bootstrap, topics.topic_specs(*names, partitions=2))
    flags = ["--bootstrap-servers", kafka_bootstrap, "--events-topic", names[0], "--decisions-topic", names[1],
             "--dead-letter-topic", names[2], "--control-topic", "", "--labels-topic", "", "--group-id", "cl-group",
             "--job-name", "cl-job", "--transactional-id-prefix", "cl-tx", "--starting-offsets", "earliest",
             "--checkpoint-interval-ms", "500", "--state-backend", "rocksdb", "--changelog"]
    events = [r.event for r in TrafficGenerator(seed=5, bad_share=0.0).generate(400)]
    produce_events(kafka_bootstrap, names[0], events[:200])
    a = Job(env, tmp_path, flags)
    try:
        a_id = a.running(checkpoint=True)
        wait_decided(kafka_bootstrap, names[1], 200)
        res = cli(env, "cancel", a_id, "--jobmanager", f"127.0.0.1:{a.port}")
        assert res.returncode == 0, res.stderr + a.text()
        sp = lineage.local_path(res.stdout.strip().splitlines()[-1])
        a.proc.wait(timeout=60)
    finally:
        a.kill()
    files = {f.relative_to(sp): f.stat().st_size for f in sp.rglob("*") if f.is_file()}
    b = Job(env, tmp_path, flags, ("--restore-from", "latest"))
    try:
        b_id = b.running(checkpoint=True)
        assert "private copy of " + sp.name in b.text(), b.text()
        restored = lineage.local_path(b.restored()["external_path"])
        assert restored.parent == lineage.claimed_dir("cl-job", home).resolve(), restored
        produce_events(kafka_bootstrap, names[0], events[200:])
        wait_decided(kafka_bootstrap, names[1], 400)
        t_end = time.monotonic() + 60  # more checkpoints of B than it retains: the restored one is subsumed
        while flink_rest.checkpoints(b.rest, b_id).get("counts", {}).get("completed", 0) < 4:
            assert time.monotonic() < t_end
            time.sleep(0.2)  # polling interval
    finally:
        b.kill()
    assert {f.relative_to(sp): f.stat().st_size for f in sp.rglob("*") if f.is_file()} == files
    assert lineage.read_snapshot(sp, savepoint=True) is not None
    got = decisions(kafka_bootstrap, names[1])
    assert Counter((d["user_id"], d["event_id"]) for d in got) == Counter((e["user_id"], e["event_id"]) for e in events)
