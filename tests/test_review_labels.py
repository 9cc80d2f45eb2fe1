"""Labels exactly once out of the review service, whatever the broker does, and pages that never wait on it.

On a private broker (started here, on a free port, so it can be killed, stopped and restarted without
touching the session's): the broker SIGKILLed at each step of a label's send (already dead before it; the
records sent but not committed; committed but not yet marked in the store, with the service dying too) and
restarted: every verdict is exactly one committed label. The broker SIGSTOPped: 20 verdicts from 4 analysts
in parallel all answer in under a second and the pages say "pending"; after SIGCONT every label lands once.
Two services on one labels topic with different stores: the second is refused; on one store, both run.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections import Counter

import orjson
import pytest

from riskstream import topics
from riskstream.ops import broker
from riskstream.ops.procs import free_port, pid_alive
from riskstream.tools.review.labels import LabelSender
from riskstream.tools.review.store import Consumed, Store

pytestmark = [pytest.mark.kafka]

ROLES = {"decisions": "d", "events": "", "control": ""}


class OwnBroker:
    def __init__(self, root):
        self.root = root
        self.lay = broker.up(port=free_port(), root=root, deadline_s=120)
        self.bootstrap = self.lay.bootstrap

    def pid(self) -> int:
        pid = broker.read_pid(self.lay)
        assert pid, "the private broker is not running"
        return pid

    def kill(self) -> None:
        pid = self.pid()
        os.killpg(pid, signal.SIGKILL)
        t0 = time.monotonic()
        while pid_alive(pid):  # SIGKILL is delivered asynchronously
            assert time.monotonic() - t0 < 30, "the SIGKILLed broker still runs after 30 s"
            time.sleep(0.05)

    def restart(self) -> None:
        broker.up(port=self.lay.port, root=self.root, deadline_s=120)

    def signal(self, sig) -> None:
        os.killpg(self.pid(), sig)


@pytest.fixture(scope="module")
def own_broker(tmp_path_factory):
    root = tmp_path_factory.mktemp("kafka-own")
    b = OwnBroker(root)
    try:
        yield b
    finally:
        try:
            b.signal(signal.SIGCONT)
        except (AssertionError, ProcessLookupError):
            pass
        broker.down(root=root)


def decision(i: int) -> dict:
    return {"decision_id": f"id{i}", "event_id": f"e{i}", "event_type": "place_order", "user_id": f"u{i}",
            "device_id": "d1", "ip": "1.2.3.4", "payment_ref": None, "decision": "review", "score": 0.6,
            "model_version": "m1", "reasons": ["score_review"], "features": {"amount": 1.0},
            "event_ts": 1767225600000 + i, "decided_at": 1767225601000 + i}


def new_store(path, n: int) -> Store:
    store = Store(f"sqlite:///{path}")
    # case k is event ek
    store.ingest([Consumed("d", 0, i, orjson.dumps(decision(i + 1))) for i in range(n)], {("d", 0): n}, ROLES)
    return store


def labels_on(bootstrap: str, topic: str, committed: bool = True) -> Counter:
    """event_id -> copies on the topic (read_committed: what the job and the report see)."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
                      isolation_level="read_committed" if committed else "read_uncommitted")
    try:
        tps = [TopicPartition(topic, p) for p in c.partitions_for_topic(topic)]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        end = c.end_offsets(tps)
        out: Counter = Counter()
        t0 = time.monotonic()
        while any(c.position(tp) < end[tp] for tp in tps):
            assert time.monotonic() - t0 < 60, "reading the labels topic took over 60 s"
            for msgs in c.poll(timeout_ms=500).values():
                out.update(m.key.decode() for m in msgs)
        return out
    finally:
        c.close()


