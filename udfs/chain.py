"""The stage chain, once: what every runner (the Flink job, the replay, the baselines) does per stage.

The chain is one keyed *entity stage* per :data:`udfs.features.ENTITIES` entry, in that order, then one
*decide stage*:

- entity stage (:class:`EntityStep`): dedup (first entity only) -> window update -> remember the id; an
  event without a key for an optional entity reads empty windows and touches no state. Entities with
  ``label_signals`` also fold labels into a per-key known-fraud set and emit a signal.
- decide stage (:class:`Decider`): score -> policy -> decision record bytes, with the challenger's shadow
  score; anything that raises becomes a fail-safe ``review`` record.

Between stages a :data:`Record` travels: the event's fields, the window values so far, the late flag, the
signals so far, the event's broker arrival time (``arrived_at``: the Kafka record's timestamp, read by
the parse stage; None for labels and for input without one) and the graph context (``udfs.graph.new_context``:
the user's fraud time and the members stages' sketches on their way to the link stage; None without graph
features). :func:`pack` / :func:`unpack` / :func:`arrived_at` / :func:`graph_context` are its only
constructors and readers; :func:`extend` passes ``arrived_at`` and the context through. Pitfall: a record
rebuilt from a JVM Row (``udfs.jvm.from_row``) may lack the trailing context slot: read it with
:func:`graph_context`, never by index.

:class:`Chain` runs the entity stages over plain dicts for the replay and the Python baselines, with the
job's cleanup rule driven by the job's watermark rule (``udfs.windows.cleanup``).
"""

from __future__ import annotations

import heapq
from typing import Any

import orjson

from . import dedup, hll
from .aggregates import spec_aggregates
from .decision import decision_record, encode, error_decision_record, event_keys
from .events import EVENT_TYPES, Event
from .features import SIGNALS as SIGNAL_NAMES
from .features import (BUCKET_MS, FEATURE_NAMES, FEATURES, GRAPH, GRAPH_AGGS, LABEL_ENTITIES, LABEL_KEYS,
                       MISSING, Entity, features_for, has_graph, label_keep_ms, spec_entities, spec_fingerprint,
                       spec_json)
from .features import GRAPH_LINK_KINDS
from .graph import MAX_GRAPH_LABELS, NO_FRAUD, GraphParams, LinkPart, MemberPart, UserPart, new_context
from .graph import fold_label as fold_graph_label
from .labels import FRAUD, Label, apply_fraud_label, apply_label, known_fraud_users
from .windows import (DEFAULT_LATENESS_MS, HLL_THRESHOLD, TIMER_GRID_MS, EntityWindows, arm, cleanup, event_values,
                      fresh_ms, retention_ms)

DEFAULT_DEDUP_HORIZON_MS = 600_000
DEFAULT_OUT_OF_ORDERNESS_MS = 5_000

# -- the record between stages -------------------------------------------------------------------------
EVENT_FIELDS: tuple[str, ...] = Event._fields
N_EVENT = len(EVENT_FIELDS)
VALUES, LATE, SIGNALS, ARRIVED, GRAPH_CTX = N_EVENT, N_EVENT + 1, N_EVENT + 2, N_EVENT + 3, N_EVENT + 4
# (*event fields, window values so far, late so far, signals so far or None, arrived_at or None, graph context
# or None)
Record = tuple
LABEL_MARK = "\x00label"  # event_type of a label travelling as a record (never a valid event type)


# The same record as a typed Row, for stages that run in the JVM (udfs/jvm): (name, type) in order. Event
# fields keep their names (extras as JSON text, optional keys nullable), then "values" (DOUBLE[]), "late"
# (BOOLEAN), "signals" (DOUBLE[] in features.SIGNALS order, null when the job reads no labels) and
# "arrived_at" (BIGINT, nullable: epoch ms of the Kafka record's timestamp, the events topic's append time),
# "graph" (BYTES, nullable, always present so the Row type does not depend on the graph switch: the graph
# context of udfs.graph.new_context in the JVM stages' binary encoding, io.riskstream.flink.graph.GraphContext;
# null without graph features, before the user stage and after the link stage).
_ROW_TYPES = {"str": "STRING", "float": "DOUBLE", "int": "BIGINT", "dict": "JSON"}


