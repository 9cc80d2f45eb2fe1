"""benchmarks/handbook.py: the simulator does what the Handbook's description says, the baseline's features
equal a row-by-row count, the figures equal an independent computation, and the whole comparison runs small
(riskstream through its own-data path on the same test rows). No target is checked here: the figures at full
size are in docs/benchmarks.md."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pandas")
pytest.importorskip("sklearn")

from benchmarks import handbook as hb  # noqa: E402

DAY_MS = hb.DAY_MS
SMALL = hb.SimConfig(customers=200, terminals=400, days=20, seed=7, terminals_per_day=1.0, customers_per_day=1.0)


@pytest.fixture(scope="module")
def small():
    return hb.simulate(SMALL)


def test_simulator_follows_the_description(small):
    df = small
    assert len(df) > 3_000 and df["tx_id"].tolist() == list(range(len(df)))
    assert (np.diff(df["ts"].to_numpy()) >= 0).all()
    sec = (df["ts"].to_numpy() - SMALL.start_ms) % DAY_MS
    assert ((sec > 0) & (sec < DAY_MS)).all() and (df["day"].between(0, SMALL.days - 1)).all()
    assert (df["arrival_ts"] - df["ts"] == 7 * DAY_MS).all()
    assert (df["amount"] >= 0).all()
    # scenario 1: every amount over the threshold is fraud (whatever scenario named it last)
    assert df.loc[df["amount"] > 220, "fraud"].eq(1).all()
    assert df.loc[df["scenario"] == 1, "amount"].gt(220).all()
    # scenario 2: every transaction on a compromised terminal in its 28 days is fraud
    terms = df.attrs["compromised_terminals"]
    assert len(terms) == SMALL.days  # one a day
    for t, d in terms:
        m = (df["terminal_id"] == t) & (df["day"] >= d) & (df["day"] < d + 28)
        assert df.loc[m, "fraud"].eq(1).all()
    # scenario 3 rows lie in a compromised customer's 14 days; each compromise frauds a third of its rows
    custs = df.attrs["compromised_customers"]
    in_window = np.zeros(len(df), dtype=bool)
    for c, d in custs:
        m = ((df["customer_id"] == c) & (df["day"] >= d) & (df["day"] < d + 14)).to_numpy()
        in_window |= m
    assert in_window[df["scenario"].to_numpy() == 3].all()
    assert (df["scenario"] == 3).sum() > 0
    # a fraud is one of the three scenarios; a legitimate row is scenario 0
    assert ((df["fraud"] == 1) == (df["scenario"] > 0)).all()
    # customers pay at terminals within the radius of home: each customer's terminals are few and close
    per_cust = df.groupby("customer_id")["terminal_id"].nunique()
    assert per_cust.max() < 40
    # the same seed gives the same data
    again = hb.simulate(SMALL)
    assert again.equals(df)


def test_baseline_features_equal_a_row_by_row_count(small):
    # a fifth of the customers over all 20 days (the terminals' windows then hold these customers' rows)
    df = small[small["customer_id"] % 5 == 0].reset_index(drop=True)
    f = hb.baseline_features(df, 7)
    ts, cust, term = df["ts"].to_numpy(), df["customer_id"].to_numpy(), df["terminal_id"].to_numpy()
    amt, fraud = df["amount"].to_numpy(), df["fraud"].to_numpy()
    rng = np.random.default_rng(0)
    for i in rng.choice(len(df), 200, replace=False):
        for w in (1, 7, 30):
            m = (cust == cust[i]) & (ts > ts[i] - w * DAY_MS) & (ts <= ts[i])
            assert f[f"customer_nb_tx_{w}d"].iloc[i] == m.sum()
            assert f[f"customer_avg_amount_{w}d"].iloc[i] == pytest.approx(amt[m].mean())
            hi = ts[i] - 7 * DAY_MS
            m = (term == term[i]) & (ts > hi - w * DAY_MS) & (ts <= hi)
            assert f[f"terminal_nb_tx_{w}d_delayed"].iloc[i] == m.sum()
            assert f[f"terminal_risk_{w}d_delayed"].iloc[i] == pytest.approx(fraud[m].mean() if m.any() else 0.0)
    assert f["terminal_risk_30d_delayed"].max() > 0  # the check above saw non-zero risks


def _card_precision(score, y, cust, ts, k):
    """The Handbook's card precision top-k per day, by plain loops: each day, each customer not yet found
    takes its highest score; the k best customers are checked; found fraudulent ones leave later days."""
    found, out = set(), []
    day = ts // DAY_MS
    for d in sorted(set(day.tolist())):
        best, bad = {}, {}
        for i in np.flatnonzero(day == d):
            c = cust[i]
            if c in found:
                continue
            best[c] = max(best.get(c, -1.0), score[i])
            bad[c] = bad.get(c, False) or bool(y[i])
        top = sorted(best, key=lambda c: -best[c])[:k]
        hits = [c for c in top if bad[c]]
        found.update(hits)
        out.append(len(hits) / k)
    return float(np.mean(out))


def test_figures_equal_an_independent_computation():
    from sklearn.metrics import average_precision_score, roc_auc_score

    rng = np.random.default_rng(3)
    n = 4_000
    y = rng.random(n) < 0.05
    score = np.where(y, rng.random(n) * 0.8 + 0.2, rng.random(n) * 0.9)  # continuous: no ties
    cust = rng.integers(0, 300, n)
    ts = np.sort(rng.integers(0, 5 * DAY_MS, n))
    scen = np.where(y, rng.integers(1, 4, n), 0)
    f = hb.figures(score, y, cust, ts, scen, top_k=20, budget=0.02)
    assert f["roc_auc"] == pytest.approx(roc_auc_score(y, score), abs=1e-4)
    assert f["average_precision"] == pytest.approx(average_precision_score(y, score), abs=1e-4)
    assert f["card_precision_top20_per_day"] == pytest.approx(_card_precision(score, y, cust, ts, 20), abs=1e-4)
    top = np.argsort(-score)[: int(0.02 * n)]
    for code, name in hb.SCENARIOS.items():
        if code == 0:
            continue
        m = scen == code
        assert f["by_scenario"][name]["frauds"] == m.sum()
        assert f["by_scenario"][name]["recall_top_0.02"] == pytest.approx(m[top].sum() / m.sum(), abs=1e-4)
        keep = m | ~y
        assert f["by_scenario"][name]["ap_vs_legit"] == pytest.approx(
            average_precision_score(y[keep], score[keep]), abs=1e-4)


def test_the_comparison_runs_small(tmp_path, monkeypatch):
    monkeypatch.setenv("RISKSTREAM_HOME", str(tmp_path / "home"))  # the feature cache the command keeps
    out = hb.run(SMALL, (3, 9), (17, 19), 7, tmp_path / "work", top_k=10, models=("rf",))
    rs, base = out["results"]["riskstream"], out["results"]["handbook_rf"]
    assert out["test_rows"] == rs["rows"] == base["rows"] > 0
    assert rs["frauds"] == base["frauds"] > 0
    # the benchmark's figures of riskstream's scores are the ones `riskstream train` wrote in its card
    assert rs["roc_auc"] == pytest.approx(rs["card_metrics"]["roc_auc"], abs=2e-4)
    assert rs["average_precision"] == pytest.approx(rs["card_metrics"]["average_precision"], abs=2e-4)
    # the files a user would have, and the command they would run
    assert (tmp_path / "work" / "transactions.parquet").is_file()
    assert "--gap 7d" in out["riskstream_command"] and "--label-delay 7d" in out["riskstream_command"]
    assert "--train-from 2018-04-04 --train-until 2018-04-11" in out["riskstream_command"]
    text = hb.render(out)
    assert "handbook_rf" in text and "riskstream" in text
    # riskstream train chose its hyper-parameters on the training period's end (or says why it could not)
    assert out["results"]["riskstream"]["by_phase"] and "hyper_parameter_search" in out["results"]["riskstream"]
    assert list((tmp_path / "home" / "cache" / "features").glob("*.npz"))  # replayed once, cached as the command does


def test_phases_follow_the_compromises_and_their_figures_equal_a_direct_count(small):
    df = small
    ph = hb.phases(df, 7)
    day = df["day"].to_numpy()
    for t, d in df.attrs["compromised_terminals"]:
        m = ((df["terminal_id"] == t) & (df["scenario"] == 2) & (df["day"] >= d) & (df["day"] < d + 28)).to_numpy()
        later_compromise = [d2 for t2, d2 in df.attrs["compromised_terminals"] if t2 == t and d2 > d]
        if later_compromise:  # the latest compromise names the row
            continue
        want = np.where(day[m] - d < 7, "compromised_terminal_first_7d", "compromised_terminal_later")
        assert ph[m].tolist() == want.tolist()
    assert set(ph[df["scenario"].to_numpy() == 0]) == {"legit"}
    assert set(ph[df["scenario"].to_numpy() == 1]) <= {"amount_over_220"}
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(5)
    y = df["fraud"].to_numpy().astype(bool)
    score = rng.random(len(df)) + y * rng.random(len(df))
    f = hb.phase_figures(score, y, ph, budget=0.02)
    top = np.argsort(-score)[: int(0.02 * len(df))]
    for part, v in f.items():
        m = ph == part
        assert v["frauds"] == m.sum() and v["recall_top_0.02"] == pytest.approx(np.isin(np.flatnonzero(m), top).mean(),
                                                                                abs=1e-4)
        assert v["ap_vs_legit"] == pytest.approx(average_precision_score(y[m | ~y], score[m | ~y]), abs=1e-4)
        best = np.where(m, 10.0, score)
        assert v["ap_gain_if_ranked_first"] == pytest.approx(
            average_precision_score(y, best) - average_precision_score(y, score), abs=1e-4)


def test_the_ceiling_ranks_every_fraud_but_a_terminals_first_days_first(small):
    """The ceiling: every fraud except those of a compromised terminal's first 7 days (no label of it has
    arrived) ranked first, the rest at random; its figures equal the same draws scored by scikit-learn and
    the plain-loop card precision, and its AP is at least the share of frauds ranked first."""
    from sklearn.metrics import average_precision_score

    df = small
    ph = hb.phases(df, 7)
    y = df["fraud"].to_numpy().astype(bool)
    cust, ts = df["customer_id"].to_numpy(), df["ts"].to_numpy()
    c = hb.ceiling(y, cust, ts, ph, top_k=10, draws=3, seed=4)
    unseen = ph == "compromised_terminal_first_7d"
    assert c["frauds"] == y.sum() and c["unseen_frauds"] == (y & unseen).sum() > 0
    rng = np.random.default_rng(4)
    aps, cards = [], []
    for _ in range(3):
        s = (y & ~unseen) + 0.5 * rng.random(len(y))
        aps.append(average_precision_score(y, s))
        cards.append(_card_precision(s, y, cust, ts, 10))
    assert c["average_precision"] == pytest.approx(np.mean(aps), abs=1e-4)
    assert c["card_precision_top10_per_day"] == pytest.approx(np.mean(cards), abs=1e-4)
    assert c["card_precision_top10_per_day_range"] == pytest.approx([min(cards), max(cards)], abs=1e-4)
    assert (y & ~unseen).sum() / y.sum() <= c["average_precision"] < 1
