"""The restore lineage and the go-back-in-time rule on fabricated folders and figures (no broker, no Flink).

Snapshots are written as Flink 2.2 writes them: ``_metadata`` starts with the magic int 0x4960672D, the
serializer version (6) and the checkpoint id (a long); the Kafka source's split state follows the layout
seen in real ``_metadata`` files (reader elements framed as element length, version, split length; the
enumerator's copy framed otherwise, with the initial offset -2)."""

from __future__ import annotations

import os
import struct
import time

import pytest

from riskstream.config import JobConfig
from riskstream.ops import lineage, restore
from riskstream.ops.lineage import ManualRestoreRequired

JOB = "job-a"
TOPIC = "t.events"


def split(topic: str, partition: int, offset: int, reader: bool = True) -> bytes:
    t = topic.encode()
    body = struct.pack(">H", len(t)) + t + struct.pack(">iqq", partition, offset, -(2 ** 63))
    head = struct.pack(">iii", len(body) + 8, 0, len(body)) if reader else struct.pack(">iii", 2, 0, len(body))
    return head + body


def write_snapshot(folder, cid: int, offsets: dict[int, int] | None = None, mtime: float | None = None,
                   version: int = 6) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    body = b"".join(split(TOPIC, p, -2, reader=False) for p in (offsets or {}))  # the enumerator's copy
    body += b"".join(split(TOPIC, p, o) for p, o in (offsets or {}).items())
    (folder / "_metadata").write_bytes(struct.pack(">iiq", 0x4960672D, version, cid) + b"\0" * 40 + body)
    if mtime is not None:
        os.utime(folder / "_metadata", (mtime, mtime))


def run(home, job_id: str, restored_from=None, started_at: float | None = None) -> str:
    ck = (lineage.job_dir(JOB, home) / "checkpoints").as_uri()
    snap = lineage.read_snapshot(restored_from) if restored_from else None
    rec = lineage.record_run(JOB, job_id, ck, snap, home=home)
    if started_at is not None:  # rewrite the start time (fabricated history)
        recs = lineage.read(JOB, home)
        lineage.lineage_path(JOB, home).unlink()
        for r in recs:
            if r is not None and r.get("job_id") == job_id and r["kind"] == "run":
                r["started_at"] = int(started_at * 1000)
            lineage.append(JOB, r, home)
    return rec["job_id"]


def chk(home, job_id: str, n: int):
    return lineage.job_dir(JOB, home) / "checkpoints" / job_id / f"chk-{n}"


def sp(home, job_id: str, tag: str = "abcdef012345"):
    return lineage.savepoints_dir(JOB, home) / f"savepoint-{job_id[:6]}-{tag}"


A, B, C = "a" * 32, "b" * 32, "c" * 32


def test_header_and_half_written(tmp_path):
    write_snapshot(tmp_path / "chk-7", 7)
    assert lineage.read_snapshot(tmp_path / "chk-7").checkpoint_id == 7
    (tmp_path / "chk-8").mkdir()  # no _metadata: half-written
    assert lineage.read_snapshot(tmp_path / "chk-8") is None
    write_snapshot(tmp_path / "chk-9", 3)  # a header naming another checkpoint
    assert lineage.read_snapshot(tmp_path / "chk-9") is None
    (tmp_path / "chk-10").mkdir()
    (tmp_path / "chk-10" / "_metadata").write_bytes(struct.pack(">ii", 0x4960672D, 6))  # torn header
    assert lineage.read_snapshot(tmp_path / "chk-10") is None
    write_snapshot(tmp_path / "sp", 5, version=99)
    assert lineage.read_snapshot(tmp_path / "sp") is None


def test_never_ran_is_a_first_start(tmp_path):
    assert lineage.resolve_latest(JOB, tmp_path) is None


