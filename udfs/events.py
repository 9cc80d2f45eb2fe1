"""The event contract and its validating parser.

A bad record is data, not an exception: :func:`parse_event` returns either an :class:`Event` or a
:class:`Rejection` with a machine-readable reason code, and the job routes rejections, with the original
bytes, to the dead-letter topic.
"""

from __future__ import annotations

import base64
import hashlib
import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

EVENT_TYPES: tuple[str, ...] = (
    "login",
    "signup",
    "add_payment_method",
    "place_order",
    "payment",
    "refund",
    "promo_redeem",
)
EVENT_TYPE_INDEX = {t: i for i, t in enumerate(EVENT_TYPES)}

REQUIRED_FIELDS = ("event_id", "event_type", "user_id", "device_id", "ip", "amount", "currency", "ts")
# payment_ref: the payment instrument (a card or wallet fingerprint, never a card number) an event used or
# added. Only these event types carry one; absent or null means none.
PAYMENT_REF_TYPES = ("add_payment_method", "place_order", "payment", "refund")
# Optional key fields (each keys an optional entity of the spec): name -> the event types that may carry
# it (None: any). Absent or null means none; anything but a non-blank string of at most MAX_ID_LEN
# characters on such a type is refused as ``invalid_<name>``. Each is also a field of Event (default None).
OPTIONAL_KEYS: dict[str, tuple[str, ...] | None] = {"payment_ref": PAYMENT_REF_TYPES}
OPTIONAL_FIELDS = ("extras", *OPTIONAL_KEYS)
KNOWN_FIELDS = frozenset(REQUIRED_FIELDS + OPTIONAL_FIELDS)

MAX_EVENT_BYTES = 64 * 1024
MAX_ID_LEN = 128
MAX_IP_LEN = 64
# event time must lie in [2000-01-01, 2100-01-01): anything else is a producer bug (seconds vs ms, ...)
MIN_TS_MS = 946_684_800_000
MAX_TS_MS = 4_102_444_800_000
MAX_AMOUNT = 1e9


class Event(NamedTuple):
    """A validated event. ``amount`` is a non-negative finite float; ``ts`` is event time in epoch ms;
    ``payment_ref`` is None when the event carries no payment instrument."""

    event_id: str
    event_type: str
    user_id: str
    device_id: str
    ip: str
    amount: float
    currency: str
    ts: int
    extras: dict | None = None
    payment_ref: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = self._asdict()
        for name in OPTIONAL_FIELDS:
            if d[name] is None:
                del d[name]
        return d


@dataclass(frozen=True)
class Rejection:
    """Why a record was refused. ``reason`` is a stable code; ``detail`` is for humans."""

    reason: str
    detail: str


# Reason codes (stable: downstream tooling matches on them)
OVERSIZED = "oversized"
INVALID_UTF8 = "invalid_utf8"
INVALID_JSON = "invalid_json"
NOT_AN_OBJECT = "not_an_object"
MISSING_FIELD = "missing_field"
UNKNOWN_FIELD = "unknown_field"
WRONG_TYPE = "wrong_type"
NULL_KEY = "null_key"
UNKNOWN_EVENT_TYPE = "unknown_event_type"
INVALID_AMOUNT = "invalid_amount"
INVALID_CURRENCY = "invalid_currency"
INVALID_TS = "invalid_ts"
INVALID_OPTIONAL_KEY = {name: f"invalid_{name}" for name in OPTIONAL_KEYS}
# set by the job, not by parse_event
DUPLICATE_EVENT_ID = "duplicate_event_id"  # the user's stage saw this event_id within the dedup horizon
PROCESSING_ERROR = "processing_error"  # a function raised on this record (a bug): kept, not retried
CONTROL_REJECTED = "control_rejected"  # a control message (model, rules) that failed validation
NULL_VALUE = "null_value"  # a Kafka record whose value is null (a tombstone): set by the source stage

PARSE_REASON_CODES = (OVERSIZED, INVALID_UTF8, INVALID_JSON, NOT_AN_OBJECT, MISSING_FIELD, UNKNOWN_FIELD,
                      WRONG_TYPE, NULL_KEY, UNKNOWN_EVENT_TYPE, INVALID_AMOUNT, INVALID_CURRENCY, INVALID_TS,
                      *INVALID_OPTIONAL_KEY.values())
REASON_CODES = PARSE_REASON_CODES + (DUPLICATE_EVENT_ID, PROCESSING_ERROR, CONTROL_REJECTED, NULL_VALUE)

