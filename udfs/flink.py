"""Thin PyFlink adapters around the pure core: they only move values between Flink state and the logic.

Pitfalls handled here:
- Python state access crosses to the JVM (process mode): each key keeps ONE ValueState (the window dict,
  pickled) read once and written once per event, rather than many MapState entries.
- Unbounded state: an event-time cleanup timer per key, registered only when the key's expiry moves past
  the registered one by more than ``TIMER_GRID_MS`` (a few timers per key, not one per event).
- A bad record never raises: parsing returns a rejection that goes to the dead-letter side output.
"""

from __future__ import annotations

import bisect
import os
import time

import orjson
from pyflink.common import Types
from pyflink.common.watermark_strategy import TimestampAssigner
from pyflink.datastream import KeyedProcessFunction, OutputTag, ProcessFunction, RuntimeContext
from pyflink.datastream.functions import KeyedBroadcastProcessFunction
from pyflink.datastream.time_domain import TimeDomain
from pyflink.datastream.state import MapStateDescriptor, ValueStateDescriptor

from . import dedup
from .control import Control, ControlError, parse_control, state_key
from .labels import FRAUD, LEGIT, apply_label, known_fraud_users, parse_label
from .decision import decision_record, encode, error_decision_record
from .events import (
    CONTROL_REJECTED,
    DUPLICATE_EVENT_ID,
    PROCESSING_ERROR,
    Event,
    Rejection,
    dead_letter_record,
    encode_event,
    parse_event,
)
from .policy import DECISIONS, Policy
from .scoring import Scorer  # imports onnxruntime safely for thread mode (see udfs.scoring)
from .windows import EntityWindows, event_values

TIMER_GRID_MS = 60_000
LATENCY_BUCKETS_US = (100, 250, 500, 1000, 2500, 5000, 10000)  # upper bounds of the scoring histogram
LABEL_TTL_MS = 8 * 24 * 3600 * 1000  # a device's labels are dropped this long (wall clock) after its last one

BYTES = Types.PRIMITIVE_ARRAY(Types.BYTE())
EVENT_FIELDS = ["event_id", "event_type", "user_id", "device_id", "ip", "amount", "currency", "ts", "extras"]
# Between stages an event travels as a plain tuple: its EVENT_FIELDS, then (after the user stage) the window
# feature values so far and the late flag. The declared type is PICKLED_BYTE_ARRAY, not a typed Row: in
# thread mode a ROW_NAMED with a LIST(DOUBLE) field is converted field by field at every Python/JVM
# crossing, which measured ~20 % of the three keyed stages' cost (benchmarks, README "Benchmark").
STAGE_VALUE = Types.PICKLED_BYTE_ARRAY()

DEAD_LETTER_TAG = OutputTag("dead-letter", BYTES)


def _to_event(row) -> Event:
    extras = orjson.loads(row[8]) if row[8] else None
    return Event(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], extras)


def _event_fields(ev: Event) -> list:
    return [ev.event_id, ev.event_type, ev.user_id, ev.device_id, ev.ip, ev.amount, ev.currency, ev.ts,
            orjson.dumps(ev.extras).decode() if ev.extras else None]


CHAOS_ENV = "RISKSTREAM_CHAOS_DIR"
CHAOS_TASK_FAILURE = "fail-task"


class InjectedFailure(RuntimeError):
    pass


class ParseValidate(ProcessFunction):
    """bytes -> an event tuple (EVENT_FIELDS), or the dead-letter side output with reason and original bytes."""

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
        raw = bytes(value) if value is not None else b""
        try:
            res = parse_event(raw)
            if isinstance(res, Event):
                row = tuple(_event_fields(res))
        except Exception as e:  # parse_event must not raise; if it ever does, the record is still kept
            res = Rejection(PROCESSING_ERROR, f"parse: {type(e).__name__}: {e}"[:200])
        if isinstance(res, Event):
            self.valid.inc()
            yield row
        else:
            self.dead.inc()
            yield DEAD_LETTER_TAG, dead_letter_record(raw, res, self.job_name, int(time.time() * 1000))


LABEL_MARK = "\x00label"  # event_type of a label row in the device stage's input (never a valid type)


