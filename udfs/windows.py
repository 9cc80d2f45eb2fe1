"""Sliding-window features per entity key: pure Python, explicit timestamps, one dict per key.

Semantics (also in the README). Event time is sliced into buckets whose width depends on the horizon
(``features.BUCKET_MS``). An event at time ``t`` is scored on arrival with, for a horizon ``H`` of
bucket width ``g``, every event of the key that has *arrived so far* (itself included) whose time falls
in the ``H / g`` buckets ending with ``t``'s bucket, i.e. in ``[floor(t/g)*g + g - H, floor(t/g)*g + g)``.
Out-of-order events land in their own bucket and count for every later-arriving event whose window covers
it. An event more than ``allowed_lateness_ms`` older than the newest event of its key is *late*: it is
scored (over the buckets still held, plus itself) but not stored, and reported as late.

State per key is bounded by horizons and bucket widths, not by event rate: a bucket is dropped as soon as
no on-time event can reach it (when the key's newest time is ``last``, the oldest on-time event is at
``last - lateness`` and reads back to ``floor((last - lateness)/g)*g + g - H``; older buckets go). A late
event therefore reads only the buckets an on-time event could still read, plus itself.

A key *expires* at ``last + longest horizon + lateness`` (:meth:`EntityWindows.expires_at`): an event at or
after that time finds the key fresh (no age, no previous event, empty windows, no remembered ids), the
same whether or not the runner has dropped the state yet. Runners drop it when their watermark passes the
expiry (:func:`cleanup`), which only frees memory. Distinct counts keep an
exact set per bucket up to ``HLL_THRESHOLD`` values, then a HyperLogLog sketch (``udfs.hll``): a window's
distinct count is exact while all its buckets are exact, else an estimate with ~2.3 % standard error.
"""

from __future__ import annotations

from .aggregates import AGGREGATES, Count, Distinct, Reader, write_varint
from .events import EVENT_TYPE_INDEX, EVENT_TYPES, Event
from .features import ENTITY_BY_NAME, LABEL_AGGS, MISSING, Feature, features_for, max_horizon_ms

DEFAULT_LATENESS_MS = 60_000
# a bucket's distinct set turns into a HyperLogLog sketch (2 KiB, ~2.3 % standard error) past this size
HLL_THRESHOLD = Distinct.EXACT_UP_TO
# the label stores' processing-time cleanup timers are rounded up to this grid, so the timers a key's labels
# register collapse into one (Flink keeps one timer per key and timestamp)
TIMER_GRID_MS = 60_000


def retention_ms(entity: str, allowed_lateness_ms: int, features: tuple[Feature, ...] | None = None) -> int:
    """How long after a key's newest event its state can still be read: the longest reach (horizon plus
    offset, ``Feature.reach_ms``) + lateness. ``features``: the spec (default ``features.FEATURES``)."""
    return max_horizon_ms(entity, features) + int(allowed_lateness_ms)


def fresh_ms(entity: str, allowed_lateness_ms: int, features: tuple[Feature, ...] | None = None) -> int:
    """How long after a key's newest event it starts over as a new key (age, since-previous and windows
    reset): the longest horizon without offsets + lateness. Equal to :func:`retention_ms` unless the entity
    has delayed label windows, whose counts alone are kept longer (docs/features.md#delayed-label-windows)."""
    return max((f.horizon_ms or 0 for f in features_for(entity, features)), default=0) + int(allowed_lateness_ms)


def timer_for(expiry: int) -> int:
    """The cleanup timer for a key expiring at ``expiry`` (event time): the expiry itself, so a key is
    dropped when the watermark reaches its expiry, whatever its history (no grid to round to)."""
    return int(expiry)


