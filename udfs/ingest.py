"""Your own data into the event contract: JSON lines, CSV or Parquet, read through a declared mapping.

The offline commands (``riskstream replay``, ``train``, ``score``) read files with :func:`load_input`. A
*mapping* says how a file's columns become the contract's fields (``udfs.events``):

- ``fields``: contract field -> source column (``user_id = "customer_id"``); one column may feed several
  fields. ``constants``: contract fields the data lacks (``currency = "EUR"``).
- ``ts``: the event-time column and its ``unit``: ``ms``, ``s``, ``us``, ``ns`` (numbers, integer or
  float) or ``datetime`` (ISO-8601 text, or a Parquet timestamp / date); ``timezone`` for datetimes
  without an offset (default UTC); optional ``format`` (``strptime``) for non-ISO text. A Parquet
  timestamp column is read as a time whatever the unit says.
- ``event_types``: their value -> a contract event type. A value that is not listed is rejected
  (``unknown_event_type``). Without the table, values must already be contract event types.
- ``label``: ``column`` with 0/1, true/false or yes/no (any case; empty means unlabelled), and an optional
  ``scenario_column``; ``scenarios`` renames scenario values.
- ``extras``: ``"ignore"`` (default with a mapping: other columns are dropped), ``"all"`` (kept under
  ``extras``), a list of columns to keep, or ``"reject"`` (an unknown column rejects the record, as the
  job does).
- ``csv_delimiter`` (default ``,``).

Ids may be integers (stringified; integral floats too, as CSV or Parquet often carry them); amounts may be
numeric text. Every mapped record is then validated by the job's own parser (:func:`udfs.events.parse_event`),
so what passes here is what the job would accept.

Without a mapping, JSON lines go to the job's parser byte for byte, and CSV / Parquet use the identity
mapping: columns named as the contract's fields, ts in epoch ms, unknown columns rejected.

Every refused record becomes a reject with its row number (1-based data record), its line number in a
text file, the reason code, the detail and the record itself (:meth:`Input.write_rejects`).
"""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass, field
from functools import cached_property
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import orjson

from .labels import NO_LABELS
from .events import (EVENT_TYPES, INVALID_JSON, INVALID_TS, MISSING_FIELD, NOT_AN_OBJECT, OPTIONAL_KEYS,
                     REQUIRED_FIELDS, UNKNOWN_EVENT_TYPE, WRONG_TYPE, Event, Rejection, parse_event)

TS_UNITS = {"ms": 1, "s": 1000, "us": None, "ns": None, "datetime": None}
EXTRAS_POLICIES = ("ignore", "all", "reject")
CONTRACT_FIELDS = (*REQUIRED_FIELDS, *OPTIONAL_KEYS)
ORDERS = ("file", "sort", "refuse")
DEFAULT_MAX_REJECT_SHARE = 0.01
# reason codes of the mapping stage (the job's parser adds its own, udfs.events.PARSE_REASON_CODES)
INVALID_LABEL = "invalid_label"
INVALID_CSV = "invalid_csv"
DUPLICATE = "duplicate_event_id"
FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet",
           ".pq": "parquet"}
_TRUE = frozenset({"1", "true", "t", "yes", "y"})
_FALSE = frozenset({"0", "false", "f", "no", "n"})
_INT = re.compile(r"[+-]?\d+")
MAX_REJECT_RECORD_CHARS = 2000


class IngestError(ValueError):
    """A mapping or an input file that cannot be used at all: the message says what to fix."""


# --------------------------------------------------------------------------------------------- mapping


