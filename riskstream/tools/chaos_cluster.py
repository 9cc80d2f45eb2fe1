"""`riskstream chaos --cluster`: a TaskManager of a standalone Flink cluster lost while traffic flows.

The MiniCluster kinds of :mod:`riskstream.tools.chaos` run JobManager and TaskManager in one process, so a
lost TaskManager cannot happen there. Here the job has its own life cycle: the harness starts its own
broker and its own standalone cluster (``riskstream cluster up --taskmanagers N --slots 1``, N = the
parallelism, 2 by default, so every TaskManager runs tasks of the job and none has a free slot), submits
the job (``riskstream submit``'s path), feeds a labelled stream (malformed records and producer retries
included), SIGKILLs TaskManagers at random points of its first ``events`` records (the feed goes on until
every failure has recovered, then a tenth more, so every kill lands mid-traffic) and audits every record
(``riskstream verify``: 0 missing, 0 duplicates, nothing unexpected, no transaction left open); then the
job is cancelled and the cluster and broker stopped. Kinds:

- ``taskmanager-kill``: SIGKILL to a TaskManager's JVM and everything it started (its Python workers), not
  to its supervisor: a crashed TaskManager process. The supervisor loop of ``cluster up`` starts it again
  (as systemd or a pod's restart policy would).
- ``taskmanager-loss``: SIGKILL to the TaskManager's whole process group, supervisor included: a lost
  machine. Nothing restarts it; ``riskstream cluster add-taskmanager`` starts a replacement at once (as an
  orchestrator would start a new pod).

Either way the job fails over: it restores its last completed checkpoint on the TaskManager that came back
and the ones left. Measured per failure: the new TaskManager registered (``back_s``), every task running
again (``running_s``), a checkpoint completed after the restore (``recovery_s``, so the sinks commit
again), the checkpoint restored and the job's restarts.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import sys
import time
from pathlib import Path

from ..generator import TrafficGenerator
from ..ops import broker, cluster, flink_rest, submit
from ..ops.procs import group_alive, group_members, pid_alive
from .chaos import Feeder, plan_failures, start_run, summary, with_retries

CLUSTER_KINDS = ("taskmanager-kill", "taskmanager-loss")


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _until(what: str, check, deadline_s: float, poll_s: float = 0.2):
    """Poll ``check`` until it returns something true; TimeoutError naming ``what`` at the deadline."""
    t0 = time.monotonic()
    while True:
        try:
            got = check()
        except (OSError, ValueError, flink_rest.FlinkError):
            got = None
        if got:
            return got
        if time.monotonic() - t0 > deadline_s:
            raise TimeoutError(f"{what}: not within {deadline_s:.0f}s")
        time.sleep(poll_s)  # polling interval


class ClusterJob:
    """The decision job on a standalone cluster of its own under ``root``: up, submit, kill, recover, close."""

    def __init__(self, flags: dict[str, str], root: Path, log=sys.stderr):
        self.flags, self.root, self.log = flags, root, log
        self.lay: cluster.ClusterLayout | None = None
        self.job_id: str | None = None
        self.phases: dict[str, float] = {}

    @property
    def rest(self) -> str:
        return self.lay.rest_url

    def up(self, taskmanagers: int, deadline_s: float = 180) -> None:
        t0 = time.monotonic()
        self.lay = cluster.up(slots=1, root=self.root, deadline_s=deadline_s, out=self.log,
                              settings=cluster.ClusterSettings(taskmanagers=taskmanagers))
        self.phases["cluster_up_s"] = round(time.monotonic() - t0, 1)

    def submit(self, deadline_s: float = 240) -> None:
        t0 = time.monotonic()
        res = submit.submit(settings=self.flags, root=self.root, job_name=self.flags["job_name"])
        self.job_id = res.job_id
        self.phases["submitted_s"] = round(time.monotonic() - t0, 1)
        flink_rest.wait_running(self.rest, self.job_id, deadline_s=deadline_s)
        self.phases["checkpoint_s"] = round(time.monotonic() - t0, 1)

    def taskmanagers(self) -> list[str]:
        """The names of the TaskManagers whose supervisor (process group) is alive."""
        return [n for n, pid in cluster.pids(self.root).items() if n != "jobmanager" and pid]

    def check_running(self) -> None:
        """Raise if the job ended (a chaos run never lets it end on its own)."""
        state = flink_rest.job_state(self.rest, self.job_id, retry_s=5)
        if state in flink_rest.TERMINAL_JOB_STATES:
            raise RuntimeError(f"the job is {state}:\n{flink_rest.job_error(self.rest, self.job_id)}")

    def _latest(self, what: str) -> dict:
        return (flink_rest.checkpoints(self.rest, self.job_id, retry_s=0).get("latest") or {}).get(what) or {}

    def _restarts(self) -> int:
        return int(float(flink_rest.get(self.rest, f"/jobs/{self.job_id}/metrics?get=numRestarts")[0]["value"]))

    def fail(self, kind: str, name: str, deadline_s: float = 240) -> dict:
        """SIGKILL TaskManager ``name`` as ``kind`` says, wait until the job recovered; return the figures."""
        sup = cluster.pids(self.root)[name]
        if not sup:
            raise RuntimeError(f"TaskManager {name} is not running")
        known = cluster.taskmanager_ids(self.rest)
        before = self._latest("completed").get("id", 0)
        restarts = self._restarts()
        killed_ms = int(time.time() * 1000)
        t0 = time.monotonic()
        note: dict = {"taskmanager": name}
        if kind == "taskmanager-kill":
            # the JVM first, then what else runs under the supervisor (the start script, Python workers)
            victims = sorted((p for p in group_members(sup) if p != sup), key=lambda p: _comm(p) != "java")
            if not victims or _comm(victims[0]) != "java":
                raise RuntimeError(f"no TaskManager JVM under the supervisor of {name} (pid {sup})")
            for p in victims:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            note["killed"] = len(victims)
            _until(f"{name}'s killed processes gone", lambda: not any(pid_alive(p) for p in victims), 30, 0.05)
        elif kind == "taskmanager-loss":
            os.killpg(sup, signal.SIGKILL)
            _until(f"{name}'s process group gone", lambda: not group_alive(sup), 30, 0.05)
            back, pid = cluster.add_taskmanager(root=self.root, deadline_s=deadline_s, out=self.log)
            if back != name:
                raise AssertionError(f"the replacement of {name} took the name {back}")
            note["replacement_pid"] = pid
        else:
            raise ValueError(f"unknown cluster failure kind {kind!r}; choose from {', '.join(CLUSTER_KINDS)}")
        _until(f"a new TaskManager registered after {name} was killed",
               lambda: cluster.taskmanager_ids(self.rest) - known, deadline_s)
        note["back_s"] = round(time.monotonic() - t0, 1)
        if kind == "taskmanager-kill" and cluster.pids(self.root)[name] != sup:
            raise AssertionError(f"{name}'s supervisor {sup} did not start it again")

        def restored():
            r = self._latest("restored")
            return r if r.get("restore_timestamp", 0) >= killed_ms else None

        r = _until("the job restored a checkpoint after the kill", restored, deadline_s)
        if r.get("is_savepoint") or r.get("id", 0) < before:
            raise AssertionError(f"after the kill the job restored {r}, not its last checkpoint ({before})")
        flink_rest.wait_running(self.rest, self.job_id, deadline_s=deadline_s, checkpoint=False)
        running_s = round(time.monotonic() - t0, 1)
        _until("a checkpoint completed after the restore", lambda: self._latest("completed").get("id", 0) > r["id"],
               deadline_s)
        recovery_s = round(time.monotonic() - t0, 1)
        free = (flink_rest.overview(self.rest) or {}).get("slots-available")
        # the job's numRestarts comes from the JobManager's metric cache, which can lag the restart it
        # counts by seconds: read it until it moved, for up to 15 s (the restore above is the evidence)
        try:
            _until("numRestarts counted the restart", lambda: self._restarts() > restarts, 15)
        except TimeoutError:
            pass
        note.update(running_s=running_s, recovery_s=recovery_s, restored_checkpoint=r["id"],
                    restarts=self._restarts() - restarts, slots_available=free)
        return note

    def close(self) -> None:
        if self.lay is None:
            return
        try:
            if self.job_id and flink_rest.job_state(self.rest, self.job_id, retry_s=0) not in \
                    flink_rest.TERMINAL_JOB_STATES:
                flink_rest.cancel_job(self.rest, self.job_id, retry_s=0)
                flink_rest.wait_for_state(self.rest, self.job_id, flink_rest.TERMINAL_JOB_STATES, deadline_s=60)
        except (OSError, ValueError, flink_rest.FlinkError) as e:
            print(f"[chaos] cancel of job {self.job_id} failed ({e}); stopping the cluster", file=self.log)
        finally:
            cluster.down(root=self.root, out=self.log)


def run_cluster_chaos(events: int, failures: int, rate: float = 200.0, seed: int = 7, parallelism: int = 2,
                      checkpoint_interval_ms: int = 1000, kinds: tuple[str, ...] = CLUSTER_KINDS,
                      bad_share: float = 0.005, dup_share: float = 0.002, port: int | None = None,
                      deadline_s: float = 3600, log=sys.stderr, keep: bool = False) -> dict:
    """Broker and cluster up, submit, feed, inject, audit, everything down. The run's folder
    (``<home>/chaos/<run>``) keeps the cluster's logs and the job's lineage; a clean audit removes the rest
    (broker data, checkpoints, the cluster's home, the job's folder) unless ``keep``. The result has the
    shape of :func:`riskstream.tools.chaos.run_chaos`'s (``chaos.render`` prints it)."""
    from ..ops import lineage
    from .audit import verify

    unknown = set(kinds) - set(CLUSTER_KINDS)
    if unknown:
        raise ValueError(f"kinds {sorted(unknown)} are not cluster kinds ({', '.join(CLUSTER_KINDS)})")
    if parallelism < 2:
        raise ValueError("a cluster chaos run needs parallelism 2 or more: one TaskManager per subtask, so that "
                         "a lost one takes tasks with it while another keeps running")
    t_start = time.monotonic()
    rng = random.Random(seed)
    run_id, run_dir, kafka_root, lay, names = start_run(port, parallelism, log)
    job_name = f"chaos-{run_id}"
    flags = {
        "bootstrap_servers": lay.bootstrap, "events_topic": names[0], "decisions_topic": names[1],
        "dead_letter_topic": names[2], "control_topic": "", "labels_topic": "", "group_id": job_name,
        "job_name": job_name, "transactional_id_prefix": job_name, "parallelism": str(parallelism),
        "checkpoint_interval_ms": str(checkpoint_interval_ms),
        "checkpoint_dir": (run_dir / "checkpoints").as_uri(), "starting_offsets": "earliest",
        "restart_attempts": "1000",
    }
    job = ClusterJob(flags, run_dir / "flink-cluster", log)
    plan, points = plan_failures(kinds, failures, events, rng)
    # the feed runs until every failure has been injected and recovered, then a tenth more of ``events``:
    # each kill lands mid-traffic however long the recoveries take (up to four times ``events`` records)
    pool = with_retries(list(TrafficGenerator(seed=seed, bad_share=bad_share).generate(4 * events)), dup_share, rng)
    injected: list[dict] = []
    feeder = None
    rep = None
    try:
        job.up(taskmanagers=parallelism)
        job.submit()
        print(f"[chaos] job {job.job_id} running on the cluster ({job.phases}); feeding {events}+ records "
              f"at {rate:.0f}/s, {failures} failures planned ({', '.join(plan)}), parallelism {parallelism}",
              file=log, flush=True)
        feeder = Feeder(lay.bootstrap, names[0], pool, rate)
        feeder.start()
        for kind, at in zip(plan, points):
            while feeder.is_alive() and feeder.sent < at:
                time.sleep(0.1)  # waiting for the feed to reach the injection point
            if feeder.error:
                raise RuntimeError(f"feeder failed: {feeder.error!r}")
            job.check_running()
            at_record = feeder.sent
            victim = rng.choice(sorted(job.taskmanagers()))
            feed_running = feeder.is_alive()
            note = job.fail(kind, victim)
            injected.append({"kind": kind, "at_record": at_record, "feed_running": feed_running, **note})
            print(f"[chaos] {len(injected)}/{failures} {kind} of {victim} at record {at_record}: new TaskManager "
                  f"after {note['back_s']}s, tasks running after {note['running_s']}s, checkpoint completed after "
                  f"{note['recovery_s']}s (restored checkpoint {note['restored_checkpoint']}, "
                  f"{note['restarts']} restarts)", file=log, flush=True)
        feeder.limit = max(events, feeder.sent + events // 10)
        feeder.join()
        if feeder.error:
            raise RuntimeError(f"feeder failed: {feeder.error!r}")
        print(f"[chaos] all {feeder.sent} records sent; auditing", file=log, flush=True)
        rep = verify(lay.bootstrap, *names, wait_s=max(60.0, deadline_s - (time.monotonic() - t_start)),
                     progress=lambda m: print(f"[chaos] audit: {m}", file=log, flush=True))
        job.check_running()
    except BaseException:
        if job.lay is not None:
            print(cluster.log_tail(job.root, lines=40), file=log)
        raise
    finally:
        if feeder is not None and feeder.is_alive():
            feeder.resume()
        job.close()
        broker.down(root=kafka_root, out=log)
        if lineage.lineage_path(job_name).exists():
            shutil.copy2(lineage.lineage_path(job_name), run_dir / "lineage.jsonl")
    pending = sum((rep.get("pending_commit") or {}).values())
    if not keep and rep["missing"] == rep["duplicates"] == rep["unexpected"] == pending == 0:
        for sub in (kafka_root / "data", run_dir / "checkpoints", lineage.job_dir(job_name)):
            shutil.rmtree(sub, ignore_errors=True)
        for sub in job.root.iterdir():  # the cluster's home: only its logs stay
            if sub.name != "log":
                shutil.rmtree(sub, ignore_errors=True) if sub.is_dir() and not sub.is_symlink() else sub.unlink()
    return summary(events, feeder.sent, parallelism, checkpoint_interval_ms, injected, rep, t_start,
                   taskmanagers=parallelism, start_phases=job.phases)
