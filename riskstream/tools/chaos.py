"""`riskstream chaos`: exactly-once under failure, measured.

The job runs in its own process (a MiniCluster, as ``riskstream run`` starts it) against the local
broker, with checkpointing, while a labelled stream flows in (malformed records and producer-retry
duplicates included). At random points the harness injects one of:

- ``task-failure``: a Python operator raises (what a crashed Python worker causes). Flink restarts the
  tasks from the last checkpoint inside the running cluster. In thread mode the Python interpreter is
  embedded in the TaskManager JVM, so there is no separate worker process to kill; a hard interpreter
  crash takes the JVM down, which is the next kind.
- ``kill-process``: SIGKILL to the whole job process (JobManager, TaskManager and Python together), then
  a new process restores from the newest retained checkpoint (``restore_from=latest``).
- ``broker-restart``: the Kafka broker stops and starts again on the same log dirs. The input feed pauses
  meanwhile, as a producer would fail over. The job's sources and sinks fail and recover.
- ``savepoint-resume``: stop-with-savepoint (``riskstream cancel``'s path, which records the savepoint in the
  job's lineage), then a new process with ``--restore-from latest``, which must restore that savepoint.
- ``savepoint-crash``: the same stop-with-savepoint, then the resumed process is SIGKILLed once its tasks run
  and before its first checkpoint; the next ``--restore-from latest`` must restore the savepoint again.
- ``double-kill``: ``kill-process``, and the restarted process is killed again before it completed a
  checkpoint (a second failure during recovery).
- ``broker-kill-commit``: SIGKILL to the broker right after a checkpoint is triggered (the REST checkpoints
  endpoint is polled for it), so the sinks' pre-commit flush or their commit meets a dead broker; then the
  broker starts again on the same log dirs.
- ``broker-stall``: SIGSTOP to the broker until the job says it cannot commit (the job metric
  ``lastCheckpointCompletedTimestamp`` falls behind, and the job log prints the commit watch's warning), at
  least a few seconds, then SIGCONT; both signals must clear once a checkpoint completes again.
- ``kill-both``: SIGKILL to the job process and the broker together; both start again.
- ``second-start``, ``stale-restore``: operator mistakes (the running job started again; an old savepoint
  restored after more was committed): each start must be refused, touching nothing.
- ``kill-in-savepoint``: SIGKILL while a stop-with-savepoint is in flight; ``latest`` never picks it.
- ``poison-record``: a 1.7 MB gzip-compressed record, a tombstone and an empty value: dead letters.

A lost TaskManager cannot happen in a MiniCluster (one process): ``riskstream chaos --cluster``
(:mod:`riskstream.tools.chaos_cluster`) runs the job on a standalone cluster of its own for that.

After the feed ends, ``riskstream verify``'s audit must find 0 missing and 0 duplicates. Recovery time is
measured from the injection until the job is running again and has completed a checkpoint, so that its
Kafka transactions commit again.
"""

from __future__ import annotations

import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson

from .. import paths, topics
from ..generator import Labelled, TrafficGenerator
from ..ops import broker, flink_rest
from ..ops.procs import free_port, group_alive

KINDS = ("task-failure", "kill-process", "broker-restart", "savepoint-resume", "savepoint-crash", "double-kill",
         "broker-kill-commit", "broker-stall", "kill-both", "second-start", "poison-record", "kill-in-savepoint",
         "stale-restore")
BROKER_KINDS = ("broker-restart", "broker-kill-commit", "kill-both")  # the feed pauses (flushed) meanwhile
STALL_MIN_S = 4.0  # a broker stall lasts at least this long, and until the job reports it


