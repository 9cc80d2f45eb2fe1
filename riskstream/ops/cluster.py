"""A real local standalone Flink cluster (one JobManager, one TaskManager), run from the PyFlink install.

``up`` builds a private Flink home under ``<home>/flink-cluster/`` (or ``root``):

- ``bin/``: copies of the distribution's scripts (a pip install may lack execute bits; and ``bin/flink``
  there derives its home, hence this cluster's ``conf/``, from its own location: no variable needed);
- ``lib/``, ``opt/``, ``plugins/``: links to the distribution's jars (the venv is never modified), plus
  ``opt/flink-python`` linked into ``lib/`` for PyFlink's thread mode (see :func:`cluster_config`);
- ``conf/``: the distribution's files with ``config.yaml`` rewritten on every start;
- ``log/``, ``run/`` (pid files, the REST port), ``tmp/`` (Flink's scratch space, removed by ``down``),
  ``checkpoints/`` and ``savepoints/`` (the cluster defaults; a job may set its own).

Both daemons run in the foreground (``start-foreground``), each in its own process group; ``down`` stops
both groups (TERM, then KILL after a grace period), so Python workers go too and no process is left.
Readiness is REST ``/overview`` reporting a TaskManager with a free slot, polled under a deadline.

Submitting a PyFlink job (verified with the decision job): ``bin/flink run -m 127.0.0.1:<port> -d -py
entry.py`` with ``env=flink_env(lay)``, which puts the project root on ``PYTHONPATH`` (the client and the
thread-mode workers then import ``pipelines``/``udfs``/``riskstream`` from the checkout on this machine).
The Kafka connector travels with each job through ``pipeline.jars`` (set by the job), so ``lib/`` stays
the distribution's. Do not pass ``-pyfs <checkout>``: the client zips the whole folder, ``.venv`` included.
:mod:`riskstream.ops.submit` (``riskstream submit / savepoint / cancel``) does this for the decision job.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

from .. import paths
from ..config import CHANGELOG_BASE_PATH, CHANGELOG_SETTINGS, MATERIALIZE_INTERVAL, ROCKSDB_SETTINGS
from . import flink_rest
from .procs import free_port, group_alive, pid_alive, port_in_use

HOST = "127.0.0.1"
JOBMANAGER_MEMORY = "1600m"
TASKMANAGER_MEMORY = "2560m"


@dataclass(frozen=True)
class ClusterLayout:
    root: Path
    rest_port: int

    @property
    def conf_dir(self) -> Path:
        return self.root / "conf"

    @property
    def log_dir(self) -> Path:
        return self.root / "log"

    @property
    def bin_dir(self) -> Path:
        return self.root / "bin"

    @property
    def lib_dir(self) -> Path:
        return self.root / "lib"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def tmp_dir(self) -> Path:
        return self.root / "tmp"

    @property
    def checkpoints_dir(self) -> Path:
        return self.root / "checkpoints"

    @property
    def savepoints_dir(self) -> Path:
        return self.root / "savepoints"

    @property
    def checkpoints_uri(self) -> str:
        return self.checkpoints_dir.resolve().as_uri()

    @property
    def savepoints_uri(self) -> str:
        return self.savepoints_dir.resolve().as_uri()

    @property
    def jobmanager_pid_file(self) -> Path:
        return self.run_dir / "jobmanager.pid"

    @property
    def taskmanager_pid_file(self) -> Path:
        return self.run_dir / "taskmanager.pid"

    def taskmanager_pid_files(self) -> list[Path]:
        """The first TaskManager's pid file, then ``taskmanager-2.pid``, ... of the others that ran."""
        more = sorted(self.run_dir.glob("taskmanager-*.pid"), key=lambda f: int(f.stem.split("-")[1])) \
            if self.run_dir.is_dir() else []
        return [self.taskmanager_pid_file, *more]

    @property
    def port_file(self) -> Path:
        return self.run_dir / "rest.port"

    @property
    def flink_bin(self) -> Path:
        return self.bin_dir / "flink"

    @property
    def rest_url(self) -> str:
        return f"http://{HOST}:{self.rest_port}"

    @property
    def address(self) -> str:
        """What ``flink run -m`` takes."""
        return f"{HOST}:{self.rest_port}"


