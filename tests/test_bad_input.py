"""Bad input for the event parser: a named corpus, near-miss acceptances and an oracle-checked fuzz (no JVM).

The fuzz builds a valid event, applies ONE mutation from a known family and predicts the outcome with the
small classifier below, written from the contract (not from ``parse_event``'s code). Policies checked here
(see ``tests/bad_corpus.py``): duplicate JSON keys -> last value wins; a UTF-8 BOM -> ``invalid_json``;
``-0.0`` is a valid zero amount; JSON whitespace around the document is accepted; ``extras: null`` means no
extras; integers outside 64 bits are floats to orjson (a ts of 2**64 is ``wrong_type``); extras nested
deeper than orjson can re-encode -> ``invalid_json``.
"""

from __future__ import annotations

import base64
import datetime as dt
import math
import re

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.bad_corpus import (
    CORPUS, GOOD, KEY_FIELDS, MAX_EVENT_BYTES, MAX_ID_LEN, MAX_IP_LEN, corpus_names, nested_extras, padded,
    with_literal,
)
from udfs import events
from udfs.events import PARSE_REASON_CODES, Event, Rejection, dead_letter_record, encode_event, parse_event

# ---- the contract, restated independently of udfs/events.py -------------------------------------------
SPEC_EVENT_TYPES = ("login", "signup", "add_payment_method", "place_order", "payment", "refund", "promo_redeem")
TS_LO = int(dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc).timestamp() * 1000)  # inclusive
TS_HI = int(dt.datetime(2100, 1, 1, tzinfo=dt.timezone.utc).timestamp() * 1000)  # exclusive
AMOUNT_MAX = 1e9
FIELDS = tuple(GOOD)  # the required fields
KNOWN = frozenset(FIELDS) | {"extras", "payment_ref"}
PAYMENT_REF_TYPES = ("add_payment_method", "place_order", "payment", "refund")  # may carry a payment_ref
I64_MIN, U64_MAX = -(2**63), 2**64 - 1  # orjson reads JSON integers in this range as int, others as float
# bytes that can never start a valid UTF-8 sequence at the place they are inserted: continuation bytes
# (one more than the lead bytes account for), C0/C1 (overlong leads) and F5..FF (beyond U+10FFFF / unused)
BAD_UTF8_BYTES = [*range(0x80, 0xC0), 0xC0, 0xC1, *range(0xF5, 0x100)]


def test_contract_constants_match_the_module():
    assert events.EVENT_TYPES == SPEC_EVENT_TYPES
    assert (events.MIN_TS_MS, events.MAX_TS_MS, events.MAX_AMOUNT) == (TS_LO, TS_HI, AMOUNT_MAX)
    assert (events.MAX_EVENT_BYTES, events.MAX_ID_LEN) == (MAX_EVENT_BYTES, MAX_ID_LEN)
    assert set(events.REQUIRED_FIELDS) == set(FIELDS) and events.KNOWN_FIELDS == KNOWN
    assert events.PAYMENT_REF_TYPES == PAYMENT_REF_TYPES


