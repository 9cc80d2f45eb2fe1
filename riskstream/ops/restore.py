"""Where a job starts from, and the check that it never goes back in time.

:func:`resolve_restore` turns ``restore_from`` into a snapshot: a savepoint or retained checkpoint folder
named by path, or ``latest``, the newest completed snapshot in the job's lineage (:mod:`.lineage`).

:func:`check_start` compares the start with what the job already committed downstream, and refuses a
start that would decide committed events again (unless ``allow_reprocess``):

- ``G(p)``: the consumer group's committed offset of events partition ``p``. The Kafka source commits it
  only when a checkpoint (or savepoint) completes, and it is that snapshot's reading position. A snapshot
  completes only after both exactly-once sinks pre-committed the transactions holding the outputs of every
  event before that position, and those transactions are committed in the same completion notification
  (or, after a crash, by the job restoring that snapshot). So every event below ``G(p)`` has its decision
  (or dead letter) committed.
- ``S(p)``: where the start would read ``p`` from: the Kafka source's split state in the snapshot's files
  (the ``startingOffset`` of each ``KafkaPartitionSplit``), or without a snapshot, ``starting_offsets``
  (earliest: the log start; committed: ``G(p)``, else the log start; latest: the end).
- **Rule:** the start decides again ``sum over p of max(0, G(p) - S(p))`` offsets of the events topic whose
  outputs are committed; if that is above zero the start is refused. Offsets count records (plus any
  transaction markers, when the events were produced transactionally), hence "about".
- ``N(p)``: the reading position of the job's newest completed snapshot in its lineage (what
  ``--restore-from latest`` would restore). The group's commit is asynchronous: a process killed right after
  a checkpoint completed may have committed that checkpoint's transactions but not yet its offsets, so ``G``
  trails. The rule takes ``max(G(p), N(p))`` as what is committed: it may refuse a start that would in fact
  decide nothing twice (the newest snapshot's transactions never committed), never pass one that does.
- A start without state when the group has no committed offsets but the decisions topic already holds
  committed records (``read_committed`` end offset above the start) is refused too, unless it starts at the
  end (``starting_offsets=latest``): the job's decisions exist, and the offsets that would say which events
  they cover are gone.

``G`` alone can only under-count: the offset commit is asynchronous and may fail (broker down), so it can
trail the newest completed snapshot, never run ahead of it; ``N`` covers that gap.
"""

from __future__ import annotations

import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..config import JobConfig
from . import lineage
from .lineage import ManualRestoreRequired, Snapshot
from .errors import StartupError

# KafkaPartitionSplit markers for a starting offset that is not a position yet
EARLIEST, LATEST, COMMITTED = -2, -1, -3


class GoingBackInTime(StartupError):
    """The start would decide again events whose decisions are already committed."""


def resolve_restore(cfg: JobConfig, log=None) -> tuple[Snapshot | None, str]:
    """(the snapshot to restore, why) -- (None, why) for a start without state. A local path without a
    complete ``_metadata`` raises FileNotFoundError; ``latest`` with nothing to name while the job ran
    raises :class:`ManualRestoreRequired`."""
    if not cfg.restore_from:
        return None, "no --restore-from: a start without state"
    if cfg.restore_from == "latest":
        res = lineage.resolve_latest(cfg.job_name)
        if res is None:
            return None, f"--restore-from latest: job {cfg.job_name} has no lineage and no snapshot (a first start)"
        if res.snapshot is None:
            return None, f"--restore-from latest: {res.how}"
        return res.snapshot, f"--restore-from latest: {res.how}"
    local = lineage.local_path(cfg.restore_from)
    if local is None:  # s3://, hdfs://, ...: Flink checks it
        return Snapshot(Path(cfg.restore_from), -1, True, 0.0), "--restore-from (remote, unchecked)"
    snap = lineage.read_snapshot(local.expanduser().resolve())
    if snap is None:
        raise FileNotFoundError(f"restore_from {cfg.restore_from!r} is not a savepoint or checkpoint folder "
                                "(no completed _metadata with Flink's checkpoint header in it)")
    return snap, "--restore-from PATH"


def resolve_restore_path(cfg: JobConfig) -> str | None:
    """The snapshot the job restores from, as a URI; None for a start without state."""
    snap, _ = resolve_restore(cfg)
    if snap is None:
        return None
    return str(snap.path) if snap.checkpoint_id < 0 else snap.uri


