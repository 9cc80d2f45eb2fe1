"""The decision job on a real local standalone Flink cluster, driven through the CLI: `riskstream cluster up`,
`submit --wait-running`, `savepoint`, `cancel` (stop-with-savepoint), `submit --from-savepoint`.

One user sends N events, then the job is upgraded through a savepoint, then the user sends M more (all
within one minute of event time): the user's one-minute count continues N+1..N+M after the restore (keyed
state survived), every event has exactly one decision (read_committed), and the job's custom counters are
visible through the REST API. Then the job is cancelled without a savepoint and restarted from its newest
retained checkpoint (`--restore-from latest`): K more events continue the count. All on `cluster up`'s
production default, RocksDB with the changelog: the savepoint is restored from a private copy in CLAIM mode
and stays as it was, the checkpoint is claimed in place. Prints the measured times."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson
import pytest

from riskstream import paths, topics
from riskstream.ops import cluster, flink_rest, lineage, procs, submit
from riskstream.generator import Labelled
from riskstream.kafka_io import produce
from tests.test_kafka_integration import read_all

pytestmark = [pytest.mark.flink, pytest.mark.kafka]  # ~60 s here before the checkpoint restart (5 min at load 12-28 with it): the changelog upgrade path stays in the default run

N, M, K = 20, 12, 5
DECISION_COUNTERS = ("decisions_allow", "decisions_review", "decisions_block")
COUNTERS = DECISION_COUNTERS + ("events_valid", "dead_letters", "late_events", "duplicate_events",
                                "processing_errors")


def _cli(env: dict, *args: str, timeout: float = 400, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "riskstream.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=paths.PROJECT_ROOT, stdin=subprocess.DEVNULL)
    if check:
        assert proc.returncode == 0, \
            f"riskstream {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _events(user: str, run: str, start_ts: int, first: int, count: int) -> list[Labelled]:
    """``count`` valid login events of one user and device, 500 ms apart from ``start_ts``."""
    out = []
    for i in range(first, first + count):
        ev = {"event_id": f"{run}-e{i:03d}", "event_type": "login", "user_id": user, "device_id": f"{run}-d1",
              "ip": "10.20.30.40", "amount": 0.0, "currency": "EUR", "ts": start_ts + 500 * i}
        out.append(Labelled(user, ev, None, {"event_id": ev["event_id"], "scenario": "normal", "fraud": False,
                                             "user_id": user, "device_id": ev["device_id"], "ts": ev["ts"]}))
    return out


def _decisions_until(bootstrap: str, topic: str, n: int, deadline_s: float, t_start: float | None = None
                     ) -> tuple[list[dict], float | None]:
    """Committed decisions, read until at least ``n`` are visible; also when the first one was seen."""
    t0 = time.monotonic()
    first_at = None
    while True:
        got = [orjson.loads(m.value) for m in read_all(bootstrap, topic)]
        if got and first_at is None:
            first_at = time.monotonic() - (t_start if t_start is not None else t0)
        if len(got) >= n:
            return got, first_at
        assert time.monotonic() - t0 < deadline_s, f"only {len(got)} of {n} decisions within {deadline_s:.0f}s"
        time.sleep(0.3)  # polling interval


def _counters_until(rest_url: str, job_id: str, n: int, deadline_s: float = 90) -> dict[str, float]:
    """The job's custom counters from REST, polled until ``events_valid`` and the decision counters both
    reach ``n`` (metrics lag the records: operators report them, the JobManager caches them)."""
    t0 = time.monotonic()
    while True:
        got = flink_rest.user_counters(rest_url, job_id, COUNTERS)
        if got.get("events_valid") == n and sum(got.get(k, 0) for k in DECISION_COUNTERS) == n:
            return got
        assert time.monotonic() - t0 < deadline_s, f"counters {got} do not show {n} events within {deadline_s:.0f}s"
        time.sleep(0.5)  # polling interval


def test_upgrade_through_a_savepoint_keeps_state(kafka_bootstrap, tmp_path):
    home = tmp_path / "home"
    root = home / "flink-cluster"
    env = {**os.environ, "RISKSTREAM_HOME": str(home), "RISKSTREAM_JARS_ROOT": str(paths.jars_root())}
    run = f"cj{uuid.uuid4().hex[:8]}"
    names = (f"{run}.events", f"{run}.decisions", f"{run}.dead")
    user = f"{run}-u1"
    # event time: the start of the previous wall-clock minute, so all N+M events (500 ms apart) fall in
    # one minute. Not an old fixed date: the sink stamps decision records with the event time, and the
    # broker's 7-day time retention deletes older records at its next retention check (30 s after start)
    start_ts = (int(time.time() * 1000) // 60_000 - 1) * 60_000
    job_flags = ["--bootstrap-servers", kafka_bootstrap, "--events-topic", names[0], "--decisions-topic", names[1],
                 "--dead-letter-topic", names[2], "--group-id", f"{run}-group", "--job-name", f"{run}-job",
                 "--transactional-id-prefix", f"{run}-tx", "--parallelism", "1", "--checkpoint-interval-ms", "500",
                 "--checkpoint-dir", str(tmp_path / "checkpoints"), "--starting-offsets", "earliest"]
    times: dict[str, float] = {}
    daemon_pids: list[int] = []
    lay = None
    try:
        t0 = time.monotonic()
        up = _cli(env, "cluster", "up", "--deadline", "180")
        times["cluster up"] = time.monotonic() - t0
        lay = cluster.layout(root=root)
        assert up.stdout.strip() == lay.rest_url
        st = orjson.loads(_cli(env, "cluster", "status", "--json").stdout)
        assert st["ready"] and st["taskmanagers"] == 1, st
        daemon_pids = [p for p in st["pids"].values() if p]
        assert len(daemon_pids) == 2
        topics.ensure_topics(kafka_bootstrap, topics.topic_specs(*names, partitions=2))

        # -- first job ---------------------------------------------------------------------------------
        t_submit = time.monotonic()
        sub1 = _cli(env, "submit", "--wait-running", "--deadline", "240", *job_flags)
        times["submit -> running"] = time.monotonic() - t_submit
        job1 = sub1.stdout.strip().splitlines()[-1]
        assert flink_rest.JOB_ID.match(job1), sub1.stdout
        assert "first checkpoint completed" in sub1.stderr
        # the production default of `cluster up`: RocksDB with the changelog over it, shown at start and
        # recorded in the lineage with the cluster's folder for it
        assert "changelog on (into " in up.stderr, up.stderr
        assert "state backend rocksdb, incremental checkpoints" in sub1.stderr and "changelog on" in sub1.stderr, \
            sub1.stderr
        run1 = next(r for r in lineage.read(f"{run}-job", home) if r["kind"] == "run" and r["job_id"] == job1)
        assert run1["flink_settings"]["state.changelog.enabled"] == "true", run1["flink_settings"]
        assert run1["flink_settings"]["state.changelog.dstl.dfs.base-path"] == (root / "changelog").resolve().as_uri()
        assert produce(kafka_bootstrap, names[0], _events(user, run, start_ts, 1, N)) == N
        first, times["submit -> first decision"] = _decisions_until(kafka_bootstrap, names[1], N, 180, t_submit)
        assert sorted(d["features"]["user_events_1m"] for d in first) == list(range(1, N + 1))
        by_ts = sorted(first, key=lambda d: d["event_ts"])
        assert [d["features"]["user_events_1m"] for d in by_ts] == list(range(1, N + 1))
        assert all(d["user_id"] == user and d["decision"] in ("allow", "review", "block") for d in first)
        # the checkpoint that committed them holds their state changes: in <base>/<flink job id>/dstl, the
        # TaskManager's folder
        assert any((root / "changelog" / job1 / "dstl").iterdir()), sorted((root / "changelog").rglob("*"))

        t0 = time.monotonic()
        c1 = _counters_until(lay.rest_url, job1, N)
        times["metrics visible (job 1)"] = time.monotonic() - t0
        # the scoring-latency histogram, labelled with the model version: one bucket per decision
        hist = {i: v for vals in flink_rest.vertex_metrics(lay.rest_url, job1, lambda i: "scoring_latency_us" in i)
                .values() for i, v in vals.items()}
        assert hist and all(".model_version.risk_gbdt_v1.scoring_latency_us.le_" in i for i in hist), hist
        assert sum(hist.values()) == N, hist

        assert {k: c1.get(k) for k in ("dead_letters", "late_events", "duplicate_events", "processing_errors")} \
            == dict.fromkeys(("dead_letters", "late_events", "duplicate_events", "processing_errors"), 0), c1

        # -- one job, one run: a second submit of the running job is refused before `flink run`, nothing touched
        job_dir = home / "jobs" / f"{run}-job"
        before = {f: (f.stat().st_size, f.stat().st_mtime_ns) for f in job_dir.rglob("*")}
        t0 = time.monotonic()
        again = _cli(env, "submit", *job_flags, check=False)
        assert again.returncode != 0 and time.monotonic() - t0 < 5, (time.monotonic() - t0, again.stderr)
        assert f"job {run}-job is already running" in again.stderr and job1 in again.stderr, again.stderr
        assert f"REST {lay.rest_url}" in again.stderr and "(RUNNING)" in again.stderr, again.stderr
        assert {f: (f.stat().st_size, f.stat().st_mtime_ns) for f in job_dir.rglob("*")} == before
        assert [j["id"] for j in cluster.status(root)["jobs"] if j["state"] == "RUNNING"] == [job1]

        # -- a savepoint while the job runs, then stop with a savepoint (the upgrade path) ----------------
        t0 = time.monotonic()
        sp = _cli(env, "savepoint", job1).stdout.strip()
        times["savepoint (job keeps running)"] = time.monotonic() - t0
        sp_path = submit.local_path(sp)
        # a job riskstream submitted saves into its own folder, and its lineage records the savepoint
        job_sp = home / "jobs" / f"{run}-job" / "savepoints"
        assert (sp_path / "_metadata").is_file() and sp_path.parent == job_sp.resolve(), sp
        lineage_text = (home / "jobs" / f"{run}-job" / "lineage.jsonl").read_text()
        assert job1 in lineage_text and sp_path.name in lineage_text
        assert flink_rest.job_state(lay.rest_url, job1) == "RUNNING"

        t0 = time.monotonic()
        stopped = _cli(env, "cancel", job1, "--dir", str(tmp_path / "upgrade")).stdout.strip()
        times["stop with savepoint"] = time.monotonic() - t0
        assert (submit.local_path(stopped) / "_metadata").is_file(), stopped
        assert flink_rest.job_state(lay.rest_url, job1) == "FINISHED"

        # -- the upgraded job, restored from the savepoint -----------------------------------------------
        # Flink restores the changelog only in CLAIM mode, and deletes what it claimed once subsumed: a private
        # copy is restored and the savepoint stays as it was (the copy was removed by the job client's retention
        # before Flink read it, until the client kept it: issue 20)
        sp_files = {f: f.stat().st_size for f in submit.local_path(stopped).rglob("*")}
        t0 = time.monotonic()
        sub2 = _cli(env, "submit", "--wait-running", "--deadline", "240", "--from-savepoint", stopped, *job_flags)
        times["restore (resubmit -> running)"] = time.monotonic() - t0
        job2 = sub2.stdout.strip().splitlines()[-1]
        assert flink_rest.JOB_ID.match(job2) and job2 != job1, sub2.stdout
        assert "restoring a private copy" in sub2.stderr, sub2.stderr
        detail = flink_rest.get(lay.rest_url, f"/jobs/{job2}/checkpoints")
        restored = (detail.get("latest") or {}).get("restored") or {}
        copy = Path(submit.local_path(restored["external_path"]))
        assert copy.parent == (job_dir / "claimed").resolve() and copy.name.startswith(submit.local_path(stopped).name
                                                                                       + "-"), detail.get("latest")
        config = flink_rest.get(lay.rest_url, f"/jobs/{job2}/checkpoints/config")
        assert config.get("state_changelog_enabled") is True, config
        assert config.get("changelog_periodic_materialization_interval") == 180_000, config  # 3 min

        assert produce(kafka_bootstrap, names[0], _events(user, run, start_ts, N + 1, M)) == M
        t0 = time.monotonic()
        every, _ = _decisions_until(kafka_bootstrap, names[1], N + M, 180)
        times["second batch -> all decided"] = time.monotonic() - t0
        ids = [d["event_id"] for d in every]
        expected = [f"{run}-e{i:03d}" for i in range(1, N + M + 1)]
        assert sorted(ids) == expected, "every event exactly one decision: no duplicate, nothing missing"
        second = sorted((d for d in every if d["event_id"] not in {x["event_id"] for x in first}),
                        key=lambda d: d["event_ts"])
        assert [d["features"]["user_events_1m"] for d in second] == list(range(N + 1, N + M + 1)), \
            "the user's window state did not survive the savepoint"
        assert read_all(kafka_bootstrap, names[2]) == []
        # checkpoints since the restore subsumed what it claimed; the savepoint itself is untouched
        assert flink_rest.checkpoints(lay.rest_url, job2)["latest"]["completed"]["id"] > restored["id"]
        assert {f: f.stat().st_size for f in submit.local_path(stopped).rglob("*")} == sp_files

        c2 = _counters_until(lay.rest_url, job2, M)
        # counters are per job run (not state): the two runs together counted every decision once
        # a Python UDF's counter that never moved is not reported (PyFlink sends metric updates only)
        assert sum(c1.get(k, 0) + c2.get(k, 0) for k in DECISION_COUNTERS) == N + M
        assert c1["events_valid"] + c2["events_valid"] == N + M

        # -- a restart from the newest retained checkpoint (`cancel --no-savepoint`, `--restore-from latest`):
        # claimed in place, as every checkpoint restore (the changelog's only mode); the state continues
        _cli(env, "cancel", job2, "--no-savepoint")
        assert flink_rest.wait_for_state(lay.rest_url, job2, ("CANCELED",)) == "CANCELED"
        t0 = time.monotonic()
        sub3 = _cli(env, "submit", "--wait-running", "--deadline", "240", "--restore-from", "latest", *job_flags)
        times["restore from the checkpoint (resubmit -> running)"] = time.monotonic() - t0
        job3 = sub3.stdout.strip().splitlines()[-1]
        restored3 = flink_rest.checkpoints(lay.rest_url, job3)["latest"]["restored"]
        chk = Path(submit.local_path(restored3["external_path"]))
        assert chk.parent.name == job2 and chk.name == f"chk-{restored3['id']}", restored3
        assert produce(kafka_bootstrap, names[0], _events(user, run, start_ts, N + M + 1, K)) == K
        every, _ = _decisions_until(kafka_bootstrap, names[1], N + M + K, 180)
        assert sorted(d["event_id"] for d in every) == [f"{run}-e{i:03d}" for i in range(1, N + M + K + 1)]
        third = sorted((d for d in every if d["event_id"] > f"{run}-e{N + M:03d}"), key=lambda d: d["event_ts"])
        assert [d["features"]["user_events_1m"] for d in third] == list(range(N + M + 1, N + M + K + 1)), \
            "the user's window state did not survive the checkpoint restore"

        # -- clear errors ---------------------------------------------------------------------------------
        unknown = _cli(env, "savepoint", "0123456789abcdef0123456789abcdef", check=False)
        assert unknown.returncode != 0 and "is not known to the Flink cluster" in unknown.stderr, unknown.stderr
        assert cluster.status(root)["jobs_running"] == 1
    except BaseException:
        print(cluster.log_tail(root, lines=40), file=sys.stderr)
        raise
    finally:
        _cli(env, "cluster", "down", check=False)
        cluster.down(root=root)  # idempotent; stops the daemons if the CLI could not
        for k, v in times.items():
            print(f"[cluster-job] {k}: {v:.1f}s", file=sys.stderr)
    assert daemon_pids and not any(procs.group_alive(p) for p in daemon_pids), "a Flink process outlived `down`"
    assert cluster.pids(root) == {"jobmanager": None, "taskmanager": None}
    assert lay is not None and not procs.port_in_use(lay.rest_port)
    no_cluster = _cli(env, "submit", *job_flags, check=False)
    assert no_cluster.returncode != 0 and "riskstream cluster up" in no_cluster.stderr, no_cluster.stderr