class JobProcess:
    """The decision job in a child process with its own REST port; killable like a crashed host."""

    def __init__(self, flags: dict[str, str], run_dir: Path, env: dict[str, str], log=sys.stderr):
        self.flags, self.run_dir, self.env, self.log = flags, run_dir, env, log
        self.proc: subprocess.Popen | None = None
        self.job_id: str | None = None
        self.rest: str | None = None
        self.starts = 0
        self.phases: dict[str, float] = {}
        self.running_at: float | None = None  # monotonic time the tasks last ran again after a start or restart
        self.running_at_ms = 0  # the same, epoch ms (in-cluster restarts only)
        self.fault_ms: int | None = None  # epoch ms of the fault being recovered from (restarts after it count)

    def start(self, restore_from: str | None, deadline_s: float = 180, checkpoint: bool = True) -> float:
        """Start the job process; return seconds until it runs and completed a first checkpoint (without
        ``checkpoint``: until its job id is known). ``phases`` keeps the split: process start to job id
        (``submitted_s``), to every task running (``running_s``), to the first completed checkpoint
        (``checkpoint_s``); ``running_at`` is the monotonic time the tasks ran."""
        t0 = time.monotonic()
        port = free_port()
        self.rest = f"http://127.0.0.1:{port}"
        args = [sys.executable, "-m", "riskstream.cli", "run", "--rest-port", str(port)]
        for k, v in self.flags.items():
            args += [f"--{k.replace('_', '-')}", v]
        if restore_from:
            args += ["--restore-from", restore_from]
        self.starts += 1
        out = open(self.run_dir / f"job-{self.starts}.log", "wb")
        flink_logs = self.run_dir / "flink-logs" / f"job-{self.starts}"  # the MiniCluster's own log
        flink_logs.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                     env={**self.env, "FLINK_LOG_DIR": str(flink_logs)},
                                     cwd=paths.PROJECT_ROOT, start_new_session=True)
        out.close()
        self.job_id = None
        self.phases = {}
        deadline = t0 + deadline_s
        while self.job_id is None:
            self._check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"job process gave no job id within {deadline_s}s; see {out.name}")
            try:
                jobs = flink_rest.jobs_overview(self.rest, retry_s=0)
                running = [j["jid"] for j in jobs if j["state"] in ("CREATED", "INITIALIZING", "RUNNING")]
                self.job_id = running[0] if running else None
            except (OSError, ValueError):
                pass
            time.sleep(0.05 if not checkpoint else 0.2)  # polling interval
        self.phases["submitted_s"] = round(time.monotonic() - t0, 1)
        if not checkpoint:  # the job is submitted (restoring): see kill_before_first_checkpoint
            return time.monotonic() - t0
        flink_rest.wait_running(self.rest, self.job_id, deadline_s=max(10.0, deadline - time.monotonic()),
                                checkpoint=False)
        self.running_at = time.monotonic()
        self.phases["running_s"] = round(self.running_at - t0, 1)
        flink_rest.wait_running(self.rest, self.job_id, deadline_s=max(10.0, deadline - time.monotonic()))
        self.phases["checkpoint_s"] = round(time.monotonic() - t0, 1)
        return time.monotonic() - t0

    @property
    def log_path(self) -> Path:
        return self.run_dir / f"job-{self.starts}.log"

    def restored(self) -> str | None:
        """The external path of the snapshot this run restored (REST checkpoint statistics), if any."""
        cps = flink_rest.checkpoints(self.rest, self.job_id)
        return ((cps.get("latest") or {}).get("restored") or {}).get("external_path")

    def kill_before_first_checkpoint(self, deadline_s: float = 180) -> dict:
        """SIGKILL the process while its first checkpoint is in flight: every task runs (Flink triggers a
        checkpoint only then) and the checkpoint has not completed. Flink creates ``chk-N/`` when it triggers
        checkpoint N and writes its ``_metadata`` last, so the run's checkpoint folder is polled for the
        first ``chk-N/``. Returns the figures (completed checkpoints of the run after the kill: 0 expected)."""
        from ..ops import lineage

        base = lineage.local_path(self.flags["checkpoint_dir"]) / self.job_id
        t_end = time.monotonic() + deadline_s
        while not any(base.glob("chk-*")):
            self._check_alive()
            if time.monotonic() > t_end:
                raise TimeoutError(f"the restarted job triggered no checkpoint within {deadline_s}s; see {self.log_path}")
            time.sleep(0.005)  # tight polling: the kill must land before the checkpoint completes
        self.kill()
        return {"killed_run_checkpoints": self.completed_checkpoints()}

    def completed_checkpoints(self) -> int:
        """Completed checkpoints of this run, from its checkpoint folder (works after a kill)."""
        from ..ops import lineage

        done, _ = lineage.run_checkpoints(self.flags["checkpoint_dir"], self.job_id)
        return len(done)

    def _check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"job process exited with {self.proc.returncode}; see "
                               f"{self.run_dir / f'job-{self.starts}.log'}")

    def checkpoints_completed_after(self, epoch_ms: int) -> bool:
        cps = flink_rest.checkpoints(self.rest, self.job_id, retry_s=0)
        done = (cps.get("latest") or {}).get("completed") or {}
        job = flink_rest.get(self.rest, f"/jobs/{self.job_id}", timeout_s=2, retry_s=0)
        vertices = job.get("vertices", [])
        running = {v["status"] for v in vertices} == {"RUNNING"}
        # tasks redeployed after epoch_ms (a restart inside the cluster) and all running again: note when
        since = max(epoch_ms if self.fault_ms is None else self.fault_ms, self.running_at_ms)
        if running and since < max(v.get("start-time", 0) for v in vertices):
            self.running_at, self.running_at_ms = time.monotonic(), int(time.time() * 1000)
        return running and done.get("trigger_timestamp", 0) > epoch_ms

    def wait_checkpoint_after(self, epoch_ms: int, deadline_s: float = 180) -> None:
        deadline = time.monotonic() + deadline_s
        while True:
            self._check_alive()
            try:
                if self.checkpoints_completed_after(epoch_ms):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"no checkpoint completed within {deadline_s}s after the failure")
            time.sleep(0.2)  # polling interval

    def kill(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=60)
        t_end = time.monotonic() + 30
        while group_alive(self.proc.pid) and time.monotonic() < t_end:  # the JVM child too
            time.sleep(0.05)  # polling interval, under the deadline above

    def stop_with_savepoint(self, deadline_s: float = 120) -> str:
        """Stop with a savepoint as ``riskstream cancel`` does (into the job's savepoints folder, recorded in
        its lineage); return the savepoint's location once the process has exited."""
        from ..ops import submit

        res = submit.stop(self.job_id, rest_url=self.rest, deadline_s=deadline_s)
        self.proc.wait(timeout=deadline_s)  # the job finished, so `riskstream run` returns
        return res.location

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                flink_rest.cancel_job(self.rest, self.job_id, retry_s=0)
                self.proc.wait(timeout=30)
            except Exception:
                pass
            self.kill()


