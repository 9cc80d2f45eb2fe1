"""Dead letters are bounded (docs/contracts.md#dead-letters): above DEAD_LETTER_ORIGINAL_MAX_BYTES a dead
letter keeps a prefix of the original, its whole length and its SHA-256 (recomputed here with hashlib on the
bytes the test made, not with the code under test), and says it is truncated; a tombstone's dead letter keeps
its key. The pure tests need no JVM; the last ones hold the JVM's dead letters (EventParser, DeadLetters, the
entity stage's) to the Python ones, field for field (mark ``flink``: they start the gateway)."""

from __future__ import annotations

import base64
import gzip
import hashlib
import os

import orjson
import pytest

from riskstream.topics import DEAD_LETTER_MAX_BYTES
from udfs.events import (DEAD_LETTER_KEY_MAX_BYTES, DEAD_LETTER_ORIGINAL_MAX_BYTES, OVERSIZED, Rejection,
                         dead_letter_original, dead_letter_record, null_value_record, parse_event)

MIB = 1024 * 1024


def poison(n: int, seed: int = 7) -> bytes:
    """``n`` bytes of JSON-looking text that gzip shrinks a lot (as the 1.7 MB record of issue 21)."""
    import random

    rng = random.Random(seed)
    head = b'{"event_id":"big","extras":{"blob":"'
    body = bytes(rng.choice(b"abcdefgh") for _ in range(n - len(head) - 3))
    return head + body + b'"}}'


def test_a_record_up_to_the_bound_is_kept_whole():
    for raw in (b"", b"{bad", os.urandom(1000), poison(DEAD_LETTER_ORIGINAL_MAX_BYTES)):
        d = orjson.loads(dead_letter_record(raw, parse_event(raw), "job", 1))
        assert base64.b64decode(d["original_b64"]) == raw and d["original_size"] == len(raw)
        assert "original_truncated" not in d and "original_sha256" not in d
        assert dead_letter_original(d) == (hashlib.sha256(raw).hexdigest(), len(raw))


@pytest.mark.parametrize("size", [DEAD_LETTER_ORIGINAL_MAX_BYTES + 1, 1_700_000, 8 * MIB])
def test_a_longer_record_keeps_a_prefix_its_length_and_sha256(size):
    raw = poison(size)
    assert len(raw) == size
    res = parse_event(raw)
    assert isinstance(res, Rejection) and res.reason == OVERSIZED
    out = dead_letter_record(raw, res, "riskstream-decisions", 1_795_299_354_567)
    d = orjson.loads(out)
    kept = base64.b64decode(d["original_b64"])
    assert kept == raw[:DEAD_LETTER_ORIGINAL_MAX_BYTES]
    assert d["original_size"] == size
    assert d["original_sha256"] == hashlib.sha256(raw).hexdigest()
    assert d["original_truncated"] is True
    assert d["reason"] == "oversized" and d["detail"] == res.detail
    assert dead_letter_original(d) == (hashlib.sha256(raw).hexdigest(), size)
    # the bound: the sink's max.request.size with room for Kafka's record overhead
    assert len(out) < DEAD_LETTER_MAX_BYTES - 64 * 1024


def test_the_worst_dead_letter_fits_the_sink():
    """The longest detail (200 characters, each escaped as \\uXXXX\\uXXXX by the JVM writer), a long job
    name and a truncated original: still well below the 2 MiB the dead-letter topic and sink take."""
    raw = os.urandom(DEAD_LETTER_ORIGINAL_MAX_BYTES + 5)
    out = dead_letter_record(raw, Rejection(OVERSIZED, "\U0001F600" * 1000), "j" * 1000, 1, reencoded=True)
    assert len(out) < DEAD_LETTER_MAX_BYTES - 64 * 1024
    assert len(orjson.loads(out)["detail"]) == 200


def test_the_issue_21_record_compresses_below_the_broker_cap_but_its_dead_letter_is_bounded():
    raw = poison(1_700_000)
    assert len(gzip.compress(raw)) < MIB < len(raw)  # the broker takes it from a compressing producer
    out = dead_letter_record(raw, parse_event(raw), "job", 1)
    assert len(out) < DEAD_LETTER_MAX_BYTES  # before: 2,267,134 bytes, refused by the sink


@pytest.mark.parametrize("key", [None, b"", b"u-1", os.urandom(DEAD_LETTER_KEY_MAX_BYTES + 10)])
def test_a_tombstone_dead_letter_keeps_its_key(key):
    d = orjson.loads(null_value_record(key, "job", 5, "riskstream.events", 1, 42))
    assert d["reason"] == "null_value" and d["original_null"] is True
    assert d["original_b64"] == "" and d["original_size"] == 0
    assert (d["topic"], d["partition"], d["offset"], d["job"], d["dead_at"]) == ("riskstream.events", 1, 42, "job", 5)
    if key is None:
        assert d["key_b64"] is None and "key_size" not in d
    else:
        assert base64.b64decode(d["key_b64"]) == key[:DEAD_LETTER_KEY_MAX_BYTES] and d["key_size"] == len(key)
        assert d.get("key_truncated", False) is (len(key) > DEAD_LETTER_KEY_MAX_BYTES)
    assert dead_letter_original(d) is None  # it vouches for no original bytes


