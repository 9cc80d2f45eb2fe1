"""Window aggregates as plug-ins: one class per aggregate, with the same name and shape as its JVM twin
(``udfs/jvm/src/main/java/io/riskstream/flink/aggregates/<Name>.java``).

A window is a run of buckets (``udfs.windows``): each bucket keeps one *accumulator* per slot (aggregate
family, input field, event-type filter), and a bucket leaves the window whole when it is too old to be read,
so an aggregate never subtracts. Its shape:

- ``initialize()``: a new bucket's empty accumulator;
- ``add(acc, value)``: one event's value folded in; returns the accumulator (the same object, or a new one
  for immutable ones such as a count);
- ``merge(accs)``: the window's accumulator from its buckets' (never changes them; that is how a bucketed
  window *expires*: what is not merged is gone);
- ``result(window)``: the feature's value, a float;
- ``encode(acc, out, strings)`` / ``decode(inp, strings)``: the accumulator in the JVM stage's state bytes
  (``KeyState``: varints, little-endian doubles); a string is written as its index in the key's string
  table ``strings`` (encode: a dict value -> index that the string joins on first sight; decode: a list).

A feature of the spec names its aggregate (``Feature.agg`` is the class's ``name``). Aggregates whose
``accumulator`` is the same share one accumulator per bucket for the same field and filter (``sum``,
``mean``, ``max``, ``min``: one ``[n, sum, max, min]``): they must then share ``initialize``, ``add``,
``merge``, ``encode`` and ``decode`` (subclass the family's base class). ``takes_field``: whether the
aggregate reads an input field (an event whose field is None feeds it nothing); ``params()``: constants the
JVM twin receives through the spec document (``udfs.chain.spec_document``, "aggregates").

Pitfalls: an accumulator lives in the Python stage's pickled state, so it must pickle (built-in types) and
its representation is part of that state's format; the JVM twin's bytes are the savepoint format of the JVM
stage (tests/keystate_golden.json pins them). Every method is a plain function (``staticmethod``): the window
code calls them per event and bucket. A new aggregate is a class here and its JVM twin, then a feature that
names it (docs/extending.md#add-an-aggregate).
"""

from __future__ import annotations

import math
import struct
from typing import Any, ClassVar

from . import hll

MISSING = -1.0  # the value of a mean / max / min over an empty window (a sum or a count is 0)
_DOUBLE = struct.Struct("<d")


class Aggregate:
    """Base of every window aggregate; a subclass with a ``name`` registers in :data:`AGGREGATES`."""

    name: ClassVar[str]  # Feature.agg
    accumulator: ClassVar[str]  # the family: aggregates of one family share an accumulator per slot
    takes_field: ClassVar[bool] = True

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if "name" not in cls.__dict__:  # a family's base class
            return
        if cls.name in AGGREGATES:
            raise ValueError(f"aggregate {cls.name!r} registered twice "
                             f"({AGGREGATES[cls.name].__name__}, {cls.__name__})")
        for other in AGGREGATES.values():
            if other.accumulator == cls.accumulator and any(
                    getattr(other, m) is not getattr(cls, m) for m in _SHARED):
                raise ValueError(f"aggregate {cls.name!r} shares the accumulator {cls.accumulator!r} with "
                                 f"{other.name!r} but not its methods ({', '.join(_SHARED)})")
        AGGREGATES[cls.name] = cls

    @staticmethod
    def initialize() -> Any:
        raise NotImplementedError

    @staticmethod
    def add(acc: Any, value: Any) -> Any:
        raise NotImplementedError

    @staticmethod
    def merge(accs: list) -> Any:
        raise NotImplementedError

    @staticmethod
    def result(window: Any) -> float:
        raise NotImplementedError

    @staticmethod
    def encode(acc: Any, out: bytearray, strings: dict[str, int]) -> None:
        raise NotImplementedError

    @staticmethod
    def decode(inp: "Reader", strings: list[str]) -> Any:
        raise NotImplementedError

    @classmethod
    def params(cls) -> dict:
        return {}

    @classmethod
    def document(cls) -> dict:
        """The aggregate as the spec document hands it to the JVM: its class, family, field and constants."""
        return {"class": cls.__name__, "accumulator": cls.accumulator, "takes_field": cls.takes_field,
                "params": cls.params()}


AGGREGATES: dict[str, type[Aggregate]] = {}
_SHARED = ("initialize", "add", "merge", "encode", "decode")


# -- the JVM state's primitives (KeyState.java) --------------------------------------------------------
def write_varint(out: bytearray, x: int) -> None:
    """An unsigned LEB128 varint (``x`` >= 0)."""
    while x > 0x7F:
        out.append((x & 0x7F) | 0x80)
        x >>= 7
    out.append(x)


def write_double(out: bytearray, x: float) -> None:
    out += _DOUBLE.pack(x)


class Reader:
    """A cursor over state bytes."""

    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes, pos: int = 0):
        self.buf, self.pos = buf, pos

    def byte(self) -> int:
        b = self.buf[self.pos]
        self.pos += 1
        return b

    def varint(self) -> int:
        x = shift = 0
        while True:
            c = self.buf[self.pos]
            self.pos += 1
            x |= (c & 0x7F) << shift
            if not c & 0x80:
                return x
            shift += 7

    def double(self) -> float:
        x = _DOUBLE.unpack_from(self.buf, self.pos)[0]
        self.pos += 8
        return x

    def take(self, n: int) -> bytes:
        b = self.buf[self.pos:self.pos + n]
        self.pos += n
        return b


