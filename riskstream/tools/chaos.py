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
- ``savepoint-resume``: stop-with-savepoint through the REST API, then a new process resumes from the
  savepoint (the upgrade path).

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
from ..ops.procs import free_port

KINDS = ("task-failure", "kill-process", "broker-restart", "savepoint-resume")


class JobProcess:
    """The decision job in a child process with its own REST port; killable like a crashed host."""

    def __init__(self, flags: dict[str, str], run_dir: Path, env: dict[str, str], log=sys.stderr):
        self.flags, self.run_dir, self.env, self.log = flags, run_dir, env, log
        self.proc: subprocess.Popen | None = None
        self.job_id: str | None = None
        self.rest: str | None = None
        self.starts = 0

    def start(self, restore_from: str | None, deadline_s: float = 180) -> float:
        """Start the job process; return seconds until it runs and completed a first checkpoint."""
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
        self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                     cwd=paths.PROJECT_ROOT, start_new_session=True)
        out.close()
        self.job_id = None
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
            time.sleep(0.2)  # polling interval
        flink_rest.wait_running(self.rest, self.job_id, deadline_s=max(10.0, deadline - time.monotonic()))
        return time.monotonic() - t0

    def _check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"job process exited with {self.proc.returncode}; see "
                               f"{self.run_dir / f'job-{self.starts}.log'}")

    def checkpoints_completed_after(self, epoch_ms: int) -> bool:
        cps = flink_rest.checkpoints(self.rest, self.job_id, retry_s=0)
        done = (cps.get("latest") or {}).get("completed") or {}
        if done.get("trigger_timestamp", 0) <= epoch_ms:
            return False
        job = flink_rest.get(self.rest, f"/jobs/{self.job_id}", timeout_s=2, retry_s=0)
        return {v["status"] for v in job.get("vertices", [])} == {"RUNNING"}

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

    def stop_with_savepoint(self, target_uri: str, deadline_s: float = 120) -> str:
        rid = flink_rest.trigger_savepoint(self.rest, self.job_id, target_uri, stop=True, drain=False)
        deadline = time.monotonic() + deadline_s
        while True:
            try:
                location = flink_rest.savepoint_status(self.rest, self.job_id, rid, "stop-with-savepoint",
                                                       retry_s=0)
            except (OSError, flink_rest.JobNotFound):  # the job finished, its process (and REST server) went away
                if self.proc.poll() is None:
                    time.sleep(0.2)  # polling interval
                    continue
                return self._newest_savepoint(target_uri)
            if location:
                break
            if time.monotonic() > deadline:
                raise TimeoutError("stop-with-savepoint did not complete")
            time.sleep(0.2)  # polling interval
        self.proc.wait(timeout=deadline_s)  # the job finishes, so `riskstream run` returns
        return location

    @staticmethod
    def _newest_savepoint(target_uri: str) -> str:
        from urllib.parse import urlparse

        metas = sorted(Path(urlparse(target_uri).path).glob("savepoint-*/_metadata"), key=lambda m: m.stat().st_mtime)
        if not metas:
            raise RuntimeError(f"the job stopped but no savepoint is in {target_uri}")
        return metas[-1].parent.as_uri()

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                flink_rest.cancel_job(self.rest, self.job_id, retry_s=0)
                self.proc.wait(timeout=30)
            except Exception:
                pass
            self.kill()


class Feeder(threading.Thread):
    """Sends the records at ``rate``; ``pause()`` flushes and holds (for broker restarts)."""

    def __init__(self, bootstrap: str, topic: str, records: list[Labelled], rate: float):
        super().__init__(daemon=True)
        self.bootstrap, self.topic, self.records, self.rate = bootstrap, topic, records, rate
        self.sent = 0
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


def with_retries(records: list[Labelled], share: float, rng: random.Random) -> list[Labelled]:
    """Producer-retry duplicates: some valid records sent again right after (same bytes, same key)."""
    out: list[Labelled] = []
    for r in records:
        out.append(r)
        if r.raw is None and rng.random() < share:
            out.append(r)
    return out


