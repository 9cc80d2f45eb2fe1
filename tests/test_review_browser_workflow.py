"""An analyst's and a lead's working day in a real browser (Debian's headless Chromium) against the real
broker: claim -> verdict -> next case -> search -> bulk verdict on a card-testing ring -> escalate ->
overturn a block -> (the lead) approve the overturn, decide the escalated case. Every verdict that sends a
label yields exactly one label on the labels topic (read_committed), with the verdict given.

Decisions are written straight to the decisions topic (as the job writes them): the workflow, not the
job, is under test here (test_review_browser.py runs the real job). ``RISKSTREAM_REVIEW_SCREENSHOTS=DIR``
keeps the pages' screenshots there.
"""

from __future__ import annotations

import os
import time

import orjson
import pytest

from riskstream import topics
from riskstream.ops.procs import free_port
from tests.test_review_browser import _after_navigation, browser
from tests.test_review_labels import labels_on

pytestmark = [pytest.mark.kafka]

PW = "correct horse battery staple"
T0 = 1_767_225_600_000


def features(i: int, ring: bool) -> dict:
    """The shipped model's features (every one at its training median but a few), so the case pages show
    contributions; the first case looks like an account takeover (new device, shared by many users)."""
    from riskstream.tools.review import explain

    _, ref = explain.load("risk_gbdt_v2")
    f = {n: v["median"] for n, v in ref["features"].items()}
    f.update(amount=25.0 + i, user_age_ms=3_600_000.0 * i)
    if i == 1:
        f.update(amount=1500.0, device_age_ms=40_000.0, device_distinct_users_1h=6.0, device_distinct_users_24h=9.0,
                 user_distinct_devices_24h=3.0)
    if ring:
        f.update(user_events_10m=12.0, user_payment_methods_24h=4.0, user_distinct_payment_refs_1h=4.0)
    return f


def model_score(f: dict) -> float:
    from riskstream.tools.review import explain

    model, ref = explain.load("risk_gbdt_v2")
    return round(model.probability([f[n] for n in ref["feature_names"]]), 6)


def dec(i: int, kind: str = "review", **kw) -> dict:
    f = features(i, kw.get("user_id") == "bw-ring")
    return {"decision_id": f"bw{i}", "event_id": f"bw-e{i}", "event_type": "place_order",
            "user_id": kw.pop("user_id", f"bw-u{i}"), "device_id": kw.pop("device_id", f"bw-d{i}"),
            "ip": kw.pop("ip", f"10.9.0.{i}"), "payment_ref": kw.pop("payment_ref", None), "decision": kind,
            "score": model_score(f), "model_version": "risk_gbdt_v2", "policy_version": "p1",
            "reasons": ["score_review" if kind == "review" else "score_block"],
            "features": f,
            "late": False, "event_ts": T0 + i * 1000, "decided_at": T0 + i * 1000 + 300}


def sign_in(driver, url, user):
    driver.delete_all_cookies()
    driver.get(url + "/login")
    driver.find_element("id", "username").send_keys(user)
    driver.find_element("id", "password").send_keys(PW)
    driver.find_element("id", "sign-in").click()
    assert user in _after_navigation(driver, "who").text


def click(driver, element_id):
    driver.find_element("id", element_id).click()


