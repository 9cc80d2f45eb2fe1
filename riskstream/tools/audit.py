"""`riskstream verify`: is every input record accounted for, exactly once?

Reads the events topic and the decisions and dead-letter topics with ``read_committed`` (what downstream
services see) and matches them:

- a valid event id sent ``k`` times must come out as one decision plus ``k - 1`` ``duplicate_event_id``
  dead letters (more than one decision is allowed only when a repeat came after the dedup horizon);
- a malformed record must come out as one dead letter carrying its exact bytes and the parser's reason.

``missing`` counts inputs without their output, ``duplicates`` outputs beyond their inputs, and
``unexpected`` outputs that match no input (only judged when the whole events topic was read; with a
time range they are ``outside_range``). ``pending_commit`` is, per output topic, how many records sit
above the last stable offset: records of open transactions, not yet visible. A job commits once per
checkpoint, so some are normal. If the number stays high while the job is stopped, a transaction is
lingering after a crash and holds ``read_committed`` readers back until ``transaction.timeout.ms``.
"""

from __future__ import annotations

import base64
import time
from collections import Counter
from datetime import datetime
from typing import Callable

import orjson

from udfs.events import CONTROL_REJECTED, PROCESSING_ERROR, Event, parse_event
from udfs.labels import INVALID_LABEL

from ..metrics import percentile

KINDS = ("allow", "review", "block")


def parse_time(text: str | None) -> int | None:
    """Epoch milliseconds, or an ISO-8601 time (``2026-11-21T09:00:00+00:00``; no zone means UTC)."""
    if text is None or text == "":
        return None
    if text.isdigit():
        return int(text)
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither epoch milliseconds nor an ISO-8601 time") from None
    if dt.tzinfo is None:
        from datetime import timezone

        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp() * 1000)


class Audit:
    """Accumulates the three topics' records; :meth:`report` can be called at any time."""

    def __init__(self, whole_input: bool = True):
        self.whole_input = whole_input
        self.records = 0
        self.valid = Counter()  # event id -> records
        self.bad: Counter = Counter()  # raw bytes -> records
        self.bad_reason: dict[bytes, str] = {}
        self.append_ts: dict[str, int] = {}
        self.decision_count: Counter = Counter()
        self.first_decision: dict[str, dict] = {}
        self.seen_at: dict[str, float] = {}
        self.refused_ids: Counter = Counter()  # duplicate_event_id dead letters, by event id
        self.error_ids: Counter = Counter()  # processing_error dead letters for parsed events, by event id
        self.dead_bytes: Counter = Counter()
        self.dead_reasons: Counter = Counter()
        self.dead_total = 0
        self.wrong_reason = 0
        self.unreadable_outputs = 0

    def add_event(self, raw: bytes, append_ts: int | None = None) -> None:
        self.records += 1
        ev = parse_event(raw)
        if isinstance(ev, Event):
            self.valid[ev.event_id] += 1
            if append_ts is not None:
                self.append_ts.setdefault(ev.event_id, append_ts)
        else:
            self.bad[raw] += 1
            self.bad_reason[raw] = ev.reason

    def add_decision(self, value: bytes, seen_at: float | None = None) -> None:
        try:
            d = orjson.loads(value)
            eid = d["event_id"]
        except Exception:
            self.unreadable_outputs += 1
            return
        self.decision_count[eid] += 1
        if eid not in self.first_decision:
            self.first_decision[eid] = d
            self.seen_at[eid] = seen_at if seen_at is not None else time.time()

    def add_dead(self, value: bytes) -> None:
        try:
            d = orjson.loads(value)
            raw = base64.b64decode(d["original_b64"])
            reason = d["reason"]
        except Exception:
            self.unreadable_outputs += 1
            return
        self.dead_total += 1
        self.dead_reasons[reason] += 1
        if reason in (CONTROL_REJECTED, INVALID_LABEL):  # from the control or labels topic, not an event
            return
        if d.get("original_reencoded"):
            ev = parse_event(raw)
            if isinstance(ev, Event):
                (self.error_ids if reason == PROCESSING_ERROR else self.refused_ids)[ev.event_id] += 1
            else:
                self.unreadable_outputs += 1
            return
        self.dead_bytes[raw] += 1
        expected = self.bad_reason.get(raw)
        if expected is not None and expected != reason and reason != PROCESSING_ERROR:
            self.wrong_reason += 1

    def report(self) -> dict:
        missing = duplicates = unexpected = decided = 0
        for eid, k in self.valid.items():
            d, x = self.decision_count.get(eid, 0), self.refused_ids.get(eid, 0)
            e = self.error_ids.get(eid, 0)
            decided += d > 0
            # k records need k outputs; at least one is a decision unless the job reported an error for it
            missing += max(k - d - x - e, 1 if d == 0 and e == 0 else 0)
            duplicates += max(0, d + x + e - k)
        for raw, c in self.bad.items():
            got = self.dead_bytes.get(raw, 0)
            missing += max(0, c - got)
            duplicates += max(0, got - c)
        stray = (sum(c for e, c in self.decision_count.items() if e not in self.valid)
                 + sum(c for e, c in self.refused_ids.items() if e not in self.valid)
                 + sum(c for e, c in self.error_ids.items() if e not in self.valid)
                 + sum(c for r, c in self.dead_bytes.items() if r not in self.bad))
        unexpected = stray if self.whole_input else 0
        kinds = Counter(d["decision"] for e, d in self.first_decision.items() if e in self.valid)
        lat = [d["decided_at"] - self.append_ts[e] for e, d in self.first_decision.items() if e in self.append_ts]
        vis = [self.seen_at[e] * 1000 - self.append_ts[e] for e in self.first_decision if e in self.append_ts]
        return {
            "events": self.records,
            "valid_events": sum(self.valid.values()),
            "distinct_event_ids": len(self.valid),
            "repeated_event_ids": sum(self.valid.values()) - len(self.valid),
            "malformed": sum(self.bad.values()),
            "decided": decided,
            "decisions": {k: kinds.get(k, 0) for k in KINDS},
            "dead_letter": self.dead_total,
            "dead_letter_reasons": dict(sorted(self.dead_reasons.items())),
            "missing": missing,
            "duplicates": duplicates,
            "unexpected": unexpected,
            "outside_range": 0 if self.whole_input else stray,
            "processing_errors": sum(self.error_ids.values()),
            "wrong_reason": self.wrong_reason,
            "unreadable_outputs": self.unreadable_outputs,
            "latency_ms": {q: percentile(lat, v) for q, v in (("p50", 0.5), ("p99", 0.99), ("p999", 0.999),
                                                              ("max", 1.0))},
            "visible_latency_ms": {q: percentile(vis, v) for q, v in (("p50", 0.5), ("p99", 0.99), ("max", 1.0))},
        }


