"""Before/after a feature-spec change: models trained on an older spec against models of the current one, on
the same held-out rows of the same traffic.

An older model's features must be a subset, by name and meaning, of the current spec (a spec change that
only adds features): its columns are picked by name from the current vectors and its ONNX file is run
directly (the job's ``Scorer`` would refuse the other fingerprint, rightly). With ``--ablation`` a model
with the current hyper-parameters is also trained on the older features of the same training rows, which
separates what the new features bring from what the new traffic does.

    python -m models.compare_spec --generate 200000 --seed 101,102,103,104 --days 42 \\
        --old OLD/risk_gbdt_v1.onnx --new models/risk_gbdt_v1.onnx --ablation

Prints one JSON object: per model ROC AUC, average precision, precision top-k per day (user and payment
instrument), recall at the review budget per scenario, and per scenario the average precision of its
events against the normal ones and the recall at ``--scenario-budget``; and the held-out split.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import orjson

from models.train import (DEFAULT_HYPER, DEFAULT_REVIEW_BUDGET, DEFAULT_TOP_K, entity_keys, evaluate, fit,
                          generated_dataset, split_rows)
from udfs.features import FEATURE_NAMES


def _columns(names: list[str]) -> list[int]:
    missing = [n for n in names if n not in FEATURE_NAMES]
    if missing:
        raise SystemExit(f"compare_spec: features {missing} are not in the current spec")
    return [FEATURE_NAMES.index(n) for n in names]


def onnx_scores(path: Path, x: np.ndarray) -> tuple[str, list[str], np.ndarray]:
    """(model_version, its feature names, fraud probabilities) of an ONNX model with its spec JSON."""
    import onnxruntime as ort

    spec = orjson.loads(Path(path).with_suffix(".json").read_bytes())
    cols = _columns(list(spec["feature_names"]))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outs = [o.name for o in sess.get_outputs()]
    out = "probabilities" if "probabilities" in outs else outs[-1]
    p = sess.run([out], {sess.get_inputs()[0].name: np.ascontiguousarray(x[:, cols], dtype=np.float32)})[0][:, 1]
    return str(spec["model_version"]), list(spec["feature_names"]), p.astype(np.float64)


def by_scenario(y: np.ndarray, p: np.ndarray, scen: list[str], budget: float) -> dict:
    """Per fraud scenario: average precision of its fraud events against the normal events (the other
    scenarios left out), and the share of its events in the top ``budget`` of all rows by score."""
    from sklearn.metrics import average_precision_score

    from riskstream.metrics import recall_at_budget_by_group

    sc = np.asarray(scen)
    normal = y == 0
    rec = recall_at_budget_by_group(p, y, scen, budget)
    out = {}
    for s in sorted(set(scen) - {"normal"}):
        rows = normal | ((sc == s) & (y == 1))
        out[s] = {"events": int(((sc == s) & (y == 1)).sum()),
                  "average_precision_vs_normal": round(float(average_precision_score(y[rows], p[rows])), 4),
                  f"recall_at_{budget:g}": round(rec[s]["recall"], 4) if s in rec else None}
    return out


def _row(m: dict) -> dict:
    return {"roc_auc": m["roc_auc"], "average_precision": m["average_precision"],
            "precision_at_k_per_day": {k: v["mean"] for k, v in m.get("precision_at_k_per_day", {}).items()},
            "recall_at_budget_by_scenario": {k: v["recall"] for k, v in m.get("recall_at_budget_by_scenario", {}).items()},
            "recall_at_budget": m["recall_at_budget"]}


def _short(m: dict) -> str:
    return {"older spec, as shipped": f"{m['model']} as shipped", "ablation": "older features retrained",
            "current spec": f"{m['model']} retrained"}.get(m["role"], m["model"])


def markdown(res: dict) -> str:
    """The comparison as two Markdown tables: headline figures, then per scenario."""
    def pct(v):
        return "-" if v is None else f"{100 * v:.1f} %"

    ms = res["models"]
    lines = ["| model | features | ROC AUC | average precision | user precision top-100 per day | "
             "card precision top-100 per day |", "|---|---|---|---|---|---|"]
    for m in ms:
        pk = m["precision_at_k_per_day"]
        lines.append(f"| {m['model']} ({m['role']}) | {m['features']} | {m['roc_auc']:.4f} | "
                     f"{m['average_precision']:.4f} | {pct(pk.get('user'))} | {pct(pk.get('payment_ref'))} |")
    scen = sorted(ms[0]["by_scenario"])
    key = next(k for k in ms[0]["by_scenario"][scen[0]] if k.startswith("recall_at_"))
    lines += ["", "Per scenario: average precision of its events against the normal ones / share of its events "
              f"in the top {100 * float(key.split('_')[-1]):g} % of all held-out events by score:", "",
              "| scenario | events | " + " | ".join(_short(m) for m in ms) + " |",
              "|---|---|" + "---|" * len(ms)]
    for sname in scen:
        cells = [f"{m['by_scenario'][sname]['average_precision_vs_normal']:.3f} / {pct(m['by_scenario'][sname][key])}"
                 for m in ms]
        lines.append(f"| {sname} | {ms[0]['by_scenario'][sname]['events']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--generate", type=int, default=200_000)
    ap.add_argument("--seed", default="101,102,103,104")
    ap.add_argument("--days", type=float, default=42)
    ap.add_argument("--old", action="append", default=[], type=Path, help="older-spec model (.onnx); repeatable")
    ap.add_argument("--new", action="append", default=[], type=Path, help="current-spec model (.onnx); repeatable")
    ap.add_argument("--ablation", action="store_true", help="also train on the older features of the same rows")
    ap.add_argument("--class-weight", choices=["balanced"], default=None, help="for the ablation model")
    ap.add_argument("--top-k", type=int, default=DEFAULT_TOP_K)
    ap.add_argument("--markdown", type=Path, help="render a JSON result of this command as Markdown tables and exit")
    ap.add_argument("--scenario-budget", type=float, default=0.15,
                    help="review budget of the per-scenario recall (about the fraud share) [default 0.15]")
    a = ap.parse_args(argv)
    if a.markdown:
        print(markdown(orjson.loads(a.markdown.read_bytes())))
        return 0
    data = generated_dataset(a.generate, [int(s) for s in a.seed.split(",")], days=a.days)
    tr, te, split = split_rows(data.ts)
    y, ts = data.y[te], data.ts[te]
    scen = [data.scenario[i] for i in te]
    ents = entity_keys([data.users[i] for i in te], [data.payment_refs[i] for i in te])
    res = {"data": data.trained_on, "split": {**split, "train_rows": int(len(tr)), "test_rows": int(len(te))},
           "models": []}

    def add(name: str, role: str, p: np.ndarray, n_features: int) -> None:
        m = evaluate(y, p, DEFAULT_REVIEW_BUDGET, scen, ts, ents, a.top_k)
        res["models"].append({"model": name, "role": role, "features": n_features, **_row(m),
                              "by_scenario": by_scenario(y, p, scen, a.scenario_budget)})

    old_names = None
    for path in a.old:
        name, names, p = onnx_scores(path, data.x[te])
        old_names = names
        add(name, "older spec, as shipped", p, len(names))
    if a.ablation and old_names is not None:
        cols = _columns(old_names)
        hyper = {**DEFAULT_HYPER, **({"class_weight": a.class_weight} if a.class_weight else {})}
        model = fit(data.x[tr][:, cols], data.y[tr], hyper)
        add("older features, retrained on this traffic", "ablation", model.predict_proba(data.x[te][:, cols])[:, 1],
            len(cols))
    for path in a.new:
        name, names, p = onnx_scores(path, data.x[te])
        add(name, "current spec", p, len(names))
    print(orjson.dumps(res, option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
