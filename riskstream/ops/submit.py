"""Run the decision job on a Flink cluster: submit, savepoint, stop with a savepoint, cancel.

The job goes in with ``flink run -d -py pipelines/decision_job.py [job flags]``: the local cluster's own
``bin/flink`` (see :mod:`riskstream.ops.cluster`) by default, or, for another JobManager, the ``bin/flink`` of
the PyFlink distribution with ``-m host:port``. Only the job flags the user set go on that command line;
``RISKSTREAM_*`` environment variables reach the job's client through the environment (a SASL password is
moved there too, so it never shows in a process list).

Savepoints, stops and cancels use the JobManager's REST API (:mod:`riskstream.ops.flink_rest`): a trigger
returns a request id, then ``GET /jobs/<id>/savepoints/<request-id>`` is polled under a deadline until the
operation completes.

Upgrade path: ``stop`` (stop-with-savepoint, no drain: event-time timers are not fired) commits the sinks'
last transactions and ends the job FINISHED; ``submit(from_savepoint=<location>)`` restores the operator
state by uid (``flink run -s``) and the Kafka source continues from the offsets in the savepoint.

Savepoint format (:func:`choose_format`): ``native`` (the backend's own files: RocksDB's are copied as they
are, so taking and restoring one is fast at millions of keys) or ``canonical`` (Flink's backend-independent
format, rewritten key by key: slow at that size, but restorable on either backend). Default: native for a
job on RocksDB without the changelog, canonical otherwise (``RISKSTREAM_SAVEPOINT_FORMAT`` overrides). A
native savepoint restores only on the backend that wrote it, and one of a job with the changelog not with the
changelog on Flink 2.2.1: ``restore.check_backend`` refuses both at start.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

from .. import paths
from . import cluster, flink_rest
from .flink_rest import ClusterNotRunning, FlinkError, check_job_id, job_details, reachable

JOB_ENTRY = paths.PROJECT_ROOT / "pipelines" / "decision_job.py"
_JOB_ID_LINE = re.compile(r"riskstream job id: ([0-9a-f]{32})")
_SUBMITTED_LINE = re.compile(r"Job has been submitted with JobID ([0-9a-f]{32})")
# the private copy of a savepoint that `flink run -s` restores in CLAIM mode (lineage.restore_mode), for the
# job's client: its retention at start keeps it (pipelines/decision_job.py)
RESTORE_COPY_ENV = "RISKSTREAM_RESTORE_COPY"
# settings that must not travel as command-line flags (visible to `ps`): passed by environment instead
SECRET_FIELDS = ("sasl_password",)
# settings of a local MiniCluster only; on a cluster the job's own REST settings could redirect its client
CLUSTER_SKIP_FIELDS = ("rest_port",)
CLUSTER_MEMORY_FIELDS = ("managed_memory", "taskmanager_heap")


class SubmitError(FlinkError):
    """A failure the CLI reports as one message (what went wrong and what to do)."""


@dataclass(frozen=True)
class Target:
    """Where a job goes: the JobManager's REST URL, the ``flink`` command that talks to it and its env."""

    rest_url: str
    address: str  # host:port for `flink run -m`
    flink: tuple[str, ...]
    env: dict[str, str] = field(repr=False, hash=False, compare=False)
    local: bool = True

    def flink_command(self, *args: str) -> list[str]:
        return [*self.flink, *args]


# -- where the job goes --------------------------------------------------------------------------------


def _client_env(base: dict[str, str]) -> dict[str, str]:
    env = dict(base)
    env.pop("RISKSTREAM_REST_PORT", None)  # see CLUSTER_SKIP_FIELDS
    return env


