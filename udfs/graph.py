"""Graph features (docs/features.md#graph-features): pure per-key steps of the stages that compute them.

The graph is bipartite: users, and the entities (ip, device, payment instrument) their events name. Each
stage owns one key's state, as the window stages do; nothing is global:

- the *user* stage (:class:`UserPart`) keeps the user's labelled-fraud events and puts the user's newest
  known-fraud time on the event's context (``ctx["fraud"]``);
- each *members* stage (:class:`MemberPart`: ip, device, payment) keeps its key's members ``{user: [newest
  edge time, fraud time carried by the user's last event here, the union of the earlier stages' sketches
  that event carried]}`` (the ``members_cap`` most recent; pitfall: liveness is applied to the union, so a
  fraud time from an entry no longer live counts for the same user live through another sketch), plus the
  labelled-fraud events naming the key, and attaches its *sketch* ``{user: (newest edge time, fraud
  time)}`` of live members to ``ctx["sketch"][name]``; its graph features read its members and their
  stored sketches (``ctx["side"][name]`` keeps that set for the group);
- a members stage with ``graph_shared_entities`` (the ip's) also keeps its key's *pairs* ``{(user, device or
  card): newest time}`` from its own events (the ``pairs_cap`` most recent) and counts the devices and cards
  that two or more users used with the key;
- the *link* stage (:class:`LinkPart`), keyed by user after the others, keeps per user the
  ``entities_cap`` most recent entities it used, each with the sketch that entity attached to the user's
  last event there, and computes the user's and the group's features.

Cleanup (bounded keys, as the windows'): a members stage drops a key's graph state together with its window
state (the entity's retention is at least the graph horizon plus the lateness, so nothing readable goes); the
link stage has no windows and drops a key on its own cleanup timer (:meth:`LinkPart.expires_at`). The label
stores go as the window stages' label stores do (a processing-time TTL in the job, never in the replay).

A sketch entry's times are evaluated at the scored event: a user is in a set when its edge time is
``>= t - horizon_ms``, and counts as known fraud when its fraud time is ``>= t - label_horizon_ms``.
``ctx`` is what the record carries between stages (in the replay a dict beside the record). Times are
epoch ms; ``NO_FRAUD`` means no known fraud.
"""

from __future__ import annotations

from dataclasses import dataclass

from .features import ENTITY_BY_NAME, GRAPH, GRAPH_AGGS, GRAPH_LINK_KINDS, Entity, Feature

NO_FRAUD = -(1 << 62)
MAX_GRAPH_LABELS = 1000  # labelled-fraud events kept per key, as the label features' store


@dataclass(frozen=True)
class GraphParams:
    """The graph's constants (``features.GRAPH``) and the stages' lateness (eviction slack)."""

    horizon_ms: int = GRAPH["horizon_ms"]
    label_horizon_ms: int = GRAPH["label_horizon_ms"]
    members_cap: int = GRAPH["members_cap"]
    entities_cap: int = GRAPH["entities_cap"]
    pairs_cap: int = GRAPH["pairs_cap"]
    lateness_ms: int = 60_000

    @property
    def label_keep_ms(self) -> int:
        """How far behind the newest labelled event a key's store keeps labels: the label horizon plus the
        edge horizon (an event more than that behind a label already folded cannot read it, see the docs)."""
        return self.label_horizon_ms + self.horizon_ms


def merge_into(dst: dict, src: dict) -> None:
    """Union of sketches ``{user: (edge time, fraud time)}``: per user the newer of each time."""
    for u, (last, fr) in src.items():
        old = dst.get(u)
        dst[u] = (last, fr) if old is None else (max(old[0], last), max(old[1], fr))


def live(sketch: dict, t: int, p: GraphParams) -> dict:
    """The entries of ``sketch`` live at ``t``."""
    lo = t - p.horizon_ms
    return {u: e for u, e in sketch.items() if e[0] >= lo}


def fraud_count(users: dict, t: int, p: GraphParams) -> int:
    lo = t - p.label_horizon_ms
    return sum(1 for _, fr in users.values() if fr >= lo)


