"""``baseline_python_eps``: what a user writes without a stream processor.

One process: a kafka-python consumer (``read_committed``, no auto-commit), the job's own stage chain
(``udfs.chain``: dedup and every entity's windows in dicts, then the decide stage with onnxruntime on each
poll's batch and the policy), and a transactional producer that commits the outputs together with the consumed
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
    from udfs.chain import Chain, Decider
    from udfs.control import Control
    from udfs.events import Event, parse_event
    from udfs.policy import Policy
    from udfs.scoring import Scorer

    cfg = JobConfig()
    decider = Decider(Control.initial(Scorer(model_path or cfg.resolved_model_path()),
                                      Policy(cfg.policy_version, cfg.review_threshold, cfg.block_threshold)))
    chain = Chain(cfg.allowed_lateness_ms, cfg.dedup_horizon_ms, cfg.out_of_orderness_ms)
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
            staged: list[tuple[Event, list[float], bool, dict | None]] = []
            for recs in batch.values():
                for r in recs:
                    ev = parse_event(r.value)
                    if not isinstance(ev, Event):
                        continue
                    res = chain.process(ev)
                    if res is None:  # a duplicate event id
                        continue
                    staged.append((ev, *res))
            producer.begin_transaction()
            if staged:
                rows = np.asarray([decider.vector(ev, vals) for ev, vals, _, _ in staged], dtype=np.float32)
                scores = decider.control.champion.score_batch(rows).tolist()
                now = int(time.time() * 1000)
                for (ev, vals, late, signals), score in zip(staged, scores):
                    _, rec, _ = decider.decide(ev, vals, late, signals, now, score=score)
                    producer.send(out_topic, key=ev.user_id.encode(), value=rec)
            offsets = {tp: OffsetAndMetadata(recs[-1].offset + 1, "", -1) for tp, recs in batch.items()}
            producer.send_offsets_to_transaction(offsets, consumer.group_metadata())
            producer.commit_transaction()
            out += len(staged)
    finally:
        consumer.close()
        producer.close(timeout=10)
    return {"seconds": round(time.monotonic() - t0, 2), "outputs": out}
