"""Offline replay: JSON lines and Parquet give the same features as the job's window code (no JVM)."""

from __future__ import annotations

import orjson
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
