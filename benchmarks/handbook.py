"""riskstream against the Fraud Detection Handbook's baseline, on card transactions that riskstream's own
generator did not make.

    python -m benchmarks.handbook                       # 2,500 customers, 5,000 terminals, 60 days (~290k rows)
    python -m benchmarks.handbook --customers 300 --terminals 600 --days 20 --train-days 5-9 --test-days 12-19

Three parts, each written here from a published description, not from anyone's code:

1. **The data** (:func:`simulate`): the transaction simulator described in the Handbook (Le Borgne et al.,
   "Reproducible Machine Learning for Credit Card Fraud Detection - Practical Handbook", chapter "Transaction
   data simulator"). Customers live at a point of a 100 x 100 square, with a mean amount drawn in [5, 100), a
   standard deviation of half of it and a mean number of transactions a day drawn in [0, 4); terminals live
   at a point of the same square; a customer pays at the terminals within ``radius`` of home, picked
   uniformly. Each day a customer makes a Poisson number of transactions, at a time of day drawn around noon
   (normal, 20,000 s standard deviation, kept inside the day), with a normal amount (a negative draw is
   redrawn uniformly in [0, 2 x mean)). Three fraud scenarios, applied in this order (a later one names the
   scenario): (1) every amount above 220 is fraud; (2) each day some terminals (2, the Handbook's number) are
   compromised, and every transaction on them during the next 28 days is fraud; (3) each day some customers'
   credentials (3) leak, and a third of their transactions during the next 14 days are fraud, at 5 times
   their amount. Every transaction is labelled; the label arrives ``label_delay`` (7 days) after it.
2. **The baseline** (:func:`baseline_features`): the Handbook's features, computed here in numpy/pandas: the
   amount, weekend and night flags, the customer's number of transactions and mean amount over the last 1, 7
   and 30 days (the current one included), and the terminal's number of transactions and fraud share over
   the 1, 7 and 30 days that end ``label_delay`` before the transaction (the only labels known by then),
   with a random forest and, to compare features with one learner, riskstream's own learner.
3. **riskstream** (:func:`riskstream_run`), through its documented own-data path: the transactions written
   as Parquet, a mapping file (customer -> user, terminal -> device; the terminal also keys the ip stage, a
   card-present transaction has no address; currency and event type constants), a labels file with each
   label's arrival time, and ``models.train.run`` (what ``riskstream train`` runs) with ``--train-from``,
   ``--train-until``, ``--gap 7d`` and ``--label-delay 7d``. The equivalent command is printed.

Both are scored on the same test rows with ``riskstream.metrics``: ROC AUC, average precision, card (customer)
precision top-100 per day as the Handbook defines it, and per fraud scenario the share of its frauds in the top
2 % of transactions and its AP against the legitimate ones. ``--diagnose`` adds experiments that say where
riskstream's features fall short (kept here, out of the shipped spec). Results go to
``benchmarks/results/handbook-<seed>-<size>.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import orjson

from riskstream import metrics as M

DAY_S = 86_400
DAY_MS = 86_400_000
START = "2018-04-01"  # the Handbook's simulated data starts on this day; any midnight UTC would do
RESULTS = Path(__file__).resolve().parent / "results"
SCENARIOS = {0: "normal", 1: "amount_over_220", 2: "compromised_terminal", 3: "compromised_customer"}


# --------------------------------------------------------------------------------------------- simulator


@dataclass(frozen=True)
class SimConfig:
    customers: int = 2_500
    terminals: int = 5_000
    days: int = 60
    seed: int = 0
    radius: float = 5.0
    amount_threshold: float = 220.0
    # compromised terminals and customers a day: the Handbook's 2 and 3 (for its 10,000 terminals and 5,000
    # customers), as the independent check used them; None scales them to the population (1 and 1.5 here),
    # which halves the fraud share (0.7 % instead of 1.3 %) and the fraudulent cards a day (~35 instead of ~70)
    terminals_per_day: float | None = 2.0
    customers_per_day: float | None = 3.0
    terminal_days: int = 28
    customer_days: int = 14
    label_delay_days: int = 7
    start: str = START

    @property
    def start_ms(self) -> int:
        return int(datetime.fromisoformat(self.start).replace(tzinfo=timezone.utc).timestamp() * 1000)

    @property
    def t_per_day(self) -> float:
        return 2 * self.terminals / 10_000 if self.terminals_per_day is None else self.terminals_per_day

    @property
    def c_per_day(self) -> float:
        return 3 * self.customers / 5_000 if self.customers_per_day is None else self.customers_per_day


def _spread(rate: float, day: int) -> int:
    """How many of a ``rate``-a-day draw fall on ``day``: whole numbers that add up to ``rate`` x days."""
    return int(np.floor(rate * (day + 1) + 1e-9) - np.floor(rate * day + 1e-9))


def simulate(cfg: SimConfig):
    """The transactions (a pandas DataFrame in event-time order, ``tx_id`` 0.. in that order): ``ts`` (epoch
    ms), ``day`` (0-based), ``customer_id``, ``terminal_id``, ``amount``, ``fraud`` (0/1), ``scenario``
    (0 normal, 1-3 the fraud scenarios), ``arrival_ts`` (when the label is known)."""
    import pandas as pd

    rng = np.random.default_rng(cfg.seed)
    cx, cy = rng.uniform(0, 100, cfg.customers), rng.uniform(0, 100, cfg.customers)
    mean_amt = rng.uniform(5, 100, cfg.customers)
    std_amt = mean_amt / 2
    tx_per_day = rng.uniform(0, 4, cfg.customers)
    tx, ty = rng.uniform(0, 100, cfg.terminals), rng.uniform(0, 100, cfg.terminals)

    cols = {k: [] for k in ("customer_id", "terminal_id", "day", "sec", "amount")}
    for c in range(cfg.customers):
        near = np.flatnonzero((tx - cx[c]) ** 2 + (ty - cy[c]) ** 2 < cfg.radius ** 2)
        n_day = rng.poisson(tx_per_day[c], cfg.days)
        n = int(n_day.sum())
        if n == 0 or len(near) == 0:
            continue
        day = np.repeat(np.arange(cfg.days), n_day)
        sec = np.rint(rng.normal(DAY_S / 2, 20_000, n)).astype(np.int64)
        amt = rng.normal(mean_amt[c], std_amt[c], n)
        neg = amt < 0
        amt[neg] = rng.uniform(0, 2 * mean_amt[c], int(neg.sum()))
        term = near[rng.integers(0, len(near), n)]
        keep = (sec > 0) & (sec < DAY_S)  # a time outside the day is dropped, not moved
        cols["customer_id"].append(np.full(int(keep.sum()), c))
        cols["terminal_id"].append(term[keep])
        cols["day"].append(day[keep])
        cols["sec"].append(sec[keep])
        cols["amount"].append(np.round(amt[keep], 2))
    df = pd.DataFrame({k: np.concatenate(v) for k, v in cols.items()})
    df["ts"] = cfg.start_ms + df["day"].to_numpy() * DAY_MS + df["sec"].to_numpy() * 1000
    df = df.sort_values(["ts", "customer_id"], kind="stable").reset_index(drop=True)
    df.insert(0, "tx_id", np.arange(len(df)))

    fraud = np.zeros(len(df), dtype=np.int8)
    scen = np.zeros(len(df), dtype=np.int8)
    amount = df["amount"].to_numpy().copy()
    over = amount > cfg.amount_threshold  # scenario 1
    fraud[over], scen[over] = 1, 1
    day = df["day"].to_numpy()
    term = df["terminal_id"].to_numpy()
    cust = df["customer_id"].to_numpy()
    compromised_terminals, compromised_customers = [], []
    for d in range(cfg.days):  # scenario 2
        for t in rng.choice(cfg.terminals, _spread(cfg.t_per_day, d), replace=False):
            compromised_terminals.append((int(t), d))
            m = (term == t) & (day >= d) & (day < d + cfg.terminal_days)
            fraud[m], scen[m] = 1, 2
    for d in range(cfg.days):  # scenario 3
        for c in rng.choice(cfg.customers, _spread(cfg.c_per_day, d), replace=False):
            compromised_customers.append((int(c), d))
            idx = np.flatnonzero((cust == c) & (day >= d) & (day < d + cfg.customer_days))
            pick = rng.choice(idx, len(idx) // 3, replace=False) if len(idx) >= 3 else idx[:0]
            amount[pick] = np.round(amount[pick] * 5, 2)
            fraud[pick], scen[pick] = 1, 3
    df["amount"] = amount
    df["fraud"] = fraud
    df["scenario"] = scen
    df["arrival_ts"] = df["ts"] + cfg.label_delay_days * DAY_MS
    df.attrs["compromised_terminals"] = compromised_terminals
    df.attrs["compromised_customers"] = compromised_customers
    return df.drop(columns=["sec"])


# --------------------------------------------------------------------------------------------- baseline


def _window_counts(key: np.ndarray, ts: np.ndarray, lo: np.ndarray, hi: np.ndarray, values=None):
    """Per row i: the number of rows j with key[j] == key[i] and lo[i] < ts[j] <= hi[i], and the sum of
    ``values`` over them (each list of windows as half-open ``(lo, hi]``), by binary search in the rows
    sorted by (key, ts)."""
    span = int(max(ts.max(), hi.max()) - min(ts.min(), lo.min())) + 2
    base = int(min(ts.min(), lo.min())) - 1
    k = key.astype(np.int64) * span
    order = np.lexsort((ts, key))
    sk = (k + ts - base)[order]
    a = np.searchsorted(sk, k + lo - base, side="right")
    b = np.searchsorted(sk, k + hi - base, side="right")
    n = b - a
    if values is None:
        return n, None
    cs = np.r_[0.0, np.cumsum(np.asarray(values, dtype=np.float64)[order])]
    return n, cs[b] - cs[a]


HANDBOOK_FEATURES = (
    "amount", "tx_during_weekend", "tx_during_night",
    "customer_nb_tx_1d", "customer_avg_amount_1d", "customer_nb_tx_7d", "customer_avg_amount_7d",
    "customer_nb_tx_30d", "customer_avg_amount_30d",
    "terminal_nb_tx_1d_delayed", "terminal_risk_1d_delayed", "terminal_nb_tx_7d_delayed",
    "terminal_risk_7d_delayed", "terminal_nb_tx_30d_delayed", "terminal_risk_30d_delayed",
)


def baseline_features(df, delay_days: int = 7):
    """The Handbook's 15 features of each transaction (a DataFrame, columns :data:`HANDBOOK_FEATURES`).
    Customer windows are the ``w`` days up to and including the transaction, ``(t - w, t]``; terminal windows
    are the ``w`` days that end ``delay_days`` before it, ``(t - delay - w, t - delay]``, whose labels are all
    known at ``t``; a terminal risk is that window's frauds / transactions (0 for an empty window)."""
    import pandas as pd

    ts = df["ts"].to_numpy(np.int64)
    cust = df["customer_id"].to_numpy()
    term = df["terminal_id"].to_numpy()
    amt = df["amount"].to_numpy(np.float64)
    fraud = df["fraud"].to_numpy(np.float64)
    dt = pd.to_datetime(ts, unit="ms", utc=True)
    out = {"amount": amt, "tx_during_weekend": (dt.weekday >= 5).astype(np.int8),
           "tx_during_night": (dt.hour <= 6).astype(np.int8)}
    for w in (1, 7, 30):
        n, s = _window_counts(cust, ts, ts - w * DAY_MS, ts, amt)
        out[f"customer_nb_tx_{w}d"] = n
        out[f"customer_avg_amount_{w}d"] = s / n  # n >= 1: the transaction itself
    d = delay_days * DAY_MS
    for w in (1, 7, 30):
        n, s = _window_counts(term, ts, ts - d - w * DAY_MS, ts - d, fraud)
        out[f"terminal_nb_tx_{w}d_delayed"] = n
        out[f"terminal_risk_{w}d_delayed"] = np.where(n > 0, s / np.maximum(n, 1), 0.0)
    return pd.DataFrame({k: out[k] for k in HANDBOOK_FEATURES})