def test_latest_starts_from_a_bootstrap_until_a_run_after_it_completes_something(tmp_path):
    """`riskstream bootstrap` records its savepoint under run "bootstrap": a fresh deployment's `latest` is
    that state; a run after it that completed nothing does not hide it; a run after it that completed a
    checkpoint wins; a run before it does not."""
    run(tmp_path, A)
    write_snapshot(chk(tmp_path, A, 7), 7)
    boot = lineage.savepoints_dir(JOB, tmp_path) / "bootstrap-20260101-000000"
    write_snapshot(boot, 0)
    lineage.record_savepoint(JOB, lineage.BOOTSTRAP_RUN, boot.as_uri(), stopped=False, home=tmp_path)
    res = lineage.resolve_latest(JOB, tmp_path)
    assert res.snapshot.path == boot and "bootstrap" in res.how
    run(tmp_path, B, restored_from=boot)  # restored it, died before its first checkpoint
    assert lineage.resolve_latest(JOB, tmp_path).snapshot.path == boot
    write_snapshot(chk(tmp_path, B, 3), 3)
    assert lineage.resolve_latest(JOB, tmp_path).snapshot.path == chk(tmp_path, B, 3)


def test_newest_runs_highest_completed_checkpoint(tmp_path):
    run(tmp_path, A)
    write_snapshot(chk(tmp_path, A, 40), 40)
    run(tmp_path, B, restored_from=chk(tmp_path, A, 40))
    write_snapshot(chk(tmp_path, B, 44), 44)
    write_snapshot(chk(tmp_path, B, 45), 45)
    chk(tmp_path, B, 46).mkdir()  # being written when the process died
    res = lineage.resolve_latest(JOB, tmp_path)
    assert (res.snapshot.checkpoint_id, res.snapshot.savepoint) == (45, False)
    # an older run's checkpoint written later (file times) does not win: the newest run does
    write_snapshot(chk(tmp_path, A, 41), 41, mtime=time.time() + 60)
    assert lineage.resolve_latest(JOB, tmp_path).snapshot.checkpoint_id == 45


def test_savepoint_with_a_higher_id_wins(tmp_path):
    run(tmp_path, A)
    write_snapshot(chk(tmp_path, A, 12), 12)
    write_snapshot(sp(tmp_path, A), 13)
    lineage.record_savepoint(JOB, A, sp(tmp_path, A).as_uri(), stopped=True, home=tmp_path)
    res = lineage.resolve_latest(JOB, tmp_path)
    assert (res.snapshot.checkpoint_id, res.snapshot.savepoint) == (13, True)
    # recorded once, however often it is reported
    assert lineage.record_savepoint(JOB, A, sp(tmp_path, A).as_uri(), stopped=True, home=tmp_path) is None
    assert sum(r["kind"] == "savepoint" for r in lineage.read(JOB, tmp_path)) == 1


def test_unrecorded_savepoint_of_the_run_counts(tmp_path):
    """A MiniCluster run stopped with a savepoint exits before anyone records it: its folder name names the run."""
    run(tmp_path, A, started_at=time.time() - 10)
    write_snapshot(chk(tmp_path, A, 5), 5)
    write_snapshot(sp(tmp_path, A), 6)
    write_snapshot(sp(tmp_path, B, "x"), 99)  # another run's
    assert lineage.resolve_latest(JOB, tmp_path).snapshot.checkpoint_id == 6


def test_issue_sequence_killed_before_first_checkpoint(tmp_path):
    """run A, stop-with-savepoint (Flink deletes A's checkpoints), resume B from the savepoint, B killed
    before its first checkpoint: latest is the savepoint, not an older retained checkpoint."""
    run(tmp_path, A)
    write_snapshot(chk(tmp_path, A, 30), 30, mtime=time.time() - 300)  # an older run's retained checkpoint
    run(tmp_path, B, restored_from=chk(tmp_path, A, 30))
    write_snapshot(sp(tmp_path, B), 52)
    lineage.record_savepoint(JOB, B, sp(tmp_path, B).as_uri(), stopped=True, home=tmp_path)
    run(tmp_path, C, restored_from=sp(tmp_path, B))
    chk(tmp_path, C, 53).mkdir(parents=True)  # half-written, then SIGKILL
    res = lineage.resolve_latest(JOB, tmp_path)
    assert res.snapshot.path == sp(tmp_path, B) and res.snapshot.checkpoint_id == 52
    assert "completed no snapshot" in res.how and res.run_id == B
    # and once more: D restored from the savepoint and died too
    run(tmp_path, "d" * 32, restored_from=sp(tmp_path, B))
    assert lineage.resolve_latest(JOB, tmp_path).snapshot.path == sp(tmp_path, B)


