"""The client of Flink's REST API: every call riskstream makes to a JobManager (a standalone cluster's or
a MiniCluster's) goes through :func:`request`.

Transient failures are retried until a deadline (``retry_s``): HTTP 503, which a JobManager answers while
it (re)starts ("Service temporarily unavailable due to an ongoing leader election"), 502 and 504 from a
proxy in front of it, and a refused connection (its REST endpoint not listening yet). A GET is also
retried after a reset connection or a timeout; a POST or PATCH is not, since the JobManager may have acted
on it. Any other HTTP answer raises :class:`HttpError` at once. Loops that poll (``wait_running`` and the
like) retry by themselves under their own deadline, so their requests are made with ``retry_s=0``.

Failures meant for a person (the CLI prints them as they are) are :class:`FlinkError`.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import time
import urllib.error
import urllib.request
from typing import Callable
from urllib.parse import quote

RETRY_S = 10.0  # how long one request retries transient failures by default
POLL_S = 0.2  # interval of the polling loops below (each has its own deadline)
TRANSIENT_HTTP = frozenset({502, 503, 504})
TERMINAL_JOB_STATES = frozenset({"FINISHED", "FAILED", "CANCELED", "SUSPENDED"})
JOB_ID = re.compile(r"^[0-9a-f]{32}$")


class FlinkError(RuntimeError):
    """A failure reported as one message: what went wrong and what to do."""


class ClusterNotRunning(FlinkError):
    pass


class JobNotFound(FlinkError):
    pass


class JobDetailsUnavailable(FlinkError):
    """``GET /jobs/<id>`` answered 500 this time. Flink's execution-graph cache (DefaultExecutionGraphCache)
    cancels a request still waiting for an entry that a newer request replaced once the entry aged past
    ``web.refresh-interval`` (500 ms in riskstream's jobs); on a loaded machine two pollers of one job (the
    commit watch, `riskstream chaos`) then get "Internal server error." for a moment. The polling loops
    ask again; one call raises it like any other failure."""


class HttpError(OSError):
    """A JobManager's answer other than 2xx: ``status`` and the first line of its ``errors``."""

    def __init__(self, method: str, url: str, status: int, detail: str = ""):
        super().__init__(f"{method} {url}: HTTP {status}{': ' + detail if detail else ''}")
        self.method, self.url, self.status, self.detail = method, url, status, detail

    def short(self) -> str:
        return f"HTTP {self.status}{': ' + self.detail if self.detail else ''}"


def _detail(e: urllib.error.HTTPError) -> str:
    try:
        errs = json.loads(e.read() or b"{}").get("errors", [])
    except (ValueError, OSError, AttributeError):
        errs = []
    first = next((x.strip().splitlines()[0] for x in errs if isinstance(x, str) and x.strip()), "")
    return first[:300]


def _transient(e: BaseException, idempotent: bool) -> bool:
    if isinstance(e, HttpError):
        return e.status in TRANSIENT_HTTP
    reason = e.reason if isinstance(e, urllib.error.URLError) else e
    if isinstance(reason, ConnectionRefusedError):
        return True  # nothing listened: the request was never received
    return idempotent and isinstance(reason, (ConnectionResetError, http.client.RemoteDisconnected,
                                              socket.timeout, TimeoutError))


def request(rest_url: str, method: str, path: str, body: dict | None = None, timeout_s: float = 5.0,
            retry_s: float = RETRY_S):
    """``method`` ``rest_url + path`` with a JSON ``body``; the decoded JSON answer ({} when empty).

    Raises :class:`HttpError` for an HTTP error, ``OSError`` (``urllib.error.URLError``) when nothing answers
    and ``ValueError`` for an answer that is not JSON, once transient failures have been retried for
    ``retry_s`` seconds."""
    url = f"{rest_url.rstrip('/')}{path}"
    data = json.dumps(body).encode() if body is not None else None
    deadline = time.monotonic() + retry_s
    pause = 0.2
    while True:
        req = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data is not None else {})
        try:
            try:
                with urllib.request.urlopen(req, timeout=timeout_s) as r:
                    raw = r.read()
            except urllib.error.HTTPError as e:
                raise HttpError(method, url, e.code, _detail(e)) from None
            return json.loads(raw) if raw.strip() else {}
        except OSError as e:
            left = deadline - time.monotonic()
            if left <= 0 or not _transient(e, method == "GET"):
                raise
            time.sleep(min(pause, left))  # back-off before the retry
            pause = min(pause * 2, 2.0)


