"""The review service's database: cases, decision history, consumed offsets, analysts, sessions, the label
outbox and the append-only audit trail.

SQLite (standard library) by default. The database is named by a URL, ``sqlite:///relative/path.db`` or
``sqlite:////absolute/path.db`` (a plain path works too); other schemes are refused with a clear message.

Exactly once from Kafka: :meth:`Store.ingest` writes a batch of consumed records *and* the next offset of
every partition it read in one transaction. The consumer resumes from these offsets (never from a consumer
group's commits), so a crash before the commit re-reads the batch and a crash after it does not: no case
is lost or doubled.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

SCHEMA = """
CREATE TABLE IF NOT EXISTS offsets (
    topic TEXT NOT NULL, part INTEGER NOT NULL, next_offset INTEGER NOT NULL,
    PRIMARY KEY (topic, part));
-- every consumed decision (all kinds), slim: the history a case page shows; keyed by its position
CREATE TABLE IF NOT EXISTS decisions (
    topic TEXT NOT NULL, part INTEGER NOT NULL, off INTEGER NOT NULL,
    decision_id TEXT, event_id TEXT NOT NULL, user_id TEXT NOT NULL, device_id TEXT NOT NULL,
    event_type TEXT, decision TEXT NOT NULL, score REAL, model_version TEXT, reasons TEXT,
    event_ts INTEGER, decided_at INTEGER, consumed_at INTEGER NOT NULL,
    PRIMARY KEY (topic, part, off));
CREATE INDEX IF NOT EXISTS decisions_user ON decisions (user_id, event_ts);
CREATE INDEX IF NOT EXISTS decisions_device ON decisions (device_id, event_ts);
CREATE INDEX IF NOT EXISTS decisions_event ON decisions (event_id, user_id);
CREATE INDEX IF NOT EXISTS decisions_decided ON decisions (decided_at);
-- events waiting for their decision; kept only for cases (an allow decision drops its event)
CREATE TABLE IF NOT EXISTS events (
    event_id TEXT NOT NULL, user_id TEXT NOT NULL, body TEXT NOT NULL, seen_at INTEGER NOT NULL,
    PRIMARY KEY (event_id, user_id));
CREATE INDEX IF NOT EXISTS events_seen ON events (seen_at);
CREATE TABLE IF NOT EXISTS cases (
    case_id INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL, user_id TEXT NOT NULL, device_id TEXT NOT NULL, event_type TEXT,
    kind TEXT NOT NULL,                       -- the model's decision: review or block
    score REAL, shadow_score REAL, shadow_decision TEXT, model_version TEXT, rules_version TEXT,
    record TEXT NOT NULL,                     -- the decision record as consumed
    event_ts INTEGER, decided_at INTEGER, opened_at INTEGER NOT NULL,
    status TEXT NOT NULL DEFAULT 'open',      -- open | closed
    verdict TEXT, note TEXT, analyst TEXT, closed_at INTEGER,
    UNIQUE (event_id, user_id));
CREATE INDEX IF NOT EXISTS cases_queue ON cases (status, kind, decided_at);
CREATE TABLE IF NOT EXISTS case_rules (
    case_id INTEGER NOT NULL REFERENCES cases (case_id), rule TEXT NOT NULL, PRIMARY KEY (case_id, rule));
CREATE TABLE IF NOT EXISTS rulesets (version TEXT PRIMARY KEY, body TEXT NOT NULL, seen_at INTEGER NOT NULL);
-- one label per case, sent once: written with the verdict, marked sent with its topic position
CREATE TABLE IF NOT EXISTS label_outbox (
    case_id INTEGER PRIMARY KEY REFERENCES cases (case_id), event_id TEXT NOT NULL, body TEXT NOT NULL,
    created_at INTEGER NOT NULL, attempted_at INTEGER, sent_at INTEGER, sent_part INTEGER, sent_offset INTEGER);
