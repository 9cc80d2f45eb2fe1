"""How the graph features separate fraud-ring events from normal ones where one-hop features do not
(docs/features.md#graph-features): generated traffic with rings, households, offices and public wifi
(``TrafficGenerator(rings=True)``), replayed with the graph features (``features.FEATURES_WITH_GRAPH``, the
Python reference) and every label at its arrival time; per feature, alone: its ROC AUC for ring events
against normal events, and the share of ring events above the value that only 0.5 % of normal events
exceed (a one-feature "catch at 0.5 % false positives"). Also the graph state's pickled bytes per key.

    python -m benchmarks.graph_rings --events 40000 --days 14 --seed 11 [--model] [--json]
"""

from __future__ import annotations

import argparse
import json
import pickle
import time

import numpy as np
import orjson

from riskstream.generator import RING_SCENARIO, TrafficGenerator
from udfs.events import parse_event
from udfs.features import FEATURES_WITH_GRAPH, GRAPH_FEATURE_LIST
from udfs.labels import FRAUD, LEGIT, Label
from udfs.replay import FeatureReplay

ONE_HOP = ("ip_distinct_users_24h", "device_distinct_users_24h", "device_distinct_users_30d",
           "payment_distinct_users_24h", "payment_distinct_devices_24h", "user_distinct_devices_30d",
           "ip_fraud_labels_7d", "device_fraud_labels_30d", "payment_fraud_labels_30d")


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(a positive outranks a negative), ties counting half (Mann-Whitney)."""
    allv = np.concatenate([pos, neg])
    order = allv.argsort(kind="mergesort")
    ranks = np.empty(len(allv))
    sv = allv[order]
    i = 0
    while i < len(sv):  # average ranks over ties
        j = i
        while j + 1 < len(sv) and sv[j + 1] == sv[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def catch_at(pos: np.ndarray, neg: np.ndarray, fpr: float = 0.005) -> float:
    """Share of positives strictly above the value that at most ``fpr`` of the negatives exceed."""
    thr = np.quantile(neg, 1 - fpr, method="higher")
    return float((pos > thr).mean())


def replay_rings(events: int, days: float, seed: int) -> tuple[np.ndarray, np.ndarray, list[str], FeatureReplay, float]:
    """(vectors with the graph features, scenarios, feature names, the replay, seconds) of generated ring
    traffic, labels folded at their arrival."""
    recs = list(TrafficGenerator(seed=seed, days=days, rings=True).generate(events))
    r = FeatureReplay(features=FEATURES_WITH_GRAPH)
    for rec in recs:
        lab = rec.label
        r.add_label(lab["arrival_ts"], Label.of_fields(lab["event_id"], lab["ts"], FRAUD if lab["fraud"] else LEGIT,
                                                       user_id=lab["user_id"], device_id=lab["device_id"],
                                                       ip=lab["ip"], payment_ref=lab.get("payment_ref")))
    names = ["amount", "event_type"] + [f.name for f in FEATURES_WITH_GRAPH if f.entity != "event"]
    rows, scen = [], []
    t0 = time.perf_counter()
    for rec in recs:
        res = r.step(parse_event(orjson.dumps(rec.event)))
        rows.append(res[0])
        scen.append(rec.label["scenario"])
    return np.asarray(rows, dtype=np.float64), np.asarray(scen), names, r, time.perf_counter() - t0


def model_catch(train: tuple, test: tuple, fpr: float = 0.005) -> list[dict]:
    """A gradient-boosted model (scikit-learn's HistGradientBoostingClassifier with the shipped v1
    hyper-parameters, models/train.py) trained on every fraud scenario against normal traffic of one seed,
    with and without the graph features; on another seed's traffic, the share of ring events (and of all
    fraud) scored above the score only ``fpr`` of normal events exceed."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    (xa, sa, names), (xb, sb) = train, test
    graph = [i for i, n in enumerate(names) if n.startswith("graph_")]
    base = [i for i in range(len(names)) if i not in graph]
    out = []
    for label, cols in (("without graph features", base), ("with graph features", base + graph)):
        m = HistGradientBoostingClassifier(max_iter=100, learning_rate=0.1, max_leaf_nodes=15, random_state=0)
        m.fit(xa[:, cols], (sa != "normal").astype(int))
        p = m.predict_proba(xb[:, cols])[:, 1]
        normal, ring, fraud = sb == "normal", sb == RING_SCENARIO, sb != "normal"
        thr = np.quantile(p[normal], 1 - fpr, method="higher")
        out.append({"model": label, "features": len(cols), "ring_caught": round(float((p[ring] > thr).mean()), 3),
                    "fraud_caught": round(float((p[fraud] > thr).mean()), 3),
                    "normal_fp": round(float((p[normal] > thr).mean()), 4),
                    "ring_auc": round(auc(p[ring], p[normal]), 3)})
    return out