def target(jobmanager: str | None = None, root: Path | str | None = None) -> Target:
    """The local cluster (under ``root``, default ``<home>/flink-cluster``), or the JobManager at
    ``jobmanager`` (host:port of its REST endpoint). Fails with what to do when nothing answers."""
    lay = cluster.layout(root=root)
    if jobmanager:
        jm = jobmanager.strip().removeprefix("http://").rstrip("/")
        if not re.match(r"^[A-Za-z0-9.\-\[\]:]+:\d{1,5}$", jm):
            raise SubmitError(f"--jobmanager {jobmanager!r} is not host:port (the JobManager's REST address)")
        rest_url = f"http://{jm}"
        if not reachable(rest_url):
            raise ClusterNotRunning(f"no Flink JobManager answers at {rest_url}; check --jobmanager, or start the "
                                    "local cluster with `riskstream cluster up` and leave --jobmanager out")
        if jm == lay.address and cluster.status(root)["running"]:
            return Target(lay.rest_url, lay.address, tuple(cluster.flink_command(lay)),
                          _client_env(cluster.flink_env(lay)), local=True)
        # another cluster: the distribution's bin/flink with its own conf; this interpreter runs the job's
        # client (the distribution's conf names none, and the `python` on PATH has no pyflink); client logs
        # go to <home>/flink-client-log rather than into the installed package
        dist = cluster.distribution()
        log_dir = paths.home() / "flink-client-log"
        log_dir.mkdir(parents=True, exist_ok=True)
        env = cluster.flink_env(lay)
        for k in ("FLINK_CONF_DIR", "FLINK_PID_DIR"):
            env.pop(k, None)
        env["FLINK_LOG_DIR"] = str(log_dir)
        return Target(rest_url, jm, ("bash", str(dist / "bin" / "flink")), _client_env(env), local=False)
    st = cluster.status(root)
    if not st["running"]:
        raise ClusterNotRunning(f"no Flink cluster is running under {lay.root}; start one with `riskstream cluster "
                                "up` (or pass --jobmanager host:port)")
    if not st["ready"]:
        raise ClusterNotRunning(f"the Flink cluster under {lay.root} runs but is not ready (no TaskManager "
                                f"registered at {lay.rest_url}); see `riskstream cluster status`, or restart it "
                                "with `riskstream cluster down` and `riskstream cluster up`")
    return Target(lay.rest_url, lay.address, tuple(cluster.flink_command(lay)), _client_env(cluster.flink_env(lay)),
                  local=True)


# -- submit --------------------------------------------------------------------------------------------


def settings_from_args(args) -> dict[str, object]:
    """The job settings given as flags on an argparse namespace (see ``jobflags.add_job_flags``); the ones not
    given are left out, so ``RISKSTREAM_*`` variables and defaults apply in the job."""
    from ..config import JobConfig

    return {n: getattr(args, n) for n in JobConfig.model_fields if getattr(args, n, None) is not None}


def job_flags(values: dict[str, object]) -> tuple[list[str], dict[str, str]]:
    """Job settings the user set (name -> value, None = not set) -> (decision_job.py flags, extra env).
    Booleans become ``--x`` / ``--no-x``; secrets go to the environment as ``RISKSTREAM_<NAME>``."""
    from ..config import JobConfig

    argv: list[str] = []
    env: dict[str, str] = {}
    for name, v in values.items():
        if v is None:
            continue
        if name not in JobConfig.model_fields:
            raise SubmitError(f"unknown job setting {name!r}")
        if name in CLUSTER_MEMORY_FIELDS:
            raise SubmitError(f"--{name.replace('_', '-')} sizes a TaskManager, which a job cannot change on a running "
                              f"cluster: give it to `riskstream cluster up --{name.replace('_', '-')}` (or the "
                              "manifest's flinkConfiguration / taskManager.resource)")
        if name in CLUSTER_SKIP_FIELDS:
            raise SubmitError(f"--{name.replace('_', '-')} is for a local MiniCluster run; a cluster job uses "
                              "the cluster's REST endpoint")
        flag = "--" + name.replace("_", "-")
        if name in SECRET_FIELDS:
            env[f"RISKSTREAM_{name.upper()}"] = str(v)
        elif isinstance(v, bool):
            argv.append(flag if v else "--no-" + flag[2:])
        elif isinstance(v, (list, tuple)):  # a repeatable flag (flink_conf)
            for item in v:
                argv += [flag, str(item)]
        else:
            argv += [flag, str(v)]
    return argv, env


def local_path(p: str) -> Path | None:
    """The local path behind ``p`` (a path, ``file:/x`` as Flink reports savepoints, or ``file:///x``);
    None for a remote file system (s3://, hdfs://, ...)."""
    u = urlparse(p)
    if u.scheme == "file":
        return Path(unquote(u.path)).resolve()
    if u.scheme and "://" in p:
        return None
    return Path(p).expanduser().resolve()