def navigate(driver, element_id, deadline_s: float = 15.0):
    """Click a button or link that loads a new page, and return once the old page is gone (a readiness wait:
    the element ids of the next page may exist on this one too)."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    old = driver.find_element("tag name", "html")
    driver.find_element("id", element_id).click()
    # mid-navigation Chrome may answer "Node with given id does not belong to the document" instead of
    # "stale element": poll again, the next answer is the stale one
    WebDriverWait(driver, deadline_s, ignored_exceptions=(WebDriverException,)).until(ec.staleness_of(old))
    _after_navigation(driver, "who")


def case_id_of(driver) -> int:
    return int(driver.current_url.split("/cases/")[1].split("?")[0])


def test_a_working_day_in_the_browser(kafka_bootstrap, tmp_path):
    from kafka import KafkaProducer

    from riskstream.tools.review.ingest import IngestSettings
    from riskstream.tools.review.service import ReviewService, ServiceSettings

    driver = browser(tmp_path)  # skips here without chromium
    names = ("bw.decisions", "bw.labels")
    topics.ensure_topics(kafka_bootstrap, [topics.TopicSpec(names[0], 1, topics.APPEND_TIME),
                                           topics.labels_topic_spec(names[1])])
    svc = ReviewService(ServiceSettings(db=f"sqlite:///{tmp_path / 'review.db'}", labels_topic=names[1],
                                        port=free_port(), ingest=IngestSettings(kafka_bootstrap, names[0])))
    svc.store.add_user("ana", PW)
    svc.store.set_timezone("ana", "Asia/Tokyo")  # ana's pages in Japan time, the lead's in UTC
    svc.store.add_user("lea", PW, role="lead")
    # two ordinary cases (the first due first: score 0.95), a ring of 10 on one user and card, one block
    sent = [dec(1), dec(2)]  # the first is due first: its amount (1,500) halves its time
    sent += [dec(i, user_id="bw-ring", payment_ref="bw-card", device_id=f"bw-rd{i}") for i in range(10, 20)]
    sent += [dec(30, "block"), dec(31)]
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    shots = os.environ.get("RISKSTREAM_REVIEW_SCREENSHOTS") or str(tmp_path)
    os.makedirs(shots, exist_ok=True)
    try:
        svc.start()
        for d in sent:
            producer.send(names[0], key=d["user_id"].encode(), value=orjson.dumps(d))
        producer.flush(30)
        deadline = time.monotonic() + 60
        while svc.store.one("SELECT count(*) FROM cases")[0] < len(sent):
            assert time.monotonic() < deadline, "the decisions did not reach the queue"
            time.sleep(0.1)  # a readiness poll under a deadline
        ids = {r["event_id"]: r["case_id"] for r in svc.store.query("SELECT case_id, event_id FROM cases")}

        sign_in(driver, svc.url, "ana")
        assert _after_navigation(driver, "open-review").text == str(len(sent) - 1)
        driver.save_screenshot(os.path.join(shots, "review-queue.png"))
        # next case: the one due first, claimed by ana, her name as its owner
        navigate(driver, "next-case")
        assert driver.find_element("id", "owner").text == "ana"
        assert case_id_of(driver) == ids["bw-e1"]
        assert driver.find_elements("css selector", "#contributions tbody tr")  # the model's evidence
        assert "2026-01-01 09:00:01 JST" in driver.page_source  # bw-e1's event time (00:00:01 UTC), in ana's zone
        driver.set_window_size(1280, 1500)  # the contributions too
        driver.save_screenshot(os.path.join(shots, "review-case.png"))
        driver.set_window_size(1280, 900)
        # verdict -> the next case, claimed
        click(driver, "verdict-fraud")
        driver.find_element("id", "note").send_keys("cardholder denies")
        navigate(driver, "submit-verdict")
        assert _after_navigation(driver, "done").text.startswith(f"Case {ids['bw-e1']} closed")
        assert driver.find_element("id", "owner").text == "ana"
        nxt = case_id_of(driver)
        assert nxt != ids["bw-e1"] and svc.store.case(nxt)["owner"] == "ana"
        # search the ring's user, open its page, close its ten cases with one bulk verdict
        driver.find_element("id", "search-q").send_keys("bw-ring")
        navigate(driver, "search-go")
        _after_navigation(driver, "results")
        assert len(driver.find_elements("css selector", "#results tbody tr[data-case-id]")) == 10
        driver.find_element("css selector", "a.entity-link[href='/entity/user?id=bw-ring']").click()
        assert _after_navigation(driver, "entity-id").text == "bw-ring"
        assert "bw-card" in driver.find_element("id", "links").text  # the ring's card, linked
        driver.save_screenshot(os.path.join(shots, "review-entity.png"))
        click(driver, "bulk-fraud")
        navigate(driver, "bulk-submit")
        assert _after_navigation(driver, "bulk-done").text.startswith("10 closed fraud")
        # escalate a case to the leads
        esc = ids["bw-e31"]
        driver.get(f"{svc.url}/cases/{esc}")
        navigate(driver, "act-claim")
        assert driver.find_element("id", "owner").text == "ana"
        navigate(driver, "act-escalate")
        assert svc.store.case(esc)["status"] == "escalated"
        # overturn the block: it waits for a lead's approval, no label yet
        blk = ids["bw-e30"]
        driver.get(f"{svc.url}/cases/{blk}")
        click(driver, "verdict-legit")
        navigate(driver, "submit-verdict")
        assert svc.store.case(blk)["status"] == "approval"
        assert not driver.find_elements("id", "nav-audit")  # analysts do not see the audit trail

        # the lead: next case is the overturn to approve, then the escalated case
        sign_in(driver, svc.url, "lea")
        navigate(driver, "next-case")
        _after_navigation(driver, "proposal")
        assert case_id_of(driver) == blk
        navigate(driver, "act-approve")
        assert svc.store.case(blk)["verdict"] == "legit"
        driver.get(svc.url + "/")
        navigate(driver, "next-case")
        assert case_id_of(driver) == esc and driver.find_element("id", "status").text == "escalated"
        click(driver, "verdict-fraud")
        navigate(driver, "submit-verdict")
        assert svc.store.case(esc)["verdict"] == "fraud"
        driver.get(svc.url + "/audit")
        assert _after_navigation(driver, "audit").text.count("approve") >= 1

        # every label-sending verdict: exactly one label on the topic, with its verdict
        want = {"bw-e1": "fraud", **{f"bw-e{i}": "fraud" for i in range(10, 20)}, "bw-e30": "legit", "bw-e31": "fraud"}
        deadline = time.monotonic() + 60
        while svc.store.pending_labels():
            assert time.monotonic() < deadline, "labels still pending after 60 s"
            time.sleep(0.2)  # the background sender's progress, polled under a deadline
        seen = labels_on(kafka_bootstrap, names[1])
        assert seen == {e: 1 for e in want}, seen
        from tests.test_kafka_integration import read_all

        got = {m.key.decode(): orjson.loads(m.value)["label"] for m in read_all(kafka_bootstrap, names[1])}
        assert got == want
    finally:
        driver.quit()
        svc.stop()
        producer.close()
