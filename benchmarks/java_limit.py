"""Contender ``limit_java_eps``: the same windows as a Flink SQL job with no Python at all, the engine's limit.

The SQL is generated from ``udfs.features.FEATURES``: one event-time OVER window
(``RANGE BETWEEN INTERVAL H PRECEDING AND CURRENT ROW``, partitioned by the entity key) per entity and
horizon, chained as nested subqueries, plus one unbounded window per entity for ``since_prev`` (LAG) and
``age`` (MIN). The model is a logistic of a few features (:data:`MODEL_WEIGHTS`), the policy a CASE on the
score. Source and sink are the Kafka SQL connector (read_committed, bounded at the latest offsets; json,
exactly-once), so the job ends by itself once the preloaded topic is drained.

Pitfalls (Flink 2.2):

- all OVER aggregates of one SELECT must share one window ("All aggregates must be computed on the same
  window"): hence one subquery per (entity, horizon), 11 keyed operators in a chain. Longest horizons come
  first, as each stage stores its whole input row for its horizon and rows grow along the chain.
- ``COUNT(...) FILTER (WHERE ...) OVER`` is refused ("OVER must be applied to aggregate function");
  ``COUNT(CASE WHEN cond THEN 1 END)`` and ``MAX(CASE WHEN cond THEN amount END)`` are exact equivalents.
  ``COUNT(DISTINCT x) OVER`` works (exact, with retraction).
- LAG takes no explicit frame ("ROW/RANGE not allowed"); it shares the default window
  (unbounded preceding) with ``MIN(ts)``, so since_prev and age cost one operator per entity.
- late rows are dropped silently (metric ``numLateRecordsDropped`` only). Bounded RANGE windows drop a row
  whose key already fired a later timestamp, unbounded ones a row at or behind the watermark, and a bounded
  stage passes a row that is behind the watermark downstream, where the next stage may drop it. The
  generator's disorder is at most 3 s *inclusive*, and ``rt - INTERVAL '3' SECOND`` makes an event exactly
  3 s behind equal to the watermark (dropped): the delay is 3.001 s, so no row is ever behind it
  (:func:`behind_watermark` counts the rows at risk for a given delay).
- every row waits until the watermark passes it (3 s of event time) before any window emits it, and
  becomes visible to read_committed readers only when the next checkpoint completes.
- the last transaction is committed by the final checkpoint Flink 2.x takes when the bounded tasks
  finish (``execution.checkpointing.checkpoints-after-tasks-finish``, on by default, set explicitly).
- an OVER window stores every input row of its horizon (not bucket aggregates, as the job does): the three
  24 h stages hold every event of the day, ~200 MB of heap state after 200k events. Checkpoints must go to
  the filesystem, are full snapshots (5-15 s each, back to back at a 1 s interval) and cost more the
  longer the run; RocksDB with incremental checkpoints was over 10x slower, the changelog backend not
  faster in one try.
- a transactional-id prefix unique per run, so two runs (p1 then p2 in one process) never share ids.

Inexact against the job's bucketed windows (see :data:`INEXACT`): every windowed feature's edge (the SQL
window is the exact sliding ``[t - H, t]`` over all events of the key up to ``t``; the job sums the
``H / g`` buckets ending with ``t``'s bucket over the events arrived so far), since_prev and age under
disorder (event-time order instead of arrival order), and distinct counts that the job turns into
HyperLogLog estimates past 256 values per bucket (SQL stays exact).

``python -m benchmarks.java_limit --events 200000 --parallelism 1 2`` runs it end to end against a
scratch broker and compares the features with the offline replay (``udfs.replay``).
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

from udfs.events import EVENT_TYPES
from udfs.features import ENTITIES, ENTITY_KEYS, ENTITY_ORDER, FEATURE_NAMES, FEATURES, MISSING, Feature

WATERMARK_DELAY_MS = 3_001  # the generator's max disorder (3 s, inclusive) + 1 ms
MODEL_VERSION = "sql-logit-v0"
MODEL_BIAS = -3.0
MODEL_WEIGHTS = {"amount": 0.0012, "user_payments_10m": 0.35, "user_payment_methods_24h": 0.3,
                 "user_distinct_devices_24h": 0.25, "ip_distinct_users_1h": 0.4, "device_distinct_users_24h": 0.45}
BLOCK_AT, REVIEW_AT = 0.9, 0.5
# the events table's columns: every event field the features or the keys read (strings unless numeric)
_NUMERIC = {"amount": "DOUBLE", "ts": "BIGINT"}
_COLUMNS = tuple(dict.fromkeys(["event_id", "event_type", "user_id", "device_id", "amount", "currency", "ts"]
                               + [e.key_field for e in ENTITIES]
                               + [f.field for f in FEATURES if f.field and f.agg != "type_index"]))

_EDGE = ("RANGE [t-{h}, t] over every event of the key up to t in event time; the job sums the buckets of "
         "{g} ending with t's bucket over the events arrived so far (edge off by up to one bucket)")
INEXACT_WHY = {
    "since_prev": "previous event in event-time order (LAG); the job uses the newest event arrived before "
                  "(differs under disorder, by at most the 3 s disorder)",
    "age": "MIN(ts) over every event of the key up to t in event time; the job's first ts among events "
           "arrived so far (differs under disorder)",
    "fraud_labels": "always 0: the SQL contender reads no labels (the job without a labels topic gives 0 too)",
    "fraud_share": "always 0: the SQL contender reads no labels (the job without a labels topic gives 0 too)",
}


def _ms(ms: int) -> str:
    if ms % 86_400_000 == 0 and ms > 86_400_000:
        return f"{ms // 86_400_000} d"
    if ms % 3_600_000 == 0:
        return f"{ms // 3_600_000} h"
    return f"{ms // 60_000} min" if ms % 60_000 == 0 else f"{ms / 1000:g} s"


def inexact(f: Feature) -> str | None:
    if f.entity == "event":
        return None
    if f.agg in INEXACT_WHY:
        return INEXACT_WHY[f.agg]
    why = _EDGE.format(h=_ms(f.horizon_ms), g=_ms(f.bucket_ms))
    if f.agg in ("sum", "mean"):
        why += "; floating sums are updated by retraction (last-digit drift)"
    if f.agg == "distinct":
        why += "; exact here, a HyperLogLog estimate in the job past 256 values per bucket"
    return why


INEXACT = {f.name: w for f in FEATURES if (w := inexact(f))}


def _interval(ms: int) -> str:
    for unit, size in (("HOUR", 3_600_000), ("DAY", 86_400_000), ("MINUTE", 60_000), ("SECOND", 1_000)):
        if ms % size == 0 and ms // size < 100:
            return f"INTERVAL '{ms // size}' {unit}"
    return f"INTERVAL '{ms / 1000:.3f}' SECOND"


def _quote(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def feature_sql(f: Feature) -> str:
    """The DOUBLE expression of one feature; windowed ones end with ``OVER w``."""
    if f.agg == "value":
        return f"CAST({f.field} AS DOUBLE)"
    if f.agg == "type_index":
        whens = " ".join(f"WHEN {_quote(t)} THEN {i}" for i, t in enumerate(EVENT_TYPES))
        return f"CAST(CASE {f.field} {whens} END AS DOUBLE)"
    if f.agg == "since_prev":
        return f"COALESCE(CAST(ts - LAG(ts) OVER w AS DOUBLE), {MISSING})"
    if f.agg == "age":
        return "CAST(ts - MIN(ts) OVER w AS DOUBLE)"
    if f.agg in ("fraud_labels", "fraud_share"):  # no labels here: 0, over the stage's window like the others
        return "CAST(0 * COUNT(*) OVER w AS DOUBLE)"
    cond = f"event_type IN ({', '.join(map(_quote, f.event_types))})" if f.event_types else None

    def only(x: str) -> str:  # FILTER (WHERE ...) is refused in OVER: a CASE yielding NULL outside the filter
        return f"CASE WHEN {cond} THEN {x} END" if cond else x

    if f.agg == "count":
        return f"CAST(COUNT({only('1')}) OVER w AS DOUBLE)" if cond else "CAST(COUNT(*) OVER w AS DOUBLE)"
    if f.agg == "distinct":
        return f"CAST(COUNT(DISTINCT {only(f.field)}) OVER w AS DOUBLE)"
    fn = {"sum": "SUM", "mean": "AVG", "max": "MAX", "min": "MIN"}[f.agg]
    empty = 0.0 if f.agg == "sum" else MISSING
    return f"COALESCE(CAST({fn}({only(f.field)}) OVER w AS DOUBLE), {empty})"


def stages() -> list[tuple[str, int | None, list[Feature]]]:
    """(entity, horizon or None for since_prev/age, features): one OVER window each, longest horizon first."""
    groups: dict[tuple[str, int | None], list[Feature]] = {}
    for f in FEATURES:
        if f.entity != "event":
            groups.setdefault((f.entity, f.horizon_ms), []).append(f)
    order = sorted(groups, key=lambda k: (k[1] is None, -(k[1] or 0), ENTITY_ORDER.index(k[0])))
    return [(e, h, groups[(e, h)]) for e, h in order]


def select_sql() -> str:
    """The chain of OVER subqueries, then score and decision; feature columns are ``f_<name>``."""
    required = [c for c in _COLUMNS if c not in {e.key_field for e in ENTITIES if e.optional}]
    q = (f"SELECT {', '.join(_COLUMNS)}, rt FROM events WHERE "
         + " AND ".join(f"{c} IS NOT NULL" for c in required))
    for entity, horizon, feats in stages():
        frame = f" RANGE BETWEEN {_interval(horizon)} PRECEDING AND CURRENT ROW" if horizon else ""
        cols = ", ".join(f"{feature_sql(f)} AS f_{f.name}" for f in feats)
        q = (f"SELECT *, {cols} FROM ({q}) "
             f"WINDOW w AS (PARTITION BY {ENTITY_KEYS[entity]} ORDER BY rt{frame})")
    # the event's own features last: every OVER stage stores its whole input row for its horizon
    own = ", ".join(f"{feature_sql(f)} AS f_{f.name}" for f in FEATURES if f.entity == "event")
    q = f"SELECT *, {own} FROM ({q})"
    z = " + ".join([f"{MODEL_BIAS}"] + [f"{w} * f_{n}" for n, w in MODEL_WEIGHTS.items()])
    scored = f"SELECT *, 1.0 / (1.0 + EXP(-({z}))) AS score FROM ({q})"
    feats = ", ".join(f"f_{n}" for n in FEATURE_NAMES)
    return (f"SELECT event_id, event_type, user_id, device_id, CASE WHEN score >= {BLOCK_AT} THEN 'block' "
            f"WHEN score >= {REVIEW_AT} THEN 'review' ELSE 'allow' END, score, '{MODEL_VERSION}', "
            f"ROW({feats}), ts FROM ({scored})")


def ddl(bootstrap: str, events_topic: str, out_topic: str, txn_prefix: str) -> tuple[str, str]:
    delay = f"{WATERMARK_DELAY_MS / 1000:.3f}"
    source = f"""CREATE TEMPORARY TABLE events (
        {", ".join(f"{c} {_NUMERIC.get(c, 'STRING')}" for c in _COLUMNS)}, rt AS TO_TIMESTAMP_LTZ(ts, 3), WATERMARK FOR rt AS rt - INTERVAL '{delay}' SECOND
    ) WITH ('connector' = 'kafka', 'topic' = {_quote(events_topic)},
        'properties.bootstrap.servers' = {_quote(bootstrap)}, 'properties.group.id' = {_quote(txn_prefix)},
        'properties.isolation.level' = 'read_committed', 'scan.startup.mode' = 'earliest-offset',
        'scan.bounded.mode' = 'latest-offset', 'format' = 'json', 'json.ignore-parse-errors' = 'true')"""
    feats = ", ".join(f"`{n}` DOUBLE" for n in FEATURE_NAMES)
    sink = f"""CREATE TEMPORARY TABLE decisions (
        event_id STRING, event_type STRING, user_id STRING, device_id STRING, decision STRING, score DOUBLE,
        model_version STRING, features ROW<{feats}>, event_ts BIGINT
    ) WITH ('connector' = 'kafka', 'topic' = {_quote(out_topic)},
        'properties.bootstrap.servers' = {_quote(bootstrap)}, 'format' = 'json',
        'sink.delivery-guarantee' = 'exactly-once', 'sink.transactional-id-prefix' = {_quote(txn_prefix)},
        'properties.transaction.timeout.ms' = '600000')"""
    return source, sink


def run(bootstrap: str, events_topic: str, out_topic: str, expected: int, workdir: pathlib.Path,
        parallelism: int = 2, log=sys.stderr, extra_conf: dict[str, str] | None = None) -> dict:
    """Run the SQL job over the preloaded ``events_topic`` until it is drained; ``expected`` is only logged
    (the caller counts the output with ``_common.read_output``). ``extra_conf`` overrides Flink options."""
    from pyflink.table import EnvironmentSettings, TableEnvironment

    from riskstream.config import JobConfig
    from riskstream.ops.jars import flink_jar_urls

    workdir = pathlib.Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    t_env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    conf = t_env.get_config()
    for k, v in {**{
        "pipeline.jars": ";".join(flink_jar_urls(JobConfig().jars_dir)),
        "pipeline.name": f"riskstream-limit-java-p{parallelism}",
        "parallelism.default": str(parallelism),
        "rest.bind-port": "0",  # other local clusters may hold 8081
        "restart-strategy.type": "none",  # a failure fails the run instead of retrying silently
        "pipeline.object-reuse": "true",  # safe for SQL operators; 1.4-1.7x here
        "state.backend.type": "hashmap",  # RocksDB (incremental) ran >10x slower on this box
        "execution.checkpointing.interval": "1 s",
        "execution.checkpointing.mode": "EXACTLY_ONCE",
        "execution.checkpointing.storage": "filesystem",
        "execution.checkpointing.dir": (workdir / "checkpoints").as_uri(),
        "execution.checkpointing.checkpoints-after-tasks-finish": "true",
    }, **(extra_conf or {})}.items():
        conf.set(k, v)
    source, sink = ddl(bootstrap, events_topic, out_topic, f"riskstream-limit-java-{out_topic}-{time.time_ns()}")
    t_env.execute_sql(source)
    t_env.execute_sql(sink)
    print(f"[limit_java] {len(stages())} OVER stages, parallelism {parallelism}, {expected} events expected",
          file=log, flush=True)
    t0 = time.perf_counter()
    t_env.execute_sql(f"INSERT INTO decisions {select_sql()}").wait()
    seconds = time.perf_counter() - t0
    print(f"[limit_java] job finished in {seconds:.1f}s", file=log, flush=True)
    return {"seconds": seconds, "parallelism": parallelism, "features": list(FEATURE_NAMES),
            "inexact": dict(INEXACT), "watermark_delay_ms": WATERMARK_DELAY_MS, "stages": len(stages())}


def behind_watermark(bootstrap: str, topic: str, delay_ms: int) -> int:
    """Events at or behind their partition's best-case watermark (newest ts so far - ``delay_ms``): the
    most a source watermark with that delay can drop (fewer in practice: watermarks are periodic)."""
    from kafka import KafkaConsumer, TopicPartition

    import orjson

    c = KafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed", enable_auto_commit=False,
                      consumer_timeout_ms=3000, fetch_max_bytes=64 << 20)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic))]
        c.assign(parts)
        c.seek_to_beginning()
        end = c.end_offsets(parts)
        newest, behind = {}, 0
        while any(c.position(tp) < end[tp] for tp in parts):
            for tp, recs in c.poll(timeout_ms=1000, max_records=50_000).items():
                for r in recs:
                    ts = orjson.loads(r.value)["ts"]
                    top = newest.get(tp.partition)
                    behind += top is not None and ts <= top - delay_ms
                    newest[tp.partition] = ts if top is None else max(top, ts)
        return behind
    finally:
        c.close()


def compare_with_replay(bootstrap: str, out_topic: str, events: list[dict]) -> dict:
    """Per feature: share of events whose SQL value equals the replay's (1e-6 relative) and mean |diff|."""
    from kafka import KafkaConsumer, TopicPartition

    import orjson

    from udfs.events import Event
    from udfs.replay import replay

    c = KafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed", enable_auto_commit=False,
                      consumer_timeout_ms=3000, fetch_max_bytes=64 << 20)
    sql = {}
    try:
        c.assign([TopicPartition(out_topic, p) for p in sorted(c.partitions_for_topic(out_topic))])
        c.seek_to_beginning()
        for r in c:
            d = orjson.loads(r.value)
            sql[d["event_id"]] = d["features"]
    finally:
        c.close()
    same = dict.fromkeys(FEATURE_NAMES, 0)
    diff = dict.fromkeys(FEATURE_NAMES, 0.0)
    n = 0
    for ev, vec, _ in replay(Event(**e) for e in events):
        got = sql.get(ev.event_id)
        if got is None:
            continue
        n += 1
        for name, v in zip(FEATURE_NAMES, vec):
            d = abs(got[name] - v)
            same[name] += d <= 1e-6 * max(1.0, abs(v))
            diff[name] += d
    return {name: {"equal": round(same[name] / max(n, 1), 4), "mean_abs_diff": diff[name] / max(n, 1)}
            for name in FEATURE_NAMES} | {"_events_compared": n}


