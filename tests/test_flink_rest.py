"""The Flink REST client against a small local HTTP server that answers like a JobManager (no JVM): transient
failures (503 during leader election, a refused connection) are retried until the deadline, the others are
not, and the errors say what the JobManager said."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from riskstream.ops import flink_rest
from riskstream.ops.procs import free_port

JOB = "0123456789abcdef0123456789abcdef"
LEADER_ELECTION = {"errors": ["Service temporarily unavailable due to an ongoing leader election. Please refresh."]}


class FakeJobManager:
    """Answers each request with the next scripted (status, body) for its method and path, then the last one
    for good; records what it was asked."""

    def __init__(self, port: int = 0):
        self.script: dict[tuple[str, str], list[tuple[int, dict]]] = {}
        self.seen: list[tuple[str, str, dict | None]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(n)) if n else None
                fake.seen.append((self.command, self.path, body))
                answers = fake.script.get((self.command, self.path)) or [(404, {"errors": ["Not found."]})]
                status, payload = answers.pop(0) if len(answers) > 1 else answers[0]
                raw = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            do_GET = do_POST = do_PATCH = _answer

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def jm():
    fake = FakeJobManager()
    yield fake
    fake.close()


def test_leader_election_is_retried_until_the_answer(jm):
    jm.script[("GET", "/overview")] = [(503, LEADER_ELECTION), (503, LEADER_ELECTION), (200, {"taskmanagers": 1})]
    assert flink_rest.get(jm.url, "/overview", retry_s=10) == {"taskmanagers": 1}
    assert len(jm.seen) == 3


def test_a_post_is_retried_on_503_and_sent_once_it_is_taken(jm):
    jm.script[("POST", f"/jobs/{JOB}/savepoints")] = [(503, LEADER_ELECTION), (202, {"request-id": "r1"})]
    assert flink_rest.trigger_savepoint(jm.url, JOB, "file:///sp") == "r1"
    assert [b for m, _, b in jm.seen if m == "POST"] == [{"cancel-job": False, "target-directory": "file:///sp"}] * 2


def test_the_deadline_ends_the_retries_with_what_the_jobmanager_said(jm):
    jm.script[("GET", "/overview")] = [(503, LEADER_ELECTION)]
    t0 = time.monotonic()
    with pytest.raises(flink_rest.HttpError, match="HTTP 503: Service temporarily unavailable") as e:
        flink_rest.get(jm.url, "/overview", retry_s=1.0)
    assert e.value.status == 503 and 1.0 <= time.monotonic() - t0 < 5
    assert flink_rest.reachable(jm.url)  # it answers: later calls retry


def test_other_errors_are_not_retried(jm):
    jm.script[("POST", f"/jobs/{JOB}/stop")] = [(500, {"errors": ["Internal server error.", "trace ..."]})]
    with pytest.raises(flink_rest.FlinkError, match="stop-with-savepoint of job .* refused: HTTP 500: Internal server"):
        flink_rest.trigger_savepoint(jm.url, JOB, stop=True, retry_s=10)
    with pytest.raises(flink_rest.JobNotFound, match="not known to the Flink cluster"):
        flink_rest.job_details(jm.url, JOB, retry_s=10)
    assert len(jm.seen) == 2


def test_a_refused_connection_is_retried_until_the_jobmanager_listens():
    port = free_port()
    started: list[FakeJobManager] = []

    def start_late():
        time.sleep(0.8)
        fake = FakeJobManager(port)
        fake.script[("GET", f"/jobs/{JOB}")] = [(200, {"state": "RUNNING", "vertices": []})]
        started.append(fake)

    t = threading.Thread(target=start_late)
    t.start()
    try:
        assert flink_rest.job_state(f"http://127.0.0.1:{port}", JOB, retry_s=10) == "RUNNING"
    finally:
        t.join()
        for fake in started:
            fake.close()


def test_without_a_jobmanager_the_error_says_so_after_the_deadline():
    url = f"http://127.0.0.1:{free_port()}"
    assert not flink_rest.reachable(url) and flink_rest.overview(url) is None
    t0 = time.monotonic()
    with pytest.raises(flink_rest.ClusterNotRunning, match=f"no Flink JobManager answers at {url}"):
        flink_rest.job_details(url, JOB, retry_s=0.5)
    assert 0.5 <= time.monotonic() - t0 < 5
    with pytest.raises(flink_rest.FlinkError, match="not a Flink job id"):
        flink_rest.job_details(url, "nope")


def test_wait_running_waits_for_the_tasks_and_a_checkpoint(jm):
    running = {"state": "RUNNING", "vertices": [{"status": "RUNNING"}, {"status": "RUNNING"}]}
    jm.script[("GET", f"/jobs/{JOB}")] = [(503, LEADER_ELECTION), (200, {"state": "CREATED", "vertices": []}),
                                          (200, running)]
    jm.script[("GET", f"/jobs/{JOB}/checkpoints")] = [(200, {"counts": {"completed": 0}}),
                                                      (200, {"counts": {"completed": 1}})]
    assert flink_rest.wait_running(jm.url, JOB, deadline_s=30) < 30


UNHANDLED = {"errors": ["Internal server error.", "<java.util.concurrent.CancellationException ...>"]}


def test_the_polling_loops_ask_again_after_a_500_on_the_jobs_details(jm):
    """Under load Flink's execution-graph cache answers a poll of /jobs/<id> with 500 when a newer request
    replaced the entry it waited for (seen in a chaos run at load average 40-80): the loops poll again; a
    500 that lasts ends them at the deadline with what the JobManager said; one call still raises it."""
    running = {"state": "RUNNING", "vertices": [{"status": "RUNNING"}]}
    jm.script[("GET", f"/jobs/{JOB}")] = [(500, UNHANDLED), (500, UNHANDLED), (200, running)]
    jm.script[("GET", f"/jobs/{JOB}/checkpoints")] = [(200, {"counts": {"completed": 1}})]
    assert flink_rest.wait_running(jm.url, JOB, deadline_s=30) < 30
    jm.script[("GET", f"/jobs/{JOB}")] = [(500, UNHANDLED), (200, {"state": "FINISHED"})]
    assert flink_rest.wait_for_state(jm.url, JOB, ("FINISHED",), deadline_s=30) == "FINISHED"
    jm.script[("GET", f"/jobs/{JOB}")] = [(500, UNHANDLED)]
    with pytest.raises(flink_rest.FlinkError, match="not running within 1s .*HTTP 500: Internal server error"):
        flink_rest.wait_running(jm.url, JOB, deadline_s=1)
    with pytest.raises(flink_rest.JobDetailsUnavailable, match="HTTP 500"):
        flink_rest.job_details(jm.url, JOB, retry_s=10)


def test_wait_running_stops_at_a_failed_job_with_its_cause(jm):
    jm.script[("GET", f"/jobs/{JOB}")] = [(200, {"state": "FAILED", "vertices": []})]
    jm.script[("GET", f"/jobs/{JOB}/exceptions")] = [(200, {"exceptionHistory": {"entries": [
        {"stacktrace": "org.x.JobException: boom\n\tat x\nCaused by: java.io.IOException: disk full"}]}})]
    with pytest.raises(flink_rest.FlinkError, match="(?s)is FAILED, not running:.*Caused by: java.io.IOException"):
        flink_rest.wait_running(jm.url, JOB, deadline_s=30)


def test_savepoint_status_reports_the_location_or_the_failure(jm):
    path = f"/jobs/{JOB}/savepoints/r1"
    done = {"status": {"id": "COMPLETED"}, "operation": {"location": "file:/sp/savepoint-1"}}
    jm.script[("GET", path)] = [(200, {"status": {"id": "IN_PROGRESS"}}), (200, done)]
    assert flink_rest.savepoint_status(jm.url, JOB, "r1") is None
    assert flink_rest.await_savepoint(jm.url, JOB, "r1", "savepoint", deadline_s=10) == "file:/sp/savepoint-1"
    jm.script[("GET", path)] = [(200, {"status": {"id": "COMPLETED"}, "operation": {"failure-cause": {
        "stack-trace": "java.util.concurrent.CompletionException: x\nCaused by: y: checkpoint declined"}}})]
    with pytest.raises(flink_rest.FlinkError, match="(?s)savepoint of job .* failed: .*Caused by: y: checkpoint"):
        flink_rest.savepoint_status(jm.url, JOB, "r1")


def test_wait_for_state_reads_the_jobs_details(jm):
    jm.script[("GET", f"/jobs/{JOB}")] = [(200, {"state": "RUNNING"}), (503, LEADER_ELECTION),
                                          (200, {"state": "FINISHED"})]
    assert flink_rest.wait_for_state(jm.url, JOB, ("FINISHED",), deadline_s=30) == "FINISHED"
    jm.script[("GET", f"/jobs/{JOB}")] = [(200, {"state": "FAILED"})]
    with pytest.raises(flink_rest.FlinkError, match="is FAILED, expected FINISHED"):
        flink_rest.wait_for_state(jm.url, JOB, ("FINISHED",), deadline_s=30)
