"""The review pages as an attacker would try them (issue 24's findings), each test written to fail before
its fix: unauthenticated audit flooding, refused forms audited (bounded), bidi and control characters in
displayed strings, one password hash per sign-in whether the user exists or not, an atomic lockout, a
strict ``next``, CR/LF in ``next``, the ``review user`` commands, and ``RISKSTREAM_KAFKA_PORT`` for ``run``.
No broker: Flask's test client on SQLite (the lockout on PostgreSQL too)."""

from __future__ import annotations

import re
import threading

import pytest

from riskstream.tools.review import store as store_mod
from riskstream.tools.review.store import Store
from riskstream.tools.review.web import WebSettings, create_app
from tests.test_review import decision, event, feed, login

PW = "correct horse battery"


@pytest.fixture
def sstore(tmp_path):
    s = Store(f"sqlite:///{tmp_path / 'r.db'}")
    s.add_user("ana", PW)
    yield s
    s.close()


@pytest.fixture
def client(sstore):
    return create_app(sstore, WebSettings()).test_client()


def sign_in_token(client) -> str:
    page = client.get("/login").get_data(as_text=True)
    return re.search(r'action="/login" class="login">\s*<input type="hidden" name="csrf_token" value="([^"]+)"',
                     page).group(1)


def audit_rows(store) -> int:
    return store.one("SELECT count(*) FROM audit")[0]


def test_a_replayed_sign_in_pair_cannot_flood_the_audit_trail(client, sstore):
    for _ in range(5):
        assert login(client, pw="wrong password!").status_code == 401
    token = sign_in_token(client)  # one CSRF pair, replayed
    before = audit_rows(sstore)
    codes = [client.post("/login", data={"csrf_token": token, "username": "ana", "password": "x" * 12}).status_code
             for _ in range(200)]
    assert set(codes) == {429}
    added = audit_rows(sstore) - before
    assert added <= 3, f"200 refused sign-ins wrote {added} audit rows"
    actions = {r["action"] for r in sstore.audit_trail()}
    assert {"login_locked", "login_rate_limited", "login_failed"} <= actions
    # the failed sign-ins are counted, coalesced: the first is a row, the next ones its "repeated"
    assert sstore.one("SELECT count(*) FROM audit WHERE action = 'login_failed'")[0] == 1


def test_refused_forms_are_audited_and_bounded(client, sstore):
    feed(sstore, "d", [decision(1)])
    assert client.post("/login", data={"username": "ana", "password": PW},
                       headers={"Origin": "http://evil.example"}).status_code == 403
    assert client.post("/login", data={"username": "ana", "password": PW, "csrf_token": "forged"}).status_code == 403
    login(client)
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/cases/1").get_data(as_text=True)).group(1)
    for _ in range(50):
        assert client.post("/cases/1/verdict", data={"verdict": "fraud", "csrf_token": token},
                           headers={"Origin": "http://evil.example"}).status_code == 403
    rows = [(r["action"], r["who"]) for r in sstore.audit_trail()]
    assert ("origin_refused", "?") in rows and ("login_csrf_refused", "ana") in rows
    assert ("origin_refused", "ana") in rows
    assert sum(1 for a, _ in rows if a == "origin_refused") == 2  # 51 refusals, one row per client and target
    assert sstore.case(1)["status"] == "open"


def test_bidi_and_control_characters_are_shown_neutralised(client, sstore):
    rlo, lri = "\u202e", "\u2066"
    eid = f"inv{rlo}gnp.exe"
    feed(sstore, "e", [event(1, event_id=eid, user_id=f"u1{lri}x", currency="E\x1b[31mUR",
                             extras={"note": f"a{rlo}b\x1b[31mc\u200bd"})])
    feed(sstore, "d", [decision(1, event_id=eid, user_id=f"u1{lri}x", device_id=f"d{rlo}1")])
    login(client)
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/cases/1").get_data(as_text=True)).group(1)
    client.post("/cases/1/verdict", data={"verdict": "fraud", "note": f"looks {rlo}fine", "csrf_token": token})
    for path in ("/", "/?kind=review", "/cases/1", "/audit"):
        page = client.get(path).get_data(as_text=True)
        bad = [f"U+{ord(ch):04X}" for ch in page if ch in (rlo, lri, "\x1b", "\u200b")]
        assert not bad, f"{path} shows {bad}"
    page = client.get("/cases/1").get_data(as_text=True)
    assert "inv&lt;U+202E&gt;gnp.exe" in page and "&lt;U+001B&gt;" in page and "&lt;U+200B&gt;" in page


