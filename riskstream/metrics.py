"""Figures of scores against labels and of latencies, shared by the report, the audit, the demo, the bench
and training, so that a model card and a report computed from the same scores agree.

Every function takes ``(scores, y)`` in that order (scores first, as the report always has).
"""

from __future__ import annotations

import math

import numpy as np


def percentile(xs: list[float], q: float, digits: int = 1) -> float | None:
    """The nearest-rank ``q`` quantile (``q`` in [0, 1]; 1 is the maximum), rounded; None for no values."""
    if not xs:
        return None
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(q * len(xs)))], digits)


def _arrays(scores, y) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(scores, dtype=np.float64).reshape(-1), np.asarray(y, dtype=bool).reshape(-1)


def roc_auc(scores, y) -> float | None:
    """Mann-Whitney ROC AUC with ties counted one half; None without both classes."""
    s, y = _arrays(scores, y)
    pos = int(y.sum())
    neg = len(y) - pos
    if pos == 0 or neg == 0:
        return None
    order = np.argsort(s, kind="mergesort")
    ss = s[order]
    ends = np.flatnonzero(np.r_[ss[1:] != ss[:-1], True])  # last index of each tie group (0-based)
    starts = np.r_[0, ends[:-1] + 1]
    ranks = np.empty(len(s), dtype=np.float64)
    ranks[order] = np.repeat((starts + ends + 2) / 2.0, ends - starts + 1)  # average 1-based ranks
    u = ranks[y].sum() - pos * (pos + 1) / 2.0  # exact: sums of half-integers
    return float(u / (pos * neg))


def average_precision(scores, y) -> float | None:
    """Sum over distinct thresholds (descending) of recall increment x precision; None without fraud."""
    s, y = _arrays(scores, y)
    pos = int(y.sum())
    if pos == 0:
        return None
    order = np.argsort(-s, kind="mergesort")
    ss, yy = s[order], y[order]
    last = np.r_[ss[1:] != ss[:-1], True]
    tp = np.cumsum(yy)[last].astype(np.float64)
    n = (np.flatnonzero(last) + 1).astype(np.float64)
    gained = np.diff(np.r_[0.0, tp])
    return float(np.sum(gained * (tp / n)) / pos)


def budget_k(budget: float, n: int) -> int:
    """How many of ``n`` events a review budget (a share) allows: the floor, robust to float error, and at
    least one (as ``models.train`` counts it, so a model card and this report agree)."""
    if n <= 0 or budget <= 0:
        return 0
    return max(1, min(n, math.floor(budget * n + 1e-9)))


def at_budget(scores, y, budget: float) -> dict:
    """Precision and recall when the top ``budget`` share by score is reviewed: ``k`` = :func:`budget_k`
    events, the ``threshold`` the k-th score. Events tied with it (``tied`` of them) count at their average
    fraud rate, the expectation over any order among ties, so the figure does not depend on how a sort
    breaks ties. ``recall_ceiling``: the recall a perfect model would reach with ``k`` reviews."""
    s, y = _arrays(scores, y)
    n, pos = len(s), int(y.sum())
    k = budget_k(budget, n)
    if k == 0:
        return {"k": 0, "n": n, "threshold": None, "tied": 0, "true_positives": 0.0, "precision": None,
                "recall": 0.0 if pos else None, "recall_ceiling": 0.0 if pos else None}
    t = float(np.sort(s)[::-1][k - 1])
    above, tied = s > t, s == t
    need = k - int(above.sum())
    tp = float(y[above].sum()) + need * float(y[tied].sum()) / float(tied.sum())
    return {"k": k, "n": n, "threshold": t, "tied": int(tied.sum()), "true_positives": tp, "precision": tp / k,
            "recall": tp / pos if pos else None, "recall_ceiling": min(k, pos) / pos if pos else None}


def roc_curve(scores, y, max_points: int = 300) -> list[tuple[float, float]]:
    """(false-positive rate, true-positive rate) at each distinct threshold, from (0, 0) to (1, 1)."""
    s, y = _arrays(scores, y)
    pos, neg = int(y.sum()), len(y) - int(y.sum())
    if pos == 0 or neg == 0:
        return []
    order = np.argsort(-s, kind="mergesort")
    ss, yy = s[order], y[order]
    last = np.r_[ss[1:] != ss[:-1], True]
    tp = np.cumsum(yy)[last]
    fp = (np.flatnonzero(last) + 1) - tp
    pts = np.c_[np.r_[0.0, fp / neg], np.r_[0.0, tp / pos]]
    if len(pts) > max_points:
        pts = pts[np.unique(np.linspace(0, len(pts) - 1, max_points).round().astype(int))]
    return [(float(a), float(b)) for a, b in pts]


