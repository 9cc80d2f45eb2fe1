"""The review pages (Flask, Jinja2 with autoescape): sign-in, the queue, a case, verdicts, the audit trail,
metrics.

- Every route but ``/login`` and ``/static`` needs a session (server-side, in the store; the cookie is
  HttpOnly, SameSite=Strict). ``/metrics`` takes a session or the metrics token (``Authorization: Bearer``).
- Every form carries a CSRF token (the session's; the sign-in form a cookie-bound one), checked on POST.
- Everything that comes from events is rendered escaped, and the Content-Security-Policy allows no script.
- A bad request gets a 4xx page that says what was wrong, and changes nothing.
"""

from __future__ import annotations

import re
import secrets
import threading
import time
import unicodedata
from dataclasses import dataclass
from urllib.parse import urlsplit

import orjson
from flask import Flask, Response, abort, g, has_request_context, redirect, render_template, request
from markupsafe import Markup

from udfs.events import EVENT_TYPES
from udfs.policy import DEFAULT_RULES

from . import explain, workflow
from .store import ENTITY_KINDS, KINDS, MAX_NOTE, MAX_PAGE, PAGE, SORTS, VIEWS, Store, StoreError, now_ms

SESSION_COOKIE = "rs_session"
LOGIN_CSRF_COOKIE = "rs_login_csrf"
LOCKOUT_FAILURES, LOCKOUT_WINDOW_MS = 5, 15 * 60 * 1000
PUBLIC = frozenset({"login", "login_post", "static"})
CSP = ("default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; "
       "base-uri 'none'")


LOGIN_RATE = (20, 3.0)  # per client: a burst of 20 sign-in POSTs, then one per 3 s
REFUSAL_WINDOW_S = 60.0  # a refusal repeated within this is counted into the next entry, not written again
REFUSALS_PER_CLIENT = 10  # audit rows of refusals per client per window; the rest become one summary row
NEXT_OK = re.compile(r"/(?![/\\])[A-Za-z0-9\-._~!$&'()*+,;=:@%/?]*")


def neutralise(v):
    """What a template shows: control, bidi and other invisible format characters (U+202E, U+2066, U+200B,
    ...) shown as ``<U+202E>`` so they can neither reorder nor hide what is displayed. Every ``{{ }}`` goes
    through this (Jinja2's finalize), before autoescape."""
    if not isinstance(v, str):
        return v
    if v.isascii() and v.isprintable():
        return v
    shown = "&lt;U+{:04X}&gt;" if isinstance(v, Markup) else "<U+{:04X}>"  # Markup (a macro's output): as HTML
    out = "".join(ch if ch in "\n\t" or unicodedata.category(ch) not in ("Cc", "Cf", "Zl", "Zp", "Cs", "Co")
                  else shown.format(ord(ch)) for ch in v)
    return Markup(out) if isinstance(v, Markup) else out


def safe_next(nxt: str | None) -> str:
    """A local path to go to after sign-in, else ``/``: only a path of URL characters starting with one
    ``/`` (no ``//``, ``/\\``, no whitespace or control character a browser would drop or fold)."""
    from urllib.parse import unquote

    ok = nxt and len(nxt) <= 500 and NEXT_OK.fullmatch(nxt) and NEXT_OK.fullmatch(unquote(nxt).replace(" ", "%20"))
    return nxt if ok else "/"  # decoded too: no %09, %2F or %5C that a proxy or browser could turn into //


