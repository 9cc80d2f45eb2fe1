"""Parser: every bad record becomes a rejection with a stable reason; nothing raises (no JVM)."""

from __future__ import annotations

import base64

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from udfs.events import (
    MAX_EVENT_BYTES,
    REASON_CODES,
    Event,
    Rejection,
    dead_letter_record,
    parse_event,
)

GOOD = {"event_id": "e1", "event_type": "payment", "user_id": "u1", "device_id": "d1", "ip": "1.2.3.4",
        "amount": 12.5, "currency": "EUR", "ts": 1_767_225_600_000}


def test_valid_event_round_trips():
    ev = parse_event(orjson.dumps({**GOOD, "extras": {"card_bin": "411111"}}))
    assert ev == Event("e1", "payment", "u1", "d1", "1.2.3.4", 12.5, "EUR", 1_767_225_600_000,
                       {"card_bin": "411111"})
    assert parse_event(orjson.dumps({**GOOD, "amount": 3})).amount == 3.0


@pytest.mark.parametrize("raw, reason", [
    (b"{not json", "invalid_json"),
    (b"\xff\xfe{}", "invalid_utf8"),
    (b"[1, 2]", "not_an_object"),
    (orjson.dumps({k: v for k, v in GOOD.items() if k != "ts"}), "missing_field"),
    (orjson.dumps({**GOOD, "colour": "red"}), "unknown_field"),
    (orjson.dumps({**GOOD, "amount": "12"}), "wrong_type"),
    (orjson.dumps({**GOOD, "amount": True}), "wrong_type"),
    (orjson.dumps({**GOOD, "ts": 1.5e12}), "wrong_type"),
    (orjson.dumps({**GOOD, "user_id": None}), "null_key"),
    (orjson.dumps({**GOOD, "device_id": "  "}), "null_key"),
    (orjson.dumps({**GOOD, "event_type": "teleport"}), "unknown_event_type"),
    (orjson.dumps({**GOOD, "amount": -1}), "invalid_amount"),
    (orjson.dumps({**GOOD, "amount": 2e9}), "invalid_amount"),
    (b'{"event_id":"e1","event_type":"payment","user_id":"u1","device_id":"d1","ip":"x","amount":1e999,'
     b'"currency":"EUR","ts":1767225600000}', "invalid_json"),  # orjson refuses infinities
    (orjson.dumps({**GOOD, "currency": "euro"}), "invalid_currency"),
    (orjson.dumps({**GOOD, "ts": 1_767_225_600}), "invalid_ts"),
    (orjson.dumps({**GOOD, "extras": "x" * MAX_EVENT_BYTES}), "oversized"),
])
def test_rejections(raw, reason):
    res = parse_event(raw)
    assert isinstance(res, Rejection) and res.reason == reason, res
    assert res.reason in REASON_CODES


def test_nan_is_not_json():
    assert parse_event(b'{"amount": NaN}').reason == "invalid_json"


@settings(max_examples=2000, deadline=None)
@given(st.one_of(
    st.binary(max_size=300),
    st.dictionaries(st.sampled_from(sorted(GOOD) + ["extras", "x"]),
                    st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1), st.floats(), st.text(max_size=20),
                              st.lists(st.integers(-1000, 1000), max_size=3))).map(orjson.dumps),
    st.builds(lambda k, v: orjson.dumps({**GOOD, k: v}), st.sampled_from(sorted(GOOD)),
              st.one_of(st.none(), st.integers(-2**63, 2**63 - 1), st.floats(allow_nan=False),
                        st.text(max_size=10))),
))
def test_fuzz_never_raises_and_dead_letter_keeps_bytes(raw):
    res = parse_event(raw)
    assert isinstance(res, (Event, Rejection))
    if isinstance(res, Rejection):
        assert res.reason in REASON_CODES
        dl = orjson.loads(dead_letter_record(raw, res, "job", 1))
        assert base64.b64decode(dl["original_b64"]) == raw and dl["reason"] == res.reason
