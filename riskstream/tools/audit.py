"""`riskstream verify`: is every input record accounted for, exactly once?

Reads the events topic and the decisions and dead-letter topics with ``read_committed`` (what downstream
services see) and matches them:

- a valid event (its ``(user_id, event_id)``: ids are per user) sent ``k`` times must come out as one
  decision plus ``k - 1`` ``duplicate_event_id`` dead letters (more than one decision is allowed only when a
  repeat came after the dedup horizon);
- a malformed record must come out as one dead letter carrying its bytes (or, above the dead letters'
  bound, a prefix with the whole length and SHA-256) and the parser's reason;
- a record whose value is null (a tombstone) must come out as one ``null_value`` dead letter (matched by
  partition and offset).

``missing`` counts inputs without their output, ``duplicates`` outputs beyond their inputs, and
``unexpected`` outputs that match no input (only judged when the whole events topic was read; with a
time range they are ``outside_range``). ``pending_commit`` is, per output topic, how many records sit
above the last stable offset: records of open transactions, not yet visible. A job commits once per
checkpoint, so some are normal. If the number stays high while the job is stopped, a transaction is
lingering after a crash and holds ``read_committed`` readers back until ``transaction.timeout.ms``.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections import Counter
from typing import Callable

import orjson

from udfs.events import CONTROL_REJECTED, NULL_VALUE, PROCESSING_ERROR, Event, dead_letter_original, parse_event
from udfs.labels import INVALID_LABEL

from ..metrics import percentile

KINDS = ("allow", "review", "block")


def _str(v) -> bool:
    return isinstance(v, str)


class Audit:
    """Accumulates the three topics' records; :meth:`report` can be called at any time. Never raises on
    any record a topic can hold (a null value, bytes that are not JSON, JSON of any shape).

    Events are identified by ``(user_id, event_id)``: ids are per user (docs/contracts.md), so the same
    ``event_id`` under two users is two events, each needing its own decision. Malformed records are
    identified by the SHA-256 and length of their bytes, which a truncated dead letter still carries. A
    record whose value is null (a tombstone) needs one ``null_value`` dead letter; when both name it, by
    partition and offset (``events_topic``: dead letters naming another topic, the labels' or control's
    tombstones, are counted in ``dead_letter_reasons`` only)."""

    def __init__(self, whole_input: bool = True, events_topic: str | None = None):
        self.whole_input = whole_input
        self.events_topic = events_topic
        self.records = 0
        self.valid = Counter()  # (user id, event id) -> records
        self.bad: Counter = Counter()  # (sha256, length) of the raw bytes -> records
        self.bad_reason: dict[tuple[str, int], str] = {}
        self.tombstones: Counter = Counter()  # (partition, offset) or None -> records with a null value
        self.append_ts: dict[tuple[str, str], int] = {}
        self.decision_count: Counter = Counter()
        self.first_decision: dict[tuple[str, str], dict] = {}
        self.seen_at: dict[tuple[str, str], float] = {}
        self.refused_ids: Counter = Counter()  # duplicate_event_id dead letters, by (user id, event id)
        self.error_ids: Counter = Counter()  # processing_error dead letters for parsed events, likewise
        self.dead_bytes: Counter = Counter()  # (sha256, length) -> dead letters
        self.null_dead: Counter = Counter()  # (partition, offset) or None -> null_value dead letters
        self.dead_reasons: Counter = Counter()
        self.dead_total = 0
        self.truncated = 0
        self.wrong_reason = 0
        self.unreadable_outputs = 0

    def add_event(self, raw: bytes | None, append_ts: int | None = None, partition: int | None = None,
                  offset: int | None = None) -> None:
        self.records += 1
        if raw is None:  # a tombstone: the job dead-letters it as null_value
            self.tombstones[(partition, offset) if offset is not None else None] += 1
            return
        raw = bytes(raw)
        ev = parse_event(raw)
        if isinstance(ev, Event):
            key = (ev.user_id, ev.event_id)
            self.valid[key] += 1
            if append_ts is not None:
                self.append_ts.setdefault(key, append_ts)
        else:
            h = (hashlib.sha256(raw).hexdigest(), len(raw))
            self.bad[h] += 1
            self.bad_reason[h] = ev.reason

    def add_decision(self, value: bytes | None, seen_at: float | None = None) -> None:
        try:
            d = orjson.loads(value)
            key = (d["user_id"], d["event_id"])
            ok = _str(key[0]) and _str(key[1])
        except Exception:
            ok = False
        if not ok:
            self.unreadable_outputs += 1
            return
        self.decision_count[key] += 1
        if key not in self.first_decision:
            self.first_decision[key] = d
            self.seen_at[key] = seen_at if seen_at is not None else time.time()

    def add_dead(self, value: bytes | None) -> None:
        try:
            d = orjson.loads(value)
            reason = d["reason"]
            ok = _str(reason)
        except Exception:
            ok = False
        if not ok:
            self.unreadable_outputs += 1
            return
        self.dead_total += 1
        self.dead_reasons[reason] += 1
        if reason in (CONTROL_REJECTED, INVALID_LABEL):  # from the control or labels topic, not an event
            return
        if reason == NULL_VALUE:
            topic, partition, offset = d.get("topic"), d.get("partition"), d.get("offset")
            if self.events_topic is not None and topic is not None and topic != self.events_topic:
                return  # a tombstone on the labels or control topic
            named = isinstance(partition, int) and isinstance(offset, int)
            self.null_dead[(partition, offset) if named else None] += 1
            return
        if d.get("original_reencoded"):
            try:
                ev = parse_event(base64.b64decode(d["original_b64"], validate=True))
            except Exception:
                ev = None
            if isinstance(ev, Event):
                (self.error_ids if reason == PROCESSING_ERROR else self.refused_ids)[(ev.user_id, ev.event_id)] += 1
            else:
                self.unreadable_outputs += 1
            return
        h = dead_letter_original(d)
        if h is None:
            self.unreadable_outputs += 1
            return
        self.truncated += bool(d.get("original_truncated"))
        self.dead_bytes[h] += 1
        expected = self.bad_reason.get(h)
        if expected is not None and expected != reason and reason != PROCESSING_ERROR:
            self.wrong_reason += 1

    def _tombstones(self) -> tuple[int, int, int]:
        """(missing, duplicates, stray) for the tombstones: matched by partition and offset where both
        sides name them, the rest by count."""
        missing = duplicates = 0
        loose_in, loose_out = self.tombstones.get(None, 0), self.null_dead.get(None, 0)
        stray = 0
        for where, c in self.tombstones.items():
            if where is None:
                continue
            got = self.null_dead.get(where, 0)
            if got == 0:
                loose_in += c
            else:
                missing += max(0, c - got)
                duplicates += max(0, got - c)
        for where, c in self.null_dead.items():
            if where is not None and where not in self.tombstones:
                loose_out += c  # an offset outside what was read, or a dead letter without offsets
        missing += max(0, loose_in - loose_out)
        stray += max(0, loose_out - loose_in)
        return missing, duplicates, stray

    def report(self) -> dict:
        missing = duplicates = unexpected = decided = 0
        for key, k in self.valid.items():
            d, x = self.decision_count.get(key, 0), self.refused_ids.get(key, 0)
            e = self.error_ids.get(key, 0)
            decided += d > 0
            # k records need k outputs; at least one is a decision unless the job reported an error for it
            missing += max(k - d - x - e, 1 if d == 0 and e == 0 else 0)
            duplicates += max(0, d + x + e - k)
        for h, c in self.bad.items():
            got = self.dead_bytes.get(h, 0)
            missing += max(0, c - got)
            duplicates += max(0, got - c)
        t_missing, t_dup, t_stray = self._tombstones()
        missing += t_missing
        duplicates += t_dup
        stray = (sum(c for e, c in self.decision_count.items() if e not in self.valid)
                 + sum(c for e, c in self.refused_ids.items() if e not in self.valid)
                 + sum(c for e, c in self.error_ids.items() if e not in self.valid)
                 + sum(c for r, c in self.dead_bytes.items() if r not in self.bad)
                 + t_stray)
        unexpected = stray if self.whole_input else 0
        kinds = Counter(d.get("decision") for e, d in self.first_decision.items()
                        if e in self.valid and _str(d.get("decision")))
        lat = [d["decided_at"] - self.append_ts[e] for e, d in self.first_decision.items()
               if e in self.append_ts and isinstance(d.get("decided_at"), (int, float))
               and not isinstance(d.get("decided_at"), bool)]
        vis = [self.seen_at[e] * 1000 - self.append_ts[e] for e in self.first_decision if e in self.append_ts]
        return {
            "events": self.records,
            "valid_events": sum(self.valid.values()),
            "distinct_event_ids": len(self.valid),
            "repeated_event_ids": sum(self.valid.values()) - len(self.valid),
            "malformed": sum(self.bad.values()),
            "tombstones": sum(self.tombstones.values()),
            "decided": decided,
            "decisions": {k: kinds.get(k, 0) for k in KINDS},
            "dead_letter": self.dead_total,
            "dead_letter_reasons": dict(sorted(self.dead_reasons.items())),
            "truncated_dead_letters": self.truncated,
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
        audit = Audit(whole_input=from_ms is None and to_ms is None, events_topic=events_topic)
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
                                audit.add_event(m.value, m.timestamp, tp.partition, m.offset)
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
        f"events:        {rep['events']} ({rep['valid_events']} valid records, {rep['distinct_event_ids']} events "
        f"(user, event id), {rep['repeated_event_ids']} repeats, {rep['malformed']} malformed, "
        f"{rep.get('tombstones', 0)} tombstones)",
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
