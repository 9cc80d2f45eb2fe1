"""State at scale: the four JVM entity stages over millions of keys, per state backend, with 1 s exactly-once
checkpoints, on a local MiniCluster (no broker): events/s drained, checkpoint duration p50/p99/max and size
(full state and what each checkpoint uploaded), heap used, timers per key.

    .venv/bin/python -m benchmarks.scale [--users 100k,1M] [--backends hashmap,rocksdb,rocksdb+changelog]
    riskstream bench --keys 100k,1M            # the same, from the CLI

Each (backend, users) pair runs in its own process (a fresh JVM with ``--heap``), so heap figures are
that run's. Events come from ``io.riskstream.flink.SyntheticEvents`` (event i belongs to user i mod users;
each user has its own device, ip and card: about 3.5 keys per user), one source subtask so event time is
in order, the stages at ``--parallelism``. Prints a table and writes JSON to benchmarks/results/scale.json.

Pitfalls: the machine is shared and has 2 cores, so compare backends within one run, not across runs;
the first checkpoints of a run are taken while keys are still being created, the last ones while they
are held (both are in the percentiles); heap used is sampled every 0.5 s, so it includes garbage not yet
collected (``heap_used_max_mb``), and the smallest sample after the load (``heap_used_min_after_load_mb``)
is the better estimate of live state.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

OUT = Path(__file__).resolve().parent / "results"


def parse_count(text: str) -> int:
    """100k, 1M, 2.5M, 3000000 -> an integer."""
    t = text.strip().lower()
    mult = {"k": 1_000, "m": 1_000_000}.get(t[-1:], 1)
    try:
        n = int(float(t[:-1] if mult > 1 else t) * mult)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count (e.g. 100k, 1M, 250000)") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return n


# backend variants: "<backend>+<variant>" in --backends adds these Flink settings
VARIANTS = {
    # the generic log-based incremental checkpoints (FLIP-158; the job's default over rocksdb): a checkpoint
    # uploads the state changes since the last one; the backend's own files every 10 min (materialization)
    "changelog": lambda work: (),
    # without the bloom filters the job sets with rocksdb
    "nobloom": lambda work: ("state.backend.rocksdb.use-bloom-filter=false",),
    # barriers overtake the queued records (their buffers go into the checkpoint)
    "unaligned": lambda work: ("execution.checkpointing.unaligned.enabled=true",),
    # small compaction units: a small level 1 and small files, so one compaction rewrites (and the next
    # incremental checkpoint uploads) tens of MB, not the whole level
    # more RocksDB background threads (max_background_jobs; a quarter of them flush): the checkpoints'
    # synchronous memtable flushes of every stage's instance no longer queue behind one flush thread
    "threads": lambda work: ("state.backend.rocksdb.thread.num=8",),
    "lsm": lambda work: ("state.backend.rocksdb.compaction.level.max-size-level-base=16mb",
                         "state.backend.rocksdb.compaction.level.target-file-size-base=4mb"),
}


def variants(backend: str) -> list[str]:
    """'rocksdb+lsm+unaligned' -> ['lsm', 'unaligned']."""
    return [v for v in backend.split("+")[1:] if v]


def _get(url: str) -> dict | list | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return json.loads(r.read())
    except (OSError, ValueError):
        return None


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def run_one(backend: str, users: int, events: int, parallelism: int, interval_ms: int, work: Path) -> dict:
    """One job in this process: SyntheticEvents -> event time -> the four JVM entity stages -> discard."""
    from pyflink.datastream import DataStream
    from pyflink.datastream.connectors import Sink
    from pyflink.java_gateway import get_gateway

    from pipelines import decision_job
    from riskstream.config import JobConfig
    from riskstream.ops.procs import free_port
    from udfs import jvm
    from udfs.chain import spec_document
    from udfs.features import ENTITIES
    from udfs.windows import retention_ms

    import orjson

    port = free_port()
    base_backend = backend.partition("+")[0]
    vs = variants(backend)
    cfg = JobConfig(parallelism=parallelism, checkpoint_interval_ms=interval_ms, state_backend=base_backend,
                    rest_port=port, checkpoint_dir=(work / "checkpoints").as_uri(), job_name="bench-scale",
                    restart_attempts=0, changelog="changelog" in vs,
                    flink_conf=tuple(x for v in vs for x in VARIANTS[v](work)))
    env = decision_job.make_env(cfg, extra={"web.checkpoints.history": "10000",
                                            "execution.checkpointing.max-concurrent-checkpoints": "1"})
    spec = orjson.dumps(spec_document(cfg.allowed_lateness_ms)).decode()
    pkg = get_gateway().jvm.io.riskstream.flink
    try:
        pkg.RecordKey(0)
    except TypeError:
        from pyflink.util.java_utils import add_jars_to_context_class_loader

        conf = env._j_stream_execution_environment.getConfiguration().toMap()
        add_jars_to_context_class_loader([j for j in conf.get("pipeline.jars").split(";") if j])
        pkg = get_gateway().jvm.io.riskstream.flink
    start = 1_700_000_000_000
    step = max(1, 86_400_000 // max(events, 1))  # one day of event time: no key expires during the run
    j_src = env._j_stream_execution_environment.fromSequence(0, events - 1).setParallelism(1)
    rows = j_src.map(pkg.SyntheticEvents(spec, users, start, step),
                     jvm.record_type_info().get_java_type_info()).setParallelism(1)
    stream = jvm.event_time(DataStream(rows), cfg.out_of_orderness_ms, cfg.idleness_ms, max_future_skew_ms=10**13)
    for e in ENTITIES:  # with labels on, as the job runs (no label arrives: every key's store is empty)
        stream = jvm.entity_stage(stream, e, spec, cfg.dedup_horizon_ms, True, "bench-scale")
    # the wall time of the last record out: the drain, apart from the end of input's timer flush
    clocked = DataStream(stream._j_data_stream.map(pkg.DrainClock(), jvm.record_type_info().get_java_type_info())
                         .name("drain-clock").uid("drain-clock"))
    clocked.sink_to(Sink(get_gateway().jvm.org.apache.flink.streaming.api.functions.sink.v2.DiscardingSink()))
    client = env.execute_async("riskstream-bench-scale")
    job_id = str(client.get_job_id())
    base = f"http://127.0.0.1:{port}"
    heap: list[tuple[float, float]] = []
    cps: dict[int, dict] = {}
    t_running = t_end = None
    wall_running = None
    tm = None
    vertices: dict[str, str] = {}  # id -> name of the entity stages
    deadline = time.monotonic() + 3600
    while time.monotonic() < deadline:
        st = _get(f"{base}/jobs/{job_id}")
        if st is None:
            if t_running is not None:  # the MiniCluster went away with the finished job
                break
            time.sleep(0.2)  # polling interval until the REST endpoint answers
            continue
        state = st.get("state")
        if state == "RUNNING" and t_running is None and all(v.get("status") == "RUNNING" for v in st.get("vertices", [])):
            t_running, wall_running = time.monotonic(), time.time()
            vertices = {v["id"]: v["name"] for v in st.get("vertices", []) if "windows" in v.get("name", "")}
        if tm is None:
            tms = _get(f"{base}/taskmanagers") or {}
            tm = (tms.get("taskmanagers") or [{}])[0].get("id")
        if tm:
            m = _get(f"{base}/taskmanagers/{tm}/metrics?get=Status.JVM.Memory.Heap.Used") or []
            if m:
                heap.append((time.monotonic(), float(m[0]["value"]) / 2**20))
        ck = _get(f"{base}/jobs/{job_id}/checkpoints") or {}
        for h in ck.get("history", []):
            if h.get("status") == "COMPLETED" and not h.get("is_savepoint") and h["id"] not in cps:
                cps[h["id"]] = h
                h["stages"] = _stage_parts(base, job_id, h["id"], vertices)
        if state in ("FINISHED", "FAILED", "CANCELED"):
            t_end = time.monotonic()
            if state != "FINISHED":
                ex = _get(f"{base}/jobs/{job_id}/exceptions") or {}
                raise RuntimeError(f"the scale job ended {state}: {str(ex.get('root-exception'))[:2000]}")
            break
        time.sleep(0.5)  # sampling interval of the heap and checkpoint statistics
    acc = client.get_job_execution_result().result().get_all_accumulator_results()
    t_end = t_end or time.monotonic()
    secs = t_end - (t_running or t_end)
    last_ms, records = acc.get("last_record_ms"), acc.get("records")
    if wall_running and acc.get("first_record_ms"):  # RUNNING is seen by polling, up to 0.5 s late
        wall_running = min(wall_running, acc["first_record_ms"] / 1000)
    drain = (last_ms / 1000 - wall_running) if last_ms and wall_running else None
    # the checkpoints triggered while the events drained; the ones after the last record out run while the
    # end of the bounded input fires every key's cleanup timer at once (a barrier waits for that), which an
    # unbounded job never does: counted apart
    every = sorted(cps.values(), key=lambda c: c["trigger_timestamp"])
    during = [c for c in every if not last_ms or c["trigger_timestamp"] <= last_ms]
    later = [c for c in every if c not in during]
    dur = [c["end_to_end_duration"] / 1000 for c in during]
    full = [c.get("state_size", 0) / 2**20 for c in during]
    inc = [c.get("checkpointed_size", c.get("state_size", 0)) / 2**20 for c in during]
    parts = {k: [c["stages"][k] for c in during if c.get("stages", {}).get(k) is not None]
             for k in ("start_delay", "alignment", "sync", "async")}
    load_end = t_running + secs * 0.6 if t_running else None  # users all created by then (1.5 events/user)
    after = [h for t, h in heap if load_end and t >= load_end]
    keys = round(users * (3 + 0.5))  # user, device, ip per user; a card per user that pays (half of them)
    return {
        "backend": backend, "users": users, "keys_estimate": keys, "events": events, "parallelism": parallelism,
        "checkpoint_interval_ms": interval_ms, "seconds": round(secs, 1),
        "events_per_s": round(events / drain) if drain and drain > 0 else None, "drain_seconds": _round(drain),
        "records_out": records,
        "events_per_s_to_finished": round(events / secs) if secs > 0 else None, "checkpoints": len(during),
        "checkpoints_after_input_end": {"count": len(later),
                                        "max_s": max((c["end_to_end_duration"] / 1000 for c in later), default=None)},
        # every checkpoint: trigger (ms since the drain began), duration (s), uploaded (MB), stages' parts (s)
        "checkpoint_list": [[c["trigger_timestamp"] - round(wall_running * 1000) if wall_running else None,
                             c["end_to_end_duration"] / 1000,
                             _round(c.get("checkpointed_size", c.get("state_size", 0)) / 2**20),
                             c.get("stages")] for c in every],
        "checkpoint_s": {"p50": _pct(dur, 0.5), "p99": _pct(dur, 0.99), "max": max(dur) if dur else None,
                         "mean": round(statistics.mean(dur), 2) if dur else None},
        # per checkpoint, the slowest entity-stage subtask's barrier start delay / alignment / sync / async part
        "checkpoint_parts_s": {k: {"p50": _round(_pct(v, 0.5), 2), "p99": _round(_pct(v, 0.99), 2),
                                   "max": _round(max(v) if v else None, 2)} for k, v in parts.items()},
        "checkpoint_full_mb": {"last": round(full[-1], 1) if full else None, "max": round(max(full), 1) if full else None},
        "checkpoint_uploaded_mb": {"p50": _round(_pct(inc, 0.5)), "p99": _round(_pct(inc, 0.99)),
                                   "max": _round(max(inc) if inc else None)},
        "heap_used_max_mb": round(max(h for _, h in heap)) if heap else None,
        "heap_used_min_after_load_mb": round(min(after)) if after else None,
        "heap_bytes_per_key_estimate": round(min(after) * 2**20 / keys) if after else None,
        "retention_days": {e.name: retention_ms(e.name, cfg.allowed_lateness_ms) / 86_400_000 for e in ENTITIES},
    }


def _round(x, nd: int = 1):
    return None if x is None else round(x, nd)


def _stage_parts(base: str, job_id: str, checkpoint_id: int, vertices: dict[str, str]) -> dict[str, float | None]:
    """One checkpoint's barrier start delay, alignment, sync and async part (s): per part, the slowest
    subtask of any entity stage (where a checkpoint's time went: waiting for the barrier to travel through
    the queued records, aligning the inputs, the memtable flush in the task thread, the upload)."""
    out: dict[str, float | None] = {"start_delay": None, "alignment": None, "sync": None, "async": None}
    for vid in vertices:
        d = _get(f"{base}/jobs/{job_id}/checkpoints/details/{checkpoint_id}/subtasks/{vid}") or {}
        summ = d.get("summary") or {}
        got = {"start_delay": (summ.get("start_delay") or {}).get("max"),
               "alignment": ((summ.get("alignment") or {}).get("duration") or {}).get("max"),
               "sync": ((summ.get("checkpoint_duration") or {}).get("sync") or {}).get("max"),
               "async": ((summ.get("checkpoint_duration") or {}).get("async") or {}).get("max")}
        for k, v in got.items():
            if v is not None:
                out[k] = max(out[k] or 0.0, v / 1000)
    return out


def run_all(users: list[int], backends: list[str], events_per_user: float, parallelism: int, interval_ms: int,
            heap: str) -> dict:
    """Each (backend, users) in its own process with ``-Xmx<heap>``; returns every run's figures."""
    runs = []
    for n in users:
        for backend in backends:
            with tempfile.TemporaryDirectory(prefix="riskstream-scale-") as work:
                cmd = [sys.executable, "-m", "benchmarks.scale", "--one", "--backends", backend, "--users", str(n),
                       "--events-per-user", str(events_per_user), "--parallelism", str(parallelism),
                       "--checkpoint-interval-ms", str(interval_ms), "--work", work]
                env = {**os.environ, "JVM_ARGS": f"{os.environ.get('JVM_ARGS', '')} -Xmx{heap}".strip()}
                print(f"[scale] {backend}, {n:,} users ...", file=sys.stderr, flush=True)
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True,
                                      cwd=Path(__file__).resolve().parent.parent)
                lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
                if proc.returncode != 0 or not lines:
                    runs.append({"backend": backend, "users": n, "error": (proc.stderr or proc.stdout)[-3000:]})
                    print(f"[scale] {backend}, {n:,} users FAILED:\n{runs[-1]['error']}", file=sys.stderr)
                    continue
                runs.append(json.loads(lines[-1]))
                print(f"[scale] {render_row(runs[-1])}", file=sys.stderr, flush=True)
    res = {"runs": runs, "heap": heap, "load_average_1m": os.getloadavg()[0]}
    by = {(r["backend"], r["users"]): r for r in runs if "error" not in r}
    ratios = {}
    for n in users:
        if ("hashmap", n) in by and ("rocksdb", n) in by:
            ratios[str(n)] = round(by[("rocksdb", n)]["events_per_s"] / by[("hashmap", n)]["events_per_s"], 2)
    res["rocksdb_vs_heap_events_per_s"] = ratios
    return res


