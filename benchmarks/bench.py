"""``riskstream bench``: the whole job against what users would otherwise run, on one broker, in one run.

Phases (each prints progress):

1. A private broker; ``--events`` generated events (no malformed ones) preloaded on a ``bench.events``
   topic with ``--parallelism`` partitions.
2. **throughput**: the real job (``riskstream run --bounded``, its default settings, exactly once, the
   control and labels inputs on) drains that backlog; ``throughput_eps`` is its committed output rate,
   timed by the broker's append times (``benchmarks._common``), so start-up is not counted.
3. **latency**, once per profile (``default``, ``low-latency``: ``riskstream.config.PROFILES``): the job
   again, unbounded, fed at half that rate for ``--latency-seconds`` after a warm-up of ``WARMUP_S`` at
   the same rate (the JIT compiling the hot paths, the Python workers' first bundles: seconds of latency
   a restarted job pays once), whose figures are reported apart and not timed. ``latency_ms`` runs from the event's
   append time at the broker to ``decided_at`` in the decision; ``visible_latency_ms`` to the moment the
   decisions topic's last stable offset passed it (what a ``read_committed`` reader may read, sampled every
   20 ms), which adds the wait for the checkpoint that commits the transaction (the exactly-once price).
   The run's checkpoints (REST API) say where the tail went: start delay, alignment and sync part per
   operator chain, and the share of the events above p99 decided while a checkpoint was in flight.
4. **baselines** on the same backlog, each writing its own output topic, timed the same way:
   ``baseline_python_eps`` (``benchmarks.python_baseline``), ``baseline_quix_eps``
   (``benchmarks.quix_baseline``, needs the ``bench`` extra) and ``limit_java_eps``
   (``benchmarks.java_job``: the same job, its JVM stages, scored in Java by onnxruntime's Java binding).
5. **micro**: onnxruntime and window-update µs per event, state bytes per key, from the pure core.

Writes ``benchmarks/results/bench-<time>.json`` and ``latency-<time>.png`` (the folder is ignored) and
prints the JSON object on the last line with ``--json``. Every contender's output is read back in full:
a contender that loses or duplicates events is reported, not silently timed.
"""

from __future__ import annotations

import bisect
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

import orjson

from riskstream import paths
from riskstream.ops import broker
from riskstream.ops.procs import free_port
from riskstream.config import JobConfig
from riskstream.generator import TrafficGenerator
from riskstream.metrics import percentile

from ._common import OutputSpan, make_topic, read_output

RESULTS = Path(__file__).resolve().parent / "results"
CONTENDERS = ("python", "quix", "java")
# issue 13's targets
TARGETS = {"throughput_eps": 25_000, "vs_java": 0.5, "vs_quix": 4.0, "vs_python": 10.0, "latency_p99_ms": 50.0,
           "latency_p999_ms": 150.0, "visible_p99_over_checkpoint_ms": 300.0}
# median state bytes per key before the JVM stages (the Python stage's pickled windows; issue 13)
STATE_BYTES_BEFORE = {"user": 499, "ip": 164, "device": 284}
# the latency runs' first seconds (JIT compilation, Python workers starting) are reported apart, not timed
WARMUP_S = 15.0
PROFILES = ("default", "low-latency")  # the latency phase runs once per profile (riskstream.config.PROFILES)
PROFILE_SETTINGS = ("bundle_time_ms", "bundle_size", "arrow_batch_size", "buffer_timeout_ms", "checkpoint_interval_ms",
                    "unaligned_checkpoints")


def _log(msg: str, log) -> None:
    print(f"[bench] {msg}", file=log, flush=True)


def _events(n: int, seed: int, rings: bool = False) -> list[bytes]:
    return [orjson.dumps(r.event) for r in TrafficGenerator(seed=seed, bad_share=0.0, rings=rings).generate(n)]


def _preload(bootstrap: str, topic: str, values: list[bytes], log) -> None:
    from kafka import KafkaProducer

    from riskstream.kafka_io import progress_printer

    show = progress_printer(len(values), f"preload {topic}", stream=log)
    p = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20, batch_size=512 * 1024,
                      enable_idempotence=True)
    try:
        for i, v in enumerate(values, 1):
            uid = v[v.index(b'"user_id":"') + 11:]
            p.send(topic, key=uid[:uid.index(b'"')], value=v)
            if i % 5000 == 0:
                show(i)
        p.flush(timeout=120)
    finally:
        p.close(timeout=10)
    show(len(values))


def _job_flags(bootstrap: str, events_topic: str, tag: str, work: Path, parallelism: int,
               checkpoint_interval_ms: int | None, profile: str = "default") -> dict[str, str]:
    flags = {
        "bootstrap_servers": bootstrap, "events_topic": events_topic,
        "decisions_topic": f"bench.{tag}.decisions", "dead_letter_topic": f"bench.{tag}.dead-letter",
        "control_topic": f"bench.{tag}.control", "labels_topic": f"bench.{tag}.labels",
        "group_id": f"bench-{tag}-{uuid.uuid4().hex[:6]}", "transactional_id_prefix": f"bench-{tag}-{uuid.uuid4().hex[:6]}",
        "starting_offsets": "earliest", "parallelism": str(parallelism),
        "checkpoint_dir": (work / f"checkpoints-{tag}").as_uri(),
        # a job name of its own: a bench run never enters the lineage of the user's job (--restore-from latest)
        "job_name": f"bench-{work.name}-{tag}",
    }
    if checkpoint_interval_ms:
        flags["checkpoint_interval_ms"] = str(checkpoint_interval_ms)
    if profile != "default":
        flags["profile"] = profile
    return flags


def _job_topics(bootstrap: str, flags: dict[str, str], parallelism: int) -> None:
    from riskstream.topics import ensure_topics, topic_specs

    ensure_topics(bootstrap, topic_specs(flags["events_topic"], flags["decisions_topic"], flags["dead_letter_topic"],
                                         parallelism))


