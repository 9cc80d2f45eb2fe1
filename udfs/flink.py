"""Thin PyFlink adapters around the pure core (``udfs.chain``): they only move values between Flink state
and the logic. One generic keyed :class:`EntityStage` per entity of the spec, one :class:`ScoreDecide`.

Pitfalls handled here:
- Python state access crosses to the JVM (process mode): each key keeps ONE ValueState (the window dict,
  pickled) read once and written once per event, rather than many MapState entries.
- Unbounded state: one event-time cleanup timer per key, at the key's expiry when first armed and
  re-armed when it fires early (``udfs.windows.arm``/``cleanup``): a busy key never piles up superseded
  timers, which every backend keeps until they fire (RocksDB writes each one).
- A bad record never raises: parsing returns a rejection that goes to the dead-letter side output.
- The broker arrival time: the event-time assigner after parsing replaces each record's timestamp with
  the event's ``ts``, so :class:`ParseValidate` copies the Kafka record's timestamp into the record
  (``arrived_at``) first; later stages cannot read it from the context.
"""

from __future__ import annotations

import bisect
import os
import time

from pyflink.common import Types
from pyflink.common.watermark_strategy import TimestampAssigner
from pyflink.datastream import KeyedProcessFunction, OutputTag, ProcessFunction, RuntimeContext
from pyflink.datastream.functions import BroadcastProcessFunction, KeySelector
from pyflink.datastream.state import MapStateDescriptor, ValueStateDescriptor
from pyflink.datastream.time_domain import TimeDomain

from .chain import (EVENT_FIELDS, Decider, EntityStep, arrived_at, extend, graph_context, is_label, key_index,
                    label_record, pack, unpack)
from .control import Control, ControlError, parse_control, state_key, state_text
from .labels import FRAUD, LEGIT, parse_label
from .events import (
    CONTROL_REJECTED,
    DUPLICATE_EVENT_ID,
    PROCESSING_ERROR,
    Event,
    Rejection,
    dead_letter_record,
    encode_event,
    null_value_record,
    parse_event,
)
from .features import DAY, ENTITY_BY_NAME, FEATURES, LABEL_KEYS, Entity, spec_entities
from .graph import new_context
from .policy import DECISIONS, Policy
from .scoring import Scorer  # imports onnxruntime safely for thread mode (see udfs.scoring)
from .windows import grid_timer
from .worker_log import say

LATENCY_BUCKETS_US = (100, 250, 500, 1000, 2500, 5000, 10000)  # upper bounds of the scoring histogram
LABEL_TTL_MS = 8 * 24 * 3600 * 1000  # a key's labels are dropped at least this long (wall clock) after its last one


def label_ttl_ms(step) -> int:
    """Wall-clock time after a key's last label before its label state goes: 8 days, or the label features'
    longest horizon plus its bucket and a day (a label is readable that long after its event)."""
    return max(LABEL_TTL_MS, step.windows.label_keep_ms + 24 * 3600 * 1000)


def graph_label_ttl_ms(step) -> int:
    """Wall-clock time after a key's last label before its graph label store goes: as :func:`label_ttl_ms`,
    and at least the store's own keep (``GraphParams.label_keep_ms``: the label horizon plus the edge
    horizon) plus a day, as the JVM stage's. Pitfall: a wall-clock TTL assumes events arrive near their
    event time; a backfill of old traffic reads a store its labels' arrival may have dropped."""
    return max(label_ttl_ms(step), step.graph.p.label_keep_ms + DAY)


BYTES = Types.PRIMITIVE_ARRAY(Types.BYTE())
# Between stages a udfs.chain record travels (pack/unpack there). The declared type is PICKLED_BYTE_ARRAY,
# not a typed Row: in thread mode a ROW_NAMED with a LIST(DOUBLE) field is converted field by field at
# every Python/JVM crossing, which measured ~20 % of the three keyed stages' cost (docs/benchmarks.md).
STAGE_VALUE = Types.PICKLED_BYTE_ARRAY()
TS = EVENT_FIELDS.index("ts")  # position of the event time in a record

DEAD_LETTER_TAG = OutputTag("dead-letter", BYTES)


CHAOS_ENV = "RISKSTREAM_CHAOS_DIR"
CHAOS_TASK_FAILURE = "fail-task"


class InjectedFailure(RuntimeError):
    pass


