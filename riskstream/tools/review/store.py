"""The review service's database: cases, decision history, consumed offsets, analysts, sessions, the label
outbox and the append-only audit trail.

SQLite (standard library) by default; PostgreSQL by configuration. The database is named by a URL:
``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db`` (a plain path works too), or
``postgresql://user@host:port/dbname`` (``postgres://`` too; libpq's own settings, ``PGPASSWORD`` or
``~/.pgpass``, give the password, so it need not be in the URL). Other schemes are refused with a clear
message. PostgreSQL needs the ``review`` extra's driver (psycopg 3).

Every difference between the two is in this module, in :class:`SQLite` and :class:`Postgres` (connecting,
column types, placeholders, rows, the transaction start, the audit trail's triggers); the SQL of the store
itself is written once (``?`` placeholders, ``ON CONFLICT`` upserts and ``RETURNING``, which both accept).

Exactly once from Kafka: :meth:`Store.ingest` writes a batch of consumed records *and* the next offset of
every partition it read in one transaction. The consumer resumes from these offsets (never from a consumer
group's commits), so a crash before the commit re-reads the batch and a crash after it does not: no case
is lost or doubled.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import orjson

from udfs.features import GRAPH, LABEL_ENTITIES

from . import workflow
from .workflow import WorkflowError

# the key fields a label names when it knows them (beyond the user's and device's): each entity's
OPTIONAL_LABEL_KEYS = tuple(e.key_field for e in LABEL_ENTITIES if not e.label_required)

# The tables, once for both databases: {id} is the auto-numbered key, {i64} a 64-bit integer (offsets and
# millisecond times), {f64} a double. The audit trail's triggers are each backend's own (AUDIT_TRIGGERS).
SCHEMA = """
CREATE TABLE IF NOT EXISTS offsets (
    topic TEXT NOT NULL, part INTEGER NOT NULL, next_offset {i64} NOT NULL,
    PRIMARY KEY (topic, part));
-- every consumed decision (all kinds), slim: the history a case page shows; keyed by its position
CREATE TABLE IF NOT EXISTS decisions (
    topic TEXT NOT NULL, part INTEGER NOT NULL, off {i64} NOT NULL,
    decision_id TEXT, event_id TEXT NOT NULL, user_id TEXT NOT NULL, device_id TEXT NOT NULL,
    event_type TEXT, decision TEXT NOT NULL, score {f64}, model_version TEXT, reasons TEXT,
    event_ts {i64}, decided_at {i64}, consumed_at {i64} NOT NULL,
    PRIMARY KEY (topic, part, off));
CREATE INDEX IF NOT EXISTS decisions_user ON decisions (user_id, event_ts);
CREATE INDEX IF NOT EXISTS decisions_device ON decisions (device_id, event_ts);
CREATE INDEX IF NOT EXISTS decisions_event ON decisions (event_id, user_id);
CREATE INDEX IF NOT EXISTS decisions_decided ON decisions (decided_at);
-- events waiting for their decision; kept only for cases (an allow decision drops its event)
CREATE TABLE IF NOT EXISTS events (
    event_id TEXT NOT NULL, user_id TEXT NOT NULL, body TEXT NOT NULL, seen_at {i64} NOT NULL,
    PRIMARY KEY (event_id, user_id));
CREATE INDEX IF NOT EXISTS events_seen ON events (seen_at);
CREATE TABLE IF NOT EXISTS cases (
    case_id {id},
    event_id TEXT NOT NULL, user_id TEXT NOT NULL, device_id TEXT NOT NULL, event_type TEXT,
    kind TEXT NOT NULL,                       -- the model's decision: review or block
    score {f64}, shadow_score {f64}, shadow_decision TEXT, model_version TEXT, rules_version TEXT,
    record TEXT NOT NULL,                     -- the decision record as consumed
    event_ts {i64}, decided_at {i64}, opened_at {i64} NOT NULL,
    status TEXT NOT NULL DEFAULT 'open',      -- open | closed
    verdict TEXT, note TEXT, analyst TEXT, closed_at {i64},
    UNIQUE (event_id, user_id));
CREATE INDEX IF NOT EXISTS cases_queue ON cases (status, kind, decided_at);
CREATE TABLE IF NOT EXISTS case_rules (
    case_id {i64} NOT NULL REFERENCES cases (case_id), rule TEXT NOT NULL, PRIMARY KEY (case_id, rule));
CREATE TABLE IF NOT EXISTS rulesets (version TEXT PRIMARY KEY, body TEXT NOT NULL, seen_at {i64} NOT NULL);
-- one label per case, sent once: written with the verdict, marked sent with its topic position
CREATE TABLE IF NOT EXISTS label_outbox (
    case_id {i64} PRIMARY KEY REFERENCES cases (case_id), event_id TEXT NOT NULL, body TEXT NOT NULL,
    created_at {i64} NOT NULL, attempted_at {i64}, sent_at {i64}, sent_part INTEGER, sent_offset {i64});
