"""Small kafka-python helpers shared by generate, consume and demo."""

from __future__ import annotations

import sys
import time
from datetime import datetime, timezone
from typing import Callable, Iterable

import orjson

from .generator import Labelled


def produce(bootstrap: str, topic: str, records: Iterable[Labelled], rate: float | None = None,
            total: int | None = None, progress: Callable[[int], None] | None = None) -> int:
    """Send records (keyed by user) at up to ``rate`` per second; return how many were acknowledged."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, retries=5,
                             enable_idempotence=True)
    sent = 0
    t0 = time.monotonic()
    try:
        for rec in records:
            value = rec.raw if rec.raw is not None else orjson.dumps(rec.event)
            producer.send(topic, key=rec.key.encode(), value=value)
            sent += 1
            if rate:
                ahead = sent / rate - (time.monotonic() - t0)
                if ahead > 0.002:
                    time.sleep(ahead)  # pacing to the requested rate
            if progress and sent % 1000 == 0:
                progress(sent)
        producer.flush(timeout=60)
    finally:
        producer.close(timeout=10)
    if progress:
        progress(sent)
    return sent


def progress_printer(total: int | None, what: str, stream=sys.stderr, every_s: float = 2.0):
    state = {"t": 0.0, "t0": time.monotonic()}

    def show(n: int) -> None:
        now = time.monotonic()
        if now - state["t"] >= every_s or (total and n >= total):
            state["t"] = now
            rate = n / max(now - state["t0"], 1e-9)
            pct = f" ({100 * n / total:.0f}%)" if total else ""
            print(f"[{what}] {n}{'/' + str(total) if total else ''}{pct} at {rate:,.0f}/s", file=stream, flush=True)

    return show


def parse_time(text: str | None) -> int | None:
    """A time given on the command line (the ends of a topic range, by record timestamp): epoch milliseconds,
    or an ISO-8601 time (``2026-11-21T09:00:00+00:00``; no zone means UTC)."""
    if text is None or text == "":
        return None
    if text.isdigit():
        return int(text)
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither epoch milliseconds nor an ISO-8601 time") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp() * 1000)