def record_timestamp(ctx) -> int | None:
    """The current element's timestamp (the Kafka record's, from a Kafka source), or None without one:
    thread mode hands null, process mode Long.MIN_VALUE, and Kafka says -1 for "no timestamp"."""
    ts = ctx.timestamp()
    return int(ts) if ts is not None and ts >= 0 else None


class ParseValidate(ProcessFunction):
    """bytes -> a chain record (``udfs.chain.pack``, with ``arrived_at`` from the record's timestamp), or the
    dead-letter side output with reason and original bytes."""

    def __init__(self, job_name: str):
        self.job_name = job_name

    def open(self, runtime_context: RuntimeContext):
        self.dead = runtime_context.get_metrics_group().counter("dead_letters")
        self.valid = runtime_context.get_metrics_group().counter("events_valid")
        self.chaos_dir = os.environ.get(CHAOS_ENV) or None
        self.chaos_next = 0.0

    def _maybe_fail(self) -> None:
        """Fault injection for ``riskstream chaos`` (only when ``RISKSTREAM_CHAOS_DIR`` is set): the first
        subtask to claim the trigger file fails, as a crashed Python worker would, and Flink restarts
        the job's tasks from the last checkpoint. Checked at most every 100 ms."""
        now = time.monotonic()
        if now < self.chaos_next:
            return
        self.chaos_next = now + 0.1
        try:
            os.remove(os.path.join(self.chaos_dir, CHAOS_TASK_FAILURE))
        except FileNotFoundError:
            return
        raise InjectedFailure("riskstream chaos: injected task failure")

    def process_element(self, value, ctx):
        if self.chaos_dir is not None:
            self._maybe_fail()
        if value is None:  # a tombstone; from Kafka the JVM's NullValues stage dead-letters it before this
            self.dead.inc()
            yield DEAD_LETTER_TAG, null_value_record(None, self.job_name, int(time.time() * 1000))
            return
        raw = bytes(value)
        try:
            res = parse_event(raw)
            if isinstance(res, Event):
                row = pack(res, arrived_at=record_timestamp(ctx))
        except Exception as e:  # parse_event must not raise; if it ever does, the record is still kept
            res = Rejection(PROCESSING_ERROR, f"parse: {type(e).__name__}: {e}"[:200])
        if isinstance(res, Event):
            self.valid.inc()
            yield row
        else:
            self.dead.inc()
            yield DEAD_LETTER_TAG, dead_letter_record(raw, res, self.job_name, int(time.time() * 1000))


class ParseLabel(ProcessFunction):
    """Label bytes -> a label record (``udfs.chain.label_record``) for the label-signal stages, or a dead
    letter."""

    def __init__(self, job_name: str, rows: bool = False):
        self.job_name = job_name
        self.rows = rows  # for the JVM stages: the record as a Row (udfs.jvm.to_row)

    def process_element(self, value, ctx):
        if value is None:  # a tombstone (from Kafka the JVM's NullValues stage dead-letters it before this)
            yield DEAD_LETTER_TAG, null_value_record(None, self.job_name, int(time.time() * 1000))
            return
        raw = bytes(value)
        res = parse_label(raw)
        if isinstance(res, Rejection):
            yield DEAD_LETTER_TAG, dead_letter_record(raw, res, self.job_name, int(time.time() * 1000))
            return
        rec = label_record(res)
        if self.rows:
            from .jvm import to_row

            rec = to_row(rec)
        yield rec


def _subtask_index(runtime_context) -> int:
    """PyFlink 2.2's ``get_index_of_this_subtask`` calls a Java method Flink 2 moved to ``TaskInfo``
    (AttributeError in thread mode); ask ``TaskInfo`` when the wrapper fails."""
    try:
        return runtime_context.get_index_of_this_subtask()
    except AttributeError:
        return runtime_context._runtime_context.getTaskInfo().getIndexOfThisSubtask()


MAX_FUTURE_SKEW_MS = 60_000


class EventTime(TimestampAssigner):
    """Event time from the record's ``ts``, clamped to the wall clock plus one minute: one event (or label)
    stamped in the future would otherwise push the watermark ahead and fire every key's cleanup timer."""

    def extract_timestamp(self, value, record_timestamp: int) -> int:
        return min(value[TS], int(time.time() * 1000) + MAX_FUTURE_SKEW_MS)


