"""Train the gradient-boosted risk model on labelled history and export it to ONNX.

Input is labelled events, either generated (``riskstream.generator``, per seed) or read from a file
(events as JSON lines or Parquet, labels as JSON lines keyed by ``event_id`` with a ``fraud`` bool).
Features come from ``udfs.replay``, the job's own window code, run over the events in arrival order;
records the job would dead-letter (invalid, duplicate ids) are skipped as the job skips them. The split is
by event time, never random: the earliest 80 % of the labelled rows by ``ts`` train, the latest 20 % are
held out. Metrics on the held-out part: ROC AUC, average precision, and recall / precision at a review
budget (the share of events a team can review, taken from the top of the score).

Writes ``<name>.onnx``, ``<name>.json`` (feature names, order, fingerprint, version, metrics, data, split)
and ``<name>.md`` (model card). Needs the ``train`` extra (scikit-learn, skl2onnx); note that installing
ONNX converters can upgrade protobuf/cloudpickle past what apache-beam (PyFlink) accepts, which is why
pyproject.toml pins both.

    riskstream train --generate 200000 --seed 101,102,103,104 --version my_model   # the command
    python -m models.train --events 200000 --out models/risk_gbdt_v1                # the original v1 entry
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import orjson

from riskstream import paths
from riskstream.generator import TrafficGenerator
from riskstream.metrics import DAY_MS, at_budget, entity_precision_at_k, recall_at_budget_by_group
from udfs.drift import reference as drift_reference
from udfs.events import Event, Rejection
from udfs.features import FEATURE_NAMES, spec_fingerprint, spec_json
from udfs.ingest import DEFAULT_MAX_REJECT_SHARE, IngestError, Mapping, json_objects, load_input, training_label
from udfs.labels import DEFAULT_LABEL_DELAY_MS, FRAUD, NO_LABELS, Label, label_arrival
from udfs.replay import FeatureCache, FeatureReplay, label_schedule, replay_input

HERE = Path(__file__).resolve().parent

TRAIN_SHARE = 0.8
DEFAULT_SEEDS = (101, 102, 103, 104)
DEFAULT_REVIEW_BUDGET = 0.01
DEFAULT_TOP_K = 100  # entities reviewed per day (card precision top-k, as the Fraud Detection Handbook)
# the shipped v1 hyper-parameters (HistGradientBoostingClassifier)
DEFAULT_HYPER = {"max_iter": 100, "learning_rate": 0.1, "max_leaf_nodes": 15, "random_state": 0}
# extra operating points reported beside the chosen budget, and the policy's score thresholds (udfs/policy.py)
CURVE_BUDGETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2)
POLICY_THRESHOLDS = (0.5, 0.9)
MAX_EXPORT_DRIFT = 1e-4
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


class TrainError(RuntimeError):
    """Bad input or arguments: the message says what to fix."""


# --------------------------------------------------------------------------------------------- dataset


@dataclass
class Dataset:
    """Labelled rows in arrival order: features (``FEATURE_NAMES`` order), label, event time, scenario,
    and per row the keys and flags the evaluation and the per-row scores need."""

    x: np.ndarray
    y: np.ndarray
    ts: np.ndarray
    scenario: list[str]
    event_ids: list[str]
    trained_on: dict = field(default_factory=dict)
    users: list[str] = field(default_factory=list)
    devices: list[str] = field(default_factory=list)
    payment_refs: list[str | None] = field(default_factory=list)
    event_types: list[str] = field(default_factory=list)
    late: list[bool] = field(default_factory=list)


class _Rows:
    def __init__(self) -> None:
        self.x: list[list[float]] = []
        self.y: list[int] = []
        self.ts: list[int] = []
        self.scen: list[str] = []
        self.ids: list[str] = []
        self.users: list[str] = []
        self.devices: list[str] = []
        self.refs: list[str | None] = []
        self.types: list[str] = []
        self.late: list[bool] = []
        self.stats = {"records": 0, "rejected": {}, "duplicates": 0, "unlabelled": 0, "labels_fed": 0}

    def add(self, ev: Event, vec: list[float], late: bool, fraud: bool | None, scenario: str | None) -> None:
        if fraud is None:  # still shaped the features of later events; not a row itself
            self.stats["unlabelled"] += 1
            return
        self.x.append(vec)
        self.y.append(1 if fraud else 0)
        self.ts.append(ev.ts)
        self.scen.append(str(scenario or ("fraud" if fraud else "normal")))
        self.ids.append(ev.event_id)
        self.users.append(ev.user_id)
        self.devices.append(ev.device_id)
        self.refs.append(ev.payment_ref)
        self.types.append(ev.event_type)
        self.late.append(bool(late))

    def feed(self, events: Iterable[Event | Rejection], labels: Callable[[str], dict | None],
             label_delay: int | str | None = None) -> None:
        """Run one arrival-ordered stream through a fresh replay (the job's per-key state). A fraud label
        reaches the label features at its ``arrival_ts``, or ``label_delay`` ms after its event
        (:func:`arrival_of`), never before."""
        r = FeatureReplay()
        st = self.stats
        for ev in events:
            st["records"] += 1
            if isinstance(ev, Rejection):
                st["rejected"][ev.reason] = st["rejected"].get(ev.reason, 0) + 1
                continue
            res = r.step(ev)
            if res is None:  # duplicate event id: dead-lettered by the job, so not a training row
                st["duplicates"] += 1
                continue
            lab = labels(ev.event_id)
            self.add(ev, res[0], res[1], None if lab is None else bool(lab["fraud"]),
                     None if lab is None else lab.get("scenario"))
            schedule_label(r, ev, lab, label_delay, st)

    def done(self, trained_on: dict) -> Dataset:
        if not self.y:
            raise TrainError("no labelled events to train on (are the labels keyed by the events' event_id?)")
        if len(set(self.y)) < 2:
            raise TrainError("the labels hold only one class; training needs fraud and non-fraud events")
        trained_on = {**trained_on, **self.stats, "rows": len(self.y)}
        return Dataset(np.asarray(self.x, dtype=np.float32), np.asarray(self.y, dtype=np.int64),
                       np.asarray(self.ts, dtype=np.int64), self.scen, self.ids, trained_on, self.users,
                       self.devices, self.refs, self.types, self.late)


def arrival_of(ev: Event, lab: dict | None, label_delay: int | str | None) -> int | None:
    """When a fraud label for ``ev`` reaches the job (``udfs.labels.label_arrival``: the rule of replay and
    score), or None for no label or a legit one."""
    if lab is None or not lab.get("fraud"):
        return None
    arr = lab.get("arrival_ts")
    if arr is not None and (isinstance(arr, bool) or not isinstance(arr, int) or arr < ev.ts):
        raise TrainError(f"label of {ev.event_id}: arrival_ts must be epoch ms at or after the event's ts")
    return label_arrival(ev.ts, arr, label_delay)


def schedule_label(r: FeatureReplay, ev: Event, lab: dict | None, label_delay, stats: dict) -> None:
    """After ``ev`` was replayed: its fraud label (keys from the event itself) arrives at :func:`arrival_of`."""
    arr = arrival_of(ev, lab, label_delay)
    if arr is not None:
        r.add_label(arr, Label.of_event(ev, FRAUD))
        stats["labels_fed"] = stats.get("labels_fed", 0) + 1


def generated_dataset(n_events: int, seeds: Iterable[int], fraud_share: float | None = None,
                      days: float | None = None, label_delay: int | str | None = None,
                      rings: bool = False) -> Dataset:
    """``n_events`` generated records split evenly over ``seeds``; each seed is its own stream (own replay),
    spread over ``days`` when given (with the slow scenarios), with the fraud rings and the shared devices and
    ips of normal traffic when ``rings``. The fraud labels reach the label features at the generator's
    ``arrival_ts`` (1-14 days late), or ``label_delay`` ms after their event."""
    seeds = [int(s) for s in seeds]
    if n_events <= 0 or not seeds:
        raise TrainError("--generate needs a positive number of events and at least one seed")
    per_seed = n_events // len(seeds)
    if per_seed < 1:
        raise TrainError(f"{n_events} events cannot be split over {len(seeds)} seeds")
    rows = _Rows()
    kw = {} if fraud_share is None else {"fraud_share": fraud_share}
    if days is not None:
        kw["days"] = days
    if rings:
        kw["rings"] = True
    for seed in seeds:
        recs = [r for r in TrafficGenerator(seed=seed, **kw).generate(per_seed) if r.event is not None]
        labels = {r.event["event_id"]: r.label for r in recs}
        rows.feed((Event(**r.event) for r in recs), labels.get, label_delay)
    trained_on = {"source": "generator", "generator_seeds": seeds, "events": n_events,
                  "label_delay": "generator (1-14 days)" if label_delay is None else _delay_text(label_delay)}
    if fraud_share is not None:
        trained_on["generator_fraud_share"] = fraud_share
    if days is not None:
        trained_on["generator_days"] = days
    if rings:
        trained_on["generator_rings"] = True
    return rows.done(trained_on)


def _delay_text(label_delay) -> str:
    if label_delay == NO_LABELS:
        return "none (no label reaches the label features)"
    return f"{int(label_delay) / DAY_MS:g} days" if int(label_delay) % 3_600_000 == 0 else f"{label_delay} ms"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_labels(path: Path) -> dict[str, dict]:
    """Labels file (the format ``replay`` and ``score`` read too: ``udfs.replay.read_labels``): JSON lines,
    each an object with ``event_id`` and ``fraud`` (true/false, 0/1 or yes/no), optionally ``scenario`` and
    ``arrival_ts``; or a label as on the labels topic (``label``: fraud/legit)."""
    labels: dict[str, dict] = {}
    try:
        objects = list(json_objects(path))
    except IngestError as e:
        raise TrainError(f"{path.name} {e}") from None
    for n, obj in objects:
        try:
            eid, fraud = training_label(obj)
        except ValueError as e:
            raise TrainError(f"{path.name} line {n}: {e}") from None
        labels[eid] = {**obj, "fraud": fraud}
    return labels


def file_dataset(events_path: Path, labels_path: Path | None = None, *, mapping: Mapping | None = None,
                 order: str = "file", max_reject_share: float = DEFAULT_MAX_REJECT_SHARE,
                 rejects_path: Path | None = None, log: Callable[[str], None] = lambda m: None,
                 label_delay: int | str | None = None, cache_dir: Path | None = None) -> Dataset:
    """Events file (JSON lines, CSV or Parquet, read through ``mapping``; replayed in file order, or by
    event time with ``order="sort"``) plus labels: a labels file keyed by event id, or the mapping's label
    column. Records are validated by the job's parser; the ones it would dead-letter are counted (and
    written to ``rejects_path`` with their row and line), not trained on. Too many rejects is an error."""
    events_path = Path(events_path)
    if not events_path.is_file():
        raise TrainError(f"{events_path} does not exist")
    if labels_path is not None and not Path(labels_path).is_file():
        raise TrainError(f"{labels_path} does not exist")
    labels = None
    if labels_path is not None:
        labels = read_labels(Path(labels_path))
        if not labels:
            raise TrainError(f"{Path(labels_path).name} holds no labels")
    try:
        inp = load_input(events_path, mapping, order)
    except IngestError as e:
        raise TrainError(str(e)) from None
    if labels is None and not inp.labelled:
        raise TrainError("no labels: give --labels FILE (JSON lines with event_id and fraud) or a label column in "
                         "the mapping (--label-column)")
    rows = _Rows()
    late = 0
    # label features: the schedule replay and score use (udfs.replay.label_schedule, udfs.labels.label_arrival)
    delay = DEFAULT_LABEL_DELAY_MS if label_delay is None else label_delay
    try:
        schedule = label_schedule(inp, labels_path, label_delay)
    except IngestError as e:
        raise TrainError(str(e)) from None
    run: dict = {}
    for item, vec, lt in replay_input(inp, labels=schedule, cache=FeatureCache(cache_dir) if cache_dir else None,
                                      stats=run):
        late += lt
        if labels is not None:
            lab = labels.get(item.event.event_id)
            rows.add(item.event, vec, lt, None if lab is None else lab["fraud"],
                     None if lab is None else lab.get("scenario"))
        else:
            rows.add(item.event, vec, lt, item.fraud, item.scenario)
    rows.stats["labels_fed"] = sum(1 for _, lab in schedule if lab.label == FRAUD)
    if run.get("feature_cache") == "hit":
        log("features from the feature cache (the same file, labels, settings and spec were replayed before)")
    rej = inp.rejected()
    rows.stats.update(records=inp.records, duplicates=rej.pop("duplicate_event_id", 0), rejected=rej)
    if rejects_path is not None and inp.rejects:
        Path(rejects_path).parent.mkdir(parents=True, exist_ok=True)
        inp.write_rejects(rejects_path)
    verdict = inp.verdict(max_reject_share)
    if verdict:
        where = f"; rows, reasons and details in {rejects_path}" if rejects_path is not None else ""
        raise TrainError(verdict + where)
    if inp.out_of_order and order == "file":
        log(f"warning: {inp.out_of_order} events are behind an earlier event's time in file order; {late} came out "
            "late for a key (not stored in the windows). The file order is taken as the arrival order; if it is "
            "not, pass --order sort")
    on = {"source": "file", "events_file": events_path.name, "events_sha256": _sha256(events_path),
          "format": inp.format, "order": order, "out_of_order": inp.out_of_order, "late": late,
          "label_delay": ("the label's arrival_ts, else " if label_delay is None else "") + _delay_text(delay)}
    if labels_path is not None:
        on.update(labels_file=Path(labels_path).name, labels_sha256=_sha256(Path(labels_path)))
    else:
        on.update(labels_file=None, label_column=mapping.label_column)
    if mapping is not None and mapping.declared:
        on["mapping"] = {"fields": mapping.fields, "ts_unit": mapping.ts_unit, "timezone": mapping.timezone,
                         "event_types": mapping.event_types, "label_column": mapping.label_column}
    return rows.done(on)


def build_dataset(n_events: int, seeds: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """(features, labels, event times, scenarios) of generated traffic (the original v1 helper)."""
    d = generated_dataset(n_events, seeds)
    return d.x, d.y, d.ts, d.scenario


# --------------------------------------------------------------------------------------------- split


def time_split(ts: np.ndarray, train_share: float = TRAIN_SHARE) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, test): the earliest ``train_share`` of rows by event time train, the rest test.
    Ties keep arrival order, so every train row's ts is <= every test row's ts."""
    order = np.argsort(ts, kind="stable")
    cut = int(len(order) * train_share)
    if cut < 1 or cut >= len(order):
        raise TrainError(f"{len(order)} labelled rows are too few for an {train_share:.0%} time split")
    return order[:cut], order[cut:]