def expected_for(field: str, v, base: dict | None = None) -> str | None:
    """The reason a single bad value of ``field`` (as parsed from JSON) must produce in the otherwise valid
    event ``base``; None if it is fine."""
    base = base if base is not None else GOOD
    if field == "payment_ref":
        if v is None:
            return None
        if not isinstance(v, str) or v == "" or v.isspace() or len(v) > MAX_ID_LEN:
            return "invalid_payment_ref"
        return None if base["event_type"] in PAYMENT_REF_TYPES else "invalid_payment_ref"
    if field == "event_type" and isinstance(v, str) and v in SPEC_EVENT_TYPES:
        carries = base.get("payment_ref") is not None
        return "invalid_payment_ref" if carries and v not in PAYMENT_REF_TYPES else None
    if field in KEY_FIELDS:
        if v is None:
            return "null_key"
        if not isinstance(v, str):
            return "wrong_type"
        if v == "" or v.isspace():
            return "null_key"
        return "wrong_type" if len(v) > (MAX_IP_LEN if field == "ip" else MAX_ID_LEN) else None
    if field == "event_type":
        if not isinstance(v, str):
            return "wrong_type"
        return None if v in SPEC_EVENT_TYPES else "unknown_event_type"
    if field == "amount":
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return "wrong_type"
        return None if 0 <= v <= AMOUNT_MAX else "invalid_amount"  # NaN fails the comparison too
    if field == "currency":
        if not isinstance(v, str):
            return "wrong_type"
        return None if re.fullmatch(r"[A-Z]{3}", v) else "invalid_currency"
    if field == "ts":
        if isinstance(v, bool) or not isinstance(v, int):
            return "wrong_type"
        return None if TS_LO <= v < TS_HI else "invalid_ts"
    if field == "extras":
        return None if v is None or isinstance(v, dict) else "wrong_type"
    raise AssertionError(field)


def as_event_dict(d: dict) -> dict:
    """What ``Event.to_dict()`` must give for an accepted dict: amount as float, a null extras dropped."""
    out = {**d, "amount": float(d["amount"])}
    for name in ("extras", "payment_ref"):
        if out.get(name, 0) is None:
            del out[name]
    return out


def number_literal(x) -> tuple[bytes, object]:
    """A JSON-ish literal for ``x`` and what orjson makes of it (``None``: orjson refuses it)."""
    if isinstance(x, int):
        return str(x).encode(), (x if I64_MIN <= x <= U64_MAX else float(x))
    if math.isnan(x):
        return b"NaN", None
    if math.isinf(x):
        return (b"Infinity" if x > 0 else b"-Infinity"), None
    return repr(x).encode(), x


# ---- the corpus -----------------------------------------------------------------------------------------
def test_corpus_is_broad_and_named_uniquely():
    names = corpus_names()
    assert len(names) == len(set(names)) >= 100
    assert {reason for _, _, reason in CORPUS} == set(PARSE_REASON_CODES)
    assert all(f"missing_{f}" in names for f in FIELDS)
    assert max(len(raw) for _, raw, _ in CORPUS) < 1_000_000  # every case fits Kafka's default 1 MB message


@pytest.mark.parametrize("raw, reason", [(raw, reason) for _, raw, reason in CORPUS], ids=corpus_names())
def test_corpus_case_is_rejected_and_dead_lettered_exactly(raw, reason):
    res = parse_event(raw)
    assert isinstance(res, Rejection), res
    assert res.reason == reason, res
    dl_bytes = dead_letter_record(raw, res, "job", 1)
    dl_bytes.decode("utf-8")  # strict
    dl = orjson.loads(dl_bytes)
    assert base64.b64decode(dl["original_b64"], validate=True) == raw
    assert dl["original_size"] == len(raw) and dl["reason"] == reason
    assert (dl["job"], dl["dead_at"]) == ("job", 1)
    assert len(dl_bytes) < 1.5 * len(raw) + 1024