class Refusals:
    """Bounds what unauthenticated clients can make the service write: a sign-in rate per client, and
    refusals coalesced (the same refusal from the same client within the window is counted into the next
    entry's ``repeated``) with at most ``REFUSALS_PER_CLIENT`` rows per client per window."""

    def __init__(self, store: Store, rate=LOGIN_RATE, window_s: float = REFUSAL_WINDOW_S,
                 per_client: int = REFUSALS_PER_CLIENT, clock=time.monotonic):
        self.store, self.rate, self.window, self.per_client, self.clock = store, rate, window_s, per_client, clock
        self.lock = threading.Lock()
        self.buckets: dict[str, tuple[float, float]] = {}
        self.last: dict[tuple, tuple[float, int]] = {}  # (client, action, target) -> (written at, repeats since)
        self.client: dict[str, list] = {}  # client -> [window start, rows written, suppressed]

    def allow(self, client: str | None) -> bool:
        burst, every = self.rate
        t = self.clock()
        with self.lock:
            if len(self.buckets) > 10_000:
                self.buckets.clear()
            tokens, at = self.buckets.get(client or "?", (float(burst), t))
            tokens = min(float(burst), tokens + (t - at) / every)
            ok = tokens >= 1.0
            self.buckets[client or "?"] = (tokens - 1.0 if ok else tokens, t)
            return ok

    def audit(self, who: str, action: str, target: str | None, client: str | None, detail: dict | None = None):
        t = self.clock()
        key = (client, action, target)
        rows = []
        with self.lock:
            if len(self.last) > 10_000:
                self.last.clear()
                self.client.clear()
            c = self.client.get(client)
            if c is None or t - c[0] >= self.window:
                if c is not None and c[2]:
                    rows.append(("service", "audit_suppressed", f"remote:{client}",
                                 {"refusals": c[2], "window_s": self.window}))
                c = self.client[client] = [t, 0, 0]
            at, repeats = self.last.get(key, (None, 0))
            if at is not None and t - at < self.window:
                self.last[key] = (at, repeats + 1)
            elif c[1] >= self.per_client:
                c[2] += 1
            else:
                c[1] += 1
                self.last[key] = (t, 0)
                rows.append((who, action, target, {**(detail or {}), **({"repeated": repeats} if repeats else {})}
                             or None))
        for w, a, tg, d in rows:
            self.store.audit(w, a, tg, d, client)


@dataclass(frozen=True)
class WebSettings:
    secure_cookies: bool = False  # set behind TLS
    metrics_token: str | None = None
    review_threshold: float = 0.5  # the model's own leaning, for analyst agreement


def fmt_ts(ms) -> str:
    if ms is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms / 1000)) + f".{int(ms) % 1000:03d}Z"


def _zone(tz: str | None = None):
    """The signed-in analyst's time zone (``review user set-timezone``; UTC by default)."""
    from zoneinfo import ZoneInfo

    if tz is None:
        sess = g.get("session") if has_request_context() else None
        tz = sess.timezone if sess is not None else "UTC"
    try:
        return ZoneInfo(tz)
    except Exception:  # a zone this machine no longer knows: UTC rather than a broken page
        return ZoneInfo("UTC")


def fmt_when(ms, tz: str | None = None) -> str:
    """A date and time to the second, in the analyst's time zone, named (``2026-01-05 14:03:22 CET``)."""
    import datetime as dt

    if ms is None:
        return "-"
    d = dt.datetime.fromtimestamp(ms / 1000, _zone(tz))
    return d.strftime("%Y-%m-%d %H:%M:%S ") + (d.tzname() or "UTC")


def fmt_num(v, digits: int = 4) -> str:
    """A number as an analyst reads it: integers whole (with thousands separators), others to ``digits``
    significant digits (no float noise: 19.060000000000002 -> 19.06), durations in ms left to :func:`fmt_ms`."""
    if v is None:
        return "-"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if v != v or v in (float("inf"), float("-inf")):
        return str(v)
    if float(v).is_integer() and abs(v) < 1e15:
        return f"{int(v):,}"
    r = float(f"{v:.{digits}g}")  # the significant digits, the float noise gone
    if r.is_integer():
        return f"{int(r):,}"
    return f"{r:,.12f}".rstrip("0").rstrip(".")


def fmt_feature(name: str, v) -> str:
    """A feature's value with its unit: ``*_ms`` ages and gaps as a duration, the rest as :func:`fmt_num`."""
    if isinstance(v, (int, float)) and not isinstance(v, bool) and name.endswith("_ms"):
        return fmt_duration(v)
    return fmt_num(v)


