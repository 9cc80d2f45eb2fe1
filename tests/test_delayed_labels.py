"""Delayed label windows (docs/features.md#delayed-label-windows): label features over the horizon that
ends ``offset`` before the event, against the brute-force oracle, with labels 0-15 days late, out-of-order
events and relabels; the spec switch; retention and bounded state. The JVM parity is in
tests/test_jvm_windows.py."""

from __future__ import annotations

import pickle
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.oracle import label_of
from tests.test_windows import T0, check_labels_against_oracle, run_with_labels
from udfs.events import EVENT_TYPES, PAYMENT_REF_TYPES, Event
from udfs.features import (BASE_FEATURES, DAY, DELAYED_LABEL_FEATURES, FEATURES, FEATURES_WITH_DELAYED, HOUR,
                           Feature, features_for, spec_features, spec_fingerprint)
from udfs.windows import EntityWindows, retention_ms

DELAYED = FEATURES_WITH_DELAYED
DELAYED_ENTITIES = sorted({f.entity for f in DELAYED_LABEL_FEATURES})  # ip, device


def timed(events: list[Event], labels: list[tuple[int, tuple]]) -> list:
    """Events in their (arrival) order with labels ``(arrival_ts, label_record args)`` placed as the replay
    places them (``udfs.replay.FeatureReplay``): before the first event, in order, whose ``ts`` is at or after
    the label's arrival; labels arriving after the last event are dropped."""
    pending = sorted(labels, key=lambda x: x[0])
    out, j = [], 0
    for e in events:
        while j < len(pending) and pending[j][0] <= e.ts:
            out.append(("label", pending[j][1]))
            j += 1
        out.append(e)
    return out


delays = st.one_of(st.integers(0, 15 * DAY), st.sampled_from([0, DAY, 7 * DAY - 1, 7 * DAY, 7 * DAY + 1, 15 * DAY]))
spans = st.sampled_from([3 * DAY, 20 * DAY, 50 * DAY])


@st.composite
def delayed_streams(draw):
    """Up to 50 events on few devices and ips over 3-50 days (so 1-, 7- and 30-day windows 7 days back are
    filled and emptied), in time order with drawn swaps (out of order, some late); labels for drawn events
    arriving 0-15 days after them, some relabelled (fraud then legit, or legit then fraud) later, and a
    few labels at any position of the stream (even before their event arrives)."""
    n = draw(st.integers(1, 50))
    span = draw(spans)
    evs = []
    for i in range(n):
        et = draw(st.sampled_from(EVENT_TYPES))
        card = draw(st.sampled_from([None, "c1"])) if et in PAYMENT_REF_TYPES else None
        evs.append(Event(f"e{i}", et, draw(st.sampled_from(["u0", "u1", "u2"])), draw(st.sampled_from(["d0", "d1"])),
                         draw(st.sampled_from(["ip1", "ip2"])), 1.0, "EUR", T0 + draw(st.integers(0, span)), None,
                         card))
    evs.sort(key=lambda e: e.ts)
    for a, b in draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=n // 2)):
        evs[a], evs[b] = evs[b], evs[a]
    labels = []
    for e in draw(st.lists(st.sampled_from(evs), max_size=20)):
        arrival = e.ts + draw(delays)
        verdict = draw(st.sampled_from(["fraud", "fraud", "legit"]))
        named = draw(st.booleans())
        args = (e.event_id, e.user_id, e.device_id, e.ts, verdict, e.ip if named else None, None)
        labels.append((arrival, args))
        if draw(st.integers(0, 3)) == 0:  # relabelled later
            other = "legit" if verdict == "fraud" else "fraud"
            labels.append((arrival + draw(st.integers(0, 3 * DAY)), args[:4] + (other,) + args[5:]))
    out = timed(evs, labels)
    for e in draw(st.lists(st.sampled_from(evs), max_size=3)):
        out.insert(draw(st.integers(0, len(out))), ("label", (e.event_id, e.user_id, e.device_id, e.ts, "fraud",
                                                             e.ip, None)))
    return out