class Feeder(threading.Thread):
    """Sends the records at ``rate``; ``pause()`` flushes and holds (for broker restarts). Setting ``limit``
    ends the feed after that many records (for a feed that must outlast failures of unknown length)."""

    def __init__(self, bootstrap: str, topic: str, records: list[Labelled], rate: float):
        super().__init__(daemon=True)
        self.bootstrap, self.topic, self.records, self.rate = bootstrap, topic, records, rate
        self.sent = 0
        self.limit: int | None = None
        self.error: BaseException | None = None
        self._go = threading.Event()
        self._go.set()
        self._paused = threading.Event()

    def run(self) -> None:
        from kafka import KafkaProducer

        try:
            producer = None
            t0 = time.monotonic()
            for rec in self.records:
                if self.limit is not None and self.sent >= self.limit:
                    break
                if not self._go.is_set():
                    if producer is not None:
                        producer.flush(timeout=60)
                        producer.close(timeout=10)
                        producer = None
                    self._paused.set()
                    self._go.wait()
                    t0 = time.monotonic() - self.sent / self.rate
                if producer is None:
                    producer = KafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=5,
                                             enable_idempotence=True)
                producer.send(self.topic, key=rec.key.encode(),
                              value=rec.raw if rec.raw is not None else orjson.dumps(rec.event))
                self.sent += 1
                ahead = self.sent / self.rate - (time.monotonic() - t0)
                if ahead > 0.002:
                    time.sleep(ahead)  # pacing to the requested rate
            if producer is not None:
                producer.flush(timeout=60)
                producer.close(timeout=10)
        except BaseException as e:  # reported by the harness
            self.error = e
        finally:
            self._paused.set()

    def pause(self) -> None:
        self._paused.clear()
        self._go.clear()
        if self.is_alive():
            self._paused.wait(timeout=120)

    def resume(self) -> None:
        self._go.set()


class Poker:
    """Extra events of the same stream, one at a time, once the feed is over (a failure trigger or a
    checkpoint needs traffic); counted in ``sent`` for the audit."""

    def __init__(self, bootstrap: str, topic: str, records: list[Labelled]):
        self.bootstrap, self.topic, self.records = bootstrap, topic, iter(records)
        self.producer = None
        self.sent = 0

    def send_one(self, exhausted: str) -> None:
        """Send the next event; RuntimeError(``exhausted``) when none is left."""
        if self.producer is None:
            from kafka import KafkaProducer

            self.producer = KafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
        rec = next(self.records, None)
        if rec is None:
            raise RuntimeError(exhausted)
        self.producer.send(self.topic, key=rec.key.encode(), value=orjson.dumps(rec.event)).get(timeout=30)
        self.sent += 1

    def close(self) -> None:
        if self.producer is not None:
            self.producer.close(timeout=10)