# Dead letters are bounded (docs/contracts.md#dead-letters): an original of at most this many bytes is kept
# whole; a longer one (a compressing producer can land a record far above the broker's 1 MiB cap, which
# applies to the compressed batch) keeps its first DEAD_LETTER_ORIGINAL_MAX_BYTES bytes with its whole
# length, its SHA-256 and ``original_truncated``. A tombstone's key is kept up to DEAD_LETTER_KEY_MAX_BYTES
# the same way. A dead letter is then at most ~1.42 MB, below the dead-letter sink's 2 MiB max.request.size
# (riskstream.topics.DEAD_LETTER_MAX_BYTES). The JVM's io.riskstream.flink.DeadLetters states the same.
DEAD_LETTER_ORIGINAL_MAX_BYTES = 1024 * 1024
DEAD_LETTER_KEY_MAX_BYTES = 64 * 1024
DEAD_LETTER_DETAIL_MAX_CHARS = 200
NULL_VALUE_DETAIL = "the record's value is null (a tombstone)"


def _id(obj: dict, name: str) -> str | Rejection:
    v = obj[name]
    if v is None:
        return Rejection(NULL_KEY, f"{name} is null")
    if not isinstance(v, str):
        return Rejection(WRONG_TYPE, f"{name} must be a string, got {type(v).__name__}")
    if not v.strip():
        return Rejection(NULL_KEY, f"{name} is empty")
    if len(v) > MAX_ID_LEN:
        return Rejection(WRONG_TYPE, f"{name} longer than {MAX_ID_LEN} characters")
    return v


def parse_event(raw: bytes) -> Event | Rejection:
    """Validate one record's bytes. Never raises for any input."""
    if len(raw) > MAX_EVENT_BYTES:
        return Rejection(OVERSIZED, f"{len(raw)} bytes > {MAX_EVENT_BYTES}")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return Rejection(INVALID_UTF8, str(e)[:200])
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        return Rejection(INVALID_JSON, str(e)[:200])
    if not isinstance(obj, dict):
        return Rejection(NOT_AN_OBJECT, f"top level is {type(obj).__name__}, not an object")
    for name in REQUIRED_FIELDS:
        if name not in obj:
            return Rejection(MISSING_FIELD, name)
    extra = sorted(k for k in obj if k not in KNOWN_FIELDS)
    if extra:
        return Rejection(UNKNOWN_FIELD, ",".join(extra)[:200] + " (put free-form data under 'extras')")
    ids = {}
    for name in ("event_id", "user_id", "device_id"):
        v = _id(obj, name)
        if isinstance(v, Rejection):
            return v
        ids[name] = v
    et = obj["event_type"]
    if not isinstance(et, str):
        return Rejection(WRONG_TYPE, f"event_type must be a string, got {type(et).__name__}")
    if et not in EVENT_TYPE_INDEX:
        return Rejection(UNKNOWN_EVENT_TYPE, et[:64])
    ip = _id(obj, "ip")  # ip keys the ip-window stage: null/blank is null_key, like the other ids
    if isinstance(ip, Rejection):
        return ip
    if len(ip) > MAX_IP_LEN:
        return Rejection(WRONG_TYPE, f"ip longer than {MAX_IP_LEN} characters")
    amount = obj["amount"]
    if isinstance(amount, bool) or not isinstance(amount, (int, float)):
        return Rejection(WRONG_TYPE, f"amount must be a number, got {type(amount).__name__}")
    amount = float(amount)
    if not math.isfinite(amount) or amount < 0 or amount > MAX_AMOUNT:
        return Rejection(INVALID_AMOUNT, f"amount {amount!r} not in [0, {MAX_AMOUNT:g}]")
    cur = obj["currency"]
    if not isinstance(cur, str):
        return Rejection(WRONG_TYPE, f"currency must be a string, got {type(cur).__name__}")
    if len(cur) != 3 or not cur.isascii() or not cur.isalpha() or not cur.isupper():
        return Rejection(INVALID_CURRENCY, f"currency {cur[:16]!r} is not an ISO 4217 code")
    ts = obj["ts"]
    if isinstance(ts, bool) or not isinstance(ts, int):
        return Rejection(WRONG_TYPE, f"ts must be an integer (epoch ms), got {type(ts).__name__}")
    if not MIN_TS_MS <= ts < MAX_TS_MS:
        return Rejection(INVALID_TS, f"ts {ts} outside [{MIN_TS_MS}, {MAX_TS_MS}) epoch ms")
    extras = obj.get("extras")
    if extras is not None and not isinstance(extras, dict):
        return Rejection(WRONG_TYPE, "extras must be an object")
    optional = {}
    for name, types in OPTIONAL_KEYS.items():
        v = obj.get(name)
        if v is None:
            continue
        if not isinstance(v, str) or not v.strip() or len(v) > MAX_ID_LEN:
            return Rejection(INVALID_OPTIONAL_KEY[name], f"{name} must be a non-blank string of at most "
                                                         f"{MAX_ID_LEN} characters, or null")
        if types is not None and et not in types:
            return Rejection(INVALID_OPTIONAL_KEY[name], f"a {et} event carries no {name} (only "
                                                         f"{', '.join(types)} do)")
        optional[name] = v
    # orjson parses 1024 levels but serialises only 254: a deeper extras would be accepted here and then
    # raise when the job re-encodes it. Depth > 200 needs > 200 brackets, so the exact check is rare.
    if extras and raw.count(b"[") + raw.count(b"{") > 200:
        try:
            orjson.dumps(obj)
        except orjson.JSONEncodeError:
            return Rejection(INVALID_JSON, "extras nested too deeply (orjson re-encodes at most 254 levels)")
    return Event(ids["event_id"], et, ids["user_id"], ids["device_id"], ip, amount, cur, ts, extras, **optional)


