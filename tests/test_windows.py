"""Pure window logic against the brute-force oracle (no JVM)."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pytest

from tests.oracle import label_of, oracle_features
from udfs.events import EVENT_TYPES, PAYMENT_REF_TYPES, Event
from udfs.features import DAY, ENTITIES, HOUR, MINUTE
from udfs.windows import EntityWindows

ENTITY_NAMES = [e.name for e in ENTITIES]

T0 = 1_767_225_600_000


def run_engine(entity: str, events: list[Event], lateness: int) -> dict[str, list]:
    w = EntityWindows(entity, lateness)
    key = w.key_field
    store: dict[str, dict] = {}
    out: dict[str, list] = {}
    for ev in events:
        k = getattr(ev, key)
        if k is None:  # an optional entity's keyless event touches no state (udfs.chain.EntityStep)
            continue
        st_, vals, late = w.update(store.get(k), ev)
        store[k] = st_
        out.setdefault(k, []).append((vals, late))
    return out


def check_against_oracle(entity: str, events: list[Event], lateness: int) -> int:
    got = run_engine(entity, events, lateness)
    key = EntityWindows(entity, lateness).key_field
    names = [f.name for f in EntityWindows(entity, lateness).features]
    checked = 0
    for k, results in got.items():
        mine = [e for e in events if getattr(e, key) == k]  # never None: run_engine skips those
        want = oracle_features(entity, mine, lateness)
        assert len(want) == len(results)
        for ev, (gv, gl), (wv, wl) in zip(mine, results, want):
            assert gl == wl, (ev, "late flag")
            assert dict(zip(names, gv)) == dict(zip(names, wv)), ev
            checked += 1
    return checked


# amounts are multiples of 1/4: exactly representable, so sums are exact in any order
amounts = st.integers(min_value=0, max_value=40_000).map(lambda c: c / 4)
offsets = st.one_of(
    st.integers(0, 2 * MINUTE),        # bursts inside the 1-minute horizon
    st.integers(0, 2 * HOUR),          # around the 1-hour edge
    st.integers(0, DAY + 2 * HOUR),    # across the 24-hour edge
    st.integers(0, 8 * DAY),           # across the 7-day edge (6-hour buckets)
    st.integers(0, 32 * DAY),          # across the 30-day edge (1-day buckets) and the key's expiry
)


@st.composite
def streams(draw):
    n = draw(st.integers(1, 60))
    users = [f"u{i}" for i in range(draw(st.integers(1, 3)))]
    devices = [f"d{i}" for i in range(draw(st.integers(1, 3)))]
    evs = []
    for i in range(n):
        et = draw(st.sampled_from(EVENT_TYPES))
        card = draw(st.sampled_from([None, "c1", "c2"])) if et in PAYMENT_REF_TYPES else None
        evs.append(Event(f"e{i}", et, draw(st.sampled_from(users)),
                         draw(st.sampled_from(devices)), draw(st.sampled_from(["ip1", "ip2", "ip3"])),
                         draw(amounts), "EUR", T0 + draw(offsets), None, card))
    # arrival order: mostly by time, with a drawn amount of disorder (some events arrive very late)
    evs.sort(key=lambda e: e.ts)
    swaps = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=n))
    for a, b in swaps:
        evs[a], evs[b] = evs[b], evs[a]
    return evs


@pytest.mark.parametrize("entity", ENTITY_NAMES)
@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=streams(), lateness=st.sampled_from([0, 5_000, 60_000, 3 * HOUR]))
def test_entity_windows_match_oracle(entity, events, lateness):
    key = EntityWindows(entity).key_field
    assert check_against_oracle(entity, events, lateness) == sum(getattr(e, key) is not None for e in events)


def test_many_keys_long_random_stream():
    r = random.Random(5)
    evs = []
    for i in range(3000):
        ts = T0 + int(i * 40_000 + r.gauss(0, 20_000))
        et = r.choice(EVENT_TYPES)
        card = f"c{r.randrange(15)}" if et in PAYMENT_REF_TYPES and r.random() < 0.8 else None
        evs.append(Event(f"e{i}", et, f"u{r.randrange(40)}", f"d{r.randrange(25)}",
                         f"ip{r.randrange(10)}", r.randrange(4000) / 4, "EUR", ts, None, card))
    for entity in ENTITY_NAMES:
        key = EntityWindows(entity).key_field
        assert check_against_oracle(entity, evs, 60_000) == sum(getattr(e, key) is not None for e in evs)


def test_window_edge_and_late_policy_by_hand():
    w = EntityWindows("user", allowed_lateness_ms=60_000)
    idx = {n: i for i, n in enumerate(w.names)}

    def ev(i, ts, et="payment", amt=10.0):
        return Event(f"e{i}", et, "u", "d", "ip", amt, "EUR", ts)

    base = T0  # aligned to every bucket width
    s, v, late = w.update(None, ev(1, base))
    assert (v[idx["user_events_1m"]], v[idx["user_since_prev_ms"]], v[idx["user_age_ms"]], late) == (1, -1, 0, False)
    # 1-minute window of an event at base+64s covers buckets [base+5s, base+65s): base itself falls out
    s, v, _ = w.update(s, ev(2, base + 64_000))
    assert v[idx["user_events_1m"]] == 1 and v[idx["user_events_10m"]] == 2
    assert v[idx["user_since_prev_ms"]] == 64_000 and v[idx["user_age_ms"]] == 64_000
    # at base+59.999s the window is [base, base+60s): both
    s, v, _ = w.update(s, ev(3, base + 59_999))
    assert v[idx["user_events_1m"]] == 2  # itself and base; base+64s is in a later bucket
    assert v[idx["user_since_prev_ms"]] == 0  # out of order: newest seen is later
    # more than the lateness behind the newest event: late, scored, not stored
    s, v, late = w.update(s, ev(4, base + 64_000 - 60_001, amt=7.0))
    assert late and v[idx["user_spend_min_10m"]] == 7.0
    s, v, late = w.update(s, ev(5, base + 64_000, amt=8.0))
    assert not late and v[idx["user_spend_min_10m"]] == 8.0 and v[idx["user_events_10m"]] == 4


def test_state_is_bounded_by_horizon_not_rate():
    w = EntityWindows("user", allowed_lateness_ms=60_000)
    s = None
    for i in range(20_000):  # one event per second for 5.5 hours
        s, _, _ = w.update(s, Event(f"e{i}", "login", "u", f"d{i % 7}", "ip", 0.0, "EUR", T0 + i * 1000))
    for g, buckets in s["b"].items():
        assert len(buckets) <= (w.max_horizon[g] + w.lateness) // g + 2, (g, len(buckets))


def test_distinct_switches_to_hll_within_its_error_bound_and_stays_bounded():
    import math
    import pickle

    from udfs import hll
    from udfs.windows import HLL_THRESHOLD

    w = EntityWindows("device", allowed_lateness_ms=60_000)
    i24 = w.names.index("device_distinct_users_24h")
    i1h = w.names.index("device_distinct_users_1h")
    s, seen = None, []
    worst = 0.0
    for i in range(40_000):  # a device shared by thousands of accounts (a botnet / ring)
        ts = T0 + i * 2_000
        user = f"user-{(i * 7919) % 12_000}"
        seen.append((ts, user))
        s, v, _ = w.update(s, Event(f"e{i}", "login", user, "dev", "ip", 0.0, "EUR", ts))
        if i % 997 == 0:
            lo24 = (ts // 1_800_000) * 1_800_000 + 1_800_000 - 86_400_000
            exact = len({u for t, u in seen if t >= lo24})
            est = v[i24]
            if exact <= HLL_THRESHOLD:
                assert est == exact
            else:
                worst = max(worst, abs(est - exact) / exact)
            lo1h = (ts // 120_000) * 120_000 + 120_000 - 3_600_000
            exact1h = len({u for t, u in seen if t >= lo1h})
            assert v[i1h] == exact1h or abs(v[i1h] - exact1h) / exact1h <= 4 * hll.STD_ERROR
    assert 0 < worst <= 4 * hll.STD_ERROR, worst  # 4 standard errors: 9.2 %
    # memory: sketches are 2 KiB per bucket whatever the number of users
    assert len(pickle.dumps(s)) < 50 * (hll.M + 64) + 100_000
    assert not math.isnan(v[i24])


def test_keyless_events_read_empty_windows_and_store_nothing():
    from udfs.chain import Chain
    from udfs.features import MISSING, features_for

    chain = Chain()
    vals, late, _ = chain.process(Event("e1", "login", "u", "d", "ip", 0.0, "EUR", T0))  # no payment_ref
    pay = [f for f in features_for("payment")]
    got = dict(zip([f.name for f in pay], vals[-len(pay):]))
    assert got == {f.name: (MISSING if f.agg in ("mean", "max", "min", "since_prev", "age") else 0.0)
                   for f in pay}
    assert chain.state_keys()["payment"] == 0 and not late


def test_chain_drops_expired_keys_by_the_watermark_rule():
    """Keys go once the watermark (newest time - out-of-orderness - 1) passes their cleanup timer, and a
    returning key reads fresh state whether or not it was dropped yet."""
    from udfs.chain import Chain
    from udfs.windows import retention_ms, timer_for

    chain = Chain(allowed_lateness_ms=60_000, out_of_orderness_ms=5_000)
    chain.process(Event("a1", "login", "old", "d-old", "ip-old", 0.0, "EUR", T0))
    expiry = T0 + retention_ms("user", 60_000)
    # other keys' events move the watermark to one before the timer: "old" is still held
    chain.process(Event("b1", "login", "b", "d-b", "ip-b", 0.0, "EUR", timer_for(expiry) + 5_000))
    chain.process(Event("b2", "login", "b", "d-b", "ip-b", 0.0, "EUR", timer_for(expiry) + 5_001))
    assert chain.stores[0].get("old") is not None and chain.watermark() == timer_for(expiry)
    # the watermark has reached the timer: "old" goes before the next event is processed
    chain.process(Event("b3", "login", "b", "d-b", "ip-b", 0.0, "EUR", timer_for(expiry) + 5_001))
    # the device key goes with it unless delayed label windows keep it longer (its delayed counts only)
    assert "old" not in chain.stores[0]
    assert ("d-old" in chain.stores[2]) == (retention_ms("device", 60_000) > retention_ms("user", 60_000))
    vals, _, _ = chain.process(Event("a2", "login", "old", "d-old", "ip-old", 0.0, "EUR", expiry))
    fresh = Chain().process(Event("a2", "login", "old", "d-old", "ip-old", 0.0, "EUR", expiry))[0]
    assert vals == fresh


# -- label features: labels arriving late, out of order, legit overriding fraud ------------------------
def run_with_labels(entity: str, records: list, lateness: int, features=None) -> dict[str, list]:
    """The chain's entity step over ``records`` (Events, and ``("label", label_record args)`` tuples):
    labels fold into the key's label state and count for every later event of the key. ``features``: the
    spec (default ``udfs.features.FEATURES``)."""
    from udfs.chain import EntityStep, label_record
    from udfs.features import ENTITY_BY_NAME

    step = EntityStep(ENTITY_BY_NAME[entity], lateness, features=features)
    store: dict[str, dict] = {}
    known: dict[str, dict] = {}
    out: dict[str, list] = {}
    for r in records:
        if type(r) is tuple:  # a label (an Event is a named tuple)
            rec = label_record(label_of(*r[1]))
            k = step.label_key(rec)
            if k is not None:
                known[k] = step.fold_label(known.get(k), rec)
            continue
        k = step.key(r)
        if k is None:
            continue
        st_, vals, late, _ = step.step(store.get(k), r, known.get(k))
        store[k] = st_
        out.setdefault(k, []).append((vals, late))
    return out


def check_labels_against_oracle(entity: str, records: list, lateness: int, features=None) -> int:
    from udfs.features import features_for

    w = EntityWindows(entity, lateness, features_for(entity, features))
    names = list(w.names)
    got = run_with_labels(entity, records, lateness, features)
    field = w.key_field
    pos = {"user_id": 1, "device_id": 2, "ip": 5, "payment_ref": 6}[field]  # in label_record's arguments
    checked = labelled = 0
    for k, results in got.items():
        mine = []
        for r in records:
            if type(r) is tuple:
                args = r[1]
                if len(args) > pos and args[pos] == k:
                    mine.append(("label", (args[1], args[0]), args[3], args[4]))  # (user, event id)
            elif getattr(r, field) == k:
                mine.append(r)
        want = oracle_features(entity, mine, lateness, features)
        evs = [e for e in mine if type(e) is not tuple]
        assert len(want) == len(results) == len(evs)
        for ev, (gv, gl), (wv, wl) in zip(evs, results, want):
            assert gl == wl, (ev, "late flag")
            assert dict(zip(names, gv)) == dict(zip(names, wv)), ev
            labelled += any(v > 0 for n, v in zip(names, gv) if "fraud" in n)
            checked += 1
    check_labels_against_oracle.labelled = labelled
    return checked


@st.composite
def labelled_streams(draw):
    """Events over up to 40 days with labels among them: for any event of the stream (seen yet or not), fraud
    or legit, arriving anywhere after or before it, some naming the ip and payment instrument."""
    evs = draw(streams())
    out: list = list(evs)
    for _ in range(draw(st.integers(0, 25))):
        e = draw(st.sampled_from(evs))
        where = draw(st.integers(0, len(out)))
        verdict = draw(st.sampled_from(["fraud", "fraud", "legit"]))
        named = draw(st.booleans())
        out.insert(where, ("label", (e.event_id, e.user_id, e.device_id, e.ts, verdict,
                                     e.ip if named else None, e.payment_ref if named else None)))
    return out


@pytest.mark.parametrize("entity", ENTITY_NAMES)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=labelled_streams(), lateness=st.sampled_from([0, 60_000, 3 * HOUR]))
def test_label_features_match_oracle(entity, records, lateness):
    key = EntityWindows(entity).key_field
    n = sum(1 for r in records if type(r) is not tuple and getattr(r, key) is not None)
    assert check_labels_against_oracle(entity, records, lateness) == n


def test_label_features_by_hand():
    """A label counts from its arrival, by its event's time; legit overrides fraud; the share's base is
    the key's events in the same window."""
    from udfs.chain import Chain

    names = [f for e in ENTITIES for f in EntityWindows(e.name).names]

    def dev(vals):
        return {n: v for n, v in zip(names, vals) if n.startswith("device_fraud") and "_delay" not in n}

    ch = Chain()
    ev = [Event(f"e{i}", "payment", f"u{i}", "dev", "ip", 5.0, "EUR", T0 + i * DAY, None, f"c{i}") for i in range(12)]
    assert dev(ch.process(ev[0])[0]) == {"device_fraud_labels_7d": 0, "device_fraud_labels_30d": 0,
                                         "device_fraud_share_7d": 0, "device_fraud_share_30d": 0}
    ch.process(ev[1])
    ch.label(label_of("e0", "u0", "dev", ev[0].ts, "fraud"))  # arrives on day 1, after e1: e1 did not see it
    v = dev(ch.process(ev[2])[0])  # day 2: 3 events in both windows, one labelled fraud
    assert v == {"device_fraud_labels_7d": 1, "device_fraud_labels_30d": 1,
                 "device_fraud_share_7d": 1 / 3, "device_fraud_share_30d": 1 / 3}
    ch.label(label_of("e0", "u0", "dev", ev[0].ts, "legit"))  # the newest label of the event wins
    assert dev(ch.process(ev[3])[0])["device_fraud_labels_30d"] == 0
    ch.label(label_of("e2", "u2", "dev", ev[2].ts, "fraud"))
    for e in ev[4:10]:
        v = dev(ch.process(e)[0])
    # day 9: the 7-day window (six-hour buckets) starts at day 3 18:00, so e2's label (day 2) left it
    assert v["device_fraud_labels_7d"] == 0 and v["device_fraud_labels_30d"] == 1
    assert v["device_fraud_share_30d"] == 1 / 10
    # a label naming no payment_ref reaches no payment key; the user key reads it
    got = dict(zip(names, ch.process(ev[10])[0]))
    assert got["payment_fraud_labels_30d"] == 0 and got["user_fraud_labels_30d"] == 0
    ch.label(label_of("e10", "u10", "dev", ev[10].ts, "fraud", "ip", "c10"))
    got = dict(zip(names, ch.process(ev[10]._replace(event_id="e10b", ts=ev[10].ts + 1))[0]))
    assert got["payment_fraud_labels_30d"] == 1 and got["user_fraud_labels_30d"] == 1
    assert got["ip_fraud_labels_7d"] == 1


