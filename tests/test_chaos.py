"""Exactly-once under failure (real broker, the job in its own MiniCluster process): every kind of failure
is injected while labelled traffic with malformed records and producer retries flows; the audit must find
every input accounted for exactly once."""

from __future__ import annotations

import os
import subprocess
import sys

import orjson
import pytest

from riskstream import paths
from riskstream.tools import chaos, chaos_cluster

pytestmark = [pytest.mark.kafka, pytest.mark.flink]


def _check(res: dict, events: int, failures: int) -> None:
    audit = res["audit"]
    assert (res["missing"], res["duplicates"], res["unexpected"]) == (0, 0, 0), audit
    assert res["failures_injected"] == failures
    assert audit["events"] == res["records_sent"] >= events
    # every record is a decision or a dead letter, and nothing else came out
    assert audit["decided"] == audit["distinct_event_ids"]
    assert audit["dead_letter"] == audit["malformed"] + audit["repeated_event_ids"] + audit["tombstones"]
    poison = [f for f in res["failures"] if f["kind"] == "poison-record"]
    if poison:  # each poison-record failure: one bounded oversized, one null_value and one invalid_json dead letter
        assert audit["tombstones"] == len(poison) and audit["truncated_dead_letters"] >= len(poison), audit
        assert audit["dead_letter_reasons"].get("null_value", 0) == len(poison)
    assert audit["dead_letter_reasons"].get("duplicate_event_id", 0) == audit["repeated_event_ids"] > 0
    assert audit["wrong_reason"] == audit["unreadable_outputs"] == 0
    assert set(audit["pending_commit"].values()) == {0}, audit["pending_commit"]  # no lingering transaction
    for f in res["failures"]:
        if f["kind"] in ("savepoint-crash", "double-kill"):  # killed while its first checkpoint was in flight
            assert f["killed_run_checkpoints"] == 0, f
        if f["kind"] == "broker-stall":  # the job said it could not commit (metric and log line), then cleared
            assert f["metric"]["uncommitted_s"] > 0 and f["log_after_s"] is not None, f


# the default run's share of the kinds (about 1 1/2 minutes here): a failure inside the cluster, a broker
# killed in the commit phase, a crash during a stop-with-savepoint (a process kill and its restore from
# `latest`) and a stale restore; every kind once is the long test below. A second start and poison records
# are in the default run on their own (tests/test_one_run.py, tests/test_poison.py)
DEFAULT_RUN_KINDS = ("task-failure", "broker-kill-commit", "kill-in-savepoint", "stale-restore")


def _every_kind(tmp_path, monkeypatch, kinds: tuple[str, ...]) -> None:
    monkeypatch.setenv("RISKSTREAM_JARS_ROOT", str(paths.jars_root()))  # before the home moves
    monkeypatch.setenv("RISKSTREAM_HOME", str(tmp_path))
    n = len(kinds)
    res = chaos.run_chaos(events=3000, failures=n, rate=250, seed=3, dup_share=0.01, parallelism=2, kinds=kinds)
    _check(res, 3000, n)
    assert {f["kind"] for f in res["failures"]} == set(kinds)
    for f in res["failures"]:  # the tasks stopped and ran again, or never stopped
        assert f["running_s"] is None or 0 < f["running_s"] <= f["recovery_s"], f
        if f["kind"] in ("task-failure", "kill-process", "kill-in-savepoint"):
            assert f["running_s"] is not None, f
        if f["kind"] in ("second-start", "poison-record"):
            assert f["running_s"] is None, f
    # a clean run keeps its job logs and lineage, not its broker data, checkpoints, savepoints or job folder
    (run,) = (tmp_path / "chaos").iterdir()
    assert list(run.glob("job-*.log")) and (run / "lineage.jsonl").exists()
    assert not (run / "checkpoints").exists() and not (run / "kafka" / "data").exists()
    assert not list((tmp_path / "jobs").glob("chaos-*"))


def test_the_default_runs_kinds(tmp_path, monkeypatch):
    _every_kind(tmp_path, monkeypatch, DEFAULT_RUN_KINDS)


@pytest.mark.long
def test_every_failure_kind_once(tmp_path, monkeypatch):
    """Each kind once, at parallelism 2 (about 6 minutes here)."""
    _every_kind(tmp_path, monkeypatch, chaos.KINDS)