# riskstream's learner and its default hyper-parameters (models.train.DEFAULT_HYPER), for a features-only
# comparison; the random forest is the Handbook's kind of model
def fit_hgb(x, y):
    from models.train import DEFAULT_HYPER, fit

    return fit(x, y, dict(DEFAULT_HYPER))


def fit_rf(x, y, seed: int = 0):
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(n_estimators=100, max_depth=20, min_samples_leaf=1, n_jobs=1,
                                  random_state=seed).fit(x, y)


# --------------------------------------------------------------------------------------------- figures


def figures(score, y, customer, ts, scenario, top_k: int = 100, budget: float = 0.02) -> dict:
    """The test figures of one model: ROC AUC, AP, card precision top-k per day (customers, the Handbook's
    definition: riskstream.metrics.entity_precision_at_k, detected cards removed), and per scenario the share
    of its frauds in the top ``budget`` of transactions and its AP against the legitimate rows."""
    score = np.asarray(score, dtype=np.float64)
    y = np.asarray(y, dtype=bool)
    scen = np.asarray(scenario)
    card = M.entity_precision_at_k(score, y, np.asarray(customer), np.asarray(ts), top_k)
    by = M.recall_at_budget_by_group(score, y, [SCENARIOS[int(s)] for s in scen], budget)
    per = {}
    for code, name in SCENARIOS.items():
        if code == 0 or name not in by:
            continue
        m = (scen == code) | ~y
        per[name] = {"frauds": by[name]["fraud_events"], f"recall_top_{budget:g}": round(by[name]["recall"], 4),
                     "ap_vs_legit": round(M.average_precision(score[m], y[m]), 4)}
    return {"roc_auc": round(M.roc_auc(score, y), 4), "average_precision": round(M.average_precision(score, y), 4),
            f"card_precision_top{top_k}_per_day": round(card["mean"], 4),
            "card_precision_days": [round(d["precision"], 4) for d in card["days"]],
            "rows": int(len(y)), "frauds": int(y.sum()), "by_scenario": per}