def _job_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The job's environment: this process's, plus ``env`` (e.g. the graph switch, which only the environment
    sets). The job flags beat any RISKSTREAM_* job setting in it."""
    import os

    return {**os.environ, **(env or {})}


def flink_throughput(bootstrap: str, events_topic: str, expected: int, work: Path, parallelism: int,
                     checkpoint_interval_ms: int | None, log, deadline_s: float, tag: str = "flink",
                     control: dict | None = None, extra: dict[str, str] | None = None,
                     env: dict[str, str] | None = None) -> dict:
    """The job drains the preloaded backlog (``--bounded``) and exits; its committed output is timed. With
    ``control``, that message waits on the job's control topic before it starts (a split, for its cost);
    ``extra``: more job flags (e.g. ``state_backend``, ``restore_from``); ``env``: more environment."""
    import subprocess

    flags = {**_job_flags(bootstrap, events_topic, tag, work, parallelism, checkpoint_interval_ms), **(extra or {})}
    _job_topics(bootstrap, flags, parallelism)
    if control is not None:
        from kafka import KafkaProducer

        from riskstream.topics import control_topic_spec, ensure_topics

        ensure_topics(bootstrap, [control_topic_spec(flags["control_topic"])])
        p = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
        try:
            p.send(flags["control_topic"], orjson.dumps(control)).get(timeout=30)
        finally:
            p.close()
    args = [sys.executable, "-m", "riskstream.cli", "run", "--bounded"]
    for k, v in flags.items():  # True / False: a --x / --no-x switch
        flag = k.replace("_", "-")
        args += [f"--{flag}"] if v is True else [f"--no-{flag}"] if v is False else [f"--{flag}", v]
    t0 = time.monotonic()
    job_log = work / f"job-{tag}.log"
    flink_logs = work / f"flink-logs-{tag}"  # the MiniCluster's own log: restarts are counted from it
    flink_logs.mkdir(parents=True, exist_ok=True)
    with open(job_log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                env={**_job_env(env), "FLINK_LOG_DIR": str(flink_logs)},
                                cwd=paths.PROJECT_ROOT, start_new_session=True)
    watcher = threading.Thread(target=lambda: _watch_count(bootstrap, flags["decisions_topic"], expected, proc,
                                                           log, "flink job"), daemon=True)
    watcher.start()
    try:
        rc = proc.wait(timeout=deadline_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise TimeoutError(f"the job did not drain {expected} events within {deadline_s:.0f}s; "
                           f"see {job_log}")
    if rc != 0:
        raise RuntimeError(f"the job exited with {rc}; see {job_log}")
    span = read_output(bootstrap, flags["decisions_topic"], expected, deadline_s=30, log=log)
    restarts = job_restarts(flink_logs)
    if restarts:
        _log(f"WARNING: the job restarted {restarts} time(s) while it drained ({flink_logs}): this run timed its "
             "recovery, not its throughput", log)
    return {"span": span, "seconds": round(time.monotonic() - t0, 1), "decisions_topic": flags["decisions_topic"],
            "log": str(job_log), "restarts": restarts}


def job_restarts(flink_logs: Path) -> int:
    """How many times a job restarted, from its MiniCluster's log (the JobMaster's state switches).
    Pitfall: an exactly-once job that restarts still delivers every record once, so a bench that checks only
    the output cannot see that a task failed (a drift warning did, every 20,000 rows, and halved the rate)."""
    return sum(f.read_text(errors="replace").count("switched from state RUNNING to RESTARTING")
               for f in flink_logs.rglob("*.log"))


# the split of the split-cost comparison: two arms, each with its own model (the champion risk_gbdt_v1)
SPLIT_BENCH = {"kind": "split", "version": "bench-ab", "arms": [{"name": "b", "share": 0.5,
                                                                  "path": "models/risk_gbdt_v2.onnx"}]}


def _arm_counts(bootstrap: str, topic: str) -> dict[str, int]:
    """Records per ``arm`` (``(none)`` without one) on a decisions topic, read to its end (read_committed)."""
    from collections import Counter

    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed", enable_auto_commit=False,
                      fetch_max_bytes=64 << 20)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or [])]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        end = c.end_offsets(tps)
        out: Counter = Counter()
        deadline = time.monotonic() + 120
        while any(c.position(tp) < end[tp] for tp in tps) and time.monotonic() < deadline:
            for recs in c.poll(timeout_ms=500, max_records=50_000).values():
                for r in recs:
                    i = r.value.find(b'"arm":"')
                    out["(none)" if i < 0 else r.value[i + 7:r.value.index(b'"', i + 7)].decode()] += 1
        return dict(out)
    finally:
        c.close()


def _alternate(cases: tuple[str, ...], rounds: int, run_one, log) -> list[dict]:
    """``run_one(case, round)`` for every case, ``rounds`` times, the order reversed every other round (a
    shared machine's load drifts: neither case always goes first)."""
    runs = []
    for r in range(rounds):
        for case in cases if r % 2 == 0 else tuple(reversed(cases)):
            _log(f"round {r + 1}/{rounds}: {case}", log)
            runs.append({"case": case, "round": r + 1, **run_one(case, r)})
            _log(f"{case}: {runs[-1]['eps']} events/s", log)
    return runs


def _median_eps(runs: list[dict], case: str) -> float | None:
    eps = [x["eps"] for x in runs if x["case"] == case and x["eps"]]
    return round(statistics.median(eps), 1) if eps else None


def split_cost(events: int = 100_000, parallelism: int = 2, rounds: int = 2, seed: int = 11,
               checkpoint_interval_ms: int | None = None, port: int | None = None, keep: bool = False,
               log=sys.stderr, deadline_s: float = 900) -> dict:
    """``riskstream bench --split``: the job's throughput on one backlog without a split and with a 2-arm
    split (``SPLIT_BENCH``: 50 % of the users to risk_gbdt_v2, the champion risk_gbdt_v1 the rest), in the
    same run, ``rounds`` times alternating which goes first (a shared machine's load drifts); the cost is
    1 - median(split) / median(no split)."""
    t_start = time.monotonic()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    work = paths.home() / "bench" / f"split-{stamp}"
    work.mkdir(parents=True, exist_ok=True)
    lay = broker.up(port=port or free_port(), partitions=parallelism, root=work / "broker", out=log)
    bs = lay.bootstrap
    import os

    res: dict = {"kind": "split_cost", "events": events, "parallelism": parallelism, "rounds": rounds,
                 "split": SPLIT_BENCH, "started": stamp, "load_average": {"start": round(os.getloadavg()[0], 1)},
                 "runs": []}
    def one(case: str, r: int) -> dict:
        thr = flink_throughput(bs, "bench.events", events, work, parallelism, checkpoint_interval_ms, log,
                               deadline_s, tag=f"{case}{r}", control=SPLIT_BENCH if case == "split" else None)
        return {**_span_json(thr["span"], events), "restarts": thr["restarts"],
                "arms": _arm_counts(bs, thr["decisions_topic"]), "load_average": round(os.getloadavg()[0], 1)}

    try:
        _backlog(bs, events, seed, parallelism, log)
        res["runs"] = _alternate(("none", "split"), rounds, one, log)
        for case in ("none", "split"):
            res[f"{case}_eps"] = _median_eps(res["runs"], case)
        res["split_cost"] = round(1 - res["split_eps"] / res["none_eps"], 4) \
            if res.get("split_eps") and res.get("none_eps") else None
        res["exact"] = all(x["exact"] for x in res["runs"])
    finally:
        _clean_up(lay, work, keep, log)
    return _write_result(res, f"split-cost-{stamp}.json", t_start)


# the cases of ``bench --state``: each a state backend, and whether the changelog runs over it
STATE_CASES = {"hashmap": {"state_backend": "hashmap", "changelog": False},
               "rocksdb": {"state_backend": "rocksdb", "changelog": False},
               # the production configuration (`cluster up`, the manifest)
               "rocksdb+changelog": {"state_backend": "rocksdb", "changelog": True}}
STATE_BACKENDS = ("hashmap", "rocksdb+changelog")


def held_history(path: Path, users: int, end_ts: int, seed: int = 5) -> int:
    """A history of ``users`` users for ``riskstream bootstrap``, each with its own device, ip and card and 1
    or 2 events (1.5 on average) in the day before ``end_ts``: state the job holds while other users' traffic
    flows (about 3.5 keys per user, as the key-count benchmark's). Returns the events written."""
    import random

    rnd = random.Random(seed)
    rows = []
    for u in range(users):
        for k in range(1 + (u % 2)):
            ts = end_ts - rnd.randrange(3_600_000, 86_400_000)
            rows.append({"event_id": f"h{u}-{k}", "event_type": ("login", "payment")[k], "user_id": f"held-u{u}",
                         "device_id": f"held-d{u}", "ip": f"10.{u >> 16 & 255}.{u >> 8 & 255}.{u & 255}",
                         "amount": 0.0 if k == 0 else round(rnd.uniform(5, 200), 2), "currency": "EUR", "ts": ts,
                         **({"payment_ref": f"held-c{u}"} if k == 1 else {})})
    rows.sort(key=lambda r: r["ts"])
    with open(path, "wb") as f:
        for r in rows:
            f.write(orjson.dumps(r) + b"\n")
    return len(rows)


def state_cost(backends: tuple[str, ...] = STATE_BACKENDS, held_users: int = 100_000, events: int = 100_000,
               parallelism: int = 2, rounds: int = 2, seed: int = 11, checkpoint_interval_ms: int | None = None,
               port: int | None = None, keep: bool = False, log=sys.stderr, deadline_s: float = 1200) -> dict:
    """``riskstream bench --state hashmap,rocksdb+changelog``: the whole job (parse, four stages, decide, both sinks,
    exactly once) draining one backlog while it holds the state of ``held_users`` other users, once per
    state backend, ``rounds`` times alternating. The held state comes from ``riskstream bootstrap`` (one
    savepoint, restored by every run: a savepoint restores on either backend). Reports events/s per run, the
    medians and their ratio to the first backend's, and the time from start to the first committed
    decision (restore included)."""
    import os

    from riskstream.ops.bootstrap import bootstrap

    t_start = time.monotonic()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    work = paths.home() / "bench" / f"state-{stamp}"
    work.mkdir(parents=True, exist_ok=True)
    res: dict = {"kind": "state_cost", "events": events, "held_users": held_users, "parallelism": parallelism,
                 "rounds": rounds, "backends": list(backends), "started": stamp,
                 "load_average": {"start": round(os.getloadavg()[0], 1)}, "runs": []}
    lay = broker.up(port=port or free_port(), partitions=parallelism, root=work / "broker", out=log)
    bs = lay.bootstrap
    try:
        _backlog(bs, events, seed, parallelism, log)
        hist = work / "held-history.jsonl"
        n = held_history(hist, held_users, TrafficGenerator().start_ts)
        _log(f"bootstrapping {held_users:,} held users ({n:,} events)", log)
        # the bench jobs' settings that shape state: labels on (each run has a labels topic), the defaults else
        cfg = JobConfig(labels_topic="bench.labels", job_name=f"bench-{work.name}-held")
        boot = bootstrap(cfg, hist, output=work / "held-savepoint", parallelism=parallelism)
        res["bootstrap"] = {"seconds": round(boot.seconds, 1), "keys": boot.keys, "events": boot.events}
        _log(f"held state: {boot.keys} keys, bootstrapped in {boot.seconds:.0f}s", log)

        def one(case: str, r: int) -> dict:
            thr = flink_throughput(bs, "bench.events", events, work, parallelism, checkpoint_interval_ms, log,
                                   deadline_s, tag=f"{case.replace('+', '-')}{r}",  # a topic name: no '+'
                                   extra={**STATE_CASES[case], "restore_from": str(boot.path)})
            text = Path(thr["log"]).read_text(errors="replace")
            # the job's own line on its state backend (pipelines.decision_job.describe_state): what really ran
            said = next((ln.split(": ", 1)[-1] for ln in text.splitlines() if ": state backend " in ln), None)
            return {**_span_json(thr["span"], events), "seconds": thr["seconds"], "restarts": thr["restarts"],
                    "restored": "restoring savepoint" in text, "state": said,
                    "load_average": round(os.getloadavg()[0], 1)}

        res["runs"] = _alternate(tuple(backends), rounds, one, log)
        for b in backends:
            res[f"{b}_eps"] = _median_eps(res["runs"], b)
        first = res.get(f"{backends[0]}_eps")
        res["ratio"] = {b: round(res[f"{b}_eps"] / first, 3) if first and res.get(f"{b}_eps") else None
                        for b in backends}
        res["exact"] = all(x["exact"] for x in res["runs"])
        res["restored"] = all(x["restored"] for x in res["runs"])
        res["load_average"]["end"] = round(os.getloadavg()[0], 1)
    finally:
        _clean_up(lay, work, keep, log)
        if not keep:
            import shutil

            shutil.rmtree(work / "held-savepoint", ignore_errors=True)
    return _write_result(res, f"state-cost-{stamp}.json", t_start)


GRAPH_CASES = ("off", "on")  # ``bench --graph``: the job without and with the graph features


def graph_cost(events: int = 60_000, parallelism: int = 2, rounds: int = 2, seed: int = 11,
               checkpoint_interval_ms: int | None = None, latency_seconds: float = 30.0, port: int | None = None,
               keep: bool = False, log=sys.stderr, deadline_s: float = 1200) -> dict:
    """``riskstream bench --graph``: the whole job (JVM stages, exactly once) with the graph features off and
    on (``RISKSTREAM_GRAPH_FEATURES``, each spec with its shipped model: the switch adds the link stage and
    the graph state), draining one backlog of generator traffic with the rings, ``rounds`` times alternating;
    then each fed live at half the slower median for ``latency_seconds``: p50/p99 to the decision. The ratio
    is on/off of the medians (issue 25: >= 0.8)."""
    import os

    from udfs.features import GRAPH_FEATURES_ENV

    t_start = time.monotonic()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    work = paths.home() / "bench" / f"graph-{stamp}"
    work.mkdir(parents=True, exist_ok=True)
    envs = {"off": {GRAPH_FEATURES_ENV: "0"}, "on": {GRAPH_FEATURES_ENV: "1"}}
    res: dict = {"kind": "graph_cost", "events": events, "parallelism": parallelism, "rounds": rounds,
                 "started": stamp, "load_average": {"start": round(os.getloadavg()[0], 1)}, "runs": []}
    lay = broker.up(port=port or free_port(), partitions=parallelism, root=work / "broker", out=log)
    bs = lay.bootstrap
    try:
        _backlog(bs, events, seed, parallelism, log, rings=True)

        def one(case: str, r: int) -> dict:
            thr = flink_throughput(bs, "bench.events", events, work, parallelism, checkpoint_interval_ms, log,
                                   deadline_s, tag=f"graph-{case}{r}", env=envs[case])
            text = Path(thr["log"]).read_text(errors="replace")
            # the job's own line on its spec (pipelines.decision_job.describe_spec): what really ran
            said = next((ln.split(": ", 1)[-1] for ln in text.splitlines() if ": feature spec " in ln), None)
            return {**_span_json(thr["span"], events), "seconds": thr["seconds"], "restarts": thr["restarts"],
                    "spec": said, "graph": None if said is None else "graph features on" in said,
                    "load_average": round(os.getloadavg()[0], 1)}

        res["runs"] = _alternate(GRAPH_CASES, rounds, one, log)
        for c in GRAPH_CASES:
            res[f"{c}_eps"] = _median_eps(res["runs"], c)
        res["ratio"] = _ratio(res.get("on_eps"), res.get("off_eps"))
        res["exact"] = all(x["exact"] for x in res["runs"])
        res["as_asked"] = all(x["graph"] == (x["case"] == "on") for x in res["runs"])  # the switch took effect
        if latency_seconds > 0 and res.get("on_eps") and res.get("off_eps"):
            rate = 0.5 * min(res["on_eps"], res["off_eps"])
            res["latency"] = {}
            for c in GRAPH_CASES:
                _log(f"latency, graph {c}: {rate:,.0f} events/s for {latency_seconds:.0f}s", log)
                live = flink_latency(bs, rate, latency_seconds, work, parallelism, checkpoint_interval_ms, seed + 1,
                                     log, tag=f"live-graph-{c}", env=envs[c], rings=True)
                lat = live["latency"]
                res["latency"][c] = {"rate": live["rate"], "events": live["events"], "decided": live["decided"],
                                     "p50_ms": percentile(lat, .5, 1), "p99_ms": percentile(lat, .99, 1)}
        res["load_average"]["end"] = round(os.getloadavg()[0], 1)
    finally:
        _clean_up(lay, work, keep, log)
    _log("graph state bytes per key (the JVM encoding, GraphLocalRunner over 40,000 ring events)", log)
    res["graph_bytes_per_key"] = graph_state_bytes(seed, 40_000)
    return _write_result(res, f"graph-cost-{stamp}.json", t_start)


def graph_state_bytes(seed: int, n: int, days: float = 14) -> dict:
    """The JVM stages' graph state per key as stored (``benchmarks.graph_rings --jvm-bytes``: per stage keys,
    median, p99, max bytes; the label stores; the record's graph field), in a process of its own (it starts
    a JVM)."""
    import subprocess

    out = subprocess.run([sys.executable, "-m", "benchmarks.graph_rings", "--jvm-bytes", "--events", str(n),
                          "--days", str(days), "--seed", str(seed)], capture_output=True, text=True,
                         cwd=paths.PROJECT_ROOT, timeout=900)
    if out.returncode != 0:
        return {"error": out.stderr[-1000:]}
    return orjson.loads(out.stdout.strip().splitlines()[-1])


def _round_line(x: dict, case: str, tail: str = "") -> str:
    """One run of an alternating comparison: its round, case, events/s, ``tail``, and a flag when it was not
    exactly once."""
    return (f"  round {x['round']} {case} {x['eps'] or 0:>9,.0f} events/s{tail}"
            f"{'' if x['exact'] else '  NOT EXACTLY ONCE'}")


def render_graph_cost(r: dict) -> str:
    lines = [f"graph cost: {r['events']:,} events with the rings, parallelism {r['parallelism']}, {r['rounds']} "
             f"round(s) (load average {r['load_average']['start']} at the start)"]
    for x in r["runs"]:
        lines.append(_round_line(x, f"graph {x['case']:<3}"))
    lines.append(f"medians: off {r.get('off_eps') or 0:,.0f}, on {r.get('on_eps') or 0:,.0f} events/s: on/off "
                 f"x{r.get('ratio')} (target >= 0.8)")
    if not r.get("as_asked", True):
        lines.append("WARNING: a run's job did not say the spec it was asked for (its 'feature spec' line): the "
                     "comparison is void")
    for c, v in (r.get("latency") or {}).items():
        lines.append(f"latency, graph {c}: p50 {v['p50_ms']} ms, p99 {v['p99_ms']} ms at {v['rate']:,.0f} events/s "
                     f"({v['decided']:,} of {v['events']:,} decided)")
    b = r.get("graph_bytes_per_key") or {}
    if b.get("error"):
        lines.append(f"graph state bytes per key: not measured ({b['error'][-200:]})")
    for kind in ("state", "labels"):
        for stage, d in (b.get(kind) or {}).items():
            lines.append(f"graph {'label store' if kind == 'labels' else 'state'} {stage:<8} {d['keys']:>7,} keys: median "
                         f"{d['median']:,} B, p99 {d['p99']:,} B, max {d['max']:,} B")
    if b.get("context"):
        c = b["context"]
        lines.append(f"the record's graph field at the link stage: median {c['median']:,} B, p99 {c['p99']:,} B, "
                     f"max {c['max']:,} B")
    return "\n".join(lines)


def render_state_cost(r: dict) -> str:
    lines = [f"state cost: the whole job drains {r['events']:,} events while holding {r['held_users']:,} other "
             f"users' state ({sum((r.get('bootstrap') or {}).get('keys', {}).values()):,} keys), parallelism "
             f"{r['parallelism']}, {r['rounds']} round(s) (load average {r['load_average']['start']} at the start)"]
    for x in r["runs"]:
        lines.append(_round_line(x, f"{x['case']:<17}", f"  ({x['seconds']} s from start to the last decision)"))
    lines.append("medians: " + ", ".join(f"{b} {r.get(f'{b}_eps') or 0:,.0f} events/s (x{r['ratio'].get(b)})"
                                         for b in r["backends"]))
    return "\n".join(lines)


def render_split_cost(r: dict) -> str:
    lines = [f"split cost: {r['events']:,} events, parallelism {r['parallelism']}, {r['rounds']} round(s) "
             f"(load average {r['load_average']['start']} at the start)"]
    for x in r["runs"]:
        lines.append(_round_line(x, f"{x['case']:<5}", f"  arms {x['arms']}"))
    cost = r.get("split_cost")
    lines.append(f"no split {r.get('none_eps') or 0:,.0f} events/s, 2-arm split {r.get('split_eps') or 0:,.0f} "
                 f"events/s (medians): cost {'n/a' if cost is None else f'{100 * cost:.1f} %'} (target <= 5 %)")
    return "\n".join(lines)


def _watch_count(bootstrap: str, topic: str, expected: int, proc, log, what: str) -> None:
    """Progress: committed outputs so far, every few seconds, until the contender is done."""
    from kafka import KafkaConsumer, TopicPartition

    try:
        c = KafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed")
        tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or [])]
        while (proc is None or proc.poll() is None):
            time.sleep(3)  # progress display interval, not synchronisation
            ends = c.end_offsets(tps)  # read_committed: up to the last stable offset
            n = sum(ends.values())
            _log(f"{what}: ~{n:,} of {expected:,} decisions committed (offsets include transaction markers)", log)
            if n >= expected:
                return
        c.close()
    except Exception:
        return


