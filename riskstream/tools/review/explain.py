"""Per-feature contributions to a case's score, computed in the service from the ONNX model's own trees.

**Method: baseline Shapley values** (interventional TreeSHAP with one reference point). The reference ``b``
is the training sample's median of every feature (``<model>.reference.json``, next to the model). The game
is ``v(S) = margin(x_S, b_rest)``: the model's log-odds (its trees' sum before the logistic) on the case's
values for the features in ``S`` and the reference values for the others. Each feature's contribution is
its exact Shapley value in that game, so the contributions add up to ``margin(x) - margin(b)``: how far the
case's log-odds are from a typical event's, split over the features. No sampling, no approximation.

Per tree, in one walk: at a node whose feature sends ``x`` and ``b`` the same way, follow it; where they
part, follow both (the feature joins the "from x" set ``A`` on one side, the "from b" set ``B`` on the
other; a feature met again follows the side it already took). A leaf reached with ``a = |A|``, ``b = |B|``
is the game ``u(S) = [A ⊆ S and B ∩ S = ∅]`` times its value, whose Shapley values are
``(a-1)! b! / (a+b)!`` for each feature of ``A`` and ``-a! (b-1)! / (a+b)!`` for each of ``B``. Trees add.

For display the log-odds contributions are also given in score points (probability x 100), scaled
proportionally: ``phi_i * (p(x) - p(b)) / (margin(x) - margin(b))`` (they then add up to the score's distance
from the reference's score). This scaling is a presentation choice, not a Shapley value of the probability.

``tests/test_review_workflow.py`` checks the walk against a brute-force computation: all ``2^k`` subsets of
the features where ``x`` and ``b`` differ, each scored by onnxruntime itself (the model with its logistic
removed), and the Shapley formula summed over them.
"""

from __future__ import annotations

import math
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np
import orjson

def _models_dir() -> Path:
    import models

    return Path(models.__file__).resolve().parent


MODELS_DIR = _models_dir()  # the shipped models (a case's model_version names its file there)