def fmt_duration(ms) -> str:
    if ms is None:
        return "-"
    s = abs(ms) / 1000
    sign = "-" if ms < 0 else ""
    if s < 1:
        return f"{sign}{abs(ms):.0f} ms"
    if s < 120:
        return f"{sign}{s:.0f} s"
    if s < 7200:
        return f"{sign}{s / 60:.0f} min"
    if s < 172800:
        return f"{sign}{s / 3600:.1f} h"
    return f"{sign}{s / 86400:.1f} d"


def fmt_age(ms) -> str:
    if ms is None:
        return "-"
    s = max(0, (time.time() * 1000 - ms) / 1000)
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    if s < 172800:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


def parse_when(v: str, tz: str | None = None) -> int:
    """``YYYY-MM-DDTHH:MM`` (a datetime-local field, in the analyst's time zone) -> epoch ms; else a 400."""
    import datetime as dt

    try:
        d = dt.datetime.strptime(v.strip()[:16], "%Y-%m-%dT%H:%M")
    except ValueError:
        abort(400, "until is a date and time, YYYY-MM-DDTHH:MM (in your time zone)")
    return int(d.replace(tzinfo=_zone(tz)).timestamp() * 1000)


def local_input(ms: int, tz: str | None = None) -> str:
    """``YYYY-MM-DDTHH:MM`` of ``ms`` in the analyst's time zone (a datetime-local field's value)."""
    import datetime as dt

    return dt.datetime.fromtimestamp(ms / 1000, _zone(tz)).strftime("%Y-%m-%dT%H:%M")


def rule_conditions(store: Store, record: dict) -> list[dict]:
    """The rules that fired on this decision, each condition with the value the decision saw."""
    fired = [r[5:] for r in record.get("reasons") or [] if isinstance(r, str) and r.startswith("rule:")]
    if not fired:
        return []
    version = record.get("rules_version")
    defs: dict[str, list] = {}
    body = store.ruleset(version) if version not in (None, "builtin", "config") else None
    if body:
        for r in body.get("rules") or []:
            defs[r.get("code")] = [tuple(c) for c in r.get("when") or []]
    else:
        defs = {r.code: list(r.conditions) for r in DEFAULT_RULES}
    values = {**(record.get("features") or {}), **(record.get("signals") or {}), "score": record.get("score")}
    out = []
    for code in fired:
        conds = [{"name": n, "op": op, "threshold": v, "value": values.get(n)} for n, op, v in defs.get(code, [])]
        out.append({"code": code, "conditions": conds, "known": code in defs})
    return out


