"""The graph features (docs/features.md#graph-features) in the job's stages, against the replay.

- The Python Flink stage (``udfs.flink.EntityStage``) driven in this process by a small stand-in for
  Flink's keyed runtime (keyed ValueStates pickled as the backend does, event-time timers fired by the
  watermark rule of ``udfs.chain.Chain``): every event's values and every stage's count of keys holding
  graph state equal the Chain's, and a key idle past its expiry loses its graph state (no MiniCluster: fast).
- The job itself (``build_core`` on a MiniCluster, labels on the labels input, parallelism 1 and 2) against
  ``udfs.replay.replay_file`` on the same events and labels: every graph feature of every event equal. It runs
  in a subprocess with ``RISKSTREAM_GRAPH_FEATURES=1`` (the spec is fixed at import; this process has the
  switch off) that writes the decisions to a file.
"""

from __future__ import annotations

import heapq
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from udfs.events import Event
from udfs.features import FEATURES_WITH_GRAPH, GRAPH_AGGS, spec_entities

ROOT = Path(__file__).resolve().parent.parent
DAY = 24 * 3600 * 1000
GRAPH_NAMES = [f.name for f in FEATURES_WITH_GRAPH if f.agg in GRAPH_AGGS]
NAMES = [f.name for f in FEATURES_WITH_GRAPH]


def ring_traffic(n: int, seed: int = 11, days: float = 14) -> tuple[list[dict], list[tuple[int, dict]]]:
    """Generator ring traffic (valid events only) and its fraud labels as on the labels topic, each arriving
    with the next daily batch after its generator arrival time (chargeback files come daily: few batches, so
    the job test's pacer waits little); some normal events labelled fraud by mistake and corrected by a legit
    label a day later; most labels name the event's ip and payment instrument."""
    import random

    from riskstream.generator import TrafficGenerator

    recs = [r for r in TrafficGenerator(seed=seed, days=days, rings=True).generate(n) if r.event is not None]
    rnd = random.Random(3)
    labels = []
    for r in recs:
        e, lab = r.event, r.label
        wrong = not lab["fraud"] and rnd.random() < 0.03
        if not (lab["fraud"] or wrong):
            continue
        body = {"event_id": e["event_id"], "user_id": e["user_id"], "device_id": e["device_id"], "event_ts": e["ts"],
                "label": "fraud"}
        if rnd.random() < 0.8:
            body["ip"] = e["ip"]
            if e.get("payment_ref"):
                body["payment_ref"] = e["payment_ref"]
        arrival = lab["arrival_ts"] - lab["arrival_ts"] % DAY + DAY
        labels.append((arrival, body))
        if wrong:
            labels.append((arrival + DAY, {**body, "label": "legit"}))
    labels.sort(key=lambda x: x[0])
    return [r.event for r in recs], labels


def interleave(events: list[dict], labels: list[tuple[int, dict]]) -> list[tuple[str, dict]]:
    """("L", label) / ("E", event) in the order the replay folds them: each label before the first event at
    or after its arrival time (``udfs.replay.FeatureReplay``)."""
    seq, j = [], 0
    for e in events:
        while j < len(labels) and labels[j][0] <= e["ts"]:
            seq.append(("L", labels[j][1]))
            j += 1
        seq.append(("E", e))
    return seq


# -- the Python stage in this process, against Chain ----------------------------------------------------
class _Keyed:
    """A stand-in for one keyed operator's runtime: ValueStates per (name, current key), stored pickled (a
    stage must store what it changed: a read returns a fresh copy, as from the state backend), event-time
    timers per (timestamp, key) (Flink keeps one per pair), processing-time timers only recorded."""

    def __init__(self):
        self.key = None
        self.data: dict[tuple[str, str], bytes] = {}
        self.timers: set[tuple[int, str]] = set()
        self.ptimers: set[tuple[int, str]] = set()
        self.domain = None

    # RuntimeContext
    def get_state(self, desc):
        return _Value(self, desc.name)

    def get_metrics_group(self):
        return self

    def counter(self, name):
        return self

    def inc(self, n: int = 1):
        pass

    # the context of process_element / on_timer
    def timer_service(self):
        return self

    def register_event_time_timer(self, t: int):
        self.timers.add((int(t), self.key))

    def register_processing_time_timer(self, t: int):
        self.ptimers.add((int(t), self.key))

    def time_domain(self):
        return self.domain

    def keys_of(self, name: str) -> set:
        return {k for (n, k) in self.data if n == name}


class _Value:
    def __init__(self, rt: _Keyed, name: str):
        self.rt, self.name = rt, name

    def value(self):
        raw = self.rt.data.get((self.name, self.rt.key))
        return None if raw is None else pickle.loads(raw)

    def update(self, v):
        self.rt.data[(self.name, self.rt.key)] = pickle.dumps(v)

    def clear(self):
        self.rt.data.pop((self.name, self.rt.key), None)


