"""The review service without a broker: the store (exactly-once ingest, one verdict and one label per case,
the append-only audit trail) and the pages through Flask's test client (sign-in, CSRF, escaping, bad
requests, metrics), each against SQLite and against a real PostgreSQL server (a cluster the tests start;
skipped only when PostgreSQL is not installed). The browser and the real broker and job are in
test_review_browser.py."""

from __future__ import annotations

import re

import orjson
import pytest

from riskstream.tools.review.store import (Consumed, Store, StoreError, backend_name, check_password, db_path,
                                           hash_password, redact)
from riskstream.tools.review.web import WebSettings, create_app

ROLES = {"decisions": "d", "events": "e", "control": "c"}
XSS = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'


def decision(i: int, kind: str = "review", **kw) -> dict:
    return {"decision_id": f"id{i}", "event_id": kw.pop("event_id", f"e{i}"), "event_type": "place_order",
            "user_id": kw.pop("user_id", f"u{i}"), "device_id": kw.pop("device_id", "d1"),
            "ip": kw.pop("ip", "1.2.3.4"), "payment_ref": kw.pop("payment_ref", None), "decision": kind,
            "score": kw.pop("score", 0.6), "model_version": "m1", "policy_version": "p1",
            "reasons": kw.pop("reasons", ["score_review", "rule:new_account_big_order"]),
            "features": {"amount": 900.0, "user_age_ms": 1000.0, "user_events_1m": 3.0}, "late": False,
            "event_ts": 1767225600000 + i, "decided_at": 1767225601000 + i, **kw}


def event(i: int, **kw) -> dict:
    return {"event_id": f"e{i}", "event_type": "place_order", "user_id": f"u{i}", "device_id": "d1", "ip": "1.2.3.4",
            "amount": 900.0, "currency": "EUR", "ts": 1767225600000 + i, **kw}


def feed(store: Store, topic: str, objs: list, start: int = 0, part: int = 0) -> None:
    recs = [Consumed(topic, part, start + k, orjson.dumps(o)) for k, o in enumerate(objs)]
    store.ingest(recs, {(topic, part): start + len(objs)}, ROLES)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    s = Store(url)
    assert s.backend.name == request.param
    yield s
    s.close()


@pytest.fixture
def client(store):
    store.add_user("ana", "correct horse battery")
    app = create_app(store, WebSettings(metrics_token="tok-123"))
    return app.test_client()


def login(client, user="ana", pw="correct horse battery"):
    page = client.get("/login").get_data(as_text=True)
    token = re.search(r'action="/login" class="login">\s*<input type="hidden" name="csrf_token" value="([^"]+)"',
                      page).group(1)
    return client.post("/login", data={"csrf_token": token, "username": user, "password": pw, "next": "/"})


def csrf_of(client, path="/") -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', client.get(path).get_data(as_text=True)).group(1)


def test_db_url():
    assert str(db_path("sqlite:///rel/x.db")) == "rel/x.db"
    assert str(db_path("sqlite:////abs/x.db")) == "/abs/x.db"
    assert backend_name("rel/x.db") == backend_name("sqlite:///x.db") == "sqlite"
    assert backend_name("postgresql://u@h:5432/db") == backend_name("postgres://u@h/db") == "postgresql"
    with pytest.raises(ValueError, match="unknown scheme 'mysql'") as e:
        Store("mysql://u:secret@host/db")
    assert "secret" not in str(e.value)
    with pytest.raises(ValueError, match="not a SQLite file"):
        db_path("postgresql://u@host/db")
    assert redact("postgresql://ana:s3cret@db:5432/review?sslmode=require&password=x") == \
        "postgresql://ana:***@db:5432/review?sslmode=require&password=***"
    assert redact("postgresql://ana@db/review") == "postgresql://ana@db/review"


def test_passwords_are_hashed_with_a_salt():
    h = hash_password("correct horse battery")
    assert h.startswith("scrypt$") and "correct" not in h and h != hash_password("correct horse battery")
    assert check_password("correct horse battery", h) and not check_password("wrong", h)


