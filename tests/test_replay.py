"""Offline replay: JSON lines and Parquet give the same features as the job's window code (no JVM)."""

from __future__ import annotations

import orjson
import pytest
import pyarrow as pa
import pyarrow.parquet as pq

from riskstream.generator import TrafficGenerator
from udfs.events import Event
from udfs.features import FEATURE_NAMES
from udfs.replay import replay, replay_file


def test_jsonl_and_parquet_replay_equal_the_window_code(tmp_path):
    recs = list(TrafficGenerator(seed=21, bad_share=0.02).generate(2000))
    (tmp_path / "ev.jsonl").write_bytes(
        b"\n".join(r.raw if r.raw is not None else orjson.dumps(r.event) for r in recs) + b"\n")
    good = [r.event for r in recs if r.raw is None]
    # from_pylist takes its columns from the first row: give every row the optional field
    pq.write_table(pa.Table.from_pylist([{"payment_ref": None, **e} for e in good]), tmp_path / "ev.parquet")

    s1 = replay_file(tmp_path / "ev.jsonl", tmp_path / "a.jsonl")
    s2 = replay_file(tmp_path / "ev.parquet", tmp_path / "b.jsonl")
    assert s1["events"] == s2["events"] == len(good)
    assert sum(s1["rejected"].values()) == len(recs) - len(good) and not s2["rejected"]
    a = (tmp_path / "a.jsonl").read_bytes().splitlines()
    assert a == (tmp_path / "b.jsonl").read_bytes().splitlines()
    want = [(ev.event_id, vec) for ev, vec, _ in replay(Event(**e) for e in good)]
    got = [orjson.loads(line) for line in a]
    assert [(g["event_id"], [g[n] for n in FEATURE_NAMES]) for g in got] == want


def test_the_replay_command_takes_the_jobs_settings(tmp_path, monkeypatch):
    """`riskstream replay` reads dedup horizon and lateness as the job does: flag, else RISKSTREAM_*, else default."""
    from riskstream.cli import main

    ev = {"event_id": "e1", "event_type": "login", "user_id": "u1", "device_id": "d1", "ip": "10.0.0.1",
          "amount": 0.0, "currency": "EUR", "ts": 1_767_225_600_000}
    older = {**ev, "event_id": "e2", "ts": ev["ts"] - 10_000}
    (tmp_path / "ev.jsonl").write_bytes(b"\n".join(orjson.dumps(e) for e in (ev, ev, older)) + b"\n")
    out = tmp_path / "out.jsonl"

    def replayed(*flags: str) -> list[dict]:
        assert main(["replay", "--input", str(tmp_path / "ev.jsonl"), "--output", str(out), *flags]) == 0
        return [orjson.loads(line) for line in out.read_bytes().splitlines()]

    monkeypatch.delenv("RISKSTREAM_DEDUP_HORIZON_MS", raising=False)
    monkeypatch.delenv("RISKSTREAM_ALLOWED_LATENESS_MS", raising=False)
    assert [r["event_id"] for r in replayed()] == ["e1", "e2"]  # the repeated event id is dropped, as the job does
    monkeypatch.setenv("RISKSTREAM_DEDUP_HORIZON_MS", "0")  # dedup off
    assert [r["event_id"] for r in replayed()] == ["e1", "e1", "e2"]
    assert [r["event_id"] for r in replayed("--dedup-horizon-ms", "600000")] == ["e1", "e2"]  # the flag wins
    monkeypatch.setenv("RISKSTREAM_ALLOWED_LATENESS_MS", "5000")
    assert [r["late"] for r in replayed()] == [False, False, True]  # 10 s behind the key's newest: late
    monkeypatch.setenv("RISKSTREAM_DEDUP_HORIZON_MS", "-1")
    with pytest.raises(SystemExit, match="invalid configuration"):
        replayed()