def _partitions(consumer, topic: str):
    from kafka import TopicPartition

    parts = consumer.partitions_for_topic(topic)
    if not parts:
        raise SystemExit(f"riskstream verify: topic {topic!r} does not exist on the broker")
    return [TopicPartition(topic, p) for p in sorted(parts)]


def _offsets_at(consumer, tps, ts_ms: int | None, default: dict) -> dict:
    if ts_ms is None:
        return dict(default)
    found = consumer.offsets_for_times({tp: ts_ms for tp in tps})
    return {tp: (found[tp].offset if found.get(tp) else default[tp]) for tp in tps}


def verify(bootstrap: str, events_topic: str, decisions_topic: str, dead_letter_topic: str,
           from_ms: int | None = None, to_ms: int | None = None, wait_s: float = 0.0,
           progress: Callable[[str], None] | None = None, client_props: dict | None = None) -> dict:
    """Read the events in ``[from_ms, to_ms)`` (broker append time; default: all) and every output from
    ``from_ms`` on, then report. With ``wait_s``, keep reading outputs until nothing is missing or the
    time is up (decisions trail their events by about one checkpoint)."""
    from kafka import KafkaConsumer

    t0 = time.monotonic()
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed",
                             enable_auto_commit=False, group_id=None, fetch_max_wait_ms=100,
                             max_partition_fetch_bytes=4 * 1024 * 1024, **(client_props or {}))
    raw_consumer = None
    try:
        ev_tps = _partitions(consumer, events_topic)
        out_tps = _partitions(consumer, decisions_topic) + _partitions(consumer, dead_letter_topic)
        all_tps = ev_tps + out_tps
        consumer.assign(all_tps)
        begin = consumer.beginning_offsets(all_tps)
        end_now = consumer.end_offsets(all_tps)
        ev_end = _offsets_at(consumer, ev_tps, to_ms, {tp: end_now[tp] for tp in ev_tps})
        # no record at or after from_ms in a partition: nothing of it is in range (start at its end)
        start = _offsets_at(consumer, all_tps, from_ms, end_now) if from_ms is not None else dict(begin)
        for tp in all_tps:
            consumer.seek(tp, start[tp])
        audit = Audit(whole_input=from_ms is None and to_ms is None)
        deadline = t0 + wait_s
        last_report = 0.0
        while True:
            out_end = consumer.end_offsets(out_tps)  # the last stable offsets (read_committed)
            targets = {**{tp: ev_end[tp] for tp in ev_tps}, **out_end}
            stalled_since = time.monotonic()
            while any(consumer.position(tp) < targets[tp] for tp in all_tps):
                batch = consumer.poll(timeout_ms=200, max_records=5000)
                if batch:
                    stalled_since = time.monotonic()
                elif time.monotonic() - stalled_since > 60:
                    raise TimeoutError(f"no records from {bootstrap} for 60 s before the end offsets were "
                                       "reached: is the broker up?")
                for tp, msgs in batch.items():
                    now = time.time()
                    for m in msgs:
                        if tp.topic == events_topic:
                            if m.offset < ev_end[tp]:
                                audit.add_event(m.value, m.timestamp)
                        elif tp.topic == decisions_topic:
                            audit.add_decision(m.value, now)
                        else:
                            audit.add_dead(m.value)
                for tp in ev_tps:  # stop reading events past the range
                    if consumer.position(tp) >= ev_end[tp]:
                        consumer.pause(tp)
            rep = audit.report()
            if progress and time.monotonic() - last_report > 2:
                last_report = time.monotonic()
                progress(f"{rep['events']} events, {rep['decided']} decided, {rep['dead_letter']} dead letters, "
                         f"{rep['missing']} missing")
            if rep["missing"] == 0 or time.monotonic() >= deadline:
                break
            time.sleep(0.2)  # polling interval while outputs catch up
        # records of open (not yet committed or lingering) transactions: high watermark - last stable offset
        raw_consumer = KafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_uncommitted",
                                     enable_auto_commit=False, group_id=None, **(client_props or {}))
        hw = raw_consumer.end_offsets(out_tps)
        lso = consumer.end_offsets(out_tps)
        pending = Counter()
        for tp in out_tps:
            pending[tp.topic] += hw[tp] - lso[tp]
        rep["pending_commit"] = {t: pending.get(t, 0) for t in (decisions_topic, dead_letter_topic)}
        rep["range"] = {"from_ms": from_ms, "to_ms": to_ms}
        rep["seconds"] = round(time.monotonic() - t0, 1)
        return rep
    finally:
        consumer.close()
        if raw_consumer is not None:
            raw_consumer.close()