def test_ingest_writes_cases_and_offsets_in_one_transaction(store):
    feed(store, "e", [event(1), event(2), event(3, extras={"note": XSS})])
    feed(store, "d", [decision(1), decision(2, "allow"), decision(3, "block", score=0.97)])
    assert store.offsets() == {("e", 0): 3, ("d", 0): 3}
    assert [(c["case_id"], c["kind"]) for c in store.queue("review")] == [(1, "review")]
    assert [c["event_id"] for c in store.queue("block")] == ["e3"]
    assert store.one("SELECT count(*) FROM events")[0] == 2  # the allowed event was dropped
    assert store.case_event(store.case(1))["ip"] == "1.2.3.4"
    # a failure inside the transaction keeps neither the cases nor the offsets
    with pytest.raises(RuntimeError):
        store.ingest([Consumed("d", 0, 3, orjson.dumps(decision(4)))], {("d", 0): 4}, ROLES, fail_before_commit=True)
    assert store.offsets()[("d", 0)] == 3 and store.one("SELECT count(*) FROM cases")[0] == 2
    # the same event decided again (a replay under a new model) keeps its one case
    feed(store, "d", [decision(1, decision_id="other")], start=3)
    assert store.one("SELECT count(*) FROM cases")[0] == 2 and store.one("SELECT count(*) FROM decisions")[0] == 4


def test_one_verdict_and_one_label_per_case_and_the_audit_is_append_only(store):
    feed(store, "d", [decision(1)])
    label = store.close_case(1, "fraud", "stolen card", "ana")
    assert label == {"event_id": "e1", "user_id": "u1", "device_id": "d1", "ip": "1.2.3.4", "payment_ref": None,
                     "event_ts": 1767225600001, "label": "fraud"}
    with pytest.raises(StoreError) as e:
        store.close_case(1, "legit", "", "bob")
    assert e.value.status == 409
    for bad, status in (({"verdict": "maybe"}, 400), ({"case_id": 99}, 404), ({"note": "x" * 3000}, 400)):
        args = {"case_id": 1, "verdict": "fraud", "note": "", **bad}
        with pytest.raises(StoreError) as e:
            store.close_case(args["case_id"], args["verdict"], args["note"], "ana")
        assert e.value.status == status
    assert len(store.pending_labels()) == 1
    assert [r["action"] for r in store.audit_trail()] == ["verdict"]
    statements = ["UPDATE audit SET who = 'x'", "DELETE FROM audit"]
    if store.backend.name == "postgresql":
        statements.append("TRUNCATE audit")
    for sql in statements:
        with pytest.raises(store.backend.IntegrityError, match="append-only"):
            store.conn().execute(sql)
    # nor inside a transaction, and the transaction's other writes go with it
    with pytest.raises(store.backend.IntegrityError, match="append-only"):
        with store.tx() as c:
            c.execute("UPDATE cases SET note = 'rewritten'")
            c.execute("DELETE FROM audit WHERE action = 'verdict'")
    assert store.case(1)["note"] == "stolen card" and len(store.audit_trail()) == 1


def test_a_verdict_s_label_names_the_event_s_ip_and_payment_instrument(store):
    """The label carries the decision record's ip and payment_ref, so the job's ip and payment stages count the
    verdict (udfs.labels.parse_label reads them back); a record of an older job, without them, takes them from
    the event as consumed; with neither, they are null (the label still counts for user and device)."""
    from udfs.labels import parse_label

    old = {k: v for k, v in decision(2).items() if k not in ("ip", "payment_ref")}
    feed(store, "e", [event(2, ip="5.6.7.8", payment_ref="c-9")])
    feed(store, "d", [decision(1, ip="9.8.7.6", payment_ref="c-1"), old,
                      {k: v for k, v in decision(3).items() if k not in ("ip", "payment_ref")}])
    labels = [store.close_case(i, "fraud", "", "ana") for i in (1, 2, 3)]
    assert [(lb["ip"], lb["payment_ref"]) for lb in labels] == [("9.8.7.6", "c-1"), ("5.6.7.8", "c-9"), (None, None)]
    sent = [orjson.loads(r["body"]) for r in store.pending_labels()]
    assert sent == labels
    parsed = [parse_label(orjson.dumps(lb)) for lb in sent]
    assert [(p.key("ip"), p.key("payment")) for p in parsed] == [("9.8.7.6", "c-1"), ("5.6.7.8", "c-9"), (None, None)]
    assert [(p.event_id, p.user_id, p.key("device"), p.event_ts, p.label) for p in parsed] == [
        (f"e{i}", f"u{i}", "d1", 1767225600000 + i, "fraud") for i in (1, 2, 3)]


