"""Label feedback (pure): chargebacks and analyst verdicts, hours or days after the event.

A label on the labels topic is ``{"event_id", "user_id", "device_id", "event_ts", "label": "fraud"|"legit"}``
(``event_ts``: the labelled event's time, epoch ms), optionally with the labelled event's ``ip`` and
``payment_ref`` (the ip and payment stages read only labels that name their key): the key field of each
entity of ``features.LABEL_ENTITIES``, required for the ``label_required`` ones. In the code a label is a
:class:`Label`: its keys a mapping entity name -> key, so an entity added to the spec is a key labels may
name, with no change here. A labels *file* for the offline commands may also give each label's
``arrival_ts`` (``udfs.replay.read_labels``, :func:`label_arrival`).

Label features (``features.LABEL_AGGS``): each stage that reads labels keeps per key the labelled-fraud events
``{event: event_ts}`` (:func:`apply_fraud_label`), an event named by ``udfs.chain.label_identity(user_id,
event_id)`` (ids are per user): a ``fraud`` label adds its event, a later ``legit`` label for the same event
removes it (the newest label of an event wins); events older than the newest one kept by
more than ``features.label_keep_ms`` are dropped, and at most ``MAX_LABELS_PER_KEY`` are kept. The window code
(``udfs.windows``) reads them; the semantics are in docs/features.md.

Label signals: each entity stage with ``label_signals`` in the spec (the device) keeps, per key, the users
labelled fraud with their event time, for ``KNOWN_FRAUD_HORIZON_MS`` (7 days) and at most
``MAX_USERS_PER_DEVICE`` of them. A later ``legit`` label for the same user removes them. From that it
computes a *signal* for the rules: ``device_known_fraud_users_7d``, the number of known-fraud users seen on
this device in the 7 days before the event being scored. That is the fraud-ring signal. Signals go to the
rules (a rule may name them like features) and into the decision record.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import orjson

from .events import MAX_ID_LEN, MIN_TS_MS, MAX_TS_MS, Event, Rejection
from .features import LABEL_ENTITIES

KNOWN_FRAUD_HORIZON_MS = 7 * 24 * 3600 * 1000
DEFAULT_LABEL_DELAY_MS = 7 * 24 * 3600 * 1000  # offline: a label without arrival_ts arrives this long after its event
NO_LABELS = "none"  # offline: no label reaches the label features (a job without a labels topic)
MAX_USERS_PER_DEVICE = 1000
MAX_LABELS_PER_KEY = 1000
INVALID_LABEL = "invalid_label"
FRAUD, LEGIT = "fraud", "legit"


def label_arrival(event_ts: int, arrival_ts: int | None, label_delay: int | str | None) -> int | None:
    """When an offline label reaches the label features, the one rule of train, replay and score:
    ``label_delay`` ms after its event when given (it fixes the delay of every label, ``arrival_ts`` or
    not), never with :data:`NO_LABELS`, else its own ``arrival_ts``, else :data:`DEFAULT_LABEL_DELAY_MS`
    after its event. Pitfall: a rule that differed between train and score would give the model features at
    training time that scoring never computes."""
    if label_delay == NO_LABELS:
        return None
    if label_delay is not None:
        return event_ts + int(label_delay)
    return arrival_ts if arrival_ts is not None else event_ts + DEFAULT_LABEL_DELAY_MS


_USER = LABEL_ENTITIES[0].name  # the user: a label's identity is (user, event id), udfs.chain.label_identity
if LABEL_ENTITIES[0].key_field != "user_id":
    raise ValueError("the first label-required entity must be the user (key field user_id)")


class Label(NamedTuple):
    """A label as data: the labelled event's id and time, the verdict, and the keys it names, a mapping
    entity name -> key (``{"user": ..., "device": ..., "ip": ...}``; every ``label_required`` entity, the
    others when named). Pitfall: ``keys`` is a dict inside a tuple: build a new Label rather than change it."""

    event_id: str
    event_ts: int
    label: str  # FRAUD or LEGIT
    keys: dict

    @property
    def user_id(self) -> str:
        return self.keys[_USER]

    def key(self, entity: str) -> str | None:
        """The key this label names for ``entity`` (an entity name), or None."""
        return self.keys.get(entity)

    def wire(self) -> dict:
        """The label as the labels topic carries it (:func:`parse_label` reads it back): each named key under
        its entity's key field, in ``LABEL_ENTITIES`` order, after ``event_id``."""
        d = {"event_id": self.event_id}
        for e in LABEL_ENTITIES:
            if self.keys.get(e.name) is not None:
                d[e.key_field] = self.keys[e.name]
        d["event_ts"] = self.event_ts
        d["label"] = self.label
        return d

    @classmethod
    def of_event(cls, ev: Event, label: str) -> "Label":
        """A label for ``ev`` naming every key the event has."""
        return cls(ev.event_id, ev.ts, label,
                   {e.name: getattr(ev, e.key_field) for e in LABEL_ENTITIES if getattr(ev, e.key_field, None)})

    @classmethod
    def of_fields(cls, event_id: str, event_ts: int, label: str, **key_fields) -> "Label":
        """A label from key fields as the labels topic spells them (``user_id=..., device_id=..., ip=...``);
        a field None or absent is not named. An unknown field raises ValueError."""
        by_field = {e.key_field: e.name for e in LABEL_ENTITIES}
        unknown = set(key_fields) - set(by_field)
        if unknown:
            raise ValueError(f"labels name no {sorted(unknown)} (key fields: {sorted(by_field)})")
        return cls(event_id, event_ts, label,
                   {by_field[f]: key_fields[f] for f in by_field if key_fields.get(f) is not None})