# -- labels --------------------------------------------------------------------------------------------
def fold_label(lab: dict | None, ident: str, user: str, event_ts: int, label: str, p: GraphParams) -> dict:
    """A key's labelled-fraud events ``{ident: (user, event time)}`` after one label (a new dict): ``fraud``
    (re-)adds the event, any other label removes it (the newest label of an event wins); then the events
    older than the newest by more than ``label_keep_ms`` go, and the oldest while more than
    ``MAX_GRAPH_LABELS`` remain."""
    lab = dict(lab) if lab else {}
    lab.pop(ident, None)
    if label == "fraud":
        lab[ident] = (user, int(event_ts))
        floor = max(ts for _, ts in lab.values()) - p.label_keep_ms
        for k in [k for k, (_, ts) in lab.items() if ts < floor]:
            del lab[k]
        while len(lab) > MAX_GRAPH_LABELS:
            del lab[min(lab, key=lambda k: lab[k][1])]
    return lab


def label_fraud(lab: dict | None) -> dict:
    """``{user: newest labelled-fraud event time}`` of a label store."""
    out: dict[str, int] = {}
    for u, ts in (lab or {}).values():
        if ts > out.get(u, NO_FRAUD):
            out[u] = ts
    return out


# -- stages --------------------------------------------------------------------------------------------
class UserPart:
    """The user stage's part: the user's newest known-fraud time (its own label store, keyed by user)."""

    def __init__(self, params: GraphParams):
        self.p = params

    def step(self, lab: dict | None, ev, ctx: dict) -> None:
        ctx["fraud"] = label_fraud(lab).get(ev.user_id, NO_FRAUD)


class MemberPart:
    """An entity stage's part (ip, device, payment). ``upstream``: the names of the members stages before
    it in the chain, whose sketches it stores per member; ``features``: the entity's graph features."""

    def __init__(self, entity: Entity, params: GraphParams, upstream: tuple[str, ...],
                 features: tuple[Feature, ...]):
        self.name = entity.name
        self.key_field = entity.key_field
        self.p = params
        self.upstream = upstream
        self.aggs = tuple(f.agg for f in features if f.agg in GRAPH_AGGS)
        # graph_shared_entities: the event fields naming the devices and cards it pairs with its user
        self.pair_fields = (tuple((k, ENTITY_BY_NAME[k].key_field) for k in GRAPH_LINK_KINDS if k != self.name)
                            if "graph_shared_entities" in self.aggs else ())

    def empty_values(self) -> list[float]:
        return [0.0] * len(self.aggs)

    def _pairs(self, state: dict, ev) -> int:
        """Stores the event's (user, device / card) pairs in ``state["p"]`` (evicted and capped as members
        are) and returns how many devices and cards two or more users used with the key, each pair live
        (newest time ``>= t - horizon``). Pitfall: a pair keeps the newest time of its events, so an
        out-of-order event never moves it back."""
        p, t, u = self.p, ev.ts, ev.user_id
        pairs = state["p"] = dict(state.get("p", {}))
        for kind, fld in self.pair_fields:
            key = getattr(ev, fld)
            if key:
                pk = (u, f"{kind}\x00{key}")
                pairs[pk] = max(pairs.get(pk, t), t)
        floor = state["newest"] - p.horizon_ms - p.lateness_ms
        for pk in [pk for pk, ts in pairs.items() if ts < floor]:
            del pairs[pk]
        if len(pairs) > p.pairs_cap:
            keep = sorted(pairs, key=lambda k: (pairs[k], k))[-p.pairs_cap:]
            state["p"] = pairs = {k: pairs[k] for k in keep}
        lo = t - p.horizon_ms
        users: dict = {}
        for (v, ek), ts in pairs.items():
            if ts >= lo:
                users.setdefault(ek, set()).add(v)
        return sum(1 for vs in users.values() if len(vs) >= 2)

    def step(self, state: dict | None, lab: dict | None, ev, ctx: dict) -> tuple[dict, list[float]]:
        """(the key's new member state, the entity's graph values); attaches the sketch to ``ctx``."""
        p, t, u = self.p, ev.ts, ev.user_id
        state = {**state, "m": dict(state["m"]), "newest": max(state["newest"], t)} if state else {"m": {}, "newest": t}
        m = state["m"]
        shared = self._pairs(state, ev) if self.pair_fields else 0
        snap: dict = {}
        for name in self.upstream:
            merge_into(snap, ctx["sketch"].get(name, {}))
        old = m.get(u)
        m[u] = (t if old is None else max(old[0], t), ctx["fraud"], snap)
        floor = state["newest"] - p.horizon_ms - p.lateness_ms
        for v in [v for v, e in m.items() if e[0] < floor]:
            del m[v]
        if len(m) > p.members_cap:
            keep = sorted(m, key=lambda v: (m[v][0], v))[-p.members_cap:]
            state["m"] = m = {v: m[v] for v in keep}
        labs = label_fraud(lab)
        lo = t - p.horizon_ms
        sketch = {v: (e[0], max(e[1], labs.get(v, NO_FRAUD))) for v, e in m.items() if e[0] >= lo}
        ctx["sketch"][self.name] = sketch
        if not self.aggs:
            return state, []
        vals = {"graph_shared_entities": float(shared)}
        if "graph_users" in self.aggs or "graph_fraud_users" in self.aggs:  # the side joins the link's group
            side = dict(sketch)
            for v in sketch:
                merge_into(side, live(m[v][2], t, p))
            ctx["side"][self.name] = side
            vals["graph_users"], vals["graph_fraud_users"] = float(len(side)), float(fraud_count(side, t, p))
        return state, [vals[a] for a in self.aggs]