def _row_type(name: str) -> str:
    ann = Event.__annotations__[name]  # a ForwardRef (postponed annotations): its text, e.g. "str | None"
    return _ROW_TYPES[getattr(ann, "__forward_arg__", str(ann)).split(" | ")[0]]


ROW_FIELDS: tuple[tuple[str, str], ...] = (
    *((name, _row_type(name)) for name in EVENT_FIELDS),
    ("values", "DOUBLE[]"), ("late", "BOOLEAN"), ("signals", "DOUBLE[]"), ("arrived_at", "BIGINT"),
    ("graph", "BYTES"),
)


def pack(ev: Event, values: list[float] | None = None, late: bool = False, signals: dict | None = None,
         arrived_at: int | None = None, graph: dict | None = None) -> Record:
    return (*ev, values if values is not None else [], late, signals, arrived_at, graph)


def unpack(rec: Record) -> tuple[Event, list[float], bool, dict | None]:
    return Event(*rec[:N_EVENT]), rec[VALUES], rec[LATE], rec[SIGNALS]


def arrived_at(rec: Record) -> int | None:
    """The event's broker arrival time (epoch ms), or None when unknown."""
    return rec[ARRIVED]


def graph_context(rec: Record) -> dict | None:
    """The record's graph context (``udfs.graph.new_context``, filled by the stages so far), or None: without
    graph features, and on a record without the slot (rebuilt from a JVM Row)."""
    return rec[GRAPH_CTX] if len(rec) > GRAPH_CTX else None


_KEEP = object()


def extend(rec: Record, values: list[float], late: bool, signals: dict | None, graph=_KEEP) -> Record:
    """The record after one more entity stage: its values appended, late and signals merged; ``graph``: the
    graph context it carries on (default: the record's, passed through; None drops it)."""
    sig = rec[SIGNALS]
    if signals:
        sig = {**sig, **signals} if sig else signals
    return (*rec[:N_EVENT], rec[VALUES] + values, rec[LATE] or late, sig, rec[ARRIVED],
            graph_context(rec) if graph is _KEEP else graph)


def key_index(entity: Entity) -> int:
    """Position of the entity's key field in a record (for key selectors)."""
    return EVENT_FIELDS.index(entity.key_field)


def label_identity(user_id: str, event_id: str) -> str:
    """The labelled event's identity as one string: event ids are per user (docs/contracts.md), so a label
    for user A's ``e1`` must not touch user B's ``e1`` on a shared device, ip or card. A JSON array, so no
    two (user, event) pairs share it."""
    return orjson.dumps([user_id, event_id]).decode()


# a label record's event fields: each label entity's key field gets the label's key of that entity; a required
# event field the label does not name is "" (its stage skips it), an optional one None
_LABEL_FIELD_ENTITY = {e.key_field: e.name for e in LABEL_ENTITIES}


def label_record(label: Label) -> Record:
    """A label (``udfs.labels.Label``) as a record, so it can be keyed like an event of its entity: each
    entity's key field holds the key the label names for it (a label without ``ip`` carries ``""`` there, the
    ip stage skips it; without ``payment_ref`` None). Its ``event_id`` field carries the labelled event's
    identity, :func:`label_identity` (user, event id): both runtimes' label stores (``EntityStep.fold_label``,
    the JVM's ``KnownFraud``) key the labelled events by that field, so they hold one entry per (user, event)."""
    fields = {f: label.keys.get(_LABEL_FIELD_ENTITY[f]) for f in EVENT_FIELDS if f in _LABEL_FIELD_ENTITY}
    for f, v in fields.items():
        if v is None and f not in Event._field_defaults:
            fields[f] = ""
    return pack(Event(**{**fields, "event_id": label_identity(label.user_id, label.event_id), "event_type": LABEL_MARK,
                         "amount": 0.0, "currency": "", "ts": label.event_ts, "extras": {"label": label.label}}))


def is_label(rec: Record) -> bool:
    return rec[1] == LABEL_MARK


