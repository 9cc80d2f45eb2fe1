"""The parse-validate stage in the JVM: ``io.riskstream.flink.ParseEventFunction`` (udfs/jvm) in place of
the Python :class:`udfs.flink.ParseValidate` (~10 µs instead of ~116 µs per event).

:func:`udfs.events.parse_event` stays the definition: the Java ``EventParser`` gives the same reason codes
(tests/test_jvm_parse.py holds it to the bad-input corpus and the oracle fuzz) and reads the contract's
constants from :func:`udfs.events.contract_json` and the Row layout from :data:`udfs.chain.ROW_FIELDS`.

The stage emits the stage record as a typed Row (``chain.ROW_FIELDS``: event fields, extras as JSON text,
then ``values`` = empty, ``late`` = false, ``signals`` = null, ``arrived_at`` = the element's timestamp, a
Kafka source's record timestamp, or null) and dead letters with the exact original bytes on the side output
:data:`udfs.flink.DEAD_LETTER_TAG` ("dead-letter", byte[]).

The jar (``udfs/jvm/target/riskstream-jvm.jar``) must be on the job's classpath (``env.add_jars``) and, for
building the plan through the gateway, on its context class loader: :func:`use_jar` does both.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Iterable

from .chain import ROW_FIELDS
from .events import Event, Rejection, contract_json

JAVA_PACKAGE = "io.riskstream.flink"
STAGE_NAME = "parse-validate"


def layout_json() -> str:
    """The Row layout handed to Java: ``chain.ROW_FIELDS`` as a JSON list of [name, type]."""
    return json.dumps([list(f) for f in ROW_FIELDS])


def use_jar(jar: str | Path, env=None) -> None:
    """Make the JVM module's classes loadable: the gateway's context class loader (to build the plan and to
    call the parser directly) and, given ``env``, the job's jars."""
    from pyflink.util.java_utils import add_jars_to_context_class_loader

    uri = Path(jar).resolve().as_uri()
    add_jars_to_context_class_loader([uri])
    if env is not None:
        env.add_jars(uri)


def _jvm_package():
    from pyflink.java_gateway import get_gateway

    pkg = get_gateway().jvm
    for part in JAVA_PACKAGE.split("."):
        pkg = getattr(pkg, part)
    return pkg


def parse_function(job_name: str):
    """A Java ``ParseEventFunction`` for this contract and Row layout."""
    return _jvm_package().ParseEventFunction(contract_json(), job_name, layout_json())


def parse_stage(raw, job_name: str, chaos_dir: str | None = None):
    """``raw`` (a DataStream of record bytes) -> the parsed stage records (typed Rows), dead letters on the
    side output ``udfs.flink.DEAD_LETTER_TAG`` (:func:`dead_letters`). Named and uid'd "parse-validate", like
    the Python stage. ``chaos_dir`` replaces the environment's RISKSTREAM_CHAOS_DIR (tests)."""
    from pyflink.datastream import DataStream

    fn = parse_function(job_name)
    if chaos_dir is not None:
        fn = fn.withChaosDir(str(chaos_dir))
    j_stream = raw._j_data_stream.process(fn, fn.getProducedType())
    return DataStream(j_stream).name(STAGE_NAME).uid(STAGE_NAME)


def dead_letters(parsed):
    """The stage's dead letters (byte[] JSON) straight from the JVM side output. (PyFlink's
    ``get_side_output`` adds a Python identity map to re-type the stream; this one stays in the JVM.)"""
    from pyflink.datastream import DataStream

    return DataStream(parsed._j_data_stream.getSideOutput(_jvm_package().ParseEventFunction.deadLetterTag()))


# -- the pure parser, called directly (tests, benchmarks) ---------------------------------------------
def frame_records(raws: Iterable[bytes]) -> bytes:
    """Records as one byte string for one gateway call: per record a 4-byte big-endian length, its bytes."""
    return b"".join(struct.pack(">I", len(r)) + r for r in raws)


class JavaParser:
    """The Java ``EventParser`` called from Python, many records per gateway call. :meth:`parse_many` gives
    per record an :class:`Event` (as ``parse_event`` would return it: extras parsed back from their JSON
    text) or a :class:`Rejection`; :meth:`rows` the raw Row fields."""

    def __init__(self):
        self._j = _jvm_package().EventParser(contract_json(), layout_json())
        self.n_event = len(Event._fields)

    def _call(self, raws: list[bytes], batch_bytes: int = 4 << 20) -> list[dict]:
        out: list[dict] = []
        batch: list[bytes] = []
        size = 0
        for r in raws:
            batch.append(r)
            size += len(r) + 4
            if size >= batch_bytes:
                out += json.loads(self._j.parseFramedToJson(frame_records(batch)))
                batch, size = [], 0
        if batch:
            out += json.loads(self._j.parseFramedToJson(frame_records(batch)))
        return out

    def rows(self, raws: list[bytes]) -> list[list | Rejection]:
        """Per record the Row's fields (a list, in ROW_FIELDS order) or a Rejection."""
        return [Rejection(r["reason"], r["detail"]) if "reason" in r else r["row"] for r in self._call(raws)]

    def parse_many(self, raws: list[bytes]) -> list[Event | Rejection]:
        out: list[Event | Rejection] = []
        for r in self.rows(raws):
            if isinstance(r, Rejection):
                out.append(r)
                continue
            fields = dict(zip((name for name, _ in ROW_FIELDS), r))
            if fields.get("extras") is not None:
                fields["extras"] = json.loads(fields["extras"])
            out.append(Event(**{name: fields[name] for name in Event._fields}))
        return out

    def parse(self, raw: bytes) -> Event | Rejection:
        return self.parse_many([raw])[0]

    def benchmark(self, raws: list[bytes], rounds: int = 3) -> tuple[float, int]:
        """(µs per record, events among them) for the Java parser alone, timed in the JVM."""
        ns, events = map(int, str(self._j.benchmark(frame_records(raws), rounds)).split(","))
        return ns / 1000 / (rounds * len(raws)), events

    @staticmethod
    def dead_letter_record(raw: bytes, reason: str, detail: str, job: str, dead_at_ms: int) -> bytes:
        return bytes(_jvm_package().EventParser.deadLetterRecord(raw, reason, detail, job, dead_at_ms))

    @staticmethod
    def python_whitespace() -> list[int]:
        return list(_jvm_package().EventParser.pythonWhitespace())