def flink_latency(bootstrap: str, rate: float, seconds: float, work: Path, parallelism: int,
                  checkpoint_interval_ms: int | None, seed: int, log, profile: str = "default",
                  warmup_s: float = WARMUP_S, tag: str | None = None, env: dict[str, str] | None = None,
                  rings: bool = False) -> dict:
    """The job fed live at ``rate``: per-event latency to ``decided_at`` and to read_committed visibility, and
    the checkpoints it took meanwhile (:func:`_checkpoint_stats`). The first ``warmup_s`` of the feed warm
    the job up (the JIT compiles the hot paths, the Python workers start their bundles) and are reported
    apart (``warmup``): the figures are those of the ``seconds`` after it, the steady state. ``tag``: the
    run's topics and folder (several runs in one bench); ``env``: more job environment; ``rings``: the
    generator's rings and shared devices in the traffic."""
    from kafka import KafkaConsumer, TopicPartition

    from riskstream.tools.chaos import Feeder, JobProcess
    from riskstream.generator import Labelled

    tag = tag or ("live" if profile == "default" else f"live-{profile}")
    topic = f"bench.{tag}.events"
    make_topic(bootstrap, topic, parallelism)
    flags = _job_flags(bootstrap, topic, tag, work, parallelism,
                       checkpoint_interval_ms if profile == "default" else None, profile)
    _job_topics(bootstrap, flags, parallelism)
    n_warm = int(rate * warmup_s)
    n = n_warm + max(1000, int(rate * seconds))
    records = [Labelled(key=r.key, event=r.event, raw=None, label=r.label)
               for r in TrafficGenerator(seed=seed, bad_share=0.0, rings=rings).generate(n)]
    warm = {r.event["event_id"].encode() for r in records[:n_warm]}
    run_dir = work / tag
    run_dir.mkdir(parents=True, exist_ok=True)
    job = JobProcess(flags, run_dir, _job_env(env), log=log)
    seen: dict[bytes, tuple[float, int]] = {}
    stop = threading.Event()
    checkpoints: dict[int, dict] = {}

    def sample_checkpoints() -> None:  # the REST history keeps the newest 10 only: sampled as they come
        from riskstream.ops import flink_rest

        while not stop.wait(2.0):
            try:
                for c in flink_rest.checkpoints(job.rest, job.job_id, retry_s=0).get("history") or []:
                    if c.get("status") == "COMPLETED" and c["id"] not in checkpoints:
                        checkpoints[c["id"]] = {k: c.get(k) for k in ("trigger_timestamp", "latest_ack_timestamp",
                                                                      "end_to_end_duration", "is_unaligned",
                                                                      "checkpoint_type")}
                        checkpoints[c["id"]]["vertices"] = _checkpoint_vertices(job.rest, job.job_id, c["id"])
            except Exception:  # the job may be starting or stopping: sampling is best effort
                pass

    # Visibility is timed by the last stable offsets (what read_committed readers may read), sampled every
    # 20 ms: a consumer reading every decision in this process would time its own lag on a busy machine
    # (it shares the process with the feeder), not the job's commit.
    stable: dict[int, list[tuple[int, float]]] = {}  # partition -> [(last stable offset, first seen at)]

    def sample_stable() -> None:
        c = KafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed")
        tps = [TopicPartition(flags["decisions_topic"], p)
               for p in sorted(c.partitions_for_topic(flags["decisions_topic"]))]
        while not stop.is_set():
            ends = c.end_offsets(tps)  # read_committed: the last stable offset
            now = time.time()
            for tp, o in ends.items():
                marks = stable.setdefault(tp.partition, [(0, now)])
                if o > marks[-1][0]:
                    marks.append((o, now))
            time.sleep(0.02)  # sampling interval of visibility
        c.close()

    def watch() -> None:
        c = KafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed",
                          auto_offset_reset="earliest", enable_auto_commit=False)
        c.assign([TopicPartition(flags["decisions_topic"], p)
                  for p in sorted(c.partitions_for_topic(flags["decisions_topic"]))])
        key, dkey = b'"event_id":"', b'"decided_at":'
        while not stop.is_set():
            for recs in c.poll(timeout_ms=50).values():
                now = time.time()
                for r in recs:
                    v = r.value
                    i = v.index(key) + len(key)
                    j = v.index(dkey) + len(dkey)
                    k = j
                    while v[k:k + 1].isdigit():
                        k += 1
                    seen[v[i:v.index(b'"', i)]] = (now, int(v[j:k]), r.partition, r.offset)
        c.close()

    try:
        started = job.start(restore_from=None)
        _log(f"live job running (first checkpoint done) after {started:.1f}s; feeding {n:,} events at "
             f"{rate:,.0f}/s", log)
        threading.Thread(target=sample_stable, daemon=True).start()
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        threading.Thread(target=sample_checkpoints, daemon=True).start()
        feeder = Feeder(bootstrap, topic, records, rate)
        feeder.start()
        t0 = time.monotonic()
        while feeder.is_alive() or len(seen) < n:
            time.sleep(2)  # progress display interval
            _log(f"live: sent {feeder.sent:,}, visible decisions {len(seen):,} of {n:,}", log)
            if not feeder.is_alive() and time.monotonic() - t0 > seconds + warmup_s + 120:
                break
        if feeder.error:
            raise feeder.error
    finally:
        stop.set()
        job.close()
    append = _append_times(bootstrap, topic, n)
    warm_lat = [dec - append[e] for e, (_, dec, _, _) in seen.items() if e in append and e in warm]
    seen = {e: v for e, v in seen.items() if e not in warm}
    lat = [dec - append[e] for e, (_, dec, _, _) in seen.items() if e in append]

    offsets = {p: [o for o, _ in m] for p, m in stable.items()}

    def visible_at(partition: int, offset: int, fallback: float) -> float:
        marks = stable.get(partition) or []
        i = bisect.bisect_right(offsets.get(partition, []), offset)  # the first sample whose stable offset passed it
        return marks[i][1] if i < len(marks) else fallback

    vis = [visible_at(p, o, seen_at) * 1000 - append[e] for e, (seen_at, _, p, o) in seen.items() if e in append]
    gaps = [b[1] - a[1] for m in stable.values() for a, b in zip(m, m[1:])]
    return {"rate": round(rate, 1), "events": n - n_warm, "decided": len(seen), "latency": lat, "visible": vis,
            "warmup": {"seconds": warmup_s, "events": n_warm,
                       "latency_ms": {"p50": percentile(warm_lat, .5, 1), "p99": percentile(warm_lat, .99, 1),
                                      "max": max(warm_lat) if warm_lat else None}},
            "startup_s": round(started, 1), "profile": profile,
            "read_lag_ms_p50": percentile([seen_at * 1000 - append[e] for e, (seen_at, *_) in seen.items()
                                           if e in append], .5, 1),
            "stable_offset_samples": sum(len(m) for m in stable.values()),
            "max_gap_between_commits_ms": round(max(gaps) * 1000, 1) if gaps else None,
            "checkpoints": _checkpoint_stats(_after(checkpoints, seen, append), seen, append, lat)}