def with_retries(records: list[Labelled], share: float, rng: random.Random) -> list[Labelled]:
    """Producer-retry duplicates: some valid records sent again right after (same bytes, same key)."""
    out: list[Labelled] = []
    for r in records:
        out.append(r)
        if r.raw is None and rng.random() < share:
            out.append(r)
    return out


def _kill_broker(lay: broker.StackLayout) -> None:
    """SIGKILL to the broker's process group, as a crashed host would; returns once it is gone."""
    pid = broker.read_pid(lay)
    if pid is None:
        raise RuntimeError("no broker to kill")
    os.killpg(pid, signal.SIGKILL)
    t_end = time.monotonic() + 30
    while group_alive(pid) and time.monotonic() < t_end:
        time.sleep(0.02)  # polling interval, under the deadline above


def _signal_broker(lay: broker.StackLayout, sig: int) -> None:
    pid = broker.read_pid(lay)
    if pid is None:
        raise RuntimeError("no broker to signal")
    os.killpg(pid, sig)


def _await_checkpoint_trigger(job: JobProcess, deadline_s: float = 60) -> dict:
    """Poll the REST checkpoints endpoint until a checkpoint newer than the newest one seen at the call is
    triggered; return what was seen of it (id, status, ms since its trigger)."""
    def newest() -> tuple[int, dict | None]:
        cps = flink_rest.checkpoints(job.rest, job.job_id, timeout_s=2, retry_s=0)
        hist = cps.get("history") or []
        top = max(hist, key=lambda h: h.get("id", 0)) if hist else None
        return (top or {}).get("id", 0), top

    t_end = time.monotonic() + deadline_s
    base = None
    while True:
        job._check_alive()
        try:
            cid, top = newest()
            if base is None:
                base = cid
            elif cid > base:
                return {"checkpoint": cid, "status": top.get("status"),
                        "since_trigger_ms": int(time.time() * 1000 - top.get("trigger_timestamp", 0))}
        except OSError:
            pass
        if time.monotonic() > t_end:
            raise TimeoutError(f"no checkpoint triggered within {deadline_s}s")
        time.sleep(0.01)  # tight polling: the kill must land inside the checkpoint


def _stall(job: JobProcess, lay: broker.StackLayout, log, deadline_s: float = 60) -> dict:
    """SIGSTOP the broker until the job reports that it cannot commit (the metric and the log line), at least
    STALL_MIN_S; SIGCONT; then wait until both clear. Returns the figures; raises if a signal never shows."""
    from ..ops.commitwatch import CLEAR_PREFIX, WARN_PREFIX, threshold_ms, uncommitted_s

    limit = threshold_ms(int(job.flags["checkpoint_interval_ms"])) / 1000
    log_at = job.log_path.stat().st_size
    seen_metric = seen_log = None
    t0 = time.monotonic()
    _signal_broker(lay, signal.SIGSTOP)
    try:
        while True:
            job._check_alive()
            held = time.monotonic() - t0
            if seen_metric is None:
                try:
                    age = uncommitted_s(job.rest, job.job_id)
                except (OSError, ValueError):
                    age = None
                if age is not None and age > limit:
                    seen_metric = {"after_s": round(held, 1), "uncommitted_s": round(age, 1)}
            if seen_log is None and WARN_PREFIX.encode() in _read_from(job.log_path, log_at):
                seen_log = round(held, 1)
            if held >= STALL_MIN_S and seen_metric is not None and seen_log is not None:
                break
            if held > deadline_s:
                raise AssertionError(f"broker stalled {held:.0f}s: the job did not report it (metric "
                                     f"{seen_metric}, log line after {seen_log} s); see {job.log_path}")
            time.sleep(0.2)  # polling interval
    finally:
        _signal_broker(lay, signal.SIGCONT)
    stalled = round(time.monotonic() - t0, 1)
    cont_ms = int(time.time() * 1000)
    job.wait_checkpoint_after(cont_ms)
    t_end = time.monotonic() + 60
    while True:  # both clear: the metric is fresh again and the watch logged the resumption
        try:
            age = uncommitted_s(job.rest, job.job_id)
        except (OSError, ValueError):
            age = None
        cleared_log = CLEAR_PREFIX.encode() in _read_from(job.log_path, log_at)
        if age is not None and age < limit and cleared_log:
            break
        if time.monotonic() > t_end:
            raise AssertionError(f"after the stall the job still reports no commit (uncommitted {age} s, "
                                 f"resumed line {cleared_log}); see {job.log_path}")
        time.sleep(0.2)  # polling interval
    print(f"[chaos] broker stalled {stalled} s; job reported it: metric after {seen_metric['after_s']} s "
          f"(uncommitted {seen_metric['uncommitted_s']} s), log line after {seen_log} s; both cleared",
          file=log, flush=True)
    return {"stalled_s": stalled, "metric": seen_metric, "log_after_s": seen_log}


