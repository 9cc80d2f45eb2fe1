"""The JVM entity stages (udfs/jvm, udfs/jvm.py) against the Python reference (udfs.chain.Chain): the same
records through the four Java stages on a MiniCluster give exactly the same feature values, late flags,
signals and duplicate dead letters, at parallelism 1 and 2, on the heap and on RocksDB. Plus the BLAKE2b-64
and HyperLogLog parity of the Java code with udfs/hll.py, called through the gateway."""

from __future__ import annotations

import base64
import json
import math
import random

import orjson
import pytest

from tests.oracle import label_of
from udfs.chain import Chain, arrived_at, label_record, pack, unpack
from udfs.events import Event, encode_event
from udfs.features import BUCKET_MS, ENTITIES, ENTITY_BY_NAME, features_for
from udfs.chain import spec_document
from udfs.windows import retention_ms

pytestmark = pytest.mark.flink

LATENESS = 60_000
DEDUP = 600_000
HOUR = 3_600_000


@pytest.fixture(scope="module")
def jvm():
    """``io.riskstream.flink`` through the gateway, with the freshly built jar."""
    from pyflink.java_gateway import get_gateway
    from pyflink.util.java_utils import add_jars_to_context_class_loader

    from tests.jvm_jar import build_jar

    jar = build_jar()
    add_jars_to_context_class_loader([jar.as_uri()])
    return jar, get_gateway().jvm.io.riskstream.flink