def render_row(r: dict) -> str:
    if "error" in r:
        return f"{r['backend']:8} {r['users']:>10,} users: failed"
    c, u = r["checkpoint_s"], r["checkpoint_uploaded_mb"]
    parts = "; ".join(f"{k} p50 {v['p50']} max {v['max']} s" for k, v in (r.get("checkpoint_parts_s") or {}).items())
    tail = r.get("checkpoints_after_input_end") or {}
    return (f"{r['backend']:8} {r['users']:>10,} users: {r['events_per_s'] or 0:>7,} events/s "
            f"({r.get('events_per_s_to_finished') or 0:,} to the job's end); checkpoints "
            f"{r['checkpoints']}, p50 {c['p50']} s, p99 {c['p99']} s, max {c['max']} s; full state max "
            f"{r['checkpoint_full_mb']['max']} MB, uploaded p50 {u['p50']} MB max {u['max']} MB; heap max "
            f"{r['heap_used_max_mb']} MB, after load min {r['heap_used_min_after_load_mb']} MB; stages' {parts}; "
            f"after the input ended {tail.get('count')} more, max {tail.get('max_s')} s")


def render(res: dict) -> str:
    lines = [render_row(r) for r in res["runs"]]
    for n, x in res["rocksdb_vs_heap_events_per_s"].items():
        lines.append(f"rocksdb / hashmap events/s at {int(n):,} users: {x}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", default="100k,1M", help="user counts, comma-separated (100k, 1M, ...)")
    ap.add_argument("--backends", default="hashmap,rocksdb,rocksdb+changelog")
    ap.add_argument("--events-per-user", type=float, default=1.5)
    ap.add_argument("--parallelism", type=int, default=2)
    ap.add_argument("--checkpoint-interval-ms", type=int, default=1000)
    ap.add_argument("--heap", default="6g", help="-Xmx of each run's JVM [default 6g]")
    ap.add_argument("--json", action="store_true", help="also print the results as JSON on the last line")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--work", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    users = [parse_count(x) for x in a.users.split(",") if x.strip()]
    backends = [b for b in a.backends.split(",") if b]
    bad = {b for b in backends if b.partition("+")[0] not in ("hashmap", "rocksdb")
           or any(v not in VARIANTS for v in variants(b))}
    if bad:
        raise SystemExit(f"unknown backends {sorted(bad)}: hashmap, rocksdb, rocksdb+{'/'.join(VARIANTS)}")
    if a.one:
        n = users[0]
        res = run_one(backends[0], n, max(1, round(n * a.events_per_user)), a.parallelism, a.checkpoint_interval_ms,
                      Path(a.work or tempfile.mkdtemp(prefix="riskstream-scale-")))
        print(json.dumps(res), flush=True)
        return 0
    res = run_all(users, backends, a.events_per_user, a.parallelism, a.checkpoint_interval_ms, a.heap)
    print(render(res))
    OUT.mkdir(exist_ok=True)
    (OUT / "scale.json").write_text(json.dumps(res, indent=2))
    if a.json:
        print(json.dumps(res))
    return 0 if all("error" not in r for r in res["runs"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
