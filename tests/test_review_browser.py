"""The review service in a real browser (Debian's headless Chromium) against the real broker and the real job.

Events decided ``review`` appear in the queue; an analyst signs in, opens a case and marks it fraud; the
label reaches the labels topic once and the job's known-fraud signal (a later event on that device carries
``signals.device_known_fraud_users_7d`` >= 1). An injection attempt in ``extras`` renders as text; a request
without a session and a forged POST without the CSRF token are refused. The time from a ``review``
decision being committed (first seen by a ``read_committed`` probe) to its case being in the queue is
measured and printed. ``RISKSTREAM_REVIEW_SCREENSHOTS=DIR`` keeps the queue and case screenshots there.
"""

from __future__ import annotations

import http.client
import os
import shutil
import statistics
import threading
import time
import urllib.parse

import orjson
import pytest

from riskstream import topics
from riskstream.config import JobConfig
from riskstream.ops import flink_rest
from riskstream.ops.procs import free_port
from tests.test_kafka_integration import read_all

pytestmark = [pytest.mark.kafka, pytest.mark.flink]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
XSS = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'
RULES = {"kind": "rules", "version": "rv1", "rules": [
    {"code": "big_order", "decision": "review", "when": [["amount", ">=", 300]], "event_types": ["place_order"]},
    {"code": "known_fraud_device", "decision": "review", "when": [["device_known_fraud_users_7d", ">=", 1]]}]}
CASES = 12


def browser(tmp_path):
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("Debian's chromium and chromium-driver are not installed (apt-get install chromium "
                    "chromium-driver; .ci/run does)")
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium must never fetch a browser or driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,900", f"--user-data-dir={tmp_path / 'chrome'}"):
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)


def order(i: int, ts: int, **kw) -> dict:
    return {"event_id": f"rv-e{i}", "event_type": "place_order", "user_id": f"rv-u{i}", "device_id": f"rv-d{i}",
            "ip": f"10.0.7.{i % 250}", "amount": 450.0 + i, "currency": "EUR", "ts": ts, **kw}


def request(url: str, method: str = "GET", path: str = "/", body: dict | None = None, cookie: str | None = None):
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    headers = {"Cookie": cookie} if cookie else {}
    data = None
    if body is not None:
        data = urllib.parse.urlencode(body)
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    conn.request(method, path, body=data, headers=headers)
    r = conn.getresponse()
    out = (r.status, dict(r.getheaders()), r.read().decode(errors="replace"))
    conn.close()
    return out