class ParseLabel(ProcessFunction):
    """Label bytes -> a stage tuple marked ``LABEL_MARK`` for the device stage, or a dead letter."""

    def __init__(self, job_name: str):
        self.job_name = job_name

    def process_element(self, value, ctx):
        raw = bytes(value) if value is not None else b""
        res = parse_label(raw)
        if isinstance(res, Rejection):
            yield DEAD_LETTER_TAG, dead_letter_record(raw, res, self.job_name, int(time.time() * 1000))
            return
        event_id, user_id, device_id, event_ts, label = res
        yield (event_id, LABEL_MARK, user_id, device_id, label, 0.0, "", event_ts, None, [], False)


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
        return min(value[7], int(time.time() * 1000) + MAX_FUTURE_SKEW_MS)


class _Windowed(KeyedProcessFunction):
    """One keyed window stage. A record that makes the stage raise (a bug, not bad input: parsing already
    validated it) goes to the dead-letter side output with reason ``processing_error``; the job keeps
    running instead of restarting into the same record forever."""

    entity = ""

    def __init__(self, allowed_lateness_ms: int, job_name: str = "riskstream"):
        self.allowed_lateness_ms = allowed_lateness_ms
        self.job_name = job_name

    def open(self, runtime_context: RuntimeContext):
        self.windows = EntityWindows(self.entity, self.allowed_lateness_ms)
        self.state = runtime_context.get_state(
            ValueStateDescriptor(f"{self.entity}_windows", Types.PICKLED_BYTE_ARRAY()))
        group = runtime_context.get_metrics_group()
        self.late_counter = group.counter("late_events")
        self.error_counter = group.counter("processing_errors")

    def _update(self, ev: Event, ctx, st: dict | None) -> tuple[list[float], bool, dict]:
        """Fold ``ev`` into the key's state ``st`` (None for a new key); the caller writes it back."""
        st, vals, late = self.windows.update(st, ev)
        expiry = self.windows.expires_at(st)
        timer = st.get("timer")
        if timer is None or expiry > timer + TIMER_GRID_MS:
            timer = expiry - expiry % TIMER_GRID_MS + TIMER_GRID_MS
            ctx.timer_service().register_event_time_timer(timer)
            st["timer"] = timer
        if late:
            self.late_counter.inc()
        return vals, late, st

    def _dead(self, value, reason: str, detail: str):
        """A dead letter for a parsed record: the original bytes are gone by now, so the payload is the
        event re-encoded (``original_reencoded``)."""
        try:
            raw = encode_event(_to_event(value))
        except Exception:  # the row itself is unusable: keep what can be kept
            raw = repr(tuple(value)).encode()
        return DEAD_LETTER_TAG, dead_letter_record(raw, Rejection(reason, detail[:200]), self.job_name,
                                                   int(time.time() * 1000), reencoded=True)

    def _error(self, value, e: Exception):
        self.error_counter.inc()
        return self._dead(value, PROCESSING_ERROR, f"{self.entity} stage: {type(e).__name__}: {e}")

    def on_timer(self, timestamp: int, ctx):
        st = self.state.value()
        if st is None:
            return iter(())
        expiry = self.windows.expires_at(st)
        if expiry <= timestamp:
            self.state.clear()  # idle past the longest horizon + lateness: no event can read it again
        elif st.get("timer") == timestamp:
            timer = expiry - expiry % TIMER_GRID_MS + TIMER_GRID_MS
            ctx.timer_service().register_event_time_timer(timer)
            st["timer"] = timer
            self.state.update(st)
        return iter(())


class UserWindows(_Windowed):
    """Keyed by user_id: drops duplicate event ids (``udfs.dedup``), appends the user's window features.

    The dedup ids live in the same state dict as the windows, so the policy costs no extra state access.
    """

    entity = "user"

    def __init__(self, allowed_lateness_ms: int, job_name: str = "riskstream", dedup_horizon_ms: int = 600_000):
        super().__init__(allowed_lateness_ms, job_name)
        self.dedup_horizon_ms = dedup_horizon_ms

    def open(self, runtime_context: RuntimeContext):
        super().open(runtime_context)
        self.dup_counter = runtime_context.get_metrics_group().counter("duplicate_events")

    def process_element(self, value, ctx):
        try:
            ev = _to_event(value)
            st = self.state.value()
            if self.dedup_horizon_ms and st is not None and dedup.seen(
                    st, ev.event_id, max(st["last"], ev.ts), self.dedup_horizon_ms):
                self.dup_counter.inc()
                yield self._dead(value, DUPLICATE_EVENT_ID,
                                 f"event_id seen for this user within {self.dedup_horizon_ms} ms")
                return
            vals, late, st = self._update(ev, ctx, st)
            if self.dedup_horizon_ms:
                dedup.remember(st, ev.event_id, ev.ts, st["last"], self.dedup_horizon_ms)
            self.state.update(st)
        except Exception as e:
            yield self._error(value, e)
            return
        yield (*value[:9], vals, late)