@dataclass(frozen=True)
class Periods:
    """A time split by dates: train on ``[train_from, train_until)``, test on ``[test_from, test_until)``,
    ``gap_ms`` at least between the two (rows in the gap are neither). None bounds are open; without
    ``train_until`` and ``test_from`` the split is by share (the earliest ``TRAIN_SHARE`` of the rows
    train), with the gap after the last training row."""

    train_from: int | None = None
    train_until: int | None = None
    test_from: int | None = None
    test_until: int | None = None
    gap_ms: int = 0

    def by_dates(self) -> bool:
        return self.train_until is not None or self.test_from is not None


def split_rows(ts: np.ndarray, periods: Periods | None = None,
               train_share: float = TRAIN_SHARE) -> tuple[np.ndarray, np.ndarray, dict]:
    """Row indices (train, test) and the split's description (for the model card)."""
    pr = periods or Periods()
    ts = np.asarray(ts)
    if pr.gap_ms < 0:
        raise TrainError(f"the gap must not be negative ({pr.gap_ms} ms)")
    if not pr.by_dates():
        if pr.train_from is not None or pr.test_until is not None:
            raise TrainError("a split by dates needs --train-until (or --test-from)")
        tr, rest = time_split(ts, train_share)
        cut = int(ts[tr].max())
        te = rest[ts[rest] >= cut + pr.gap_ms] if pr.gap_ms else rest
        info = {"method": "event_time", "train_share": train_share, "gap_ms": pr.gap_ms,
                "gap_rows": int(len(rest) - len(te)), "outside_rows": 0}
    else:
        train_until = pr.train_until if pr.train_until is not None else pr.test_from - pr.gap_ms
        test_from = pr.test_from if pr.test_from is not None else train_until + pr.gap_ms
        if test_from < train_until + pr.gap_ms:
            raise TrainError(f"the test period starts {_iso(test_from)}, before the training period's end "
                             f"{_iso(train_until)} plus the gap ({pr.gap_ms / DAY_MS:g} days)")
        if pr.train_from is not None and pr.train_from >= train_until:
            raise TrainError("the training period is empty (--train-from is not before --train-until)")
        if pr.test_until is not None and pr.test_until <= test_from:
            raise TrainError("the test period is empty (--test-until is not after its start)")
        lo = np.iinfo(np.int64).min if pr.train_from is None else pr.train_from
        hi = np.iinfo(np.int64).max if pr.test_until is None else pr.test_until
        order = np.argsort(ts, kind="stable")
        tso = ts[order]
        tr = order[(tso >= lo) & (tso < train_until)]
        te = order[(tso >= test_from) & (tso < hi)]
        gap = int(((tso >= train_until) & (tso < test_from)).sum())
        info = {"method": "periods", "train_share": None, "gap_ms": pr.gap_ms, "train_from": pr.train_from,
                "train_until": train_until, "test_from": test_from, "test_until": pr.test_until,
                "gap_rows": gap, "outside_rows": int(len(ts) - len(tr) - len(te) - gap)}
    if len(tr) == 0 or len(te) == 0:
        raise TrainError(f"the split leaves {len(tr)} training and {len(te)} test rows; the labelled rows run from "
                         f"{_iso(int(ts.min()))} to {_iso(int(ts.max()))}")
    return tr, te, info


