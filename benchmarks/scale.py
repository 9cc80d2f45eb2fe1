"""State at scale: the four JVM entity stages over millions of keys, per state backend, with 1 s exactly-once
checkpoints, on a local MiniCluster (no broker): events/s drained, checkpoint duration p50/p99/max and size
(full state and what each checkpoint uploaded), heap used, full GCs; then the restore from a savepoint and
the latency with the state held.

    .venv/bin/python -m benchmarks.scale [--users 100k,1M] [--backends hashmap,rocksdb,rocksdb+changelog]
                                         [--held-seconds 30] [--held-rate 2000] [--heap 6g]
    riskstream bench --keys 100k,1M            # the same, from the CLI

Each (backend, users) pair runs in two processes (fresh JVMs with ``--heap`` and a GC log), so heap and GC
figures are that phase's:
1. the load: ``io.riskstream.flink.SyntheticEvents`` (event i belongs to user i mod users; each user has
   its own device, ip and card: about 3.5 keys per user), one source subtask so event time is in order, the
   stages at ``--parallelism``, drained as fast as they go; the source then idles and the job is stopped
   with a savepoint (canonical, as ``riskstream cancel`` takes one; no drain, so no timer fires);
2. (``--held-seconds`` > 0) a fresh job restored from that savepoint; from its first completed checkpoint
   the source continues the sequence at ``--held-rate`` events/s for ``--held-seconds``. Reported: the
   restore's times from the job's submission (every task RUNNING, the first checkpoint completed, the first
   record out), the latency per record from when the event was due to its way out of the stages and to the
   completion of the checkpoint that commits it (what an exactly-once sink's reader sees), a check of every
   paced event's user, device and card features against the history the load left, checkpoints, heap, full
   GCs, and the live heap after one full GC it triggers at the end.
Prints a table and writes JSON to benchmarks/results/scale.json.

Pitfalls: the machine is shared and has 2 cores, so compare backends within one run, not across runs;
the first checkpoints of a run are taken while keys are still being created, the last ones while they
are held (both are in the percentiles); heap used is sampled every 0.5 s, so it includes garbage not yet
collected (``heap_used_max_mb``), and the smallest sample after the load (``heap_used_min_after_load_mb``)
or the held phase's ``live_heap_mb`` is the better estimate of live state. The restore check sees the
user, device and card stages (the ip stage's features do not reveal an earlier event 16 h back).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
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


START_TS = 1_700_000_000_000  # event time of event 0


def _step_ms(events: int) -> int:
    """Event-time step between events: the load spans one day, so no key expires during the run."""
    return max(1, 86_400_000 // max(events, 1))


def value_positions() -> dict[str, int]:
    """Feature name -> its position in a record's values after the four stages (each stage appends its
    entity's features in spec order)."""
    from udfs.features import ENTITIES, features_for

    names = [f.name for e in ENTITIES for f in features_for(e.name)]
    return {n: i for i, n in enumerate(names)}