# -- entity stage --------------------------------------------------------------------------------------
class EntityStep:
    """One entity's stage on one key: the caller loads the key's state, calls :meth:`step`, stores the
    state it returns and registers the timer it returns. Pitfall: check :meth:`duplicate` *before*
    :meth:`step`; a duplicate must not touch the windows."""

    def __init__(self, entity: Entity, allowed_lateness_ms: int = DEFAULT_LATENESS_MS,
                 dedup_horizon_ms: int = DEFAULT_DEDUP_HORIZON_MS, features: tuple | None = None,
                 graph_params: GraphParams | None = None):
        """``features``: the spec (default ``features.FEATURES``); the stage computes its entity's.
        ``graph_params``: the graph's constants (default ``features.GRAPH`` with this lateness; tests shrink
        them)."""
        self.entity = entity
        self.name = entity.name
        own = features_for(entity.name, features)
        self.windows = EntityWindows(entity.name, allowed_lateness_ms, tuple(f for f in own if f.agg not in GRAPH_AGGS))
        # the entity's part in the graph features (udfs.graph), with graph features in the spec only
        self.graph = None
        if entity.graph and has_graph(FEATURES if features is None else features):
            params = graph_params or GraphParams(lateness_ms=int(allowed_lateness_ms))
            chain = spec_entities(features)
            members = tuple(e.name for e in chain if e.graph == "members")
            if entity.graph == "user":
                self.graph = UserPart(params)
            elif entity.graph == "members":
                self.graph = MemberPart(entity, params, members[:members.index(entity.name)], own)
            else:
                self.graph = LinkPart(params, members, own)
        self.dedup_horizon_ms = int(dedup_horizon_ms) if entity.dedup else 0
        self.signal_name = f"{entity.name}_known_fraud_users_7d" if entity.label_signals else None
        self.reads_labels = entity.label_signals or self.windows.reads_labels

    def key(self, ev: Event) -> str | None:
        return getattr(ev, self.entity.key_field)

    def empty_values(self) -> list[float]:
        extra = self.graph.empty_values() if isinstance(self.graph, MemberPart) else []
        return self.windows.empty_values() + extra

    def graph_label(self, lab: dict | None, label_rec: Record) -> dict | None:
        """The key's graph label store (``udfs.graph.fold_label``) after one label; None when this entity
        keeps none."""
        if not isinstance(self.graph, (UserPart, MemberPart)):
            return None
        ev = Event(*label_rec[:N_EVENT])
        return fold_graph_label(lab, ev.event_id, ev.user_id, ev.ts, ev.extras["label"], self.graph.p)

    # graph features (udfs.graph): per key, the graph state (members and link stages) and the graph label store
    # (user and members stages), each kept apart from the windows and the window label state
    @property
    def is_link(self) -> bool:
        """The link stage: graph state only (no windows, no dedup, no labels), its own cleanup timer."""
        return isinstance(self.graph, LinkPart)

    @property
    def keeps_graph_state(self) -> bool:
        return isinstance(self.graph, (MemberPart, LinkPart))

    @property
    def keeps_graph_labels(self) -> bool:
        return isinstance(self.graph, (UserPart, MemberPart))

    def graph_step(self, gstate: dict | None, glab: dict | None, ev: Event, key: str,
                   ctx: dict) -> tuple[dict | None, list[float], int | None]:
        """The entity's graph part for one event (after :meth:`step` on the same key, for a stage with
        windows), shared by :class:`Chain` and the Flink stage: (the key's new graph state, None where the
        stage keeps none; the graph values, appended after the window values; an event-time timer to
        register or None). ``glab``: the key's graph label store (:meth:`graph_label`); ``ctx``: the event's
        graph context (``udfs.graph.new_context``), updated in place and carried on to the next stage.

        Pitfalls: the user stage only writes ``ctx["fraud"]``; a members stage names its key in
        ``ctx["keys"]`` (the link stage keys the sketch by it); the link stage's timer is its cleanup timer,
        one pending per key (recorded in the state's ``"timer"``, see :meth:`on_graph_timer`)."""
        g = self.graph
        if g is None:
            return gstate, [], None
        if isinstance(g, UserPart):
            g.step(glab, ev, ctx)
            return None, [], None
        if isinstance(g, MemberPart):
            ctx["keys"][self.name] = key
            gstate, vals = g.step(gstate, glab, ev, ctx)
            return gstate, vals, None
        gstate, vals = g.step(gstate, ev, ctx)
        timer = None
        if gstate.get("timer") is None:  # one pending cleanup timer per key, re-armed when it fires early
            gstate["timer"] = timer = g.expires_at(gstate)
        return gstate, vals, timer

    def on_graph_timer(self, gstate: dict | None, timestamp: int) -> tuple[str, int | None]:
        """The link stage's cleanup timer firing at ``timestamp`` (event time): ``("clear", None)``: the key
        expired, drop its graph state; ``("rearm", expiry)``: the key's pending timer fired early (events came
        since it was armed), register ``expiry``, which is now in ``gstate["timer"]`` (store the state);
        ``("keep", None)``: nothing to do (no state, or a superseded timer). A members stage's graph state
        has no timer of its own: it goes when :meth:`on_timer` clears the key's windows."""
        if gstate is None or not self.is_link:
            return "keep", None
        expiry = self.graph.expires_at(gstate)
        if expiry <= timestamp:
            return "clear", None
        if gstate.get("timer") == timestamp:
            gstate["timer"] = expiry
            return "rearm", expiry
        return "keep", None

    def live(self, state: dict | None, ev: Event) -> dict | None:
        """The key's state as ``ev`` sees it: None once the key expired before ``ev.ts``."""
        if state is not None and ev.ts >= self.windows.expires_at(state):
            return None
        return state

    def duplicate(self, state: dict | None, ev: Event) -> bool:
        if not self.dedup_horizon_ms:
            return False
        state = self.live(state, ev)
        return state is not None and dedup.seen(state, ev.event_id, max(state["last"], ev.ts),
                                                self.dedup_horizon_ms)

    def fold(self, events) -> dict[str, dict]:
        """Each key's state after ``events`` in order, as this stage stores it (no labels): keyless events and
        duplicates are skipped as the stage skips them. For state figures and state comparisons."""
        store: dict[str, dict] = {}
        for ev in events:
            k = self.key(ev)
            if k is None or self.duplicate(store.get(k), ev):
                continue
            store[k] = self.step(store.get(k), ev)[0]
        return store

    def step(self, state: dict | None, ev: Event, known: dict | None = None) -> tuple[dict, list[float], bool, int | None]:
        """(new state, window values, late, cleanup timer to register or None). ``known``: the key's label
        state (:meth:`fold_label`) as it stands when ``ev`` reaches the stage."""
        state, vals, late = self.windows.update(state, ev, known.get("lab") if known else None)
        if self.dedup_horizon_ms:
            dedup.remember(state, ev.event_id, ev.ts, state["last"], self.dedup_horizon_ms)
        return state, vals, late, arm(self.windows, state)

    def on_timer(self, state: dict | None, timestamp: int) -> tuple[str, int | None]:
        return cleanup(self.windows, state, timestamp)

    # labels (entities that read labels): the key's label state {"users": {user_id: newest fraud event ts}
    # (label_signals), "lab": {label_identity(user_id, event_id): event ts} (label features)}, see udfs.labels
    def label_key(self, label_rec: Record) -> str | None:
        """The key a label folds into here, or None when the label does not name this entity's key."""
        return label_rec[key_index(self.entity)] or None

    def fold_label(self, known: dict | None, label_rec: Record) -> dict:
        """The key's label state after one label (a new dict; the keys whose store is empty are absent)."""
        ev = Event(*label_rec[:N_EVENT])
        label = ev.extras["label"]
        known = dict(known) if known else {}
        if self.signal_name is not None:
            known["users"] = apply_label(known.get("users"), ev.user_id, ev.ts, label)
        if self.windows.reads_labels:
            known["lab"] = apply_fraud_label(known.get("lab"), ev.event_id, ev.ts, label, self.windows.label_keep_ms)
        return {k: v for k, v in known.items() if v}

    def signals(self, known: dict | None, ev: Event) -> dict | None:
        if self.signal_name is None:
            return None
        return {self.signal_name: known_fraud_users(known.get("users") if known else None, ev.ts)}


