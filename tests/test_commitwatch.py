"""The commit watch (riskstream/ops/commitwatch.py) against a stand-in for Flink's REST API: quiet while
checkpoints complete and while the job deploys, one warning once none completed for the limit, one line
when commits resume; the job metric is read as Flink serves it."""

from __future__ import annotations

import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from riskstream.ops import commitwatch
from riskstream.ops.commitwatch import CLEAR_PREFIX, WARN_PREFIX, CommitWatch

JOB = "0" * 32


class FakeFlink:
    def __init__(self):
        self.tasks = "DEPLOYING"
        self.completed: dict | None = None
        self.history: list[dict] = []
        self.metric: str | None = None
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path == f"/jobs/{JOB}":
                    body = {"state": "RUNNING", "vertices": [{"status": fake.tasks}]}
                elif self.path == f"/jobs/{JOB}/checkpoints":
                    body = {"latest": {"completed": fake.completed}, "history": fake.history}
                elif self.path.startswith(f"/jobs/{JOB}/metrics"):
                    body = [{"id": commitwatch.METRIC, "value": fake.metric}] if fake.metric else []
                else:
                    self.send_error(404)
                    return
                raw = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def complete(self, cid: int) -> None:
        self.completed = {"id": cid, "latest_ack_timestamp": int(time.time() * 1000)}
        self.history = [{"id": cid, "status": "COMPLETED", "trigger_timestamp": int(time.time() * 1000)}]


@pytest.fixture
def fake():
    f = FakeFlink()
    yield f
    f.server.shutdown()


def _until(pred, deadline_s: float = 10.0) -> None:
    t_end = time.monotonic() + deadline_s
    while not pred():
        assert time.monotonic() < t_end, "condition not met in time"
        time.sleep(0.02)  # polling interval


def test_warns_once_when_commits_stop_and_says_when_they_resume(fake):
    out = io.StringIO()
    w = CommitWatch(fake.url, JOB, 1000, out=out, poll_s=0.05, limit_s=0.5)
    w.start()
    try:
        time.sleep(1.0)  # deploying for longer than the limit: not a commit problem, no warning
        assert out.getvalue() == ""
        fake.tasks = "RUNNING"
        fake.complete(1)
        _until(lambda: w.is_alive())
        fake.history = [{"id": 2, "status": "IN_PROGRESS", "trigger_timestamp": int(time.time() * 1000)},
                        *fake.history]  # checkpoint 2 hangs (the broker stalled)
        _until(lambda: WARN_PREFIX in out.getvalue())
        assert "since checkpoint 1 (checkpoint 2 in progress" in out.getvalue()
        time.sleep(0.3)
        assert out.getvalue().count(WARN_PREFIX) == 1  # not repeated before repeat_s
        fake.complete(2)
        _until(lambda: CLEAR_PREFIX in out.getvalue())
        assert "checkpoint 2 completed after" in out.getvalue()
    finally:
        w.stop()
        w.join(timeout=5)


def test_the_job_metric_as_flink_serves_it(fake):
    assert commitwatch.uncommitted_s(fake.url, JOB) is None  # not reported yet
    fake.metric = str(int(time.time() * 1000) - 7000)
    assert 6.5 < commitwatch.uncommitted_s(fake.url, JOB) < 9
    assert commitwatch.threshold_ms(1000) == 5000 and commitwatch.threshold_ms(2000) == 10000
