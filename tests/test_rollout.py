"""The canary's pure logic (riskstream.rollout) against brute force: the step schedule, the guardrails on
per-arm counts (Wilson intervals found by scanning the score test, Newcombe's difference from them, the
score PSI summed by hand), the state machine; and the controller's state file helpers."""

from __future__ import annotations

import math
import random
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from riskstream import rollout as ro


# -- steps and guardrails --------------------------------------------------------------------------------

def test_steps_parse_and_bad_schedules_are_refused():
    assert ro.parse_steps("1,5,25,100") == (1.0, 5.0, 25.0, 100.0)
    assert ro.parse_steps("0.5, 2%,10") == (0.5, 2.0, 10.0)
    for bad, why in (("5,5", "must increase"), ("10,5", "must increase"), ("0,5", "(0, 100]"),
                     ("50,101", "(0, 100]"), ("1,x", "not a number"), ("0.001", "multiple of 0.01"),
                     ("nan", "(0, 100]")):
        with pytest.raises(ro.RolloutError, match=re.escape(why)):
            ro.parse_steps(bad)



def test_guardrails_parse():
    g = ro.parse_guardrails("block=1.5,score-psi=off,min-events=200,confidence=0.95")
    assert (g.block_pp, g.max_score_psi, g.min_events, g.review_pp) == (1.5, None, 200, 3.0)
    assert abs(g.z - 1.959964) < 1e-5
    assert ro.parse_guardrails("") == ro.Guardrails()
    assert abs(ro.Guardrails().z - 2.5758) < 1e-4
    for bad, why in (("blok=1", "is not NAME=VALUE"), ("block=-1", ">= 0"), ("errors=0.5", "whole number"),
                     ("min-events=0", "at least 1"), ("confidence=1", "level"), ("block=1,block=2", "twice"),
                     ("errors=off", "not a number")):
        with pytest.raises(ro.RolloutError, match=re.escape(why)):
            ro.parse_guardrails(bad)
    assert ro.Guardrails.from_json(g.to_json()) == g


# -- guardrails against brute force -------------------------------------------------------------------------

def _wilson_scan(k: int, n: int, z: float) -> tuple[float, float]:
    """The Wilson interval by definition: the p in [0, 1] the score test |k/n - p| <= z sqrt(p(1-p)/n) does not
    reject, found by bisection on each side of k/n."""
    ph = k / n

    def inside(p):
        return abs(ph - p) <= z * math.sqrt(p * (1 - p) / n) + 1e-15

    def edge(a, b):  # a inside, b outside (or the end)
        if inside(b):
            return b
        for _ in range(200):
            m = (a + b) / 2
            a, b = (m, b) if inside(m) else (a, m)
        return a

    return edge(ph, 0.0), edge(ph, 1.0)


def _newcombe(k1, n1, k2, n2, z):
    (l1, u1), (l2, u2) = _wilson_scan(k1, n1, z), _wilson_scan(k2, n2, z)
    p1, p2 = k1 / n1, k2 / n2
    return p1 - p2, p1 - p2 - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), p1 - p2 + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)


def _records(rng, n, p_block, p_review, p_err, score_shift):
    out = []
    for _ in range(n):
        u = rng.random()
        if rng.random() < p_err:
            out.append({"decision": "review", "score": None, "reasons": ["processing_error"]})
            continue
        d = "block" if u < p_block else "review" if u < p_block + p_review else "allow"
        out.append({"decision": d, "score": min(1.0, rng.random() ** 3 + score_shift), "reasons": []})
    return out


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 1500), st.integers(1, 1500), st.floats(0, 0.6), st.floats(0, 0.6),
       st.floats(0, 0.3), st.sampled_from([0.0, 0.0, 0.002]), st.sampled_from([0.0, 0.3]))
