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

from typing import Any

from . import hll
from .events import EVENT_TYPE_INDEX, EVENT_TYPES, Event
from .features import ENTITY_BY_NAME, LABEL_AGGS, MISSING, Feature, features_for, max_horizon_ms

CNT, NUM, SET = 0, 1, 2
DEFAULT_LATENESS_MS = 60_000
# a bucket's distinct set turns into a HyperLogLog sketch (2 KiB, ~2.3 % standard error) past this size
HLL_THRESHOLD = 256
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


def _new_acc(kind: int) -> Any:
    if kind == CNT:
        return 0
    if kind == NUM:
        return [0, 0.0, float("-inf"), float("inf")]
    return set()


def _fold(accs: list, feeds: list, ev: Event, sketch_past_threshold: bool) -> None:
    """Add one event to the accumulators its type feeds (a bucket's, or a window's while scoring).
    A bucket's set becomes a sketch past HLL_THRESHOLD; a window accumulator stays exact."""
    for i, kind, fld in feeds:
        if kind == CNT:
            accs[i] += 1
        elif kind == NUM:
            v = getattr(ev, fld)
            if v is None:  # an optional field the event lacks is no value
                continue
            a = accs[i]
            a[0] += 1
            a[1] += v
            if v > a[2]:
                a[2] = v
            if v < a[3]:
                a[3] = v
        else:
            acc = accs[i]
            v = getattr(ev, fld)
            if v is None:  # an optional field the event lacks is no value
                continue
            if type(acc) is set:
                acc.add(v)
                if sketch_past_threshold and len(acc) > HLL_THRESHOLD:
                    accs[i] = hll.from_values(acc)
            else:
                hll.add(acc, v)


def _union(acc, v):
    """Union of a window accumulator (exact set or sketch) with a bucket's set or sketch; never mutates v.
    The result stays exact while every bucket is exact."""
    if type(acc) is set and type(v) is set:
        acc |= v
        return acc
    if type(acc) is set:
        acc = hll.from_values(acc)
    if type(v) is set:
        for x in v:
            hll.add(acc, x)
    else:
        hll.merge_into(acc, v)
    return acc


class EntityWindows:
    """Window logic for one entity of the spec; the caller owns and stores the state dict.

    State layout (picklable, small): ``{"first": ts, "last": ts, "b": {width: {bucket_start: [acc, ...]}}}``
    where each acc is a count, a ``[count, sum, max, min]`` list or a set, one per distinct
    (kind, field, event-type filter) slot of that bucket width. An entity with delayed fraud shares
    (``Feature.offset_ms``) also keeps ``"d": {width: {bucket_start: events}}``: the key's stored events per
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
        # slots per bucket width
        self.slots: dict[int, list[tuple[int, str | None, frozenset | None]]] = {}
        self._plan: list[tuple] = []  # per feature: how to read its value
        # width -> the longest horizon + offset of a delayed fraud share: how far back "d" keeps its counts
        self.delayed_reach: dict[int, int] = {}
        horizons: dict[int, int] = {}
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
            kind = CNT if f.agg in ("count", "fraud_share") else SET if f.agg == "distinct" else NUM
            slot = (kind, None if kind == CNT else f.field, frozenset(f.event_types) if f.event_types else None)
            slots = self.slots.setdefault(g, [])
            if slot not in slots:
                slots.append(slot)
            horizons[g] = max(horizons.get(g, 0), h)
            self._plan.append((f.agg, g, h, 0, slots.index(slot)))
        self.max_horizon = dict(horizons)  # width -> longest horizon using it
        self.retention_ms = max((f.reach_ms for f in self.features), default=0) + self.lateness
        # after this long without an event the key starts over (first seen, previous event, windows), as
        # when it expired; only the delayed label windows' counts, which look further back, live on until
        # retention_ms (fresh_ms == retention_ms for an entity without them)
        self.fresh_ms = max((f.horizon_ms or 0 for f in self.features), default=0) + self.lateness
        self.reads_labels = any(f.agg in LABEL_AGGS for f in self.features)
        self.label_keep_ms = max((f.reach_ms + f.bucket_ms for f in self.features if f.agg in LABEL_AGGS),
                                 default=0)
        # per width and event type: the slots that event type feeds
        self._feeds: dict[int, dict[str, list[tuple[int, int, str | None]]]] = {
            g: {t: [(i, k, fld) for i, (k, fld, types) in enumerate(sl) if types is None or t in types]
                for t in EVENT_TYPES}
            for g, sl in self.slots.items()
        }
        self._ranges = sorted({(p[1], p[2]) for p in self._plan if len(p) == 5})  # windows read from buckets
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
                accs = buckets[start] = [_new_acc(k) for k, _, _ in self.slots[g]]
            _fold(accs, feeds, ev, sketch_past_threshold=True)
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
        agg: dict[tuple[int, int], list] = {}
        for g, h in self._ranges:
            hi = ts - ts % g
            lo = hi + g - h
            slots = self.slots[g]
            accs = [_new_acc(k) for k, _, _ in slots]
            for start, b in state["b"].get(g, {}).items():
                if lo <= start <= hi:
                    for i, (kind, _, _) in enumerate(slots):
                        v = b[i]
                        if kind == CNT:
                            accs[i] += v
                        elif kind == NUM:
                            a = accs[i]
                            a[0] += v[0]
                            a[1] += v[1]
                            if v[2] > a[2]:
                                a[2] = v[2]
                            if v[3] < a[3]:
                                a[3] = v[3]
                        else:
                            accs[i] = _union(accs[i], v)
            if fold_self:  # a late event counts itself without being stored
                _fold(accs, self._feeds[g][ev.event_type], ev, sketch_past_threshold=False)
            agg[(g, h)] = accs
        out: list[float] = []
        for p in self._plan:
            kind = p[0]
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
                    events = agg[(g, h)][p[4]]
                else:  # the stored events in the delayed window (never the event itself: its bucket is later)
                    counts = state.get("d", {}).get(g, {})
                    events = sum(c for s, c in counts.items() if lo <= s <= hi)
                base = max(events, n)
                out.append(n / base if base else 0.0)
                continue
            acc = agg[(p[1], p[2])][p[4]]
            if kind == "count":
                out.append(float(acc))
            elif kind == "distinct":
                out.append(float(len(acc)) if type(acc) is set else float(round(hll.estimate(acc))))
            elif kind == "sum":
                out.append(float(acc[1]))  # 0.0 over an empty window
            elif acc[0] == 0:
                out.append(MISSING)
            elif kind == "mean":
                out.append(acc[1] / acc[0])
            elif kind == "max":
                out.append(float(acc[2]))
            else:
                out.append(float(acc[3]))
        return out

    def expires_at(self, state: dict) -> int:
        """Event time from which the key is fresh again: no event at or after it can read this state."""
        return int(state["last"]) + self.retention_ms


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