def phases(df, label_delay_days: int = 7) -> np.ndarray:
    """Each row's part of the scenario analysis: ``legit``, ``amount_over_220``, and for the compromised
    terminals and customers whether the row falls in the compromise's first ``label_delay_days`` days (no
    label of it can have arrived: ``..._first_7d``) or later (``..._later``); from the simulator's own record
    of the compromises (``df.attrs``)."""
    day, scen = df["day"].to_numpy(), df["scenario"].to_numpy()
    age = np.full(len(df), -1, dtype=np.int64)
    for col, key, code, span in (("terminal_id", "compromised_terminals", 2, 28),
                                 ("customer_id", "compromised_customers", 3, 14)):
        ids = df[col].to_numpy()
        for k, d in df.attrs[key]:
            m = (ids == k) & (day >= d) & (day < d + span) & (scen == code)
            age[m] = day[m] - d  # the latest compromise that names the row
    out = np.array([SCENARIOS[int(c)] if c < 2 else "" for c in scen], dtype=object)
    out[scen == 0] = "legit"
    for code in (2, 3):
        m = scen == code
        out[m & (age < label_delay_days)] = f"{SCENARIOS[code]}_first_{label_delay_days}d"
        out[m & (age >= label_delay_days)] = f"{SCENARIOS[code]}_later"
    return out


def phase_figures(score, y, phase, budget: float = 0.02) -> dict:
    """Per part of :func:`phases`: its frauds, their share in the top ``budget`` of rows, their AP against the
    legitimate rows, and how much the whole AP would gain if that part's frauds were ranked first (what the
    part costs the model)."""
    score, y, phase = np.asarray(score, dtype=np.float64), np.asarray(y, dtype=bool), np.asarray(phase)
    base = M.average_precision(score, y)
    top = np.zeros(len(score), dtype=bool)
    top[np.argsort(-score, kind="stable")[: int(budget * len(score))]] = True
    out = {}
    for part in sorted(set(phase.tolist()) - {"legit"}):
        m = phase == part
        best = np.where(m, score.max() + 1.0, score)
        keep = m | ~y
        out[part] = {"frauds": int(m.sum()), f"recall_top_{budget:g}": round(float(top[m].mean()), 4),
                     "ap_vs_legit": round(M.average_precision(score[keep], y[keep]), 4),
                     "ap_gain_if_ranked_first": round(M.average_precision(best, y) - base, 4)}
    return out


