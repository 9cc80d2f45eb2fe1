"""Policy, decision ids, the ONNX scorer's start-up refusals and the config model (no JVM)."""

from __future__ import annotations

import shutil

import numpy as np
import orjson
import pytest
from pydantic import ValidationError

from riskstream.config import JobConfig
from udfs.decision import decision_id
from udfs.features import FEATURE_NAMES
from udfs.policy import Policy, Rule
from udfs.scoring import ModelError, Scorer

MODEL = "models/risk_gbdt_v1.onnx"
IDX = {n: i for i, n in enumerate(FEATURE_NAMES)}


def vec(**kw) -> list[float]:
    v = [0.0] * len(FEATURE_NAMES)
    for k, x in kw.items():
        v[IDX[k]] = x
    return v


def test_score_bands():
    p = Policy(review_threshold=0.5, block_threshold=0.9, rules=())
    assert p.decide(0.49, vec(), "login") == ("allow", [])
    assert p.decide(0.5, vec(), "login") == ("review", ["score_review"])
    assert p.decide(0.9, vec(), "login") == ("block", ["score_block"])


def test_rules_escalate_never_downgrade():
    rule = Rule("velocity", "review", (("user_payments_10m", ">=", 8),), ("payment",))
    p = Policy(rules=(rule,))
    assert p.decide(0.1, vec(user_payments_10m=8), "payment") == ("review", ["rule:velocity"])
    assert p.decide(0.1, vec(user_payments_10m=8), "login") == ("allow", [])  # type filter
    assert p.decide(0.95, vec(user_payments_10m=9), "payment") == ("block", ["score_block", "rule:velocity"])
    assert p.decide(0.1, vec(), "payment", late=True) == ("allow", ["late_event"])


def test_bad_rules_and_thresholds_refused():
    with pytest.raises(ValueError, match="unknown feature"):
        Rule("x", "block", (("nope", ">=", 1),))
    with pytest.raises(ValueError, match="thresholds"):
        Policy(review_threshold=0.9, block_threshold=0.5)


def test_decision_id_is_deterministic_and_version_sensitive():
    assert decision_id("e1", "m1", "p1") == decision_id("e1", "m1", "p1")
    assert len({decision_id("e1", "m1", "p1"), decision_id("e1", "m2", "p1"), decision_id("e1", "m1", "p2"),
                decision_id("e2", "m1", "p1")}) == 4


def test_shipped_model_scores_in_unit_interval_and_batch_equals_single():
    s = Scorer(MODEL)
    rng = np.random.default_rng(0)
    rows = rng.uniform(0, 50, size=(64, len(FEATURE_NAMES))).astype(np.float32)
    single = np.array([s.score(list(r)) for r in rows])
    assert np.all((single >= 0) & (single <= 1))
    np.testing.assert_allclose(single, s.score_batch(rows), rtol=1e-6)
    assert s.version == "risk_gbdt_v1"


def test_scorer_refuses_mismatched_or_missing_model(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        Scorer(tmp_path / "nope.onnx")
    shutil.copy(MODEL, tmp_path / "m.onnx")
    with pytest.raises(ModelError, match="spec .* is missing"):
        Scorer(tmp_path / "m.onnx")
    spec = orjson.loads(open("models/risk_gbdt_v1.json", "rb").read())
    (tmp_path / "m.json").write_bytes(orjson.dumps({**spec, "feature_names": spec["feature_names"][::-1]}))
    with pytest.raises(ModelError, match="other features .*retrain"):
        Scorer(tmp_path / "m.onnx")
    (tmp_path / "m.json").write_bytes(orjson.dumps({**spec, "feature_fingerprint": "0" * 16}))
    with pytest.raises(ModelError, match="fingerprint"):
        Scorer(tmp_path / "m.onnx")
    (tmp_path / "m.json").write_bytes(orjson.dumps(spec))
    (tmp_path / "m.onnx").write_bytes(b"not an onnx file")
    with pytest.raises(ModelError, match="cannot load"):
        Scorer(tmp_path / "m.onnx")


def test_config_rejects_unknown_keys_bad_topics_and_timeouts():
    with pytest.raises(ValidationError, match="extra"):
        JobConfig(colour="red")
    with pytest.raises(ValidationError, match="topic name"):
        JobConfig(events_topic="bad topic!")
    with pytest.raises(ValidationError, match="transaction.max.timeout.ms"):
        JobConfig(transaction_timeout_ms=3_600_000)
    with pytest.raises(ValidationError, match="must all be different topics"):
        JobConfig(decisions_topic="riskstream.events")
    with pytest.raises(ValidationError, match="host:port"):
        JobConfig(bootstrap_servers="localhost")
    cfg = JobConfig(sasl_username="u", sasl_password="hunter2")
    assert "hunter2" not in repr(cfg) and "hunter2" not in str(cfg.model_dump())
    with pytest.raises(ValidationError):
        cfg.parallelism = 3  # frozen


def test_cli_reports_invalid_config(capsys):
    from riskstream.cli import main

    with pytest.raises(SystemExit, match="--parallelism"):
        main(["run", "--parallelism", "0"])