def _job(backend: str, users: int, load_events: int, parallelism: int, interval_ms: int, work: Path, *,
         fast: int, rate: float = 0.0, paced: int = 0, held: bool = False, restore: str | None = None,
         first_index: int = 0):
    """Build and submit the scale job in this process (its MiniCluster in this process's JVM): the paced
    synthetic source (``fast`` events at full speed, then ``paced`` at ``rate`` per second, then none) ->
    event time -> the four JVM entity stages -> the probe (io.riskstream.flink.DrainClock) -> discard.
    Returns (job client, job id, REST base URL, the client's wall time just before submission)."""
    from pyflink.datastream import DataStream
    from pyflink.datastream.connectors import Sink
    from pyflink.java_gateway import get_gateway

    from pipelines import decision_job
    from riskstream.config import JobConfig
    from riskstream.ops.procs import free_port
    from udfs import jvm
    from udfs.chain import spec_document
    from udfs.features import ENTITIES

    import orjson

    port = free_port()
    base_backend = backend.partition("+")[0]
    vs = variants(backend)
    cfg = JobConfig(parallelism=parallelism, checkpoint_interval_ms=interval_ms, state_backend=base_backend,
                    rest_port=port, checkpoint_dir=(work / "checkpoints").as_uri(), job_name="bench-scale",
                    restart_attempts=0, changelog="changelog" in vs,
                    flink_conf=tuple(x for v in vs for x in VARIANTS[v](work)))
    # heartbeat: the probe's accumulators reach the REST API with each TaskManager heartbeat (default 10 s)
    env = decision_job.make_env(cfg, extra={"web.checkpoints.history": "10000",
                                            "execution.checkpointing.max-concurrent-checkpoints": "1",
                                            "heartbeat.interval": "1000"}, restore=restore)
    spec = orjson.dumps(spec_document(cfg.allowed_lateness_ms)).decode()
    gw = get_gateway()
    pkg = gw.jvm.io.riskstream.flink
    try:
        pkg.RecordKey(0)
    except TypeError:
        from pyflink.util.java_utils import add_jars_to_context_class_loader

        conf = env._j_stream_execution_environment.getConfiguration().toMap()
        add_jars_to_context_class_loader([j for j in conf.get("pipeline.jars").split(";") if j])
        pkg = get_gateway().jvm.io.riskstream.flink
    step = _step_ms(load_events)
    row_type = jvm.record_type_info().get_java_type_info()
    events = pkg.SyntheticEvents(spec, users, START_TS, step, fast, float(rate), paced, held, first_index)
    j_rows = (env._j_stream_execution_environment
              .fromSource(pkg.SyntheticEvents.source(events, row_type),
                          gw.jvm.org.apache.flink.api.common.eventtime.WatermarkStrategy.noWatermarks(),
                          "synthetic-events")
              .uid("synthetic-events").setParallelism(1))  # its position is restored from the savepoint
    stream = jvm.event_time(DataStream(j_rows), cfg.out_of_orderness_ms, cfg.idleness_ms, max_future_skew_ms=10**13)
    for e in ENTITIES:  # with labels on, as the job runs (no label arrives: every key's store is empty)
        stream = jvm.entity_stage(stream, e, spec, cfg.dedup_horizon_ms, True, "bench-scale")
    if held:
        pos = value_positions()
        probe = pkg.DrainClock(True, spec, users, step, pos["user_events_30d"], pos["user_age_ms"],
                               pos["device_events_30d"], pos["device_age_ms"], pos["payment_age_ms"])
    else:
        probe = pkg.DrainClock()
    clocked = DataStream(stream._j_data_stream.map(probe, row_type).name("drain-clock").uid("drain-clock"))
    clocked.sink_to(Sink(gw.jvm.org.apache.flink.streaming.api.functions.sink.v2.DiscardingSink()))
    submitted = time.time()
    client = env.execute_async("riskstream-bench-scale")
    return client, str(client.get_job_id()), f"http://127.0.0.1:{port}", submitted


def _accumulators(base: str, job_id: str) -> dict[str, str]:
    """The job's user accumulators as the REST API shows them (their values as strings)."""
    got = _get(f"{base}/jobs/{job_id}/accumulators") or {}
    return {a["name"]: a["value"] for a in got.get("user-task-accumulators", [])}


def histogram(text: str | dict | None) -> dict[int, int]:
    """A Flink Histogram accumulator ({ms=count, ...} as its TreeMap prints, or the map) -> {value: count}."""
    if not text:
        return {}
    if isinstance(text, dict):
        return {int(k): int(v) for k, v in text.items()}
    return {int(k): int(v) for k, v in re.findall(r"(-?\d+)=(\d+)", text)}


def hist_pct(h: dict[int, int], q: float) -> int | None:
    """The q-quantile of a histogram {value: count} (nearest rank)."""
    n = sum(h.values())
    if not n:
        return None
    rank = max(1, math.ceil(q * n))
    seen = 0
    for v in sorted(h):
        seen += h[v]
        if seen >= rank:
            return v
    return max(h)


def _hist_summary(h: dict[int, int]) -> dict:
    return {"count": sum(h.values()), "p50": hist_pct(h, 0.5), "p99": hist_pct(h, 0.99),
            "max": max(h) if h else None}


GC_LINE = re.compile(r"GC\(\d+\) Pause (\w+)(.*?) (\d+)M->(\d+)M\((\d+)M\) ([\d.]+)ms")