def _savepoint_path(p: str) -> str:
    """A savepoint to restore, as flink run -s takes it: local ones checked and absolute (the JobManager
    would resolve a relative path against its own working directory)."""
    local = local_path(p)
    if local is None:
        return p
    if not (local / "_metadata").is_file():
        raise SubmitError(f"--from-savepoint {p!r} is not a savepoint or retained checkpoint (no _metadata in it)")
    return local.as_uri()


def restore_args(from_savepoint: str, job_name: str | None, changelog: bool) -> list[str]:
    """``flink run``'s restore options. Without the changelog, ``-s`` and Flink's default NO_CLAIM: the
    savepoint stays the user's. With it (the cluster's default, see :func:`changelog_on`), Flink restores
    only in CLAIM mode, which lets it delete what it restored once subsumed: a savepoint is then restored from a private copy in the job's folder (``lineage.restore_mode``) and the
    savepoint itself stays; a retained checkpoint is claimed in place."""
    from . import lineage

    restore = _savepoint_path(from_savepoint)
    local = local_path(restore)
    snap = lineage.read_snapshot(local) if changelog and local is not None else None
    if snap is None or not job_name:
        return ["-s", restore] + (["--claimMode", "claim"] if changelog else [])
    restore, mode, note = lineage.restore_mode(job_name, snap, changelog=True)
    if note:
        print(f"[submit] {job_name}: {note}", file=sys.stderr, flush=True)
    return ["-s", restore, "--claimMode", mode.lower()]


@dataclass
class Submitted:
    job_id: str
    rest_url: str
    seconds: float  # the `flink run` client, start to exit
    output: str = field(repr=False, default="")


def submit(settings: dict[str, object] | None = None, jobmanager: str | None = None,
           from_savepoint: str | None = None, root: Path | str | None = None, timeout_s: float = 300.0,
           allow_non_restored_state: bool = False, job_name: str | None = None,
           state_backend: str | None = None) -> Submitted:
    """``flink run -d -py pipelines/decision_job.py`` with the job flags in ``settings``; return the job id.

    ``job_name`` (the job's name as its settings give it) is claimed first (:mod:`.runguard`): a job with a
    live run is refused here, before ``flink run`` starts; the claim is held while ``flink run`` runs and its
    client (``decision_job.run``) proceeds under it (``RISKSTREAM_RUN_TOKEN``). ``state_backend`` (the job's,
    as it takes effect): a snapshot of the other backend's own format is refused before anything starts
    (:func:`restore_backend_check`; the job's client checks again)."""
    from . import runguard

    settings = dict(settings or {})
    if from_savepoint and settings.get("restore_from"):
        raise SubmitError("give either --from-savepoint or --restore-from, not both (on a cluster prefer "
                          "--from-savepoint)")
    restore_backend_check(from_savepoint or settings.get("restore_from"), job_name, state_backend)
    argv, extra_env = job_flags(settings)
    guard = runguard.claim(job_name, "riskstream submit") if job_name else None
    try:
        return _submit(argv, extra_env, guard, jobmanager, from_savepoint, root, timeout_s, allow_non_restored_state,
                       job_name, settings.get("changelog"), state_backend)
    finally:
        if guard is not None:
            guard.release()


def restore_backend_check(restore: str | None, job_name: str | None, state_backend: str | None,
                          changelog: bool = False) -> None:
    """Refuse early (before ``flink run``, a private copy, a cluster's slot) a snapshot the job's backend cannot
    restore, or (``changelog``: restored with it, so in CLAIM mode) a native savepoint the changelog must not
    claim (:func:`riskstream.ops.restore.check_backend`). ``restore`` is a path or ``latest``; what cannot be
    read here (a remote path, a ``latest`` the lineage cannot name) is left to the job's client, which checks
    every start."""
    from . import lineage, restore as restore_ops

    if not restore or not job_name or state_backend is None:
        return
    if restore == "latest":
        try:
            res = lineage.resolve_latest(job_name)
        except lineage.ManualRestoreRequired:
            return
        snap = res.snapshot if res is not None else None
    else:
        local = local_path(restore)
        snap = lineage.read_snapshot(local) if local is not None else None
    restore_ops.check_backend(job_name, snap, state_backend, changelog=changelog, claim=changelog)


