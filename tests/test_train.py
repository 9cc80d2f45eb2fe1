"""Training: `riskstream train` uses the job's feature code, splits by event time, exports a model the
scorer accepts with its spec and model card, and reports held-out metrics that an independent
brute-force computation reproduces (small data, no JVM)."""

from __future__ import annotations

import contextlib
import io
import itertools
import random

import numpy as np
import orjson
import pytest

from models import train as tr
from models.train import train
from riskstream import cli
from riskstream.generator import TrafficGenerator
from udfs.events import Event
from udfs.features import FEATURE_NAMES, spec_fingerprint
from udfs.replay import replay
from udfs.scoring import Scorer, check_spec, load_model_spec

N_EVENTS, SEEDS = 4000, (5, 6)
# a deliberately weak model (2 rounds of 3-leaf trees): few distinct scores, so ties and mistakes occur and
# the metrics are not trivially 1.0
SMALL = ["--max-iter", "2", "--max-leaf-nodes", "3"]
BUDGET = 0.25


def _cli(*argv: str) -> tuple[int, str]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = cli.main(["train", *argv])
    return rc, buf.getvalue()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("models")
    rc, stdout = _cli("--generate", str(N_EVENTS), "--seed", ",".join(map(str, SEEDS)), "--version", "t_v1",
                      "--out-dir", str(out), "--review-budget", str(BUDGET), *SMALL, "--json")
    assert rc == 0
    summary = orjson.loads(stdout.strip().splitlines()[-1])
    return out, summary, stdout


def _independent_rows():
    """(ts, features, fraud) of every scored event, straight from the generator and the job's replay;
    one stream per seed, as the command documents."""
    rows = []
    per_seed = N_EVENTS // len(SEEDS)
    for seed in SEEDS:
        recs = [r for r in TrafficGenerator(seed=seed).generate(per_seed) if r.event is not None]
        fraud = {r.event["event_id"]: r.label["fraud"] for r in recs}
        rows += [(ev.ts, vec, int(fraud[ev.event_id])) for ev, vec, _ in replay(Event(**r.event) for r in recs)]
    return rows


# ------------------------------------------------------------------------------------ brute force metrics


def _bf_auc(scores, y) -> float:
    """Probability that a random fraud row outscores a random legitimate one (ties count half)."""
    pos = [s for s, t in zip(scores, y) if t]
    neg = [s for s, t in zip(scores, y) if not t]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in pos for b in neg)
    return wins / (len(pos) * len(neg))


def _bf_ap(scores, y) -> float:
    """Average precision: sum over distinct score thresholds (high to low) of precision x recall gained."""
    total = sum(y)
    ap, tp, seen, prev_recall = 0.0, 0, 0, 0.0
    for _, grp in itertools.groupby(sorted(zip(scores, y), key=lambda r: -r[0]), key=lambda r: r[0]):
        grp = list(grp)
        tp += sum(t for _, t in grp)
        seen += len(grp)
        recall = tp / total
        ap += (recall - prev_recall) * (tp / seen)
        prev_recall = recall
    return ap


def _bf_budget(scores, y, budget):
    """Walk the rows from the highest score down, taking whole tie groups while they fit and a fraction of
    the group that straddles the budget (its fraud counted pro rata)."""
    k = max(1, int(budget * len(y) + 1e-9))
    left, tp = k, 0.0
    for _, grp in itertools.groupby(sorted(zip(scores, y), key=lambda r: -r[0]), key=lambda r: r[0]):
        grp = list(grp)
        take = min(left, len(grp))
        tp += take * sum(t for _, t in grp) / len(grp)
        left -= take
        if not left:
            break
    return tp / sum(y), tp / k


# ------------------------------------------------------------------------------------------------- tests


def test_small_training_run_exports_a_loadable_model(tmp_path):
    """The original entry point (`python -m models.train`) still works and writes onnx + json."""
    metrics = train(6000, tmp_path / "m", "test_v0", seeds=[5, 6], max_iter=20)
    assert 0.5 < metrics["roc_auc"] <= 1.0 and metrics["test_rows"] + metrics["train_rows"] == 6000
    spec = orjson.loads((tmp_path / "m.json").read_bytes())
    assert spec["feature_names"] == list(FEATURE_NAMES) and spec["feature_fingerprint"] == spec_fingerprint()
    s = Scorer(tmp_path / "m.onnx")
    assert s.version == "test_v0" and 0.0 <= s.score([0.0] * len(FEATURE_NAMES)) <= 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.onnx"]