def parse_label(raw: bytes) -> Label | Rejection:
    """A :class:`Label` or a Rejection; the keys of the entities that are not ``label_required`` are absent
    when the label does not name them. Never raises."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        return Rejection(INVALID_LABEL, f"not JSON: {e}"[:200])
    if not isinstance(obj, dict):
        return Rejection(INVALID_LABEL, "a label is a JSON object")
    keys = {}
    for name, entity in [("event_id", None)] + [(e.key_field, e.name) for e in LABEL_ENTITIES if e.label_required]:
        v = obj.get(name)
        if not isinstance(v, str) or not v.strip() or len(v) > MAX_ID_LEN:
            return Rejection(INVALID_LABEL, f"{name} must be a non-blank string of at most {MAX_ID_LEN} characters")
        if entity is not None:
            keys[entity] = v
    ts = obj.get("event_ts")
    if isinstance(ts, bool) or not isinstance(ts, int) or not MIN_TS_MS <= ts < MAX_TS_MS:
        return Rejection(INVALID_LABEL, "event_ts must be the labelled event's time in epoch ms")
    label = obj.get("label")
    if label not in (FRAUD, LEGIT):
        return Rejection(INVALID_LABEL, "label must be 'fraud' or 'legit'")
    for e in LABEL_ENTITIES:
        if e.label_required:
            continue
        v = obj.get(e.key_field)
        if v is not None and (not isinstance(v, str) or not v.strip() or len(v) > MAX_ID_LEN):
            return Rejection(INVALID_LABEL, f"{e.key_field}, when given, must be a non-blank string of at most "
                                            f"{MAX_ID_LEN} characters")
        if v is not None:
            keys[e.name] = v
    return Label(obj["event_id"], ts, label, keys)


def apply_fraud_label(lab: dict | None, event_id: str, event_ts: int, label: str, keep_ms: int) -> dict:
    """Fold one label into a key's labelled-fraud events ``{event_id: event_ts}`` (in arrival order; the job
    and the replay pass the event's identity, ``udfs.chain.label_identity(user_id, event_id)``, as ``event_id``);
    returns the dict. ``fraud`` (re-)adds the event at the end, ``legit`` removes it; then events older than
    the newest kept by more than ``keep_ms`` go, and the oldest (the first of equal times) while more than
    ``MAX_LABELS_PER_KEY`` remain."""
    lab = {} if lab is None else lab
    lab.pop(event_id, None)
    if label != FRAUD:
        return lab
    lab[event_id] = event_ts
    return _prune(lab, keep_ms, MAX_LABELS_PER_KEY)


def apply_label(known: dict | None, user_id: str, event_ts: int, label: str) -> dict:
    """Fold one label into a device's ``{user_id: newest fraud event ts}``; returns the dict."""
    known = {} if known is None else known
    if label == LEGIT:
        known.pop(user_id, None)
        return known
    if event_ts > known.get(user_id, -math.inf):
        known.pop(user_id, None)  # re-insert: the dict stays in ascending-ish time order for pruning
        known[user_id] = event_ts
    return _prune(known, KNOWN_FRAUD_HORIZON_MS, MAX_USERS_PER_DEVICE)


def _prune(times: dict, horizon_ms: int, cap: int) -> dict:
    """Drop the entries older than the newest by more than ``horizon_ms``, then the oldest (the first of
    equal times) while more than ``cap`` remain; ``times`` is not empty."""
    floor = max(times.values()) - horizon_ms
    for k in [k for k, t in times.items() if t < floor]:
        del times[k]
    while len(times) > cap:
        del times[min(times, key=times.get)]
    return times


def known_fraud_users(known: dict | None, ts: int) -> float:
    """Known-fraud users seen on the device in the 7 days up to ``ts``."""
    if not known:
        return 0.0
    lo = ts - KNOWN_FRAUD_HORIZON_MS
    return float(sum(1 for t in known.values() if lo <= t <= ts))