# --------------------------------------------------------------------------------------------- metrics


def budget_row(y: np.ndarray, p: np.ndarray, budget: float) -> dict:
    """The model card's row for a review budget: the top ``budget`` share of rows by score reviewed, the
    share of all fraud they hold (recall) and the share of them that is fraud (precision), rounded. The
    figures are :func:`riskstream.metrics.at_budget` (note its argument order: scores first), as the report
    computes them, ties at the cut included at their expected value."""
    b = at_budget(p, y, budget)
    return {"budget": budget, "rows": b["k"], "score_threshold": round(b["threshold"], 6),
            "tied_at_threshold": b["tied"], "recall": None if b["recall"] is None else round(b["recall"], 4),
            "precision": round(b["precision"], 4),
            "max_recall": None if b["recall_ceiling"] is None else round(b["recall_ceiling"], 4)}


def at_threshold(y: np.ndarray, p: np.ndarray, thr: float) -> dict:
    """Rows with score >= thr (the policy's review / block cut-offs)."""
    y = np.asarray(y)
    flagged = np.asarray(p) >= thr
    nf, pos = int(flagged.sum()), int(y.sum())
    tp = int(y[flagged].sum())
    return {"threshold": thr, "flagged_share": round(nf / len(y), 4),
            "recall": round(tp / pos, 4) if pos else None, "precision": round(tp / nf, 4) if nf else None}


def entity_keys(users: list[str], refs: list[str | None]) -> dict[str, list[str]]:
    """The entities precision top-k ranks: users always; payment instruments when the rows carry any (a
    row without one counts as its user, ``user:<id>``)."""
    out = {"user": list(users)}
    if any(r is not None for r in refs):
        out["payment_ref"] = [r if r is not None else f"user:{u}" for u, r in zip(users, refs)]
    return out


def evaluate(y: np.ndarray, p: np.ndarray, review_budget: float, scenario: list[str] | None = None,
             ts: np.ndarray | None = None, entities: dict[str, list[str]] | None = None,
             top_k: int = DEFAULT_TOP_K) -> dict:
    """Held-out metrics. With ``ts`` and ``entities``: entity precision top-k per day
    (:func:`riskstream.metrics.entity_precision_at_k`) per entity kind; with ``scenario``: recall at the
    review budget per fraud scenario."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    y = np.asarray(y)
    if len(set(y.tolist())) < 2:
        raise TrainError("the held-out part holds only one class; use more or longer history, or other periods")
    b = budget_row(y, p, review_budget)
    m = {"roc_auc": round(float(roc_auc_score(y, p)), 4),
         "average_precision": round(float(average_precision_score(y, p)), 4),
         "review_budget": review_budget, "recall_at_budget": b["recall"], "precision_at_budget": b["precision"],
         "budget_rows": b["rows"], "score_at_budget": b["score_threshold"], "max_recall_at_budget": b["max_recall"],
         "test_rows": int(len(y)), "test_fraud_share": round(float(y.mean()), 4),
         "at_budgets": [budget_row(y, p, x) for x in CURVE_BUDGETS],
         "at_policy_thresholds": [at_threshold(y, p, t) for t in POLICY_THRESHOLDS]}
    if scenario is not None:
        flagged = np.asarray(p) >= POLICY_THRESHOLDS[0]
        sc = np.asarray(scenario)
        m["recall_by_scenario_at_0.5"] = {
            s: round(float(flagged[sc == s].mean()), 4) for s in sorted(set(scenario)) if s != "normal"}
        m["recall_at_budget_by_scenario"] = {
            s: {"fraud_events": r["fraud_events"], "recall": round(r["recall"], 4)}
            for s, r in recall_at_budget_by_group(p, y, scenario, review_budget).items()}
    if ts is not None and entities:
        m["top_k"] = top_k
        m["precision_at_k_per_day"] = {}
        for kind, keys in entities.items():
            e = entity_precision_at_k(p, y, keys, ts, top_k)
            m["precision_at_k_per_day"][kind] = {
                "k": top_k, "mean": None if e["mean"] is None else round(e["mean"], 4), "days": len(e["days"]),
                "remove_detected": e["remove_detected"],
                "per_day": [{"day": _iso(d["day"])[:10], "entities": d["entities"],
                             "fraud_entities": d["fraud_entities"], "precision": round(d["precision"], 4)}
                            for d in e["days"]]}
    return m


# --------------------------------------------------------------------------------------------- train


def permutation_importance(score: Callable[[np.ndarray], np.ndarray], x: np.ndarray, y: np.ndarray,
                           names, seed: int = 0) -> list[dict]:
    """Each feature's importance on held-out rows: the drop in average precision when that feature's column
    is shuffled (one permutation, seeded), most important first. A drop near 0 means the model does not use
    the feature on these rows; a negative one is noise."""
    from sklearn.metrics import average_precision_score

    y = np.asarray(y)
    if len(set(y.tolist())) < 2:
        return []
    x = np.asarray(x, dtype=np.float32)
    base = float(average_precision_score(y, score(x)))
    rng = np.random.default_rng(seed)
    out = []
    for j, name in enumerate(names):
        xp = x.copy()
        xp[:, j] = xp[rng.permutation(len(xp)), j]
        out.append({"feature": name, "ap_drop": round(base - float(average_precision_score(y, score(xp))), 4)})
    return sorted(out, key=lambda d: (-d["ap_drop"], d["feature"]))


class Bag:
    """Several HistGradientBoostingClassifiers whose log-odds are averaged: ``predict_proba`` is the logistic
    of the members' mean ``decision_function``, so the bag exports as one tree ensemble (:func:`_export`).
    Members differ by ``random_state`` only, which draws scikit-learn's early-stopping holdout (a random 10 %
    of the rows, on above 10,000 rows with ``early_stopping="auto"``) and the features of ``max_features`` < 1:
    each member learns from other rows and stops at its own round. Pitfall: without either, the members
    would be the same model, so :func:`fit` fits one."""

    def __init__(self, members: list):
        self.members = members

    def decision_function(self, x: np.ndarray) -> np.ndarray:
        return np.mean([m.decision_function(x) for m in self.members], axis=0)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        p = 1.0 / (1.0 + np.exp(-self.decision_function(x)))
        return np.column_stack([1.0 - p, p])


def _members_differ(n_rows: int, hyper: dict) -> bool:
    es = hyper.get("early_stopping", "auto")
    return bool(es is True or (es == "auto" and n_rows > 10_000) or hyper.get("max_features", 1.0) < 1.0)


def fit(x: np.ndarray, y: np.ndarray, hyper: dict):
    """scikit-learn's HistGradientBoostingClassifier with ``hyper``, fitted on (x, y); with ``bags`` > 1 in
    ``hyper``, a :class:`Bag` of that many, ``random_state`` + 0, 1, ... (one model when they cannot differ)."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    sk = {k: v for k, v in hyper.items() if k != "bags"}
    bags = int(hyper.get("bags", 1))
    if bags < 1:
        raise TrainError(f"bags must be at least 1, got {bags}")
    if bags == 1 or not _members_differ(len(y), sk):
        return HistGradientBoostingClassifier(**sk).fit(x, y)
    seed = sk.get("random_state") or 0
    return Bag([HistGradientBoostingClassifier(**{**sk, "random_state": seed + k}).fit(x, y) for k in range(bags)])


# --------------------------------------------------------------------------------------------- tuning

# The hyper-parameters `riskstream train` tries on a validation period when none is given on the command line
# (docs/models.md#choosing-the-hyper-parameters): each point overrides DEFAULT_HYPER; the first is the
# defaults themselves. Kept small: every point is one more fit on most of the training rows.
TUNE_GRID: tuple[dict, ...] = (
    {},
    {"max_iter": 300, "learning_rate": 0.05},
    {"max_iter": 300, "learning_rate": 0.05, "max_leaf_nodes": 31},
)
VALIDATION_SHARE = 0.2  # the latest share of the training rows that validates the grid
# the chosen candidate is refitted as a bag of this many models (:class:`Bag`) unless `--bags` says otherwise;
# candidates are validated as single models
TUNE_BAGS = 5


