"""One job, one run, on fabricated lineages and real processes (no broker, no Flink): the lock refuses a second
start while another process holds it and changes nothing in the job's folder; a dead holder (SIGKILL) never
blocks; lineage records of dead processes and ended or unknown cluster jobs are stale, a live process or a job
its JobManager reports RUNNING is not; a run that completed nothing is never what `latest` picks; the
snapshots listing on a fabricated lineage."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import orjson
import pytest

from riskstream import paths
from riskstream.ops import lineage, runguard, snapshots
from tests.test_flink_rest import FakeJobManager
from tests.test_lineage import A, B, C, JOB, chk, run, sp, write_snapshot

HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from riskstream.ops import runguard
    c = runguard.claim(sys.argv[1], home=Path(sys.argv[2]))
    c.note(job_id="f" * 32, rest_url="http://127.0.0.1:1")
    print("held", flush=True)
    sys.stdin.read()  # hold until the test closes stdin (or kills us)
""")


def folder_state(root) -> dict:
    """Every file and folder under ``root`` with its size and mtime (ns)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            st = os.stat(os.path.join(dirpath, n))
            out[os.path.relpath(os.path.join(dirpath, n), root)] = (st.st_size, st.st_mtime_ns)
    return out


def start_holder(home):
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, JOB, str(home)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=paths.PROJECT_ROOT, start_new_session=True)
    assert proc.stdout.readline().strip() == "held"  # blocks until the holder has the lock (or exits)
    return proc


def test_a_held_lock_refuses_a_second_claim_and_changes_nothing(tmp_path):
    run(tmp_path, A)
    write_snapshot(chk(tmp_path, A, 3), 3)
    chk(tmp_path, A, 4).mkdir()  # the live run's checkpoint in flight: retention must not touch it
    holder = start_holder(tmp_path)
    try:
        before = folder_state(lineage.job_dir(JOB, tmp_path))
        t0 = time.monotonic()
        with pytest.raises(runguard.RunAlive) as e:
            runguard.claim(JOB, home=tmp_path)
        assert time.monotonic() - t0 < 1.0
        msg = str(e.value)
        assert f"pid {holder.pid}" in msg and "f" * 32 in msg and "http://127.0.0.1:1" in msg
        assert f"riskstream cancel {JOB}" in msg and "since " in msg
        assert folder_state(lineage.job_dir(JOB, tmp_path)) == before
        assert runguard.holder(JOB, tmp_path)["pid"] == holder.pid
        assert folder_state(lineage.job_dir(JOB, tmp_path)) == before
    finally:
        os.killpg(holder.pid, signal.SIGKILL)  # a crash: the kernel drops the lock
        holder.wait(timeout=30)
    c = runguard.claim(JOB, home=tmp_path)  # a dead holder never blocks
    try:
        assert runguard.lock_path(JOB, tmp_path).exists()
    finally:
        c.release()
    assert runguard.holder(JOB, tmp_path) is None


def test_two_claims_at_the_same_moment_one_wins(tmp_path):
    """Many processes claim at once: exactly one gets the job."""
    code = textwrap.dedent("""
        import sys, time
        from pathlib import Path
        from riskstream.ops import runguard
        try:
            runguard.claim(sys.argv[1], home=Path(sys.argv[2]))
            print("won", flush=True)
            sys.stdin.read()
        except runguard.RunAlive:
            print("refused", flush=True)
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code, JOB, str(tmp_path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, cwd=paths.PROJECT_ROOT) for _ in range(4)]
    try:
        answers = sorted(p.stdout.readline().strip() for p in procs)
    finally:
        for p in procs:
            p.stdin.close()
            p.wait(timeout=30)
    assert answers == ["refused", "refused", "refused", "won"]


def record(home, job_id, **fields):
    rec = lineage.record_run(JOB, job_id, (lineage.job_dir(JOB, home) / "checkpoints").as_uri(), None,
                             extra=fields, home=home)
    return rec


