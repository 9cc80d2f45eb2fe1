"""One job, one run: a start of a job whose run is alive is refused before anything is touched.

Two runs of one job (one ``job_name``) would share its folder, its lineage, its transactional ids and its
consumer group: the second one's retention would delete the live run's snapshots, its lineage line would
become what ``--restore-from latest`` reads, and the two would fence each other's transactions. So every
start claims the job first (:func:`claim`), before its preflight, retention, lineage entry or REST port:

- **The lock.** ``<home>/jobs/<job_name>/run.lock`` is locked with ``fcntl.flock(LOCK_EX | LOCK_NB)`` by the
  process that starts the run. A ``riskstream run`` process (its MiniCluster lives inside it) holds the lock
  until its job has ended and its stop bookkeeping (end record, retention) is done; the kernel drops the
  lock when the process dies, also on SIGKILL, so a dead run never blocks a start. Two starts at the same
  moment cannot both get it: the second is refused at once. The holder writes who it is into the file
  (pid, since, what); a refused start only opens the file and reads it (no write: the job folder is
  unchanged, mtimes included). The file is never deleted (deleting it would let two processes lock two
  different files).
- **The lineage.** A job submitted to a cluster (``riskstream submit``) outlives the client that started
  it, so nobody holds its lock. Once the lock is taken, every run the lineage records without an end record
  is checked: a run of this host whose process is alive (pid and its start time, so a reused pid does not
  count), or whose Flink job the recorded REST address reports in a non-terminal state, is alive and the
  start is refused. A process that is gone, a job the JobManager does not know (any more), and a REST
  address that nothing answers are stale records and never block (the last one is printed: a cluster that
  is unreachable from here cannot say whether its job runs).
- ``riskstream submit`` claims the job in its own process (refused in about a second, before ``flink run``
  starts), holds the lock while ``flink run`` runs, and hands the job's client a token
  (``RISKSTREAM_RUN_TOKEN``): the client finds the lock held under that token and proceeds under it.
- A job started on an in-process MiniCluster without waiting (``decision_job.run(wait=False)``: the demo,
  tests) holds the lock until it is submitted; later starts ask its recorded REST address (runner
  ``inproc``), since its process may outlive the job. Without a REST address it cannot be checked.

A refusal (:class:`RunAlive`) names the run that holds the job (pid, Flink job id, REST address, since when)
and how to stop it (``riskstream cancel <job_name>``).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import secrets
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import lineage
from .errors import StartupError
from .procs import pid_alive

LOCK_FILE = "run.lock"
TOKEN_ENV = "RISKSTREAM_RUN_TOKEN"  # a `riskstream submit` parent's claim, inherited by the job's client
ALIVE_STATES_ARE_NOT = frozenset({"FINISHED", "FAILED", "CANCELED", "SUSPENDED"})
CHECK_BUDGET_S = 3.0  # total time the lineage liveness checks may take (each REST probe: 1 s at most)


class RunAlive(StartupError):
    """The job has a live run: a second start is refused."""


def host() -> str:
    return socket.gethostname()


def pid_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (``/proc/<pid>/stat`` field 22), None if unknown:
    with the pid it names one process, not a later one that reused the pid."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def process_alive(pid: int, start: int | None) -> bool:
    if not pid_alive(pid):
        return False
    return start is None or pid_start(pid) in (None, start)


def human_time(epoch_s: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch_s))


@dataclass
class LiveRun:
    """A run of the job that is alive, and how that is known."""

    job_name: str
    job_id: str | None
    since: float | None  # epoch s
    pid: int | None = None
    rest_url: str | None = None
    what: str = "riskstream run"
    state: str | None = None  # the Flink job's state, when its JobManager said
    evidence: str = ""

    def describe(self) -> str:
        parts = [self.what]
        if self.pid:
            parts.append(f"pid {self.pid}")
        if self.job_id:
            parts.append(f"Flink job {self.job_id}" + (f" ({self.state})" if self.state else ""))
        if self.rest_url:
            parts.append(f"REST {self.rest_url}")
        if self.since:
            parts.append(f"since {human_time(self.since)} ({lineage.human_age(time.time() - self.since)} ago)")
        return ", ".join(parts)

    def to_json(self) -> dict:
        return {"job_id": self.job_id, "pid": self.pid, "rest_url": self.rest_url, "what": self.what,
                "since": self.since, "state": self.state, "evidence": self.evidence}


def refusal(job_name: str, live: LiveRun) -> str:
    return (f"job {job_name} is already running: {live.describe()} [{live.evidence}]. One job, one run: a second "
            f"start would share its snapshots, lineage and transactional ids, so nothing was touched. Stop it "
            f"first with `riskstream cancel {job_name}` (stop with a savepoint; `--restore-from latest` then "
            f"resumes from it) or `riskstream cancel {job_name} --no-savepoint`; or start this one under another "
            f"--job-name (with its own --transactional-id-prefix and --group-id)")


# -- liveness from the lineage -------------------------------------------------------------------------


def _job_state(rest_url: str, job_id: str) -> str | None:
    """The Flink job's state at ``rest_url``; None when nothing answers or the JobManager does not know it."""
    from . import flink_rest

    try:
        return flink_rest.get(rest_url, f"/jobs/{job_id}", timeout_s=1.0, retry_s=0).get("state")
    except flink_rest.HttpError as e:
        return "UNKNOWN (JobManager answers HTTP %d)" % e.status if e.status in flink_rest.TRANSIENT_HTTP else None
    except (OSError, ValueError):
        return None