def get(rest_url: str, path: str, timeout_s: float = 5.0, retry_s: float = RETRY_S):
    return request(rest_url, "GET", path, timeout_s=timeout_s, retry_s=retry_s)


# -- cluster -------------------------------------------------------------------------------------------


def overview(rest_url: str, timeout_s: float = 1.0, retry_s: float = 0.0) -> dict | None:
    """``GET /overview`` (TaskManagers, slots, jobs), or None when no JobManager answers it."""
    try:
        return get(rest_url, "/overview", timeout_s=timeout_s, retry_s=retry_s)
    except (OSError, ValueError):
        return None


def reachable(rest_url: str) -> bool:
    """A JobManager answers at ``rest_url`` (one that is electing its leader counts: later calls retry)."""
    try:
        get(rest_url, "/overview", timeout_s=2.0, retry_s=0)
        return True
    except HttpError as e:
        return e.status in TRANSIENT_HTTP
    except (OSError, ValueError):
        return False


def cluster_config(rest_url: str, timeout_s: float = 5.0, retry_s: float = RETRY_S) -> dict[str, str]:
    """``GET /jobmanager/config``: the cluster's configuration as key -> value strings (the JobManager's; a
    standalone cluster's and the operator's TaskManagers read the same file). Pitfall: Flink masks values of
    keys that look secret, and a TaskManager started with other dynamic properties is not seen here."""
    return {str(e.get("key")): str(e.get("value")) for e in get(rest_url, "/jobmanager/config", timeout_s=timeout_s,
                                                               retry_s=retry_s) or [] if isinstance(e, dict)}


def jobs_overview(rest_url: str, timeout_s: float = 2.0, retry_s: float = RETRY_S) -> list[dict]:
    """``GET /jobs/overview``: one dict per job (``jid``, ``name``, ``state``, ...)."""
    return get(rest_url, "/jobs/overview", timeout_s=timeout_s, retry_s=retry_s).get("jobs", [])


# -- jobs ----------------------------------------------------------------------------------------------


def check_job_id(job_id: str) -> str:
    job_id = job_id.strip().lower()
    if not JOB_ID.match(job_id):
        raise FlinkError(f"{job_id!r} is not a Flink job id (32 hex digits; `riskstream cluster status` lists them)")
    return job_id


def job_details(rest_url: str, job_id: str, retry_s: float = RETRY_S) -> dict:
    """``GET /jobs/<id>``; a job the cluster does not know raises :class:`JobNotFound`, no answer (or still
    503 once ``retry_s`` is over) :class:`ClusterNotRunning`."""
    job_id = check_job_id(job_id)
    try:
        return get(rest_url, f"/jobs/{job_id}", retry_s=retry_s)
    except HttpError as e:
        if e.status == 404:
            raise JobNotFound(f"job {job_id} is not known to the Flink cluster at {rest_url} "
                              "(`riskstream cluster status` lists its jobs)") from None
        if e.status in TRANSIENT_HTTP:
            raise ClusterNotRunning(f"the Flink JobManager at {rest_url} is not ready ({e.short()})") from None
        if e.status == 500:
            raise JobDetailsUnavailable(f"GET /jobs/{job_id} at {rest_url} failed: {e.short()}") from None
        raise FlinkError(f"GET /jobs/{job_id} at {rest_url} failed: {e.short()}") from None
    except (OSError, ValueError) as e:
        raise ClusterNotRunning(f"no Flink JobManager answers at {rest_url} ({e})") from None