def test_lineage_liveness_of_processes_and_cluster_jobs(tmp_path):
    jm = FakeJobManager()
    try:
        # a dead process of this host, and one whose pid was reused by another process (start time differs)
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        record(tmp_path, A, runner="local", pid=dead.pid, pid_start=1, host=runguard.host(),
               rest_url="http://127.0.0.1:1")
        record(tmp_path, B, runner="local", pid=os.getppid(), pid_start=-5, host=runguard.host())
        # a cluster job the JobManager no longer knows (404), one that ended, one on an unreachable address
        record(tmp_path, C, runner="cluster", rest_url=jm.url)
        record(tmp_path, "d" * 32, runner="cluster", rest_url=jm.url)
        jm.script[("GET", "/jobs/" + "d" * 32)] = [(200, {"state": "CANCELED"})]
        record(tmp_path, "e" * 32, runner="cluster", rest_url="http://127.0.0.1:1")
        notes: list[str] = []
        assert runguard.live_runs(JOB, tmp_path, notes) == []
        assert any("no JobManager answers there" in n for n in notes)
        c = runguard.claim(JOB, home=tmp_path, log=None)  # stale records never block
        c.release()
        # a cluster job its JobManager reports RUNNING is alive: the start is refused, nothing written
        record(tmp_path, "9" * 32, runner="cluster", rest_url=jm.url)
        jm.script[("GET", "/jobs/" + "9" * 32)] = [(200, {"state": "RUNNING"})]
        before = folder_state(lineage.job_dir(JOB, tmp_path))
        with pytest.raises(runguard.RunAlive, match=f"Flink job {'9' * 32} \\(RUNNING\\), REST {jm.url}"):
            runguard.claim(JOB, home=tmp_path)
        assert folder_state(lineage.job_dir(JOB, tmp_path)) == before
        # a live process of this host (its pid and start time) is alive
        live = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
        try:
            jm.script[("GET", "/jobs/" + "9" * 32)] = [(200, {"state": "FINISHED"})]
            record(tmp_path, "8" * 32, runner="local", pid=live.pid, pid_start=runguard.pid_start(live.pid),
                   host=runguard.host())
            [lv] = runguard.live_runs(JOB, tmp_path)
            assert lv.job_id == "8" * 32 and lv.pid == live.pid and "is alive" in lv.evidence
        finally:
            live.stdin.close()
            live.wait(timeout=30)
        # an end record: never probed again
        lineage.record_end(JOB, "8" * 32, "CANCELED", home=tmp_path)
        assert runguard.live_runs(JOB, tmp_path) == []
    finally:
        jm.close()


def test_a_run_that_completed_nothing_is_never_latest(tmp_path):
    """The issue's sequence: a live job A checkpoints; a second start B (of the same job) recorded itself and
    died before its first checkpoint; A stops with a savepoint. `latest` is A's savepoint, not B's restore."""
    run(tmp_path, A)
    write_snapshot(chk(tmp_path, A, 99), 99)
    run(tmp_path, B, restored_from=chk(tmp_path, A, 99))  # the second start, then it died
    write_snapshot(sp(tmp_path, A), 120)  # A's clean stop, after B's record
    lineage.record_savepoint(JOB, A, sp(tmp_path, A).as_uri(), stopped=True, home=tmp_path)
    res = lineage.resolve_latest(JOB, tmp_path)
    assert res.snapshot.path == sp(tmp_path, A) and res.run_id == A
    assert B in res.how and "committed nothing" in res.how
    # B started without state and died: skipped too (it used to make `latest` refuse)
    run(tmp_path, C)
    assert lineage.resolve_latest(JOB, tmp_path).snapshot.path == sp(tmp_path, A)
    # B restored an older snapshot on purpose (a path) and died: it committed nothing, A's savepoint stays
    write_snapshot(chk(tmp_path, A, 50), 50)
    run(tmp_path, "d" * 32, restored_from=chk(tmp_path, A, 50))
    assert lineage.resolve_latest(JOB, tmp_path).snapshot.checkpoint_id == 120


def test_retention_removes_half_written_savepoints(tmp_path):
    run(tmp_path, A)
    write_snapshot(chk(tmp_path, A, 3), 3)
    half = sp(tmp_path, A, "halfwritten1")
    half.mkdir(parents=True)
    (half / "some-state-file").write_bytes(b"x")
    removed = lineage.prune(JOB, 3, home=tmp_path)
    assert half in removed and not half.exists() and chk(tmp_path, A, 3).exists()


