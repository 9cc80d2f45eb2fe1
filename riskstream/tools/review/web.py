"""The review pages (Flask, Jinja2 with autoescape): sign-in, the queue, a case, verdicts, the audit trail,
metrics.

- Every route but ``/login`` and ``/static`` needs a session (server-side, in the store; the cookie is
  HttpOnly, SameSite=Strict). ``/metrics`` takes a session or the metrics token (``Authorization: Bearer``).
- Every form carries a CSRF token (the session's; the sign-in form a cookie-bound one), checked on POST.
- Everything that comes from events is rendered escaped, and the Content-Security-Policy allows no script.
- A bad request gets a 4xx page that says what was wrong, and changes nothing.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import orjson
from flask import Flask, Response, abort, g, redirect, render_template, request

from udfs.events import EVENT_TYPES
from udfs.policy import DEFAULT_RULES

from .store import KINDS, MAX_NOTE, SORTS, VERDICTS, Store, StoreError

SESSION_COOKIE = "rs_session"
LOGIN_CSRF_COOKIE = "rs_login_csrf"
LOCKOUT_FAILURES, LOCKOUT_WINDOW_MS = 5, 15 * 60 * 1000
PUBLIC = frozenset({"login", "login_post", "static"})
CSP = ("default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; "
       "base-uri 'none'")


@dataclass(frozen=True)
class WebSettings:
    secure_cookies: bool = False  # set behind TLS
    metrics_token: str | None = None
    review_threshold: float = 0.5  # the model's own leaning, for analyst agreement


def fmt_ts(ms) -> str:
    if ms is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms / 1000)) + f".{int(ms) % 1000:03d}Z"


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
    """``on_verdict()`` is called after a verdict is committed (the label sender sends it)."""
    settings = settings or WebSettings()
    app = Flask(__name__)
    app.config.update(MAX_CONTENT_LENGTH=64 * 1024, TEMPLATES_AUTO_RELOAD=False)
    app.jinja_env.filters["ts"] = fmt_ts
    app.jinja_env.filters["age"] = fmt_age
    app.jinja_env.filters["json"] = lambda v: orjson.dumps(v, option=orjson.OPT_INDENT_2).decode()
    app.jinja_env.autoescape = True  # every template, whatever its extension

    def remote() -> str | None:
        return request.remote_addr

    def error(status: int, message: str):
        return render_template("error.html", status=status, message=message), status

    @app.errorhandler(400)
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
                store.audit(g.session.username, "csrf_refused", request.path, None, remote())
                return error(403, "the form's CSRF token is missing or wrong: reload the page and try again")
        return None

    def check_origin():
        """A browser's cross-site POST names another origin: refuse it before anything else."""
        origin = request.headers.get("Origin")
        if origin and origin != "null" and urlsplit(origin).netloc != request.host:
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

    @app.get("/login")
    def login():
        token = secrets.token_urlsafe(24)
        resp = Response(render_template("login.html", csrf_token=token, error=None,
                                        next=safe_next(request.args.get("next"))))
        resp.set_cookie(LOGIN_CSRF_COOKIE, token, httponly=True, samesite="Strict", secure=settings.secure_cookies,
                        max_age=3600)
        return resp

    def safe_next(nxt: str | None) -> str:
        return nxt if nxt and nxt.startswith("/") and not nxt.startswith("//") and "\\" not in nxt else "/"

    @app.post("/login")
    def login_post():
        check_origin()
        form_token, cookie_token = request.form.get("csrf_token", ""), request.cookies.get(LOGIN_CSRF_COOKIE, "")
        if not form_token or not cookie_token or not secrets.compare_digest(form_token.encode(), cookie_token.encode()):
            return error(403, "the sign-in form's CSRF token is missing or wrong: reload the sign-in page")
        user, pw = request.form.get("username", "")[:64], request.form.get("password", "")[:1024]
        if store.recent_failures(user, LOCKOUT_WINDOW_MS) >= LOCKOUT_FAILURES:
            store.audit(user or "?", "login_locked", f"user:{user}", None, remote())
            return error(429, "too many failed sign-ins for this user: wait 15 minutes")
        if not user or not store.authenticate(user, pw):
            store.audit(user or "?", "login_failed", f"user:{user}", None, remote())
            token = secrets.token_urlsafe(24)
            resp = Response(render_template("login.html", csrf_token=token, error="wrong user name or password",
                                            next=safe_next(request.form.get("next"))), status=401)
            resp.set_cookie(LOGIN_CSRF_COOKIE, token, httponly=True, samesite="Strict",
                            secure=settings.secure_cookies, max_age=3600)
            return resp
        token, _ = store.new_session(user)
        store.audit(user, "login", f"user:{user}", None, remote())
        resp = redirect(safe_next(request.form.get("next")), code=303)
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

    @app.get("/")
    def queue():
        a = request.args
        kind, sort = a.get("kind", "review"), a.get("sort", "oldest")
        if kind not in KINDS:
            abort(400, f"kind must be one of {', '.join(KINDS)}")
        if sort not in SORTS:
            abort(400, f"sort must be one of {', '.join(SORTS)}")
        event_type = a.get("event_type") or None
        if event_type and event_type not in EVENT_TYPES:
            abort(400, f"unknown event type (one of {', '.join(EVENT_TYPES)})")
        rule, model = (a.get("rule") or None), (a.get("model_version") or None)
        for name, v in (("rule", rule), ("model_version", model)):
            if v is not None and len(v) > 128:
                abort(400, f"{name} is at most 128 characters")
        cases = store.queue(kind, sort, event_type, rule, model)
        rows = []
        for c in cases:
            rec = orjson.loads(c["record"])
            rows.append({**dict(c), "reasons": rec.get("reasons") or []})
        counts = store.counts()
        return render_template("queue.html", cases=rows, counts=counts, facets=store.queue_facets(kind), kind=kind,
                               sort=sort, f={"event_type": event_type, "rule": rule, "model_version": model},
                               oldest=counts.get(f"oldest_{kind}_decided_at"), done=a.get("done", type=int),
                               event_types=EVENT_TYPES)

    @app.get("/cases/<int:case_id>")
    def case(case_id: int):
        c = store.case(case_id)
        if c is None:
            abort(404, f"no case {case_id}")
        rec = orjson.loads(c["record"])
        rules = rule_conditions(store, rec)
        read = {cond["name"] for r in rules for cond in r["conditions"]}
        feats = rec.get("features") or {}
        numeric = [(k, v) for k, v in feats.items() if isinstance(v, (int, float)) and k not in read]
        largest = sorted(numeric, key=lambda kv: -abs(kv[1]))[:8]
        store.audit(g.session.username, "view_case", f"case:{case_id}", None, remote())
        return render_template("case.html", c=c, rec=rec, event=store.case_event(c), rules=rules, largest=largest,
                               features=feats, by_user=store.recent("user_id", c["user_id"]),
                               by_device=store.recent("device_id", c["device_id"]), label=store.case_labels(case_id),
                               verdicts=VERDICTS, max_note=MAX_NOTE)

    @app.post("/cases/<int:case_id>/verdict")
    def verdict(case_id: int):
        v, note = request.form.get("verdict", ""), request.form.get("note", "")
        if v not in VERDICTS:
            abort(400, f"verdict must be one of {', '.join(VERDICTS)}")
        store.close_case(case_id, v, note.strip(), g.session.username, remote())
        if on_verdict is not None:
            on_verdict()
        return redirect(f"/?done={case_id}", code=303)

    @app.get("/audit")
    def audit():
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
              for v in VERDICTS),
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