# -- the built-in aggregates ---------------------------------------------------------------------------
class Count(Aggregate):
    """Events in the window (of the feature's event types). Accumulator: an int."""

    name = "count"
    accumulator = "count"
    takes_field = False

    @staticmethod
    def initialize() -> int:
        return 0

    @staticmethod
    def add(acc: int, value) -> int:
        return acc + 1

    merge = staticmethod(sum)

    @staticmethod
    def result(window: int) -> float:
        return float(window)

    @staticmethod
    def encode(acc: int, out: bytearray, strings) -> None:
        write_varint(out, acc)

    @staticmethod
    def decode(inp: Reader, strings) -> int:
        return inp.varint()


class Numeric(Aggregate):
    """The family of sum, mean, max and min of a numeric field: one ``[n, sum, max, min]`` per bucket."""

    accumulator = "numeric"

    @staticmethod
    def initialize() -> list:
        return [0, 0.0, -math.inf, math.inf]

    @staticmethod
    def add(acc: list, value) -> list:
        acc[0] += 1
        acc[1] += value
        if value > acc[2]:
            acc[2] = value
        if value < acc[3]:
            acc[3] = value
        return acc

    @staticmethod
    def merge(accs: list) -> list:
        n, s, mx, mn = 0, 0.0, -math.inf, math.inf
        for a in accs:  # in bucket order: the sum's rounding is the JVM's
            n += a[0]
            s += a[1]
            if a[2] > mx:
                mx = a[2]
            if a[3] < mn:
                mn = a[3]
        return [n, s, mx, mn]

    @staticmethod
    def encode(acc: list, out: bytearray, strings) -> None:
        write_varint(out, acc[0])
        if acc[0] > 0:
            out += _DOUBLE.pack(acc[1]) + _DOUBLE.pack(acc[2]) + _DOUBLE.pack(acc[3])

    @staticmethod
    def decode(inp: Reader, strings) -> list:
        n = inp.varint()
        if n == 0:
            return [0, 0.0, -math.inf, math.inf]
        return [n, inp.double(), inp.double(), inp.double()]

    @classmethod
    def params(cls) -> dict:
        return {"missing": MISSING}


class Sum(Numeric):
    name = "sum"

    @staticmethod
    def result(window: list) -> float:
        return float(window[1])  # 0.0 over an empty window


class Mean(Numeric):
    name = "mean"

    @staticmethod
    def result(window: list) -> float:
        return window[1] / window[0] if window[0] else MISSING


class Max(Numeric):
    name = "max"

    @staticmethod
    def result(window: list) -> float:
        return float(window[2]) if window[0] else MISSING


class Min(Numeric):
    name = "min"

    @staticmethod
    def result(window: list) -> float:
        return float(window[3]) if window[0] else MISSING


class Distinct(Aggregate):
    """Distinct values of a string field. A bucket keeps an exact set up to ``EXACT_UP_TO`` values, then a
    HyperLogLog sketch (``udfs.hll``, a bytearray); a window is exact while all its buckets are, else an
    estimate with ~2.3 % standard error (rounded half to even)."""

    name = "distinct"
    accumulator = "distinct"
    EXACT_UP_TO = 256

    @staticmethod
    def initialize() -> set:
        return set()

    @staticmethod
    def add(acc, value):
        if type(acc) is set:
            acc.add(value)
            if len(acc) > Distinct.EXACT_UP_TO:
                return hll.from_values(acc)
            return acc
        hll.add(acc, value)
        return acc

    @staticmethod
    def merge(accs: list):
        w = set()
        for a in accs:
            if type(a) is set:
                if type(w) is set:
                    w |= a
                else:
                    for x in a:
                        hll.add(w, x)
            else:
                if type(w) is set:
                    w = hll.from_values(w)
                hll.merge_into(w, a)
        return w

    @staticmethod
    def result(window) -> float:
        return float(len(window)) if type(window) is set else float(round(hll.estimate(window)))

    @staticmethod
    def encode(acc, out: bytearray, strings: dict[str, int]) -> None:
        if type(acc) is set:  # 2k, then k indices into the key's strings
            write_varint(out, 2 * len(acc))
            for v in acc:
                write_varint(out, strings.setdefault(v, len(strings)))
            return
        nz = [(i, r) for i, r in enumerate(acc) if r]
        if len(nz) * 3 < len(acc):  # sparse: 3 + 2m, then m (index, rank)
            write_varint(out, 3 + 2 * len(nz))
            for i, r in nz:
                write_varint(out, i)
                out.append(r)
        else:  # dense: 1, then the registers
            write_varint(out, 1)
            out += acc

    @staticmethod
    def decode(inp: Reader, strings: list[str]):
        tag = inp.varint()
        if tag & 1 == 0:
            return {strings[inp.varint()] for _ in range(tag >> 1)}
        if tag == 1:
            return bytearray(inp.take(hll.M))
        reg = hll.new()
        for _ in range((tag - 3) >> 1):
            i = inp.varint()
            reg[i] = inp.byte()
        return reg

    @classmethod
    def params(cls) -> dict:
        return {"exact_up_to": cls.EXACT_UP_TO, "hll_p": hll.P}


# -- plug-in aggregates (docs/extending.md#add-an-aggregate) -------------------------------------------


def spec_aggregates(aggs) -> dict[str, dict]:
    """The spec document's "aggregates": each window aggregate of ``aggs`` (names) as :meth:`Aggregate.document`."""
    return {a: AGGREGATES[a].document() for a in sorted(set(aggs)) if a in AGGREGATES}
