"""PyFlink adapter for the entity stages that run in the JVM (udfs/jvm, ``io.riskstream.flink``).

The Java ``EntityWindowsFunction`` interprets the spec document (``udfs.chain.spec_document``) with the
Python semantics of ``udfs.chain.EntityStep`` (which stays the reference: replay and training run it).
Between JVM stages the record is a typed Row (``udfs.chain.ROW_FIELDS``): extras as JSON text, values and
signals as DOUBLE[] (signals in ``features.SIGNALS`` order, NaN for a signal no stage set, null when the
job reads no labels), the graph context as BYTES (null but between the user and the link stage of a spec
with graph features: ``io.riskstream.flink.graph.GraphContext``). :func:`to_row` / :func:`from_row` convert a ``udfs.chain`` record to that Row and back.

The jar must be on the job's ``pipeline.jars``; :func:`entity_stage` also loads it into the client's class
loader from there when the classes are not visible yet.
"""

from __future__ import annotations

import math

import orjson
from pyflink.common import Row, Types
from pyflink.datastream import DataStream

from .chain import ARRIVED, EVENT_FIELDS, LATE, N_EVENT, ROW_FIELDS, SIGNALS, VALUES, Record, key_index
from .features import SIGNALS as SIGNAL_NAMES
from .features import Entity

_EXTRAS = EVENT_FIELDS.index("extras")
_TYPES = {
    "STRING": Types.STRING, "JSON": Types.STRING, "DOUBLE": Types.DOUBLE, "BIGINT": Types.LONG,
    "BOOLEAN": Types.BOOLEAN, "DOUBLE[]": lambda: Types.PRIMITIVE_ARRAY(Types.DOUBLE()),
    "BYTES": lambda: Types.PRIMITIVE_ARRAY(Types.BYTE()),
}


def row_type(fields: tuple[tuple[str, str], ...] = ROW_FIELDS):
    """The named Row type of ``fields`` ((name, type) pairs as in ``udfs.chain.ROW_FIELDS``)."""
    return Types.ROW_NAMED([n for n, _ in fields], [_TYPES[t]() for _, t in fields])


def record_type_info():
    """The chain record as a named Row type (``udfs.chain.ROW_FIELDS``)."""
    return row_type(ROW_FIELDS)


def to_row(rec: Record) -> Row:
    """A ``udfs.chain`` record (``pack``) as the stage Row."""
    fields = list(rec[:N_EVENT])
    if fields[_EXTRAS] is not None:
        fields[_EXTRAS] = orjson.dumps(fields[_EXTRAS]).decode()
    sig = rec[SIGNALS]
    signals = None if sig is None else [float(sig.get(n, math.nan)) for n in SIGNAL_NAMES]
    # No values yet travel as null: in thread mode PyFlink 2.2 hands a Python operator's DOUBLE[] field to the
    # JVM as Object[] (a ClassCastException in the Row serializer), so a Row a Python operator emits must not
    # carry one. The JVM stages read null as "none yet".
    values = [float(v) for v in rec[VALUES]] or None
    # graph: a record entering the chain carries no graph context (the user stage starts it)
    return Row(*fields, values, bool(rec[LATE]), signals, rec[ARRIVED], None)


def from_row(row) -> Record:
    """The stage Row back as a ``udfs.chain`` record (NaN signals are absent ones)."""
    fields = list(row)
    ev = fields[:N_EVENT]
    if ev[_EXTRAS] is not None:
        ev[_EXTRAS] = orjson.loads(ev[_EXTRAS])
    sig = fields[SIGNALS]
    signals = None
    if sig is not None:
        signals = {n: float(v) for n, v in zip(SIGNAL_NAMES, sig) if not math.isnan(v)}
    return (*ev, [float(v) for v in (fields[VALUES] or [])], bool(fields[LATE]), signals, fields[ARRIVED])


