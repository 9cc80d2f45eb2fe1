"""Inputs outside what the model saw (udfs.drift): the reference and PSI against a brute-force
computation, and `score` warning by name when a feature leaves the training distribution."""

from __future__ import annotations

import json
import math

import numpy as np
import orjson
import pytest

from udfs import drift


def _brute_psi(train: list[float], new: list[float]) -> float:
    """PSI by hand: decile edges of the training values, bins by counting, smoothed shares."""
    xs = sorted(train)
    edges = sorted(set(float(np.quantile(xs, q)) for q in drift.QUANTILES))

    def shares(vals):
        counts = [0] * (len(edges) + 1)
        for v in vals:
            counts[sum(1 for e in edges if v >= e)] += 1
        s = [max(c / len(vals), drift.EPS) for c in counts]
        return [x / sum(s) for x in s]

    e, a = shares(train), shares(new)
    return sum((ai - ei) * math.log(ai / ei) for ai, ei in zip(a, e))


def test_psi_and_range_equal_a_brute_force_computation():
    rng = np.random.default_rng(3)
    train = np.column_stack([rng.normal(0, 1, 5000), rng.integers(0, 3, 5000), np.zeros(5000)]).astype(np.float32)
    new = np.column_stack([rng.normal(0.8, 1.3, 2000), rng.integers(0, 6, 2000), np.full(2000, 2.0)]).astype(np.float32)
    names = ("a", "b", "c")
    ref = drift.reference(train, names)
    ref = orjson.loads(orjson.dumps(ref))  # as stored in the model's spec
    mon = drift.DriftMonitor(ref, names)
    mon.add(new[:700])
    mon.add(new[700:])
    got = {d.name: d for d in mon.result()}
    for j, n in enumerate(names):
        t, v = train[:, j].astype(np.float64).tolist(), new[:, j].astype(np.float64).tolist()
        assert got[n].psi == pytest.approx(_brute_psi(t, v), rel=1e-4, abs=1e-6), n
        assert got[n].above == pytest.approx(sum(x > max(t) for x in v) / len(v))
        assert got[n].below == pytest.approx(sum(x < min(t) for x in v) / len(v))
    # the same distribution does not drift; a constant that moves is named even with one bin
    same = drift.DriftMonitor(ref, names)
    same.add(train[:2500])
    assert same.drifted() == []
    assert {d.name for d in mon.drifted()} == {"a", "b", "c"} and got["c"].above == 1.0 and got["c"].psi == 0
    assert "c (PSI" in mon.warning("m1") and "100% of rows above the training max 0" in mon.warning("m1")


def test_bin_counts_equal_a_count_per_value_for_any_batching():
    """The queued, all-features-at-once binning counts each value where counting its feature's edges at or
    below it puts it (NaN in the top bin, as a sort would), for NaN, infinities, values on an edge, a feature
    without edges, and batches of 1 to thousands of rows that cross the queue's size in any order."""
    rng = np.random.default_rng(7)
    train = np.column_stack([rng.normal(0, 1, 3000), rng.integers(0, 4, 3000), np.zeros(3000),
                             np.full(3000, np.nan)]).astype(np.float32)
    names = ("a", "b", "c", "d")
    ref = orjson.loads(orjson.dumps(drift.reference(train, names)))
    assert ref["features"]["d"]["edges"] == []
    n = drift.BIN_ROWS * 2 + 123
    new = rng.normal(0, 2, (n, 4)).astype(np.float32)
    new[:, 1] = rng.integers(-1, 6, n)  # on the edges, and beyond the range both ways
    for j in range(4):
        hit = rng.random(n)
        new[hit < 0.02, j] = np.nan
        new[(hit >= 0.02) & (hit < 0.03), j] = np.inf
        new[(hit >= 0.03) & (hit < 0.04), j] = -np.inf
    mon, cuts = drift.DriftMonitor(ref, names), [0]
    while cuts[-1] < n:
        cuts.append(min(n, cuts[-1] + int(rng.choice([1, 3, 17, 500, drift.BIN_ROWS + 5]))))
    for a, b in zip(cuts, cuts[1:]):
        mon.add(new[a:b])
    got = mon.counts()
    assert got["rows"] == n
    for j, name in enumerate(names):
        edges = ref["features"][name]["edges"]
        want = [0] * (len(edges) + 1)
        for v in new[:, j].astype(np.float64).tolist():
            want[len(edges) if math.isnan(v) else sum(1 for e in edges if v >= e)] += 1
        assert got["bins"][j] == want, name
        lo, hi = ref["features"][name]["min"], ref["features"][name]["max"]
        col = new[:, j].astype(np.float64).tolist()
        assert got["above"][j] == (0 if hi is None else sum(1 for v in col if v > hi)), name
        assert got["below"][j] == (0 if lo is None else sum(1 for v in col if v < lo)), name
    back = drift.DriftMonitor(ref, names)
    back.load(got)
    assert back.counts() == got and [d.psi for d in back.result()] == [d.psi for d in mon.result()]


def test_few_rows_never_warn_and_a_bad_reference_is_refused():
    ref = drift.reference(np.zeros((100, 1), dtype=np.float32), ("a",))
    mon = drift.DriftMonitor(ref, ("a",))
    mon.add(np.full((drift.MIN_ROWS - 1, 1), 9.0))
    assert mon.warning("m") is None
    mon.add(np.full((1, 1), 9.0))
    assert mon.warning("m") is not None
    with pytest.raises(ValueError, match="no entry"):
        drift.DriftMonitor(ref, ("a", "b"))