def test_dead_letter_original_never_raises():
    for d in ({}, {"original_b64": 5}, {"original_b64": "!!"}, {"original_truncated": True},
              {"original_truncated": True, "original_sha256": 1, "original_size": "x"}, {"original_null": True}):
        assert dead_letter_original(d) is None


# ---- the JVM writes the same dead letters -------------------------------------------------------------------
@pytest.fixture(scope="module")
def jvm_pkg():
    from tests.jvm_jar import build_jar
    from udfs.jvm_parse import _jvm_package, use_jar

    use_jar(build_jar())
    return _jvm_package()


def _no_time(d: dict) -> dict:
    return {k: v for k, v in d.items() if k != "dead_at"}


@pytest.mark.flink
@pytest.mark.parametrize("size", [0, 10, DEAD_LETTER_ORIGINAL_MAX_BYTES, DEAD_LETTER_ORIGINAL_MAX_BYTES + 1,
                                  1_700_000])
def test_the_jvm_parse_dead_letter_equals_python(jvm_pkg, size):
    from udfs.jvm_parse import JavaParser

    raw = poison(size) if size > 40 else b"{" * size
    res = parse_event(raw)
    py = orjson.loads(dead_letter_record(raw, res, "job", 1))
    jv = orjson.loads(JavaParser.dead_letter_record(raw, res.reason, res.detail, "job", 1))
    assert jv == py
    assert list(jv) == list(py)  # and in the same field order


@pytest.mark.flink
@pytest.mark.parametrize("key", [None, b"u-1", bytes(range(256)) * 300])
def test_the_jvm_tombstone_dead_letter_equals_python(jvm_pkg, key):
    py = orjson.loads(null_value_record(key, "job", 1, "t", 0, 7))
    jv = orjson.loads(bytes(jvm_pkg.DeadLetters.nullValue(key, "t", 0, 7, "job", 1)))
    assert jv == py and list(jv) == list(py)


@pytest.mark.flink
def test_the_jvm_bounds_are_the_python_ones(jvm_pkg):
    assert jvm_pkg.DeadLetters.ORIGINAL_MAX_BYTES == DEAD_LETTER_ORIGINAL_MAX_BYTES
    assert jvm_pkg.DeadLetters.KEY_MAX_BYTES == DEAD_LETTER_KEY_MAX_BYTES


def test_the_largest_decision_record_is_far_below_the_decisions_sink_limit():
    """Decision records grow from input fields only through the contract's ids (at most 128 characters
    each; here 4-byte characters), and from control through at most 200 rule codes of 64 characters: a few
    KiB against the decisions sink's 1 MiB max.request.size (docs/contracts.md, "A record can never fail a
    sink")."""
    from udfs.decision import decision_record, encode
    from udfs.events import MAX_ID_LEN, Event
    from udfs.features import FEATURE_NAMES

    wide = "\U0001F600" * MAX_ID_LEN
    ev = Event(wide, "payment", wide, wide, "\U0001F600" * 64, 1e9, "EUR", 4_102_444_799_999, {"x": 1}, wide)
    reasons = ["score_block", "late_event"] + [f"rule:{'r' * 63}{i:03d}"[:69] for i in range(200)]
    rec = decision_record(ev, "block", 0.999999, reasons, [1.23456789e300] * len(FEATURE_NAMES), "m" * 32, "p" * 32,
                          0, True, rules_version="v" * 32, shadow={"score": 0.5, "decision": "review", "model_version": "c" * 32},
                          signals={"device_known_fraud_users_7d": 1000.0}, arrived_at=0)
    assert len(encode(rec)) < 64 * 1024


@pytest.mark.flink
def test_a_record_above_the_sinks_limit_is_skipped_not_sent(jvm_pkg):
    """The last line (SinkGuard): a record the producer would refuse for its size is skipped (serialize
    returns null, which the Kafka writer does not send; it is counted and logged), never sent to
    fail the sink; records within the limit go out unchanged (the dead letters unkeyed, decisions keyed by
    user)."""
    from pyflink.util.java_utils import add_jars_to_context_class_loader

    from riskstream.config import JobConfig
    from riskstream.ops.jars import flink_jar_urls

    add_jars_to_context_class_loader(flink_jar_urls(JobConfig().jars_dir))  # the Kafka connector's classes
    limit = DEAD_LETTER_MAX_BYTES
    dl = jvm_pkg.DeadLetterRecords("dead", limit)
    small = dead_letter_record(poison(1_700_000), parse_event(poison(1_700_000)), "job", 1)
    rec = dl.serialize(small, None, None)
    assert rec is not None and rec.topic() == "dead" and rec.key() is None and bytes(rec.value()) == small
    huge = orjson.dumps({"reason": "oversized", "original_size": 3 * MIB, "original_b64": "A" * (3 * MIB)})
    assert dl.serialize(huge, None, None) is None
    dec = jvm_pkg.DecisionRecords("decisions")
    d = orjson.dumps({"decision_id": "x", "event_id": "e1", "event_type": "login", "user_id": "u1"})
    assert bytes(dec.serialize(d, None, None).key()) == b"u1"
    big = orjson.dumps({"decision_id": "x", "event_id": "e1", "event_type": "login", "user_id": "u1",
                        "pad": "p" * MIB})
    assert dec.serialize(big, None, None) is None