def ceiling(y, customer, ts, phase, top_k: int = 100, label_delay_days: int = 7, draws: int = 20,
            seed: int = 0) -> dict:
    """The best figures a model can reach on these rows without seeing a compromised terminal's first
    ``label_delay_days`` days (no label of the terminal has arrived yet, and its amounts are its customers'
    ordinary ones: nothing in the data tells those frauds from legitimate rows): every other fraud ranked
    first, the rest in random order, averaged over ``draws`` draws. Pitfall: card precision top-k per day is
    capped by the day's reachable fraudulent cards (found cards leave later days), so a day with fewer than
    k of them cannot reach 1, and the mean over days can sit close to what a model already scores."""
    y = np.asarray(y, dtype=bool)
    unseen = np.asarray(phase) == f"{SCENARIOS[2]}_first_{label_delay_days}d"
    reach = y & ~unseen
    rng = np.random.default_rng(seed)
    ap, card = [], []
    for _ in range(draws):
        s = reach + 0.5 * rng.random(len(y))
        ap.append(M.average_precision(s, y))
        card.append(M.entity_precision_at_k(s, y, np.asarray(customer), np.asarray(ts), top_k)["mean"])
    return {"frauds": int(y.sum()), "unseen_frauds": int((y & unseen).sum()), "draws": draws,
            "average_precision": round(float(np.mean(ap)), 4),
            f"card_precision_top{top_k}_per_day": round(float(np.mean(card)), 4),
            f"card_precision_top{top_k}_per_day_range": [round(float(min(card)), 4), round(float(max(card)), 4)]}


# --------------------------------------------------------------------------------------------- riskstream

MAPPING_TOML = """\
# the simulated card transactions -> riskstream's event contract (docs/models.md, "Training on your own data")
[fields]
event_id = "tx_id"
user_id = "customer_id"
device_id = "terminal_id"
ip = "terminal_id"       # a card-present transaction has no address: the terminal keys the ip stage too
amount = "amount"

[ts]
column = "tx_time"
unit = "ms"

[constants]
currency = "EUR"
event_type = "payment"
"""