# -- decide stage --------------------------------------------------------------------------------------
class Decider:
    """Score -> policy -> decision record bytes, with the control in force (``udfs.control.Control``:
    champion, optional challenger, policy). Never raises: a failure gives a ``review`` record."""

    def __init__(self, control):
        self.control = control

    def decide(self, ev: Event, values: list[float], late: bool, signals: dict | None,
               now_ms: int, score: float | None = None,
               shadow_score: float | None = None, arrived_at: int | None = None) -> tuple[str, bytes, bool]:
        """(decision, record bytes, failed). ``values``: the entity stages' values in chain order. ``score``
        and ``shadow_score``: the deciding model's (the event's arm's, under a split) and the challenger's
        scores when the caller scored a batch.
        ``arrived_at``: the event's broker arrival time (the record's), written when known."""
        c = self.control
        scorer, policy, arm = c.champion, c.policy, None
        try:
            if c.split is not None:  # the event's arm: its model and policy decide
                scorer, policy, arm = c.route(getattr(ev, c.split.key_field))
            feats = event_values(ev) + list(values)
            if score is None:
                score = scorer.score(feats)
            decision, reasons = policy.decide(score, feats, ev.event_type, late, signals)
            shadow = None
            if c.challenger is not None:
                s2 = c.challenger.score(feats) if shadow_score is None else shadow_score
                shadow = {"model_version": c.challenger.version, "score": round(s2, 6),
                          "decision": c.policy.decide(s2, feats, ev.event_type, late, signals)[0]}
            return decision, encode(decision_record(
                ev, decision, score, reasons, feats, scorer.version, policy.version, now_ms, late,
                rules_version=c.rules_version, shadow=shadow, signals=signals, arrived_at=arrived_at,
                arm=arm)), False
        except Exception as e:  # fail safe: a valid event is never silently allowed or dropped
            return "review", encode(error_decision_record(
                ev.event_id, ev.event_type, event_keys(ev), f"{type(e).__name__}: {e}",
                scorer.version, policy.version, now_ms, arrived_at=arrived_at, arm=arm)), True

    def vector(self, ev: Event, values: list[float]) -> list[float]:
        return event_values(ev) + list(values)