def test_the_shipped_models_carry_their_training_distribution():
    from udfs.features import FEATURE_NAMES

    for v in ("v1", "v2"):
        spec = json.load(open(f"models/risk_gbdt_{v}.json"))
        td = spec["training_distribution"]
        assert td["rows"] == spec["split"]["train_rows"]
        assert list(td["features"]) == list(FEATURE_NAMES)
        for f in td["features"].values():
            assert len(f["shares"]) == len(f["edges"]) + 1 and sum(f["shares"]) == pytest.approx(1, abs=1e-4)


def _shared_devices(path, users: int = 300, terminals: int = 20, per_user: int = 4) -> None:
    """Card payments at shop terminals (the device): each customer pays every 6 days at another of 20
    terminals, so a terminal sees ~60 customers in 30 days, far beyond the generator's shared devices."""
    t0 = 1_767_225_600_000
    with open(path, "w") as f:
        for i in range(users * per_user):
            u = i % users
            f.write(orjson.dumps({"event_id": f"e{i}", "event_type": "payment", "user_id": f"u{u}",
                                  "device_id": f"t{(i * 7 + i // users) % terminals}",
                                  "ip": f"10.1.{u // 250}.{u % 250}", "amount": 20 + (i * 37) % 80,
                                  "currency": "USD", "ts": t0 + i * 30 * 60_000}).decode() + "\n")


def test_score_names_the_feature_that_left_the_training_range(tmp_path, capsys):
    from riskstream.cli import main

    events = tmp_path / "terminals.jsonl"
    _shared_devices(events)
    out = tmp_path / "scores.csv"
    assert main(["score", "--input", str(events), "--model", "models/risk_gbdt_v1.onnx", "--output", str(out)]) == 0
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if x.startswith("[score] WARNING inputs outside"))
    assert "device_distinct_users_30d (PSI" in line and "above the training max 12" in line, line

    from udfs.replay import score_file

    stats = score_file(events, tmp_path / "s.jsonl", "models/risk_gbdt_v1.onnx")
    named = {d["feature"]: d for d in stats["drift"]}
    assert named["device_distinct_users_30d"]["above_train_max"] > 0.5


def test_report_reads_what_score_writes_and_checks_the_records_features(tmp_path, capsys):
    import csv

    from riskstream.cli import main
    from udfs.features import FEATURE_NAMES
    from udfs.replay import replay_file

    events = tmp_path / "terminals.jsonl"
    _shared_devices(events)
    scores = tmp_path / "scores.csv"
    assert main(["score", "--input", str(events), "--model", "models/risk_gbdt_v1.onnx", "--output", str(scores)]) == 0
    rows = list(csv.DictReader(open(scores)))
    capsys.readouterr()
    assert main(["report", "--decisions", str(scores), "--out", str(tmp_path / "r.html"), "--json"]) == 0
    out = capsys.readouterr().out
    fig = orjson.loads(out.strip().splitlines()[-1])
    assert fig["events_decided"] == len(rows) == 1200 and fig["unreadable_records"] == 0, fig
    kinds = {k: sum(r["decision"] == k for r in rows) for k in ("block", "review", "allow")}
    assert round(fig["block_rate"], 6) == round(kinds["block"] / 1200, 6)

    # decision records with their features (as the job writes them): the report names the drifted feature
    feats = tmp_path / "features.jsonl"
    replay_file(events, feats)
    by_id = {r["event_id"]: r for r in rows}
    with open(tmp_path / "decisions.jsonl", "wb") as f:
        for line in open(feats, "rb"):
            r = orjson.loads(line)
            s = by_id[r["event_id"]]
            f.write(orjson.dumps({"event_id": r["event_id"], "user_id": r["user_id"], "event_ts": r["ts"],
                                  "decision": s["decision"], "score": float(s["score"]),
                                  "model_version": "risk_gbdt_v1",
                                  "features": {n: r[n] for n in FEATURE_NAMES}}) + b"\n")
    assert main(["report", "--decisions", str(tmp_path / "decisions.jsonl"), "--out", str(tmp_path / "d.html")]) == 0
    text = capsys.readouterr().out
    assert "drift:            risk_gbdt_v1: WARNING" in text and "device_distinct_users_30d (PSI" in text
    assert "device_distinct_users_30d" in (tmp_path / "d.html").read_text()

    # nothing readable: a clear error, not an empty report
    (tmp_path / "empty.jsonl").write_text("not json\n")
    with pytest.raises(SystemExit, match="read no record"):
        main(["report", "--decisions", str(tmp_path / "empty.jsonl"), "--out", str(tmp_path / "e.html")])


def test_score_compares_models_per_row_in_one_pass(tmp_path):
    """`score --compare`: each row carries the other model's score and decision, equal to that model's own
    `score` run over the same file."""
    import csv

    from riskstream.cli import main

    events = tmp_path / "terminals.jsonl"
    _shared_devices(events)
    both, alone = tmp_path / "both.csv", tmp_path / "v2.csv"
    assert main(["score", "--input", str(events), "--model", "models/risk_gbdt_v1.onnx",
                 "--compare", "models/risk_gbdt_v2.onnx", "--output", str(both)]) == 0
    assert main(["score", "--input", str(events), "--model", "models/risk_gbdt_v2.onnx", "--output", str(alone)]) == 0
    got, want = list(csv.DictReader(open(both))), list(csv.DictReader(open(alone)))
    assert len(got) == len(want) == 1200
    assert [(g["event_id"], g["score_risk_gbdt_v2"], g["decision_risk_gbdt_v2"]) for g in got] == \
        [(w["event_id"], w["score"], w["decision"]) for w in want]
    assert {g["model_version"] for g in got} == {"risk_gbdt_v1"}
    with pytest.raises(SystemExit, match="its own version"):
        main(["score", "--input", str(events), "--model", "models/risk_gbdt_v1.onnx",
              "--compare", "models/risk_gbdt_v1.onnx", "--output", str(tmp_path / "x.csv")])
