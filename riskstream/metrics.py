"""Figures of scores against labels and of latencies, shared by the report, the audit, the demo, the bench
and training, so that a model card and a report computed from the same scores agree.

Every function takes ``(scores, y)`` in that order (scores first, as the report always has).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Iterable

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
    None when either n is 0. Pitfall: for independent trials only; the arms of a split by user are
    clustered (:func:`cluster_diff_interval`)."""
    a, b = wilson(k1, n1, z), wilson(k2, n2, z)
    if a is None or b is None:
        return None
    p1, p2 = k1 / n1, k2 / n2
    d = p1 - p2
    lo = d - math.sqrt((p1 - a[0]) ** 2 + (b[1] - p2) ** 2)
    hi = d + math.sqrt((a[1] - p1) ** 2 + (p2 - b[0]) ** 2)
    return d, lo, hi


# -- rates clustered by a key (a traffic split by user) -----------------------------------------------------
#
# A split assigns *users* (the split key) to arms, and a user's events are not independent trials: fraud,
# hence blocks and reviews, comes in bursts from single users (a card-testing session, a promo ring's fresh
# accounts). Treating each event as a trial (Wilson, Newcombe) makes intervals far too narrow: two halves of
# the same users under the same model then differ "significantly" again and again. The functions below take
# the user (or a group of users) as the unit: a rate is the ratio of sums K / N over the clusters, its
# variance the cluster-robust (delta-method, CR1) one, and the critical value Student's t on the clusters'
# degrees of freedom.


@dataclass(frozen=True)
class ClusterSums:
    """The sufficient statistics of a rate clustered by a key: over the clusters g (users, or groups of whole
    users) with n_g events of which k_g count, the number of clusters (with at least one event) and the sums
    of n_g, k_g, k_g^2, n_g^2 and k_g n_g. Sums of whole clusters add up; a user split between two groups
    does not (the groups are no longer independent)."""

    clusters: int = 0
    n: int = 0
    k: int = 0
    kk: int = 0
    nn: int = 0
    kn: int = 0

    @classmethod
    def of(cls, counts: Iterable[tuple[int, int]]) -> "ClusterSums":
        """From (n_g, k_g) per cluster; clusters without events are left out."""
        c = n = k = kk = nn = kn = 0
        for ng, kg in counts:
            ng, kg = int(ng), int(kg)
            if ng <= 0:
                continue
            c += 1
            n += ng
            k += kg
            kk += kg * kg
            nn += ng * ng
            kn += kg * ng
        return cls(c, n, k, kk, nn, kn)

    @property
    def rate(self) -> float | None:
        return self.k / self.n if self.n else None

    def rss(self) -> float:
        """The sum over clusters of (k_g - p n_g)^2, p = K / N: computed in integers, so exact until the
        final division (no cancellation however large the sums)."""
        if not self.n:
            return 0.0
        num = self.kk * self.n * self.n - 2 * self.k * self.kn * self.n + self.k * self.k * self.nn
        return max(num, 0) / (self.n * self.n)

    def variance(self) -> float | None:
        """The cluster-robust (CR1) variance of the ratio K / N: G / (G - 1) x rss / N^2, the delta method's
        variance of a ratio of two means over G independent clusters. None with fewer than 2 clusters."""
        if self.clusters < 2:
            return None
        return self.clusters / (self.clusters - 1) * self.rss() / (self.n * self.n)


def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of the regularized incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        step = d * c
        h *= step
        if abs(step - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    lbeta = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1) / (a + b + 2):
        return math.exp(lbeta) * _betacf(a, b, x) / a
    return 1.0 - math.exp(lbeta) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """Student's t distribution function with ``df`` (> 0, not necessarily whole) degrees of freedom."""
    tail = 0.5 * _betainc(df / 2, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_pdf(t: float, df: float) -> float:
    """Student's t density with ``df`` degrees of freedom."""
    return math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
                    - (df + 1) / 2 * math.log1p(t * t / df))