# -- the whole chain over plain dicts (replay, baselines) ----------------------------------------------
class Chain:
    """The entity stages over in-memory keyed stores, one event at a time in arrival order.

    Keys are dropped as the job drops them: a cleanup timer per key (``udfs.windows.arm``) fires once the
    watermark reaches it, the watermark being the job's rule (newest event time so far minus the
    out-of-orderness bound, minus 1 ms) as it stood *before* the event being processed. Since an expired
    key reads as fresh anyway (``EntityStep.live``), this only frees memory, except for an event that
    arrives more than the out-of-orderness bound behind the stream (the job's watermark is periodic, so
    there the two may differ)."""

    def __init__(self, allowed_lateness_ms: int = DEFAULT_LATENESS_MS,
                 dedup_horizon_ms: int = DEFAULT_DEDUP_HORIZON_MS,
                 out_of_orderness_ms: int = DEFAULT_OUT_OF_ORDERNESS_MS,
                 entities: tuple[Entity, ...] | None = None, label_signals: bool = False,
                 features: tuple | None = None, graph_params: GraphParams | None = None):
        """``features``: the feature spec (default ``features.FEATURES``); ``entities``: the stages (default:
        the spec's, ``features.spec_entities``: with graph features, the link stage after the others);
        ``graph_params``: the graph's constants (``udfs.graph.GraphParams``; default from the spec)."""
        self.label_signals = label_signals  # as the job with a labels topic: records carry the signals
        # label features read the labels folded so far whether or not the records carry signals
        entities = spec_entities(features) if entities is None else entities
        self.steps = [EntityStep(e, allowed_lateness_ms, dedup_horizon_ms, features, graph_params) for e in entities]
        self.stores: list[dict[str, dict]] = [{} for _ in self.steps]
        self.known: list[dict[str, dict]] = [{} for _ in self.steps]  # label state (EntityStep.fold_label)
        # graph features (udfs.graph): per stage, the keys' graph state and graph label stores
        self.graph = any(s.graph is not None for s in self.steps)
        self.gstores: list[dict[str, dict]] = [{} for _ in self.steps]
        self.glabels: list[dict[str, dict]] = [{} for _ in self.steps]
        self.out_of_orderness_ms = int(out_of_orderness_ms)
        self._timers: list[tuple[int, int, str]] = []  # (timestamp, stage index, key)
        self._max_ts: int | None = None

    def watermark(self) -> int | None:
        return None if self._max_ts is None else self._max_ts - self.out_of_orderness_ms - 1

    def _fire_timers(self) -> None:
        wm = self.watermark()
        while self._timers and wm is not None and self._timers[0][0] <= wm:
            ts, i, key = heapq.heappop(self._timers)
            step = self.steps[i]
            if step.is_link:  # the link stage's graph state has its own expiry
                self._fire_link_timer(i, key, ts)
                continue
            store = self.stores[i]
            what, timer = step.on_timer(store.get(key), ts)
            if what == "clear":
                del store[key]
                self.gstores[i].pop(key, None)  # a members key's graph state goes with its windows
            elif what == "rearm":
                store[key]["timer"] = timer
                heapq.heappush(self._timers, (timer, i, key))

    def _fire_link_timer(self, i: int, key: str, ts: int) -> None:
        what, timer = self.steps[i].on_graph_timer(self.gstores[i].get(key), ts)
        if what == "clear":
            del self.gstores[i][key]
        elif what == "rearm":
            heapq.heappush(self._timers, (timer, i, key))

    def label(self, label: Label) -> None:
        """Fold a label (``udfs.labels.Label``) into every entity that reads labels and whose key it names (in
        the job it arrives on the labels topic); it counts for every event processed after it."""
        rec = label_record(label)
        if self.graph:
            for i, step in enumerate(self.steps):
                key = step.label_key(rec)
                if key is not None and step.keeps_graph_labels:
                    lab = step.graph_label(self.glabels[i].get(key), rec)
                    if lab:
                        self.glabels[i][key] = lab
                    else:
                        self.glabels[i].pop(key, None)
        for i, step in enumerate(self.steps):
            if step.reads_labels:
                key = step.label_key(rec)
                if key is None:
                    continue
                known = step.fold_label(self.known[i].get(key), rec)
                if known:
                    self.known[i][key] = known
                else:
                    self.known[i].pop(key, None)

    def process(self, ev: Event) -> tuple[list[float], bool, dict | None] | None:
        """(window values in chain order, late, signals) of one event, or None for a duplicate event id
        (the job dead-letters it)."""
        self._fire_timers()
        try:
            return self._process(ev)
        finally:  # every parsed event moves the watermark in the job, duplicates included
            if self._max_ts is None or ev.ts > self._max_ts:
                self._max_ts = ev.ts

    def _process(self, ev: Event) -> tuple[list[float], bool, dict | None] | None:
        values: list[float] = []
        late = False
        signals: dict[str, Any] | None = None
        ctx = new_context(ev) if self.graph else None
        for i, step in enumerate(self.steps):
            key = step.key(ev)
            if key is None:
                values += step.empty_values()
                continue
            if step.is_link:  # the link stage keeps graph state only
                gst, vals, timer = step.graph_step(self.gstores[i].get(key), None, ev, key, ctx)
                self.gstores[i][key] = gst
                if timer is not None:
                    heapq.heappush(self._timers, (timer, i, key))
                values += vals
                continue
            store = self.stores[i]
            st = store.get(key)
            if step.duplicate(st, ev):
                return None  # the first stage: nothing stored anywhere yet
            st, vals, lt, timer = step.step(st, ev, self.known[i].get(key))
            store[key] = st
            if timer is not None:
                heapq.heappush(self._timers, (timer, i, key))
            values += vals
            if step.graph is not None:
                gst, gvals, _ = step.graph_step(self.gstores[i].get(key), self.glabels[i].get(key), ev, key, ctx)
                if gst is not None:
                    self.gstores[i][key] = gst
                values += gvals
            late = late or lt
            sig = step.signals(self.known[i].get(key), ev) if self.label_signals else None
            if sig:
                signals = {**(signals or {}), **sig}
        return values, late, signals

    def state_keys(self) -> dict[str, int]:
        """Keys held per entity (for memory checks)."""
        return {s.name: len(store) for s, store in zip(self.steps, self.stores)}

    def graph_keys(self) -> dict[str, int]:
        """Keys holding graph state per entity that keeps any (members and link stages)."""
        return {s.name: len(store) for s, store in zip(self.steps, self.gstores) if s.keeps_graph_state}