def write_inputs(df, folder: Path) -> dict[str, Path]:
    """The files a user would have: events as Parquet (no label in it), the mapping, the labels (JSON lines:
    event_id, fraud, scenario, arrival_ts)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    paths = {"events": folder / "transactions.parquet", "mapping": folder / "transactions.mapping.toml",
             "labels": folder / "labels.jsonl"}
    pq.write_table(pa.table({"tx_id": df["tx_id"].to_numpy(), "tx_time": df["ts"].to_numpy(),
                             "customer_id": df["customer_id"].to_numpy(), "terminal_id": df["terminal_id"].to_numpy(),
                             "amount": df["amount"].to_numpy()}), paths["events"])
    paths["mapping"].write_text(MAPPING_TOML, encoding="utf-8")
    with open(paths["labels"], "wb") as f:
        for eid, fr, sc, arr in zip(df["tx_id"].tolist(), df["fraud"].tolist(), df["scenario"].tolist(),
                                    df["arrival_ts"].tolist()):
            f.write(orjson.dumps({"event_id": str(eid), "fraud": bool(fr), "scenario": SCENARIOS[sc],
                                  "arrival_ts": arr}) + b"\n")
    return paths


def _date(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d")


def riskstream_run(df, folder: Path, cfg: SimConfig, train_days: tuple[int, int], gap_days: int,
                   version: str = "handbook_rs", log=lambda m: None):
    """``riskstream train`` on the files of :func:`write_inputs` (``models.train.run``, as the command calls
    it): returns (the TrainResult, the equivalent command line)."""
    from models import train as tr
    from riskstream.paths import home
    from udfs.ingest import Mapping, parse_duration, parse_when

    paths = write_inputs(df, folder)
    train_from = _date(cfg.start_ms + train_days[0] * DAY_MS)
    train_until = _date(cfg.start_ms + (train_days[1] + 1) * DAY_MS)
    periods = tr.Periods(train_from=parse_when(train_from), train_until=parse_when(train_until),
                         gap_ms=parse_duration(f"{gap_days}d"))
    res = tr.run(events=paths["events"], labels=paths["labels"], version=version, out_dir=folder / "model",
                 force=True, log=log, mapping=Mapping.load(paths["mapping"]), periods=periods,
                 label_delay=parse_duration(f"{cfg.label_delay_days}d"),
                 cache_dir=home() / "cache" / "features")  # the command's default feature cache
    return res, train_command(folder, cfg, train_days, gap_days, version)


def train_command(folder: Path, cfg: SimConfig, train_days: tuple[int, int], gap_days: int,
                  version: str = "handbook_rs") -> str:
    """The ``riskstream train`` command line :func:`riskstream_run` stands for."""
    return " ".join(shlex.quote(a) for a in [
        "riskstream", "train", "--events", str(folder / "transactions.parquet"),
        "--mapping", str(folder / "transactions.mapping.toml"), "--labels", str(folder / "labels.jsonl"),
        "--version", version, "--out-dir", str(folder / "model"),
        "--train-from", _date(cfg.start_ms + train_days[0] * DAY_MS),
        "--train-until", _date(cfg.start_ms + (train_days[1] + 1) * DAY_MS), "--gap", f"{gap_days}d",
        "--label-delay", f"{cfg.label_delay_days}d", "--force"])


def reused_scores(folder: Path, version: str = "handbook_rs") -> tuple[list[str], np.ndarray, dict]:
    """(test event ids, scores, spec) of the model an earlier run trained in ``folder``."""
    import csv

    spec_path, scores_path = folder / "model" / f"{version}.json", folder / "model" / f"{version}.test_scores.csv"
    if not spec_path.is_file() or not scores_path.is_file():
        raise SystemExit(f"no trained model in {folder / 'model'}; run without --reuse first")
    with open(scores_path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    return [r["event_id"] for r in rows], np.asarray([float(r["score"]) for r in rows]), orjson.loads(
        spec_path.read_bytes())


# --------------------------------------------------------------------------------------------- diagnosis


def fit_hgb_no_early_stop(x, y):
    """riskstream's learner with every one of its 100 rounds: scikit-learn stops HistGradientBoosting early
    (on a 10 % validation split's loss) by default when there are more than 10,000 rows."""
    from models.train import DEFAULT_HYPER, fit

    return fit(x, y, {**DEFAULT_HYPER, "early_stopping": False})


def fit_hgb_300(x, y):
    """What ``riskstream train --max-iter 300 --learning-rate 0.05`` fits (sklearn's early stopping on)."""
    from models.train import DEFAULT_HYPER, fit

    return fit(x, y, {**DEFAULT_HYPER, "max_iter": 300, "learning_rate": 0.05})


FEATURE_CACHE = "riskstream_features.npz"


def save_riskstream_features(res, df, folder: Path) -> np.ndarray:
    """riskstream's feature rows in ``df`` order (what the replay computed for ``riskstream train``), also
    saved to ``folder``/:data:`FEATURE_CACHE` with the spec's names, fingerprint and importances, so that
    ``--diagnose-only`` need not replay again."""
    pos = {e: i for i, e in enumerate(res.data.event_ids)}
    x = res.data.x[np.asarray([pos[str(t)] for t in df["tx_id"].tolist()])]
    np.savez_compressed(folder / FEATURE_CACHE, x=x, tx_id=df["tx_id"].to_numpy(),
                        names=np.asarray(res.spec["feature_names"]),
                        fingerprint=np.asarray(res.summary["feature_fingerprint"]),
                        importances=np.asarray(orjson.dumps(res.summary["metrics"].get("permutation_importance")
                                                            or [])))
    return x


def load_riskstream_features(df, folder: Path) -> tuple[np.ndarray, list[str], list[dict]]:
    from udfs.features import spec_fingerprint

    path = folder / FEATURE_CACHE
    if not path.is_file():
        raise SystemExit(f"{path}: no cached riskstream features; run without --diagnose-only first")
    z = np.load(path)
    if str(z["fingerprint"]) != spec_fingerprint() or not np.array_equal(z["tx_id"], df["tx_id"].to_numpy()):
        raise SystemExit(f"{path} was computed for another spec or other data; run without --diagnose-only")
    return z["x"], [str(n) for n in z["names"]], orjson.loads(bytes(z["importances"]))


def diagnose(df, feats, x_rs: np.ndarray, names: list[str], importances: list[dict], te_rows: np.ndarray,
             tr_rows: np.ndarray, top_k: int, log=lambda m: None, experiments: tuple[str, ...] | None = None) -> dict:
    """Where riskstream falls short of the Handbook's baseline, on the same split: riskstream's features
    (``x_rs``, rows in ``df`` order) with each group of the Handbook's added, with other learners, the
    terminal risk compared value by value, and the riskstream model's permutation importances."""
    y = df["fraud"].to_numpy()
    te, trn = te_rows, tr_rows
    col = {n: i for i, n in enumerate(names)}
    feats = feats.copy()
    feats["amount_over_customer_avg_30d"] = feats["amount"] / feats["customer_avg_amount_30d"]
    feats["amount_over_customer_avg_7d"] = feats["amount"] / feats["customer_avg_amount_7d"]

    def run(label: str, extra_cols=(), drop=(), riskstream=True, learner=fit_hgb) -> dict:
        t0 = time.time()
        parts = []
        if riskstream:
            parts.append(x_rs[:, [i for i, n in enumerate(names) if n not in drop]].astype(np.float64))
        if extra_cols:
            parts.append(feats[list(extra_cols)].to_numpy(np.float64))
        x = np.concatenate(parts, axis=1)
        m = learner(x[trn], y[trn])
        p = m.predict_proba(x[te])[:, 1]
        f = figures(p, y[te], df["customer_id"].to_numpy()[te], df["ts"].to_numpy()[te],
                    df["scenario"].to_numpy()[te], top_k)
        n_iter = getattr(m, "n_iter_", None)
        log(f"diagnose: {label}: AP {f['average_precision']}, card P@{top_k} {f[f'card_precision_top{top_k}_per_day']}"
            + (f", {n_iter} rounds" if n_iter is not None else "") + f" ({time.time() - t0:.0f}s)")
        return {"experiment": label, **({"boosting_rounds": int(n_iter)} if n_iter is not None else {}),
                **{k: v for k, v in f.items() if k != "card_precision_days"}}

    term = [c for c in HANDBOOK_FEATURES if c.startswith("terminal_")]
    cust = [c for c in HANDBOOK_FEATURES if c.startswith("customer_")]
    hb_all = list(HANDBOOK_FEATURES)
    plan = {
        "riskstream": ("riskstream's features, riskstream's learner (HGB)", {}),
        "no-early-stop": ("riskstream's features, HGB without early stopping", {"learner": fit_hgb_no_early_stop}),
        "handbook-hgb": ("the Handbook's features, HGB without early stopping",
                         {"extra_cols": hb_all, "riskstream": False, "learner": fit_hgb_no_early_stop}),
        "terminal": ("riskstream's features + the Handbook's terminal features", {"extra_cols": term}),
        "customer": ("riskstream's features + the Handbook's customer features", {"extra_cols": cust}),
        "time": ("riskstream's features + weekend / night flags",
                 {"extra_cols": ["tx_during_weekend", "tx_during_night"]}),
        "ratio": ("riskstream's features + amount / the customer's mean amount (7d, 30d)",
                  {"extra_cols": ["amount_over_customer_avg_7d", "amount_over_customer_avg_30d"]}),
        "no-user-labels": ("riskstream's features without user_fraud_labels_30d", {"drop": ("user_fraud_labels_30d",)}),
        "rf": ("riskstream's features, random forest (the baseline's learner)", {"learner": fit_rf}),
        "hgb-300": ("riskstream's features, HGB --max-iter 300 --learning-rate 0.05", {"learner": fit_hgb_300}),
    }
    unknown = sorted(set(experiments or ()) - set(plan))
    if unknown:
        raise SystemExit(f"unknown experiments {unknown}; choose from {sorted(plan)}")
    exps = [run(label, **kw) for key, (label, kw) in plan.items() if experiments is None or key in experiments]
    # the terminal risk: riskstream's delayed share against the Handbook's, on the test rows
    cmp = {}
    for w, name in ((1, "24h"), (7, "7d"), (30, "30d")):
        rs = f"device_fraud_share_{name}_delay7d"
        if rs not in col:
            continue
        a = x_rs[te, col[rs]].astype(np.float64)
        b = feats[f"terminal_risk_{w}d_delayed"].to_numpy()[te]
        cmp[rs] = {"vs": f"terminal_risk_{w}d_delayed",
                   "equal_within_1e-6": round(float(np.mean(np.abs(a - b) < 1e-6)), 4),
                   "mean_abs_diff": round(float(np.mean(np.abs(a - b))), 5),
                   "corr": round(float(np.corrcoef(a, b)[0, 1]), 4) if a.std() and b.std() else None}
    return {"experiments": exps, "terminal_risk_compared": cmp, "riskstream_importances_top10": importances[:10]}


# --------------------------------------------------------------------------------------------- main


def _days(text: str) -> tuple[int, int]:
    a, _, b = text.partition("-")
    return int(a), int(b or a)


def _loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).resolve().parent,
                              capture_output=True, text=True, check=True).stdout.strip() or None
    except (OSError, subprocess.CalledProcessError):
        return None


