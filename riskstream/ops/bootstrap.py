"""Warm start: the job's window and label state built from a history of events and labels, written as a
savepoint the job starts from (``riskstream bootstrap``, then ``riskstream run --restore-from PATH``).

A new deployment otherwise starts with empty 7- and 30-day windows and no label features: blind for 30
days. The history is read exactly as ``riskstream replay`` reads it (the own-data formats and mapping,
labels with arrival times; a label is folded before the first event whose ``ts`` is at or after its
arrival), written as one JSON line per event or label in arrival order, and folded by the JVM stages'
own logic (``io.riskstream.flink.Bootstrap``: dedup, windows, labels, cleanup timers by the replay's
watermark rule) into a savepoint under the JVM entity stages' uids (State Processor API).

The history can also be the job's own topics (:func:`read_topics`, ``riskstream bootstrap --from-topic
--from-time T``): the events and labels topics' committed records in a range of record timestamps, up to
the end offsets when the read starts, parsed by the job's parsers (what the job dead-letters is skipped and
counted), each topic's partitions merged by record timestamp (the broker's append time on the job's topics)
and each label folded before the first event that arrived at or after it.

Pitfalls:
- The savepoint holds the entity stages only: the job's sources start where ``starting_offsets`` says
  (``committed``: the group's offsets, else the topic's start). Start the live job from the events the
  history does not cover, or they are counted twice in the windows (e.g. ``--starting-offsets latest``
  when the history runs up to now).
- It is written for the JVM stage runtime (the default); ``max_parallelism`` must be the job's.
- Labels whose arrival is after the history's last event are not folded (the labels topic brings them).
- The fold runs in this process's JVM: give it heap for the state (about 1 KB per user with its device,
  ip and card in memory), e.g. ``JVM_ARGS=-Xmx6g`` for millions of users.
"""

from __future__ import annotations

import heapq
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import orjson

from ..config import JobConfig
from . import lineage
from .jars import flink_jar_urls


class BootstrapFailed(RuntimeError):
    """The bootstrap job failed (or could not finish: a task of Flink's State Processor API died, which Flink
    does not report); nothing is left at the output."""


def _java_message(e) -> str:
    """The messages of a Py4JJavaError's Java exception and its causes, outermost first, each once."""
    parts, t = [], e.java_exception
    while t is not None and len(parts) < 8:
        m = t.getMessage() or t.getClass().getName()
        if not any(m in p for p in parts):
            parts.append(m)
        t = t.getCause()
    return ": ".join(parts)


def written(dest: Path, write):
    """``write()`` (a call into ``io.riskstream.flink.Bootstrap`` that writes the savepoint at ``dest``), its
    Java failure as :class:`BootstrapFailed` with the Java messages, and ``dest`` removed then: a failed or
    incomplete job's folder must not be restored."""
    from py4j.protocol import Py4JJavaError

    try:
        return write()
    except Py4JJavaError as e:
        shutil.rmtree(dest, ignore_errors=True)
        raise BootstrapFailed(f"writing the savepoint failed: {_java_message(e)}") from None


@dataclass(frozen=True)
class BootstrapResult:
    path: Path
    events: int
    duplicates: int
    labels: int
    keys: dict[str, int]
    rejected: int
    history_start_ts: int | None
    history_end_ts: int | None
    seconds: float
    labels_later: int = 0  # labels arriving after the history's last event: not folded
    topics: TopicRead | None = None  # with a topic range: what the read found


def write_history(input_path, out: Path, *, labels_path=None, mapping=None, order: str = "file",
                  label_delay_ms: int | str | None = None) -> dict:
    """The history as the fold reads it: ``{"event": {...}}`` / ``{"label": {...}}`` lines in arrival order.
    Labels as ``replay`` reads them (either spelling; ``udfs.labels.label_arrival``'s rule with
    ``label_delay_ms``). Returns counts and the event-time range. Raises ``udfs.ingest.IngestError`` on an
    unusable input."""
    from udfs.ingest import load_input
    from udfs.replay import read_labels

    inp = load_input(input_path, mapping, order)
    # after the input: a label in the training spelling takes its keys and time from its event
    labels = read_labels(labels_path, inp, label_delay_ms)
    st = _write_folded(((item.event.ts, item.event) for item in inp.events), labels, out)
    return {**st, "rejected": inp.rejected() or 0}