def create_app(store: Store, settings: WebSettings | None = None, on_verdict=None) -> Flask:
    """``on_verdict()`` is called after a verdict is committed: it must not block (the service's wakes the
    background label sender; no request ever waits on the broker)."""
    settings = settings or WebSettings()
    app = Flask(__name__)
    app.config.update(MAX_CONTENT_LENGTH=64 * 1024, TEMPLATES_AUTO_RELOAD=False)
    app.jinja_env.filters["ts"] = fmt_ts
    app.jinja_env.filters["age"] = fmt_age
    app.jinja_env.filters["when"] = fmt_when
    app.jinja_env.filters["num"] = fmt_num
    app.jinja_env.filters["dur"] = fmt_duration
    app.jinja_env.filters["feature"] = fmt_feature
    app.jinja_env.filters["json"] = lambda v: orjson.dumps(v, option=orjson.OPT_INDENT_2).decode()
    app.jinja_env.autoescape = True  # every template, whatever its extension
    app.jinja_env.finalize = neutralise  # every displayed value: no control or bidi characters
    refusals = Refusals(store)

    def remote() -> str | None:
        return request.remote_addr

    def error(status: int, message: str):
        return render_template("error.html", status=status, message=message), status

    @app.errorhandler(400)
    @app.errorhandler(403)
    @app.errorhandler(404)
    @app.errorhandler(405)
    @app.errorhandler(413)
    def http_error(e):
        return error(e.code, e.description)

    @app.errorhandler(StoreError)
    def store_error(e: StoreError):
        return error(e.status, str(e))

    @app.before_request
    def require_session():
        g.session, g.token = None, None
        if "\x00" in request.path or any("\x00" in v for d in (request.args, request.form)
                                         for vs in d.listvalues() for v in vs):
            return error(400, "the request has a NUL character; nothing was changed")  # no database stores it
        g.session = store.session(request.cookies.get(SESSION_COOKIE))
        g.token = request.cookies.get(SESSION_COOKIE)
        if request.endpoint in PUBLIC or request.endpoint is None:
            return None
        if request.endpoint == "metrics":
            auth = request.headers.get("Authorization", "")
            if g.session or (settings.metrics_token and secrets.compare_digest(
                    auth.encode(), f"Bearer {settings.metrics_token}".encode())):
                return None
            return error(401, "metrics need a session or the metrics token (Authorization: Bearer ...)")
        if g.session is None:
            if request.method == "GET":
                return redirect("/login?next=" + request.full_path.rstrip("?")[:500], code=303)
            return error(401, "sign in first")
        if request.method == "POST":
            check_origin()
            sent = request.form.get("csrf_token", "")
            if not sent or not secrets.compare_digest(sent.encode(), g.session.csrf.encode()):
                refusals.audit(g.session.username, "csrf_refused", request.path, remote())
                return error(403, "the form's CSRF token is missing or wrong: reload the page and try again")
        return None

    def check_origin():
        """A browser's cross-site POST names another origin: refuse it before anything else."""
        origin = request.headers.get("Origin")
        if origin and origin != "null" and urlsplit(origin).netloc != request.host:
            refusals.audit(g.session.username if g.session else "?", "origin_refused", request.path, remote(),
                           {"origin": origin[:200]})
            abort(403, "cross-origin request refused")

    @app.after_request
    def headers(resp: Response):
        resp.headers["Content-Security-Policy"] = CSP
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["X-Frame-Options"] = "DENY"
        resp.headers["Referrer-Policy"] = "no-referrer"
        if request.endpoint != "static":
            resp.headers["Cache-Control"] = "no-store"
        return resp

    def checked_next(nxt: str | None) -> str:
        """``next`` with a control character (CR/LF: a header split) is a bad request, refused before
        anything is written; any other unsafe value becomes ``/``."""
        if nxt and any(unicodedata.category(ch) == "Cc" for ch in nxt):
            abort(400, "next has a control character; nothing was changed")
        return safe_next(nxt)

    @app.get("/login")
    def login():
        nxt = checked_next(request.args.get("next"))
        token = secrets.token_urlsafe(24)
        resp = Response(render_template("login.html", csrf_token=token, error=None,
                                        next=nxt))
        resp.set_cookie(LOGIN_CSRF_COOKIE, token, httponly=True, samesite="Strict", secure=settings.secure_cookies,
                        max_age=3600)
        return resp

    @app.post("/login")
    def login_post():
        check_origin()
        nxt = checked_next(request.form.get("next"))
        user, pw = request.form.get("username", "")[:64], request.form.get("password", "")[:1024]
        if not refusals.allow(remote()):
            refusals.audit(user or "?", "login_rate_limited", f"user:{user}", remote())
            return error(429, "too many sign-in attempts from this address: wait a minute")
        form_token, cookie_token = request.form.get("csrf_token", ""), request.cookies.get(LOGIN_CSRF_COOKIE, "")
        if not form_token or not cookie_token or not secrets.compare_digest(form_token.encode(), cookie_token.encode()):
            refusals.audit(user or "?", "login_csrf_refused", f"user:{user}", remote())
            return error(403, "the sign-in form's CSRF token is missing or wrong: reload the sign-in page")
        attempt = store.reserve_login(user, LOCKOUT_WINDOW_MS, LOCKOUT_FAILURES, remote()) if user else None
        if user and attempt is None:
            refusals.audit(user, "login_locked", f"user:{user}", remote())
            return error(429, "too many failed sign-ins for this user: wait 15 minutes")
        ok = bool(user) and store.authenticate(user, pw)
        if attempt is not None:
            store.finish_login(attempt, ok)
        if not ok:
            refusals.audit(user or "?", "login_failed", f"user:{user}", remote())
            token = secrets.token_urlsafe(24)
            resp = Response(render_template("login.html", csrf_token=token, error="wrong user name or password",
                                            next=nxt), status=401)
            resp.set_cookie(LOGIN_CSRF_COOKIE, token, httponly=True, samesite="Strict",
                            secure=settings.secure_cookies, max_age=3600)
            return resp
        token, _ = store.new_session(user)
        store.audit(user, "login", f"user:{user}", None, remote())
        resp = redirect(nxt, code=303)
        resp.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="Strict", secure=settings.secure_cookies)
        resp.delete_cookie(LOGIN_CSRF_COOKIE)
        return resp

    @app.post("/logout")
    def logout():
        store.end_session(g.token)
        store.audit(g.session.username, "logout", f"user:{g.session.username}", None, remote())
        resp = redirect("/login", code=303)
        resp.delete_cookie(SESSION_COOKIE)
        return resp

    def me() -> tuple[str, str]:
        return g.session.username, g.session.role

    def page_arg() -> int:
        p = request.args.get("page", "1")
        if not p.isdigit() or not 1 <= int(p) <= 100_000:
            abort(400, "page is a number from 1")
        return int(p)

    def case_rows(cases) -> list[dict]:
        t = now_ms()
        rows = []
        for c in cases:
            rec = orjson.loads(c["record"])
            d = dict(c)
            d.pop("record", None)
            rows.append({**d, "reasons": rec.get("reasons") or [],
                         "priority": workflow.priority(c["score"], c["amount"], c["decided_at"], c["due_at"], t),
                         "breached": c["status"] not in ("closed",) and workflow.breached(c["due_at"], t)})
        return rows

    @app.get("/")
    def queue():
        a = request.args
        kind, sort, view = a.get("kind", "review"), a.get("sort", "oldest"), a.get("view", "open")
        if kind not in (*KINDS, "all"):
            abort(400, f"kind must be one of {', '.join(KINDS)} or all")
        if sort not in SORTS:
            abort(400, f"sort must be one of {', '.join(SORTS)}")
        if view not in VIEWS:
            abort(400, f"view must be one of {', '.join(VIEWS)}")
        event_type = a.get("event_type") or None
        if event_type and event_type not in EVENT_TYPES:
            abort(400, f"unknown event type (one of {', '.join(EVENT_TYPES)})")
        rule, model = (a.get("rule") or None), (a.get("model_version") or None)
        for name, v in (("rule", rule), ("model_version", model)):
            if v is not None and len(v) > 128:
                abort(400, f"{name} is at most 128 characters")
        page = page_arg()
        per = a.get("per", str(PAGE))
        if not per.isdigit() or not 1 <= int(per) <= MAX_PAGE:
            abort(400, f"per is a number from 1 to {MAX_PAGE}")
        per = int(per)
        k = None if kind == "all" else kind
        args = dict(kind=k, sort=sort, event_type=event_type, rule=rule, model_version=model, view=view,
                    user=g.session.username)
        total = store.queue(count=True, **args)
        cases = store.queue(limit=per, offset=(page - 1) * per, **args)
        counts = store.counts(g.session.username)
        pages = max(1, (total + per - 1) // per)
        keep = {k2: v for k2, v in (("kind", kind), ("view", view), ("sort", sort), ("event_type", event_type),
                                    ("rule", rule), ("model_version", model), ("per", per if per != PAGE else None))
                if v}
        return render_template("queue.html", cases=case_rows(cases), counts=counts,
                               facets=store.queue_facets(k or "review"), kind=kind, sort=sort, view=view,
                               f={"event_type": event_type, "rule": rule, "model_version": model},
                               oldest=counts.get(f"oldest_{k or 'review'}_decided_at"), done=a.get("done", type=int),
                               event_types=EVENT_TYPES, page=page, pages=pages, total=total, per=per, keep=keep,
                               first=(page - 1) * per + 1 if cases else 0, last=(page - 1) * per + len(cases),
                               empty=a.get("empty"))

    @app.get("/cases/<int:case_id>")
    def case(case_id: int):
        c = store.case(case_id)
        if c is None:
            abort(404, f"no case {case_id}")
        rec = orjson.loads(c["record"])
        rules = rule_conditions(store, rec)
        feats = rec.get("features") or {}
        contrib = explain.contributions(rec)
        user, role = me()
        t = now_ms()
        status = workflow.effective_status(c["status"], c["snooze_until"], t)
        store.audit(g.session.username, "view_case", f"case:{case_id}", None, remote())
        return render_template(
            "case.html", c=c, rec=rec, event=store.case_event(c), rules=rules, contrib=contrib, features=feats,
            by_user=store.recent("user_id", c["user_id"]), by_device=store.recent("device_id", c["device_id"]),
            label=store.case_labels(case_id), labels=store.case_label_history(case_id), notes=store.notes(case_id),
            group=store.group(c), graph={k: v for k, v in feats.items() if k.startswith("graph_")}, status=status, lead=workflow.is_lead(role), me=user, max_note=MAX_NOTE,
            priority=workflow.priority(c["score"], c["amount"], c["decided_at"], c["due_at"], t),
            breached=status != "closed" and workflow.breached(c["due_at"], t),
            users=[u for u in store.users() if not u["disabled"]] if workflow.is_lead(role) else [],
            done=request.args.get("done", type=int), done_status=request.args.get("status"),
            snooze_default=local_input(t + 4 * 3600_000))

    def go_next(done: int | None, status: str | None = None):
        """After a verdict (or an escalation, a snooze): the next case, claimed; else the queue."""
        user, role = me()
        nxt = store.next_case(user, role, remote())
        q = f"done={done}&status={status}" if done else ""
        if nxt is None:
            return redirect(f"/?{q}&empty=1" if q else "/?empty=1", code=303)
        return redirect(f"/cases/{nxt}" + (f"?{q}" if q else ""), code=303)

    @app.post("/cases/<int:case_id>/verdict")
    def verdict(case_id: int):
        v, note = request.form.get("verdict", ""), request.form.get("note", "")
        if v not in workflow.CLOSING:
            abort(400, f"verdict must be one of {', '.join(workflow.CLOSING)}")
        user, role = me()
        res = store.act(case_id, v, user, role, note=note.strip(), remote=remote())
        if res["label"] is not None and on_verdict is not None:
            on_verdict()
        return go_next(case_id, res["status"])

    @app.post("/next")
    def next_case():
        return go_next(None)

    @app.post("/cases/<int:case_id>/act")
    def act(case_id: int):
        f = request.form
        action, note = f.get("action", ""), f.get("note", "").strip()
        if action not in ("claim", "release", "assign", "escalate", "snooze", "reopen", "approve", "reject"):
            abort(400, "action must be claim, release, assign, escalate, snooze, reopen, approve or reject")
        until = None
        if action == "snooze":
            until = parse_when(f.get("until", ""))
        assignee = (f.get("assignee") or None) if action == "assign" else None
        user, role = me()
        res = store.act(case_id, action, user, role, note=note, remote=remote(), snooze_until=until,
                        assignee=assignee)
        if res["label"] is not None and on_verdict is not None:
            on_verdict()
        if action in ("escalate", "snooze", "approve", "reject"):
            return go_next(case_id, res["status"])
        return redirect(f"/cases/{case_id}", code=303)

    @app.post("/cases/<int:case_id>/notes")
    def add_note(case_id: int):
        store.add_note(case_id, g.session.username, request.form.get("note", ""), remote())
        return redirect(f"/cases/{case_id}#notes", code=303)

    def entity_arg(kind: str) -> str:
        if kind not in ENTITY_KINDS:
            abort(404, f"no entity kind {kind!r} (one of {', '.join(ENTITY_KINDS)})")
        value = request.values.get("id", "")
        if not value or len(value) > 256:
            abort(400, "id is 1-256 characters")
        return value

    @app.get("/search")
    def search():
        q = request.args.get("q", "").strip()
        if len(q) > 256:
            abort(400, "the search is at most 256 characters")
        found = store.search(q) if q else {"cases": [], "entities": []}
        return render_template("search.html", q=q, cases=case_rows(found["cases"]), entities=found["entities"])

    @app.get("/entity/<kind>")
    def entity(kind: str):
        value = entity_arg(kind)
        e = store.entity(kind, value)
        return render_template("entity.html", kind=kind, value=value, e=e, cases=case_rows(e["cases"]),
                               open_n=sum(1 for c in e["cases"] if workflow.effective_status(
                                   c["status"], c["snooze_until"], now_ms()) == "open"),
                               bulk=request.args.get("bulk"), max_note=MAX_NOTE)

    @app.post("/entity/<kind>/bulk")
    def bulk(kind: str):
        value = entity_arg(kind)
        v = request.form.get("verdict", "")
        if v not in workflow.CLOSING:
            abort(400, f"verdict must be one of {', '.join(workflow.CLOSING)}")
        user, role = me()
        out = store.bulk(kind, value, v, user, role, request.form.get("note", "").strip(), remote())
        if out["closed"] and on_verdict is not None:
            on_verdict()
        from urllib.parse import urlencode

        summary = f"{len(out['closed'])} closed {v}, {len(out['approval'])} awaiting approval, " \
                  f"{len(out['skipped'])} skipped (claimed by someone else)"
        return redirect(f"/entity/{kind}?" + urlencode({"id": value, "bulk": summary}), code=303)

    @app.get("/audit")
    def audit():
        if not workflow.is_lead(g.session.role):
            abort(403, "the audit trail is for leads and admins")
        return render_template("audit.html", rows=store.audit_trail())

    @app.get("/metrics")
    def metrics():
        m = store.metrics(settings.review_threshold)
        lines = [
            "# HELP riskstream_review_queue_depth Open cases by the model's decision.",
            "# TYPE riskstream_review_queue_depth gauge",
            *(f'riskstream_review_queue_depth{{kind="{k}"}} {v}' for k, v in m["queue_depth"].items()),
            "# HELP riskstream_review_oldest_case_age_seconds Age of the oldest open review case (since decided).",
            "# TYPE riskstream_review_oldest_case_age_seconds gauge",
            f"riskstream_review_oldest_case_age_seconds {m['oldest_case_age_seconds']}",
            "# HELP riskstream_review_verdicts_last_hour Verdicts given in the last hour.",
            "# TYPE riskstream_review_verdicts_last_hour gauge",
            *(f'riskstream_review_verdicts_last_hour{{verdict="{v}"}} {m["verdicts_last_hour"].get(v, 0)}'
              for v in workflow.VERDICTS),
            "# HELP riskstream_review_verdicts_total Verdicts by the model's decision and the analyst's verdict.",
            "# TYPE riskstream_review_verdicts_total counter",
            *(f'riskstream_review_verdicts_total{{kind="{k}",verdict="{v}"}} {n}' for k, v, n in m["verdicts_total"]),
            "# HELP riskstream_review_agreement_ratio Share of verdicts that match the model's leaning "
            "(fraud when score >= review threshold).",
            "# TYPE riskstream_review_agreement_ratio gauge",
            f"riskstream_review_agreement_ratio {m['agreement'][0] / m['agreement'][1] if m['agreement'][1] else 'NaN'}",
            "# HELP riskstream_review_agreement_cases Verdicts with a model score (the ratio's denominator).",
            "# TYPE riskstream_review_agreement_cases gauge",
            f"riskstream_review_agreement_cases {m['agreement'][1]}",
            "# HELP riskstream_review_labels_pending Verdicts whose label is not yet on the labels topic.",
            "# TYPE riskstream_review_labels_pending gauge",
            f"riskstream_review_labels_pending {m['labels_pending']}",
            "# HELP riskstream_review_decisions_stored Decisions in the history (all kinds).",
            "# TYPE riskstream_review_decisions_stored gauge",
            f"riskstream_review_decisions_stored {m['decisions_consumed']}",
        ]
        return Response("\n".join(lines) + "\n", mimetype="text/plain", headers={"X-Robots-Tag": "none"},
                        content_type="text/plain; version=0.0.4; charset=utf-8")

    return app