def job_state(rest_url: str, job_id: str, retry_s: float = RETRY_S) -> str:
    return job_details(rest_url, job_id, retry_s)["state"]


def checkpoints(rest_url: str, job_id: str, timeout_s: float = 2.0, retry_s: float = RETRY_S) -> dict:
    """``GET /jobs/<id>/checkpoints``: ``counts``, ``latest`` (completed, savepoint, restored, failed), ..."""
    return get(rest_url, f"/jobs/{job_id}/checkpoints", timeout_s=timeout_s, retry_s=retry_s)


def job_error(rest_url: str, job_id: str) -> str:
    """The innermost ``Caused by`` lines of a job's latest failure (``GET /jobs/<id>/exceptions``)."""
    try:
        entries = get(rest_url, f"/jobs/{job_id}/exceptions", retry_s=0) \
            .get("exceptionHistory", {}).get("entries", [])
    except (OSError, ValueError) as e:
        return f"(no exception history: {e})"
    if not entries:
        return "(no exception recorded)"
    trace = entries[0].get("stacktrace", "").strip()
    causes = [line.strip() for line in trace.splitlines() if line.startswith("Caused by")]
    if causes:
        return "\n".join(causes[-3:])
    return trace.splitlines()[0] if trace else "(empty stack trace)"


def wait_running(rest_url: str, job_id: str, deadline_s: float = 180.0, checkpoint: bool = True) -> float:
    """Poll until every task of the job runs and (with ``checkpoint``) a checkpoint completed, so the sources
    read and the sinks' transactions commit; return the seconds it took. A job that ends, or the deadline,
    raises :class:`FlinkError` with the job's last root cause."""
    t0 = time.monotonic()
    last = "no answer"
    while True:
        try:
            job = job_details(rest_url, job_id, retry_s=0)
        except ClusterNotRunning:
            job = None
        except JobDetailsUnavailable as e:  # asked again at the next poll, until the deadline
            job, last = None, str(e)
        if job:
            state = job.get("state")
            if state in TERMINAL_JOB_STATES:
                raise FlinkError(f"job {job_id} is {state}, not running:\n{job_error(rest_url, job_id)}")
            tasks = sorted({v["status"] for v in job.get("vertices", [])})
            last = f"job {state}, tasks {tasks}"
            if state == "RUNNING" and tasks == ["RUNNING"]:
                if not checkpoint:
                    return time.monotonic() - t0
                try:
                    counts = checkpoints(rest_url, job_id, retry_s=0).get("counts", {})
                except (OSError, ValueError):
                    counts = {}
                if counts.get("completed", 0) >= 1:
                    return time.monotonic() - t0
                last = f"tasks running, no checkpoint completed yet (checkpoint counts {counts})"
        if time.monotonic() - t0 > deadline_s:
            raise FlinkError(f"job {job_id} not running within {deadline_s:.0f}s ({last}); last failure:\n"
                             f"{job_error(rest_url, job_id)}")
        time.sleep(POLL_S)


def wait_for_state(rest_url: str, job_id: str, states: tuple[str, ...] | frozenset[str] = TERMINAL_JOB_STATES,
                   deadline_s: float = 60.0) -> str:
    """Poll until the job is in one of ``states``; another terminal state raises at once with the job's root
    cause, the deadline with the last state seen.

    The state is read from the job's details (``GET /jobs/<id>``), which the JobManager serves from a cache
    that can lag ``/jobs/<id>/status`` by a few seconds: once this returns, later reads of the job agree."""
    t0 = time.monotonic()
    state = "unknown (no answer)"
    while True:
        try:
            state = job_details(rest_url, job_id, retry_s=0).get("state", state)
        except (ClusterNotRunning, JobDetailsUnavailable):  # asked again at the next poll
            pass
        if state in states:
            return state
        if state in TERMINAL_JOB_STATES:
            raise FlinkError(f"job {job_id} is {state}, expected {'/'.join(sorted(states))}:\n"
                             f"{job_error(rest_url, job_id)}")
        if time.monotonic() - t0 > deadline_s:
            raise FlinkError(f"job {job_id} not {'/'.join(sorted(states))} within {deadline_s:.0f}s "
                             f"(last state {state})")
        time.sleep(POLL_S)