def gc_summary(path: Path | None) -> dict | None:
    """A unified GC log (-Xlog:gc:file=...) -> pauses, full GCs with their causes, heap after each GC."""
    if path is None or not path.exists():
        return None
    full, pauses, after = [], [], []
    for m in GC_LINE.finditer(path.read_text(errors="replace")):
        kind, rest, _, post, _, ms = m.groups()
        pauses.append(float(ms))
        after.append(int(post))
        if kind == "Full":
            full.append({"cause": rest.strip(" ()") or "?", "ms": float(ms), "heap_after_mb": int(post)})
    return {"pauses": len(pauses), "max_pause_ms": max(pauses) if pauses else None, "full_gcs": len(full),
            "full": full, "heap_after_gc_max_mb": max(after) if after else None,
            "heap_after_gc_last_mb": after[-1] if after else None}


def _gc_log() -> Path | None:
    """This process's GC log, when JVM_ARGS names one (run_all does)."""
    m = re.search(r"-Xlog:gc[^ ]*:file=([^ :]+)", os.environ.get("JVM_ARGS", ""))
    return Path(m.group(1)) if m else None


class _Watch:
    """Polls a running scale job: every task RUNNING, heap used, completed checkpoints with their stages'
    parts, the probe's accumulators."""

    def __init__(self, base: str, job_id: str):
        self.base, self.job_id = base, job_id
        self.heap: list[tuple[float, float]] = []
        self.cps: dict[int, dict] = {}
        self.t_running = self.wall_running = None
        self.tm = None
        self.vertices: dict[str, str] = {}  # id -> name of the entity stages
        self.all_vertices: list[str] = []
        self.state = None
        self.start_ms = None
        self.acc: dict[str, str] = {}

    def poll(self) -> bool:
        """One round; False while the REST endpoint does not answer."""
        base, job_id = self.base, self.job_id
        st = _get(f"{base}/jobs/{job_id}")
        if st is None:
            return False
        self.state = st.get("state")
        self.start_ms = self.start_ms or st.get("start-time")
        if (self.state == "RUNNING" and self.t_running is None
                and all(v.get("status") == "RUNNING" for v in st.get("vertices", []))):
            self.t_running, self.wall_running = time.monotonic(), time.time()
            self.vertices = {v["id"]: v["name"] for v in st.get("vertices", []) if "windows" in v.get("name", "")}
            self.all_vertices = [v["id"] for v in st.get("vertices", [])]
        if self.tm is None:
            tms = _get(f"{base}/taskmanagers") or {}
            self.tm = (tms.get("taskmanagers") or [{}])[0].get("id")
        if self.tm:
            m = _get(f"{base}/taskmanagers/{self.tm}/metrics?get=Status.JVM.Memory.Heap.Used") or []
            if m:
                self.heap.append((time.monotonic(), float(m[0]["value"]) / 2**20))
        self.checkpoints()
        self.acc = _accumulators(base, job_id) or self.acc
        if self.state in ("FAILED", "CANCELED"):
            ex = _get(f"{base}/jobs/{job_id}/exceptions") or {}
            raise RuntimeError(f"the scale job ended {self.state}: {str(ex.get('root-exception'))[:2000]}")
        return True

    def checkpoints(self) -> dict:
        ck = _get(f"{self.base}/jobs/{self.job_id}/checkpoints") or {}
        for h in ck.get("history", []):
            if h.get("status") == "COMPLETED" and not h.get("is_savepoint") and h["id"] not in self.cps:
                self.cps[h["id"]] = h
                h["stages"] = _stage_parts(self.base, self.job_id, h["id"], self.vertices)
        return ck

    def acc_int(self, name: str) -> int:
        try:
            return int(self.acc.get(name) or 0)
        except ValueError:
            return 0

    def task_times(self) -> dict:
        """Per subtask of every vertex, Flink's own timestamps of its states: when the last one went
        RUNNING, and the longest INITIALIZING (state restore) of any."""
        running, init = [], []
        for vid in self.all_vertices:
            d = _get(f"{self.base}/jobs/{self.job_id}/vertices/{vid}/subtasktimes") or {}
            for s in d.get("subtasks", []):
                ts = s.get("timestamps") or {}
                if ts.get("RUNNING"):
                    running.append(ts["RUNNING"])
                    if ts.get("INITIALIZING"):
                        init.append(ts["RUNNING"] - ts["INITIALIZING"])
        return {"last_running_ms": max(running) if running else None,
                "initializing_max_s": round(max(init) / 1000, 2) if init else None}


