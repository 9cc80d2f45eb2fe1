"""Inputs outside what the model saw: each feature's training distribution, stored in the model's spec
(``training_distribution``), and a drift measure of new inputs against it.

The reference of a feature is its training rows binned at their deciles (edges deduplicated: a feature
that is 0 on most rows has few bins) with each bin's share, plus the training range. New rows are binned
on the same edges and compared by the population stability index,
``PSI = sum((a - e) * ln(a / e))`` over the bins (shares smoothed by ``EPS``): below 0.1 stable, 0.1-0.25 a
moderate shift, above ``PSI_WARN`` (0.25) a shift the model's scores should not be trusted across. Also
reported: the share of rows beyond the training range (above its max or below its min), which PSI cannot
show when the training's top bin is open-ended.

Pitfalls: PSI over a few hundred rows is noise (``MIN_ROWS``); a feature with a single training value
(a constant) has one bin and PSI 0 unless values leave the range, which ``outside`` reports. The same code
serves ``score``, ``report`` and the job's decide stage (sampled windows of rows), so their figures agree.
The decide stage hands it batches of a few rows: :meth:`DriftMonitor.add` only queues them and bins every
``BIN_ROWS`` rows at once, all features in one pass (binning each small batch per feature cost ~0.8 ms per
batch, which halved the job's throughput).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

QUANTILES = tuple(q / 10 for q in range(1, 10))  # inner bin edges at the training deciles
PSI_WARN = 0.25
OUTSIDE_WARN = 0.05  # a share of rows beyond the training range that is named even when PSI is low
EPS = 1e-4
MIN_ROWS = 500
BIN_ROWS = 4096  # queued rows binned at once


def reference(x: np.ndarray, names: list[str] | tuple[str, ...]) -> dict:
    """The training distribution of the columns of ``x`` (rows x features), for the model's spec."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != len(names):
        raise ValueError(f"reference: {x.shape} rows for {len(names)} features")
    feats = {}
    for j, name in enumerate(names):
        col = x[:, j]
        col = col[np.isfinite(col)]
        if col.size == 0:
            feats[name] = {"edges": [], "shares": [1.0], "min": None, "max": None}
            continue
        edges = np.unique(np.quantile(col, QUANTILES))
        counts = np.bincount(np.searchsorted(edges, col, side="right"), minlength=len(edges) + 1)
        feats[name] = {"edges": [float(e) for e in edges],
                       "shares": [round(float(c) / col.size, 6) for c in counts],
                       "min": float(col.min()), "max": float(col.max())}
    return {"method": "deciles of the training rows; PSI", "rows": int(x.shape[0]), "features": feats}


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index of two share vectors over the same bins (smoothed by EPS)."""
    e = np.maximum(np.asarray(expected, dtype=np.float64), EPS)
    a = np.maximum(np.asarray(actual, dtype=np.float64), EPS)
    e, a = e / e.sum(), a / a.sum()
    return float(np.sum((a - e) * np.log(a / e)))


@dataclass(frozen=True)
class FeatureDrift:
    name: str
    psi: float
    above: float  # share of rows above the training max
    below: float  # share of rows below the training min
    rows: int
    train_min: float | None
    train_max: float | None

    @property
    def outside(self) -> float:
        return self.above + self.below

    @property
    def drifted(self) -> bool:
        return self.psi > PSI_WARN or self.outside > OUTSIDE_WARN

    def describe(self) -> str:
        parts = [f"PSI {self.psi:.2f}"]
        if self.above:
            parts.append(f"{self.above:.0%} of rows above the training max {self.train_max:g}")
        if self.below:
            parts.append(f"{self.below:.0%} below the training min {self.train_min:g}")
        return f"{self.name} ({'; '.join(parts)})"


class DriftMonitor:
    """Bin counts of new rows per feature, against a reference (:func:`reference`); :meth:`result` gives
    each feature's drift, :meth:`warning` one line naming the drifted features (None when none drifted or
    fewer than ``MIN_ROWS`` rows were seen)."""

    def __init__(self, ref: dict, names: list[str] | tuple[str, ...]):
        self.names = tuple(names)
        feats = ref.get("features", {})
        missing = [n for n in self.names if n not in feats]
        if missing:
            raise ValueError(f"the training distribution has no entry for {missing[:5]}")
        self._edges = [np.asarray(feats[n]["edges"], dtype=np.float64) for n in self.names]
        self._shares = [np.asarray(feats[n]["shares"], dtype=np.float64) for n in self.names]
        self._min = [feats[n]["min"] for n in self.names]
        self._max = [feats[n]["max"] for n in self.names]
        # all features' edges as one matrix padded with +inf (never <= a value), each feature's bins at an
        # offset in one flat count vector, its range as arrays (NaN where the training had no value)
        width = max((len(e) for e in self._edges), default=0)
        self._edge_matrix = np.full((len(self.names), width), np.inf)
        for j, e in enumerate(self._edges):
            self._edge_matrix[j, :len(e)] = e
        self._n_edges = np.asarray([len(e) for e in self._edges], dtype=np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(self._n_edges + 1)]).astype(np.int64)
        self._lo = np.asarray([np.nan if m is None else m for m in self._min], dtype=np.float64)
        self._hi = np.asarray([np.nan if m is None else m for m in self._max], dtype=np.float64)
        self.reset()

    def reset(self) -> None:
        self.rows = 0
        self._pending: list[np.ndarray] = []
        self._pending_rows = 0
        self._flat = np.zeros(int(self._offsets[-1]), dtype=np.int64)
        self._above = np.zeros(len(self.names), dtype=np.int64)
        self._below = np.zeros(len(self.names), dtype=np.int64)

    def add(self, x: np.ndarray) -> None:
        """Count rows (rows x features, in ``names`` order), as the model sees them (float32). Queued:
        binned every ``BIN_ROWS`` rows, or when a figure is read."""
        x = np.asarray(x, dtype=np.float32)
        if x.size == 0:
            return
        if x.ndim != 2 or x.shape[1] != len(self.names):
            raise ValueError(f"drift: rows of width {x.shape[-1]}, expected {len(self.names)}")
        self.rows += x.shape[0]
        self._pending.append(x)
        self._pending_rows += x.shape[0]
        if self._pending_rows >= BIN_ROWS:
            self._bin()

    def _bin(self) -> None:
        """Bin the queued rows: each value's bin is the number of its feature's edges at or below it
        (``searchsorted(edges, v, side="right")``; NaN sorts last, so it takes the top bin)."""
        if not self._pending:
            return
        x = np.concatenate(self._pending).astype(np.float64)
        self._pending, self._pending_rows = [], 0
        idx = np.minimum((x[:, :, None] >= self._edge_matrix[None, :, :]).sum(axis=2), self._n_edges[None, :])
        idx = np.where(np.isnan(x), self._n_edges[None, :], idx)  # +inf would also pass the +inf padding: hence the cap
        self._flat += np.bincount((idx + self._offsets[None, :-1]).ravel(), minlength=len(self._flat))
        with np.errstate(invalid="ignore"):
            self._above += np.count_nonzero(x > self._hi[None, :], axis=0)
            self._below += np.count_nonzero(x < self._lo[None, :], axis=0)

    @property
    def _counts(self) -> list[np.ndarray]:
        self._bin()
        return [self._flat[self._offsets[j]:self._offsets[j + 1]] for j in range(len(self.names))]

    def counts(self) -> dict:
        """The monitor's counts, JSON-able (``load`` takes them back): a controller persists them."""
        self._bin()
        return {"rows": int(self.rows), "bins": [c.tolist() for c in self._counts],
                "above": self._above.tolist(), "below": self._below.tolist()}

    def load(self, counts: dict) -> None:
        bins = counts["bins"]
        if len(bins) != len(self._counts) or any(len(b) != len(c) for b, c in zip(bins, self._counts)):
            raise ValueError("drift counts of another reference")
        self.reset()
        self.rows = int(counts["rows"])
        self._flat = np.concatenate([np.asarray(b, dtype=np.int64) for b in bins]) if bins else self._flat
        self._above = np.asarray(counts["above"], dtype=np.int64)
        self._below = np.asarray(counts["below"], dtype=np.int64)

    def max_psi(self) -> float:
        """The largest feature PSI (0 without rows)."""
        return max((d.psi for d in self.result()), default=0.0) if self.rows else 0.0

    def result(self) -> list[FeatureDrift]:
        out = []
        n = max(self.rows, 1)
        counts = self._counts  # bins the queued rows first
        for j, name in enumerate(self.names):
            out.append(FeatureDrift(name, psi(self._shares[j], counts[j] / n) if self.rows else 0.0,
                                    self._above[j] / n, self._below[j] / n, self.rows, self._min[j], self._max[j]))
        return out

    def drifted(self) -> list[FeatureDrift]:
        """The drifted features, most severe first (none below ``MIN_ROWS`` rows)."""
        if self.rows < MIN_ROWS:
            return []
        # beyond the training range first (the model never saw such values), then by PSI
        return sorted((d for d in self.result() if d.drifted),
                      key=lambda d: (-(d.outside if d.outside > OUTSIDE_WARN else 0.0), -d.psi, d.name))

    def warning(self, model_version: str, limit: int = 5) -> str | None:
        bad = self.drifted()
        if not bad:
            return None
        more = f" and {len(bad) - limit} more" if len(bad) > limit else ""
        return (f"inputs outside what {model_version} was trained on, over {self.rows:,} rows: "
                + ", ".join(d.describe() for d in bad[:limit]) + more
                + "; its scores on these inputs are not reliable: retrain on this data (docs/models.md)")


def monitor_for(spec: dict) -> DriftMonitor | None:
    """A monitor for a model's spec, or None when the spec has no training distribution (older models)."""
    ref = spec.get("training_distribution")
    if not ref:
        return None
    return DriftMonitor(ref, spec["feature_names"])