def cancel_job(rest_url: str, job_id: str, retry_s: float = RETRY_S) -> None:
    """``PATCH /jobs/<id>?mode=cancel`` (no savepoint)."""
    try:
        request(rest_url, "PATCH", f"/jobs/{job_id}?mode=cancel", retry_s=retry_s)
    except HttpError as e:
        raise FlinkError(f"cancel of job {job_id} refused: {e.short()}") from None


# -- savepoints ----------------------------------------------------------------------------------------


SAVEPOINT_FORMATS = ("canonical", "native")


def trigger_savepoint(rest_url: str, job_id: str, target_dir: str | None = None, stop: bool = False,
                      drain: bool = False, retry_s: float = RETRY_S, format_type: str | None = None) -> str:
    """Start a savepoint (``stop``: stop-with-savepoint, ``drain`` fires event-time timers first); return
    the request id for :func:`savepoint_status`. ``format_type`` (canonical or native) is sent as Flink's
    ``formatType`` on either call; None leaves Flink's default (canonical)."""
    what = "stop-with-savepoint" if stop else "savepoint"
    if stop:
        path, body = f"/jobs/{job_id}/stop", {"drain": drain}
        if target_dir:
            body["targetDirectory"] = target_dir
    else:
        path, body = f"/jobs/{job_id}/savepoints", {"cancel-job": False}
        if target_dir:
            body["target-directory"] = target_dir
    if format_type is not None:
        if format_type.lower() not in SAVEPOINT_FORMATS:
            raise FlinkError(f"savepoint format {format_type!r}: one of {', '.join(SAVEPOINT_FORMATS)}")
        body["formatType"] = format_type.upper()
    try:
        return request(rest_url, "POST", path, body, retry_s=retry_s)["request-id"]
    except HttpError as e:
        raise FlinkError(f"{what} of job {job_id} refused: {e.short()}") from None


def job_state_backend(rest_url: str, job_id: str, retry_s: float = RETRY_S) -> tuple[str | None, bool | None]:
    """(the keyed state backend a running job uses, ``rocksdb`` or ``hashmap``; whether the changelog is on
    over it), from ``GET /jobs/<id>/checkpoints/config`` (``state_backend``, the class name of the backend
    under the changelog; ``state_changelog_enabled``); (None, None) when it cannot be read."""
    try:
        conf = get(rest_url, f"/jobs/{job_id}/checkpoints/config", retry_s=retry_s)
    except (OSError, ValueError):
        return None, None
    name = str(conf.get("state_backend") or "")
    backend = "rocksdb" if "RocksDB" in name else "hashmap" if "HashMap" in name else None
    changelog = conf.get("state_changelog_enabled")
    return backend, changelog if isinstance(changelog, bool) else None


def savepoint_status(rest_url: str, job_id: str, request_id: str, what: str = "savepoint",
                     retry_s: float = RETRY_S) -> str | None:
    """The savepoint's location once the operation completed, None while it runs; a failed operation raises
    :class:`FlinkError` with its cause, a request the cluster does not know :class:`JobNotFound`."""
    try:
        r = get(rest_url, f"/jobs/{job_id}/savepoints/{request_id}", timeout_s=2.0, retry_s=retry_s)
    except HttpError as e:
        if e.status == 404:
            raise JobNotFound(f"job {job_id} (or its {what} request {request_id}) is not known to the cluster "
                              f"at {rest_url}") from None
        raise
    if r.get("status", {}).get("id") != "COMPLETED":
        return None
    op = r.get("operation") or {}
    if op.get("location"):
        return op["location"]
    cause = op.get("failure-cause") or {}
    trace = cause.get("stack-trace") or cause.get("class") or str(cause)
    causes = [ln.strip() for ln in trace.splitlines() if ln.startswith("Caused by")]
    first = trace.strip().splitlines()[0] if trace.strip() else "(no cause given)"
    raise FlinkError(f"{what} of job {job_id} failed: {first}" + ("\n" + "\n".join(causes[-3:]) if causes else ""))