@pytest.mark.parametrize("entity", DELAYED_ENTITIES)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=delayed_streams(), lateness=st.sampled_from([0, 60_000, 3 * HOUR]))
def test_delayed_label_windows_match_oracle(entity, records, lateness):
    key = EntityWindows(entity).key_field
    n = sum(1 for r in records if type(r) is not tuple and getattr(r, key) is not None)
    assert check_labels_against_oracle(entity, records, lateness, DELAYED) == n


def _long_stream(seed: int, days: int = 60, n: int = 3000) -> tuple[list[Event], list]:
    """``days`` of traffic on 8 devices and 10 ips, a fifth of the events labelled fraud 0-15 days later
    (a tenth of those overturned to legit within two days), slight disorder and some late events."""
    r = random.Random(seed)
    step = days * DAY // n
    evs = []
    for i in range(n):
        ts = T0 + i * step + int(r.gauss(0, 20 * 60_000))
        et = r.choice(EVENT_TYPES)
        card = f"c{r.randrange(20)}" if et in PAYMENT_REF_TYPES else None
        evs.append(Event(f"e{i}", et, f"u{r.randrange(50)}", f"d{r.randrange(8)}", f"ip{r.randrange(10)}",
                         r.randrange(4000) / 4, "EUR", ts, None, card))
    for i in range(0, n, 97):  # a late copy, two hours behind
        evs.insert(i, evs[i]._replace(event_id=f"late{i}", ts=evs[i].ts - 2 * HOUR))
    labels = []
    for e in evs:
        if r.random() < 0.2:
            arr = e.ts + r.randrange(0, 15 * DAY + 1)
            args = (e.event_id, e.user_id, e.device_id, e.ts, "fraud", e.ip, e.payment_ref)
            labels.append((arr, args))
            if r.random() < 0.1:
                labels.append((arr + r.randrange(2 * DAY), args[:4] + ("legit",) + args[5:]))
    return evs, labels


def test_delayed_label_windows_long_random_stream():
    """60 days, labels 0-15 days late: every delayed value equals the oracle's, and the delayed 7-day
    windows see fraud where the same windows ending at the event see far less."""
    evs, labels = _long_stream(5)
    records = timed(evs, labels)
    for entity in DELAYED_ENTITIES:
        key = EntityWindows(entity).key_field
        assert check_labels_against_oracle(entity, records, 60_000, DELAYED) == sum(
            getattr(e, key) is not None for e in evs)
    names = [f.name for f in features_for("device", DELAYED)]
    got = [v for vs in run_with_labels("device", records, 60_000, DELAYED).values() for v, _ in vs]
    col = {n: names.index(n) for n in names}
    nonzero = lambda name: sum(v[col[name]] > 0 for v in got)  # noqa: E731
    assert nonzero("device_fraud_labels_7d_delay7d") > 0.8 * len(got) > 2400
    assert nonzero("device_fraud_share_24h_delay7d") > 0.3 * len(got)
    assert nonzero("device_fraud_labels_7d") < nonzero("device_fraud_labels_7d_delay7d")


