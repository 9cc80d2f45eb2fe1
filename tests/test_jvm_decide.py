"""The batched decide stage on a MiniCluster: record Rows in, the same decision records as the per-row
Decider out, every record decided once."""

from __future__ import annotations

import orjson
import pytest
from pyflink.common import Row

from riskstream.config import JobConfig
from riskstream.generator import TrafficGenerator
from udfs.chain import Chain, Decider
from udfs.control import Control
from udfs.events import Event
from udfs.policy import Policy
from udfs.scoring import Scorer

pytestmark = pytest.mark.flink


def test_batched_decide_stage_equals_the_per_row_decider(tmp_path):
    from pyflink.common import Types
    from pyflink.common.serialization import Encoder
    from pyflink.datastream.connectors.file_system import FileSink

    from pipelines import decision_job
    from udfs import jvm_decide

    evs = [Event(**r.event) for r in TrafficGenerator(seed=8).generate(3000)]
    chain, staged = Chain(), []
    for ev in evs:
        res = chain.process(ev)
        if res is not None:
            staged.append((ev, *res))
    def arrival(k: int, ev: Event) -> int | None:  # the broker arrival time, unknown for every fourth row
        return None if k % 4 == 3 else ev.ts + 500 + k

    # graph: the graph context field, null after the link stage; bytes on some rows, which the decide
    # stage ignores
    rows = [Row(*ev[:8], orjson.dumps(ev.extras).decode() if ev.extras else None, *ev[9:], vals, late, None,
                arrival(k, ev), b"\x01\x00\x00" if k % 5 == 1 else None) for k, (ev, vals, late, _) in enumerate(staged)]
    env = decision_job.make_env(JobConfig(parallelism=2, checkpoint_interval_ms=500))
    records = env.from_collection(rows, type_info=jvm_decide.row_type())
    out = jvm_decide.decide(records, "models/risk_gbdt_v1.onnx", Policy(), None, with_control=False)
    (out.map(lambda b: bytes(b).decode("utf-8"), output_type=Types.STRING())
     .sink_to(FileSink.for_row_format(str(tmp_path / "out"), Encoder.simple_string_encoder()).build()))
    env.execute("decide-batch-test")
    import os

    # the Python worker ran in its own process (tests/conftest.py): this process's environment is clean
    assert "PYFLINK_GATEWAY_DISABLED" not in os.environ
    got = {}
    for f in (tmp_path / "out").rglob("*"):
        if f.is_file() and not f.name.startswith("."):
            for line in f.read_bytes().splitlines():
                d = orjson.loads(line)
                assert d["event_id"] not in got
                got[d["event_id"]] = d
    ref = Decider(Control.initial(Scorer("models/risk_gbdt_v1.onnx"), Policy()))
    assert len(got) == len(staged)
    for k, (ev, vals, late, sig) in enumerate(staged):
        want = orjson.loads(ref.decide(ev, vals, late, sig, 0, arrived_at=arrival(k, ev))[1])
        assert want.get("arrived_at") == arrival(k, ev)
        g = dict(got[ev.event_id])
        for d in (g, want):
            d.pop("decided_at")
        assert g["score"] is not None, g.get("error")
        assert abs(g.pop("score") - want.pop("score")) <= 1e-6
        assert g == want
