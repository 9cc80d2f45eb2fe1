"""``baseline_quix_eps``: the same job in Quix Streams, the Python stream processor peer.

The job's stage chain (``udfs.chain``) is used unchanged, so features, model and policy match the job
exactly. It runs in one Quix ``Application`` with ``processing_guarantee="exactly-once"``: one stateful
``apply`` per entity of the spec, in chain order. The input is keyed by user id, which is the bench
contract, so the first (user) stage also parses and needs no repartition; every later entity stage sits
behind a repartition by its key, and the last one also scores and decides (Quix has no cheaper place for
a stage without state). Each stage keeps one pickled window dict per key in Quix's RocksDB store, with
changelog topics, the way the Flink job keeps one ValueState per key.

Pitfalls:
- Quix forbids a ``group_by`` after a ``group_by`` (``GroupByNestingLimit``). The repartitions are
  therefore explicit topics ``<group>.by-<entity>``, which this app writes (``to_topic(key=...)``) and
  reads back. That is what ``group_by`` does inside: the records are produced in the checkpoint's
  transaction and read ``read_committed`` (librdkafka's default). A decision therefore waits for one
  commit per entity. Also, ``group_by`` on a one-partition input skips Kafka, and explicit hops do not.
- ``commit_interval`` defaults to 5 s in Quix. It is set here to 1 s, the Flink job's checkpoint interval.
- Quix serialises state values as JSON by default. The window dicts have int keys and sets, so the
  store is given ``pickle`` (``RocksDBOptions(dumps=..., loads=...)``).
- Timestamps: Quix produces every record, hops and decisions alike, with the timestamp of the input
  record (here the events' append time), and it creates its topics as ``CreateTime``. The output topic
  must exist with ``LogAppendTime`` (``_common.make_topic``) before the run. Otherwise Quix creates it,
  and ``read_output`` would time the preload instead of this job.
- Stopping: the last stage counts its outputs and calls ``app.stop()`` at ``expected``. On stop, Quix
  commits the checkpoint (transaction and offsets), so every output is committed when ``app.run``
  returns. ``app.run(count=...)`` would count records reaching the end of *every* dataframe, hops
  included. ``app.run(timeout=idle_s)`` ends a run that consumes nothing for ``idle_s``, after a 60 s
  start-up grace. ``app.run`` installs SIGINT/SIGTERM handlers, so it must be called from the main thread.
- A fresh consumer group per run means fresh hop and changelog topics (5, about 5 s to create) and a
  fresh state dir. They are removed after the run.
- Quix Streams 3.28 caps pydantic below 2.14, so the project pins pydantic 2.13.5; it comes with the
  ``bench`` extra (``make bench``). Without it, importing this module fails and the bench reports the
  contender as skipped.
"""

from __future__ import annotations

import pickle
import shutil
import sys
import time
import uuid
from pathlib import Path

import quixstreams  # the bench extra; an ImportError makes the bench report this contender as skipped

COMMIT_INTERVAL_S = 1.0  # the Flink job's default checkpoint interval


