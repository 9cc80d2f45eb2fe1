"""Savepoint formats without a broker or Flink: which format a command asks for, how a snapshot's format and
backend are read back, and the start-up refusal of a snapshot the job's backend cannot restore.

The ``_metadata`` files are fabricated with the pieces riskstream reads, laid out as Flink 2.2 writes them:
the header, a keyed state handle's local file name as ``writeUTF`` writes it (RocksDB's ``MANIFEST-000005``
in an incremental handle, itself wrapped in the changelog's handle when a job with the changelog wrote it),
and at the end the Java-serialized ``CheckpointProperties`` whose ``SavepointType`` carries the
``SavepointFormatType`` constant (a checkpoint's carries a ``CheckpointType``). tests/test_native_savepoint.py
checks the reading against Flink's own statistics and restores on real savepoints."""

from __future__ import annotations

import struct

import pytest

from riskstream.ops import flink_rest, lineage, restore, submit
from tests.test_flink_rest import JOB as FLINK_JOB, FakeJobManager

JOB = "fmt-job"
A = "a" * 32


def utf(s: str) -> bytes:
    return struct.pack(">H", len(s)) + s.encode()


def properties(fmt: str | None) -> bytes:
    """The end of a ``_metadata``: ``CheckpointProperties`` with a SavepointType in format ``fmt`` (canonical
    or native), or a CheckpointType (None)."""
    out = b"\xac\xed\x00\x05sr" + utf("org.apache.flink.runtime.checkpoint.CheckpointProperties") + b"\0" * 8
    out += b"\x02\x00\x08Z" + utf("discardCancelled") + b"L" + utf("checkpointType")
    out += b"t" + utf("Lorg/apache/flink/runtime/checkpoint/SnapshotType;") + b"xp\0\0\0\0\0\x01\0"
    if fmt is None:
        return out + b"sr" + utf("org.apache.flink.runtime.checkpoint.CheckpointType") + b"\0" * 8 + b"xpt" + \
            utf("Checkpoint")
    out += b"sr" + utf("org.apache.flink.runtime.checkpoint.SavepointType") + b"\0" * 8 + b"\x02\x00\x03L"
    out += utf("formatType") + b"t" + utf("Lorg/apache/flink/core/execution/SavepointFormatType;") + b"xp"
    out += b"~r" + utf("org.apache.flink.core.execution.SavepointFormatType") + b"\0" * 8 + b"\x12\x00\x00xr"
    out += utf("java.lang.Enum") + b"\0" * 8 + b"\x12\x00\x00xpt" + utf(fmt.upper()) + b"t" + utf("Savepoint")
    return out


def incremental_handle(cid: int) -> bytes:
    """INCREMENTAL_KEY_GROUPS_HANDLE_V2 (11): checkpoint id, backend UUID, key groups, size; then the
    private state's (local path, stream handle) pairs, here from the MANIFEST on."""
    head = b"\x0b" + struct.pack(">q", cid) + utf("0dcd0759-9c8a-4d50-bca8-fb7c204de42a") + struct.pack(">iiq", 0, 128, 99)
    return head + struct.pack(">i", 3) + utf("MANIFEST-000005") + b"\x01" + utf("CURRENT") + b"\x01"


def write(folder, cid: int, fmt: str | None, rocksdb: bool, changelog: bool = False) -> lineage.Snapshot:
    folder.mkdir(parents=True, exist_ok=True)
    body = b"\0" * 40
    if rocksdb and changelog:  # CHANGELOG_HANDLE_V2 (14): key groups, size, one materialized handle
        body += b"\x0e" + struct.pack(">iiqi", 0, 128, 99, 1) + incremental_handle(cid)
    elif rocksdb:
        body += incremental_handle(cid)
    else:  # a user's bytes that merely contain the name are not a handle's local path
        body += b"\x00\x00\x00\x10MANIFEST-000005\n"
    (folder / "_metadata").write_bytes(struct.pack(">iiq", 0x4960672D, 6, cid) + body + b"\0" * 8 + properties(fmt))
    return lineage.read_snapshot(folder)


def sp(home, tag: str):
    return lineage.savepoints_dir(JOB, home) / f"savepoint-{A[:6]}-{tag}"


def test_the_format_and_rocksdb_files_are_read_from_the_metadata(tmp_path):
    write(tmp_path / "n", 3, "native", rocksdb=True)
    write(tmp_path / "c", 4, "canonical", rocksdb=False)
    write(tmp_path / "chk-5", 5, None, rocksdb=True)
    write(tmp_path / "h", 6, "native", rocksdb=False)
    write(tmp_path / "cl", 7, "native", rocksdb=True, changelog=True)
    got = {d: (lineage.snapshot_format(tmp_path / d), lineage.names_rocksdb_files(tmp_path / d),
               lineage.names_changelog_handles(tmp_path / d)) for d in ("n", "c", "chk-5", "h", "cl")}
    assert got == {"n": ("native", True, False), "c": ("canonical", False, False),
                   "chk-5": ("checkpoint", True, False), "h": ("native", False, False), "cl": ("native", True, True)}
    assert lineage.snapshot_format((tmp_path / "n").as_uri()) == "native"  # a file URI, as Flink reports it
    (tmp_path / "old").mkdir()  # no properties at the end (metadata before version 4): unknown
    (tmp_path / "old" / "_metadata").write_bytes(struct.pack(">iiq", 0x4960672D, 3, 1) + b"\0" * 64)
    assert lineage.snapshot_format(tmp_path / "old") is None
    assert lineage.snapshot_format(tmp_path / "missing") is None and not lineage.names_rocksdb_files(tmp_path / "x")