class EntityKey(KeySelector):
    """The entity's key field of a record; "" for an optional entity's keyless events (they touch no
    state, so one key for all of them costs nothing but skew)."""

    def __init__(self, entity: Entity):
        self.index = key_index(entity)

    def get_key(self, value):
        return value[self.index] or ""


def _dead(value, reason: str, detail: str, job_name: str):
    """A dead letter for a parsed record: the original bytes are gone by now, so the payload is the event
    re-encoded (``original_reencoded``)."""
    try:
        raw = encode_event(unpack(value)[0])
    except Exception:  # the record itself is unusable: keep what can be kept
        raw = repr(tuple(value)).encode()
    return DEAD_LETTER_TAG, dead_letter_record(raw, Rejection(reason, detail[:200]), job_name,
                                               int(time.time() * 1000), reencoded=True)


class EntityStage(KeyedProcessFunction):
    """One entity's keyed stage (``udfs.chain.EntityStep``): dedup, window update, remember; appends the
    entity's values to the record. The key's window dict is ONE ValueState, read and written once per event.

    A record that makes the stage raise (a bug, not bad input: parsing already validated it) goes to the
    dead-letter side output with reason ``processing_error``; the job keeps running instead of restarting
    into the same record forever. Label records (``labels=True`` and an entity that reads labels)
    update a second ValueState, cleaned by a processing-time timer ``LABEL_TTL_MS`` after the key's last
    label: labels come with wall-clock arrival, so event-time timers would judge them by the wrong clock.

    Graph features (``EntityStep.graph_step``, as ``udfs.chain.Chain`` runs it): the record's graph context
    (``udfs.chain.graph_context``, started by the first stage) carries the user's fraud time and the members
    stages' sketches to the link stage, which drops it. A members stage keeps its graph state in its own
    ValueState, cleared with the windows by their cleanup timer, and its graph label store in another, cleaned
    with the window labels by the processing-time timer (one pending per key for both:
    :func:`graph_label_ttl_ms`). The link stage (no windows) keeps graph state only, with its own event-time
    cleanup timer (``EntityStep.on_graph_timer``). Pitfall: the graph values follow the window values, as
    in the feature vector.
    """

    def __init__(self, entity: str, allowed_lateness_ms: int, job_name: str = "riskstream",
                 dedup_horizon_ms: int = 600_000, labels: bool = False, features: tuple | None = None):
        """``features``: the spec (default ``features.FEATURES``, as the job's; tests drive the graph spec
        through the stage in a process without the switch)."""
        self.entity = entity
        self.allowed_lateness_ms = allowed_lateness_ms
        self.job_name = job_name
        self.dedup_horizon_ms = dedup_horizon_ms
        self.features = features
        self.labels = labels and ENTITY_BY_NAME[entity].reads_labels_in(FEATURES if features is None else features)

    def open(self, runtime_context: RuntimeContext):
        self.step = EntityStep(ENTITY_BY_NAME[self.entity], self.allowed_lateness_ms, self.dedup_horizon_ms,
                               self.features)
        self.link = self.step.is_link
        self.state = None if self.link else runtime_context.get_state(
            ValueStateDescriptor(f"{self.entity}_windows", Types.PICKLED_BYTE_ARRAY()))
        self.gstate = None  # the key's graph state (udfs.graph): members and link stages
        if self.step.keeps_graph_state:
            self.gstate = runtime_context.get_state(
                ValueStateDescriptor(f"{self.entity}_graph", Types.PICKLED_BYTE_ARRAY()))
        group = runtime_context.get_metrics_group()
        self.late_counter = group.counter("late_events")
        self.error_counter = group.counter("processing_errors")
        self.dup_counter = group.counter("duplicate_events") if self.step.dedup_horizon_ms else None
        self.glabels = None
        if self.labels:
            self.known = runtime_context.get_state(
                ValueStateDescriptor(f"{self.entity}_labels", Types.PICKLED_BYTE_ARRAY()))
            if self.step.keeps_graph_labels:  # {"lab": udfs.graph.fold_label's store, "at": wall-clock ms}
                self.glabels = runtime_context.get_state(
                    ValueStateDescriptor(f"{self.entity}_graph_labels", Types.PICKLED_BYTE_ARRAY()))
            # counted once: by the first stage of the chain that reads labels (it reads every label)
            spec = FEATURES if self.features is None else self.features
            first = next(e.name for e in spec_entities(spec) if e.reads_labels_in(spec))
            self.label_counters = ({k: group.counter(f"labels_{k}") for k in (FRAUD, LEGIT)}
                                   if first == self.entity else None)

    def process_element(self, value, ctx):
        if is_label(value):
            if self.labels:
                self._label(value, ctx)
            return
        try:
            ev = unpack(value)[0]
            key = self.step.key(ev)
            if key is None:
                yield extend(value, self.step.empty_values(), False, None)
                return
            late = False
            if self.link:
                out = self._link(value, ev, key, ctx)
            else:
                st = self.state.value()
                if self.step.duplicate(st, ev):
                    self.dup_counter.inc()
                    yield _dead(value, DUPLICATE_EVENT_ID,
                                f"event_id seen for this {self.entity} within {self.step.dedup_horizon_ms} ms",
                                self.job_name)
                    return
                st_l = self.known.value() if self.labels else None
                st, vals, late, timer = self.step.step(st, ev, st_l)
                if timer is not None:
                    ctx.timer_service().register_event_time_timer(timer)
                self.state.update(st)
                signals = self.step.signals(st_l, ev) if self.labels else None
                graph = graph_context(value)
                if self.step.graph is not None:
                    graph = graph if graph is not None else new_context(ev)  # the first stage starts it
                    gst, gvals, _ = self.step.graph_step(
                        self.gstate.value() if self.gstate is not None else None,
                        (self.glabels.value() or {}).get("lab") if self.glabels is not None else None,
                        ev, key, graph)
                    if gst is not None:
                        self.gstate.update(gst)
                    vals = vals + gvals
                out = extend(value, vals, late, signals, graph)
        except Exception as e:
            self.error_counter.inc()
            yield _dead(value, PROCESSING_ERROR, f"{self.entity} stage: {type(e).__name__}: {e}", self.job_name)
            return
        if late:
            self.late_counter.inc()
        yield out

    def _link(self, value, ev, key: str, ctx):
        """The link stage on one event: graph state only; the context ends here (the decide stage reads none)."""
        gst, vals, timer = self.step.graph_step(self.gstate.value(), None, ev, key,
                                                graph_context(value) or new_context(ev))
        self.gstate.update(gst)
        if timer is not None:
            ctx.timer_service().register_event_time_timer(timer)
        return extend(value, vals, False, None, None)

    def _label(self, value, ctx) -> None:
        """Fold a label into the key's label state (``udfs.chain.EntityStep.fold_label``, plus ``"at"``: the
        wall-clock time of its last label) and its graph label store (``EntityStep.graph_label``). A label
        that does not name this entity's key is skipped. One pending processing-time timer per key: armed
        when the key had no label state (on_timer re-arms it while labels keep coming)."""
        try:
            if self.step.label_key(value) is None:
                return
            st = self.known.value() or {}
            gst = self.glabels.value() if self.glabels is not None else None
            pending = "at" in st or gst is not None
            known = self.step.fold_label({k: v for k, v in st.items() if k != "at"}, value)
            if self.label_counters is not None:
                self.label_counters[unpack(value)[0].extras["label"]].inc()
            now = int(time.time() * 1000)
            ttls = []
            if known:
                self.known.update({**known, "at": now})
                ttls.append(label_ttl_ms(self.step))
            else:
                self.known.clear()
            if self.glabels is not None:
                lab = self.step.graph_label(gst["lab"] if gst else None, value)
                if lab:
                    self.glabels.update({"lab": lab, "at": now})
                    ttls.append(graph_label_ttl_ms(self.step))
                else:
                    self.glabels.clear()
            if ttls and not pending:
                ctx.timer_service().register_processing_time_timer(grid_timer(now + min(ttls)))
        except Exception as e:  # a label must never fail the job
            self.error_counter.inc()
            say(f"[riskstream] {self.entity} stage: label for {value[0]} not applied: {type(e).__name__}: {e}")

    def _label_stores(self):
        """(ValueState, wall-clock TTL) of the key's label stores."""
        if self.labels:
            yield self.known, label_ttl_ms(self.step)
        if self.glabels is not None:
            yield self.glabels, graph_label_ttl_ms(self.step)

    def on_timer(self, timestamp: int, ctx):
        if ctx.time_domain() == TimeDomain.PROCESSING_TIME:  # only label cleanup uses processing time
            due_next = None
            for store, ttl in self._label_stores():
                st = store.value()
                if st is None:
                    continue
                due = st["at"] + ttl
                if due <= timestamp:
                    store.clear()
                else:  # labels came since the timer was armed
                    due_next = due if due_next is None else min(due_next, due)
            if due_next is not None:  # timers at one grid point collapse into one
                ctx.timer_service().register_processing_time_timer(grid_timer(due_next))
            return iter(())
        if self.link:  # the link stage's graph state has its own expiry
            gst = self.gstate.value()
            what, timer = self.step.on_graph_timer(gst, timestamp)
            if what == "clear":
                self.gstate.clear()
            elif what == "rearm":
                ctx.timer_service().register_event_time_timer(timer)
                self.gstate.update(gst)
            return iter(())
        st = self.state.value()
        what, timer = self.step.on_timer(st, timestamp)
        if what == "clear":
            self.state.clear()  # idle past the longest horizon + lateness: no event can read it again
            if self.gstate is not None:  # a members key's graph state goes with its windows, as in Chain
                self.gstate.clear()
        elif what == "rearm":
            ctx.timer_service().register_event_time_timer(timer)
            st["timer"] = timer
            self.state.update(st)
        return iter(())