# -- the snapshot's reading position ------------------------------------------------------------------


def split_offsets(data: bytes, topic: str) -> dict[int, int]:
    """The Kafka source readers' split state for ``topic`` in a snapshot file: partition -> starting offset.

    A reader's split is stored as one element of its list state: the element's length (int), then
    ``SimpleVersionedSerialization``'s version (int) and length (int), then ``KafkaPartitionSplitSerializer``'s
    topic (``writeUTF``), partition (int), starting offset and stopping offset (longs). The enumerator's
    record of assigned splits carries the same split bytes after other framing and keeps the *initial*
    offsets; the length check below (element = 8 + split) tells them apart."""
    t = topic.encode()
    needle = struct.pack(">H", len(t)) + t
    out: dict[int, int] = {}
    i = data.find(needle)
    while i >= 0:
        if i >= 12:
            outer, _version, inner = struct.unpack(">iii", data[i - 12:i])
            if inner >= len(needle) + 20 and outer == inner + 8 and i + len(needle) + 12 <= len(data):
                part, start = struct.unpack(">iq", data[i + len(needle):i + len(needle) + 12])
                if 0 <= part < 100_000:
                    out[part] = start if part not in out else max(out[part], start)
        i = data.find(needle, i + 1)
    return out


def snapshot_offsets(snap: Snapshot, topic: str) -> dict[int, int]:
    """Partition -> starting offset of ``topic``'s source in the snapshot (small state is inlined in
    ``_metadata``; larger operator state sits in files beside it)."""
    found = split_offsets((snap.path / "_metadata").read_bytes(), topic)
    if not found:
        for f in sorted(snap.path.iterdir()):
            if f.is_file() and f.name != "_metadata" and f.stat().st_size < 4 * 1024 * 1024:
                found.update(split_offsets(f.read_bytes(), topic))
    return found


# -- what is committed downstream ------------------------------------------------------------------------


@dataclass
class Downstream:
    group: dict[int, int]  # committed offsets of the events topic in the job's group
    begin: dict[int, int]
    end: dict[int, int]
    decisions: int  # offsets below the decisions topic's last stable offset (committed records, about)
    newest: dict[int, int] = field(default_factory=dict)  # N(p): the newest completed snapshot's positions
    newest_what: str = ""  # that snapshot, for the message
    cluster_id: str | None = None  # the Kafka cluster's id (recorded with each run)


def read_downstream(cfg: JobConfig, timeout_s: float = 15.0) -> Downstream:
    from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

    props = cfg.kafka_python_properties()
    admin = KafkaAdminClient(bootstrap_servers=cfg.bootstrap_servers, request_timeout_ms=int(timeout_s * 1000),
                             **props)
    import time

    from kafka.errors import KafkaError

    t_end = time.monotonic() + timeout_s
    try:
        while True:  # a new broker creates its offsets topic on the first group lookup: retriable meanwhile
            try:
                got = admin.list_group_offsets({cfg.group_id: None}).get(cfg.group_id) or {}
                break
            except KafkaError as e:
                if not getattr(e, "retriable", False) or time.monotonic() > t_end:
                    raise
                time.sleep(0.2)  # back-off before the retry
        try:
            cluster_id = (admin.describe_cluster() or {}).get("cluster_id")
        except KafkaError:
            cluster_id = None
    finally:
        admin.close()
    group = {tp.partition: om.offset for tp, om in got.items() if tp.topic == cfg.events_topic and om.offset >= 0}
    c = KafkaConsumer(bootstrap_servers=cfg.bootstrap_servers, isolation_level="read_committed",
                      enable_auto_commit=False, group_id=None, request_timeout_ms=int(timeout_s * 1000) + 1000,
                      **props)
    try:
        ev = [TopicPartition(cfg.events_topic, p) for p in sorted(c.partitions_for_topic(cfg.events_topic) or ())]
        de = [TopicPartition(cfg.decisions_topic, p) for p in sorted(c.partitions_for_topic(cfg.decisions_topic) or ())]
        begin = {tp.partition: o for tp, o in c.beginning_offsets(ev).items()}
        end = {tp.partition: o for tp, o in c.end_offsets(ev).items()}
        db, dend = c.beginning_offsets(de), c.end_offsets(de)
        decisions = sum(max(0, dend[tp] - db[tp]) for tp in de)
    finally:
        c.close()
    return Downstream(group, begin, end, decisions, cluster_id=cluster_id)