@pytest.mark.parametrize("raw, check", [
    (with_literal("amount", b"-0.0"), lambda ev: ev.amount == 0.0),  # policy: -0.0 is a zero amount
    (with_literal("amount", b"0"), lambda ev: ev.amount == 0.0 and type(ev.amount) is float),
    (with_literal("amount", b"1e9"), lambda ev: ev.amount == AMOUNT_MAX),
    (with_literal("amount", b"1e-400"), lambda ev: ev.amount == 0.0),  # underflows to zero: finite
    (with_literal("ts", str(TS_LO).encode()), lambda ev: ev.ts == TS_LO),
    (with_literal("ts", str(TS_HI - 1).encode()), lambda ev: ev.ts == TS_HI - 1),
    (with_literal("extras", b"null"), lambda ev: ev.extras is None),
    (with_literal("extras", b"{}"), lambda ev: ev.extras == {}),
    (orjson.dumps({**GOOD, "ip": "2001:db8::ff00:42:8329"}), lambda ev: ev.ip == "2001:db8::ff00:42:8329"),
    (orjson.dumps({**GOOD, "ip": "1" * MAX_IP_LEN}), lambda ev: len(ev.ip) == MAX_IP_LEN),
    (orjson.dumps({**GOOD, "user_id": "u" * MAX_ID_LEN}), lambda ev: len(ev.user_id) == MAX_ID_LEN),
    (orjson.dumps({**GOOD, "user_id": " u1 "}), lambda ev: ev.user_id == " u1 "),  # kept verbatim
    (orjson.dumps({**GOOD, "device_id": "\u200b"}), lambda ev: True),  # zero-width space is not whitespace
    (b" \n" + orjson.dumps(GOOD) + b"\r\n\t", lambda ev: ev.event_id == "e1"),  # JSON whitespace is fine
    (with_literal("amount", b"-5")[:-1] + b',"amount":7}', lambda ev: ev.amount == 7.0),  # last key wins
    (padded(MAX_EVENT_BYTES), lambda ev: len(ev.extras["pad"]) > 60_000),  # exactly at the limit
    (nested_extras(200), lambda ev: encode_event(ev) and orjson.dumps(ev.extras)),
])
def test_near_misses_are_accepted(raw, check):
    ev = parse_event(raw)
    assert isinstance(ev, Event), ev
    assert check(ev)


def test_extras_depth_limit_is_exactly_what_can_be_re_encoded():
    """Accepted extras always re-encode (the job serialises them); one level deeper is invalid_json."""
    outcomes = {}
    for depth in range(240, 270):
        res = parse_event(nested_extras(depth))
        if isinstance(res, Event):
            encode_event(res)  # must not raise
            orjson.dumps(res.extras)
        else:
            assert res.reason == "invalid_json", res
        outcomes[depth] = isinstance(res, Event)
    assert outcomes[240] and not outcomes[269]
    assert sorted(outcomes.values(), reverse=True) == list(outcomes.values())  # one cut-off, monotone


# ---- strategies ------------------------------------------------------------------------------------------
def _not_blank(s: str) -> bool:
    return s != "" and not s.isspace()


# short text keeps generation fast; the length limits are covered by edge_values and the corpus
ids = st.one_of(st.text(min_size=1, max_size=12).filter(_not_blank),
                st.text("abc-0123456789", min_size=1, max_size=8), st.just("u" * MAX_ID_LEN))
ips = st.one_of(st.ip_addresses().map(str), st.text(min_size=1, max_size=8).filter(_not_blank),
                st.just("1" * MAX_IP_LEN))
amounts = st.one_of(st.floats(0, AMOUNT_MAX), st.integers(0, int(AMOUNT_MAX)), st.sampled_from([0, 0.0, 1e9]))
currencies = st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=3, max_size=3)
timestamps = st.one_of(st.integers(TS_LO, TS_HI - 1), st.sampled_from([TS_LO, TS_HI - 1]))
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(I64_MIN, U64_MAX),
                         st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20))
json_values = st.recursive(json_scalars, lambda c: st.one_of(st.lists(c, max_size=4),
                                                             st.dictionaries(st.text(max_size=8), c, max_size=4)),
                           max_leaves=6)
extras_values = st.dictionaries(st.text(max_size=6), json_values, max_size=3)


@st.composite
def valid_events(draw) -> dict:
    d = {"event_id": draw(ids), "event_type": draw(st.sampled_from(SPEC_EVENT_TYPES)), "user_id": draw(ids),
         "device_id": draw(ids), "ip": draw(ips), "amount": draw(amounts), "currency": draw(currencies),
         "ts": draw(timestamps)}
    if draw(st.booleans()):
        d["extras"] = draw(extras_values)
    if d["event_type"] in PAYMENT_REF_TYPES and draw(st.booleans()):
        d["payment_ref"] = draw(ids)
    return d


