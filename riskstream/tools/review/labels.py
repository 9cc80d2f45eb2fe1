"""Verdicts to the labels topic, exactly once, whatever the broker does.

A verdict writes its label into the store's outbox in the same transaction that closes the case; the web
request returns then. A background sender (one thread, never a request) sends the outbox with a
**transactional producer** whose ``transactional.id`` is the labels topic's (``riskstream-review-labels.<topic>``)
and marks each label sent with its partition and offset. One cycle:

1. ``init_transactions()`` (on the first cycle, and again after any failure, with a new producer): the
   broker's transaction coordinator completes or aborts whatever an earlier producer of this id left open
   (this process's last attempt, a killed service's) and bumps the producer epoch, so a copy still being
   retried by that earlier producer is refused from now on (fenced).
2. Read the outbox (after 1; a row per label: a case's first label, then any correction after a reopen,
   in the order given). A label already attempted may be on the topic: look for it with a
   ``read_committed`` reader. Only committed copies count, and after 1 no earlier copy can still be committed
   or land: a copy is either visible now or never will be.
3. Mark the rest attempted, then send them in one transaction, wait for the broker's acknowledgement and
   commit. A failure at any step (broker killed, stopped, unreachable, a timeout) discards the producer, and
   the next cycle starts again at 1. Consumers of the labels topic (the job, ``riskstream report``) read it
   ``read_committed``: a copy in an aborted transaction is never seen.
4. Mark them sent. A crash between the commit and this mark is 2's case on the next start.

So the send and the check can never both deliver: a check runs only under an epoch newer than every earlier
attempt's. Services that share one store share the transactional id (each ``init_transactions`` fences
the other's open transaction, which that one then retries: still one copy); two services with different
stores on one labels topic are refused (:mod:`.claim`).
"""

from __future__ import annotations

import sys
import threading

import orjson

from .store import Store

LOOK_BACK_MS = 60_000  # clock skew between this host and the broker's log append time
BATCH = 200  # labels per transaction


def transactional_id(labels_topic: str) -> str:
    return f"riskstream-review-labels.{labels_topic}"