def newest_positions(cfg: JobConfig, down: Downstream) -> tuple[dict[int, int], str]:
    """``N(p)`` of the module's doc and the snapshot it comes from; empty when the job has no readable
    newest snapshot (a first start, a bootstrapped savepoint without source state, a remote folder), or
    when that snapshot read other data than this start would: its run read another events topic or another
    Kafka cluster (the cluster id recorded with the run differs, or was not recorded), or a position beyond
    the partition's end (the topic was recreated). Those leave ``G`` alone to count."""
    try:
        res = lineage.resolve_latest(cfg.job_name)
    except ManualRestoreRequired:
        return {}, ""
    if res is None or res.snapshot is None or res.snapshot.checkpoint_id < 0 or not res.run_id:
        return {}, ""
    run = next((r for r in lineage.read(cfg.job_name) if r["kind"] == "run" and r.get("job_id") == res.run_id), {})
    if (run.get("events_topic") != cfg.events_topic or down.cluster_id is None
            or run.get("kafka_cluster_id") != down.cluster_id):
        return {}, ""
    pos = {p: o for p, o in snapshot_offsets(res.snapshot, cfg.events_topic).items()
           if 0 <= o <= down.end.get(p, -1)}
    return pos, res.snapshot.describe()


@dataclass
class StartCheck:
    reprocess: int  # events whose committed outputs the start would decide again (about)
    per_partition: dict[int, int] = field(default_factory=dict)
    start: dict[int, int] = field(default_factory=dict)
    committed: dict[int, int] = field(default_factory=dict)
    decisions: int = 0
    refused: str | None = None  # the message, when the start is refused
    note: str = ""
    cluster_id: str | None = None  # the Kafka cluster the check read (recorded with the run)


def start_positions(cfg: JobConfig, snap: Snapshot | None, down: Downstream) -> dict[int, int]:
    """Where the source would start reading each events partition."""
    fresh = {}
    for p, b in down.begin.items():
        if cfg.starting_offsets == "earliest":
            fresh[p] = b
        elif cfg.starting_offsets == "latest":
            fresh[p] = down.end.get(p, b)
        else:
            fresh[p] = down.group.get(p, b)
    if snap is None:
        return fresh
    pos = snapshot_offsets(snap, cfg.events_topic)
    out = {}
    for p, b in down.begin.items():
        o = pos.get(p)
        if o is None:  # a partition the snapshot never saw: the source treats it as new (starting_offsets)
            out[p] = fresh[p]
        elif o == EARLIEST:
            out[p] = b
        elif o == LATEST:
            out[p] = down.end.get(p, b)
        elif o == COMMITTED:
            out[p] = down.group.get(p, b)
        else:
            out[p] = max(o, b)  # below the log start the records are gone: nothing to re-decide there
    return out


def evaluate(cfg: JobConfig, snap: Snapshot | None, down: Downstream, what: str) -> StartCheck:
    """The rule of the module's doc, on figures already read (pure, for tests)."""
    start = start_positions(cfg, snap, down)
    committed = dict(down.group)
    for p, o in down.newest.items():
        if p in start:
            committed[p] = max(o, committed.get(p, -1))
    per = {p: max(0, committed[p] - s) for p, s in start.items() if p in committed}
    total = sum(per.values())
    chk = StartCheck(total, per, start, committed, down.decisions)
    how = ("Restore the newest snapshot instead (`--restore-from latest`), or, to decide those events again on "
           "purpose, add --allow-reprocess: decision ids are a hash of event id, model and policy version, so "
           "the repeated decisions carry the same decision_id and an idempotent consumer ignores them")
    if total > 0:
        parts = ", ".join(f"partition {p}: from {start[p]}, committed {committed[p]}" for p in sorted(per) if per[p])
        ahead = [p for p in per if per[p] and committed[p] > down.group.get(p, -1)]
        whose = (f"the newest completed snapshot ({down.newest_what}) reads further than the consumer group "
                 f"{cfg.group_id} committed (the group's commit trails a checkpoint when the job stops right after "
                 "it)" if ahead else f"consumer group {cfg.group_id} committed offsets are ahead of the start")
        chk.refused = (f"refusing to go back in time: starting from {what} would decide again about {total} events "
                       f"of {cfg.events_topic} whose decisions job {cfg.job_name} already committed ({whose}: "
                       f"{parts}). {how}")
    elif snap is None and not committed and down.decisions > 0 and cfg.starting_offsets != "latest":
        would = sum(max(0, down.end.get(p, 0) - s) for p, s in start.items())
        chk.reprocess = would
        chk.refused = (f"refusing to start without state: {cfg.decisions_topic} already holds about "
                       f"{down.decisions} committed decision records, but consumer group {cfg.group_id} has no "
                       f"committed offsets on {cfg.events_topic}, so a start from {cfg.starting_offsets} offsets "
                       f"would decide again up to about {would} events. Restore the job's snapshot "
                       f"(`--restore-from latest` or PATH), start from the end with --starting-offsets latest, or "
                       f"add --allow-reprocess to decide them again (same decision_ids)")
    return chk


