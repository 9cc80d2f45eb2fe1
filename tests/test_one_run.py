"""One job, one run, and operator commands that tell the truth, on the real broker with `riskstream run`
MiniCluster processes:

A runs (no --rest-port: it picks one and records it) -> two second starts of the same job (same command, and
another REST port) are refused in < 5 s naming A, with every file of the job's folder (sizes, mtimes) and
every other run's checkpoint unchanged, though the folder then holds more snapshots than the retention and a
half-written savepoint -> `riskstream snapshots` shows A live -> `riskstream cancel <job>` (by name, no
address) stops A with a savepoint; retention at the stop leaves no more than the retention and nothing
half-written -> B starts without state from the end and is SIGKILLed before its first checkpoint -> `cancel`
of B's job id fails at once (its process is gone), `cancel <job>` says it has no live run -> `latest` is
still A's savepoint (`riskstream snapshots --json` says why) -> C `--restore-from latest` restores it ->
`cancel <job> --no-savepoint` reports CANCELED -> every event was decided exactly once.
"""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import time

import orjson
import pytest

from riskstream import paths, topics
from riskstream.ops import flink_rest, lineage
from tests.test_restore_lineage import decisions, produce_events, same_path, wait_decided

pytestmark = [pytest.mark.kafka, pytest.mark.flink]

JOB = "or-job"


def cli(env, *args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "riskstream.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=paths.PROJECT_ROOT, stdin=subprocess.DEVNULL)


class Run:
    """A `riskstream run` process; its job id and REST address are read from the lineage it writes."""

    def __init__(self, env, home, log_dir, flags, extra=()):
        self.home = home
        self.log = log_dir / f"run-{time.monotonic_ns()}.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "riskstream.cli", "run", *flags, *extra],
                                         stdout=out, stderr=subprocess.STDOUT, env=env, cwd=paths.PROJECT_ROOT,
                                         start_new_session=True)
        self.job_id = self.rest = None

    def recorded(self, deadline_s=120) -> dict:
        t_end = time.monotonic() + deadline_s
        while True:
            rec = next((r for r in lineage.read(JOB, self.home) if r["kind"] == "run" and r.get("pid") == self.proc.pid),
                       None)
            if rec:
                self.job_id, self.rest = rec["job_id"], rec["rest_url"]
                return rec
            assert self.proc.poll() is None, self.text()
            assert time.monotonic() < t_end, "not in the lineage in time\n" + self.text()
            time.sleep(0.2)  # polling interval

    def running(self, checkpoint: bool, deadline_s=180) -> None:
        """Until the job is known to its MiniCluster (the run is recorded before it is submitted), then until
        every task runs (and a checkpoint completed)."""
        t_end = time.monotonic() + deadline_s
        self.recorded(deadline_s)
        while True:
            try:
                flink_rest.job_details(self.rest, self.job_id, retry_s=0)
                break
            except (flink_rest.JobNotFound, flink_rest.ClusterNotRunning):
                assert self.proc.poll() is None, self.text()
                assert time.monotonic() < t_end, "job not submitted in time\n" + self.text()
                time.sleep(0.2)  # polling interval
        flink_rest.wait_running(self.rest, self.job_id, deadline_s=max(10, t_end - time.monotonic()),
                                checkpoint=checkpoint)

    def restored(self) -> str | None:
        return ((flink_rest.checkpoints(self.rest, self.job_id).get("latest") or {}).get("restored") or {}) \
            .get("external_path")

    def kill(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=60)

    def text(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def tree_state(root, skip=None) -> dict:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if skip is not None:
            dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) != str(skip)]
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            st = os.stat(p)
            out[os.path.relpath(p, root)] = (st.st_size, st.st_mtime_ns)
    return out


def fake_savepoint(folder, cid: int, age_s: float) -> None:
    """A completed savepoint as far as retention sees it (Flink's header), older than the live run's."""
    folder.mkdir(parents=True)
    (folder / "_metadata").write_bytes(struct.pack(">iiq", 0x4960672D, 6, cid) + b"\0" * 40)
    t = time.time() - age_s
    os.utime(folder / "_metadata", (t, t))


