"""The audit's accounting (pure): each kind of fault moves exactly the counter it should."""

from __future__ import annotations

import os

import orjson
import pytest

from riskstream.kafka_io import parse_time
from riskstream.tools.audit import Audit
from udfs.events import (DEAD_LETTER_ORIGINAL_MAX_BYTES, DUPLICATE_EVENT_ID, Event, Rejection, dead_letter_record,
                         null_value_record, parse_event)

GOOD = {"event_type": "payment", "user_id": "u1", "device_id": "d1", "ip": "1.2.3.4", "amount": 12.5,
        "currency": "EUR", "ts": 1_767_225_600_000}


def ev(i: int) -> bytes:
    return orjson.dumps({"event_id": f"e{i}", **GOOD})


def decision(i: int, kind: str = "allow", user: str = "u1") -> bytes:
    return orjson.dumps({"event_id": f"e{i}", "user_id": user, "decision": kind, "decided_at": 1_767_225_600_100 + i})


def dead(raw: bytes, reencoded: bool = False, reason: str | None = None) -> bytes:
    res = parse_event(raw)
    rej = Rejection(reason or (res.reason if isinstance(res, Rejection) else DUPLICATE_EVENT_ID), "")
    return dead_letter_record(raw, rej, "job", 1, reencoded=reencoded)


BAD = [b"{not json", orjson.dumps({**GOOD, "event_id": "x", "amount": -1})]


def clean_run() -> Audit:
    a = Audit()
    for i in range(10):
        a.add_event(ev(i), 1_767_225_600_000 + i)
    for b in BAD:
        a.add_event(b)
    a.add_event(ev(3))  # a producer retry of e3
    for i in range(10):
        a.add_decision(decision(i, "block" if i == 7 else "allow"))
    for b in BAD:
        a.add_dead(dead(b))
    a.add_dead(dead(ev(3), reencoded=True))
    return a


def test_clean_run_accounts_for_everything():
    r = clean_run().report()
    assert (r["events"], r["valid_events"], r["distinct_event_ids"], r["repeated_event_ids"], r["malformed"]) == \
        (13, 11, 10, 1, 2)
    assert (r["decided"], r["missing"], r["duplicates"], r["unexpected"], r["wrong_reason"]) == (10, 0, 0, 0, 0)
    assert r["decisions"] == {"allow": 9, "review": 0, "block": 1}
    assert r["dead_letter"] == 3 and r["dead_letter_reasons"] == {"duplicate_event_id": 1, "invalid_amount": 1,
                                                                  "invalid_json": 1}
    assert r["latency_ms"]["max"] == 100.0


@pytest.mark.parametrize("fault, field, n", [
    (lambda a: a.add_decision(decision(4)), "duplicates", 1),  # a replayed decision
    (lambda a: a.add_dead(dead(BAD[0])), "duplicates", 1),  # a replayed dead letter
    (lambda a: a.add_dead(dead(ev(3), reencoded=True)), "duplicates", 1),  # a replayed duplicate notice
    (lambda a: a.add_decision(decision(99)), "unexpected", 1),  # a decision for no input
    (lambda a: a.add_dead(dead(b"{other")), "unexpected", 1),  # a dead letter for no input
    (lambda a: a.add_event(ev(42)), "missing", 1),  # an input nobody answered
    (lambda a: a.add_event(BAD[0]), "missing", 1),  # a second copy of malformed bytes: needs its own letter
    (lambda a: a.add_event(ev(5)), "missing", 1),  # a repeat of e5 with no duplicate notice
])
def test_each_fault_moves_its_counter(fault, field, n):
    a = clean_run()
    fault(a)
    r = a.report()
    want = {"missing": 0, "duplicates": 0, "unexpected": 0, "wrong_reason": 0, field: n}
    assert {k: r[k] for k in want} == want


def test_a_dead_letter_with_the_wrong_reason_is_flagged():
    a = Audit()
    a.add_event(BAD[1])
    a.add_dead(dead(BAD[1], reason="invalid_json"))
    r = a.report()
    assert (r["wrong_reason"], r["missing"], r["duplicates"]) == (1, 0, 0)


def test_a_repeat_decided_twice_is_fine_but_no_decision_at_all_is_missing():
    a = Audit()
    a.add_event(ev(1))
    a.add_event(ev(1))
    a.add_decision(decision(1))
    a.add_decision(decision(1))  # the repeat came after the dedup horizon: decided again
    assert (a.report()["missing"], a.report()["duplicates"]) == (0, 0)
    b = Audit()
    b.add_event(ev(1))
    b.add_dead(dead(ev(1), reencoded=True))
    assert b.report()["missing"] == 1


def test_a_time_range_reports_strays_as_outside_the_range():
    a = Audit(whole_input=False)
    a.add_event(ev(1))
    a.add_decision(decision(1))
    a.add_decision(decision(0))  # its event is before the range
    r = a.report()
    assert (r["unexpected"], r["outside_range"], r["missing"]) == (0, 1, 0)


def test_parse_time():
    assert parse_time("1767225600000") == 1_767_225_600_000
    assert parse_time("2026-01-01T00:00:00") == 1_767_225_600_000
    assert parse_time("2026-01-01T01:00:00+01:00") == 1_767_225_600_000
    with pytest.raises(ValueError, match="neither epoch milliseconds nor an ISO-8601"):
        parse_time("yesterday")


def test_a_processing_error_accounts_for_its_event_and_is_reported():
    a = Audit()
    a.add_event(ev(1))
    a.add_dead(dead(ev(1), reencoded=True, reason="processing_error"))
    r = a.report()
    assert (r["missing"], r["duplicates"], r["processing_errors"]) == (0, 0, 1)
    a.add_decision(decision(1))  # an error notice and a decision for one record: one too many
    assert a.report()["duplicates"] == 1