def changelog_on(rest_url: str, changelog: bool | None, unreadable: bool = False) -> bool:
    """Whether a job submitted to the cluster at ``rest_url`` runs with the changelog: its own ``--changelog``
    / ``--no-changelog`` (or RISKSTREAM_CHANGELOG), else the cluster's config (on with ``cluster up`` and the
    manifest), read from the JobManager; ``unreadable`` when it cannot be read."""
    import os

    if changelog is None and os.environ.get("RISKSTREAM_CHANGELOG", "").strip():
        changelog = os.environ["RISKSTREAM_CHANGELOG"].strip().lower() not in ("0", "false", "no")
    if changelog is not None:
        return bool(changelog)
    try:
        conf = flink_rest.cluster_config(rest_url)
    except (OSError, ValueError, FlinkError):
        return unreadable
    return conf.get("state.changelog.enabled", "").lower() == "true"


def _submit(argv, extra_env, guard, jobmanager, from_savepoint, root, timeout_s, allow_non_restored_state,
            job_name=None, changelog=None, state_backend=None):
    from . import runguard

    t = target(jobmanager, root)
    extra_env["RISKSTREAM_SUBMIT_REST_URL"] = t.rest_url  # recorded in the lineage: how to find the job later
    if guard is not None:
        extra_env[runguard.TOKEN_ENV] = guard.token
    run_args = ["run", "-m", t.address, "-d"]
    if from_savepoint:
        with_changelog = changelog_on(t.rest_url, changelog, unreadable=t.local and cluster.changelog_enabled(root))
        restore_backend_check(from_savepoint, job_name, state_backend, changelog=with_changelog)  # before the copy
        restore = restore_args(from_savepoint, job_name, with_changelog)
        run_args += restore
        # the job's client checks the start against the committed output and records it in the lineage
        extra_env["RISKSTREAM_FROM_SAVEPOINT"] = _savepoint_path(from_savepoint)
        if restore[1] != extra_env["RISKSTREAM_FROM_SAVEPOINT"]:  # the private copy Flink restores: the client's
            extra_env[RESTORE_COPY_ENV] = restore[1]  # retention at start must not remove it (it did: issue 20)
        if allow_non_restored_state:
            run_args.append("-n")
    if not t.local:
        run_args += ["-pyclientexec", sys.executable]
    cmd = t.flink_command(*run_args, "-py", str(JOB_ENTRY), *argv)
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, env={**t.env, **extra_env}, capture_output=True, text=True, timeout=timeout_s,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else e.stdout or ""
        raise SubmitError(f"`flink run` did not return within {timeout_s:.0f}s; its last output:\n{_tail(out)}")
    secs = time.monotonic() - t0
    out = f"{proc.stdout}\n{proc.stderr}"
    m = _JOB_ID_LINE.search(proc.stdout) or _SUBMITTED_LINE.search(proc.stdout)
    if proc.returncode != 0 or not m:
        hint = ""
        if "Connection refused" in out or "Could not connect" in out:
            hint = f"\n(no JobManager answered at {t.address}: is the cluster up? `riskstream cluster status`)"
        raise SubmitError(f"`flink run` failed (exit {proc.returncode}) submitting {JOB_ENTRY.name} to "
                          f"{t.address}:\n{_error_lines(out)}{hint}")
    return Submitted(m.group(1), t.rest_url, secs, out)


def _tail(text: str, n: int = 30) -> str:
    return "\n".join(text.strip().splitlines()[-n:])


def _error_lines(out: str) -> str:
    """The lines of a failed `flink run` that say why (Java 'Caused by'/exceptions, Python errors)."""
    lines = out.strip().splitlines()
    keep = [ln for ln in lines if re.search(r"Caused by|Exception|Error|error:|riskstream", ln)
            and not ln.lstrip().startswith("at ")]
    return "\n".join(keep[-12:] if keep else lines[-20:])


# -- savepoints, stop, cancel --------------------------------------------------------------------------


def _target_dir(d: str | None) -> str | None:
    if d is None:
        return None
    local = local_path(d)
    return d if local is None else local.as_uri()


@dataclass
class SavepointResult:
    location: str
    seconds: float
    final_state: str | None = None
    job_name: str | None = None  # the riskstream job whose lineage recorded it (None: not a known job)
    format: str = "canonical"  # canonical or native, as requested from Flink
    backend: str | None = None  # the job's state backend (None: unknown)
    why: str = ""  # why this format (the flag, the environment, the job's backend)
    note: str = ""  # for the operator: what a requested native savepoint implies (hashmap, the changelog)


