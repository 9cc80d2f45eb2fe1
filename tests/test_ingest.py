"""Your own data: the mapping (ts units, datetimes, labels, ids, event types, extras), rejects with their row
and line numbers, the reject threshold's exit code, event-time order, and the fraud-team metrics (precision
top-k per day, recall at a budget per scenario) against independent brute-force computations. No JVM."""

from __future__ import annotations

import calendar
import csv
import itertools
import random

import numpy as np
import orjson
import pytest

from riskstream.cli import main
from riskstream.metrics import entity_precision_at_k, recall_at_budget_by_group
from udfs.ingest import IngestError, Mapping, count_out_of_order, load_input, parse_label, to_epoch_ms

T0 = calendar.timegm((2026, 1, 31, 14, 5, 0)) * 1000  # 2026-01-31 14:05:00 UTC, computed apart from the code
ROW = {"tx": 17, "when": "2026-01-31 14:05:00", "cust": 42, "term": "T9", "ip": "10.0.0.1", "amt": "12.50",
       "cur": "EUR", "kind": "PAY", "fraud": "1", "note": "x"}
MAPPING = {"fields": {"event_id": "tx", "user_id": "cust", "device_id": "term", "ip": "ip", "amount": "amt",
                      "currency": "cur", "event_type": "kind"},
           "ts": {"column": "when", "unit": "datetime"}, "event_types": {"PAY": "payment", "LOG": "login"},
           "label": {"column": "fraud"}}


def write_csv(path, rows: list[dict], header: list[str] | None = None) -> None:
    header = header or list(rows[0])
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=header, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)


# ------------------------------------------------------------------------------------------ the mapping