# values a field is replaced with: any JSON value, plus ones close to each rule's edge
edge_values = st.one_of(
    st.sampled_from([None, "", " ", "\t\n", "\u3000", "Payment", "PAYMENT", "payment ", "eur", "EU", "EURO",
                     "\u00c9UR", "1.2.3.4", "x" * (MAX_IP_LEN + 1), "x" * MAX_ID_LEN, "x" * (MAX_ID_LEN + 1),
                     0, -1, -0.0, 1e9, 1e9 + 1e-6, 5e-324, True, False, [], {}, TS_LO - 1, TS_HI, 2**63]),
    st.sampled_from(SPEC_EVENT_TYPES),
    st.integers(TS_LO - 3, TS_LO + 3), st.integers(TS_HI - 3, TS_HI + 3), st.integers(-10, 10),
    st.text(max_size=8), currencies, st.floats(-10.0, 2e9, allow_nan=False),
)
# and values close to the edge of the given field's own rule
near_values = {
    **{f: st.one_of(ids, st.sampled_from([None, "", " ", "\t\n", "\u3000", "\u200b", 7])) for f in KEY_FIELDS},
    "ip": st.one_of(ips, st.sampled_from([None, "", " ", "\u00a0", "1" * (MAX_IP_LEN + 1), 1234])),
    "event_type": st.one_of(st.sampled_from(SPEC_EVENT_TYPES), st.sampled_from(SPEC_EVENT_TYPES).map(str.title),
                            st.sampled_from(["", "teleport", "place-order", 3])),
    "amount": st.one_of(st.floats(-10.0, 2e9, allow_nan=False), st.integers(-10, 2 * 10**9),
                        st.sampled_from(["5", True, None, -0.0])),
    "currency": st.text("ABCEURUSDeur1 ", min_size=0, max_size=4),
    "ts": st.one_of(timestamps, st.integers(TS_LO - 3, TS_LO + 3), st.integers(TS_HI - 3, TS_HI + 3),
                    st.integers(0, 2 * 10**9), st.sampled_from([1.7e12, "1767225600000", False])),
    "extras": st.one_of(extras_values, st.none(), json_values),
    "payment_ref": st.one_of(ids, st.sampled_from([None, "", " ", "\u3000", "x" * (MAX_ID_LEN + 1), 7, []])),
}
any_field = st.sampled_from(sorted(KNOWN))
# numbers written as raw JSON literals (so NaN/Infinity and integers beyond 64 bits can be sent)
wide_numbers = st.one_of(st.sampled_from([math.nan, math.inf, -math.inf, -0.0]), st.floats(),
                         st.integers(-(2**70), 2**70), st.integers(I64_MIN - 3, I64_MIN + 3),
                         st.integers(U64_MAX - 3, U64_MAX + 3), st.integers(-10, 10**10),
                         st.floats(-10.0, 2e9), st.integers(TS_LO - 3, TS_HI + 3))
FAMILIES = ("drop", "add", "replace", "amount_literal", "ts_literal", "duplicate", "bad_utf8_byte", "truncate",
            "resize")


