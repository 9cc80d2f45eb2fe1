"""Thin PyFlink adapters around the pure core: they only move values between Flink state and the logic.

Pitfalls handled here:
- Python state access crosses to the JVM (process mode): each key keeps ONE ValueState (the window dict,
  pickled) read once and written once per event, rather than many MapState entries.
- Unbounded state: an event-time cleanup timer per key, registered only when the key's expiry moves past
  the registered one by more than ``TIMER_GRID_MS`` (a few timers per key, not one per event).
- A bad record never raises: parsing returns a rejection that goes to the dead-letter side output.
"""

from __future__ import annotations

import time

import orjson
from pyflink.common import Row, Types
from pyflink.common.watermark_strategy import TimestampAssigner
from pyflink.datastream import KeyedProcessFunction, OutputTag, ProcessFunction, RuntimeContext
from pyflink.datastream.state import ValueStateDescriptor

from .decision import decision_record, encode
from .events import PROCESSING_ERROR, Event, Rejection, dead_letter_record, parse_event
from .policy import DECISIONS, Policy
from .windows import EntityWindows, event_values

TIMER_GRID_MS = 60_000

BYTES = Types.PRIMITIVE_ARRAY(Types.BYTE())
DOUBLES = Types.LIST(Types.DOUBLE())  # a Python list maps to java.util.List in both Python modes
EVENT_FIELDS = ["event_id", "event_type", "user_id", "device_id", "ip", "amount", "currency", "ts", "extras"]
EVENT_TYPES_INFO = [Types.STRING(), Types.STRING(), Types.STRING(), Types.STRING(), Types.STRING(),
                    Types.DOUBLE(), Types.STRING(), Types.LONG(), Types.STRING()]
EVENT_ROW = Types.ROW_NAMED(EVENT_FIELDS, EVENT_TYPES_INFO)
# event + window feature values so far + late flag, handed from one keyed stage to the next
USER_STAGE_ROW = Types.ROW_NAMED(EVENT_FIELDS + ["window_features", "late"], EVENT_TYPES_INFO + [DOUBLES, Types.BOOLEAN()])

DEAD_LETTER_TAG = OutputTag("dead-letter", BYTES)


def _to_event(row) -> Event:
    extras = orjson.loads(row[8]) if row[8] else None
    return Event(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], extras)


def _event_fields(ev: Event) -> list:
    return [ev.event_id, ev.event_type, ev.user_id, ev.device_id, ev.ip, ev.amount, ev.currency, ev.ts,
            orjson.dumps(ev.extras).decode() if ev.extras else None]


class ParseValidate(ProcessFunction):
    """bytes -> EVENT_ROW, or the dead-letter side output with reason and original bytes."""

    def __init__(self, job_name: str):
        self.job_name = job_name

    def open(self, runtime_context: RuntimeContext):
        self.dead = runtime_context.get_metrics_group().counter("dead_letters")
        self.valid = runtime_context.get_metrics_group().counter("events_valid")

    def process_element(self, value, ctx):
        raw = bytes(value) if value is not None else b""
        try:
            res = parse_event(raw)
        except Exception as e:  # parse_event must not raise; if it ever does, the record is still kept
            res = Rejection(PROCESSING_ERROR, f"parse_event: {type(e).__name__}: {e}"[:200])
        if isinstance(res, Event):
            self.valid.inc()
            yield Row(*_event_fields(res))
        else:
            self.dead.inc()
            yield DEAD_LETTER_TAG, dead_letter_record(raw, res, self.job_name, int(time.time() * 1000))


class EventTime(TimestampAssigner):
    def extract_timestamp(self, value, record_timestamp: int) -> int:
        return value[7]


class _Windowed(KeyedProcessFunction):
    entity = ""

    def __init__(self, allowed_lateness_ms: int):
        self.allowed_lateness_ms = allowed_lateness_ms

    def open(self, runtime_context: RuntimeContext):
        self.windows = EntityWindows(self.entity, self.allowed_lateness_ms)
        self.state = runtime_context.get_state(
            ValueStateDescriptor(f"{self.entity}_windows", Types.PICKLED_BYTE_ARRAY()))
        self.late_counter = runtime_context.get_metrics_group().counter("late_events")

    def _update(self, ev: Event, ctx) -> tuple[list[float], bool]:
        st, vals, late = self.windows.update(self.state.value(), ev)
        expiry = self.windows.expires_at(st)
        timer = st.get("timer")
        if timer is None or expiry > timer + TIMER_GRID_MS:
            timer = expiry - expiry % TIMER_GRID_MS + TIMER_GRID_MS
            ctx.timer_service().register_event_time_timer(timer)
            st["timer"] = timer
        self.state.update(st)
        if late:
            self.late_counter.inc()
        return vals, late

    def on_timer(self, timestamp: int, ctx):
        st = self.state.value()
        if st is None:
            return
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
    """Keyed by user_id: appends the user's window features to the event."""

    entity = "user"

    def process_element(self, value, ctx):
        ev = _to_event(value)
        vals, late = self._update(ev, ctx)
        yield Row(*value[:9], vals, late)


class IpWindows(_Windowed):
    """Keyed by ip: appends the address's window features (accounts behind one address)."""

    entity = "ip"

    def process_element(self, value, ctx):
        ev = _to_event(value)
        vals, late = self._update(ev, ctx)
        yield Row(*value[:9], list(value[9]) + vals, bool(value[10]) or late)


class DeviceWindowsScoreDecide(_Windowed):
    """Keyed by device_id: device window features, ONNX score, policy -> decision record bytes.

    The model is loaded once per task in ``open``; the CLI loads it once before submitting as well, so a
    bad model fails the start, not the running job.
    """

    entity = "device"

    def __init__(self, allowed_lateness_ms: int, model_path: str, policy: Policy):
        super().__init__(allowed_lateness_ms)
        self.model_path = model_path
        self.policy = policy

    def open(self, runtime_context: RuntimeContext):
        super().open(runtime_context)
        from .scoring import Scorer

        self.scorer = Scorer(self.model_path)
        group = runtime_context.get_metrics_group()
        self.by_kind = {d: group.counter(f"decisions_{d}") for d in DECISIONS}

    def process_element(self, value, ctx):
        ev = _to_event(value)
        dvals, dlate = self._update(ev, ctx)
        late = bool(value[10]) or dlate
        feats = event_values(ev) + list(value[9]) + dvals
        score = self.scorer.score(feats)
        decision, reasons = self.policy.decide(score, feats, ev.event_type, late)
        self.by_kind[decision].inc()
        rec = decision_record(ev, decision, score, reasons, feats, self.scorer.version, self.policy.version,
                              int(time.time() * 1000), late)
        yield encode(rec)