def ended_runs(records: list[dict]) -> dict[str, dict]:
    """job id -> its end record (written when a ``riskstream run`` process saw its job end)."""
    return {r["job_id"]: r for r in records if r.get("kind") == "end" and r.get("job_id")}


def run_alive(rec: dict, budget_end: float | None = None, notes: list[str] | None = None) -> LiveRun | None:
    """Whether the run of lineage record ``rec`` is alive (see the module's doc)."""
    pid, rest, job_id, runner = rec.get("pid"), rec.get("rest_url"), rec.get("job_id"), rec.get("runner")
    since = rec.get("started_at", 0) / 1000 or None
    what = {"cluster": "riskstream submit (cluster job)",
            "inproc": "an in-process MiniCluster (wait=False)"}.get(runner, "riskstream run")
    live = LiveRun(rec.get("job_name", ""), job_id, since, pid if runner != "cluster" else None, rest, what)
    here = rec.get("host") == host()
    # a `riskstream run` process lives exactly as long as its MiniCluster; a cluster job outlives its client
    # and an in-process MiniCluster's job may end long before its process: those are asked over REST
    if pid and here and runner == "local" and pid != os.getpid() and process_alive(int(pid), rec.get("pid_start")):
        live.evidence = f"process {pid} is alive"
        return live
    if rest and job_id and (budget_end is None or time.monotonic() < budget_end):
        state = _job_state(rest, job_id)
        if state is not None and state not in ALIVE_STATES_ARE_NOT:
            live.state = state
            live.evidence = f"its JobManager at {rest} reports it {state}"
            return live
        if state is None and rec.get("runner") == "cluster" and notes is not None:
            notes.append(f"run {job_id} (cluster job, REST {rest}): no JobManager answers there, counted as ended")
    elif rest and job_id and notes is not None:
        notes.append(f"run {job_id}: not checked (the {CHECK_BUDGET_S:.0f} s budget of the liveness checks is spent)")
    return None


def live_runs(job_name: str, home: Path | None = None, notes: list[str] | None = None,
              budget_s: float = CHECK_BUDGET_S) -> list[LiveRun]:
    """The job's runs the lineage shows alive (newest first); runs with an end record are not probed."""
    records = lineage.read(job_name, home)
    ended = ended_runs(records)
    out = []
    budget_end = time.monotonic() + budget_s
    for rec in reversed([r for r in records if r["kind"] == "run"]):
        if rec.get("job_id") in ended:
            continue
        live = run_alive({**rec, "job_name": job_name}, budget_end, notes)
        if live is not None:
            out.append(live)
    return out


# -- the lock ------------------------------------------------------------------------------------------


def lock_path(job_name: str, home: Path | None = None) -> Path:
    return lineage.job_dir(job_name, home) / LOCK_FILE


def _read_holder(fd: int) -> dict:
    """The holder's note in the lock file (it may be rewriting it: a torn read is retried briefly)."""
    for _ in range(10):
        try:
            raw = os.pread(fd, 65536, 0)
            return json.loads(raw) if raw.strip() else {}
        except ValueError:
            time.sleep(0.02)  # the holder is between its truncate and its write: read again
        except OSError:
            return {}
    return {}


def _flock_holders(path: Path) -> list[int] | None:
    """The pids holding an flock on ``path`` according to ``/proc/locks``; None when that cannot be read."""
    try:
        st = os.stat(path)
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    pids = []
    for ln in lines:
        parts = ln.split()
        if "->" in parts:  # a waiter: "1: -> FLOCK ..."
            continue
        if len(parts) >= 6 and parts[1] == "FLOCK" and parts[5] == dev:
            pids.append(int(parts[4]))
    return pids