def _rest_url(jobmanager: str | None, root: Path | str | None) -> str:
    """The REST URL of the JobManager to talk to (savepoint, stop, cancel need only REST, not a free slot)."""
    if jobmanager:
        return target(jobmanager, root).rest_url
    lay = cluster.layout(root=root)
    if not reachable(lay.rest_url):
        raise ClusterNotRunning(f"no Flink cluster is running under {lay.root} (nothing answers at {lay.rest_url}); "
                                "start one with `riskstream cluster up` (or pass --jobmanager host:port)")
    return lay.rest_url


@dataclass
class JobRef:
    """A job named on the command line (a riskstream job name or a Flink job id), resolved."""

    job_id: str
    rest_url: str
    name: str | None = None  # the riskstream job whose lineage records the run
    run: dict | None = None  # its lineage run record


def resolve(ref: str, jobmanager: str | None = None, root: Path | str | None = None) -> JobRef:
    """``ref`` is a job name (its live run, from the job's lineage) or a Flink job id. The REST address is
    ``jobmanager`` when given, else the one the run recorded (a ``riskstream run`` MiniCluster's, or the
    cluster a ``riskstream submit`` job went to), else the local cluster's."""
    from . import lineage, runguard

    ref = ref.strip()
    if flink_rest.JOB_ID.match(ref.lower()):
        job_id = ref.lower()
        name = lineage.find_job(job_id)
        run = next((r for r in lineage.read(name) if r["kind"] == "run" and r.get("job_id") == job_id), None) \
            if name else None
    else:
        name = ref
        records = lineage.read(name)
        if not records:
            raise SubmitError(f"{ref!r} is neither a Flink job id (32 hex digits) nor a job with a lineage under "
                              f"{lineage.job_dir(name).parent} (`riskstream snapshots NAME` lists a job's runs)")
        live = runguard.live_runs(name)
        runs = [r for r in records if r["kind"] == "run"]
        if not live and not runs:
            raise SubmitError(f"job {name} has no run in its lineage ({lineage.lineage_path(name)})")
        if not live:
            last = runs[-1]
            end = runguard.ended_runs(records).get(last["job_id"])
            how = (f"it ended {end['state']} at {runguard.human_time(end['ended_at'] / 1000)}" if end else
                   "its process is gone and no JobManager reports its job")
            raise SubmitError(f"job {name} has no live run: its newest run, {last['job_id']}, is not running ({how}). "
                              f"`riskstream snapshots {name}` lists its snapshots and what `--restore-from latest` "
                              "would resume from")
        job_id = live[0].job_id
        run = next(r for r in records if r["kind"] == "run" and r.get("job_id") == job_id)
    if jobmanager:
        rest_url = target(jobmanager, root).rest_url
    elif run is not None and run.get("rest_url"):
        rest_url = run["rest_url"]
    else:
        rest_url = _rest_url(None, root)
    return JobRef(job_id, rest_url, name, run)


def _over(ref: JobRef, what: str) -> None:
    """Refuse at once when the lineage shows the run over (its process exited, its JobManager does not run it):
    its REST address may be dead or another run's by now."""
    why = _gone(ref)()
    if why:
        end = None
        if ref.name:
            from . import lineage, runguard

            end = runguard.ended_runs(lineage.read(ref.name)).get(ref.job_id)
        raise SubmitError(f"job {ref.job_id}{f' ({ref.name})' if ref.name else ''} is not running: {why}"
                          + (f", it ended {end['state']}" if end else "") + f"; no {what} possible. "
                          + (f"`riskstream snapshots {ref.name}` lists its snapshots" if ref.name else ""))


def _gone(ref: JobRef):
    """A check that says why the run is over (its process exited, its JobManager no longer runs it), or None
    while it may still be working; without a lineage record nothing can be said (None)."""
    from . import runguard

    def gone() -> str | None:
        if ref.run is None or not (ref.run.get("pid") or ref.run.get("rest_url")):  # recorded before liveness was
            return None
        if runguard.run_alive({**ref.run, "job_name": ref.name}) is not None:
            return None
        pid = ref.run.get("pid") if ref.run.get("runner") == "local" else None
        return (f"its process {pid} has exited" if pid else f"no JobManager at {ref.rest_url} runs it any more")

    return gone


