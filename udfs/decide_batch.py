"""The decide stage scoring in batches: a vectorized (pandas / Arrow) PyFlink UDF over the record Rows
that the JVM entity stages emit (``udfs.chain.ROW_FIELDS``), plus the live control settings that
``io.riskstream.flink.ControlAttach`` (udfs/jvm) appends to them.

Per batch: one ONNX call per control segment for the champion (and one for the challenger), then the
policy and the decision record per row through the same ``udfs.chain.Decider`` the per-row stage uses, so
both paths write identical records. PyFlink hands the UDF at most ``python.fn-execution.arrow.batch.size``
rows, after at most ``python.fn-execution.bundle.time`` ms: that bounds the batch time.

Pitfalls:
- Control: a vectorized UDF holds no broadcast state. ``control`` carries the whole settings only on the
  first row after they changed on the upstream instance (and after a restart); other rows carry null and
  the version. The UDF keeps what it last saw; a version it has no settings for (never expected) is
  decided with the start-up settings and counted as ``control_rejected``.
- Feature values cross Arrow as float64 and are written to the record as they are; only the model input is
  float32, as in the per-row stage.
- A row that fails (a bug, not bad input) still gets a decision: ``review`` with ``processing_error``.
- ``arrived_at`` (nullable BIGINT) reaches pandas as float64 with NaN for null once a batch holds a null:
  read back as int or None (:func:`_ms`; epoch ms are exact in a double).
"""

from __future__ import annotations

import bisect
import time
from pathlib import Path

import numpy as np
import orjson

from .chain import EVENT_FIELDS, Decider
from .control import Control, parse_control
from .events import EVENT_TYPE_INDEX, Event
from .features import SIGNALS, features_for
from .policy import DECISIONS, Policy

LATENCY_BUCKETS_US = (100, 250, 500, 1000, 2500, 5000, 10000)  # as udfs.flink: per-row share of a batch
_EVENT_FEATURES = features_for("event")
# record fields the decision needs, by name (extras is not read: it never reaches the decision record)
_NEEDED = ("event_id", "event_type", "user_id", "device_id", "ip", "amount", "currency", "ts", "payment_ref")


def _ms(x) -> int | None:
    """A nullable BIGINT cell as int or None (null arrives as None, NaN or pd.NA, depending on the batch)."""
    try:
        return None if x is None else int(x)
    except (TypeError, ValueError):  # NaN, pd.NA
        return None