def _second_start(job: JobProcess, run_dir: Path, deadline_s: float = 60) -> dict:
    """An operator mistake: the same job started again while it runs. The second ``riskstream run`` must
    be refused quickly and touch nothing; the live job must keep completing checkpoints."""
    t0 = time.monotonic()
    args = [sys.executable, "-m", "riskstream.cli", "run", "--rest-port", str(free_port())]
    for k, v in job.flags.items():
        args += [f"--{k.replace('_', '-')}", v]
    out_path = run_dir / f"second-start-{job.starts}.log"
    with open(out_path, "wb") as out:
        proc = subprocess.run(args + ["--restore-from", "latest"], stdout=out, stderr=subprocess.STDOUT,
                              env=job.env, cwd=paths.PROJECT_ROOT, timeout=deadline_s)
    refused_s = round(time.monotonic() - t0, 1)
    text = out_path.read_text(errors="replace")
    if proc.returncode == 0 or not ("already running" in text or "refus" in text.lower()):
        raise AssertionError(f"a second start of the running job was not refused (exit {proc.returncode}); "
                             f"see {out_path}")
    job._check_alive()
    job.wait_checkpoint_after(int(time.time() * 1000))
    return {"refused_s": refused_s}


def _start_refused(job: JobProcess, run_dir: Path, restore_from: str, name: str, deadline_s: float = 120) -> dict:
    """A ``riskstream run`` of the job's flags restoring ``restore_from`` must exit non-zero at once, having
    refused to go back in time."""
    t0 = time.monotonic()
    args = [sys.executable, "-m", "riskstream.cli", "run", "--rest-port", str(free_port()),
            "--restore-from", restore_from]
    for k, v in job.flags.items():
        args += [f"--{k.replace('_', '-')}", v]
    out_path = run_dir / f"{name}-{job.starts}.log"
    with open(out_path, "wb") as out:
        proc = subprocess.run(args, stdout=out, stderr=subprocess.STDOUT, env=job.env, cwd=paths.PROJECT_ROOT,
                              timeout=deadline_s)
    text = out_path.read_text(errors="replace")
    if proc.returncode == 0 or "back in time" not in text:
        raise AssertionError(f"a start from the stale snapshot {restore_from} was not refused (exit "
                             f"{proc.returncode}); see {out_path}")
    return {"refused_s": round(time.monotonic() - t0, 1)}


def _poison(bootstrap: str, topic: str) -> dict:
    """Records no producer should send but some do: a gzip-compressed record far above the broker's 1 MiB
    (its compressed batch passes), a tombstone (null value) and an empty value. Each must end as one dead
    letter (bounded, ``null_value``, ``invalid_json``) with the job running on; the audit counts them."""
    from kafka import KafkaProducer

    rng = random.Random(21)
    head = b'{"event_id":"chaos-big","user_id":"u-big","extras":{"blob":"'
    big = head + bytes(rng.choice(b"abcdefgh") for _ in range(1_700_000 - len(head) - 3)) + b'"}}'
    p = KafkaProducer(bootstrap_servers=bootstrap, acks="all", compression_type="gzip",
                      max_request_size=4 * 1024 * 1024)
    try:
        for key, value in ((b"u-big", big), (b"u-gone", None), (b"u-empty", b"")):
            p.send(topic, key=key, value=value).get(timeout=60)
    finally:
        p.close(timeout=10)
    return {"poison_records": 3, "largest_bytes": len(big)}


def _committed_past(job: JobProcess, epoch_ms: int) -> bool:
    """Whether the job has read records since ``epoch_ms`` and a checkpoint committed them (the source's
    numRecordsIn grew between two checkpoints after it)."""
    before = _records_in(job)
    job.wait_checkpoint_after(int(time.time() * 1000))
    return _records_in(job) > before > 0


def _records_in(job: JobProcess) -> float:
    """Records the events source has emitted so far (the REST job details' per-vertex counts). A momentary
    500 from the details (flink_rest.JobDetailsUnavailable, a loaded machine) is asked again for 30 s."""
    t_end = time.monotonic() + 30
    while True:
        try:
            details = flink_rest.job_details(job.rest, job.job_id)
            break
        except flink_rest.JobDetailsUnavailable:
            if time.monotonic() > t_end:
                raise
            time.sleep(flink_rest.POLL_S)  # polling interval, under the deadline above
    return sum(float((v.get("metrics") or {}).get("write-records", 0) or 0)
               for v in details.get("vertices", []) if "kafka-events" in v.get("name", ""))