def test_refusals(tmp_path):
    run(tmp_path, A)  # started without state, killed before its first checkpoint: it committed nothing
    res = lineage.resolve_latest(JOB, tmp_path)
    assert res.snapshot is None and "none committed anything: a start without state" in res.how
    write_snapshot(sp(tmp_path, A), 9)
    lineage.record_savepoint(JOB, A, sp(tmp_path, A).as_uri(), stopped=True, home=tmp_path)
    run(tmp_path, B, restored_from=sp(tmp_path, A))
    import shutil

    shutil.rmtree(sp(tmp_path, A))  # the savepoint B restored from is gone, B completed nothing
    with pytest.raises(ManualRestoreRequired, match="is gone or incomplete .*: manual restore required"):
        lineage.resolve_latest(JOB, tmp_path)
    write_snapshot(chk(tmp_path, B, 3), 3)
    lineage.lineage_path(JOB, tmp_path).unlink()  # lineage gone, the job's folder is not empty
    with pytest.raises(ManualRestoreRequired, match="lineage .* is gone: manual restore required"):
        lineage.resolve_latest(JOB, tmp_path)


def test_lineage_survives_an_unreadable_line_and_finds_jobs(tmp_path):
    run(tmp_path, A)
    p = lineage.lineage_path(JOB, tmp_path)
    p.write_text(p.read_text() + "{torn")
    run(tmp_path, B)
    assert [r["job_id"] for r in lineage.read(JOB, tmp_path)] == [A, B]
    assert lineage.find_job(B, tmp_path) == JOB and lineage.find_job(C, tmp_path) is None
    assert not list(p.parent.glob(".lineage-*"))  # no temporary file left


def test_split_offsets_reads_the_readers_state_not_the_enumerators(tmp_path):
    write_snapshot(tmp_path / "chk-4", 4, {0: 120, 1: 95})
    snap = lineage.read_snapshot(tmp_path / "chk-4")
    assert restore.snapshot_offsets(snap, TOPIC) == {0: 120, 1: 95}
    assert restore.snapshot_offsets(snap, "other.events") == {}


def cfg(**kw) -> JobConfig:
    return JobConfig(job_name=JOB, events_topic=TOPIC, **kw)


def down(group, begin=None, end=None, decisions=0):
    begin = begin or {0: 0, 1: 0}
    return restore.Downstream(group, begin, end or {0: 500, 1: 500}, decisions)


def test_going_back_in_time_is_refused_with_the_count(tmp_path):
    write_snapshot(tmp_path / "old", 7, {0: 100, 1: 80})
    write_snapshot(tmp_path / "new", 9, {0: 150, 1: 130})
    old, new = lineage.read_snapshot(tmp_path / "old"), lineage.read_snapshot(tmp_path / "new")
    committed = down({0: 150, 1: 130}, decisions=280)
    chk_old = restore.evaluate(cfg(), old, committed, "the old savepoint")
    assert chk_old.reprocess == 100 and chk_old.per_partition == {0: 50, 1: 50}
    assert "would decide again about 100 events" in chk_old.refused and "--allow-reprocess" in chk_old.refused
    assert restore.evaluate(cfg(), new, committed, "x").refused is None
    # the group's commit trails the newest snapshot (a failed async commit): never a refusal
    assert restore.evaluate(cfg(), new, down({0: 140, 1: 130}), "x").refused is None


def test_a_commit_that_trails_the_newest_snapshot_still_refuses_the_old_one(tmp_path):
    """The job was killed right after checkpoint 9 completed: its transactions may be committed, the group's
    offsets still say checkpoint 7 (where the old savepoint reads from). The newest snapshot in the lineage
    is what counts as committed."""
    write_snapshot(tmp_path / "old", 7, {0: 100, 1: 80})
    write_snapshot(tmp_path / "new", 9, {0: 150, 1: 130})
    old, new = lineage.read_snapshot(tmp_path / "old"), lineage.read_snapshot(tmp_path / "new")
    trailing = down({0: 100, 1: 80}, decisions=280)
    assert restore.evaluate(cfg(), old, trailing, "the old savepoint").refused is None  # G alone passes it
    trailing.newest, trailing.newest_what = {0: 150, 1: 130}, "checkpoint 9"
    chk_old = restore.evaluate(cfg(), old, trailing, "the old savepoint")
    assert chk_old.reprocess == 100 and chk_old.per_partition == {0: 50, 1: 50}
    assert "newest completed snapshot (checkpoint 9) reads further" in chk_old.refused
    assert restore.evaluate(cfg(), new, trailing, "x").refused is None
    # without state from the committed offsets: the group says 100/80, the newest snapshot 150/130
    fresh = restore.evaluate(cfg(starting_offsets="committed"), None, trailing, "x")
    assert fresh.reprocess == 100 and fresh.refused
    assert restore.evaluate(cfg(starting_offsets="latest"), None, trailing, "x").refused is None


