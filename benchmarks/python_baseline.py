"""``baseline_python_eps``: what a user writes without a stream processor.

One process: a kafka-python consumer (``read_committed``, no auto-commit), the job's own feature code
(``udfs.replay.FeatureReplay``: dedup, user / ip / device windows in dicts), onnxruntime on each poll's
batch, the policy, and a transactional producer that commits the outputs together with the consumed
offsets (``send_offsets_to_transaction``), one transaction per poll: exactly once for the outputs.

What it lacks, and why it is only a baseline: its window state lives in process memory, so a crash loses
it (the offsets say "done" while the windows are gone); it cannot use more than one core; and one slow
poll delays every key.
"""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path

import numpy as np


def run(bootstrap: str, events_topic: str, out_topic: str, expected: int, workdir: Path | None = None,
        log=sys.stderr, idle_s: float = 20.0, model_path: str | None = None) -> dict:
    from kafka import KafkaConsumer, KafkaProducer
    from kafka.structs import OffsetAndMetadata

    from riskstream.config import JobConfig
    from udfs.decision import decision_record, encode
    from udfs.events import Event, parse_event
    from udfs.policy import Policy
    from udfs.replay import FeatureReplay
    from udfs.scoring import Scorer

    cfg = JobConfig()
    scorer = Scorer(model_path or cfg.resolved_model_path())
    policy = Policy()
    replay = FeatureReplay(cfg.allowed_lateness_ms, cfg.dedup_horizon_ms)
    group = f"bench-python-{uuid.uuid4().hex[:8]}"
    consumer = KafkaConsumer(events_topic, bootstrap_servers=bootstrap, group_id=group,
                             isolation_level="read_committed", enable_auto_commit=False,
                             auto_offset_reset="earliest", max_poll_records=2000)
    producer = KafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"{group}-tx", acks="all",
                             enable_idempotence=True, linger_ms=5, batch_size=256 * 1024)
    producer.init_transactions()
    out = 0
    t0 = time.monotonic()
    last_progress = t0
    try:
        while out < expected:
            batch = consumer.poll(timeout_ms=500)
            if not batch:
                if time.monotonic() - last_progress > idle_s:
                    raise TimeoutError(f"python baseline: {out} of {expected} outputs, no input for {idle_s}s")
                continue
            last_progress = time.monotonic()
            events: list[Event] = []
            rows: list[list[float]] = []
            lates: list[bool] = []
            for recs in batch.values():
                for r in recs:
                    ev = parse_event(r.value)
                    if not isinstance(ev, Event):
                        continue
                    res = replay.step(ev)
                    if res is None:  # a duplicate event id
                        continue
                    events.append(ev)
                    rows.append(res[0])
                    lates.append(res[1])
            producer.begin_transaction()
            if rows:
                scores = scorer.score_batch(np.asarray(rows, dtype=np.float32))
                now = int(time.time() * 1000)
                for ev, feats, late, score in zip(events, rows, lates, scores.tolist()):
                    decision, reasons = policy.decide(score, feats, ev.event_type, late)
                    rec = decision_record(ev, decision, score, reasons, feats, scorer.version, policy.version,
                                          now, late)
                    producer.send(out_topic, key=ev.user_id.encode(), value=encode(rec))
            offsets = {tp: OffsetAndMetadata(recs[-1].offset + 1, "", -1) for tp, recs in batch.items()}
            producer.send_offsets_to_transaction(offsets, consumer.group_metadata())
            producer.commit_transaction()
            out += len(rows)
    finally:
        consumer.close()
        producer.close(timeout=10)
    return {"seconds": round(time.monotonic() - t0, 2), "outputs": out}
