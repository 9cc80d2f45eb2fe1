"""The parse-validate stage alone on a MiniCluster: Python ``udfs.flink.ParseValidate`` against the JVM's
``io.riskstream.flink.ParseEventFunction`` (``udfs.jvm_parse.parse_stage``), on generated records.

The source is a JVM collection of the records' bytes and the sink discards, so a run with no stage in
between (the baseline) takes out the job's fixed costs and the source's; each stage's figure is
(its run - the baseline) / records. Parallelism 1, the job's Python settings (``decision_job.make_env``;
``--mode process`` for PyFlink's process mode).

``python -m benchmarks.parse_stage --events 100000`` (builds the JVM module with Maven first).
"""

from __future__ import annotations

import argparse
import subprocess
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent


def build_jar() -> Path:
    """``mvn package`` the JVM module (udfs/jvm); its jar."""
    subprocess.run(["mvn", "-B", "-q", "-f", str(ROOT / "udfs" / "jvm" / "pom.xml"), "package", "-DskipTests"],
                   check=True)
    return ROOT / "udfs" / "jvm" / "target" / "riskstream-jvm.jar"


def _run(jar: Path, framed: bytes, stage: str, mode: str) -> float:
    from pyflink.datastream import DataStream
    from pyflink.java_gateway import get_gateway

    from pipelines import decision_job
    from riskstream.config import JobConfig
    from udfs import flink as F
    from udfs.jvm_parse import parse_stage, use_jar

    env = decision_job.make_env(JobConfig(parallelism=1, python_execution_mode=mode))
    use_jar(jar, env)
    jvm = get_gateway().jvm
    j_env = env._j_stream_execution_environment
    records = jvm.io.riskstream.flink.EventParser.framedRecords(framed)
    byte_type = jvm.org.apache.flink.api.common.typeinfo.PrimitiveArrayTypeInfo.BYTE_PRIMITIVE_ARRAY_TYPE_INFO
    raw = DataStream(j_env.fromData(records, byte_type))
    if stage == "python":
        out = raw.process(F.ParseValidate("bench"), output_type=F.STAGE_VALUE)
    elif stage == "jvm":
        out = parse_stage(raw, "bench")
    else:
        out = raw
    out._j_data_stream.sinkTo(jvm.org.apache.flink.streaming.api.functions.sink.v2.DiscardingSink())
    t0 = time.perf_counter()
    env.execute(f"parse-stage-{stage}")
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    import orjson

    from riskstream.generator import TrafficGenerator
    from udfs.jvm_parse import frame_records

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--mode", choices=("thread", "process"), default="thread", help="PyFlink's Python mode")
    args = ap.parse_args(argv)
    raws = [r.raw if r.raw is not None else orjson.dumps(r.event)
            for r in TrafficGenerator(seed=3, bad_share=0.02).generate(args.events)]
    framed = frame_records(raws)
    jar = build_jar()
    best = {}
    for _ in range(args.repeat):
        for stage in ("none", "jvm", "python"):
            s = _run(jar, framed, stage, args.mode)
            best[stage] = min(best.get(stage, s), s)
            print(f"{stage:>6}: {s:.2f} s", flush=True)
    for stage in ("jvm", "python"):
        us = (best[stage] - best["none"]) / len(raws) * 1e6
        print(f"{stage} parse stage ({args.mode} mode): {us:.1f} µs/record "
              f"(run {best[stage]:.2f} s, baseline {best['none']:.2f} s, {len(raws)} records)")


if __name__ == "__main__":
    main()