def test_newest_positions_come_from_the_lineage(tmp_path, monkeypatch):
    """N(p) counts only a snapshot that read this data: the same events topic on the same Kafka cluster
    (the cluster id recorded with its run), at positions the partitions still reach."""
    monkeypatch.setenv("RISKSTREAM_HOME", str(tmp_path))
    here = down({}, end={0: 500, 1: 500})
    here.cluster_id = "cluster-1"
    assert restore.newest_positions(cfg(), here) == ({}, "")  # a first start
    ck = (lineage.job_dir(JOB, tmp_path) / "checkpoints").as_uri()
    lineage.record_run(JOB, A, ck, None, extra={"events_topic": TOPIC, "kafka_cluster_id": "cluster-1"},
                       home=tmp_path)
    write_snapshot(chk(tmp_path, A, 3), 3, {0: 40, 1: 41})
    write_snapshot(chk(tmp_path, A, 5), 5, {0: 60, 1: 61})
    pos, what = restore.newest_positions(cfg(), here)
    assert pos == {0: 60, 1: 61} and "checkpoint 5" in what
    here.end = {0: 50, 1: 500}  # partition 0 recreated shorter: its position no longer counts
    assert restore.newest_positions(cfg(), here)[0] == {1: 61}
    other = down({}, end={0: 500, 1: 500})
    other.cluster_id = "cluster-2"  # another Kafka cluster under the same job name: G alone counts
    assert restore.newest_positions(cfg(), other) == ({}, "")
    assert restore.newest_positions(JobConfig(job_name=JOB, events_topic="other.events"), here) == ({}, "")
    run(tmp_path, B)  # a run recorded without a cluster id (before this check existed): not counted
    write_snapshot(chk(tmp_path, B, 9), 9, {0: 70, 1: 71})
    assert restore.newest_positions(cfg(), here) == ({}, "")


def test_start_without_state(tmp_path):
    committed = down({0: 150, 1: 130}, decisions=280)
    assert restore.evaluate(cfg(starting_offsets="committed"), None, committed, "x").refused is None
    assert restore.evaluate(cfg(starting_offsets="latest"), None, committed, "x").refused is None
    early = restore.evaluate(cfg(starting_offsets="earliest"), None, committed, "x")
    assert early.reprocess == 280 and "would decide again" in early.refused
    # decisions exist but the group has no offsets: refused unless from the end
    orphan = down({}, decisions=280)
    for start in ("committed", "earliest"):
        c = restore.evaluate(cfg(starting_offsets=start), None, orphan, "x")
        assert c.refused and "refusing to start without state" in c.refused and c.reprocess == 1000
    assert restore.evaluate(cfg(starting_offsets="latest"), None, orphan, "x").refused is None
    # a first start on empty topics
    assert restore.evaluate(cfg(starting_offsets="earliest"), None, down({}), "x").refused is None


def test_retention_keeps_newest_and_removes_half_written(tmp_path):
    now = time.time()
    run(tmp_path, A)
    write_snapshot(chk(tmp_path, A, 3), 3, mtime=now - 500)
    chk(tmp_path, A, 4).mkdir()
    (lineage.job_dir(JOB, tmp_path) / "checkpoints" / A / "shared").mkdir()
    for i, tag in enumerate(("111111111111", "222222222222", "333333333333")):
        write_snapshot(sp(tmp_path, B, tag), 10 + i, mtime=now - 400 + 100 * i)
    run(tmp_path, B, restored_from=sp(tmp_path, B, "111111111111"))
    write_snapshot(chk(tmp_path, B, 20), 20, mtime=now)
    removed = lineage.prune(JOB, 2, protect=(sp(tmp_path, B, "111111111111"),), home=tmp_path)
    done, half = lineage.all_snapshots(JOB, tmp_path)
    assert {s.checkpoint_id for s in done} == {20, 12, 10} and half == []
    assert chk(tmp_path, A, 4) in removed and not (lineage.job_dir(JOB, tmp_path) / "checkpoints" / A).exists()
    assert not sp(tmp_path, B, "222222222222").exists()