def _after(checkpoints: dict[int, dict], seen: dict, append: dict) -> dict[int, dict]:
    """The checkpoints triggered once the measured (post warm-up) events began to arrive."""
    start = min((append[e] for e in seen if e in append), default=None)
    return {k: c for k, c in checkpoints.items() if start is None or c["trigger_timestamp"] >= start}


def _checkpoint_vertices(rest: str, job_id: str, checkpoint_id: int) -> dict:
    """Per operator chain of one checkpoint: the slowest subtask's barrier start delay, alignment and
    synchronous part (ms): the time a checkpoint can hold records back."""
    from riskstream.ops import flink_rest

    names = {v["id"]: v["name"] for v in flink_rest.get(rest, f"/jobs/{job_id}", retry_s=0).get("vertices", [])}
    out = {}
    for vid, name in names.items():
        d = flink_rest.get(rest, f"/jobs/{job_id}/checkpoints/details/{checkpoint_id}/subtasks/{vid}", retry_s=0)
        summ = d.get("summary") or {}
        out[name[:60]] = {"start_delay": (summ.get("start_delay") or {}).get("max"),
                          "alignment": ((summ.get("alignment") or {}).get("duration") or {}).get("max"),
                          "sync": ((summ.get("checkpoint_duration") or {}).get("sync") or {}).get("max"),
                          "async": ((summ.get("checkpoint_duration") or {}).get("async") or {}).get("max")}
    return out


