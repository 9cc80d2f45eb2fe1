"""The four entity stages in the JVM (udfs/jvm) against the four Python stages (udfs.flink.EntityStage) on a
local MiniCluster: the same seeded collection of chain records, parallelism 1, a discarding sink; plus
state bytes per key of both (the JVM's encoded byte[] vs the Python stage's pickled dict).

    .venv/bin/python -m benchmarks.jvm_windows [--events 100000]

Prints figures and writes JSON to benchmarks/results/jvm_windows.json. "source only" is the same source
straight into the sink: subtracting its time gives the stages' own cost per event.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import time
from pathlib import Path

import orjson

OUT = Path(__file__).resolve().parent / "results"


def _env(jar: Path | None):
    from pipelines import decision_job
    from riskstream.config import JobConfig
    from riskstream.ops.jars import flink_jar_urls

    cfg = JobConfig(parallelism=1)
    extra = {"pipeline.jars": ";".join(flink_jar_urls(cfg.jars_dir) + [jar.as_uri()])} if jar else None
    return decision_job.make_env(cfg, extra=extra), cfg


def _discard(stream) -> None:
    from pyflink.datastream.connectors import Sink
    from pyflink.java_gateway import get_gateway

    stream.sink_to(Sink(get_gateway().jvm.org.apache.flink.streaming.api.functions.sink.v2.DiscardingSink()))


CPU: list[float] = []  # CPU seconds of the JVM process per run (the MiniCluster and, in thread mode, Python)


def _time(env, n: int) -> float:
    from pyflink.java_gateway import get_gateway

    pid = get_gateway().jvm.java.lang.ProcessHandle.current().pid()
    c0 = _cpu_seconds(pid)
    t0 = time.perf_counter()
    env.execute("riskstream-bench-jvm-windows")
    CPU.append(_cpu_seconds(pid) - c0)
    return time.perf_counter() - t0


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc), with its waited-for children."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def run_jvm(events, jar: Path, stages: bool) -> float:
    from udfs import jvm
    from udfs.chain import pack
    from udfs.features import ENTITIES
    from udfs.chain import spec_document

    env, cfg = _env(jar)
    stream = env.from_collection([jvm.to_row(pack(e)) for e in events], type_info=jvm.record_type_info())
    if stages:
        spec = orjson.dumps(spec_document(cfg.allowed_lateness_ms)).decode()
        for e in ENTITIES:
            stream = jvm.entity_stage(stream, e, spec, cfg.dedup_horizon_ms, False, "bench")
    _discard(stream)
    return _time(env, len(events))


def run_python(events, stages: bool) -> float:
    from pyflink.common import Types

    from udfs import flink as F
    from udfs.chain import pack
    from udfs.features import ENTITIES

    env, cfg = _env(None)
    stream = env.from_collection([pack(e) for e in events])  # pickled records (STAGE_VALUE)
    if stages:
        for e in ENTITIES:
            stream = stream.key_by(F.EntityKey(e), key_type=Types.STRING()).process(
                F.EntityStage(e.name, cfg.allowed_lateness_ms, "bench", cfg.dedup_horizon_ms), output_type=F.STAGE_VALUE)
    _discard(stream)
    return _time(env, len(events))


def state_bytes(events, jar: Path) -> dict:
    """Median / p99 / max bytes per key: the JVM's encoded state (LocalRunner) vs the pickled Python dict."""
    from pyflink.java_gateway import get_gateway
    from pyflink.util.java_utils import add_jars_to_context_class_loader

    from benchmarks.windows import time_entity
    from udfs.chain import Chain
    from udfs.features import ENTITIES
    from udfs.chain import spec_document

    add_jars_to_context_class_loader([jar.as_uri()])
    J = get_gateway().jvm.io.riskstream.flink
    spec = orjson.dumps(spec_document(60_000)).decode()
    jsonl = "\n".join(orjson.dumps(e._asdict()).decode() for e in events)
    chain = Chain()  # what the Python stage stores per key: windows, dedup ids (user), timer
    for ev in events:
        chain.process(ev)
    out = {}
    for i, e in enumerate(ENTITIES):
        sizes = json.loads(J.LocalRunner.run(spec, e.name, 600_000, jsonl))["state_bytes"]
        _, py = time_entity(e.name, events)  # windows only (no dedup ids): as benchmarks/windows.py reports
        out[e.name] = {"jvm": _dist(sizes), "python_pickled_windows_only": py,
                       "python_pickled_stage": _dist([len(pickle.dumps(s, protocol=pickle.HIGHEST_PROTOCOL))
                                                      for s in chain.stores[i].values()])}
    return out