def test_a_sign_in_costs_one_hash_whether_the_user_exists_or_not(sstore, monkeypatch):
    calls = []
    real = store_mod.hashlib.scrypt
    monkeypatch.setattr(store_mod.hashlib, "scrypt", lambda *a, **k: calls.append(1) or real(*a, **k))
    sstore.add_user("bob", PW)
    sstore.set_disabled("bob", True)
    work = {}
    for user in ("ana", "nobody", "bob"):
        calls.clear()
        assert not sstore.authenticate(user, "wrong password!")
        work[user] = len(calls)
    calls.clear()
    assert not sstore.authenticate("bob", PW)  # disabled: the right password does not sign in either
    work["bob (right password)"] = len(calls)
    assert work == {"ana": 1, "nobody": 1, "bob": 1, "bob (right password)": 1}


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_parallel_burst_gets_at_most_five_password_checks(backend, tmp_path, request, monkeypatch):
    url = f"sqlite:///{tmp_path / 'r.db'}" if backend == "sqlite" else request.getfixturevalue("pg_url")
    store = Store(url)
    store.add_user("ana", PW)
    app = create_app(store, WebSettings())
    checks, lock = [], threading.Lock()
    real = store_mod.check_password

    def counted(pw, stored):
        with lock:
            checks.append(1)
        return real(pw, stored)

    monkeypatch.setattr(store_mod, "check_password", counted)
    clients = [app.test_client() for _ in range(20)]
    tokens = [sign_in_token(c) for c in clients]
    go, codes = threading.Barrier(20), []

    def attempt(c, token):
        go.wait()
        r = c.post("/login", data={"csrf_token": token, "username": "ana", "password": "wrong password!"})
        with lock:
            codes.append(r.status_code)
        store.close()

    threads = [threading.Thread(target=attempt, args=ct) for ct in zip(clients, tokens)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(codes) == [401] * 5 + [429] * 15 and len(checks) == 5, (codes, len(checks))
    store.close()


@pytest.mark.parametrize("nxt", ["/\t/evil.example", "/%09/evil.example", "//evil.example", "/\\evil.example",
                                 "/%2F/evil.example", "/%5C/evil.example", "https://evil.example", " //evil.example",
                                 "/\u3000/evil.example"])
def test_next_never_leaves_the_site(client, nxt):
    token = sign_in_token(client)
    r = client.post("/login", data={"csrf_token": token, "username": "ana", "password": PW, "next": nxt})
    if r.status_code == 400:  # a control character: refused outright
        return
    assert r.status_code == 303 and r.headers["Location"] == "/", (nxt, r.headers.get("Location"))
    page = client.get("/login?next=" + nxt.replace("%", "%25")).get_data(as_text=True)
    assert "evil" not in page


def test_a_safe_next_is_kept(client):
    token = sign_in_token(client)
    r = client.post("/login", data={"csrf_token": token, "username": "ana", "password": PW,
                                    "next": "/cases/1?kind=review&x=%20y"})
    assert r.status_code == 303 and r.headers["Location"] == "/cases/1?kind=review&x=%20y"


@pytest.mark.parametrize("nxt", ["/x\r\nSet-Cookie: evil=1", "/x\nLocation: //evil.example", "/\r"])
def test_cr_lf_in_next_is_a_400_before_any_session(client, sstore, nxt):
    token = sign_in_token(client)
    r = client.post("/login", data={"csrf_token": token, "username": "ana", "password": PW, "next": nxt})
    assert r.status_code == 400 and "rs_session" not in r.headers.get("Set-Cookie", "")
    assert sstore.one("SELECT count(*) FROM sessions")[0] == 0
    assert client.get("/login?next=" + nxt.replace("\r", "%0D").replace("\n", "%0A")).status_code == 400


def test_review_user_disable_enable_and_reset_password(client, sstore, tmp_path, monkeypatch, capsys):
    import io

    from riskstream.cli import main

    db = f"sqlite:///{tmp_path / 'r.db'}"
    assert login(client).status_code == 303 and client.get("/").status_code == 200
    assert main(["review", "user", "disable", "ana", "--db", db]) == 0
    assert client.get("/").status_code == 303  # the session ended
    assert login(client).status_code == 401
    assert main(["review", "user", "enable", "ana", "--db", db]) == 0
    assert login(client).status_code == 303
    monkeypatch.setattr("sys.stdin", io.StringIO("a brand new passphrase\n"))
    assert main(["review", "user", "reset-password", "ana", "--password-stdin", "--db", db]) == 0
    assert client.get("/").status_code == 303  # sessions end with the old password
    assert login(client).status_code == 401
    assert login(client, pw="a brand new passphrase").status_code == 303
    with pytest.raises(SystemExit, match="no user 'zed'"):
        main(["review", "user", "disable", "zed", "--db", db])
    with pytest.raises(SystemExit, match="disable NAME"):
        main(["review", "user", "frobnicate", "ana", "--db", db])
    actions = [r["action"] for r in sstore.audit_trail()]
    assert {"disable_user", "enable_user", "reset_password"} <= set(actions)


def test_run_follows_riskstream_kafka_port(monkeypatch):
    from riskstream.cli import build_parser
    from riskstream.jobflags import job_config

    monkeypatch.delenv("RISKSTREAM_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.setenv("RISKSTREAM_KAFKA_PORT", "19093")
    assert job_config(build_parser().parse_args(["run"])).bootstrap_servers == "127.0.0.1:19093"
    assert job_config(build_parser().parse_args(["run", "--bootstrap-servers", "h:1"])).bootstrap_servers == "h:1"
    monkeypatch.setenv("RISKSTREAM_BOOTSTRAP_SERVERS", "h:2")
    assert job_config(build_parser().parse_args(["run"])).bootstrap_servers == "h:2"