def test_default_checkpoint_dir_is_the_jobs_own(tmp_path, monkeypatch):
    monkeypatch.setenv("RISKSTREAM_HOME", str(tmp_path))
    assert JobConfig(job_name="x").checkpoint_dir == (tmp_path / "jobs" / "x" / "checkpoints").as_uri()
    assert JobConfig(job_name="y").checkpoint_dir != JobConfig(job_name="x").checkpoint_dir
    assert JobConfig(checkpoint_dir="/elsewhere").checkpoint_dir == "file:///elsewhere"


def test_a_snapshot_written_by_the_other_stage_runtime_is_refused(tmp_path, monkeypatch):
    """Window state of the Python stages (pickled dicts) must never reach the JVM stages, and back."""
    monkeypatch.setenv("RISKSTREAM_HOME", str(tmp_path))
    py_run, jvm_run = "a" * 32, "b" * 32
    ck = (lineage.job_dir(JOB) / "checkpoints").as_uri()
    lineage.record_run(JOB, py_run, ck, None, extra={"stage_runtime": "python"})
    write_snapshot(chk(None, py_run, 3), 3)
    snap = lineage.read_snapshot(chk(None, py_run, 3).as_uri())
    assert restore.snapshot_runtime(JOB, snap) == "python"
    with pytest.raises(restore.RuntimeMismatch, match="window state of the python stages"):
        restore.check_runtime(JobConfig(job_name=JOB, stage_runtime="jvm"), snap)
    restore.check_runtime(JobConfig(job_name=JOB, stage_runtime="python"), snap)  # same runtime: fine
    lineage.record_run(JOB, jvm_run, ck, snap, extra={"stage_runtime": "jvm"})
    write_snapshot(chk(None, jvm_run, 4), 4)
    snap2 = lineage.read_snapshot(chk(None, jvm_run, 4).as_uri())
    with pytest.raises(restore.RuntimeMismatch, match="window state of the jvm stages"):
        restore.check_runtime(JobConfig(job_name=JOB, stage_runtime="python"), snap2)
    # a run recorded before the JVM stages existed ran the Python stages
    old = "c" * 32
    lineage.record_run(JOB, old, ck, None)
    write_snapshot(chk(None, old, 9), 9)
    assert restore.snapshot_runtime(JOB, lineage.read_snapshot(chk(None, old, 9).as_uri())) == "python"


def test_retention_keeps_what_a_claimed_restore_still_reads(tmp_path):
    """Run B restored A's chk-5 in CLAIM mode: B's checkpoints keep naming A's incremental files (A/shared/,
    and a file in A/chk-5/) until Flink subsumes them. Retention removes A's checkpoints only once nothing
    kept names them."""
    now = time.time()
    run(tmp_path, A)
    write_snapshot(chk(tmp_path, A, 4), 4, mtime=now - 300)
    write_snapshot(chk(tmp_path, A, 5), 5, mtime=now - 200)
    (chk(tmp_path, A, 5).parent / "shared").mkdir()
    (chk(tmp_path, A, 5).parent / "shared" / "sst-1").write_bytes(b"x")
    run(tmp_path, B, restored_from=chk(tmp_path, A, 5))
    for n, age in ((7, 100), (8, 50), (9, 10)):
        write_snapshot(chk(tmp_path, B, n), n, mtime=now - age)
    names = f"file:/x/checkpoints/{A}/shared/sst-1\0file:/x/checkpoints/{A}/chk-5/MANIFEST".encode()
    with open(chk(tmp_path, B, 9) / "_metadata", "ab") as f:  # the newest still reads A's files
        f.write(names)
    os.utime(chk(tmp_path, B, 9) / "_metadata", (now - 10, now - 10))
    removed = lineage.prune(JOB, 1, home=tmp_path)
    assert chk(tmp_path, A, 4) in removed and chk(tmp_path, B, 7) in removed and chk(tmp_path, B, 8) in removed
    assert (chk(tmp_path, A, 5) / "_metadata").exists() and (chk(tmp_path, A, 5).parent / "shared" / "sst-1").exists()
    # once a newer checkpoint of B no longer names them (Flink subsumed them), A goes entirely
    write_snapshot(chk(tmp_path, B, 10), 10, mtime=now)
    removed = lineage.prune(JOB, 1, home=tmp_path)
    assert chk(tmp_path, A, 5) in removed, removed
    assert not chk(tmp_path, A, 5).parent.exists() and not chk(tmp_path, B, 9).exists()