def test_command_writes_onnx_spec_and_card(trained):
    out, summary, stdout = trained
    assert sorted(p.name for p in out.iterdir()) == ["t_v1.json", "t_v1.md", "t_v1.onnx", "t_v1.test_scores.csv"]
    spec = orjson.loads((out / "t_v1.json").read_bytes())
    assert spec["model_version"] == "t_v1"
    for key in ("feature_names", "feature_fingerprint", "features", "metrics", "trained_on", "split", "algorithm"):
        assert key in spec, key
    assert spec["trained_on"]["source"] == "generator" and spec["trained_on"]["generator_seeds"] == list(SEEDS)
    assert spec["hyper_parameters"]["max_iter"] == 2 and spec["hyper_parameters"]["max_leaf_nodes"] == 3
    assert "hyper_parameter_search" not in spec  # hyper-parameters given: no search, one model
    m = spec["metrics"]
    for key in ("roc_auc", "average_precision", "recall_at_budget", "precision_at_budget"):
        assert 0.0 <= m[key] <= 1.0, key
    assert m["review_budget"] == BUDGET and summary["metrics"] == m and summary["model_version"] == "t_v1"
    card = (out / "t_v1.md").read_text(encoding="utf-8")
    for needle in ("# Model card: t_v1", spec_fingerprint(), "synthetic", "Intended use", "Limits",
                   f"{m['roc_auc']:.4f}", "By event time"):
        assert needle in card, needle
    assert "t_v1" in stdout and "ROC AUC" in stdout


def test_spec_passes_the_scorers_checks(trained):
    out, _, _ = trained
    spec = load_model_spec(out / "t_v1.onnx")
    check_spec(spec, out / "t_v1.onnx")
    s = Scorer(out / "t_v1.onnx")
    assert s.version == "t_v1"
    assert s.score_batch(np.zeros((3, len(FEATURE_NAMES)), dtype=np.float32)).shape == (3,)


def test_split_is_by_event_time(trained):
    _, summary, _ = trained
    sp = summary["split"]
    rows = _independent_rows()
    ts = np.array([r[0] for r in rows])
    assert sp["method"] == "event_time" and sp["train_rows"] == int(len(rows) * 0.8)
    assert sp["train_rows"] + sp["test_rows"] == len(rows) == N_EVENTS
    assert sp["train_ts_max"] <= sp["test_ts_min"]
    assert sp["train_ts_min"] == ts.min() and sp["test_ts_max"] == ts.max()
    assert (ts < sp["test_ts_min"]).sum() <= sp["train_rows"] <= (ts <= sp["train_ts_max"]).sum()
    # the split function itself, on data whose arrival order is not time order
    tr_idx, te_idx = tr.time_split(ts)
    assert ts[tr_idx].max() <= ts[te_idx].min()
    assert sorted(np.concatenate([tr_idx, te_idx]).tolist()) == list(range(len(ts)))
    assert not np.all(np.diff(ts) >= 0), "generated arrival order should be disordered in event time"
    shuffled = np.random.default_rng(0).permutation(ts)
    a, b = tr.time_split(shuffled)
    assert shuffled[a].max() <= shuffled[b].min() and len(a) == int(len(ts) * 0.8)


def test_metrics_match_a_brute_force_computation(trained):
    """Rebuild the held-out part independently (generator -> replay -> latest 20 % by ts), score it with
    the exported model and recompute every metric by brute force."""
    out, summary, _ = trained
    rows = sorted(_independent_rows(), key=lambda r: r[0])  # stable: ties keep arrival order
    test = rows[int(len(rows) * 0.8):]
    y = [r[2] for r in test]
    scores = Scorer(out / "t_v1.onnx").score_batch(np.array([r[1] for r in test], dtype=np.float32)).tolist()
    m = summary["metrics"]
    assert m["test_rows"] == len(test) and m["test_fraud_share"] == pytest.approx(sum(y) / len(y), abs=1e-4)
    assert 0 < sum(y) < len(y)
    assert len(set(scores)) < len(scores) / 10, "expected many tied scores from the tiny model"
    assert m["roc_auc"] == pytest.approx(_bf_auc(scores, y), abs=1e-4)
    assert m["average_precision"] == pytest.approx(_bf_ap(scores, y), abs=1e-4)
    recall, precision = _bf_budget(scores, y, BUDGET)
    assert m["recall_at_budget"] == pytest.approx(recall, abs=1e-4)
    assert m["precision_at_budget"] == pytest.approx(precision, abs=1e-4)
    assert m["budget_rows"] == int(BUDGET * len(test))
    for b in m["at_budgets"]:
        r, p = _bf_budget(scores, y, b["budget"])
        assert (b["recall"], b["precision"]) == (pytest.approx(r, abs=1e-4), pytest.approx(p, abs=1e-4)), b
    for t in m["at_policy_thresholds"]:
        flagged = [yy for s, yy in zip(scores, y) if s >= t["threshold"]]
        assert t["recall"] == pytest.approx(sum(flagged) / sum(y), abs=1e-4)
        assert t["flagged_share"] == pytest.approx(len(flagged) / len(y), abs=1e-4)