def await_savepoint(rest_url: str, job_id: str, request_id: str, what: str, deadline_s: float,
                    found: Callable[[], str | None] | None = None,
                    gone: Callable[[], str | None] | None = None) -> str:
    """Poll :func:`savepoint_status` until the savepoint's location is known. While the JobManager does not
    answer or no longer knows the job (a MiniCluster exits with its job once a stop-with-savepoint finished
    it; a JobManager being elected answers 503), ``found()`` is asked for the location another way (the
    savepoint folder), then ``gone()`` whether the run is over (its process exited): a run that is over
    without a savepoint fails at once (:class:`FlinkError`), not at the deadline."""
    t0 = time.monotonic()
    status = "no answer"
    while True:
        try:
            location = savepoint_status(rest_url, job_id, request_id, what, retry_s=0)
            if location:
                return location
            status = "IN_PROGRESS"
        except (HttpError, JobNotFound, OSError, ValueError) as e:
            status = e.short() if isinstance(e, HttpError) else f"no answer ({e})"
            location = found() if found is not None else None
            if location:
                return location
            why = gone() if gone is not None else None
            if why and not (found() if found is not None else None):  # found() again: it may just have landed
                raise FlinkError(f"{what} of job {job_id} did not complete: the run is over ({why}) and no "
                                 f"completed savepoint of it was found (last status {status}). Its newest state "
                                 "is in its retained checkpoints: `riskstream snapshots <job name>` lists them")
        if time.monotonic() - t0 > deadline_s:
            raise FlinkError(f"{what} of job {job_id} not completed within {deadline_s:.0f}s (last status "
                             f"{status}); the job may still be working on it, see the Flink UI at {rest_url}")
        time.sleep(POLL_S)


# -- metrics -------------------------------------------------------------------------------------------


def vertex_metrics(rest_url: str, job_id: str, match: Callable[[str], bool] | None = None) -> dict[str, dict]:
    """Per job vertex name: {metric id: value summed over its subtasks} for the metrics whose id passes
    ``match`` (ids as Flink lists them, e.g. ``device-windows-score-decide.decisions_allow``)."""
    job = job_details(rest_url, job_id)
    out: dict[str, dict] = {}
    for v in job.get("vertices", []):
        base = f"/jobs/{job_id}/vertices/{v['id']}/subtasks/metrics"
        ids = [m["id"] for m in get(rest_url, base)]
        ids = [i for i in ids if match is None or match(i)]
        vals: dict[str, float] = {}
        for k in range(0, len(ids), 20):
            q = ",".join(ids[k:k + 20])
            for m in get(rest_url, f"{base}?get={quote(q, safe=',')}&agg=sum"):
                vals[m["id"]] = m.get("sum")
        out[v["name"]] = vals
    return out


def user_counters(rest_url: str, job_id: str, names: tuple[str, ...]) -> dict[str, float]:
    """The job's custom counters ``names`` (e.g. ``decisions_allow``), summed over vertices and subtasks;
    a counter not (yet) reported is absent."""
    found: dict[str, float] = {}
    for vals in vertex_metrics(rest_url, job_id, lambda i: i.rsplit(".", 1)[-1] in names).values():
        for mid, v in vals.items():
            n = mid.rsplit(".", 1)[-1]
            found[n] = found.get(n, 0) + (v or 0)
    return found