def logic_cpu(events, jar: Path) -> dict:
    """CPU µs per event of one entity's step alone, no Flink: the Java logic with its state coding
    (LocalRunner, median of 3 after a warm-up) and the Python EntityStep over a dict (thread CPU time)."""
    from pyflink.java_gateway import get_gateway

    from udfs.chain import EntityStep
    from udfs.features import ENTITIES
    from udfs.chain import spec_document

    J = get_gateway().jvm.io.riskstream.flink
    spec = orjson.dumps(spec_document(60_000)).decode()
    jsonl = "\n".join(orjson.dumps(e._asdict()).decode() for e in events)
    out = {}
    for e in ENTITIES:
        runs = sorted([json.loads(J.LocalRunner.run(spec, e.name, 600_000, jsonl))["cpu_ns"] for _ in range(4)][1:])
        step = EntityStep(e)
        store: dict = {}
        c0 = time.thread_time()
        for ev in events:
            k = step.key(ev)
            if k is None:
                step.empty_values()
                continue
            st = store.get(k)
            if step.duplicate(st, ev):
                continue
            st, _, _, _ = step.step(st, ev)
            store[k] = st
        py = (time.thread_time() - c0) / len(events) * 1e6
        out[e.name] = {"jvm": round(runs[1] / len(events) / 1e3, 2), "python": round(py, 2)}
    return out


def _dist(sizes: list[int]) -> dict:
    sizes = sorted(sizes)
    return {"keys": len(sizes), "median": sizes[len(sizes) // 2], "p99": sizes[int(len(sizes) * 0.99)],
            "max": sizes[-1]}


def main(argv=None) -> int:
    from riskstream.generator import TrafficGenerator
    from tests.jvm_jar import build_jar
    from udfs.events import Event

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--state-only", action="store_true",
                    help="only state bytes per key (JVM encoding, from the jobs' jar in jars_dir, and the Python "
                         "stage's pickled state) as one JSON line: what `riskstream bench` reports")
    a = ap.parse_args(argv)
    if a.state_only:
        from riskstream.config import JobConfig
        from riskstream.ops.jars import JVM_MODULE_JAR

        events = [Event(**r.event) for r in TrafficGenerator(seed=a.seed, bad_share=0.0).generate(a.events)]
        print(json.dumps(state_bytes(events, JobConfig().jars_dir / JVM_MODULE_JAR)))
        return 0
    jar = build_jar()
    events = [Event(**r.event) for r in TrafficGenerator(seed=a.seed).generate(a.events) if r.event is not None]
    n = len(events)
    res: dict = {"events": n, "parallelism": 1}
    run_jvm(events[:2000], jar, stages=True)  # warm-up: MiniCluster, class loading, Python workers
    run_python(events[:2000], stages=True)
    res["load_average_1m"] = os.getloadavg()[0]  # the machine is shared: wall-clock figures vary with it
    CPU.clear()
    t_src_j = run_jvm(events, jar, stages=False)
    t_jvm = run_jvm(events, jar, stages=True)
    t_src_p = run_python(events, stages=False)
    t_py = run_python(events, stages=True)
    c_src_j, c_jvm, c_src_p, c_py = CPU
    for name, t, t_src, c, c_src in (("jvm", t_jvm, t_src_j, c_jvm, c_src_j), ("python", t_py, t_src_p, c_py, c_src_p)):
        res[name] = {"seconds": round(t, 2), "events_per_s": round(n / t), "source_only_seconds": round(t_src, 2),
                     "stages_us_per_event": round((t - t_src) / n * 1e6, 1),
                     "cpu_seconds": round(c, 2), "source_only_cpu_seconds": round(c_src, 2),
                     "stages_cpu_us_per_event": round((c - c_src) / n * 1e6, 1)}
    res["speedup_stages"] = round((t_py - t_src_p) / max(t_jvm - t_src_j, 1e-9), 1)
    res["speedup_stages_cpu"] = round((c_py - c_src_p) / max(c_jvm - c_src_j, 1e-9), 1)
    res["load_average_1m_after"] = os.getloadavg()[0]
    res["state_bytes_per_key"] = state_bytes(events, jar)
    res["logic_cpu_us_per_event"] = logic_cpu(events, jar)
    for k in ("jvm", "python"):
        r = res[k]
        print(f"{k:6} four entity stages: {r['events_per_s']:>8} events/s end to end ({r['seconds']} s for {n}; "
              f"source only {r['source_only_seconds']} s) -> {r['stages_us_per_event']} µs/event in the stages; "
              f"CPU {r['stages_cpu_us_per_event']} µs/event")
    print(f"stages speed-up JVM vs Python: {res['speedup_stages']}x wall clock, {res['speedup_stages_cpu']}x CPU "
          f"(load average {res['load_average_1m']:.1f} -> {res['load_average_1m_after']:.1f})")
    for ent, s in res["logic_cpu_us_per_event"].items():
        print(f"{ent:8} window logic alone (no Flink): JVM {s['jvm']} µs/event CPU, Python {s['python']}")
    for ent, s in res["state_bytes_per_key"].items():
        print(f"{ent:8} state bytes per key: JVM median {s['jvm']['median']} p99 {s['jvm']['p99']} max "
              f"{s['jvm']['max']} | Python pickled median {s['python_pickled_windows_only']['median']} p99 "
              f"{s['python_pickled_windows_only']['p99']} (windows only), median {s['python_pickled_stage']['median']} "
              f"(the Python stage's state: windows, ids, timer)")
    OUT.mkdir(exist_ok=True)
    (OUT / "jvm_windows.json").write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