# ---- event identity is (user_id, event_id) -------------------------------------------------------------
def ev_of(user: str, eid: str = "e1") -> bytes:
    return orjson.dumps({**GOOD, "event_id": eid, "user_id": user})


def test_the_same_event_id_under_eight_users_is_eight_events():
    """Issue 21: eight users sending e1 are eight events, each needing its own decision."""
    a = Audit()
    users = [f"u{i}" for i in range(8)]
    for u in users:
        a.add_event(ev_of(u))
    for u in users:
        a.add_decision(orjson.dumps({"event_id": "e1", "user_id": u, "decision": "allow", "decided_at": 1}))
    r = a.report()
    assert (r["valid_events"], r["distinct_event_ids"], r["repeated_event_ids"]) == (8, 8, 0)
    assert (r["decided"], r["missing"], r["duplicates"], r["unexpected"]) == (8, 0, 0, 0)
    assert r["decisions"]["allow"] == 8


def test_a_decision_for_one_user_does_not_answer_another_users_event():
    a = Audit()
    a.add_event(ev_of("u1"))
    a.add_event(ev_of("u2"))
    a.add_decision(orjson.dumps({"event_id": "e1", "user_id": "u1", "decision": "allow", "decided_at": 1}))
    a.add_decision(orjson.dumps({"event_id": "e1", "user_id": "u1", "decision": "allow", "decided_at": 1}))
    r = a.report()
    assert (r["decided"], r["missing"], r["duplicates"]) == (1, 1, 1)


def test_a_duplicate_notice_counts_for_its_own_user_only():
    a = Audit()
    for u in ("u1", "u1", "u2"):
        a.add_event(ev_of(u))
    for u in ("u1", "u2"):
        a.add_decision(orjson.dumps({"event_id": "e1", "user_id": u, "decision": "allow", "decided_at": 1}))
    a.add_dead(dead(ev_of("u1"), reencoded=True))
    r = a.report()
    assert (r["missing"], r["duplicates"], r["unexpected"]) == (0, 0, 0)
    a.add_dead(dead(ev_of("u3"), reencoded=True))  # a notice for a user who never sent e1
    assert a.report()["unexpected"] == 1


# ---- tombstones, truncated dead letters, anything a topic can hold ---------------------------------------
def test_tombstones_are_counted_and_matched_by_offset():
    a = Audit(events_topic="ev")
    a.add_event(None, 1, 0, 5)
    a.add_event(None, 1, 1, 5)
    r = a.report()
    assert (r["events"], r["tombstones"], r["missing"]) == (2, 2, 2)
    a.add_dead(null_value_record(b"k", "job", 1, "ev", 0, 5))
    assert a.report()["missing"] == 1
    a.add_dead(null_value_record(None, "job", 1, "ev", 1, 5))
    r = a.report()
    assert (r["missing"], r["duplicates"], r["unexpected"]) == (0, 0, 0)
    assert r["dead_letter_reasons"] == {"null_value": 2}
    a.add_dead(null_value_record(None, "job", 1, "ev", 1, 5))  # written twice
    assert a.report()["duplicates"] == 1
    b = Audit(events_topic="ev")
    b.add_dead(null_value_record(None, "job", 1, "labels", 0, 1))  # the labels topic's: not an event's
    b.add_dead(null_value_record(None, "job", 1, "ev", 0, 9))  # an offset nobody read
    r = b.report()
    assert (r["missing"], r["unexpected"], r["dead_letter"]) == (0, 1, 2)


def test_a_truncated_dead_letter_accounts_for_its_record():
    big = b'{"x":"' + b"a" * (DEAD_LETTER_ORIGINAL_MAX_BYTES + 100) + b'"}'
    a = Audit()
    a.add_event(big)
    assert a.report()["missing"] == 1
    a.add_dead(dead(big))
    r = a.report()
    assert (r["missing"], r["duplicates"], r["unexpected"], r["wrong_reason"]) == (0, 0, 0, 0)
    assert r["truncated_dead_letters"] == 1 and r["dead_letter_reasons"] == {"oversized": 1}
    other = big[:-3] + b'b"}'  # same length, same prefix, other bytes: not this record's
    b = Audit()
    b.add_event(other)
    b.add_dead(dead(big))
    assert (b.report()["missing"], b.report()["unexpected"]) == (1, 1)


HOSTILE = [None, b"", b"null", b"[]", b"{}", b"\xff\xfe", b"1e400", b'{"event_id":[1],"user_id":{}}',
           b'{"event_id":"e1","user_id":"u1","decision":[],"decided_at":"x"}', b'{"reason":{}}',
           b'{"reason":"oversized","original_truncated":true}', b'{"reason":"oversized","original_b64":5}',
           b'{"reason":"duplicate_event_id","original_reencoded":true,"original_b64":"!!"}',
           b'{"reason":"null_value","partition":[],"offset":{}}', b'{"reason":"null_value"}', os.urandom(64)]


def test_verify_never_raises_on_any_record_a_topic_can_hold():
    a = Audit(events_topic="ev")
    a.add_event(ev_of("u1"))  # the decision with a list for its kind and a text time answers this event
    for i, v in enumerate(HOSTILE):
        a.add_event(v, None if i % 2 else 1, 0, i)
        a.add_decision(v)
        a.add_dead(v)
    r = a.report()
    assert r["events"] == len(HOSTILE) + 1 and r["tombstones"] == 1
    assert r["unreadable_outputs"] > 0