def default_root() -> Path:
    return paths.home() / "flink-cluster"


def _root(root: Path | str | None) -> Path:
    return Path(root).resolve() if root else default_root()


def layout(rest_port: int | None = None, root: Path | str | None = None) -> ClusterLayout:
    """The layout under ``root``; without a port, the one recorded by the last ``up`` (else 8081)."""
    r = _root(root)
    if rest_port is None:
        try:
            rest_port = int((r / "run" / "rest.port").read_text().strip())
        except (OSError, ValueError):
            rest_port = 8081
    return ClusterLayout(root=r, rest_port=rest_port)


def rest_url(root: Path | str | None = None) -> str:
    return layout(root=root).rest_url


def distribution() -> Path:
    """The Flink distribution inside the installed ``pyflink`` package (bin/, conf/, lib/, opt/)."""
    import pyflink

    d = Path(pyflink.__file__).resolve().parent
    for part in ("bin/config.sh", "bin/flink", "conf/config.yaml", "lib", "opt"):
        if not (d / part).exists():
            raise RuntimeError(f"the pyflink package at {d} has no {part}: it is not a full Flink distribution")
    return d


def _recorded_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _daemon_files(lay: ClusterLayout) -> list[tuple[str, Path]]:
    """(name, pid file) of the JobManager and every TaskManager: taskmanager, taskmanager-2, ..."""
    return [("jobmanager", lay.jobmanager_pid_file)] + [(f.stem, f) for f in lay.taskmanager_pid_files()]


def pids(root: Path | str | None = None) -> dict[str, int | None]:
    """The live daemon pids (each also its process group id); None for a daemon not running. Keys:
    ``jobmanager``, ``taskmanager``, and ``taskmanager-2`` ... when more TaskManagers were started."""
    lay = layout(root=root)
    out = {}
    for name, f in _daemon_files(lay):
        pid = _recorded_pid(f)
        out[name] = pid if pid and pid_alive(pid) else None
    return out


