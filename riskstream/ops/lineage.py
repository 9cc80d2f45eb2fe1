"""A job's restore lineage: which runs it had, what each restored from, which savepoints riskstream took.

Each job (by ``job_name``) has its own folder ``<home>/jobs/<job_name>/``:

- ``checkpoints/<flink job id>/chk-N/`` the default ``checkpoint_dir`` (one sub-folder per run: Flink
  names it by the run's job id);
- ``savepoints/savepoint-<job id[:6]>-<random>/`` the savepoints of its runs (``riskstream savepoint``,
  ``riskstream cancel``, and stop-with-savepoint of a ``riskstream run`` job);
- ``lineage.jsonl`` the record, one JSON object a line, rewritten atomically (temporary file, fsync,
  rename) on every append: ``{"kind": "run", ...}`` when a run starts (its job id is fixed before it is
  submitted, so the record exists even when the process dies before its first checkpoint) and
  ``{"kind": "savepoint", ...}`` when a savepoint completes, and ``{"kind": "end", ...}`` when a ``riskstream
  run`` process saw its job end (its final state: FINISHED, CANCELED or FAILED).

A run also records how a later start can tell whether it is still alive (``runner``, ``pid``, ``pid_start``,
``host``, ``rest_url``); :mod:`.runguard` refuses a second start of a live job before anything is written.

A snapshot (checkpoint or savepoint) counts as completed only when its ``_metadata`` starts with Flink's
metadata header: the magic int ``0x4960672D``, the serializer version (an int; 6 in Flink 2.2) and the
checkpoint id (a long) -- ``Checkpoints.storeCheckpointMetadata`` writes these first and
``MetadataV2V3SerializerBase.serializeMetadata`` begins with the id, for versions 2 to 6. A ``chk-N`` without
such a ``_metadata`` (or whose id is not ``N``) is half-written and never a candidate.

How a snapshot was written is read from its ``_metadata`` too (:func:`snapshot_format`,
:func:`names_rocksdb_files`, :func:`names_changelog_handles`): a canonical savepoint restores on either state
backend, a native savepoint or a checkpoint only on the backend that wrote it, and a native savepoint of a job
with the changelog not with the changelog on Flink 2.2.1 (``restore.check_backend`` refuses those at start).
Each savepoint record carries its ``format`` and the ``backend`` and ``changelog`` of the job that took it.

:func:`resolve_latest` is ``--restore-from latest``: the completed snapshot with the highest checkpoint id
(a retained ``chk-N`` or a savepoint) of the newest run that completed one. A run that completed no
checkpoint or savepoint (killed before its first checkpoint, refused by Flink, failed at start) committed
nothing -- its sinks' transactions commit only when a snapshot completes -- so it is skipped: it never
becomes what ``latest`` resumes from. When no run completed anything, the snapshot the newest such run
restored is taken, or, if none restored anything, the start is without state. State that existed but is
gone (a restored snapshot, a recorded savepoint, or the lineage itself while the folder is not empty)
raises :class:`ManualRestoreRequired`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from .. import paths
from .errors import StartupError

METADATA_MAGIC = 0x4960672D
METADATA_VERSIONS = range(2, 7)  # versions whose body starts with the checkpoint id (Flink 2.2 writes 6)
LINEAGE_FILE = "lineage.jsonl"


class ManualRestoreRequired(StartupError):
    """``--restore-from latest`` found nothing it can prove is this job's newest state."""


# -- folders -------------------------------------------------------------------------------------------


def job_dir(job_name: str, home: Path | None = None) -> Path:
    return (home or paths.home()) / "jobs" / job_name


def default_checkpoint_dir(job_name: str) -> str:
    return (job_dir(job_name) / "checkpoints").as_uri()


def savepoints_dir(job_name: str, home: Path | None = None) -> Path:
    return job_dir(job_name, home) / "savepoints"


def local_path(uri: str) -> Path | None:
    """The local path of ``uri`` (a path, ``file:/x`` as Flink reports savepoints, or ``file:///x``); None for
    a remote file system."""
    u = urlparse(uri)
    if u.scheme == "file":
        return Path(unquote(u.path))
    if u.scheme and "://" in uri:
        return None
    return Path(uri).expanduser()