@dataclass(frozen=True)
class Mapping:
    """How a source record becomes a contract event (see the module docstring)."""

    fields: dict[str, str] = field(default_factory=lambda: {f: f for f in CONTRACT_FIELDS})
    constants: dict[str, Any] = field(default_factory=dict)
    ts_unit: str = "ms"
    timezone: str = "UTC"
    ts_format: str | None = None
    event_types: dict[str, str] | None = None
    label_column: str | None = None
    scenario_column: str | None = None
    scenarios: dict[str, str] = field(default_factory=dict)
    extras: str | tuple[str, ...] = "reject"
    csv_delimiter: str = ","
    declared: bool = False  # False: the identity mapping (no mapping given)

    @staticmethod
    def from_dict(d: dict, where: str = "mapping") -> "Mapping":
        """A mapping from its JSON/TOML document (validated: a mistake is an :class:`IngestError`)."""
        known = {"fields", "constants", "ts", "event_types", "label", "extras", "csv_delimiter"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise IngestError(f"{where}: unknown keys {unknown}; a mapping has {sorted(known)}")
        fields = _str_table(d.get("fields", {}), f"{where}: fields")
        constants = dict(d.get("constants", {}))
        for name in (*fields, *constants):
            if name not in CONTRACT_FIELDS:
                raise IngestError(f"{where}: {name!r} is not a contract field ({', '.join(CONTRACT_FIELDS)})")
        both = sorted(set(fields) & set(constants))
        if both:
            raise IngestError(f"{where}: {both} are given both a column and a constant")
        ts = d.get("ts", {})
        if isinstance(ts, str):
            ts = {"column": ts}
        if not isinstance(ts, dict):
            raise IngestError(f"{where}: ts must be a table (column, unit, timezone, format)")
        bad = sorted(set(ts) - {"column", "unit", "timezone", "format"})
        if bad:
            raise IngestError(f"{where}: ts has unknown keys {bad} (column, unit, timezone, format)")
        if "column" in ts:
            if "ts" in constants:
                raise IngestError(f"{where}: ts is given both a column and a constant")
            fields["ts"] = str(ts["column"])
        unit = str(ts.get("unit", "ms"))
        if unit not in TS_UNITS:
            raise IngestError(f"{where}: ts unit {unit!r}: use one of {', '.join(TS_UNITS)}")
        tz = str(ts.get("timezone", "UTC"))
        _zone(tz, where)
        fmt = ts.get("format")
        for name in REQUIRED_FIELDS:
            if name not in fields and name not in constants:
                fields[name] = name  # a column named as the field
        ets = d.get("event_types")
        if ets is not None:
            ets = _str_table(ets, f"{where}: event_types")
            wrong = sorted({v for v in ets.values() if v not in EVENT_TYPES})
            if wrong:
                raise IngestError(f"{where}: event_types maps to {wrong}, which are not contract event types "
                                  f"({', '.join(EVENT_TYPES)})")
        label = d.get("label", {})
        if isinstance(label, str):
            label = {"column": label}
        if not isinstance(label, dict) or set(label) - {"column", "scenario_column", "scenarios"}:
            raise IngestError(f"{where}: label is a table with column, scenario_column, scenarios")
        extras = d.get("extras", "ignore")
        if isinstance(extras, list):
            extras = tuple(str(c) for c in extras)
        elif extras not in EXTRAS_POLICIES:
            raise IngestError(f"{where}: extras is one of {EXTRAS_POLICIES} or a list of columns to keep")
        delim = str(d.get("csv_delimiter", ","))
        if len(delim) != 1:
            raise IngestError(f"{where}: csv_delimiter is one character")
        return Mapping(fields=fields, constants=constants, ts_unit=unit, timezone=tz,
                       ts_format=None if fmt is None else str(fmt), event_types=ets,
                       label_column=label.get("column"), scenario_column=label.get("scenario_column"),
                       scenarios=_str_table(label.get("scenarios", {}), f"{where}: label.scenarios"),
                       extras=extras, csv_delimiter=delim, declared=True)

    @staticmethod
    def load(path: str | Path | None = None, overrides: dict | None = None) -> "Mapping | None":
        """The mapping of a ``.json`` or ``.toml`` file, with ``overrides`` (same shape, from flags) on top;
        None when neither is given (the identity mapping applies)."""
        doc: dict = {}
        if path is not None:
            p = Path(path)
            if not p.is_file():
                raise IngestError(f"mapping {p} does not exist")
            try:
                if p.suffix == ".toml":
                    import tomllib  # Python 3.11+

                    doc = tomllib.loads(p.read_text(encoding="utf-8"))
                else:
                    doc = orjson.loads(p.read_bytes())
            except ImportError:
                raise IngestError(f"mapping {p.name}: TOML needs Python 3.11; write it as JSON") from None
            except Exception as e:  # tomllib.TOMLDecodeError, orjson.JSONDecodeError
                raise IngestError(f"mapping {p.name} is not valid {p.suffix[1:].upper() or 'JSON'}: {e}") from None
            if not isinstance(doc, dict):
                raise IngestError(f"mapping {p.name}: the top level must be an object / table")
        if overrides:
            doc = _merge(doc, overrides)
        if path is None and not overrides:
            return None
        return Mapping.from_dict(doc, Path(path).name if path is not None else "mapping flags")

    @cached_property
    def columns(self) -> frozenset[str]:
        """Every source column this mapping reads."""
        cols = set(self.fields.values())
        cols |= {c for c in (self.label_column, self.scenario_column) if c}
        return frozenset(cols)


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _str_table(t, where: str) -> dict[str, str]:
    if not isinstance(t, dict):
        raise IngestError(f"{where} must be a table of names")
    return {str(k): str(v) for k, v in t.items()}


def _zone(name: str, where: str = "mapping"):
    if name.upper() == "UTC":
        return timezone.utc
    try:
        from zoneinfo import ZoneInfo

        return ZoneInfo(name)
    except Exception:
        raise IngestError(f"{where}: unknown timezone {name!r} (an IANA name such as Europe/Paris, or UTC)") \
            from None


# --------------------------------------------------------------------------------------------- values


def json_objects(path: str | Path) -> Iterator[tuple[int, dict]]:
    """``(line number, object)`` per non-empty line of a JSON-lines file (labels files); IngestError naming
    the line for a line that is not a JSON object."""
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError as e:
                raise IngestError(f"line {n}: not JSON ({e})") from None
            if not isinstance(obj, dict):
                raise IngestError(f"line {n}: a label is a JSON object")
            yield n, obj


def training_label(obj: dict) -> tuple[str, bool]:
    """(event id as text, fraud) of a training label (``event_id`` string or integer, ``fraud`` true/false,
    0/1 or yes/no; a label in the labels topic's spelling, ``label`` fraud/legit, is read too); ValueError
    says what is wrong."""
    eid = obj.get("event_id")
    if isinstance(eid, bool) or not isinstance(eid, (str, int)):
        raise ValueError("a label needs an event_id (string or integer)")
    flag = obj.get("fraud") if "fraud" in obj else (obj.get("label") == "fraud" if obj.get("label") in ("fraud", "legit")
                                                      else None)
    fraud = parse_label(flag)
    if fraud is None:
        raise ValueError("fraud is missing or empty (true/false, 0/1, yes/no)")
    return str(eid), fraud


def parse_label(v) -> bool | None:
    """A fraud label: True / False from a boolean, 0 / 1, or the words true/false, yes/no, t/f, y/n (any
    case); None for no label (null, empty text, NaN). Raises ValueError for anything else."""
    if v is None:
        return None
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)):
        if isinstance(v, float) and math.isnan(v):
            return None
        if v in (0, 1):
            return bool(v)
        raise ValueError(f"label {v!r} is not 0 or 1")
    if isinstance(v, str):
        s = v.strip().lower()
        if not s:
            return None
        if s in _TRUE:
            return True
        if s in _FALSE:
            return False
        try:
            f = float(s)
        except ValueError:
            f = None
        if f in (0.0, 1.0):
            return bool(f)
        raise ValueError(f"label {v[:40]!r} is not 0/1, true/false or yes/no")
    raise ValueError(f"label of type {type(v).__name__} is not 0/1, true/false or yes/no")


