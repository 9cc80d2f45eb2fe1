"""The decision record written to the decisions topic (contract documented in the README)."""

from __future__ import annotations

import hashlib

import orjson

from .events import Event
from .features import FEATURE_NAMES, LABEL_KEYS


def decision_id(event_id: str, model_version: str, policy_version: str) -> str:
    """Deterministic: the same event under the same model and policy always gets the same id."""
    return hashlib.sha256(f"{event_id}\x1f{model_version}\x1f{policy_version}".encode()).hexdigest()[:32]


def decision_record(ev: Event, decision: str, score: float, reasons: list[str], features: list[float],
                    model_version: str, policy_version: str, decided_at_ms: int, late: bool,
                    rules_version: str | None = None, shadow: dict | None = None,
                    signals: dict | None = None, arrived_at: int | None = None, arm: str | None = None) -> dict:
    """``shadow`` is the challenger's score and the decision it would have made (never acted on). The event's
    key of every entity a label names (``features.LABEL_KEYS``: ``user_id``, ``device_id``, ``ip``,
    ``payment_ref``, null without one) are there for the consumers that turn a decision into a label (the
    review queue): a label names them so each entity's stage counts it. ``arrived_at``: the event's
    broker arrival time (epoch ms), written only when known, so latency is measured from arrival, not from
    the event's own (producer-set) time. ``arm``: the split's arm that decided (``udfs.split``), written only
    under a split. The JVM writer (``io.riskstream.flink.DecisionWriter``) writes the
    same fields in the same order."""
    v = verdict(decision, score, reasons, model_version, policy_version, rules_version, shadow, arm)
    rec = {
        "decision_id": decision_id(ev.event_id, model_version, policy_version),
        "event_id": ev.event_id,
        "event_type": ev.event_type,
        **{k: getattr(ev, k) for k in LABEL_KEYS},
        **{k: v.pop(k) for k in ("decision", "score", "model_version", "policy_version", "reasons")},
        "features": dict(zip(FEATURE_NAMES, features)),
        "late": late,
        "event_ts": ev.ts,
    }
    if arrived_at is not None:
        rec["arrived_at"] = arrived_at
    rec["decided_at"] = decided_at_ms
    rec.update(v)  # rules_version, shadow, arm
    if signals is not None:
        rec["signals"] = signals
    return rec


def verdict(decision: str, score: float, reasons: list[str], model_version: str, policy_version: str,
            rules_version: str | None = None, shadow: dict | None = None, arm: str | None = None) -> dict:
    """What the decide stage adds to a record's event, features and signals: the fields of
    :func:`decision_record` that the JVM writer (``io.riskstream.flink.DecisionAssemble``) cannot know."""
    v = {"decision": decision, "score": round(score, 6), "model_version": model_version,
         "policy_version": policy_version, "reasons": reasons}
    if rules_version is not None:
        v["rules_version"] = rules_version
    if shadow is not None:
        v["shadow"] = shadow
    if arm is not None:
        v["arm"] = arm
    return v


def encode(record: dict) -> bytes:
    return orjson.dumps(record)


def event_keys(ev: Event) -> dict:
    """The event's key of every entity a label names: ``{key field: key or None}`` (``features.LABEL_KEYS``)."""
    return {k: getattr(ev, k) for k in LABEL_KEYS}


def error_decision_record(event_id: str, event_type: str, keys: dict, detail: str,
                          model_version: str | None, policy_version: str, decided_at_ms: int,
                          arrived_at: int | None = None, arm: str | None = None) -> dict:
    """A valid event the job failed to score: sent to review, never silently allowed. ``keys``: the event's
    key fields (``features.LABEL_KEYS``, :func:`event_keys`); one it lacks is written null."""
    rec = {
        "decision_id": decision_id(event_id, model_version or "none", policy_version),
        "event_id": event_id,
        "event_type": event_type,
        **{k: keys.get(k) for k in LABEL_KEYS},
        "decision": "review",
        "score": None,
        "model_version": model_version,
        "policy_version": policy_version,
        "reasons": ["processing_error"],
        "error": detail[:200],
        "features": {},
        "late": False,
        "event_ts": None,
    }
    if arrived_at is not None:
        rec["arrived_at"] = arrived_at
    rec["decided_at"] = decided_at_ms
    if arm is not None:
        rec["arm"] = arm
    return rec