class _DecideLogic:
    """The decide stage's body (``udfs.chain.Decider``) and its metrics, shared by both variants.

    The model is loaded once per task in ``open``; the CLI loads it once before submitting as well, so a
    bad model fails the start, not the running job. Live changes (model, challenger, rules) come through
    broadcast state in :class:`ScoreDecideControlled` (see ``udfs.control``).
    """

    def __init__(self, model_path: str, policy: Policy, job_name: str = "riskstream",
                 project_root: str | None = None):
        self.model_path = model_path
        self.policy = policy
        self.job_name = job_name
        self.project_root = project_root

    def open(self, runtime_context: RuntimeContext):
        from pathlib import Path

        self.decider = Decider(Control.initial(Scorer(self.model_path), self.policy,
                                               Path(self.project_root) if self.project_root else None))
        self.control = self.decider.control
        self.group = runtime_context.get_metrics_group()
        self.by_kind = {d: self.group.counter(f"decisions_{d}") for d in DECISIONS}
        self.error_counter = self.group.counter("processing_errors")
        self.subtask = _subtask_index(runtime_context)
        self.hists: dict[str, list] = {}

    def _latency_buckets(self, version: str) -> list:
        """A histogram of the time from the decide stage's input to the encoded decision, one counter per
        bucket (not cumulative), under a ``model_version`` group key (a Prometheus label)."""
        h = self.hists.get(version)
        if h is None:
            g = self.group.add_group("model_version", version).add_group("scoring_latency_us")
            h = self.hists[version] = [g.counter(f"le_{b}") for b in LATENCY_BUCKETS_US] + [g.counter("le_inf")]
        return h

    def _decide(self, value) -> bytes:
        t0 = time.perf_counter()
        c = self.control
        try:
            ev, values, late, signals = unpack(value)
        except Exception as e:  # an unusable record still gets a fail-safe decision
            from .decision import encode, error_decision_record

            self.error_counter.inc()
            self.by_kind["review"].inc()
            keys = {f: value[i] for i, f in enumerate(EVENT_FIELDS) if f in LABEL_KEYS and i < len(value)}
            return encode(error_decision_record(value[0], value[1], keys, f"{type(e).__name__}: {e}",
                                                c.champion.version, c.policy.version, int(time.time() * 1000)))
        decision, out, failed = self.decider.decide(ev, values, late, signals, int(time.time() * 1000),
                                                    arrived_at=arrived_at(value))
        if failed:
            self.error_counter.inc()
        self.by_kind[decision].inc()
        self._latency_buckets(c.champion.version)[
            bisect.bisect_left(LATENCY_BUCKETS_US, (time.perf_counter() - t0) * 1e6)].inc()
        return out