def prepare(cfg: SimConfig, train_days: tuple[int, int], test_days: tuple[int, int], gap_days: int,
            log=lambda m: None):
    """The simulated transactions and the row indices of the training and the test days."""
    t0 = time.time()
    if test_days[0] != train_days[1] + 1 + gap_days:
        raise SystemExit(f"test days must start {gap_days} days after the training days' end "
                         f"(day {train_days[1] + 1 + gap_days}), got {test_days[0]}")
    if test_days[1] != cfg.days - 1:
        raise SystemExit(f"the test days run to the end of the data (day {cfg.days - 1}), as riskstream train's "
                         "default --test-until does")
    df = simulate(cfg)
    log(f"simulated {len(df)} transactions, {int(df['fraud'].sum())} fraud "
        f"({df['fraud'].mean():.2%}); by scenario {df.loc[df.fraud == 1, 'scenario'].value_counts().sort_index().to_dict()}"
        f" ({time.time() - t0:.0f}s)")
    day = df["day"].to_numpy()
    tr_rows = np.flatnonzero((day >= train_days[0]) & (day <= train_days[1]))
    te_rows = np.flatnonzero((day >= test_days[0]) & (day <= test_days[1]))
    return df, tr_rows, te_rows


def run(cfg: SimConfig, train_days: tuple[int, int], test_days: tuple[int, int], gap_days: int, work: Path,
        top_k: int = 100, models: tuple[str, ...] = ("rf", "hgb"), do_diagnose: bool = False,
        log=lambda m: None, reuse: bool = False) -> dict:
    """The whole comparison; returns the JSON-able result. ``reuse``: take riskstream's test scores from the
    model an earlier run trained in ``work`` (its ``<version>.test_scores.csv``) instead of training again."""
    t0 = time.time()
    df, tr_rows, te_rows = prepare(cfg, train_days, test_days, gap_days, log)
    y = df["fraud"].to_numpy()
    cust_te, ts_te, scen_te = (df[c].to_numpy()[te_rows] for c in ("customer_id", "ts", "scenario"))
    phase_te = phases(df, cfg.label_delay_days)[te_rows]

    feats = baseline_features(df, cfg.label_delay_days)
    x = feats.to_numpy(np.float64)
    results: dict = {}
    for kind in models:
        t1 = time.time()
        m = (fit_rf if kind == "rf" else fit_hgb)(x[tr_rows], y[tr_rows])
        p = m.predict_proba(x[te_rows])[:, 1]
        results[f"handbook_{kind}"] = {**figures(p, y[te_rows], cust_te, ts_te, scen_te, top_k),
                                       "by_phase": phase_figures(p, y[te_rows], phase_te),
                                       "seconds": round(time.time() - t1, 1)}
        log(f"baseline ({kind}): AP {results[f'handbook_{kind}']['average_precision']} ({time.time() - t1:.0f}s)")

    t1 = time.time()
    if reuse:  # the model (and its test scores) an earlier run of the same data trained
        res = None
        te_ids, scores, spec = reused_scores(work)
        command = "(reused) " + train_command(work, cfg, train_days, gap_days)
        summary = {"feature_fingerprint": spec["feature_fingerprint"], "metrics": spec["metrics"],
                   "hyper_parameters": spec.get("hyper_parameters"),
                   "hyper_parameter_search": spec.get("hyper_parameter_search")}
        names, train_n = spec["feature_names"], spec["split"]["train_rows"]
    else:
        res, command = riskstream_run(df, work, cfg, train_days, gap_days, log=lambda m: log(f"riskstream {m}"))
        te_ids, scores, summary = [res.data.event_ids[i] for i in res.test_idx], res.test_scores, res.summary
        names, train_n = res.spec["feature_names"], int(len(res.train_idx))
    if sorted(int(e) for e in te_ids) != df["tx_id"].to_numpy()[te_rows].tolist():
        raise RuntimeError("riskstream's test rows are not the baseline's test rows")
    row = {int(e): k for k, e in enumerate(te_ids)}
    p_rs = np.asarray(scores, dtype=np.float64)[[row[t] for t in df["tx_id"].to_numpy()[te_rows].tolist()]]
    results["riskstream"] = {**figures(p_rs, y[te_rows], cust_te, ts_te, scen_te, top_k),
                             "by_phase": phase_figures(p_rs, y[te_rows], phase_te),
                             "seconds": round(time.time() - t1, 1), "train_rows": train_n,
                             "card_metrics": {k: summary["metrics"][k] for k in ("roc_auc", "average_precision")},
                             "hyper_parameters": summary.get("hyper_parameters"),
                             "hyper_parameter_search": summary.get("hyper_parameter_search")}
    log(f"riskstream: AP {results['riskstream']['average_precision']} ({time.time() - t1:.0f}s)")
    out = {"benchmark": "handbook", "config": cfg.__dict__ | {"terminals_per_day": cfg.t_per_day,
                                                              "customers_per_day": cfg.c_per_day},
           "transactions": int(len(df)), "frauds": int(y.sum()),
           "fraud_by_scenario": {SCENARIOS[int(k)]: int(v) for k, v in
                                 df.loc[df.fraud == 1, "scenario"].value_counts().sort_index().items()},
           "train_days": list(train_days), "gap_days": gap_days, "test_days": list(test_days),
           "train_rows": int(len(tr_rows)), "test_rows": int(len(te_rows)), "top_k": top_k,
           "riskstream_command": command, "feature_fingerprint": summary["feature_fingerprint"],
           "riskstream_features": len(names), "results": results,
           "target": {"average_precision": 0.80, f"card_precision_top{top_k}_per_day": 0.38},
           "ceiling": ceiling(y[te_rows], cust_te, ts_te, phase_te, top_k, cfg.label_delay_days),
           "commit": _commit(), "loadavg": _loadavg(), "seconds": None}
    if res is None:
        if do_diagnose:
            x_rs, names, imp = load_riskstream_features(df, work)
            out["diagnosis"] = diagnose(df, feats, x_rs, names, imp, te_rows, tr_rows, top_k, log)
        out["seconds"] = round(time.time() - t0, 1)
        return out
    x_rs = save_riskstream_features(res, df, work)
    if do_diagnose:
        out["diagnosis"] = diagnose(df, feats, x_rs, list(res.spec["feature_names"]),
                                    res.summary["metrics"].get("permutation_importance") or [], te_rows, tr_rows,
                                    top_k, log)
    out["seconds"] = round(time.time() - t0, 1)
    return out