# -- snapshots -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    path: Path  # the folder holding _metadata
    checkpoint_id: int
    savepoint: bool
    written_at: float  # _metadata's modification time (epoch s)

    @property
    def uri(self) -> str:
        return self.path.resolve().as_uri()

    def age_s(self, now: float | None = None) -> float:
        return (now or time.time()) - self.written_at

    def describe(self, now: float | None = None) -> str:
        what = "savepoint" if self.savepoint else "checkpoint"
        return f"{what} {self.checkpoint_id} at {self.uri} (written {human_age(self.age_s(now))} ago)"


def human_age(s: float) -> str:
    s = max(0, int(s))
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min {s % 60} s"
    if s < 172800:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def metadata_checkpoint_id(folder: Path) -> int | None:
    """The checkpoint id in ``folder/_metadata``'s header, or None when there is no complete header."""
    head = _metadata_head(folder)
    return head[0] if head else None


def _metadata_head(folder: Path) -> tuple[int, float] | None:
    """(checkpoint id, modification time) of ``folder/_metadata`` read through one open file, or None.

    Pitfall: Flink discards a subsumed ``chk-N`` asynchronously, even after a bounded job's result has been
    returned, so the folder can vanish between any two calls on its path; one open file cannot."""
    try:
        with open(folder / "_metadata", "rb") as f:
            head = f.read(16)
            mtime = os.fstat(f.fileno()).st_mtime
    except OSError:
        return None
    if len(head) < 16:
        return None
    magic, version, cid = struct.unpack(">iiq", head)
    if magic != METADATA_MAGIC or version not in METADATA_VERSIONS or cid < 0:
        return None
    return cid, mtime


# The end of a ``_metadata`` (versions 4 to 6): the snapshot's ``CheckpointProperties``, Java-serialized. A
# savepoint's ``checkpointType`` is a ``SavepointType`` whose ``formatType`` enum constant (CANONICAL or NATIVE)
# follows its class description; a checkpoint's is a ``CheckpointType``.
_PROPERTIES = b"\xac\xed\x00\x05sr\x00\x38org.apache.flink.runtime.checkpoint.CheckpointProperties"
_SAVEPOINT_TYPE = b"org.apache.flink.runtime.checkpoint.SavepointType"
_CHECKPOINT_TYPE = b"org.apache.flink.runtime.checkpoint.CheckpointType"
_FORMAT_CONSTANT = re.compile(rb"org\.apache\.flink\.core\.execution\.SavepointFormatType.{0,160}?"
                              rb"xpt\x00[\x06\x09](NATIVE|CANONICAL)", re.S)
# RocksDB's own files, named by their local path in an IncrementalRemoteKeyedStateHandle (writeUTF): every
# RocksDB-native snapshot (an incremental checkpoint, a native savepoint) lists the instance's MANIFEST
_ROCKSDB_MANIFEST = re.compile(rb"MANIFEST-\d{6,}")
# A changelog handle (CHANGELOG_HANDLE_V2 = 14: key-group start and count, checkpointed size, the count of
# materialized handles) whose first materialized handle is RocksDB's (INCREMENTAL_KEY_GROUPS_HANDLE_V2 = 11:
# checkpoint id, then the backend's UUID as writeUTF): the keyed state of a job with the changelog
_CHANGELOG_OVER_ROCKSDB = re.compile(rb"\x0e.{16}\x00\x00\x00[\x01-\x7f]\x0b.{8}\x00\x24"
                                     rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.S)