def validation_rows(ts: np.ndarray, tr: np.ndarray, gap_ms: int,
                    share: float = VALIDATION_SHARE) -> tuple[np.ndarray, np.ndarray, dict]:
    """The training rows ``tr`` cut as the whole split is: the latest ``share`` of them by event time
    validate, and the rows before the validation period's start less ``gap_ms`` (the split's own gap, the
    label delay) train. Pitfall: the rows in that inner gap are in neither part, as in production a model
    trained on a day has no labels for the week before it."""
    order = tr[np.argsort(ts[tr], kind="stable")]
    cut = len(order) - max(1, int(round(len(order) * share)))
    val = order[cut:]
    val_from = int(ts[val[0]])
    inner = order[ts[order] < val_from - gap_ms]
    return inner, val, {"share": share, "gap_ms": int(gap_ms), "validation_from": val_from,
                        "validation_until": int(ts[val[-1]]), "validation_rows": int(len(val)),
                        "validation_frauds": None, "fit_rows": int(len(inner)),
                        "fit_until": int(ts[inner[-1]]) if len(inner) else None}


def tune(data: "Dataset", tr: np.ndarray, gap_ms: int, grid: Iterable[dict] = TUNE_GRID, top_k: int = DEFAULT_TOP_K,
         share: float = VALIDATION_SHARE, log: Callable[[str], None] = lambda m: None) -> tuple[dict, dict]:
    """Choose the hyper-parameters on a validation period carved from the end of the training rows
    (:func:`validation_rows`): each grid point is fitted on the rows before it and scored on it, and the
    one with the highest validation average precision wins (the earlier point on a tie). Returns the chosen
    hyper-parameters (DEFAULT_HYPER with the point's overrides; the caller refits them on every training
    row) and the record for the spec and the card. When the parts cannot validate (no fraud or no
    legitimate row in one of them), the defaults are returned and the record says why. The test rows are
    never read."""
    from sklearn.metrics import average_precision_score

    grid = [dict(g) for g in grid]
    inner, val, info = validation_rows(data.ts, tr, gap_ms, share)
    info["validation_frauds"] = int(data.y[val].sum())
    rec = {"criterion": "average_precision", "validation": info, "grid": [], "chosen": None, "skipped": None}
    why = None
    if len(inner) == 0:
        why = "no training row before the validation period less the gap"
    elif len(set(data.y[inner].tolist())) < 2:
        why = "the rows before the validation period hold one class only"
    elif len(set(data.y[val].tolist())) < 2:
        why = "the validation period holds one class only"
    if why:
        rec["skipped"] = why
        log(f"hyper-parameters: the defaults, not searched ({why})")
        return dict(DEFAULT_HYPER), rec
    users = [data.users[i] for i in val] if data.users else None
    log(f"choosing hyper-parameters: {len(grid)} candidates fitted on {len(inner)} rows up to "
        f"{_iso(int(data.ts[inner[-1]]))}, validated on {len(val)} rows from {_iso(info['validation_from'])} "
        f"({info['validation_frauds']} fraud)")
    best = None
    for i, over in enumerate(grid):
        t1 = time.time()
        hyper = {**DEFAULT_HYPER, **over}
        p = fit(data.x[inner], data.y[inner], hyper).predict_proba(data.x[val])[:, 1]
        row = {"hyper_parameters": over, "average_precision": round(float(average_precision_score(data.y[val], p)), 4)}
        if users:
            pk = entity_precision_at_k(p, data.y[val], users, data.ts[val], top_k)["mean"]
            row[f"user_precision_top{top_k}_per_day"] = None if pk is None else round(pk, 4)
        row["seconds"] = round(time.time() - t1, 1)
        rec["grid"].append(row)
        log(f"  {_hyper_text(over)}: validation AP {row['average_precision']:.4f} ({row['seconds']}s)")
        if best is None or row["average_precision"] > rec["grid"][best]["average_precision"]:
            best = i
    rec["chosen"] = best
    log(f"hyper-parameters chosen: {_hyper_text(grid[best])}, refitted on every training row")
    return {**DEFAULT_HYPER, **grid[best]}, rec


def _hyper_text(over: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in over.items()) or "the defaults"


def _export(model, x_sample: np.ndarray) -> bytes:
    """The model as ONNX: one ``TreeEnsembleClassifier`` with a logistic post-transform. A :class:`Bag` is the
    first member's graph with every member's trees in its ensemble, leaf weights and base value divided by
    the member count (the mean of the log-odds), so the job, the scorer and the review's per-feature
    contributions read it as one model."""
    from skl2onnx import to_onnx

    members = model.members if isinstance(model, Bag) else [model]
    onx = [to_onnx(m, x_sample[:1], options={id(m): {"zipmap": False}}, target_opset={"": 17, "ai.onnx.ml": 3})
           for m in members]
    if len(onx) > 1:
        _merge_ensembles(onx)
    return onx[0].SerializeToString()


def _merge_ensembles(onx: list) -> None:
    """Fold the tree ensembles of ``onx[1:]`` into ``onx[0]``'s (in place), each weighed 1 / len(onx)."""
    from onnx import helper

    def ensemble(m):
        nodes = [n for n in m.graph.node if n.op_type == "TreeEnsembleClassifier"]
        if len(nodes) != 1:
            raise TrainError(f"cannot merge a bag: the export has {len(nodes)} tree ensembles")
        return nodes[0], {a.name: helper.get_attribute_value(a) for a in nodes[0].attribute}

    k = len(onx)
    node0, a0 = ensemble(onx[0])
    if (a0.get("post_transform") or b"NONE") not in (b"LOGISTIC", "LOGISTIC") or set(a0["class_ids"]) != {0}:
        raise TrainError("cannot merge a bag: the export is not a single-score logistic tree ensemble")
    node_keys = [n for n in a0 if n.startswith("nodes_")]
    out = {n: [] for n in node_keys + ["class_ids", "class_nodeids", "class_treeids", "class_weights"]}
    base, offset = 0.0, 0
    for m in onx:
        _, a = ensemble(m)
        for n in node_keys:
            out[n] += list(a[n]) if n != "nodes_treeids" else [t + offset for t in a[n]]
        out["class_ids"] += list(a["class_ids"])
        out["class_nodeids"] += list(a["class_nodeids"])
        out["class_treeids"] += [t + offset for t in a["class_treeids"]]
        out["class_weights"] += [w / k for w in a["class_weights"]]
        base += float(a["base_values"][0]) / k
        offset += max(a["nodes_treeids"]) + 1
    out["base_values"] = [base]
    keep = [a for a in node0.attribute if a.name not in out]
    del node0.attribute[:]
    node0.attribute.extend(keep + [helper.make_attribute(n, v) for n, v in out.items()])


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"


def _versions() -> dict:
    import onnx
    import onnxruntime
    import skl2onnx
    import sklearn

    return {"scikit-learn": sklearn.__version__, "skl2onnx": skl2onnx.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__}


def _paths(out_dir: Path, version: str) -> dict[str, Path]:
    return {s: Path(out_dir) / f"{version}.{s}" for s in ("onnx", "json", "md")}


def default_out_dir(version: str) -> Path:
    """Where a trained model goes unless ``--out-dir`` says otherwise: ``<riskstream home>/models/<version>``,
    never beside the shipped models."""
    return paths.home() / "models" / version


def scores_path(out_dir: Path, version: str) -> Path:
    return Path(out_dir) / f"{version}.test_scores.csv"


SCORE_COLUMNS = ("event_id", "ts", "time", "user_id", "device_id", "payment_ref", "event_type", "label", "scenario",
                 "score", "decision", "reasons")


def write_test_scores(path: Path, data: Dataset, te: np.ndarray, p: np.ndarray) -> None:
    """The test rows, one per line in event-time order: ids, time, label, the model's score and the
    policy's decision and reasons (``udfs.policy.Policy()``, no label-feedback signals)."""
    import csv

    from udfs.policy import Policy

    pol = Policy()
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(SCORE_COLUMNS)
        for i, s in zip(te.tolist(), p.tolist()):
            decision, reasons = pol.decide(s, data.x[i].tolist(), data.event_types[i], data.late[i])
            w.writerow([data.event_ids[i], int(data.ts[i]), _iso(int(data.ts[i])), data.users[i], data.devices[i],
                        data.payment_refs[i] or "", data.event_types[i], int(data.y[i]), data.scenario[i],
                        round(s, 6), decision, "|".join(reasons)])


def _check_target(out_dir: Path, version: str, review_budget: float, force: bool) -> None:
    if not _NAME.fullmatch(version):
        raise TrainError(f"version {version!r}: use letters, digits, '.', '_', '-' (it names the files)")
    if not 0 < review_budget < 1:
        raise TrainError(f"review budget {review_budget} must be a share in (0, 1), e.g. 0.01 for 1 %")
    if not force:
        taken = [p.name for p in _paths(out_dir, version).values() if p.exists()]
        if taken:
            raise TrainError(f"model {version} already exists in {out_dir} ({', '.join(taken)}); choose another "
                             "--version or pass --force to overwrite it")