def run(bootstrap: str, events_topic: str, out_topic: str, expected: int, workdir: Path, log=sys.stderr,
        idle_s: float = 30.0, commit_interval: float = COMMIT_INTERVAL_S) -> dict:
    """Run the Quix app over ``events_topic`` until ``expected`` decisions are committed to ``out_topic``;
    raise TimeoutError if it stops short (``idle_s`` without a consumed record)."""
    from quixstreams import Application
    from quixstreams.models import TopicConfig
    from quixstreams.state.rocksdb import RocksDBOptions

    from riskstream.config import JobConfig
    from udfs.chain import Decider, EntityStep, extend, key_index, pack, unpack
    from udfs.control import Control
    from udfs.events import Event, parse_event
    from udfs.features import ENTITIES
    from udfs.policy import Policy
    from udfs.scoring import Scorer

    cfg = JobConfig()
    decider = Decider(Control.initial(Scorer(cfg.resolved_model_path()),
                                      Policy(cfg.policy_version, cfg.review_threshold, cfg.block_threshold)))
    steps = [EntityStep(e, cfg.allowed_lateness_ms, cfg.dedup_horizon_ms) for e in ENTITIES]
    group = f"bench-quix-{uuid.uuid4().hex[:8]}"
    state_dir = Path(workdir) / f"quix-state-{group}"
    outputs = 0

    def entity_stage(step: EntityStep):
        def apply(rec, state):
            if rec is None:
                return None
            ev = unpack(rec)[0]
            if step.key(ev) is None:
                return extend(rec, step.empty_values(), False, None)
            st = state.get("w")
            if step.duplicate(st, ev):
                return None  # a duplicate event id (the job dead-letters it)
            st, vals, late, _ = step.step(st, ev)  # no timers: state lives as long as the run
            state.set("w", st)
            return extend(rec, vals, late, None)
        return apply

    def parse(raw: bytes):
        ev = parse_event(raw)
        return pack(ev) if isinstance(ev, Event) else None  # the bench sends valid events only

    last_stage = entity_stage(steps[-1])

    def decide_and_stop(rec, state) -> bytes:
        nonlocal outputs
        rec = last_stage(rec, state)
        if rec is None:
            return None
        ev, vals, late, signals = unpack(rec)
        _, out, _ = decider.decide(ev, vals, late, signals, int(time.time() * 1000))
        outputs += 1
        if outputs >= expected:
            app.stop()  # ends the poll loop after this record; Quix then commits the checkpoint
        return out

    t0 = time.monotonic()
    app = Application(broker_address=bootstrap, consumer_group=group, auto_offset_reset="earliest",
                      processing_guarantee="exactly-once", commit_interval=commit_interval,
                      state_dir=state_dir, loglevel="WARNING",
                      rocksdb_options=RocksDBOptions(dumps=lambda o: pickle.dumps(o, pickle.HIGHEST_PROTOCOL),
                                                     loads=pickle.loads))
    try:  # topics are created while the dataframes are defined, so clean-up covers this part too
        src = app.topic(events_topic, key_deserializer="bytes", value_deserializer="bytes")
        hop = TopicConfig(src.broker_config.num_partitions, src.broker_config.replication_factor)
        dst = app.topic(out_topic, key_serializer="str", value_serializer="bytes")
        sdf = app.dataframe(src).apply(parse)
        for i, step in enumerate(steps):
            fn = decide_and_stop if i == len(steps) - 1 else entity_stage(step)
            if i:  # repartition by this entity's key through an explicit hop topic
                by = app.topic(f"{group}.by-{step.name}", key_serializer="str", key_deserializer="str",
                               config=hop)
                sdf.to_topic(by, key=lambda v, k=key_index(step.entity): v[k] or "")
                sdf = app.dataframe(by)
            sdf = sdf.apply(fn, stateful=True).filter(lambda v: v is not None)
        sdf.to_topic(dst)
        print(f"[bench] quix {quixstreams.__version__}: group {group}, commit every {commit_interval}s",
              file=log, flush=True)
        app.run(timeout=idle_s, collect=False)
        seconds = round(time.monotonic() - t0, 2)
    finally:
        _cleanup(bootstrap, group, state_dir)
    if outputs < expected:
        raise TimeoutError(f"quix baseline: {outputs} of {expected} outputs, nothing consumed for {idle_s}s")
    return {"seconds": seconds, "version": quixstreams.__version__, "outputs": outputs,
            "commit_interval_s": commit_interval}


def _cleanup(bootstrap: str, group: str, state_dir: Path) -> None:
    """Delete the run's hop and changelog topics (all named after its consumer group) and state dir."""
    from kafka import KafkaAdminClient

    from riskstream.topics import delete_topics

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        internal = [t for t in admin.list_topics() if group in t]
    finally:
        admin.close()
    delete_topics(bootstrap, internal)
    shutil.rmtree(state_dir, ignore_errors=True)