def test_budget_ties_are_counted_at_their_expected_value():
    """Against random tie-breaking: the reported recall is the mean over orders among tied scores."""
    rng = random.Random(3)
    y = [int(rng.random() < 0.3) for _ in range(200)]
    scores = [round(rng.random() * 4) / 4 + 0.2 * t * rng.random() for t in y]  # coarse grid: big tie groups
    got = tr.budget_row(np.array(y), np.array(scores), 0.1)
    assert got["tied_at_threshold"] > 1
    draws = []
    for _ in range(4000):
        order = sorted(range(len(y)), key=lambda i: (-scores[i], rng.random()))[:got["rows"]]
        draws.append(sum(y[i] for i in order))
    assert got["recall"] == pytest.approx(np.mean(draws) / sum(y), abs=0.01)
    assert (got["recall"], got["precision"]) == tuple(pytest.approx(v, abs=1e-4) for v in _bf_budget(scores, y, 0.1))


def test_refuses_to_overwrite_an_existing_version(trained):
    out, _, _ = trained
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(SystemExit) as e:
        _cli("--generate", "500", "--seed", "9", "--version", "t_v1", "--out-dir", str(out), *SMALL)
    assert "already exists" in str(e.value) and "--force" in str(e.value)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    rc, _ = _cli("--generate", "1500", "--seed", "9", "--version", "t_v1", "--out-dir", str(out), *SMALL, "--force")
    assert rc == 0
    spec = orjson.loads((out / "t_v1.json").read_bytes())
    assert spec["trained_on"]["generator_seeds"] == [9] and spec["trained_on"]["events"] == 1500
    assert (out / "t_v1.onnx").read_bytes() != before["t_v1.onnx"]


