"""The changelog over RocksDB (the production default on a cluster): its files stay bounded while a job runs
and materializes, and nothing of an ended run's log is left once its job's retention ran.

A `riskstream run` MiniCluster with ``--state-backend rocksdb --changelog`` and a short materialization
interval (the default is 3 min; 5 s here, so a minute holds many) is fed a steady stream of events while the
test samples the log folder (``<job>/changelog/<flink job id>/dstl``) every half second. Every file that ever
appeared is counted (the log's files live for at least one materialization interval, far longer than the
sampling step): a log that is never truncated keeps them all, so its final size equals that total. Then the
run is killed (a lost process keeps its retained checkpoints and the log they read, and whatever it uploaded
after them) and the job's retention runs as its next start would: what is left of the log is exactly what a
kept snapshot names. (A run stopped with a savepoint ends FINISHED and Flink discards its log itself.)"""

from __future__ import annotations

import os
import threading
import time
from urllib.parse import quote

import orjson
import pytest

from riskstream import paths, topics
from riskstream.config import JobConfig
from riskstream.ops import flink_rest, lineage
from tests.test_restore_lineage import Job, cli

pytestmark = [pytest.mark.kafka, pytest.mark.flink, pytest.mark.long]  # 90-150 s here

MATERIALIZE_S = 5
ROUNDS = 10  # materializations of every stateful subtask, once the log holds changes, before it is judged
RATE = 200  # events per second fed


def _min_materializations(rest: str, job_id: str) -> int:
    """The fewest completed materializations of any subtask that materializes (0 until all report)."""
    counts = []
    for v in flink_rest.job_details(rest, job_id).get("vertices", []):
        base = f"/jobs/{job_id}/vertices/{v['id']}/subtasks/metrics"
        # per operator: <operator>.ChangelogMaterialization_completedMaterialization
        for name in [m["id"] for m in flink_rest.get(rest, base)
                     if m["id"].endswith("ChangelogMaterialization_completedMaterialization")]:
            got = flink_rest.get(rest, f"{base}?get={quote(name)}&agg=min")
            counts.append(int(got[0].get("min") or 0) if got else 0)
    return min(counts) if counts else 0


def _feed(bootstrap: str, topic: str, stop: threading.Event, sent: list[int], limit: int) -> None:
    """Events at RATE per second until ``stop`` or ``limit`` events (bounded in count and time)."""
    from kafka import KafkaProducer

    from riskstream.generator import TrafficGenerator

    events = [r.event for r in TrafficGenerator(seed=11, bad_share=0.0).generate(limit)]
    p = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20)
    t0 = time.monotonic()
    try:
        for i, e in enumerate(events):
            if stop.is_set():
                break
            p.send(topic, key=e["user_id"].encode(), value=orjson.dumps(e))
            sent[0] = i + 1
            ahead = (i + 1) / RATE - (time.monotonic() - t0)
            if ahead > 0:
                stop.wait(ahead)  # the feed's pace, not synchronisation
        p.flush(timeout=60)
    finally:
        p.close()


def test_the_changelog_stays_bounded_and_retention_removes_an_ended_runs_log(kafka_bootstrap, tmp_path):
    home = tmp_path / "home"
    env = {**os.environ, "RISKSTREAM_HOME": str(home), "RISKSTREAM_JARS_ROOT": str(paths.jars_root())}
    names = ("clb.events", "clb.decisions", "clb.dead")
    topics.ensure_topics(kafka_bootstrap, topics.topic_specs(*names, partitions=2))
    flags = ["--bootstrap-servers", kafka_bootstrap, "--events-topic", names[0], "--decisions-topic", names[1],
             "--dead-letter-topic", names[2], "--control-topic", "", "--labels-topic", "", "--group-id", "clb-group",
             "--job-name", "clb-job", "--transactional-id-prefix", "clb-tx", "--starting-offsets", "earliest",
             "--checkpoint-interval-ms", "1000", "--state-backend", "rocksdb", "--changelog",
             "--flink-conf", f"state.changelog.periodic-materialize.interval={MATERIALIZE_S}s"]
    stop, sent = threading.Event(), [0]
    feeder = threading.Thread(target=_feed, args=(kafka_bootstrap, names[0], stop, sent, RATE * 600), daemon=True)
    job = Job(env, tmp_path, flags)
    seen: dict[str, int] = {}  # every log file that ever appeared, at its largest
    sizes: list[int] = []  # the folder's size at each sample
    try:
        job_id = job.running(checkpoint=True)
        run = next(r for r in lineage.read("clb-job", home) if r["kind"] == "run" and r["job_id"] == job_id)
        assert run["flink_settings"]["state.changelog.enabled"] == "true", run["flink_settings"]
        assert "changelog on (into " in job.text(), job.text()
        base = lineage.local_path(run["flink_settings"]["state.changelog.dstl.dfs.base-path"])
        assert base == home / "jobs" / "clb-job" / "changelog"  # the job's own folder on a MiniCluster
        dstl = base / job_id / "dstl"
        feeder.start()
        t_end = time.monotonic() + 600
        rounds, first = 0, None  # materializations since the log first held something
        while rounds < ROUNDS:
            assert job.proc.poll() is None, job.text()
            assert time.monotonic() < t_end, f"{rounds} materializations within 600 s\n{job.text()}"
            now: dict[str, int] = {}
            for f in dstl.iterdir() if dstl.is_dir() else ():
                try:
                    now[f.name] = f.stat().st_size
                except FileNotFoundError:  # discarded meanwhile
                    pass
            for k, v in now.items():
                seen[k] = max(v, seen.get(k, 0))
            done = _min_materializations(job.rest, job_id)
            if first is None and now:
                first = done
            if first is not None:
                sizes.append(sum(now.values()))
                rounds = done - first
            time.sleep(0.5)  # sampling interval
        stop.set()
        feeder.join(timeout=120)
        total, last, peak = sum(seen.values()), sizes[-1], max(sizes)
        print(f"[changelog] {rounds} materializations, {sent[0]} events, {len(seen)} log files written "
              f"({total / 1e6:.2f} MB), at the end {last / 1e6:.2f} MB, peak {peak / 1e6:.2f} MB")
        # truncated after materializations: what is left is a small part of what was written
        assert total > 0 and last <= 0.5 * total, (last, total)
        # and the folder does not grow with the run: the second half's peak is not above twice the first's
        half = len(sizes) // 2
        assert max(sizes[half:]) <= 2 * max(max(sizes[:half]), 1), sizes

    finally:
        stop.set()
        job.kill()  # a lost process: its retained checkpoints, and the log they read, stay
    # the job's retention (what its next start runs, nothing alive): it keeps exactly the log files a kept
    # snapshot's _metadata names, found here by reading every _metadata for every file's name
    left = {f.name for f in dstl.iterdir()}
    lineage.prune("clb-job", JobConfig().retain_snapshots, home=home)
    kept, _ = lineage.all_snapshots("clb-job", home)
    metas = [(s.path / "_metadata").read_bytes() for s in kept]
    named = {n for n in left if any(n.encode() in m for m in metas)}
    assert kept and named, (kept, len(left))  # the retained checkpoints read part of the log
    assert {f.name for f in dstl.iterdir()} == named, (len(left), len(named))
    print(f"[changelog] killed: {len(left)} log files left, {len(named)} read by the {len(kept)} kept snapshots")