def _read_from(path: Path, offset: int) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read()
    except OSError:
        return b""


def _expect_restored(job: JobProcess, savepoint: str) -> str:
    """The run must have restored ``savepoint`` (REST checkpoint statistics)."""
    from ..ops import lineage

    got = job.restored()
    want = lineage.local_path(savepoint)
    have = lineage.local_path(got) if got else None
    if have is None or want is None or have.resolve() != want.resolve():
        raise AssertionError(f"--restore-from latest restored {got!r}, not the savepoint {savepoint}; see "
                             f"{job.log_path}")
    return got


def start_run(port: int | None, partitions: int, log):
    """A chaos run's id, folder (``<home>/chaos/<run>``), its broker's folder, the broker (started) and its
    three topics (events, decisions, dead letters) with ``partitions`` partitions each."""
    run_id = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"
    run_dir = paths.home() / "chaos" / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    kafka_root = run_dir / "kafka"
    lay = broker.up(port=port or free_port(), root=kafka_root, out=log)
    names = (f"chaos.{run_id}.events", f"chaos.{run_id}.decisions", f"chaos.{run_id}.dead-letter")
    topics.ensure_topics(lay.bootstrap, topics.topic_specs(*names, partitions=partitions))
    return run_id, run_dir, kafka_root, lay, names