def _checkpoint_figures(cps: list[dict]) -> dict:
    dur = [c["end_to_end_duration"] / 1000 for c in cps]
    full = [c.get("state_size", 0) / 2**20 for c in cps]
    inc = [c.get("checkpointed_size", c.get("state_size", 0)) / 2**20 for c in cps]
    parts = {k: [c["stages"][k] for c in cps if c.get("stages", {}).get(k) is not None]
             for k in ("start_delay", "alignment", "sync", "async")}
    return {
        "checkpoints": len(cps),
        "checkpoint_s": {"p50": _pct(dur, 0.5), "p99": _pct(dur, 0.99), "max": max(dur) if dur else None,
                         "mean": round(statistics.mean(dur), 2) if dur else None},
        # per checkpoint, the slowest entity-stage subtask's barrier start delay / alignment / sync / async part
        "checkpoint_parts_s": {k: {"p50": _round(_pct(v, 0.5), 2), "p99": _round(_pct(v, 0.99), 2),
                                   "max": _round(max(v) if v else None, 2)} for k, v in parts.items()},
        "checkpoint_full_mb": {"last": round(full[-1], 1) if full else None, "max": round(max(full), 1) if full else None},
        "checkpoint_uploaded_mb": {"p50": _round(_pct(inc, 0.5)), "p99": _round(_pct(inc, 0.99)),
                                   "max": _round(max(inc) if inc else None)},
    }


def _dir_mb(path: Path) -> float:
    return round(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20, 1)


def _savepoint_dir(uri: str) -> Path:
    return Path(uri[len("file:"):] if uri.startswith("file:") else uri)