class ScoreDecide(_DecideLogic, ProcessFunction):
    """The decide stage with the model and rules fixed at start (tests, benchmarks)."""

    def process_element(self, value, ctx):
        yield self._decide(value)


CONTROL_STATE = MapStateDescriptor("control", Types.STRING(), Types.PICKLED_BYTE_ARRAY())


def apply_control(control: Control, raw: bytes) -> tuple[dict, str] | ControlError:
    """Parse and apply one control message: (message, what changed), or the reason it was refused. Any
    failure refuses the message (the current settings keep deciding); nothing here may fail the job."""
    try:
        msg = parse_control(raw)
        return msg, control.apply(msg)
    except Exception as e:
        return e if isinstance(e, ControlError) else ControlError(
            f"refused, the current settings keep deciding: {type(e).__name__}: {e}")


class ValidateControl(ProcessFunction):
    """Control bytes -> Row(key, raw JSON text) for ``io.riskstream.flink.ControlAttach`` (the JVM chain),
    or a ``control_rejected`` dead letter. Run at parallelism 1: a refused message is dead-lettered once.
    Validation applies the message to a scratch control (the model file must load here)."""

    def __init__(self, model_path: str, policy: Policy, job_name: str, project_root: str | None = None):
        self.model_path = model_path
        self.policy = policy
        self.job_name = job_name
        self.project_root = project_root

    def open(self, runtime_context: RuntimeContext):
        from pathlib import Path

        from pyflink.common import Row

        self.row = Row
        self.scratch = Control.initial(Scorer(self.model_path), self.policy,
                                       Path(self.project_root) if self.project_root else None)
        group = runtime_context.get_metrics_group()
        self.control_applied = group.counter("control_applied")
        self.control_rejected = group.counter("control_rejected")

    def process_element(self, value, ctx):
        if value is None:  # a tombstone (from Kafka the JVM's NullValues stage dead-letters it before this)
            yield DEAD_LETTER_TAG, null_value_record(None, self.job_name, int(time.time() * 1000))
            return
        raw = bytes(value)
        res = apply_control(self.scratch, raw)
        if isinstance(res, ControlError):
            e = res
            self.control_rejected.inc()
            yield DEAD_LETTER_TAG, dead_letter_record(raw, Rejection(CONTROL_REJECTED, str(e)[:200]),
                                                      self.job_name, int(time.time() * 1000))
            return
        msg, what = res
        self.control_applied.inc()
        say(f"[riskstream] control accepted: {what}")
        yield self.row(state_key(msg), state_text(msg, raw))