CREATE TABLE IF NOT EXISTS users (
    username TEXT PRIMARY KEY, pw_hash TEXT NOT NULL, created_at INTEGER NOT NULL,
    disabled INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS sessions (
    token_hash TEXT PRIMARY KEY, username TEXT NOT NULL REFERENCES users (username), csrf TEXT NOT NULL,
    created_at INTEGER NOT NULL, last_seen INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at INTEGER NOT NULL, who TEXT NOT NULL, action TEXT NOT NULL,
    target TEXT, detail TEXT, remote TEXT);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
"""

VERDICTS = ("fraud", "legit")
KINDS = ("review", "block")
SORTS = ("oldest", "score")
MAX_NOTE = 2000
SESSION_IDLE_MS = 2 * 3600 * 1000
SESSION_MAX_MS = 12 * 3600 * 1000
EVENT_WAIT_MS = 3600 * 1000  # an event whose decision never came (a dead letter) is dropped after this


class StoreError(Exception):
    """A request the store refuses (the web layer turns it into a 4xx)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def now_ms() -> int:
    return int(time.time() * 1000)


def db_path(url: str) -> Path:
    """``sqlite:///rel.db``, ``sqlite:////abs.db`` or a plain path -> the file; other schemes refused."""
    if "://" not in url:
        return Path(url)
    scheme, _, rest = url.partition("://")
    if scheme != "sqlite":
        raise ValueError(f"database URL {url.split('@')[-1]!r}: only sqlite:/// is supported by this release "
                         "(use sqlite:///relative/path.db or sqlite:////absolute/path.db)")
    if not rest.startswith("/"):
        raise ValueError(f"database URL {url!r}: write sqlite:///path.db (three slashes)")
    return Path(rest[1:])  # "/rel.db" -> rel.db, "//abs.db" -> /abs.db


# -- passwords: scrypt from the standard library ----------------------------------------------------------

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2 ** 14, 8, 1


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    dk = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${salt.hex()}${dk.hex()}"


def check_password(password: str, stored: str) -> bool:
    try:
        algo, n, r, p, salt, want = stored.split("$")
        if algo != "scrypt":
            return False
        dk = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p),
                            dklen=len(want) // 2)
    except (ValueError, TypeError):
        return False
    return secrets.compare_digest(dk.hex(), want)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Session:
    username: str
    csrf: str


@dataclass(frozen=True)
class Consumed:
    """One consumed record: its topic position and value."""

    topic: str
    part: int
    offset: int
    value: bytes