def run_chaos(events: int, failures: int, rate: float = 1000.0, seed: int = 7, parallelism: int = 1,
              checkpoint_interval_ms: int = 1000, kinds: tuple[str, ...] = KINDS, bad_share: float = 0.005,
              dup_share: float = 0.002, port: int | None = None, deadline_s: float = 3600,
              log=sys.stderr, keep: bool = False) -> dict:
    """Run, inject, audit. The run's folder (``<home>/chaos/<run>``) keeps the job logs; its broker data,
    checkpoints and savepoints (about 200 MB for 200k events) are removed after a clean audit unless
    ``keep``."""
    from .audit import verify

    t_start = time.monotonic()
    rng = random.Random(seed)
    run_id = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"
    run_dir = paths.home() / "chaos" / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    kafka_root = run_dir / "kafka"
    lay = broker.up(port=port or free_port(), root=kafka_root, out=log)
    names = (f"chaos.{run_id}.events", f"chaos.{run_id}.decisions", f"chaos.{run_id}.dead-letter")
    topics.ensure_topics(lay.bootstrap, topics.topic_specs(*names, partitions=2))
    chaos_dir = run_dir / "trigger"
    chaos_dir.mkdir()
    flags = {
        "bootstrap_servers": lay.bootstrap, "events_topic": names[0], "decisions_topic": names[1],
        "dead_letter_topic": names[2], "group_id": f"chaos-{run_id}", "job_name": "riskstream-chaos",
        "transactional_id_prefix": f"chaos-{run_id}", "parallelism": str(parallelism),
        "checkpoint_interval_ms": str(checkpoint_interval_ms),
        "checkpoint_dir": (run_dir / "checkpoints").as_uri(), "starting_offsets": "earliest",
        "restart_attempts": "1000",
    }
    env = {**os.environ, "RISKSTREAM_CHAOS_DIR": str(chaos_dir)}
    job = JobProcess(flags, run_dir, env, log)
    savepoints = (run_dir / "savepoints").as_uri()
    plan = [kinds[i % len(kinds)] for i in range(failures)]
    rng.shuffle(plan)
    points = sorted(int(events * (0.1 + 0.8 * (i + rng.random()) / max(failures, 1))) for i in range(failures))
    generated = list(TrafficGenerator(seed=seed, bad_share=bad_share).generate(events + 1000))
    records = with_retries(generated[:events], dup_share, rng)
    # once the feed is over, a task failure needs traffic to trigger it: a few more events of the same stream
    pokes = iter([r for r in generated[events:] if r.raw is None])
    poked = 0
    poker = None
    injected: list[dict] = []
    feeder = None
    try:
        took = job.start(restore_from=None)
        print(f"[chaos] job running after {took:.1f}s; feeding {len(records)} records at {rate:.0f}/s, "
              f"{failures} failures planned", file=log, flush=True)
        feeder = Feeder(lay.bootstrap, names[0], records, rate)
        feeder.start()
        for kind, at in zip(plan, points):
            while feeder.is_alive() and feeder.sent < at * len(records) // events:
                job._check_alive()
                time.sleep(0.1)  # waiting for the feed to reach the injection point
            if feeder.error:
                raise RuntimeError(f"feeder failed: {feeder.error!r}")
            at_record = feeder.sent
            if kind == "broker-restart":
                feeder.pause()  # flushed: nothing in flight when the broker goes
            t0 = time.monotonic()
            if kind == "task-failure":
                (chaos_dir / "fail-task").touch()
                while (chaos_dir / "fail-task").exists():  # claimed by a subtask: it fails now
                    if time.monotonic() - t0 > 120:
                        raise TimeoutError("no subtask claimed the failure trigger within 120 s")
                    if not feeder.is_alive():
                        if poker is None:
                            from kafka import KafkaProducer

                            poker = KafkaProducer(bootstrap_servers=lay.bootstrap, acks="all")
                        rec = next(pokes, None)
                        if rec is None:
                            raise RuntimeError("the failure trigger was not claimed after 1,000 extra events")
                        poker.send(names[0], key=rec.key.encode(), value=orjson.dumps(rec.event)).get(timeout=30)
                        poked += 1
                    time.sleep(0.05)
                fail_ms = int(time.time() * 1000)
                job.wait_checkpoint_after(fail_ms)
            elif kind == "kill-process":
                job.kill()
                job.start(restore_from="latest")
            elif kind == "broker-restart":
                broker.down(root=kafka_root, out=log)
                broker.up(port=lay.port, root=kafka_root, out=log)
                feeder.resume()
                job.wait_checkpoint_after(int(time.time() * 1000))
            else:
                location = job.stop_with_savepoint(savepoints)
                job.start(restore_from=location)
            secs = round(time.monotonic() - t0, 1)
            injected.append({"kind": kind, "at_record": at_record, "recovery_s": secs})
            print(f"[chaos] {len(injected)}/{failures} {kind} at record {at_record}: recovered in {secs}s",
                  file=log, flush=True)
        feeder.join()
        if feeder.error:
            raise RuntimeError(f"feeder failed: {feeder.error!r}")
        print(f"[chaos] all {len(records)} records sent; auditing", file=log, flush=True)
        remaining = max(60.0, deadline_s - (time.monotonic() - t_start))
        rep = verify(lay.bootstrap, *names, wait_s=remaining,
                     progress=lambda m: print(f"[chaos] audit: {m}", file=log, flush=True))
    finally:
        if poker is not None:
            poker.close(timeout=10)
        if feeder is not None and feeder.is_alive():
            feeder.resume()
        job.close()
        broker.down(root=kafka_root, out=log)
    if not keep and rep["missing"] == rep["duplicates"] == rep["unexpected"] == 0:
        import shutil

        for sub in (kafka_root / "data", run_dir / "checkpoints", run_dir / "savepoints"):
            shutil.rmtree(sub, ignore_errors=True)
    by_kind: dict[str, list[float]] = {}
    for f in injected:
        by_kind.setdefault(f["kind"], []).append(f["recovery_s"])
    return {
        "events": events,
        "records_sent": len(records) + poked,
        "parallelism": parallelism,
        "checkpoint_interval_ms": checkpoint_interval_ms,
        "failures_injected": len(injected),
        "failures": injected,
        "recovery_s": {k: {"n": len(v), "median": round(statistics.median(v), 1), "max": max(v)}
                       for k, v in sorted(by_kind.items())},
        "missing": rep["missing"],
        "duplicates": rep["duplicates"],
        "unexpected": rep["unexpected"],
        "audit": rep,
        "seconds": round(time.monotonic() - t_start, 1),
    }


def render(res: dict) -> str:
    from .audit import render as render_audit

    lines = [f"events {res['events']} ({res['records_sent']} records with producer retries), parallelism "
             f"{res['parallelism']}, checkpoint every {res['checkpoint_interval_ms']} ms",
             f"failures injected: {res['failures_injected']}"]
    for k, v in res["recovery_s"].items():
        lines.append(f"  {k:<17} x{v['n']}  recovery median {v['median']} s, max {v['max']} s")
    lines.append(render_audit(res["audit"]))
    lines.append(f"took {res['seconds']} s")
    return "\n".join(lines)
