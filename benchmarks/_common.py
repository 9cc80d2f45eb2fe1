"""What every contender of ``riskstream bench`` shares: the events, the topics and the way output is counted.

A contender (the Flink job, the plain Python loop, Quix Streams, the Flink SQL limit) reads the same
preloaded events topic from the start with ``read_committed``, writes one record per valid event to its
own output topic inside Kafka transactions, and is timed by what the broker saw: the output topic stamps
records with log-append time, so ``eps = (records - 1) / (last append - first append)`` is the sustained
rate of committed output, whatever the contender's start-up cost. Output topics are read back with
``read_committed``, so uncommitted or aborted records never count.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

from riskstream.topics import APPEND_TIME, TopicSpec, ensure_topics


@dataclass(frozen=True)
class OutputSpan:
    records: int
    distinct_ids: int
    first_append_ms: int | None
    last_append_ms: int | None

    @property
    def eps(self) -> float | None:
        if self.records < 2 or self.last_append_ms == self.first_append_ms:
            return None
        return (self.records - 1) / ((self.last_append_ms - self.first_append_ms) / 1000)


def make_topic(bootstrap: str, name: str, partitions: int) -> None:
    ensure_topics(bootstrap, [TopicSpec(name, partitions, APPEND_TIME)])


def read_output(bootstrap: str, topic: str, expected: int, deadline_s: float, id_field: bytes = b'"event_id":"',
                log=sys.stderr) -> OutputSpan:
    """Read ``topic`` (read_committed) from the start until ``expected`` records arrived or ``deadline_s``
    passed without progress; count records, distinct event ids and the span of append times."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed", enable_auto_commit=False,
                      auto_offset_reset="earliest", consumer_timeout_ms=1000, fetch_max_bytes=64 << 20)
    try:
        parts = None
        t0 = time.monotonic()
        while not parts:
            parts = c.partitions_for_topic(topic)
            if time.monotonic() - t0 > 30:
                raise TimeoutError(f"topic {topic} has no partitions")
            if not parts:
                time.sleep(0.2)  # polling interval
        c.assign([TopicPartition(topic, p) for p in sorted(parts)])
        c.seek_to_beginning()
        n, ids, first, last = 0, set(), None, None
        last_progress = time.monotonic()
        while n < expected and time.monotonic() - last_progress < deadline_s:
            batch = c.poll(timeout_ms=500, max_records=50_000)
            for recs in batch.values():
                for r in recs:
                    n += 1
                    ts = r.timestamp
                    first = ts if first is None or ts < first else first
                    last = ts if last is None or ts > last else last
                    v = r.value
                    i = v.find(id_field)
                    if i >= 0:
                        j = i + len(id_field)
                        ids.add(v[j:v.index(b'"', j)])
            if batch:
                last_progress = time.monotonic()
        if n < expected:
            print(f"[bench] {topic}: {n} of {expected} records after {deadline_s:.0f}s without progress",
                  file=log, flush=True)
        return OutputSpan(n, len(ids), first, last)
    finally:
        c.close()