def run_diagnosis(cfg: SimConfig, train_days: tuple[int, int], test_days: tuple[int, int], gap_days: int,
                  work: Path, top_k: int = 100, log=lambda m: None, experiments: tuple[str, ...] | None = None) -> dict:
    """The diagnosis alone, on the riskstream features an earlier :func:`run` cached in ``work``."""
    t0 = time.time()
    df, tr_rows, te_rows = prepare(cfg, train_days, test_days, gap_days, log)
    feats = baseline_features(df, cfg.label_delay_days)
    x_rs, names, imp = load_riskstream_features(df, work)
    return {"benchmark": "handbook-diagnosis", "config": cfg.__dict__, "train_days": list(train_days),
            "gap_days": gap_days, "test_days": list(test_days), "top_k": top_k,
            "diagnosis": diagnose(df, feats, x_rs, names, imp, te_rows, tr_rows, top_k, log, experiments),
            "commit": _commit(), "loadavg": _loadavg(), "seconds": round(time.time() - t0, 1)}


def render_diagnosis(out: dict) -> list[str]:
    k = out["top_k"]
    d = out.get("diagnosis") or {}
    lines = []
    for e in d.get("experiments", []):
        lines.append(f"  diagnose: {e['experiment']}: AP {e['average_precision']:.4f}, card P@{k} "
                     f"{e[f'card_precision_top{k}_per_day']:.4f}; "
                     + ", ".join(f"{s} {v['recall_top_0.02']:.1%}" for s, v in e["by_scenario"].items()))
    for name, c in (d.get("terminal_risk_compared") or {}).items():
        lines.append(f"  diagnose: {name} against {c['vs']}: equal on {c['equal_within_1e-6']:.1%} of the test rows, "
                     f"mean |difference| {c['mean_abs_diff']}, correlation {c['corr']}")
    if d.get("riskstream_importances_top10"):
        lines.append("  diagnose: riskstream's model leans on " + ", ".join(
            f"{i['feature']} ({i['ap_drop']:+.3f} AP)" for i in d["riskstream_importances_top10"][:6]))
    return lines