def writer_layout() -> dict:
    """How the JVM writer (``io.riskstream.flink.DecisionWriter``) lays out a decision record from a record Row:
    the Row's field names (``udfs.chain.ROW_FIELDS``), the key fields a decision record carries for labels
    (``features.LABEL_KEYS``, in order), the feature names in vector order, the event features (their Row
    field, None for the event-type index), the event types and the signal names."""
    return {"record_fields": [name for name, _ in ROW_FIELDS], "label_keys": list(LABEL_KEYS),
            "feature_names": list(FEATURE_NAMES),
            "event_features": [None if f.agg == "type_index" else f.field for f in features_for("event")],
            "event_types": list(EVENT_TYPES), "signals": list(SIGNAL_NAMES)}


def spec_document(allowed_lateness_ms: int = DEFAULT_LATENESS_MS, features: tuple | None = None) -> dict:
    """Everything another runtime needs to rebuild the windows exactly (``riskstream features --json``):
    entities in chain order with their key field and retention, bucket widths, features in vector order,
    the window aggregates they name (the JVM class of each, ``udfs.aggregates``), the lateness, the empty
    value, the cleanup-timer grid, the distinct-count sketch settings, and the record's fields in Row order
    (``ROW_FIELDS``) so a JVM stage finds every field by name. ``features``: the feature spec (default
    ``features.FEATURES``; a label feature's ``offset_ms`` is in its entry when not 0)."""
    features = FEATURES if features is None else features
    doc = {
        "record_fields": [name for name, _ in ROW_FIELDS],
        "fingerprint": spec_fingerprint(features),
        "allowed_lateness_ms": int(allowed_lateness_ms),
        "missing": MISSING,
        "timer_grid_ms": TIMER_GRID_MS,
        "bucket_ms": {str(h): g for h, g in sorted(BUCKET_MS.items())},
        "event_types": list(EVENT_TYPES),
        "distinct": {"exact_up_to": HLL_THRESHOLD, **hll.params()},
        # the window aggregates the features name (and count: a fraud share's denominator), each with the
        # class of its JVM twin, its accumulator family and its constants (udfs.aggregates)
        "aggregates": spec_aggregates([f.agg for f in features] + ["count"]),
        "entities": [{**e.to_json(features), "order": i,
                      "retention_ms": retention_ms(e.name, allowed_lateness_ms, features),
                      "fresh_ms": fresh_ms(e.name, allowed_lateness_ms, features),
                      "label_keep_ms": label_keep_ms(e.name, features),
                      "features": [f.name for f in features_for(e.name, features)]}
                     for i, e in enumerate(spec_entities(features))],
        "features": spec_json(features),
    }
    if has_graph(features):  # the graph's constants (docs/features.md#graph-features); absent without them
        # plus the reference's own (udfs.graph): the label store's cap, the no-fraud time, the kinds
        # graph_shared_entities pairs with its users; a JVM stage reads every one from here
        doc["graph"] = {**GRAPH, "max_labels": MAX_GRAPH_LABELS, "no_fraud": NO_FRAUD,
                        "link_kinds": list(GRAPH_LINK_KINDS)}
    return doc