def test_restore_modes(tmp_path):
    """Checkpoints are claimed; savepoints are not, except through a private copy when the changelog is on
    (it cannot take NO_CLAIM's full first checkpoint); the savepoint stays and the copy is cleaned later."""
    write_snapshot(chk(tmp_path, A, 5), 5)
    c = lineage.read_snapshot(chk(tmp_path, A, 5))
    assert lineage.restore_mode(JOB, c, changelog=False, home=tmp_path)[1:] == ("CLAIM", "")
    assert lineage.restore_mode(JOB, c, changelog=True, home=tmp_path)[0] == c.uri
    write_snapshot(sp(tmp_path, A), 6)
    (sp(tmp_path, A) / "op-state").write_bytes(b"state")
    s = lineage.read_snapshot(sp(tmp_path, A), savepoint=True)
    assert lineage.restore_mode(JOB, s, changelog=False, home=tmp_path) == (s.uri, "NO_CLAIM", "")
    path, mode, note = lineage.restore_mode(JOB, s, changelog=True, home=tmp_path)
    copy = lineage.local_path(path)
    assert mode == "CLAIM" and "private copy" in note and copy.parent == lineage.claimed_dir(JOB, tmp_path)
    assert (copy / "op-state").read_bytes() == b"state" and (sp(tmp_path, A) / "op-state").exists()
    run(tmp_path, B, restored_from=sp(tmp_path, A))
    lineage.prune(JOB, 3, protect=(copy,), home=tmp_path)  # at the start that restores it: kept
    assert copy.exists()
    lineage.prune(JOB, 3, home=tmp_path)  # its run died before a checkpoint: nothing kept reads it
    assert not copy.exists() and sp(tmp_path, A).exists()


def test_retention_removes_changelog_files_no_kept_snapshot_reads(tmp_path):
    """The changelog of each run lives in <base>/<flink job id>/dstl/ (the base as the run recorded it, here
    the cluster's folder outside the job's). A file a kept checkpoint's _metadata names stays; the rest of an
    ended run's log goes, and a run folder left empty goes with it."""
    base = tmp_path / "cluster" / "changelog"
    ck = (lineage.job_dir(JOB, tmp_path) / "checkpoints").as_uri()
    settings = {"flink_settings": {"state.changelog.enabled": "true",
                                   "state.changelog.dstl.dfs.base-path": base.as_uri()}}
    now = time.time()
    lineage.record_run(JOB, A, ck, None, extra=settings, home=tmp_path)
    lineage.record_run(JOB, B, ck, None, extra=settings, home=tmp_path)
    for job_id, files in ((A, ("a1", "a2")), (B, ("b1", "b2", "b3"))):
        (base / job_id / "dstl").mkdir(parents=True)
        for f in files:
            (base / job_id / "dstl" / f"{f}-0c1e8d5a").write_bytes(b"changes")
    other = base / C / "dstl" / "c1"  # another job's run on the same cluster: never touched
    other.parent.mkdir(parents=True)
    other.write_bytes(b"x")
    write_snapshot(chk(tmp_path, A, 3), 3, mtime=now - 100)
    write_snapshot(chk(tmp_path, B, 8), 8, mtime=now)
    with open(chk(tmp_path, B, 8) / "_metadata", "ab") as f:  # B's newest checkpoint reads b2 and b3
        f.write(f"{base.as_uri()}/{B}/dstl/b2-0c1e8d5a\0{base.as_uri()}/{B}/dstl/b3-0c1e8d5a".encode())
    os.utime(chk(tmp_path, B, 8) / "_metadata", (now, now))
    removed = lineage.prune(JOB, 1, home=tmp_path)
    assert chk(tmp_path, A, 3) in removed
    assert not (base / A).exists()  # A's checkpoint pruned: all of its log, and its folder
    assert sorted(p.name for p in (base / B / "dstl").iterdir()) == ["b2-0c1e8d5a", "b3-0c1e8d5a"]
    assert other.exists()