@pytest.mark.parametrize("value,unit,want", [
    (T0, "ms", T0), (T0 // 1000, "s", T0), (T0 * 1000, "us", T0), (T0 * 1_000_000, "ns", T0),
    (T0 / 1000 + 0.25, "s", T0 + 250), (float(T0), "ms", T0), (str(T0 // 1000), "s", T0), ("1769868300.5", "s", T0 + 500),
    (T0 * 1000 + 999, "us", T0), ("2026-01-31T14:05:00Z", "datetime", T0), ("2026-01-31 15:05:00+01:00", "datetime", T0),
    ("2026-01-31 14:05:00.123", "datetime", T0 + 123)])
def test_ts_units(value, unit, want):
    assert to_epoch_ms(value, unit) == want


def test_ts_timezone_format_and_refusals():
    from datetime import date, datetime, timezone

    assert to_epoch_ms("2026-01-31 15:05:00", "datetime", "Europe/Paris") == T0  # CET = UTC+1 in winter
    assert to_epoch_ms("2026-07-01 02:00:00", "datetime", "Europe/Paris") == calendar.timegm((2026, 7, 1, 0, 0, 0)) * 1000
    assert to_epoch_ms("31/01/2026 14:05", "datetime", fmt="%d/%m/%Y %H:%M") == T0
    assert to_epoch_ms(datetime(2026, 1, 31, 14, 5), "ms") == T0  # a time is a time whatever the unit says
    assert to_epoch_ms(datetime(2026, 1, 31, 15, 5, tzinfo=timezone.utc), "s", "Europe/Paris") == T0 + 3_600_000
    assert to_epoch_ms(date(2026, 1, 31), "datetime") == T0 - (14 * 60 + 5) * 60_000
    for bad, unit in ((True, "ms"), ("yesterday", "datetime"), ("abc", "s"), (T0, "datetime"), (float("nan"), "s"),
                      ("", "ms")):
        with pytest.raises(ValueError):
            to_epoch_ms(bad, unit)


@pytest.mark.parametrize("value,want", [
    (1, True), (0, False), (1.0, True), (True, True), (False, False), ("1", True), ("0", False), ("yes", True),
    ("No", False), ("TRUE", True), ("false", False), ("y", True), ("n", False), (" t ", True), ("F", False),
    ("", None), (None, None), (float("nan"), None), ("1.0", True)])
def test_label_formats(value, want):
    assert parse_label(value) == want


@pytest.mark.parametrize("value", [2, -1, "maybe", "10", 0.5, [1]])
def test_label_refusals(value):
    with pytest.raises(ValueError):
        parse_label(value)


def test_mapped_csv_row_becomes_the_contract_event(tmp_path):
    write_csv(tmp_path / "a.csv", [ROW, {**ROW, "tx": 18, "kind": "LOG", "fraud": "no", "amt": "0"}])
    inp = load_input(tmp_path / "a.csv", Mapping.from_dict({**MAPPING, "extras": ["note"]}))
    assert not inp.rejects and inp.records == 2 and inp.labelled
    a, b = inp.events
    assert a.event == a.event._replace(event_id="17", event_type="payment", user_id="42", device_id="T9",
                                       amount=12.5, currency="EUR", ts=T0, extras={"note": "x"})
    assert (a.fraud, a.scenario, b.fraud, b.scenario) == (True, "fraud", False, "normal")
    assert (a.row, a.line, b.row, b.line) == (1, 2, 2, 3)
    assert b.event.event_type == "login"
    ign = load_input(tmp_path / "a.csv", Mapping.from_dict(MAPPING)).events[0].event  # extras default: ignore
    assert ign.extras is None
    every = load_input(tmp_path / "a.csv", Mapping.from_dict({**MAPPING, "extras": "all"})).events[0].event
    assert every.extras == {"note": "x"}
    strict = load_input(tmp_path / "a.csv", Mapping.from_dict({**MAPPING, "extras": "reject"}))
    assert [r["reason"] for r in strict.rejects] == ["unknown_field", "unknown_field"]


def test_parquet_integer_ids_datetime_and_float_ts(tmp_path):
    from datetime import datetime, timezone

    import pyarrow as pa
    import pyarrow.parquet as pq

    n = 4
    t = pa.table({"tx": pa.array(range(n), pa.int64()), "cust": pa.array([7] * n, pa.int64()),
                  "term": pa.array([3.0] * n), "ip": ["1.2.3.4"] * n, "amt": [1.5] * n, "cur": ["EUR"] * n,
                  "kind": ["PAY"] * n, "fraud": [True, False, None, True],
                  "when": pa.array([datetime(2026, 1, 31, 14, 5, i, tzinfo=timezone.utc) for i in range(n)],
                                   pa.timestamp("ns", "UTC")),
                  "naive": pa.array([datetime(2026, 1, 31, 15, 5, i) for i in range(n)], pa.timestamp("ms")),
                  "secs": [T0 / 1000 + i for i in range(n)]})
    pq.write_table(t, tmp_path / "a.parquet")
    want = [T0 + 1000 * i for i in range(n)]
    for ts in ({"column": "when"}, {"column": "naive", "unit": "datetime", "timezone": "Europe/Paris"},
               {"column": "secs", "unit": "s"}):
        inp = load_input(tmp_path / "a.parquet", Mapping.from_dict({**MAPPING, "ts": ts}))
        assert not inp.rejects, inp.rejects
        assert [e.event.ts for e in inp.events] == want, ts
        assert [e.event.event_id for e in inp.events] == ["0", "1", "2", "3"]
        assert {(e.event.user_id, e.event.device_id) for e in inp.events} == {("7", "3")}
        assert [e.fraud for e in inp.events] == [True, False, None, True]  # null: unlabelled, not rejected


def test_rejects_carry_row_line_reason_and_detail(tmp_path):
    rows = [ROW, {**ROW, "tx": 2, "kind": "WIRE"}, {**ROW, "tx": 3, "fraud": "maybe"},
            {**ROW, "tx": 4, "note": "two\nlines"}, {**ROW, "tx": 5, "when": "soon"}, {**ROW, "tx": 6, "cust": ""},
            {**ROW, "tx": 7, "amt": "-3"}]
    write_csv(tmp_path / "a.csv", rows)
    with open(tmp_path / "a.csv", "a", encoding="utf-8") as f:
        f.write("8,too,few\n")
    inp = load_input(tmp_path / "a.csv", Mapping.from_dict(MAPPING))
    got = [(r["row"], r["line"], r["reason"]) for r in inp.rejects]
    # line numbers: header on 1; row 4's quoted note spans lines 5-6, so row 5 starts on line 7
    assert got == [(2, 3, "unknown_event_type"), (3, 4, "invalid_label"), (5, 7, "invalid_ts"),
                   (6, 8, "missing_field"), (7, 9, "invalid_amount"), (8, 10, "invalid_csv")]
    d = {r["row"]: r for r in inp.rejects}
    assert "'WIRE'" in d[2]["detail"] and "LOG" in d[2]["detail"] and "'maybe'" in d[3]["detail"]
    assert "'soon'" in d[5]["detail"] and "cust" in d[6]["detail"] and "3 fields" in d[8]["detail"]
    assert d[2]["record"].startswith("2,2026-01-31 14:05:00,42,T9")
    assert [e.row for e in inp.events] == [1, 4] and inp.events[1].event.event_id == "4"
    inp.write_rejects(tmp_path / "rej.jsonl")
    lines = [orjson.loads(x) for x in (tmp_path / "rej.jsonl").read_bytes().splitlines()]
    assert [(x["row"], x["line"], x["reason"]) for x in lines] == got


def test_jsonl_lines_and_unmapped_input(tmp_path):
    ev = {"event_id": "e1", "event_type": "login", "user_id": "u", "device_id": "d", "ip": "1.1.1.1",
          "amount": 0.0, "currency": "EUR", "ts": T0}
    (tmp_path / "a.jsonl").write_bytes(orjson.dumps(ev) + b"\n\n" + b"{broken\n" + orjson.dumps({**ev, "x": 1}) + b"\n")
    inp = load_input(tmp_path / "a.jsonl")
    assert [(r["row"], r["line"], r["reason"]) for r in inp.rejects] == [(2, 3, "invalid_json"), (3, 4, "unknown_field")]
    # CSV without a mapping: the identity mapping, with the unmapped column named in the detail
    write_csv(tmp_path / "b.csv", [{**{k: v for k, v in ev.items()}, "fraud": "1"}])
    inp = load_input(tmp_path / "b.csv")
    assert inp.rejects[0]["reason"] == "unknown_field" and "fraud" in inp.rejects[0]["detail"]
    write_csv(tmp_path / "c.csv", [ev])
    assert load_input(tmp_path / "c.csv").events[0].event.ts == T0
    with pytest.raises(IngestError, match="unknown format"):
        load_input(tmp_path / "a.txt")


def test_mapping_mistakes_are_refused(tmp_path):
    for bad, msg in (({"fields": {"userid": "x"}}, "not a contract field"), ({"ts": {"unit": "h"}}, "ts unit"),
                     ({"event_types": {"X": "wire"}}, "not contract event types"), ({"nope": 1}, "unknown keys"),
                     ({"ts": {"timezone": "Mars/Olympus"}}, "unknown timezone"), ({"extras": "some"}, "extras")):
        with pytest.raises(IngestError, match=msg):
            Mapping.from_dict(bad)
    (tmp_path / "m.toml").write_text('[fields]\nuser_id = "cust"\n[ts]\ncolumn = "when"\nunit = "s"\n')
    m = Mapping.load(tmp_path / "m.toml", {"ts": {"unit": "ms"}})
    assert m.fields["user_id"] == "cust" and m.fields["ts"] == "when" and m.ts_unit == "ms"


# ------------------------------------------------------------------------------------- exit code, order


def _events(n: int, bad: int = 0) -> list[dict]:
    rows = [{**ROW, "tx": i, "when": f"2026-01-31 14:{i // 60:02d}:{i % 60:02d}"} for i in range(n)]
    for i in range(bad):
        rows[3 + 5 * i]["kind"] = "WIRE"
    return rows


def test_reject_threshold_sets_the_exit_code(tmp_path, capsys):
    (tmp_path / "m.json").write_bytes(orjson.dumps(MAPPING))
    base = ["replay", "--mapping", str(tmp_path / "m.json"), "--output", str(tmp_path / "o.jsonl")]
    write_csv(tmp_path / "a.csv", _events(100, bad=2))  # 2 % rejected
    assert main([*base, "--input", str(tmp_path / "a.csv")]) == 1
    err = capsys.readouterr().err
    assert "2 of 100 records (2.00 %)" in err and "o.jsonl.rejects.jsonl" in err
    rej = [orjson.loads(x) for x in (tmp_path / "o.jsonl.rejects.jsonl").read_bytes().splitlines()]
    assert [(r["row"], r["line"], r["reason"]) for r in rej] == [(4, 5, "unknown_event_type"), (9, 10, "unknown_event_type")]
    assert main([*base, "--input", str(tmp_path / "a.csv"), "--max-reject-share", "0.02"]) == 0
    assert len((tmp_path / "o.jsonl").read_bytes().splitlines()) == 98
    write_csv(tmp_path / "b.csv", [{**r, "kind": "WIRE"} for r in _events(5)])  # everything rejected
    assert main([*base, "--input", str(tmp_path / "b.csv"), "--max-reject-share", "1"]) == 1
    assert "every one of the 5 records" in capsys.readouterr().err
    write_csv(tmp_path / "c.csv", _events(100, bad=1))  # 1 %: at the default threshold, not past it
    assert main([*base, "--input", str(tmp_path / "c.csv"), "--rejects", str(tmp_path / "r.jsonl")]) == 0
    assert (tmp_path / "r.jsonl").is_file()


def test_out_of_order_input_is_counted_sorted_or_refused(tmp_path, capsys):
    from udfs.replay import replay

    rows = _events(120)
    random.Random(4).shuffle(rows)
    write_csv(tmp_path / "a.csv", rows)
    (tmp_path / "m.json").write_bytes(orjson.dumps(MAPPING))
    ts = [to_epoch_ms(r["when"], "datetime") for r in rows]
    brute = sum(1 for i, t in enumerate(ts) if any(u > t for u in ts[:i]))
    assert count_out_of_order(ts) == brute > 0
    base = ["replay", "--input", str(tmp_path / "a.csv"), "--mapping", str(tmp_path / "m.json")]
    assert main([*base, "--output", str(tmp_path / "f.jsonl"), "--allowed-lateness-ms", "5000"]) == 0
    err = capsys.readouterr().err
    late = sum(orjson.loads(x)["late"] for x in (tmp_path / "f.jsonl").read_bytes().splitlines())
    assert f"warning: {brute} events are behind" in err and f"{late} of them came out late" in err and late > 0
    assert main([*base, "--output", str(tmp_path / "s.jsonl"), "--order", "sort"]) == 0
    got = [orjson.loads(x) for x in (tmp_path / "s.jsonl").read_bytes().splitlines()]
    assert [g["ts"] for g in got] == sorted(ts) and not any(g["late"] for g in got)
    want = [vec for _, vec, _ in replay(e.event for e in sorted(load_input(tmp_path / "a.csv", Mapping.from_dict(MAPPING))
                                                                 .events, key=lambda e: e.event.ts))]
    from udfs.features import FEATURE_NAMES

    assert [[g[n] for n in FEATURE_NAMES] for g in got] == want
    with pytest.raises(SystemExit, match=f"{brute} of 120 valid events are out of event-time order"):
        main([*base, "--output", str(tmp_path / "r.jsonl"), "--order", "refuse"])


# ------------------------------------------------------------------------- precision top-k per day, recall


def test_precision_top_k_per_day_on_a_hand_computed_table():
    D = 86_400_000
    rows = [  # (day, entity, score, fraud)
        (0, "A", .9, 1), (0, "A", .1, 0), (0, "B", .8, 0), (0, "C", .7, 1), (0, "D", .2, 1),
        (1, "A", .95, 1), (1, "B", .6, 1), (1, "C", .5, 0), (1, "E", .4, 0),
        (2, "C", .3, 1)]
    args = ([r[2] for r in rows], [r[3] for r in rows], [r[1] for r in rows], [r[0] * D + 5 for r in rows])
    # day 0: top 2 = A (fraud), B -> 1/2; A is found. Day 1 without A: B (fraud), C -> 1/2. Day 2: C alone -> 1/2
    got = entity_precision_at_k(*args, k=2)
    assert [d["precision"] for d in got["days"]] == [0.5, 0.5, 0.5] and got["mean"] == pytest.approx(0.5)
    assert [d["day"] for d in got["days"]] == [0, D, 2 * D]
    assert [(d["entities"], d["fraud_entities"]) for d in got["days"]] == [(4, 3), (3, 1), (1, 1)]
    # without removal, day 1's top 2 are A and B, both fraud
    keep = entity_precision_at_k(*args, k=2, remove_detected=False)
    assert [d["precision"] for d in keep["days"]] == [0.5, 1.0, 0.5] and keep["mean"] == pytest.approx(2 / 3)
    # ties: X, Y, Z tie for k = 1 -> expected 2/3; none is surely found, so X is ranked the next day
    tie = entity_precision_at_k([.5, .5, .5, .9], [1, 0, 1, 1], ["X", "Y", "Z", "X"], [0, 0, 0, D], k=1)
    assert [d["precision"] for d in tie["days"]] == [pytest.approx(2 / 3), 1.0]


def _handbook_card_precision(scores, y, entity, day, k):
    """The Fraud Detection Handbook's card_precision_top_k (Le Borgne et al., chapter 4), in pandas."""
    import pandas as pd

    df = pd.DataFrame({"predictions": scores, "TX_FRAUD": y, "CUSTOMER_ID": entity, "TX_TIME_DAYS": day})
    detected, per_day = [], []
    for d in sorted(df.TX_TIME_DAYS.unique()):
        df_day = df[df.TX_TIME_DAYS == d][["predictions", "CUSTOMER_ID", "TX_FRAUD"]]
        df_day = df_day[~df_day.CUSTOMER_ID.isin(detected)]
        df_day = df_day.groupby("CUSTOMER_ID").max().sort_values(by="predictions", ascending=False).reset_index()
        top = df_day.head(k)
        found = list(top[top.TX_FRAUD == 1].CUSTOMER_ID)
        per_day.append(len(found) / k)
        detected.extend(found)
    return per_day, float(np.mean(per_day))


def test_precision_top_k_equals_the_handbooks_code_without_ties():
    pytest.importorskip("pandas")
    rng = np.random.default_rng(5)
    n = 3000
    day = rng.integers(0, 9, n)
    entity = [f"c{i}" for i in rng.integers(0, 200, n)]
    y = (rng.random(n) < 0.05).astype(int)
    scores = rng.random(n) * 0.7 + 0.3 * y  # continuous: no ties
    for k in (1, 5, 30, 250):
        per_day, mean = _handbook_card_precision(scores, y, entity, day, k)
        got = entity_precision_at_k(scores, y, entity, day * 86_400_000 + 7, k)
        assert [d["precision"] for d in got["days"]] == pytest.approx(per_day) and got["mean"] == pytest.approx(mean)


def test_precision_top_k_ties_average_over_every_order():
    """Brute force: every order of the tied entities, per day (no removal), averaged."""
    rng = random.Random(9)
    for _ in range(30):
        rows = [(rng.randrange(2), f"e{rng.randrange(6)}", rng.choice((.2, .5, .5, .8)), int(rng.random() < .4))
                for _ in range(14)]
        k = rng.randrange(1, 4)
        got = entity_precision_at_k([r[2] for r in rows], [r[3] for r in rows], [r[1] for r in rows],
                                    [r[0] * 86_400_000 for r in rows], k, remove_detected=False)
        want = []
        for d in sorted({r[0] for r in rows}):
            ents: dict = {}
            for dd, e, s, f in rows:
                if dd == d:
                    ents[e] = (max(s, ents.get(e, (0, 0))[0]), max(f, ents.get(e, (0, 0))[1]))
            names = list(ents)
            orders = [sorted(p, key=lambda e: -ents[e][0]) for p in itertools.permutations(names)]
            want.append(np.mean([sum(ents[e][1] for e in o[:k]) / k for o in orders]))
        assert [d["precision"] for d in got["days"]] == pytest.approx(want)


def test_recall_at_budget_per_scenario_by_brute_force():
    rng = random.Random(2)
    for _ in range(30):
        n = rng.randrange(5, 40)
        y = [int(rng.random() < .4) for _ in range(n)]
        scen = [rng.choice(("a", "b", "c")) if t else "normal" for t in y]
        scores = [rng.choice((.1, .3, .3, .6, .9)) for _ in range(n)]
        budget = rng.choice((.1, .25, .5))
        got = recall_at_budget_by_group(scores, y, scen, budget)
        k = max(1, int(budget * n + 1e-9))
        # expectation over random tie-breaking: a row's chance to be in the top k
        p = []
        for s in scores:
            above = sum(1 for t in scores if t > s)
            tied = sum(1 for t in scores if t == s)
            p.append(min(1.0, max(0.0, (k - above) / tied)))
        want = {}
        for name in sorted({c for c, t in zip(scen, y) if t}):
            idx = [i for i in range(n) if y[i] and scen[i] == name]
            want[name] = sum(p[i] for i in idx) / len(idx)
        assert {g: v["recall"] for g, v in got.items()} == pytest.approx(want)


# ----------------------------------------------------------------------------------------- train's input


def test_train_takes_01_labels_refuses_bad_input_and_writes_under_the_home(tmp_path, monkeypatch):
    from pathlib import Path

    from riskstream.generator import TrafficGenerator

    monkeypatch.setenv("RISKSTREAM_HOME", str(tmp_path / "home"))
    recs = [r for r in TrafficGenerator(seed=3).generate(1500) if r.event is not None]
    (tmp_path / "ev.jsonl").write_bytes(b"".join(orjson.dumps(r.event) + b"\n" for r in recs))
    (tmp_path / "lab.jsonl").write_bytes(b"".join(
        orjson.dumps({"event_id": r.event["event_id"], "fraud": int(r.label["fraud"])}) + b"\n" for r in recs))
    small = ["--max-iter", "2", "--max-leaf-nodes", "3"]
    assert main(["train", "--events", str(tmp_path / "ev.jsonl"), "--labels", str(tmp_path / "lab.jsonl"),
                 "--version", "v01", *small]) == 0
    d = tmp_path / "home" / "models" / "v01"
    assert sorted(p.name for p in d.iterdir()) == ["v01.json", "v01.md", "v01.onnx", "v01.test_scores.csv"]
    assert not (Path(__file__).resolve().parent.parent / "models" / "v01.onnx").exists()
    spec = orjson.loads((d / "v01.json").read_bytes())
    assert spec["metrics"]["train_rows"] + spec["metrics"]["test_rows"] == len(recs)
    # a test period that starts inside the gap is refused
    with pytest.raises(SystemExit, match="before the training period's end"):
        main(["train", "--events", str(tmp_path / "ev.jsonl"), "--labels", str(tmp_path / "lab.jsonl"),
              "--version", "v02", "--train-until", "2026-01-01T00:03", "--test-from", "2026-01-01T00:04",
              "--gap", "2m", *small])
    # 3 % of the records rejected: refused, with the rejects file named
    lines = (tmp_path / "ev.jsonl").read_bytes().splitlines()
    for i in range(0, 45):
        lines[i * 30] = b"{not json"
    (tmp_path / "bad.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(SystemExit, match=r"45 of 1500 records \(3.00 %\) were rejected.*v03.rejects.jsonl"):
        main(["train", "--events", str(tmp_path / "bad.jsonl"), "--labels", str(tmp_path / "lab.jsonl"),
              "--version", "v03", *small])
    rej = [orjson.loads(x) for x in (tmp_path / "home" / "models" / "v03" / "v03.rejects.jsonl").read_bytes().splitlines()]
    assert [r["line"] for r in rej] == [i * 30 + 1 for i in range(45)] and {r["reason"] for r in rej} == {"invalid_json"}