def test_evaluate_equals_a_brute_force_judgement(seed, n1, n2, pb1, pb2, pr, p_err, shift):
    rng = random.Random(seed)
    cand = _records(rng, n1, pb1, pr, p_err, shift)
    champ = _records(rng, n2, pb2, pr, 0.0, 0.0)
    g = ro.Guardrails(block_pp=2.0, review_pp=3.0, max_score_psi=0.5, min_events=300, max_psi=None)
    ca, ch = ro.ArmCounts(), ro.ArmCounts()
    for r in cand:
        ca.add(r)
    for r in champ:
        ch.add(r)
    v = ro.evaluate(ca, ch, g)
    checks = {c.name: c.ok for c in v.checks}

    errors = sum(1 for r in cand if "processing_error" in r["reasons"])
    want = {"errors": errors <= 0}
    judged = n1 >= 300 and n2 >= 300
    for name, kind, tol in (("block rate", "block", 2.0), ("review rate", "review", 3.0)):
        if not judged:
            want[name] = None
            continue
        k1 = sum(1 for r in cand if r["decision"] == kind)
        k2 = sum(1 for r in champ if r["decision"] == kind)
        _, lo, hi = _newcombe(k1, n1, k2, n2, g.z)
        want[name] = not (lo > tol / 100 + 1e-9 or hi < -tol / 100 - 1e-9)
        # away from the bound the scan and the closed form agree on the side
        if min(abs(lo - tol / 100), abs(hi + tol / 100)) < 1e-6:
            want[name] = checks[name]
    if judged:
        def shares(rs):
            h = [0] * 10
            for r in rs:
                if r["score"] is not None:
                    h[min(9, int(r["score"] * 10))] += 1
            t = sum(h)
            return [max(c / t, 1e-4) for c in h]

        e, a = shares(champ), shares(cand)
        e, a = [x / sum(e) for x in e], [x / sum(a) for x in a]
        p = sum((ai - ei) * math.log(ai / ei) for ai, ei in zip(a, e))
        want["score distribution"] = p <= 0.5
    else:
        want["score distribution"] = None
    assert checks == want
    assert v.status == ("breach" if False in want.values() else "hold" if all(want.values()) else "wait")


def test_a_candidate_that_blocks_everything_breaches_and_a_copy_of_the_champion_holds():
    rng = random.Random(3)
    champ = _records(rng, 800, 0.08, 0.01, 0, 0)
    same = _records(rng, 800, 0.08, 0.01, 0, 0)
    wild = _records(rng, 800, 0.95, 0.0, 0, 0.6)
    g = ro.Guardrails(max_psi=None)

    def counts(rs):
        c = ro.ArmCounts()
        for r in rs:
            c.add(r)
        return c

    assert ro.evaluate(counts(same), counts(champ), g).status == "hold"
    v = ro.evaluate(counts(wild), counts(champ), g)
    assert v.status == "breach" and "block rate" in v.reason and "score distribution" in v.reason
    # not enough events: nothing judged but errors
    v = ro.evaluate(counts(wild[:100]), counts(champ), g)
    assert v.status == "wait"
    err = counts(same[:10] + [{"decision": "review", "score": None, "reasons": ["processing_error"]}])
    assert ro.evaluate(err, counts(champ), g).status == "breach"


def test_drift_bound_and_the_champions_own_drift():
    g = ro.Guardrails(max_psi=0.25, drift_margin=0.1, min_events=1, max_score_psi=None)
    c = ro.ArmCounts(n=10, allow=10)
    drift = {c_.name: c_ for c_ in ro.evaluate(c, c, g, (0.3, 600), None).checks}["drift"]
    assert drift.ok is False
    assert {x.name: x for x in ro.evaluate(c, c, g, (0.2, 600)).checks}["drift"].ok
    assert {x.name: x for x in ro.evaluate(c, c, g, (0.9, 100)).checks}["drift"].ok is None  # too few rows
    # the traffic is far from both models' training: the candidate may drift as much as the champion + margin
    assert {x.name: x for x in ro.evaluate(c, c, g, (2.5, 600), (2.45, 600)).checks}["drift"].ok
    assert {x.name: x for x in ro.evaluate(c, c, g, (2.6, 600), (2.45, 600)).checks}["drift"].ok is False


# -- the state machine ---------------------------------------------------------------------------------------

HOLD = ro.Verdict("hold", ())
WAIT = ro.Verdict("wait", (ro.Check("block rate", None, "100 and 100 records of 500 each"),))
BREACH = ro.Verdict("breach", (ro.Check("block rate", False, "candidate 90 % vs champion 8 %"),))


def _state(steps=(1, 5, 25, 100), every=1000, **kw):
    return ro.new_state("ro-t", "models/risk_gbdt_v2.onnx", "risk_gbdt_v2", steps, every, ro.Guardrails(), 0, **kw)


def test_the_schedule_advances_only_when_the_guardrails_hold_at_each_step_end():
    s = _state()
    assert ro.start(s, 0) == [ro.Action("split", 1)]
    assert ro.start(s, 10) == []  # once
    assert ro.tick(s, 999, HOLD) == []  # before the step's end
    assert ro.tick(s, 1000, WAIT) == [] and "not judged yet" in s["waiting"]
    assert ro.tick(s, 1500, HOLD) == [ro.Action("split", 5)] and s["step_started_at"] == 1500
    assert ro.tick(s, 2400, HOLD) == []
    assert ro.tick(s, 2500, HOLD) == [ro.Action("split", 25)]
    assert ro.tick(s, 3500, HOLD) == [ro.Action("split", 100)]
    assert ro.tick(s, 4500, HOLD) == [] and s["status"] == ro.COMPLETE
    assert ro.tick(s, 9000, HOLD) == []
    # a breach after completion still rolls back
    a = ro.tick(s, 9500, BREACH)
    assert a[0].kind == "end" and s["status"] == ro.ROLLED_BACK and "at 100 %" in s["reason"]
    assert [h["event"] for h in s["history"]] == ["step"] * 4 + [ro.COMPLETE, ro.ROLLED_BACK]
    with pytest.raises(ro.RolloutError, match="rolled_back: nothing to promote"):
        ro.promote(s, 9600)