@dataclass
class TrainResult:
    summary: dict  # JSON-able: version, files, metrics, split, trained_on, comparison, seconds
    spec: dict
    data: Dataset
    train_idx: np.ndarray
    test_idx: np.ndarray
    test_scores: np.ndarray  # the exported ONNX model's scores on the held-out rows (test_idx order)


def train_model(data: Dataset, out_dir: Path, version: str, *, review_budget: float = DEFAULT_REVIEW_BUDGET,
                hyper: dict | None = None, compare: Iterable[Path] = (), force: bool = False,
                write_card: bool = True, log: Callable[[str], None] = lambda m: None,
                t0: float | None = None, periods: Periods | None = None, top_k: int = DEFAULT_TOP_K,
                tune_grid: Iterable[dict] | None = None) -> TrainResult:
    """Fit on the training rows of ``data`` (the earliest 80 % by event time, or ``periods``), evaluate the
    exported ONNX model on the test rows, score the same rows with every ``compare`` model, and write
    ``<version>.onnx/.json/.md`` and (with the card) the test rows' scores ``<version>.test_scores.csv``.
    With ``tune_grid`` (``hyper`` must then be None), the hyper-parameters are chosen on a validation period
    at the end of the training rows (:func:`tune`) and refitted on all of them."""
    from udfs.scoring import ModelError, Scorer

    t0 = time.time() if t0 is None else t0
    _check_target(out_dir, version, review_budget, force)
    paths = _paths(out_dir, version)
    compare_scorers = []
    for c in compare:
        try:
            compare_scorers.append(Scorer(c))
        except ModelError as e:
            raise TrainError(f"cannot compare with {c}: {e}") from e
    hyper = dict(hyper or {})
    bags = hyper.pop("bags", None)
    if tune_grid is not None and hyper:
        raise TrainError("hyper-parameters given and a search asked for: give one or the other")
    if bags is not None and (isinstance(bags, bool) or not isinstance(bags, int) or bags < 1):
        raise TrainError(f"--bags must be a whole number of at least 1, got {bags!r}")
    hyper = {**DEFAULT_HYPER, **hyper}

    if top_k < 1:
        raise TrainError(f"--top-k must be at least 1, got {top_k}")
    tr, te, how = split_rows(data.ts, periods)
    log(f"split by event time: train {len(tr)} rows up to {_iso(int(data.ts[tr].max()))}, "
        f"test {len(te)} rows from {_iso(int(data.ts[te].min()))}"
        + (f" ({how['gap_rows']} rows in the {how['gap_ms'] / DAY_MS:g}-day gap)" if how["gap_ms"] else ""))
    search = None
    if tune_grid is not None:
        hyper, search = tune(data, tr, how["gap_ms"], tune_grid, top_k, log=log)
        if bags is None and not search["skipped"]:
            bags = TUNE_BAGS
    if bags is not None and bags > 1:
        hyper["bags"] = bags if _members_differ(len(tr), hyper) else 1
    model = fit(data.x[tr], data.y[tr], hyper)
    p_sk = model.predict_proba(data.x[te])[:, 1]
    onnx_bytes = _export(model, data.x)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = {s: out_dir / f".{version}.tmp{os.getpid()}.{s}" for s in ("onnx", "json")}
    split = {**how, "train_rows": int(len(tr)),
             "test_rows": int(len(te)), "train_ts_min": int(data.ts[tr].min()), "train_ts_max": int(data.ts[tr].max()),
             "test_ts_min": int(data.ts[te].min()), "test_ts_max": int(data.ts[te].max())}
    ents = entity_keys([data.users[i] for i in te], [data.payment_refs[i] for i in te]) if data.users else None
    scen_te = [data.scenario[i] for i in te]
    spec = {"model_version": version, "feature_names": list(FEATURE_NAMES),
            "feature_fingerprint": spec_fingerprint(), "features": spec_json(), "metrics": {},
            "trained_on": data.trained_on, "split": split, "algorithm": "sklearn HGB -> ONNX" if hyper.get("bags", 1) == 1 else
            f"sklearn HGB, mean log-odds of {hyper['bags']} -> ONNX",
            "hyper_parameters": hyper, "libraries": _versions(),
            # what the model saw: `score`, `report` and the job warn when inputs leave it (udfs.drift)
            "training_distribution": drift_reference(data.x[tr], FEATURE_NAMES)}
    if search is not None:
        spec["hyper_parameter_search"] = search
    try:
        tmp["onnx"].write_bytes(onnx_bytes)
        tmp["json"].write_bytes(orjson.dumps(spec, option=orjson.OPT_INDENT_2))
        # the job's own loader: spec checks (names, order, fingerprint) and the ONNX session
        try:
            scorer = Scorer(tmp["onnx"])
        except ModelError as e:
            raise TrainError(f"the exported model fails the job's checks: {e}") from e
        p = scorer.score_batch(data.x[te]).astype(np.float64)
        drift = float(np.max(np.abs(p - p_sk)))
        if drift > MAX_EXPORT_DRIFT:
            raise TrainError(f"ONNX export differs from the trained model by {drift}")
        metrics = evaluate(data.y[te], p, review_budget, scen_te, data.ts[te], ents, top_k)
        metrics = {"roc_auc": metrics.pop("roc_auc"), "average_precision": metrics.pop("average_precision"),
                   "train_rows": int(len(tr)), "test_rows": metrics.pop("test_rows"),
                   "fraud_share": round(float(data.y.mean()), 4), **metrics}
        comparison = [{"model_version": version, "role": "trained", **_headline(metrics)}]
        for s in compare_scorers:
            cm = evaluate(data.y[te], s.score_batch(data.x[te]).astype(np.float64), review_budget, scen_te,
                          data.ts[te], ents, top_k)
            comparison.append({"model_version": s.version, "role": "compared", "model_file": s.path.name,
                               **_headline(cm)})
        metrics["permutation_importance"] = permutation_importance(scorer.score_batch, data.x[te], data.y[te],
                                                                   FEATURE_NAMES)
        spec["metrics"] = metrics
        if compare_scorers:
            spec["comparison"] = {"held_out": "this model's held-out (test) rows",
                                  "models": comparison}
        tmp["json"].write_bytes(orjson.dumps(spec, option=orjson.OPT_INDENT_2))
        if not force and any(paths[s].exists() for s in ("onnx", "json")):
            raise TrainError(f"model {version} appeared in {out_dir} while training; pass --force to overwrite")
        os.replace(tmp["onnx"], paths["onnx"])
        os.replace(tmp["json"], paths["json"])
    finally:
        for t in tmp.values():
            t.unlink(missing_ok=True)
    if write_card:
        paths["md"].write_text(model_card(spec, comparison if compare_scorers else None), encoding="utf-8")
        if data.users:
            write_test_scores(scores_path(out_dir, version), data, te, p)
    files = {s: str(p) for s, p in paths.items() if write_card or s != "md"}
    if write_card and data.users:
        files["test_scores"] = str(scores_path(out_dir, version))
    summary = {"model_version": version, "files": files, "metrics": metrics, "split": split,
               "trained_on": data.trained_on, "hyper_parameters": hyper, "feature_fingerprint": spec_fingerprint(),
               "hyper_parameter_search": search,
               "comparison": comparison, "seconds": round(time.time() - t0, 1)}
    return TrainResult(summary, spec, data, tr, te, p)


def _headline(m: dict) -> dict:
    keep = ("roc_auc", "average_precision", "recall_at_budget", "precision_at_budget", "score_at_budget")
    out = {k: m[k] for k in keep}
    out["at_budgets"] = {f"{b['budget']:g}": {"recall": b["recall"], "precision": b["precision"]}
                         for b in m["at_budgets"]}
    out["at_policy_thresholds"] = {f"{t['threshold']:g}": {k: t[k] for k in ("flagged_share", "recall", "precision")}
                                   for t in m["at_policy_thresholds"]}
    out["recall_by_scenario_at_0.5"] = m.get("recall_by_scenario_at_0.5", {})
    out["precision_at_k_per_day"] = {k: v["mean"] for k, v in m.get("precision_at_k_per_day", {}).items()}
    out["recall_at_budget_by_scenario"] = {k: v["recall"] for k, v in m.get("recall_at_budget_by_scenario", {}).items()}
    return out


# --------------------------------------------------------------------------------------------- reports


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f} %"