def drain(sender: LabelSender, store: Store, deadline_s: float = 90) -> list[str]:
    """Run send cycles until the outbox is empty (each failed cycle is the real send failing)."""
    errors, t0 = [], time.monotonic()
    while store.pending_labels():
        assert time.monotonic() - t0 < deadline_s, f"labels still pending after {deadline_s} s: {errors[-3:]}"
        try:
            sender.send_pending()
        except Exception as e:
            errors.append(f"{type(e).__name__}: {e}")
    return errors


class Crash(Exception):
    """The service dying between the broker's commit and the store's mark."""


def test_broker_killed_at_each_step_of_the_send_one_label_per_verdict(own_broker, tmp_path):
    topic = "rvl.labels.kill"
    topics.ensure_topics(own_broker.bootstrap, [topics.labels_topic_spec(topic)])
    store = new_store(tmp_path / "r.db", 5)
    at = {"step": None}

    def hook(step, ids):
        if step == at["step"]:
            at["step"] = None
            own_broker.kill()
            if step == "committed":
                raise Crash("the service died after the commit, before the mark")

    def sender():
        return LabelSender(store, own_broker.bootstrap, topic, timeout_s=5, hook=hook)

    # a first verdict goes out normally
    store.close_case(1, "fraud", "", "ana")
    s = sender()
    assert drain(s, store) == []
    # the round: the broker killed between two verdicts, the send times out, the producer retries in the
    # background, the broker is back ~seconds later
    own_broker.kill()
    store.close_case(2, "fraud", "", "ana")
    with pytest.raises(Exception):
        s.send_pending()
    own_broker.restart()
    drain(s, store)
    # killed at each step of the send, then restarted
    for case_id, step in ((3, "begin"), (4, "sent"), (5, "committed")):
        store.close_case(case_id, "legit", "", "ana")
        at["step"] = step
        with pytest.raises(Exception):
            s.send_pending()
        assert at["step"] is None, f"the send never reached {step}"
        assert store.pending_labels(), "the label was marked sent although the broker died"
        if step == "committed":
            s.stop()
            s = sender()  # a new process: finds the committed label instead of sending it again
        own_broker.restart()
        drain(s, store)
    s.stop()
    seen = labels_on(own_broker.bootstrap, topic)
    assert seen == Counter({f"e{i}": 1 for i in range(1, 6)}), seen
    sent = {r["case_id"]: (r["sent_part"], r["sent_offset"]) for r in store.query("SELECT * FROM label_outbox")}
    assert len(sent) == 5 and all(v[1] is not None for v in sent.values())
    recovered = [orjson.loads(r["detail"]) for r in store.query(
        "SELECT detail FROM audit WHERE action = 'label_sent' AND target = 'case:5'")]
    assert recovered == [{"partition": sent[5][0], "offset": sent[5][1], "recovered": True}]
    # the copy sent in the transaction the kill left open is on the log, aborted: read_committed never sees it
    assert labels_on(own_broker.bootstrap, topic, committed=False)["e4"] == 2