def test_a_snapshot_restores_only_on_the_backend_that_wrote_it(tmp_path, monkeypatch):
    monkeypatch.setenv("RISKSTREAM_HOME", str(tmp_path))
    ck = (lineage.job_dir(JOB) / "checkpoints").as_uri()
    lineage.record_run(JOB, A, ck, None, extra={"flink_settings": {"state.backend.type": "hashmap"}})
    native_rocks = write(sp(tmp_path, "r"), 3, "native", rocksdb=True)
    canonical = write(sp(tmp_path, "c"), 4, "canonical", rocksdb=False)
    native_heap = write(sp(tmp_path, "h"), 5, "native", rocksdb=False)
    heap_chk = write(lineage.job_dir(JOB) / "checkpoints" / A / "chk-6", 6, None, rocksdb=False)
    for s in (canonical, native_heap):
        lineage.record_savepoint(JOB, A, s.uri, stopped=False)  # the run's backend: hashmap
    rec = {r["path"]: r for r in lineage.read(JOB) if r["kind"] == "savepoint"}
    assert (rec[native_heap.uri]["format"], rec[native_heap.uri]["backend"]) == ("native", "hashmap")

    assert restore.snapshot_backend(JOB, native_rocks) == ("native", "rocksdb")  # its files say so
    assert restore.snapshot_backend(JOB, canonical) == ("canonical", None)  # portable
    assert restore.snapshot_backend(JOB, native_heap) == ("native", "hashmap")  # its record says so
    assert restore.snapshot_backend(JOB, heap_chk) == ("checkpoint", "hashmap")  # the run that wrote it

    with pytest.raises(restore.BackendMismatch, match="is a native savepoint of the rocksdb state backend") as e:
        restore.check_backend(JOB, native_rocks, "hashmap")
    assert "--state-backend rocksdb" in str(e.value) and f"riskstream savepoint {JOB} --format canonical" in str(e.value)
    with pytest.raises(restore.BackendMismatch, match="native savepoint of the hashmap state backend"):
        restore.check_backend(JOB, native_heap, "rocksdb")
    with pytest.raises(restore.BackendMismatch, match="is a checkpoint of the hashmap state backend"):
        restore.check_backend(JOB, heap_chk, "rocksdb")
    for backend in ("rocksdb", "hashmap"):
        restore.check_backend(JOB, canonical, backend)  # either backend
    restore.check_backend(JOB, native_rocks, "rocksdb")
    restore.check_backend(JOB, native_heap, "hashmap")
    restore.check_backend(JOB, None, "hashmap")  # a start without state
    unknown = write(tmp_path / "elsewhere" / "savepoint-x", 9, "native", rocksdb=False)
    restore.check_backend(JOB, unknown, "rocksdb")  # no record, no RocksDB files: Flink decides

    # `riskstream submit` refuses it before `flink run` (a path, or what `latest` names)
    with pytest.raises(restore.BackendMismatch):
        submit.restore_backend_check(native_rocks.uri, JOB, "hashmap")
    submit.restore_backend_check(native_rocks.uri, JOB, "rocksdb")
    assert lineage.resolve_latest(JOB).snapshot.path == heap_chk.path  # the highest id of the newest run
    with pytest.raises(restore.BackendMismatch, match="is a checkpoint of the hashmap state backend"):
        submit.restore_backend_check("latest", JOB, "rocksdb")
    submit.restore_backend_check("latest", JOB, "hashmap")


