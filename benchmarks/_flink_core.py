"""The job core on a MiniCluster with a collection source and a discarding sink (no broker)."""

from __future__ import annotations

import time

import orjson


def run_core(n: int, trivial: bool) -> float:
    from pyflink.common import Types
    from pyflink.datastream import KeyedProcessFunction
    from pyflink.datastream.connectors import Sink
    from pyflink.datastream.state import ValueStateDescriptor
    from pyflink.java_gateway import get_gateway

    from pipelines import decision_job
    from riskstream.config import JobConfig
    from riskstream.generator import TrafficGenerator
    from udfs import flink as F

    recs = [orjson.dumps(r.event) for r in TrafficGenerator(seed=3).generate(n)]
    cfg = JobConfig(parallelism=1)
    env = decision_job.make_env(cfg)
    raw = env.from_collection(recs).map(lambda b: b, output_type=F.BYTES)
    if not trivial:
        decisions, _ = decision_job.build_core(raw, cfg)
    else:
        from pyflink.common import Duration, WatermarkStrategy

        from udfs.chain import extend
        from udfs.features import ENTITIES, features_for

        class Stage(KeyedProcessFunction):  # the entity stage's shape: one ValueState read and write
            def __init__(self, n_values: int):
                self.n_values = n_values

            def open(self, ctx):
                self.s = ctx.get_state(ValueStateDescriptor("s", Types.PICKLED_BYTE_ARRAY()))

            def process_element(self, v, ctx):
                st = self.s.value() or {"n": 0}
                st["n"] += 1
                self.s.update(st)
                yield extend(v, [1.0] * self.n_values, False, None)

        parsed = raw.process(F.ParseValidate("bench"), output_type=F.STAGE_VALUE)
        stream = parsed.assign_timestamps_and_watermarks(
            WatermarkStrategy.for_bounded_out_of_orderness(Duration.of_millis(5000))
            .with_timestamp_assigner(F.EventTime()))
        for e in ENTITIES:
            stream = stream.key_by(F.EntityKey(e), key_type=Types.STRING()).process(
                Stage(len(features_for(e.name))), output_type=F.STAGE_VALUE)
        decisions = stream.map(lambda v: b"x" * 800, output_type=F.BYTES)
    decisions.sink_to(Sink(get_gateway().jvm.org.apache.flink.streaming.api.functions.sink.v2.DiscardingSink()))
    t0 = time.perf_counter()
    env.execute("riskstream-bench-core")
    return n / (time.perf_counter() - t0)