class Store:
    """One database; a connection per thread (SQLite in WAL mode: readers never wait for the consumer)."""

    def __init__(self, url: str):
        self.path = db_path(url)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.local = threading.local()
        self.conn().executescript(SCHEMA)  # idempotent (IF NOT EXISTS); executescript manages its transaction

    def conn(self) -> sqlite3.Connection:
        c = getattr(self.local, "conn", None)
        if c is None:
            c = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            c.row_factory = sqlite3.Row
            c.execute("PRAGMA journal_mode=WAL")
            c.execute("PRAGMA synchronous=FULL")  # a committed case survives a power cut, not just a crash
            c.execute("PRAGMA foreign_keys=ON")
            self.local.conn = c
        return c

    def tx(self):
        return _Tx(self.conn())

    def query(self, sql: str, args=()) -> list[sqlite3.Row]:
        return self.conn().execute(sql, args).fetchall()

    def one(self, sql: str, args=()):
        return self.conn().execute(sql, args).fetchone()

    # -- ingest --------------------------------------------------------------------------------------

    def offsets(self) -> dict[tuple[str, int], int]:
        return {(r["topic"], r["part"]): r["next_offset"] for r in self.query("SELECT * FROM offsets")}

    def ingest(self, records: list[Consumed], next_offsets: dict[tuple[str, int], int], topics: dict[str, str],
               fail_before_commit: bool = False) -> dict:
        """Write a consumed batch and the partitions' next offsets in one transaction. ``topics`` maps the
        roles ``decisions``, ``events``, ``control`` to topic names. Returns counts."""
        from udfs.control import ControlError, parse_control

        t = now_ms()
        n = {"decisions": 0, "cases": 0, "events": 0, "rulesets": 0, "unreadable": 0}
        role = {v: k for k, v in topics.items() if v}
        with self.tx() as c:
            for r in records:
                kind = role.get(r.topic)
                if kind == "control":
                    try:
                        msg = parse_control(r.value)
                    except ControlError:
                        continue  # the job refuses it too (a dead letter there)
                    if msg["kind"] == "rules":
                        c.execute("INSERT OR REPLACE INTO rulesets VALUES (?, ?, ?)",
                                  (msg["version"], r.value.decode(), t))
                        n["rulesets"] += 1
                    continue
                try:
                    obj = orjson.loads(r.value)
                    if not isinstance(obj, dict):
                        raise ValueError("not an object")
                    if kind == "events":
                        self.ingest_event(c, obj, r.value, t, n)
                    else:
                        self.ingest_decision(c, r, obj, t, n)
                except (ValueError, KeyError, TypeError, orjson.JSONDecodeError):
                    n["unreadable"] += 1  # malformed events are the job's dead letters; counted, skipped
            for (topic, part), off in next_offsets.items():
                c.execute("INSERT INTO offsets VALUES (?, ?, ?) ON CONFLICT (topic, part) DO UPDATE SET "
                          "next_offset = excluded.next_offset", (topic, part, off))
            if fail_before_commit:
                raise RuntimeError("injected failure before the commit")
        return n

    @staticmethod
    def ingest_event(c, ev: dict, raw: bytes, t: int, n: dict) -> None:
        eid, uid = str(ev["event_id"]), str(ev["user_id"])
        done = c.execute("SELECT 1 FROM decisions WHERE event_id = ? AND user_id = ? AND decision = 'allow'",
                         (eid, uid)).fetchone()
        if done is None:
            c.execute("INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?)", (eid, uid, raw.decode(), t))
            n["events"] += 1

    @staticmethod
    def ingest_decision(c, r: Consumed, d: dict, t: int, n: dict) -> None:
        kind = d["decision"]
        if kind not in ("allow", "review", "block"):
            raise ValueError(f"unknown decision {kind!r}")
        eid, uid, did = str(d["event_id"]), str(d["user_id"]), str(d["device_id"])
        c.execute("INSERT INTO decisions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                  (r.topic, r.part, r.offset, d.get("decision_id"), eid, uid, did, d.get("event_type"), kind,
                   d.get("score"), d.get("model_version"), orjson.dumps(d.get("reasons") or []).decode(),
                   d.get("event_ts"), d.get("decided_at"), t))
        n["decisions"] += 1
        if kind == "allow":
            c.execute("DELETE FROM events WHERE event_id = ? AND user_id = ?", (eid, uid))
            return
        shadow = d.get("shadow") or {}
        cur = c.execute(
            "INSERT OR IGNORE INTO cases (event_id, user_id, device_id, event_type, kind, score, shadow_score, "
            "shadow_decision, model_version, rules_version, record, event_ts, decided_at, opened_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (eid, uid, did, d.get("event_type"), kind, d.get("score"), shadow.get("score"), shadow.get("decision"),
             d.get("model_version"), d.get("rules_version"), r.value.decode(), d.get("event_ts"),
             d.get("decided_at"), t))
        if cur.rowcount:  # a re-decision of the same event (replay, new model) keeps the first case
            case_id = cur.lastrowid
            for reason in d.get("reasons") or []:
                if isinstance(reason, str) and reason.startswith("rule:"):
                    c.execute("INSERT OR IGNORE INTO case_rules VALUES (?, ?)", (case_id, reason[5:]))
            n["cases"] += 1

    def prune(self, history_ms: int) -> None:
        """Drop decision history older than ``history_ms`` and events whose decision never came."""
        t = now_ms()
        with self.tx() as c:
            c.execute("DELETE FROM decisions WHERE decided_at < ?", (t - history_ms,))
            c.execute("DELETE FROM events WHERE seen_at < ? AND NOT EXISTS (SELECT 1 FROM cases k WHERE "
                      "k.event_id = events.event_id AND k.user_id = events.user_id)", (t - EVENT_WAIT_MS,))

    # -- the queue -------------------------------------------------------------------------------------

    def queue(self, kind: str = "review", sort: str = "oldest", event_type: str | None = None,
              rule: str | None = None, model_version: str | None = None, limit: int = 200) -> list[sqlite3.Row]:
        where, args = ["status = 'open'", "kind = ?"], [kind]
        if event_type:
            where.append("event_type = ?")
            args.append(event_type)
        if model_version:
            where.append("model_version = ?")
            args.append(model_version)
        if rule:
            where.append("case_id IN (SELECT case_id FROM case_rules WHERE rule = ?)")
            args.append(rule)
        order = "decided_at ASC, case_id ASC" if sort == "oldest" else "score IS NULL, score DESC, case_id ASC"
        return self.query(f"SELECT case_id, event_id, user_id, device_id, event_type, kind, score, shadow_score, "
                          f"model_version, decided_at, opened_at, record FROM cases WHERE {' AND '.join(where)} "
                          f"ORDER BY {order} LIMIT ?", (*args, limit))

    def queue_facets(self, kind: str) -> dict:
        """Open cases of a kind by event type, rule and model version (the filters and their counts)."""
        base = "FROM cases WHERE status = 'open' AND kind = ?"
        return {
            "event_type": [(r[0], r[1]) for r in self.query(
                f"SELECT event_type, count(*) {base} GROUP BY event_type ORDER BY 2 DESC", (kind,))],
            "model_version": [(r[0], r[1]) for r in self.query(
                f"SELECT model_version, count(*) {base} GROUP BY model_version ORDER BY 2 DESC", (kind,))],
            "rule": [(r[0], r[1]) for r in self.query(
                "SELECT rule, count(*) FROM case_rules JOIN cases USING (case_id) WHERE status = 'open' AND "
                "kind = ? GROUP BY rule ORDER BY 2 DESC", (kind,))],
        }

    def counts(self) -> dict:
        out = {"open_review": 0, "open_block": 0}
        for r in self.query("SELECT kind, count(*) AS n, min(decided_at) AS oldest FROM cases WHERE status = 'open' "
                            "GROUP BY kind"):
            out[f"open_{r['kind']}"] = r["n"]
            out[f"oldest_{r['kind']}_decided_at"] = r["oldest"]
        r = self.one("SELECT count(*) FROM cases WHERE status = 'closed'")
        out["closed"] = r[0]
        return out

    def case(self, case_id: int):
        return self.one("SELECT * FROM cases WHERE case_id = ?", (case_id,))

    def case_event(self, case) -> dict | None:
        r = self.one("SELECT body FROM events WHERE event_id = ? AND user_id = ?", (case["event_id"], case["user_id"]))
        return orjson.loads(r["body"]) if r else None

    def recent(self, column: str, value: str, limit: int = 20) -> list[sqlite3.Row]:
        assert column in ("user_id", "device_id")
        return self.query(f"SELECT event_id, user_id, device_id, event_type, decision, score, reasons, event_ts, "
                          f"decided_at FROM decisions WHERE {column} = ? ORDER BY event_ts DESC LIMIT ?",
                          (value, limit))

    def ruleset(self, version: str | None) -> dict | None:
        r = self.one("SELECT body FROM rulesets WHERE version = ?", (version,)) if version else None
        return orjson.loads(r["body"]) if r else None

    def case_labels(self, case_id: int):
        return self.one("SELECT * FROM label_outbox WHERE case_id = ?", (case_id,))

    # -- verdicts and the label outbox ---------------------------------------------------------------

    def close_case(self, case_id: int, verdict: str, note: str, analyst: str, remote: str | None = None) -> dict:
        """Record the verdict and the label to send, with the audit entry, in one transaction. A case takes
        one verdict: a second one is refused (409), so a case never has two labels."""
        if verdict not in VERDICTS:
            raise StoreError(400, f"verdict must be one of {', '.join(VERDICTS)}")
        if len(note) > MAX_NOTE:
            raise StoreError(400, f"the note is limited to {MAX_NOTE} characters")
        t = now_ms()
        with self.tx() as c:
            case = c.execute("SELECT * FROM cases WHERE case_id = ?", (case_id,)).fetchone()
            if case is None:
                raise StoreError(404, f"no case {case_id}")
            if case["status"] != "open":
                raise StoreError(409, f"case {case_id} already has a verdict ({case['verdict']} by "
                                      f"{case['analyst']}); nothing was changed")
            c.execute("UPDATE cases SET status = 'closed', verdict = ?, note = ?, analyst = ?, closed_at = ? "
                      "WHERE case_id = ? AND status = 'open'", (verdict, note, analyst, t, case_id))
            label = {"event_id": case["event_id"], "user_id": case["user_id"], "device_id": case["device_id"],
                     "event_ts": case["event_ts"], "label": verdict}
            c.execute("INSERT INTO label_outbox (case_id, event_id, body, created_at) VALUES (?, ?, ?, ?)",
                      (case_id, case["event_id"], orjson.dumps(label).decode(), t))
            self.audit_in(c, analyst, "verdict", f"case:{case_id}",
                          {"verdict": verdict, "model_decision": case["kind"], "event_id": case["event_id"],
                           "note": note}, remote, t)
        return label

    def pending_labels(self) -> list[sqlite3.Row]:
        return self.query("SELECT * FROM label_outbox WHERE sent_at IS NULL ORDER BY case_id")

    def label_attempt(self, case_id: int) -> None:
        with self.tx() as c:
            c.execute("UPDATE label_outbox SET attempted_at = ? WHERE case_id = ? AND attempted_at IS NULL",
                      (now_ms(), case_id))

    def label_sent(self, case_id: int, part: int, offset: int, found: bool = False) -> None:
        with self.tx() as c:
            cur = c.execute("UPDATE label_outbox SET sent_at = ?, sent_part = ?, sent_offset = ? WHERE case_id = ? "
                            "AND sent_at IS NULL", (now_ms(), part, offset, case_id))
            if cur.rowcount:
                self.audit_in(c, "service", "label_sent", f"case:{case_id}",
                              {"partition": part, "offset": offset, "recovered": found}, None, now_ms())

    # -- analysts and sessions -----------------------------------------------------------------------

    def add_user(self, username: str, password: str, by: str = "cli") -> None:
        if not username or len(username) > 64 or not username.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise StoreError(400, "a user name is 1-64 letters, digits, '.', '-' or '_'")
        if len(password) < 12:
            raise StoreError(400, "a password has at least 12 characters")
        with self.tx() as c:
            if c.execute("SELECT 1 FROM users WHERE username = ?", (username,)).fetchone():
                raise StoreError(409, f"user {username!r} exists")
            c.execute("INSERT INTO users VALUES (?, ?, ?, 0)", (username, hash_password(password), now_ms()))
            self.audit_in(c, by, "add_user", f"user:{username}", None, None, now_ms())

    def authenticate(self, username: str, password: str) -> bool:
        r = self.one("SELECT pw_hash, disabled FROM users WHERE username = ?", (username,))
        if r is None:
            check_password(password, hash_password("x" * 12))  # the same work whether or not the user exists
            return False
        return not r["disabled"] and check_password(password, r["pw_hash"])

    def recent_failures(self, username: str, window_ms: int) -> int:
        return self.one("SELECT count(*) FROM audit WHERE action = 'login_failed' AND target = ? AND at >= ?",
                        (f"user:{username}", now_ms() - window_ms))[0]

    def new_session(self, username: str) -> tuple[str, Session]:
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        t = now_ms()
        with self.tx() as c:
            c.execute("DELETE FROM sessions WHERE last_seen < ? OR created_at < ?", (t - SESSION_IDLE_MS,
                                                                                     t - SESSION_MAX_MS))
            c.execute("INSERT INTO sessions VALUES (?, ?, ?, ?, ?)", (token_digest(token), username, csrf, t, t))
        return token, Session(username, csrf)

    def session(self, token: str | None) -> Session | None:
        if not token or len(token) > 200:
            return None
        t = now_ms()
        r = self.one("SELECT s.*, u.disabled FROM sessions s JOIN users u USING (username) WHERE token_hash = ?",
                     (token_digest(token),))
        if r is None or r["disabled"] or r["last_seen"] < t - SESSION_IDLE_MS or r["created_at"] < t - SESSION_MAX_MS:
            return None
        if t - r["last_seen"] > 60_000:
            with self.tx() as c:
                c.execute("UPDATE sessions SET last_seen = ? WHERE token_hash = ?", (t, r["token_hash"]))
        return Session(r["username"], r["csrf"])

    def end_session(self, token: str) -> None:
        with self.tx() as c:
            c.execute("DELETE FROM sessions WHERE token_hash = ?", (token_digest(token),))

    # -- audit -----------------------------------------------------------------------------------------

    @staticmethod
    def audit_in(c, who: str, action: str, target: str | None, detail, remote: str | None, at: int) -> None:
        c.execute("INSERT INTO audit (at, who, action, target, detail, remote) VALUES (?, ?, ?, ?, ?, ?)",
                  (at, who, action, target, orjson.dumps(detail).decode() if detail is not None else None, remote))

    def audit(self, who: str, action: str, target: str | None = None, detail=None, remote: str | None = None) -> None:
        with self.tx() as c:
            self.audit_in(c, who, action, target, detail, remote, now_ms())

    def audit_trail(self, limit: int = 200) -> list[sqlite3.Row]:
        return self.query("SELECT * FROM audit ORDER BY id DESC LIMIT ?", (limit,))

    # -- metrics ---------------------------------------------------------------------------------------

    def metrics(self, review_threshold: float = 0.5) -> dict:
        t = now_ms()
        c = self.counts()
        hour = self.query("SELECT verdict, count(*) AS n FROM cases WHERE status = 'closed' AND closed_at >= ? "
                          "GROUP BY verdict", (t - 3600_000,))
        total = self.query("SELECT kind, verdict, count(*) AS n FROM cases WHERE status = 'closed' "
                           "GROUP BY kind, verdict")
        agree = self.one("SELECT count(*) AS n, sum(CASE WHEN (verdict = 'fraud') = (score >= ?) THEN 1 ELSE 0 END) "
                         "AS a FROM cases WHERE status = 'closed' AND score IS NOT NULL", (review_threshold,))
        pending = self.one("SELECT count(*) FROM label_outbox WHERE sent_at IS NULL")[0]
        oldest = c.get("oldest_review_decided_at")
        return {
            "queue_depth": {"review": c["open_review"], "block": c["open_block"]},
            "oldest_case_age_seconds": round((t - oldest) / 1000, 3) if oldest else 0.0,
            "verdicts_last_hour": {r["verdict"]: r["n"] for r in hour},
            "verdicts_total": [(r["kind"], r["verdict"], r["n"]) for r in total],
            "agreement": (agree["a"] or 0, agree["n"]),
            "labels_pending": pending,
            "decisions_consumed": self.one("SELECT count(*) FROM decisions")[0],
        }


class _Tx:
    """``with store.tx() as c:`` one IMMEDIATE transaction: committed on success, rolled back on any error."""

    def __init__(self, conn: sqlite3.Connection):
        self.c = conn

    def __enter__(self) -> sqlite3.Connection:
        self.c.execute("BEGIN IMMEDIATE")
        return self.c

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.c.execute("COMMIT" if exc_type is None else "ROLLBACK")
        return False


def random_password() -> str:
    return secrets.token_urlsafe(15)


def env_metrics_token() -> str | None:
    return os.environ.get("RISKSTREAM_REVIEW_METRICS_TOKEN") or None