def _cornish_fisher(p: float, df: float) -> float:
    """The t quantile's expansion in the normal one (Abramowitz and Stegun 26.7.5, four terms): relative
    error below 5e-11 from 300 degrees of freedom on, for p up to 0.99995."""
    z = NormalDist().inv_cdf(p)
    g1 = (z ** 3 + z) / 4
    g2 = (5 * z ** 5 + 16 * z ** 3 + 3 * z) / 96
    g3 = (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / 384
    g4 = (79 * z ** 9 + 776 * z ** 7 + 1482 * z ** 5 - 1920 * z ** 3 - 945 * z) / 92160
    return z + g1 / df + g2 / df ** 2 + g3 / df ** 3 + g4 / df ** 4


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile (0.5 <= p < 1) of Student's t with ``df`` (> 0) degrees of freedom: the
    Cornish-Fisher expansion from 300 degrees of freedom on, below that Newton's method on :func:`t_cdf`
    from it, kept inside a bracket (to 1e-12, relative)."""
    if not 0.5 <= p < 1:
        raise ValueError(f"p must be in [0.5, 1), got {p}")
    if df <= 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    if p == 0.5:
        return 0.0
    t = _cornish_fisher(p, df)
    if df >= 300:
        return t
    lo, hi = 0.0, math.inf  # the quantile lies between
    t = max(t, 1e-3)
    for _ in range(200):
        f = t_cdf(t, df) - p
        if f < 0:
            lo = t
        else:
            hi = t
        nt = t - f / t_pdf(t, df)
        if abs(nt - t) <= 1e-12 * t:
            return nt
        if not lo < nt < hi:  # Newton left the bracket: bisect (or double while there is no upper end)
            nt = t * 2 if hi == math.inf else (lo + hi) / 2
        t = nt
    return t


def cluster_wilson(s: ClusterSums, z: float = Z95) -> tuple[float, float] | None:
    """The interval of one clustered rate: Wilson's, on the effective sample size N / deff x (z / t)^2.
    deff, the design effect, is the CR1 variance over the binomial p(1-p)/N, at least 1 (1 when p is 0 or 1,
    where the clusters show no spread); t is Student's on G - 1 degrees of freedom at the level of z, so few
    clusters widen the interval (Korn and Graubard's adjustment). None with fewer than 2 clusters."""
    v = s.variance()
    if v is None:
        return None
    p = s.k / s.n
    deff = max(1.0, v / (p * (1 - p) / s.n)) if 0 < p < 1 else 1.0
    t = t_quantile(NormalDist().cdf(z), s.clusters - 1)
    n = s.n / deff * (z / t) ** 2
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, mid - half), min(1.0, mid + half)


def cluster_diff_interval(a: ClusterSums, b: ClusterSums, z: float = Z95) -> tuple[float, float, float] | None:
    """p_a - p_b of two arms whose clusters (users) were randomised between them, and its interval at the level
    of ``z``: the difference +- t x sqrt(V_a + V_b).

    - V: each arm's CR1 variance (:meth:`ClusterSums.variance`), but at least the *pooled* one, G / N^2 x the
      mean squared cluster residual of both arms (each about its own rate): an arm that has drawn none of the
      traffic's bursts yet (a small arm without a single block) shows no spread of its own, yet carries the
      same uncertainty as the other. Never narrower than either, so conservative when the arms' spreads
      differ.
    - t: Student's at the level of ``z`` on Welch-Satterthwaite degrees of freedom from each arm's G - 1.
    - the ends are clipped to [-1, 1], the range of a difference of two rates (with few users t is large:
      two users an arm can give +-3).

    None when an arm has fewer than 2 clusters."""
    va, vb = a.variance(), b.variance()
    if va is None or vb is None:
        return None
    d = a.k / a.n - b.k / b.n
    pooled = (a.rss() + b.rss()) / (a.clusters + b.clusters - 2)
    va = max(va, a.clusters * pooled / (a.n * a.n))
    vb = max(vb, b.clusters * pooled / (b.n * b.n))
    v = va + vb
    if v <= 0:  # both arms at 0 or 1 in every cluster: no spread at all
        return d, d, d
    df = v * v / (va * va / (a.clusters - 1) + vb * vb / (b.clusters - 1))
    half = t_quantile(NormalDist().cdf(z), df) * math.sqrt(v)
    return d, max(-1.0, d - half), min(1.0, d + half)
