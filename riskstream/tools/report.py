"""`riskstream report`: what a risk analyst opens on Monday morning.

One self-contained HTML file (inline CSS and SVG, no external resources) about a set of decision records,
judged against the generator's ground-truth labels:

- headline figures: events decided, labelled fraud share, block / review / allow rates, catch rate
  (fraud reviewed or blocked / fraud), false-positive rate (legitimate events reviewed or blocked /
  legitimate events), ROC AUC, average precision, and precision and recall at the review budget by score;
- per scenario: events, caught, blocked, catch rate;
- score distributions by label, decision rates over time, latency (from the records' ``latency_ms``, else
  from the event's broker arrival ``arrived_at`` to ``decided_at``, else from the event's own time);
- champion vs challenger when records carry ``shadow`` (the challenger's score and the decision it would
  have made, never acted on);
- rules (``rule:<code>`` reasons, ``rules_version``) and the model versions seen (a hot reload shows two);
- per arm of a traffic split when records carry ``arm`` (``udfs.split``): decision rates, catch and
  false-positive rates on the labelled events, approved amount, review load per day, each with a 95 %
  interval by user (the split's unit), every other arm against the champion (difference and its interval)
  and a verdict line.

The module is pure apart from the readers at the end: :func:`build_report` computes every figure (numpy),
:func:`render_html` draws them.

The definitions of the figures are in ``DEFINITIONS`` below (the report prints them; the tests pin each
one against a brute-force computation).
"""

from __future__ import annotations

import math
import time
from collections import Counter, defaultdict
from datetime import datetime, timezone
from html import escape
from pathlib import Path
from typing import Iterable

import numpy as np
import orjson

from udfs.ingest import parse_label

from ..generator import ALL_SCENARIOS, MALFORMED, NORMAL
from ..metrics import (ClusterSums, at_budget, average_precision, cluster_diff_interval, cluster_wilson,
                       entity_precision_at_k, percentile, recall_at_budget_by_group, roc_auc, roc_curve)

DEFINITIONS = (
    "An event is its (user_id, event_id): ids are per user. A record is labelled when its event has a label with "
    "a fraud field (a label without a user_id stands for its event_id under any user). Unlabelled events count "
    "in the decision rates but in no label metric, and are reported as unlabelled.",
    "Several records for one event: the first one read counts, the rest are duplicate decisions.",
    "Catch rate: fraud events reviewed or blocked / fraud events. False-positive rate: legitimate events reviewed "
    "or blocked / legitimate events.",
    "Score metrics use labelled events with a numeric score (the job's processing_error records have a null score "
    "and are reported as unscored).",
    "ROC AUC is the Mann-Whitney statistic: the probability that a random fraud event scores above a random "
    "legitimate one, ties counting one half.",
    "Average precision is the mean, over fraud events, of the precision at that event's score taken as the "
    "threshold (tied scores form one threshold): scikit-learn's step-wise definition.",
    "At the review budget b, the k = floor(b x n) (at least 1) highest-scored of the n labelled scored events "
    "are reviewed. "
    "Events tied with the k-th score are taken at random, so true positives are their expected number: fraud "
    "above the k-th score + (k - events above) x fraud share among the tied. Precision = true positives / k, "
    "recall = true positives / fraud.",
    "Champion vs challenger compares both models' scores on the same events: those labelled, with both scores. "
    "Decision figures (catch rate, agreement) use every record with a shadow decision.",
    "Precision top-k per day (the Fraud Detection Handbook's card precision top-k): per UTC day of the event time, "
    "each entity (user; payment instrument when the records carry payment_ref, a record without one counting as "
    "its user) gets its highest score of the day; the k highest-scored entities are reviewed, and the day's "
    "precision is those with a fraud event that day / k. Entities found in an earlier day's top k are left out "
    "of later days. The figure is the mean over days; ties at the k-th score count at their expected value.",
    "Recall at the review budget per scenario: the share of a fraud scenario's events among the budget's top k "
    "events by score (the same k and cut as above).",
    "Traffic split: records that carry an arm are compared by arm over the same period. A split assigns users "
    "(the split key), not events, and a user's events are not independent (fraud comes in bursts from one "
    "user), so every interval takes the user as the unit: a rate is the arm's events that count / its events, "
    "with Wilson's interval on the effective sample size (events / design effect, the cluster-robust variance "
    "over users against the binomial one, at least 1; narrowed for few users by Student's t); an arm against "
    "the champion is the difference of the two rates (arm minus champion, in percentage points) +- t x its "
    "cluster-robust standard error, each arm's variance at least the pooled one, t on Welch-Satterthwaite "
    "degrees of freedom. All at 95 %. A difference whose interval excludes 0 is called "
    "significant. Approved amount: the amount of the events the arm allowed. Review load per day: the arm's "
    "review decisions / the days of the period (UTC days of the event time with any decided event); at full "
    "traffic: the arm's review rate x every arm's events / days, what it would send to review if it took all "
    "traffic. Catch rate and false-positive rate use only the arm's labelled events (labels arrive late: the "
    "report says how many are labelled per arm).",
    "Without a labels file, records that carry their own label (as `riskstream score` writes with a label column) "
    "are judged by it.",
)
KINDS = ("allow", "review", "block")
FLAGGED = ("review", "block")
NONE = "(none)"
SCORE_BINS = 20
TIMELINE_MAX_BUCKETS = 60
_NICE_WIDTHS_MS = (1_000, 2_000, 5_000, 10_000, 15_000, 30_000, 60_000, 120_000, 300_000, 600_000, 900_000,
                   1_800_000, 3_600_000, 7_200_000, 10_800_000, 21_600_000, 43_200_000, 86_400_000,
                   172_800_000, 604_800_000, 1_209_600_000, 2_592_000_000)
LATENCY_NOTE_ARRIVAL = ("decided_at minus the event's arrival at the broker (arrived_at, the events topic's "
                        "append time): the job's own delay, including the wait in the input topic")
LATENCY_NOTE_EVENT_TIME = ("decided_at minus the event's own time (event_ts): includes delivery delay, and for "
                           "a replay or backfill the age of the replayed events")


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def _score(v) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _int(v) -> int | None:
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _fraud_of(label: dict | None) -> bool | None:
    """The label's fraud value: true/false, 0/1 or yes/no; None when absent or unreadable."""
    if not label or "fraud" not in label:
        return None
    try:
        return parse_label(label["fraud"])
    except ValueError:
        return None


def _ident(r: dict) -> tuple[str | None, str]:
    """An event's identity, ``(user_id, event_id)``: ids are per user (docs/contracts.md), so the same id
    under two users is two events. ``user_id`` is None when the record does not name one (a labels file
    keyed by event id only: its label then stands for that id under any user)."""
    u = r.get("user_id")
    return (u if isinstance(u, str) else None, r["event_id"])


def _index_labels(labels: dict) -> dict[tuple[str | None, str], dict]:
    """Labels keyed by :func:`_ident`, from a mapping keyed by event id or already by identity."""
    out: dict[tuple[str | None, str], dict] = {}
    for k, lb in labels.items():
        if isinstance(lb, dict) and isinstance(lb.get("event_id"), str):
            out.setdefault(_ident(lb), lb)
        elif isinstance(k, tuple):
            out.setdefault(k, lb)
        elif isinstance(k, str):
            out.setdefault((None, k), lb)
    return out


def _label_for(labels: dict, key: tuple[str | None, str]) -> dict | None:
    """The label of the event ``key`` (indexed labels): its user's, else one naming no user."""
    lb = labels.get(key)
    return lb if lb is not None or key[0] is None else labels.get((None, key[1]))


def labels_from_records(decisions: list[dict]) -> dict[tuple[str | None, str], dict]:
    """Labels carried by the records themselves (``label``, ``scenario``: `riskstream score` with a label
    column), for a report without a labels file; keyed by :func:`_ident`."""
    out = {}
    for d in decisions:
        if isinstance(d, dict) and isinstance(d.get("event_id"), str) and d.get("label") is not None:
            out.setdefault(_ident(d), {"event_id": d["event_id"], "user_id": _ident(d)[0], "fraud": d["label"],
                                       "scenario": d.get("scenario")})
    return out