def _jvm_package(stream: DataStream):
    """``io.riskstream.flink`` through the gateway, loading the env's ``pipeline.jars`` when needed."""
    from pyflink.java_gateway import get_gateway
    from pyflink.util.java_utils import add_jars_to_context_class_loader

    pkg = get_gateway().jvm.io.riskstream.flink
    try:
        pkg.RecordKey(0)
    except TypeError:  # py4j hands a JavaPackage for a class it cannot load
        conf = stream._j_data_stream.getExecutionEnvironment().getConfiguration().toMap()
        jars = [j for j in (conf.get("pipeline.jars") or "").split(";") if j]
        add_jars_to_context_class_loader(jars)
        pkg = get_gateway().jvm.io.riskstream.flink
    return pkg


def entity_stage(stream: DataStream, entity: Entity, spec_json: str, dedup_horizon_ms: int, labels: bool,
                 job_name: str, forward_labels: bool = False) -> DataStream:
    """The entity's keyed stage in the JVM: ``stream`` (Rows of :func:`record_type_info`) keyed by the
    entity's key field (``""`` for keyless events), the Java ``EntityWindowsFunction`` appending the
    entity's values (with graph features in the spec, its graph values too); the graph link stage
    (``entity.graph == "link"``) is the Java ``GraphLinkFunction``. Its dead letters come out of
    ``get_side_output(udfs.flink.DEAD_LETTER_TAG)``. ``forward_labels`` (tests): the stage passes label
    records on after folding them (``EntityWindowsFunction.withLabelsForwarded``)."""
    pkg = _jvm_package(stream)
    j_key = pkg.RecordKey(key_index(entity))
    if entity.graph == "link":  # the graph features' link stage (keyed by user): graph state only, no windows
        j_fn = pkg.GraphLinkFunction(spec_json, entity.name, job_name)
    else:
        j_fn = pkg.EntityWindowsFunction(spec_json, entity.name, int(dedup_horizon_ms), bool(labels), job_name)
        if forward_labels:
            j_fn = j_fn.withLabelsForwarded()
    j_out = (stream._j_data_stream
             .keyBy(j_key, Types.STRING().get_java_type_info())
             .process(j_fn, record_type_info().get_java_type_info()))
    # another uid than the Python stage's: its state (a pickled dict under the same state name and type)
    # must never be restored into this operator; Flink refuses a savepoint whose state maps to no uid
    return DataStream(j_out).name(f"{entity.name}-windows").uid(f"{entity.name}-windows-jvm")


def event_time(stream: DataStream, out_of_orderness_ms: int, idleness_ms: int,
               max_future_skew_ms: int = 60_000) -> DataStream:
    """Event-time timestamps and bounded-out-of-orderness watermarks on record Rows, in the JVM
    (``io.riskstream.flink.RecordTimestamps``: ``ts`` clamped to the wall clock plus ``max_future_skew_ms``,
    as ``udfs.flink.EventTime``), named and uid'd "event-time" like the Python path."""
    from pyflink.java_gateway import get_gateway

    jvm = get_gateway().jvm
    pkg = _jvm_package(stream)
    duration = jvm.java.time.Duration
    strategy = (jvm.org.apache.flink.api.common.eventtime.WatermarkStrategy
                .forBoundedOutOfOrderness(duration.ofMillis(out_of_orderness_ms))
                .withTimestampAssigner(pkg.RecordTimestamps(EVENT_FIELDS.index("ts"), max_future_skew_ms))
                .withIdleness(duration.ofMillis(idleness_ms)))
    return DataStream(stream._j_data_stream.assignTimestampsAndWatermarks(strategy)).name("event-time").uid("event-time")


def side_output(stream: DataStream, tag) -> DataStream:
    """A JVM operator's side output as a DataStream without PyFlink's Python re-typing map (``tag``: a
    pyflink OutputTag whose Java tag equals the operator's: same id and type)."""
    return DataStream(stream._j_data_stream.getSideOutput(tag.get_java_output_tag()))


__all__ = ["entity_stage", "event_time", "from_row", "record_type_info", "row_type", "side_output", "to_row"]