def test_a_native_savepoint_the_changelog_would_claim_is_refused(tmp_path, monkeypatch):
    """Flink 2.2.1 (FLINK-39964): checkpoints after a CLAIM restore of a native savepoint of a job with the
    changelog name the savepoint's files relative to their own folder, so they cannot be restored. Refused
    with the changelog (riskstream's only restore mode there is CLAIM) and with a forced CLAIM; a savepoint
    written without the changelog passes with it (Flink converts its paths), and NO_CLAIM is safe."""
    monkeypatch.setenv("RISKSTREAM_HOME", str(tmp_path))
    with_cl = write(sp(tmp_path, "l"), 3, "native", rocksdb=True, changelog=True)
    without = write(sp(tmp_path, "n"), 4, "native", rocksdb=True)
    canonical = write(sp(tmp_path, "c"), 5, "canonical", rocksdb=False)
    assert restore.written_with_changelog(JOB, with_cl) and not restore.written_with_changelog(JOB, without)
    with pytest.raises(restore.UnsafeClaim, match="FLINK-39964") as e:
        restore.check_backend(JOB, with_cl, "rocksdb", changelog=True, claim=True)
    assert "--no-changelog" in str(e.value) and "--format canonical" in str(e.value)
    restore.check_backend(JOB, with_cl, "rocksdb", changelog=False, claim=False)  # NO_CLAIM: a full first checkpoint
    restore.check_backend(JOB, without, "rocksdb", changelog=True, claim=True)
    with pytest.raises(restore.UnsafeClaim, match="in CLAIM mode"):
        restore.check_backend(JOB, without, "rocksdb", changelog=False, claim=True)
    restore.check_backend(JOB, canonical, "rocksdb", changelog=True, claim=True)
    with pytest.raises(restore.UnsafeClaim):  # `submit --from-savepoint` to a cluster with the changelog
        submit.restore_backend_check(with_cl.uri, JOB, "rocksdb", changelog=True)
    # a savepoint whose metadata does not show it, recorded as taken with the changelog
    ck = (lineage.job_dir(JOB) / "checkpoints").as_uri()
    lineage.record_run(JOB, A, ck, None, extra={"flink_settings": {"state.backend.type": "rocksdb",
                                                                   "state.changelog.enabled": "true"}})
    lineage.record_savepoint(JOB, A, without.uri, stopped=True)
    rec = next(r for r in lineage.read(JOB) if r["kind"] == "savepoint")
    assert (rec["backend"], rec["changelog"]) == ("rocksdb", True)
    with pytest.raises(restore.UnsafeClaim):
        restore.check_backend(JOB, without, "rocksdb", changelog=True, claim=True)


def test_the_format_a_command_asks_for(monkeypatch):
    monkeypatch.delenv(submit.FORMAT_ENV, raising=False)
    assert submit.choose_format(None, "rocksdb", False)[:2] == ("native", "the job runs on rocksdb")
    assert submit.choose_format(None, "rocksdb", True)[:2] == ("canonical", "the job runs on rocksdb with the changelog")
    assert submit.choose_format(None, "rocksdb", None)[0] == "canonical"  # the changelog unknown: portable
    assert submit.choose_format(None, "hashmap")[:2] == ("canonical", "the job runs on hashmap")
    assert submit.choose_format(None, None)[0] == "canonical"  # unknown backend: the portable one
    assert submit.choose_format("canonical", "rocksdb") == ("canonical", "--format", "")
    fmt, _, note = submit.choose_format("native", "hashmap")  # taken, with what it implies
    assert fmt == "native" and "restores only on hashmap" in note
    fmt, _, note = submit.choose_format("native", "rocksdb", True)
    assert fmt == "native" and "--no-changelog" in note and "FLINK-39964" in note
    monkeypatch.setenv(submit.FORMAT_ENV, "Canonical")
    assert submit.choose_format(None, "rocksdb", False)[:2] == ("canonical", submit.FORMAT_ENV)
    assert submit.choose_format("native", "rocksdb", False)[0] == "native"  # the flag beats the variable
    monkeypatch.setenv(submit.FORMAT_ENV, "fast")
    with pytest.raises(submit.SubmitError, match=f"{submit.FORMAT_ENV}='fast': set it to canonical or native"):
        submit.choose_format(None, "rocksdb")


def test_the_format_goes_to_flink_on_both_calls():
    jm = FakeJobManager()
    try:
        jm.script[("POST", f"/jobs/{FLINK_JOB}/savepoints")] = [(202, {"request-id": "r1"})]
        jm.script[("POST", f"/jobs/{FLINK_JOB}/stop")] = [(202, {"request-id": "r2"})]
        jm.script[("GET", f"/jobs/{FLINK_JOB}/checkpoints/config")] = [
            (200, {"state_backend": "EmbeddedRocksDBStateBackend", "state_changelog_enabled": True})]
        assert flink_rest.trigger_savepoint(jm.url, FLINK_JOB, "file:///sp", format_type="native") == "r1"
        assert flink_rest.trigger_savepoint(jm.url, FLINK_JOB, "file:///sp", stop=True, format_type="canonical") == "r2"
        assert flink_rest.trigger_savepoint(jm.url, FLINK_JOB) == "r1"  # none given: Flink's default
        bodies = [b for m, _, b in jm.seen if m == "POST"]
        assert bodies == [{"cancel-job": False, "target-directory": "file:///sp", "formatType": "NATIVE"},
                          {"drain": False, "targetDirectory": "file:///sp", "formatType": "CANONICAL"},
                          {"cancel-job": False}]
        with pytest.raises(flink_rest.FlinkError, match="savepoint format 'fast'"):
            flink_rest.trigger_savepoint(jm.url, FLINK_JOB, format_type="fast")
        assert flink_rest.job_state_backend(jm.url, FLINK_JOB) == ("rocksdb", True)
        assert flink_rest.job_state_backend(jm.url, "f" * 32, retry_s=0) == (None, None)  # not known: 404
    finally:
        jm.close()