DAY_MS = 86_400_000


def entity_precision_at_k(scores, y, entity, ts, k: int = 100, remove_detected: bool = True) -> dict:
    """Card (entity) precision top-k per day, as the Fraud Detection Handbook (Le Borgne et al.) defines it:
    for each UTC day in turn, each entity (a card, a user) gets the highest score of its events that day
    and is fraudulent that day if any of those events is; the k highest-scored entities are reviewed, and
    the day's precision is the fraudulent ones among them / k (k, even on a day with fewer entities).
    ``mean`` averages the days. With ``remove_detected`` (the Handbook's default), an entity found
    fraudulent in an earlier day's top k is left out of the later days (it is blocked already).

    Entities tied with the k-th score are taken at random: the day's fraudulent count is its expectation
    (as :func:`at_budget`). An entity counts as found (and is removed later) only if it is in the top k
    whatever the order among ties."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    yy = np.asarray(y, dtype=bool).reshape(-1)
    ent = np.asarray(entity, dtype=object).reshape(-1)
    day = np.asarray(ts, dtype=np.int64).reshape(-1) // DAY_MS
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    found: set = set()
    days = []
    for d in np.unique(day):
        idx = np.flatnonzero(day == d)
        best: dict = {}
        bad: dict = {}
        for i in idx:
            e = ent[i]
            if e in found:
                continue
            if e not in best or s[i] > best[e]:
                best[e] = s[i]
            bad[e] = bad.get(e, False) or bool(yy[i])
        row = {"day": int(d) * DAY_MS, "entities": len(best), "fraud_entities": sum(bad.values()),
               "precision": 0.0, "found": 0.0}
        if best:
            names = list(best)
            es = np.asarray([best[e] for e in names])
            eb = np.asarray([bad[e] for e in names])
            kk = min(k, len(names))
            t = float(np.sort(es)[::-1][kk - 1])
            above, tied = es > t, es == t
            need = kk - int(above.sum())
            tp = float(eb[above].sum()) + need * float(eb[tied].sum()) / float(tied.sum())
            row["found"] = tp
            row["precision"] = tp / k
            sure = above | (tied if need == int(tied.sum()) else np.zeros_like(tied))
            if remove_detected:
                found.update(e for e, b, u in zip(names, eb, sure) if b and u)
        days.append(row)
    mean = float(np.mean([r["precision"] for r in days])) if days else None
    return {"k": k, "remove_detected": remove_detected, "days": days, "mean": mean}


def recall_at_budget_by_group(scores, y, group, budget: float) -> dict[str, dict]:
    """Per group (a fraud scenario): the share of its fraud events among the top ``budget`` share of *all*
    events by score (the review budget of :func:`at_budget`, same k and threshold, ties at their expected
    value). Only groups that hold fraud events are listed."""
    s, yy = _arrays(scores, y)
    g = np.asarray([str(x) for x in np.asarray(group, dtype=object).reshape(-1)], dtype=object)
    b = at_budget(s, yy, budget)
    out: dict[str, dict] = {}
    if b["k"] == 0:
        return out
    t = b["threshold"]
    above, tied = s > t, s == t
    frac = (b["k"] - int(above.sum())) / float(tied.sum())
    for name in sorted({str(x) for x in g[yy]}):
        m = yy & (g == name)
        n = int(m.sum())
        hit = float(m[above].sum()) + frac * float(m[tied].sum())
        out[name] = {"fraud_events": n, "caught": round(hit, 6), "recall": hit / n}
    return out


Z95 = 1.959963984540054  # the standard normal's 97.5 % quantile: two-sided 95 % intervals


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion k / n: the p whose score test |k/n - p| <= z sqrt(p(1-p)/n)
    does not reject; None when n is 0."""
    if n <= 0:
        return None
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, mid - half), min(1.0, mid + half)


def diff_interval(k1: int, n1: int, k2: int, n2: int, z: float = Z95) -> tuple[float, float, float] | None:
    """p1 - p2 and its 95 % interval by Newcombe's hybrid score method (his method 10: from the two Wilson
    intervals), which keeps its coverage for small counts and rates near 0 where the Wald interval does not.
    None when either n is 0."""
    a, b = wilson(k1, n1, z), wilson(k2, n2, z)
    if a is None or b is None:
        return None
    p1, p2 = k1 / n1, k2 / n2
    d = p1 - p2
    lo = d - math.sqrt((p1 - a[0]) ** 2 + (b[1] - p2) ** 2)
    hi = d + math.sqrt((a[1] - p1) ** 2 + (p2 - b[0]) ** 2)
    return d, lo, hi
