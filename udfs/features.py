"""The declarative spec: entities and features, one definition read by the streaming job, the offline
replay, training and the benchmarks.

An :class:`Entity` is a thing the job keeps keyed window state for (a user, an address, a device, a payment
instrument): its name, the event field holding its key, and its place in the stage chain (the order of
:data:`ENTITIES`). Each :class:`Feature` names its entity, input field, aggregate, horizon and event-type
filter. The model's feature vector is :data:`FEATURES` in order: the event's own fields, then each
entity's features in chain order. :func:`spec_fingerprint` identifies that order and meaning, and the
scorer refuses a model trained against a different fingerprint.

Adding an entity or a feature is a change here (plus retraining): the job's wiring, the replay and the
benchmarks build one keyed stage per entity from this module (see docs/extending.md).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass

import orjson

from .aggregates import AGGREGATES, MISSING
from .events import EVENT_TYPES

SECOND = 1_000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR

# horizon -> bucket (slice) width. A window is a whole number of buckets: memory per key is bounded by
# horizon / bucket, whatever the event rate, and a feature's edge is exact to one bucket (see README).
BUCKET_MS = {
    1 * MINUTE: 5 * SECOND,
    10 * MINUTE: 30 * SECOND,
    1 * HOUR: 2 * MINUTE,
    24 * HOUR: 30 * MINUTE,
    # long horizons on coarse tiles: a 7-day window is 28 six-hour buckets, a 30-day window 30 days
    7 * DAY: 6 * HOUR,
    30 * DAY: DAY,
}



@dataclass(frozen=True)
class Entity:
    """A keyed stage of the chain. Pitfalls: ``key_field`` must be an :class:`udfs.events.Event` field; an
    ``optional`` entity's events may lack a key (None): they read empty windows and store nothing. Only
    the first entity of the chain may ``dedup`` (it sees every event first). ``label_signals``: the stage
    also folds labels into a per-key set of known-fraud users (``udfs.labels``), read as the signal
    ``<name>_known_fraud_users_7d`` by the rules. An entity with label features (aggregates in
    ``LABEL_AGGS``) also reads labels (:attr:`reads_labels`): its stage folds them into a per-key store of
    labelled-fraud events (``udfs.labels.apply_fraud_label``). A label (``udfs.labels.Label``) names the
    labelled event's key of every entity: always for a ``label_required`` entity (the user: a label's
    identity; the device: the ring signal), when it knows it for the others (:data:`LABEL_ENTITIES`)."""

    name: str
    key_field: str
    optional: bool = False
    dedup: bool = False
    label_signals: bool = False
    label_required: bool = False
    # the entity's part in the graph features (docs/features.md#graph-features), used only when the spec has
    # graph features: "user" (the first stage: carries the user's known-fraud time), "members" (keeps its
    # members and attaches their sketch), "link" (the link stage after the others); None: no part
    graph: str | None = None

    @property
    def reads_labels(self) -> bool:
        """The stage folds labels: for its signal, or for label features of the spec."""
        return self.reads_labels_in(FEATURES)

    def reads_labels_in(self, features: tuple["Feature", ...]) -> bool:
        """As :attr:`reads_labels`, for the spec ``features``."""
        return (self.label_signals or any(f.entity == self.name and f.agg in LABEL_AGGS for f in features)
                or (self.graph in ("user", "members") and has_graph(features)))

    def to_json(self, features: tuple["Feature", ...] | None = None) -> dict:
        features = FEATURES if features is None else features
        d = {**asdict(self), "reads_labels": self.reads_labels_in(features)}
        if not has_graph(features):  # a spec without graph features is described as before
            del d["graph"]
        return d


# The stage chain, in order. The user stage comes first: it drops duplicate event ids before any window
# counts them.
BASE_ENTITIES: tuple[Entity, ...] = (
    Entity("user", "user_id", dedup=True, label_required=True, graph="user"),
    Entity("ip", "ip", graph="members"),
    Entity("device", "device_id", label_signals=True, label_required=True, graph="members"),
    # the payment instrument (udfs.events.PAYMENT_REF_TYPES carry one): card testing, BIN attacks, shared cards
    Entity("payment", "payment_ref", optional=True, graph="members"),
)
# the graph features' link stage (docs/features.md#graph-features): keyed by user, after the entity stages;
# in the chain only with graph features in the spec (GRAPH_FEATURES)
LINK_ENTITY = Entity("link", "user_id", graph="link")
ALL_ENTITIES: tuple[Entity, ...] = BASE_ENTITIES + (LINK_ENTITY,)
ENTITY_BY_NAME = {e.name: e for e in ALL_ENTITIES}
EVENT_ENTITY = "event"  # the pseudo-entity of the event's own fields (no key, no state)
ENTITY_KEYS = {**{e.name: e.key_field for e in ALL_ENTITIES}, EVENT_ENTITY: None}
# window aggregates: the classes of udfs.aggregates.AGGREGATES, by name (count, sum, mean, max, min, distinct,
# and any plug-in registered there)
KEY_AGGS = ("since_prev", "age")
# label features, as known at decision time (docs/features.md#label-risk-features): the key's events labelled
# fraud, counted from the label's arrival at the stage, whose event time falls in the window; and their share
# of the key's events in the same window
LABEL_AGGS = ("fraud_labels", "fraud_share")
# the entities whose keys a label names (udfs.labels.Label): the label_required ones, then the others, each in
# chain order; LABEL_KEYS their key fields, as the labels topic spells them (user_id, device_id always; ip and
# payment_ref when the label names them)
LABEL_ENTITIES: tuple[Entity, ...] = (tuple(e for e in BASE_ENTITIES if e.label_required)
                                      + tuple(e for e in BASE_ENTITIES if not e.label_required))
LABEL_KEYS: tuple[str, ...] = tuple(e.key_field for e in LABEL_ENTITIES)
EVENT_AGGS = ("value", "type_index")
# graph features (docs/features.md#graph-features): users within two user-hops (and the known-fraud ones
# among them) from an entity that keeps members (device, payment) or from the user (link stage); the group's
# size and fraud share (link stage); the devices and cards that two or more of a key's users used with it
# (graph_shared_entities, a members stage: an ip behind which devices and cards are shared is a farm, not an
# office)
GRAPH_AGGS = ("graph_users", "graph_fraud_users", "graph_group_users", "graph_group_fraud_share",
              "graph_shared_entities")
# the entity kinds graph_shared_entities counts: those an honest account rarely shares (not ips)
GRAPH_LINK_KINDS = ("device", "payment")

PAYMENTS = ("payment", "add_payment_method")
SPEND = ("place_order", "payment")


@dataclass(frozen=True)
class Feature:
    name: str
    entity: str  # an Entity's name, or "event" for the event's own fields
    agg: str
    field: str | None = None  # input field of the event
    horizon_ms: int | None = None
    event_types: tuple[str, ...] | None = None  # filter; None = every type
    # label features only: the window ends this far before the event, [t - offset - horizon, t - offset) to
    # the bucket (docs/features.md#delayed-label-windows); a whole number of the horizon's buckets, 0 = none
    offset_ms: int = 0

    def __post_init__(self) -> None:
        if self.entity not in ENTITY_KEYS:
            raise ValueError(f"{self.name}: unknown entity {self.entity!r}")
        if self.offset_ms:
            if self.agg not in LABEL_AGGS:
                raise ValueError(f"{self.name}: only label features ({', '.join(LABEL_AGGS)}) take an offset")
            g = BUCKET_MS.get(self.horizon_ms)
            if isinstance(self.offset_ms, bool) or not isinstance(self.offset_ms, int) or self.offset_ms < 0 or (
                    g and self.offset_ms % g):
                raise ValueError(f"{self.name}: offset {self.offset_ms!r} must be a positive multiple of the "
                                 f"horizon's bucket width ({g} ms)")
        if self.agg in LABEL_AGGS:
            if self.horizon_ms not in BUCKET_MS:
                raise ValueError(f"{self.name}: horizon {self.horizon_ms} not one of {sorted(BUCKET_MS)}")
            if self.field or self.event_types:
                raise ValueError(f"{self.name}: {self.agg} takes no input field and no event-type filter")
            if self.entity != EVENT_ENTITY and ENTITY_KEYS[self.entity] not in LABEL_KEYS:
                raise ValueError(f"{self.name}: labels carry no {ENTITY_KEYS[self.entity]}")
        elif self.agg in AGGREGATES:
            if self.horizon_ms not in BUCKET_MS:
                raise ValueError(f"{self.name}: horizon {self.horizon_ms} not one of {sorted(BUCKET_MS)}")
            if AGGREGATES[self.agg].takes_field and not self.field:
                raise ValueError(f"{self.name}: {self.agg} needs an input field")
        elif self.agg in GRAPH_AGGS:
            if self.horizon_ms != GRAPH["horizon_ms"] or self.field or self.event_types:
                raise ValueError(f"{self.name}: {self.agg} takes the graph horizon ({GRAPH['horizon_ms']} ms), "
                                 "no input field and no event-type filter")
            role = ENTITY_BY_NAME[self.entity].graph if self.entity in ENTITY_BY_NAME else None
            allowed = (("link",) if self.agg.startswith("graph_group") else ("members",)
                       if self.agg == "graph_shared_entities" else ("link", "members"))
            if role not in allowed:
                raise ValueError(f"{self.name}: {self.agg} belongs to an entity whose graph part is one of {allowed}")
        elif self.agg in KEY_AGGS + EVENT_AGGS:
            if self.horizon_ms is not None:
                raise ValueError(f"{self.name}: {self.agg} takes no horizon")
        else:
            raise ValueError(f"{self.name}: unknown aggregate {self.agg!r}")
        for t in self.event_types or ():
            if t not in EVENT_TYPES:
                raise ValueError(f"{self.name}: unknown event type {t!r} in filter")

    @property
    def bucket_ms(self) -> int | None:
        return BUCKET_MS.get(self.horizon_ms) if self.horizon_ms else None

    @property
    def reach_ms(self) -> int:
        """How far back from an event its window reaches: horizon plus offset (0 without a horizon)."""
        return (self.horizon_ms or 0) + self.offset_ms

    def to_json(self) -> dict:
        d = asdict(self)
        d["entity_key"] = ENTITY_KEYS[self.entity]
        d["event_types"] = list(self.event_types) if self.event_types else None
        if not self.offset_ms:  # a feature without an offset is described (and fingerprinted) as before
            del d["offset_ms"]
        return d


def _f(name, entity, agg, field=None, horizon=None, types=None, offset=0) -> Feature:
    return Feature(name, entity, agg, field, horizon, tuple(types) if types else None, offset)


BASE_FEATURES: tuple[Feature, ...] = (
    # the event itself
    _f("amount", "event", "value", "amount"),
    _f("event_type", "event", "type_index", "event_type"),
    # per user
    _f("user_events_1m", "user", "count", horizon=MINUTE),
    _f("user_events_10m", "user", "count", horizon=10 * MINUTE),
    _f("user_events_1h", "user", "count", horizon=HOUR),
    _f("user_events_24h", "user", "count", horizon=DAY),
    _f("user_payments_10m", "user", "count", horizon=10 * MINUTE, types=PAYMENTS),
    _f("user_payment_methods_24h", "user", "count", horizon=DAY, types=("add_payment_method",)),
    _f("user_spend_sum_1h", "user", "sum", "amount", HOUR, SPEND),
    _f("user_spend_sum_24h", "user", "sum", "amount", DAY, SPEND),
    _f("user_spend_mean_24h", "user", "mean", "amount", DAY, SPEND),
    _f("user_spend_max_24h", "user", "max", "amount", DAY, SPEND),
    _f("user_spend_min_10m", "user", "min", "amount", 10 * MINUTE, SPEND),
    # long horizons (the Fraud Detection Handbook's customer profile: 1/7/30-day counts and mean amounts)
    _f("user_events_7d", "user", "count", horizon=7 * DAY),
    _f("user_events_30d", "user", "count", horizon=30 * DAY),
    _f("user_payments_7d", "user", "count", horizon=7 * DAY, types=("payment",)),
    _f("user_spend_sum_7d", "user", "sum", "amount", 7 * DAY, SPEND),
    _f("user_spend_mean_7d", "user", "mean", "amount", 7 * DAY, SPEND),
    _f("user_spend_mean_30d", "user", "mean", "amount", 30 * DAY, SPEND),
    # the customer's largest amounts (the current one included): a stolen card's 5 x amounts stand out
    # against them, which the mean alone hides from a learner that bins amounts (docs/benchmarks.md, handbook)
    _f("user_spend_max_7d", "user", "max", "amount", 7 * DAY, SPEND),
    _f("user_spend_max_30d", "user", "max", "amount", 30 * DAY, SPEND),
    _f("user_distinct_devices_30d", "user", "distinct", "device_id", 30 * DAY),
    # delayed labels as known at decision time (a label counts from its arrival at the stage)
    _f("user_fraud_labels_30d", "user", "fraud_labels", horizon=30 * DAY),
    _f("user_distinct_devices_24h", "user", "distinct", "device_id", DAY),
    _f("user_distinct_ips_1h", "user", "distinct", "ip", HOUR),
    _f("user_distinct_payment_refs_1h", "user", "distinct", "payment_ref", HOUR),
    _f("user_since_prev_ms", "user", "since_prev"),
    _f("user_age_ms", "user", "age"),
    # per ip (cross-entity linkage: many accounts behind one address)
    _f("ip_events_1h", "ip", "count", horizon=HOUR),
    _f("ip_distinct_users_1h", "ip", "distinct", "user_id", HOUR),
    _f("ip_distinct_users_24h", "ip", "distinct", "user_id", DAY),
    _f("ip_signups_24h", "ip", "count", horizon=DAY, types=("signup",)),
    _f("ip_fraud_labels_7d", "ip", "fraud_labels", horizon=7 * DAY),
    # per device
    _f("device_events_1m", "device", "count", horizon=MINUTE),
    _f("device_events_1h", "device", "count", horizon=HOUR),
    _f("device_distinct_users_1h", "device", "distinct", "user_id", HOUR),
    _f("device_distinct_users_24h", "device", "distinct", "user_id", DAY),
    _f("device_promos_24h", "device", "count", horizon=DAY, types=("promo_redeem",)),
    _f("device_signups_24h", "device", "count", horizon=DAY, types=("signup",)),
    _f("device_spend_sum_1h", "device", "sum", "amount", HOUR, SPEND),
    _f("device_age_ms", "device", "age"),
    # long horizons (the handbook's terminal profile: 1/7/30-day counts)
    _f("device_events_24h", "device", "count", horizon=DAY),
    _f("device_events_7d", "device", "count", horizon=7 * DAY),
    _f("device_events_30d", "device", "count", horizon=30 * DAY),
    _f("device_distinct_users_30d", "device", "distinct", "user_id", 30 * DAY),
    # a compromised device or terminal: its earlier fraud, labelled days later (the handbook's terminal risk)
    _f("device_fraud_labels_7d", "device", "fraud_labels", horizon=7 * DAY),
    _f("device_fraud_labels_30d", "device", "fraud_labels", horizon=30 * DAY),
    _f("device_fraud_share_7d", "device", "fraud_share", horizon=7 * DAY),
    _f("device_fraud_share_30d", "device", "fraud_share", horizon=30 * DAY),
    _f("device_distinct_payment_refs_1h", "device", "distinct", "payment_ref", HOUR),
    # per payment instrument (events without one read empty windows: 0 counts, -1 age)
    _f("payment_events_1h", "payment", "count", horizon=HOUR),
    _f("payment_events_24h", "payment", "count", horizon=DAY),
    _f("payment_attempts_1h", "payment", "count", horizon=HOUR, types=("payment",)),
    _f("payment_distinct_users_24h", "payment", "distinct", "user_id", DAY),
    _f("payment_distinct_devices_24h", "payment", "distinct", "device_id", DAY),
    _f("payment_spend_sum_24h", "payment", "sum", "amount", DAY, SPEND),
    # slow card testing: a few small payments a day on one instrument, over a week
    _f("payment_attempts_7d", "payment", "count", horizon=7 * DAY, types=("payment",)),
    _f("payment_spend_mean_7d", "payment", "mean", "amount", 7 * DAY, SPEND),
    _f("payment_fraud_labels_30d", "payment", "fraud_labels", horizon=30 * DAY),
    _f("payment_fraud_share_30d", "payment", "fraud_share", horizon=30 * DAY),
    _f("payment_age_ms", "payment", "age"),
)

# Delayed label windows (docs/features.md#delayed-label-windows): fraud labels and fraud share over the
# horizon that ends ``offset`` before the event, for labels that arrive days late (the Fraud Detection
# Handbook's terminal risk: a terminal's fraud share over the 7 days that end 7 days ago). Declared here as
# data; they join the model's vector only with DELAYED_LABEL_WINDOWS on. Each goes after its entity's
# features.
DELAYED_LABEL_FEATURES: tuple[Feature, ...] = (
    _f("ip_fraud_labels_7d_delay7d", "ip", "fraud_labels", horizon=7 * DAY, offset=7 * DAY),
    _f("ip_fraud_share_7d_delay7d", "ip", "fraud_share", horizon=7 * DAY, offset=7 * DAY),
    _f("device_fraud_labels_24h_delay7d", "device", "fraud_labels", horizon=DAY, offset=7 * DAY),
    _f("device_fraud_labels_7d_delay7d", "device", "fraud_labels", horizon=7 * DAY, offset=7 * DAY),
    _f("device_fraud_labels_30d_delay7d", "device", "fraud_labels", horizon=30 * DAY, offset=7 * DAY),
    _f("device_fraud_share_24h_delay7d", "device", "fraud_share", horizon=DAY, offset=7 * DAY),
    _f("device_fraud_share_7d_delay7d", "device", "fraud_share", horizon=7 * DAY, offset=7 * DAY),
    _f("device_fraud_share_30d_delay7d", "device", "fraud_share", horizon=30 * DAY, offset=7 * DAY),
)

# The switch. On (shipped): BASE_FEATURES plus DELAYED_LABEL_FEATURES (fingerprint 65793a6f8be4787c), the spec
# the shipped models in models/ are trained on; the ip and device keys are kept for their longest horizon
# plus offset (14 and 37 days) but start over after their undelayed horizons (udfs.windows fresh_ms). Off:
# BASE_FEATURES alone (fingerprint bcfab3a222e33df9): the job refuses the shipped models until you retrain
# (`riskstream train`, docs/models.md). The job, the replay and training all read FEATURES, so they switch
# together.
DELAYED_LABEL_WINDOWS = True


def spec_features(delayed_label_windows: bool) -> tuple[Feature, ...]:
    """The feature vector: BASE_FEATURES, with each delayed label feature after its entity's features
    when ``delayed_label_windows``."""
    if not delayed_label_windows:
        return BASE_FEATURES
    order = (EVENT_ENTITY,) + tuple(e.name for e in BASE_ENTITIES)
    extra = DELAYED_LABEL_FEATURES
    return tuple(f for ent in order for f in BASE_FEATURES + extra if f.entity == ent)


# Graph features (docs/features.md#graph-features): declared as data, in the vector only with GRAPH_FEATURES
# on, each after its entity's other features (the link stage's after every entity). The graph's constants:
# the edge horizon, how long a fraud label marks its user, members kept per entity, entities per user,
# (user, device or card) pairs kept per key for graph_shared_entities.
GRAPH = {"horizon_ms": 7 * DAY, "label_horizon_ms": 30 * DAY, "members_cap": 16, "entities_cap": 16,
         "pairs_cap": 48}
GRAPH_FEATURE_LIST: tuple[Feature, ...] = (
    _f("graph_device_users_7d", "device", "graph_users", horizon=7 * DAY),
    _f("graph_device_fraud_users_7d", "device", "graph_fraud_users", horizon=7 * DAY),
    _f("graph_payment_users_7d", "payment", "graph_users", horizon=7 * DAY),
    _f("graph_payment_fraud_users_7d", "payment", "graph_fraud_users", horizon=7 * DAY),
    _f("graph_user_users_7d", "link", "graph_users", horizon=7 * DAY),
    _f("graph_user_fraud_users_7d", "link", "graph_fraud_users", horizon=7 * DAY),
    _f("graph_group_users_7d", "link", "graph_group_users", horizon=7 * DAY),
    _f("graph_group_fraud_share_7d", "link", "graph_group_fraud_share", horizon=7 * DAY),
    _f("graph_ip_shared_entities_7d", "ip", "graph_shared_entities", horizon=7 * DAY),
)
# The switch, read once at import from the environment (``RISKSTREAM_GRAPH_FEATURES``: 1/true/yes/on or
# 0/false/no/off, default off). Off: the spec, its fingerprint, the shipped default models and the job are as
# without graph features. On: the replay, training and both stage runtimes of the job compute them (udfs.graph,
# io.riskstream.flink.graph), the chain gains the link stage and the default model is the graph model
# (docs/features.md#graph-features). Pitfall: every process of a job must see the same value (the client, the
# Python workers, a cluster's TaskManagers); a model of the other spec is refused at start by its names.
GRAPH_FEATURES_ENV = "RISKSTREAM_GRAPH_FEATURES"


def _switch(name: str) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise ValueError(f"{name}={os.environ[name]!r}: set it to 1 (graph features on) or 0 (off)")


GRAPH_FEATURES = _switch(GRAPH_FEATURES_ENV)


def with_graph(features: tuple[Feature, ...]) -> tuple[Feature, ...]:
    """``features`` plus GRAPH_FEATURE_LIST, each graph feature after its entity's others, the link stage's
    last."""
    order = (EVENT_ENTITY,) + tuple(e.name for e in ALL_ENTITIES)
    return tuple(f for ent in order for f in features + GRAPH_FEATURE_LIST if f.entity == ent)


def has_graph(features: tuple[Feature, ...]) -> bool:
    return any(f.agg in GRAPH_AGGS for f in features)


def spec_entities(features: tuple[Feature, ...] | None = None) -> tuple[Entity, ...]:
    """The stage chain for the spec ``features``: BASE_ENTITIES, plus the link stage with graph features."""
    return ALL_ENTITIES if has_graph(FEATURES if features is None else features) else BASE_ENTITIES


FEATURES: tuple[Feature, ...] = spec_features(DELAYED_LABEL_WINDOWS)
if GRAPH_FEATURES:
    FEATURES = with_graph(FEATURES)
ENTITIES: tuple[Entity, ...] = spec_entities(FEATURES)
# the spec with the delayed label windows, whatever the switch (tests, `riskstream features --delayed`)
FEATURES_WITH_DELAYED: tuple[Feature, ...] = spec_features(True)

FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)
# the spec with the graph features, whatever the switch (tests, the generator's ring figures)
FEATURES_WITH_GRAPH: tuple[Feature, ...] = FEATURES if GRAPH_FEATURES else with_graph(FEATURES)
if len({f.name for f in with_graph(FEATURES_WITH_DELAYED)}) != len(FEATURES_WITH_DELAYED) + len(GRAPH_FEATURE_LIST):
    raise ValueError("duplicate feature names in FEATURES")
# The chain assembles the vector as the event's values, then each entity's in chain order: keep FEATURES so.
ENTITY_ORDER = (EVENT_ENTITY,) + tuple(e.name for e in ALL_ENTITIES)
if [f.entity for f in FEATURES] != sorted((f.entity for f in FEATURES), key=ENTITY_ORDER.index):
    raise ValueError(f"FEATURES must list their entities in this order: {ENTITY_ORDER}")
for _e in ENTITIES[1:]:
    if _e.dedup:
        raise ValueError(f"entity {_e.name}: only the first entity of the chain may dedup")
SIGNALS: tuple[str, ...] = tuple(f"{e.name}_known_fraud_users_7d" for e in ENTITIES if e.label_signals)
# MISSING (udfs.aggregates): since_prev of a key's first event; mean / max / min of an empty window (sum and
# count: 0)


def features_for(entity: str, features: tuple[Feature, ...] | None = None) -> tuple[Feature, ...]:
    """The entity's features in vector order, of the spec ``features`` (default: FEATURES)."""
    return tuple(f for f in (FEATURES if features is None else features) if f.entity == entity)


def spec_json(features: tuple[Feature, ...] = FEATURES) -> list[dict]:
    return [f.to_json() for f in features]


def spec_fingerprint(features: tuple[Feature, ...] = FEATURES) -> str:
    """Hash of names, order and meaning of every feature: a model is valid only for this fingerprint."""
    return hashlib.sha256(orjson.dumps(spec_json(features), option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def label_keep_ms(entity: str, features: tuple[Feature, ...] | None = None) -> int:
    """How far behind the newest labelled event time a key's label store keeps labels: the longest label
    horizon plus offset plus its bucket width (an older label can be read only by events older than any it
    labels)."""
    return max((f.reach_ms + f.bucket_ms for f in features_for(entity, features) if f.agg in LABEL_AGGS),
               default=0)


def max_horizon_ms(entity: str, features: tuple[Feature, ...] | None = None) -> int:
    """The longest reach (horizon plus offset) of the entity's features: its keys' retention, less the
    lateness."""
    return max((f.reach_ms for f in features_for(entity, features)), default=0)