def run_one(backend: str, users: int, events: int, parallelism: int, interval_ms: int, work: Path,
            savepoint: bool = False, savepoint_format: str = "canonical", deadline_s: float = 7200) -> dict:
    """The load: ``events`` synthetic events drained through the four stages as fast as they go, in this
    process. The source then idles (the job keeps its state); with ``savepoint`` the job is stopped with a
    savepoint (no drain, so no timer fires) in ``savepoint_format`` (canonical: what ``riskstream cancel``
    and ``riskstream savepoint`` take of a job with the changelog; native: the backend's own files, their
    ``--format native``), else cancelled. Pitfall: the restore phase claims a native savepoint of a changelog
    job, which Flink 2.2.1 restores but whose later checkpoints it cannot (FLINK-39964); the bench never
    restores those."""
    from riskstream.ops import flink_rest

    load_start = os.getloadavg()[0]
    client, job_id, base, _ = _job(backend, users, events, parallelism, interval_ms, work, fast=events)
    w = _Watch(base, job_id)
    deadline = time.monotonic() + deadline_s
    t_drained = wall_drained = None
    while time.monotonic() < deadline:
        if not w.poll():
            time.sleep(0.2)  # polling interval until the REST endpoint answers
            continue
        if t_drained is None and w.acc_int("records") >= events:
            t_drained, wall_drained = time.monotonic(), time.time()
        if t_drained is not None:  # the checkpoints triggered during the drain have all ended
            last_ms = w.acc_int("last_record_ms")
            hist = (_get(f"{base}/jobs/{job_id}/checkpoints") or {}).get("history", [])
            if not any(h.get("status") == "IN_PROGRESS" and h["trigger_timestamp"] <= last_ms for h in hist):
                w.checkpoints()
                break
        time.sleep(0.5)  # sampling interval of the heap and checkpoint statistics
    else:
        raise RuntimeError(f"the scale job did not drain {events:,} events within {deadline_s:.0f}s "
                           f"({w.acc_int('records'):,} out)")
    acc = {k: w.acc_int(k) for k in ("first_record_ms", "last_record_ms", "records")}
    sp: dict = {}
    if savepoint:
        target = work / "savepoints"
        t0 = time.monotonic()
        body = {"drain": False, "targetDirectory": target.as_uri(), "formatType": savepoint_format.upper()}
        rid = flink_rest.request(base, "POST", f"/jobs/{job_id}/stop", body)["request-id"]

        def found() -> str | None:
            done = [d for d in target.glob("savepoint-*") if (d / "_metadata").exists()]
            return str(max(done, key=lambda d: d.stat().st_mtime)) if done else None

        loc = flink_rest.await_savepoint(base, job_id, rid, "stop-with-savepoint", 3600, found=found)
        sp = {"path": loc, "format": savepoint_format, "seconds": round(time.monotonic() - t0, 1),
              "mb": _dir_mb(_savepoint_dir(loc))}
        client.get_job_execution_result().result()  # FINISHED
    else:
        client.cancel().result()
    wall_running, last_ms = w.wall_running, acc["last_record_ms"]
    if acc["first_record_ms"]:  # RUNNING is seen by polling, up to 0.5 s late (or never, in a short drain)
        wall_running = min(wall_running or math.inf, acc["first_record_ms"] / 1000)
    drain = (last_ms / 1000 - wall_running) if last_ms and wall_running else None
    # the checkpoints triggered while the events drained; later ones ran while the source idled
    every = sorted(w.cps.values(), key=lambda c: c["trigger_timestamp"])
    during = [c for c in every if not last_ms or c["trigger_timestamp"] <= last_ms]
    later = [c for c in every if c not in during]
    t_running = w.t_running if w.t_running is not None else t_drained
    secs = wall_drained - wall_running if wall_running else 0.0  # to the poll that saw the drain done
    load_end = t_running + secs * 0.6 if t_running else None  # users all created by then (1.5 events/user)
    after = [h for t, h in w.heap if load_end and t >= load_end]
    keys = round(users * (3 + 0.5))  # user, device, ip per user; a card per user that pays (half of them)
    from udfs.features import ENTITIES
    from udfs.windows import retention_ms
    from riskstream.config import JobConfig

    lateness = JobConfig().allowed_lateness_ms
    return {
        "backend": backend, "users": users, "keys_estimate": keys, "events": events, "parallelism": parallelism,
        "checkpoint_interval_ms": interval_ms, "load_average_1m": [round(load_start, 2), round(os.getloadavg()[0], 2)],
        "seconds": round(secs, 1),
        "events_per_s": round(events / drain) if drain and drain > 0 else None, "drain_seconds": _round(drain),
        "records_out": acc["records"],
        **_checkpoint_figures(during),
        "checkpoints_after_drain": {"count": len(later),
                                    "max_s": max((c["end_to_end_duration"] / 1000 for c in later), default=None)},
        # every checkpoint: trigger (ms since the drain began), duration (s), uploaded (MB), stages' parts (s)
        "checkpoint_list": [[c["trigger_timestamp"] - round(wall_running * 1000) if wall_running else None,
                             c["end_to_end_duration"] / 1000,
                             _round(c.get("checkpointed_size", c.get("state_size", 0)) / 2**20),
                             c.get("stages")] for c in every],
        "heap_used_max_mb": round(max(h for _, h in w.heap)) if w.heap else None,
        "heap_used_min_after_load_mb": round(min(after)) if after else None,
        "heap_bytes_per_key_estimate": round(min(after) * 2**20 / keys) if after else None,
        "gc": gc_summary(_gc_log()),
        "savepoint": sp or None,
        "retention_days": {e.name: retention_ms(e.name, lateness) / 86_400_000 for e in ENTITIES},
    }