def render(out: dict) -> str:
    k = out["top_k"]
    if "results" not in out:
        return "\n".join(render_diagnosis(out) + [f"commit {out['commit']}, load average {out['loadavg']}, "
                                                  f"{out['seconds']}s"])
    lines = [f"{out['transactions']:,} transactions, {out['frauds']:,} fraud ({out['frauds'] / out['transactions']:.2%}); "
             f"train days {out['train_days'][0]}-{out['train_days'][1]} ({out['train_rows']:,} rows), gap "
             f"{out['gap_days']} days, test days {out['test_days'][0]}-{out['test_days'][1]} ({out['test_rows']:,} rows)",
             f"{'model':<24} {'ROC AUC':>8} {'AP':>7} {f'card P@{k}/day':>14}   share of each scenario's frauds in the top 2 %"]
    for name, r in out["results"].items():
        sc = ", ".join(f"{s} {v['recall_top_0.02']:.1%}" for s, v in r["by_scenario"].items())
        lines.append(f"{name:<24} {r['roc_auc']:>8.4f} {r['average_precision']:>7.4f} "
                     f"{r[f'card_precision_top{k}_per_day']:>14.4f}   {sc}")
    hs = out["results"]["riskstream"].get("hyper_parameter_search")
    if hs and not hs.get("skipped"):
        lines.append("riskstream train's validation period (" + f"{hs['validation']['validation_rows']:,} rows): "
                     + "; ".join(f"{', '.join(f'{a}={b}' for a, b in r['hyper_parameters'].items()) or 'defaults'}"
                                 f" AP {r['average_precision']:.4f}" + (" (chosen)" if i == hs["chosen"] else "")
                                 for i, r in enumerate(hs["grid"]))
                     + f"; refitted with bags={out['results']['riskstream']['hyper_parameters'].get('bags', 1)}")
    lines.append("by phase (frauds; in the top 2 %; AP against the legitimate rows; AP gained if ranked first):")
    for name, r in out["results"].items():
        if r.get("by_phase"):
            lines.append(f"  {name:<22} " + ", ".join(
                f"{p} {v['frauds']}: {v['recall_top_0.02']:.1%} / {v['ap_vs_legit']:.3f} / +{v['ap_gain_if_ranked_first']:.3f}"
                for p, v in r["by_phase"].items()))
    t = out["target"]
    rs = out["results"]["riskstream"]
    ok = rs["average_precision"] >= t["average_precision"] and rs[f"card_precision_top{k}_per_day"] >= t[
        f"card_precision_top{k}_per_day"]
    lines.append(f"target AP >= {t['average_precision']}, card P@{k} >= {t[f'card_precision_top{k}_per_day']}: "
                 f"{'met' if ok else 'NOT met'} by riskstream")
    c = out.get("ceiling")
    if c:
        lines.append(f"ceiling without the {c['unseen_frauds']} frauds of terminals in their first {out['config']['label_delay_days']} "
                     f"days (every other fraud first, the rest at random, {c['draws']} draws): AP {c['average_precision']:.4f}, "
                     f"card P@{k} {c[f'card_precision_top{k}_per_day']:.4f} "
                     f"({c[f'card_precision_top{k}_per_day_range'][0]:.4f}-{c[f'card_precision_top{k}_per_day_range'][1]:.4f})")
    lines += render_diagnosis(out)
    lines.append(f"commit {out['commit']}, load average {out['loadavg']}, {out['seconds']}s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.handbook", description=__doc__.split("\n\n")[0])
    p.add_argument("--customers", type=int, default=2_500)
    p.add_argument("--terminals", type=int, default=5_000)
    p.add_argument("--days", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--terminals-per-day", type=float, default=2.0,
                   help="terminals compromised a day [default 2, the Handbook's]; 0 scales to the population")
    p.add_argument("--customers-per-day", type=float, default=3.0,
                   help="customers compromised a day [default 3, the Handbook's]; 0 scales to the population")
    p.add_argument("--train-days", default="12-44", help="first-last training day (0-based, inclusive)")
    p.add_argument("--gap", type=int, default=7, help="days between training and test (the label delay)")
    p.add_argument("--test-days", default="52-59", help="first-last test day (to the end of the data)")
    p.add_argument("--top-k", type=int, default=100)
    p.add_argument("--models", default="rf,hgb", help="baseline learners: rf (the Handbook's kind), hgb "
                                                      "(riskstream's learner)")
    p.add_argument("--diagnose", action="store_true", help="also run the experiments that locate a gap")
    p.add_argument("--reuse", action="store_true",
                   help="take riskstream's test scores from the model a full run trained in --work (no replay)")
    p.add_argument("--diagnose-only", action="store_true",
                   help="only the experiments, on the riskstream features a full run cached in --work")
    p.add_argument("--experiments", default=None,
                   help="with --diagnose-only: a comma-separated subset (riskstream, no-early-stop, handbook-hgb, "
                        "terminal, customer, time, ratio, no-user-labels, rf, hgb-300) [default all]")
    p.add_argument("--work", default=None, help="folder for the Parquet, mapping, labels and model "
                                                "[default: <riskstream home>/handbook]")
    p.add_argument("--out", default=None, help="JSON result [default benchmarks/results/handbook-<seed>-<size>.json]")
    a = p.parse_args(argv)
    from riskstream import paths

    cfg = SimConfig(customers=a.customers, terminals=a.terminals, days=a.days, seed=a.seed,
                    terminals_per_day=a.terminals_per_day or None, customers_per_day=a.customers_per_day or None)
    work = Path(a.work) if a.work else paths.home() / "handbook"
    log = lambda m: print(f"[handbook] {m}", file=sys.stderr, flush=True)  # noqa: E731
    if a.diagnose_only:
        exps = tuple(e for e in a.experiments.split(",") if e) if a.experiments else None
        out = run_diagnosis(cfg, _days(a.train_days), _days(a.test_days), a.gap, work, a.top_k, log, exps)
    else:
        out = run(cfg, _days(a.train_days), _days(a.test_days), a.gap, work, a.top_k,
                  tuple(m for m in a.models.split(",") if m), a.diagnose, log, reuse=a.reuse)
    print(render(out))
    tag = ("-diagnosis" + ("-" + "-".join(exps) if exps else "")) if a.diagnose_only else ""
    rates = f"-{cfg.t_per_day:g}t{cfg.c_per_day:g}c"
    dest = Path(a.out) if a.out else RESULTS / f"handbook-{a.seed}-{a.customers}c-{a.days}d{rates}{tag}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(orjson.dumps(out, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    print(f"[handbook] wrote {dest}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
