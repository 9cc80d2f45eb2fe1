"""Decisions (and events, control messages) from Kafka into the review store, exactly once.

The consumer is assigned every partition of its topics (no consumer group: nothing is committed to Kafka)
and reads with ``isolation_level=read_committed``, so it sees only decisions whose checkpoint committed.
Each polled batch goes into the store in one transaction together with the next offset of every partition
in it; at start the consumer seeks to the stored offsets. A crash at any point either keeps a batch and its
offsets or neither: no case is lost or doubled.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass

from .store import Consumed, Store

PRUNE_EVERY_S = 60.0


@dataclass(frozen=True)
class IngestSettings:
    bootstrap_servers: str
    decisions_topic: str
    events_topic: str = ""  # '' : no event fields on case pages
    control_topic: str = ""  # '' : rule conditions only for the built-in rules
    start: str = "earliest"  # where a partition with no stored offset starts: earliest | latest
    history_days: float = 7.0
    max_poll_records: int = 500
    poll_ms: int = 100

    def roles(self) -> dict[str, str]:
        return {"decisions": self.decisions_topic, "events": self.events_topic, "control": self.control_topic}


class Ingest:
    def __init__(self, store: Store, settings: IngestSettings, log=sys.stderr):
        self.store = store
        self.s = settings
        self.log = log
        self.stop_flag = threading.Event()
        self.consumed = 0
        self.batches = 0
        self.error: BaseException | None = None

    def consumer(self):
        from kafka import KafkaConsumer

        return KafkaConsumer(bootstrap_servers=self.s.bootstrap_servers, isolation_level="read_committed",
                             enable_auto_commit=False, group_id=None, max_poll_records=self.s.max_poll_records,
                             fetch_max_wait_ms=self.s.poll_ms, client_id="riskstream-review")

    def assign(self, c, assigned: set) -> set:
        """Assign every partition of the topics (new ones too), each at its stored offset."""
        from kafka import TopicPartition

        stored = self.store.offsets()
        tps = set()
        for topic in filter(None, self.s.roles().values()):
            parts = c.partitions_for_topic(topic) or set()
            tps |= {TopicPartition(topic, p) for p in parts}
        if tps == assigned:
            return assigned
        c.assign(sorted(tps))
        fresh = [tp for tp in tps if (tp.topic, tp.partition) not in stored]
        for tp in tps:
            if (tp.topic, tp.partition) in stored:
                c.seek(tp, stored[(tp.topic, tp.partition)])
        if fresh:
            (c.seek_to_end if self.s.start == "latest" else c.seek_to_beginning)(*fresh)
        return tps

    def run(self, fail_after_batches: int | None = None) -> None:
        """Consume until :meth:`stop`. ``fail_after_batches`` (tests) fails the transaction of that batch."""
        c = self.consumer()
        try:
            assigned: set = set()
            t_assign = t_prune = 0.0
            while not self.stop_flag.is_set():
                if time.monotonic() - t_assign > (5.0 if not assigned else 30.0):
                    assigned = self.assign(c, assigned)  # new topics / partitions join
                    t_assign = time.monotonic()
                    if not assigned:
                        self.stop_flag.wait(1.0)  # the topics do not exist yet
                        continue
                batch = c.poll(timeout_ms=self.s.poll_ms)
                records = [Consumed(tp.topic, tp.partition, m.offset, m.value)
                           for tp, msgs in batch.items() for m in msgs if m.value is not None]
                nxt = {(tp.topic, tp.partition): msgs[-1].offset + 1 for tp, msgs in batch.items() if msgs}
                if nxt:
                    fail = fail_after_batches is not None and self.batches + 1 >= fail_after_batches
                    self.store.ingest(records, nxt, self.s.roles(), fail_before_commit=fail)
                    self.batches += 1
                    self.consumed += len(records)
                if time.monotonic() - t_prune > PRUNE_EVERY_S:
                    self.store.prune(int(self.s.history_days * 86_400_000))
                    t_prune = time.monotonic()
        except BaseException as e:
            self.error = e
            raise
        finally:
            c.close()

    def stop(self) -> None:
        self.stop_flag.set()