def holder(job_name: str, home: Path | None = None) -> dict | None:
    """The note of the process holding the job's lock, or None when nobody holds it. Read-only: it never
    creates, writes or locks the file (a probe that took the lock, even briefly, could refuse a real start),
    it reads ``/proc/locks``."""
    p = lock_path(job_name, home)
    try:
        fd = os.open(p, os.O_RDONLY)
    except OSError:
        return None
    try:
        pids = _flock_holders(p)
        if pids is None:  # no /proc/locks: a shared-lock probe does not block an exclusive one for long
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    return _read_holder(fd)
                raise
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        return _read_holder(fd) if pids else None
    finally:
        os.close(fd)


@dataclass
class Claim:
    """This process's claim on a job: the locked file (or a parent's lock, by token). ``release()`` drops it."""

    job_name: str
    fd: int | None
    token: str
    home: Path | None = None
    inherited: bool = False  # the lock is a `riskstream submit` parent's
    info: dict = field(default_factory=dict)

    def note(self, **info) -> None:
        """Add ``info`` (job id, REST address, ...) to what a refused start reads about this holder."""
        self.info.update(info)
        if self.fd is None:
            return
        data = json.dumps(self.info, sort_keys=True).encode()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)

    def run_fields(self, rest_url: str | None, runner: str) -> dict:
        """The lineage fields that let a later start tell whether this run is alive."""
        pid = os.getpid()
        return {"runner": runner, "pid": pid, "pid_start": pid_start(pid), "host": host(), "rest_url": rest_url}

    def release(self) -> None:
        _held.pop(self.job_name, None)
        if self.fd is not None:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            finally:
                os.close(self.fd)
            self.fd = None


_held: dict[str, Claim] = {}  # this process's claims, by job name


def claim(job_name: str, what: str = "riskstream run", home: Path | None = None, log=sys.stderr) -> Claim:
    """Claim ``job_name`` for a new run (see the module's doc), or raise :class:`RunAlive` naming the live run.

    Order: the lock (a held lock is refused without writing anything), then the lineage's unended runs
    (cluster jobs; refused, the lock released, nothing written), then this process's note in the lock file.
    The same process claiming the same job again (an in-process MiniCluster started with ``wait=False``,
    then a later run) gets its claim back once its earlier runs are checked."""
    notes: list[str] = []
    own = _held.get(job_name)
    if own is not None:
        live = live_runs(job_name, home, notes)
        if live:
            raise RunAlive(refusal(job_name, live[0]))
        return own
    p = lock_path(job_name, home)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            os.close(fd)
            raise
        info = _read_holder(fd)
        os.close(fd)
        token = os.environ.get(TOKEN_ENV)
        if token and info.get("token") == token:  # our `riskstream submit` parent holds it for us
            c = Claim(job_name, None, token, home, inherited=True, info=info)
            _held[job_name] = c
            return c
        raise RunAlive(refusal(job_name, _holder_run(job_name, info, home))) from None
    try:
        live = live_runs(job_name, home, notes)
    except BaseException:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
        raise
    if live:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
        raise RunAlive(refusal(job_name, live[0]))
    for n in notes if log is not None else ():
        print(f"[run] {job_name}: {n}", file=log, flush=True)
    c = Claim(job_name, fd, secrets.token_hex(8), home)
    c.note(pid=os.getpid(), pid_start=pid_start(os.getpid()), host=host(), since=time.time(), what=what,
           token=c.token)
    _held[job_name] = c
    return c


def _holder_run(job_name: str, info: dict, home: Path | None) -> LiveRun:
    """The live run behind a held lock: the holder's note, completed by its newest lineage run."""
    pid = info.get("pid")
    rec = next((r for r in reversed(lineage.read(job_name, home))
                if r["kind"] == "run" and pid and r.get("pid") == pid), None)
    live = LiveRun(job_name, (rec or {}).get("job_id") or info.get("job_id"),
                   info.get("since") or ((rec or {}).get("started_at", 0) / 1000 or None), pid,
                   (rec or {}).get("rest_url") or info.get("rest_url"), info.get("what", "riskstream run"))
    live.evidence = f"it holds {lock_path(job_name, home)}"
    if rec is None:
        live.evidence += " (still starting: not in the lineage yet)"
    return live


__all__ = ["Claim", "LiveRun", "RunAlive", "claim", "holder", "live_runs", "lock_path", "run_alive"]