def snapshot_format(folder: Path | str) -> str | None:
    """How Flink wrote the snapshot in ``folder`` (a path or file URI), from its ``_metadata``: ``"canonical"``
    or ``"native"`` for a savepoint, ``"checkpoint"`` for a checkpoint; None when it does not say (no file, a
    remote one, or metadata older than version 4). Reads the file's last 8 KB only."""
    p = local_path(str(folder)) if isinstance(folder, str) else folder
    if p is None:
        return None
    try:
        with open(p / "_metadata", "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            tail = f.read()
    except OSError:
        return None
    i = tail.rfind(_PROPERTIES)
    if i < 0:
        return None
    props = tail[i:]
    if _SAVEPOINT_TYPE in props:
        m = _FORMAT_CONSTANT.search(props)
        return m.group(1).decode().lower() if m else None
    return "checkpoint" if _CHECKPOINT_TYPE in props else None


def names_rocksdb_files(folder: Path | str) -> bool:
    """Whether the snapshot's keyed state is in RocksDB's own format: its ``_metadata`` names a RocksDB
    ``MANIFEST-NNNNNN`` as a state handle's local path (a length-prefixed string). True for RocksDB's
    incremental checkpoints and native savepoints (also under the changelog); False for canonical savepoints,
    the hashmap backend's snapshots and RocksDB's full (non-incremental) ones, which this cannot tell apart."""
    p = local_path(str(folder)) if isinstance(folder, str) else folder
    try:
        data = (p / "_metadata").read_bytes() if p is not None else b""
    except OSError:
        return False
    return any(m.start() >= 2 and struct.unpack(">H", data[m.start() - 2:m.start()])[0] == m.end() - m.start()
               for m in _ROCKSDB_MANIFEST.finditer(data))


def names_changelog_handles(folder: Path | str) -> bool:
    """Whether the snapshot's keyed state is the changelog's over RocksDB (a job with the changelog wrote it:
    its checkpoints, and its native savepoints, which wrap RocksDB's files in the changelog's handle)."""
    p = local_path(str(folder)) if isinstance(folder, str) else folder
    try:
        data = (p / "_metadata").read_bytes() if p is not None else b""
    except OSError:
        return False
    return _CHANGELOG_OVER_ROCKSDB.search(data) is not None


def read_snapshot(folder: Path | str, savepoint: bool | None = None) -> Snapshot | None:
    """The completed snapshot in ``folder`` (a path or file URI), or None (missing, half-written, a ``chk-N``
    whose header names another id)."""
    p = local_path(str(folder)) if isinstance(folder, str) else folder
    if p is None:
        return None
    head = _metadata_head(p)
    if head is None:
        return None
    cid, mtime = head
    if p.name.startswith("chk-") and p.name[4:] != str(cid):
        return None
    if savepoint is None:
        savepoint = not p.name.startswith("chk-")
    return Snapshot(p, cid, savepoint, mtime)


def run_checkpoints(checkpoint_dir: str, job_id: str) -> tuple[list[Snapshot], list[Path]]:
    """(completed retained checkpoints, half-written ``chk-N`` folders) of one run."""
    base = local_path(checkpoint_dir)
    if base is None:
        return [], []
    done, half = [], []
    for chk in sorted((base / job_id).glob("chk-*")):
        s = read_snapshot(chk, savepoint=False)
        (done.append(s) if s else half.append(chk))
    return done, half


# -- the record ----------------------------------------------------------------------------------------


def lineage_path(job_name: str, home: Path | None = None) -> Path:
    return job_dir(job_name, home) / LINEAGE_FILE


def read(job_name: str, home: Path | None = None) -> list[dict]:
    """The lineage records, oldest first ([] when there is no lineage). An unreadable line is skipped:
    every write replaces the whole file atomically, so one only appears if someone edited it."""
    p = lineage_path(job_name, home)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("kind") in ("run", "savepoint", "end"):
            out.append(rec)
    return out


def append(job_name: str, record: dict, home: Path | None = None) -> None:
    """Add ``record``: the file is rewritten to a temporary file, fsynced and renamed over the old one, so a
    reader (or a crash) sees the old lineage or the new one, never a torn line."""
    p = lineage_path(job_name, home)
    p.parent.mkdir(parents=True, exist_ok=True)
    old = p.read_bytes() if p.exists() else b""
    if old and not old.endswith(b"\n"):
        old += b"\n"
    fd, tmp = tempfile.mkstemp(prefix=".lineage-", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(old + json.dumps(record, sort_keys=True).encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # the rename itself durable
        dfd = os.open(p.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def record_run(job_name: str, job_id: str, checkpoint_dir: str, restored_from: Snapshot | None,
               extra: dict | None = None, home: Path | None = None) -> dict:
    rec = {"kind": "run", "job_id": job_id, "started_at": int(time.time() * 1000),
           "checkpoint_dir": checkpoint_dir,
           "restored_from": restored_from.uri if restored_from else None,
           "restored_checkpoint_id": restored_from.checkpoint_id if restored_from else None,
           **(extra or {})}
    append(job_name, rec, home)
    return rec


def run_backend(run: dict | None) -> str | None:
    """The state backend a run recorded (``state.backend.type`` of its ``flink_settings``), or None."""
    backend = ((run or {}).get("flink_settings") or {}).get("state.backend.type")
    return backend if backend in ("hashmap", "rocksdb") else None


def run_changelog(run: dict | None) -> bool | None:
    """Whether a run recorded the changelog on (``state.changelog.enabled`` of its ``flink_settings``)."""
    settings = (run or {}).get("flink_settings")
    if not settings:
        return None
    return str(settings.get("state.changelog.enabled", "")).lower() == "true"


def record_savepoint(job_name: str, job_id: str, location: str, stopped: bool, home: Path | None = None,
                     backend: str | None = None, changelog: bool | None = None) -> dict | None:
    """Record a completed savepoint of one of the job's runs (once per location); None if it is not one. The
    record carries the savepoint's ``format`` (from its ``_metadata``), the ``backend`` that wrote it and
    whether the ``changelog`` was on (given, else as the run recorded them): a native savepoint restores only
    on that backend, and one of a job with the changelog not with the changelog (``restore.check_backend``)."""
    snap = read_snapshot(location, savepoint=True)
    if snap is None:
        return None
    records = read(job_name, home)
    if any(r["kind"] == "savepoint" and r.get("path") == snap.uri for r in records):
        return None
    run = next((r for r in records if r["kind"] == "run" and r.get("job_id") == job_id), None)
    rec = {"kind": "savepoint", "job_id": job_id, "path": snap.uri, "checkpoint_id": snap.checkpoint_id,
           "taken_at": int(snap.written_at * 1000), "stopped": stopped, "format": snapshot_format(snap.path),
           "backend": backend or run_backend(run), "changelog": changelog if changelog is not None else run_changelog(run)}
    append(job_name, rec, home)
    return rec


def record_end(job_name: str, job_id: str, state: str, home: Path | None = None) -> dict:
    """Record that run ``job_id`` ended in ``state`` (written by the ``riskstream run`` process that ran it)."""
    rec = {"kind": "end", "job_id": job_id, "state": state, "ended_at": int(time.time() * 1000)}
    append(job_name, rec, home)
    return rec


def find_job(job_id: str, home: Path | None = None) -> str | None:
    """The job name whose lineage has a run with ``job_id``, if any."""
    root = (home or paths.home()) / "jobs"
    for lf in sorted(root.glob(f"*/{LINEAGE_FILE}")):
        if any(r["kind"] == "run" and r.get("job_id") == job_id for r in read(lf.parent.name, home)):
            return lf.parent.name
    return None


# -- resolution ----------------------------------------------------------------------------------------


def run_savepoints(job_name: str, run: dict, records: list[dict], home: Path | None = None) -> list[Snapshot]:
    """Completed savepoints of one run: the recorded ones, and any ``savepoint-<job id[:6]>-*`` folder in the
    job's savepoints folder written after the run started (stop-with-savepoint of a MiniCluster run ends
    its process before anyone can ask its REST API where the savepoint went)."""
    job_id = run["job_id"]
    found: dict[Path, Snapshot] = {}
    for r in records:
        if r["kind"] == "savepoint" and r.get("job_id") == job_id:
            s = read_snapshot(r["path"], savepoint=True)
            if s:
                found[s.path.resolve()] = s
    started = run.get("started_at", 0) / 1000
    for d in savepoints_dir(job_name, home).glob(f"savepoint-{job_id[:6]}-*"):
        s = read_snapshot(d, savepoint=True)
        if s and s.written_at >= started - 1:
            found.setdefault(s.path.resolve(), s)
    return list(found.values())


@dataclass(frozen=True)
class Resolution:
    snapshot: Snapshot | None  # None: start without state (no run of the job completed anything)
    how: str  # why this one, for the operator
    run_id: str | None = None  # the run that wrote it (None: unknown or a restored snapshot)


def completed_by_run(job_name: str, run: dict, records: list[dict], home: Path | None = None) -> list[Snapshot] | None:
    """The completed snapshots of one run (retained checkpoints and savepoints); None when its checkpoints
    are on a remote file system, so whether it completed any cannot be seen from here."""
    sps = run_savepoints(job_name, run, records, home)
    if lineage_local(run) is None:
        return sps or None
    done, _ = run_checkpoints(run["checkpoint_dir"], run["job_id"])
    return done + sps


def lineage_local(run: dict) -> Path | None:
    return local_path(run.get("checkpoint_dir") or "")


BOOTSTRAP_RUN = "bootstrap"  # the run id under which `riskstream bootstrap` records its savepoints


def resolve_latest(job_name: str, home: Path | None = None) -> Resolution | None:
    """The snapshot ``--restore-from latest`` restores (see the module's doc); None when the job never ran (no
    lineage and nothing in its folder). Raises :class:`ManualRestoreRequired` when state existed but cannot be
    named."""
    records = read(job_name, home)
    # `riskstream bootstrap` writes savepoints recorded under run "bootstrap": the newest still readable one
    # is the state to start from unless a run recorded after it completed (or restored) something
    boot_at, boot = -1, None
    for i, r in enumerate(records):
        if r["kind"] == "savepoint" and r.get("job_id") == BOOTSTRAP_RUN:
            snap = read_snapshot(r["path"], savepoint=True)
            if snap is not None:
                boot_at, boot = i, snap
    runs = [r for i, r in enumerate(records) if r["kind"] == "run" and i > boot_at]
    jd = job_dir(job_name, home)
    if not runs and boot is not None:
        return Resolution(boot, "the state `riskstream bootstrap` wrote from history (no run since)", BOOTSTRAP_RUN)
    if not runs:
        traces = [p for p in (jd / "checkpoints", jd / "savepoints") if p.is_dir() and any(p.iterdir())]
        if traces:
            raise ManualRestoreRequired(
                f"job {job_name} has run before ({', '.join(str(t) for t in traces)} not empty) but its lineage "
                f"({lineage_path(job_name, home)}) is gone: manual restore required. Name the snapshot with "
                "--restore-from PATH (`riskstream snapshots` lists them), or start without --restore-from (the "
                "start is checked against the committed output)")
        return None
    skipped: list[str] = []
    restored: list[Snapshot] = []  # what the skipped runs restored, still readable
    gone: list[str] = []  # state the skipped runs restored or recorded that no longer exists
    for run in reversed(runs):
        cands = completed_by_run(job_name, run, records, home)
        if cands is None:
            raise ManualRestoreRequired(
                f"run {run['job_id']} of job {job_name} checkpoints to {run.get('checkpoint_dir')}, which riskstream "
                "cannot list, and took no savepoint here: manual restore required (--restore-from PATH)")
        if cands:
            best = max(cands, key=lambda s: (s.checkpoint_id, s.savepoint))
            how = f"the newest completed snapshot of run {run['job_id']}"
            if skipped:
                how += (f"; the newer run(s) {', '.join(skipped)} completed no snapshot, so they committed nothing "
                        "and are skipped")
            else:
                how += ", the newest run"
            return Resolution(best, how, run["job_id"])
        skipped.append(run["job_id"])
        src = run.get("restored_from")
        if src:
            snap = read_snapshot(src)
            (restored.append(snap) if snap else gone.append(src))
        gone += [r["path"] for r in records if r["kind"] == "savepoint" and r.get("job_id") == run["job_id"]
                 and read_snapshot(r["path"], savepoint=True) is None]
    if restored:
        # Nothing completed since: the committed output continues from what the newest of them restored
        best = restored[0]
        return Resolution(best, f"no run completed a snapshot since it was restored (run(s) {', '.join(skipped)} "
                                "completed no snapshot; the newest of them had restored from this one)")
    if boot is not None:  # the runs since the bootstrap completed nothing and restored nothing readable
        return Resolution(boot, f"the state `riskstream bootstrap` wrote from history (run(s) {', '.join(skipped)} "
                                "since completed no snapshot)", BOOTSTRAP_RUN)
    if gone:
        raise ManualRestoreRequired(
            f"no run of job {job_name} has a completed snapshot left, and state it had is gone or incomplete "
            f"({', '.join(list(dict.fromkeys(gone))[:3])}): manual restore required (--restore-from PATH; `riskstream snapshots "
            f"{job_name}` lists what there is)")
    return Resolution(None, f"no run of job {job_name} ({', '.join(skipped)}) completed a checkpoint or savepoint "
                            "and none restored one, so none committed anything: a start without state (checked "
                            "against the committed output)")


# -- retention -----------------------------------------------------------------------------------------


def all_snapshots(job_name: str, home: Path | None = None) -> tuple[list[Snapshot], list[Path]]:
    """(every completed snapshot of the job's runs and savepoints folder, half-written ``chk-N`` and
    ``savepoint-*`` folders)."""
    records = read(job_name, home)
    done: dict[Path, Snapshot] = {}
    half: list[Path] = []
    ck_dirs = {r["checkpoint_dir"] for r in records if r["kind"] == "run"}
    for ck in ck_dirs:
        base = local_path(ck)
        if base is None or not base.is_dir():
            continue
        for run_dir in base.iterdir():
            if run_dir.is_dir():
                d, h = run_checkpoints(ck, run_dir.name)
                done.update((s.path.resolve(), s) for s in d)
                half += h
    for sp in savepoints_dir(job_name, home).glob("savepoint-*"):
        s = read_snapshot(sp, savepoint=True)
        if s:
            done.setdefault(s.path.resolve(), s)
        elif sp.is_dir():
            half.append(sp)  # a savepoint that failed or was cut off: never restorable
    for r in records:
        if r["kind"] == "savepoint":
            s = read_snapshot(r["path"], savepoint=True)
            if s:
                done.setdefault(s.path.resolve(), s)
    return list(done.values()), half


def referenced_by(kept: list[Snapshot]) -> list[bytes]:
    """The ``_metadata`` bytes of ``kept``: Flink writes the path of every file a snapshot's state handles
    point at into it, so a folder a kept snapshot still needs appears there by name."""
    out = []
    for s in kept:
        try:
            out.append((s.path / "_metadata").read_bytes())
        except OSError:
            pass
    return out


def _needed(folder: Path, metas: list[bytes]) -> bool:
    """Whether a kept snapshot's metadata names a file under ``folder`` (matched on its last two path
    parts, ``<run>/chk-N/`` or ``<run>/shared/``: robust to symlinked or relative roots)."""
    tail = f"/{folder.parent.name}/{folder.name}/".encode()
    return any(tail in m for m in metas)


def prune(job_name: str, keep: int, protect: tuple[Path, ...] = (), home: Path | None = None) -> list[Path]:
    """Keep the newest ``keep`` completed snapshots of the job (by ``_metadata`` time; and whatever is in
    ``protect``, e.g. the one being restored); remove the others, every half-written ``chk-N`` and every
    half-written savepoint folder of the job (call it only when no run of the job is alive -- at a start,
    after :mod:`.runguard` claimed the job, or when its run stopped: a live run's next checkpoint or
    savepoint is half-written while it is taken).

    Never removed: savepoints outside the job's folder, and any folder a kept snapshot still reads. A run
    that restored a checkpoint in CLAIM mode (see :func:`restore_mode`) keeps referencing the incremental
    files of the run it restored (``<old run>/shared/``, even ``<old run>/chk-N/`` files) until Flink
    subsumes them; those folders stay while a kept snapshot's ``_metadata`` names them. The changelog files of
    the job's runs go the same way (:func:`prune_changelog`). Returns what was removed."""
    done, half = all_snapshots(job_name, home)
    protect_r = {p.resolve() for p in protect}
    ordered = sorted(done, key=lambda s: s.written_at, reverse=True)
    keep_set = {s.path.resolve() for s in ordered[:keep]} | protect_r
    metas = referenced_by([s for s in ordered if s.path.resolve() in keep_set]
                          + [read_snapshot(p) for p in protect_r if read_snapshot(p) is not None])
    own = job_dir(job_name, home).resolve()
    removed: list[Path] = []
    for s in ordered[keep:]:
        p = s.path.resolve()
        if p in keep_set or _needed(p, metas):
            continue
        if s.savepoint and own not in p.parents:
            continue
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    for h in half:
        if h.resolve() not in protect_r:
            shutil.rmtree(h, ignore_errors=True)
            removed.append(h)
    # a run folder left with no chk-N holds only shared/ and taskowned/: removed unless a kept snapshot
    # (one restored from it in CLAIM mode, or later ones of that run) still reads its files
    for r in {p.parent for p in removed if p.name.startswith("chk-")}:
        if r.is_dir() and not any(r.glob("chk-*")) and not any(
                _needed(sub, metas) for sub in r.iterdir() if sub.is_dir()):
            shutil.rmtree(r, ignore_errors=True)
    # private copies of savepoints restored in CLAIM mode: Flink removes a copy once it is subsumed; one left
    # (its run died first) goes when no kept snapshot reads it
    for c in claimed_dir(job_name, home).glob("*"):
        if c.resolve() not in protect_r and not _needed(c, metas):
            shutil.rmtree(c, ignore_errors=True)
            removed.append(c)
    removed += prune_changelog(read(job_name, home), metas)
    return removed


def changelog_run_dirs(records: list[dict]) -> list[Path]:
    """The changelog folders of the job's runs: ``<base>/<flink job id>`` (Flink writes the log of a run to
    ``<base>/<job id>/dstl/``), ``<base>`` as each run recorded it (``state.changelog.dstl.dfs.base-path`` in
    its ``flink_settings``: the job's own ``changelog/`` on a MiniCluster, the cluster's on a cluster)."""
    out = []
    for r in records:
        base = (r.get("flink_settings") or {}).get("state.changelog.dstl.dfs.base-path") if r["kind"] == "run" else None
        local = local_path(base) if base else None
        if local is not None and r.get("job_id"):
            out.append(local / r["job_id"])
    return out


def prune_changelog(records: list[dict], metas: list[bytes]) -> list[Path]:
    """Remove the changelog files of the job's runs that no kept snapshot reads (call it only when no run of
    the job is alive, as :func:`prune`). Flink discards a running job's log once materializations and newer
    checkpoints subsume it, but a run that ended leaves the files its retained checkpoint named, and whatever
    it uploaded after that; once that checkpoint is pruned, nothing would remove them. A file stays while a
    kept snapshot's ``_metadata`` names it (a retained checkpoint, or one restored in CLAIM mode from it)."""
    removed: list[Path] = []
    for run_dir in changelog_run_dirs(records):
        dstl = run_dir / "dstl"
        if not dstl.is_dir():
            continue
        for f in dstl.iterdir():
            if f.is_file() and not any(f.name.encode() in m for m in metas):
                f.unlink(missing_ok=True)
                removed.append(f)
        if not any(dstl.iterdir()):
            shutil.rmtree(run_dir, ignore_errors=True)
    return removed


# -- restore modes ---------------------------------------------------------------------------------------


def claimed_dir(job_name: str, home: Path | None = None) -> Path:
    return job_dir(job_name, home) / "claimed"


def restore_mode(job_name: str, snap: Snapshot, changelog: bool, home: Path | None = None) -> tuple[str, str, str]:
    """(the path Flink restores, ``CLAIM`` or ``NO_CLAIM``, a note for the operator).

    - A checkpoint (the job's own, ``chk-N``): CLAIM. Flink takes the files over, deletes them once newer
      checkpoints subsume them, and the next checkpoint is incremental on top of them. NO_CLAIM would force a
      full first checkpoint after every restore (with RocksDB at a million users, hundreds of MB in one
      checkpoint right when the job catches up).
    - A savepoint: NO_CLAIM, so it stays for roll-backs and other starts, except with the changelog, which
      cannot take the full first checkpoint NO_CLAIM needs: then a private copy
      (``jobs/<job>/claimed/<savepoint>``) is restored in CLAIM mode and the savepoint itself is untouched.
      A savepoint Flink cannot see as a local folder (s3://, hdfs://) is claimed in place with the changelog,
      and the note says Flink will delete it.
    """
    uri = snap.uri if snap.checkpoint_id >= 0 else str(snap.path)
    if not snap.savepoint:
        return uri, "CLAIM", ""
    if not changelog:
        return uri, "NO_CLAIM", ""
    local = local_path(uri)
    if local is None or not local.is_dir():
        return uri, "CLAIM", (f"changelog on: restoring {uri} in CLAIM mode; Flink deletes it once later "
                              "checkpoints subsume it (copy it first to keep it)")
    dest = claimed_dir(job_name, home) / f"{local.name}-{int(time.time() * 1000)}"
    shutil.copytree(local, dest)
    return dest.resolve().as_uri(), "CLAIM", (
        f"changelog on: restoring a private copy of {local.name} in CLAIM mode ({dest}); the savepoint itself "
        "stays")