def main(argv: list[str] | None = None) -> int:
    """End to end on a scratch broker: preload, run at each parallelism, count output, compare features."""
    import json

    from benchmarks._common import make_topic, read_output
    from riskstream.ops import broker
    from riskstream.generator import TrafficGenerator
    from riskstream.kafka_io import produce

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--parallelism", type=int, nargs="+", default=[1, 2])
    p.add_argument("--port", type=int, default=19492)
    p.add_argument("--root", type=pathlib.Path, default=pathlib.Path("/tmp/javaprobe"))
    a = p.parse_args(argv)
    lay = broker.up(port=a.port, root=a.root / "broker", out=sys.stderr)
    try:
        recs = list(TrafficGenerator(seed=5).generate(a.events))
        topic = f"limit-java-events-{time.time_ns()}"
        make_topic(lay.bootstrap, topic, 2)
        produce(lay.bootstrap, topic, recs)
        at_risk = {d: behind_watermark(lay.bootstrap, topic, d) for d in (3_000, WATERMARK_DELAY_MS)}
        print(f"[limit_java] events at/behind a best-case watermark, by delay ms: {at_risk}", file=sys.stderr)
        for par in a.parallelism:
            out = f"{topic}-out-p{par}"
            make_topic(lay.bootstrap, out, 2)
            res = run(lay.bootstrap, topic, out, a.events, a.root / f"work-p{par}", par)
            span = read_output(lay.bootstrap, out, a.events, deadline_s=30)
            res |= {"records": span.records, "distinct_ids": span.distinct_ids,
                    "eps": round(span.eps or 0), "missing": a.events - span.distinct_ids}
            if par == a.parallelism[0]:
                res["vs_replay"] = compare_with_replay(lay.bootstrap, out, [r.event for r in recs])
            res.pop("inexact")
            print(json.dumps(res, indent=1))
        print(json.dumps({"inexact": INEXACT}, indent=1))
    finally:
        broker.down(root=a.root / "broker", out=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
