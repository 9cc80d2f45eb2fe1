"""Control messages and label feedback (pure): what is accepted, what is refused and why, and the
known-fraud signal against a brute-force count."""

from __future__ import annotations

import json
import shutil

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from udfs.control import Control, ControlError, parse_control
from udfs.events import Rejection
from udfs.features import FEATURE_NAMES
from udfs.labels import KNOWN_FRAUD_HORIZON_MS, Label, apply_label, known_fraud_users, parse_label
from udfs.policy import Policy
from udfs.scoring import Scorer

RULE = {"code": "big_amount", "decision": "review", "when": [["amount", ">=", 300]]}


@pytest.mark.parametrize("msg, says", [
    (b"{", "not JSON"),
    (b"[]", "a JSON object"),
    ({"kind": "teleport"}, "unknown kind"),
    ({"kind": "model", "role": "boss", "path": "m.onnx"}, "role: champion|challenger"),
    ({"kind": "model", "role": "champion", "path": None}, "null only removes the challenger"),
    ({"kind": "model", "role": "champion", "path": "m.pkl"}, "must name an .onnx file"),
    ({"kind": "rules", "rules": [RULE]}, "need a 'version'"),
    ({"kind": "rules", "version": "r2", "rules": [RULE, RULE]}, "duplicate code"),
    ({"kind": "rules", "version": "r2", "rules": [{**RULE, "decision": "allow"}]}, "review or block"),
    ({"kind": "rules", "version": "r2", "rules": [{**RULE, "when": [["amount", "~", 1]]}]}, "unknown operator"),
    ({"kind": "rules", "version": "r2", "rules": [{**RULE, "when": [["nope", ">", 1]]}]}, "unknown feature 'nope'"),
    ({"kind": "rules", "version": "r2", "rules": [{**RULE, "when": [["amount", ">", "1"]]}]}, "not a finite number"),
    ({"kind": "rules", "version": "r2", "rules": [{**RULE, "when": []}]}, "non-empty list"),
    ({"kind": "rules", "version": "r2", "rules": [{**RULE, "event_types": ["teleport"]}]}, "event_types"),
    ({"kind": "rules", "version": "r2", "rules": [{**RULE, "colour": "red"}]}, "an object with code"),
])
def test_bad_control_messages_are_refused_with_the_reason(msg, says):
    with pytest.raises(ControlError, match=says):
        parse_control(msg if isinstance(msg, bytes) else orjson.dumps(msg))


def test_rules_apply_from_the_next_decision_and_a_bad_model_keeps_the_old_one(tmp_path):
    c = Control.initial(Scorer("models/risk_gbdt_v1.onnx"), Policy())
    feats = [0.0] * len(FEATURE_NAMES)
    feats[FEATURE_NAMES.index("amount")] = 500.0
    assert "rule:big_amount" not in c.policy.decide(0.1, feats, "payment")[1]
    assert c.apply(parse_control(orjson.dumps({"kind": "rules", "version": "r2", "rules": [RULE]}))) == \
        "rules r2 (1 rules)"
    assert c.policy.decide(0.1, feats, "payment") == ("review", ["rule:big_amount"])
    assert c.rules_version == "r2"
    # a model whose spec does not match is refused; the champion stays
    shutil.copy("models/risk_gbdt_v1.onnx", tmp_path / "bad.onnx")
    spec = json.load(open("models/risk_gbdt_v1.json"))
    (tmp_path / "bad.json").write_text(json.dumps({**spec, "feature_fingerprint": "0" * 16}))
    with pytest.raises(ControlError, match="the current one keeps scoring"):
        c.apply(parse_control(orjson.dumps({"kind": "model", "role": "champion", "path": str(tmp_path / "bad.onnx")})))
    assert c.champion.version == "risk_gbdt_v1"
    c.apply(parse_control(orjson.dumps({"kind": "model", "role": "challenger", "path": "models/risk_gbdt_v1.onnx"})))
    assert c.challenger.version == "risk_gbdt_v1"
    c.apply(parse_control(orjson.dumps({"kind": "model", "role": "challenger", "path": None})))
    assert c.challenger is None