def to_epoch_ms(v, unit: str = "ms", tz: str = "UTC", fmt: str | None = None) -> int:
    """Event time in epoch ms from a number in ``unit``, numeric text, a datetime / date (naive ones are
    in ``tz``) or ISO-8601 text (``unit`` datetime; ``fmt`` for ``strptime`` text). Raises ValueError."""
    if isinstance(v, bool):
        raise ValueError(f"ts is a boolean ({v})")
    if isinstance(v, (datetime, date)):
        return _dt_ms(v, tz)
    if isinstance(v, str):
        s = v.strip()
        if not s:
            raise ValueError("ts is empty")
        if unit == "datetime":
            try:
                dt = datetime.strptime(s, fmt) if fmt else datetime.fromisoformat(s)
            except ValueError:
                want = f"format {fmt!r}" if fmt else "ISO-8601 (2026-01-31 14:05:00, optionally +01:00 or Z)"
                raise ValueError(f"ts {s[:40]!r} is not a time in {want}") from None
            return _dt_ms(dt, tz)
        if _INT.fullmatch(s):
            v = int(s)
        else:
            try:
                v = float(s)
            except ValueError:
                raise ValueError(f"ts {s[:40]!r} is not a number of {unit} (declare unit = \"datetime\" for "
                                 "times as text)") from None
    if not isinstance(v, (int, float)):
        raise ValueError(f"ts of type {type(v).__name__} is not a number or a time")
    if unit == "datetime":
        raise ValueError(f"ts {v!r} is a number but the mapping declares unit datetime (use ms, s, us or ns)")
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"ts {v!r} is not finite")
        scale = {"ms": 1.0, "s": 1000.0, "us": 1e-3, "ns": 1e-6}[unit]
        return int(round(v * scale))
    if unit == "ms":
        return v
    if unit == "s":
        return v * 1000
    return v // (1000 if unit == "us" else 1_000_000)