@st.composite
def mutated(draw, family: str) -> tuple[bytes, tuple[str, object]]:
    """(raw, expected) with expected ("event", dict) or ("reject", reason)."""
    base = draw(valid_events())
    raw = orjson.dumps(base)
    if family == "drop":
        field = draw(st.sampled_from(sorted(base)))
        d = {k: v for k, v in base.items() if k != field}
        return orjson.dumps(d), (("event", d) if field in ("extras", "payment_ref") else ("reject", "missing_field"))
    if family == "add":
        name = draw(st.text(max_size=12).filter(lambda k: k not in KNOWN))
        return orjson.dumps({**base, name: draw(json_values)}), ("reject", "unknown_field")
    if family in ("replace", "duplicate"):
        field = draw(any_field)
        v = draw(st.one_of(near_values[field], near_values[field], edge_values, json_values))  # weighted
        if family == "replace":
            raw = orjson.dumps({**base, field: v})
        else:  # the bad-or-good value comes last; orjson keeps the last one
            raw = raw[:-1] + b"," + orjson.dumps(field) + b":" + orjson.dumps(v) + b"}"
        reason = expected_for(field, v, base)
        return raw, (("reject", reason) if reason else ("event", {**base, field: v}))
    if family in ("amount_literal", "ts_literal"):
        field = family.split("_")[0]
        literal, parsed = number_literal(draw(wide_numbers))
        raw = with_literal(field, literal, base)
        if parsed is None:
            return raw, ("reject", "invalid_json")
        reason = expected_for(field, parsed)
        return raw, (("reject", reason) if reason else ("event", {**base, field: parsed}))
    if family == "bad_utf8_byte":
        at = draw(st.integers(0, len(raw)))
        bad = bytes([draw(st.sampled_from(BAD_UTF8_BYTES))])
        return raw[:at] + bad + raw[at:], ("reject", "invalid_utf8")
    if family == "truncate":
        at = draw(st.integers(0, len(raw)))
        if at == len(raw):
            return raw, ("event", base)
        # cutting just before a continuation byte splits a multi-byte character
        return raw[:at], ("reject", "invalid_utf8" if raw[at] & 0xC0 == 0x80 else "invalid_json")
    if family == "resize":  # pad extras to a size around the limit
        target = draw(st.integers(MAX_EVENT_BYTES - 40, MAX_EVENT_BYTES + 40))
        d = {**base, "extras": {"pad": ""}}
        n = max(0, target - len(orjson.dumps(d)))
        d["extras"]["pad"] = "x" * n
        raw = orjson.dumps(d)
        return raw, (("reject", "oversized") if len(raw) > MAX_EVENT_BYTES else ("event", d))
    raise AssertionError(family)


def check_outcome(raw: bytes, expected: tuple[str, object]):
    res = parse_event(raw)
    kind, want = expected
    if kind == "event":
        assert isinstance(res, Event), res
        assert res.to_dict() == as_event_dict(want)
        assert type(res.amount) is float
    else:
        assert isinstance(res, Rejection), res
        assert res.reason == want, res
    return res


# ---- fuzz ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_one_mutation_of_a_valid_event_is_classified_like_the_oracle(family, data):
    raw, expected = data.draw(mutated(family))
    res = check_outcome(raw, expected)
    if isinstance(res, Rejection):
        dl = orjson.loads(dead_letter_record(raw, res, "job", 1))
        assert base64.b64decode(dl["original_b64"]) == raw and dl["original_size"] == len(raw)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_events())
def test_valid_events_round_trip(d):
    ev = parse_event(orjson.dumps(d))
    assert isinstance(ev, Event), ev
    assert ev.to_dict() == {**d, "amount": float(d["amount"])}
    assert parse_event(encode_event(ev)) == ev


def _never_raises(raw: bytes):
    res = parse_event(raw)
    if isinstance(res, Rejection):
        assert res.reason in PARSE_REASON_CODES, res
        dead_letter_record(raw, res, "job", 1)
    else:
        assert isinstance(res, Event)
        encode_event(res)  # whatever is accepted can be re-encoded by the job


@settings(max_examples=2000, deadline=None)
@given(st.one_of(st.binary(max_size=400), st.binary(max_size=40).map(lambda b: orjson.dumps(GOOD)[:-1] + b)))
def test_arbitrary_bytes_never_raise(raw):
    _never_raises(raw)


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(json_values,
                 st.dictionaries(any_field, st.one_of(json_scalars, edge_values), max_size=10),
                 st.builds(lambda k, v: {**GOOD, k: v}, any_field, json_values)))
def test_arbitrary_json_values_never_raise(value):
    _never_raises(orjson.dumps(value))
