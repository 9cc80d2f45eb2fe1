"""``baseline_quix_eps``: the same job in Quix Streams, the Python stream processor peer.

The job's pure core (``udfs``) is used unchanged, so features, model and policy match the job exactly.
It runs in one Quix ``Application`` with ``processing_guarantee="exactly-once"``. Parsing, dedup and the
user windows run in a stateful ``apply``. The input is keyed by user id, which is the bench contract, so
this stage needs no repartition. The ip windows and then the device windows, the ONNX score, the policy
and the decision record follow, each behind a repartition. Each stage keeps one pickled window dict per
key in Quix's RocksDB store, with changelog topics, the way the Flink job keeps one ValueState per key.

Pitfalls:
- Quix forbids a ``group_by`` after a ``group_by`` (``GroupByNestingLimit``). The two repartitions are
  therefore explicit topics ``<group>.by-ip`` and ``<group>.by-device``, which this app writes
  (``to_topic(key=...)``) and reads back. That is what ``group_by`` does inside: the records are
  produced in the checkpoint's transaction and read ``read_committed`` (librdkafka's default). A
  decision therefore waits for three commits. Also, ``group_by`` on a one-partition input skips Kafka,
  and explicit hops do not.
- ``commit_interval`` defaults to 5 s in Quix. It is set here to 1 s, the Flink job's checkpoint interval.
- Quix serialises state values as JSON by default. The window dicts have int keys and sets, so the
  store is given ``pickle`` (``RocksDBOptions(dumps=..., loads=...)``).
- Timestamps: Quix produces every record, hops and decisions alike, with the timestamp of the input
  record (here the events' append time), and it creates its topics as ``CreateTime``. The output topic
  must exist with ``LogAppendTime`` (``_common.make_topic``) before the run. Otherwise Quix creates it,
  and ``read_output`` would time the preload instead of this job.
- Stopping: the device stage counts its outputs and calls ``app.stop()`` at ``expected``. On stop, Quix
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
    from udfs import dedup
    from udfs.control import Control
    from udfs.decision import decision_record, encode, error_decision_record
    from udfs.events import Event, parse_event
    from udfs.policy import Policy
    from udfs.scoring import Scorer
    from udfs.windows import EntityWindows, event_values

    cfg = JobConfig()
    control = Control.initial(Scorer(cfg.resolved_model_path()),
                              Policy(cfg.policy_version, cfg.review_threshold, cfg.block_threshold))
    users, ips, devices = (EntityWindows(e, cfg.allowed_lateness_ms) for e in ("user", "ip", "device"))
    horizon = cfg.dedup_horizon_ms
    group = f"bench-quix-{uuid.uuid4().hex[:8]}"
    state_dir = Path(workdir) / f"quix-state-{group}"
    outputs = 0

    def user_stage(raw: bytes, state):
        ev = parse_event(raw)
        if not isinstance(ev, Event):
            return None  # the bench sends valid events only; the job would dead-letter this
        st = state.get("w")
        if horizon and st is not None and dedup.seen(st, ev.event_id, max(st["last"], ev.ts), horizon):
            return None  # a duplicate event id (the job dead-letters it)
        st, vals, late = users.update(st, ev)
        if horizon:
            dedup.remember(st, ev.event_id, ev.ts, st["last"], horizon)
        state.set("w", st)
        return [*ev, vals, late]  # the Event's 9 fields, window values so far, late

    def ip_stage(v: list, state):
        st, vals, late = ips.update(state.get("w"), Event(*v[:9]))
        state.set("w", st)
        return [*v[:9], v[9] + vals, v[10] or late]

    def device_stage(v: list, state) -> bytes:
        c = control
        try:
            ev = Event(*v[:9])
            st, vals, dlate = devices.update(state.get("w"), ev)
            state.set("w", st)
            late = v[10] or dlate
            feats = event_values(ev) + v[9] + vals
            score = c.champion.score(feats)
            decision, reasons = c.policy.decide(score, feats, ev.event_type, late)
            return encode(decision_record(ev, decision, score, reasons, feats, c.champion.version,
                                          c.policy.version, int(time.time() * 1000), late,
                                          rules_version=c.rules_version))
        except Exception as e:  # fail safe, as the job: a valid event is still decided (review)
            return encode(error_decision_record(v[0], v[1], v[2], v[3], f"{type(e).__name__}: {e}",
                                                c.champion.version, c.policy.version, int(time.time() * 1000)))

    def device_and_stop(v: list, state) -> bytes:
        nonlocal outputs
        out = device_stage(v, state)
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
        by_ip, by_device = (app.topic(f"{group}.by-{k}", key_serializer="str", key_deserializer="str",
                                      config=hop) for k in ("ip", "device"))
        dst = app.topic(out_topic, key_serializer="str", value_serializer="bytes")
        (app.dataframe(src).apply(user_stage, stateful=True).filter(lambda v: v is not None)
         .to_topic(by_ip, key=lambda v: v[4]))
        app.dataframe(by_ip).apply(ip_stage, stateful=True).to_topic(by_device, key=lambda v: v[3])
        app.dataframe(by_device).apply(device_and_stop, stateful=True).to_topic(dst)
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