def _dt_ms(v, tz: str) -> int:
    if not isinstance(v, datetime):  # a date: its midnight
        v = datetime(v.year, v.month, v.day)
    if v.tzinfo is None:
        v = v.replace(tzinfo=_zone(tz))
    return (v - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(milliseconds=1)


def _id_text(v):
    """Integer ids as their decimal text (integral floats too); anything else unchanged."""
    if isinstance(v, bool):
        return v
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return v


def _number(v):
    if isinstance(v, str):
        s = v.strip()
        try:
            return int(s) if _INT.fullmatch(s) else float(s)
        except ValueError:
            return v
    return v


def _absent(v) -> bool:
    return v is None or (isinstance(v, str) and not v.strip()) or (isinstance(v, float) and math.isnan(v))


class Mapped(NamedTuple):
    """A mapped record: the event, its fraud label (None: unlabelled) and scenario."""

    event: Event
    fraud: bool | None
    scenario: str | None


def map_record(rec: dict, m: Mapping) -> Mapped | Rejection:
    """One source record (column -> value) as a contract event through the mapping, validated by the job's
    parser. Never raises."""
    out: dict[str, Any] = {}
    for name, col in m.fields.items():
        if col not in rec or _absent(rec[col]):
            if name in REQUIRED_FIELDS:
                return Rejection(MISSING_FIELD, f"{name} (column {col!r} is absent or empty)"
                                 if col != name else name)
            continue
        v = rec[col]
        if name in ("event_id", "user_id", "device_id", "ip", *OPTIONAL_KEYS):
            v = _id_text(v)
        elif name == "amount":
            v = _number(v)
        elif name == "ts":
            try:
                v = to_epoch_ms(v, m.ts_unit, m.timezone, m.ts_format)
            except ValueError as e:
                return Rejection(INVALID_TS, f"column {col!r}: {e}")
        elif name == "event_type":
            v = _id_text(v)
            if m.event_types is not None:
                if not isinstance(v, str) or v not in m.event_types:
                    return Rejection(UNKNOWN_EVENT_TYPE, f"column {col!r} value {str(v)[:64]!r} is not in the "
                                     f"mapping's event_types ({', '.join(sorted(m.event_types))[:300]})")
                v = m.event_types[v]
        out[name] = v
    for name, v in m.constants.items():
        out[name] = v
    if isinstance(out.get("event_type"), str) and m.event_types is None and out["event_type"] not in EVENT_TYPES:
        return Rejection(UNKNOWN_EVENT_TYPE, f"{out['event_type'][:64]!r} is not a contract event type "
                         f"({', '.join(EVENT_TYPES)}); declare event_types in a mapping")
    # an optional key on an event type that cannot carry it (a card column on a login row) is no key
    for name, types in OPTIONAL_KEYS.items():
        if name in out and types is not None and out.get("event_type") not in types and m.declared:
            del out[name]
    unknown = [c for c in rec if c not in m.columns]
    if m.extras == "reject":
        extra = [c for c in unknown if c != "extras"]
        if "extras" in rec and not _absent(rec["extras"]):
            x = rec["extras"]
            if isinstance(x, str):  # a CSV cell: JSON text
                try:
                    x = orjson.loads(x)
                except orjson.JSONDecodeError:
                    pass
            out["extras"] = x
        if extra:
            return Rejection("unknown_field", ",".join(sorted(extra))[:200] + " (declare a mapping: the label "
                             "column, extras = \"ignore\" or a list of columns to keep)")
    elif m.extras == "all":
        kept = {c: rec[c] for c in unknown if not _absent(rec[c])}
        if kept:
            out["extras"] = kept
    elif m.extras != "ignore":
        kept = {c: rec[c] for c in m.extras if c in rec and not _absent(rec[c])}
        if kept:
            out["extras"] = kept
    fraud, scen = None, None
    if m.label_column:
        try:
            fraud = parse_label(rec.get(m.label_column))
        except ValueError as e:
            return Rejection(INVALID_LABEL, f"column {m.label_column!r}: {e}")
        if fraud is not None:
            scen = "normal"
            if fraud:
                raw = rec.get(m.scenario_column) if m.scenario_column else None
                raw = "fraud" if _absent(raw) else str(_id_text(raw))
                scen = m.scenarios.get(raw, raw)
    try:
        raw = orjson.dumps(out, default=str)
    except (TypeError, orjson.JSONEncodeError) as e:
        return Rejection(WRONG_TYPE, f"a value cannot be encoded: {e}"[:200])
    ev = parse_event(raw)
    if isinstance(ev, Rejection):
        return ev
    return Mapped(ev, fraud, scen)


# --------------------------------------------------------------------------------------------- readers


class Source(NamedTuple):
    """A source record: 1-based data row, line in a text file (None for Parquet), the record (bytes of a
    JSON line, a dict of a CSV or Parquet row, or a Rejection for a row that cannot be read)."""

    row: int
    line: int | None
    rec: bytes | dict | Rejection
    text: str | None = None  # the raw line of a CSV record (for the rejects file)


def file_format(path: str | Path) -> str:
    p = Path(path)
    fmt = FORMATS.get(p.suffix.lower())
    if fmt is None:
        raise IngestError(f"{p.name}: unknown format; use .jsonl/.json (JSON lines), .csv or .parquet")
    return fmt


def read_source(path: str | Path, delimiter: str = ",") -> Iterator[Source]:
    """Records of a JSON-lines, CSV or Parquet file in file order."""
    p = Path(path)
    if not p.is_file():
        raise IngestError(f"{p} does not exist")
    fmt = file_format(p)
    if fmt == "parquet":
        yield from _read_parquet(p)
    elif fmt == "csv":
        yield from _read_csv(p, delimiter)
    else:
        row = 0
        with open(p, "rb") as f:
            for n, line in enumerate(f, 1):
                line = line.rstrip(b"\r\n")
                if line.strip():
                    row += 1
                    yield Source(row, n, line)


def _read_parquet(p: Path) -> Iterator[Source]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(p)
    except Exception as e:
        raise IngestError(f"{p.name} is not a readable Parquet file: {e}") from None
    n = 0
    for batch in pf.iter_batches(batch_size=10_000):
        cols = {}
        for name, col in zip(batch.schema.names, batch.columns):
            t = col.type
            if pa.types.is_timestamp(t) and t.unit == "ns":  # nanoseconds do not fit a datetime: truncate to us
                col = col.cast(pa.timestamp("us", t.tz), safe=False)
            cols[name] = col.to_pylist()
        names = list(cols)
        for i in range(batch.num_rows):
            n += 1
            yield Source(n, None, {k: cols[k][i] for k in names})


def _read_csv(p: Path, delimiter: str) -> Iterator[Source]:
    with open(p, "r", encoding="utf-8-sig", newline="") as f:
        lines = _LineCounter(f)
        reader = csv.reader(lines, delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise IngestError(f"{p.name} line 1: unreadable CSV header: {e}") from None
        header = [h.strip() for h in header]
        dup = sorted({h for h in header if header.count(h) > 1})
        if dup:
            raise IngestError(f"{p.name}: the header repeats columns {dup}")
        row = 0
        while True:
            start = lines.n + 1
            lines.text = []
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                row += 1
                yield Source(row, start, Rejection(INVALID_CSV, str(e)[:200]), "".join(lines.text)[:2000])
                continue
            except UnicodeDecodeError as e:
                raise IngestError(f"{p.name} near line {start}: not UTF-8 ({e})") from None
            if not cells or (len(cells) == 1 and not cells[0].strip()):
                continue  # a blank line
            row += 1
            text = "".join(lines.text).rstrip("\r\n")
            if len(cells) != len(header):
                yield Source(row, start, Rejection(INVALID_CSV, f"{len(cells)} fields, the header has "
                                                                f"{len(header)}"), text)
                continue
            yield Source(row, start, dict(zip(header, cells)), text)


class _LineCounter:
    """Lines of a text file, counted (the csv module reads a quoted field's newlines as one record)."""

    def __init__(self, f: io.TextIOBase):
        self.f, self.n, self.text = f, 0, []

    def __iter__(self):
        return self

    def __next__(self) -> str:
        line = next(self.f)
        self.n += 1
        self.text.append(line)
        return line


# --------------------------------------------------------------------------------------------- input


class Loaded(NamedTuple):
    row: int
    line: int | None
    event: Event
    fraud: bool | None
    scenario: str | None


@dataclass
class Input:
    """The valid events of a file in replay order, its rejects, and what was counted on the way."""

    path: Path
    format: str
    events: list[Loaded]
    rejects: list[dict]
    records: int
    order: str
    out_of_order: int  # rows whose ts is below an earlier row's (file order)
    labelled: bool  # the mapping declares a label column
    mapping: Mapping | None

    def rejected(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.rejects:
            out[r["reason"]] = out.get(r["reason"], 0) + 1
        return out

    def refused(self) -> int:
        """Records refused as input (parse or mapping); duplicate event ids are the job's dedup, not here."""
        return sum(1 for r in self.rejects if r["reason"] != DUPLICATE)

    def reject(self, loaded: Loaded, reason: str, detail: str) -> None:
        self.rejects.append({"row": loaded.row, "line": loaded.line, "reason": reason, "detail": detail,
                             "record": loaded.event.to_dict()})

    def write_rejects(self, path: str | Path) -> None:
        """One JSON line per reject: row, line, reason, detail, record (as read, truncated), by row."""
        with open(path, "wb") as f:
            for r in sorted(self.rejects, key=lambda r: r["row"]):
                f.write(orjson.dumps(r, default=str) + b"\n")

    def verdict(self, max_share: float = DEFAULT_MAX_REJECT_SHARE) -> str | None:
        """Why the input is unusable (None if usable): no records, every record refused, or a refused share
        above ``max_share``."""
        if self.records == 0:
            return f"{self.path.name} holds no records"
        bad = self.refused()
        if bad == self.records:
            return f"every one of the {self.records} records of {self.path.name} was rejected"
        if bad / self.records > max_share:
            return (f"{bad} of {self.records} records ({100 * bad / self.records:.2f} %) were rejected, more than "
                    f"the {100 * max_share:g} % allowed (--max-reject-share)")
        return None

    def summary(self) -> dict:
        return {"input": self.path.name, "format": self.format, "records": self.records,
                "events": len(self.events), "rejected": self.rejected(), "order": self.order,
                "out_of_order": self.out_of_order}


def count_out_of_order(ts: list[int]) -> int:
    """Rows whose event time is below the largest event time of the rows before them."""
    n, top = 0, None
    for t in ts:
        if top is not None and t < top:
            n += 1
        elif top is None or t > top:
            top = t
    return n


def load_input(path: str | Path, mapping: Mapping | None = None, order: str = "file") -> Input:
    """Read, map and validate every record of a file, then order the valid events: ``file`` (file order,
    as an arrival order), ``sort`` (by event time; ties keep file order) or ``refuse`` (an
    :class:`IngestError` with the count if any row is out of event-time order)."""
    if order not in ORDERS:
        raise IngestError(f"order {order!r}: use one of {ORDERS}")
    p = Path(path)
    fmt = file_format(p)
    m = mapping if mapping is not None else (Mapping() if fmt != "jsonl" else None)
    events: list[Loaded] = []
    rejects: list[dict] = []
    records = 0
    for src in read_source(p, m.csv_delimiter if m else ","):
        records += 1
        rec = src.rec
        res: Mapped | Rejection
        if isinstance(rec, Rejection):
            res = rec
        elif m is None:
            ev = parse_event(rec)
            res = ev if isinstance(ev, Rejection) else Mapped(ev, None, None)
        else:
            if isinstance(rec, bytes):
                try:
                    rec = orjson.loads(rec)
                except orjson.JSONDecodeError as e:
                    rec = Rejection(INVALID_JSON, str(e)[:200])
                if isinstance(rec, Rejection):
                    res = rec
                elif not isinstance(rec, dict):
                    res = Rejection(NOT_AN_OBJECT, f"top level is {type(rec).__name__}, not an object")
                else:
                    res = map_record(rec, m)
            else:
                res = map_record(rec, m)
        if isinstance(res, Rejection):
            rejects.append({"row": src.row, "line": src.line, "reason": res.reason, "detail": res.detail,
                            "record": _shown(src)})
        else:
            events.append(Loaded(src.row, src.line, res.event, res.fraud, res.scenario))
    ooo = count_out_of_order([e.event.ts for e in events])
    if order == "refuse" and ooo:
        raise IngestError(f"{p.name}: {ooo} of {len(events)} valid events are out of event-time order (ts below "
                          "an earlier row's); sort the file, or pass --order sort to replay it by event time")
    if order == "sort":
        events.sort(key=lambda e: e.event.ts)  # stable: ties keep file order
    return Input(p, fmt, events, rejects, records, order, ooo, bool(m and m.label_column), mapping)


def _shown(src: Source):
    """The record as the rejects file shows it: the line's text, or the row's values."""
    if src.text is not None:
        return src.text[:MAX_REJECT_RECORD_CHARS]
    if isinstance(src.rec, bytes):
        return src.rec[:MAX_REJECT_RECORD_CHARS].decode("utf-8", "replace")
    if isinstance(src.rec, dict):
        return {k: v if isinstance(v, (int, float, bool)) or v is None else str(v)[:200]
                for k, v in src.rec.items()}
    return None


# --------------------------------------------------------------------------------------------- times


def parse_when(text: str, what: str = "time") -> int:
    """Epoch ms of ``YYYY-MM-DD`` (midnight UTC) or an ISO-8601 time (no offset: UTC). Raises IngestError."""
    try:
        dt = datetime.fromisoformat(text.strip())
    except ValueError:
        raise IngestError(f"{what} {text!r}: give a date (2026-01-31) or an ISO-8601 time") from None
    return _dt_ms(dt, "UTC")


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|min|h|d|w)?")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "min": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


def parse_label_delay(text: str | None, what: str = "--label-delay") -> int | str | None:
    """``--label-delay``: None (unset), ``udfs.labels.NO_LABELS`` ("none"), or milliseconds (``7d``)."""
    if text is None:
        return None
    if text.strip().lower() == NO_LABELS:
        return NO_LABELS
    return parse_duration(text, what)


def parse_duration(text: str, what: str = "duration") -> int:
    """Milliseconds of ``7d``, ``12h``, ``30m``, ``45s``, ``250ms``, ``1w`` (a bare number: days)."""
    mt = _DURATION.fullmatch(text.strip())
    if not mt:
        raise IngestError(f"{what} {text!r}: give a number with a unit, e.g. 7d, 12h, 30m")
    return int(round(float(mt.group(1)) * _UNIT_MS[mt.group(2) or "d"]))
