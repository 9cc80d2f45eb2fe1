"""Offline replay: the job's feature computation over a list of events, in the given (arrival) order.

This is the *same* stage chain the streaming job runs per key (``udfs.chain``), with plain dicts as the
keyed stores and the job's key-expiry rule; training sets and audits come from here, so there is no
second implementation.
"""

from __future__ import annotations

from typing import Iterable, Iterator

from .chain import DEFAULT_DEDUP_HORIZON_MS, DEFAULT_OUT_OF_ORDERNESS_MS, Chain
from .events import DUPLICATE_EVENT_ID, OPTIONAL_FIELDS, Event
from .features import FEATURE_NAMES
from .windows import DEFAULT_LATENESS_MS, event_values


class FeatureReplay:
    """The job's entity stages (``udfs.chain.Chain``) over in-memory stores, returning whole vectors."""

    def __init__(self, allowed_lateness_ms: int = DEFAULT_LATENESS_MS,
                 dedup_horizon_ms: int = DEFAULT_DEDUP_HORIZON_MS,
                 out_of_orderness_ms: int = DEFAULT_OUT_OF_ORDERNESS_MS):
        self.chain = Chain(allowed_lateness_ms, dedup_horizon_ms, out_of_orderness_ms)

    def step(self, ev: Event) -> tuple[list[float], bool] | None:
        """Feature vector (``FEATURE_NAMES`` order) of one event and whether it was late for a key, or
        None for a duplicate event id, which the job dead-letters (``udfs.dedup``)."""
        res = self.chain.process(ev)
        if res is None:
            return None
        return event_values(ev) + res[0], res[1]


def replay(events: Iterable[Event], allowed_lateness_ms: int = DEFAULT_LATENESS_MS,
           dedup_horizon_ms: int = DEFAULT_DEDUP_HORIZON_MS,
           out_of_orderness_ms: int = DEFAULT_OUT_OF_ORDERNESS_MS) -> Iterator[tuple[Event, list[float], bool]]:
    """(event, features, late) per event the job would score; duplicate event ids are skipped."""
    r = FeatureReplay(allowed_lateness_ms, dedup_horizon_ms, out_of_orderness_ms)
    for ev in events:
        res = r.step(ev)
        if res is not None:
            yield ev, res[0], res[1]


def read_events(path) -> Iterator[tuple[int, bytes | dict]]:
    """Records of a JSON-lines (``.jsonl``/``.json``) or Parquet (``.parquet``) file, in file order. A null
    optional column (extras, payment_ref) in Parquet means the field is absent."""
    from pathlib import Path

    p = Path(path)
    if p.suffix == ".parquet":
        import pyarrow.parquet as pq

        n = 0
        for batch in pq.ParquetFile(p).iter_batches(batch_size=10_000):
            for row in batch.to_pylist():
                n += 1
                yield n, {k: v for k, v in row.items() if v is not None or k not in OPTIONAL_FIELDS}
        return
    with open(p, "rb") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip(b"\r\n")
            if line:
                yield n, line


def replay_file(input_path, output_path, allowed_lateness_ms: int = DEFAULT_LATENESS_MS,
                dedup_horizon_ms: int = DEFAULT_DEDUP_HORIZON_MS,
                out_of_orderness_ms: int = DEFAULT_OUT_OF_ORDERNESS_MS) -> dict:
    """Write one JSON line per valid event: ``event_id``, ``late`` and every feature by name. Records the
    job would dead-letter are skipped and counted by reason, as the job would route them."""
    import orjson

    from .events import Rejection, parse_event

    r = FeatureReplay(allowed_lateness_ms, dedup_horizon_ms, out_of_orderness_ms)
    stats = {"events": 0, "rejected": {}, "late": 0}
    with open(output_path, "wb") as out:
        for _, rec in read_events(input_path):
            ev = parse_event(rec if isinstance(rec, bytes) else orjson.dumps(rec))
            if isinstance(ev, Rejection):
                stats["rejected"][ev.reason] = stats["rejected"].get(ev.reason, 0) + 1
                continue
            res = r.step(ev)
            if res is None:
                stats["rejected"][DUPLICATE_EVENT_ID] = stats["rejected"].get(DUPLICATE_EVENT_ID, 0) + 1
                continue
            vec, late = res
            stats["events"] += 1
            stats["late"] += late
            out.write(orjson.dumps({"event_id": ev.event_id, "late": late, **dict(zip(FEATURE_NAMES, vec))}))
            out.write(b"\n")
    return stats