class IpWindows(_Windowed):
    """Keyed by ip: appends the address's window features (accounts behind one address)."""

    entity = "ip"

    def process_element(self, value, ctx):
        try:
            vals, late, st = self._update(_to_event(value), ctx, self.state.value())
            self.state.update(st)
        except Exception as e:
            yield self._error(value, e)
            return
        yield (*value[:9], value[9] + vals, value[10] or late)


class _DeviceLogic(_Windowed):
    """Keyed by device_id: device window features, ONNX score, policy -> decision record bytes.

    If anything raises for a record, it still gets a decision: ``review`` with reason ``processing_error``
    (fail safe, and every valid event stays decided exactly once).

    The model is loaded once per task in ``open``; the CLI loads it once before submitting as well, so a
    bad model fails the start, not the running job. Live changes (model, challenger, rules) come through
    broadcast state in :class:`DeviceWindowsScoreDecideControlled` (see ``udfs.control``).
    """

    entity = "device"

    def __init__(self, allowed_lateness_ms: int, model_path: str, policy: Policy, job_name: str = "riskstream",
                 project_root: str | None = None, labels: bool = False):
        super().__init__(allowed_lateness_ms, job_name)
        self.model_path = model_path
        self.policy = policy
        self.project_root = project_root
        self.labels = labels  # label rows come in with the events (udfs.labels)

    def open(self, runtime_context: RuntimeContext):
        super().open(runtime_context)
        from pathlib import Path

        self.control = Control.initial(Scorer(self.model_path), self.policy,
                                       Path(self.project_root) if self.project_root else None)
        self.group = runtime_context.get_metrics_group()
        self.by_kind = {d: self.group.counter(f"decisions_{d}") for d in DECISIONS}
        self.subtask = _subtask_index(runtime_context)
        self.hists: dict[str, list] = {}
        self.synced = False  # broadcast state read once after (re)start, then kept in step locally
        if self.labels:
            self.known = runtime_context.get_state(ValueStateDescriptor("device_labels", Types.PICKLED_BYTE_ARRAY()))
            self.label_counters = {k: self.group.counter(f"labels_{k}") for k in (FRAUD, LEGIT)}

    def _label(self, value, ctx) -> None:
        """Fold a label into the device's known-fraud users (``{"users": {...}, "at": wall ms}``).

        Cleanup runs on a processing-time timer, LABEL_TTL_MS after the device's last label: labels come
        in with wall-clock timestamps, so event-time timers would judge them against the events' clock.
        """
        st = self.known.value() or {"users": {}, "at": 0}
        users = apply_label(st["users"], value[2], value[7], value[4])
        self.label_counters[value[4]].inc()
        if not users:
            self.known.clear()
            return
        now = int(time.time() * 1000)
        self.known.update({"users": users, "at": now})
        due = now + LABEL_TTL_MS
        ctx.timer_service().register_processing_time_timer(due - due % TIMER_GRID_MS + TIMER_GRID_MS)

    def on_timer(self, timestamp: int, ctx):
        if ctx.time_domain() == TimeDomain.PROCESSING_TIME:  # only label cleanup uses processing time
            st = self.known.value() if self.labels else None
            if st is not None and st["at"] + LABEL_TTL_MS <= timestamp:
                self.known.clear()
            return iter(())
        return super().on_timer(timestamp, ctx)

    def _latency_buckets(self, version: str) -> list:
        """A histogram of the time from the device stage's input to the encoded decision, one counter per
        bucket (not cumulative), under a ``model_version`` group key (a Prometheus label)."""
        h = self.hists.get(version)
        if h is None:
            g = self.group.add_group("model_version", version).add_group("scoring_latency_us")
            h = self.hists[version] = [g.counter(f"le_{b}") for b in LATENCY_BUCKETS_US] + [g.counter("le_inf")]
        return h

    def _decide(self, value, ctx):
        """The decision record bytes for an event row, or None for a label row (folded into state)."""
        if value[1] == LABEL_MARK:
            try:
                self._label(value, ctx)
            except Exception as e:  # a label must never fail the job
                self.error_counter.inc()
                print(f"[riskstream] device stage: label for {value[0]} not applied: {type(e).__name__}: {e}",
                      flush=True)
            return None
        t0 = time.perf_counter()
        c = self.control
        try:
            ev = _to_event(value)
            dvals, dlate, st = self._update(ev, ctx, self.state.value())
            self.state.update(st)
            late = bool(value[10]) or dlate
            feats = event_values(ev) + list(value[9]) + dvals
            signals = None
            if self.labels:
                st_l = self.known.value()
                signals = {"device_known_fraud_users_7d": known_fraud_users(st_l["users"] if st_l else None, ev.ts)}
            score = c.champion.score(feats)
            decision, reasons = c.policy.decide(score, feats, ev.event_type, late, signals)
            shadow = None
            if c.challenger is not None:
                s2 = c.challenger.score(feats)
                shadow = {"model_version": c.challenger.version, "score": round(s2, 6),
                          "decision": c.policy.decide(s2, feats, ev.event_type, late, signals)[0]}
            rec = decision_record(ev, decision, score, reasons, feats, c.champion.version, c.policy.version,
                                  int(time.time() * 1000), late, rules_version=c.rules_version, shadow=shadow,
                                  signals=signals)
            out = encode(rec)
        except Exception as e:  # fail safe: a valid event is never silently allowed or dropped
            self.error_counter.inc()
            decision = "review"
            out = encode(error_decision_record(value[0], value[1], value[2], value[3], f"{type(e).__name__}: {e}",
                                               c.champion.version, c.policy.version, int(time.time() * 1000)))
        self.by_kind[decision].inc()
        self._latency_buckets(c.champion.version)[
            bisect.bisect_left(LATENCY_BUCKETS_US, (time.perf_counter() - t0) * 1e6)].inc()
        return out