def test_second_start_is_refused_and_the_operator_commands_tell_the_truth(kafka_bootstrap, tmp_path):
    from riskstream.generator import TrafficGenerator

    home = tmp_path / "home"
    env = {**os.environ, "RISKSTREAM_HOME": str(home), "RISKSTREAM_JARS_ROOT": str(paths.jars_root())}
    names = ("or.events", "or.decisions", "or.dead")
    topics.ensure_topics(kafka_bootstrap, topics.topic_specs(*names, partitions=2))
    ck_dir = tmp_path / "checkpoints"  # outside the job folder: the live run's checkpoints change, the folder not
    flags = ["--bootstrap-servers", kafka_bootstrap, "--events-topic", names[0], "--decisions-topic", names[1],
             "--dead-letter-topic", names[2], "--control-topic", "", "--labels-topic", "", "--group-id", "or-group",
             "--job-name", JOB, "--transactional-id-prefix", "or-tx", "--starting-offsets", "earliest",
             "--checkpoint-interval-ms", "1000", "--checkpoint-dir", str(ck_dir)]
    events = [r.event for r in TrafficGenerator(seed=23, bad_share=0.0).generate(300)]
    produce_events(kafka_bootstrap, names[0], events[:200])
    jd = lineage.job_dir(JOB, home)

    # -- A runs; its REST port was chosen for it and recorded --------------------------------------------
    a = Run(env, home, tmp_path, flags)
    try:
        a.running(checkpoint=True)
        assert a.rest.startswith("http://127.0.0.1:"), a.rest
        wait_decided(kafka_bootstrap, names[1], 200)
        # more snapshots than the retention (3) and a half-written savepoint: a start that got as far as its
        # retention would remove some
        for i in range(4):
            fake_savepoint(lineage.savepoints_dir(JOB, home) / f"savepoint-000000-fake{i}", 1 + i, 3600 - i)
        (lineage.savepoints_dir(JOB, home) / "savepoint-000000-half").mkdir()
        other_run = ck_dir / ("0" * 32) / "chk-1"  # an older run's retained checkpoint beside A's
        fake_savepoint(other_run, 1, 7200)
        before = tree_state(jd)
        before_ck = tree_state(ck_dir, skip=ck_dir / a.job_id)

        for extra in ((), ("--rest-port", str(a.rest.rsplit(":", 1)[1])), ("--restore-from", "latest")):
            t0 = time.monotonic()
            res = cli(env, "run", *flags, *extra, timeout=60)
            took = time.monotonic() - t0
            assert res.returncode != 0, res.stderr
            assert took < 5, (took, res.stderr)
            err = res.stderr
            assert f"job {JOB} is already running" in err, err
            assert f"pid {a.proc.pid}" in err and a.job_id in err and a.rest in err and "since " in err, err
            assert f"riskstream cancel {JOB}" in err, err
        assert tree_state(jd) == before
        assert tree_state(ck_dir, skip=ck_dir / a.job_id) == before_ck
        assert a.proc.poll() is None and flink_rest.job_state(a.rest, a.job_id) == "RUNNING"
        assert [r["job_id"] for r in lineage.read(JOB, home) if r["kind"] == "run"] == [a.job_id]

        listing = cli(env, "snapshots", JOB, "--json")
        assert listing.returncode == 0, listing.stderr
        d = orjson.loads(listing.stdout.strip().splitlines()[-1])
        assert [lv["job_id"] for lv in d["live"]] == [a.job_id] and "LIVE RUN" in listing.stdout
        assert any(not s["complete"] for s in d["snapshots"])

        # -- stop A by its job name: no address needed ------------------------------------------------------
        res = cli(env, "cancel", JOB)
        assert res.returncode == 0, res.stderr + a.text()
        sp_a = res.stdout.strip().splitlines()[-1]
        assert "(job FINISHED)" in res.stderr and "`--restore-from latest` resumes from savepoint" in res.stderr, \
            res.stderr
        a.proc.wait(timeout=60)
    finally:
        a.kill()
    ends = {r["job_id"]: r["state"] for r in lineage.read(JOB, home) if r["kind"] == "end"}
    assert ends == {a.job_id: "FINISHED"}
    done, half = lineage.all_snapshots(JOB, home)
    assert len(done) <= 3 and half == [], (done, half)
    assert any(same_path(s.uri, sp_a) for s in done)

    # -- B: without state from the end, killed before its first checkpoint --------------------------------
    b = Run(env, home, tmp_path, flags, ("--starting-offsets", "latest", "--checkpoint-interval-ms", "60000"))
    try:
        b.running(checkpoint=False)
    finally:
        b.kill()
    t0 = time.monotonic()
    res = cli(env, "cancel", b.job_id)
    assert res.returncode != 0 and "is not running: its process" in res.stderr, res.stderr
    res2 = cli(env, "cancel", JOB)
    assert res2.returncode != 0 and f"job {JOB} has no live run" in res2.stderr, res2.stderr
    assert time.monotonic() - t0 < 10, res.stderr
    listing = cli(env, "snapshots", JOB, "--json")
    d = orjson.loads(listing.stdout.strip().splitlines()[-1])
    assert same_path(d["latest"]["path"], sp_a), d["latest"]
    assert b.job_id in d["latest"]["why"] and "committed nothing" in d["latest"]["why"], d["latest"]
    [entry] = [s for s in d["snapshots"] if s["complete"] and same_path(s["path"], sp_a)]
    assert entry["run"] == a.job_id and entry["kind"] == "savepoint" and entry["stopped"] is True, entry
    assert sum(entry["offsets"].values()) == 200, entry  # A's source position: every event it had read
    print(listing.stdout.rsplit("\n", 2)[0], file=sys.stderr)  # the text listing, for the log

    # -- C: latest is A's savepoint; then cancel without a savepoint reports CANCELED ---------------------
    produce_events(kafka_bootstrap, names[0], events[200:])
    c = Run(env, home, tmp_path, flags, ("--restore-from", "latest"))
    try:
        c.running(checkpoint=True)
        assert same_path(c.restored(), sp_a), c.restored()
        wait_decided(kafka_bootstrap, names[1], 300)
        res = cli(env, "cancel", JOB, "--no-savepoint")
        assert res.returncode == 0, res.stderr + c.text()
        assert res.stdout.strip().splitlines()[-1] == "CANCELED", (res.stdout, res.stderr)
        assert f"job {c.job_id} CANCELED (no savepoint)" in res.stderr, res.stderr
        c.proc.wait(timeout=60)
    finally:
        c.kill()
    ends = {r["job_id"]: r["state"] for r in lineage.read(JOB, home) if r["kind"] == "end"}
    assert ends == {a.job_id: "FINISHED", c.job_id: "CANCELED"}
    got = decisions(kafka_bootstrap, names[1])
    assert len(got) == 300 and len({x["event_id"] for x in got}) == 300
