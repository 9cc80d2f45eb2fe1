"""Offline replay: the job's feature computation over a list of events, in the given (arrival) order.

This is the *same* code path the streaming job runs per key (``EntityWindows.update``), with plain dicts
as the keyed store; training sets and audits come from here, so there is no second implementation.
"""

from __future__ import annotations

from typing import Iterable, Iterator

from .events import Event
from .features import FEATURE_NAMES  # noqa: F401  (vector order)
from .windows import DEFAULT_LATENESS_MS, EntityWindows, event_values


class FeatureReplay:
    def __init__(self, allowed_lateness_ms: int = DEFAULT_LATENESS_MS):
        self.user = EntityWindows("user", allowed_lateness_ms)
        self.device = EntityWindows("device", allowed_lateness_ms)
        self.user_store: dict[str, dict] = {}
        self.device_store: dict[str, dict] = {}

    def step(self, ev: Event) -> tuple[list[float], bool]:
        """Feature vector (``FEATURE_NAMES`` order) of one event, and whether it was late for a key."""
        st, uvals, ulate = self.user.update(self.user_store.get(ev.user_id), ev)
        self.user_store[ev.user_id] = st
        st, dvals, dlate = self.device.update(self.device_store.get(ev.device_id), ev)
        self.device_store[ev.device_id] = st
        return event_values(ev) + uvals + dvals, ulate or dlate


def replay(events: Iterable[Event], allowed_lateness_ms: int = DEFAULT_LATENESS_MS
           ) -> Iterator[tuple[Event, list[float], bool]]:
    r = FeatureReplay(allowed_lateness_ms)
    for ev in events:
        vec, late = r.step(ev)
        yield ev, vec, late