def test_a_breach_rolls_back_at_once_mid_step():
    s = _state(every=30 * 60_000)
    ro.start(s, 0)
    a = ro.tick(s, 5, BREACH)
    assert a == [ro.Action("end", reason=s["reason"])] and s["status"] == ro.ROLLED_BACK and s["ended_at"] == 5
    assert "guardrail breached at 1 %: block rate: candidate 90 %" in s["reason"]
    assert ro.tick(s, 10, BREACH) == []
    with pytest.raises(ro.RolloutError, match="nothing to roll back"):
        ro.rollback(s, 11)


def test_promote_at_end_and_by_operator():
    s = _state(steps=(50,), promote_at_end=True)
    ro.start(s, 0)
    assert [x.kind for x in ro.tick(s, 1000, HOLD)] == ["promote"] and s["status"] == ro.PROMOTED
    s = _state()
    ro.start(s, 0)
    assert ro.promote(s, 10)[0].kind == "promote" and s["status"] == ro.PROMOTED
    assert ro.tick(s, 5000, BREACH) == []


def test_the_messages_parse_as_splits_and_models():
    from udfs.control import parse_control
    import orjson

    s = _state(thresholds=(0.0, 0.01))
    s["salt"] = "ro-t"
    for share in s["steps"]:
        m = parse_control(orjson.dumps(ro.split_message(s, share)))
        arm = m["arms"][0]
        assert (arm["name"], arm["share"], arm["hi"] - arm["lo"]) == ("candidate", share / 100, share * 100)
        assert (arm["review_threshold"], arm["block_threshold"], m["salt"]) == (0.0, 0.01, "ro-t")
    assert parse_control(orjson.dumps(ro.end_message(s, "rollback")))["arms"] == []
    assert parse_control(orjson.dumps(ro.champion_message(s))) == {"kind": "model", "role": "champion",
                                                                   "path": "models/risk_gbdt_v2.onnx"}


# -- counts and the controller's persistence ------------------------------------------------------------------

def test_arm_counts_and_drift_counts_survive_a_round_trip():
    from udfs.drift import monitor_for
    from udfs.scoring import load_model_spec

    rng = random.Random(5)
    recs = _records(rng, 400, 0.1, 0.05, 0.01, 0.1)
    c = ro.ArmCounts()
    for r in recs:
        c.add(r)
    assert c.n == 400 and c.block + c.review + c.allow == 400
    assert c.errors == sum(1 for r in recs if r["score"] is None)
    assert sum(c.scores) == 400 - c.errors
    assert ro.ArmCounts.from_json(c.to_json()) == c
    spec = load_model_spec("models/risk_gbdt_v2.onnx")
    m1, m2 = monitor_for(spec), monitor_for(spec)
    x = np.random.default_rng(1).random((700, len(m1.names))) * 10
    m1.add(x[:300])
    m2.load(m1.counts())
    m1.add(x[300:])
    m2.add(x[300:])
    assert m1.max_psi() == m2.max_psi() and m1.rows == m2.rows == 700


def test_the_state_file_refuses_a_second_rollout_and_reports_status(tmp_path, monkeypatch):
    from riskstream.tools import rollout as ctl

    monkeypatch.setenv("RISKSTREAM_HOME", str(tmp_path))
    path = ctl.state_path("t.control")
    s = _state()
    s.update(controller={"pid": 999_999_999, "host": "elsewhere", "heartbeat": 0}, counts={})
    ctl.save(path, s)
    assert ctl.load(path) == s
    assert not ctl.controller_alive(s)
    text = ctl.render_status(s)
    assert "RUNNING" in text and "GONE" in text
    monkeypatch.setattr("riskstream.ops.broker.broker_ready", lambda *a, **k: True)
    with pytest.raises(ro.RolloutError, match="ro-t of risk_gbdt_v2 is running.*rollout resume"):
        ctl.prepare("127.0.0.1:1", "t.control", "d", "dl", "models/risk_gbdt_v2.onnx", (1, 5), 1000,
                    ro.Guardrails())
    with pytest.raises(ro.RolloutError, match="does not load"):
        ctl.prepare("127.0.0.1:1", "t.control", "d", "dl", "models/nothing.onnx", (1, 5), 1000, ro.Guardrails())
    with pytest.raises(ro.RolloutError, match="thresholds"):
        ctl.prepare("127.0.0.1:1", "t.control", "d", "dl", "models/risk_gbdt_v2.onnx", (1, 5), 1000,
                    ro.Guardrails(), thresholds=(0.9, 0.1))