def test_label_features_long_random_stream():
    """40 days of traffic on few devices, labels arriving 1-14 days after their event (some legit after
    fraud, some naming ip and card): every entity's values equal the oracle's, and many are non-zero."""
    r = random.Random(11)
    evs = []
    for i in range(2500):
        ts = T0 + int(i * 1_400_000 + r.gauss(0, 30_000))
        et = r.choice(EVENT_TYPES)
        card = f"c{r.randrange(30)}" if et in PAYMENT_REF_TYPES else None
        evs.append(Event(f"e{i}", et, f"u{r.randrange(60)}", f"d{r.randrange(12)}", f"ip{r.randrange(15)}",
                         r.randrange(4000) / 4, "EUR", ts, None, card))
    pending = []
    for e in evs:
        if r.random() < 0.15:
            arr = e.ts + r.randrange(DAY, 14 * DAY)
            pending.append((arr, ("label", (e.event_id, e.user_id, e.device_id, e.ts, "fraud", e.ip, e.payment_ref))))
            if r.random() < 0.2:
                pending.append((arr + r.randrange(DAY), ("label", (e.event_id, e.user_id, e.device_id, e.ts, "legit"))))
    pending.sort(key=lambda x: x[0])
    records, j = [], 0
    for e in evs:
        while j < len(pending) and pending[j][0] <= e.ts:
            records.append(pending[j][1])
            j += 1
        records.append(e)
    for entity in ENTITY_NAMES:
        key = EntityWindows(entity).key_field
        assert check_labels_against_oracle(entity, records, 60_000) == sum(getattr(e, key) is not None for e in evs)
        assert check_labels_against_oracle.labelled > 200, entity