def _data_line(t: dict) -> str:
    if t.get("source") == "generator":
        seeds = ", ".join(str(s) for s in t["generator_seeds"])
        src = f"{t['events']} events generated by `riskstream.generator` (seeds {seeds}; one stream per seed"
        src += f", each over {t['generator_days']:g} days with the slow scenarios" if t.get("generator_days") else ""
        src += ", with the fraud rings, households, offices and public wifi)" if t.get("generator_rings") else ")"
    else:
        lab = (f"labels from `{t['labels_file']}` (sha256 {t['labels_sha256'][:16]}…)" if t.get("labels_file")
               else f"labels from its column `{t.get('label_column')}`")
        src = f"{t['records']} records from `{t['events_file']}` (sha256 {t['events_sha256'][:16]}…), {lab}"
        if t.get("mapping"):
            src += " read through a mapping"
        if t.get("order") == "sort":
            src += f", replayed in event-time order ({t.get('out_of_order', 0)} rows were out of order in the file)"
        elif t.get("out_of_order"):
            src += (f", replayed in file order ({t['out_of_order']} rows behind an earlier row's time, "
                    f"{t.get('late', 0)} late for a key)")
    rej = sum(t["rejected"].values())
    lab = ""
    if t.get("label_delay"):
        lab = (f" Fraud labels reached the label features as in the job, never before their arrival: delay "
               f"{t['label_delay']}; {t.get('labels_fed', 0)} labels fed.")
    return (f"{src}. {t['rows']} labelled rows; {rej} records rejected by the job's parser, {t['duplicates']} "
            f"duplicate event ids and {t['unlabelled']} unlabelled events were not training rows.{lab}")


