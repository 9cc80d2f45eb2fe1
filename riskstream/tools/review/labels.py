"""Verdicts to the labels topic, one label per case.

A verdict writes its label into the store's outbox in the same transaction that closes the case. The
sender sends it (keyed by ``event_id``, ``acks=all``, idempotent producer) and marks it sent with its
partition and offset. If the service died after the broker took a label but before it was marked, the
sender first looks for it on the topic (from the time of the first attempt on) and only sends it if it is
not there: a case never gets two labels.
"""

from __future__ import annotations

import sys
import threading

import orjson

from .store import Store

LOOK_BACK_MS = 60_000  # clock skew between this host and the broker's log append time


class LabelSender:
    def __init__(self, store: Store, bootstrap_servers: str, labels_topic: str, log=sys.stderr):
        self.store = store
        self.bootstrap = bootstrap_servers
        self.topic = labels_topic
        self.log = log
        self.lock = threading.Lock()
        self.producer = None
        self.stop_flag = threading.Event()
        self.wake = threading.Event()

    def get_producer(self):
        if self.producer is None:
            from kafka import KafkaProducer

            self.producer = KafkaProducer(bootstrap_servers=self.bootstrap, acks="all", enable_idempotence=True,
                                          retries=5, client_id="riskstream-review-labels")
        return self.producer

    def already_on_topic(self, event_id: str, body: dict, since_ms: int) -> tuple[int, int] | None:
        """(partition, offset) of a label with this key and body appended since ``since_ms``, if any."""
        from kafka import KafkaConsumer, TopicPartition

        c = KafkaConsumer(bootstrap_servers=self.bootstrap, isolation_level="read_committed",
                          enable_auto_commit=False, group_id=None)
        try:
            tps = [TopicPartition(self.topic, p) for p in c.partitions_for_topic(self.topic) or ()]
            if not tps:
                return None
            c.assign(tps)
            starts = c.offsets_for_times({tp: max(0, since_ms - LOOK_BACK_MS) for tp in tps})
            end = c.end_offsets(tps)
            for tp in tps:
                if starts.get(tp) is None:
                    c.seek(tp, end[tp])
                else:
                    c.seek(tp, starts[tp].offset)
            key = event_id.encode()
            while any(c.position(tp) < end[tp] for tp in tps):
                for tp, msgs in c.poll(timeout_ms=500).items():
                    for m in msgs:
                        if m.key == key and m.offset < end[tp]:
                            try:
                                if orjson.loads(m.value) == body:
                                    return tp.partition, m.offset
                            except orjson.JSONDecodeError:
                                continue
            return None
        finally:
            c.close()

    def send_pending(self, timeout_s: float = 15.0) -> int:
        """Send every label not yet marked sent; returns how many were sent (or found sent)."""
        done = 0
        with self.lock:
            for row in self.store.pending_labels():
                body = orjson.loads(row["body"])
                if row["attempted_at"] is not None:  # a previous attempt may have reached the broker
                    found = self.already_on_topic(row["event_id"], body, row["attempted_at"])
                    if found:
                        self.store.label_sent(row["case_id"], *found, found=True)
                        done += 1
                        continue
                self.store.label_attempt(row["case_id"])
                md = self.get_producer().send(self.topic, key=row["event_id"].encode(),
                                              value=row["body"].encode()).get(timeout=timeout_s)
                self.store.label_sent(row["case_id"], md.partition, md.offset)
                done += 1
        return done

    def try_send(self) -> None:
        """Send now if the broker answers; otherwise the background loop keeps trying."""
        try:
            self.send_pending()
        except Exception as e:  # the label stays in the outbox (metrics: labels_pending)
            print(f"[review] label send failed, will retry: {e}", file=self.log, flush=True)
        self.wake.set()

    def run(self, every_s: float = 5.0) -> None:
        while not self.stop_flag.is_set():
            self.wake.wait(every_s)
            self.wake.clear()
            if self.stop_flag.is_set():
                break
            try:
                self.send_pending()
            except Exception as e:
                print(f"[review] label send failed, will retry: {e}", file=self.log, flush=True)

    def stop(self) -> None:
        self.stop_flag.set()
        self.wake.set()
        if self.producer is not None:
            self.producer.close(timeout=5)