def run_chaos(events: int, failures: int, rate: float = 1000.0, seed: int = 7, parallelism: int = 1,
              checkpoint_interval_ms: int = 1000, kinds: tuple[str, ...] = KINDS, bad_share: float = 0.005,
              dup_share: float = 0.002, port: int | None = None, deadline_s: float = 3600,
              log=sys.stderr, keep: bool = False) -> dict:
    """Run, inject, audit. The run's folder (``<home>/chaos/<run>``) keeps the job logs and the job's lineage;
    its broker data and checkpoints (about 200 MB for 200k events) and the job's folder
    (``<home>/jobs/chaos-<run>``: savepoints, lineage) are removed after a clean audit unless ``keep``."""
    from .audit import verify
    from ..ops import lineage

    t_start = time.monotonic()
    rng = random.Random(seed)
    run_id, run_dir, kafka_root, lay, names = start_run(port, 2, log)
    chaos_dir = run_dir / "trigger"
    chaos_dir.mkdir()
    job_name = f"chaos-{run_id}"  # its own lineage and savepoints folder: jobs/<job_name>/
    flags = {
        "bootstrap_servers": lay.bootstrap, "events_topic": names[0], "decisions_topic": names[1],
        "dead_letter_topic": names[2], "group_id": f"chaos-{run_id}", "job_name": job_name,
        "transactional_id_prefix": f"chaos-{run_id}", "parallelism": str(parallelism),
        "checkpoint_interval_ms": str(checkpoint_interval_ms),
        "checkpoint_dir": (run_dir / "checkpoints").as_uri(), "starting_offsets": "earliest",
        "restart_attempts": "1000",
    }
    env = {**os.environ, "RISKSTREAM_CHAOS_DIR": str(chaos_dir)}
    job = JobProcess(flags, run_dir, env, log)
    plan, points = plan_failures(kinds, failures, events, rng)
    generated = list(TrafficGenerator(seed=seed, bad_share=bad_share).generate(events + 1000))
    records = with_retries(generated[:events], dup_share, rng)
    # once the feed is over, a task failure needs traffic to trigger it: a few more events of the same stream
    poker = Poker(lay.bootstrap, names[0], [r for r in generated[events:] if r.raw is None])
    injected: list[dict] = []
    feeder = None
    rep = None
    try:
        took = job.start(restore_from=None)
        print(f"[chaos] job running after {took:.1f}s; feeding {len(records)} records at {rate:.0f}/s, "
              f"{failures} failures planned ({', '.join(plan)}), parallelism {parallelism}", file=log, flush=True)
        feeder = Feeder(lay.bootstrap, names[0], records, rate)
        feeder.start()
        for kind, at in zip(plan, points):
            while feeder.is_alive() and feeder.sent < at * len(records) // events:
                job._check_alive()
                time.sleep(0.1)  # waiting for the feed to reach the injection point
            if feeder.error:
                raise RuntimeError(f"feeder failed: {feeder.error!r}")
            at_record = feeder.sent
            if kind in BROKER_KINDS:
                feeder.pause()  # flushed: nothing of the feed in flight when the broker goes
            t0 = time.monotonic()
            job.fault_ms = int(time.time() * 1000)
            starts_before = job.starts
            note: dict = {}
            if kind == "task-failure":
                (chaos_dir / "fail-task").touch()
                while (chaos_dir / "fail-task").exists():  # claimed by a subtask: it fails now
                    if time.monotonic() - t0 > 120:
                        raise TimeoutError("no subtask claimed the failure trigger within 120 s")
                    if not feeder.is_alive():
                        poker.send_one("the failure trigger was not claimed after 1,000 extra events")
                    time.sleep(0.05)
                fail_ms = int(time.time() * 1000)
                job.wait_checkpoint_after(fail_ms)
            elif kind == "kill-process":
                job.kill()
                job.start(restore_from="latest")
            elif kind == "double-kill":
                job.kill()
                job.start(restore_from="latest", checkpoint=False)
                note.update(job.kill_before_first_checkpoint())  # during recovery
                job.start(restore_from="latest")
            elif kind == "broker-restart":
                broker.down(root=kafka_root, out=log)
                broker.up(port=lay.port, root=kafka_root, out=log)
                feeder.resume()
                job.wait_checkpoint_after(int(time.time() * 1000))
            elif kind == "broker-kill-commit":
                note.update(_await_checkpoint_trigger(job))
                _kill_broker(lay)
                t0 = time.monotonic()
                job.fault_ms = int(time.time() * 1000)
                tb = time.monotonic()
                broker.up(port=lay.port, root=kafka_root, out=log)
                note["broker_up_s"] = round(time.monotonic() - tb, 1)
                feeder.resume()
                job.wait_checkpoint_after(int(time.time() * 1000))
            elif kind == "broker-stall":
                note.update(_stall(job, lay, log))
            elif kind == "kill-both":
                _kill_broker(lay)
                job.kill()
                tb = time.monotonic()
                broker.up(port=lay.port, root=kafka_root, out=log)
                note["broker_up_s"] = round(time.monotonic() - tb, 1)
                feeder.resume()
                job.start(restore_from="latest")
            elif kind == "second-start":
                note.update(_second_start(job, run_dir))
            elif kind == "poison-record":
                note.update(_poison(lay.bootstrap, names[0]))
                job.wait_checkpoint_after(int(time.time() * 1000))
                job._check_alive()
            elif kind == "stale-restore":
                # an operator restores an old savepoint after the job committed more: refused, then latest
                from ..ops import submit

                old = submit.savepoint(job.job_id, jobmanager=job.rest.split("//", 1)[1], deadline_s=120).location
                mark = int(time.time() * 1000)
                job.wait_checkpoint_after(mark)
                while not _committed_past(job, mark):  # decisions committed after the savepoint
                    if not feeder.is_alive():
                        poker.send_one("no traffic left to move the job past its savepoint")
                    job.wait_checkpoint_after(int(time.time() * 1000))
                job.kill()
                note.update(_start_refused(job, run_dir, old, "stale-restore"))
                note["savepoint"] = old.rsplit("/", 1)[-1]
                job.start(restore_from="latest")
            elif kind == "kill-in-savepoint":
                # SIGKILL while a stop-with-savepoint is in flight: the half-written savepoint is never latest
                rid = flink_rest.trigger_savepoint(job.rest, job.job_id, stop=True)
                note["savepoint_request"] = rid[:8]
                job.kill()
                job.start(restore_from="latest")
            elif kind in ("savepoint-resume", "savepoint-crash"):
                location = job.stop_with_savepoint()
                note["savepoint"] = location.rsplit("/", 1)[-1]
                if kind == "savepoint-crash":
                    job.start(restore_from="latest", checkpoint=False)
                    note.update(job.kill_before_first_checkpoint())
                    if location.rsplit("/", 1)[-1] not in _read_from(job.log_path, 0).decode(errors="replace"):
                        raise AssertionError(f"the resumed run did not restore {location}; see {job.log_path}")
                job.start(restore_from="latest")
                if not note.get("killed_run_checkpoints"):  # else its checkpoint is newer: restored instead
                    _expect_restored(job, location)
            else:
                raise ValueError(f"unknown failure kind {kind!r}")
            secs = round(time.monotonic() - t0, 1)
            # to running: the tasks run again (null: they never stopped); the new process's own phases
            running = round(job.running_at - t0, 1) if job.running_at and job.running_at > t0 else None
            if job.starts > starts_before:
                note["start_phases"] = dict(job.phases)
            injected.append({"kind": kind, "at_record": at_record, "running_s": running, "recovery_s": secs, **note})
            print(f"[chaos] {len(injected)}/{failures} {kind} at record {at_record}: recovered in {secs}s"
                  + (f" {note}" if note else ""), file=log, flush=True)
        feeder.join()
        if feeder.error:
            raise RuntimeError(f"feeder failed: {feeder.error!r}")
        print(f"[chaos] all {len(records)} records sent; auditing", file=log, flush=True)
        remaining = max(60.0, deadline_s - (time.monotonic() - t_start))
        rep = verify(lay.bootstrap, *names, wait_s=remaining,
                     progress=lambda m: print(f"[chaos] audit: {m}", file=log, flush=True))
    finally:
        poker.close()
        if feeder is not None and feeder.is_alive():
            feeder.resume()
        job.close()
        try:
            _signal_broker(lay, signal.SIGCONT)  # never leave a stalled broker behind
        except (RuntimeError, ProcessLookupError):
            pass
        broker.down(root=kafka_root, out=log)
        jd = lineage.job_dir(job_name)
        if lineage.lineage_path(job_name).exists():
            import shutil

            shutil.copy2(lineage.lineage_path(job_name), run_dir / "lineage.jsonl")
    pending = sum((rep.get("pending_commit") or {}).values())
    if not keep and rep["missing"] == rep["duplicates"] == rep["unexpected"] == pending == 0:
        import shutil

        for sub in (kafka_root / "data", run_dir / "checkpoints", jd):
            shutil.rmtree(sub, ignore_errors=True)
    return summary(events, len(records) + poker.sent + sum(f.get("poison_records", 0) for f in injected),
                   parallelism, checkpoint_interval_ms, injected, rep, t_start)