def _write_folded(events: Iterable[tuple[int, object]], labels: list[tuple[int, object]], out: Path) -> dict:
    """``(arrival, udfs.events.Event)`` pairs in arrival order and ``(arrival, udfs.labels.Label)`` pairs as
    fold lines: each label before the first event that arrived at or after it (ties keep the labels' order);
    labels arriving after the last event are left out (``labels_later``). A file's event arrives at its
    ``ts``."""
    from udfs.chain import label_identity

    pending = [(int(a), i, lab) for i, (a, lab) in enumerate(labels)]
    heapq.heapify(pending)
    n_events = n_labels = 0
    first = last = None
    with open(out, "wb") as f:
        for arrival, ev in events:
            while pending and pending[0][0] <= arrival:
                lab = heapq.heappop(pending)[2]
                # the label stores key labelled events by (user, event id), as the job's label records do;
                # each named key under its entity's key field (Bootstrap.ChainState reads the stage's)
                keys = {k: v for k, v in lab.wire().items() if k not in ("event_id", "event_ts", "label")}
                f.write(orjson.dumps({"label": {"event_id": label_identity(lab.user_id, lab.event_id), **keys,
                                                "ts": lab.event_ts, "label": lab.label}}))
                f.write(b"\n")
                n_labels += 1
            f.write(orjson.dumps({"event": ev._asdict()}))
            f.write(b"\n")
            n_events += 1
            first = ev.ts if first is None else min(first, ev.ts)
            last = ev.ts if last is None else max(last, ev.ts)
    return {"events": n_events, "labels": n_labels, "labels_later": len(pending), "first_ts": first, "last_ts": last}


# -- the history from the topics -----------------------------------------------------------------------


@dataclass(frozen=True)
class TopicRange:
    """Which records of the job's events and labels topics make the history: record timestamps in
    ``[from_ms, to_ms)`` (None: from the oldest record kept; up to the end offsets when the read starts)."""
    from_ms: int | None = None
    to_ms: int | None = None


@dataclass
class TopicRead:
    """What a read of the topics found: records read per topic, events rejected by the job's parser per
    reason (each a dead letter in the job), labels refused, and the offset ranges read."""
    records: dict[str, int] = field(default_factory=dict)
    dead_letters: dict[str, int] = field(default_factory=dict)
    bad_labels: int = 0
    ranges: dict[str, list[list[int]]] = field(default_factory=dict)


def _topic_bounds(consumer, topic: str, rng: TopicRange) -> list[tuple[object, int, int]]:
    """(partition, start, end) per partition: from the first record at or after ``from_ms`` to the end
    offset now (read_committed: the last stable offset) or the first record at or after ``to_ms``."""
    from kafka import TopicPartition

    parts = consumer.partitions_for_topic(topic)
    if not parts:
        raise ValueError(f"topic {topic!r} does not exist on the broker (check --events-topic, --labels-topic "
                         "('' for no labels) and --bootstrap-servers)")
    tps = [TopicPartition(topic, p) for p in sorted(parts)]
    end = consumer.end_offsets(tps)
    start = consumer.beginning_offsets(tps)

    def at(ts_ms: int | None, default: dict) -> dict:
        if ts_ms is None:
            return dict(default)
        found = consumer.offsets_for_times({tp: ts_ms for tp in tps})
        return {tp: (found[tp].offset if found.get(tp) else end[tp]) for tp in tps}

    start, stop = at(rng.from_ms, start), at(rng.to_ms, end)
    return [(tp, start[tp], min(stop[tp], end[tp])) for tp in tps]


