"""Train the shipped gradient-boosted risk model on generated labelled traffic and export it to ONNX.

Features come from ``udfs.replay`` (the job's own window code). The split is by time: the first 80 % of
event time trains, the rest evaluates. Writes ``<out>.onnx`` and ``<out>.json`` (feature names, order,
fingerprint, version, metrics). Needs the ``train`` extra (scikit-learn, skl2onnx); note that installing
ONNX converters can upgrade protobuf/cloudpickle past what apache-beam (PyFlink) accepts, which is why
pyproject.toml pins both.

    python -m models.train --events 200000 --out models/risk_gbdt_v1
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import orjson

from riskstream.generator import TrafficGenerator
from udfs.events import Event
from udfs.features import FEATURE_NAMES, spec_fingerprint, spec_json
from udfs.replay import replay

HERE = Path(__file__).resolve().parent


def build_dataset(n_events: int, seeds: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    xs, ys, ts, scen = [], [], [], []
    per_seed = n_events // len(seeds)
    for seed in seeds:
        recs = [r for r in TrafficGenerator(seed=seed).generate(per_seed) if r.event is not None]
        labels = {r.event["event_id"]: r.label for r in recs}
        for ev, vec, _late in replay(Event(**r.event) for r in recs):
            lab = labels[ev.event_id]
            xs.append(vec)
            ys.append(1 if lab["fraud"] else 0)
            ts.append(ev.ts)
            scen.append(lab["scenario"])
    return np.asarray(xs, dtype=np.float32), np.asarray(ys), np.asarray(ts), scen


def train(n_events: int, out: Path, version: str, seeds: list[int], max_iter: int = 100) -> dict:
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import average_precision_score, roc_auc_score
    from skl2onnx import to_onnx

    t0 = time.time()
    x, y, ts, scen = build_dataset(n_events, seeds)
    order = np.argsort(ts, kind="stable")
    cut = int(len(order) * 0.8)
    tr, te = order[:cut], order[cut:]
    model = HistGradientBoostingClassifier(max_iter=max_iter, learning_rate=0.1, max_leaf_nodes=15,
                                           random_state=0)
    model.fit(x[tr], y[tr])
    p = model.predict_proba(x[te])[:, 1]
    metrics = {"roc_auc": round(float(roc_auc_score(y[te], p)), 4),
               "average_precision": round(float(average_precision_score(y[te], p)), 4),
               "train_rows": int(len(tr)), "test_rows": int(len(te)), "fraud_share": round(float(y.mean()), 4)}
    onx = to_onnx(model, x[:1], options={id(model): {"zipmap": False}}, target_opset={"": 17, "ai.onnx.ml": 3})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".onnx").write_bytes(onx.SerializeToString())
    spec = {"model_version": version, "feature_names": list(FEATURE_NAMES),
            "feature_fingerprint": spec_fingerprint(), "features": spec_json(), "metrics": metrics,
            "trained_on": {"generator_seeds": seeds, "events": n_events}, "algorithm": "sklearn HGB -> ONNX"}
    out.with_suffix(".json").write_bytes(orjson.dumps(spec, option=orjson.OPT_INDENT_2))
    # check the exported model against the sklearn one
    import onnxruntime as ort

    sess = ort.InferenceSession(str(out.with_suffix(".onnx")), providers=["CPUExecutionProvider"])
    po = sess.run(["probabilities"], {sess.get_inputs()[0].name: x[te][:2000]})[0][:, 1]
    drift = float(np.max(np.abs(po - p[:2000])))
    if drift > 1e-4:
        raise SystemExit(f"ONNX export differs from the trained model by {drift}")
    metrics["seconds"] = round(time.time() - t0, 1)
    return metrics


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--seeds", default="101,102,103,104")
    ap.add_argument("--out", type=Path, default=HERE / "risk_gbdt_v1")
    ap.add_argument("--version", default="risk_gbdt_v1")
    ap.add_argument("--max-iter", type=int, default=100)
    a = ap.parse_args(argv)
    metrics = train(a.events, a.out, a.version, [int(s) for s in a.seeds.split(",")], a.max_iter)
    print(orjson.dumps(metrics).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
