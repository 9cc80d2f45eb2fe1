"""A failure inside the bootstrap job fails `riskstream bootstrap` with a message, instead of hanging it.

Flink 2.2's State Processor API runs each keyed bootstrap subtask's operator in an inner task on its own
thread and drops that task's exception: the subtask then blocks forever on the full hand-over queue, or, when
the failure comes after its last record, the job finishes with that subtask's state missing from the
savepoint. ``io.riskstream.flink.Bootstrap.writeShards`` (what ``Bootstrap.write`` runs after the fold) is fed
shard files written here in its format, with label entries the stage cannot decode: the inner task fails in
the stage's own code. Each run is a subprocess with a deadline (the bug was a hang)."""

from __future__ import annotations

import os
import re
import signal
import struct
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.flink

ROOT = Path(__file__).resolve().parent.parent
PARALLELISM, MAX_PARALLELISM = 2, 128
GOOD_LABELS = b"\x00\x00"  # KnownFraud: at 0, no user, no label
BAD_LABELS = b"\x00\x05"  # five users announced, none there: KnownFraud.decode fails

_RUN = r"""
import sys
from pathlib import Path
from pyflink.java_gateway import get_gateway
from pyflink.util.java_utils import add_jars_to_context_class_loader
import orjson
from riskstream.config import JobConfig
from riskstream.ops.bootstrap import BootstrapFailed, state_jars, written
from udfs.chain import spec_document

work, dest = sys.argv[1], sys.argv[2]
cfg = JobConfig(job_name="bootstrap-failure-test")
jars = state_jars(cfg)
add_jars_to_context_class_loader(jars)
J = get_gateway().jvm.io.riskstream.flink
spec = orjson.dumps(spec_document(cfg.allowed_lateness_ms)).decode()
try:
    written(Path(dest), lambda: J.Bootstrap.writeShards(spec, work, Path(dest).as_uri(), %d, %d, True,
                                                        cfg.job_name, ";".join(jars)))
except BootstrapFailed as e:
    print("FAILED:", e, "| left at the output:", Path(dest).exists(), flush=True)
    sys.exit(3)
print("WRITTEN", flush=True)
""" % (MAX_PARALLELISM, PARALLELISM)


def _shards(work: Path, entity: str, entries: list[tuple[str, bytes]]) -> None:
    """An entity's shard files as ``Bootstrap.ChainState.dump`` writes them (DataOutputStream: a true byte,
    the key in writeUTF form, windows bytes (none here), label bytes, no timer; a false byte at the end)."""
    n = max(1, PARALLELISM * 2)
    outs = [bytearray() for _ in range(n)]
    for i, (key, labels) in enumerate(entries):
        k = key.encode()
        outs[i % n] += (b"\x01" + struct.pack(">H", len(k)) + k + struct.pack(">i", 0)
                        + struct.pack(">i", len(labels)) + labels + struct.pack(">q", -2**63))
    for i, o in enumerate(outs):
        (work / f"{entity}-{i}.bin").write_bytes(bytes(o) + b"\x00")


def _write(tmp_path: Path, shards: dict[str, list[tuple[str, bytes]]], deadline_s: float = 300):
    work = tmp_path / "work"
    work.mkdir()
    for entity, entries in shards.items():
        _shards(work, entity, entries)
    dest = tmp_path / "savepoint"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FLINK_LOG_DIR": str(tmp_path / "logs")}
    p = subprocess.Popen([sys.executable, "-c", _RUN, str(work), str(dest)], cwd=ROOT, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = p.communicate(timeout=deadline_s)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)  # the gateway JVM with it
        p.communicate()
        pytest.fail(f"the bootstrap job neither finished nor failed in {deadline_s:.0f}s")
    return p.returncode, out, dest


def test_a_dead_bootstrap_task_fails_the_job_instead_of_hanging_it(tmp_path):
    """Broken entries among 2000 keys: the first one kills its subtask's inner task while more records wait,
    which blocked the subtask forever; the watch cancels the job and names the stuck task."""
    users = [(f"u{i}", BAD_LABELS if i % 97 == 50 else GOOD_LABELS) for i in range(2000)]
    rc, out, _ = _write(tmp_path, {"user": users})
    assert rc == 3, out[-3000:]
    assert "FAILED: writing the savepoint failed: the bootstrap job cannot finish" in out, out[-3000:]
    assert re.search(r"(its task|one of its tasks) .*\(\d/2\)#\d+.* waits for an inner", out), out[-3000:]
    assert "left at the output: False" in out, out[-3000:]


def test_a_task_dying_after_its_last_record_fails_the_check_of_the_savepoint(tmp_path):
    """A broken entry as the only record of its subtask: the inner task dies after the subtask's input ended,
    nothing blocks and the job finishes, without that subtask's state. The key-group check of the savepoint
    names the entity; the entities written whole pass it (one of them with a single key: a subtask with no
    record is not a gap; the control that the check passes on whole savepoints is every other bootstrap test)."""
    rc, out, _ = _write(tmp_path, {"user": [(f"u{i}", GOOD_LABELS) for i in range(300)],
                                   "ip": [("10.0.0.1", GOOD_LABELS)],
                                   "device": [("d-broken", BAD_LABELS)]})
    assert rc == 3, out[-3000:]
    assert "lacks the state of device in key groups" in out, out[-3000:]
    assert "left at the output: False" in out, out[-3000:]  # a savepoint without a subtask's state