def test_trains_from_files_like_from_the_generator(tmp_path):
    """JSON lines and Parquet history with labels give the same rows (hence model and metrics) as the
    generator; malformed records and duplicate event ids are skipped as the job skips them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    recs = list(TrafficGenerator(seed=5).generate(3000))
    events = [r.event for r in recs]
    with open(tmp_path / "labels.jsonl", "wb") as f:
        f.writelines(orjson.dumps(r.label) + b"\n" for r in recs)
    lines = [orjson.dumps(e) for e in events]
    lines.insert(10, lines[3])  # a redelivered event: the job dead-letters the duplicate
    lines.insert(20, b'{"event_id": "broken"')  # malformed: dead-lettered, not a row
    (tmp_path / "events.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    # from_pylist takes its columns from the first row: give every row the optional field
    pq.write_table(pa.Table.from_pylist([{"payment_ref": None, **e} for e in events]), tmp_path / "events.parquet")

    runs = {}
    for name, src in (("gen", ["--generate", "3000", "--seed", "5"]),
                      ("jsonl", ["--events", str(tmp_path / "events.jsonl"),
                                 "--labels", str(tmp_path / "labels.jsonl")]),
                      ("parquet", ["--events", str(tmp_path / "events.parquet"),
                                   "--labels", str(tmp_path / "labels.jsonl")])):
        rc, stdout = _cli(*src, "--version", name, "--out-dir", str(tmp_path / "m"), *SMALL, "--json")
        assert rc == 0
        runs[name] = orjson.loads(stdout.strip().splitlines()[-1])
    assert runs["jsonl"]["metrics"] == runs["gen"]["metrics"] == runs["parquet"]["metrics"]
    assert runs["jsonl"]["split"] == runs["gen"]["split"]
    t = runs["jsonl"]["trained_on"]
    assert t["source"] == "file" and t["events_file"] == "events.jsonl" and t["labels_file"] == "labels.jsonl"
    assert t["duplicates"] == 1 and t["rejected"] == {"invalid_json": 1} and t["rows"] == 3000
    assert (tmp_path / "m" / "parquet.md").is_file()
    with pytest.raises(SystemExit, match="--labels"):
        _cli("--events", str(tmp_path / "events.jsonl"), "--version", "x", "--out-dir", str(tmp_path / "m"))


def test_compares_challenger_and_champion_on_the_same_held_out_rows(trained, tmp_path):
    out, _, _ = trained
    rc, stdout = _cli("--generate", "3000", "--seed", "8", "--version", "chal", "--out-dir", str(tmp_path),
                      "--compare", str(out / "t_v1.onnx"), "--class-weight", "balanced", *SMALL, "--json")
    assert rc == 0
    summary = orjson.loads(stdout.strip().splitlines()[-1])
    rows = {r["model_version"]: r for r in summary["comparison"]}
    assert set(rows) == {"chal", "t_v1"} and rows["chal"]["roc_auc"] == summary["metrics"]["roc_auc"]
    spec = orjson.loads((tmp_path / "chal.json").read_bytes())
    assert [r["model_version"] for r in spec["comparison"]["models"]] == ["chal", "t_v1"]
    assert spec["hyper_parameters"]["class_weight"] == "balanced"
    card = (tmp_path / "chal.md").read_text(encoding="utf-8")
    assert "| t_v1 |" in card and "class_weight=balanced" in card


def test_shipped_challenger_differs_measurably_from_the_champion():
    """models/risk_gbdt_v2 (class_weight=balanced, seeds 201-208) against v1 on the same held-out rows: the
    same ranking, a different operating point at the policy's review threshold."""
    v1, v2 = Scorer("models/risk_gbdt_v1.onnx"), Scorer("models/risk_gbdt_v2.onnx")
    assert (v1.version, v2.version) == ("risk_gbdt_v1", "risk_gbdt_v2")
    spec = orjson.loads(open("models/risk_gbdt_v2.json", "rb").read())
    assert set(spec["trained_on"]["generator_seeds"]).isdisjoint({101, 102, 103, 104})
    rows = {r["model_version"]: r for r in spec["comparison"]["models"]}
    assert set(rows) == {"risk_gbdt_v1", "risk_gbdt_v2"}
    t1, t2 = (rows[v]["at_policy_thresholds"]["0.5"] for v in ("risk_gbdt_v1", "risk_gbdt_v2"))
    assert t2["recall"] - t1["recall"] > 0.02 and t2["flagged_share"] > t1["flagged_share"]
    assert abs(rows["risk_gbdt_v1"]["roc_auc"] - rows["risk_gbdt_v2"]["roc_auc"]) < 0.002
    assert "| risk_gbdt_v1 |" in open("models/risk_gbdt_v2.md", encoding="utf-8").read()
    # on traffic neither model was trained on, v2 flags more events and misses less fraud at 0.5
    rows_ = _independent_rows()
    x = np.array([r[1] for r in rows_], dtype=np.float32)
    y = np.array([r[2] for r in rows_])
    f1, f2 = v1.score_batch(x) >= 0.5, v2.score_batch(x) >= 0.5
    assert f2.sum() > f1.sum() and (f2 & (y == 1)).sum() >= (f1 & (y == 1)).sum()


def test_generated_traffic_over_days_has_the_slow_scenarios_and_label_arrivals():
    from riskstream.generator import DAY_MS, LONG_SCENARIOS, SCENARIOS, TrafficGenerator

    recs = list(TrafficGenerator(seed=5, days=20).generate(6000))
    scen = {r.label["scenario"] for r in recs}
    assert set(LONG_SCENARIOS) <= scen
    ts = [r.event["ts"] for r in recs]
    assert max(ts) - min(ts) > 15 * DAY_MS and max(ts) < TrafficGenerator().start_ts + 20 * DAY_MS
    assert all(DAY_MS <= r.label["arrival_ts"] - r.label["ts"] <= 14 * DAY_MS for r in recs)
    # slow card testing: one card, a few small payments a day, over days
    cards: dict[str, list[int]] = {}
    for r in recs:
        if r.label["scenario"] == "slow_card_testing" and r.event.get("payment_ref"):
            cards.setdefault(r.event["payment_ref"], []).append(r.event["ts"])
    spans = [(max(t) - min(t)) / DAY_MS for t in cards.values() if len(t) >= 5]
    assert spans and max(spans) >= 4 and all(len(t) <= 16 for t in cards.values())
    # without days: the short scenarios only, the same events as before the slow ones existed
    assert {r.label["scenario"] for r in TrafficGenerator(seed=5).generate(3000)} <= set(SCENARIOS) | {"normal"}