def test_delayed_label_windows_by_hand():
    """A device with one event a day; labels arrive exactly 7 days after their event. The 7-day window
    ending at the event never sees them; the 7-day window ending 7 days back does, and its share's base is
    the device's events in that window."""
    from udfs.chain import Chain

    ch = Chain(features=DELAYED)
    names = [f.name for e in ("user", "ip", "device", "payment") for f in features_for(e, DELAYED)]
    ev = [Event(f"e{i}", "payment", f"u{i}", "dev", f"ip{i}", 5.0, "EUR", T0 + i * DAY + HOUR) for i in range(40)]
    fraud = {2, 3, 10}
    labels = [(ev[i].ts + 7 * DAY, (f"e{i}", f"u{i}", "dev", ev[i].ts, "fraud")) for i in sorted(fraud)]
    got = {}
    for r in timed(ev, labels):
        if type(r) is tuple:
            ch.label(label_of(*r[1]))
        else:
            got[r.event_id] = {n: v for n, v in zip(names, ch.process(r)[0]) if n.startswith("device_fraud")}
    assert all(got[f"e{i}"]["device_fraud_labels_7d"] == 0 for i in range(40))  # the motivation
    # day 12 (01:00, bucket 00:00-06:00): the 7-day window 7 days back is the buckets from day -2 06:00 to
    # day 5 06:00: events e0..e5 (e.g. e5 at day 5 01:00), of which e2 and e3 labelled (both arrived by now)
    v = got["e12"]
    assert v["device_fraud_labels_7d_delay7d"] == 2 and v["device_fraud_share_7d_delay7d"] == 2 / 6
    # the 24 hours 7 days back (30-minute buckets): day 4 01:30 to day 5 01:30 holds e5 only, not labelled
    assert v["device_fraud_labels_24h_delay7d"] == 0 and v["device_fraud_share_24h_delay7d"] == 0
    # day 9: its 24 hours 7 days back hold e2, whose label arrives at e9's own time (folded before e9);
    # its 7 days 7 days back (six-hour buckets, day -5 06:00 to day 2 06:00) hold e0, e1, e2
    assert got["e9"]["device_fraud_share_24h_delay7d"] == 1.0
    assert got["e9"]["device_fraud_labels_7d_delay7d"] == 1 and got["e9"]["device_fraud_share_7d_delay7d"] == 1 / 3
    assert got["e8"]["device_fraud_labels_7d_delay7d"] == 0  # e2's label had not arrived
    # day 17: e10's label arrived on day 17 at 01:00, with e17; the 30-day window 7 days back holds e0..e10
    assert got["e17"]["device_fraud_labels_30d_delay7d"] == 3
    assert got["e17"]["device_fraud_share_30d_delay7d"] == 3 / 11
    # day 39: the 30-day window 7 days back (day buckets) is days 3 to 32: e2 left it, e3 and e10 are in
    assert got["e39"]["device_fraud_labels_30d_delay7d"] == 2
    assert got["e39"]["device_fraud_share_30d_delay7d"] == 2 / 30  # e3 .. e32


def test_spec_switch_and_declaration():
    """On (the shipped spec): FEATURES are the base features plus the delayed ones, each after its entity's,
    the shipped models trained on them; off: the base features alone. An offset is data in the spec
    document."""
    import json
    from pathlib import Path

    from udfs.chain import spec_document

    assert FEATURES == DELAYED == spec_features(True) and BASE_FEATURES == spec_features(False)
    for v in ("v1", "v2"):
        model = json.loads((Path(__file__).parent.parent / "models" / f"risk_gbdt_{v}.json").read_text())
        assert model["feature_fingerprint"] == spec_fingerprint(DELAYED) == spec_fingerprint()
    assert spec_fingerprint(DELAYED) != spec_fingerprint(BASE_FEATURES)
    assert [f.entity for f in DELAYED] == [f.entity for f in sorted(
        DELAYED, key=lambda f: ("event", "user", "ip", "device", "payment").index(f.entity))]
    assert set(DELAYED) == set(BASE_FEATURES) | set(DELAYED_LABEL_FEATURES)
    doc = spec_document(60_000, DELAYED)
    offsets = {f["name"]: f.get("offset_ms") for f in doc["features"]}
    assert offsets["device_fraud_share_7d_delay7d"] == 7 * DAY and offsets["device_fraud_share_7d"] is None
    ent = {e["name"]: e for e in doc["entities"]}
    # keys are kept for the longest horizon + offset: 30 + 7 days for devices, 7 + 7 for ips
    assert ent["device"]["retention_ms"] == 37 * DAY + 60_000 == retention_ms("device", 60_000, DELAYED)
    assert ent["ip"]["retention_ms"] == 14 * DAY + 60_000
    assert ent["device"]["label_keep_ms"] == 38 * DAY and ent["user"]["retention_ms"] == 30 * DAY + 60_000
    # ... but they start over after their undelayed horizons, as without the delayed windows
    assert ent["device"]["fresh_ms"] == ent["user"]["fresh_ms"] == ent["user"]["retention_ms"]
    assert ent["ip"]["fresh_ms"] == 7 * DAY + 60_000 < ent["ip"]["retention_ms"]
    with pytest.raises(ValueError, match="only label features"):
        Feature("x", "device", "count", horizon_ms=DAY, offset_ms=DAY)
    with pytest.raises(ValueError, match="multiple of the horizon's bucket"):
        Feature("x", "device", "fraud_labels", horizon_ms=7 * DAY, offset_ms=DAY + HOUR)