def _running(rest_url: str, job_id: str, what: str) -> None:
    job = job_details(rest_url, job_id)  # JobNotFound / ClusterNotRunning with a clear message
    if job.get("state") != "RUNNING":
        raise SubmitError(f"job {job_id} is {job.get('state')}: a {what} needs a RUNNING job")


def _savepoint_target(job_id: str, target_dir: str | None) -> tuple[str | None, str | None]:
    """(target directory URI or None for the cluster's default, the job's name if its lineage knows the run).
    A job riskstream started here (``run`` or ``submit``) saves into its own ``jobs/<name>/savepoints``."""
    from . import lineage

    name = lineage.find_job(job_id)
    if target_dir is None and name is not None:
        run = next(r for r in lineage.read(name) if r["kind"] == "run" and r.get("job_id") == job_id)
        if lineage.local_path(run.get("checkpoint_dir", "")) is not None:
            target_dir = str(lineage.savepoints_dir(name).resolve())
    return _target_dir(target_dir), name


def _found_in(job_id: str, target_uri: str | None, since: float):
    """Where a savepoint of ``job_id`` completed in a local ``target_uri`` after ``since`` (epoch s): Flink
    names it ``savepoint-<job id[:6]>-<random>``; None while there is none with a complete ``_metadata``."""
    from . import lineage

    base = lineage.local_path(target_uri) if target_uri else None

    def found() -> str | None:
        if base is None:
            return None
        snaps = [s for d in base.glob(f"savepoint-{job_id[:6]}-*")
                 if (s := lineage.read_snapshot(d, savepoint=True)) and s.written_at >= since - 1]
        return max(snaps, key=lambda s: s.checkpoint_id).uri if snaps else None

    return found


def _record(name: str | None, job_id: str, location: str, stopped: bool, backend: str | None = None,
            changelog: bool | None = None) -> None:
    if name is not None:
        from . import lineage

        lineage.record_savepoint(name, job_id, location, stopped, backend=backend, changelog=changelog)


FORMAT_ENV = "RISKSTREAM_SAVEPOINT_FORMAT"


def job_backend(ref: JobRef) -> tuple[str | None, bool | None]:
    """(the running job's state backend, whether the changelog is on): its JobManager's answer, else what its
    run recorded in the lineage."""
    from . import lineage

    backend, changelog = flink_rest.job_state_backend(ref.rest_url, ref.job_id, retry_s=2.0)
    return backend or lineage.run_backend(ref.run), changelog if changelog is not None else lineage.run_changelog(ref.run)


def choose_format(requested: str | None, backend: str | None, changelog: bool | None = False) -> tuple[str, str, str]:
    """(the savepoint format, why, a note) for a job on ``backend`` (None: unknown), with the changelog on or
    not (None: unknown).

    ``requested`` (the command's ``--format``), else ``RISKSTREAM_SAVEPOINT_FORMAT``, else native on RocksDB
    without the changelog (its files are copied as they are: at 3M users a restore took seconds instead of
    the canonical format's minutes, docs/benchmarks.md) and canonical otherwise. Pitfalls: a native savepoint
    restores only on the backend that wrote it; hashmap's native format gains nothing over the canonical one
    and cannot move to RocksDB; a native savepoint of a job with the changelog cannot be restored with the
    changelog on Flink 2.2.1 (FLINK-39964: ``restore.check_backend`` refuses it), so the changelog's default is
    canonical. A requested native one is taken, with a note."""
    import os

    why = "--format"
    if requested is None and os.environ.get(FORMAT_ENV, "").strip():
        requested, why = os.environ[FORMAT_ENV].strip(), FORMAT_ENV
        if requested.lower() not in flink_rest.SAVEPOINT_FORMATS:
            raise SubmitError(f"{FORMAT_ENV}={requested!r}: set it to canonical or native, or unset it (default: "
                              "native for a job on RocksDB without the changelog, canonical otherwise)")
    if requested is not None:
        fmt = requested.lower()
        if fmt not in flink_rest.SAVEPOINT_FORMATS:
            raise SubmitError(f"--format {requested!r}: canonical or native")
    elif backend == "rocksdb" and changelog is False:
        fmt, why = "native", "the job runs on rocksdb"
    else:
        fmt, why = "canonical", ("the job runs on hashmap" if backend == "hashmap" else
                                 "the job runs on rocksdb with the changelog" if backend == "rocksdb" and changelog
                                 else "the job's state backend is unknown")
    note = ""
    if fmt == "native" and backend == "hashmap":
        note = ("the job runs on hashmap: its native savepoint restores only on hashmap (not on rocksdb) and no "
                "faster than a canonical one; take a canonical one to move to rocksdb")
    elif fmt == "native" and backend == "rocksdb" and changelog:
        note = ("the job runs with the changelog: restore this native savepoint with --no-changelog (with the "
                "changelog Flink 2.2.1 would write checkpoints it cannot restore, FLINK-39964: refused at start)")
    elif fmt == "native" and backend is None:
        note = "the job's state backend is unknown: a native savepoint restores only on the backend that wrote it"
    return fmt, why, note