class DeviceWindowsScoreDecide(_DeviceLogic, KeyedProcessFunction):
    """The device stage with the model and rules fixed at start (tests, benchmarks)."""

    def process_element(self, value, ctx):
        out = self._decide(value, ctx)
        if out is not None:
            yield out


CONTROL_STATE = MapStateDescriptor("control", Types.STRING(), Types.PICKLED_BYTE_ARRAY())


class DeviceWindowsScoreDecideControlled(_DeviceLogic, KeyedBroadcastProcessFunction):
    """The device stage connected to the broadcast control stream (the job).

    Every instance applies every control message; broadcast state keeps the newest valid message per
    kind/role (raw bytes), so a restored job decides as it did at the checkpoint. Only subtask 0 reports a
    refused message, so it is dead-lettered once, not once per instance.
    """

    def open(self, runtime_context: RuntimeContext):
        super().open(runtime_context)
        group = runtime_context.get_metrics_group()
        self.control_applied = group.counter("control_applied")
        self.control_rejected = group.counter("control_rejected")

    def process_element(self, value, ctx):
        if not self.synced:
            state = ctx.get_broadcast_state(CONTROL_STATE)
            for key in ("champion", "challenger", "rules"):
                raw = state.get(key)
                if raw is None:
                    continue
                try:  # stored only after it was applied once, but a model file can vanish from a new host
                    self.control.apply(parse_control(raw))
                except Exception as e:
                    self.control_rejected.inc()
                    print(f"[riskstream] device stage {self.subtask}: restored {key} refused, keeping the "
                          f"start-up one: {e}", flush=True)
            self.synced = True
        out = self._decide(value, ctx)
        if out is not None:
            yield out

    def process_broadcast_element(self, value, ctx):
        raw = bytes(value)
        try:
            msg = parse_control(raw)
            what = self.control.apply(msg)
        except Exception as e:  # any failure refuses the message; nothing here may fail the job
            if not isinstance(e, ControlError):
                e = ControlError(f"refused, the current settings keep deciding: {type(e).__name__}: {e}")
            self.control_rejected.inc()
            if self.subtask != 0:
                print(f"[riskstream] device stage {self.subtask}: control refused: {e}", flush=True)
            else:
                yield DEAD_LETTER_TAG, dead_letter_record(raw, Rejection(CONTROL_REJECTED, str(e)[:200]),
                                                          self.job_name, int(time.time() * 1000))
            return
        ctx.get_broadcast_state(CONTROL_STATE).put(state_key(msg), raw)
        self.control_applied.inc()
        print(f"[riskstream] device stage {self.subtask}: control applied: {what}", flush=True)
