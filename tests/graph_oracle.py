"""Brute-force graph oracle: the *ideal* graph features (docs/features.md#graph-features), by search over
every event and label that has arrived, with no caps, no sketches and no staleness.

Independent of ``udfs/graph.py`` on purpose: it reads only the events (their user, ip, device and
payment_ref and time) and the labels, in the order they reach the job. Feed it with :meth:`label` and
:meth:`event` in that order; :meth:`event` returns the event's ideal values.

- An edge (user, entity) is live for an event at ``t`` when the newest arrived event of that pair has a
  time ``>= t - horizon``.
- ``graph_ip_shared_entities_7d``: the devices and cards that two or more users used *with the event's ip*
  (on an event naming both), each such (ip, user, device or card) triple live by its newest arrived time.
- A user is known fraud at ``t`` when, among the labels arrived so far (the newest label of a (user,
  event id) wins), one marks an event of that user with an event time ``>= t - label_horizon`` as fraud.
"""

from __future__ import annotations

from collections import defaultdict

KINDS = (("ip", "ip"), ("device", "device_id"), ("payment", "payment_ref"))


class GraphOracle:
    def __init__(self, horizon_ms: int, label_horizon_ms: int):
        self.h = horizon_ms
        self.lh = label_horizon_ms
        self.edge: dict[tuple, int] = {}  # (user, kind, key) -> newest arrived event time
        self.user_ents: dict[str, set] = defaultdict(set)
        self.ent_users: dict[tuple, set] = defaultdict(set)
        self.ip_pairs: dict[str, dict] = defaultdict(dict)  # ip -> {(kind, key, user): newest arrived time}
        self.labels: dict[str, dict] = defaultdict(dict)  # user -> {event_id: (label, event time)}

    def label(self, event_id: str, user_id: str, event_ts: int, label: str) -> None:
        self.labels[user_id][event_id] = (label, event_ts)

    def _is_fraud(self, user: str, t: int) -> bool:
        return any(lab == "fraud" and ts >= t - self.lh for lab, ts in self.labels.get(user, {}).values())

    def event(self, ev) -> dict:
        """The event's ideal values; the event joins the graph first (it has arrived)."""
        u, t = ev.user_id, ev.ts
        mine = []
        for kind, fld in KINDS:
            key = getattr(ev, fld)
            if key is None or key == "":
                continue
            e = (kind, key)
            mine.append(e)
            self.edge[(u, *e)] = max(self.edge.get((u, *e), t), t)
            self.user_ents[u].add(e)
            self.ent_users[e].add(u)
        lo = t - self.h
        if ev.ip:
            ipp = self.ip_pairs[ev.ip]
            for kind, fld in KINDS[1:]:
                key = getattr(ev, fld)
                if key:
                    ipp[(kind, key, u)] = max(ipp.get((kind, key, u), t), t)
            by_ent: dict = defaultdict(set)
            for (kind, key, v), ts in ipp.items():
                if ts >= lo:
                    by_ent[(kind, key)].add(v)
            ip_shared = sum(1 for vs in by_ent.values() if len(vs) >= 2)
        else:
            ip_shared = 0

        def is_live(user, e) -> bool:
            return self.edge.get((user, *e), lo - 1) >= lo

        def users_of(e) -> set:
            return {v for v in self.ent_users.get(e, ()) if is_live(v, e)}

        def ents_of(user, kinds) -> set:
            return {e for e in self.user_ents.get(user, ()) if e[0] in kinds and is_live(user, e)}

        n2 = set()
        for e in ents_of(u, ("ip", "device", "payment")):
            n2 |= users_of(e)
        n2.discard(u)

        def side(e, second: tuple) -> set:
            first = users_of(e)
            out = set(first)
            for v in first:
                for x in ents_of(v, second):
                    out |= users_of(x)
            return out

        dev = side(("device", ev.device_id), ("ip",))
        pay = side(("payment", ev.payment_ref), ("ip", "device")) if ev.payment_ref else set()
        group = {u} | n2 | dev | pay

        def fraud_in(users: set) -> int:
            return sum(1 for v in users if self._is_fraud(v, t))

        # the true connected component of u over live edges (for comparison only)
        seen_u, seen_e, todo = {u}, set(), [u]
        while todo:
            v = todo.pop()
            for e in ents_of(v, ("ip", "device", "payment")):
                if e in seen_e:
                    continue
                seen_e.add(e)
                for w in users_of(e):
                    if w not in seen_u:
                        seen_u.add(w)
                        todo.append(w)
        return {
            "graph_device_users_7d": len(dev), "graph_device_fraud_users_7d": fraud_in(dev),
            "graph_payment_users_7d": len(pay), "graph_payment_fraud_users_7d": fraud_in(pay),
            "graph_user_users_7d": len(n2), "graph_user_fraud_users_7d": fraud_in(n2),
            "graph_group_users_7d": len(group), "graph_group_fraud_share_7d": fraud_in(group) / len(group),
            "graph_ip_shared_entities_7d": ip_shared,
            "component_users": len(seen_u), "component_fraud_users": fraud_in(seen_u),
        }