def test_records_that_do_not_fit_are_skipped_alone(store):
    """A value of the wrong type or with a NUL character is counted unreadable on both databases (PostgreSQL
    would refuse it and fail the whole batch); the batch's other records and its offsets are stored."""
    bad = [decision(1, score="high"), decision(2, event_id="e2\x00x"), decision(3, event_ts=2 ** 64 - 1),
           decision(4, shadow=[1]), decision(5, model_version="m\x00")]
    n = store.ingest([Consumed("d", 0, k, orjson.dumps(o)) for k, o in enumerate([*bad, decision(6)])],
                     {("d", 0): 6}, ROLES)
    assert n["unreadable"] == 5 and n["cases"] == 1
    assert [c["event_id"] for c in store.queue()] == ["e6"] and store.offsets() == {("d", 0): 6}


def test_every_page_but_sign_in_needs_a_session(client, store):
    feed(store, "d", [decision(1)])
    for path in ("/", "/cases/1", "/audit"):
        r = client.get(path)
        assert r.status_code == 303 and r.headers["Location"].startswith("/login"), path
        assert b"e1" not in r.data
    assert client.post("/cases/1/verdict", data={"verdict": "fraud"}).status_code == 401
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
    m = client.get("/metrics", headers={"Authorization": "Bearer tok-123"})
    assert m.status_code == 200 and 'riskstream_review_queue_depth{kind="review"} 1' in m.get_data(as_text=True)
    assert client.get("/static/style.css").status_code == 200
    assert store.case(1)["status"] == "open"


def test_sign_in_needs_the_form_token_and_the_right_password(client, store):
    assert client.post("/login", data={"username": "ana", "password": "correct horse battery"}).status_code == 403
    assert login(client, pw="wrong password!").status_code == 401
    r = login(client)
    assert r.status_code == 303 and "HttpOnly" in r.headers["Set-Cookie"] and "SameSite=Strict" in r.headers["Set-Cookie"]
    assert client.get("/").status_code == 200
    actions = [r["action"] for r in store.audit_trail()]
    assert actions[:2] == ["login", "login_failed"]
    for _ in range(5):
        login(client, pw="wrong password!")
    assert login(client).status_code == 429  # locked out for a while


def test_verdict_needs_the_csrf_token_and_bad_requests_change_nothing(client, store):
    feed(store, "d", [decision(1), decision(2, "block", score=0.95, payment_ref="c-2")])
    login(client)
    assert client.post("/cases/1/verdict", data={"verdict": "fraud"}).status_code == 403
    assert client.post("/cases/1/verdict", data={"verdict": "fraud", "csrf_token": "forged"}).status_code == 403
    token = csrf_of(client)
    assert client.post("/cases/1/verdict", data={"verdict": "fraud", "csrf_token": token},
                       headers={"Origin": "http://evil.example"}).status_code == 403
    r = client.post("/cases/1/verdict", data={"verdict": "maybe", "csrf_token": token})
    assert r.status_code == 400 and b"verdict must be one of" in r.data
    assert client.post("/cases/77/verdict", data={"verdict": "fraud", "csrf_token": token}).status_code == 404
    assert client.get("/cases/abc").status_code == 404
    assert client.get("/?sort=random").status_code == 400
    assert client.get("/?event_type=nope").status_code == 400
    assert client.get("/?rule=a%00b").status_code == 400
    assert client.post("/cases/1/verdict", data={"verdict": "fraud", "note": "a\x00b", "csrf_token": token}
                       ).status_code == 400
    assert client.get("/cases/99999999999999999999").status_code == 404
    assert store.case(1)["status"] == "open" and not store.pending_labels()
    r = client.post("/cases/1/verdict", data={"verdict": "fraud", "note": "ring", "csrf_token": token})
    assert r.status_code == 303 and store.case(1)["verdict"] == "fraud"
    assert client.post("/cases/1/verdict", data={"verdict": "legit", "csrf_token": token}).status_code == 409
    # a block is overturned the same way, with a second person's approval (a lead's): no label before it
    assert client.post("/cases/2/verdict", data={"verdict": "legit", "csrf_token": token}).status_code == 303
    assert store.case(2)["status"] == "approval" and len(store.pending_labels()) == 1
    store.act(2, "approve", "lea", "lead")
    assert [orjson.loads(r["body"])["label"] for r in store.pending_labels()] == ["fraud", "legit"]
    assert [{k: orjson.loads(r["body"])[k] for k in ("ip", "payment_ref")} for r in store.pending_labels()] == \
        [{"ip": "1.2.3.4", "payment_ref": None}, {"ip": "1.2.3.4", "payment_ref": "c-2"}]
    m = client.get("/metrics").get_data(as_text=True)  # a session may read the metrics too
    assert 'riskstream_review_verdicts_last_hour{verdict="fraud"} 1' in m
    assert "riskstream_review_agreement_ratio 0.5" in m  # fraud at 0.6 agrees, legit at 0.95 does not