def test_a_rule_on_the_score_and_on_a_signal():
    p = Policy(rules=())
    c = Control.initial(None, p)
    c.apply(parse_control(orjson.dumps({"kind": "rules", "version": "r9", "rules": [
        {"code": "sure", "decision": "block", "when": [["score", ">=", 0.3]], "event_types": ["payment"]},
        {"code": "ring", "decision": "review", "when": [["device_known_fraud_users_7d", ">=", 2]]}]})))
    feats = [0.0] * len(FEATURE_NAMES)
    assert c.policy.decide(0.35, feats, "payment")[0] == "block"
    assert c.policy.decide(0.35, feats, "login")[0] == "allow"
    assert c.policy.decide(0.0, feats, "login", signals={"device_known_fraud_users_7d": 2.0}) == \
        ("review", ["rule:ring"])


@pytest.mark.parametrize("raw", [b"nope", b"[]", b'{"event_id":"e","user_id":"u","device_id":"d","event_ts":1,"label":"fraud"}',
                                 b'{"event_id":"e","user_id":"","device_id":"d","event_ts":1767225600000,"label":"fraud"}',
                                 b'{"event_id":"e","user_id":"u","device_id":"d","event_ts":1767225600000,"label":"maybe"}'])
def test_bad_labels_are_rejected(raw):
    res = parse_label(raw)
    assert isinstance(res, Rejection) and res.reason == "invalid_label"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["u1", "u2", "u3", "u4"]), st.integers(0, 20),
                          st.sampled_from(["fraud", "fraud", "legit"])), max_size=30),
       st.integers(0, 20))
def test_known_fraud_signal_matches_brute_force(labels, probe_day):
    """Per user the newest label wins; a fraud user counts if their labelled event is within the 7 days up
    to the probe (and within 7 days of the newest fraud label kept)."""
    day = 24 * 3600 * 1000
    t0 = 1_767_225_600_000
    known = None
    for user, d, verdict in labels:
        known = apply_label(known, user, t0 + d * day, verdict)
    # brute force: replay the same rules
    state: dict[str, int] = {}
    for user, d, verdict in labels:
        if verdict == "legit":
            state.pop(user, None)
        else:
            state[user] = max(state.get(user, 0), t0 + d * day)
        if state:
            newest = max(state.values())
            state = {u: t for u, t in state.items() if t >= newest - KNOWN_FRAUD_HORIZON_MS}
    probe = t0 + probe_day * day
    want = sum(1 for t in state.values() if probe - KNOWN_FRAUD_HORIZON_MS <= t <= probe)
    assert known_fraud_users(known, probe) == want


def test_labels_may_name_ip_and_payment_ref():
    base = {"event_id": "e", "user_id": "u", "device_id": "d", "event_ts": 1767225600000, "label": "fraud"}
    assert parse_label(orjson.dumps(base)) == Label("e", 1767225600000, "fraud", {"user": "u", "device": "d"})
    both = parse_label(orjson.dumps({**base, "ip": "1.2.3.4", "payment_ref": "c1"}))
    assert both.keys == {"user": "u", "device": "d", "ip": "1.2.3.4", "payment": "c1"}
    assert both.wire() == {**base, "ip": "1.2.3.4", "payment_ref": "c1"}  # the wire format, read back
    assert parse_label(orjson.dumps({**base, "ip": None})).key("ip") is None
    for bad in ({"ip": ""}, {"ip": 5}, {"payment_ref": " "}, {"payment_ref": "x" * 500}):
        res = parse_label(orjson.dumps({**base, **bad}))
        assert isinstance(res, Rejection) and res.reason == "invalid_label", bad


def test_fraud_label_store_newest_label_wins_and_stays_bounded():
    from udfs.labels import MAX_LABELS_PER_KEY, apply_fraud_label

    day = 86_400_000
    lab = apply_fraud_label(None, "e1", 10 * day, "fraud", 31 * day)
    lab = apply_fraud_label(lab, "e2", 20 * day, "fraud", 31 * day)
    assert lab == {"e1": 10 * day, "e2": 20 * day}
    assert apply_fraud_label(dict(lab), "e1", 10 * day, "legit", 31 * day) == {"e2": 20 * day}
    lab = apply_fraud_label(lab, "e3", 45 * day, "fraud", 31 * day)  # e1 is 35 days behind the newest
    assert lab == {"e2": 20 * day, "e3": 45 * day}
    for i in range(MAX_LABELS_PER_KEY + 5):
        lab = apply_fraud_label(lab, f"x{i}", 44 * day + i, "fraud", 31 * day)
    assert len(lab) == MAX_LABELS_PER_KEY and "e2" not in lab and "e3" in lab
