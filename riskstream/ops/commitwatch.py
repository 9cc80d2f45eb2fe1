"""The commit watch: a log line while the job's exactly-once sinks cannot commit (a broker down or stalled).

The Kafka sinks commit their transactions when a checkpoint completes, and a checkpoint completes only
after the sinks flushed their records to the brokers. So "decisions are not being committed" is "no
checkpoint completed for a while", which Flink measures as the job metric
``lastCheckpointCompletedTimestamp`` (epoch ms of the newest completed checkpoint; Prometheus:
``flink_jobmanager_job_lastCheckpointCompletedTimestamp``, alert ``RiskstreamDecisionsNotCommitting`` in
deploy/prometheus/alerts.yml).

Neither the sink nor the Kafka client logs anything during a stall: a SIGSTOPped broker keeps its TCP
connections, and requests time out only after ``request.timeout.ms`` (30 s). A ``riskstream run`` with a REST
port therefore runs :class:`CommitWatch` beside its MiniCluster: it reads that metric through the job's REST
API and prints ::

    [sink] WARNING decisions not committed for 7.1 s: no checkpoint completed since checkpoint 41 (checkpoint
    42 in progress for 6.0 s) ...
    [sink] commits resumed: checkpoint 43 completed after 9.8 s without a commit

to the job's log (stderr), once when the gap passes the threshold (again every 30 s while it lasts) and once
when a checkpoint completes again.
"""

from __future__ import annotations

import sys
import threading
import time

from . import flink_rest

WARN_PREFIX = "[sink] WARNING decisions not committed"
CLEAR_PREFIX = "[sink] commits resumed"
METRIC = "lastCheckpointCompletedTimestamp"


def threshold_ms(checkpoint_interval_ms: int) -> int:
    """How long without a completed checkpoint counts as not committing: 5 intervals, at least 5 s."""
    return max(5_000, 5 * checkpoint_interval_ms)


def job_metric(rest_url: str, job_id: str, name: str, retry_s: float = 0.0) -> float | None:
    """A job-scope metric (``GET /jobs/<id>/metrics?get=<name>``) as a number; None when not reported."""
    got = flink_rest.get(rest_url, f"/jobs/{job_id}/metrics?get={name}", timeout_s=2.0, retry_s=retry_s)
    for m in got if isinstance(got, list) else []:
        if m.get("id") == name:
            try:
                return float(m.get("value"))
            except (TypeError, ValueError):
                return None
    return None


def uncommitted_s(rest_url: str, job_id: str, now_ms: float | None = None) -> float | None:
    """Seconds since the newest completed checkpoint by the job metric (None before the first one)."""
    ts = job_metric(rest_url, job_id, METRIC)
    if not ts or ts <= 0:
        return None
    return ((now_ms or time.time() * 1000) - ts) / 1000


class CommitWatch(threading.Thread):
    """Polls the job's checkpoint statistics and logs when commits stop and when they resume."""

    def __init__(self, rest_url: str, job_id: str, checkpoint_interval_ms: int, out=sys.stderr,
                 poll_s: float = 0.5, repeat_s: float = 30.0, limit_s: float | None = None):
        super().__init__(daemon=True, name="riskstream-commit-watch")
        self.rest_url, self.job_id, self.out = rest_url, job_id, out
        self.limit_s = limit_s if limit_s is not None else threshold_ms(checkpoint_interval_ms) / 1000
        self.poll_s, self.repeat_s = poll_s, repeat_s
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()

    def _say(self, msg: str) -> None:
        print(msg, file=self.out, flush=True)

    def run(self) -> None:
        last_id, last_t = None, None  # newest completed checkpoint id, and when it completed (epoch s)
        warned_at = None
        start = None  # before the run's first checkpoint, the clock starts once every task runs
        while not self._halt.wait(self.poll_s):
            try:
                if start is None:
                    job = flink_rest.get(self.rest_url, f"/jobs/{self.job_id}", timeout_s=2.0, retry_s=0)
                    if job.get("state") != "RUNNING" or {v["status"] for v in job.get("vertices", [])} != {"RUNNING"}:
                        continue  # restoring, deploying: not yet expected to checkpoint
                    start = time.time()
                cps = flink_rest.checkpoints(self.rest_url, self.job_id, retry_s=0)
            except (OSError, ValueError):
                continue  # the job (re)starting, or its process ending
            done = (cps.get("latest") or {}).get("completed") or {}
            cid = done.get("id")
            if cid is not None and cid != last_id:
                if warned_at is not None:
                    gap = time.time() - (last_t or start)
                    self._say(f"{CLEAR_PREFIX}: checkpoint {cid} completed after {gap:.1f} s without a commit")
                    warned_at = None
                last_id, last_t = cid, (done.get("latest_ack_timestamp") or time.time() * 1000) / 1000
                continue
            gap = time.time() - (last_t or start)
            if gap < self.limit_s or (warned_at is not None and time.time() - warned_at < self.repeat_s):
                continue
            hist = cps.get("history") or []
            pending = next((h for h in hist if h.get("status") == "IN_PROGRESS"), None)
            what = (f"checkpoint {pending['id']} in progress for "
                    f"{(time.time() * 1000 - pending['trigger_timestamp']) / 1000:.1f} s" if pending
                    else "no checkpoint in progress")
            since = f"since checkpoint {last_id}" if last_id is not None else "since every task runs"
            self._say(f"{WARN_PREFIX} for {gap:.1f} s: no checkpoint completed {since} ({what}). The Kafka sinks "
                      "commit on checkpoint completion and a checkpoint waits for them to flush: is a broker down, "
                      "stalled or unreachable? Flink metric lastCheckpointCompletedTimestamp")
            warned_at = time.time()