def comparison_table(rows: list[dict], budget: float) -> str:
    b = f"{100 * budget:g} %"
    lines = [f"| model | ROC AUC | average precision | recall @ {b} | precision @ {b} | recall @ 15 % "
             "| score ≥ 0.5: flagged / recall / precision | score ≥ 0.9: flagged / recall / precision |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        t5, t9 = r["at_policy_thresholds"]["0.5"], r["at_policy_thresholds"]["0.9"]
        lines.append(f"| {r['model_version']} | {r['roc_auc']:.4f} | {r['average_precision']:.4f} | "
                     f"{_pct(r['recall_at_budget'])} | {_pct(r['precision_at_budget'])} | "
                     f"{_pct(r['at_budgets']['0.15']['recall'])} | "
                     + " | ".join(" / ".join(_pct(t[k]) for k in ("flagged_share", "recall", "precision"))
                                  for t in (t5, t9)) + " |")
    scen = sorted({k for r in rows for k in r.get("recall_by_scenario_at_0.5", {})})
    if scen:
        lines += ["", "Share of each fraud scenario's held-out events that score ≥ 0.5:", "",
                  "| model | " + " | ".join(scen) + " |", "|---|" + "---|" * len(scen)]
        lines += [f"| {r['model_version']} | " + " | ".join(_pct(r["recall_by_scenario_at_0.5"].get(k)) for k in scen)
                  + " |" for r in rows]
    return "\n".join(lines)


def _reflow(md: str, width: int = 100) -> str:
    """Re-wrap the prose paragraphs and bullets of a Markdown text; headings and tables stay as they are."""
    import textwrap

    out = []
    for block in md.strip("\n").split("\n\n"):
        lines = block.split("\n")
        if lines[0].startswith(("#", "|")):
            out.append(block)
            continue
        items: list[list[str]] = []
        for ln in lines:
            if ln.startswith("- ") or not items:
                items.append([ln])
            else:
                items[-1].append(ln.strip())
        out.append("\n".join(
            textwrap.fill(" ".join(it), width, subsequent_indent="  " if it[0].startswith("- ") else "",
                          break_on_hyphens=False, break_long_words=False) for it in items))
    return "\n\n".join(out) + "\n"


def model_card(spec: dict, comparison: list[dict] | None = None) -> str:
    m, s, t, h = spec["metrics"], spec["split"], spec["trained_on"], spec["hyper_parameters"]
    budget = m["review_budget"]
    curve = "\n".join(f"| {100 * b['budget']:g} % | {b['rows']} | {b['score_threshold']:.6f} | {_pct(b['recall'])} "
                      f"| {_pct(b['precision'])} | {_pct(b['max_recall'])} |" for b in m["at_budgets"])
    thr = "\n".join(f"| ≥ {x['threshold']:g} | {_pct(x['flagged_share'])} | {_pct(x['recall'])} | "
                    f"{_pct(x['precision'])} |" for x in m["at_policy_thresholds"])
    scen = ", ".join(f"{k} {_pct(v)}" for k, v in m.get("recall_by_scenario_at_0.5", {}).items())
    hp = ", ".join(f"{k}={v}" for k, v in h.items() if k != "bags")
    bags = int(h.get("bags", 1))
    learner = (f"scikit-learn\n`HistGradientBoostingClassifier` ({hp})" if bags == 1 else
               f"the mean log-odds of {bags} scikit-learn\n`HistGradientBoostingClassifier` models ({hp}; seeds "
               f"{h.get('random_state') or 0} to {(h.get('random_state') or 0) + bags - 1}, which draw each one's "
               "early-stopping holdout), one tree ensemble")
    out = f"""# Model card: {spec['model_version']}

Gradient-boosted fraud score for the riskstream decision job: {learner}, exported to ONNX
(`{spec['model_version']}.onnx`, opset 17, no zipmap). Its spec `{spec['model_version']}.json` holds the feature names and order, the metrics, the data
and the split. Produced by `riskstream train`.

## Features

{len(spec['feature_names'])} features, fingerprint `{spec['feature_fingerprint']}` (`riskstream features`
lists them). They were computed by `udfs.replay`, the streaming job's own window code, over the events in
arrival order. The job refuses this model if its feature spec has another fingerprint.

## Data

{_data_line(t)} Fraud share of the rows: {_pct(m['fraud_share'])}.

## Split

{_split_text(s)} Every training row is before every held-out row. Held-out rows still carry window state
built from earlier events, as they would in the job, and a fraud session that spans the cut has events
on both sides.
{_search_text(spec.get("hyper_parameter_search"), h)}
## Metrics on the held-out part

- ROC AUC {m['roc_auc']:.4f}, average precision {m['average_precision']:.4f}; fraud share
  {_pct(m['test_fraud_share'])} of {m['test_rows']} rows.
- Review budget {100 * budget:g} % (the top {m['budget_rows']} rows by score, score ≥
  {m['score_at_budget']:.6f}): recall {_pct(m['recall_at_budget'])}, precision
  {_pct(m['precision_at_budget'])}. With this fraud share, no model can find more than
  {_pct(m['max_recall_at_budget'])} of the fraud in {100 * budget:g} % of the events.

| review budget | rows | score ≥ | recall | precision | best possible recall |
|---|---|---|---|---|---|
{curve}

Rows tied with the last reviewed score count at their average fraud rate.

At the policy's thresholds (`udfs/policy.py`: review at 0.5, block at 0.9; rules not included):

| score | flagged | recall | precision |
|---|---|---|---|
{thr}

Share of each fraud scenario's held-out events that score ≥ 0.5: {scen or '-'}.
{_fraud_team_text(m)}"""
    out += _importances_text(m)
    if comparison:
        out += f"""
## Comparison on the same held-out rows

Every model below scored this model's held-out rows.

{comparison_table(comparison, budget)}
"""
    out += """
## Intended use

A score per event in the riskstream decision job (`--model-path`), combined with the policy's
thresholds and rules, and a champion/challenger comparison against other models trained on the same
feature spec.

## Limits

{data_limit}
{DRIFT_LIMIT}- The metrics use event-level labels. A fraud session is many events, and catching its first event
  matters more than catching the later ones; the event-level figures do not reflect that.
- Probabilities reflect the training data's fraud share; a change of base rate moves them, and with it
  the policy thresholds' meaning.
- Valid only for feature fingerprint `{fp}`; the job refuses it under any other feature spec.
""".replace("{fp}", spec["feature_fingerprint"]).replace("{data_limit}", _data_limit(t)).replace(
        "{DRIFT_LIMIT}", DRIFT_LIMIT)
    if h.get("class_weight"):
        out += (f"- Trained with class_weight={h['class_weight']}: fraud rows weigh more than their share, so "
                "scores overstate the probability of fraud and more events pass the policy's thresholds; compare "
                "models by ranking (ROC AUC, average precision, budget) and at the thresholds, not by score.\n")
    if abs(m["test_fraud_share"] - m["fraud_share"]) >= 0.02:
        out += (f"- The held-out part's fraud share ({_pct(m['test_fraud_share'])}) differs from the whole "
                f"data's ({_pct(m['fraud_share'])}): the latest events of a finite history are the tails of "
                "the longest sessions, and the generator's fraud sessions are longer than normal ones.\n")
    return _reflow(out)


DRIFT_LIMIT = """- Inputs unlike the training rows make the scores unreliable: the spec stores each feature's training
  distribution, and `riskstream score`, `riskstream report` and the job (gauges `drift_psi_max_milli`,
  `drift_features`, a log line) warn, naming the features, when inputs leave it (`udfs/drift.py`).
"""


def _importances_text(m: dict) -> str:
    """The card's "Feature importances" section ("" without importances)."""
    imp = m.get("permutation_importance") or []
    if not imp:
        return ""
    rows = "\n".join(f"| {d['feature']} | {d['ap_drop']:+.4f} |" for d in imp[:15])
    unused = [d["feature"] for d in imp if abs(d["ap_drop"]) < 0.0005]
    return f"""
## Feature importances

Drop in held-out average precision when one feature's values are shuffled (permutation importance, one
seeded permutation); the 15 largest:

| feature | AP drop |
|---|---|
{rows}

{len(unused)} of {len(imp)} features change AP by less than 0.0005 when shuffled.
"""


def card_with_importances(md: str, spec: dict) -> str:
    """An existing card (hand-written sections kept) with the importances section and the drift limit
    added, if it lacks them."""
    if "## Feature importances" not in md:
        sec = _reflow(_importances_text(spec["metrics"]))
        at = next((md.index(h) for h in ("\n## Comparison on the same held-out rows", "\n## Intended use") if h in md),
                  len(md))
        md = md[:at] + "\n" + sec.strip("\n") + "\n" + md[at:]
    if "udfs/drift.py" not in md and "\n## Limits\n\n" in md:
        md = md.replace("\n## Limits\n\n", "\n## Limits\n\n" + _reflow(DRIFT_LIMIT).strip("\n") + "\n", 1)
    return md


def _data_limit(t: dict) -> str:
    """The Limits bullet on the data the model was trained on, as recorded in ``trained_on``."""
    if t.get("source") == "generator":
        return ("- Trained and evaluated on synthetic traffic from `riskstream.generator` (scripted fraud "
                "scenarios and a simple model of normal shoppers). The figures show that the pipeline works end "
                "to end; they do not predict performance on real fraud, where fraud is rarer, adapts, and labels "
                "arrive late and incompletely.")
    what = f"`{t['events_file']}`" if t.get("events_file") else "the history described under Data"
    return (f"- Trained and evaluated on {what} only (see Data: its period, labels and label delay). The "
            "figures hold for traffic like that history; another shop, period or fraud pattern needs its own "
            "evaluation, and labels that arrive later or less completely than in this history change them.")


def _search_text(search: dict | None, chosen: dict) -> str:
    """The card's section on how the hyper-parameters were chosen (empty when they were given)."""
    if not search:
        return ""
    v = search["validation"]
    gap = v["gap_ms"]
    g = f"{gap / DAY_MS:g} days" if gap % 3_600_000 == 0 else f"{gap} ms"
    if search.get("skipped"):
        return (f"\n## Hyper-parameters\n\nThe defaults, not searched: {search['skipped']} (validation period: the "
                f"latest {100 * v['share']:g} % of the training rows, {v['validation_rows']} rows from "
                f"{_iso(v['validation_from'])}).\n")
    keys = [k for k in search["grid"][0] if k.startswith("user_precision")]
    head = "| candidate | validation AP |" + "".join(f" validation {k.replace('_', ' ')} |" for k in keys)
    rows = []
    for i, r in enumerate(search["grid"]):
        mark = " (chosen)" if i == search["chosen"] else ""
        rows.append(f"| {_hyper_text(r['hyper_parameters'])}{mark} | {r['average_precision']:.4f} |"
                    + "".join(f" {_pct(r[k])} |" for k in keys))
    return f"""
## Hyper-parameters

Chosen by `riskstream train` on a validation period carved from the end of the training period, never
from the test rows: the latest {100 * v['share']:g} % of the training rows ({v['validation_rows']} rows,
{v['validation_frauds']} fraud, {_iso(v['validation_from'])} to {_iso(v['validation_until'])}) validated
each candidate, fitted on the {v['fit_rows']} training rows before that period less the split's gap of
{g} (the rows in that gap are in neither part, as labels arrive late). The candidate with the highest
validation average precision was refitted on every training row:
{_hyper_text({k: x for k, x in chosen.items() if DEFAULT_HYPER.get(k) != x}) }.

{head}
|---|---|{"---|" * len(keys)}
""" + "\n".join(rows) + "\n"


def _split_text(s: dict) -> str:
    gap = s.get("gap_ms") or 0
    g = f"{gap / DAY_MS:g} days" if gap % 3_600_000 == 0 else f"{gap} ms"
    if s.get("method") == "periods":
        lo = "the start" if s.get("train_from") is None else _iso(s["train_from"])
        hi = "the end" if s.get("test_until") is None else _iso(s["test_until"])
        txt = (f"By dates: training period {lo} to {_iso(s['train_until'])} ({s['train_rows']} rows, "
               f"{_iso(s['train_ts_min'])} to {_iso(s['train_ts_max'])}), a gap of {g} ({s['gap_rows']} rows, "
               f"neither trained on nor evaluated), test period {_iso(s['test_from'])} to {hi} "
               f"({s['test_rows']} rows, {_iso(s['test_ts_min'])} to {_iso(s['test_ts_max'])}).")
        if s.get("outside_rows"):
            txt += f" {s['outside_rows']} rows fall outside the periods."
        return txt
    share = s["train_share"]
    txt = (f"By event time, not at random: the earliest {100 * share:g} % of the rows by `ts` train "
           f"({s['train_rows']} rows, {_iso(s['train_ts_min'])} to {_iso(s['train_ts_max'])}), the rest are "
           f"held out ({s['test_rows']} rows, {_iso(s['test_ts_min'])} to {_iso(s['test_ts_max'])}).")
    if gap:
        txt += (f" A gap of {g} after the last training row: {s['gap_rows']} rows in it are neither trained on "
                "nor evaluated.")
    return txt


def _fraud_team_text(m: dict) -> str:
    """The card's section on what fraud teams measure: entity precision top-k per day, recall at the
    review budget per scenario."""
    out = ""
    pk = m.get("precision_at_k_per_day") or {}
    if pk:
        k = m["top_k"]
        out += f"""
## Precision top-{k} per day

Per UTC day of the held-out part, each entity gets its highest score of the day; the {k} highest-scored
entities are reviewed and the day's precision is the share of them that had fraud that day (divided by
{k} even on a day with fewer entities). Entities found in an earlier day's top {k} are left out of later
days. This is the Fraud Detection Handbook's "card precision top-k" (Le Borgne et al.).

| entity | days | mean precision top-{k} |
|---|---|---|
""" + "\n".join(f"| {kind} | {v['days']} | {_pct(v['mean'])} |" for kind, v in pk.items()) + "\n"
        first = next(iter(pk.values()))
        if first["per_day"] and len(first["per_day"]) <= 62:
            kinds = list(pk)
            out += ("\n| day | " + " | ".join(f"{kd}: entities / with fraud / precision" for kd in kinds) + " |\n"
                    + "|---|" + "---|" * len(kinds) + "\n")
            for i, d in enumerate(first["per_day"]):
                cells = []
                for kd in kinds:
                    x = pk[kd]["per_day"][i]
                    cells.append(f"{x['entities']} / {x['fraud_entities']} / {_pct(x['precision'])}")
                out += f"| {d['day']} | " + " | ".join(cells) + " |\n"
    rb = m.get("recall_at_budget_by_scenario") or {}
    if rb:
        out += (f"""
## Recall at the review budget per fraud scenario

The share of each scenario's held-out fraud events among the top {100 * m['review_budget']:g} % of all
held-out events by score (ties at their expected value).

| scenario | fraud events | recall @ {100 * m['review_budget']:g} % |
|---|---|---|
""" + "\n".join(f"| {k} | {v['fraud_events']} | {_pct(v['recall'])} |" for k, v in rb.items()) + "\n")
    return out


def render(summary: dict) -> str:
    m, s, t = summary["metrics"], summary["split"], summary["trained_on"]
    b = m["review_budget"]
    lines = [f"[train] {summary['model_version']}: {_data_line(t)}",
             f"[train] split by event time: train {s['train_rows']} rows up to {_iso(s['train_ts_max'])}, "
             f"test {s['test_rows']} rows from {_iso(s['test_ts_min'])} (fraud {_pct(m['test_fraud_share'])})",
             f"{'model':<24} {'ROC AUC':>8} {'avg prec':>9} {f'recall@{100 * b:g}%':>12} "
             f"{f'prec@{100 * b:g}%':>10} {'recall@15%':>11} {'recall@0.5':>11} {'prec@0.5':>9}"]
    for r in summary["comparison"]:
        t5 = r["at_policy_thresholds"]["0.5"]
        lines.append(f"{r['model_version']:<24} {r['roc_auc']:>8.4f} {r['average_precision']:>9.4f} "
                     f"{_pct(r['recall_at_budget']):>12} {_pct(r['precision_at_budget']):>10} "
                     f"{_pct(r['at_budgets']['0.15']['recall']):>11} {_pct(t5['recall']):>11} "
                     f"{_pct(t5['precision']):>9}")
    hs = summary.get("hyper_parameter_search")
    if hs and not hs.get("skipped"):
        r = hs["grid"][hs["chosen"]]
        lines.append(f"[train] hyper-parameters chosen on the validation period ({hs['validation']['validation_rows']} "
                     f"rows): {_hyper_text(r['hyper_parameters'])}, validation AP {r['average_precision']:.4f} "
                     f"(best of {len(hs['grid'])})")
    elif hs:
        lines.append(f"[train] hyper-parameters: the defaults, not searched ({hs['skipped']})")
    lines.append(f"[train] at most {_pct(m['max_recall_at_budget'])} of the held-out fraud fits in a "
                 f"{100 * b:g} % review budget at this fraud share")
    for kind, v in (m.get("precision_at_k_per_day") or {}).items():
        lines.append(f"[train] {kind} precision top-{v['k']} per day: {_pct(v['mean'])} (mean of {v['days']} days)")
    rb = m.get("recall_at_budget_by_scenario") or {}
    if rb:
        lines.append(f"[train] recall @ {100 * b:g}% per scenario: "
                     + ", ".join(f"{k} {_pct(v['recall'])}" for k, v in rb.items()))
    lines.append(f"[train] wrote {', '.join(summary['files'].values())} in {summary['seconds']}s")
    return "\n".join(lines)


def run(*, events: Path | None = None, labels: Path | None = None, generate: int | None = None,
        seeds: Iterable[int] = DEFAULT_SEEDS, version: str, out_dir: Path | None = None,
        review_budget: float = DEFAULT_REVIEW_BUDGET, hyper: dict | None = None, compare: Iterable[Path] = (),
        force: bool = False, log: Callable[[str], None] = lambda m: None, mapping: Mapping | None = None,
        order: str = "file", max_reject_share: float = DEFAULT_MAX_REJECT_SHARE, rejects_path: Path | None = None,
        periods: Periods | None = None, top_k: int = DEFAULT_TOP_K, days: float | None = None,
        label_delay: int | str | None = None, cache_dir: Path | None = None, tune: bool | None = None,
        rings: bool = False) -> TrainResult:
    """The ``riskstream train`` command without its argument parsing and printing. ``out_dir`` defaults to
    :func:`default_out_dir` (under the riskstream home, never beside the shipped models). ``tune``: choose
    the hyper-parameters from :data:`TUNE_GRID` on a validation period (:func:`tune`); None (the command's
    default) searches when ``hyper`` is empty and uses ``hyper`` as given otherwise."""
    t0 = time.time()
    compare = list(compare)
    given = {k: v for k, v in (hyper or {}).items() if k != "bags"}  # --bags is not searched: it goes with either
    if tune and given:
        raise TrainError("--tune searches the hyper-parameters: drop --max-iter, --learning-rate, --max-leaf-nodes "
                         "and --class-weight, or drop --tune")
    search = not given if tune is None else tune
    bags = (hyper or {}).get("bags")
    if bags is not None and (isinstance(bags, bool) or not isinstance(bags, int) or bags < 1):
        raise TrainError(f"--bags must be a whole number of at least 1, got {bags!r}")  # before the replay
    if (events is None) == (generate is None):
        raise TrainError("give either --events FILE (with --labels FILE or a label column) or --generate N")
    if events is not None and labels is None and (mapping is None or not mapping.label_column):
        raise TrainError("--events needs labels: --labels FILE (JSON lines with event_id and fraud) or a label "
                         "column in the mapping (--label-column)")
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir(version)
    _check_target(out_dir, version, review_budget, force)  # fail before the (long) feature replay
    for c in compare:
        if not Path(c).is_file():
            raise TrainError(f"--compare {c}: no such model file")
    log("computing features with the job's replay (udfs.replay) ...")
    if events is not None:
        data = file_dataset(events, labels, mapping=mapping, order=order, max_reject_share=max_reject_share,
                            rejects_path=rejects_path if rejects_path is not None
                            else out_dir / f"{version}.rejects.jsonl", log=log, label_delay=label_delay,
                            cache_dir=cache_dir)
    else:
        data = generated_dataset(generate, seeds, days=days, label_delay=label_delay, rings=rings)
    return train_model(data, out_dir, version, review_budget=review_budget, hyper=hyper, compare=compare,
                       force=force, log=log, t0=t0, periods=periods, top_k=top_k,
                       tune_grid=TUNE_GRID if search else None)


# --------------------------------------------------------------------------------------------- legacy entry


def train(n_events: int, out: Path, version: str, seeds: list[int], max_iter: int = 100) -> dict:
    """The original entry point: generated traffic, writes ``<out>.onnx`` and ``<out>.json`` (overwriting),
    returns the held-out metrics plus ``seconds``. Same data, split and model as before."""
    t0 = time.time()
    out = Path(out)
    data = generated_dataset(n_events, seeds)
    res = train_model(data, out.parent, out.name, hyper={"max_iter": max_iter}, force=True, write_card=False,
                      t0=t0) if out.name == version else _train_renamed(data, out, version, max_iter, t0)
    return {**res.summary["metrics"], "seconds": res.summary["seconds"]}


def _train_renamed(data: Dataset, out: Path, version: str, max_iter: int, t0: float) -> TrainResult:
    """``--out`` stem differs from ``--version``: train under the version name in a scratch folder, then
    move the two files to the requested stem."""
    import tempfile

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as td:
        res = train_model(data, Path(td), version, hyper={"max_iter": max_iter}, force=True, write_card=False, t0=t0)
        for s in ("onnx", "json"):
            os.replace(Path(td) / f"{version}.{s}", out.with_suffix(f".{s}"))
    res.summary["files"] = {s: str(out.with_suffix(f".{s}")) for s in ("onnx", "json")}
    return res


def add_training_distribution(spec_path: Path, log: Callable[[str], None] = lambda m: None) -> dict:
    """Write ``training_distribution`` and the held-out permutation importances into the spec of a model
    trained on generated traffic before specs had them, and render its card again: its rows are generated
    again from ``trained_on`` and must match the recorded split (row count and time range), and the model
    must score the held-out rows to the recorded average precision, or nothing is written."""
    from sklearn.metrics import average_precision_score

    from udfs.scoring import Scorer

    spec_path = Path(spec_path)
    spec = orjson.loads(spec_path.read_bytes())
    t = spec.get("trained_on", {})
    if t.get("source") != "generator":
        raise TrainError(f"{spec_path}: trained on {t.get('source')!r} data; retrain it to get its distribution")
    data = generated_dataset(int(t["events"]), t["generator_seeds"], t.get("generator_fraud_share"),
                             t.get("generator_days"), rings=bool(t.get("generator_rings")))
    tr, te, _ = split_rows(data.ts, None)
    got = {"train_rows": int(len(tr)), "train_ts_min": int(data.ts[tr].min()), "train_ts_max": int(data.ts[tr].max())}
    want = {k: spec["split"].get(k) for k in got}
    if got != want:
        raise TrainError(f"{spec_path}: the regenerated training rows differ from the recorded split ({got} != {want})")
    scorer = Scorer(spec_path.with_suffix(".onnx"))
    ap = round(float(average_precision_score(data.y[te], scorer.score_batch(data.x[te]))), 4)
    if ap != spec["metrics"]["average_precision"]:
        raise TrainError(f"{spec_path}: the model scores the regenerated held-out rows to AP {ap}, not the "
                         f"recorded {spec['metrics']['average_precision']}")
    spec["training_distribution"] = drift_reference(data.x[tr], spec["feature_names"])
    spec["metrics"]["permutation_importance"] = permutation_importance(scorer.score_batch, data.x[te], data.y[te],
                                                                       spec["feature_names"])
    spec_path.write_bytes(orjson.dumps(spec, option=orjson.OPT_INDENT_2))
    card = spec_path.with_suffix(".md")
    if card.exists():
        card.write_text(card_with_importances(card.read_text(encoding="utf-8"), spec), encoding="utf-8")
    log(f"{spec_path}: training distribution of {len(tr)} rows and the importances on {len(te)} held-out rows "
        "written" + (f"; {card} rendered again" if card.exists() else ""))
    return spec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--add-distribution", type=Path, metavar="SPEC_JSON",
                    help="write the training distribution into a generated-data model's spec (and stop)")
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--seeds", default="101,102,103,104")
    ap.add_argument("--out", type=Path, default=HERE / "risk_gbdt_v1")
    ap.add_argument("--version", default="risk_gbdt_v1")
    ap.add_argument("--max-iter", type=int, default=100)
    a = ap.parse_args(argv)
    if a.add_distribution:
        try:
            add_training_distribution(a.add_distribution, log=lambda m: print(m, file=sys.stderr))
        except TrainError as e:
            raise SystemExit(f"models.train: {e}")
        return 0
    try:
        metrics = train(a.events, a.out, a.version, [int(s) for s in a.seeds.split(",")], a.max_iter)
    except TrainError as e:
        raise SystemExit(f"models.train: {e}")
    print(orjson.dumps(metrics).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