# -- pure Java parity (fast) ---------------------------------------------------------------------------
def test_blake2b64_and_hll_match_python(jvm):
    from hashlib import blake2b

    from udfs import hll

    _, J = jvm
    rnd = random.Random(7)
    strs = ["", "a", "é", "日本語", "😀x", "x" * 127, "y" * 128, "z" * 129, "w" * 300, "a\ud800b", "\udfff"]
    for _ in range(2000):  # ASCII, BMP without surrogates, astral planes; lengths across block edges
        strs.append("".join(chr(rnd.choice([rnd.randrange(32, 127), rnd.randrange(0xa0, 0xd800),
                                            rnd.randrange(0xe000, 0x110000)])) for _ in range(rnd.randrange(300))))
    got = json.loads(J.LocalRunner.blakeMany(json.dumps(strs)))
    want = [str(int.from_bytes(blake2b(s.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big"))
            for s in strs]
    assert got == want
    for n in (0, 1, 10, 257, 1000, 3000, 20000, 200000):
        vals = [f"v{i}-{rnd.random()}" for i in range(n)]
        reg = hll.from_values(vals)
        assert bytes(J.LocalRunner.hllRegisters(json.dumps(vals))) == bytes(reg), n
        assert J.LocalRunner.hllEstimate(reg) == hll.estimate(reg), n
    # the linear-counting branch, M * log(M / zeros), for every zeros count: Java's Math.log and the C
    # library's log (Python's math.log) may differ by one ulp on a few inputs; the feature is the estimate
    # rounded to an integer, which is the same for all of them
    logs = json.loads(J.LocalRunner.logs())
    ulp_diffs = [z for z in range(1, hll.M + 1) if logs[z - 1] != hll.M * math.log(hll.M / z)]
    assert len(ulp_diffs) <= 8, ulp_diffs
    for z in ulp_diffs:
        assert abs(logs[z - 1] - hll.M * math.log(hll.M / z)) <= 2 * math.ulp(logs[z - 1])
        assert round(logs[z - 1]) == round(hll.M * math.log(hll.M / z))


def test_record_layout_comes_from_the_spec_document(jvm):
    """The Java stage reads the record's layout from the spec (no field position is hard-coded there), and
    refuses a spec that lacks it."""
    import orjson
    from py4j.java_gateway import get_field

    from udfs.chain import ROW_FIELDS

    _, J = jvm
    doc = spec_document(60_000)
    spec = J.EntitySpec.parse(orjson.dumps(doc).decode(), "payment")
    assert list(get_field(spec, "recordFields")) == [n for n, _ in ROW_FIELDS]
    assert get_field(spec, "keyIndex") == [n for n, _ in ROW_FIELDS].index("payment_ref")
    with pytest.raises(Exception, match="record_fields"):
        J.EntitySpec.parse(orjson.dumps({k: v for k, v in doc.items() if k != "record_fields"}).decode(), "user")


# -- the test stream -----------------------------------------------------------------------------------
def _stream() -> list[Event]:
    """Generator traffic plus: swapped neighbours (out of order), late copies (lateness exceeded),
    duplicate event ids, a device/ip/card shared by 1000 users within 10 minutes (HyperLogLog buckets),
    and, at the end, keys coming back more than the longest retention (30 d + lateness) later (fresh state)."""
    from riskstream.generator import TrafficGenerator

    evs = [Event(**r.event) for r in TrafficGenerator(seed=21).generate(2500) if r.event is not None]
    rnd = random.Random(4)
    out: list[Event] = []
    for i, e in enumerate(evs):
        out.append(e)
        if i % 40 == 7:  # a late copy: 5 minutes behind its key
            out.append(e._replace(event_id=f"late-{i}", ts=e.ts - 300_000))
        if i % 53 == 11 and i > 20:  # a duplicate of a recent event (same id, same user)
            out.append(evs[i - rnd.randrange(1, 15)])
        if i == len(evs) // 2:  # 1000 users on one device, one ip and one card within 10 minutes
            for k in range(1000):
                typ = "payment" if k % 2 else "login"
                out.append(Event(f"hll-{k}", typ, f"hu-{k}", "dev-shared", "10.9.9.9", 10.0 + k % 7, "EUR",
                                 e.ts + k * 600, None, "card-shared" if typ == "payment" else None))
    for i in range(1, len(out) - 1, 9):  # out of order: swap neighbours
        out[i], out[i + 1] = out[i + 1], out[i]
    last = max(e.ts for e in out)
    seen: dict[str, Event] = {}
    for e in evs:
        seen.setdefault(e.user_id, e)
    back = max(retention_ms(e.name, LATENESS) for e in ENTITIES) + HOUR
    for k, e in enumerate(list(seen.values())[:60]):  # keys back after the longest retention
        out.append(e._replace(event_id=f"again-{k}", ts=last + back + k * 1000))
    return out


def _expected(records: list, label_signals: bool, entities=ENTITIES, features=None):
    ch = Chain(LATENESS, DEDUP, entities=entities, label_signals=label_signals, features=features)
    out, dups = {}, []
    for kind, x in records:
        if kind == "label":
            ch.label(label_of(*x))
            continue
        res = ch.process(x)
        if res is None:
            dups.append(x)
        else:
            assert x.event_id not in out, x  # the test streams resend ids only within the dedup horizon
            out[x.event_id] = res
    return out, dups


def _arrival(ev) -> int | None:
    """A broker arrival time for an event's record (none for every third event time)."""
    return None if ev.ts % 3 == 0 else ev.ts + 1_234


def _run(jar, records: list, parallelism: int, tmp_path, entities=ENTITIES, labels=False, extra=None):
    """records: ("event", Event) | ("label", label args) -> ({event_id: (values, late, signals)}, dead letters).
    Each event's record carries ``_arrival(ev)`` as arrived_at; every stage must pass it through unchanged."""
    from pyflink.common import Duration, Types, WatermarkStrategy
    from pyflink.common.serialization import Encoder
    from pyflink.datastream.connectors.file_system import FileSink

    from pipelines import decision_job
    from riskstream.config import JobConfig
    from riskstream.ops.jars import flink_jar_urls
    from udfs import jvm
    from udfs.flink import DEAD_LETTER_TAG, EventTime

    cfg = JobConfig(parallelism=parallelism, checkpoint_interval_ms=500, checkpoint_dir=(tmp_path / "chk").as_uri())
    env = decision_job.make_env(cfg, extra={"pipeline.jars": ";".join(flink_jar_urls(cfg.jars_dir) + [jar.as_uri()]),
                                            **(extra or {})})
    env.set_parallelism(1)  # source and event time in one subtask: each key's events keep their order
    rows = [jvm.to_row(pack(x, arrived_at=_arrival(x)) if kind == "event" else label_record(label_of(*x)))
            for kind, x in records]
    stream = (env.from_collection(rows, type_info=jvm.record_type_info())
              .assign_timestamps_and_watermarks(
                  WatermarkStrategy.for_bounded_out_of_orderness(Duration.of_millis(5000))
                  .with_timestamp_assigner(EventTime())))
    env.set_parallelism(parallelism)
    spec = orjson.dumps(spec_document(LATENESS)).decode()
    dead = None
    for e in entities:
        stream = jvm.entity_stage(stream, e, spec, DEDUP, labels, "jvm-test")
        d = stream.get_side_output(DEAD_LETTER_TAG)
        dead = d if dead is None else dead.union(d)

    def show(row):
        rec = jvm.from_row(row)
        _, values, late, signals = unpack(rec)
        return orjson.dumps({"event_id": rec[0], "values": values, "late": late, "signals": signals,
                             "arrived_at": arrived_at(rec)}).decode()

    (stream.map(show, output_type=Types.STRING())
     .union(dead.map(lambda b: "D" + bytes(b).decode("utf-8"), output_type=Types.STRING()))
     .sink_to(FileSink.for_row_format(str(tmp_path / "out"), Encoder.simple_string_encoder()).build()))
    env.execute("jvm-windows-test")
    got, dead_letters = {}, []
    arrival = {}
    for kind, x in records:
        if kind == "event":
            arrival.setdefault(x.event_id, _arrival(x))
    for f in sorted((tmp_path / "out").rglob("*")):
        if f.is_file():
            for line in f.read_text().splitlines():
                if line.startswith("D"):
                    dead_letters.append(orjson.loads(line[1:]))
                else:
                    o = orjson.loads(line)
                    assert o["event_id"] not in got
                    assert o["arrived_at"] == arrival[o["event_id"]], o  # passed through, null included
                    got[o["event_id"]] = (o["values"], o["late"], o["signals"])
    assert {arrival[e] is None for e in got} == {True, False}
    return got, dead_letters


@pytest.mark.parametrize("parallelism,backend", [(1, "hashmap"), (2, "hashmap"), (1, "rocksdb")])
def test_jvm_stages_match_python_chain(jvm, tmp_path, parallelism, backend):
    jar, _ = jvm
    events = _stream()
    records = [("event", e) for e in events]
    # a few labels on the way: the stages without labels drop them (no output, no state)
    records[100:100] = [("label", (events[50].event_id, events[50].user_id, events[50].device_id, events[50].ts,
                                   "fraud"))]
    want, dups = _expected([r for r in records if r[0] == "event"], label_signals=False)
    # a record that makes a stage raise (an event type the spec does not know): a processing_error dead
    # letter, and the job goes on
    bad = events[300]._replace(event_id="bad-type", event_type="teleport")
    records[300:300] = [("event", bad)]
    got, dead = _run(jar, records, parallelism, tmp_path, extra={"state.backend.type": backend})

    errors = [d for d in dead if d["reason"] == "processing_error"]
    assert len(errors) == 1 and errors[0]["detail"].startswith("user stage: IllegalArgumentException")
    assert base64.b64decode(errors[0]["original_b64"]) == encode_event(bad)
    dead = [d for d in dead if d["reason"] != "processing_error"]
    assert len(dups) > 20 and set(want) == set(got)
    assert sorted(d["original_reencoded"] and d["reason"] for d in dead) == ["duplicate_event_id"] * len(dups)
    first = {}
    for e in events:
        first.setdefault(e.event_id, e)
    for d in dead:  # the re-encoded event is byte-identical with udfs.events.encode_event
        raw = base64.b64decode(d["original_b64"])
        assert raw == encode_event(first[orjson.loads(raw)["event_id"]]) and d["original_size"] == len(raw)
        assert d["job"] == "jvm-test" and d["detail"] == f"event_id seen for this user within {DEDUP} ms"

    names = {e.name: len(features_for(e.name)) for e in ENTITIES}
    offs, o = {}, 0
    for e in ENTITIES:
        offs[e.name] = (o, o + names[e.name])
        o += names[e.name]
    # Arrival order at a keyed stage is deterministic at p=1, or when all the key's events travel one path
    # (the same keys upstream); keyless payment events read empty windows whatever the order.
    key_of = {e.name: ENTITY_BY_NAME[e.name].key_field for e in ENTITIES}
    upstream: dict[str, dict] = {e.name: {} for e in ENTITIES}
    valid, ids = [], set()
    for e in events:  # each event once (a duplicate repeats the first occurrence's tuple)
        if e.event_id not in ids:
            ids.add(e.event_id)
            valid.append(e)
    for ev in valid:
        path = ()
        for ent in ENTITIES:
            k = getattr(ev, ent.key_field)
            upstream[ent.name].setdefault(k, set()).add(path)
            path = path + (k,)
    compared = {e.name: 0 for e in ENTITIES}
    late_seen = hll_seen = again_seen = keyless = 0
    for ev in valid:
        values, late, signals = got[ev.event_id]
        w_values, w_late, w_signals = want[ev.event_id]
        all_det = True
        for ent in ENTITIES:
            k = getattr(ev, ent.key_field)
            det = parallelism == 1 or k is None or len(upstream[ent.name][k]) == 1
            all_det = all_det and det
            if det:
                a, b = offs[ent.name]
                assert values[a:b] == w_values[a:b], (ent.name, ev)  # exactly equal, not approximately
                compared[ent.name] += 1
        if all_det:
            assert late == w_late, ev
            late_seen += late
        assert signals is None and w_signals is None
        keyless += ev.payment_ref is None
        again_seen += ev.event_id.startswith("again-")
        hll_seen += ev.event_id.startswith("hll-")
    assert all(n > len(valid) // 3 for n in compared.values()), compared
    assert keyless and again_seen == 60
    # the returning keys started afresh in every stage (no age carried over the expiry)
    ages = [(i, f.entity) for i, f in enumerate(f for e in ENTITIES for f in features_for(e.name)) if f.agg == "age"]
    for ev in valid:
        if ev.event_id.startswith("again-"):  # a keyless event of an optional entity reads -1 (no key, no age)
            assert [got[ev.event_id][0][i] for i, _ in ages] == [
                -1.0 if getattr(ev, ENTITY_BY_NAME[ent].key_field) is None else 0.0 for _, ent in ages], ev
    if parallelism == 1:
        assert late_seen > 20 and hll_seen == 1000
        a, _ = offs["device"]
        dev = [want[f"hll-{k}"][0][a:offs["device"][1]] for k in range(1000)]
        names_d = [f.name for f in features_for("device")]
        assert dev[-1][names_d.index("device_distinct_users_24h")] not in (0.0, 1000.0)  # an estimate
        assert dev[-1][names_d.index("device_distinct_users_1h")] == 1000.0  # every 2-min bucket exact


@pytest.mark.parametrize("parallelism", [1, 2])
def test_jvm_labels_match_python(jvm, tmp_path, parallelism):
    """The label-signal entity (device) folds labels into known-fraud users and emits the signal."""
    jar, _ = jvm
    events, ids = [], set()
    for e in _stream()[:1500]:  # no duplicate ids here: only the user stage drops them
        if e.event_id not in ids:
            ids.add(e.event_id)
            events.append(e)
    records: list = []
    rnd = random.Random(9)
    for i, e in enumerate(events):
        records.append(("event", e))
        if i % 7 == 3:  # a fraud label for an earlier event, then sometimes a legit one for the same user
            x = events[rnd.randrange(0, i + 1)]
            records.append(("label", (x.event_id, x.user_id, x.device_id, x.ts, "fraud")))
            if i % 21 == 3:
                records.append(("label", (x.event_id, x.user_id, x.device_id, x.ts, "legit")))
    device = (ENTITY_BY_NAME["device"],)
    want, _ = _expected(records, label_signals=True, entities=device)
    got, dead = _run(jar, records, parallelism, tmp_path, entities=device, labels=True)
    assert set(got) == set(want) and not dead
    positive = 0
    for eid, (values, late, signals) in got.items():
        assert (values, late, signals) == (want[eid][0], want[eid][1], want[eid][2]), eid
        positive += signals["device_known_fraud_users_7d"] > 0
    assert positive > 50


# -- label features: every entity, labels arriving days late, out of order, legit overriding fraud -------
def _labelled_records() -> list:
    """Ten days of generator traffic plus a hot device, ip and card, with labels for its fraud
    and for some normal events, arriving 1-14 days after their event (so out of event-time order), the
    normal events' fraud labels overridden by a later legit one, most naming the event's ip and payment instrument."""
    from riskstream.generator import TrafficGenerator

    evs, ids = [], set()
    for r in TrafficGenerator(seed=23, sim_rate=0.003).generate(2500):
        if r.event is not None and r.event["event_id"] not in ids:
            ids.add(r.event["event_id"])
            evs.append((Event(**r.event), r.label["fraud"]))
    rnd = random.Random(3)
    day = 24 * HOUR
    # a hot device, ip and card shared by five users, every ~40 minutes over the span, a fifth labelled fraud
    t0, t1 = evs[0][0].ts, evs[-1][0].ts
    for i in range(0, (t1 - t0) // 2_400_000):
        typ = "payment" if i % 3 else "login"
        evs.append((Event(f"hot-{i}", typ, f"hu{i % 5}", "dev-hot", "10.1.1.1", 4.0 + i % 9, "EUR",
                          t0 + i * 2_400_000 + rnd.randrange(60_000), None, "card-hot" if typ == "payment" else None),
                    rnd.random() < 0.2))
    evs.sort(key=lambda x: x[0].ts)
    pending = []
    for e, fraud in evs:
        if fraud or rnd.random() < 0.15:
            named = rnd.random() < 0.7
            args = (e.event_id, e.user_id, e.device_id, e.ts, "fraud", e.ip if named else None,
                    e.payment_ref if named else None)
            arr = e.ts + rnd.randrange(day, 14 * day)
            pending.append((arr, args))
            if not fraud:  # a mistaken fraud label, corrected later
                pending.append((arr + rnd.randrange(1, 2 * day), args[:4] + ("legit",) + args[5:]))
    pending.sort(key=lambda x: x[0])
    records, j = [], 0
    for e, _ in evs:
        while j < len(pending) and pending[j][0] <= e.ts:
            records.append(("label", pending[j][1]))
            j += 1
        records.append(("event", e))
    return records


def _run_branches(jar, records: list, parallelism: int, tmp_path, extra=None, features=None,
                  entities=ENTITIES) -> dict:
    """Each entity's JVM stage on its own branch of one source holding events and labels in order (a
    keyed exchange keeps each key's order), labels on: {entity: {event_id: (values, late, signals)}}.
    ``extra``: more Flink settings (a savepoint to restore); ``features``: the feature spec the stages get
    (default ``udfs.features.FEATURES``)."""
    from pyflink.common import Duration, Types, WatermarkStrategy
    from pyflink.common.serialization import Encoder
    from pyflink.datastream.connectors.file_system import FileSink

    from pipelines import decision_job
    from riskstream.config import JobConfig
    from riskstream.ops.jars import flink_jar_urls
    from udfs import jvm
    from udfs.flink import EventTime

    cfg = JobConfig(parallelism=parallelism, checkpoint_interval_ms=500, checkpoint_dir=(tmp_path / "chk").as_uri())
    env = decision_job.make_env(cfg, extra={"pipeline.jars": ";".join(flink_jar_urls(cfg.jars_dir) + [jar.as_uri()]),
                                            **(extra or {})})
    env.set_parallelism(1)
    rows = [jvm.to_row(pack(x) if kind == "event" else label_record(label_of(*x))) for kind, x in records]
    src = (env.from_collection(rows, type_info=jvm.record_type_info())
           .assign_timestamps_and_watermarks(WatermarkStrategy.for_bounded_out_of_orderness(Duration.of_millis(5000))
                                             .with_timestamp_assigner(EventTime())))
    env.set_parallelism(parallelism)
    spec = orjson.dumps(spec_document(LATENESS, features)).decode()
    outs = []
    for e in entities:
        def show(row, name=e.name):
            rec = jvm.from_row(row)
            _, values, late, signals = unpack(rec)
            return orjson.dumps({"entity": name, "event_id": rec[0], "values": values, "late": late,
                                 "signals": signals}).decode()
        outs.append(jvm.entity_stage(src, e, spec, DEDUP, True, "jvm-test").map(show, output_type=Types.STRING()))
    outs[0].union(*outs[1:]).sink_to(
        FileSink.for_row_format(str(tmp_path / "out"), Encoder.simple_string_encoder()).build())
    env.execute("jvm-label-features-test")
    got: dict = {e.name: {} for e in entities}
    for f in sorted((tmp_path / "out").rglob("*")):
        if f.is_file():
            for line in f.read_text().splitlines():
                o = orjson.loads(line)
                assert o["event_id"] not in got[o["entity"]]
                got[o["entity"]][o["event_id"]] = (o["values"], o["late"], o["signals"])
    return got


@pytest.mark.parametrize("parallelism", [1, 2])
def test_jvm_label_features_match_python(jvm, tmp_path, parallelism):
    """Every entity's label features (and windows) in the JVM equal the Python chain's, exactly, with labels
    arriving late and out of order and legit overriding fraud."""
    jar, _ = jvm
    records = _labelled_records()
    got = _run_branches(jar, records, parallelism, tmp_path)
    nonzero = {}
    for e in ENTITIES:
        want, _ = _expected(records, label_signals=True, entities=(e,))
        assert set(got[e.name]) == set(want), e.name
        names = [f.name for f in features_for(e.name)]
        lab = [i for i, n in enumerate(names) if "_fraud_" in n]
        for eid, (values, late, signals) in got[e.name].items():
            assert (values, late) == (want[eid][0], want[eid][1]), (e.name, eid)
            assert (signals or None) == (want[eid][2] or None), (e.name, eid)
        nonzero[e.name] = sum(any(v[i] > 0 for i in lab) for v, _, _ in got[e.name].values())
    assert all(n > 100 for n in nonzero.values()), nonzero


@pytest.mark.parametrize("parallelism,backend", [(1, "hashmap"), (2, "rocksdb")])
def test_jvm_delayed_label_windows_match_python(jvm, tmp_path, parallelism, backend):
    """The delayed label windows (docs/features.md#delayed-label-windows) in the JVM stages equal the Python
    chain's exactly, from the same spec document: 60 days on few devices and ips, labels 0-15 days late,
    some overturned, events slightly out of order and some late; the offsets, the delayed counts' reach and
    the keys' retention (horizon + offset) reach the JVM through the spec."""
    from py4j.java_gateway import get_field

    from tests.test_delayed_labels import _long_stream, timed
    from udfs.features import DAY, FEATURES_WITH_DELAYED

    jar, J = jvm
    doc = orjson.dumps(spec_document(LATENESS, FEATURES_WITH_DELAYED)).decode()
    dev = J.EntitySpec.parse(doc, "device")
    assert list(get_field(dev, "dWidths")) == [DAY // 48, 6 * HOUR, DAY]
    assert list(get_field(dev, "dReach")) == [8 * DAY, 14 * DAY, 37 * DAY]
    assert get_field(dev, "retention") == 37 * DAY + LATENESS and get_field(dev, "labelKeepMs") == 38 * DAY
    evs, labels = _long_stream(7, days=60, n=2000)
    records = [("label", r[1]) if type(r) is tuple else ("event", r) for r in timed(evs, labels)]
    entities = (ENTITY_BY_NAME["ip"], ENTITY_BY_NAME["device"])
    got = _run_branches(jar, records, parallelism, tmp_path, extra={"state.backend.type": backend},
                        features=FEATURES_WITH_DELAYED, entities=entities)
    for e in entities:
        want, _ = _expected(records, label_signals=True, entities=(e,), features=FEATURES_WITH_DELAYED)
        assert set(got[e.name]) == set(want), e.name
        names = [f.name for f in features_for(e.name, FEATURES_WITH_DELAYED)]
        delayed = [i for i, n in enumerate(names) if n.endswith("_delay7d")]
        for eid, (values, late, signals) in got[e.name].items():
            assert (values, late) == (want[eid][0], want[eid][1]), (e.name, eid)  # exactly equal
        for i in delayed:
            assert sum(v[i] > 0 for v, _, _ in got[e.name].values()) > 300, (e.name, names[i])


def test_jvm_label_store_keys_by_user_and_event_id(jvm, tmp_path):
    """Ids are per user: on a shared device, a legit label for user B's e1 leaves user A's fraud e1 counted,
    in the JVM as in Python (both key the label store by the label record's (user_id, event_id) identity).
    The labelled events themselves need not reach the stage (a label may name an event it never counted)."""
    jar, _ = jvm
    t0 = 1_767_225_600_000
    probe = lambda i: Event(f"p{i}", "login", "uC", "d-shared", "10.9.9.9", 0.0, "EUR", t0 + i * 1000)  # noqa: E731
    records = [("label", ("e1", "uA", "d-shared", t0, "fraud")), ("event", probe(1)),
               ("label", ("e1", "uB", "d-shared", t0, "legit")), ("event", probe(2)),
               ("label", ("e1", "uB", "d-shared", t0, "fraud")), ("event", probe(3)),
               ("label", ("e1", "uA", "d-shared", t0, "legit")), ("event", probe(4))]
    got = _run_branches(jar, records, 1, tmp_path)["device"]
    names = [f.name for f in features_for("device")]
    col = names.index("device_fraud_labels_7d")
    assert [got[f"p{i}"][0][col] for i in (1, 2, 3, 4)] == [1.0, 1.0, 2.0, 1.0]
    want, _ = _expected(records, label_signals=True, entities=(ENTITY_BY_NAME["device"],))
    assert {e: v[:2] for e, v in got.items()} == {e: (w[0], w[1]) for e, w in want.items()}


# -- label timing for an out-of-order event (docs/features.md#label-risk-features, contracts.md#labels) ----
_LABEL_KEY = {"user": 1, "device": 2, "ip": 5, "payment": 6}  # where a label tuple names each entity's key


def _label_rule(events: list[Event], labels: list, entity: str) -> dict[str, dict[str, float]]:
    """The documented rule computed per event from scratch: a label (arrival_ts, args) counts for the event
    at input position i when some event at or before i has ts >= arrival_ts (it was folded before the first
    such event); of the labels of one (user_id, event_id) that count, the newest arrival wins (ties: the one
    added last). fraud_labels: the counted fraud events whose bucket lies in the event's window;
    fraud_share: over the key's events so far in input order in that window (no event here is late)."""
    out: dict[str, dict[str, float]] = {}
    ent = ENTITY_BY_NAME[entity]
    for i, ev in enumerate(events):
        key = getattr(ev, ent.key_field)
        reached = max(e.ts for e in events[: i + 1])
        newest: dict[tuple[str, str], tuple] = {}
        for _, n, args in sorted((arr, n, args) for n, (arr, args) in enumerate(labels) if arr <= reached):
            if args[_LABEL_KEY[entity]] == key:
                newest[(args[1], args[0])] = args
        vals = {}
        for f in features_for(entity):
            if f.agg not in ("fraud_labels", "fraud_share"):
                continue
            g = BUCKET_MS[f.horizon_ms]
            hi = ev.ts // g * g + g - f.offset_ms
            lo = hi - f.horizon_ms
            fl = sum(1 for a in newest.values() if a[4] == "fraud" and lo <= a[3] // g * g < hi)
            seen = sum(1 for e in events[: i + 1] if getattr(e, ent.key_field) == key and lo <= e.ts // g * g < hi)
            vals[f.name] = fl if f.agg == "fraud_labels" else (fl / max(seen, fl) if seen or fl else 0.0)
        out[ev.event_id] = vals
    return out


def test_an_out_of_order_event_after_its_labels_arrival_counts_it(jvm, tmp_path):
    """Issue 21: an event whose ts is before a label's arrival_ts but which is processed after the label
    (out of order) sees the label; one processed before it does not, whatever its time; a label arriving at
    exactly an event's ts counts for it; a later legit overrides for out-of-order events too. The Python
    replay (labels by arrival_ts), the Python chain and the JVM stages (labels at their place in the input)
    against the rule computed per event from scratch, for the user and the device stage."""
    from udfs.features import FEATURE_NAMES
    from udfs.replay import FeatureReplay

    jar, _ = jvm
    t0, day = 1_767_225_600_000, 24 * HOUR
    ev = lambda i, ts, user: Event(f"o{i}", "login", user, "d1", "10.0.0.1", 0.0, "EUR", ts)  # noqa: E731
    a1, a2, a3 = t0 + 2 * day, t0 + 3 * day, t0 + 4 * day
    l1 = (a1, ("o0", "u1", "d1", t0, "fraud", None, None))
    l2 = (a2, ("o1", "u1", "d1", t0 + HOUR, "fraud", None, None))
    l3 = (a3, ("o0", "u1", "d1", t0, "legit", None, None))
    # input order: o2 is before l1's arrival and processed before it; o3 (another user) reaches a1 and
    # brings l1 in; o4 is out of order (ts < a1) after it; o5 is at exactly a2; o6 1 ms before a2 after
    # it; o7 before l3, o8 brings it in, o9 out of order after it
    records = [("event", ev(0, t0, "u1")), ("event", ev(1, t0 + HOUR, "u1")),
               ("event", ev(2, a1 - 5_000, "u1")), ("label", l1[1]), ("event", ev(3, a1 + 10_000, "u2")),
               ("event", ev(4, a1 - 20_000, "u1")), ("label", l2[1]), ("event", ev(5, a2, "u1")),
               ("event", ev(6, a2 - 1, "u1")), ("event", ev(7, a3 - 30_000, "u2")), ("label", l3[1]),
               ("event", ev(8, a3 + 1_000, "u2")), ("event", ev(9, a3 - 40_000, "u1"))]
    events = [x for k, x in records if k == "event"]
    labels = [l1, l2, l3]
    entities = (ENTITY_BY_NAME["user"], ENTITY_BY_NAME["device"])
    want = {e.name: _label_rule(events, labels, e.name) for e in entities}
    # the rule's outcome at the points that matter (device: o0 fraud, then o1 fraud, then o0 legit)
    dev = {k: v["device_fraud_labels_7d"] for k, v in want["device"].items()}
    assert [dev[f"o{i}"] for i in range(10)] == [0, 0, 0, 1, 1, 2, 2, 2, 1, 1]
    assert [want["user"][f"o{i}"]["user_fraud_labels_30d"] for i in (2, 3, 4, 9)] == [0, 0, 1, 1]

    # the Python replay: labels by arrival_ts
    replay = FeatureReplay(LATENESS, DEDUP, labels=[(a, label_of(*t)) for a, t in labels])
    for e in events:
        vec, late = replay.step(e)
        assert not late, e
        named = dict(zip(FEATURE_NAMES, vec, strict=True))
        for ent in entities:
            assert {n: named[n] for n in want[ent.name][e.event_id]} == want[ent.name][e.event_id], (ent.name, e)
    # the chain and the JVM stages: labels where they arrive in the input
    got = _run_branches(jar, records, 1, tmp_path, entities=entities)
    for ent in entities:
        names = [f.name for f in features_for(ent.name)]
        chain, _ = _expected(records, label_signals=True, entities=(ent,))
        for e in events:
            for src, (values, late) in (("chain", chain[e.event_id][:2]), ("jvm", got[ent.name][e.event_id][:2])):
                assert not late, (src, e)
                named = dict(zip(names, values, strict=True))
                assert {n: named[n] for n in want[ent.name][e.event_id]} == want[ent.name][e.event_id], (src, e)


# -- cleanup timers: one per key, at the key's exact expiry (both runtimes) ------------------------------
def _busy_key_events(start: int) -> list[Event]:
    """1,000 events of one user, device, card and ip over 30 days (a few seconds to hours apart), a second
    user on the same device now and then, and a quiet key."""
    rnd = random.Random(11)
    out, ts = [], start
    for i in range(1000):
        ts += rnd.randrange(1_000, 5_000_000)
        user = "busy" if i % 7 else "other"
        out.append(Event(f"e{i}", "payment", user, "dev-1", "10.0.0.1", 12.5, "EUR", ts, payment_ref="card-1"))
    assert out[-1].ts - start < 30 * 24 * HOUR
    out.append(Event("q1", "login", "quiet", "dev-q", "10.0.0.9", 0.0, "EUR", start + 60_000))
    return out


def test_a_busy_key_holds_one_pending_timer(jvm):
    """A key with 1,000 events over 30 days registers one cleanup timer in the Python reference (the chain's
    timer queue, one entry per registration) and in the JVM stage's logic (LocalRunner counts what it asks
    Flink to register); the old rule registered one per active minute."""
    _, J = jvm
    events = _busy_key_events(1_700_000_000_000)
    chain = Chain(LATENESS, DEDUP)
    for ev in events:
        chain.process(ev)
    pending: dict[tuple[int, str], int] = {}
    for _, i, key in chain._timers:
        pending[(i, key)] = pending.get((i, key), 0) + 1
    assert pending and max(pending.values()) == 1, pending
    spec = json.dumps(spec_document(LATENESS))
    jsonl = "\n".join(orjson.dumps(e._asdict()).decode() for e in events)
    for e in ENTITIES:
        registered = json.loads(J.LocalRunner.run(spec, e.name, DEDUP, jsonl))["timers_registered"]
        assert registered and max(registered.values()) <= 2, (e.name, registered)


def test_a_key_is_dropped_when_the_watermark_reaches_its_exact_expiry():
    """Issue 21: an on-grid expiry used to keep a key a minute past it. Now, whether the expiry falls on a
    minute or not, an event of a key arriving once the watermark passed the key's expiry finds it dropped
    (the reference's timer fired), and one just before still reads it."""
    for first in (1_700_000_040_000, 1_700_000_040_123):  # on the minute grid, and off it
        retention = retention_ms("user", LATENESS)
        expiry = first + retention
        for wm_past, fresh in ((True, True), (False, False)):
            chain = Chain(LATENESS, DEDUP, out_of_orderness_ms=5_000)
            chain.process(Event("a1", "login", "u", "d-u", "ip-u", 0.0, "EUR", first))
            # another key moves the watermark (newest ts - 5 s - 1 ms) to the expiry, or 1 ms short of it
            chain.process(Event("b1", "login", "v", "d-v", "ip-v", 0.0, "EUR", expiry + 5_001 - (0 if wm_past else 1)))
            assert chain.watermark() == expiry - (0 if wm_past else 1)
            got = chain.process(Event("a2", "login", "u", "d-u", "ip-u", 0.0, "EUR", expiry - 1))
            user_age = got[0][[f.name for f in features_for("user")].index("user_age_ms")]
            assert (user_age == 0) == fresh, (first, wm_past, user_age)


def test_jvm_drops_a_key_when_the_watermark_reaches_its_exact_expiry(jvm, tmp_path):
    """Issue 21, in the JVM stage on a MiniCluster with Flink's own timers: with the user key's first event
    at X (on the minute grid, and off it), an event at X+R-1 that arrives once the watermark reached X+R
    finds the key dropped (user_age_ms 0), and one arriving when the watermark is 1 ms short still reads it
    (R-1). The watermark is emitted after every record (io.riskstream.flink.PerRecordWatermarks, the value
    the job's periodic bounded-out-of-orderness emitter would reach), so the point it is at when a record
    arrives does not depend on timing. The Python chain, fed the same stream, gives the same values."""
    from pyflink.common import Types
    from pyflink.common.serialization import Encoder
    from pyflink.datastream import DataStream
    from pyflink.datastream.connectors.file_system import FileSink

    from pipelines import decision_job
    from riskstream.config import JobConfig
    from riskstream.ops.jars import flink_jar_urls
    from udfs import jvm as ujvm
    from udfs.chain import ROW_FIELDS

    jar, J = jvm
    ooo = 5_000
    retention = retention_ms("user", LATENESS)
    # four scenarios one after the other in event time, each with keys of its own: (first event at X, the
    # watermark at the expiry or 1 ms short of it when the probe arrives); the next starts after the
    # previous one's watermark
    events, want_age, start = [], {}, 1_700_000_040_000
    for n, (off_grid, wm_past) in enumerate(((0, True), (0, False), (123, True), (123, False))):
        first = start + off_grid
        expiry = first + retention
        assert (first % 60_000 == 0) == (off_grid == 0)
        events += [Event(f"a{n}", "login", f"u{n}", f"d-u{n}", f"ip-u{n}", 0.0, "EUR", first),
                   # another key moves the watermark (newest ts - 5 s - 1 ms) to the expiry, or 1 ms short
                   Event(f"b{n}", "login", f"v{n}", f"d-v{n}", f"ip-v{n}", 0.0, "EUR",
                         expiry + ooo + 1 - (0 if wm_past else 1)),
                   Event(f"p{n}", "login", f"u{n}", f"d-u{n}", f"ip-u{n}", 0.0, "EUR", expiry - 1)]
        want_age[f"p{n}"] = 0.0 if wm_past else float(retention - 1)
        start = expiry + 10 * 60_000 - (expiry + 10 * 60_000) % 60_000
    age = [f.name for f in features_for("user")].index("user_age_ms")
    user = (ENTITY_BY_NAME["user"],)

    chain = Chain(LATENESS, DEDUP, out_of_orderness_ms=ooo, entities=user)
    py = {e.event_id: chain.process(e)[0][age] for e in events}
    assert {k: py[k] for k in want_age} == want_age

    cfg = JobConfig(parallelism=1, checkpoint_interval_ms=500, checkpoint_dir=(tmp_path / "chk").as_uri())
    env = decision_job.make_env(cfg, extra={"pipeline.jars": ";".join(flink_jar_urls(cfg.jars_dir) + [jar.as_uri()])})
    env.set_parallelism(1)
    rows = env.from_collection([ujvm.to_row(pack(e)) for e in events], type_info=ujvm.record_type_info())
    strategy = J.PerRecordWatermarks.strategy([n for n, _ in ROW_FIELDS].index("ts"), ooo, 60_000)
    stream = DataStream(rows._j_data_stream.assignTimestampsAndWatermarks(strategy))
    stream = ujvm.entity_stage(stream, user[0], orjson.dumps(spec_document(LATENESS)).decode(), DEDUP, False, "jvm-test")

    def show(row):
        rec = ujvm.from_row(row)
        return orjson.dumps({"event_id": rec[0], "values": unpack(rec)[1]}).decode()

    (stream.map(show, output_type=Types.STRING())
     .sink_to(FileSink.for_row_format(str(tmp_path / "out"), Encoder.simple_string_encoder()).build()))
    env.execute("jvm-timer-test")
    got = {}
    for f in (tmp_path / "out").rglob("*"):
        if f.is_file():
            for line in f.read_text().splitlines():
                o = orjson.loads(line)
                got[o["event_id"]] = o["values"][age]
    assert got == py, (got, py)


def test_jvm_starts_a_quiet_key_over_as_python_does(jvm):
    """A device quiet for longer than its undelayed horizons (30 days + lateness) but less than its delayed
    counts' reach (37 days): both runtimes start it over (age, since-previous, windows) from the same
    spec constant (fresh_ms), event by event equal."""
    from py4j.java_gateway import get_field

    from udfs.features import DAY, FEATURES_WITH_DELAYED
    from udfs.windows import EntityWindows

    _, J = jvm
    doc = spec_document(LATENESS, FEATURES_WITH_DELAYED)
    dev = next(e for e in doc["entities"] if e["name"] == "device")
    assert dev["fresh_ms"] == 30 * DAY + LATENESS < dev["retention_ms"] == 37 * DAY + LATENESS
    assert get_field(J.EntitySpec.parse(json.dumps(doc), "device"), "fresh") == dev["fresh_ms"]
    t0 = 1_767_225_600_000
    gaps = [0, HOUR, 31 * DAY, 2 * HOUR, 36 * DAY, 38 * DAY, 5 * DAY, 30 * DAY + LATENESS - 1, 30 * DAY + LATENESS]
    events, ts = [], t0
    for i, g in enumerate(gaps):
        ts += g
        events.append(Event(f"e{i}", "payment", f"u{i % 3}", "dev", "ip", 5.0 + i, "EUR", ts, None, "c1"))
    got = json.loads(J.LocalRunner.run(json.dumps(doc), "device", DEDUP,
                                       "\n".join(orjson.dumps(e._asdict()).decode() for e in events)))["values"]
    w = EntityWindows("device", LATENESS, features_for("device", FEATURES_WITH_DELAYED))
    state, want = None, []
    for e in events:
        state, vals, _ = w.update(state, e)
        want.append(vals)
    assert got == want
    age = [f.name for f in features_for("device", FEATURES_WITH_DELAYED)].index("device_age_ms")
    assert [v[age] for v in want] == [0, HOUR, 0, 2 * HOUR, 0, 0, 5 * DAY, 35 * DAY + LATENESS - 1, 0]


def test_state_encoding_is_the_pinned_format(jvm):
    """Savepoints of earlier jobs restore: every key's state after a seeded stream is byte for byte what the
    encoder wrote before aggregates became plug-ins (tests/keystate_golden.json), and states written then
    decode and encode again to the same bytes."""
    from tests.keystate_golden import GOLDEN, digest, jsonl, stream

    _, J = jvm
    golden = json.loads(GOLDEN.read_text())
    evs = jsonl(stream())
    for run in golden["runs"]:
        spec = json.dumps(golden["specs"][run["spec"]])
        states = json.loads(J.LocalRunner.states(spec, run["entity"], golden["dedup_ms"], evs))
        assert (len(states), digest(states)) == (run["keys"], run["digest"]), (run["spec"], run["entity"])
        assert json.loads(J.LocalRunner.reencode(spec, run["entity"], json.dumps(run["states"]))) == run["states"]


def _normal(state: dict) -> dict:
    """A state dict with its bucket order kept (lists of items) and nothing empty or unset."""
    out = {k: state[k] for k in ("first", "last") }
    out["b"] = {g: list(bs.items()) for g, bs in state["b"].items() if bs}
    if any(state.get("d", {}).values()):
        out["d"] = {g: sorted(c.items()) for g, c in state["d"].items() if c}
    for k in ("timer", "ids"):
        if state.get(k):
            out[k] = list(state[k].items()) if k == "ids" else state[k]
    return out


def test_python_and_jvm_stages_hold_the_same_state(jvm):
    """Key by key, the JVM stage's state after a stream, decoded by the Python side (udfs.windows.decode_state:
    each aggregate's decode), is the Python stage's state dict after the same stream, buckets in the same
    order; and the Python side's bytes of that state (encode_state) are read by the JVM as the same state."""
    from udfs.chain import EntityStep
    from udfs.features import FEATURES_WITH_DELAYED
    from udfs.windows import decode_state, encode_state
    from tests.keystate_golden import DEDUP, jsonl, stream

    _, J = jvm
    evs = stream()
    doc = json.dumps(spec_document(LATENESS, FEATURES_WITH_DELAYED))
    kinds = set()
    for e in ENTITIES:
        step = EntityStep(e, LATENESS, DEDUP, FEATURES_WITH_DELAYED)
        store = step.fold(evs)
        jvm_states = json.loads(J.LocalRunner.states(doc, e.name, DEDUP, jsonl(evs)))
        assert sorted(jvm_states) == sorted(store), e.name
        for k, b64 in jvm_states.items():
            got, labels = decode_state(step.windows, base64.b64decode(b64))
            assert _normal(got) == _normal(store[k]), (e.name, k)
            kinds |= {type(a).__name__ for bs in got["b"].values() for accs in bs.values() for a in accs}
        ours = {k: base64.b64encode(encode_state(step.windows, st)).decode() for k, st in store.items()}
        back = json.loads(J.LocalRunner.reencode(doc, e.name, json.dumps(ours)))
        for k, b64 in back.items():
            assert _normal(decode_state(step.windows, base64.b64decode(b64))[0]) == _normal(store[k]), (e.name, k)
    assert kinds == {"int", "list", "set", "bytearray"}  # counts, numerics, exact sets and sketches


def test_a_jvm_aggregate_that_differs_from_the_python_class_is_refused(jvm):
    """The spec document names each aggregate's JVM class with the Python class's family and field use: a
    class that is missing, or declares another family, fails when the stage's spec is parsed."""
    from py4j.protocol import Py4JJavaError

    _, J = jvm
    doc = spec_document(LATENESS)
    assert doc["aggregates"]["mean"] == {"class": "Mean", "accumulator": "numeric", "takes_field": True,
                                         "params": {"missing": -1.0}}
    assert J.EntitySpec.parse(orjson.dumps(doc).decode(), "user") is not None
    for change, message in ((("class", "Median"), "no class io.riskstream.flink.aggregates.Median"),
                            (("accumulator", "moments"), "accumulator numeric, takes_field true\\) differs"),
                            (("takes_field", False), "differs from the Python class")):
        bad = orjson.loads(orjson.dumps(doc))
        bad["aggregates"]["mean"][change[0]] = change[1]
        with pytest.raises(Py4JJavaError, match=message):
            J.EntitySpec.parse(orjson.dumps(bad).decode(), "user")
    del doc["aggregates"]["mean"]
    with pytest.raises(Py4JJavaError, match="aggregate mean is not in the spec's aggregates"):
        J.EntitySpec.parse(orjson.dumps(doc).decode(), "user")


# -- graph features (docs/features.md#graph-features): the JVM graph parts against udfs.graph via Chain -----
def _graph_stress(t0: int) -> list[Event]:
    """The caps and their ties: 40 users (ids ending in non-ASCII, private-use U+E000 / U+FFFF and astral
    characters, whose order differs between code points and UTF-16 units) on one ip, 30 of them on one
    device, in groups of 10 at the same time (members and pairs beyond their caps, cut inside a tie); one of
    them on 30 devices, ips and cards at one time (entities beyond the link's cap, cut inside a tie). Three
    rounds an hour apart."""
    tails = ["a", "é", "\ue000", "\uffff", "😀", "𝄞", "日本", "z", "\U0010fffd", "b"]
    users = [f"s{tails[k % 10]}{k // 10}" for k in range(40)]
    out = []
    for rep in range(3):
        for k, u in enumerate(users):
            typ = "payment" if k % 2 else "login"
            out.append(Event(f"st-{rep}-{k}", typ, u, "dev-hot" if k < 30 else f"sd{k % 20}", "10.7.7.7", 5.0, "EUR",
                             t0 + rep * HOUR + (k // 10) * 1000, None,
                             f"sc{tails[k % 10]}{k % 25}" if typ == "payment" else None))
        for j in range(30):
            out.append(Event(f"sm-{rep}-{j}", "payment", users[4], f"sd{tails[j % 10]}{j}", f"10.8.{j}.1", 1.0, "EUR",
                             t0 + rep * HOUR + 50_000, None, f"scm{tails[j % 10]}{j}"))
    return out


def _graph_records(seed: int = 5, n: int = 3000) -> list:
    """Ring traffic (14 days, ``rings=True``) with labels at their arrival: fraud for the ring's and the
    other fraud events, and for a tenth of the normal ones a mistaken fraud label overturned by a legit one
    up to two days later; plus, in the middle, :func:`_graph_stress` with fraud labels for a seventh of it."""
    import heapq

    from riskstream.generator import TrafficGenerator

    rnd = random.Random(seed)
    recs = [r for r in TrafficGenerator(seed=seed, days=14, rings=True).generate(n) if r.event is not None]
    pending, out = [], []
    for seq, r in enumerate(recs):
        ev = Event(**r.event)
        while pending and pending[0][0] <= ev.ts:
            out.append(("label", heapq.heappop(pending)[2]))
        out.append(("event", ev))
        lab = r.label
        args = (lab["event_id"], lab["user_id"], lab["device_id"], lab["ts"], "fraud", lab["ip"], lab.get("payment_ref"))
        if lab["fraud"]:
            heapq.heappush(pending, (lab["arrival_ts"], seq, args))
        elif rnd.random() < 0.1:
            heapq.heappush(pending, (lab["arrival_ts"], seq, args))
            heapq.heappush(pending, (lab["arrival_ts"] + rnd.randrange(1, 2 * 24 * HOUR), seq,
                                     args[:4] + ("legit",) + args[5:]))
    mid = next(i for i, (k, x) in enumerate(out) if k == "event" and i >= len(out) // 2)
    stress = _graph_stress(out[mid][1].ts)
    labels = [("label", (e.event_id, e.user_id, e.device_id, e.ts, "fraud", e.ip, e.payment_ref)) for e in stress[::7]]
    out[mid:mid] = [("event", e) for e in stress[:100]] + labels[:10] + [("event", e) for e in stress[100:]] + labels[10:]
    return out + [("event", e) for e in _graph_floor(max(x.ts for k, x in out if k == "event") + HOUR)]


def _graph_floor(t0: int) -> list[Event]:
    """The eviction floors keep what is newer than the key's newest - horizon - lateness: a member, a pair
    and a link entity just inside that floor but older than newest - horizon are read by an event 50 s out
    of order (within the lateness) for which they are live. At the end of the stream (a week later)."""
    from udfs.features import GRAPH

    h = GRAPH["horizon_ms"]
    ev = lambda i, t, u, d, ip: Event(f"fl-{i}", "login", u, d, ip, 0.0, "EUR", t)  # noqa: E731
    return [ev(0, t0 - 1_000, "fl-a", "fl-dev", "10.66.0.1"), ev(1, t0, "fl-l", "fl-dl", "10.66.0.1"),
            ev(2, t0 + h + 40_000, "fl-b", "fl-dev", "10.66.0.1"), ev(3, t0 + h + 40_000, "fl-l", "fl-dl", "10.66.0.2"),
            ev(4, t0 + h - 10_000, "fl-c", "fl-dev", "10.66.0.1"), ev(5, t0 + h - 10_000, "fl-l", "fl-dl2", "10.66.0.3")]


def _graph_expected(records: list) -> dict:
    """{event_id: (values, late, signals)} of the Python reference (udfs.chain.Chain with the graph spec)."""
    from udfs.features import FEATURES_WITH_GRAPH

    ch = Chain(LATENESS, DEDUP, label_signals=True, features=FEATURES_WITH_GRAPH)
    out = {}
    for kind, x in records:
        if kind == "label":
            ch.label(label_of(*x))
        else:
            res = ch.process(x)
            assert res is not None and x.event_id not in out, x
            out[x.event_id] = res
    return out


def _graph_lines(records: list) -> str:
    """The records as GraphLocalRunner reads them: per line an event's fields, or a label record's."""
    from udfs.chain import EVENT_FIELDS, N_EVENT

    return "\n".join(orjson.dumps(x._asdict() if kind == "event" else
                                  dict(zip(EVENT_FIELDS, label_record(label_of(*x))[:N_EVENT]))).decode()
                     for kind, x in records)


def test_jvm_graph_parts_match_python_without_flink(jvm):
    """The JVM graph parts (io.riskstream.flink.graph) through the whole chain in one JVM call
    (GraphLocalRunner: the windows, the label stores, the context encoded between stages), value for value
    equal to Chain's on ring traffic with labels and the caps' stress; and the graph state's bytes per key."""
    from udfs.chain import spec_document as doc_of
    from udfs.features import FEATURES_WITH_GRAPH

    _, J = jvm
    records = _graph_records(5, 4000)
    want = _graph_expected(records)
    res = json.loads(J.GraphLocalRunner.run(json.dumps(doc_of(LATENESS, FEATURES_WITH_GRAPH)), DEDUP,
                                            _graph_lines(records)))
    events = [x for kind, x in records if kind == "event"]
    assert [want[e.event_id][0] for e in events] == res["values"]
    names = [f.name for f in FEATURES_WITH_GRAPH if f.entity != "event"]
    for i, name in enumerate(names):
        if name.startswith("graph_"):  # every graph feature is exercised
            assert sum(want[e.event_id][0][i] > 0 for e in events) > 50, name
    sizes = {stage: sorted(d.values()) for stage, d in res["graph_state_bytes"].items() if d}
    assert set(sizes) == {"ip", "device", "payment", "link"}
    print({s: (len(v), v[len(v) // 2], v[int(len(v) * 0.99)], v[-1]) for s, v in sizes.items()})


def _run_graph(jar, records: list, parallelism: int, tmp_path, extra=None) -> dict:
    """Every stage of the graph spec chained in the JVM on a MiniCluster (user, ip, device, payment, link),
    labels on, each label record passed on by every stage after folding it (``forward_labels``: each stage
    sees it at its place among the events, as Chain.label): {event_id: (values, late, signals)}. Every
    output record's graph field must be null (the link stage drops the context)."""
    from pyflink.common import Duration, Types, WatermarkStrategy
    from pyflink.common.serialization import Encoder
    from pyflink.datastream.connectors.file_system import FileSink

    from pipelines import decision_job
    from riskstream.config import JobConfig
    from riskstream.ops.jars import flink_jar_urls
    from udfs import jvm
    from udfs.chain import ROW_FIELDS
    from udfs.chain import spec_document as doc_of
    from udfs.features import FEATURES_WITH_GRAPH, spec_entities
    from udfs.flink import DEAD_LETTER_TAG, EventTime

    cfg = JobConfig(parallelism=parallelism, checkpoint_interval_ms=500, checkpoint_dir=(tmp_path / "chk").as_uri())
    env = decision_job.make_env(cfg, extra={"pipeline.jars": ";".join(flink_jar_urls(cfg.jars_dir) + [jar.as_uri()]),
                                            **(extra or {})})
    env.set_parallelism(1)
    rows = [jvm.to_row(pack(x) if kind == "event" else label_record(label_of(*x))) for kind, x in records]
    stream = (env.from_collection(rows, type_info=jvm.record_type_info())
              .assign_timestamps_and_watermarks(WatermarkStrategy.for_bounded_out_of_orderness(Duration.of_millis(5000))
                                                .with_timestamp_assigner(EventTime())))
    env.set_parallelism(parallelism)
    spec = orjson.dumps(doc_of(LATENESS, FEATURES_WITH_GRAPH)).decode()
    dead = None
    for e in spec_entities(FEATURES_WITH_GRAPH):
        stream = jvm.entity_stage(stream, e, spec, DEDUP, True, "jvm-test", forward_labels=True)
        d = stream.get_side_output(DEAD_LETTER_TAG)
        dead = d if dead is None else dead.union(d)
    graph = [n for n, _ in ROW_FIELDS].index("graph")

    def show(row):
        rec = jvm.from_row(row)
        _, values, late, signals = unpack(rec)
        return orjson.dumps({"event_id": rec[0], "values": values, "late": late, "signals": signals,
                             "graph": row[graph] is not None}).decode()

    (stream.map(show, output_type=Types.STRING())
     .union(dead.map(lambda b: "D" + bytes(b).decode("utf-8"), output_type=Types.STRING()))
     .sink_to(FileSink.for_row_format(str(tmp_path / "out"), Encoder.simple_string_encoder()).build()))
    env.execute("jvm-graph-test")
    got = {}
    for f in sorted((tmp_path / "out").rglob("*")):
        if f.is_file():
            for line in f.read_text().splitlines():
                assert not line.startswith("D"), line  # no duplicate, no processing error
                o = orjson.loads(line)
                assert o["event_id"] not in got and not o["graph"], o
                got[o["event_id"]] = (o["values"], o["late"], o["signals"])
    return got


def _graph_deterministic(records: list, subtask) -> dict[str, list[bool]]:
    """Per event, per stage of the graph chain: whether its values there are fixed by the input order at
    p > 1. A stage's key sees its records in input order when they all came one path: through the same
    subtask of every earlier stage (``subtask(key)``: Flink's key-group assignment), each channel between
    two subtasks being FIFO (labels included: they are passed on). A stage's graph values also read what
    the earlier stages attached to the record, and its state holds what earlier events of the key carried,
    so a value is deterministic when the event's earlier stages were, the key is one-path, and every earlier
    event of the key was deterministic up to this stage (else the key is tainted from then on)."""
    from udfs.chain import key_index
    from udfs.features import FEATURES_WITH_GRAPH, spec_entities

    ents = spec_entities(FEATURES_WITH_GRAPH)
    recs = [pack(x) if kind == "event" else label_record(label_of(*x)) for kind, x in records]
    keys = [[r[key_index(e)] or "" for e in ents] for r in recs]
    sub: dict[str, int] = {}
    paths: dict[tuple, set] = {}
    for (kind, _), ks in zip(records, keys):
        for k in ks:
            if k not in sub:
                sub[k] = subtask(k)
        for i, e in enumerate(ents):
            if kind == "label" and not e.reads_labels_in(FEATURES_WITH_GRAPH):
                continue
            paths.setdefault((i, ks[i]), set()).add(tuple(sub[k] for k in ks[:i]))
    tainted: set = set()
    out = {}
    for (kind, x), ks in zip(records, keys):
        if kind != "event":
            continue
        det, flags = True, []
        for i, e in enumerate(ents):
            if e.optional and getattr(x, e.key_field) is None:
                flags.append(det)  # empty values, no state: as deterministic as the context passed on
                continue
            here = det and len(paths[(i, ks[i])]) == 1 and (i, ks[i]) not in tainted
            if not det:
                tainted.add((i, ks[i]))
            det = here
            flags.append(det)
        out[x.event_id] = flags
    return out


@pytest.mark.parametrize("parallelism,backend", [(1, "hashmap"), (2, "rocksdb")])
def test_jvm_graph_features_match_python_chain(jvm, tmp_path, parallelism, backend):
    """The graph spec's five JVM stages chained on a MiniCluster against Chain(features=FEATURES_WITH_GRAPH):
    ring traffic with labels (fraud, mistaken fraud overturned by legit) and the caps' stress (ties cut
    by code-point order). p=1: every value of every event (windows and graph), late flag and signals
    exactly equal. p=2 (RocksDB): each stage's values of the events whose arrival order there is fixed by the
    input (:func:`_graph_deterministic`), exactly equal; the late flag and signals where every stage is."""
    from udfs.features import FEATURES_WITH_GRAPH, features_for, spec_entities

    jar, _ = jvm
    records = _graph_records(5, 2500)
    want = _graph_expected(records)
    got = _run_graph(jar, records, parallelism, tmp_path, extra={"state.backend.type": backend})
    assert set(got) == set(want)
    ents = spec_entities(FEATURES_WITH_GRAPH)
    offs, o = [], 0
    for e in ents:
        n = len(features_for(e.name, FEATURES_WITH_GRAPH))
        offs.append((o, o + n))
        o += n
    from pyflink.java_gateway import get_gateway

    from riskstream.config import JobConfig

    kgra = get_gateway().jvm.org.apache.flink.runtime.state.KeyGroupRangeAssignment
    max_p = JobConfig().max_parallelism  # the job's key groups (pipeline.max-parallelism)
    det = _graph_deterministic(records, lambda k: kgra.assignKeyToParallelOperator(k, max_p, parallelism))
    compared = [0] * len(ents)
    for eid, (values, late, signals) in got.items():
        w_values, w_late, w_signals = want[eid]
        flags = det[eid] if parallelism > 1 else [True] * len(ents)
        for i, (a, b) in enumerate(offs):
            if flags[i]:
                assert values[a:b] == w_values[a:b], (ents[i].name, eid)  # exactly equal
                compared[i] += 1
        if all(flags):
            assert (late, signals) == (w_late, w_signals), eid
    if parallelism == 1:
        assert compared == [len(want)] * len(ents)
    else:
        print("p=2 compared per stage", dict(zip((e.name for e in ents), compared)), "of", len(want))
        assert min(compared) > len(want) // 5, compared


_ODD_USERS = ["", "a", "é", "\ue000", "\uffff", "😀", "𝄞x", "\U0010fffd", "日本語", "x" * 300]


def test_graph_encodings_round_trip(jvm):
    """The graph context (the record's graph field) and the graph states decode to what was encoded, with the
    edge values: empty sketches (present but empty is not absent), user ids and keys with non-ASCII,
    private-use and astral characters, NO_FRAUD, times far before and after the base, a link state with and
    without its timer; a label store keeps its order. And Python's str order is what the caps' ties use."""
    from udfs.chain import spec_document as doc_of
    from udfs.features import FEATURES_WITH_GRAPH
    from udfs.graph import NO_FRAUD

    _, J = jvm
    doc = json.dumps(doc_of(LATENESS, FEATURES_WITH_GRAPH))
    ts = 1_767_225_600_123
    far = [ts, ts - 1, ts + 86_400_000, ts - 10 * 365 * 86_400_000, 0, -5, (1 << 62), NO_FRAUD + 1]
    sk = {u: [far[i % len(far)], NO_FRAUD if i % 3 == 0 else far[(i + 3) % len(far)]] for i, u in enumerate(_ODD_USERS)}
    contexts = [
        {"ts": ts, "fraud": NO_FRAUD, "sketch": {}, "side": {}},
        {"ts": ts, "fraud": ts - 5, "sketch": {"0": {"key": "10.0.0.1", "users": {}}}, "side": {}},
        {"ts": ts, "fraud": 1, "sketch": {"0": {"key": "😀ip", "users": sk}, "2": {"key": "", "users": {"a": [ts, ts]}}},
         "side": {**sk, "z": [0, NO_FRAUD]}},
    ]
    for c in contexts:
        back = json.loads(J.GraphLocalRunner.contextRoundTrip(doc, "device", json.dumps(c)))
        assert back.pop("bytes") > 0 and back == c
    members = [
        {"newest": ts, "m": {}, "p": []},
        {"newest": ts, "m": {u: [v[0], v[1], sk if i % 2 else {}] for i, (u, v) in enumerate(sk.items())},
         "p": [[u, f"device\x00{u}d", far[i % len(far)]] for i, u in enumerate(_ODD_USERS)]},
    ]
    for m in members:
        back = json.loads(J.GraphLocalRunner.memberStateRoundTrip(doc, "ip", json.dumps(m)))
        assert back.pop("bytes") > 0 and back == m
    links = [{"newest": ts, "timer": None, "e": {}},
             {"newest": ts, "timer": ts + 7 * 86_400_000 + 60_001,
              "e": {"ip\x00😀": [ts - 1, {}], "device\x00\uffff": [ts, sk], "payment\x00c1": [0, {"a": [ts, NO_FRAUD]}]}}]
    for x in links:
        back = json.loads(J.GraphLocalRunner.linkStateRoundTrip(doc, "link", json.dumps(x)))
        assert back.pop("bytes") > 0 and back == x
    lab = {"at": 1_767_000_000_000, "lab": [[json.dumps([u, f"e{i}"]), u, far[i % len(far)]]
                                           for i, u in enumerate(reversed(_ODD_USERS))]}
    back = json.loads(J.GraphLocalRunner.labelsRoundTrip(json.dumps(lab)))
    assert back.pop("bytes") > 0 and back == lab
    words = _ODD_USERS + ["s\uffff1", "s😀1", "s\ue0001", "s𝄞", "s", "sa", "s\U0010fffd"]
    assert json.loads(J.GraphLocalRunner.sortCodePoints(json.dumps(words))) == sorted(words)
    assert sorted(words) != sorted(words, key=lambda w: w.encode("utf-16-be"))  # the orders differ here


def test_graph_state_bytes_per_key_at_the_caps(jvm):
    """The graph state's encoded size per key with every cap full (generator-like ids, times over the week,
    no fraud), printed for docs/features.md; bounded as documented."""
    from udfs.chain import spec_document as doc_of
    from udfs.features import FEATURES_WITH_GRAPH, GRAPH
    from udfs.graph import NO_FRAUD

    _, J = jvm
    doc = json.dumps(doc_of(LATENESS, FEATURES_WITH_GRAPH))
    k, ke, kp, h = GRAPH["members_cap"], GRAPH["entities_cap"], GRAPH["pairs_cap"], GRAPH["horizon_ms"]
    ts = 1_767_225_600_000
    rnd = random.Random(1)
    uid = lambda: f"u11-{rnd.randrange(10**7):07d}"  # noqa: E731
    sketch = lambda n: {uid(): [ts - rnd.randrange(h), NO_FRAUD] for _ in range(n)}  # noqa: E731
    sizes = {}
    sizes["ip (K members, KP pairs)"] = json.loads(J.GraphLocalRunner.memberStateRoundTrip(doc, "ip", json.dumps(
        {"newest": ts, "m": {u: [t, f, {}] for u, (t, f) in sketch(k).items()},
         "p": [[uid(), f"device\x00d11-{rnd.randrange(10**7):07d}", ts - rnd.randrange(h)] for _ in range(kp)]})))["bytes"]
    for name, up in (("device", k), ("payment", 2 * k)):
        sizes[f"{name} (K members, each {up} upstream)"] = json.loads(J.GraphLocalRunner.memberStateRoundTrip(
            doc, name, json.dumps({"newest": ts, "m": {u: [t, f, sketch(up)] for u, (t, f) in sketch(k).items()},
                                   "p": []})))["bytes"]
    sizes["link (KE entities of K users)"] = json.loads(J.GraphLocalRunner.linkStateRoundTrip(doc, "link", json.dumps(
        {"newest": ts, "timer": ts + h, "e": {f"device\x00d11-{i:07d}": [ts - rnd.randrange(h), sketch(k)]
                                              for i in range(ke)}})))["bytes"]
    sizes["context (3 sketches of K, side of 2K(1+K))"] = json.loads(J.GraphLocalRunner.contextRoundTrip(
        doc, "link", json.dumps({"ts": ts, "fraud": NO_FRAUD, "side": sketch(2 * k * (1 + k)),
                                 "sketch": {str(i): {"key": f"d11-{i:07d}", "users": sketch(k)} for i in range(3)}})))["bytes"]
    print(sizes)
    # every user id distinct (the worst case: ids are strings, each written once per state)
    assert sizes["ip (K members, KP pairs)"] < 2_500 and sizes["device (K members, each 16 upstream)"] < 6_000
    assert sizes["payment (K members, each 32 upstream)"] < 11_000 and sizes["link (KE entities of K users)"] < 6_000


def test_a_bad_graph_spec_is_refused_when_the_job_is_built(jvm):
    """The graph constants come from the spec document only: a spec whose graph section is missing or
    wrong, a graph aggregate on an entity whose role cannot compute it, a graph horizon other than the
    graph's, or a record without the graph field fails in the stage's constructor with a clear message."""
    from py4j.protocol import Py4JJavaError

    from udfs.chain import spec_document as doc_of
    from udfs.features import FEATURES_WITH_GRAPH

    _, J = jvm
    good = doc_of(LATENESS, FEATURES_WITH_GRAPH)
    J.EntityWindowsFunction(json.dumps(good), "ip", DEDUP, True, "t")
    J.GraphLinkFunction(json.dumps(good), "link", "t")

    def bad(change):
        d = json.loads(json.dumps(good))
        change(d)
        return json.dumps(d)

    def feature(d, name):
        return next(f for f in d["features"] if f["name"] == name)

    cases = [
        (lambda d: d.pop("graph"), "device", 'no "graph" section'),
        (lambda d: d["graph"].update(members_cap=0), "device", "graph.members_cap must be a positive integer"),
        (lambda d: d["graph"].pop("max_labels"), "user", "graph.max_labels must be a positive integer"),
        (lambda d: d["graph"].update(link_kinds=["card"]), "ip", "link_kinds: no entity card"),
        (lambda d: feature(d, "graph_device_users_7d").update(agg="graph_group_users"), "device",
         "graph_group_users cannot be computed by a graph members stage"),
        (lambda d: feature(d, "graph_device_users_7d").update(horizon_ms=86_400_000), "device",
         "graph feature's horizon must be graph.horizon_ms"),
        (lambda d: d["record_fields"].remove("graph"), "payment", 'the record has no "graph" field'),
    ]
    for change, entity, message in cases:
        with pytest.raises(Py4JJavaError, match=message):
            J.EntityWindowsFunction(bad(change), entity, DEDUP, True, "t")
    with pytest.raises(Py4JJavaError, match="link is the graph link stage"):
        J.EntityWindowsFunction(json.dumps(good), "link", DEDUP, True, "t")
    with pytest.raises(Py4JJavaError, match="not the spec's graph link stage"):
        J.GraphLinkFunction(json.dumps(good), "device", "t")


def test_the_job_plan_with_graph_features_on_the_jvm_runtime(tmp_path):
    """With RISKSTREAM_GRAPH_FEATURES=1 (read at import: a fresh interpreter) the jvm runtime builds the job:
    the link stage after payment (link-windows, uid link-windows-jvm) before the decide stage."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    code = (
        "import json\n"
        "from riskstream.config import JobConfig\n"
        "from pipelines import decision_job\n"
        "from tests.test_job_flink import _stage_chain, _stream_nodes\n"
        "cfg = JobConfig(bootstrap_servers='127.0.0.1:1', stage_runtime='jvm')\n"
        "env = decision_job.make_env(cfg)\n"
        "decision_job.build(env, cfg)\n"
        "print(json.dumps({'uids': dict(_stream_nodes(env)), 'chain': _stage_chain(env)}))\n")
    env = {**os.environ, "RISKSTREAM_GRAPH_FEATURES": "1", "PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    plan = json.loads(out.stdout.strip().splitlines()[-1])
    assert plan["chain"] == ["user-windows", "ip-windows", "device-windows", "payment-windows", "link-windows",
                             "score-decide"]
    assert plan["uids"]["link-windows"] == "link-windows-jvm"