def test_label_features_in_training_follow_the_label_delay():
    """Generated labels reach the label features at the generator's arrival time (1-14 days), a fixed
    --label-delay, or never (none)."""
    from models.train import generated_dataset
    from udfs.features import FEATURE_NAMES

    i = FEATURE_NAMES.index("device_fraud_labels_30d")
    d = generated_dataset(8000, [5], days=21)
    assert d.trained_on["labels_fed"] > 500 and (d.x[:, i] > 0).sum() > 50
    none = generated_dataset(8000, [5], days=21, label_delay="none")
    assert none.trained_on["labels_fed"] == 0 and (none.x[:, i] == 0).all()
    soon = generated_dataset(8000, [5], days=21, label_delay=3_600_000)  # an hour after the event
    assert (soon.x[:, i] > 0).sum() > (d.x[:, i] > 0).sum()
    from udfs.features import FEATURES, LABEL_AGGS

    windows = [k for k, f in enumerate(FEATURES) if f.agg not in LABEL_AGGS]
    assert (d.x[:, windows] == none.x[:, windows]).all()  # the window features do not depend on labels


# ------------------------------------------------------------------------ hyper-parameters on a validation period


def _synthetic(n: int, seed: int = 0) -> tr.Dataset:
    """A dataset without the replay: rows one minute apart, the spec's width, fraud from a few features."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(FEATURE_NAMES))).astype(np.float32)
    y = (x[:, 0] + x[:, 1] * x[:, 2] + rng.normal(size=n) > 2.0).astype(np.int64)
    ts = 1_767_225_600_000 + np.arange(n, dtype=np.int64) * 60_000
    users = [f"u{i % 500}" for i in range(n)]
    return tr.Dataset(x, y, ts, ["fraud" if v else "normal" for v in y], [str(i) for i in range(n)],
                      {"source": "generator", "events": n, "generator_seeds": [seed], "rows": n, "rejected": {},
                       "duplicates": 0, "unlabelled": 0}, users, users, [None] * n, ["payment"] * n, [False] * n)


def test_the_validation_period_is_the_latest_rows_with_the_gap_before_it():
    rng = np.random.default_rng(1)
    ts = np.sort(rng.integers(0, 40 * 86_400_000, 3_000))
    tr_rows = rng.permutation(np.flatnonzero(ts < 30 * 86_400_000))  # any order: the cut is by time
    gap = 7 * 86_400_000
    inner, val, info = tr.validation_rows(ts, tr_rows, gap, 0.2)
    by_time = sorted(tr_rows.tolist(), key=lambda i: (ts[i], i))
    n_val = round(len(by_time) * 0.2)
    assert val.tolist() == by_time[-n_val:]
    start = ts[by_time[-n_val]]
    assert inner.tolist() == [i for i in by_time if ts[i] < start - gap]
    assert info["validation_rows"] == n_val and info["fit_rows"] == len(inner) and info["gap_ms"] == gap
    assert not set(inner) & set(val) and set(inner) | set(val) <= set(tr_rows.tolist())


def test_train_chooses_the_candidate_with_the_best_validation_ap_and_refits_it_as_a_bag(tmp_path):
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import average_precision_score

    data = _synthetic(15_000)
    grid = ({"max_iter": 3, "max_leaf_nodes": 3}, {"max_iter": 30, "max_leaf_nodes": 7})
    periods = tr.Periods(train_until=int(data.ts[12_000]), gap_ms=3_600_000)
    res = tr.train_model(data, tmp_path, "tuned", tune_grid=grid, periods=periods, top_k=10)
    search = res.spec["hyper_parameter_search"]
    # the validation rows are the latest 20 % of the training rows; the fit rows end an hour (the gap) before
    n_val = round(12_000 * 0.2)
    fit_rows = [i for i in range(12_000 - n_val) if data.ts[i] < data.ts[12_000 - n_val] - 3_600_000]
    assert search["validation"]["validation_rows"] == n_val and search["validation"]["fit_rows"] == len(fit_rows)
    aps = []
    for over in grid:
        m = HistGradientBoostingClassifier(**{**tr.DEFAULT_HYPER, **over}).fit(data.x[fit_rows], data.y[fit_rows])
        aps.append(round(float(average_precision_score(data.y[12_000 - n_val:12_000],
                                                       m.predict_proba(data.x[12_000 - n_val:12_000])[:, 1])), 4))
    assert [r["average_precision"] for r in search["grid"]] == aps and aps[0] != aps[1]
    best = int(np.argmax(aps))
    assert search["chosen"] == best and search["skipped"] is None
    hp = res.spec["hyper_parameters"]
    assert {k: hp[k] for k in grid[best]} == grid[best] and hp["bags"] == tr.TUNE_BAGS
    # the exported model is the mean log-odds of TUNE_BAGS members fitted on every training row
    members = [HistGradientBoostingClassifier(**{**tr.DEFAULT_HYPER, **grid[best], "random_state": k}).fit(
        data.x[:12_000], data.y[:12_000]) for k in range(tr.TUNE_BAGS)]
    margin = np.mean([m.decision_function(data.x[res.test_idx]) for m in members], axis=0)
    assert np.abs(res.test_scores - 1 / (1 + np.exp(-margin))).max() < 1e-4
    assert len({float(m.decision_function(data.x[:1])[0]) for m in members}) > 1  # the members differ
    card = (tmp_path / "tuned.md").read_text(encoding="utf-8")
    assert "## Hyper-parameters" in card and "(chosen)" in card and f"mean log-odds of {tr.TUNE_BAGS}" in card


def test_a_bag_exports_as_one_tree_ensemble_the_review_reads():
    import onnxruntime as ort

    from riskstream.tools.review.explain import TreeModel

    data = _synthetic(12_000, seed=2)
    bag = tr.fit(data.x, data.y, {"max_iter": 10, "max_leaf_nodes": 5, "random_state": 0, "bags": 3})
    assert isinstance(bag, tr.Bag) and len(bag.members) == 3
    onx = tr._export(bag, data.x)
    sess = ort.InferenceSession(onx)
    p = sess.run(None, {sess.get_inputs()[0].name: data.x[:500]})[1][:, 1]
    margin = np.mean([m.decision_function(data.x[:500]) for m in bag.members], axis=0)
    assert np.abs(p - 1 / (1 + np.exp(-margin))).max() < 1e-5
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".onnx") as f:
        f.write(onx)
        f.flush()
        tm = TreeModel.from_onnx(f.name)
    assert len(tm.trees) == sum(m.n_iter_ for m in bag.members)
    assert max(abs(tm.probability(data.x[i]) - p[i]) for i in range(50)) < 1e-5
    # under 10,000 rows scikit-learn holds out nothing: the members would be one model, so one is fitted
    assert not isinstance(tr.fit(data.x[:5_000], data.y[:5_000], {"max_iter": 5, "bags": 3}), tr.Bag)


def test_the_search_is_skipped_with_a_reason_when_the_validation_period_has_one_class(tmp_path):
    data = _synthetic(3_000, seed=3)
    data.y[1_900:2_400] = 0  # the validation period (the latest 20 % of 2,400 training rows) holds no fraud
    res = tr.train_model(data, tmp_path, "untuned", tune_grid=({"max_iter": 5},),
                         periods=tr.Periods(train_until=int(data.ts[2_400])), top_k=10)
    search = res.spec["hyper_parameter_search"]
    assert search["skipped"] == "the validation period holds one class only" and search["grid"] == []
    assert res.spec["hyper_parameters"] == tr.DEFAULT_HYPER
    assert "The defaults, not searched" in (tmp_path / "untuned.md").read_text(encoding="utf-8")


def test_tune_with_hyper_parameter_flags_is_refused_before_the_replay(tmp_path):
    with pytest.raises(SystemExit, match="--tune searches the hyper-parameters"):
        _cli("--generate", "100", "--version", "x", "--out-dir", str(tmp_path), "--tune", "--max-iter", "5")
    assert not list(tmp_path.iterdir())


def test_bags_below_one_is_refused_before_the_replay(tmp_path):
    with pytest.raises(SystemExit, match="--bags must be a whole number of at least 1, got 0"):
        _cli("--generate", "100", "--version", "x", "--out-dir", str(tmp_path), "--bags", "0")
    assert not list(tmp_path.iterdir())