@pytest.mark.long
def test_every_kind_twice_over_200k_events_at_parallelism_2(tmp_path):
    """The closing run of docs/exactly-once.md: each kind twice over 200k events at parallelism 2."""
    env = {**os.environ, "RISKSTREAM_HOME": str(tmp_path),
           "RISKSTREAM_JARS_ROOT": str(paths.jars_root())}
    failures = 2 * len(chaos.KINDS)
    proc = subprocess.run([sys.executable, "-m", "riskstream.cli", "chaos", "--events", "200000", "--failures",
                           str(failures), "--rate", "1000", "--parallelism", "2", "--json"], env=env,
                          capture_output=True, text=True, timeout=5400, cwd=paths.PROJECT_ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    res = orjson.loads(proc.stdout.strip().splitlines()[-1])
    _check(res, 200_000, failures)
    assert {k: v["n"] for k, v in res["recovery_s"].items()} == {k: 2 for k in chaos.KINDS}


@pytest.mark.long
def test_losing_taskmanagers_of_a_standalone_cluster(tmp_path):
    """`riskstream chaos --cluster`: the job on a standalone cluster of 2 TaskManagers of one slot at
    parallelism 2; one TaskManager's JVM killed (its supervisor starts it again) and one TaskManager lost with
    its supervisor (a replacement started), each while the feed runs; the audit finds every record once
    (4 1/2 to 6 1/2 minutes here at load 18-29). On `cluster up`'s default, RocksDB with the changelog."""
    env = {**os.environ, "RISKSTREAM_HOME": str(tmp_path), "RISKSTREAM_JARS_ROOT": str(paths.jars_root())}
    kinds = chaos_cluster.CLUSTER_KINDS
    proc = subprocess.run([sys.executable, "-m", "riskstream.cli", "chaos", "--cluster", "--events", "3000",
                           "--failures", str(len(kinds)), "--rate", "60", "--seed", "5", "--json"], env=env,
                          capture_output=True, text=True, timeout=1200, cwd=paths.PROJECT_ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    res = orjson.loads(proc.stdout.strip().splitlines()[-1])
    print(proc.stdout.rsplit("\n", 2)[0], file=sys.stderr)  # the rendered result, with -s
    _check(res, 3000, len(kinds))
    assert (res["parallelism"], res["taskmanagers"]) == (2, 2)
    assert sorted(f["kind"] for f in res["failures"]) == sorted(kinds)
    for f in res["failures"]:
        assert f["feed_running"] and f["at_record"] < res["records_sent"], f  # mid-traffic
        # the job could run only once the TaskManager was back (no free slot), restored its last
        # checkpoint, and took both slots again
        assert 0 < f["back_s"] <= f["running_s"] <= f["recovery_s"], f
        assert f["restored_checkpoint"] >= 1 and f["slots_available"] == 0, f
    # a clean run keeps the cluster's logs and the lineage, nothing else of the cluster or the job
    (run,) = (tmp_path / "chaos").iterdir()
    assert [p.name for p in (run / "flink-cluster").iterdir()] == ["log"]
    assert (run / "lineage.jsonl").exists() and not (run / "checkpoints").exists()
    # on the cluster's production default: RocksDB with the changelog (restarts after a loss restore it too)
    runs = [orjson.loads(x) for x in (run / "lineage.jsonl").read_text().splitlines()]
    assert [r["flink_settings"].get("state.changelog.enabled") for r in runs if r["kind"] == "run"] == ["true"], runs
    assert not list((tmp_path / "jobs").glob("chaos-*"))


def test_cluster_kinds_stay_apart(tmp_path):
    """The MiniCluster kinds and the cluster kinds are separate modes: each refuses the other's kinds at once."""
    assert not set(chaos_cluster.CLUSTER_KINDS) & set(chaos.KINDS)
    env = {**os.environ, "RISKSTREAM_HOME": str(tmp_path)}
    for args, named in ((["--cluster", "--kinds", "kill-process"], "kill-process"),
                        (["--kinds", "taskmanager-kill"], "taskmanager-kill")):
        proc = subprocess.run([sys.executable, "-m", "riskstream.cli", "chaos", *args], env=env, capture_output=True,
                              text=True, timeout=60, cwd=paths.PROJECT_ROOT)
        assert proc.returncode != 0 and named in proc.stderr and "choose from" in proc.stderr, proc.stderr
    with pytest.raises(ValueError, match="parallelism 2 or more"):
        chaos_cluster.run_cluster_chaos(events=10, failures=1, parallelism=1)