class LabelSender:
    """``hook(step, case_ids)`` (tests only) is called at ``begin`` (transaction begun, nothing sent), ``sent``
    (the records acknowledged by the broker, not committed) and ``committed`` (not yet marked in the store)."""

    def __init__(self, store: Store, bootstrap_servers: str, labels_topic: str, log=sys.stderr,
                 timeout_s: float = 10.0, hook=None, claim=None):
        self.store = store
        self.bootstrap = bootstrap_servers
        self.topic = labels_topic
        self.log = log
        self.timeout_ms = int(timeout_s * 1000)
        self.hook = hook
        self.claim = claim  # a Claim: nothing is sent before it holds
        self.lock = threading.Lock()
        self.producer = None
        self.stop_flag = threading.Event()
        self.wake = threading.Event()
        self.last_error: str | None = None
        self.cycles_failed = 0

    def step(self, name: str, ids: list[int]) -> None:
        if self.hook is not None:
            self.hook(name, ids)

    def producer_ready(self):
        """This service's transactional producer, initialised: every earlier producer of the id is fenced."""
        if self.producer is None:
            from kafka import KafkaProducer

            p = KafkaProducer(bootstrap_servers=self.bootstrap, transactional_id=transactional_id(self.topic),
                              acks="all", enable_idempotence=True, max_block_ms=self.timeout_ms,
                              request_timeout_ms=self.timeout_ms, delivery_timeout_ms=self.timeout_ms * 2,
                              transaction_timeout_ms=60_000, client_id="riskstream-review-labels")
            try:
                p.init_transactions()
            except BaseException:
                discard(p)
                raise
            self.producer = p
        return self.producer

    def discard_producer(self) -> None:
        p, self.producer = self.producer, None
        if p is not None:
            discard(p)

    def already_on_topic(self, event_id: str, body: dict, since_ms: int) -> tuple[int, int] | None:
        """(partition, offset) of a committed label with this key and body appended since ``since_ms``."""
        from kafka import KafkaConsumer, TopicPartition

        c = KafkaConsumer(bootstrap_servers=self.bootstrap, isolation_level="read_committed",
                          enable_auto_commit=False, group_id=None, request_timeout_ms=self.timeout_ms + 1000)
        try:
            tps = [TopicPartition(self.topic, p) for p in c.partitions_for_topic(self.topic) or ()]
            if not tps:
                raise RuntimeError(f"no metadata for the labels topic {self.topic}")
            c.assign(tps)
            starts = c.offsets_for_times({tp: max(0, since_ms - LOOK_BACK_MS) for tp in tps})
            end = c.end_offsets(tps)  # read_committed: the last stable offset
            for tp in tps:
                c.seek(tp, end[tp] if starts.get(tp) is None else starts[tp].offset)
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

    def send_pending(self) -> int:
        """One cycle (see the module's doc); returns how many labels were sent or found sent."""
        with self.lock:
            if not self.store.pending_labels(limit=1):
                return 0
            if self.claim is not None:
                self.claim.ensure()
            try:
                return self._cycle()
            except BaseException:
                self.discard_producer()  # the next cycle's init_transactions fences whatever it left
                raise

    def _cycle(self) -> int:
        p = self.producer_ready()  # 1: before reading the outbox
        done, to_send = 0, []
        for row in self.store.pending_labels(limit=BATCH):  # 2
            if row["attempted_at"] is not None:
                found = self.already_on_topic(row["event_id"], orjson.loads(row["body"]), row["attempted_at"])
                if found:
                    self.store.label_sent(row["id"], *found, found=True)
                    done += 1
                    continue
            to_send.append(row)
        if not to_send:
            return done
        ids = [r["case_id"] for r in to_send]
        self.store.label_attempts([r["id"] for r in to_send])  # 3
        p.begin_transaction()
        self.step("begin", ids)
        futures = [p.send(self.topic, key=r["event_id"].encode(), value=r["body"].encode()) for r in to_send]
        p.flush(timeout=self.timeout_ms / 1000)
        mds = [f.get(timeout=0) for f in futures]  # raises the send's error, if any
        self.step("sent", ids)
        commit = p._transaction_manager.begin_commit()  # commit_transaction() without its unbounded wait
        p._sender.wakeup()
        if not commit.wait(timeout_ms=self.timeout_ms):
            raise TimeoutError(f"the labels transaction did not commit within {self.timeout_ms} ms")
        self.step("committed", ids)
        for r, md in zip(to_send, mds):  # 4
            self.store.label_sent(r["id"], md.partition, md.offset)
        return done + len(to_send)

    def run(self, every_s: float = 2.0, max_backoff_s: float = 15.0) -> None:
        """The sender thread: a cycle whenever a verdict wakes it, and every ``every_s`` (longer after
        failures, up to ``max_backoff_s``)."""
        while not self.stop_flag.is_set():
            wait = min(max_backoff_s, every_s * (2 ** min(self.cycles_failed, 3)))
            self.wake.wait(wait if self.cycles_failed else every_s)
            self.wake.clear()
            if self.stop_flag.is_set():
                break
            try:
                while self.send_pending() and not self.stop_flag.is_set():
                    pass  # more than one batch waiting
                self.cycles_failed, self.last_error = 0, None
            except Exception as e:  # the labels stay in the outbox (page: pending; metrics: labels_pending)
                self.cycles_failed += 1
                self.last_error = f"{type(e).__name__}: {e}"
                print(f"[review] label send failed, will retry: {self.last_error}", file=self.log, flush=True)
                if self.claim is not None and self.claim.refused:
                    break

    def stop(self) -> None:
        self.stop_flag.set()
        self.wake.set()
        self.discard_producer()  # a cycle under way fails at once (its labels stay in the outbox)


def discard(p) -> None:
    """Close a producer without waiting for the broker: pending sends fail, its background thread ends."""
    try:
        p.close(timeout=0)
    except Exception:
        try:
            p._sender.force_close()
        except Exception:
            pass