def _checkpoint_stats(checkpoints: dict[int, dict], seen: dict, append: dict, lat: list[float]) -> dict:
    """What the checkpoints cost the latency run: their count and durations, per operator chain the slowest
    subtask's start delay / alignment / sync part (median and max over the checkpoints), and how the events
    above p99 fall into checkpoint windows (trigger to last acknowledgement) against the share of time in
    such windows: a tail caused by checkpoints is decided inside them far more often than time would."""
    if not checkpoints or not lat:
        return {"count": len(checkpoints)}
    cps = sorted(checkpoints.values(), key=lambda c: c["trigger_timestamp"])
    windows = [(c["trigger_timestamp"], c["latest_ack_timestamp"] or c["trigger_timestamp"]) for c in cps]
    per_vertex: dict[str, dict[str, list]] = {}
    for c in cps:
        for name, v in (c.get("vertices") or {}).items():
            for k, x in v.items():
                if x is not None:
                    per_vertex.setdefault(name, {}).setdefault(k, []).append(x)
    p99 = percentile(lat, .99, 2)
    tail = [dec for e, (_, dec, *_) in seen.items() if e in append and dec - append[e] >= p99]
    in_cp = sum(any(a <= t <= b for a, b in windows) for t in tail)
    span = (windows[-1][1] - windows[0][0]) or 1
    covered = sum(b - a for a, b in windows) / span
    durations = [c["end_to_end_duration"] for c in cps if c["end_to_end_duration"] is not None]
    return {
        "count": len(cps),
        "unaligned": sum(bool(c.get("is_unaligned")) or "UNALIGNED" in str(c.get("checkpoint_type")) for c in cps),
        "end_to_end_ms": {"p50": percentile(durations, .5, 1), "max": max(durations)},
        "per_operator_ms": {name: {k: {"p50": percentile(xs, .5, 1), "max": max(xs)} for k, xs in v.items()}
                            for name, v in per_vertex.items()},
        "tail_over_p99": {"events": len(tail), "decided_during_a_checkpoint": round(in_cp / max(len(tail), 1), 3),
                          "share_of_time_in_checkpoints": round(covered, 3)},
    }


