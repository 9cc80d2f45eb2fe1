"""The audit's accounting (pure): each kind of fault moves exactly the counter it should."""

from __future__ import annotations

import orjson
import pytest

from riskstream.tools.audit import Audit, parse_time
from udfs.events import DUPLICATE_EVENT_ID, Event, Rejection, dead_letter_record, parse_event

GOOD = {"event_type": "payment", "user_id": "u1", "device_id": "d1", "ip": "1.2.3.4", "amount": 12.5,
        "currency": "EUR", "ts": 1_767_225_600_000}


def ev(i: int) -> bytes:
    return orjson.dumps({"event_id": f"e{i}", **GOOD})


def decision(i: int, kind: str = "allow") -> bytes:
    return orjson.dumps({"event_id": f"e{i}", "decision": kind, "decided_at": 1_767_225_600_100 + i})


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