def _partition_records(make_consumer, tp, start: int, end: int, stall_s: float = 60.0) -> Iterator:
    """The records of one partition in ``[start, end)``, in offset order, through a consumer of its own
    (so that partitions can be merged lazily by record time)."""
    if start >= end:
        return
    c = make_consumer()
    try:
        c.assign([tp])
        c.seek(tp, start)
        seen = time.monotonic()
        while c.position(tp) < end:
            batch = c.poll(timeout_ms=500, max_records=5000).get(tp, [])
            if batch:
                seen = time.monotonic()
            elif time.monotonic() - seen > stall_s:
                raise TimeoutError(f"no records from {tp.topic}[{tp.partition}] for {stall_s:.0f}s before offset "
                                   f"{end} (at {c.position(tp)}): is the broker up?")
            for r in batch:
                if r.offset >= end:
                    return
                yield r
    finally:
        c.close()


def _merged(make_consumer, bounds) -> Iterator:
    """The partitions' records merged by record timestamp (each partition in offset order; ties: the lower
    partition first), the order in which they most likely arrived."""
    return heapq.merge(*(_partition_records(make_consumer, tp, a, b) for tp, a, b in bounds),
                       key=lambda r: r.timestamp)


def read_topics(cfg: JobConfig, rng: TopicRange, out: Path) -> tuple[dict, TopicRead]:
    """The history from the job's topics (``cfg.events_topic``, and ``cfg.labels_topic`` when set) as fold
    lines in ``out``, read with read_committed up to the end offsets at the start of the read.

    Events are parsed by the job's parser (``udfs.events.parse_event``, the reference the JVM parser is held
    to): a record the job would dead-letter (a tombstone as ``null_value``, bad bytes with the parser's
    reason) is skipped and counted. Labels are parsed as the job's ``parse-labels`` does. Arrival is the record
    timestamp (the broker's append time on the job's topics, ``riskstream.topics``): each topic's partitions
    are merged by it, and a label is folded before the first event that arrived at or after it, as the job
    would see them interleaved."""
    from kafka import KafkaConsumer

    from udfs.events import NULL_VALUE, Rejection, parse_event
    from udfs.labels import parse_label

    def make_consumer():
        # check_crcs off: kafka-python checks CRC32C in pure Python, 40 % of the read's time here; the broker
        # checked each batch's CRC when it was written, and TCP checksums the transfer
        return KafkaConsumer(bootstrap_servers=cfg.bootstrap_servers, isolation_level="read_committed",
                             enable_auto_commit=False, group_id=None, fetch_max_wait_ms=100, check_crcs=False,
                             max_partition_fetch_bytes=4 * 1024 * 1024, **cfg.kafka_python_properties())

    read = TopicRead()
    meta = make_consumer()
    try:
        ev_bounds = _topic_bounds(meta, cfg.events_topic, rng)
        lab_bounds = _topic_bounds(meta, cfg.labels_topic, rng) if cfg.labels_topic else []
    finally:
        meta.close()
    for tp, a, b in ev_bounds + lab_bounds:
        read.ranges.setdefault(tp.topic, []).append([tp.partition, a, b])
    labels: list[tuple[int, object]] = []  # (arrival, udfs.labels.Label)
    for r in _merged(make_consumer, lab_bounds):
        read.records[cfg.labels_topic] = read.records.get(cfg.labels_topic, 0) + 1
        lab = parse_label(r.value) if r.value is not None else None
        if lab is None or isinstance(lab, Rejection):
            read.bad_labels += 1
            continue
        labels.append((int(r.timestamp), lab))
    labels.sort(key=lambda x: x[0])  # by arrival; a stable sort keeps the read order of ties

    def events():
        for r in _merged(make_consumer, ev_bounds):
            read.records[cfg.events_topic] = read.records.get(cfg.events_topic, 0) + 1
            ev = parse_event(r.value) if r.value is not None else Rejection(NULL_VALUE, "")
            if isinstance(ev, Rejection):
                read.dead_letters[ev.reason] = read.dead_letters.get(ev.reason, 0) + 1
                continue
            yield int(r.timestamp), ev

    st = _write_folded(events(), labels, out)
    read.records.setdefault(cfg.events_topic, 0)
    return {**st, "rejected": sum(read.dead_letters.values())}, read