def contract_json() -> str:
    """The contract's constants as JSON, for parsers outside Python (udfs/jvm's EventParser) so that
    there is one definition. The order of the checks and the reason codes are parse_event's."""
    return orjson.dumps({
        "event_types": list(EVENT_TYPES),
        "required_fields": list(REQUIRED_FIELDS),
        "optional_keys": {name: None if types is None else list(types) for name, types in OPTIONAL_KEYS.items()},
        "max_event_bytes": MAX_EVENT_BYTES,
        "max_id_len": MAX_ID_LEN,
        "max_ip_len": MAX_IP_LEN,
        "min_ts_ms": MIN_TS_MS,
        "max_ts_ms": MAX_TS_MS,
        "max_amount": MAX_AMOUNT,
    }).decode()


def dead_letter_record(raw: bytes, rejection: Rejection, job: str, dead_at_ms: int,
                       reencoded: bool = False) -> bytes:
    """The dead-letter payload: reason, detail and the original bytes (base64, exact up to
    ``DEAD_LETTER_ORIGINAL_MAX_BYTES``; above it their first that many bytes, with ``original_sha256`` of the
    whole original and ``original_truncated``), their whole size. Records refused after parsing (duplicates,
    processing errors) carry the event re-encoded and ``original_reencoded``."""
    cut = len(raw) > DEAD_LETTER_ORIGINAL_MAX_BYTES
    rec = {
        "reason": rejection.reason,
        "detail": rejection.detail[:DEAD_LETTER_DETAIL_MAX_CHARS],
        "original_b64": base64.b64encode(raw[:DEAD_LETTER_ORIGINAL_MAX_BYTES] if cut else raw).decode("ascii"),
        "original_size": len(raw),
    }
    if cut:
        rec["original_sha256"] = hashlib.sha256(raw).hexdigest()
        rec["original_truncated"] = True
    rec["job"] = job
    rec["dead_at"] = dead_at_ms
    if reencoded:
        rec["original_reencoded"] = True
    return orjson.dumps(rec)


def null_value_record(key: bytes | None, job: str, dead_at_ms: int, topic: str | None = None,
                      partition: int | None = None, offset: int | None = None) -> bytes:
    """The dead letter of a record whose value is null (a tombstone): reason ``null_value``, no original
    (``original_null``), its key (base64, None without one; up to ``DEAD_LETTER_KEY_MAX_BYTES``, with
    ``key_size`` and, above it, ``key_truncated``) and where it was read. The job writes it in the JVM
    (io.riskstream.flink.NullValues, right after each Kafka source); this is its definition."""
    rec: dict[str, Any] = {"reason": NULL_VALUE, "detail": NULL_VALUE_DETAIL, "original_b64": "",
                           "original_size": 0, "original_null": True}
    if key is None:
        rec["key_b64"] = None
    else:
        rec["key_b64"] = base64.b64encode(key[:DEAD_LETTER_KEY_MAX_BYTES]).decode("ascii")
        rec["key_size"] = len(key)
        if len(key) > DEAD_LETTER_KEY_MAX_BYTES:
            rec["key_truncated"] = True
    rec.update(topic=topic, partition=partition, offset=offset, job=job, dead_at=dead_at_ms)
    return orjson.dumps(rec)


def dead_letter_original(d: dict) -> tuple[str, int] | None:
    """(SHA-256 hex, length) of the original a dead letter (decoded JSON) stands for, whether it carries
    the whole original or a truncated prefix; None when it carries none it can vouch for (a tombstone's,
    or a malformed dead letter). Never raises."""
    try:
        if d.get("original_null"):
            return None
        if d.get("original_truncated"):
            sha, size = d["original_sha256"], d["original_size"]
            if isinstance(sha, str) and isinstance(size, int) and not isinstance(size, bool):
                return sha, size
            return None
        raw = base64.b64decode(d["original_b64"], validate=True)
        return hashlib.sha256(raw).hexdigest(), len(raw)
    except Exception:
        return None


def encode_event(ev: Event | dict) -> bytes:
    return orjson.dumps(ev.to_dict() if isinstance(ev, Event) else ev)