def plan_failures(kinds: tuple[str, ...], failures: int, events: int,
                  rng: random.Random) -> tuple[list[str], list[int]]:
    """The kinds in turn, shuffled, and the event counts to inject them at (spread over 10-90 % of the feed)."""
    plan = [kinds[i % len(kinds)] for i in range(failures)]
    rng.shuffle(plan)
    points = sorted(int(events * (0.1 + 0.8 * (i + rng.random()) / max(failures, 1))) for i in range(failures))
    return plan, points


def summary(events: int, records_sent: int, parallelism: int, checkpoint_interval_ms: int, injected: list[dict],
            rep: dict, t_start: float, **extra) -> dict:
    """The run's result: the failures with their recovery times per kind, and the audit."""
    by_kind: dict[str, list[float]] = {}
    to_running: dict[str, list[float]] = {}
    for f in injected:
        by_kind.setdefault(f["kind"], []).append(f["recovery_s"])
        if f["running_s"] is not None:
            to_running.setdefault(f["kind"], []).append(f["running_s"])
    return {
        "events": events,
        "records_sent": records_sent,
        "parallelism": parallelism,
        "checkpoint_interval_ms": checkpoint_interval_ms,
        **extra,
        "failures_injected": len(injected),
        "failures": injected,
        # per kind: seconds from the fault to a completed checkpoint (the job commits again) and, where the
        # tasks stopped, to every task running again
        "recovery_s": {k: {"n": len(v), "median": round(statistics.median(v), 1), "max": max(v),
                           "running_median": (round(statistics.median(to_running[k]), 1) if k in to_running
                                              else None)}
                       for k, v in sorted(by_kind.items())},
        "missing": rep["missing"],
        "duplicates": rep["duplicates"],
        "unexpected": rep["unexpected"],
        "pending_commit": rep.get("pending_commit"),
        "audit": rep,
        "seconds": round(time.monotonic() - t_start, 1),
    }


def render(res: dict) -> str:
    from .audit import render as render_audit

    lines = [f"events {res['events']} ({res['records_sent']} records with producer retries), parallelism "
             f"{res['parallelism']}, checkpoint every {res['checkpoint_interval_ms']} ms"
             + (f", on a standalone cluster of {res['taskmanagers']} TaskManagers" if res.get("taskmanagers") else ""),
             f"failures injected: {res['failures_injected']}"]
    for k, v in res["recovery_s"].items():
        run = (f"running again after {v['running_median']} s, " if v.get("running_median") is not None
               else "tasks never stopped, ")
        lines.append(f"  {k:<18} x{v['n']}  {run}checkpoint completed after {v['median']} s (max {v['max']} s)")
    lines.append(render_audit(res["audit"]))
    lines.append(f"took {res['seconds']} s")
    return "\n".join(lines)