def _append_times(bootstrap: str, topic: str, expected: int) -> dict[bytes, int]:
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False,
                      consumer_timeout_ms=3000)
    c.assign([TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic))])
    out: dict[bytes, int] = {}
    key = b'"event_id":"'
    for r in c:
        v = r.value
        j = v.index(key) + len(key)
        out[v[j:v.index(b'"', j)]] = r.timestamp
        if len(out) >= expected:
            break
    c.close()
    return out


def micro(seed: int, n: int = 50_000) -> dict:
    """Pure-core costs: window update per event (every entity of the spec), onnxruntime per event (one row, and
    in batches of 1,000), and pickled state bytes per key (median over the keys of ``n`` events)."""
    import numpy as np

    from benchmarks.windows import time_entity
    from udfs.events import Event
    from udfs.features import ENTITIES
    from udfs.features import FEATURE_NAMES
    from udfs.scoring import Scorer

    events = [Event(**r.event) for r in TrafficGenerator(seed=seed, bad_share=0.0).generate(n)]
    windows, state = {}, {}
    for entity in (e.name for e in ENTITIES):
        runs = [time_entity(entity, events) for _ in range(3)]
        windows[entity] = round(statistics.median(r[0] for r in runs), 2)
        state[entity] = runs[0][1]["median"]
    scorer = Scorer(JobConfig().resolved_model_path())
    rows = np.random.default_rng(seed).random((10_000, len(FEATURE_NAMES)), dtype=np.float32) * 100
    one = []
    for _ in range(3):
        t0 = time.perf_counter()
        for r in rows[:3000]:
            scorer.score(r)
        one.append((time.perf_counter() - t0) / 3000 * 1e6)
    batch = []
    for _ in range(3):
        t0 = time.perf_counter()
        for i in range(0, len(rows), 1000):
            scorer.score_batch(rows[i:i + 1000])
        batch.append((time.perf_counter() - t0) / len(rows) * 1e6)
    return {"window_us_per_event": round(sum(windows.values()), 2), "window_us_by_entity": windows,
            "onnx_us_per_event": round(statistics.median(one), 2),
            "onnx_us_per_event_batched": round(statistics.median(batch), 2),
            "state_bytes_per_key_python": state, "state_bytes_per_key": jvm_state_bytes(seed, n)}