CREATE TABLE IF NOT EXISTS users (
    username TEXT PRIMARY KEY, pw_hash TEXT NOT NULL, created_at {i64} NOT NULL,
    disabled INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS sessions (
    token_hash TEXT PRIMARY KEY, username TEXT NOT NULL REFERENCES users (username), csrf TEXT NOT NULL,
    created_at {i64} NOT NULL, last_seen {i64} NOT NULL);
-- sign-in attempts, for the lockout: a password check is reserved ('pending') before it runs, so a burst
-- in parallel gets no more checks than the limit; then 'failed' or 'ok'
CREATE TABLE IF NOT EXISTS login_attempts (
    id {id}, username TEXT NOT NULL, at {i64} NOT NULL, outcome TEXT NOT NULL, remote TEXT);
CREATE INDEX IF NOT EXISTS login_attempts_user ON login_attempts (username, at);
-- the store's identity (store_id): review services on one labels topic must share it
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS audit (
    id {id}, at {i64} NOT NULL, who TEXT NOT NULL, action TEXT NOT NULL,
    target TEXT, detail TEXT, remote TEXT);
"""

APPEND_ONLY = "the audit trail is append-only"


def check_timezone(name: str) -> None:
    """An IANA time zone name this machine knows (zoneinfo), or a StoreError that says so."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        if not name or len(name) > 64 or "\x00" in name:
            raise ValueError
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise StoreError(400, f"{name[:64]!r} is not a time zone: give an IANA name such as Europe/Paris or "
                              "America/New_York") from None

# Schema changes after the first version, in order: a store created by an older riskstream is brought up to
# date at start (one transaction per step, its number kept in meta.schema_version; a new store runs them
# too, so every store has gone the same way). Each step is a list of statements (the SCHEMA placeholders)
# and, optionally, a function run in the same transaction (backfills).
MIGRATIONS: list[tuple[list[str], str | None]] = [
    # 2: the case workflow (claim, statuses, approval, priority and due time, search keys), notes, roles,
    # corrected labels (an outbox row per label, revision 1, 2, ...), ip and card in the decision history
    ([
        "ALTER TABLE cases ADD COLUMN owner TEXT",
        "ALTER TABLE cases ADD COLUMN claimed_at {i64}",
        "ALTER TABLE cases ADD COLUMN snooze_until {i64}",
        "ALTER TABLE cases ADD COLUMN proposed TEXT",
        "ALTER TABLE cases ADD COLUMN proposed_by TEXT",
        "ALTER TABLE cases ADD COLUMN amount {f64}",
        "ALTER TABLE cases ADD COLUMN currency TEXT",
        "ALTER TABLE cases ADD COLUMN ip TEXT",
        "ALTER TABLE cases ADD COLUMN payment_ref TEXT",
        "ALTER TABLE cases ADD COLUMN due_at {i64}",
        "ALTER TABLE cases ADD COLUMN rev INTEGER NOT NULL DEFAULT 0",
        "CREATE INDEX cases_user ON cases (user_id)",
        "CREATE INDEX cases_device ON cases (device_id)",
        "CREATE INDEX cases_ip ON cases (ip)",
        "CREATE INDEX cases_card ON cases (payment_ref)",
        "CREATE INDEX cases_due ON cases (status, kind, due_at)",
        "ALTER TABLE decisions ADD COLUMN ip TEXT",
        "ALTER TABLE decisions ADD COLUMN payment_ref TEXT",
        "CREATE INDEX decisions_ip ON decisions (ip, event_ts)",
        "CREATE INDEX decisions_card ON decisions (payment_ref, event_ts)",
        "ALTER TABLE users ADD COLUMN role TEXT NOT NULL DEFAULT 'analyst'",
        "CREATE TABLE case_notes (id {id}, case_id {i64} NOT NULL REFERENCES cases (case_id), at {i64} NOT NULL, "
        "author TEXT NOT NULL, kind TEXT NOT NULL, body TEXT NOT NULL)",
        "CREATE INDEX case_notes_case ON case_notes (case_id, id)",
        "CREATE TABLE label_outbox2 (id {id}, case_id {i64} NOT NULL REFERENCES cases (case_id), "
        "revision INTEGER NOT NULL, event_id TEXT NOT NULL, label TEXT NOT NULL, body TEXT NOT NULL, "
        "created_at {i64} NOT NULL, attempted_at {i64}, sent_at {i64}, sent_part INTEGER, sent_offset {i64}, "
        "UNIQUE (case_id, revision))",
        "INSERT INTO label_outbox2 (case_id, revision, event_id, label, body, created_at, attempted_at, sent_at, "
        "sent_part, sent_offset) SELECT case_id, 1, event_id, (SELECT verdict FROM cases k WHERE k.case_id = "
        "o.case_id), body, created_at, attempted_at, sent_at, sent_part, sent_offset FROM label_outbox o "
        "ORDER BY case_id",
        "DROP TABLE label_outbox",
        "ALTER TABLE label_outbox2 RENAME TO label_outbox",
        "CREATE INDEX label_outbox_pending ON label_outbox (sent_at, id)",
    ], "backfill_v2"),
    # 3: each analyst's time zone (IANA name), for the times the pages show
    (["ALTER TABLE users ADD COLUMN timezone TEXT NOT NULL DEFAULT 'UTC'"], None),
]

VERDICTS = workflow.VERDICTS
KINDS = ("review", "block")
SORTS = ("oldest", "score", "due")
VIEWS = ("open", "mine", "escalated", "approval", "snoozed", "closed")
PAGE = 50
MAX_PAGE = 200
ENTITY_KINDS = {"user": "user_id", "device": "device_id", "ip": "ip", "card": "payment_ref"}
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


SCHEMES = {"sqlite": "sqlite", "postgresql": "postgresql", "postgres": "postgresql"}


def backend_name(url: str) -> str:
    """``sqlite`` or ``postgresql`` for a database URL (a plain path is SQLite); other schemes refused."""
    if "://" not in url:
        return "sqlite"
    scheme = url.partition("://")[0].lower()
    if scheme not in SCHEMES:
        raise ValueError(f"database URL {redact(url)!r}: unknown scheme {scheme!r} (use sqlite:///path.db or "
                         "postgresql://user@host:port/dbname)")
    return SCHEMES[scheme]


def db_path(url: str) -> Path:
    """``sqlite:///rel.db``, ``sqlite:////abs.db`` or a plain path -> the file."""
    if backend_name(url) != "sqlite":
        raise ValueError(f"database URL {redact(url)!r} is not a SQLite file")
    if "://" not in url:
        return Path(url)
    rest = url.partition("://")[2]
    if not rest.startswith("/"):
        raise ValueError(f"database URL {url!r}: write sqlite:///path.db (three slashes)")
    return Path(rest[1:])  # "/rel.db" -> rel.db, "//abs.db" -> /abs.db


def redact(url: str) -> str:
    """The URL without a password (in its user part or a ``password=`` parameter), for messages and logs."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    if "://" not in url:
        return url
    try:
        u = urlsplit(url)
        netloc = u.netloc
        if "@" in netloc:
            cred, host = netloc.rsplit("@", 1)
            if ":" in cred:
                netloc = f"{cred.split(':', 1)[0]}:***@{host}"
        query = u.query
        if query:
            query = urlencode([(k, "***" if k.lower() == "password" else v)
                               for k, v in parse_qsl(query, keep_blank_values=True)], safe="*")
        return urlunsplit((u.scheme, netloc, u.path, query, u.fragment))
    except ValueError:
        return url.partition("://")[0] + "://***"


# -- the two databases: every difference between them is here ------------------------------------------

class Row:
    """A result row as ``sqlite3.Row`` gives it: by position and by column name, ``keys()``, ``dict(row)``."""

    __slots__ = ("_names", "_values")

    def __init__(self, names: dict[str, int], values):
        self._names = names
        self._values = tuple(values)

    def __getitem__(self, key):
        return self._values[key if isinstance(key, (int, slice)) else self._names[key]]

    def keys(self) -> list[str]:
        return list(self._names)

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Row({dict(zip(self._names, self._values))!r})"


class SQLite:
    """The default: one file, WAL mode (readers never wait for the consumer), IMMEDIATE transactions."""

    name = "sqlite"
    begin = "BEGIN IMMEDIATE"  # take the write lock up front: a read-then-write never fails half way
    types = {"id": "INTEGER PRIMARY KEY AUTOINCREMENT", "i64": "INTEGER", "f64": "REAL"}
    audit_triggers = f"""
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY}'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY}'); END;
"""
    Error = sqlite3.Error
    IntegrityError = sqlite3.IntegrityError  # what the audit trail's triggers raise

    def __init__(self, url: str):
        if sqlite3.sqlite_version_info < (3, 35):
            raise ValueError(f"SQLite {sqlite3.sqlite_version} is too old for the review store (3.35 or newer: "
                             "RETURNING)")
        self.path = db_path(url)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def describe(self) -> str:
        return f"sqlite:///{self.path}"

    def connect(self) -> sqlite3.Connection:
        c = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=True)
        c.row_factory = sqlite3.Row
        c.execute("PRAGMA journal_mode=WAL")
        c.execute("PRAGMA synchronous=FULL")  # a committed case survives a power cut, not just a crash
        c.execute("PRAGMA foreign_keys=ON")
        return c

    @staticmethod
    def alive(c) -> bool:
        return True

    @staticmethod
    def lock_key(c, key: str) -> None:
        """Serialise transactions on ``key`` (SQLite: BEGIN IMMEDIATE already serialises every writer)."""

    def create_schema(self, c) -> None:
        c.executescript(SCHEMA.format(**self.types) + self.audit_triggers)  # idempotent; manages its transaction

    @staticmethod
    def close(c) -> None:
        c.close()


@lru_cache(maxsize=512)
def _pg_sql(sql: str) -> str:
    """The store's ``?`` placeholders as psycopg's ``%s`` (a literal ``%`` doubled). The store's SQL has no
    ``?`` inside a string literal."""
    return sql.replace("%", "%%").replace("?", "%s")


def _pg_rows(cursor):
    """psycopg row factory: :class:`Row` (by position and by name, as SQLite's rows)."""
    desc = cursor.description or ()
    names: dict[str, int] = {}
    for i, d in enumerate(desc):
        names.setdefault(d.name, i)  # a repeated name is its first column, as in sqlite3.Row
    return lambda values: Row(names, values)


class _PgConn:
    """A psycopg connection that takes the store's SQL (``?`` placeholders) like a ``sqlite3.Connection``."""

    def __init__(self, raw):
        self.raw = raw

    def execute(self, sql: str, args=()):
        return self.raw.execute(_pg_sql(sql), tuple(args))

    def script(self, sql: str) -> None:
        self.raw.execute(sql)  # no parameters: several statements in one call


class Postgres:
    """PostgreSQL by configuration (psycopg 3): autocommit connections, one per thread, with explicit
    READ COMMITTED transactions; the audit trail is append-only by a statement trigger that refuses UPDATE,
    DELETE and TRUNCATE."""

    name = "postgresql"
    begin = "BEGIN"
    types = {"id": "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY", "i64": "BIGINT", "f64": "DOUBLE PRECISION"}
    # created only when missing: a service whose role does not own the tables (so cannot drop the trigger)
    # starts on a schema an owner created
    audit_triggers = f"""
DO $$ BEGIN
    IF to_regprocedure('riskstream_audit_append_only()') IS NULL THEN
        CREATE FUNCTION riskstream_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $f$
        BEGIN
            RAISE EXCEPTION '{APPEND_ONLY}' USING ERRCODE = 'integrity_constraint_violation';
        END $f$;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'audit_append_only' AND tgrelid = 'audit'::regclass) THEN
        CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON audit
            FOR EACH STATEMENT EXECUTE FUNCTION riskstream_audit_append_only();
    END IF;
END $$;
"""
    SCHEMA_LOCK = 0x72736B72  # an advisory lock: two services starting at once create the schema one at a time

    def __init__(self, url: str):
        try:
            import psycopg
        except ImportError as e:
            raise ValueError("a postgresql:// database needs the psycopg driver: pip install "
                             "'riskstream[review]'") from e
        self.psycopg = psycopg
        self.url = url
        self.Error = psycopg.Error
        self.IntegrityError = psycopg.IntegrityError

    def describe(self) -> str:
        return redact(self.url)

    def connect(self) -> _PgConn:
        try:
            raw = self.psycopg.connect(self.url, autocommit=True, row_factory=_pg_rows, connect_timeout=10,
                                       application_name="riskstream-review")
        except self.psycopg.OperationalError as e:
            raise ConnectionError(f"PostgreSQL at {self.describe()}: {str(e).strip()}") from None
        return _PgConn(raw)

    @staticmethod
    def lock_key(c: _PgConn, key: str) -> None:
        """Serialise transactions on ``key`` (READ COMMITTED would let two read the same count)."""
        c.execute("SELECT pg_advisory_xact_lock(?, hashtext(?))", (0x72736C67, key))

    @staticmethod
    def alive(c: _PgConn) -> bool:
        return not (c.raw.closed or c.raw.broken)  # after a lost connection the next call reconnects

    def create_schema(self, c: _PgConn) -> None:
        with _Tx(c, self.begin):
            c.execute("SELECT pg_advisory_xact_lock(?)", (self.SCHEMA_LOCK,))
            # CREATE ... IF NOT EXISTS still needs the CREATE privilege: run it only when something is missing,
            # so a role without it (and without ownership of the trail) works on a schema made by the owner
            names = re.findall(r"CREATE (?:TABLE|INDEX) IF NOT EXISTS (\w+)", SCHEMA)
            if c.execute("SELECT count(*) FROM unnest(?::text[]) t WHERE to_regclass(t) IS NULL",
                         (names,)).fetchone()[0]:
                c.script(SCHEMA.format(**self.types))
            c.script(self.audit_triggers)

    @staticmethod
    def close(c: _PgConn) -> None:
        c.raw.close()


def backend_for(url: str):
    return Postgres(url) if backend_name(url) == "postgresql" else SQLite(url)


# -- values from records, checked before they reach the database --------------------------------------
# SQLite would store any value in any column; PostgreSQL refuses a wrong type or a NUL character, and a
# refused statement would fail the whole batch (and every retry of it). So a record's values are checked
# first: one that does not fit is counted unreadable and skipped, on both databases alike.

INT64 = 2 ** 63


def _text(v) -> str | None:
    if v is None:
        return None
    s = v if isinstance(v, str) else str(v)
    if "\x00" in s:
        raise ValueError("a NUL character in a text field")
    return s


def _int(v) -> int | None:
    if v is None:
        return None
    if isinstance(v, float) and v == v and abs(v) < INT64:
        v = int(v)
    if not isinstance(v, int) or not -INT64 <= v < INT64:
        raise ValueError(f"not a 64-bit integer: {v!r}")
    return int(v)


def _float(v) -> float | None:
    if v is None:
        return None
    if not isinstance(v, (int, float)):
        raise ValueError(f"not a number: {v!r}")
    return float(v)


# -- passwords: scrypt from the standard library ----------------------------------------------------------

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2 ** 14, 8, 1


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    dk = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${salt.hex()}${dk.hex()}"


@lru_cache(maxsize=1)
def dummy_hash() -> str:
    """A hash no password matches, checked for an unknown user: a sign-in costs one scrypt either way."""
    return hash_password(secrets.token_urlsafe(24))


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
    role: str = "analyst"
    timezone: str = "UTC"


@dataclass(frozen=True)
class Consumed:
    """One consumed record: its topic position and value."""

    topic: str
    part: int
    offset: int
    value: bytes


class Store:
    """One database (:class:`SQLite` or :class:`Postgres`, by the URL); a connection per thread."""

    def __init__(self, url: str):
        self.backend = backend_for(url)
        self.url = self.backend.describe()  # without a password
        self.local = threading.local()
        self.backend.create_schema(self.conn())  # idempotent (IF NOT EXISTS)
        self.migrate()
        dummy_hash()  # made now, so no sign-in pays for it

    # -- schema versions -------------------------------------------------------------------------------

    SCHEMA_VERSION = 1 + len(MIGRATIONS)

    def schema_version(self, c=None) -> int:
        r = (c or self.conn()).execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()
        return int(r[0]) if r else 1

    def migrate(self) -> list[int]:
        """Bring the store to :attr:`SCHEMA_VERSION`, one transaction per step (two services starting at once
        take turns: SQLite's write lock, PostgreSQL's advisory lock). Returns the steps run."""
        done = []
        if self.schema_version() >= self.SCHEMA_VERSION:
            return done  # nothing to change: a role without ALTER privileges starts too
        for n, (statements, fn) in enumerate(MIGRATIONS, start=2):
            with self.tx() as c:
                self.backend.lock_key(c, "schema")
                if self.schema_version(c) >= n:
                    continue
                for sql in statements:
                    c.execute(sql.format(**self.backend.types))
                if fn:
                    getattr(self, fn)(c)
                c.execute("INSERT INTO meta VALUES ('schema_version', ?) ON CONFLICT (name) DO UPDATE SET "
                          "value = excluded.value", (str(n),))
            done.append(n)
        return done

    @staticmethod
    def case_keys(record: dict, event: dict | None) -> dict:
        """The search and triage fields of a case: ip and card from the decision record (else the event),
        amount from the event (else the record's ``amount`` feature), currency from the event."""
        ev = event or {}
        feats = record.get("features") if isinstance(record.get("features"), dict) else {}
        out = {}
        for k in ("ip", "payment_ref"):
            v = record.get(k) if k in record else ev.get(k)
            out[k] = v if isinstance(v, str) and "\x00" not in v else None
        amount = ev.get("amount", feats.get("amount"))
        out["amount"] = float(amount) if isinstance(amount, (int, float)) and not isinstance(amount, bool) \
            and amount == amount and abs(amount) < 1e300 else None
        cur = ev.get("currency")
        out["currency"] = cur[:16] if isinstance(cur, str) and "\x00" not in cur else None
        return out

    def backfill_v2(self, c) -> None:
        """Step 2's backfill: the new case columns from each case's record and event, the due time."""
        for r in c.execute("SELECT case_id, kind, score, decided_at, record, event_id, user_id FROM cases").fetchall():
            ev = c.execute("SELECT body FROM events WHERE event_id = ? AND user_id = ?",
                           (r["event_id"], r["user_id"])).fetchone()
            keys = self.case_keys(orjson.loads(r["record"]), orjson.loads(ev["body"]) if ev else None)
            c.execute("UPDATE cases SET ip = ?, payment_ref = ?, amount = ?, currency = ?, due_at = ? "
                      "WHERE case_id = ?", (keys["ip"], keys["payment_ref"], keys["amount"], keys["currency"],
                                            workflow.due_at(r["kind"], r["decided_at"], r["score"], keys["amount"]),
                                            r["case_id"]))

    def conn(self):
        """This thread's connection: a ``sqlite3.Connection``, or for PostgreSQL one that takes the same SQL."""
        c = getattr(self.local, "conn", None)
        if c is None or not self.backend.alive(c):
            c = self.backend.connect()
            self.local.conn = c
        return c

    def close(self) -> None:
        """Close this thread's connection (the next call opens a new one)."""
        c = getattr(self.local, "conn", None)
        if c is not None:
            self.local.conn = None
            self.backend.close(c)

    def tx(self):
        return _Tx(self.conn(), self.backend.begin)

    def query(self, sql: str, args=()) -> list[Row]:
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
                        c.execute("INSERT INTO rulesets VALUES (?, ?, ?) ON CONFLICT (version) DO UPDATE SET "
                                  "body = excluded.body, seen_at = excluded.seen_at",
                                  (_text(msg["version"]), _text(r.value.decode()), t))
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
                except (ValueError, KeyError, TypeError, AttributeError, orjson.JSONDecodeError):
                    n["unreadable"] += 1  # malformed events are the job's dead letters; counted, skipped
            for (topic, part), off in next_offsets.items():
                c.execute("INSERT INTO offsets VALUES (?, ?, ?) ON CONFLICT (topic, part) DO UPDATE SET "
                          "next_offset = excluded.next_offset", (topic, part, off))
            if fail_before_commit:
                raise RuntimeError("injected failure before the commit")
        return n

    @staticmethod
    def ingest_event(c, ev: dict, raw: bytes, t: int, n: dict) -> None:
        eid, uid, body = _text(ev["event_id"]), _text(ev["user_id"]), _text(raw.decode())
        done = c.execute("SELECT 1 FROM decisions WHERE event_id = ? AND user_id = ? AND decision = 'allow'",
                         (eid, uid)).fetchone()
        if done is None:
            c.execute("INSERT INTO events VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING", (eid, uid, body, t))
            n["events"] += 1
            cur = ev.get("currency")
            if isinstance(cur, str) and "\x00" not in cur:  # the case came first: its currency from the event
                c.execute("UPDATE cases SET currency = ? WHERE event_id = ? AND user_id = ? AND currency IS NULL",
                          (cur[:16], eid, uid))

    @staticmethod
    def ingest_decision(c, r: Consumed, d: dict, t: int, n: dict) -> None:
        kind = d["decision"]
        if kind not in ("allow", "review", "block"):
            raise ValueError(f"unknown decision {kind!r}")
        # every value checked before the first statement: a record is stored whole or counted unreadable
        eid, uid, did = _text(d["event_id"]), _text(d["user_id"]), _text(d["device_id"])
        etype, model, rules_v = _text(d.get("event_type")), _text(d.get("model_version")), _text(d.get("rules_version"))
        score, event_ts, decided_at = _float(d.get("score")), _int(d.get("event_ts")), _int(d.get("decided_at"))
        shadow = d.get("shadow") or {}
        if not isinstance(shadow, dict):
            raise ValueError("shadow is not an object")
        shadow_score, shadow_decision = _float(shadow.get("score")), _text(shadow.get("decision"))
        reasons = d.get("reasons") or []
        rules = [_text(x[5:]) for x in reasons if isinstance(x, str) and x.startswith("rule:")] \
            if isinstance(reasons, list) else []
        record = _text(r.value.decode())
        ip = d.get("ip") if isinstance(d.get("ip"), str) else None
        card = d.get("payment_ref") if isinstance(d.get("payment_ref"), str) else None
        ip, card = _text(ip), _text(card)
        c.execute("INSERT INTO decisions (topic, part, off, decision_id, event_id, user_id, device_id, event_type, "
                  "decision, score, model_version, reasons, event_ts, decided_at, consumed_at, ip, payment_ref) "
                  "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                  (r.topic, r.part, r.offset, _text(d.get("decision_id")), eid, uid, did, etype, kind,
                   score, model, orjson.dumps(reasons).decode(), event_ts, decided_at, t, ip, card))
        n["decisions"] += 1
        if kind == "allow":
            c.execute("DELETE FROM events WHERE event_id = ? AND user_id = ?", (eid, uid))
            return
        ev = c.execute("SELECT body FROM events WHERE event_id = ? AND user_id = ?", (eid, uid)).fetchone()
        keys = Store.case_keys(d, orjson.loads(ev["body"]) if ev else None)
        row = c.execute(
            "INSERT INTO cases (event_id, user_id, device_id, event_type, kind, score, shadow_score, "
            "shadow_decision, model_version, rules_version, record, event_ts, decided_at, opened_at, ip, "
            "payment_ref, amount, currency, due_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (event_id, user_id) "
            "DO NOTHING RETURNING case_id",
            (eid, uid, did, etype, kind, score, shadow_score, shadow_decision, model, rules_v, record, event_ts,
             decided_at, t, keys["ip"], keys["payment_ref"], keys["amount"], keys["currency"],
             workflow.due_at(kind, decided_at, score, keys["amount"]))).fetchone()
        if row is not None:  # a re-decision of the same event (replay, new model) keeps the first case
            for rule in rules:
                c.execute("INSERT INTO case_rules VALUES (?, ?) ON CONFLICT DO NOTHING", (row[0], rule))
            n["cases"] += 1

    def prune(self, history_ms: int) -> None:
        """Drop decision history older than ``history_ms`` and events whose decision never came."""
        t = now_ms()
        with self.tx() as c:
            c.execute("DELETE FROM decisions WHERE decided_at < ?", (t - history_ms,))
            c.execute("DELETE FROM events WHERE seen_at < ? AND NOT EXISTS (SELECT 1 FROM cases k WHERE "
                      "k.event_id = events.event_id AND k.user_id = events.user_id)", (t - EVENT_WAIT_MS,))

    # -- the queue -------------------------------------------------------------------------------------

    OPEN_SQL = "(status = 'open' OR (status = 'snoozed' AND snooze_until <= ?))"

    def _view(self, view: str, kind: str | None, user: str | None, t: int) -> tuple[list[str], list]:
        if view == "open":
            return [self.OPEN_SQL], [t]
        if view == "mine":
            return [f"({self.OPEN_SQL} OR status = 'escalated') AND owner = ?"], [t, user]
        if view == "snoozed":
            return ["status = 'snoozed' AND snooze_until > ?"], [t]
        return ["status = ?"], [view]

    def queue(self, kind: str | None = "review", sort: str = "oldest", event_type: str | None = None,
              rule: str | None = None, model_version: str | None = None, limit: int = 200, offset: int = 0,
              view: str = "open", user: str | None = None, count: bool = False):
        """A page of the cases in ``view`` (open: the queue, snoozed ones whose time came included; mine: the
        open cases ``user`` claimed; escalated; approval: overturns awaiting a second person; snoozed;
        closed) of ``kind`` (None: both), filtered and sorted; ``count``: their number instead."""
        where, args = self._view(view, kind, user, now_ms())
        if kind:
            where.append("kind = ?")
            args.append(kind)
        if event_type:
            where.append("event_type = ?")
            args.append(event_type)
        if model_version:
            where.append("model_version = ?")
            args.append(model_version)
        if rule:
            where.append("case_id IN (SELECT case_id FROM case_rules WHERE rule = ?)")
            args.append(rule)
        if count:
            return self.one(f"SELECT count(*) FROM cases WHERE {' AND '.join(where)}", args)[0]
        # NULLS spelled out: the two databases place them differently by default
        order = {"oldest": "decided_at ASC NULLS FIRST, case_id ASC",
                 "score": "score IS NULL, score DESC, case_id ASC",
                 "due": "due_at ASC NULLS LAST, case_id ASC"}[sort]
        return self.query(f"SELECT {self.CASE_COLS} FROM cases WHERE {' AND '.join(where)} "
                          f"ORDER BY {order} LIMIT ? OFFSET ?", (*args, limit, offset))

    CASE_COLS = ("case_id, event_id, user_id, device_id, event_type, kind, score, shadow_score, model_version, "
                 "decided_at, opened_at, event_ts, record, status, verdict, analyst, owner, snooze_until, "
                 "proposed, proposed_by, amount, currency, ip, payment_ref, due_at, closed_at")

    def queue_facets(self, kind: str) -> dict:
        """Open cases of a kind by event type, rule and model version (the filters and their counts)."""
        t = now_ms()
        base = f"FROM cases WHERE {self.OPEN_SQL} AND kind = ?"
        return {
            "event_type": [(r[0], r[1]) for r in self.query(
                f"SELECT event_type, count(*) {base} GROUP BY event_type ORDER BY 2 DESC, 1 NULLS FIRST", (t, kind))],
            "model_version": [(r[0], r[1]) for r in self.query(
                f"SELECT model_version, count(*) {base} GROUP BY model_version ORDER BY 2 DESC, 1 NULLS FIRST",
                (t, kind))],
            "rule": [(r[0], r[1]) for r in self.query(
                f"SELECT rule, count(*) FROM case_rules JOIN cases USING (case_id) WHERE {self.OPEN_SQL} AND "
                "kind = ? GROUP BY rule ORDER BY 2 DESC, 1", (t, kind))],
        }

    def counts(self, user: str | None = None) -> dict:
        t = now_ms()
        out = {"open_review": 0, "open_block": 0}
        for r in self.query(f"SELECT kind, count(*) AS n, min(decided_at) AS oldest FROM cases WHERE {self.OPEN_SQL} "
                            "GROUP BY kind", (t,)):
            out[f"open_{r['kind']}"] = r["n"]
            out[f"oldest_{r['kind']}_decided_at"] = r["oldest"]
        for view in ("closed", "escalated", "approval"):
            out[view] = self.one("SELECT count(*) FROM cases WHERE status = ?", (view,))[0]
        out["snoozed"] = self.one("SELECT count(*) FROM cases WHERE status = 'snoozed' AND snooze_until > ?", (t,))[0]
        out["breached"] = self.one(f"SELECT count(*) FROM cases WHERE {self.OPEN_SQL} AND due_at < ?", (t, t))[0]
        if user:
            out["mine"] = self.queue(None, view="mine", user=user, count=True)
        return out

    def case(self, case_id: int):
        if not 0 < case_id < INT64:
            return None
        return self.one("SELECT * FROM cases WHERE case_id = ?", (case_id,))

    def case_event(self, case) -> dict | None:
        r = self.one("SELECT body FROM events WHERE event_id = ? AND user_id = ?", (case["event_id"], case["user_id"]))
        return orjson.loads(r["body"]) if r else None

    HISTORY_COLS = ("d.event_id, d.user_id, d.device_id, d.ip, d.payment_ref, d.event_type, d.decision, d.score, "
                    "d.reasons, d.event_ts, d.decided_at, k.case_id, k.status AS case_status, k.verdict")

    def recent(self, column: str, value: str, limit: int = 20) -> list[Row]:
        """A user's, device's, ip's or card's latest decisions, each with its case and verdict (if any)."""
        assert column in ENTITY_KINDS.values()
        return self.query(f"SELECT {self.HISTORY_COLS} FROM decisions d LEFT JOIN cases k ON k.event_id = d.event_id "
                          f"AND k.user_id = d.user_id WHERE d.{column} = ? ORDER BY d.event_ts DESC NULLS LAST, "
                          "d.off DESC LIMIT ?", (value, limit))

    def ruleset(self, version: str | None) -> dict | None:
        r = self.one("SELECT body FROM rulesets WHERE version = ?", (version,)) if version else None
        return orjson.loads(r["body"]) if r else None

    def case_labels(self, case_id: int):
        """The case's newest label (None: none), as the outbox holds it."""
        return self.one("SELECT * FROM label_outbox WHERE case_id = ? ORDER BY revision DESC LIMIT 1", (case_id,))

    def case_label_history(self, case_id: int) -> list[Row]:
        return self.query("SELECT * FROM label_outbox WHERE case_id = ? ORDER BY revision", (case_id,))

    def notes(self, case_id: int) -> list[Row]:
        return self.query("SELECT * FROM case_notes WHERE case_id = ? ORDER BY id", (case_id,))

    # -- the workflow: verdicts, claims, statuses and the label outbox --------------------------------

    @staticmethod
    def _check_note(note: str) -> None:
        if len(note) > MAX_NOTE:
            raise StoreError(400, f"the note is limited to {MAX_NOTE} characters")
        if "\x00" in note:
            raise StoreError(400, "the note has a NUL character")

    def close_case(self, case_id: int, verdict: str, note: str, analyst: str, remote: str | None = None,
                   role: str = "analyst") -> dict | None:
        """A verdict (``fraud``, ``legit``, ``inconclusive``): see :meth:`act`. Returns the label it sends
        (None: none, e.g. an overturned block awaiting approval). A closed case takes no second verdict (409)."""
        if verdict not in workflow.CLOSING:
            raise StoreError(400, f"verdict must be one of {', '.join(workflow.CLOSING)}")
        return self.act(case_id, verdict, analyst, role, note=note, remote=remote)["label"]

    def act(self, case_id: int, action: str, user: str, role: str, note: str = "", remote: str | None = None,
            snooze_until: int | None = None, assignee: str | None = None, c=None) -> dict:
        """One workflow step (:func:`workflow.decide`) on a case, with its label (if it sends one), its note and
        its audit entry, in one transaction. Returns ``{"case_id", "status", "label"}``."""
        self._check_note(note)
        if not 0 < case_id < INT64:
            raise StoreError(404, f"no case {case_id}")
        if action == "snooze":
            if snooze_until is None or not now_ms() < snooze_until <= now_ms() + workflow.MAX_SNOOZE_MS:
                raise StoreError(400, "snooze until a time in the next 30 days")
        if action == "assign":
            if assignee is not None and self.one("SELECT 1 FROM users WHERE username = ? AND disabled = 0",
                                                 (assignee,)) is None:
                raise StoreError(400, f"no active user {assignee!r} to assign the case to")
        if c is None:
            with self.tx() as c:
                return self._act(c, case_id, action, user, role, note, remote, snooze_until, assignee)
        return self._act(c, case_id, action, user, role, note, remote, snooze_until, assignee)

    def _act(self, c, case_id, action, user, role, note, remote, snooze_until, assignee) -> dict:
        t = now_ms()
        case = c.execute("SELECT * FROM cases WHERE case_id = ?", (case_id,)).fetchone()
        if case is None:
            raise StoreError(404, f"no case {case_id}")
        last = c.execute("SELECT label, revision FROM label_outbox WHERE case_id = ? ORDER BY revision DESC LIMIT 1",
                         (case_id,)).fetchone()
        status = workflow.effective_status(case["status"], case["snooze_until"], t)
        try:
            step = workflow.decide(action, kind=case["kind"], status=status, owner=case["owner"],
                                   proposed_by=case["proposed_by"], proposed=case["proposed"], user=user, role=role,
                                   last_label=last["label"] if last else None,
                                   last_revision=last["revision"] if last else 0, assignee=assignee)
        except WorkflowError as e:
            if e.status == 409 and status == "closed" and action in workflow.CLOSING:
                raise StoreError(409, f"case {case_id} already has a verdict ({case['verdict']} by "
                                      f"{case['analyst']}); nothing was changed") from None
            raise StoreError(e.status, f"case {case_id}: {e}") from None
        owner = case["owner"] if step.keep_owner else step.owner
        sets = {"status": step.status, "owner": owner, "rev": case["rev"] + 1,
                "claimed_at": t if owner and owner != case["owner"] else (case["claimed_at"] if owner else None)}
        if step.status == "closed":
            sets.update(verdict=step.verdict, note=note, analyst=user if action != "approve" else case["proposed_by"],
                        closed_at=t, proposed=None, proposed_by=None, snooze_until=None)
            if action == "approve":
                sets["note"] = case["note"] or note
        elif action == "reopen":
            sets.update(verdict=None, note=None, analyst=None, closed_at=None)
        if step.status == "approval":
            sets.update(proposed=step.proposed, proposed_by=user, note=note)
        if action == "reject":
            sets.update(proposed=None, proposed_by=None)
        if step.status == "snoozed":
            sets["snooze_until"] = snooze_until
        elif case["status"] == "snoozed":
            sets["snooze_until"] = None
        cols = ", ".join(f"{k} = ?" for k in sets)
        cur = c.execute(f"UPDATE cases SET {cols} WHERE case_id = ? AND status = ? AND rev = ?",
                        (*sets.values(), case_id, case["status"], case["rev"]))
        if cur.rowcount != 1:  # PostgreSQL: another step committed between the read and the update
            raise StoreError(409, f"case {case_id} changed meanwhile (another analyst); nothing was changed")
        label = None
        if step.label is not None:
            verdict, revision = step.label
            label = {"event_id": case["event_id"], "user_id": case["user_id"], "device_id": case["device_id"],
                     **self._label_keys(c, case), "event_ts": case["event_ts"], "label": verdict}
            if revision > 1:
                label["revision"] = revision  # a corrected label: the newest label of an event wins
            c.execute("INSERT INTO label_outbox (case_id, revision, event_id, label, body, created_at) "
                      "VALUES (?, ?, ?, ?, ?, ?)", (case_id, revision, case["event_id"], verdict,
                                                   orjson.dumps(label).decode(), t))
        if note:
            c.execute("INSERT INTO case_notes (case_id, at, author, kind, body) VALUES (?, ?, ?, ?, ?)",
                      (case_id, t, user, action, note))
        detail = {"model_decision": case["kind"], "event_id": case["event_id"], "status": step.status}
        if action in workflow.CLOSING:
            detail = {"verdict": action, **detail}
        if note:
            detail["note"] = note
        if step.label is not None:
            detail["label"], detail["revision"] = step.label
        if action == "snooze":
            detail["until"] = snooze_until
        if action == "assign":
            detail["assignee"] = assignee
        self.audit_in(c, user, "verdict" if action in workflow.CLOSING else action, f"case:{case_id}", detail,
                      remote, t)
        return {"case_id": case_id, "status": step.status, "label": label}

    def add_note(self, case_id: int, author: str, body: str, remote: str | None = None) -> None:
        body = body.strip()
        if not body:
            raise StoreError(400, "the note is empty")
        self._check_note(body)
        with self.tx() as c:
            if c.execute("SELECT 1 FROM cases WHERE case_id = ?", (case_id,)).fetchone() is None:
                raise StoreError(404, f"no case {case_id}")
            c.execute("INSERT INTO case_notes (case_id, at, author, kind, body) VALUES (?, ?, ?, 'note', ?)",
                      (case_id, now_ms(), author, body))
            self.audit_in(c, author, "note", f"case:{case_id}", {"note": body}, remote, now_ms())

    def next_case(self, user: str, role: str, remote: str | None = None) -> int | None:
        """The case ``user`` should work next, claimed for them: their own open (or, for a lead, escalated)
        cases first; a lead then gets an overturn to approve (not their own) or an unclaimed escalated case;
        then the unclaimed open case due first. None when there is none."""
        t = now_ms()
        mine = self.one(f"SELECT case_id FROM cases WHERE owner = ? AND ({self.OPEN_SQL}"
                        + (" OR status = 'escalated'" if workflow.is_lead(role) else "")
                        + ") ORDER BY due_at ASC NULLS LAST, case_id LIMIT 1", (user, t))
        if mine:
            return mine[0]
        if workflow.is_lead(role):
            r = self.one("SELECT case_id FROM cases WHERE status = 'approval' AND proposed_by <> ? "
                         "ORDER BY due_at ASC NULLS LAST, case_id LIMIT 1", (user,))
            if r:
                return r[0]
        escalated = " OR status = 'escalated'" if workflow.is_lead(role) else ""
        where = f"owner IS NULL AND ({self.OPEN_SQL}{escalated})"
        for _ in range(20):  # another analyst may claim the same one first: then the next
            r = self.one(f"SELECT case_id FROM cases WHERE {where} ORDER BY status = 'escalated' DESC, "
                         "due_at ASC NULLS LAST, case_id LIMIT 1", (t,))
            if r is None:
                return None
            try:
                self.act(r[0], "claim", user, role, remote=remote)
                return r[0]
            except StoreError as e:
                if e.status != 409:
                    raise
        return None

    def entity_cases(self, kind: str, value: str, view: str = "all") -> list[Row]:
        col = ENTITY_KINDS[kind]
        where = "" if view == "all" else f" AND {self.OPEN_SQL}"
        args = (value,) if view == "all" else (value, now_ms())
        return self.query(f"SELECT {self.CASE_COLS} FROM cases WHERE {col} = ?{where} ORDER BY decided_at DESC "
                          "NULLS LAST, case_id DESC LIMIT 500", args)

    def bulk(self, kind: str, value: str, verdict: str, user: str, role: str, note: str = "",
             remote: str | None = None) -> dict:
        """The same verdict on every open case of one user, device, ip or card that ``user`` may decide (not
        claimed by someone else, unless ``user`` is a lead), in one transaction: a label each (exactly once,
        through the outbox), an overturned block each awaiting approval. Returns the case ids by outcome."""
        if kind not in ENTITY_KINDS:
            raise StoreError(400, f"kind must be one of {', '.join(ENTITY_KINDS)}")
        if verdict not in workflow.CLOSING:
            raise StoreError(400, f"verdict must be one of {', '.join(workflow.CLOSING)}")
        self._check_note(note)
        out = {"closed": [], "approval": [], "skipped": []}
        col = ENTITY_KINDS[kind]
        with self.tx() as c:
            rows = c.execute(f"SELECT case_id, owner FROM cases WHERE {col} = ? AND {self.OPEN_SQL} ORDER BY case_id",
                             (value, now_ms())).fetchall()
            for r in rows:
                if r["owner"] not in (None, user) and not workflow.is_lead(role):
                    out["skipped"].append(r["case_id"])
                    continue
                res = self._act(c, r["case_id"], verdict, user, role, note, remote, None, None)
                out["approval" if res["status"] == "approval" else "closed"].append(r["case_id"])
            self.audit_in(c, user, "bulk_verdict", f"{kind}:{value}",
                          {"verdict": verdict, **{k: v for k, v in out.items() if v}}, remote, now_ms())
        return out

    # -- search and entities ---------------------------------------------------------------------------

    def search(self, q: str, limit: int = 200) -> dict:
        """Exact matches of ``q`` as an event id, user, device, ip or card: the cases (any status), and the
        entities known from the decision history with their number of decisions."""
        q = q.strip()
        if not q:
            return {"cases": [], "entities": []}
        cases = self.query(f"SELECT {self.CASE_COLS} FROM cases WHERE event_id = ? OR user_id = ? OR device_id = ? "
                           "OR ip = ? OR payment_ref = ? ORDER BY decided_at DESC NULLS LAST, case_id DESC LIMIT ?",
                           (q, q, q, q, q, limit))
        ents = []
        for kind, col in ENTITY_KINDS.items():
            n = self.one(f"SELECT count(*) FROM decisions WHERE {col} = ?", (q,))[0]
            k = self.one(f"SELECT count(*) FROM cases WHERE {col} = ?", (q,))[0]
            if n or k:
                ents.append({"kind": kind, "value": q, "decisions": n, "cases": k})
        return {"cases": cases, "entities": ents}

    def entity(self, kind: str, value: str, limit: int = 50) -> dict:
        """A user, device, ip or card: its recent decisions, its cases with their verdicts, and the other
        entities seen with it (in its decisions and cases), each with how often."""
        col = ENTITY_KINDS[kind]
        decisions = self.recent(col, value, limit)
        links = {}
        for other, ocol in ENTITY_KINDS.items():
            if other == kind:
                continue
            rows = self.query(f"SELECT v, sum(n) AS n FROM (SELECT {ocol} AS v, count(*) AS n FROM decisions WHERE "
                              f"{col} = ? AND {ocol} IS NOT NULL GROUP BY {ocol} UNION ALL SELECT {ocol}, count(*) "
                              f"FROM cases WHERE {col} = ? AND {ocol} IS NOT NULL GROUP BY {ocol}) x GROUP BY v "
                              "ORDER BY 2 DESC, 1 LIMIT 50", (value, value))
            links[other] = [(r[0], r[1]) for r in rows]
        verdicts = {r[0]: r[1] for r in self.query(
            f"SELECT coalesce(verdict, status), count(*) FROM cases WHERE {col} = ? GROUP BY coalesce(verdict, status)",
            (value,))}
        return {"decisions": decisions, "cases": self.entity_cases(kind, value), "links": links,
                "verdicts": verdicts}

    GROUP_ENTITIES = 16  # the case user's entities looked at, newest first (the graph's entities_cap)
    GROUP_USERS = 50  # users listed per entity (a hot ip's: the busiest), as the entity page's links

    def group(self, case, horizon_ms: int = GRAPH["horizon_ms"]) -> dict:
        """The case's group as this store saw it: the devices, ips and cards the case's user used in the
        ``horizon_ms`` up to the event (newest first, at most ``GROUP_ENTITIES``, the event's own always), the
        other users seen on each in the same time (at most ``GROUP_USERS`` per entity, the busiest), and which
        of them have a case closed as fraud. Two user-hops, as the graph features' group
        (docs/features.md#graph-features); from the decisions this service consumed, so it is the ring an
        analyst can click through, not the job's state. Pitfall: "fraud" here is an analyst's verdict in this
        store, not every label on the topic."""
        t = case["event_ts"]
        if t is None:  # a record without an event time: no window to look in
            return {"horizon_ms": horizon_ms, "entities": [], "users": [], "size": 1, "fraud_users": 0,
                    "fraud_share": 0.0, "complete": True}
        lo = t - horizon_ms
        uid = case["user_id"]
        own = [(k, case[c]) for k, c in ENTITY_KINDS.items() if k != "user" and case[c] is not None]
        seen = {e: None for e in own}  # ordered set: the event's own entities first
        for kind, col in ENTITY_KINDS.items():
            if kind == "user":
                continue
            for r in self.query(f"SELECT {col}, max(event_ts) FROM decisions WHERE user_id = ? AND event_ts >= ? "
                                f"AND event_ts <= ? AND {col} IS NOT NULL GROUP BY {col} ORDER BY 2 DESC, 1 LIMIT ?",
                                (uid, lo, t, self.GROUP_ENTITIES)):
                seen.setdefault((kind, r[0]), r[1])
        ents = sorted(seen, key=lambda e: (e not in own, -(seen[e] or t)))[:max(self.GROUP_ENTITIES, len(own))]
        entities, users = [], {}
        for kind, value in ents:
            col = ENTITY_KINDS[kind]
            n = self.one(f"SELECT count(DISTINCT user_id) FROM decisions WHERE {col} = ? AND event_ts >= ? "
                         "AND event_ts <= ? AND user_id <> ?", (value, lo, t, uid))[0]
            rows = self.query(f"SELECT user_id, count(*) FROM decisions WHERE {col} = ? AND event_ts >= ? AND "
                              "event_ts <= ? AND user_id <> ? GROUP BY user_id ORDER BY 2 DESC, 1 LIMIT ?",
                              (value, lo, t, uid, self.GROUP_USERS))
            entities.append({"kind": kind, "value": value, "users": n, "listed": len(rows)})
            for r in rows:
                users.setdefault(r[0], {"user_id": r[0], "via": [], "events": 0})["via"].append((kind, value))
        fraud = set()
        ids = sorted(users)
        for i in range(0, len(ids), 500):  # per linked user: a fraud verdict; its decisions in the window
            part = ids[i:i + 500]
            marks = ", ".join("?" * len(part))
            fraud |= {r[0] for r in self.query(
                f"SELECT DISTINCT user_id FROM cases WHERE verdict = 'fraud' AND user_id IN ({marks})", tuple(part))}
            for r in self.query(f"SELECT user_id, count(*) FROM decisions WHERE user_id IN ({marks}) AND event_ts >= ? "
                                "AND event_ts <= ? GROUP BY user_id", (*part, lo, t)):
                users[r[0]]["events"] = r[1]
        own_fraud = self.one("SELECT count(*) FROM cases WHERE verdict = 'fraud' AND user_id = ?", (uid,))[0] > 0
        linked = sorted(users.values(), key=lambda u: (-len(u["via"]), -u["events"], u["user_id"]))
        for u in linked:
            u["fraud"] = u["user_id"] in fraud
        size = 1 + len(linked)
        return {"horizon_ms": horizon_ms, "entities": entities, "users": linked, "size": size,
                "fraud_users": len(fraud) + own_fraud, "fraud_share": (len(fraud) + own_fraud) / size,
                "complete": all(e["listed"] == e["users"] for e in entities)}

    @staticmethod
    def _label_keys(c, case) -> dict:
        """The case's keys of the entities a label may name beyond the user and device (``ip``,
        ``payment_ref``, ...: ``udfs.features.LABEL_KEYS``; null when the event has none), so each entity's
        stage counts the verdict: from the decision record, else (a record of a job older than these fields)
        from the event as consumed, else null."""
        rec = orjson.loads(case["record"])
        if any(k not in rec for k in OPTIONAL_LABEL_KEYS):
            ev = c.execute("SELECT body FROM events WHERE event_id = ? AND user_id = ?",
                           (case["event_id"], case["user_id"])).fetchone()
            rec = {**(orjson.loads(ev["body"]) if ev is not None else {}), **rec}
        return {k: rec.get(k) if isinstance(rec.get(k), str) else None for k in OPTIONAL_LABEL_KEYS}

    def pending_labels(self, limit: int | None = None) -> list[Row]:
        """Labels not yet on the topic, in the order they were given (a correction after its original)."""
        return self.query("SELECT * FROM label_outbox WHERE sent_at IS NULL ORDER BY id"
                          + (" LIMIT ?" if limit else ""), (limit,) if limit else ())

    def label_attempts(self, ids: list[int]) -> None:
        """Mark outbox rows attempted (before they are sent): a later cycle looks for them on the topic first."""
        t = now_ms()
        with self.tx() as c:
            for i in ids:
                c.execute("UPDATE label_outbox SET attempted_at = ? WHERE id = ? AND attempted_at IS NULL", (t, i))

    def label_sent(self, outbox_id: int, part: int, offset: int, found: bool = False) -> None:
        with self.tx() as c:
            row = c.execute("UPDATE label_outbox SET sent_at = ?, sent_part = ?, sent_offset = ? WHERE id = ? "
                            "AND sent_at IS NULL RETURNING case_id, revision", (now_ms(), part, offset,
                                                                               outbox_id)).fetchone()
            if row is not None:
                detail = {"partition": part, "offset": offset, "recovered": found}
                if row["revision"] > 1:
                    detail["revision"] = row["revision"]
                self.audit_in(c, "service", "label_sent", f"case:{row['case_id']}", detail, None, now_ms())

    # -- analysts and sessions -----------------------------------------------------------------------

    def add_user(self, username: str, password: str, by: str = "cli", role: str = "analyst") -> None:
        if not username or len(username) > 64 or not username.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise StoreError(400, "a user name is 1-64 letters, digits, '.', '-' or '_'")
        if len(password) < 12:
            raise StoreError(400, "a password has at least 12 characters")
        with self.tx() as c:
            if c.execute("SELECT 1 FROM users WHERE username = ?", (username,)).fetchone():
                raise StoreError(409, f"user {username!r} exists")
            if role not in workflow.ROLES:
                raise StoreError(400, f"a role is one of {', '.join(workflow.ROLES)}")
            c.execute("INSERT INTO users (username, pw_hash, created_at, disabled, role) VALUES (?, ?, ?, 0, ?)",
                      (username, hash_password(password), now_ms(), role))
            self.audit_in(c, by, "add_user", f"user:{username}", {"role": role} if role != "analyst" else None,
                          None, now_ms())

    def set_role(self, username: str, role: str, by: str = "cli") -> None:
        """analyst, lead or admin (see :mod:`.workflow`); the user's sessions end, so the new role holds at once."""
        if role not in workflow.ROLES:
            raise StoreError(400, f"a role is one of {', '.join(workflow.ROLES)}")
        with self.tx() as c:
            if c.execute("UPDATE users SET role = ? WHERE username = ?", (role, username)).rowcount != 1:
                raise StoreError(404, f"no user {username!r}")
            c.execute("DELETE FROM sessions WHERE username = ?", (username,))
            self.audit_in(c, by, "set_role", f"user:{username}", {"role": role}, None, now_ms())

    def set_timezone(self, username: str, timezone: str, by: str = "cli") -> None:
        """The analyst's time zone (an IANA name such as Europe/Paris): the pages show times in it."""
        check_timezone(timezone)
        with self.tx() as c:
            if c.execute("UPDATE users SET timezone = ? WHERE username = ?", (timezone, username)).rowcount != 1:
                raise StoreError(404, f"no user {username!r}")
            self.audit_in(c, by, "set_timezone", f"user:{username}", {"timezone": timezone}, None, now_ms())

    def users(self) -> list[Row]:
        return self.query("SELECT username, role, disabled, timezone FROM users ORDER BY username")

    def authenticate(self, username: str, password: str) -> bool:
        """One scrypt whether the user exists, is disabled or not: the time does not tell which."""
        r = self.one("SELECT pw_hash, disabled FROM users WHERE username = ?", (username,))
        ok = check_password(password, r["pw_hash"] if r is not None else dummy_hash())
        return ok and r is not None and not r["disabled"]

    def reserve_login(self, username: str, window_ms: int, limit: int, remote: str | None = None) -> int | None:
        """Reserve one password check for ``username``: None when ``limit`` checks failed or are under way
        within the window (locked out), else the attempt's id for :meth:`finish_login`. Atomic: a parallel
        burst gets at most ``limit`` checks."""
        t = now_ms()
        with self.tx() as c:
            self.backend.lock_key(c, "login:" + username)
            n = c.execute("SELECT count(*) FROM login_attempts WHERE username = ? AND at >= ? AND outcome <> 'ok'",
                          (username, t - window_ms)).fetchone()[0]
            if n >= limit:
                return None
            c.execute("DELETE FROM login_attempts WHERE at < ?", (t - 24 * 3600_000,))
            return c.execute("INSERT INTO login_attempts (username, at, outcome, remote) VALUES (?, ?, 'pending', ?) "
                             "RETURNING id", (username, t, remote)).fetchone()[0]

    def finish_login(self, attempt_id: int, ok: bool) -> None:
        with self.tx() as c:
            c.execute("UPDATE login_attempts SET outcome = ? WHERE id = ?", ("ok" if ok else "failed", attempt_id))

    def recent_failures(self, username: str, window_ms: int) -> int:
        return self.one("SELECT count(*) FROM login_attempts WHERE username = ? AND at >= ? AND outcome <> 'ok'",
                        (username, now_ms() - window_ms))[0]

    def set_disabled(self, username: str, disabled: bool, by: str = "cli") -> None:
        """Disable (its sessions end at once) or enable an analyst; enabling also lifts a lockout."""
        with self.tx() as c:
            if c.execute("UPDATE users SET disabled = ? WHERE username = ?", (int(disabled), username)).rowcount != 1:
                raise StoreError(404, f"no user {username!r}")
            if disabled:
                c.execute("DELETE FROM sessions WHERE username = ?", (username,))
            else:
                c.execute("UPDATE login_attempts SET outcome = 'ok' WHERE username = ? AND outcome <> 'ok'",
                          (username,))
            self.audit_in(c, by, "disable_user" if disabled else "enable_user", f"user:{username}", None, None,
                          now_ms())

    def reset_password(self, username: str, password: str, by: str = "cli") -> None:
        """A new password; the user's sessions end and a lockout is lifted."""
        if len(password) < 12:
            raise StoreError(400, "a password has at least 12 characters")
        pw_hash = hash_password(password)
        with self.tx() as c:
            if c.execute("UPDATE users SET pw_hash = ? WHERE username = ?", (pw_hash, username)).rowcount != 1:
                raise StoreError(404, f"no user {username!r}")
            c.execute("DELETE FROM sessions WHERE username = ?", (username,))
            c.execute("UPDATE login_attempts SET outcome = 'ok' WHERE username = ? AND outcome <> 'ok'", (username,))
            self.audit_in(c, by, "reset_password", f"user:{username}", None, None, now_ms())

    def store_id(self) -> str:
        """This store's identity, made once: review services on one labels topic must share it."""
        r = self.one("SELECT value FROM meta WHERE name = 'store_id'")
        if r is None:
            with self.tx() as c:
                c.execute("INSERT INTO meta VALUES ('store_id', ?) ON CONFLICT (name) DO NOTHING",
                          (secrets.token_hex(8),))
            r = self.one("SELECT value FROM meta WHERE name = 'store_id'")
        return r[0]

    def new_session(self, username: str) -> tuple[str, Session]:
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        t = now_ms()
        role = self.one("SELECT role FROM users WHERE username = ?", (username,))
        with self.tx() as c:
            c.execute("DELETE FROM sessions WHERE last_seen < ? OR created_at < ?", (t - SESSION_IDLE_MS,
                                                                                     t - SESSION_MAX_MS))
            c.execute("INSERT INTO sessions VALUES (?, ?, ?, ?, ?)", (token_digest(token), username, csrf, t, t))
        return token, Session(username, csrf, role[0] if role else "analyst")

    def session(self, token: str | None) -> Session | None:
        if not token or len(token) > 200:
            return None
        t = now_ms()
        r = self.one("SELECT s.*, u.disabled, u.role, u.timezone FROM sessions s JOIN users u USING (username) "
                     "WHERE token_hash = ?",
                     (token_digest(token),))
        if r is None or r["disabled"] or r["last_seen"] < t - SESSION_IDLE_MS or r["created_at"] < t - SESSION_MAX_MS:
            return None
        if t - r["last_seen"] > 60_000:
            with self.tx() as c:
                c.execute("UPDATE sessions SET last_seen = ? WHERE token_hash = ?", (t, r["token_hash"]))
        return Session(r["username"], r["csrf"], r["role"], r["timezone"] or "UTC")

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

    def audit_trail(self, limit: int = 200) -> list[Row]:
        return self.query("SELECT * FROM audit ORDER BY id DESC LIMIT ?", (limit,))

    # -- metrics ---------------------------------------------------------------------------------------

    def metrics(self, review_threshold: float = 0.5) -> dict:
        t = now_ms()
        c = self.counts()
        hour = self.query("SELECT verdict, count(*) AS n FROM cases WHERE status = 'closed' AND closed_at >= ? "
                          "GROUP BY verdict", (t - 3600_000,))
        total = self.query("SELECT kind, verdict, count(*) AS n FROM cases WHERE status = 'closed' "
                           "GROUP BY kind, verdict")
        agree = self.one("SELECT count(*) AS n, count(CASE WHEN (verdict = 'fraud') = (score >= ?) THEN 1 END) "
                         "AS a FROM cases WHERE status = 'closed' AND verdict IN ('fraud', 'legit') "
                         "AND score IS NOT NULL", (review_threshold,))  # inconclusive: neither agrees nor not
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
    """``with store.tx() as c:`` one transaction (SQLite: IMMEDIATE): committed on success, rolled back on any
    error."""

    def __init__(self, conn, begin: str):
        self.c = conn
        self.begin = begin

    def __enter__(self):
        self.c.execute(self.begin)
        return self.c

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            try:
                self.c.execute("COMMIT")
                return False
            except BaseException:
                self.rollback()
                raise
        self.rollback()
        return False

    def rollback(self) -> None:
        try:
            self.c.execute("ROLLBACK")
        except Exception:  # the connection is gone: the server dropped the transaction with it
            pass


def random_password() -> str:
    return secrets.token_urlsafe(15)


def env_metrics_token() -> str | None:
    return os.environ.get("RISKSTREAM_REVIEW_METRICS_TOKEN") or None