def test_a_device_back_after_its_horizons_starts_over_but_its_delayed_counts_live_on():
    """With the delayed windows a device's events 35 days back still count for its 30-day window 7 days back,
    so its delayed counts are kept 37 days; everything else starts over after 30 days (+ lateness) of quiet,
    as without them: age 0, no previous event, empty windows (a returning device is not an old one)."""
    from udfs.chain import Chain

    a = Event("a", "payment", "u1", "dev", "ip1", 5.0, "EUR", T0)
    b = Event("b", "payment", "u2", "dev", "ip2", 5.0, "EUR", T0 + 35 * DAY)
    c = Event("c", "payment", "u3", "dev", "ip3", 5.0, "EUR", T0 + 35 * DAY + HOUR)
    names = [f.name for e in ("user", "ip", "device", "payment") for f in features_for(e, DELAYED)]
    ch = Chain(features=DELAYED)
    ch.process(a)
    ch.label(label_of("a", "u1", "dev", a.ts, "fraud"))
    v = dict(zip(names, ch.process(b)[0]))
    assert v["device_age_ms"] == 0 and v["device_events_30d"] == 1 and v["device_distinct_users_30d"] == 1
    assert v["device_fraud_labels_30d_delay7d"] == 1 and v["device_fraud_share_30d_delay7d"] == 1.0
    w = dict(zip(names, ch.process(c)[0]))
    assert w["device_age_ms"] == HOUR and w["device_events_30d"] == 2
    base_names = [f.name for e in ("user", "ip", "device", "payment") for f in features_for(e)]
    base = Chain()
    base.process(a)
    bv = dict(zip(base_names, base.process(b)[0]))
    assert {n: bv[n] for n in base_names if n.startswith("device_") and "fraud" not in n} == \
        {n: v[n] for n in base_names if n.startswith("device_") and "fraud" not in n}


def test_delayed_counts_are_bounded_per_key():
    """A device with an event every 10 minutes for 50 days holds at most (horizon + offset) / bucket + 1
    delayed counts per width (8 days of 30-minute buckets, 14 days of six-hour buckets, 37 days), whatever
    the rate, and as many after 50 days as after 40."""
    w = EntityWindows("device", 60_000, features_for("device", DELAYED))
    state = None
    sizes = []
    for i in range(50 * 24 * 6):
        ts = T0 + i * 600_000
        state, _, _ = w.update(state, Event(f"e{i}", "login", "u", "dev", "ip", 0.0, "EUR", ts))
        if i % (24 * 6) == 0:
            sizes.append({g: len(c) for g, c in state["d"].items()})
    bound = {30 * 60_000: 8 * 48 + 1, 6 * HOUR: 14 * 4 + 1, DAY: 37 + 1}
    assert all(sizes[-1][g] <= bound[g] for g in bound) and sizes[-1] == sizes[-10]
    assert sum(sizes[-1].values()) >= sum(bound.values()) - 3
    assert len(pickle.dumps(state["d"])) < 6_000


@pytest.mark.parametrize("lateness", [0, 60_000])
def test_a_key_that_starts_over_ages_its_delayed_counts(lateness):
    """Found by hypothesis: a device back exactly its undelayed horizons + lateness later starts over; its
    delayed counts must then be evicted by the new newest event, as on any other event, or a late event
    after it reads a delayed share over events the window no longer holds (0.5 where the oracle says 1)."""
    records = [("label", ("e0", "u0", "d0", T0, "fraud", None, None))]
    records += [Event(f"e{i}", "login", "u0", "d0", "ip1", 0.0, "EUR", T0) for i in range(3)]
    records += [Event("back", "login", "u0", "d0", "ip1", 0.0, "EUR", T0 + 30 * DAY + lateness),
                Event("late", "login", "u0", "d0", "ip1", 0.0, "EUR", T0 + 7 * DAY)]
    assert check_labels_against_oracle("device", records, lateness, DELAYED) == 5