class ScoreDecideControlled(_DecideLogic, BroadcastProcessFunction):
    """The decide stage connected to the broadcast control stream (the job).

    Every instance applies every control message; broadcast state keeps the newest valid message per
    kind/role (raw bytes), so a restored job decides as it did at the checkpoint. Only subtask 0 reports a
    refused message, so it is dead-lettered once, not once per instance.
    """

    def open(self, runtime_context: RuntimeContext):
        super().open(runtime_context)
        self.control_applied = self.group.counter("control_applied")
        self.control_rejected = self.group.counter("control_rejected")
        self.synced = False  # broadcast state read once after (re)start, then kept in step locally

    def process_element(self, value, ctx):
        if not self.synced:
            state = ctx.get_broadcast_state(CONTROL_STATE)
            for key in ("champion", "challenger", "rules", "split"):
                raw = state.get(key)
                if raw is None:
                    continue
                try:  # stored only after it was applied once, but a model file can vanish from a new host
                    self.control.apply(parse_control(raw))
                except Exception as e:
                    self.control_rejected.inc()
                    say(f"[riskstream] decide stage {self.subtask}: restored {key} refused, keeping the "
                        f"start-up one: {e}")
            self.synced = True
        yield self._decide(value)

    def process_broadcast_element(self, value, ctx):
        raw = bytes(value)
        res = apply_control(self.control, raw)
        if isinstance(res, ControlError):
            e = res
            self.control_rejected.inc()
            if self.subtask != 0:
                say(f"[riskstream] decide stage {self.subtask}: control refused: {e}")
            else:
                yield DEAD_LETTER_TAG, dead_letter_record(raw, Rejection(CONTROL_REJECTED, str(e)[:200]),
                                                          self.job_name, int(time.time() * 1000))
            return
        msg, what = res
        ctx.get_broadcast_state(CONTROL_STATE).put(state_key(msg), raw)
        self.control_applied.inc()
        say(f"[riskstream] decide stage {self.subtask}: control applied: {what}")