class TreeModel:
    """A binary ``TreeEnsembleClassifier`` (``ai.onnx.ml``) as plain arrays: the margin of the positive class
    and its baseline Shapley values."""

    def __init__(self, trees: list[dict], base: float, logistic: bool, n_features: int):
        self.trees = trees  # each: node id -> (feature, threshold, true id, false id, missing goes true, mode) | leaf
        self.base = base
        self.logistic = logistic
        self.n_features = n_features

    @classmethod
    def from_onnx(cls, path: str | Path) -> "TreeModel":
        import onnx
        from onnx import helper

        m = onnx.load(str(path))
        nodes = [n for n in m.graph.node if n.op_type == "TreeEnsembleClassifier"]
        if len(nodes) != 1:
            raise ValueError(f"{path}: not one TreeEnsembleClassifier (found {[n.op_type for n in m.graph.node]})")
        a = {x.name: helper.get_attribute_value(x) for x in nodes[0].attribute}
        labels = list(a.get("classlabels_int64s") or [])
        if len(labels) != 2:
            raise ValueError(f"{path}: a binary classifier is expected, classes {labels}")
        if set(a["class_ids"]) != {0}:
            raise ValueError(f"{path}: leaf weights for class ids {sorted(set(a['class_ids']))}: only the binary "
                             "single-score form (class id 0) is supported")
        post = a.get("post_transform", b"NONE")
        post = post.decode() if isinstance(post, bytes) else post
        if post not in ("NONE", "LOGISTIC"):
            raise ValueError(f"{path}: post_transform {post} not supported")
        trees: dict[int, dict] = {}
        n_features = 0
        miss = a.get("nodes_missing_value_tracks_true") or [0] * len(a["nodes_nodeids"])
        for i, (t, nid) in enumerate(zip(a["nodes_treeids"], a["nodes_nodeids"])):
            mode = a["nodes_modes"][i]
            mode = mode.decode() if isinstance(mode, bytes) else mode
            if mode == "LEAF":
                continue
            if mode not in ("BRANCH_LEQ", "BRANCH_LT", "BRANCH_GTE", "BRANCH_GT", "BRANCH_EQ", "BRANCH_NEQ"):
                raise ValueError(f"{path}: node mode {mode} not supported")
            f = int(a["nodes_featureids"][i])
            n_features = max(n_features, f + 1)
            trees.setdefault(t, {})[nid] = (f, np.float32(a["nodes_values"][i]), a["nodes_truenodeids"][i],
                                            a["nodes_falsenodeids"][i], bool(miss[i]), mode)
        for t, nid, w in zip(a["class_treeids"], a["class_nodeids"], a["class_weights"]):
            tree = trees.setdefault(t, {})
            tree[nid] = float(tree.get(nid, 0.0)) + float(w)
        base = float((a.get("base_values") or [0.0])[0])
        return cls([trees[t] for t in sorted(trees)], base, post == "LOGISTIC", n_features)

    @staticmethod
    def _goes_true(v: np.float32, node) -> bool:
        _, thr, _, _, missing_true, mode = node
        if v != v:
            return missing_true
        return {"BRANCH_LEQ": v <= thr, "BRANCH_LT": v < thr, "BRANCH_GTE": v >= thr, "BRANCH_GT": v > thr,
                "BRANCH_EQ": v == thr, "BRANCH_NEQ": v != thr}[mode]

    def margin(self, x) -> float:
        x = np.asarray(x, dtype=np.float32)
        s = self.base
        for tree in self.trees:
            nid = 0
            while not isinstance(node := tree[nid], (float, int)):
                nid = node[2] if self._goes_true(x[node[0]], node) else node[3]
            s += float(node)
        return s

    def probability(self, x) -> float:
        return sigmoid(self.margin(x)) if self.logistic else self.margin(x)

    def shapley(self, x, ref) -> np.ndarray:
        """Baseline Shapley values of every feature (see the module's doc): they sum to
        ``margin(x) - margin(ref)``."""
        x = np.asarray(x, dtype=np.float32)
        b = np.asarray(ref, dtype=np.float32)
        phi = np.zeros(max(self.n_features, len(x)), dtype=np.float64)
        fact = math.factorial
        for tree in self.trees:
            stack = [(0, frozenset(), frozenset())]
            while stack:
                nid, A, B = stack.pop()
                node = tree[nid]
                if isinstance(node, (float, int)):
                    na, nb = len(A), len(B)
                    if na + nb:
                        for i in A:
                            phi[i] += node * fact(na - 1) * fact(nb) / fact(na + nb)
                        for i in B:
                            phi[i] -= node * fact(na) * fact(nb - 1) / fact(na + nb)
                    continue
                f = node[0]
                gx, gb = self._goes_true(x[f], node), self._goes_true(b[f], node)
                child = (lambda g: node[2] if g else node[3])
                if f in A or gx == gb and f not in B:
                    stack.append((child(gx), A, B))
                elif f in B:
                    stack.append((child(gb), A, B))
                else:
                    stack.append((child(gx), A | {f}, B))
                    stack.append((child(gb), A, B | {f}))
        return phi[:len(x)]


def sigmoid(m: float) -> float:
    return 1.0 / (1.0 + math.exp(-m)) if m >= 0 else math.exp(m) / (1.0 + math.exp(m))


def reference_path(model_path: Path) -> Path:
    return Path(model_path).with_suffix(".reference.json")


@lru_cache(maxsize=8)
def load(model_version: str, models_dir: str = str(MODELS_DIR)) -> tuple[TreeModel, dict] | None:
    """The model named by a case's ``model_version`` and its reference, or None (not found, not a tree
    ensemble, no reference): the case page then says contributions are not available."""
    path = Path(models_dir) / f"{model_version}.onnx"
    if not model_version or "/" in model_version or not path.is_file() or not reference_path(path).is_file():
        return None
    try:
        model = TreeModel.from_onnx(path)
        ref = orjson.loads(reference_path(path).read_bytes())
    except Exception as e:  # a model this module cannot read: no contributions, the page says so
        print(f"[review] no contributions for {model_version}: {type(e).__name__}: {e}", file=sys.stderr)
        return None
    return model, ref


