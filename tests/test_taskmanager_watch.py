"""A local run outlives its TaskManager (real broker, MiniCluster): when the MiniCluster's only TaskManager
stops while the job runs (what a FATAL error in a task's cleanup does: docs/exactly-once.md), the run's
watch starts another one, the job restarts from its last checkpoint, and every event is still decided
exactly once. Without the watch the restarted job waits for slots forever."""

from __future__ import annotations

import time

import orjson
import pytest

from riskstream import topics
from riskstream.config import JobConfig
from riskstream.generator import TrafficGenerator
from riskstream.ops import flink_rest
from riskstream.ops.procs import free_port
from riskstream.tools.audit import verify

pytestmark = [pytest.mark.kafka, pytest.mark.flink]


def _send(bootstrap: str, topic: str, records) -> None:
    from kafka import KafkaProducer

    p = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for r in records:
        p.send(topic, key=r.key.encode(), value=orjson.dumps(r.event))
    p.flush()
    p.close()


def _completed(rest: str, job_id: str) -> int:
    try:
        return flink_rest.checkpoints(rest, job_id, retry_s=0).get("counts", {}).get("completed", 0)
    except (OSError, ValueError):
        return 0


def test_a_stopped_taskmanager_is_replaced_and_nothing_is_lost(kafka_bootstrap, tmp_path):
    from pyflink.java_gateway import get_gateway

    from pipelines import decision_job

    names = tuple(f"tmwatch.{t}" for t in ("events", "decisions", "dead"))
    topics.ensure_topics(kafka_bootstrap, topics.topic_specs(*names, partitions=2))
    port = free_port()
    cfg = JobConfig(bootstrap_servers=kafka_bootstrap, events_topic=names[0], decisions_topic=names[1],
                    dead_letter_topic=names[2], parallelism=2, starting_offsets="earliest",
                    transactional_id_prefix="it-tmwatch", checkpoint_interval_ms=500, rest_port=port,
                    checkpoint_dir=(tmp_path / "ck").as_uri(), job_name="tmwatch", group_id="tmwatch")
    rest = f"http://127.0.0.1:{port}"
    records = list(TrafficGenerator(seed=5, bad_share=0.0).generate(1200))
    client = decision_job.run(cfg, wait=False)
    job_id = str(client.get_job_id())
    try:
        flink_rest.wait_running(rest, job_id, deadline_s=180)
        _send(kafka_bootstrap, names[0], records[:600])
        rep = verify(kafka_bootstrap, *names, wait_s=120)
        assert (rep["missing"], rep["duplicates"]) == (0, 0), rep

        cluster = get_gateway().jvm.io.riskstream.flink.TaskManagerWatch.miniCluster(client._j_job_client)
        assert cluster is not None
        assert get_gateway().jvm.io.riskstream.flink.TaskManagerWatch.alive(cluster) == 1
        before = _completed(rest, job_id)
        cluster.terminateTaskManager(0).get()  # as the FATAL handler does: the TaskManager stops
        _send(kafka_bootstrap, names[0], records[600:])

        deadline = time.monotonic() + 120
        while True:  # the job runs again on a new TaskManager and checkpoints (the sinks commit)
            state = flink_rest.job_state(rest, job_id)
            assert state not in ("FAILED", "CANCELED", "FINISHED"), state
            if get_gateway().jvm.io.riskstream.flink.TaskManagerWatch.alive(cluster) == 1 \
                    and _completed(rest, job_id) > before and state == "RUNNING":
                break
            assert time.monotonic() < deadline, f"no checkpoint after the TaskManager stopped (job {state})"
            time.sleep(0.2)  # polling interval

        rep = verify(kafka_bootstrap, *names, wait_s=120)
        assert (rep["missing"], rep["duplicates"], rep["unexpected"]) == (0, 0, 0), rep
        assert rep["decided"] == len(records)
        exc = flink_rest.get(rest, f"/jobs/{job_id}/exceptions")
        assert exc.get("exceptionHistory", {}).get("entries"), "the stop was a failure the job restarted from"
    finally:
        client.cancel().result()
