"""Adapters for the decide stage of the JVM chain: the record Row type, the live control carried by
``io.riskstream.flink.ControlAttach`` (udfs/jvm), and the batched decide UDF (``udfs.decide_batch``) run
through the Table API, which is where PyFlink batches Python calls over Arrow, and the decision record
written in the JVM from the record Row and the UDF's verdict.

Pitfall: Java operators are inserted through the gateway (``_j_data_stream``) and wrapped back into
``pyflink.datastream.DataStream``; their output types must be Java TypeInformation built from the same
Python type, or ``union`` and the Table conversion see two different types.
"""

from __future__ import annotations

import orjson
from pyflink.common import Types
from pyflink.datastream import DataStream
from pyflink.java_gateway import get_gateway

from .chain import ROW_FIELDS
from .jvm import row_type
from .policy import Policy
from .split import BUCKETS

# the live control's settings (ControlAttach), and the record's bucket under the traffic split (udfs.split;
# -1 without a split or a key)
CONTROL_FIELDS = (("control_version", "BIGINT"), ("control", "STRING"), ("arm_bucket", "BIGINT"))
CONTROL_MESSAGE = Types.ROW_NAMED(["key", "raw"], [Types.STRING(), Types.STRING()])


def attach_control(records: DataStream, control: DataStream) -> DataStream:
    """Records + (control_version, control, arm_bucket) from the validated control messages (Row(key, raw);
    a split's canonical text, ``udfs.control.state_text``)."""
    gw = get_gateway()
    jvm = gw.jvm
    out = row_type(ROW_FIELDS + CONTROL_FIELDS)
    descriptors = gw.new_array(jvm.org.apache.flink.api.common.state.MapStateDescriptor, 1)  # varargs
    descriptors[0] = jvm.io.riskstream.flink.ControlAttach.STATE
    j = (records._j_data_stream
         .connect(control._j_data_stream.broadcast(descriptors))
         .process(jvm.io.riskstream.flink.ControlAttach(orjson.dumps([n for n, _ in ROW_FIELDS]).decode(), BUCKETS),
                  out.get_java_type_info()))
    return DataStream(j.name("control-attach").uid("control-attach"))


def decide(records: DataStream, model_path: str, policy: Policy, project_root: str | None,
           with_control: bool) -> DataStream:
    """Decision record bytes for every record: the verdicts computed in batches by the vectorized UDF over
    the columns it reads (``udfs.decide_batch.INPUT_FIELDS``), the records written in the JVM from the Row
    and its verdict (``io.riskstream.flink.DecisionAssemble``).

    Pitfall: only the UDF's arguments cross to the Python worker; the Row's other fields are forwarded by
    the Python operator on the JVM side, so the verdict must be selected after them."""
    from pyflink.datastream import StreamExecutionEnvironment
    from pyflink.table import StreamTableEnvironment
    from pyflink.table.expressions import col

    from .chain import writer_layout
    from .decide_batch import INPUT_FIELDS, decide_udf

    names = INPUT_FIELDS + (tuple(n for n, _ in CONTROL_FIELDS) if with_control else ())
    env = StreamExecutionEnvironment(records._j_data_stream.getExecutionEnvironment())
    t_env = StreamTableEnvironment.create(env)
    table = t_env.from_data_stream(records)
    fn = decide_udf(model_path, policy, project_root, names)
    record = [n for n, _ in ROW_FIELDS]
    result = t_env.to_data_stream(table.select(*(col(n) for n in record), fn(*(col(n) for n in names)).alias("verdict")))
    jvm = get_gateway().jvm
    assemble = jvm.io.riskstream.flink.DecisionAssemble(orjson.dumps(writer_layout()).decode(), policy.version)
    j = result._j_data_stream.map(assemble, Types.PRIMITIVE_ARRAY(Types.BYTE()).get_java_type_info())
    return DataStream(j.name("score-decide").uid("score-decide"))
