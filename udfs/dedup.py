"""Duplicate ``event_id`` policy: pure logic on the user stage's state dict.

Producers retry, so the same event can arrive twice. Scoring it twice would count it twice in every
velocity window and emit a second decision. Policy: the user stage remembers each user's event ids for
``horizon_ms`` of event time (measured back from the user's newest event). A record whose id it
remembers goes to the dead-letter topic with reason ``duplicate_event_id``. It is not scored and not
counted. A duplicate that arrives after the horizon is decided again. Its ``decision_id`` is the same
(it is derived from the event id, model and policy), so downstream services stay idempotent if they
key on ``decision_id``.

Ids are remembered per user: the same id under two users is two events. Memory is bounded by the
horizon and by ``MAX_IDS_PER_KEY`` (the oldest are forgotten first), not by the event rate.
"""

from __future__ import annotations

MAX_IDS_PER_KEY = 4096
IDS = "ids"  # key in the state dict: {event_id: event ts}, in arrival order


def seen(state: dict | None, event_id: str, newest_ts: int, horizon_ms: int) -> bool:
    """Whether the key sent ``event_id`` at an event time within ``horizon_ms`` of ``newest_ts`` (the
    key's newest event time, this record's included). Pruning is lazy, so the time is checked here."""
    if state is None:
        return False
    ts = state.get(IDS, {}).get(event_id)
    return ts is not None and ts >= newest_ts - horizon_ms


def remember(state: dict, event_id: str, ts: int, newest_ts: int, horizon_ms: int) -> None:
    """Record ``event_id`` and forget ids older than ``newest_ts - horizon_ms`` or beyond the cap.

    Ids are kept in arrival order, which is close to event-time order, so pruning stops at the first
    id still inside the horizon. An out-of-order id may outlive the horizon a little; the cap still holds.
    """
    ids = state.get(IDS)
    if ids is None:
        ids = state[IDS] = {}
    ids[event_id] = ts
    cutoff = newest_ts - horizon_ms
    while ids:
        oldest = next(iter(ids))
        if ids[oldest] >= cutoff and len(ids) <= MAX_IDS_PER_KEY:
            break
        del ids[oldest]
