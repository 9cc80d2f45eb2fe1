"""The key-count benchmark (benchmarks/scale.py): its backend variants, one small real run whose drain
clock saw every event come out of the four JVM stages, and one small run restored from its savepoint."""

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
    no later than the poll that saw it, and every completed checkpoint is in the drain's figures or counted
    after it."""
    env = {**os.environ, "JVM_ARGS": "-Xmx1g", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.scale", "--one", "--backends", "rocksdb", "--users",
                           "3000", "--parallelism", "2", "--work", str(tmp_path)],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1])
    assert r["events"] == 4500 and r["records_out"] == r["events"]
    assert 0 < r["drain_seconds"] <= r["seconds"] + 0.5
    listed = r["checkpoint_list"]
    assert len(listed) == r["checkpoints"] + r["checkpoints_after_drain"]["count"]
    for trigger, duration, uploaded, parts in listed:
        assert duration >= 0 and uploaded >= 0 and set(parts) == {"start_delay", "alignment", "sync", "async"}


def test_latency_histograms_read_as_flink_prints_them():
    h = scale.histogram("{3=2, 10=1, 250=1}")
    assert h == {3: 2, 10: 1, 250: 1} and scale.histogram(None) == {}
    assert [scale.hist_pct(h, q) for q in (0.25, 0.5, 0.75, 1.0)] == [3, 3, 10, 250]
    assert scale.hist_pct({}, 0.5) is None


@pytest.mark.flink
@pytest.mark.long
def test_a_restored_run_holds_every_key_and_times_its_restore_and_latency(tmp_path, monkeypatch):
    """300 users on the production configuration (RocksDB + changelog): the load stopped with a savepoint, a
    fresh job restored from it and fed 200 events/s for 3 s (events 450..1049: every user at least once).
    Every paced event's user, device and card features show the history the load left; the same events
    on a job without that state fail the check (its control). The restore's times come in order, every
    record has a latency and a committed latency, and the committed one is never the shorter."""
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("JVM_ARGS", "")
    res = scale.run_all([300], ["rocksdb+changelog"], 1.5, 2, 1000, "1g", held_seconds=3, held_rate=200)
    (r,) = res["runs"]
    assert "error" not in r, r.get("error")
    assert r["records_out"] == 450 and r["savepoint"]["mb"] > 0 and r["gc"]["full_gcs"] >= 0
    rs, h = r["restore"], r["held"]
    # brute force over the sequence: event i is user i % 300's (i // 300)-th, typed TYPES[(k + u) % 4]
    paced = range(450, 450 + 600)
    types = ("login", "payment", "place_order", "payment")
    cards = sum(types[(i // 300 + i % 300) % 4] != "login" for i in paced)
    assert len({i % 300 for i in paced}) == 300
    assert rs["checked_events"] == 600 and rs["checked_card_events"] == cards
    assert rs["wrong_user"] == rs["wrong_device"] == rs["wrong_card"] == 0
    assert 0 < rs["to_running_s"] <= rs["to_first_checkpoint_s"] <= rs["to_first_record_s"]
    assert rs["state_load_max_s"] > 0 and rs["first_checkpoint_full_mb"] > 0
    lat, com = h["latency_ms"], h["committed_latency_ms"]
    assert h["records_out"] == lat["count"] == com["count"] == 600
    assert 0 <= lat["p50"] <= lat["p99"] <= lat["max"] and lat["p99"] > 0
    assert com["p50"] >= lat["p50"] and com["p99"] >= lat["p99"] and com["max"] >= lat["max"]
    assert h["checkpoints"] >= 1 and h["live_heap_mb"] > 0 and h["gc"]["pauses"] >= 1
    # the control: the same paced events on a job without the load's state
    work = tmp_path / "control"
    work.mkdir()
    ctl, err = scale.run_phase(["--backends", "rocksdb+changelog", "--users", "300", "--work", str(work),
                             "--held-without-state", "--held-rate", "200", "--held-seconds", "3"],
                            "1g", work / "gc.log")
    assert ctl is not None, err
    c = ctl["restore"]
    assert c["checked_events"] == 600 and c["wrong_user"] == c["wrong_device"] == 600 and c["wrong_card"] > 0