def state_layout(allowed_lateness_ms: int = DEFAULT_LATENESS_MS, features: tuple | None = None) -> dict[str, dict]:
    """Per stage of the spec's chain, what its window state holds, in the order both runtimes encode it:
    ``slots``, a short fingerprint of its slots per bucket width (accumulator family, input field, event-type
    filter) and dedup; ``delayed``, its delayed-count widths. A restore reads the state of a stage whose
    ``slots`` are equal, and whose ``delayed`` widths are equal or one side's are empty (state written
    without them has no counts yet; counts read without them are not needed). A spec that only adds
    features over existing slots keeps the layout (its feature fingerprint changes). The graph parts keep
    their state apart; the link stage has no window state. Recorded with each run, compared at a restore
    (``riskstream.ops.restore.check_layout``). Pitfall: positions, not names, identify a slot in the state,
    so another layout would read another window's accumulators, silently."""
    import hashlib

    features = FEATURES if features is None else features
    out = {}
    for e in spec_entities(features):
        w = EntityWindows(e.name, allowed_lateness_ms, tuple(f for f in features_for(e.name, features)
                                                             if f.agg not in GRAPH_AGGS))
        desc = {"slots": {str(g): [[a.accumulator, fld, sorted(ty) if ty else None] for a, fld, ty in sl]
                          for g, sl in sorted(w.slots.items())}, "dedup": bool(e.dedup)}
        out[e.name] = {"slots": hashlib.blake2b(orjson.dumps(desc, option=orjson.OPT_SORT_KEYS),
                                                digest_size=8).hexdigest(),
                       "delayed": sorted(w.delayed_reach)}
    return out


__all__ = ["Chain", "Decider", "EntityStep", "FRAUD", "LABEL_MARK", "Record", "arrived_at", "extend", "graph_context",
           "is_label", "key_index", "label_identity", "label_record", "pack", "spec_document", "state_layout", "unpack"]