def _fraud_team(labelled: list[dict], lab: dict, labels: dict, budget: float, top_k: int) -> dict:
    """Precision top-k per day per entity kind, and recall at the review budget per fraud scenario."""
    rows = [(d, s) for d in labelled if (s := _score(d.get("score"))) is not None]
    out = {"top_k": top_k, "precision_at_k_per_day": {}, "recall_at_budget_by_scenario": {}}
    timed = [(d, s, t) for d, s in rows if (t := _int(d.get("event_ts", d.get("ts")))) is not None]
    if timed:
        kinds = {"user": [str(d.get("user_id")) for d, _, _ in timed]}
        if any(d.get("payment_ref") for d, _, _ in timed):
            kinds["payment_ref"] = [d["payment_ref"] if d.get("payment_ref") else f"user:{d.get('user_id')}"
                                    for d, _, _ in timed]
        for kind, keys in kinds.items():
            out["precision_at_k_per_day"][kind] = entity_precision_at_k(
                [s for _, s, _ in timed], [lab[_ident(d)] for d, _, _ in timed], keys,
                [t for _, _, t in timed], top_k)
    if rows:
        scen = [_label_for(labels, _ident(d)).get("scenario") or ("fraud" if lab[_ident(d)] else NORMAL) for d, _ in rows]
        out["recall_at_budget_by_scenario"] = recall_at_budget_by_group(
            [s for _, s in rows], [lab[_ident(d)] for d, _ in rows], scen, budget)
    return out


def _scenario_order(names: Iterable[str]) -> list[str]:
    known = [*ALL_SCENARIOS, NORMAL, MALFORMED]
    names = set(names)
    return [n for n in known if n in names] + sorted(names - set(known))


def _score_metrics(scores: list[float], y: list[bool], budget: float) -> dict:
    ab = at_budget(scores, y, budget)
    return {"events": len(scores), "fraud": int(sum(y)), "roc_auc": roc_auc(scores, y),
            "average_precision": average_precision(scores, y), "at_budget": ab,
            "precision_at_budget": ab["precision"], "recall_at_budget": ab["recall"],
            "roc": roc_curve(scores, y)}