def _after_navigation(driver, element_id: str, deadline_s: float = 15.0):
    """The element of the page a click navigates to. A click that submits a form returns before the next
    page has loaded, so look for it until a deadline (a readiness wait, not a pause); past it, fail with
    the page that is there."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, deadline_s).until(ec.presence_of_element_located(("id", element_id)))
    except TimeoutException:
        raise AssertionError(f"no #{element_id} within {deadline_s:.0f} s on {driver.current_url}:\n"
                             f"{driver.page_source[:2000]}") from None


def test_analyst_works_a_review_case_in_the_browser(kafka_bootstrap, tmp_path):
    from kafka import KafkaConsumer, KafkaProducer

    from pipelines import decision_job
    from riskstream.tools.review.ingest import IngestSettings
    from riskstream.tools.review.service import ReviewService, ServiceSettings
    from riskstream.tools.review.web import WebSettings

    driver = browser(tmp_path)  # skips here, before any broker or job work, without chromium
    names = ("rv.events", "rv.decisions", "rv.dead", "rv.control", "rv.labels")
    topics.ensure_topics(kafka_bootstrap, topics.topic_specs(*names[:3], partitions=1)
                         + [topics.control_topic_spec(names[3]), topics.labels_topic_spec(names[4])])
    rest_port = free_port()
    cfg = JobConfig(bootstrap_servers=kafka_bootstrap, events_topic=names[0], decisions_topic=names[1],
                    dead_letter_topic=names[2], control_topic=names[3], labels_topic=names[4], parallelism=1,
                    starting_offsets="earliest", transactional_id_prefix="it-review", checkpoint_interval_ms=500,
                    rest_port=rest_port, checkpoint_dir=(tmp_path / "ck").as_uri())
    rest = f"http://127.0.0.1:{rest_port}"
    svc = ReviewService(ServiceSettings(
        db=f"sqlite:///{tmp_path / 'review.db'}", labels_topic=names[4], port=free_port(),
        ingest=IngestSettings(kafka_bootstrap, names[1], events_topic=names[0], control_topic=names[3]),
        web=WebSettings(metrics_token="metrics-secret")))
    svc.store.add_user("ana", "correct horse battery staple")
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    seen: dict[str, float] = {}
    probe_stop = threading.Event()

    def probe():  # when each decision became visible to a read_committed reader: its commit, within ~20 ms
        c = KafkaConsumer(names[1], bootstrap_servers=kafka_bootstrap, isolation_level="read_committed",
                          auto_offset_reset="earliest", enable_auto_commit=False, group_id=None, fetch_max_wait_ms=20)
        while not probe_stop.is_set():
            for msgs in c.poll(timeout_ms=50).values():
                now = time.time()
                for m in msgs:
                    seen.setdefault(orjson.loads(m.value)["event_id"], now)
        c.close()

    client = decision_job.run(cfg, wait=False)
    job_id = str(client.get_job_id())
    prober = threading.Thread(target=probe, daemon=True)
    try:
        flink_rest.wait_running(rest, job_id, deadline_s=180)
        svc.start()
        prober.start()
        producer.send(names[3], orjson.dumps(RULES)).get(timeout=30)
        time.sleep(2.0)  # the rule set reaches the deciding stage (broadcast) before the orders
        t0 = int(time.time() * 1000)
        sent = [order(i, t0 + i * 1000) for i in range(CASES)]
        sent.append(order(CASES, t0 + CASES * 1000, event_id=f"rv-inject{XSS}"[:128], extras={"note": XSS, "n": 1}))
        for ev in sent:
            producer.send(names[0], key=ev["user_id"].encode(), value=orjson.dumps(ev)).get(timeout=30)
            time.sleep(0.4)  # spread over several checkpoints

        deadline = time.monotonic() + 120
        while True:
            cases = {c["event_id"]: c for c in svc.store.queue("review", limit=1000)}
            if all(ev["event_id"] in cases for ev in sent):
                break
            assert time.monotonic() < deadline, f"only {sorted(cases)} of {[e['event_id'] for e in sent]} queued"
            time.sleep(0.2)
        lat = [cases[ev["event_id"]]["opened_at"] - seen[ev["event_id"]] * 1000 for ev in sent]
        p95 = sorted(lat)[max(0, int(round(0.95 * len(lat))) - 1)]
        dec = [cases[ev["event_id"]]["opened_at"] - cases[ev["event_id"]]["decided_at"] for ev in sent]
        print(f"\n[review latency] committed -> in the queue over {len(lat)} cases: median "
              f"{statistics.median(lat):.0f} ms, p95 {p95:.0f} ms, max {max(lat):.0f} ms; decided -> in the queue "
              f"(adds the checkpoint that commits it): median {statistics.median(dec):.0f} ms, "
              f"p95 {sorted(dec)[max(0, int(round(0.95 * len(dec))) - 1)]:.0f} ms")
        assert statistics.median(lat) < 2000

        # no session: pages redirect to the sign-in page with no data, POSTs and metrics are refused
        status, headers, body = request(svc.url, path="/cases/1")
        assert status == 303 and headers["Location"].startswith("/login") and "rv-e" not in body
        assert request(svc.url, path="/metrics")[0] == 401
        assert request(svc.url, "POST", "/cases/1/verdict", {"verdict": "fraud"})[0] == 401

        # sign in
        driver.get(svc.url + "/")
        assert "/login" in driver.current_url
        driver.find_element("id", "username").send_keys("ana")
        driver.find_element("id", "password").send_keys("correct horse battery staple")
        driver.find_element("id", "sign-in").click()
        assert _after_navigation(driver, "open-review").text == str(len(sent))
        rows = driver.find_elements("css selector", "#cases tbody tr")
        assert [r.get_attribute("data-event-id") for r in rows] == [c["event_id"] for c in
                                                                    svc.store.queue("review", limit=1000)]
        shots = os.environ.get("RISKSTREAM_REVIEW_SCREENSHOTS") or str(tmp_path)
        os.makedirs(shots, exist_ok=True)
        driver.save_screenshot(os.path.join(shots, "review-job-queue.png"))

        # the injection attempt renders as text: no script ran, no element was injected
        inject = cases[sent[-1]["event_id"]]
        driver.get(f"{svc.url}/cases/{inject['case_id']}")
        assert driver.execute_script("return window.__pwned === undefined")
        assert driver.execute_script("return document.scripts.length") == 0
        assert not driver.find_elements("css selector", "img[src='x']")
        assert "<script>window.__pwned=1</script><img src=x onerror=" in driver.find_element("id", "extras").text
        assert driver.find_element("id", "event-id").text == sent[-1]["event_id"]

        # open a case, mark it fraud
        target = sent[3]
        case_id = cases[target["event_id"]]["case_id"]
        driver.get(svc.url + "/")
        driver.find_element("css selector", f"a[href='/cases/{case_id}']").click()
        _after_navigation(driver, "score")
        assert "rule:big_order" in driver.page_source and target["event_id"] in driver.page_source
        assert driver.find_element("id", "score").text
        driver.save_screenshot(os.path.join(shots, "review-job-case.png"))
        driver.find_element("id", "note").send_keys("card holder confirmed: not them")

        # a forged POST with the session but without the CSRF token is refused and changes nothing
        cookie = f"rs_session={driver.get_cookie('rs_session')['value']}"
        status, _, body = request(svc.url, "POST", f"/cases/{case_id}/verdict", {"verdict": "legit"}, cookie)
        assert status == 403 and "CSRF" in body
        assert svc.store.case(case_id)["status"] == "open"

        driver.find_element("id", "verdict-fraud").click()
        driver.find_element("id", "submit-verdict").click()
        assert _after_navigation(driver, "done").text.startswith(f"Case {case_id} closed")  # on the next case
        assert driver.find_element("id", "owner").text == "ana"  # claimed for her
        driver.get(svc.url + "/")
        assert not driver.find_elements("css selector", f"a[href='/cases/{case_id}']")  # left the queue
        assert driver.find_element("id", "open-review").text == str(len(sent) - 1)
        status, _, metrics = request(svc.url, path="/metrics", cookie=cookie)
        assert status == 200 and 'riskstream_review_verdicts_last_hour{verdict="fraud"} 1' in metrics

        # the label is on the labels topic, once, keyed by the event id
        deadline = time.monotonic() + 30
        while not (labels := read_all(kafka_bootstrap, names[4])):
            assert time.monotonic() < deadline, "no label on the labels topic"
            time.sleep(0.2)
        assert len(labels) == 1 and labels[0].key == target["event_id"].encode()
        assert orjson.loads(labels[0].value) == {"event_id": target["event_id"], "user_id": target["user_id"],
                                                 "device_id": target["device_id"], "ip": target["ip"],
                                                 "payment_ref": None, "event_ts": target["ts"], "label": "fraud"}
        # ... and reaches the job's known-fraud signal: a later event on that device
        deadline = time.monotonic() + 90
        while flink_rest.user_counters(rest, job_id, ("labels_fraud",)).get("labels_fraud") != 1:
            assert time.monotonic() < deadline, "the job did not count the label"
            time.sleep(0.3)
        later = {"event_id": "rv-later", "event_type": "login", "user_id": "rv-u-new", "device_id": target["device_id"],
                 "ip": "10.0.8.1", "amount": 0, "currency": "EUR", "ts": t0 + 3_600_000}
        producer.send(names[0], key=b"rv-u-new", value=orjson.dumps(later)).get(timeout=30)
        deadline = time.monotonic() + 60
        while "rv-later" not in seen:
            assert time.monotonic() < deadline, "no decision for the later event"
            time.sleep(0.2)
        dec = [orjson.loads(m.value) for m in read_all(kafka_bootstrap, names[1])]
        later_dec = [d for d in dec if d["event_id"] == "rv-later"]
        assert len(later_dec) == 1 and later_dec[0]["signals"]["device_known_fraud_users_7d"] >= 1, later_dec
        assert "rule:known_fraud_device" in later_dec[0]["reasons"]

        # a second verdict on the same case is refused: still one label
        driver.get(f"{svc.url}/cases/{case_id}")
        assert "fraud by ana" in driver.find_element("id", "verdict").text
        assert not driver.find_elements("id", "verdict-form")
        assert len(read_all(kafka_bootstrap, names[4])) == 1
        actions = [r["action"] for r in svc.store.audit_trail()]
        assert {"login", "view_case", "verdict", "label_sent", "csrf_refused"} <= set(actions)
    finally:
        probe_stop.set()
        driver.quit()
        svc.stop()
        producer.close()
        client.cancel().result()
