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


def test_replay_labels_file_applies_each_label_from_its_arrival(tmp_path):
    """`riskstream replay --labels`: a label counts for the events at or after its arrival_ts, never before,
    whatever its event's time; the newest label of an event wins; a bad label line fails with its number."""
    from riskstream.cli import main

    day = 86_400_000
    t0 = 1_767_225_600_000
    evs = [{"event_id": f"e{i}", "event_type": "payment", "user_id": f"u{i % 3}", "device_id": "dev", "ip": "10.0.0.1",
            "amount": 5.0, "currency": "EUR", "ts": t0 + i * day, "payment_ref": "card"} for i in range(6)]
    (tmp_path / "ev.jsonl").write_bytes(b"\n".join(orjson.dumps(e) for e in evs) + b"\n")
    lab = {"event_id": "e0", "user_id": "u0", "device_id": "dev", "event_ts": t0, "label": "fraud", "ip": "10.0.0.1"}
    labels = [{**lab, "arrival_ts": t0 + 2 * day},  # counts from e2 on
              {**lab, "label": "legit", "arrival_ts": t0 + 4 * day}]  # and no longer from e4 on
    (tmp_path / "labels.jsonl").write_bytes(b"\n".join(orjson.dumps(x) for x in labels) + b"\n")
    out = tmp_path / "out.jsonl"
    assert main(["replay", "--input", str(tmp_path / "ev.jsonl"), "--output", str(out),
                 "--labels", str(tmp_path / "labels.jsonl")]) == 0
    rows = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert [r["device_fraud_labels_7d"] for r in rows] == [0, 0, 1, 1, 0, 0]
    assert [r["device_fraud_share_7d"] for r in rows] == [0, 0, 1 / 3, 1 / 4, 0, 0]
    assert [r["ip_fraud_labels_7d"] for r in rows] == [0, 0, 1, 1, 0, 0]
    assert [r["payment_fraud_labels_30d"] for r in rows] == [0] * 6  # the label names no payment_ref
    assert [r["user_fraud_labels_30d"] for r in rows] == [0, 0, 0, 1, 0, 0]  # u0's events: e0, e3
    # without labels every label feature is 0, as in a job without a labels topic
    assert main(["replay", "--input", str(tmp_path / "ev.jsonl"), "--output", str(out)]) == 0
    assert all(orjson.loads(line)["device_fraud_labels_30d"] == 0 for line in out.read_bytes().splitlines())
    (tmp_path / "bad.jsonl").write_bytes(orjson.dumps(labels[0]) + b"\n" + orjson.dumps({**lab, "arrival_ts": t0 - 1}))
    with pytest.raises(SystemExit, match="line 2: arrival_ts is before"):
        main(["replay", "--input", str(tmp_path / "ev.jsonl"), "--output", str(out),
              "--labels", str(tmp_path / "bad.jsonl")])


def test_generate_days_spreads_the_traffic_over_that_many_days_with_the_slow_scenarios(tmp_path, capsys):
    """`riskstream generate --days N` writes events whose times span N days from the generator's start, with
    the slow scenarios among the labels; without it, sessions start within n / 5 simulated seconds and the
    traffic covers less than an hour, with only the short scenarios. A non-positive or non-numeric N is
    refused."""
    from riskstream.cli import main
    from riskstream.generator import DEFAULT_START_TS, LONG_SCENARIOS, SCENARIOS

    day, n = 86_400_000, 3000

    def generated(*flags: str) -> tuple[list[dict], list[dict]]:
        out, labels = tmp_path / "ev.jsonl", tmp_path / "labels.jsonl"
        assert main(["generate", "--count", str(n), "--seed", "4", "--output", str(out), "--labels", str(labels),
                     *flags]) == 0
        return ([orjson.loads(x) for x in out.read_bytes().splitlines()],
                [orjson.loads(x) for x in labels.read_bytes().splitlines()])

    events, labels = generated("--days", "12")
    ts = [e["ts"] for e in events]
    assert len(events) == len(labels) == n and [e["event_id"] for e in events] == [lb["event_id"] for lb in labels]
    assert DEFAULT_START_TS <= min(ts) < DEFAULT_START_TS + day and DEFAULT_START_TS + 11 * day <= max(ts) \
        < DEFAULT_START_TS + 12 * day
    assert len({(t - DEFAULT_START_TS) // day for t in ts}) == 12  # every day has traffic
    scenarios = {lb["scenario"] for lb in labels}
    assert set(LONG_SCENARIOS) <= scenarios
    slow = [e for e, lb in zip(events, labels) if lb["scenario"] == "slow_card_testing"]
    assert max(e["ts"] for e in slow) - min(e["ts"] for e in slow) > day  # a slow scenario spans days

    events, labels = generated()
    ts = [e["ts"] for e in events]
    assert max(ts) - min(ts) < 3_600_000 and not set(LONG_SCENARIOS) & {lb["scenario"] for lb in labels}
    assert {lb["scenario"] for lb in labels} <= {*SCENARIOS, "normal"}

    for bad in ("0", "-3", "nan", "inf", "many"):
        with pytest.raises(SystemExit) as e:
            main(["generate", "--days", bad, "--output", str(tmp_path / "x.jsonl")])
        assert e.value.code == 2 and "days" in capsys.readouterr().err