def _timeline(decisions: list[dict], field: str) -> dict:
    pts = [(t, d.get("decision")) for d in decisions if (t := _int(d.get(field))) is not None]
    out = {"field": field, "bucket_ms": None, "buckets": [], "without_time": len(decisions) - len(pts)}
    if not pts:
        return out
    lo, hi = min(t for t, _ in pts), max(t for t, _ in pts)
    span = hi - lo + 1
    width = next((w for w in _NICE_WIDTHS_MS if span / w <= TIMELINE_MAX_BUCKETS), None)
    if width is None:
        width = math.ceil(span / TIMELINE_MAX_BUCKETS / 86_400_000) * 86_400_000
    first = lo // width * width
    nb = (hi - first) // width + 1
    counts = [Counter() for _ in range(nb)]
    for t, kind in pts:
        counts[(t - first) // width][kind] += 1
    out["bucket_ms"] = width
    out["buckets"] = [{"start": first + i * width, **{k: c.get(k, 0) for k in KINDS},
                       "other": sum(v for k, v in c.items() if k not in KINDS)} for i, c in enumerate(counts)]
    return out


def _latency(decisions: list[dict]) -> dict:
    """From the first source the records carry: ``latency_ms``; ``decided_at - arrived_at`` (the job's records);
    ``decided_at - event_ts`` (records without an arrival time: in a demo over generated past events that is
    the events' age, not latency). Only the records carrying the chosen source count (``n``)."""
    field = [v for d in decisions if (v := _score(d.get("latency_ms"))) is not None]
    arrived = [float(t - a) for d in decisions
               if (t := _int(d.get("decided_at"))) is not None and (a := _int(d.get("arrived_at"))) is not None]
    if field:
        xs, source, note = field, "latency_ms", "the records' own latency_ms field"
    elif arrived:
        xs, source, note = arrived, "decided_at-arrived_at", LATENCY_NOTE_ARRIVAL
    else:
        xs = [float(d["decided_at"] - d["event_ts"]) for d in decisions
              if _int(d.get("decided_at")) is not None and _int(d.get("event_ts")) is not None]
        source, note = "decided_at-event_ts", LATENCY_NOTE_EVENT_TIME
    out = {"source": source, "note": note, "n": len(xs), "p50": percentile(xs, 0.5), "p99": percentile(xs, 0.99),
           "max": percentile(xs, 1.0), "negative": sum(1 for x in xs if x < 0), "hist": None}
    pos = [x for x in xs if x >= 0]
    if pos:
        # log-like bins with readable edges (1, 1.5, 2, 3, 5, 7 x 10^d ms) spanning just the data
        ladder = [m * 10 ** d / 10 for d in range(16) for m in (10, 15, 20, 30, 50, 70)]
        lo, hi = min(pos), max(pos)
        edges = [e for e in ladder if e <= hi]
        edges = [e for e in edges if e >= max((e2 for e2 in edges if e2 <= lo), default=0.0)]
        if lo < 1.0:
            edges = [0.0, *edges]
        edges.append(next(e for e in ladder if e > hi))
        counts, _ = np.histogram(np.asarray(pos), bins=np.asarray(edges))
        out["hist"] = {"edges": edges, "counts": [int(c) for c in counts]}
    return out


def build_report(decisions: list[dict], labels: dict[str, dict], budget: float = 0.01,
                 time_field: str = "event_ts", top_k: int = 100, split_key: str = "user") -> dict:
    """Every figure of the report, from decision records and labels by event identity (``(user_id,
    event_id)``; labels keyed by event id alone are accepted) (pure). Without labels,
    the records' own ``label`` fields (if any) are used. ``split_key``: what a traffic split in the records
    was keyed by (:func:`arm_figures`)."""
    if not 0 <= budget <= 1:
        raise ValueError(f"review budget must be a share in [0, 1], got {budget}")
    labels = _index_labels(labels) if labels else labels_from_records(decisions)
    seen: dict[tuple[str | None, str], dict] = {}
    dup = 0
    malformed_records = 0
    for d in decisions:
        if not isinstance(d, dict) or not isinstance(d.get("event_id"), str):
            malformed_records += 1
            continue
        if _ident(d) in seen:
            dup += 1
            continue
        seen[_ident(d)] = d
    recs = list(seen.values())
    n = len(recs)
    kinds = Counter(d.get("decision") for d in recs)
    lab = {k: _fraud_of(_label_for(labels, k)) for k in seen}
    seen_ids = {k[1] for k in seen}
    labelled = [d for d in recs if lab[_ident(d)] is not None]
    fraud = [d for d in labelled if lab[_ident(d)]]
    legit = [d for d in labelled if not lab[_ident(d)]]
    caught = sum(1 for d in fraud if d.get("decision") in FLAGGED)
    false_pos = sum(1 for d in legit if d.get("decision") in FLAGGED)

    scored = [(s, lab[_ident(d)]) for d in labelled if (s := _score(d.get("score"))) is not None]
    champ = _score_metrics([s for s, _ in scored], [y for _, y in scored], budget)
    unscored = sum(1 for d in recs if _score(d.get("score")) is None)

    # per scenario (labelled events with a decision); labels without a decision are counted apart
    by_scen: dict[str, list[dict]] = defaultdict(list)
    for d in labelled:
        by_scen[_label_for(labels, _ident(d)).get("scenario") or "(unknown)"].append(d)
    undecided = Counter(lb.get("scenario") or "(unknown)" for k, lb in labels.items()
                        if (k not in seen if k[0] is not None else k[1] not in seen_ids)
                        and lb.get("scenario") != MALFORMED)
    scenarios = []
    for name in _scenario_order([*by_scen, *undecided]):
        ds = by_scen.get(name, [])
        is_fraud = any(lab[_ident(d)] for d in ds) if ds else name not in (NORMAL,)
        c = sum(1 for d in ds if d.get("decision") in FLAGGED)
        scenarios.append({"scenario": name, "fraud": is_fraud, "events": len(ds), "caught": c,
                          "blocked": sum(1 for d in ds if d.get("decision") == "block"),
                          "reviewed": sum(1 for d in ds if d.get("decision") == "review"),
                          "catch_rate": _ratio(c, len(ds)), "no_decision": undecided.get(name, 0)})

    # score histogram by label
    # bins [i/20, (i+1)/20), the last one closed; scores carry 6 decimals, so a score on an edge (0.95)
    # falls in the bin it names rather than where the edge's float error would put it
    hist = {"edges": [i / SCORE_BINS for i in range(SCORE_BINS + 1)]}
    for key, want in (("fraud", True), ("legit", False)):
        xs = np.clip(np.asarray([s for s, y in scored if y is want], dtype=np.float64), 0.0, 1.0)
        idx = np.minimum(np.floor(np.round(xs * SCORE_BINS, 6)).astype(int), SCORE_BINS - 1)
        hist[key] = [int(c) for c in np.bincount(idx, minlength=SCORE_BINS)]

    # rules, rules versions, other reasons
    rule_rows: dict[str, dict] = {}
    reasons = Counter()
    rules_versions = Counter()
    escalated = 0
    band_of = {"score_block": "block", "score_review": "review"}
    rank = {k: i for i, k in enumerate(KINDS)}
    for d in recs:
        rs = d.get("reasons") if isinstance(d.get("reasons"), list) else []
        rv = d.get("rules_version") or NONE
        rules_versions[rv] += 1
        band = next((band_of[r] for r in rs if r in band_of), "allow")
        if any(isinstance(r, str) and r.startswith("rule:") for r in rs) and \
                rank.get(d.get("decision"), 0) > rank[band]:
            escalated += 1
        for r in rs:
            if not isinstance(r, str):
                continue
            if r.startswith("rule:"):
                row = rule_rows.setdefault(r[5:], {"rule": r[5:], "count": 0, "fraud": 0, "legit": 0,
                                                    "unlabelled": 0, "by_rules_version": Counter(),
                                                    "by_decision": Counter()})
                row["count"] += 1
                y = lab[_ident(d)]
                row["fraud" if y else "legit" if y is False else "unlabelled"] += 1
                row["by_rules_version"][rv] += 1
                row["by_decision"][d.get("decision")] += 1
            else:
                reasons[r] += 1
    rules = []
    for row in sorted(rule_rows.values(), key=lambda r: (-r["count"], r["rule"])):
        row["precision"] = _ratio(row["fraud"], row["fraud"] + row["legit"])
        row["by_rules_version"] = dict(sorted(row["by_rules_version"].items()))
        row["by_decision"] = {k: row["by_decision"].get(k, 0) for k in KINDS}
        rules.append(row)

    # model and policy versions
    mv: dict[str, dict] = {}
    for d in recs:
        v = d.get("model_version") or NONE
        row = mv.setdefault(v, {"model_version": v, "count": 0, "first_decided_at": None,
                                "last_decided_at": None})
        row["count"] += 1
        t = _int(d.get("decided_at"))
        if t is not None:
            row["first_decided_at"] = t if row["first_decided_at"] is None else min(row["first_decided_at"], t)
            row["last_decided_at"] = t if row["last_decided_at"] is None else max(row["last_decided_at"], t)
    models = sorted(mv.values(), key=lambda r: (r["first_decided_at"] is None, r["first_decided_at"] or 0,
                                                r["model_version"]))
    policies = Counter(d.get("policy_version") or NONE for d in recs)

    cc = _champion_challenger(recs, labels, lab, budget)
    arms = arm_figures(recs, lab, split_key)
    headline = {
        "events_decided": n,
        "decision_records": n + dup,
        "duplicate_decisions": dup,
        "unreadable_records": malformed_records,
        "labelled": len(labelled),
        "unlabelled": n - len(labelled),
        "fraud": len(fraud),
        "legit": len(legit),
        "fraud_share": _ratio(len(fraud), len(labelled)),
        **{f"{k}_rate": _ratio(kinds.get(k, 0), n) for k in ("block", "review", "allow")},
        "decisions": {k: kinds.get(k, 0) for k in KINDS},
        "caught": caught,
        "catch_rate": _ratio(caught, len(fraud)),
        "false_positives": false_pos,
        "false_positive_rate": _ratio(false_pos, len(legit)),
        "review_budget": budget,
        "budget_k": champ["at_budget"]["k"],
        "budget_threshold": champ["at_budget"]["threshold"],
        "precision_at_budget": champ["precision_at_budget"],
        "recall_at_budget": champ["recall_at_budget"],
        "roc_auc": champ["roc_auc"],
        "average_precision": champ["average_precision"],
        "unscored": unscored,
        "late": sum(1 for d in recs if d.get("late") is True),
        "model_versions": {r["model_version"]: r["count"] for r in models},
        "challenger": cc["model_versions"] if cc else None,
    }
    lat = _latency(recs)
    headline["latency_ms"] = {"source": lat["source"], "p50": lat["p50"], "p99": lat["p99"]}
    team = _fraud_team(labelled, lab, labels, budget, top_k)
    headline["top_k"] = top_k
    headline["precision_at_k_per_day"] = {k: v["mean"] for k, v in team["precision_at_k_per_day"].items()}
    return {
        "budget": budget,
        "headline": headline,
        "labels": {"total": len(labels), "malformed": sum(1 for lb in labels.values()
                                                         if lb.get("scenario") == MALFORMED),
                   "without_decision": sum(undecided.values())},
        "champion": champ,
        "scenarios": scenarios,
        "score_hist": hist,
        "timeline": _timeline(recs, time_field),
        "latency": lat,
        "champion_challenger": cc,
        "arms": arms,
        "fraud_team": team,
        "rules": {"by_rule": rules, "rules_versions": dict(sorted(rules_versions.items())),
                  "escalated_by_rules": escalated, "other_reasons": dict(sorted(reasons.items()))},
        "models": models,
        "policy_versions": dict(sorted(policies.items())),
    }


def _rate(s: ClusterSums) -> dict:
    ci = cluster_wilson(s)
    return {"k": s.k, "n": s.n, "users": s.clusters, "rate": _ratio(s.k, s.n), "ci": list(ci) if ci else None}


def _diff(a: ClusterSums, c: ClusterSums) -> dict | None:
    d = cluster_diff_interval(a, c)
    if d is None:
        return None
    return {"diff": d[0], "ci": [d[1], d[2]], "significant": d[1] > 0 or d[2] < 0}


def _by_user(ds: list[dict], key_field: str, hit) -> ClusterSums:
    """(events, those ``hit`` counts) per user (the split key's value) of records ``ds``."""
    per: dict = defaultdict(lambda: [0, 0])
    for d in ds:
        c = per[d.get(key_field)]
        c[0] += 1
        c[1] += bool(hit(d))
    return ClusterSums.of(per.values())


ARM_RATES = ("block_rate", "review_rate", "allow_rate", "catch_rate", "false_positive_rate")


def arm_figures(recs: list[dict], lab: dict, split_key: str = "user") -> dict | None:
    """Per arm of a traffic split (records carrying ``arm``): the figures of ``DEFINITIONS``, each arm against
    the champion, and the verdict lines. None when no record carries an arm. ``lab``: fraud (True/False) or
    None per event identity. ``split_key``: the split's key (``udfs.split``; the records' field of that
    entity is the unit of every interval). Pitfall: the records do not say what the split was keyed by; a
    split by device analysed by user (or the reverse) gets intervals of the wrong width."""
    from udfs.split import SPLIT_KEYS

    key_field = SPLIT_KEYS[split_key]
    split = [d for d in recs if isinstance(d.get("arm"), str)]
    if not split:
        return None
    by_arm: dict[str, list[dict]] = defaultdict(list)
    for d in split:
        by_arm[d["arm"]].append(d)
    days = {t // 86_400_000 for d in split if (t := _int(d.get("event_ts"))) is not None}
    n_days = len(days)
    total = len(split)
    arms = []
    sums: dict[str, dict[str, ClusterSums]] = {}
    for name in sorted(by_arm, key=lambda a: (a != "champion", a)):
        ds = by_arm[name]
        n = len(ds)
        kinds = Counter(d.get("decision") for d in ds)
        labelled = [d for d in ds if lab.get(_ident(d)) is not None]
        fraud = [d for d in labelled if lab[_ident(d)]]
        legit = [d for d in labelled if not lab[_ident(d)]]
        allowed = [d for d in ds if d.get("decision") == "allow"]
        amount = sum(a for d in allowed if (a := _score((d.get("features") or {}).get("amount"))) is not None)
        sums[name] = {f"{k}_rate": _by_user(ds, key_field, lambda d, k=k: d.get("decision") == k) for k in KINDS}
        sums[name]["catch_rate"] = _by_user(fraud, key_field, lambda d: d.get("decision") in FLAGGED)
        sums[name]["false_positive_rate"] = _by_user(legit, key_field, lambda d: d.get("decision") in FLAGGED)
        row = {"arm": name, "events": n, "users": len({d.get("user_id") for d in ds}), "share": n / total,
               "model_versions": dict(Counter(d.get("model_version") or NONE for d in ds).most_common()),
               "policy_versions": dict(Counter(d.get("policy_version") or NONE for d in ds).most_common()),
               "decisions": {k: kinds.get(k, 0) for k in KINDS},
               "labelled": len(labelled), "fraud": len(fraud), "legit": len(legit),
               **{k: _rate(sums[name][k]) for k in ARM_RATES},
               "approved_amount": amount, "approved_amount_per_event": _ratio(amount, n),
               "days": n_days,
               "review_load_per_day": _ratio(kinds.get("review", 0), n_days),
               "review_load_per_day_at_full_traffic": _ratio(kinds.get("review", 0) * total, n * n_days)
               if n_days else None}
        arms.append(row)
    champ = next((a for a in arms if a["arm"] == "champion"), None)
    verdicts = []
    for a in arms:
        if champ is None or a is champ:
            a["vs_champion"] = None
            continue
        a["vs_champion"] = {k: _diff(sums[a["arm"]][k], sums["champion"][k]) for k in ARM_RATES}
        verdicts.append(_verdict(a, champ))
    return {"arms": arms, "events": total, "days": n_days, "verdicts": verdicts,
            "unsplit_records": len(recs) - total}


def _pp(d: dict | None) -> str:
    if d is None:
        return "n/a (no events)"
    lo, hi = d["ci"]
    return (f"{100 * d['diff']:+.1f} pp [{100 * lo:+.1f}, {100 * hi:+.1f}]"
            + ("" if d["significant"] else ", not significant"))


def _verdict(a: dict, champ: dict) -> str:
    """One plain-language line: the arm against the champion on what a risk team weighs."""
    v = a["vs_champion"]
    models = ", ".join(a["model_versions"])
    parts = [f"{a['arm']} ({models}) against the champion, 95 % CI by user:"]
    parts.append(f"good events flagged (reviewed or blocked) {_pp(v['false_positive_rate'])} "
                 f"({a['legit']:,} vs {champ['legit']:,} labelled legitimate)")
    parts.append(f"catch rate {_pp(v['catch_rate'])} ({a['fraud']:,} vs {champ['fraud']:,} labelled fraud)")
    parts.append(f"block rate {_pp(v['block_rate'])}")
    parts.append(f"review rate {_pp(v['review_rate'])}")
    per = a["approved_amount_per_event"]
    cper = champ["approved_amount_per_event"]
    if per is not None and cper is not None:
        parts.append(f"approves {per:,.2f} per event against {cper:,.2f}")
    if a["review_load_per_day_at_full_traffic"] is not None and champ["review_load_per_day_at_full_traffic"] is not None:
        parts.append(f"at full traffic it would send {a['review_load_per_day_at_full_traffic']:,.0f} events a day "
                     f"to review against {champ['review_load_per_day_at_full_traffic']:,.0f}")
    return parts[0] + " " + "; ".join(parts[1:]) + "."


def _champion_challenger(recs: list[dict], labels: dict, lab: dict, budget: float) -> dict | None:
    shadowed = [d for d in recs if isinstance(d.get("shadow"), dict)]
    if not shadowed:
        return None
    matrix = {c: {s: 0 for s in KINDS} for c in KINDS}
    other = 0
    for d in shadowed:
        c, s = d.get("decision"), d["shadow"].get("decision")
        if c in matrix and s in KINDS:
            matrix[c][s] += 1
        else:
            other += 1
    both = [(cs, ss, lab[_ident(d)]) for d in shadowed if lab[_ident(d)] is not None
            and (cs := _score(d.get("score"))) is not None and (ss := _score(d["shadow"].get("score"))) is not None]
    y = [t for _, _, t in both]
    models = {}
    dec_lab = [d for d in shadowed if lab[_ident(d)] is not None and d["shadow"].get("decision") in KINDS]
    fraud_n = sum(1 for d in dec_lab if lab[_ident(d)])
    legit_n = len(dec_lab) - fraud_n
    for role, idx, get_dec, versions in (
            ("champion", 0, lambda d: d.get("decision"), Counter(d.get("model_version") or NONE for d in shadowed)),
            ("challenger", 1, lambda d: d["shadow"].get("decision"),
             Counter(d["shadow"].get("model_version") or NONE for d in shadowed))):
        m = _score_metrics([b[idx] for b in both], y, budget)
        flagged_f = sum(1 for d in dec_lab if lab[_ident(d)] and get_dec(d) in FLAGGED)
        flagged_l = sum(1 for d in dec_lab if not lab[_ident(d)] and get_dec(d) in FLAGGED)
        m.update({"model_versions": dict(versions.most_common()),
                  "catch_rate": _ratio(flagged_f, fraud_n), "false_positive_rate": _ratio(flagged_l, legit_n),
                  "decisions": {k: sum(1 for d in shadowed if get_dec(d) == k) for k in KINDS}})
        models[role] = m
    # per scenario: which decisions catch more (fraud) or flag less (legitimate traffic)
    by_scen: dict[str, list[dict]] = defaultdict(list)
    for d in dec_lab:
        by_scen[_label_for(labels, _ident(d)).get("scenario") or "(unknown)"].append(d)
    scen = []
    for name in _scenario_order(by_scen):
        ds = by_scen[name]
        is_fraud = any(lab[_ident(d)] for d in ds)
        c = sum(1 for d in ds if d.get("decision") in FLAGGED)
        s = sum(1 for d in ds if d["shadow"].get("decision") in FLAGGED)
        if c == s:
            better = "same"
        else:
            better = "champion" if (c > s) == is_fraud else "challenger"
        scen.append({"scenario": name, "fraud": is_fraud, "events": len(ds), "champion_flagged": c,
                     "challenger_flagged": s, "champion_rate": _ratio(c, len(ds)),
                     "challenger_rate": _ratio(s, len(ds)), "better": better})
    total = sum(sum(r.values()) for r in matrix.values())
    return {"records": len(shadowed), "compared_events": len(both), "compared_fraud": int(sum(y)),
            "model_versions": dict(Counter(d["shadow"].get("model_version") or NONE for d in shadowed)),
            "champion": models["champion"], "challenger": models["challenger"],
            "agreement": matrix, "agreement_rate": _ratio(sum(matrix[k][k] for k in KINDS), total),
            "agreement_other": other, "scenarios": scen}


# --------------------------------------------------------------------------------------------- HTML
COLORS = {"allow": "#5b9b4a", "review": "#e0a526", "block": "#c8423b", "fraud": "#c8423b",
          "legit": "#3b73b9", "champion": "#3b73b9", "challenger": "#d9822b", "other": "#999999"}
CSS = """
body{font:14px/1.45 -apple-system,"Segoe UI",Helvetica,Arial,sans-serif;color:#222;margin:0;background:#f6f7f9}
main{max-width:1060px;margin:0 auto;padding:20px 28px 48px}
h1{font-size:22px;margin:8px 0 2px}h2{font-size:17px;margin:0 0 10px;border-bottom:1px solid #e2e4e8;padding-bottom:4px}
section{background:#fff;border:1px solid #e2e4e8;border-radius:6px;padding:14px 18px;margin:16px 0}
.sub{color:#666;margin:0 0 8px}.note{color:#666;font-size:12.5px;margin:6px 0}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(160px,1fr));gap:10px}
.card{border:1px solid #e2e4e8;border-radius:5px;padding:8px 10px}.card .v{font-size:20px;font-weight:600}
.card .k{color:#555;font-size:12px}
table{border-collapse:collapse;margin:6px 0 4px;font-variant-numeric:tabular-nums}
th,td{padding:4px 10px;border-bottom:1px solid #eceef1;text-align:right}th{background:#fafbfc;font-weight:600}
td:first-child,th:first-child{text-align:left}
.better{font-weight:600}.empty{color:#888;font-style:italic}
svg{display:block;margin:6px 0;max-width:100%;height:auto}svg text{font:11px sans-serif;fill:#444}
.legend span{display:inline-block;margin-right:14px}.sw{display:inline-block;width:10px;height:10px;margin-right:4px}
"""


def _pc(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None else f"{100 * x:.{digits}f}%"


def _num(x) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float) and not x.is_integer():
        return f"{x:,.2f}"
    return f"{int(x):,}"


def _f(x: float | None, digits: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _ts(ms: int | None, width_ms: int | None = None) -> str:
    if ms is None:
        return "n/a"
    fmt = "%Y-%m-%d %H:%M" if width_ms and width_ms >= 60_000 else "%Y-%m-%d %H:%M:%S"
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime(fmt) + " UTC"


def _dur(ms: float) -> str:
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("min", 60_000), ("s", 1000)):
        if ms >= size:
            v = ms / size
            return f"{v:.0f} {unit}" if v >= 10 or v.is_integer() else f"{v:.1f} {unit}"
    return f"{ms:g} ms"


def _table(head: list[str], rows: list[list[str]], classes: list[str | None] | None = None) -> str:
    out = ["<table><thead><tr>", *(f"<th>{escape(h)}</th>" for h in head), "</tr></thead><tbody>"]
    for i, r in enumerate(rows):
        cls = classes[i] if classes else None
        out.append(f'<tr class="{cls}">' if cls else "<tr>")
        out.extend(f"<td>{escape(str(c))}</td>" for c in r)
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _legend(items: list[tuple[str, str]]) -> str:
    return '<p class="legend">' + "".join(
        f'<span><span class="sw" style="background:{c}"></span>{escape(n)}</span>' for n, c in items) + "</p>"


def _svg(w: int, h: int, label: str, body: list[str]) -> str:
    return (f'<svg viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="{escape(label)}">'
            + "".join(body) + "</svg>")


def _log_axis(body: list[str], x0: float, y0: float, ph: float, pw: float, top: int) -> None:
    """Axis and decade grid for counts on a log(1 + c) scale, top = the largest count."""
    scale = math.log10(1 + top)
    dec = 1
    while dec <= top:
        y = y0 - ph * math.log10(1 + dec) / scale
        body.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x0 + pw}" y2="{y:.1f}" stroke="#eceef1"/>')
        body.append(f'<text x="{x0 - 4}" y="{y + 4:.1f}" text-anchor="end">{dec:,}</text>')
        dec *= 10
    body.append(f'<line x1="{x0}" y1="{y0}" x2="{x0 + pw}" y2="{y0}" stroke="#888"/>')
    body.append(f'<line x1="{x0}" y1="{y0 - ph}" x2="{x0}" y2="{y0}" stroke="#888"/>')


def svg_histogram(labels: list[str], series: list[tuple[str, str, list[int]]], title: str,
                  xlabel: str, w: int = 900, h: int = 280, label_every: int = 1) -> str | None:
    """Grouped bars per bin, counts on a log(1 + c) scale; None when every count is 0."""
    top = max((max(c) for _, _, c in series if c), default=0)
    if top <= 0:
        return None
    x0, y0, pw, ph = 56, h - 46, w - 70, h - 66
    body: list[str] = []
    _log_axis(body, x0, y0, ph, pw, top)
    scale = math.log10(1 + top)
    nb = len(labels)
    bw = pw / nb
    inner = (bw * 0.84) / len(series)
    for i, lab in enumerate(labels):
        for j, (name, color, counts) in enumerate(series):
            c = counts[i]
            if c <= 0:
                continue
            bh = ph * math.log10(1 + c) / scale
            x = x0 + i * bw + bw * 0.08 + j * inner
            body.append(f'<rect x="{x:.1f}" y="{y0 - bh:.1f}" width="{inner:.1f}" height="{bh:.1f}" fill="{color}">'
                        f"<title>{escape(name)} {escape(lab)}: {c:,}</title></rect>")
        if i % label_every == 0:
            body.append(f'<text x="{x0 + i * bw + bw / 2:.1f}" y="{y0 + 14}" text-anchor="middle">{escape(lab)}</text>')
    body.append(f'<text x="{x0 + pw / 2}" y="{h - 8}" text-anchor="middle">{escape(xlabel)}</text>')
    body.append(f'<text x="12" y="{y0 - ph / 2}" transform="rotate(-90 12 {y0 - ph / 2})" '
                f'text-anchor="middle">events (log scale)</text>')
    return _svg(w, h, title, body)


def svg_timeline(tl: dict, w: int = 900, h: int = 260) -> str | None:
    buckets = [b for b in tl["buckets"]]
    if not buckets or not any(sum(b[k] for k in KINDS) for b in buckets):
        return None
    x0, y0, pw, ph = 48, h - 42, w - 100, h - 60
    body: list[str] = []
    for pct in (0, 25, 50, 75, 100):
        y = y0 - ph * pct / 100
        body.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x0 + pw}" y2="{y:.1f}" stroke="#eceef1"/>')
        body.append(f'<text x="{x0 - 4}" y="{y + 4:.1f}" text-anchor="end">{pct}%</text>')
    bw = pw / len(buckets)
    for i, b in enumerate(buckets):
        tot = sum(b[k] for k in KINDS)
        if not tot:
            continue
        y = y0
        tip = f"{_ts(b['start'], tl['bucket_ms'])}: " + ", ".join(f"{k} {b[k]:,}" for k in KINDS)
        for k in ("block", "review", "allow"):  # block at the bottom, where small shares stay readable
            hh = ph * b[k] / tot
            if hh <= 0:
                continue
            y -= hh
            body.append(f'<rect x="{x0 + i * bw + 0.5:.1f}" y="{y:.2f}" width="{max(bw - 1, 0.5):.1f}" '
                        f'height="{hh:.2f}" fill="{COLORS[k]}"><title>{escape(tip)}</title></rect>')
    # events per bucket: a line on the right-hand axis, so a 100 % bar of three events reads as such
    vol = [sum(b[k] for k in KINDS) for b in buckets]
    top = max(vol)
    pts = " ".join(f"{x0 + (i + 0.5) * bw:.1f},{y0 - ph * v / top:.1f}" for i, v in enumerate(vol))
    body.append(f'<polyline points="{pts}" fill="none" stroke="#222" stroke-width="1.5">'
                f"<title>events per bucket (right axis, max {top:,})</title></polyline>")
    body.append(f'<text x="{x0 + pw + 4}" y="{y0 - ph + 4:.1f}" text-anchor="start">{top:,}</text>')
    body.append(f'<text x="{x0 + pw + 4}" y="{y0 + 4:.1f}" text-anchor="start">0</text>')
    step = max(1, len(buckets) // 6)
    for i in range(0, len(buckets), step):
        body.append(f'<text x="{x0 + i * bw:.1f}" y="{y0 + 14}" text-anchor="start">'
                    f'{escape(_ts(buckets[i]["start"], tl["bucket_ms"]).replace(" UTC", ""))}</text>')
    body.append(f'<line x1="{x0}" y1="{y0}" x2="{x0 + pw}" y2="{y0}" stroke="#888"/>')
    body.append(f'<text x="{x0 + pw / 2}" y="{h - 6}" text-anchor="middle">{escape(tl["field"])} (UTC), '
                f'{escape(_dur(tl["bucket_ms"]))} buckets</text>')
    return _svg(w, h, "decision rates over time", body)


def svg_roc(curves: list[tuple[str, str, list[tuple[float, float]]]], w: int = 380, h: int = 340) -> str | None:
    curves = [c for c in curves if c[2]]
    if not curves:
        return None
    x0, y0, pw, ph = 46, h - 40, w - 60, h - 56
    body = [f'<rect x="{x0}" y="{y0 - ph}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>',
            f'<line x1="{x0}" y1="{y0}" x2="{x0 + pw}" y2="{y0 - ph}" stroke="#ccc" stroke-dasharray="4 3"/>']
    for v in (0, 0.5, 1):
        body.append(f'<text x="{x0 + pw * v:.1f}" y="{y0 + 14}" text-anchor="middle">{v:g}</text>')
        body.append(f'<text x="{x0 - 4}" y="{y0 - ph * v + 4:.1f}" text-anchor="end">{v:g}</text>')
    for name, color, pts in curves:
        p = " ".join(f"{x0 + fx * pw:.1f},{y0 - ty * ph:.1f}" for fx, ty in pts)
        body.append(f'<polyline points="{p}" fill="none" stroke="{color}" stroke-width="2">'
                    f"<title>{escape(name)}</title></polyline>")
    body.append(f'<text x="{x0 + pw / 2}" y="{h - 6}" text-anchor="middle">false-positive rate</text>')
    body.append(f'<text x="12" y="{y0 - ph / 2}" transform="rotate(-90 12 {y0 - ph / 2})" '
                f'text-anchor="middle">true-positive rate</text>')
    return _svg(w, h, "ROC curves", body)


def _chart(svg: str | None, empty: str) -> str:
    return svg if svg else f'<p class="empty">{escape(empty)}</p>'


def _card(k: str, v: str, tip: str = "") -> str:
    t = f' title="{escape(tip)}"' if tip else ""
    return f'<div class="card"{t}><div class="v">{escape(v)}</div><div class="k">{escape(k)}</div></div>'


def render_html(fig: dict) -> str:
    """The report as one self-contained HTML document (inline CSS and SVG; no external resource)."""
    h = fig["headline"]
    b = fig["budget"]
    src = fig.get("source")
    gen = fig.get("generated_at")
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             "<title>riskstream report</title>", f"<style>{CSS}</style></head><body><main>",
             "<h1>riskstream decision report</h1>",
             '<p class="sub">' + escape(" · ".join(x for x in (
                 f"source: {src}" if src else "", f"generated {_ts(gen)}" if gen else "",
                 f"review budget {_pc(b, 2)} of events") if x)) + "</p>"]

    # headline
    cards = [
        _card("events decided", _num(h["events_decided"]),
              f"{h['decision_records']:,} records, {h['duplicate_decisions']:,} duplicates"),
        _card("labelled fraud share", _pc(h["fraud_share"], 2), f"{h['fraud']:,} fraud of {h['labelled']:,} labelled"),
        _card("block rate", _pc(h["block_rate"], 2)), _card("review rate", _pc(h["review_rate"], 2)),
        _card("allow rate", _pc(h["allow_rate"], 2)),
        _card("catch rate", _pc(h["catch_rate"]), "fraud events reviewed or blocked / fraud events"),
        _card("false-positive rate", _pc(h["false_positive_rate"], 2),
              "legitimate events reviewed or blocked / legitimate events"),
        _card(f"precision @ {_pc(b, 2)} budget", _pc(h["precision_at_budget"])),
        _card(f"recall @ {_pc(b, 2)} budget", _pc(h["recall_at_budget"])),
        _card("ROC AUC", _f(h["roc_auc"])), _card("average precision", _f(h["average_precision"])),
    ]
    notes = [f"{h['labelled']:,} labelled ({h['fraud']:,} fraud, {h['legit']:,} legitimate); "
             f"{h['unlabelled']:,} unlabelled events count in the decision rates but in no label metric."]
    if h["budget_k"]:
        notes.append(f"Review budget: the {h['budget_k']:,} highest-scored of {fig['champion']['events']:,} "
                     f"labelled scored events (score ≥ {_f(h['budget_threshold'], 6)}); "
                     "events tied at the cut are counted by their expected share. With "
                     f"{fig['champion']['fraud']:,} fraud events among them, recall at this budget is at most "
                     f"{_pc(fig['champion']['at_budget']['recall_ceiling'])}.")
    else:
        notes.append("Review budget: no event to review (a zero budget or no labelled scored event); "
                     "precision is undefined.")
    if h["unscored"]:
        notes.append(f"{h['unscored']:,} events have no score (processing errors, sent to review); they count in "
                     "decision rates and catch rate but not in score metrics.")
    if h["duplicate_decisions"] or h["unreadable_records"]:
        notes.append(f"{h['duplicate_decisions']:,} repeated decisions for an event id were ignored (first one "
                     f"kept); {h['unreadable_records']:,} records without an event id were skipped.")
    lb = fig["labels"]
    if lb["total"]:
        notes.append(f"Labels: {lb['total']:,} ({lb['malformed']:,} malformed records, which get dead letters, "
                     f"not decisions); {lb['without_decision']:,} other labelled events have no decision here.")
    parts.append('<section id="headline"><h2>Headline</h2><div class="cards">' + "".join(cards) + "</div>"
                 + "".join(f'<p class="note">{escape(n)}</p>' for n in notes) + "</section>")

    # per scenario
    rows, cls = [], []
    for s in fig["scenarios"]:
        rows.append([s["scenario"] + ("" if s["fraud"] else " (legitimate)"), _num(s["events"]), _num(s["caught"]),
                     _num(s["blocked"]), _num(s["reviewed"]), _pc(s["catch_rate"]), _num(s["no_decision"])])
        cls.append(None)
    parts.append('<section id="scenarios"><h2>Per scenario</h2>'
                 + (_table(["scenario", "events", "caught", "blocked", "reviewed", "catch rate", "no decision"],
                           rows, cls) if rows else '<p class="empty">no labelled events</p>')
                 + '<p class="note">caught = reviewed or blocked. For legitimate traffic the rate is the share '
                   "flagged (false positives). Events counts decided events; labelled events without a decision "
                   "in this input are in the last column.</p></section>")

    parts.append(_render_fraud_team(fig.get("fraud_team"), b))

    # score distributions
    hs = fig["score_hist"]
    edges = hs["edges"]
    bins = [f"{edges[i]:.2f}" for i in range(len(edges) - 1)]
    svg = svg_histogram(bins, [("fraud", COLORS["fraud"], hs["fraud"]), ("legitimate", COLORS["legit"], hs["legit"])],
                        "score distribution by label", "score (bin lower edge)", label_every=2)
    parts.append('<section id="scores"><h2>Score distributions by label</h2>'
                 + _legend([("fraud", COLORS["fraud"]), ("legitimate", COLORS["legit"])])
                 + _chart(svg, "no labelled scored events") + "</section>")

    # timeline
    tl = fig["timeline"]
    note = ""
    if tl["without_time"]:
        note = f'<p class="note">{tl["without_time"]:,} events without {escape(tl["field"])} are not shown.</p>'
    parts.append('<section id="timeline"><h2>Decision rates over time</h2>'
                 + _legend([*((k, COLORS[k]) for k in KINDS), ("events per bucket (right axis)", "#222")])
                 + _chart(svg_timeline(tl), "no timestamps") + note
                 + "</section>")

    # latency
    lat = fig["latency"]
    lsvg = None
    if lat["hist"]:
        le = lat["hist"]["edges"]
        lsvg = svg_histogram([_dur(le[i]) for i in range(len(le) - 1)],
                             [("latency", "#6a5acd", lat["hist"]["counts"])], "latency histogram",
                             "latency (bin lower edge)", label_every=max(1, (len(le) - 1) // 12))
    what = ("from the records' <code>latency_ms</code> field" if lat["source"] == "latency_ms" else
            "from the event's arrival at the broker (<code>arrived_at</code>, the events topic's append time) to "
            "<code>decided_at</code>" if lat["source"] == "decided_at-arrived_at" else
            "<strong>decided_at minus event time</strong> (no <code>latency_ms</code> or <code>arrived_at</code> "
            "in these records): it includes delivery delay and, for a replay or backfill, the age of the replayed "
            "events")
    def dur(x):
        return escape(_dur(x)) if x is not None else "n/a"

    parts.append('<section id="latency"><h2>Latency</h2>'
                 f'<p class="sub">{_num(lat["n"])} events; p50 {dur(lat["p50"])}, p99 {dur(lat["p99"])}, '
                 f'max {dur(lat["max"])} — {what}.'
                 + (f' {lat["negative"]:,} negative values (clock skew) are left out of the histogram.'
                    if lat["negative"] else "") + "</p>"
                 + _chart(lsvg, "no latency data") + "</section>")

    # champion vs challenger
    parts.append(_render_cc(fig["champion_challenger"], fig["champion"], b))
    if fig.get("arms"):
        parts.append(_render_arms(fig["arms"]))
    if fig.get("drift"):
        parts.append(_render_drift(fig["drift"]))

    # rules
    r = fig["rules"]
    versions = sorted({v for row in r["by_rule"] for v in row["by_rules_version"]})
    rows = [[row["rule"], _num(row["count"]), *(_num(row["by_decision"][k]) for k in KINDS), _num(row["fraud"]),
             _num(row["legit"]), _num(row["unlabelled"]), _pc(row["precision"]),
             *(_num(row["by_rules_version"].get(v, 0)) for v in versions)] for row in r["by_rule"]]
    rules_html = (_table(["rule", "fired", "allow", "review", "block", "fraud", "legitimate", "unlabelled",
                          "precision", *(f"rules {v}" for v in versions)], rows)
                  if rows else '<p class="empty">no rule fired</p>')
    parts.append('<section id="rules"><h2>Rules</h2>' + rules_html
                 + f'<p class="note">{r["escalated_by_rules"]:,} decisions were raised above their score band by a '
                   "rule. Precision = fraud / labelled events the rule fired on.</p>"
                 + "<h3>Decisions per rules version</h3>"
                 + _table(["rules_version", "decisions"], [[k, _num(v)] for k, v in r["rules_versions"].items()])
                 + "<h3>Other reasons</h3>"
                 + (_table(["reason", "decisions"], [[k, _num(v)] for k, v in r["other_reasons"].items()])
                    if r["other_reasons"] else '<p class="empty">none</p>') + "</section>")

    # models
    rows = [[m["model_version"], _num(m["count"]), _ts(m["first_decided_at"]), _ts(m["last_decided_at"])]
            for m in fig["models"]]
    parts.append('<section id="models"><h2>Model and policy versions</h2>'
                 + (_table(["model_version", "decisions", "first decided", "last decided"], rows)
                    if rows else '<p class="empty">no decisions</p>')
                 + ('<p class="note">More than one model version: a hot reload or an upgrade happened in this '
                    "window.</p>" if len(rows) > 1 else "")
                 + _table(["policy_version", "decisions"], [[k, _num(v)] for k, v in fig["policy_versions"].items()])
                 + "</section>")

    parts.append('<section id="definitions"><h2>Definitions</h2><ul class="note">'
                 + "".join(f"<li>{escape(d)}</li>" for d in DEFINITIONS) + "</ul></section>")
    parts.append("</main></body></html>")
    return "\n".join(parts) + "\n"


def _render_fraud_team(team: dict | None, budget: float) -> str:
    head = '<section id="fraud-team"><h2>Precision top-k per day and recall per scenario</h2>'
    if not team or (not team["precision_at_k_per_day"] and not team["recall_at_budget_by_scenario"]):
        return head + '<p class="empty">no labelled scored events</p></section>'
    k = team["top_k"]
    out = [head]
    pk = team["precision_at_k_per_day"]
    if pk:
        out.append(_table(["entity", "days", f"mean precision top-{k} per day"],
                          [[kind, _num(len(v["days"])), _pc(v["mean"])] for kind, v in pk.items()]))
        kinds = list(pk)
        days = next(iter(pk.values()))["days"]
        first = max(0, len(days) - 62)
        rows = []
        for i in range(first, len(days)):
            cells = [pk[kd]["days"][i] for kd in kinds]
            rows.append([_ts(days[i]["day"], 86_400_000)[:10],
                         *(f'{c["entities"]:,} / {c["fraud_entities"]:,} / {_pc(c["precision"])}' for c in cells)])
        out.append(_table(["day (UTC)", *(f"{kd}: entities / with fraud / precision" for kd in kinds)], rows))
        if len(days) > 62:
            out.append(f'<p class="note">the first {len(days) - 62} days are left out of the table (not of the mean).</p>')
    rb = team["recall_at_budget_by_scenario"]
    if rb:
        out.append(f"<h3>Recall at the {_pc(budget, 2)} review budget per fraud scenario</h3>")
        out.append(_table(["scenario", "fraud events", "caught (expected)", "recall"],
                          [[n, _num(r["fraud_events"]), _num(r["caught"]), _pc(r["recall"])] for n, r in rb.items()]))
    out.append('<p class="note">Definitions below. Entities found in an earlier day\'s top k are left out of later '
               "days, as the Fraud Detection Handbook does.</p></section>")
    return "".join(out)


def _render_drift(drift: list[dict]) -> str:
    out = ['<section id="drift"><h2>Inputs against what the model was trained on</h2>']
    for m in drift:
        v = escape(m["model_version"])
        if not m["checked"]:
            out.append(f'<p class="empty">{v}: no training distribution found (its spec is not in the models '
                       "folder, or it predates them): not checked</p>")
        elif not m["features"]:
            out.append(f"<p>{v}: {m['rows']:,} records, every feature within its training distribution "
                       "(PSI at most 0.25, at most 5 % of values beyond the training range).</p>")
        else:
            out.append(f'<p class="warn">{v}: {escape(m["warning"])}</p>')
            out.append(_table(["feature", "PSI", "above training max", "below training min"],
                              [[escape(f["feature"]), _num(f["psi"]), _pc(f["above_train_max"]),
                                _pc(f["below_train_min"])] for f in m["features"]]))
    out.append('<p class="note">PSI: population stability index of the records\' feature values over the '
               "training deciles; above 0.25 the model's scores are not reliable (udfs/drift.py).</p></section>")
    return "".join(out)


ARM_COLORS = ("#3b73b9", "#d9822b", "#5b9b4a", "#8e5ea2", "#c8423b", "#999999")
ARM_LABELS = {"block_rate": "block rate", "review_rate": "review rate", "allow_rate": "allow rate",
              "catch_rate": "catch rate", "false_positive_rate": "false-positive rate"}


def _pc_ci(r: dict) -> str:
    if r["rate"] is None:
        return "n/a"
    if r["ci"] is None:  # one user: no spread between users to judge from
        return f"{100 * r['rate']:.2f}% [n/a, 1 user]"
    lo, hi = r["ci"]
    return f"{100 * r['rate']:.2f}% [{100 * lo:.2f}, {100 * hi:.2f}]"


def svg_arm_diffs(arms: list[dict], w: int = 900) -> str | None:
    """Each arm against the champion: the difference of each rate (percentage points) as a dot with its 95 %
    interval as a bar, a vertical line at 0; a bar that does not cross 0 is a significant difference."""
    others = [a for a in arms if a.get("vs_champion")]
    rows = [(a, k) for k in ARM_RATES for a in others if a["vs_champion"].get(k)]
    if not rows:
        return None
    lo = min(min(a["vs_champion"][k]["ci"][0] for a, k in rows), 0.0) * 100
    hi = max(max(a["vs_champion"][k]["ci"][1] for a, k in rows), 0.0) * 100
    pad = max((hi - lo) * 0.08, 0.1)
    lo, hi = lo - pad, hi + pad
    x0, pw, rh = 190, w - 220, 22
    h = 40 + rh * len(rows)
    X = lambda v: x0 + pw * (v - lo) / (hi - lo)  # noqa: E731
    body = [f'<line x1="{X(0):.1f}" y1="10" x2="{X(0):.1f}" y2="{h - 24}" stroke="#888"/>',
            f'<text x="{X(0):.1f}" y="{h - 8}" text-anchor="middle">0 pp</text>',
            f'<text x="{x0}" y="{h - 8}">{lo:+.1f} pp</text>',
            f'<text x="{x0 + pw}" y="{h - 8}" text-anchor="end">{hi:+.1f} pp</text>']
    for i, (a, k) in enumerate(rows):
        d = a["vs_champion"][k]
        y = 20 + i * rh
        color = ARM_COLORS[(others.index(a) + 1) % len(ARM_COLORS)]
        body.append(f'<text x="{x0 - 8}" y="{y + 4}" text-anchor="end">{escape(a["arm"])}: {ARM_LABELS[k]}</text>')
        body.append(f'<line x1="{X(100 * d["ci"][0]):.1f}" y1="{y}" x2="{X(100 * d["ci"][1]):.1f}" y2="{y}" '
                    f'stroke="{color}" stroke-width="{3 if d["significant"] else 1.5}"/>')
        body.append(f'<circle cx="{X(100 * d["diff"]):.1f}" cy="{y}" r="4" fill="{color}">'
                    f'<title>{escape(_pp(d))}</title></circle>')
    return _svg(w, h, "each arm against the champion, percentage points with 95 % intervals", body)


def _render_arms(ab: dict) -> str:
    arms = ab["arms"]
    head = '<section id="arms"><h2>Traffic split: arms compared</h2>'
    rows = []
    for a in arms:
        rows.append([a["arm"], ", ".join(a["model_versions"]), ", ".join(a["policy_versions"]), _num(a["events"]),
                     _num(a["users"]), _pc(a["share"]), _pc_ci(a["block_rate"]), _pc_ci(a["review_rate"]),
                     _pc_ci(a["allow_rate"]), f'{_num(a["labelled"])} ({_num(a["fraud"])} fraud)',
                     _pc_ci(a["catch_rate"]), _pc_ci(a["false_positive_rate"]), _num(a["approved_amount"]),
                     _num(a["review_load_per_day"]), _num(a["review_load_per_day_at_full_traffic"])])
    out = [head, f'<p class="sub">{ab["events"]:,} records carry an arm, over {ab["days"]:,} day(s) of event time'
                 + (f'; {ab["unsplit_records"]:,} records were decided without a split' if ab["unsplit_records"]
                    else "") + ". Rates with 95 % intervals by user (the split assigns users, and a user's "
                 "events are not independent).</p>",
           _table(["arm", "model", "policy", "events", "users", "share", "block rate", "review rate", "allow rate",
                   "labelled", "catch rate", "false-positive rate", "approved amount", "reviews/day",
                   "reviews/day at full traffic"], rows)]
    if ab["verdicts"]:
        out.append("<h3>Verdict</h3><ul>" + "".join(f"<li>{escape(v)}</li>" for v in ab["verdicts"]) + "</ul>")
        out.append("<h3>Against the champion (difference, 95 % interval by user)</h3>")
        out.append(_chart(svg_arm_diffs(arms), "no arm to compare"))
    else:
        out.append('<p class="empty">No champion arm in these records: nothing to compare against.</p>')
    out.append("</section>")
    return "".join(out)


def _render_cc(cc: dict | None, champ: dict, budget: float) -> str:
    head = '<section id="champion-challenger"><h2>Champion vs challenger</h2>'
    if not cc:
        return head + ('<p class="empty">No shadow model in these decisions (records carry no '
                       "<code>shadow</code> field).</p></section>")
    c, s = cc["champion"], cc["challenger"]

    def vers(m):
        return ", ".join(f"{k} ({v:,})" for k, v in m["model_versions"].items())

    rows = [["model", vers(c), vers(s)],
            ["ROC AUC", _f(c["roc_auc"]), _f(s["roc_auc"])],
            ["average precision", _f(c["average_precision"]), _f(s["average_precision"])],
            [f"precision @ {_pc(budget, 2)} budget", _pc(c["precision_at_budget"]), _pc(s["precision_at_budget"])],
            [f"recall @ {_pc(budget, 2)} budget", _pc(c["recall_at_budget"]), _pc(s["recall_at_budget"])],
            ["score at the budget cut", _f(c["at_budget"]["threshold"], 6), _f(s["at_budget"]["threshold"], 6)],
            ["catch rate (decisions)", _pc(c["catch_rate"]), _pc(s["catch_rate"])],
            ["false-positive rate (decisions)", _pc(c["false_positive_rate"], 2), _pc(s["false_positive_rate"], 2)],
            *([f"{k} decisions", _num(c["decisions"][k]), _num(s["decisions"][k])] for k in KINDS)]
    out = [head, f'<p class="sub">{cc["records"]:,} records carry a shadow score; the score metrics compare both '
                 f'models on the same {cc["compared_events"]:,} labelled events ({cc["compared_fraud"]:,} fraud). '
                 "The challenger's decisions were never acted on.</p>",
           _table(["", "champion", "challenger"], rows),
           _legend([("champion", COLORS["champion"]), ("challenger", COLORS["challenger"])]),
           _chart(svg_roc([("champion", COLORS["champion"], c["roc"]),
                           ("challenger", COLORS["challenger"], s["roc"])]), "ROC needs both classes"),
           "<h3>Agreement of decisions (rows: champion, columns: challenger)</h3>",
           _table(["champion \\ challenger", *KINDS],
                  [[k, *(_num(cc["agreement"][k][j]) for j in KINDS)] for k in KINDS]),
           f'<p class="note">agreement {_pc(cc["agreement_rate"])}'
           + (f'; {cc["agreement_other"]:,} records with another or no shadow decision' if cc["agreement_other"]
              else "") + "</p>",
           "<h3>Per scenario (caught = reviewed or blocked)</h3>"]
    rows = [[x["scenario"] + ("" if x["fraud"] else " (legitimate)"), _num(x["events"]),
             f'{_num(x["champion_flagged"])} ({_pc(x["champion_rate"])})',
             f'{_num(x["challenger_flagged"])} ({_pc(x["challenger_rate"])})', x["better"]] for x in cc["scenarios"]]
    out.append(_table(["scenario", "events", "champion caught", "challenger caught", "better"], rows)
               if rows else '<p class="empty">no labelled events with a shadow decision</p>')
    out.append('<p class="note">Better: more caught for fraud scenarios, fewer flagged for legitimate traffic.</p>'
               "</section>")
    return "".join(out)


# --------------------------------------------------------------------------------------------- readers
def read_jsonl(path) -> tuple[list[dict], int]:
    """JSON objects of a JSON-lines file, and how many non-empty lines were not JSON objects."""
    out, bad = [], 0
    with open(path, "rb") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            v = _json_object(line)
            if v is None:
                bad += 1
            else:
                out.append(v)
    return out, bad


def read_records(path) -> tuple[list[dict], int]:
    """Decision records (JSON lines), or what ``riskstream score`` writes: JSON lines, or CSV when the file
    ends in ``.csv`` (``udfs.replay.SCORE_COLUMNS``, then ``label`` and ``scenario``), as records the report
    reads (``ts`` becomes ``event_ts``; reasons split on ``|``); and how many rows were unreadable."""
    if str(path).lower().endswith(".csv"):
        import csv

        out, bad = [], 0
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                try:
                    out.append(_score_row(row))
                except (KeyError, TypeError, ValueError):
                    bad += 1
        return out, bad
    recs, bad = read_jsonl(path)
    for r in recs:
        if "event_ts" not in r and isinstance(r.get("ts"), int):
            r["event_ts"] = r["ts"]  # a score row
    return recs, bad


def _score_row(row: dict) -> dict:
    blank = lambda v: None if v in (None, "") else v  # noqa: E731
    rec = {"event_id": row["event_id"], "user_id": blank(row.get("user_id")), "device_id": blank(row.get("device_id")),
           "payment_ref": blank(row.get("payment_ref")), "event_type": row.get("event_type"),
           "score": float(row["score"]), "decision": row["decision"],
           "reasons": [x for x in (row.get("reasons") or "").split("|") if x],
           "late": row.get("late") in ("1", "true", "True"), "model_version": row.get("model_version"),
           "event_ts": int(row["ts"])}
    if "label" in row:
        rec["label"] = None if blank(row["label"]) is None else int(row["label"])
        rec["scenario"] = blank(row.get("scenario"))
    return rec


def drift_by_model(decisions: list[dict], spec_for) -> list[dict]:
    """Per deciding model whose spec ``spec_for(model_version)`` finds (a dict with its
    ``training_distribution``, or None): the records' features against what the model was trained on
    (``udfs.drift``). Records without features (``score`` output) are skipped."""
    from udfs.drift import monitor_for

    by_model: dict[str, list[list[float]]] = {}
    for d in decisions:
        f = d.get("features") if isinstance(d, dict) else None
        if isinstance(f, dict) and f and isinstance(d.get("model_version"), str):
            by_model.setdefault(d["model_version"], []).append(f)
    out = []
    for version, feats in sorted(by_model.items()):
        spec = spec_for(version)
        mon = monitor_for(spec) if spec else None
        if mon is None:
            out.append({"model_version": version, "rows": len(feats), "checked": False, "features": [],
                        "warning": None})
            continue
        import numpy as np

        x = np.asarray([[float(f.get(n, np.nan)) for n in mon.names] for f in feats], dtype=np.float64)
        mon.add(x)
        out.append({"model_version": version, "rows": len(feats), "checked": True,
                    "features": [{"feature": d.name, "psi": round(d.psi, 3), "above_train_max": round(d.above, 4),
                                  "below_train_min": round(d.below, 4)} for d in mon.drifted()],
                    "warning": mon.warning(version)})
    return out


def _json_object(raw) -> dict | None:
    """A JSON object, or None for anything else (not JSON, not an object)."""
    try:
        v = orjson.loads(raw)
    except (orjson.JSONDecodeError, TypeError):
        return None
    return v if isinstance(v, dict) else None


def read_labels(path) -> dict[tuple[str | None, str], dict]:
    """A labels file's labels keyed by the event's identity (user_id, event_id); a label without a
    user_id stands for its event id under any user."""
    recs, _ = read_jsonl(path)
    return _index_labels({i: r for i, r in enumerate(recs) if isinstance(r.get("event_id"), str)})


def read_decisions_topic(bootstrap: str, topic: str, deadline_s: float = 120,
                         client_props: dict | None = None) -> tuple[list[dict], int]:
    """Every committed record up to the topic's end offsets as of now (read_committed; a bounded read)."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed", enable_auto_commit=False,
                      group_id=None, max_partition_fetch_bytes=4 * 1024 * 1024, **(client_props or {}))
    try:
        parts = c.partitions_for_topic(topic)
        if not parts:
            raise SystemExit(f"riskstream report: topic {topic!r} does not exist on {bootstrap}")
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        end = c.end_offsets(tps)  # for read_committed: the last stable offset
        out, bad = [], 0
        deadline = time.monotonic() + deadline_s
        while any(c.position(tp) < end[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise SystemExit(f"riskstream report: could not read {topic!r} to its end offsets in {deadline_s}s")
            for tp, msgs in c.poll(timeout_ms=500, max_records=10_000).items():
                for m in msgs:
                    if m.offset >= end[tp]:
                        continue
                    v = _json_object(m.value)
                    if v is None:
                        bad += 1
                    else:
                        out.append(v)
        return out, bad
    finally:
        c.close()


def default_out_path() -> Path:
    from .. import paths

    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return paths.home() / "reports" / f"report-{stamp}.html"


def render_text(fig: dict) -> str:
    h = fig["headline"]
    lines = [
        f"events decided:   {h['events_decided']:,} ({h['labelled']:,} labelled, {h['unlabelled']:,} unlabelled)",
        f"fraud share:      {_pc(h['fraud_share'], 2)} of labelled",
        f"decision rates:   block {_pc(h['block_rate'], 2)}, review {_pc(h['review_rate'], 2)}, "
        f"allow {_pc(h['allow_rate'], 2)}",
        f"catch rate:       {_pc(h['catch_rate'])}   false-positive rate {_pc(h['false_positive_rate'], 2)}",
        f"at {_pc(fig['budget'], 2)} budget:   precision {_pc(h['precision_at_budget'])}, recall "
        f"{_pc(h['recall_at_budget'])} (top {h['budget_k']:,} by score)",
        f"ROC AUC / AP:     {_f(h['roc_auc'])} / {_f(h['average_precision'])}",
        f"precision top-{h['top_k']}/day: " + (", ".join(f"{k} {_pc(v)}" for k, v in h["precision_at_k_per_day"].items())
                                              or "n/a"),
        "models:           " + ", ".join(f"{k} {v:,}" for k, v in h["model_versions"].items()),
    ]
    for m in fig.get("drift") or []:
        lines.append(f"drift:            {m['model_version']}: "
                     + (f"WARNING {m['warning']}" if m["warning"] else
                        f"inputs within what it was trained on ({m['rows']:,} records)" if m["checked"] else
                        "no training distribution found (not checked)"))
    cc = fig["champion_challenger"]
    if cc:
        c, s = cc["champion"], cc["challenger"]
        lines.append(f"challenger:       {', '.join(cc['model_versions'])}: AUC {_f(s['roc_auc'])} vs "
                     f"{_f(c['roc_auc'])}, AP {_f(s['average_precision'])} vs {_f(c['average_precision'])}, "
                     f"agreement {_pc(cc['agreement_rate'])}")
    ab = fig.get("arms")
    if ab:
        lines.append(f"traffic split:    {ab['events']:,} records with an arm, {ab['days']} day(s)")
        for a in ab["arms"]:
            lines.append(f"  arm {a['arm']:<12} {', '.join(a['model_versions'])}: {a['events']:,} events, "
                         f"{a['users']:,} users; block {_pc_ci(a['block_rate'])}, review {_pc_ci(a['review_rate'])}, "
                         f"allow {_pc_ci(a['allow_rate'])}")
            lines.append(f"  {'':16} {a['labelled']:,} labelled ({a['fraud']:,} fraud): catch {_pc_ci(a['catch_rate'])}, "
                         f"false-positive {_pc_ci(a['false_positive_rate'])}; approved {_num(a['approved_amount'])}; "
                         f"reviews/day {_num(a['review_load_per_day'])}")
        for v in ab["verdicts"]:
            lines.append(f"  verdict: {v}")
    return "\n".join(lines)