class LinkPart:
    """The link stage (keyed by user): the user's entities and their last sketches; the user's 2-hop users
    and the group. ``members``: the names of the members stages, in chain order."""

    def __init__(self, params: GraphParams, members: tuple[str, ...], features: tuple[Feature, ...]):
        self.p = params
        self.members = members
        self.aggs = tuple(f.agg for f in features if f.agg in GRAPH_AGGS)

    def expires_at(self, state: dict) -> int:
        """Event time from which no event can read the key's state: every entity in it is older than the
        eviction floor of any event at or after it. A runner drops the key when its watermark reaches it (a
        cleanup timer, as the window stages': ``udfs.windows.arm``/``cleanup`` with this expiry)."""
        return int(state["newest"]) + self.p.horizon_ms + self.p.lateness_ms + 1

    def step(self, state: dict | None, ev, ctx: dict) -> tuple[dict, list[float]]:
        p, t, u = self.p, ev.ts, ev.user_id
        state = ({"e": dict(state["e"]), "newest": max(state["newest"], t), "timer": state.get("timer")} if state
                 else {"e": {}, "newest": t})
        ents = state["e"]
        for name in self.members:
            if name in ctx["sketch"]:
                ek = f"{name}\x00{ctx['keys'][name]}"
                old = ents.get(ek)
                ents[ek] = (t if old is None else max(old[0], t), ctx["sketch"][name])
        floor = state["newest"] - p.horizon_ms - p.lateness_ms
        for ek in [ek for ek, e in ents.items() if e[0] < floor]:
            del ents[ek]
        if len(ents) > p.entities_cap:
            keep = sorted(ents, key=lambda k: (ents[k][0], k))[-p.entities_cap:]
            state["e"] = ents = {k: ents[k] for k in keep}
        lo = t - p.horizon_ms
        n2: dict = {}
        for last, sk in ents.values():
            if last >= lo:
                merge_into(n2, live(sk, t, p))
        n2.pop(u, None)
        group = {u: (t, ctx["fraud"])}
        merge_into(group, n2)
        for side in ctx["side"].values():
            merge_into(group, side)
        vals = {"graph_users": float(len(n2)), "graph_fraud_users": float(fraud_count(n2, t, p)),
                "graph_group_users": float(len(group)),
                "graph_group_fraud_share": fraud_count(group, t, p) / len(group)}
        return state, [vals[a] for a in self.aggs]


def new_context(ev) -> dict:
    """The graph context of one event as it enters the chain."""
    return {"fraud": NO_FRAUD, "sketch": {}, "side": {}, "keys": {}}


__all__ = ["GraphParams", "LinkPart", "MemberPart", "NO_FRAUD", "UserPart", "fold_label", "label_fraud",
           "merge_into", "new_context"]
