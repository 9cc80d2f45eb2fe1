"""The key-count benchmark (benchmarks/scale.py): its backend variants, and one small real run whose drain
clock saw every event come out of the four JVM stages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import scale

ROOT = Path(__file__).resolve().parent.parent


def test_variants_combine_and_unknown_ones_are_refused():
    assert scale.variants("rocksdb") == []
    assert scale.variants("rocksdb+lsm+unaligned") == ["lsm", "unaligned"]
    settings = [x for v in scale.variants("rocksdb+lsm+unaligned") for x in scale.VARIANTS[v](Path("."))]
    assert "execution.checkpointing.unaligned.enabled=true" in settings
    assert any(x.startswith("state.backend.rocksdb.compaction.level.max-size-level-base=") for x in settings)
    with pytest.raises(SystemExit, match="unknown backends"):
        scale.main(["--users", "10", "--backends", "rocksdb+fast"])
    assert [scale.parse_count(x) for x in ("100k", "1M", "2.5M", "300")] == [100_000, 1_000_000, 2_500_000, 300]


@pytest.mark.flink
def test_a_small_run_drains_every_event_and_splits_its_checkpoints(tmp_path):
    """3,000 users on RocksDB: the drain clock counted every event out of the last stage, its drain ended
    no later than the job, and every completed checkpoint is in the drain's figures or counted after it."""
    env = {**os.environ, "JVM_ARGS": "-Xmx1g", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.scale", "--one", "--backends", "rocksdb", "--users",
                           "3000", "--parallelism", "2", "--work", str(tmp_path)],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1])
    assert r["events"] == 4500 and r["records_out"] == r["events"]
    assert 0 < r["drain_seconds"] <= r["seconds"] + 0.5
    assert r["events_per_s"] >= r["events_per_s_to_finished"]
    listed = r["checkpoint_list"]
    assert len(listed) == r["checkpoints"] + r["checkpoints_after_input_end"]["count"]
    for trigger, duration, uploaded, parts in listed:
        assert duration >= 0 and uploaded >= 0 and set(parts) == {"start_delay", "alignment", "sync", "async"}