def shipped_catch(models: list[str], events: int, days: float, seed: int, fpr: float = 0.005) -> list[dict]:
    """Shipped models (each scores its own features, by name, from one replay with the graph features) on one
    seed's ring traffic that none was trained on: the share of ring events (and of all fraud) above the score
    only ``fpr`` of normal events exceed, as :func:`model_catch`."""
    import onnxruntime as ort

    from udfs.scoring import load_model_spec

    x, scen, names, _, _ = replay_rings(events, days, seed)
    normal, ring, fraud = scen == "normal", scen == RING_SCENARIO, scen != "normal"
    out = []
    for path in models:
        spec = load_model_spec(path)
        cols = [names.index(n) for n in spec["feature_names"]]
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])  # a model of either spec
        outs = [o.name for o in sess.get_outputs()]
        p = sess.run(["probabilities" if "probabilities" in outs else outs[-1]],
                     {sess.get_inputs()[0].name: x[:, cols].astype(np.float32)})[0][:, 1]
        thr = np.quantile(p[normal], 1 - fpr, method="higher")
        out.append({"model": spec["model_version"], "features": len(cols),
                    "graph_features": sum(1 for n in spec["feature_names"] if n.startswith("graph_")),
                    "ring_caught": round(float((p[ring] > thr).mean()), 3),
                    "fraud_caught": round(float((p[fraud] > thr).mean()), 3),
                    "normal_fp": round(float((p[normal] > thr).mean()), 4),
                    "ring_auc": round(auc(p[ring], p[normal]), 3)})
    return out


