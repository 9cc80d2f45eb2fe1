"""One labels topic, one review store: two review services with different stores on one labels topic would
each give the same event its own verdict and label, so the second is refused.

Each service joins the consumer group ``riskstream-review.<labels topic>`` with ``client_id``
``riskstream-review.<store id>`` (the store's identity, made once in its ``meta`` table) and stays a
member while it runs (a thread keeps polling; a killed service leaves it after the session timeout, 10 s).
Before joining, and once joined, it describes the group: a member with another store id means another store
sends labels to this topic, and this service refuses to run. Services on one store (several hosts on one
PostgreSQL database) share the id and run side by side; their senders share the transactional id.
"""

from __future__ import annotations

import threading
import time

GROUP_PREFIX = "riskstream-review."
SESSION_TIMEOUT_MS = 10_000


class ClaimRefused(ValueError):
    pass


class Claim:
    def __init__(self, bootstrap: str, labels_topic: str, store_id: str, store_url: str, timeout_s: float = 20.0):
        self.bootstrap, self.topic, self.store_id, self.store_url = bootstrap, labels_topic, store_id, store_url
        self.group = GROUP_PREFIX + labels_topic
        self.client_id = GROUP_PREFIX + store_id
        self.timeout_s = timeout_s
        self.held = False
        self.refused: str | None = None
        self.joined = threading.Event()
        self.stop_flag = threading.Event()
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()

    def others(self) -> list[str]:
        """client ids of the group's members from other stores."""
        from kafka import KafkaAdminClient
        from kafka.errors import CoordinatorLoadInProgressError, CoordinatorNotAvailableError

        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=int(self.timeout_s * 1000))
        t0 = time.monotonic()
        try:
            while True:
                try:
                    info = admin.describe_groups([self.group]).get(self.group) or {}
                    break
                except (CoordinatorNotAvailableError, CoordinatorLoadInProgressError):
                    # a fresh broker creates its group offsets topic on the first lookup
                    if time.monotonic() - t0 > self.timeout_s:
                        raise
                    time.sleep(0.2)  # retry interval under the deadline above
        finally:
            admin.close()
        ids = {m.get("client_id") for m in info.get("members") or []}
        return sorted(i for i in ids if i and i.startswith(GROUP_PREFIX) and i != self.client_id)

    def refuse(self, others: list[str]) -> None:
        self.refused = (f"another review service, on another store ({', '.join(o[len(GROUP_PREFIX):] for o in others)}"
                        f"; this one is {self.store_id} at {self.store_url}), sends labels to the topic {self.topic}: "
                        "two stores would label the same event twice. Stop it, point this service at its database "
                        "(services on one database run side by side), or give each its own labels topic")
        raise ClaimRefused(self.refused)

    def ensure(self) -> None:
        """Hold the claim, or raise :class:`ClaimRefused` (for good) or another error (the broker: try again)."""
        with self.lock:
            if self.refused:
                raise ClaimRefused(self.refused)
            if self.held:
                return
            others = self.others()
            if others:
                self.refuse(others)
            if self.thread is None or not self.thread.is_alive():
                self.joined.clear()
                self.thread = threading.Thread(target=self.keep, name="review-claim", daemon=True)
                self.thread.start()
            if not self.joined.wait(self.timeout_s):
                raise TimeoutError(f"joining the group {self.group} took over {self.timeout_s:.0f} s")
            others = self.others()
            if others:  # started at the same moment as another store's service: neither runs
                self.stop()
                self.refuse(others)
            self.held = True

    def keep(self) -> None:
        from kafka import ConsumerRebalanceListener, KafkaConsumer

        claim = self

        class Joined(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked):
                pass

            def on_partitions_assigned(self, assigned):  # also with none assigned (more members than partitions)
                claim.joined.set()

        c = KafkaConsumer(bootstrap_servers=self.bootstrap, group_id=self.group, client_id=self.client_id,
                          enable_auto_commit=False, session_timeout_ms=SESSION_TIMEOUT_MS,
                          heartbeat_interval_ms=1000, isolation_level="read_committed")
        try:
            c.subscribe([self.topic], listener=Joined())
            while not self.stop_flag.is_set():
                if c.assignment():
                    c.pause(*c.assignment())  # a member only: it reads nothing
                c.poll(timeout_ms=500, max_records=1)
        except Exception:
            pass  # the next ensure() starts another member
        finally:
            self.held = False
            c.close()

    def stop(self) -> None:
        self.stop_flag.set()
        if self.thread is not None:
            self.thread.join(timeout=10)