def _flatten(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _yaml_scalar(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_yaml_scalar(x) for x in v) + "]"
    return json.dumps(str(v))  # a JSON string is a valid double-quoted YAML scalar


def _site_packages() -> str:
    dirs = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    return os.pathsep.join(dict.fromkeys(d for d in dirs if os.path.isdir(d)))


@dataclass(frozen=True)
class ClusterSettings:
    """What ``up`` sizes and chooses (``riskstream cluster up`` flags, else ``RISKSTREAM_*`` variables).

    The default is the production configuration: RocksDB with incremental checkpoints and bloom filters,
    timers in RocksDB, the changelog over it (checkpoints upload the changes since the last one, into
    ``<root>/changelog/<flink job id>/dstl``, RocksDB's own files every 3 min; ``changelog`` unset: on with
    rocksdb, off with hashmap; restores on it run in CLAIM mode, a savepoint from a private copy),
    a 2,560 MB TaskManager process of which Flink gives ~40 % of its Flink memory to managed memory
    (RocksDB's cache and write buffers, shared with the Python workers). ``hashmap`` keeps state as objects
    on the heap with full snapshots: for small state only (docs/operations.md, "State backends")."""
    state_backend: str = "rocksdb"
    incremental_checkpoints: bool = True
    changelog: bool | None = None  # None: on with rocksdb
    rocksdb_local_dir: str = ""
    taskmanagers: int = 1
    taskmanager_memory: str = TASKMANAGER_MEMORY
    managed_memory: str = ""
    taskmanager_heap: str = ""
    flink_conf: tuple[str, ...] = ()

    @property
    def changelog_on(self) -> bool:
        return self.changelog if self.changelog is not None else self.state_backend == "rocksdb"

    def config(self, changelog_uri: str = "") -> dict[str, object]:
        out: dict[str, object] = {"state.backend.type": self.state_backend}
        if self.state_backend == "rocksdb":
            out["execution.checkpointing.incremental"] = self.incremental_checkpoints
            out.update(ROCKSDB_SETTINGS)
            if self.rocksdb_local_dir:
                out["state.backend.rocksdb.localdir"] = self.rocksdb_local_dir
        if changelog_uri:  # the storage is the TaskManagers' own setting: a job's `--changelog` needs it too
            out.update(CHANGELOG_SETTINGS)
            out[CHANGELOG_BASE_PATH] = changelog_uri
        out["state.changelog.enabled"] = self.changelog_on
        if self.taskmanager_heap:  # heap and managed memory fixed: Flink derives the process size from them
            out["taskmanager.memory.task.heap.size"] = self.taskmanager_heap
            out["taskmanager.memory.managed.size"] = self.managed_memory or "512m"
        else:
            out["taskmanager.memory.process.size"] = self.taskmanager_memory
            if self.managed_memory:
                out["taskmanager.memory.managed.size"] = self.managed_memory
        for item in self.flink_conf:
            k, _, v = item.partition("=")
            out[k.strip()] = v.strip()
        return out


def cluster_config(lay: ClusterLayout, slots: int, rpc_port: int,
                   settings: ClusterSettings | None = None) -> dict[str, object]:
    """The settings written over the distribution's config.yaml (flattened keys, which Flink 2 accepts);
    ``settings`` (state backend, memory, ``flink_conf``) last."""
    return {
        "jobmanager.rpc.address": HOST,
        "jobmanager.rpc.port": rpc_port,
        "jobmanager.bind-host": HOST,
        "jobmanager.memory.process.size": JOBMANAGER_MEMORY,
        "taskmanager.bind-host": HOST,
        "taskmanager.host": HOST,
        "taskmanager.numberOfTaskSlots": slots,
        "rest.address": HOST,
        "rest.bind-address": HOST,
        "rest.port": lay.rest_port,
        "parallelism.default": 1,
        # both daemons start together and the TaskManager's first registration usually precedes the
        # ResourceManager; the default 10 s retry delay would then add 10 s to every start
        "cluster.registration.error-delay": 1000,
        # a TaskManager that died is declared lost after `heartbeat.rpc-failure-threshold` (2) heartbeats that
        # cannot reach it: with the default 10 s interval, about 20 s, during which every restart of the job
        # deploys to its slots again and fails, spending a restart attempt each (8 of the job's 10 in
        # tests/test_taskmanager_loss.py's first trial, with 2 s restart delays). Every 2 s: lost within a few
        # seconds.
        # heartbeat.timeout (50 s) is unchanged: a slow, loaded TaskManager is not declared lost sooner.
        "heartbeat.interval": 2000,
        # REST metric queries answer from a cache the JobManager refreshes this often (default 10 s)
        "metrics.fetcher.update-interval": 2000,
        "execution.checkpointing.storage": "filesystem",
        "execution.checkpointing.dir": lay.checkpoints_uri,
        "execution.checkpointing.savepoint-dir": lay.savepoints_uri,
        "env.log.dir": str(lay.log_dir),
        "env.pid.dir": str(lay.run_dir),
        "env.stdout-err.redirect-to-file": True,
        # scratch space (blobs, python-dist-*, -pyfs copies, web uploads) inside the cluster folder, removed
        # by `down`, instead of piling up in /tmp; the CLI's own temp files (zipped -pyfs folders) too
        "io.tmp.dirs": str(lay.tmp_dir),
        "blob.storage.directory": str(lay.tmp_dir / "blobs"),
        "web.tmpdir": str(lay.tmp_dir / "web"),
        "env.java.opts.client": f"-Djava.io.tmpdir={lay.tmp_dir / 'client'}",
        # flink-python is in lib/ (see _sync_home): pemja's native library must be loaded once per JVM by
        # the parent class loader, not once per job from the job's own copy of flink-python; otherwise the
        # second thread-mode job on a TaskManager fails with "NoSuchFieldException: loadedLibraryNames"
        "classloader.parent-first-patterns.additional": "pemja.",
        # the Python workers (process mode) and the client of `flink run -py` must be this interpreter, or
        # Flink starts the `python` on PATH, which has no pyflink; the embedded (thread-mode) interpreter
        # sees only python.pythonpath (a job may set its own)
        "python.executable": sys.executable,
        "python.client.executable": sys.executable,
        "python.pythonpath": _site_packages(),
        **(settings or ClusterSettings()).config((lay.root / "changelog").resolve().as_uri()),
    }


def _sync_home(lay: ClusterLayout, dist: Path) -> None:
    """(Re)build bin/, lib/, opt/ and plugins/ from the distribution: scripts copied, jars linked."""
    for sub in ("bin", "lib", "opt"):
        d = lay.root / sub
        if d.is_symlink() or d.is_file():
            d.unlink()
        elif d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
    for f in (dist / "bin").iterdir():
        if f.suffix == ".jar":
            (lay.bin_dir / f.name).symlink_to(f)
        elif f.is_file():
            shutil.copyfile(f, lay.bin_dir / f.name)
            (lay.bin_dir / f.name).chmod(0o755)
    for sub in ("lib", "opt"):
        for jar in (dist / sub).glob("*.jar"):
            (lay.root / sub / jar.name).symlink_to(jar)
    for jar in (dist / "opt").glob("flink-python*.jar"):
        (lay.lib_dir / jar.name).symlink_to(jar)
    plugins = lay.root / "plugins"
    if plugins.is_symlink() or plugins.is_file():
        plugins.unlink()
    elif plugins.exists():
        shutil.rmtree(plugins)
    if (dist / "plugins").is_dir():
        plugins.symlink_to(dist / "plugins", target_is_directory=True)
    else:
        plugins.mkdir()


def write_conf(lay: ClusterLayout, slots: int, rpc_port: int, dist: Path | None = None,
               settings: ClusterSettings | None = None) -> Path:
    """Copy the distribution's conf files into ``lay.conf_dir`` and write config.yaml there."""
    import yaml  # PyYAML: a dependency of apache-beam, which apache-flink requires

    dist = dist or distribution()
    lay.conf_dir.mkdir(parents=True, exist_ok=True)
    for f in (dist / "conf").iterdir():
        if f.is_file() and f.name != "config.yaml":
            shutil.copyfile(f, lay.conf_dir / f.name)
    (lay.conf_dir / "masters").write_text(f"{HOST}:{lay.rest_port}\n")
    (lay.conf_dir / "workers").write_text(f"{HOST}\n")
    conf = _flatten(yaml.safe_load((dist / "conf" / "config.yaml").read_text()) or {})
    ours = cluster_config(lay, slots, rpc_port, settings)
    if "taskmanager.memory.process.size" not in ours:  # sized by heap + managed: the distribution's total
        conf.pop("taskmanager.memory.process.size", None)  # would contradict them
        conf.pop("taskmanager.memory.flink.size", None)
    conf.update(ours)
    path = lay.conf_dir / "config.yaml"
    path.write_text("# written by riskstream.ops.cluster.up on every start from its flags (`riskstream cluster up "
                    "--help`); edits here are lost: use --flink-conf KEY=VALUE\n"
                    + "".join(f"{k}: {_yaml_scalar(v)}\n" for k, v in conf.items()))
    return path


def changelog_enabled(root: Path | str | None = None) -> bool:
    """Whether the local cluster's config turns the changelog on (``cluster up``'s default with rocksdb)."""
    path = layout(root=root).conf_dir / "config.yaml"
    if not path.is_file():
        return False
    import yaml  # PyYAML: a dependency of apache-beam, which apache-flink requires

    conf = _flatten(yaml.safe_load(path.read_text()) or {})
    return str(conf.get("state.changelog.enabled", "")).lower() == "true"


def flink_env(lay: ClusterLayout, project_on_pythonpath: bool = True) -> dict[str, str]:
    """Environment for the daemons and for ``bin/flink`` of this cluster.

    With ``project_on_pythonpath`` the project root leads ``PYTHONPATH``: the ``flink run -py`` client then
    imports the project's packages from the checkout, and a job that copies its ``sys.path`` into
    ``python.pythonpath`` (as the decision job does) lets the thread-mode workers do the same."""
    env = dict(os.environ)
    for k in ("FLINK_HOME", "FLINK_LIB_DIR", "FLINK_OPT_DIR", "FLINK_PLUGINS_DIR", "FLINK_BIN_DIR",
              "FLINK_ENV_JAVA_OPTS", "_FLINK_HOME_DETERMINED"):
        env.pop(k, None)
    env.update({"FLINK_CONF_DIR": str(lay.conf_dir), "FLINK_LOG_DIR": str(lay.log_dir),
                "FLINK_PID_DIR": str(lay.run_dir), "FLINK_IDENT_STRING": "riskstream",
                "STD_REDIRECT_TO_FILE": "true"})
    if project_on_pythonpath:
        parts = [str(paths.PROJECT_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(parts))
    return env


def flink_command(lay: ClusterLayout, *args: str) -> list[str]:
    """``bash <root>/bin/flink <args>``; run it with ``env=flink_env(lay)``. E.g. ``flink_command(lay, "run",
    "-m", lay.address, "-d", "-py", "entry.py")``, ``("stop", "-m", lay.address, "--savepointPath",
    lay.savepoints_uri, job_id)``, ``("run", "-m", lay.address, "-s", savepoint, "-d", "-py", "entry.py")``."""
    return ["bash", str(lay.flink_bin), *args]


def log_tail(root: Path | str | None = None, lines: int = 25) -> str:
    lay = layout(root=root)
    parts = []
    for f in sorted(lay.log_dir.glob("*")) if lay.log_dir.is_dir() else []:
        if f.suffix in (".log", ".out", ".err", ".console") and f.stat().st_size:
            tail = f.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {f.name} (last {len(tail)} lines)\n" + "\n".join(tail))
    return "\n".join(parts) or "(no log output)"


# A TaskManager process that exits on its own is started again, as a process supervisor (systemd
# Restart=on-failure, a Kubernetes pod) would: Flink stops a TaskManager on a FATAL error in a task's cleanup
# (docs/exactly-once.md: PyFlink's process-mode cleanup after a task failure), and without a replacement the
# restarted job waits for slots. Not restarted: a stop (`down` writes the marker first), a kill of the whole
# process group (a lost machine: the loop dies with it), or more than RESTARTS exits within WINDOW seconds
# (a TaskManager that cannot start). The 1 s pause is a restart backoff.
TASKMANAGER_RESTARTS, TASKMANAGER_RESTART_WINDOW_S = 5, 300
_SUPERVISE = r"""
n=0; t0=$SECONDS
while :; do
  bash "$1" start-foreground
  rc=$?
  if [ -e "$2" ]; then exit "$rc"; fi
  if [ $((SECONDS - t0)) -gt "$4" ]; then n=0; t0=$SECONDS; fi
  n=$((n + 1))
  if [ "$n" -gt "$3" ]; then
    echo "[cluster] the TaskManager exited $n times within $4 s (last code $rc); not restarting it"
    exit "$rc"
  fi
  echo "[cluster] the TaskManager exited with code $rc (see its log); starting it again"
  sleep 1
done
"""


def _stop_marker(lay: ClusterLayout) -> Path:
    return lay.run_dir / "stopping"


def _start(lay: ClusterLayout, script: str, name: str) -> subprocess.Popen:
    env = flink_env(lay, project_on_pythonpath=False)
    if name.startswith("taskmanager-"):  # its own log and .out files: the daemon script numbers them from a
        env["FLINK_IDENT_STRING"] = f"riskstream-{name}"  # pid file that TaskManagers started together race on
    cmd = ["bash", str(lay.bin_dir / script), "start-foreground"]
    if name.startswith("taskmanager"):
        cmd = ["bash", "-c", _SUPERVISE, "supervise", str(lay.bin_dir / script), str(_stop_marker(lay)),
               str(TASKMANAGER_RESTARTS), str(TASKMANAGER_RESTART_WINDOW_S)]
    with open(lay.log_dir / f"{name}.console", "ab") as sink:
        proc = subprocess.Popen(cmd, env=env, cwd=lay.root, stdout=sink,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    (lay.run_dir / f"{name}.pid").write_text(str(proc.pid))
    return proc


def up(rest_port: int | None = None, slots: int = 2, root: Path | str | None = None, deadline_s: float = 120.0,
       out=sys.stderr, settings: ClusterSettings | None = None) -> ClusterLayout:
    """Start the JobManager and ``settings.taskmanagers`` TaskManagers; return once all of them registered
    and a slot is free. ``settings``: state backend and memory (default: :class:`ClusterSettings`).

    Already running and healthy (on ``rest_port`` if given): returns its layout (its settings stay those it
    was started with; ``down`` first to change them). Running but unhealthy, or half running: refuses (run
    ``down`` first). A given ``rest_port`` that is taken: refuses."""
    settings = settings or ClusterSettings()
    r = _root(root)
    current = layout(root=r)
    live = {k: v for k, v in pids(r).items() if v}
    if live:
        ov = flink_rest.overview(current.rest_url)
        healthy = "jobmanager" in live and len(live) >= 2 and bool(ov) and ov.get("taskmanagers", 0) >= len(live) - 1
        if healthy and rest_port in (None, current.rest_port):
            print(f"[cluster] already running on {current.rest_url} (pids {live})", file=out)
            return current
        why = (f"on port {current.rest_port}, not {rest_port}" if healthy
               else f"but not healthy (REST /overview: {ov})")
        raise RuntimeError(f"a Flink cluster under {r} is running (pids {live}) {why}; stop it with `down` first")
    if rest_port is not None and port_in_use(rest_port):
        raise RuntimeError(f"REST port {rest_port} on {HOST} is taken by another process; pick another port "
                           "or leave it unset to use a free one")
    java_home = os.environ.get("JAVA_HOME")
    if shutil.which("java") is None and not (java_home and (Path(java_home) / "bin" / "java").exists()):
        raise RuntimeError("java is not on PATH (Flink 2 needs Java 11+, 17 tested); install a JDK or set JAVA_HOME")
    dist = distribution()
    lay = ClusterLayout(root=r, rest_port=rest_port or free_port())
    for d in (lay.root, lay.log_dir, lay.run_dir, lay.tmp_dir, lay.tmp_dir / "client", lay.checkpoints_dir,
              lay.savepoints_dir):
        d.mkdir(parents=True, exist_ok=True)
    for f in lay.run_dir.glob("*.pid"):
        f.unlink()
    _stop_marker(lay).unlink(missing_ok=True)
    _sync_home(lay, dist)
    write_conf(lay, slots, free_port(), dist, settings)
    lay.port_file.write_text(str(lay.rest_port))
    t0 = time.monotonic()
    procs = {"jobmanager": _start(lay, "jobmanager.sh", "jobmanager")}
    for i in range(1, settings.taskmanagers + 1):
        name = "taskmanager" if i == 1 else f"taskmanager-{i}"
        procs[name] = _start(lay, "taskmanager.sh", name)
    last = None
    while True:
        for name, p in procs.items():
            if p.poll() is not None:
                tail = log_tail(r)
                down(root=r, out=out)
                raise RuntimeError(f"the Flink {name} exited with code {p.returncode} during start-up "
                                   f"(logs in {lay.log_dir}):\n{tail}")
        last = flink_rest.overview(lay.rest_url)
        # every TaskManager and all of its slots: a TaskManager counts in /overview before its slot report does
        if (last and last.get("taskmanagers", 0) >= settings.taskmanagers
                and last.get("slots-total", 0) >= settings.taskmanagers * slots and last.get("slots-available", 0) >= 1):
            break
        if time.monotonic() - t0 > deadline_s:
            tail = log_tail(r)
            down(root=r, out=out)
            raise TimeoutError(f"the Flink cluster was not ready within {deadline_s:.0f}s (last REST /overview: "
                               f"{last}; logs in {lay.log_dir}):\n{tail}")
        time.sleep(0.2)  # polling interval of the readiness loop, not synchronisation
    tms = ", ".join(str(p.pid) for n, p in procs.items() if n != "jobmanager")
    conf = settings.config((lay.root / "changelog").resolve().as_uri())
    changelog = (f"on (into {lay.root / 'changelog'}, materialized every {conf.get(MATERIALIZE_INTERVAL)})"
                 if str(conf.get("state.changelog.enabled")).lower() == "true" else "off")
    print(f"[cluster] up on {lay.rest_url} in {time.monotonic() - t0:.1f}s (JobManager pid "
          f"{procs['jobmanager'].pid}, TaskManager pid(s) {tms}, {last['slots-total']} slots; state backend "
          f"{settings.state_backend}{', incremental' if settings.state_backend == 'rocksdb' and settings.incremental_checkpoints else ''}"
          f", changelog {changelog})", file=out)
    return lay


def taskmanager_ids(rest_url: str) -> set[str]:
    """The ids of the TaskManagers the JobManager counts (empty when it does not answer)."""
    try:
        return {tm["id"] for tm in flink_rest.get(rest_url, "/taskmanagers", retry_s=0).get("taskmanagers", [])}
    except (OSError, ValueError):
        return set()


def add_taskmanager(root: Path | str | None = None, deadline_s: float = 120.0, out=sys.stderr) -> tuple[str, int]:
    """Start one more TaskManager on the running cluster, with the configuration the cluster was started with
    (its ``conf/``: same slots and memory); return ``(name, pid)`` once the JobManager has registered it.

    It takes the name of the first TaskManager whose process is gone (the replacement of a lost one: its pid
    file, log and ``.out`` files continue), else the next number (``taskmanager-3``, ...). The JobManager may
    keep counting a TaskManager that was killed until its heartbeats fail (about 10-20 s by Flink's defaults;
    ``heartbeat.interval`` and ``heartbeat.rpc-failure-threshold``), so readiness is the registration of a
    TaskManager id it did not know before the start."""
    lay = layout(root=root)
    live = pids(root)
    if not live.get("jobmanager"):
        raise RuntimeError(f"no Flink cluster running under {lay.root} (its JobManager is not alive): "
                           "start it with `riskstream cluster up`")
    known = taskmanager_ids(lay.rest_url)
    name = next((n for n, pid in live.items() if n != "jobmanager" and not pid), None)
    if name is None:
        name = f"taskmanager-{len(live)}"  # jobmanager + N TaskManagers: the next is number N + 1
    t0 = time.monotonic()
    proc = _start(lay, "taskmanager.sh", name)
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the new Flink {name} exited with code {proc.returncode} during start-up (logs in "
                               f"{lay.log_dir}):\n{log_tail(root)}")
        if taskmanager_ids(lay.rest_url) - known:
            break
        if time.monotonic() - t0 > deadline_s:
            raise TimeoutError(f"the new Flink {name} (pid {proc.pid}) did not register within {deadline_s:.0f}s "
                               f"(logs in {lay.log_dir}); stop it with `riskstream cluster down`")
        time.sleep(0.2)  # polling interval of the readiness loop, not synchronisation
    print(f"[cluster] {name} (pid {proc.pid}) registered in {time.monotonic() - t0:.1f}s", file=out)
    return name, proc.pid


def down(root: Path | str | None = None, out=sys.stderr, grace_s: float = 30.0) -> bool:
    """Stop both daemons' process groups (TERM, then KILL after ``grace_s``), wait until no process of
    theirs is left, remove the pid files and scratch space; True if something was running."""
    lay = layout(root=root)
    if lay.run_dir.is_dir():  # the TaskManagers' supervisors see it and do not start them again
        _stop_marker(lay).touch()
    groups = {}
    for name, f in reversed(_daemon_files(lay)):  # TaskManagers first
        pid = _recorded_pid(f)
        if pid and group_alive(pid):
            groups[name] = pid
    for pgid in groups.values():
        try:
            os.killpg(pgid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    t0 = time.monotonic()
    while any(group_alive(g) for g in groups.values()) and time.monotonic() - t0 < grace_s:
        time.sleep(0.1)  # polling interval while the daemons shut down
    for name, pgid in groups.items():
        if group_alive(pgid):
            print(f"[cluster] {name} (pid {pgid}) ignored SIGTERM for {grace_s:.0f}s; killing it", file=out)
            try:
                os.killpg(pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    t1 = time.monotonic()
    while any(group_alive(g) for g in groups.values()):
        if time.monotonic() - t1 > 15:
            left = [n for n, g in groups.items() if group_alive(g)]
            raise RuntimeError(f"Flink {left} still alive after SIGKILL; pids {groups}")
        time.sleep(0.05)
    for pid in groups.values():  # reap them if this process started them (no zombie left)
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
    for f in lay.run_dir.glob("*.pid") if lay.run_dir.is_dir() else []:
        f.unlink(missing_ok=True)
    if lay.tmp_dir.exists():
        shutil.rmtree(lay.tmp_dir, ignore_errors=True)
    if groups:
        print(f"[cluster] stopped ({', '.join(f'{n} pid {p}' for n, p in groups.items())}) in "
              f"{time.monotonic() - t0:.1f}s", file=out)
    else:
        print("[cluster] no Flink cluster running", file=out)
    return bool(groups)


def status(root: Path | str | None = None) -> dict:
    """running (both daemons alive), ready (a TaskManager registered), rest_url, taskmanagers, slots, jobs."""
    lay = layout(root=root)
    p = pids(root)
    st: dict = {"running": bool(p["jobmanager"] and p["taskmanager"] and all(p.values())), "ready": False,
                "rest_url": lay.rest_url,
                "pids": p, "taskmanagers": 0, "slots_total": 0, "slots_available": 0, "jobs_running": 0,
                "jobs": [], "conf_dir": str(lay.conf_dir), "log_dir": str(lay.log_dir)}
    ov = flink_rest.overview(lay.rest_url) if any(p.values()) else None
    if ov:
        st.update(taskmanagers=ov.get("taskmanagers", 0), slots_total=ov.get("slots-total", 0),
                  slots_available=ov.get("slots-available", 0), jobs_running=ov.get("jobs-running", 0),
                  flink_version=ov.get("flink-version"))
        st["ready"] = st["running"] and st["taskmanagers"] >= 1
        try:
            st["jobs"] = [{"id": j["jid"], "name": j["name"], "state": j["state"]}
                          for j in flink_rest.jobs_overview(lay.rest_url, retry_s=0)]
        except (OSError, ValueError):
            pass
    return st


def wait_for_job(job_id: str, states: tuple[str, ...] = ("FINISHED",), root: Path | str | None = None,
                 deadline_s: float = 60.0) -> str:
    """Poll REST until the job is in one of ``states``; fail at once on another terminal state, with the
    job's root cause, and at the deadline with the last state seen."""
    return flink_rest.wait_for_state(layout(root=root).rest_url, job_id, states, deadline_s)