def savepoint(job_id: str, jobmanager: str | None = None, target_dir: str | None = None,
              root: Path | str | None = None, deadline_s: float = 300.0,
              format: str | None = None) -> SavepointResult:
    """Trigger a savepoint; the job keeps running. ``job_id`` is a Flink job id or a riskstream job name
    (:func:`resolve`). Without ``target_dir`` a job riskstream started saves into its own folder
    (``jobs/<name>/savepoints``, recorded in its lineage), another job into the cluster's
    ``execution.checkpointing.savepoint-dir`` (the local cluster sets ``<root>/savepoints``). ``format``:
    canonical or native, None for :func:`choose_format`'s default. A run that dies meanwhile fails the wait at
    once."""
    ref = resolve(job_id, jobmanager, root)
    t0, since = time.monotonic(), time.time()
    _over(ref, "savepoint")
    _running(ref.rest_url, ref.job_id, "savepoint")
    backend, changelog = job_backend(ref)
    fmt, why, note = choose_format(format, backend, changelog)
    target, name = _savepoint_target(ref.job_id, target_dir)
    rid = flink_rest.trigger_savepoint(ref.rest_url, ref.job_id, target, format_type=fmt)
    loc = flink_rest.await_savepoint(ref.rest_url, ref.job_id, rid, "savepoint", deadline_s,
                                     _found_in(ref.job_id, target, since), gone=_gone(ref))
    _record(name, ref.job_id, loc, stopped=False, backend=backend, changelog=changelog)
    return SavepointResult(loc, time.monotonic() - t0, job_name=name, format=fmt, backend=backend, why=why,
                           note=note)


def stop(job_id: str, jobmanager: str | None = None, target_dir: str | None = None,
         root: Path | str | None = None, deadline_s: float = 300.0, drain: bool = False,
         rest_url: str | None = None, format: str | None = None) -> SavepointResult:
    """Stop with a savepoint (the upgrade path): the sinks commit their last transactions, the job ends
    FINISHED; return the savepoint's location once the job has ended. ``job_id`` is a Flink job id or a
    riskstream job name (:func:`resolve`).

    A ``riskstream run`` job's MiniCluster exits with the job, taking its REST API along, possibly before
    the savepoint's status could be read: the savepoint is then found in its target folder, and the job's
    final state is the one its process recorded in the lineage. A run whose process dies without a
    completed savepoint fails the wait at once. ``rest_url`` (``http://host:port``) names the JobManager
    directly, e.g. a ``riskstream run`` MiniCluster's (``riskstream chaos``). ``format``: as for
    :func:`savepoint`."""
    ref = resolve(job_id, jobmanager if rest_url is None else None, root) if rest_url is None else \
        _ref_at(job_id, rest_url)
    t0, since = time.monotonic(), time.time()
    _over(ref, "stop-with-savepoint")
    _running(ref.rest_url, ref.job_id, "stop-with-savepoint")
    backend, changelog = job_backend(ref)
    fmt, why, note = choose_format(format, backend, changelog)
    target, name = _savepoint_target(ref.job_id, target_dir)
    rid = flink_rest.trigger_savepoint(ref.rest_url, ref.job_id, target, stop=True, drain=drain, format_type=fmt)
    loc = flink_rest.await_savepoint(ref.rest_url, ref.job_id, rid, "stop-with-savepoint", deadline_s,
                                     _found_in(ref.job_id, target, since), gone=_gone(ref))
    _record(name, ref.job_id, loc, stopped=True, backend=backend, changelog=changelog)
    left = max(10.0, deadline_s - (time.monotonic() - t0))
    state = _final_state(ref, left, "FINISHED")
    retention_after_stop(ref)
    return SavepointResult(loc, time.monotonic() - t0, state, job_name=name, format=fmt, backend=backend, why=why,
                           note=note)