def jvm_state_bytes(seed: int, n: int) -> dict:
    """Median state bytes per key of the JVM entity stages (the job's state: ``KeyState``'s encoding, from
    ``LocalRunner`` over the same ``n`` events), in a process of its own (it starts a JVM)."""
    import subprocess

    out = subprocess.run([sys.executable, "-m", "benchmarks.jvm_windows", "--state-only", "--events", str(n),
                          "--seed", str(seed)], capture_output=True, text=True, cwd=paths.PROJECT_ROOT, timeout=600)
    if out.returncode != 0:
        return {"error": out.stderr[-1000:]}
    res = orjson.loads(out.stdout.strip().splitlines()[-1])
    return {entity: v["jvm"]["median"] for entity, v in res.items()}


def baseline(name: str, bootstrap: str, events_topic: str, expected: int, work: Path, parallelism: int,
             log) -> dict:
    out_topic = f"bench.{name}.decisions"
    make_topic(bootstrap, out_topic, parallelism)
    t0 = time.monotonic()
    if name == "python":
        from benchmarks import python_baseline as mod
        info = mod.run(bootstrap, events_topic, out_topic, expected, work, log=log)
    elif name == "quix":
        try:
            from benchmarks import quix_baseline as mod
        except ImportError as e:
            return {"skipped": f"{e}: install the bench extra (make bench)"}
        info = mod.run(bootstrap, events_topic, out_topic, expected, work, log=log)
    else:
        from benchmarks import java_job as mod
        info = mod.run(bootstrap, events_topic, out_topic, expected, work, parallelism=parallelism, log=log)
    span = read_output(bootstrap, out_topic, expected, deadline_s=30, log=log)
    return {**info, "span": span, "wall_s": round(time.monotonic() - t0, 1)}


def _span_json(span: OutputSpan, expected: int) -> dict:
    return {"eps": round(span.eps, 1) if span.eps else None, "records": span.records,
            "distinct_events": span.distinct_ids, "expected": expected,
            "exact": span.records == expected == span.distinct_ids}