def check_start(cfg: JobConfig, snap: Snapshot | None, what: str) -> StartCheck:
    """Read the committed offsets and output, apply :func:`evaluate`; raise :class:`GoingBackInTime` with its
    message unless ``cfg.allow_reprocess``."""
    down = read_downstream(cfg)
    down.newest, down.newest_what = newest_positions(cfg, down)
    chk = evaluate(cfg, snap, down, what)
    chk.cluster_id = down.cluster_id
    if chk.refused and not cfg.allow_reprocess:
        raise GoingBackInTime(chk.refused)
    if chk.refused:
        chk.note = f"--allow-reprocess: deciding again about {chk.reprocess} events (same decision_ids)"
    return chk


@dataclass
class StartPlan:
    snapshot: Snapshot | None
    why: str
    check: StartCheck | None


class RuntimeMismatch(StartupError):
    """The snapshot's window state was written by the other stage runtime (udfs/flink.py vs udfs/jvm)."""


def _writer_run(job_name: str, snap: Snapshot) -> dict | None:
    """The lineage's run record of the run that wrote ``snap`` (None: unknown)."""
    uri = snap.uri
    job_id = None
    for rec in lineage.read(job_name):
        if rec.get("kind") == "savepoint" and rec.get("path") == uri:
            job_id = rec.get("job_id")
    if job_id is None and not snap.savepoint:
        job_id = snap.path.parent.name  # checkpoints/<flink job id>/chk-N
    run = None
    for rec in lineage.read(job_name):
        if rec.get("kind") == "run" and rec.get("job_id") == job_id:
            run = rec
    return run


def snapshot_runtime(job_name: str, snap: Snapshot) -> str | None:
    """The ``stage_runtime`` of the run that wrote ``snap``, from the job's lineage (None: unknown). Runs
    recorded before the JVM stages existed ran the Python stages."""
    run = _writer_run(job_name, snap)
    return None if run is None else run.get("stage_runtime", "python")


def check_runtime(cfg: JobConfig, snap: Snapshot | None) -> None:
    """Refuse to restore window state written by the other stage runtime: the Python stages keep pickled
    dicts, the JVM stages their own byte encoding, under other operator uids."""
    if snap is None or snap.checkpoint_id < 0:
        return
    written = snapshot_runtime(cfg.job_name, snap)
    if written is not None and written != cfg.stage_runtime:
        raise RuntimeMismatch(
            f"{snap.describe()} holds window state of the {written} stages; this job runs the "
            f"{cfg.stage_runtime} stages, which cannot read it. Either restore it with --stage-runtime "
            f"{written}, or cut over: stop the {written} job with a savepoint (its decisions are committed), "
            f"then start this one without state from the committed offsets (--starting-offsets committed; "
            f"windows refill over the longest horizon) or from the earliest offsets of a topic that holds the "
            f"last 24 h with --allow-reprocess (same decision ids); see docs/operations.md")


class LayoutMismatch(StartupError):
    """The snapshot's window state was written for a spec whose state layout differs from this job's."""