def grid_timer(due: int) -> int:
    """A processing-time cleanup timer at the first grid point at or after ``due``."""
    return -(-int(due) // TIMER_GRID_MS) * TIMER_GRID_MS


class EntityWindows:
    """Window logic for one entity of the spec; the caller owns and stores the state dict.

    State layout (picklable, small): ``{"first": ts, "last": ts, "b": {width: {bucket_start: [acc, ...]}}}``
    where each acc is an accumulator of ``udfs.aggregates`` (a count, a ``[count, sum, max, min]`` list, a
    set or a sketch), one per distinct (accumulator family, field, event-type filter) slot of that bucket
    width. A feature's value is its aggregate's ``result`` of the ``merge`` of its window's buckets. An
    entity with delayed fraud shares (``Feature.offset_ms``) also keeps ``"d": {width: {bucket_start: events}}``: the key's stored events per
    bucket, for as far back as its longest delayed share reaches, apart from the other slots so that they
    are not kept longer.
    """

    def __init__(self, entity: str, allowed_lateness_ms: int = DEFAULT_LATENESS_MS,
                 features: tuple[Feature, ...] | None = None):
        if entity not in ENTITY_BY_NAME:
            raise ValueError(f"windowed entity must be one of {sorted(ENTITY_BY_NAME)}, not {entity!r}")
        self.entity = entity
        self.key_field = ENTITY_BY_NAME[entity].key_field
        self.features = features if features is not None else features_for(entity)
        self.names = tuple(f.name for f in self.features)
        self.lateness = int(allowed_lateness_ms)
        # slots per bucket width: (aggregate class, input field or None, event-type filter or None); one per
        # accumulator family, field and filter, in order of first use (the JVM stage's state layout)
        self.slots: dict[int, list[tuple[type, str | None, frozenset | None]]] = {}
        self._plan: list[tuple] = []  # per feature: how to read its value
        # width -> the longest horizon + offset of a delayed fraud share: how far back "d" keeps its counts
        self.delayed_reach: dict[int, int] = {}
        horizons: dict[int, int] = {}
        reads: dict[tuple[int, int], list[int]] = {}  # (width, horizon) -> the slots read over that window
        for f in self.features:
            if f.agg in ("since_prev", "age"):
                self._plan.append((f.agg,))
                continue
            g, h = f.bucket_ms, f.horizon_ms
            if f.agg == "fraud_labels":  # read from the label store only: no bucket slot
                self._plan.append((f.agg, g, h, f.offset_ms))
                continue
            if f.agg == "fraud_share" and f.offset_ms:  # its denominator from the delayed event counts
                self.delayed_reach[g] = max(self.delayed_reach.get(g, 0), h + f.offset_ms)
                self._plan.append(("fraud_share_delayed", g, h, f.offset_ms))
                continue
            # fraud_share's denominator: the key's events (every type) in the same window
            agg = Count if f.agg == "fraud_share" else AGGREGATES[f.agg]
            fld = f.field if agg.takes_field else None
            types = frozenset(f.event_types) if f.event_types and f.agg != "fraud_share" else None
            slots = self.slots.setdefault(g, [])
            slot_key = (agg.accumulator, fld, types)
            i = next((j for j, (a, fl, ty) in enumerate(slots) if (a.accumulator, fl, ty) == slot_key), None)
            if i is None:
                i = len(slots)
                slots.append((agg, fld, types))
            horizons[g] = max(horizons.get(g, 0), h)
            read = reads.setdefault((g, h), [])
            if i not in read:
                read.append(i)
            # (kind, ..., then the read slot as (width, horizon, slot): replaced by its window's position below)
            self._plan.append(("fraud_share", g, h, 0, g, h, i) if f.agg == "fraud_share"
                              else ("window", agg.result, g, h, i))
        self.max_horizon = dict(horizons)  # width -> longest horizon using it
        self.retention_ms = max((f.reach_ms for f in self.features), default=0) + self.lateness
        # after this long without an event the key starts over (first seen, previous event, windows), as
        # when it expired; only the delayed label windows' counts, which look further back, live on until
        # retention_ms (fresh_ms == retention_ms for an entity without them)
        self.fresh_ms = max((f.horizon_ms or 0 for f in self.features), default=0) + self.lateness
        self.reads_labels = any(f.agg in LABEL_AGGS for f in self.features)
        self.label_keep_ms = max((f.reach_ms + f.bucket_ms for f in self.features if f.agg in LABEL_AGGS),
                                 default=0)
        # per width and event type: the slots that event type feeds, as (slot, add, input field)
        self._feeds: dict[int, dict[str, list[tuple[int, object, str | None]]]] = {
            g: {t: [(i, a.add, fld) for i, (a, fld, types) in enumerate(sl) if types is None or t in types]
                for t in EVENT_TYPES}
            for g, sl in self.slots.items()
        }
        self._inits = {g: [a.initialize for a, _, _ in sl] for g, sl in self.slots.items()}
        # the windows read from buckets: (width, horizon, [(slot, aggregate, field, filter)]); each slot's
        # window accumulator goes to a flat list, and a feature's plan entry ends with its position there
        self._reads = [(g, h, [(i, *self.slots[g][i]) for i in sl]) for (g, h), sl in reads.items()]
        pos = {(g, h, i): n for n, (g, h, i) in enumerate((g, h, i) for g, h, sl in self._reads for i, *_ in sl)}
        self._plan = [p[:-3] + (pos[p[-3:]],) if p[0] in ("window", "fraud_share") else p for p in self._plan]
        self._empty = self._values({"first": None, "last": None, "b": {}}, None, None, fold_self=False)

    # -- state -------------------------------------------------------------------------------------
    def _add(self, state: dict, ev: Event) -> None:
        ts = ev.ts
        for g, byt in self._feeds.items():
            feeds = byt[ev.event_type]
            if not feeds:
                continue
            buckets = state["b"].setdefault(g, {})
            start = ts - ts % g
            accs = buckets.get(start)
            if accs is None:
                accs = buckets[start] = [init() for init in self._inits[g]]
            for i, add, fld in feeds:
                if fld is None:
                    accs[i] = add(accs[i], None)
                else:
                    v = getattr(ev, fld)
                    if v is not None:  # an optional field the event lacks is no value
                        accs[i] = add(accs[i], v)
        if self.delayed_reach:  # every stored event, for the delayed shares' denominators
            delayed = state.setdefault("d", {})
            for g in self.delayed_reach:
                counts = delayed.setdefault(g, {})
                start = ts - ts % g
                counts[start] = counts.get(start, 0) + 1

    def _evict(self, state: dict) -> None:
        oldest_on_time = state["last"] - self.lateness
        for g, buckets in state["b"].items():
            # the oldest on-time event reads buckets from floor(t/g)*g + g - H on
            keep_from = oldest_on_time - oldest_on_time % g + g - self.max_horizon[g]
            stale = [s for s in buckets if s < keep_from]
            for s in stale:
                del buckets[s]
        for g, counts in state.get("d", {}).items():
            # ... and a delayed window from floor(t/g)*g + g - offset - H on
            keep_from = oldest_on_time - oldest_on_time % g + g - self.delayed_reach[g]
            for s in [s for s in counts if s < keep_from]:
                del counts[s]

    def empty_values(self) -> list[float]:
        """The values for an event without a key (an optional entity): empty windows, no history."""
        return list(self._empty)

    def update(self, state: dict | None, ev: Event, labels: dict | None = None) -> tuple[dict, list[float], bool]:
        """Fold ``ev`` into ``state`` (a new dict if None, or if the key expired before ``ev.ts``) and
        return (state, feature values, late). ``labels``: the key's labelled-fraud events as known now
        (``udfs.labels.apply_fraud_label``), for the label features."""
        restarted = False
        if state is None or ev.ts >= self.expires_at(state):
            state = {"first": ev.ts, "last": None, "b": {}}
        elif ev.ts >= state["last"] + self.fresh_ms:  # quiet for longer than the undelayed features reach
            state, restarted = {**state, "first": ev.ts, "last": None, "b": {}}, True
        prev_last = state["last"]
        late = prev_last is not None and ev.ts < prev_last - self.lateness
        if not late:
            self._add(state, ev)
            state["last"] = ev.ts if prev_last is None else max(prev_last, ev.ts)
            if ev.ts < state["first"]:
                state["first"] = ev.ts
            if (prev_last is not None and ev.ts > prev_last) or restarted:  # the delayed counts age too
                self._evict(state)
        return state, self._values(state, ev, prev_last, fold_self=late, labels=labels), late

    def _values(self, state: dict, ev: Event | None, prev_last: int | None, fold_self: bool,
                labels: dict | None = None) -> list[float]:
        """Feature values for ``ev``; ``ev`` None gives the values of no event over empty state."""
        ts = ev.ts if ev is not None else 0
        wins: list = []  # each read slot's window accumulator, in self._reads order
        for g, h, slots in self._reads:
            hi = ts - ts % g
            lo = hi + g - h
            in_range = [b for start, b in state["b"].get(g, {}).items() if lo <= start <= hi]
            for i, agg, fld, types in slots:
                accs = [b[i] for b in in_range]
                if fold_self and (types is None or ev.event_type in types):  # a late event counts, unstored
                    v = None if fld is None else getattr(ev, fld)
                    if fld is None or v is not None:
                        accs.append(agg.add(agg.initialize(), v))
                wins.append(agg.merge(accs))
        out: list[float] = []
        for p in self._plan:
            kind = p[0]
            if kind == "window":
                out.append(p[1](wins[p[2]]))
                continue
            if kind == "since_prev":
                out.append(float(max(ts - prev_last, 0)) if prev_last is not None else MISSING)
                continue
            if kind == "age":
                out.append(float(ts - min(state["first"], ts)) if ev is not None else MISSING)
                continue
            if kind in LABEL_AGGS or kind == "fraud_share_delayed":
                g, h, offset = p[1], p[2], p[3]
                hi = ts - ts % g - offset  # the window's last bucket: offset before the event's own
                lo = hi + g - h
                n = 0
                if ev is not None and labels:
                    for t in labels.values():
                        if lo <= t - t % g <= hi:
                            n += 1
                if kind == "fraud_labels":
                    out.append(float(n))
                    continue
                # share of the window's events; a label of an event not counted here widens the base
                if kind == "fraud_share":
                    events = wins[p[4]]
                else:  # the stored events in the delayed window (never the event itself: its bucket is later)
                    counts = state.get("d", {}).get(g, {})
                    events = sum(c for s, c in counts.items() if lo <= s <= hi)
                base = max(events, n)
                out.append(n / base if base else 0.0)
                continue
        return out

    def expires_at(self, state: dict) -> int:
        """Event time from which the key is fresh again: no event at or after it can read this state."""
        return int(state["last"]) + self.retention_ms


def _zz(v: int) -> int:
    return (v << 1) ^ (v >> 63)


def _unzz(v: int) -> int:
    return (v >> 1) ^ -(v & 1)


def encode_state(windows: EntityWindows, state: dict, labels: bool = True) -> bytes:
    """A key's state dict in the JVM stage's state bytes (``KeyState.java``, version 2, or 3 with delayed
    fraud shares): what a JVM stage of the same spec reads as the same state. ``labels``: the key may have
    label state (the JVM's flag; the Python stage has none). Pitfall: a set's values are written in the
    set's order, so the bytes of a state with sets differ from the JVM's own for the same state (the
    decoded states are equal)."""
    last = int(state["last"])
    table: dict[str, int] = {}  # the key's strings, in the order the buckets' aggregates write them
    out = bytearray()
    for g, slots in windows.slots.items():
        buckets = state["b"].get(g, {})
        base = last - last % g
        write_varint(out, len(buckets))
        for start, accs in buckets.items():
            write_varint(out, _zz((start - base) // g))
            for (agg, _, _), acc in zip(slots, accs):
                agg.encode(acc, out, table)
    ids = state.get("ids") or {}
    write_varint(out, len(ids))
    for i, t in ids.items():
        u = i.encode("utf-8", "surrogatepass")
        write_varint(out, len(u))
        out += u
        write_varint(out, _zz(t - last))
    for g in windows.delayed_reach:
        counts = sorted(state.get("d", {}).get(g, {}).items())
        prev = last - last % g
        write_varint(out, len(counts))
        for k, (start, c) in enumerate(counts):
            rel = (start - prev) // g
            write_varint(out, _zz(rel) if k == 0 else rel)
            write_varint(out, c)
            prev = start
    head = bytearray((3 if windows.delayed_reach else 2, 1 if labels else 0))
    _write_long(head, last)
    _write_long(head, last - int(state["first"]))
    timer = state.get("timer")
    write_varint(head, 0 if timer is None else _zz(int(timer) - last) + 1)
    write_varint(head, len(table))
    for v in table:
        u = v.encode("utf-8", "surrogatepass")
        write_varint(head, len(u))
        head += u
    return bytes(head + out)


def _write_long(out: bytearray, x: int) -> None:
    """A Java long as the JVM writes it: its 64-bit two's complement as an unsigned varint."""
    write_varint(out, x & 0xFFFF_FFFF_FFFF_FFFF)


def _read_long(inp: Reader) -> int:
    x = inp.varint()
    return x - (1 << 64) if x >= 1 << 63 else x


def decode_state(windows: EntityWindows, data: bytes) -> tuple[dict, bool]:
    """The JVM stage's state bytes of a key (versions 1 to 3) as the Python stage's state dict, and the JVM's
    "may have label state" flag. Widths and delayed counts without buckets are left out of the dict."""
    inp = Reader(data)
    version = inp.byte()
    if version not in (1, 2, 3):
        raise ValueError(f"unknown state version {version}")
    labels = version == 1 or bool(inp.byte() & 1)
    last = _read_long(inp)
    state: dict = {"first": last - _read_long(inp), "last": last, "b": {}}
    t = inp.varint()
    if t:
        state["timer"] = last + _unzz(t - 1)
    strings = []
    for _ in range(inp.varint()):
        strings.append(inp.take(inp.varint()).decode("utf-8", "surrogatepass"))
    for g, slots in windows.slots.items():
        base = last - last % g
        buckets = {}
        for _ in range(inp.varint()):
            start = base + _unzz(inp.varint()) * g
            buckets[start] = [agg.decode(inp, strings) for agg, _, _ in slots]
        if buckets:
            state["b"][g] = buckets
    ids = {}
    for _ in range(inp.varint()):
        i = inp.take(inp.varint()).decode("utf-8", "surrogatepass")
        ids[i] = last + _unzz(inp.varint())
    if ids:
        state["ids"] = ids
    if version == 3 and windows.delayed_reach:
        for g in windows.delayed_reach:
            start = last - last % g
            counts = {}
            for k in range(inp.varint()):
                start += (_unzz(inp.varint()) if k == 0 else inp.varint()) * g
                counts[start] = inp.varint()
            if counts:
                state.setdefault("d", {})[g] = counts
    return state, labels


def cleanup(windows: EntityWindows, state: dict | None, timestamp: int) -> tuple[str, int | None]:
    """What a runner does when its watermark reaches the cleanup timer at ``timestamp`` for a key with
    ``state``: ``("clear", None)`` drop the key, ``("rearm", t)`` register timer ``t`` and store it in
    ``state["timer"]`` (the key's expiry moved on), or ``("keep", None)`` (a stale timer; nothing to do).
    The Flink stage and the replay both call this, so they drop keys by the same rule."""
    if state is None:
        return "keep", None
    expiry = windows.expires_at(state)
    if expiry <= timestamp:
        return "clear", None
    if state.get("timer") == timestamp:
        return "rearm", timer_for(expiry)
    return "keep", None


def arm(windows: EntityWindows, state: dict) -> int | None:
    """After an update: the cleanup timer to register for the key (also stored in ``state["timer"]``), or
    None when the key already has one. One pending timer per key, however busy: the timer stays where it
    was armed (the key's first expiry) and, when it fires early because the key was active since,
    :func:`cleanup` re-arms it at the key's current expiry. A busy key thus costs one timer registration
    per retention period, not one per event or per minute, and never holds superseded timers."""
    if state.get("timer") is None:
        timer = state["timer"] = timer_for(windows.expires_at(state))
        return timer
    return None


_EVENT_FEATURES = features_for("event")


def event_values(ev: Event) -> list[float]:
    """Values of the 'event' entity features (the event's own fields), in spec order."""
    return [float(EVENT_TYPE_INDEX[ev.event_type]) if f.agg == "type_index" else float(getattr(ev, f.field))
            for f in _EVENT_FEATURES]