def test_a_label_names_one_users_event_even_on_a_shared_device():
    """Event ids are per user (docs/contracts.md): user A's e1 and user B's e1 on one device are two
    events. A fraud label for A's e1 and then a legit label for B's e1 leave A's fraud counted (one store
    key per (user, event id); before, the legit label removed it)."""
    from udfs.chain import Chain
    from udfs.features import FEATURE_NAMES
    from udfs.windows import event_values

    t0 = 1_767_225_600_000
    mk = lambda eid, user, ts: Event(eid, "login", user, "d-shared", "1.2.3.4", 0.0, "EUR", ts)  # noqa: E731
    chain = Chain()
    col = FEATURE_NAMES.index("device_fraud_labels_7d") - len(event_values(mk("e0", "u", t0)))
    chain.process(mk("e1", "uA", t0))
    chain.process(mk("e1", "uB", t0 + 1000))
    chain.label(label_of("e1", "uA", "d-shared", t0, "fraud"))
    assert chain.process(mk("e2", "uA", t0 + 2000))[0][col] == 1.0
    chain.label(label_of("e1", "uB", "d-shared", t0 + 1000, "legit"))  # B's e1 is legit: A's e1 stays fraud
    assert chain.process(mk("e3", "uB", t0 + 3000))[0][col] == 1.0
    chain.label(label_of("e1", "uB", "d-shared", t0 + 1000, "fraud"))
    assert chain.process(mk("e4", "uB", t0 + 4000))[0][col] == 2.0
    chain.label(label_of("e1", "uA", "d-shared", t0, "legit"))  # the newest label of A's e1 wins
    assert chain.process(mk("e5", "uB", t0 + 5000))[0][col] == 1.0