def test_snapshots_listing_on_a_fabricated_lineage(tmp_path, capsys, monkeypatch):
    now = time.time()
    run(tmp_path, A, started_at=now - 600)
    write_snapshot(chk(tmp_path, A, 7), 7, {0: 120, 1: 95}, mtime=now - 300)
    write_snapshot(sp(tmp_path, A), 8, {0: 130, 1: 99}, mtime=now - 200)
    lineage.record_savepoint(JOB, A, sp(tmp_path, A).as_uri(), stopped=True, home=tmp_path)
    lineage.record_end(JOB, A, "FINISHED", home=tmp_path)
    run(tmp_path, B, restored_from=sp(tmp_path, A), started_at=now - 100)
    chk(tmp_path, B, 9).mkdir(parents=True)  # killed while its first checkpoint was in flight
    half_sp = sp(tmp_path, B, "cutoff")
    half_sp.mkdir(parents=True)
    recs = [json.loads(x) for x in lineage.lineage_path(JOB, tmp_path).read_text().splitlines()]
    for r in recs:  # the fabricated runs read the test's events topic
        if r["kind"] == "run":
            r["events_topic"] = "t.events"
    lineage.lineage_path(JOB, tmp_path).write_text("".join(json.dumps(r) + "\n" for r in recs))

    d = snapshots.listing(JOB, tmp_path)
    done = [s for s in d["snapshots"] if s["complete"]]
    assert [(s["kind"], s["checkpoint_id"], s["run"]) for s in done] == [("checkpoint", 7, A), ("savepoint", 8, A)]
    assert done[0]["offsets"] == {"0": 120, "1": 95} and done[1]["offsets"] == {"0": 130, "1": 99}
    assert done[1]["stopped"] is True and 195 < done[1]["age_s"] < 260
    half = {s["path"] for s in d["snapshots"] if not s["complete"]}
    assert half == {chk(tmp_path, B, 9).resolve().as_uri(), half_sp.resolve().as_uri()}
    assert d["latest"]["checkpoint_id"] == 8 and d["latest"]["kind"] == "savepoint"
    assert "completed no snapshot" in d["latest"]["why"]
    assert [r["status"] for r in d["runs"]] == ["ended FINISHED", "gone (no end recorded: killed, or its job ended elsewhere)"]
    text = snapshots.render(d)
    assert "HALF-WRITTEN" in text and "--restore-from latest: savepoint 8" in text and "p0:130" in text
    # the CLI: text, then JSON on the last line; read-only
    before = folder_state(lineage.job_dir(JOB, tmp_path))
    monkeypatch.setenv("RISKSTREAM_HOME", str(tmp_path))
    from riskstream.cli import main

    assert main(["snapshots", JOB, "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert orjson.loads(out[-1])["latest"]["checkpoint_id"] == 8
    assert folder_state(lineage.job_dir(JOB, tmp_path)) == before
    # a refusal is shown as such
    lineage.lineage_path(JOB, tmp_path).unlink()
    assert "REFUSED" in snapshots.render(snapshots.listing(JOB, tmp_path))


def test_a_run_that_dies_during_a_savepoint_fails_the_wait_at_once():
    """The JobManager is gone (here: it never knew the request) and no savepoint landed: once the run is over
    the wait ends with why, not after its 300 s deadline."""
    from riskstream.ops import flink_rest

    jm = FakeJobManager()
    try:
        t0 = time.monotonic()
        with pytest.raises(flink_rest.FlinkError, match="the run is over \\(its process 4242 has exited\\)"):
            flink_rest.await_savepoint(jm.url, "0" * 32, "r1", "stop-with-savepoint", 300,
                                       found=lambda: None, gone=lambda: "its process 4242 has exited")
        assert time.monotonic() - t0 < 5
        # while the run is alive the wait goes on; a savepoint that lands is returned
        seen = []
        loc = flink_rest.await_savepoint(jm.url, "0" * 32, "r1", "savepoint", 300,
                                         found=lambda: "file:/sp/x" if seen else seen.append(1),
                                         gone=lambda: None)
        assert loc == "file:/sp/x"
    finally:
        jm.close()


def test_an_in_process_minicluster_run_is_alive_while_its_job_runs_not_while_its_process_does(tmp_path):
    """`decision_job.run(wait=False)` (the demo) leaves its process running after its job ended: its REST
    address decides, not its pid."""
    jm = FakeJobManager()
    try:
        record(tmp_path, A, runner="inproc", pid=os.getppid(), pid_start=runguard.pid_start(os.getppid()),
               host=runguard.host(), rest_url=jm.url)
        jm.script[("GET", "/jobs/" + A)] = [(200, {"state": "RUNNING"})]
        [lv] = runguard.live_runs(JOB, tmp_path)
        assert lv.job_id == A and "reports it RUNNING" in lv.evidence
        jm.script[("GET", "/jobs/" + A)] = [(200, {"state": "CANCELED"})]
        assert runguard.live_runs(JOB, tmp_path) == []  # its process lives on, its job does not
    finally:
        jm.close()