def _ref_at(job_id: str, rest_url: str) -> JobRef:
    from . import lineage

    job_id = check_job_id(job_id)
    name = lineage.find_job(job_id)
    run = next((r for r in lineage.read(name) if r["kind"] == "run" and r.get("job_id") == job_id), None) \
        if name else None
    return JobRef(job_id, rest_url, name, run)


def _final_state(ref: JobRef, deadline_s: float, expected: str) -> str:
    """The job's terminal state. A ``riskstream run`` MiniCluster exits with its job: then the state is the one
    its process recorded in the lineage (``end`` record), or, when the process left none, ``expected`` (what
    the stop or cancel that ended it leads to) marked as such."""
    from . import lineage, runguard

    t_end = time.monotonic() + deadline_s
    gone_since = None
    rest_url, job_id = ref.rest_url, ref.job_id

    def recorded() -> str | None:
        if ref.name is None:
            return None
        end = runguard.ended_runs(lineage.read(ref.name)).get(job_id)
        return end["state"] if end else None

    while True:
        try:
            state = job_details(rest_url, job_id, retry_s=0).get("state")
            gone_since = None
            if state in flink_rest.TERMINAL_JOB_STATES:
                return state
        except flink_rest.JobNotFound:
            return recorded() or f"{expected} (no longer listed)"
        except ClusterNotRunning:
            if (state := recorded()) is not None:
                return state
            if not reachable(rest_url):
                gone_since = gone_since or time.monotonic()
                pid = (ref.run or {}).get("pid") if (ref.run or {}).get("runner") == "local" else None
                exited = pid is None or not runguard.process_alive(int(pid), (ref.run or {}).get("pid_start"))
                if exited and time.monotonic() - gone_since > (0.5 if pid else 2.0):
                    return recorded() or f"{expected} (its MiniCluster exited without recording its end)"
        if time.monotonic() > t_end:
            raise SubmitError(f"job {job_id} not ended within {deadline_s:.0f}s")
        time.sleep(flink_rest.POLL_S)


def retention_after_stop(ref: JobRef) -> list[Path]:
    """Once a job's run has ended: keep the job's newest ``retain_snapshots`` (as its run recorded it), remove
    the rest and every half-written checkpoint or savepoint folder. Done under the job's claim; a
    ``riskstream run`` process prunes its own folder as it exits, so when it (or a new start) holds the claim
    this does nothing."""
    from . import lineage, runguard

    if ref.name is None or ref.run is None or lineage.local_path(ref.run.get("checkpoint_dir", "")) is None:
        return []
    try:
        guard = runguard.claim(ref.name, "riskstream cancel (retention)", log=None)
    except runguard.RunAlive:
        return []
    try:
        return lineage.prune(ref.name, int(ref.run.get("retain_snapshots", 3)))
    finally:
        guard.release()


def cancel(job_id: str, jobmanager: str | None = None, root: Path | str | None = None,
           deadline_s: float = 120.0) -> str:
    """Cancel without a savepoint (state kept only in retained checkpoints); return the final state
    (CANCELED). ``job_id`` is a Flink job id or a riskstream job name (:func:`resolve`)."""
    from . import lineage, runguard

    ref = resolve(job_id, jobmanager, root)
    if _gone(ref)():  # already over: its final state if anything still knows it, else why not
        end = runguard.ended_runs(lineage.read(ref.name)).get(ref.job_id) if ref.name else None
        if end:
            return end["state"]
        try:
            state = job_details(ref.rest_url, ref.job_id, retry_s=0).get("state")
        except FlinkError:
            state = None
        if state in flink_rest.TERMINAL_JOB_STATES:
            return state
        _over(ref, "cancel")
    job = job_details(ref.rest_url, ref.job_id)
    if job.get("state") in flink_rest.TERMINAL_JOB_STATES:
        return job["state"]
    flink_rest.cancel_job(ref.rest_url, ref.job_id)
    state = _final_state(ref, deadline_s, "CANCELED")
    retention_after_stop(ref)
    return state
