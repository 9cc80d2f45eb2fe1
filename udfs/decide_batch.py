"""The decide stage scoring in batches: a vectorized (pandas / Arrow) PyFlink UDF over the columns of the
record Rows that scoring and the policy read (:data:`INPUT_FIELDS`), plus the live control settings that
``io.riskstream.flink.ControlAttach`` (udfs/jvm) appends to them. It returns one *verdict* per row
(``udfs.decision.verdict``: decision, score, versions, reasons, shadow; or an error), and the JVM writes
the decision record from the Row and the verdict (``io.riskstream.flink.DecisionAssemble``): the ids, the
features and the signals never cross to Python and back.

Per batch: one ONNX call per control segment and arm of a split (``udfs.split``: the column
``arm_bucket``, the bucket ``ControlAttach`` computed from the split's key; a batch may mix arms), one for
the challenger, the policy over each arm's rows at once (``Policy.decide_many``, equal to ``Policy.decide`` row by row). PyFlink
hands the UDF at most ``python.fn-execution.arrow.batch.size`` rows, after at most
``python.fn-execution.bundle.time`` ms: that bounds the batch time.

Pitfalls:
- Control: a vectorized UDF holds no broadcast state. ``control`` carries the whole settings only on the
  first row after they changed on the upstream instance (and after a restart); other rows carry null and
  the version. The UDF keeps what it last saw; a version it has no settings for (never expected) is
  decided with the start-up settings and counted as ``control_rejected``.
- Feature values cross Arrow as float64; only the model input is float32, as in the per-row stage, and the
  policy compares in float64, as there.
- A row that fails (a bug, not bad input) still gets a decision: an error verdict, which the JVM writes as
  ``review`` with ``processing_error``.
"""

from __future__ import annotations

import bisect
import time
from pathlib import Path

import numpy as np
import orjson

from .control import Control, parse_control
from .decision import verdict
from .events import EVENT_TYPE_INDEX
from .features import FEATURE_NAMES, SIGNALS, features_for
from .policy import DECISIONS, Policy
from .worker_log import say

LATENCY_BUCKETS_US = (100, 250, 500, 1000, 2500, 5000, 10000)  # as udfs.flink: per-row share of a batch
# the deciding model's inputs against its training distribution (udfs.drift), per subtask, over windows of
# this many rows: gauges ``drift_psi_max_milli`` (the largest feature PSI x 1000: Beam gauges are integers)
# and ``drift_features`` (features over the warning bounds), and a log line naming them
DRIFT_WINDOW_ROWS = 20_000
_EVENT_FEATURES = features_for("event")
# the record fields the verdict needs (the UDF's inputs; the others stay in the JVM)
INPUT_FIELDS: tuple[str, ...] = tuple(dict.fromkeys(
    [*(f.field for f in _EVENT_FEATURES), "event_type", "values", "late", "signals"]))



