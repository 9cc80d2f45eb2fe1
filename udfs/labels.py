"""Label feedback (pure): chargebacks and analyst verdicts, hours or days after the event.

A label on the labels topic is ``{"event_id", "user_id", "device_id", "event_ts", "label": "fraud"|"legit"}``
(``event_ts``: the labelled event's time, epoch ms). Each entity stage with ``label_signals`` in the spec
(the device) keeps, per key, the users labelled fraud with their event time, for ``KNOWN_FRAUD_HORIZON_MS`` (7 days) and at most
``MAX_USERS_PER_DEVICE`` of them. A later ``legit`` label for the same user removes them. From that it
computes a *signal*, not a model feature: ``device_known_fraud_users_7d``, the number of known-fraud
users seen on this device in the 7 days before the event being scored. That is the fraud-ring signal.

Signals go to the rules (a rule may name them like features) and into the decision record. The model
does not see them: adding one to the model is a feature-spec change and a retrain.
"""

from __future__ import annotations

import math

import orjson

from .events import MAX_ID_LEN, MIN_TS_MS, MAX_TS_MS, Rejection

KNOWN_FRAUD_HORIZON_MS = 7 * 24 * 3600 * 1000
MAX_USERS_PER_DEVICE = 1000
INVALID_LABEL = "invalid_label"
FRAUD, LEGIT = "fraud", "legit"


def parse_label(raw: bytes) -> tuple[str, str, str, int, str] | Rejection:
    """(event_id, user_id, device_id, event_ts, label) or a Rejection. Never raises."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        return Rejection(INVALID_LABEL, f"not JSON: {e}"[:200])
    if not isinstance(obj, dict):
        return Rejection(INVALID_LABEL, "a label is a JSON object")
    ids = []
    for name in ("event_id", "user_id", "device_id"):
        v = obj.get(name)
        if not isinstance(v, str) or not v.strip() or len(v) > MAX_ID_LEN:
            return Rejection(INVALID_LABEL, f"{name} must be a non-blank string of at most {MAX_ID_LEN} characters")
        ids.append(v)
    ts = obj.get("event_ts")
    if isinstance(ts, bool) or not isinstance(ts, int) or not MIN_TS_MS <= ts < MAX_TS_MS:
        return Rejection(INVALID_LABEL, "event_ts must be the labelled event's time in epoch ms")
    label = obj.get("label")
    if label not in (FRAUD, LEGIT):
        return Rejection(INVALID_LABEL, "label must be 'fraud' or 'legit'")
    return ids[0], ids[1], ids[2], ts, label


def apply_label(known: dict | None, user_id: str, event_ts: int, label: str) -> dict:
    """Fold one label into a device's ``{user_id: newest fraud event ts}``; returns the dict."""
    known = {} if known is None else known
    if label == LEGIT:
        known.pop(user_id, None)
        return known
    if event_ts > known.get(user_id, -math.inf):
        known.pop(user_id, None)  # re-insert: the dict stays in ascending-ish time order for pruning
        known[user_id] = event_ts
    newest = max(known.values())
    for u in [u for u, t in known.items() if t < newest - KNOWN_FRAUD_HORIZON_MS]:
        del known[u]
    while len(known) > MAX_USERS_PER_DEVICE:
        del known[min(known, key=known.get)]
    return known


def known_fraud_users(known: dict | None, ts: int) -> float:
    """Known-fraud users seen on the device in the 7 days up to ``ts``."""
    if not known:
        return 0.0
    lo = ts - KNOWN_FRAUD_HORIZON_MS
    return float(sum(1 for t in known.values() if lo <= t <= ts))