def test_retention_survives_flink_discarding_a_checkpoint_while_it_reads(tmp_path, monkeypatch):
    """Flink discards a subsumed ``chk-N`` asynchronously, even after a bounded job's result returned: here
    chk-1 vanishes right after its ``_metadata`` was opened (the full suite once failed the poison test on
    a FileNotFoundError for ``chk-1/_metadata`` at the retention after the run)."""
    import builtins
    import shutil

    run(tmp_path, A)
    write_snapshot(chk(tmp_path, A, 1), 1, mtime=time.time() - 10)
    write_snapshot(chk(tmp_path, A, 2), 2)
    real_open = builtins.open

    def open_then_discard(path, *a, **kw):
        f = real_open(path, *a, **kw)
        if str(path).endswith(f"chk-1{os.sep}_metadata"):
            shutil.rmtree(chk(tmp_path, A, 1))  # the open file stays readable, the path is gone
        return f

    monkeypatch.setattr(builtins, "open", open_then_discard)
    lineage.prune(JOB, 1, home=tmp_path)
    monkeypatch.setattr(builtins, "open", real_open)
    done, half = lineage.all_snapshots(JOB, tmp_path)
    assert [s.checkpoint_id for s in done] == [2] and half == []


def test_a_snapshot_of_another_state_layout_is_refused(tmp_path, monkeypatch):
    """Window state written for a spec whose slots differ, or holding a stage this spec lacks (the graph's link
    stage), is refused at start with what to do; equal slots, delayed counts on one side only, a stage only
    this job has, and a run recorded before layouts were, pass."""
    from udfs.chain import state_layout
    from udfs.features import FEATURES_WITH_GRAPH, Feature, spec_features

    monkeypatch.setenv("RISKSTREAM_HOME", str(tmp_path))
    ck = (lineage.job_dir(JOB) / "checkpoints").as_uri()
    cfg = JobConfig(job_name=JOB)
    runs = iter(f"{k:032x}" for k in range(1, 100))

    def snapshot_of(layout):
        run = next(runs)
        lineage.record_run(JOB, run, ck, None, extra={"state_layout": layout} if layout is not None else None)
        write_snapshot(chk(None, run, 3), 3)
        return lineage.read_snapshot(chk(None, run, 3).as_uri())

    base = spec_features(True)
    here = state_layout(features=base)
    restore.check_layout(cfg, snapshot_of(here), here)
    restore.check_layout(cfg, snapshot_of(None), here)  # an older run: unknown, passes
    restore.check_layout(cfg, snapshot_of(state_layout(features=spec_features(False))), here)  # no delayed yet
    restore.check_layout(cfg, snapshot_of(here), state_layout(features=FEATURES_WITH_GRAPH))  # graph switched on
    # a feature over an existing slot keeps the layout; a new slot does not
    same = base + (Feature("user_events_2_7d", "user", "count", horizon_ms=7 * 86_400_000),)
    assert state_layout(features=same) == here
    other = base + (Feature("user_logins_7d", "user", "count", horizon_ms=7 * 86_400_000, event_types=("login",)),)
    with pytest.raises(restore.LayoutMismatch, match="window state of user written for another feature spec"):
        restore.check_layout(cfg, snapshot_of(state_layout(features=other)), here)
    with pytest.raises(restore.LayoutMismatch, match="stage.s. link .*RISKSTREAM_GRAPH_FEATURES=1"):
        restore.check_layout(cfg, snapshot_of(state_layout(features=FEATURES_WITH_GRAPH)), here)
    changed = {**here, "device": {**here["device"], "delayed": [3_600_000]}}
    with pytest.raises(restore.LayoutMismatch, match="device"):
        restore.check_layout(cfg, snapshot_of(changed), here)
