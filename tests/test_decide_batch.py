"""The batched decide stage's body (udfs.decide_batch) against the per-row Decider: same records, control
segments applied at the right row, the broker arrival time carried through (no JVM)."""

from __future__ import annotations

import orjson

from riskstream.generator import TrafficGenerator
from udfs.chain import ROW_FIELDS, Chain, Decider
from udfs.control import Control
from udfs.decide_batch import DecideBatch
from udfs.events import Event
from udfs.features import SIGNALS
from udfs.policy import Policy
from udfs.scoring import Scorer

V1, V2 = "models/risk_gbdt_v1.onnx", "models/risk_gbdt_v2.onnx"


def _arrival(k: int, ev: Event) -> int | None:
    """A broker arrival time for the k-th row, unknown for every third (input without record timestamps)."""
    return None if k % 3 == 2 else ev.ts + 1_000 + k


def _columns(n: int, with_signals: bool) -> tuple[dict, list]:
    evs = [Event(**r.event) for r in TrafficGenerator(seed=5).generate(n)]
    chain, rows = Chain(label_signals=with_signals), []
    for ev in evs:
        res = chain.process(ev)
        if res is not None:
            rows.append((ev, *res))
    names = [name for name, _ in ROW_FIELDS]
    cols = {name: [] for name in names}
    for k, (ev, vals, late, sig) in enumerate(rows):
        for name in names[:len(ev)]:
            cols[name].append(getattr(ev, name))
        cols["values"].append(vals)
        cols["late"].append(late)
        cols["signals"].append([sig[s] for s in SIGNALS] if sig else None)
        cols["arrived_at"].append(_arrival(k, ev))
    return cols, rows


def _strip(rec: bytes) -> dict:
    d = orjson.loads(rec)
    d.pop("decided_at")
    return d


def test_batched_records_equal_the_per_row_decider():
    import pandas as pd

    cols, rows = _columns(1500, with_signals=True)
    # a nullable BIGINT column as Arrow hands it to pandas: float64, NaN for null
    cols["arrived_at"] = pd.Series(cols["arrived_at"], dtype="float64")
    body = DecideBatch(V1, Policy(), None, tuple(cols))
    body.open()
    got = body.decide_columns(cols)
    ref = Decider(Control.initial(Scorer(V1), Policy()))
    want = [ref.decide(ev, vals, late, sig, 0, arrived_at=_arrival(k, ev))[1]
            for k, (ev, vals, late, sig) in enumerate(rows)]
    assert len(got) == len(want) == len(rows)
    for k, (g, w) in enumerate(zip(got, want)):
        g, w = _strip(g), _strip(w)
        assert abs(g.pop("score") - w.pop("score")) <= 1e-6
        assert g == w
        # the arrival time as it came in the row, an int; absent when the row has none
        assert g.get("arrived_at", None) == _arrival(k, rows[k][0]) and ("arrived_at" in g) == (k % 3 != 2)
        # the event's ip and payment instrument (null without one), for labels made from the decision
        assert (g["ip"], g["payment_ref"]) == (rows[k][0].ip, rows[k][0].payment_ref)
    assert {orjson.loads(r)["payment_ref"] is None for r in got} == {True, False}


def test_control_settings_apply_from_the_row_that_carries_them():
    cols, rows = _columns(300, with_signals=False)
    n = len(rows)
    rules = {"kind": "rules", "version": "r9", "rules": [
        {"code": "everything", "decision": "block", "when": [["amount", ">=", 0]]}]}
    settings = {"challenger": {"kind": "model", "role": "challenger", "path": V2}, "rules": rules}
    cols["control_version"] = [0] * 100 + [1] * (n - 100)
    cols["control"] = [None] * 100 + [orjson.dumps(settings).decode()] + [None] * (n - 101)
    body = DecideBatch(V1, Policy(), ".", tuple(cols))
    body.open()
    out = [orjson.loads(r) for r in body.decide_columns(cols)]
    assert all("shadow" not in d and d["rules_version"] == "builtin" for d in out[:100])
    assert all(d["shadow"]["model_version"] == "risk_gbdt_v2" and d["rules_version"] == "r9"
               and d["decision"] == "block" for d in out[100:])
    # the challenger's batched score equals its own per-row score
    c2 = Scorer(V2)
    for d, (ev, vals, _, _) in list(zip(out, rows))[100:140]:
        assert abs(d["shadow"]["score"] - c2.score(Decider(None).vector(ev, vals))) <= 1e-6
    # a later batch with no settings row keeps them (the UDF remembers what it last saw)
    again = [orjson.loads(r) for r in body.decide_columns({**cols, "control": [None] * n, "control_version": [1] * n})]
    assert all(d["rules_version"] == "r9" for d in again)