class DecideBatch:
    """The body of the vectorized decide UDF (wrapped by :func:`decide_udf`); plain code, testable without
    Flink: :meth:`decide_columns` takes the columns as pandas Series or lists."""

    def __init__(self, model_path: str, policy: Policy, project_root: str | None, columns: tuple[str, ...]):
        self.model_path = model_path
        self.policy = policy
        self.project_root = project_root
        self.columns = columns
        self.decider: Decider | None = None
        self.settings_version = 0
        self.metrics = None

    def open(self, metric_group=None) -> None:
        from .scoring import Scorer

        root = Path(self.project_root) if self.project_root else None
        self.initial = Control.initial(Scorer(self.model_path), self.policy, root)
        self.decider = Decider(self.initial)
        if metric_group is not None:
            self.metrics = metric_group
            self.by_kind = {d: metric_group.counter(f"decisions_{d}") for d in DECISIONS}
            self.errors = metric_group.counter("processing_errors")
            self.control_applied = metric_group.counter("control_applied")
            self.control_rejected = metric_group.counter("control_rejected")
            self.hists: dict[str, list] = {}

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
                print(f"[riskstream] decide: control {key} refused here, keeping the previous: {e}", flush=True)
        self.decider = Decider(c)
        self.settings_version = version

    def _count(self, name: str, n: int = 1) -> None:
        if self.metrics is not None:
            getattr(self, name).inc(n)

    # -- decide --------------------------------------------------------------------------------------
    def decide_columns(self, cols: dict) -> list[bytes]:
        n = len(cols["event_id"])
        t0 = time.perf_counter()
        get = {k: (cols[k].tolist() if hasattr(cols[k], "tolist") else list(cols[k])) for k in _NEEDED}
        # Arrow hands arrays over as numpy: tolist() gives Python floats (orjson refuses numpy scalars)
        values = [v.tolist() if hasattr(v, "tolist") else list(v) for v in cols["values"]]
        lates = [bool(x) for x in cols["late"]]
        sigs = cols.get("signals")
        arrived = [_ms(x) for x in cols["arrived_at"]] if "arrived_at" in cols else None
        versions = cols.get("control_version")
        settings = cols.get("control")
        now = int(time.time() * 1000)
        out: list[bytes] = [b""] * n
        start = 0
        while start < n:  # segments of rows decided under one control setting
            if settings is not None and settings[start] is not None:
                self._apply_settings(settings[start], int(versions[start]))
            elif versions is not None and int(versions[start]) != self.settings_version:
                self._count("control_rejected")  # settings never seen for this version: start-up ones
                self.decider, self.settings_version = Decider(self.initial), int(versions[start])
            end = start + 1
            while end < n and (settings is None or settings[end] is None) and \
                    (versions is None or int(versions[end]) == self.settings_version):
                end += 1
            self._decide_segment(get, values, lates, sigs, arrived, start, end, now, out)
            start = end
        if self.metrics is not None:
            per_row_us = (time.perf_counter() - t0) * 1e6 / max(n, 1)
            self._latency_buckets(self.decider.control.champion.version)[
                bisect.bisect_left(LATENCY_BUCKETS_US, per_row_us)].inc(n)
        return out

    def _decide_segment(self, get, values, lates, sigs, arrived, start, end, now, out) -> None:
        d = self.decider
        c = d.control
        rows = range(start, end)
        events = [Event(*(get[f][i] if f in get else None for f in EVENT_FIELDS)) for i in rows]
        try:
            X = np.asarray([self._event_values(ev) + values[i] for ev, i in zip(events, rows)], dtype=np.float32)
            scores = c.champion.score_batch(X).tolist()
            shadows = c.challenger.score_batch(X).tolist() if c.challenger is not None else [None] * len(X)
        except Exception:  # a batch that cannot be scored: each row on its own (fail-safe per row)
            scores, shadows = [None] * len(events), [None] * len(events)
        for k, (ev, i) in enumerate(zip(events, rows)):
            signals = None
            if sigs is not None and sigs[i] is not None:
                signals = dict(zip(SIGNALS, (float(x) for x in sigs[i])))
            decision, rec, failed = d.decide(ev, values[i], lates[i], signals, now, score=scores[k],
                                             shadow_score=shadows[k], arrived_at=arrived[i] if arrived else None)
            out[i] = rec
            if self.metrics is not None:
                self.by_kind[decision].inc()
                if failed:
                    self.errors.inc()

    @staticmethod
    def _event_values(ev: Event) -> list[float]:
        return [float(EVENT_TYPE_INDEX[ev.event_type]) if f.agg == "type_index" else float(getattr(ev, f.field))
                for f in _EVENT_FEATURES]

    def _latency_buckets(self, version: str) -> list:
        h = self.hists.get(version)
        if h is None:
            g = self.metrics.add_group("model_version", version).add_group("scoring_latency_us")
            h = self.hists[version] = [g.counter(f"le_{b}") for b in LATENCY_BUCKETS_US] + [g.counter("le_inf")]
        return h


def decide_udf(model_path: str, policy: Policy, project_root: str | None, columns: tuple[str, ...]):
    """The PyFlink vectorized UDF (BYTES result) over ``columns`` of the record table."""
    import pandas as pd
    from pyflink.table import DataTypes
    from pyflink.table.udf import ScalarFunction, udf

    class _Decide(ScalarFunction):
        def __init__(self):
            self.body = DecideBatch(model_path, policy, project_root, columns)

        def open(self, function_context):
            self.body.open(function_context.get_metric_group())

        def eval(self, *series):
            return pd.Series(self.body.decide_columns(dict(zip(columns, series))))

    return udf(_Decide(), result_type=DataTypes.BYTES(), func_type="pandas")