def test_pages_never_wait_on_a_stopped_broker(own_broker, tmp_path):
    import requests

    from riskstream.tools.review.ingest import IngestSettings
    from riskstream.tools.review.service import ReviewService, ServiceSettings

    topic, decisions = "rvl.labels.stop", "rvl.decisions.stop"
    topics.ensure_topics(own_broker.bootstrap, [topics.labels_topic_spec(topic),
                                                topics.TopicSpec(decisions, 1, topics.APPEND_TIME)])
    new_store(tmp_path / "r.db", 20).close()
    users = [f"an{k}" for k in range(4)]
    svc = ReviewService(ServiceSettings(db=f"sqlite:///{tmp_path / 'r.db'}", labels_topic=topic, port=0,
                                        ingest=IngestSettings(own_broker.bootstrap, decisions)))
    for u in users:
        svc.store.add_user(u, "correct horse battery")
    svc.start()
    sessions = {}
    try:
        for u in users:
            http = requests.Session()
            page = http.get(svc.url + "/login").text
            token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
            r = http.post(svc.url + "/login", data={"csrf_token": token, "username": u,
                                                    "password": "correct horse battery", "next": "/"})
            assert r.status_code == 200 and "rs_session" in http.cookies, r.text[:300]
            sessions[u] = http
            k = users.index(u)  # each analyst claims their five cases (a verdict then goes on to the next of them)
            token = re.search(r'name="csrf_token" value="([^"]+)"', http.get(svc.url + "/").text).group(1)
            for case_id in range(1 + 5 * k, 6 + 5 * k):
                assert http.post(svc.url + f"/cases/{case_id}/act", data={"action": "claim", "csrf_token": token},
                                 allow_redirects=False).status_code == 303
        own_broker.signal(signal.SIGSTOP)
        times: list[tuple[str, float, int]] = []
        lock = threading.Lock()

        def timed(http, method, path, **kw):
            t0 = time.monotonic()
            r = http.request(method, svc.url + path, allow_redirects=False, timeout=30, **kw)
            with lock:
                times.append((f"{method} {path}", time.monotonic() - t0, r.status_code))
            return r

        def analyst(k: int):
            http = sessions[users[k]]
            for case_id in range(1 + 5 * k, 6 + 5 * k):
                page = timed(http, "GET", f"/cases/{case_id}").text
                token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
                r = timed(http, "POST", f"/cases/{case_id}/verdict", data={"verdict": "fraud", "csrf_token": token})
                assert r.status_code == 303
                assert "label-pending" in timed(http, "GET", f"/cases/{case_id}").text
            timed(requests.Session(), "GET", "/login")

        threads = [threading.Thread(target=analyst, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert len(times) == 4 * (5 * 3 + 1) and all(code in (200, 303) for _, _, code in times), times
        slow = [(what, round(s, 3)) for what, s, _ in times if s >= 1.0]
        assert not slow, f"requests waited on the stopped broker: {slow}"
        print(f"\n[test] broker stopped: {len(times)} requests, slowest {max(s for _, s, _ in times):.3f} s")
        assert len(svc.store.pending_labels()) == 20  # nothing can be on the topic: the broker is stopped
        own_broker.signal(signal.SIGCONT)
        t0 = time.monotonic()
        while svc.store.pending_labels():
            assert time.monotonic() - t0 < 180, "labels still pending 180 s after SIGCONT"
            time.sleep(0.2)  # polling interval of a check under a deadline; the sender runs on its own
        print(f"[test] every label on the topic {time.monotonic() - t0:.1f} s after SIGCONT")
        assert "on the labels topic (partition" in sessions[users[0]].get(svc.url + "/cases/1").text
    finally:
        try:
            own_broker.signal(signal.SIGCONT)
        except (AssertionError, ProcessLookupError):
            pass
        svc.stop()
    assert labels_on(own_broker.bootstrap, topic) == Counter({f"e{i}": 1 for i in range(1, 21)})


def test_two_stores_on_one_labels_topic_are_refused_one_store_is_shared(own_broker, tmp_path):
    from riskstream.tools.review.claim import ClaimRefused
    from riskstream.tools.review.ingest import IngestSettings
    from riskstream.tools.review.service import ReviewService, ServiceSettings

    topic, decisions = "rvl.labels.two", "rvl.decisions.two"
    topics.ensure_topics(own_broker.bootstrap, [topics.labels_topic_spec(topic),
                                                topics.TopicSpec(decisions, 1, topics.APPEND_TIME)])

    def service(db):
        return ReviewService(ServiceSettings(db=f"sqlite:///{db}", labels_topic=topic, port=0,
                                             ingest=IngestSettings(own_broker.bootstrap, decisions)))

    first = service(tmp_path / "a.db").start()
    try:
        other = service(tmp_path / "b.db")
        with pytest.raises(ClaimRefused, match=f"another review service, on another store .* labels to the topic {topic}"):
            other.start()
        assert not other.threads  # nothing started
        same = service(tmp_path / "a.db").start()  # a second service on the same store runs beside the first
        same.stop()
    finally:
        first.stop()