def check_layout(cfg: JobConfig, snap: Snapshot | None, layout: dict[str, dict]) -> None:
    """Refuse to restore state written for another state layout (``udfs.chain.state_layout`` of the spec, as
    the writing run recorded it; runs recorded before layouts were, pass): a stage whose window slots differ
    would read another window's accumulators as its own, silently; a stage the snapshot has and this job's
    spec does not (the link stage of the graph features) has no operator to restore into, and Flink fails
    the job at restore. A stage this job has and the snapshot does not starts empty (the graph features
    switched on: their state fills over their 7-day horizon)."""
    if snap is None or snap.checkpoint_id < 0:
        return
    written = (_writer_run(cfg.job_name, snap) or {}).get("state_layout")
    if not written:
        return
    fix = ("Restore it with the spec that wrote it (the same riskstream version and RISKSTREAM_GRAPH_FEATURES), "
           "or start this spec without state: from the committed offsets (--starting-offsets committed; the "
           "windows refill over their longest horizon), or warm it from history with `riskstream bootstrap`")
    gone = [name for name in written if name not in layout]
    if gone:
        hint = (" (the graph features were on when it was written: set RISKSTREAM_GRAPH_FEATURES=1)"
                if "link" in gone else "")
        raise LayoutMismatch(f"{snap.describe()} holds state of the stage(s) {', '.join(gone)} that this job's spec "
                             f"does not have{hint}: Flink cannot map it and would fail the job at restore. {fix}")
    changed = [name for name, lay in layout.items() if name in written and (
        written[name].get("slots") != lay["slots"]
        or (written[name].get("delayed") and lay["delayed"] and written[name]["delayed"] != lay["delayed"]))]
    if changed:
        raise LayoutMismatch(f"{snap.describe()} holds window state of {', '.join(changed)} written for another "
                             "feature spec: its windows' slots differ from this job's, which would read them as "
                             f"other windows' values. {fix}")


class BackendMismatch(StartupError):
    """The snapshot is a native savepoint or a checkpoint of the other state backend."""


class UnsafeClaim(StartupError):
    """A native savepoint whose restore in CLAIM mode would leave checkpoints Flink 2.2.1 cannot restore."""


def snapshot_backend(job_name: str, snap: Snapshot, home: Path | None = None) -> tuple[str | None, str | None]:
    """(how the snapshot was written: ``canonical``, ``native`` or ``checkpoint``; the state backend whose own
    format its keyed state is in, None when portable or unknown).

    The format is the one its ``_metadata`` states, else its savepoint record's. A canonical savepoint is
    portable. Otherwise RocksDB's files named in the metadata say ``rocksdb``; else the savepoint's record,
    or the run that wrote it, says which backend (hashmap snapshots and RocksDB's full ones look alike)."""
    records = lineage.read(job_name, home)
    rec = _savepoint_record(records, snap)
    fmt = lineage.snapshot_format(snap.path) or (rec or {}).get("format") or (None if snap.savepoint else "checkpoint")
    if fmt == "canonical" or fmt is None:
        return fmt, None
    if lineage.names_rocksdb_files(snap.path):
        return fmt, "rocksdb"
    if rec is not None and rec.get("backend"):
        return fmt, rec["backend"]
    writer = (rec or {}).get("job_id") or (None if snap.savepoint else snap.path.parent.name)
    run = next((r for r in records if r["kind"] == "run" and r.get("job_id") == writer), None) if writer else None
    return fmt, lineage.run_backend(run)


def _savepoint_record(records: list[dict], snap: Snapshot) -> dict | None:
    return next((r for r in records if r["kind"] == "savepoint" and r.get("path") == snap.uri), None)


def written_with_changelog(job_name: str, snap: Snapshot, home: Path | None = None) -> bool:
    """Whether a job with the changelog wrote the snapshot: its metadata holds the changelog's handles over
    RocksDB, else its savepoint record says so."""
    if lineage.names_changelog_handles(snap.path):
        return True
    return bool((_savepoint_record(lineage.read(job_name, home), snap) or {}).get("changelog"))