def test_event_fields_render_as_text(client, store):
    feed(store, "e", [event(1, event_id=f"e1{XSS}"[:128], extras={"note": XSS})])
    feed(store, "d", [decision(1, event_id=f"e1{XSS}"[:128])])
    login(client)
    for path in ("/", "/cases/1"):
        page = client.get(path).get_data(as_text=True)
        assert "<script>window" not in page and "<img src=x" not in page
        assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in page
    r = client.get("/cases/1")
    assert "script-src" not in r.headers["Content-Security-Policy"] and "default-src 'none'" in r.headers["Content-Security-Policy"]


def test_queue_filters_sorts_and_counts(client, store):
    feed(store, "d", [decision(1, score=0.55), decision(2, score=0.8, reasons=["score_review"]),
                      decision(3, score=0.7, event_type="payment", reasons=["rule:shared_payment_instrument"])])
    login(client)

    def ids(q):
        return re.findall(r'href="/cases/(\d+)"', client.get(q).get_data(as_text=True))

    assert ids("/") == ["1", "2", "3"]
    assert ids("/?sort=score") == ["2", "3", "1"]
    assert ids("/?event_type=payment") == ["3"]
    assert ids("/?rule=new_account_big_order") == ["1"]
    assert ids("/?model_version=zzz") == []
    assert 'id="open-review">3<' in client.get("/").get_data(as_text=True)
    page = client.get("/cases/1").get_data(as_text=True)
    assert "user_age_ms = <b>1000.0</b> (&lt; 3600000)" in page  # the rule's features, with their values


def test_two_verdicts_at_once_one_wins(store):
    """The second of two simultaneous verdicts is refused (409) and leaves nothing: on PostgreSQL (READ
    COMMITTED) it read the case open, then its update waits for the first and finds the case closed."""
    import threading

    feed(store, "d", [decision(1)])
    other = Store(store.url if store.backend.name == "sqlite" else store.backend.url)
    first = other.tx()
    c = first.__enter__()  # the first analyst's transaction: the case is closed, not yet committed
    c.execute("UPDATE cases SET status = 'closed', verdict = 'legit', analyst = 'bob' WHERE case_id = 1")
    out = {}

    def second():
        try:
            out["label"] = store.close_case(1, "fraud", "", "ana")
        except StoreError as e:
            out["status"] = e.status

    t = threading.Thread(target=second)
    t.start()
    t.join(timeout=1.0)
    first.__exit__(None, None, None)  # commit: the second one goes on and finds the case closed
    t.join(timeout=30)
    assert out == {"status": 409}
    assert store.case(1)["analyst"] == "bob" and not store.pending_labels() and not store.audit_trail()
    other.close()


def test_postgresql_service_role_cannot_rewrite_the_trail(pg_url):
    """On PostgreSQL the service may run as a role that does not own the tables: it starts on the schema the
    owner made, works, and can neither change the trail nor drop or disable its trigger."""
    import psycopg

    Store(pg_url).close()  # the owner creates the schema
    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute("DO $$ BEGIN CREATE ROLE review_svc LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
        c.execute("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO review_svc")
        c.execute("GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO review_svc")
    svc = Store(pg_url.replace("postgresql://riskstream@", "postgresql://review_svc@"))
    feed(svc, "d", [decision(1)])
    svc.close_case(1, "fraud", "", "ana")
    assert [r["action"] for r in svc.audit_trail()] == ["verdict"]
    with pytest.raises(svc.backend.IntegrityError, match="append-only"):
        svc.conn().execute("DELETE FROM audit")
    for sql in ("DROP TRIGGER audit_append_only ON audit", "ALTER TABLE audit DISABLE TRIGGER ALL",
                "TRUNCATE audit"):
        with pytest.raises(psycopg.Error):
            svc.conn().execute(sql)
    assert len(svc.audit_trail()) == 1
    svc.close()
