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