def contributions(record: dict, models_dir: str = str(MODELS_DIR), top: int | None = None) -> dict | None:
    """The case's contributions, largest first: each feature's value, its reference median and usual range
    (the training sample's 5th-95th percentile), its Shapley value in log-odds and in score points."""
    got = load(str(record.get("model_version") or ""), models_dir)
    feats = record.get("features")
    if got is None or not isinstance(feats, dict):
        return None
    model, ref = got
    names = ref["feature_names"]
    try:
        x = np.array([float(feats[n]) for n in names], dtype=np.float32)
    except (KeyError, TypeError, ValueError):
        return None
    b = np.array([ref["features"][n]["median"] for n in names], dtype=np.float32)
    phi = model.shapley(x, b)
    mx, mb = model.margin(x), model.margin(b)
    px, pb = sigmoid(mx), sigmoid(mb)
    scale = (px - pb) / (mx - mb) if abs(mx - mb) > 1e-12 else 0.0
    rows = [{"name": n, "value": float(x[i]), "median": ref["features"][n]["median"], "p05": ref["features"][n]["p05"],
             "p95": ref["features"][n]["p95"], "logodds": float(phi[i]), "points": float(phi[i] * scale * 100),
             "unusual": not ref["features"][n]["p05"] <= float(x[i]) <= ref["features"][n]["p95"]}
            for i, n in enumerate(names)]
    rows.sort(key=lambda r: -abs(r["logodds"]))
    rows = [r for r in rows if abs(r["logodds"]) >= 5e-4]  # the rest: at (or as good as) the reference
    return {"rows": rows[:top] if top else rows, "zero": len(names) - len(rows), "margin": mx,
            "reference_margin": mb, "score": px,
            "reference_score": pb, "method": "baseline Shapley (training medians)", "reference": ref.get("source")}


def build_reference(model_path: Path, events: int, seeds: list[int], days: float, rings: bool = False) -> dict:
    """The reference of a model trained on the generator: median and 5th/95th percentiles of every feature
    over ``events`` generated events (the training seeds, the training event rate, the rings if it had them)."""
    from models.train import generated_dataset
    from udfs.scoring import load_model_spec

    spec = load_model_spec(model_path)
    d = generated_dataset(events, seeds, days=days, rings=rings)
    q = np.percentile(d.x.astype(np.float64), [5, 50, 95], axis=0)
    r6 = (lambda v: float(f"{v:.6g}"))
    return {"model_version": spec["model_version"], "feature_names": list(spec["feature_names"]),
            "feature_fingerprint": spec["feature_fingerprint"],
            "source": f"{d.x.shape[0]} generated events, seeds {seeds}, {days} days{', with the rings' if rings else ''} "
                      "(the training generator at its training event rate)",
            "features": {n: {"p05": r6(q[0, i]), "median": r6(q[1, i]), "p95": r6(q[2, i])}
                         for i, n in enumerate(spec["feature_names"])}}


def main(argv: list[str] | None = None) -> int:
    """``python -m riskstream.tools.review.explain MODEL.onnx`` writes MODEL.reference.json from its training
    generator's seeds (a model trained on a file needs a reference made from that file instead)."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("model", type=Path)
    ap.add_argument("--events", type=int, default=80_000)
    a = ap.parse_args(argv)
    spec = orjson.loads(a.model.with_suffix(".json").read_bytes())
    on = spec["trained_on"]
    if on.get("source") != "generator":
        raise SystemExit(f"{a.model} was not trained on the generator: make its reference from its training data")
    days = float(on.get("generator_days") or 42.0) * a.events / float(on["events"])
    ref = build_reference(a.model, a.events, list(on["generator_seeds"]), days, rings=bool(on.get("generator_rings")))
    reference_path(a.model).write_bytes(orjson.dumps(ref, option=orjson.OPT_INDENT_2) + b"\n")
    print(f"wrote {reference_path(a.model)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