def render(rep: dict) -> str:
    ok = rep["missing"] == 0 and rep["duplicates"] == 0 and rep["unexpected"] == 0
    lines = [
        f"events:        {rep['events']} ({rep['valid_events']} valid records, {rep['distinct_event_ids']} event ids, "
        f"{rep['repeated_event_ids']} repeats, {rep['malformed']} malformed)",
        f"decided:       {rep['decided']}  " + ", ".join(f"{k} {v}" for k, v in rep["decisions"].items()),
        f"dead letters:  {rep['dead_letter']} {rep['dead_letter_reasons']}",
        f"missing:       {rep['missing']}",
        f"duplicates:    {rep['duplicates']}",
        f"unexpected:    {rep['unexpected']}" + (f" (outside the range: {rep['outside_range']})"
                                                 if rep.get("outside_range") else ""),
    ]
    if rep.get("wrong_reason") or rep.get("unreadable_outputs"):
        lines.append(f"wrong reason:  {rep['wrong_reason']}; unreadable outputs: {rep['unreadable_outputs']}")
    if "pending_commit" in rep:
        lines.append(f"pending commit (open transactions): {rep['pending_commit']}")
    lat, vis = rep["latency_ms"], rep["visible_latency_ms"]
    lines.append(f"latency ms:    p50 {lat['p50']}  p99 {lat['p99']}  p99.9 {lat['p999']} (arrival -> decided)")
    lines.append(f"visible ms:    p50 {vis['p50']}  p99 {vis['p99']} (arrival -> seen by this read; "
                 "meaningful only while following a live job)")
    lines.append("verdict:       " + ("OK: every input accounted for exactly once" if ok else "NOT OK"))
    return "\n".join(lines)