def jvm_bytes(events: int, days: float, seed: int) -> dict:
    """The JVM stages' graph state per key, as stored (``GraphLocalRunner``, the jobs' jar in ``jars_dir``:
    the whole chain with its label stores over this seed's ring traffic and its labels at their arrival):
    per stage, keys and median / p99 / max bytes; and the record's graph field as the link stage reads it."""
    from pyflink.java_gateway import get_gateway
    from pyflink.util.java_utils import add_jars_to_context_class_loader

    from riskstream.config import JobConfig
    from riskstream.ops.jars import JVM_MODULE_JAR
    from udfs.chain import EVENT_FIELDS, N_EVENT, label_record, spec_document

    add_jars_to_context_class_loader([(JobConfig().jars_dir / JVM_MODULE_JAR).as_uri()])
    recs = list(TrafficGenerator(seed=seed, days=days, rings=True).generate(events))
    items = [(rec.event["ts"], 1, orjson.dumps(rec.event).decode()) for rec in recs if rec.event is not None]
    for rec in recs:  # each label where it arrives, before the events at or after its arrival time
        lab = rec.label
        row = label_record(Label.of_fields(lab["event_id"], lab["ts"], FRAUD if lab["fraud"] else LEGIT,
                                           user_id=lab["user_id"], device_id=lab["device_id"], ip=lab["ip"],
                                           payment_ref=lab.get("payment_ref")))
        items.append((lab["arrival_ts"], 0, orjson.dumps(dict(zip(EVENT_FIELDS, row[:N_EVENT]))).decode()))
    items.sort(key=lambda x: (x[0], x[1]))
    res = json.loads(get_gateway().jvm.io.riskstream.flink.GraphLocalRunner.run(
        json.dumps(spec_document(60_000, FEATURES_WITH_GRAPH)), 600_000, "\n".join(line for *_, line in items)))

    def dist(v: list[int]) -> dict:
        v = sorted(v)
        return {"keys": len(v), "median": v[len(v) // 2], "p99": v[int(len(v) * 0.99)], "max": v[-1]} if v else {}

    return {"state": {s: dist(list(d.values())) for s, d in res["graph_state_bytes"].items() if d},
            "labels": {s: dist(list(d.values())) for s, d in res["graph_label_bytes"].items() if d},
            "context": dist(res["context_bytes"])}


def run(events: int, days: float, seed: int, model: bool = False) -> dict:
    x, scen, names, r, secs = replay_rings(events, days, seed)
    ring, normal = scen == RING_SCENARIO, scen == "normal"
    table = []
    for name in ONE_HOP + tuple(f.name for f in GRAPH_FEATURE_LIST):
        col = x[:, names.index(name)]
        table.append({"feature": name, "graph": name.startswith("graph_"),
                      "auc": round(auc(col[ring], col[normal]), 3),
                      "catch_at_0.5pct_fp": round(catch_at(col[ring], col[normal]), 3),
                      "median_ring": float(np.median(col[ring])), "median_normal": float(np.median(col[normal])),
                      "p99_5_normal": float(np.quantile(col[normal], 0.995, method="higher"))})
    chain = r.chain
    sizes = {}
    for step, store in zip(chain.steps, chain.gstores):
        if store:
            b = sorted(len(pickle.dumps(v, protocol=5)) for v in store.values())
            sizes[step.name] = {"keys": len(b), "median": b[len(b) // 2], "p99": b[int(len(b) * 0.99)], "max": b[-1]}
    res = {"events": events, "days": days, "seed": seed, "ring_events": int(ring.sum()),
           "normal_events": int(normal.sum()), "replay_s": round(secs, 1), "features": table,
           "graph_state_pickled_bytes": sizes}
    if model:  # trained on this seed's traffic, tested on the next seed's
        xb, sb, _, _, _ = replay_rings(events, days, seed + 1)
        res["model"] = model_catch((x, scen, names), (xb, sb))
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=40_000)
    ap.add_argument("--days", type=float, default=14)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--model", action="store_true",
                    help="also train a model on this seed and test it on seed+1, with and without graph features")
    ap.add_argument("--shipped", default=None, metavar="MODEL.onnx,...",
                    help="instead: these trained models' catch on this seed's traffic (e.g. the shipped graph model "
                         "and the same training without graph features)")
    ap.add_argument("--jvm-bytes", action="store_true",
                    help="instead: the JVM stages' graph state bytes per key on this traffic (JSON)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    if a.jvm_bytes:
        print(json.dumps(jvm_bytes(a.events, a.days, a.seed)))
        return 0
    if a.shipped:
        res = shipped_catch([m for m in a.shipped.split(",") if m], a.events, a.days, a.seed)
        print(json.dumps(res, indent=1) if a.json else "\n".join(
            f"{r['model']} ({r['features']} features, {r['graph_features']} graph): ring events caught "
            f"{100 * r['ring_caught']:.1f} %, all fraud {100 * r['fraud_caught']:.1f} % at {100 * r['normal_fp']:.2f} % "
            f"normal false positives; ring AUC {r['ring_auc']}" for r in res))
        return 0
    out = run(a.events, a.days, a.seed, a.model)
    if a.json:
        print(json.dumps(out, indent=1))
        return 0
    print(f"{out['events']} events over {out['days']} days (seed {out['seed']}): {out['ring_events']} ring events, "
          f"{out['normal_events']} normal; replay {out['replay_s']} s")
    print("| feature | AUC ring vs normal | ring events caught at 0.5 % normal FP | median ring / normal |")
    print("|---|---|---|---|")
    for row in out["features"]:
        print(f"| {row['feature']} | {row['auc']:.3f} | {100 * row['catch_at_0.5pct_fp']:.1f} % | "
              f"{row['median_ring']:g} / {row['median_normal']:g} |")
    for name, s in out["graph_state_pickled_bytes"].items():
        print(f"graph state {name}: {s['keys']} keys, pickled median {s['median']} / p99 {s['p99']} / max {s['max']} B")
    for m in out.get("model", ()):
        print(f"model {m['model']} ({m['features']} features), tested on seed {a.seed + 1}: ring events caught "
              f"{100 * m['ring_caught']:.1f} %, all fraud {100 * m['fraud_caught']:.1f} %, at {100 * m['normal_fp']:.2f} % "
              f"of normal events flagged; ring AUC {m['ring_auc']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