class StageRunner:
    """The job's Python entity stages (``udfs.flink.EntityStage``) chained in this process, each on its own
    keyed runtime, with the watermark of ``udfs.chain.Chain`` (newest event time so far minus the
    out-of-orderness bound minus 1 ms, as it stood before the event) firing each stage's due timers."""

    def __init__(self, features=FEATURES_WITH_GRAPH, lateness_ms: int = 60_000, out_of_orderness_ms: int = 5_000):
        from pyflink.datastream.time_domain import TimeDomain

        from udfs.flink import EntityKey, EntityStage

        self.event_time = TimeDomain.EVENT_TIME
        self.entities = spec_entities(features)
        self.stages, self.rts, self.keys = [], [], []
        for e in self.entities:
            st = EntityStage(e.name, lateness_ms, labels=True, features=features)
            rt = _Keyed()
            st.open(rt)
            self.stages.append(st)
            self.rts.append(rt)
            self.keys.append(EntityKey(e))
        self.ooo = out_of_orderness_ms
        self.max_ts = None

    def _fire(self) -> None:
        if self.max_ts is None:
            return
        wm = self.max_ts - self.ooo - 1
        for st, rt in zip(self.stages, self.rts):
            while True:
                due = sorted(t for t in rt.timers if t[0] <= wm)
                if not due:
                    break
                for t in due:
                    rt.timers.discard(t)
                    rt.key, rt.domain = t[1], self.event_time
                    list(st.on_timer(t[0], rt))

    def label(self, label) -> None:
        from udfs.chain import label_record

        rec = label_record(label)
        for st, rt, key in zip(self.stages, self.rts, self.keys):
            if st.labels:
                rt.key = key.get_key(rec)
                assert list(st.process_element(rec, rt)) == []

    def event(self, ev: Event):
        """The record the last stage emits for ``ev``, or None (dead-lettered: a duplicate)."""
        from udfs.chain import pack
        from udfs.flink import DEAD_LETTER_TAG

        self._fire()
        rec = pack(ev)
        try:
            for st, rt, key in zip(self.stages, self.rts, self.keys):
                rt.key = key.get_key(rec)
                out = list(st.process_element(rec, rt))
                assert len(out) == 1, out
                if out[0][0] is DEAD_LETTER_TAG:
                    return None
                rec = out[0]
            return rec
        finally:
            self.max_ts = ev.ts if self.max_ts is None else max(self.max_ts, ev.ts)

    def graph_keys(self) -> dict[str, int]:
        return {e.name: len(rt.keys_of(f"{e.name}_graph")) for e, st, rt in zip(self.entities, self.stages, self.rts)
                if st.gstate is not None}


def _label(body: dict):
    from udfs.labels import parse_label

    return parse_label(orjson.dumps(body))


def test_python_stages_equal_the_chain_and_drop_idle_graph_state():
    """Every event's values (window and graph) and late flag from the Flink stages equal Chain's, with
    labels in between; after each event the keys holding graph state per stage equal Chain's (a members
    key's graph state goes with its windows, a link key on its own timer, when Chain drops them). Then part
    of the traffic comes back 60 days later, past every key's expiry (it spans 14 days; the longest
    retention, the device's, is 37): only the returning keys hold graph state, in both."""
    from udfs.chain import Chain, unpack

    events, labels = ring_traffic(2000)
    again = [{**e, "event_id": "again-" + e["event_id"], "ts": e["ts"] + 60 * DAY} for e in events[:300]]
    seq = interleave(events + again, labels)
    chain = Chain(60_000, features=FEATURES_WITH_GRAPH)
    run = StageRunner()
    n = fraud_seen = 0
    share = NAMES.index("graph_group_fraud_share_7d")
    for kind, item in seq:
        if kind == "L":
            chain.label(_label(item))
            run.label(_label(item))
            continue
        ev = Event(**item)
        want = chain.process(ev)
        got = run.event(ev)
        assert (got is None) == (want is None), ev
        if got is None:
            continue
        _, vals, late, _ = unpack(got)
        names = NAMES[len(NAMES) - len(vals):]  # the stages' values follow the event's own features
        assert (vals, late) == (want[0], want[1]), (ev.event_id, [(nm, g, w) for nm, g, w in zip(names, vals, want[0])
                                                                  if g != w])
        assert run.graph_keys() == chain.graph_keys(), ev
        fraud_seen += vals[share - (len(NAMES) - len(vals))] > 0
        n += 1
        if not ev.event_id.startswith("again-"):
            before = dict(run.graph_keys())
    assert n == len(events) + len(again) and fraud_seen > 20, (n, fraud_seen)
    fields = {"ip": "ip", "device": "device_id", "payment": "payment_ref", "link": "user_id"}
    returning = {name: len({e[f] for e in again if e.get(f)}) for name, f in fields.items()}
    assert all(before[name] > 2 * returning[name] for name in fields), (before, returning)
    assert run.graph_keys() == chain.graph_keys() == returning, (run.graph_keys(), returning)
