"""Training uses the job's feature code and exports a model the scorer accepts (small, no JVM)."""

from __future__ import annotations

import orjson

from models.train import train
from udfs.features import FEATURE_NAMES, spec_fingerprint
from udfs.scoring import Scorer


def test_small_training_run_exports_a_loadable_model(tmp_path):
    metrics = train(6000, tmp_path / "m", "test_v0", seeds=[5, 6], max_iter=20)
    assert 0.5 < metrics["roc_auc"] <= 1.0
    spec = orjson.loads((tmp_path / "m.json").read_bytes())
    assert spec["feature_names"] == list(FEATURE_NAMES) and spec["feature_fingerprint"] == spec_fingerprint()
    s = Scorer(tmp_path / "m.onnx")
    assert s.version == "test_v0" and 0.0 <= s.score([0.0] * len(FEATURE_NAMES)) <= 1.0