def run_held(backend: str, users: int, load_events: int, parallelism: int, interval_ms: int, work: Path,
             restore: str | None, rate: float, seconds: float, deadline_s: float = 3600) -> dict:
    """A fresh job restored from the load's savepoint, fed ``rate`` events/s for ``seconds`` (users the load
    created, continuing its sequence) from its first completed checkpoint on, in this process: restore time,
    latency per record, the restore check, checkpoints and heap while the state is held, then the live heap
    (a full GC it triggers) and a cancel. ``restore`` None: the same events on a job without the load's
    state (the restore check's control: every check must fail)."""
    load_start = os.getloadavg()[0]
    paced = max(1, round(rate * seconds))
    client, job_id, base, submitted = _job(backend, users, load_events, parallelism, interval_ms, work, fast=0,
                                           rate=rate, paced=paced, held=True, restore=restore,
                                           first_index=0 if restore else load_events)
    w = _Watch(base, job_id)
    deadline = time.monotonic() + deadline_s
    times = None
    while time.monotonic() < deadline:
        if not w.poll():
            time.sleep(0.2)  # polling interval until the REST endpoint answers
            continue
        if times is None and w.t_running is not None:
            times = w.task_times()
        done = w.acc_int("records") >= paced
        committed = sum(histogram(w.acc.get("committed_latency_ms")).values())
        if done and committed >= paced:  # every record out, and committed by a completed checkpoint
            break
        time.sleep(0.5)  # sampling interval of the heap and checkpoint statistics
    else:
        raise RuntimeError(f"the restored scale job did not process {paced:,} events within {deadline_s:.0f}s "
                           f"({w.acc_int('records'):,} out)")
    acc = dict(w.acc)
    gc_held = gc_summary(_gc_log())
    from pyflink.java_gateway import get_gateway

    before = (gc_held or {}).get("full_gcs", 0)
    get_gateway().jvm.java.lang.System.gc()  # one full GC: the heap it leaves is the live heap, state held
    live = None
    for _ in range(50):
        g = gc_summary(_gc_log())
        if not g or g["full_gcs"] > before:
            live = g["full"][-1]["heap_after_mb"] if g else None
            break
        time.sleep(0.1)  # the log line of the GC just requested
    client.cancel().result()
    start_ms = w.start_ms
    every = sorted(w.cps.values(), key=lambda c: c["trigger_timestamp"])
    first_cp = every[0] if every else None
    first_record = int(acc.get("first_record_ms") or 0) or None
    lat, com = histogram(acc.get("latency_ms")), histogram(acc.get("committed_latency_ms"))
    key_groups = histogram(acc.get("restore_key_groups"))

    def since(ms):
        return round((ms - start_ms) / 1000, 2) if ms and start_ms else None

    return {
        "load_average_1m": [round(load_start, 2), round(os.getloadavg()[0], 2)],
        "restore": {
            # from the job's submission (the JobManager's start time of the job) to ...
            "to_running_s": since((times or {}).get("last_running_ms")),  # every task RUNNING (state loaded)
            "state_load_max_s": (times or {}).get("initializing_max_s"),  # the longest INITIALIZING subtask
            "to_first_record_s": since(first_record),  # the first record out of the four stages
            "to_first_checkpoint_s": since(first_cp["latest_ack_timestamp"] if first_cp else None),
            "client_to_submission_s": round(start_ms / 1000 - submitted, 2) if start_ms else None,
            "first_checkpoint_full_mb": round(first_cp.get("state_size", 0) / 2**20, 1) if first_cp else None,
            # the check of every paced record's user, device and card features against the sequence
            "checked_events": int(acc.get("restore_checked") or 0),
            "checked_card_events": int(acc.get("restore_checked_cards") or 0),
            "wrong_user": int(acc.get("restore_wrong_user") or 0),
            "wrong_device": int(acc.get("restore_wrong_device") or 0),
            "wrong_card": int(acc.get("restore_wrong_card") or 0),
            "checked_users": min(users, int(acc.get("restore_checked") or 0)),
            "key_groups_checked": len(key_groups),
        },
        "held": {
            "rate": rate, "seconds": seconds, "events": paced, "records_out": int(acc.get("records") or 0),
            "latency_ms": _hist_summary(lat),  # arrived_at (when the event was due) -> out of the stages
            "committed_latency_ms": _hist_summary(com),  # arrived_at -> its checkpoint completed
            **_checkpoint_figures(every),
            "heap_used_max_mb": round(max(h for _, h in w.heap)) if w.heap else None,
            "live_heap_mb": live,
            "gc": gc_held,
        },
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


def run_phase(args: list[str], heap: str, gc_log: Path) -> tuple[dict | None, str]:
    """One phase in its own process (a fresh JVM with ``-Xmx<heap>`` and a GC log): its JSON line or an error."""
    cmd = [sys.executable, "-m", "benchmarks.scale", "--one", *args]
    jvm_args = f"{os.environ.get('JVM_ARGS', '')} -Xmx{heap} -Xlog:gc:file={gc_log}".strip()
    proc = subprocess.run(cmd, env={**os.environ, "JVM_ARGS": jvm_args}, capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parent.parent)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return None, (proc.stderr or proc.stdout)[-3000:]
    return json.loads(lines[-1]), ""


def run_all(users: list[int], backends: list[str], events_per_user: float, parallelism: int, interval_ms: int,
            heap: str, held_seconds: float = 30.0, held_rate: float = 2000.0,
            savepoint_format: str = "canonical") -> dict:
    """Each (backend, users): the load in its own process with ``-Xmx<heap>``, stopped with a savepoint;
    then (``held_seconds`` > 0) a fresh process restores it and is fed ``held_rate`` events/s for
    ``held_seconds``. Returns every run's figures."""
    runs = []
    for n in users:
        for backend in backends:
            with tempfile.TemporaryDirectory(prefix="riskstream-scale-") as work:
                common = ["--backends", backend, "--users", str(n), "--events-per-user", str(events_per_user),
                          "--parallelism", str(parallelism), "--checkpoint-interval-ms", str(interval_ms),
                          "--work", work]
                print(f"[scale] {backend}, {n:,} users ...", file=sys.stderr, flush=True)
                held = held_seconds > 0
                run, err = run_phase(common + (["--savepoint", "--savepoint-format", savepoint_format] if held else []),
                                     heap, Path(work) / "gc-load.log")
                if run is None:
                    runs.append({"backend": backend, "users": n, "error": err})
                    print(f"[scale] {backend}, {n:,} users FAILED:\n{err}", file=sys.stderr)
                    continue
                if held:
                    print(f"[scale] {backend}, {n:,} users: restoring the savepoint ({run['savepoint']['mb']} MB), "
                          f"{held_rate:g} events/s for {held_seconds:g} s ...", file=sys.stderr, flush=True)
                    more, err = run_phase(common + ["--restore-from", run["savepoint"]["path"], "--held-rate",
                                                 str(held_rate), "--held-seconds", str(held_seconds)],
                                       heap, Path(work) / "gc-held.log")
                    if more is None:
                        run["error"] = f"restore: {err}"
                        print(f"[scale] {backend}, {n:,} users: restore FAILED:\n{err}", file=sys.stderr)
                    else:
                        run.update(more_of(more))
                runs.append(run)
                print(f"[scale] {render_row(run)}", file=sys.stderr, flush=True)
    res = {"runs": runs, "heap": heap, "load_average_1m": os.getloadavg()[0]}
    by = {(r["backend"], r["users"]): r for r in runs if "error" not in r}
    ratios = {}
    for n in users:
        if ("hashmap", n) in by and ("rocksdb", n) in by:
            ratios[str(n)] = round(by[("rocksdb", n)]["events_per_s"] / by[("hashmap", n)]["events_per_s"], 2)
    res["rocksdb_vs_heap_events_per_s"] = ratios
    return res


def more_of(held: dict) -> dict:
    """The restored run's figures as keys of the run's record."""
    return {"restore": held["restore"], "held": held["held"], "held_load_average_1m": held["load_average_1m"]}


def render_row(r: dict) -> str:
    if "error" in r and "events_per_s" not in r:
        return f"{r['backend']:8} {r['users']:>10,} users: failed"
    c, u = r["checkpoint_s"], r["checkpoint_uploaded_mb"]
    parts = "; ".join(f"{k} p50 {v['p50']} max {v['max']} s" for k, v in (r.get("checkpoint_parts_s") or {}).items())
    tail = r.get("checkpoints_after_drain") or {}
    gc = r.get("gc") or {}
    out = (f"{r['backend']:8} {r['users']:>10,} users: {r['events_per_s'] or 0:>7,} events/s; checkpoints "
           f"{r['checkpoints']}, p50 {c['p50']} s, p99 {c['p99']} s, max {c['max']} s; full state max "
           f"{r['checkpoint_full_mb']['max']} MB, uploaded p50 {u['p50']} MB max {u['max']} MB; heap max "
           f"{r['heap_used_max_mb']} MB, after load min {r['heap_used_min_after_load_mb']} MB, full GCs "
           f"{gc.get('full_gcs', '?')}; stages' {parts}; after the drain {tail.get('count')} more, max "
           f"{tail.get('max_s')} s")
    if r.get("savepoint"):
        sp = r["savepoint"]
        out += f"; {sp.get('format', 'canonical')} savepoint {sp['mb']} MB in {sp['seconds']} s"
    if r.get("restore"):
        rs, h = r["restore"], r["held"]
        lat, com, hc = h["latency_ms"], h["committed_latency_ms"], h["checkpoint_s"]
        hgc = h.get("gc") or {}
        out += (f"\n{'':8} restore: every task RUNNING {rs['to_running_s']} s after submission (longest state "
                f"load {rs['state_load_max_s']} s), first record out {rs['to_first_record_s']} s, first "
                f"checkpoint {rs['to_first_checkpoint_s']} s; checked {rs['checked_events']:,} events "
                f"({rs['key_groups_checked']} key groups): wrong user {rs['wrong_user']}, device "
                f"{rs['wrong_device']}, card {rs['wrong_card']}"
                f"\n{'':8} held, {h['rate']:g} events/s for {h['seconds']:g} s: latency p50 {lat['p50']} ms p99 "
                f"{lat['p99']} ms max {lat['max']} ms; committed p50 {com['p50']} ms p99 {com['p99']} ms max "
                f"{com['max']} ms; checkpoints {h['checkpoints']}, p50 {hc['p50']} s p99 {hc['p99']} s; heap max "
                f"{h['heap_used_max_mb']} MB, live {h['live_heap_mb']} MB, full GCs {hgc.get('full_gcs', '?')}")
    return out


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
    ap.add_argument("--held-seconds", type=float, default=30.0,
                    help="after the load: stop it with a savepoint, restore a fresh job from it and feed it "
                         "--held-rate events/s for this long (restore time, latency with the state held); "
                         "0: skip [default 30]")
    ap.add_argument("--held-rate", type=float, default=2000.0, help="events/s of the held phase [default 2000]")
    ap.add_argument("--savepoint-format", choices=("canonical", "native"), default="canonical",
                    help="the load's savepoint: canonical (what riskstream cancel/savepoint take of a job with the "
                         "changelog) or native (the backend's own files; their --format native) [default canonical]")
    ap.add_argument("--json", action="store_true", help="also print the results as JSON on the last line")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--work", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--savepoint", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--restore-from", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--held-without-state", action="store_true", help=argparse.SUPPRESS)  # the check's control
    a = ap.parse_args(argv)
    users = [parse_count(x) for x in a.users.split(",") if x.strip()]
    backends = [b for b in a.backends.split(",") if b]
    bad = {b for b in backends if b.partition("+")[0] not in ("hashmap", "rocksdb")
           or any(v not in VARIANTS for v in variants(b))}
    if bad:
        raise SystemExit(f"unknown backends {sorted(bad)}: hashmap, rocksdb, rocksdb+{'/'.join(VARIANTS)}")
    if a.held_seconds < 0 or a.held_rate <= 0:
        raise SystemExit("--held-seconds must be >= 0 and --held-rate > 0")
    if a.one:
        n = users[0]
        events = max(1, round(n * a.events_per_user))
        work = Path(a.work or tempfile.mkdtemp(prefix="riskstream-scale-"))
        if a.restore_from or a.held_without_state:
            res = run_held(backends[0], n, events, a.parallelism, a.checkpoint_interval_ms, work, a.restore_from,
                           a.held_rate, a.held_seconds)
        else:
            res = run_one(backends[0], n, events, a.parallelism, a.checkpoint_interval_ms, work,
                          savepoint=a.savepoint, savepoint_format=a.savepoint_format)
        print(json.dumps(res), flush=True)
        return 0
    res = run_all(users, backends, a.events_per_user, a.parallelism, a.checkpoint_interval_ms, a.heap,
                  a.held_seconds, a.held_rate, a.savepoint_format)
    print(render(res))
    OUT.mkdir(exist_ok=True)
    (OUT / "scale.json").write_text(json.dumps(res, indent=2))
    if a.json:
        print(json.dumps(res))
    return 0 if all("error" not in r for r in res["runs"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