def check_backend(job_name: str, snap: Snapshot | None, backend: str | None, changelog: bool = False,
                  claim: bool = False) -> None:
    """Refuse at start a restore Flink would fail, or one whose checkpoints it could not restore later.

    - A native savepoint or a checkpoint restores only on the state backend that wrote it (RocksDB's files on
      hashmap: "Unexpected state handle type ... IncrementalRemoteKeyedStateHandle"; hashmap's on RocksDB fail
      too), and Flink fails the job at restore, over and over until its restart attempts run out. ``backend``
      is the job's (``state.backend.type`` as it takes effect). A canonical savepoint, or one whose writer is
      unknown, passes (Flink decides).
    - A native RocksDB savepoint restored in CLAIM mode (``claim``; always with the changelog, ``changelog``):
      Flink 2.2.1 writes the checkpoints after it with the savepoint's files as paths relative to the
      checkpoint's own folder (FLINK-39964, fixed after 2.2.1), so such a checkpoint cannot be restored (a
      lost job, a JobManager failover): "FileNotFoundException .../chk-N/<file>". Seen here for a savepoint of
      a job with the changelog restored with the changelog; one written without the changelog passes (seen
      here: the changelog's restore makes its paths absolute, so the checkpoints name the private copy). A
      forced CLAIM without the changelog is refused on the issue's description, not run here. Without the
      changelog riskstream restores savepoints in NO_CLAIM mode (a full first checkpoint), which is safe."""
    if snap is None or snap.checkpoint_id < 0 or backend not in ("hashmap", "rocksdb"):
        return
    fmt, written = snapshot_backend(job_name, snap)
    if written is not None and written != backend:
        what = "a native savepoint" if fmt == "native" else "a checkpoint"
        raise BackendMismatch(
            f"{snap.describe()} is {what} of the {written} state backend, in {written}'s own format: Flink restores "
            f"it only on {written}, and this job runs on {backend} (Flink would fail the job at restore). Either "
            f"restore it with --state-backend {written}, or move the state to {backend} through a canonical "
            f"savepoint: restore it with --state-backend {written}, take one with `riskstream savepoint {job_name} "
            f"--format canonical` (or stop with `riskstream cancel {job_name} --format canonical`), then restore "
            "that one here")
    if fmt != "native" or written != "rocksdb" or not claim:
        return
    if changelog and written_with_changelog(job_name, snap):
        why = "it is a savepoint of a job with the changelog, and this job restores it with the changelog"
    elif not changelog:
        why = "this job restores it in CLAIM mode (execution.state-recovery.claim-mode=CLAIM)"
    else:
        return
    raise UnsafeClaim(
        f"{snap.describe()} is a native RocksDB savepoint and {why}: Flink 2.2.1 would restore it, but write the "
        "checkpoints after it with the savepoint's files as paths relative to each checkpoint's own folder "
        "(FLINK-39964), so a later restore of those checkpoints (a lost job, a JobManager failover) fails with "
        "FileNotFoundException. Restore it without the changelog (--no-changelog; or drop the claim-mode "
        "item): Flink then restores it in NO_CLAIM mode and the first checkpoint is a full one; a native "
        "savepoint of that run restores with the changelog later. Or take a canonical savepoint of the job "
        f"(`riskstream savepoint {job_name} --format canonical`) and restore that one")


def plan_start(cfg: JobConfig, log=sys.stderr) -> StartPlan:
    """Resolve the restore, check it against the committed output, and say what the start does."""
    snap, why = resolve_restore(cfg)
    check_runtime(cfg, snap)
    from udfs.chain import state_layout

    check_layout(cfg, snap, state_layout(cfg.allowed_lateness_ms))
    what = snap.describe() if snap is not None and snap.checkpoint_id >= 0 else (
        cfg.restore_from if snap is not None else f"{cfg.starting_offsets} offsets without state")
    chk = check_start(cfg, snap if snap is None or snap.checkpoint_id >= 0 else None, what) \
        if snap is None or snap.checkpoint_id >= 0 else None
    if log is not None:
        print(f"[restore] {cfg.job_name}: restoring {what} ({why})" if snap is not None
              else f"[restore] {cfg.job_name}: starting without state from {cfg.starting_offsets} offsets ({why})",
              file=log, flush=True)
        if chk is not None and chk.note:
            print(f"[restore] {chk.note}", file=log, flush=True)
    return StartPlan(snap, why, chk)


__all__ = ["BackendMismatch", "GoingBackInTime", "LayoutMismatch", "check_layout", "UnsafeClaim", "ManualRestoreRequired", "RuntimeMismatch", "StartPlan", "check_backend", "check_runtime", "check_start", "evaluate", "plan_start",
           "resolve_restore", "resolve_restore_path", "snapshot_offsets", "split_offsets"]