class DecideBatch:
    """The body of the vectorized decide UDF (wrapped by :func:`decide_udf`); plain code, testable without
    Flink: :meth:`verdict_columns` takes the columns as pandas Series or lists."""

    def __init__(self, model_path: str, policy: Policy, project_root: str | None, columns: tuple[str, ...]):
        self.model_path = model_path
        self.policy = policy
        self.project_root = project_root
        self.columns = columns
        self.control: Control | None = None
        self.settings_version = 0
        self.metrics = None
        self.drift_window_rows = DRIFT_WINDOW_ROWS
        self._drift: dict = {}  # model version -> its DriftMonitor (None: no training distribution)
        self.drift_psi_milli = 0
        self.drift_features = 0
        self.drift_warning: str | None = None  # the newest window's warning

    def open(self, metric_group=None) -> None:
        from .scoring import Scorer

        root = Path(self.project_root) if self.project_root else None
        self.initial = Control.initial(Scorer(self.model_path), self.policy, root)
        self.control = self.initial
        if metric_group is not None:
            self.metrics = metric_group
            self.by_kind = {d: metric_group.counter(f"decisions_{d}") for d in DECISIONS}
            self.errors = metric_group.counter("processing_errors")
            self.control_applied = metric_group.counter("control_applied")
            self.control_rejected = metric_group.counter("control_rejected")
            metric_group.gauge("drift_psi_max_milli", lambda: self.drift_psi_milli)
            metric_group.gauge("drift_features", lambda: self.drift_features)
            self.hists: dict[str, list] = {}
            self.arm_counters: dict[tuple[str, str], object] = {}

    # -- control -------------------------------------------------------------------------------------
    def _apply_settings(self, text: str, version: int) -> None:
        """Rebuild the control from the start-up settings and the JSON of the newest valid messages."""
        c = Control(self.initial.champion, self.initial.policy, None, self.initial.rules_version,
                    project_root=self.initial.project_root)
        for key, raw in sorted(orjson.loads(text).items(), key=lambda kv: kv[0] != "champion"):
            try:
                c.apply(parse_control(orjson.dumps(raw)))
                self._count("control_applied")
            except Exception as e:  # validated upstream, but a model file can be missing on this host
                self._count("control_rejected")
                say(f"[riskstream] decide: control {key} refused here, keeping the previous: {e}")
        self.control = c
        self.settings_version = version

    def _count(self, name: str, n: int = 1) -> None:
        if self.metrics is not None:
            getattr(self, name).inc(n)

    # -- decide --------------------------------------------------------------------------------------
    def verdict_columns(self, cols: dict) -> list[bytes]:
        """One verdict (JSON bytes) per row of ``cols`` (:data:`INPUT_FIELDS`, plus ``control_version`` and
        ``control`` when the job has live control)."""
        n = len(cols["values"])
        t0 = time.perf_counter()
        types = [str(t) for t in _list(cols["event_type"])]
        lates = np.asarray(_list(cols["late"]), dtype=bool)
        bad: dict[int, str] = {}
        try:
            X = self._matrix(cols, types, n)
            S = self._signals(cols.get("signals"), n)
        except Exception:  # a bug upstream (e.g. a row without values): that row alone gets an error verdict
            X, S, bad = self._rowwise(cols, types, n)
        versions = cols.get("control_version")
        settings = cols.get("control")
        buckets = cols.get("arm_bucket")
        buckets = np.asarray(_list(buckets), dtype=np.int64) if buckets is not None else np.full(n, -1, dtype=np.int64)
        out: list[bytes] = [b""] * n
        start = 0
        while start < n:  # segments of rows decided under one control setting
            if settings is not None and settings[start] is not None:
                self._apply_settings(settings[start], int(versions[start]))
            elif versions is not None and int(versions[start]) != self.settings_version:
                self._count("control_rejected")  # settings never seen for this version: start-up ones
                self.control, self.settings_version = self.initial, int(versions[start])
            end = start + 1
            while end < n and (settings is None or settings[end] is None) and \
                    (versions is None or int(versions[end]) == self.settings_version):
                end += 1
            self._segment(X, S, types, lates, buckets, start, end, out, bad)
            start = end
        if self.metrics is not None:
            per_row_us = (time.perf_counter() - t0) * 1e6 / max(n, 1)
            self._latency_buckets(self.control.champion.version)[
                bisect.bisect_left(LATENCY_BUCKETS_US, per_row_us)].inc(n)
        return out

    @staticmethod
    def _matrix(cols: dict, types: list[str], n: int) -> np.ndarray:
        """The model input in float64: the event features, then the entity stages' values."""
        parts = [np.asarray([EVENT_TYPE_INDEX[t] for t in types], dtype=np.float64) if f.agg == "type_index"
                 else np.asarray(_list(cols[f.field]), dtype=np.float64) for f in _EVENT_FEATURES]
        values = np.vstack([np.asarray(v, dtype=np.float64) for v in _list(cols["values"])]) if n else \
            np.zeros((0, 0))
        return np.column_stack([*parts, values])

    def _rowwise(self, cols: dict, types: list[str], n: int) -> tuple[np.ndarray, np.ndarray | None, dict[int, str]]:
        """The matrices row by row: a row that cannot be read is zeros there and named in the returned
        {row: error} (it gets an error verdict, the other rows are decided)."""
        width = len(FEATURE_NAMES)
        X = np.zeros((n, width))
        S = None if cols.get("signals") is None else np.full((n, len(SIGNALS)), np.nan)
        bad: dict[int, str] = {}
        one = {k: _list(v) for k, v in cols.items() if k in INPUT_FIELDS}
        for i in range(n):
            try:
                row = {k: v[i:i + 1] for k, v in one.items()}
                x = self._matrix(row, types[i:i + 1], 1)
                if x.shape[1] != width:
                    raise ValueError(f"{x.shape[1]} feature values, the spec has {width}")
                X[i] = x[0]
                if S is not None:
                    S[i] = self._signals(row["signals"], 1)[0]
            except Exception as e:
                bad[i] = f"{type(e).__name__}: {e}"
        return X, S, bad

    @staticmethod
    def _signals(sigs, n: int) -> np.ndarray | None:
        if sigs is None:
            return None
        S = np.full((n, len(SIGNALS)), np.nan)
        for i, s in enumerate(_list(sigs)):
            if s is not None:
                S[i] = s
        return S

    def _arms(self, buckets, start: int, end: int) -> list[tuple[object, object, str | None, np.ndarray]]:
        """The segment's rows by arm: (scorer, policy, arm name, row offsets in the segment); one group, arm
        None, without a split."""
        c = self.control
        if c.split is None:
            return [(c.champion, c.policy, None, np.arange(end - start))]
        idx = c.split.arm_indices(buckets[start:end])
        groups = []
        for k, arm in enumerate(c.split.arms):
            rows = np.flatnonzero(idx == k)
            if len(rows):
                groups.append((arm.scorer or c.champion, c.arm_policy(arm), arm.name, rows))
        return groups

    def _segment(self, X, S, types, lates, buckets, start, end, out, bad: dict[int, str], single: bool = False) -> None:
        """Decide rows [start, end) under the current control: one ONNX call per arm (and one for the
        challenger), the policy per arm at once. A batch that cannot be scored is decided row by row."""
        c = self.control
        types_arr = np.asarray(types[start:end], dtype=object)
        x32 = X[start:end].astype(np.float32)
        sig = S[start:end] if S is not None else None
        lat = lates[start:end]
        groups = self._arms(buckets, start, end)
        try:
            scored = [(sc, pol, arm, rows, np.asarray(sc.score_batch(_take(x32, rows)), dtype=np.float64))
                      for sc, pol, arm, rows in groups]
            shadows = np.asarray(c.challenger.score_batch(x32), dtype=np.float64) if c.challenger is not None else None
        except Exception as e:  # a batch that cannot be scored: each row on its own (fail-safe per row)
            if single:
                sc, pol, arm, _ = groups[0]
                self._errors(out, start, end, f"{type(e).__name__}: {e}", sc.version, pol.version, arm)
                return
            for i in range(start, end):
                if i in bad:
                    sc, pol, arm, _ = self._arms(buckets, i, i + 1)[0]
                    self._errors(out, i, i + 1, bad[i], sc.version, pol.version, arm)
                else:
                    self._segment(X, S, types, lates, buckets, i, i + 1, out, bad, single=True)
            return
        for sc, _, _, rows, _ in scored:  # each deciding model's inputs against its training distribution
            self._watch_drift(sc, _take(x32, rows))
        Xs = X[start:end]
        try:
            shadow_decisions = c.policy.decide_many(shadows, Xs, types_arr.tolist(), lat, sig)[0] \
                if shadows is not None else None
        except Exception as e:
            self._errors(out, start, end, f"{type(e).__name__}: {e}")
            return
        for scorer, policy, arm, rows, scores in scored:
            model, pv = scorer.version, policy.version
            try:
                decisions, reasons = policy.decide_many(scores, _take(Xs, rows), _take(types_arr, rows).tolist(),
                                                        _take(lat, rows), _take(sig, rows) if sig is not None else None)
            except Exception as e:
                for k in rows.tolist():
                    self._errors(out, start + k, start + k + 1, f"{type(e).__name__}: {e}", model, pv, arm)
                continue
            written = []
            for j, k in enumerate(rows.tolist()):
                if start + k in bad:
                    self._errors(out, start + k, start + k + 1, bad[start + k], model, pv, arm)
                    continue
                shadow = None if shadows is None else {"model_version": c.challenger.version,
                                                       "score": round(float(shadows[k]), 6),
                                                       "decision": shadow_decisions[k]}
                out[start + k] = orjson.dumps(verdict(decisions[j], float(scores[j]), reasons[j], model, pv,
                                                      c.rules_version, shadow, arm))
                written.append(decisions[j])
            for kind in set(written):  # one counter call per kind and batch, not per row
                self._count_kind(kind, written.count(kind))
                if arm is not None and self.metrics is not None:  # per arm of a split: arm.<name>.decisions_<kind>
                    self._arm_counter(arm, kind).inc(written.count(kind))

    def _watch_drift(self, scorer, x32: np.ndarray) -> None:
        """Count the deciding model's inputs; at the end of each window set the gauges and log the drift."""
        from .drift import monitor_for

        if scorer.version not in self._drift:
            self._drift[scorer.version] = monitor_for(scorer.spec)
        mon = self._drift[scorer.version]
        if mon is None:
            return
        mon.add(x32)
        if mon.rows < self.drift_window_rows:
            return
        self.drift_psi_milli = int(round(1000 * max(d.psi for d in mon.result())))
        self.drift_features = len(mon.drifted())
        self.drift_warning = mon.warning(scorer.version)
        if self.drift_warning:
            say(f"[riskstream] decide: WARNING {self.drift_warning}")
        mon.reset()

    def _errors(self, out, start, end, detail, champion=None, policy=None, arm: str | None = None) -> None:
        c = self.control
        err = {"error": detail[:200], "model_version": champion or c.champion.version,
               "policy_version": policy or c.policy.version}
        if arm is not None:
            err["arm"] = arm
        err = orjson.dumps(err)
        for i in range(start, end):
            out[i] = err
        self._count("errors", end - start)
        self._count_kind("review", end - start)

    def _arm_counter(self, arm: str, kind: str):
        """Counter ``arm.<arm>.decisions_<kind>`` of this subtask (split arms come and go with control)."""
        c = self.arm_counters.get((arm, kind))
        if c is None:
            c = self.arm_counters[(arm, kind)] = self.metrics.add_group("arm", arm).counter(f"decisions_{kind}")
        return c

    def _count_kind(self, decision: str, n: int) -> None:
        if self.metrics is not None:
            self.by_kind[decision].inc(n)

    def _latency_buckets(self, version: str) -> list:
        h = self.hists.get(version)
        if h is None:
            g = self.metrics.add_group("model_version", version).add_group("scoring_latency_us")
            h = self.hists[version] = [g.counter(f"le_{b}") for b in LATENCY_BUCKETS_US] + [g.counter("le_inf")]
        return h


def _take(a: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``a[rows]``, without the copy when ``rows`` is every row in order (no split: one group)."""
    return a if len(rows) == len(a) else a[rows]


def _list(col) -> list:
    """A column as a list (Arrow hands pandas Series of numpy values; tests hand lists)."""
    return col.tolist() if hasattr(col, "tolist") else list(col)


def decide_udf(model_path: str, policy: Policy, project_root: str | None, columns: tuple[str, ...]):
    """The PyFlink vectorized UDF (a BYTES verdict) over ``columns`` of the record table."""
    import pandas as pd
    from pyflink.table import DataTypes
    from pyflink.table.udf import ScalarFunction, udf

    class _Decide(ScalarFunction):
        def __init__(self):
            self.body = DecideBatch(model_path, policy, project_root, columns)

        def open(self, function_context):
            self.body.open(function_context.get_metric_group())

        def eval(self, *series):
            return pd.Series(self.body.verdict_columns(dict(zip(columns, series))))

    return udf(_Decide(), result_type=DataTypes.BYTES(), func_type="pandas")
