"""Brute-force feature oracle: recomputes every windowed feature from the raw list of arrived events,
straight from the semantics documented in udfs/windows.py and the README (no buckets kept, no state)."""

from __future__ import annotations

import math

from udfs.features import LABEL_AGGS, MISSING, features_for
from udfs.labels import Label


def label_of(event_id: str, user_id: str, device_id: str, event_ts: int, label: str, ip: str | None = None,
             payment_ref: str | None = None) -> Label:
    """The tests' label tuples (as the labels topic lists the keys) as a ``udfs.labels.Label``."""
    return Label.of_fields(event_id, event_ts, label, user_id=user_id, device_id=device_id, ip=ip,
                           payment_ref=payment_ref)


def oracle_features(entity: str, arrived: list, lateness: int, features=None,
                    brute: dict | None = None) -> list[tuple[list[float], bool]]:
    """``arrived``: events of ONE key in arrival order, and labels for the key as
    ``("label", (user_id, event_id), event_ts, "fraud"|"legit")`` where they arrive (ids are per user). Returns (values, late) per event.
    An event at or after the key's expiry (its newest stored event + longest reach + lateness) finds the
    key fresh; labels are not part of the expiry. An event after a quiet gap of the longest horizon without
    offsets + lateness finds the key started over (age, since-previous, windows) but for the delayed
    shares' event counts. A label counts for every event after it: the labelled
    event's newest label decides, fraud labels are kept while their event time is within the longest label
    horizon plus offset plus its bucket of the newest kept one.

    A delayed label feature (``offset_ms``) reads the ``H/g`` buckets that end ``offset`` before the event's
    bucket; its share's base is the key's stored events there, held back to the longest delayed share's
    horizon + offset (apart from the other windows' buckets), the key kept for its longest horizon + offset.
    ``features``: the spec (default ``udfs.features.FEATURES``). ``brute``: for a plug-in aggregate
    (``udfs.aggregates``), its value from the window's field values (None left out), by aggregate name."""
    feats = features_for(entity, features)
    max_h: dict[int, int] = {}
    reach_d: dict[int, int] = {}  # delayed shares' event counts: width -> longest horizon + offset
    for f in feats:
        if f.agg == "fraud_share" and f.offset_ms:
            reach_d[f.bucket_ms] = max(reach_d.get(f.bucket_ms, 0), f.horizon_ms + f.offset_ms)
        elif f.horizon_ms and f.agg != "fraud_labels":
            max_h[f.bucket_ms] = max(max_h.get(f.bucket_ms, 0), f.horizon_ms)
    retention = max((f.horizon_ms or 0) + f.offset_ms for f in feats) + lateness
    fresh = max((f.horizon_ms or 0) for f in feats) + lateness  # quiet this long: a new key but for delayed counts
    start = 0  # kept[start:]: the events since the key last started over
    keep = max((f.horizon_ms + f.offset_ms + f.bucket_ms for f in feats if f.agg in LABEL_AGGS), default=0)
    fraud: dict = {}  # labelled-fraud events known so far: (user_id, event_id) -> event time
    kept: list = []  # events stored (non-late)
    out = []
    for ev in arrived:
        if type(ev) is tuple:  # a label (an Event is a named tuple)
            _, eid, ets, verdict = ev
            fraud.pop(eid, None)
            if verdict == "fraud":
                fraud[eid] = ets
                fraud = {e: t for e, t in fraud.items() if t >= max(fraud.values()) - keep}
            continue
        if kept and ev.ts >= max(e.ts for e in kept) + retention:
            kept, start = [], 0  # the key expired: everything before is forgotten
        elif kept and ev.ts >= max(e.ts for e in kept) + fresh:
            start = len(kept)  # the key starts over: only the delayed shares' counts still see the events before
        last_prev = max((e.ts for e in kept[start:]), default=None)
        late = last_prev is not None and ev.ts < last_prev - lateness
        last_now = last_prev if late else (ev.ts if last_prev is None else max(last_prev, ev.ts))
        pool = kept[start:] + [ev]
        vals = []
        for f in feats:
            if f.agg == "since_prev":
                vals.append(float(max(ev.ts - last_prev, 0)) if last_prev is not None else MISSING)
                continue
            if f.agg == "age":
                vals.append(float(ev.ts - min(e.ts for e in pool)))
                continue
            g, h = f.bucket_ms, f.horizon_ms
            hi = (ev.ts // g) * g - f.offset_ms
            lo = hi + g - h
            if f.agg in LABEL_AGGS and f.offset_ms:
                n = sum(1 for t in fraud.values() if lo <= (t // g) * g <= hi)
                if f.agg == "fraud_labels":
                    vals.append(float(n))
                    continue
                keep_from = ((last_now - lateness) // g) * g + g - reach_d[g]
                events = len([e for e in kept if lo <= (e.ts // g) * g <= hi and (e.ts // g) * g >= keep_from])
                vals.append(n / max(events, n) if max(events, n) else 0.0)
                continue
            if f.agg in LABEL_AGGS:
                n = sum(1 for t in fraud.values() if lo <= (t // g) * g <= hi)
                keep_from = ((last_now - lateness) // g) * g + g - max_h[g] if g in max_h else None
                events = len([e for e in pool if lo <= (e.ts // g) * g <= hi
                              and (e is ev or (e.ts // g) * g >= keep_from)]) if keep_from is not None else 0
                vals.append(float(n) if f.agg == "fraud_labels" else (n / max(events, n) if max(events, n) else 0.0))
                continue
            # buckets held: those the oldest on-time event (at last_now - lateness) can still read
            keep_from = ((last_now - lateness) // g) * g + g - max_h[g]
            sel = [e for e in pool
                   if lo <= (e.ts // g) * g <= hi
                   and (e is ev or (e.ts // g) * g >= keep_from)
                   and (f.event_types is None or e.event_type in f.event_types)]
            if f.agg == "count":
                vals.append(float(len(sel)))
            elif f.agg == "distinct":
                vals.append(float(len({getattr(e, f.field) for e in sel} - {None})))
            elif brute and f.agg in brute:
                vals.append(brute[f.agg]([getattr(e, f.field) for e in sel if getattr(e, f.field) is not None]))
            elif f.agg == "sum":
                vals.append(math.fsum(getattr(e, f.field) for e in sel))
            elif not sel:
                vals.append(MISSING)
            elif f.agg == "mean":
                vals.append(math.fsum(getattr(e, f.field) for e in sel) / len(sel))
            elif f.agg == "max":
                vals.append(float(max(getattr(e, f.field) for e in sel)))
            elif f.agg == "min":
                vals.append(float(min(getattr(e, f.field) for e in sel)))
            else:
                raise AssertionError(f.agg)
        if not late:
            kept.append(ev)
        out.append((vals, late))
    return out
