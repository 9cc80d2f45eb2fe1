"""A named corpus of bad records for :func:`udfs.events.parse_event`, with the reason a user would expect.

Every case about a record's content starts from the valid ``GOOD`` event and breaks exactly one thing (the
rest are whole-record faults: empty, wrong top level, not UTF-8, too deep). Policy decisions it encodes:

* Duplicate JSON keys: orjson keeps the LAST value (no error), so a duplicate is judged by its last value;
  only duplicates whose last value is bad are here (a good-after-bad duplicate is accepted).
* A UTF-8 BOM prefix: orjson refuses it, so a BOM-prefixed record is ``invalid_json`` (it is valid UTF-8).
* ``-0.0`` as amount: a valid zero amount (accepted, so not in this corpus).
* Nesting: orjson parses at most 1024 levels (deeper is ``invalid_json``, no RecursionError) but re-encodes
  at most 254, so ``parse_event`` also rejects extras it could not re-encode as ``invalid_json``.
* JSON integers outside the 64-bit range are read as floats by orjson (or refused as infinity), so a ts like
  2**64 is ``wrong_type`` (not an integer), while 2**63 is still an integer and ``invalid_ts``.
* UTF-16 with a BOM is ``invalid_utf8``; UTF-16-LE without a BOM is (NUL-laden) valid UTF-8: ``invalid_json``.
* ``null`` in a key field (event_id, user_id, device_id, ip) or a blank key is ``null_key``; ``null`` in any
  other required field is ``wrong_type``; ``extras: null`` means "no extras" (accepted).
* ``payment_ref`` is optional (absent or ``null``: no instrument). Anything else that is not a non-blank
  string of at most 128 characters, or a payment_ref on an event type that carries no instrument
  (login, signup, promo_redeem), is ``invalid_payment_ref``.
"""

from __future__ import annotations

import datetime as _dt

import orjson

GOOD: dict = {"event_id": "e1", "event_type": "payment", "user_id": "u1", "device_id": "d1", "ip": "1.2.3.4",
              "amount": 12.5, "currency": "EUR", "ts": 1_767_225_600_000}
KEY_FIELDS = ("event_id", "user_id", "device_id", "ip")
MAX_EVENT_BYTES = 64 * 1024  # the contract's limits, restated here on purpose (the tests check they match)
MAX_ID_LEN = 128
MAX_IP_LEN = 64


def good(**changes) -> dict:
    return {**GOOD, **changes}


def dumps(**changes) -> bytes:
    return orjson.dumps(good(**changes))


def with_literal(field: str, literal: bytes, base: dict = GOOD) -> bytes:
    """``base`` with ``field`` set to a raw JSON literal (for values orjson cannot dump, e.g. NaN, 1e999)."""
    rest = orjson.dumps({k: v for k, v in base.items() if k != field})
    return b'{"' + field.encode() + b'":' + literal + b"," + rest[1:]


def without(field: str) -> bytes:
    return orjson.dumps({k: v for k, v in GOOD.items() if k != field})


def padded(total: int) -> bytes:
    """A valid-looking event of exactly ``total`` bytes (padding in extras)."""
    base = dumps(extras={"pad": ""})
    raw = dumps(extras={"pad": "x" * (total - len(base))})
    assert len(raw) == total
    return raw


def _ms(year: int) -> int:
    return int(_dt.datetime(year, 1, 1, tzinfo=_dt.timezone.utc).timestamp() * 1000)


def nested_extras(depth: int) -> bytes:
    """GOOD with extras {"n": [[...]]}: ``depth`` lists inside extras (so the record nests depth + 2)."""
    return with_literal("extras", b'{"n":' + b"[" * depth + b"]" * depth + b"}")


_G = dumps()
_GOOD_JSON_STR = _G.decode()

