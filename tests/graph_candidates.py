"""Candidate ring features screened one at a time on their *ideal* values (no caps, no staleness; computed
here by search over the arrived events, not by ``udfs/graph.py``): the model of ``benchmarks.graph_rings
--model`` (trained on seed 11, tested on seed 12, 14 days, threshold at 0.5 % of normal events) with the
base features, the first eight graph features, and one candidate. A screening aid, not a test
(docs/features.md#graph-features has the figures and which candidate joined the spec):

    python -m tests.graph_candidates 40000
"""

from __future__ import annotations

import sys
from collections import defaultdict

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier

from benchmarks.graph_rings import replay_rings
from riskstream.generator import RING_SCENARIO, TrafficGenerator
from tests.test_graph import generated_steps

DAY = 86_400_000
H, LH = 7 * DAY, 30 * DAY
CANDIDATES = ("two_hop_device_users", "two_hop_card_users", "two_hop_ip_users", "two_hop_device_card_users",
              "two_hop_device_card_fraud_users", "device_card_component_users",
              "device_card_component_fraud_users", "two_hop_device_card_active_24h",
              "four_hop_device_card_users", "four_hop_device_card_fraud_users", "four_hop_device_card_active_24h",
              "user_age_ms", "ip_shared_entities_7d", "ip_shared_entity_users_7d", "ip_shared_entities_24h",
              "ip_shared_entity_users_24h")


def ideal(steps) -> np.ndarray:
    """One row of CANDIDATES per event, from the events and labels arrived so far."""
    edge: dict = {}  # (user, kind, key) -> newest time
    ue, eu = defaultdict(set), defaultdict(set)
    labels: dict = defaultdict(dict)
    first: dict = {}
    ip_pairs: dict = defaultdict(dict)  # ip -> {(kind, key, user): newest time}
    rows = []
    for kind_, it in steps:
        if kind_ == "l":
            labels[it[1]][it[0]] = (it[4], it[3])
            continue
        ev, u, t = it, it.user_id, it.ts
        first.setdefault(u, t)
        for kind, key in (("ip", ev.ip), ("device", ev.device_id), ("payment", ev.payment_ref)):
            if key:
                e = (kind, key)
                edge[(u, *e)] = max(edge.get((u, *e), t), t)
                ue[u].add(e)
                eu[e].add(u)
                if kind != "ip" and ev.ip:
                    ip_pairs[ev.ip][(kind, key, u)] = max(ip_pairs[ev.ip].get((kind, key, u), t), t)
        lo = t - H

        def users(e):
            return {v for v in eu.get(e, ()) if edge.get((v, *e), -1) >= lo}

        def ents(v, kinds):
            return {e for e in ue.get(v, ()) if e[0] in kinds and edge.get((v, *e), -1) >= lo}

        def fraud(v):
            return any(lab == "fraud" and ts >= t - LH for lab, ts in labels.get(v, {}).values())

        def active(s, w):
            return sum(1 for v in s if max(edge[(v, *e)] for e in ue[v]) >= t - w)

        per = {}
        for kind in ("ip", "device", "payment"):
            s = set()
            for e in ents(u, (kind,)):
                s |= users(e)
            s.discard(u)
            per[kind] = s
        linked = per["device"] | per["payment"]
        comp, todo, seen_e = {u}, [u], set()
        while todo:
            v = todo.pop()
            for e in ents(v, ("device", "payment")):
                if e not in seen_e:
                    seen_e.add(e)
                    for w in users(e) - comp:
                        comp.add(w)
                        todo.append(w)
        l2 = set(linked)
        for v in linked:
            for e in ents(v, ("device", "payment")):
                l2 |= users(e)
        l2.discard(u)
        ip_vals = []
        for w in (H, DAY):
            by: dict = defaultdict(set)
            for (kind, key, v), ts in (ip_pairs[ev.ip].items() if ev.ip else ()):
                if ts >= t - w:
                    by[(kind, key)].add(v)
            shared = [vs for vs in by.values() if len(vs) >= 2]
            ip_vals += [len(shared), len(set().union(*shared)) if shared else 0]
        rows.append([len(per["device"]), len(per["payment"]), len(per["ip"]), len(linked),
                     sum(map(fraud, linked)), len(comp), sum(map(fraud, comp)), active(linked, DAY), len(l2),
                     sum(map(fraud, l2)), active(l2, DAY), t - first[u], ip_vals[0], ip_vals[1], ip_vals[2],
                     ip_vals[3]])
    return np.asarray(rows, dtype=float)


def data(seed: int, n: int):
    x, scen, names, _, _ = replay_rings(n, 14, seed)
    return x, scen, names, ideal(generated_steps(TrafficGenerator(seed=seed, days=14, rings=True), n))


def catch(a, b, cols) -> float:
    m = HistGradientBoostingClassifier(max_iter=100, learning_rate=0.1, max_leaf_nodes=15, random_state=0)
    m.fit(cols(a), (a[1] != "normal").astype(int))
    p = m.predict_proba(cols(b))[:, 1]
    normal, ring = b[1] == "normal", b[1] == RING_SCENARIO
    return float((p[ring] > np.quantile(p[normal], 0.995, method="higher")).mean())


def main(n: int) -> None:
    a, b = data(11, n), data(12, n)
    names = a[2]
    old_graph = [i for i, s in enumerate(names) if s.startswith("graph_") and "shared" not in s]
    base = [i for i, s in enumerate(names) if not s.startswith("graph_")]
    print(f"base: {100 * catch(a, b, lambda d: d[0][:, base]):.1f} %")
    print(f"base + 8 graph: {100 * catch(a, b, lambda d: d[0][:, base + old_graph]):.1f} %")
    for j, c in enumerate(CANDIDATES):
        v = catch(a, b, lambda d: np.hstack([d[0][:, base + old_graph], d[3][:, [j]]]))
        print(f"base + 8 graph + {c}: {100 * v:.1f} %", flush=True)
    print(f"base + 8 graph + all: {100 * catch(a, b, lambda d: np.hstack([d[0][:, base + old_graph], d[3]])):.1f} %")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 40_000)