def state_jars(cfg: JobConfig) -> list[str]:
    """The job's jars (connector, this project's JVM module) and the State Processor API ([state])."""
    from .. import paths

    state = sorted((paths.jars_root() / "state").glob("*.jar"))
    if not state:
        raise FileNotFoundError(f"the State Processor API jar is not in {paths.jars_root() / 'state'}: run "
                                "`riskstream jars` (section [state] of pom-deps.txt)")
    return flink_jar_urls(cfg.jars_dir) + [j.resolve().as_uri() for j in state]


def bootstrap(cfg: JobConfig, input_path=None, *, labels_path=None, mapping=None, order: str = "file",
              output: Path | None = None, parallelism: int = 2, label_delay_ms: int | str | None = None,
              topics: TopicRange | None = None) -> BootstrapResult:
    """Fold the history and write the savepoint (default: a new ``bootstrap-<time>`` folder among the job's
    savepoints); record it in the job's lineage as a savepoint of run ``bootstrap``. The history is the file
    ``input_path`` (with ``labels_path``), or, with ``topics``, the job's events and labels topics in that
    time range (:func:`read_topics`)."""
    from pyflink.java_gateway import get_gateway
    from pyflink.util.java_utils import add_jars_to_context_class_loader

    from udfs.chain import spec_document

    if cfg.stage_runtime != "jvm":
        raise ValueError("bootstrap writes the JVM entity stages' state; the Python stages (--stage-runtime "
                         "python) cannot restore it")
    from udfs.features import GRAPH_FEATURES, GRAPH_FEATURES_ENV

    if GRAPH_FEATURES:
        raise ValueError(f"bootstrap writes no graph features' state yet ({GRAPH_FEATURES_ENV} is on): bootstrap "
                         f"with {GRAPH_FEATURES_ENV} unset, then restore that savepoint into the job with it on: the "
                         "window state is the same, and the graph state starts empty and fills over 7 days")
    if (input_path is None) == (topics is None):
        raise ValueError("give the history as a file (--input) or as the topics (--from-topic), one of them")
    if topics is not None and (labels_path is not None or label_delay_ms is not None):
        raise ValueError("with --from-topic the labels come from the labels topic (--labels-topic), arriving at "
                         "their records' timestamps: --labels and --label-delay are for a history file")
    if topics is not None and None not in (topics.from_ms, topics.to_ms) and topics.from_ms >= topics.to_ms:
        raise ValueError("--from-time must be before --to-time")
    t0 = time.monotonic()
    dest = Path(output) if output else lineage.savepoints_dir(cfg.job_name) / time.strftime("bootstrap-%Y%m%d-%H%M%S")
    dest = dest.resolve()
    if dest.exists():
        raise FileExistsError(f"{dest} exists: a savepoint is written to a new folder (give another --output)")
    jars = state_jars(cfg)
    read = None
    with tempfile.TemporaryDirectory(prefix="riskstream-bootstrap-") as work:
        hist = Path(work) / "history.jsonl"
        if topics is not None:
            st, read = read_topics(cfg, topics, hist)
            where = f"the topic {cfg.events_topic} in that time range"
        else:
            st = write_history(input_path, hist, labels_path=labels_path, mapping=mapping, order=order,
                               label_delay_ms=label_delay_ms)
            where = str(input_path)
        if st["events"] == 0:
            raise ValueError(f"{where} holds no valid event: nothing to bootstrap")
        add_jars_to_context_class_loader(jars)
        J = get_gateway().jvm.io.riskstream.flink
        spec = orjson.dumps(spec_document(cfg.allowed_lateness_ms)).decode()
        dest.parent.mkdir(parents=True, exist_ok=True)
        summary = orjson.loads(written(dest, lambda: J.Bootstrap.write(
            spec, str(hist), dest.as_uri(), work, int(cfg.dedup_horizon_ms), int(cfg.out_of_orderness_ms),
            int(cfg.max_parallelism), int(parallelism), bool(cfg.labels_topic), cfg.job_name, ";".join(jars))))
    lineage.record_savepoint(cfg.job_name, lineage.BOOTSTRAP_RUN, dest.as_uri(), stopped=False)
    return BootstrapResult(dest, summary["events"], summary["duplicates"], summary["labels"], summary["keys"],
                           st["rejected"], st["first_ts"], st["last_ts"], time.monotonic() - t0,
                           labels_later=st["labels_later"], topics=read)
