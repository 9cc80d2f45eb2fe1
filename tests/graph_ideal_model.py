"""The graph features' ceiling on generated rings: the model of ``benchmarks.graph_rings --model`` trained and
tested with the reference's graph values, with the oracle's ideal ones (``tests/graph_oracle.py``: no caps,
no staleness) and with the true connected component's size, fraud count and share. One run, seeds 11 and
12, 14 days (docs/features.md#graph-features):

    python -m tests.graph_ideal_model 40000
"""

from __future__ import annotations

import sys
import time

import numpy as np
from benchmarks.graph_rings import replay_rings, auc
from tests.test_graph import generated_steps
from tests.graph_oracle import GraphOracle
from riskstream.generator import TrafficGenerator, RING_SCENARIO
from udfs.features import GRAPH
from sklearn.ensemble import HistGradientBoostingClassifier
KEYS = ["graph_device_users_7d","graph_device_fraud_users_7d","graph_payment_users_7d","graph_payment_fraud_users_7d","graph_user_users_7d","graph_user_fraud_users_7d","graph_group_users_7d","graph_group_fraud_share_7d","graph_ip_shared_entities_7d"]
def data(s, N):
    x, scen, names, _, _ = replay_rings(N, 14, s)
    orc = GraphOracle(GRAPH["horizon_ms"], GRAPH["label_horizon_ms"])
    ideal = []
    for k, item in generated_steps(TrafficGenerator(seed=s, days=14, rings=True), N):
        if k == "l":
            orc.label(item[0], item[1], item[3], item[4]); continue
        d = orc.event(item)
        ideal.append([d[k] for k in KEYS] + [d["component_users"], d["component_fraud_users"], d["component_fraud_users"] / d["component_users"]])
    return x, scen, names, np.asarray(ideal, dtype=float)
def main(N: int, seed: int = 11) -> None:
    t = time.time()
    A = data(seed, N); B = data(seed + 1, N)
    print("data", time.time() - t, flush=True)
    names = A[2]
    graph = [i for i, n in enumerate(names) if n.startswith("graph_")]
    base = [i for i in range(len(names)) if i not in graph]
    def feats(D, kind):
        x, _, _, ideal = D
        if kind == "base": return x[:, base]
        if kind == "ref": return x[:, base + graph]
        if kind == "ideal": return np.hstack([x[:, base], ideal[:, :len(KEYS)]])
        if kind == "ideal+component": return np.hstack([x[:, base], ideal])
        if kind == "base+component": return np.hstack([x[:, base], ideal[:, len(KEYS):]])
    for kind in ("base", "ref", "ideal", "base+component", "ideal+component"):
        m = HistGradientBoostingClassifier(max_iter=100, learning_rate=0.1, max_leaf_nodes=15, random_state=0)
        m.fit(feats(A, kind), (A[1] != "normal").astype(int))
        p = m.predict_proba(feats(B, kind))[:, 1]
        sb = B[1]; normal, ring = sb == "normal", sb == RING_SCENARIO
        thr = np.quantile(p[normal], 0.995, method="higher")
        print(kind, "ring caught", round(float((p[ring] > thr).mean()), 3), "fraud", round(float((p[sb != "normal"] > thr).mean()), 3), "fp", round(float((p[normal] > thr).mean()), 4), flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 40_000)