def write_png(path: Path, latency: list[float], visible: list[float], checkpoint_ms: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, xs, title in ((axes[0], latency, "arrival → decision produced"),
                          (axes[1], visible, "arrival → visible to read_committed")):
        if xs:
            ax.hist(xs, bins=80, color="#3b6ea5")
            for q, style in ((0.5, "-"), (0.99, "--"), (0.999, ":")):
                v = percentile(xs, q, 2)
                ax.axvline(v, color="#c0392b", linestyle=style, label=f"p{q * 100:g} {v:.1f} ms")
            ax.legend()
        ax.set_title(title)
        ax.set_xlabel("ms")
        ax.set_ylabel("events")
    axes[1].axvline(checkpoint_ms, color="#555", linewidth=0.8)
    fig.suptitle("riskstream bench: latency at half the maximum rate")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def run_bench(events: int = 200_000, parallelism: int = 2, latency_seconds: float = 30.0, seed: int = 11,
              contenders: tuple[str, ...] = CONTENDERS, checkpoint_interval_ms: int | None = None,
              port: int | None = None, keep: bool = False, log=sys.stderr, deadline_s: float = 900) -> dict:
    t_start = time.monotonic()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    work = paths.home() / "bench" / stamp
    work.mkdir(parents=True, exist_ok=True)
    cfg = JobConfig(**({"checkpoint_interval_ms": checkpoint_interval_ms} if checkpoint_interval_ms else {}))
    port = port or free_port()
    lay = broker.up(port=port, partitions=parallelism, root=work / "broker", out=log)
    bs = lay.bootstrap
    import os

    res: dict = {"events": events, "parallelism": parallelism, "checkpoint_interval_ms": cfg.checkpoint_interval_ms,
                 "python_execution_mode": cfg.python_execution_mode, "started": stamp,
                 "load_average": {"start": round(os.getloadavg()[0], 1)}}  # the machine may be shared
    try:
        _backlog(bs, events, seed, parallelism, log)

        _log("micro-benchmarks of the pure core", log)
        res.update(micro(seed))

        _log(f"throughput: the job drains {events:,} events at parallelism {parallelism}", log)
        thr = flink_throughput(bs, "bench.events", events, work, parallelism, checkpoint_interval_ms, log,
                               deadline_s)
        res["throughput"] = {**_span_json(thr["span"], events), "restarts": thr["restarts"]}
        res["throughput_eps"] = res["throughput"]["eps"]
        res["load_average"]["after_throughput"] = round(os.getloadavg()[0], 1)
        _log(f"throughput: {res['throughput_eps']} events/s", log)

        for name in contenders:
            _log(f"baseline {name}", log)
            try:
                b = baseline(name, bs, "bench.events", events, work, parallelism, log)
            except Exception as e:  # one contender failing must not lose the others' figures
                b = {"error": f"{type(e).__name__}: {e}"}
            if "span" in b:
                b.update(_span_json(b.pop("span"), events))
            res[f"baseline_{name}" if name != "java" else "limit_java"] = b
            _log(f"{name}: {b.get('eps')} events/s", log)
        res["baseline_python_eps"] = res.get("baseline_python", {}).get("eps")
        res["baseline_quix_eps"] = res.get("baseline_quix", {}).get("eps")
        res["limit_java_eps"] = res.get("limit_java", {}).get("eps")

        rate = (res["throughput_eps"] or 0) / 2
        res["latency_profiles"] = {}
        for profile in (PROFILES if rate > 0 else ()):
            pcfg = cfg if profile == "default" else JobConfig(profile=profile)
            _log(f"latency, profile {profile}: the job fed at {rate:,.0f}/s (half its maximum) for "
                 f"{latency_seconds:.0f}s", log)
            lat = flink_latency(bs, rate, latency_seconds, work, parallelism, checkpoint_interval_ms, seed + 1, log,
                                profile=profile)
            q3 = (("p50", .5), ("p99", .99), ("p999", .999))
            prof = {"settings": {k: getattr(pcfg, k) for k in PROFILE_SETTINGS},
                    "latency_ms": {q: percentile(lat["latency"], v, 2) for q, v in q3},
                    "visible_latency_ms": {q: percentile(lat["visible"], v, 2) for q, v in q3},
                    "run": {k: lat[k] for k in ("rate", "events", "decided", "warmup", "startup_s", "read_lag_ms_p50",
                                                "stable_offset_samples", "max_gap_between_commits_ms")},
                    "checkpoints": lat["checkpoints"]}
            RESULTS.mkdir(parents=True, exist_ok=True)
            png = RESULTS / f"latency-{stamp}-{profile}.png"
            write_png(png, lat["latency"], lat["visible"], pcfg.checkpoint_interval_ms)
            prof["png"] = str(png.relative_to(paths.PROJECT_ROOT))
            prof["load_average_after"] = round(os.getloadavg()[0], 1)
            res["latency_profiles"][profile] = prof
            if profile == "default":
                res["latency_ms"], res["visible_latency_ms"] = prof["latency_ms"], prof["visible_latency_ms"]
                res["latency_run"], res["latency_png"] = prof["run"], prof["png"]
        res["ratios"] = _ratios(res)
        res["targets"] = _targets(res)
    finally:
        _clean_up(lay, work, keep, log)
    return _write_result(res, f"bench-{stamp}.json", t_start)


def _backlog(bs: str, events: int, seed: int, parallelism: int, log, rings: bool = False) -> None:
    """The topic ``bench.events`` holding ``events`` generated events (seed ``seed``, with the generator's
    rings when ``rings``), one partition per subtask."""
    _log(f"generating {events:,} events (seed {seed}{', rings' if rings else ''})", log)
    values = _events(events, seed, rings)
    make_topic(bs, "bench.events", parallelism)
    _preload(bs, "bench.events", values, log)


def _clean_up(lay, work: Path, keep: bool, log) -> None:
    """Stop the bench's broker; without ``keep``, drop its data, the runs' checkpoints and their job folders
    (lineage, savepoints: ``jobs/bench-<work>-<tag>``)."""
    broker.down(root=lay.root, out=log)
    if not keep:
        import shutil

        shutil.rmtree(work / "broker", ignore_errors=True)
        for p in [*work.glob("checkpoints-*"), *(paths.home() / "jobs").glob(f"bench-{work.name}-*")]:
            shutil.rmtree(p, ignore_errors=True)


def _write_result(res: dict, name: str, t_start: float) -> dict:
    """The bench's time and JSON file (``benchmarks/results/<name>``, named in ``res["json"]``)."""
    res["bench_seconds"] = round(time.monotonic() - t_start, 1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / name
    out.write_bytes(orjson.dumps(res, option=orjson.OPT_INDENT_2))
    res["json"] = str(out.relative_to(paths.PROJECT_ROOT))
    return res


def _ratio(a, b):
    return round(a / b, 3) if a and b else None


def _ratios(r: dict) -> dict:
    t = r.get("throughput_eps")
    return {"vs_java_limit": _ratio(t, r.get("limit_java_eps")), "vs_quix": _ratio(t, r.get("baseline_quix_eps")),
            "vs_python": _ratio(t, r.get("baseline_python_eps"))}


def _targets(r: dict) -> dict:
    lat, vis, ra = r.get("latency_ms") or {}, r.get("visible_latency_ms") or {}, r["ratios"]
    low = (r.get("latency_profiles") or {}).get("low-latency") or {}

    def check(value, target, higher_better=True):
        if value is None:
            return {"value": None, "target": target, "met": False}
        return {"value": value, "target": target, "met": value >= target if higher_better else value <= target}

    out = {
        "throughput_eps": check(r.get("throughput_eps"), TARGETS["throughput_eps"]),
        "vs_java_limit": check(ra["vs_java_limit"], TARGETS["vs_java"]),
        "vs_quix": check(ra["vs_quix"], TARGETS["vs_quix"]),
        "vs_python": check(ra.get("vs_python"), TARGETS["vs_python"]),
        "latency_p99_ms": check(lat.get("p99"), TARGETS["latency_p99_ms"], False),
        "latency_p999_ms": check(lat.get("p999"), TARGETS["latency_p999_ms"], False),
        "visible_p99_ms": check(vis.get("p99"), r["checkpoint_interval_ms"] + TARGETS["visible_p99_over_checkpoint_ms"],
                                False),
    }
    if low:
        llat, lvis = low["latency_ms"], low["visible_latency_ms"]
        out["low_latency_p99_ms"] = check(llat.get("p99"), TARGETS["latency_p99_ms"], False)
        out["low_latency_p999_ms"] = check(llat.get("p999"), TARGETS["latency_p999_ms"], False)
        out["low_latency_visible_p99_ms"] = check(lvis.get("p99"), low["settings"]["checkpoint_interval_ms"]
                                                  + TARGETS["visible_p99_over_checkpoint_ms"], False)
    state = r.get("state_bytes_per_key") or {}
    for entity, before in STATE_BYTES_BEFORE.items():
        if isinstance(state.get(entity), (int, float)):
            out[f"state_bytes_{entity}"] = check(state[entity], before, False)
    return out


def render(r: dict) -> str:
    def f(v, unit=""):
        return "n/a" if v is None else (f"{v:,.1f}{unit}" if isinstance(v, float) else f"{v:,}{unit}")

    lines = [f"riskstream bench: {r['events']:,} events, parallelism {r['parallelism']}, checkpoint every "
             f"{r['checkpoint_interval_ms']} ms, {r['bench_seconds']:.0f}s", ""]
    lines.append(f"{'contender':34} {'events/s':>10}  exact")
    rows = [("riskstream job (PyFlink)", r.get("throughput", {}))]
    rows += [(label, r.get(key, {})) for label, key in (("plain Python loop (kafka-python)", "baseline_python"),
                                                         ("Quix Streams", "baseline_quix"),
                                                         ("same job scored in Java (limit)", "limit_java"))]
    for label, d in rows:
        note = ("not run" if not d else d.get("error") or d.get("skipped") or
                ("yes" if d.get("exact") else f"{d.get('records')} records / {d.get('distinct_events')} ids"))
        lines.append(f"{label:34} {f(d.get('eps')):>10}  {note}")
    lines.append("")
    for name, p in (r.get("latency_profiles") or {}).items():
        lat, vis = p["latency_ms"], p["visible_latency_ms"]
        lines.append(f"latency, profile {name}, at {f(p['run']['rate'])}/s: p50 {f(lat.get('p50'))} ms, "
                     f"p99 {f(lat.get('p99'))} ms, p999 {f(lat.get('p999'))} ms; visible p50 {f(vis.get('p50'))} ms, "
                     f"p99 {f(vis.get('p99'))} ms, p999 {f(vis.get('p999'))} ms (checkpoint every "
                     f"{p['settings']['checkpoint_interval_ms']} ms)")
        w = p["run"].get("warmup") or {}
        if w.get("events"):
            wl = w["latency_ms"]
            lines.append(f"  after a warm-up of {f(w['seconds'])} s at that rate, not counted: its p50 {f(wl['p50'])} ms, "
                         f"p99 {f(wl['p99'])} ms, max {f(wl['max'])} ms")
    lines += [f"pure core: windows {f(r.get('window_us_per_event'))} µs/event, onnx {f(r.get('onnx_us_per_event'))} "
              f"µs/event ({f(r.get('onnx_us_per_event_batched'))} batched), state bytes/key (median) JVM "
              f"{r.get('state_bytes_per_key')}, Python pickled {r.get('state_bytes_per_key_python')}", "", "targets:"]
    for k, t in (r.get("targets") or {}).items():
        lines.append(f"  {k:18} {f(t['value']):>12}  target {t['target']:>8}  {'met' if t['met'] else 'MISSED'}")
    lines.append(f"\nwrote {r.get('json')}" + "".join(f" and {p['png']}" for p in (r.get("latency_profiles") or {}).values()))
    return "\n".join(lines)