_cases: list[tuple[str, bytes, str]] = [
    # --- malformed JSON
    ("json_empty_bytes", b"", "invalid_json"),
    ("json_only_whitespace", b" \t\r\n ", "invalid_json"),
    ("json_truncated_after_brace", _G[:1], "invalid_json"),
    ("json_truncated_mid_key", _G[:5], "invalid_json"),
    ("json_truncated_mid_value", _G[: _G.index(b"payment") + 3], "invalid_json"),
    ("json_truncated_last_byte", _G[:-1], "invalid_json"),
    ("json_trailing_garbage", _G + b"x", "invalid_json"),
    ("json_trailing_comma_garbage", _G + b",", "invalid_json"),
    ("json_two_documents", _G + b"\n" + _G, "invalid_json"),
    ("json_single_quotes", _G.replace(b'"', b"'"), "invalid_json"),
    ("json_unquoted_keys", _G.replace(b'"event_id"', b"event_id"), "invalid_json"),
    ("json_trailing_comma", _G[:-1] + b",}", "invalid_json"),
    ("json_missing_colon", _G.replace(b'"event_id":', b'"event_id" '), "invalid_json"),
    ("json_comment", b"/* c */" + _G, "invalid_json"),
    ("json_raw_newline_in_string", dumps(user_id="u\n1").replace(b"\\n", b"\n"), "invalid_json"),
    ("json_nul_in_string", dumps(user_id="u\x001").replace(b"\\u0000", b"\x00"), "invalid_json"),
    ("json_bad_escape", with_literal("user_id", b'"u\\x41"'), "invalid_json"),
    ("json_lone_surrogate_escape", with_literal("user_id", b'"\\ud800"'), "invalid_json"),
    ("json_amount_plus_sign", with_literal("amount", b"+5"), "invalid_json"),
    ("json_amount_leading_dot", with_literal("amount", b".5"), "invalid_json"),
    ("json_amount_leading_zero", with_literal("amount", b"05"), "invalid_json"),
    ("json_amount_hex", with_literal("amount", b"0x10"), "invalid_json"),
    ("json_bom_prefix", b"\xef\xbb\xbf" + _G, "invalid_json"),  # policy: orjson refuses a BOM
    ("json_utf16le_no_bom", _GOOD_JSON_STR.encode("utf-16-le"), "invalid_json"),
    ("json_nesting_10000_top", b"[" * 10_000 + b"]" * 10_000, "invalid_json"),
    ("json_extras_nested_10000", nested_extras(10_000), "invalid_json"),
    ("json_extras_nested_300", nested_extras(300), "invalid_json"),  # parses, but cannot be re-encoded
    # --- non-finite numbers (not JSON; orjson refuses them)
    ("amount_nan", with_literal("amount", b"NaN"), "invalid_json"),
    ("amount_infinity", with_literal("amount", b"Infinity"), "invalid_json"),
    ("amount_minus_infinity", with_literal("amount", b"-Infinity"), "invalid_json"),
    ("amount_1e999", with_literal("amount", b"1e999"), "invalid_json"),
    ("amount_minus_1e999", with_literal("amount", b"-1e999"), "invalid_json"),
    # --- not UTF-8
    ("utf8_lone_continuation", with_literal("user_id", b'"u\x801"'), "invalid_utf8"),
    ("utf8_lone_continuation_top", b"\x80" + _G, "invalid_utf8"),
    ("utf8_overlong_slash", with_literal("user_id", b'"u\xc0\xaf"'), "invalid_utf8"),
    ("utf8_overlong_3byte", with_literal("user_id", b'"u\xe0\x80\xaf"'), "invalid_utf8"),
    ("utf8_surrogate_d800", with_literal("user_id", b'"u\xed\xa0\x80"'), "invalid_utf8"),
    ("utf8_surrogate_d800_top", b"\xed\xa0\x80", "invalid_utf8"),
    ("utf8_truncated_multibyte", with_literal("user_id", b'"u\xe2\x82"'), "invalid_utf8"),
    ("utf8_latin1_byte", with_literal("user_id", "\"J\u00e9r\u00f4me\"".encode("latin-1")), "invalid_utf8"),
    ("utf8_ff_byte", with_literal("user_id", b'"\xff"'), "invalid_utf8"),
    ("utf8_beyond_unicode", with_literal("user_id", b'"\xf4\x90\x80\x80"'), "invalid_utf8"),
    ("utf16_with_bom", _GOOD_JSON_STR.encode("utf-16"), "invalid_utf8"),
    ("utf16_be_with_bom", b"\xfe\xff" + _GOOD_JSON_STR.encode("utf-16-be"), "invalid_utf8"),
    # --- top level is not an object
    ("top_array", b"[" + _G + b"]", "not_an_object"),
    ("top_empty_array", b"[]", "not_an_object"),
    ("top_string", orjson.dumps(_GOOD_JSON_STR), "not_an_object"),
    ("top_number", b"42", "not_an_object"),
    ("top_float", b"12.5", "not_an_object"),
    ("top_null", b"null", "not_an_object"),
    ("top_true", b"true", "not_an_object"),
    # --- required fields
    *[(f"missing_{f}", without(f), "missing_field") for f in GOOD],
    ("empty_object", b"{}", "missing_field"),
    # --- unknown fields
    ("unknown_field_colour", dumps(colour="red"), "unknown_field"),
    ("unknown_field_null", dumps(note=None), "unknown_field"),
    ("unknown_field_case_variant", dumps(Amount=1), "unknown_field"),
    ("unknown_field_empty_name", orjson.dumps({**GOOD, "": 1}), "unknown_field"),
    ("unknown_field_many", dumps(a=1, b=2, c=3), "unknown_field"),
    # --- wrong types
    ("amount_string", dumps(amount="12.5"), "wrong_type"),
    ("amount_true", dumps(amount=True), "wrong_type"),
    ("amount_false", dumps(amount=False), "wrong_type"),
    ("amount_list", dumps(amount=[12.5]), "wrong_type"),
    ("amount_object", dumps(amount={"value": 12.5}), "wrong_type"),
    ("amount_null", dumps(amount=None), "wrong_type"),
    ("ts_float", dumps(ts=1_767_225_600_000.0), "wrong_type"),
    ("ts_float_fraction", dumps(ts=1_767_225_600_000.5), "wrong_type"),
    ("ts_exponent_literal", with_literal("ts", b"1.7672256e12"), "wrong_type"),
    ("ts_string", dumps(ts="1767225600000"), "wrong_type"),
    ("ts_iso_string", dumps(ts="2026-01-01T00:00:00Z"), "wrong_type"),
    ("ts_true", dumps(ts=True), "wrong_type"),
    ("ts_null", dumps(ts=None), "wrong_type"),
    ("ts_above_uint64", with_literal("ts", str(2**64).encode()), "wrong_type"),  # orjson reads a float
    *[(f"{f}_number", dumps(**{f: 1}), "wrong_type") for f in KEY_FIELDS],
    *[(f"{f}_float", dumps(**{f: 1.5}), "wrong_type") for f in KEY_FIELDS],
    *[(f"{f}_bool", dumps(**{f: False}), "wrong_type") for f in KEY_FIELDS],
    *[(f"{f}_list", dumps(**{f: ["x"]}), "wrong_type") for f in KEY_FIELDS],
    *[(f"{f}_empty_list", dumps(**{f: []}), "wrong_type") for f in KEY_FIELDS],
    *[(f"{f}_object", dumps(**{f: {"id": "x"}}), "wrong_type") for f in KEY_FIELDS],
    ("event_type_number", dumps(event_type=4), "wrong_type"),
    ("event_type_null", dumps(event_type=None), "wrong_type"),
    ("event_type_list", dumps(event_type=["payment"]), "wrong_type"),
    ("currency_number", dumps(currency=978), "wrong_type"),
    ("currency_null", dumps(currency=None), "wrong_type"),
    ("extras_list", dumps(extras=[1, 2]), "wrong_type"),
    ("extras_string", dumps(extras="card_bin=411111"), "wrong_type"),
    ("extras_number", dumps(extras=1), "wrong_type"),
    ("extras_false", dumps(extras=False), "wrong_type"),
    # --- payment_ref: optional (absent or null = no instrument); only on payment-carrying event types
    ("payment_ref_number", dumps(payment_ref=4111), "invalid_payment_ref"),
    ("payment_ref_object", dumps(payment_ref={"bin": "411111"}), "invalid_payment_ref"),
    ("payment_ref_empty", dumps(payment_ref=""), "invalid_payment_ref"),
    ("payment_ref_whitespace", dumps(payment_ref=" \t"), "invalid_payment_ref"),
    ("payment_ref_too_long", dumps(payment_ref="c" * (MAX_ID_LEN + 1)), "invalid_payment_ref"),
    ("payment_ref_on_login", dumps(event_type="login", payment_ref="card-1"), "invalid_payment_ref"),
    ("payment_ref_on_promo", dumps(event_type="promo_redeem", payment_ref="card-1"), "invalid_payment_ref"),
    # --- key fields null / blank
    *[(f"{f}_null", dumps(**{f: None}), "null_key") for f in KEY_FIELDS],
    *[(f"{f}_empty", dumps(**{f: ""}), "null_key") for f in KEY_FIELDS],
    *[(f"{f}_whitespace", dumps(**{f: " \t\n"}), "null_key") for f in KEY_FIELDS],
    *[(f"{f}_nbsp", dumps(**{f: "\u00a0\u2003"}), "null_key") for f in KEY_FIELDS],  # Unicode spaces
    # --- ids too long (no dedicated code: the value is not an id-shaped string)
    *[(f"{f}_too_long", dumps(**{f: "x" * (MAX_ID_LEN + 1)}), "wrong_type")
      for f in ("event_id", "user_id", "device_id")],
    ("ip_too_long", dumps(ip="1" * (MAX_IP_LEN + 1)), "wrong_type"),
    ("event_id_too_long_multibyte", dumps(event_id="\u00e9" * (MAX_ID_LEN + 1)), "wrong_type"),
    # --- event types
    ("event_type_unknown", dumps(event_type="teleport"), "unknown_event_type"),
    ("event_type_capitalised", dumps(event_type="Payment"), "unknown_event_type"),
    ("event_type_upper", dumps(event_type="PAYMENT"), "unknown_event_type"),
    ("event_type_padded", dumps(event_type=" payment"), "unknown_event_type"),
    ("event_type_hyphen", dumps(event_type="place-order"), "unknown_event_type"),
    ("event_type_empty", dumps(event_type=""), "unknown_event_type"),
    # --- amounts
    ("amount_negative", dumps(amount=-1), "invalid_amount"),
    ("amount_negative_tiny", dumps(amount=-1e-9), "invalid_amount"),
    ("amount_above_max", dumps(amount=1e9 + 1), "invalid_amount"),
    ("amount_above_max_int", dumps(amount=10**9 + 1), "invalid_amount"),
    ("amount_1e308", with_literal("amount", b"1e308"), "invalid_amount"),
    ("amount_uint64_max", with_literal("amount", str(2**64 - 1).encode()), "invalid_amount"),
    # --- currencies
    ("currency_lowercase", dumps(currency="eur"), "invalid_currency"),
    ("currency_two_letters", dumps(currency="EU"), "invalid_currency"),
    ("currency_four_letters", dumps(currency="EURO"), "invalid_currency"),
    ("currency_empty", dumps(currency=""), "invalid_currency"),
    ("currency_digits", dumps(currency="978"), "invalid_currency"),
    ("currency_non_ascii", dumps(currency="\u00c9UR"), "invalid_currency"),
    ("currency_symbol", dumps(currency="\u20ac"), "invalid_currency"),
    # --- absurd timestamps
    ("ts_zero", dumps(ts=0), "invalid_ts"),
    ("ts_negative", dumps(ts=-1), "invalid_ts"),
    ("ts_seconds", dumps(ts=1_767_225_600), "invalid_ts"),
    ("ts_microseconds", dumps(ts=1_767_225_600_000_000), "invalid_ts"),
    ("ts_year_1999", dumps(ts=_ms(2000) - 1), "invalid_ts"),
    ("ts_year_2100", dumps(ts=_ms(2100)), "invalid_ts"),
    ("ts_year_2200", dumps(ts=_ms(2200)), "invalid_ts"),
    ("ts_2pow63", with_literal("ts", str(2**63).encode()), "invalid_ts"),
    ("ts_int64_min", with_literal("ts", str(-(2**63)).encode()), "invalid_ts"),
    # --- duplicate keys: orjson keeps the last value, so the record is judged by it
    ("duplicate_amount_last_negative", _G[:-1] + b',"amount":-5}', "invalid_amount"),
    ("duplicate_user_id_last_null", _G[:-1] + b',"user_id":null}', "null_key"),
    ("duplicate_ts_last_string", _G[:-1] + b',"ts":"now"}', "wrong_type"),
    # --- size
    ("oversized_by_one_byte", padded(MAX_EVENT_BYTES + 1), "oversized"),
    ("oversized_900kb", padded(900 * 1024), "oversized"),  # still under Kafka's default 1 MB message size
    ("oversized_invalid_utf8", padded(MAX_EVENT_BYTES + 1)[:-4] + b'\xff"}}', "oversized"),  # size first
]

CORPUS: list[tuple[str, bytes, str]] = _cases


def corpus_names() -> list[str]:
    return [name for name, _, _ in CORPUS]


assert len(set(corpus_names())) == len(CORPUS), "corpus case names must be unique"
