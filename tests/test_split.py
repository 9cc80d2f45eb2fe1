"""The traffic split (udfs.split, pure): arm assignment against a brute-force walk over the shares, what is
refused and why, stability of a user's arm, and the per-row and batched decide stages under a split against
a brute-force decision (each arm's own model scored on its own, the arm's thresholds); the JVM's bucket, and
the Java-scored contender under a split, against the Python ones (through the gateway, marked flink)."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from fractions import Fraction

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from udfs.control import Control, ControlError, parse_control
from udfs.policy import Policy
from udfs.scoring import Scorer
from udfs.split import BUCKETS, CHAMPION, Arm, Split, bucket, parse_split

V1, V2 = "models/risk_gbdt_v1.onnx", "models/risk_gbdt_v2.onnx"


def _brute_bucket(key: str, salt: str) -> int:
    """The documented definition, written out: the first 8 bytes of sha256 as an unsigned big-endian
    integer, mod the number of buckets."""
    d = hashlib.sha256((salt + "\x1f" + key).encode("utf-8")).digest()
    v = 0
    for byte in d[:8]:
        v = v * 256 + byte
    return v % BUCKETS


def _brute_arm(b: int, shares: list[tuple[str, Fraction]]) -> str:
    """Walk the listed arms' shares in order from 0 (exact fractions): the first arm whose cumulative
    share exceeds the bucket's position takes it; past them all, the champion."""
    if b < 0:
        return CHAMPION
    pos, acc = Fraction(b, BUCKETS), Fraction(0)
    for name, share in shares:
        acc += share
        if pos < acc:
            return name
    return CHAMPION


def _msg(arms, **kw) -> dict:
    return {"kind": "split", "version": "ab1", "arms": arms, **kw}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 3000), min_size=1, max_size=5), st.text(max_size=8),
       st.lists(st.one_of(st.none(), st.text(min_size=0, max_size=12)), min_size=1, max_size=40))
def test_arm_assignment_matches_a_walk_over_the_shares(units, salt, keys):
    if sum(units) > BUCKETS:
        units = [u * BUCKETS // (sum(units) + 1) or 1 for u in units]
    arms = [{"name": f"a{i}", "share": u / BUCKETS, "path": V2} for i, u in enumerate(units)]
    canon = parse_split(_msg(arms, salt=salt))
    assert parse_split(canon) == canon  # the canonical form parses to itself
    split = Split("ab1", canon["key_field"], salt, tuple(Arm(a["name"], a["lo"], a["hi"], None) for a in canon["arms"]))
    shares = [(a["name"], Fraction(a["share"]).limit_denominator(BUCKETS)) for a in arms]
    # every bucket boundary and its neighbours, then the keys
    probe = sorted({-1, 0, BUCKETS - 1, *(b + d for a in canon["arms"] for b in (a["lo"], a["hi"]) for d in (-1, 0, 1)
                                         if 0 <= b + d < BUCKETS)})
    for b in probe:
        assert split.arms[split.arm_index(b)].name == _brute_arm(b, shares), b
    assert [split.arms[i].name for i in split.arm_indices(probe)] == [_brute_arm(b, shares) for b in probe]
    for k in keys:
        want = -1 if k is None else _brute_bucket(k, salt)
        assert bucket(k, salt) == split.bucket_of(k) == want


def test_shares_hold_over_many_users_and_a_user_keeps_the_arm():
    users = [f"u-{i}" for i in range(40_000)]
    c = Control.initial(Scorer(V1), Policy())
    c.apply(parse_control(orjson.dumps(_msg([{"name": "v2", "share": 0.05, "path": V2},
                                              {"name": "v3", "share": 0.25, "path": V1}]))))
    arms = {u: c.route(u)[2] for u in users}
    for name, p in (("v2", 0.05), ("v3", 0.25), (CHAMPION, 0.70)):
        got = sum(1 for a in arms.values() if a == name) / len(users)
        assert abs(got - p) < 5 * math.sqrt(p * (1 - p) / len(users)), (name, got)
    assert all(c.route(u)[2] == a for u, a in list(arms.items())[:2000])  # stable
    # a larger share only moves champion users into v2 (its range grows at the end); v3's range shifts
    c2 = Control.initial(Scorer(V1), Policy())
    c2.apply(parse_control(orjson.dumps(_msg([{"name": "v2", "share": 0.10, "path": V2}]))))
    c1 = Control.initial(Scorer(V1), Policy())
    c1.apply(parse_control(orjson.dumps(_msg([{"name": "v2", "share": 0.05, "path": V2}]))))
    moved = [(c1.route(u)[2], c2.route(u)[2]) for u in users]
    assert all(b == "v2" for a, b in moved if a == "v2")
    assert abs(sum(1 for a, b in moved if a != b) / len(users) - 0.05) < 0.01
    # another salt reshuffles
    c3 = Control.initial(Scorer(V1), Policy())
    c3.apply(parse_control(orjson.dumps(_msg([{"name": "v2", "share": 0.05, "path": V2}], salt="ab2"))))
    both = sum(1 for u in users if c1.route(u)[2] == c3.route(u)[2] == "v2")
    assert both < 0.2 * sum(1 for u in users if c1.route(u)[2] == "v2")


@pytest.mark.parametrize("msg, says", [
    (_msg([{"name": "v2", "share": 0.7, "path": V2}, {"name": "v3", "share": 0.4, "path": V1}]), "more than 1"),
    (_msg([{"name": "v2", "share": 0.5, "path": V2}, {"name": "champion", "share": 0.4}]), "add up to 0.9, not 1"),
    (_msg([{"name": "v2", "share": 0, "path": V2}]), r"not in \(0, 1\]"),
    (_msg([{"name": "v2", "share": -0.1, "path": V2}]), r"not in \(0, 1\]"),
    (_msg([{"name": "v2", "share": "0.1", "path": V2}]), "must be a number"),
    (_msg([{"name": "v2", "share": 0.00005, "path": V2}]), "not a multiple of 0.0001"),
    (_msg([{"name": "v2", "share": 0.1, "path": V2}, {"name": "v2", "share": 0.1, "path": V1}]), "named twice"),
    (_msg([{"name": "V 2", "share": 0.1, "path": V2}]), "'name' must be"),
    (_msg([{"name": "v2", "share": 0.1}]), "'path' must name an .onnx file"),
    (_msg([{"name": "v2", "share": 0.1, "path": V2, "review_threshold": 0.9, "block_threshold": 0.5}]),
     "is above block_threshold"),
    (_msg([{"name": "v2", "share": 0.1, "path": V2, "review_threshold": 1.5}]), r"in \[0, 1\]"),
    (_msg([{"name": "champion", "share": 0.9, "path": V2}, {"name": "v2", "share": 0.1, "path": V2}]),
     "the champion decides with the job's model"),
    (_msg([{"name": "v2", "share": 0.1, "path": V2}], key="card"), "'key' must be an entity"),
    (_msg([{"name": "v2", "share": 0.1, "path": V2, "colour": 1}]), "an object with name, share"),
    (_msg([{"name": "v2", "share": 0.1, "path": V2}], extra=1), "unknown field"),
    ({"kind": "split", "arms": []}, "needs a 'version'"),
    (_msg(None), "'arms' must be a list"),
])
def test_bad_split_messages_are_refused_with_the_reason(msg, says):
    with pytest.raises(ControlError, match=says):
        parse_control(orjson.dumps(msg))


def test_a_split_whose_model_does_not_match_is_refused_and_the_previous_split_stays(tmp_path):
    shutil.copy(V1, tmp_path / "bad.onnx")
    spec = json.load(open("models/risk_gbdt_v1.json"))
    (tmp_path / "bad.json").write_text(json.dumps({**spec, "feature_fingerprint": "0" * 16}))
    c = Control.initial(Scorer(V1), Policy())
    assert c.apply(parse_control(orjson.dumps(_msg([{"name": "v2", "share": 0.5, "path": V2}])))) == \
        "split ab1 by user: v2 50 % (risk_gbdt_v2), champion 50 %"
    before = c.split
    with pytest.raises(ControlError, match="split ab2 refused, arm v3: model refused.*fingerprint"):
        c.apply(parse_control(orjson.dumps({**_msg([{"name": "v3", "share": 0.5, "path": str(tmp_path / "bad.onnx")}]),
                                            "version": "ab2"})))
    assert c.split is before
    # an arm threshold that makes the policy invalid with the job's other threshold (block 0.9)
    with pytest.raises(ControlError, match="arm v2: thresholds must satisfy"):
        c.apply(parse_control(orjson.dumps(_msg([{"name": "v2", "share": 0.5, "path": V2, "review_threshold": 0.95}]))))
    assert c.split is before
    assert "ended" in c.apply(parse_control(orjson.dumps(_msg([]))))
    assert c.split is None and c.route("u1") == (c.champion, c.policy, None)


# -- the decide stages under a split ----------------------------------------------------------------------
SPLIT = _msg([{"name": "v2", "share": 0.3, "path": V2, "review_threshold": 0.3, "block_threshold": 0.8},
              {"name": "same", "share": 0.2, "path": V1, "block_threshold": 0.95}], salt="t")


def _brute_decision(ev, vals, late, sig, scorers):
    """What the event's arm decides, computed apart: its bucket by the written-out hash, its arm by the walk
    over the shares, that arm's model scoring the row alone, the job's policy with the arm's thresholds."""
    from dataclasses import replace

    from udfs.chain import Decider

    shares = [(a["name"], Fraction(a["share"]).limit_denominator(BUCKETS)) for a in SPLIT["arms"]]
    arm = _brute_arm(_brute_bucket(ev.user_id, "t"), shares)
    cfg = {a["name"]: a for a in SPLIT["arms"]}.get(arm, {})
    policy = Policy()
    if "review_threshold" in cfg or "block_threshold" in cfg:
        policy = replace(policy, version=f"p1+{arm}", review_threshold=cfg.get("review_threshold", 0.5),
                         block_threshold=cfg.get("block_threshold", 0.9))
    scorer = scorers[cfg.get("path", V1)]
    x = Decider(None).vector(ev, vals)
    score = scorer.score(x)
    decision, reasons = policy.decide(score, x, ev.event_type, late, sig)
    return {"arm": arm, "model_version": scorer.version, "policy_version": policy.version, "score": score,
            "decision": decision, "reasons": reasons}


def _rows(n: int):
    from riskstream.generator import TrafficGenerator
    from udfs.chain import Chain
    from udfs.events import Event

    chain, rows = Chain(label_signals=True), []
    for r in TrafficGenerator(seed=23).generate(n):
        ev = Event(**r.event)
        res = chain.process(ev)
        if res is not None:
            rows.append((ev, *res))
    return rows


def test_per_row_decider_under_a_split_equals_the_brute_force():
    from udfs.chain import Decider

    scorers = {V1: Scorer(V1), V2: Scorer(V2)}
    c = Control.initial(Scorer(V1), Policy())
    c.apply(parse_control(orjson.dumps(SPLIT)))
    ref = Decider(c)
    seen = set()
    for ev, vals, late, sig in _rows(1500):
        got = orjson.loads(ref.decide(ev, vals, late, sig, 0)[1])
        want = _brute_decision(ev, vals, late, sig, scorers)
        assert abs(got.pop("score") - want.pop("score")) <= 1e-6
        assert {k: got[k] for k in want} == want
        seen.add((want["arm"], want["decision"]))
    assert {a for a, _ in seen} == {"v2", "same", CHAMPION}
    assert len(seen) >= 7  # the arms' decisions of every kind, nearly


class _Metrics:
    """A metric group as PyFlink hands a UDF: counters (by their dotted name) and gauges."""

    def __init__(self, values: dict | None = None, prefix: str = ""):
        self.values = {} if values is None else values
        self.prefix = prefix

    def add_group(self, name: str, extra: str | None = None) -> "_Metrics":
        return _Metrics(self.values, f"{self.prefix}{name}." + (f"{extra}." if extra is not None else ""))

    def counter(self, name: str):
        key, values = self.prefix + name, self.values
        values.setdefault(key, 0)

        class _C:
            def inc(self, n: int = 1) -> None:
                values[key] += n
        return _C()

    def gauge(self, name: str, fn) -> None:
        self.values[self.prefix + name + ":gauge"] = fn


def test_batched_decide_stage_mixes_arms_in_a_batch_and_equals_the_per_row_decider():
    """Rows of every arm in one batch, a split arriving mid-batch (its settings row) and ending in a later
    batch: each row's verdict equals the per-row Decider's under the control of that row."""
    from udfs.chain import ROW_FIELDS, Decider
    from udfs.decide_batch import INPUT_FIELDS, DecideBatch
    from udfs.features import SIGNALS

    rows = _rows(900)
    n = len(rows)
    cols = {k: [] for k in INPUT_FIELDS}
    for ev, vals, late, sig in rows:
        for name, _ in ROW_FIELDS[:len(ev)]:
            if name in cols:
                cols[name].append(getattr(ev, name))
        cols["values"].append(vals)
        cols["late"].append(late)
        cols["signals"].append([sig[s] for s in SIGNALS] if sig else None)
    cut = 200
    settings_text = orjson.dumps({"split": parse_control(orjson.dumps(SPLIT))}).decode()
    cols["control_version"] = [0] * cut + [1] * (n - cut)
    cols["control"] = [None] * cut + [settings_text] + [None] * (n - cut - 1)
    # the bucket as ControlAttach computes it: only under the split (rows from the settings row on)
    cols["arm_bucket"] = [-1] * cut + [bucket(ev.user_id, "t") for ev, *_ in rows[cut:]]
    metrics = _Metrics()
    body = DecideBatch(V1, Policy(), ".", tuple(cols))
    body.open(metrics)
    got = [orjson.loads(v) for v in body.verdict_columns(cols)]
    # the per-arm counters (arm.<name>.decisions_<kind>) count the verdicts written for each arm
    want_counts = {}
    for g in got:
        if g.get("arm") is not None:
            key = f"arm.{g['arm']}.decisions_{g['decision']}"
            want_counts[key] = want_counts.get(key, 0) + 1
    assert {k: v for k, v in metrics.values.items() if k.startswith("arm.")} == want_counts
    plain = Decider(Control.initial(Scorer(V1), Policy()))
    c = Control.initial(Scorer(V1), Policy())
    c.apply(parse_control(orjson.dumps(SPLIT)))
    split = Decider(c)
    arms = set()
    for k, ((ev, vals, late, sig), g) in enumerate(zip(rows, got)):
        want = orjson.loads((plain if k < cut else split).decide(ev, vals, late, sig, 0)[1])
        assert abs(g.pop("score") - want["score"]) <= 1e-6, k
        assert g == {f: want[f] for f in ("decision", "model_version", "policy_version", "reasons",
                                          "rules_version", "arm") if f in want}, k
        arms.add(g.get("arm"))
    assert arms == {None, "v2", "same", CHAMPION}
    # a later batch whose rows carry the split's version keep it; one ending it goes back to the champion
    end = orjson.dumps({"split": parse_control(orjson.dumps(_msg([])))}).decode()
    again = body.verdict_columns({**cols, "control_version": [2] * n, "control": [end] + [None] * (n - 1),
                                  "arm_bucket": [-1] * n})
    assert all("arm" not in orjson.loads(v) and orjson.loads(v)["model_version"] == "risk_gbdt_v1" for v in again)


# -- the JVM ----------------------------------------------------------------------------------------------
def _jvm():
    from pyflink.java_gateway import get_gateway
    from pyflink.util.java_utils import add_jars_to_context_class_loader

    from benchmarks.java_job import bench_jars
    from riskstream import paths
    from tests.jvm_jar import build_jar

    add_jars_to_context_class_loader([build_jar().as_uri(), *(j.resolve().as_uri()
                                                              for j in bench_jars(paths.flink_jars_dir()))])
    return get_gateway().jvm.io.riskstream.flink


@pytest.mark.flink
def test_the_jvm_bucket_and_the_java_scored_contender_under_a_split_equal_the_python_ones():
    """ArmBucket (ControlAttach's and the contender's) against udfs.split.bucket on ids, unicode and empty
    keys and salts; JavaDecideFunction with the split from benchmarks.java_job.split_config against the
    per-row Decider under the same split, field by field."""
    from benchmarks.java_job import decide_config
    from udfs.chain import ROW_FIELDS, Decider

    J = _jvm()
    keys = [f"u{i}" for i in range(3000)] + ["", "ü-é", "用户", "a\x1fb", None, "x" * 128]
    for salt in ("", "t", "sél"):
        got = orjson.loads(J.ArmBucket.many(salt, orjson.dumps(keys).decode(), BUCKETS))
        assert got == [bucket(k, salt) for k in keys]

    rows = _rows(700)
    version, conf = decide_config(Policy(), V1, split=SPLIT)
    from udfs.chain import pack
    from udfs.jvm import to_row

    table = [list(to_row(pack(ev, vals, late, sig, None))) for ev, vals, late, sig in rows]
    got = orjson.loads(J.JavaDecideFunction.decideMany(V1, version, conf, orjson.dumps(table).decode()))
    c = Control.initial(Scorer(V1), Policy())
    c.apply(parse_control(orjson.dumps(SPLIT)))
    ref = Decider(c)
    assert len(got) == len(rows)
    arms = set()
    for (ev, vals, late, sig), g in zip(rows, got):
        want = orjson.loads(ref.decide(ev, vals, late, sig, 0)[1])
        g.pop("decided_at"), want.pop("decided_at")
        want.pop("rules_version")  # the contender has no live rules
        assert abs(g.pop("score") - want.pop("score")) <= 1e-6
        assert list(g) == list(want) and g == want
        arms.add(g["arm"])
    assert arms == {"v2", "same", CHAMPION}
    assert len(ROW_FIELDS) == len(table[0])


def test_the_control_split_command_builds_the_message_and_refuses_before_sending():
    from riskstream.cli import build_parser, main, split_message

    a = build_parser().parse_args(["control", "split", "--version", "ab1", "--arm", "v2=0.05", "--model",
                                   f"v2={V2}", "--thresholds", "v2=0.4,0.8", "--key", "device"])
    assert split_message(a) == {"kind": "split", "version": "ab1", "key": "device", "salt": "", "arms": [
        {"name": "v2", "share": 0.05, "path": V2, "review_threshold": 0.4, "block_threshold": 0.8}]}
    a = build_parser().parse_args(["control", "split", "--version", "ab1", "--end"])
    assert split_message(a) == {"kind": "split", "version": "ab1", "arms": []}
    for argv, says in ((["--arm", "v2=0.7", "--arm", "v3=0.4", "--model", f"v2={V2}", "--model", f"v3={V1}"],
                        "add up to 1.1, more than 1"),
                       (["--arm", "v2=0.5", "--arm", "champion=0.4", "--model", f"v2={V2}"], "add up to 0.9, not 1"),
                       (["--arm", "v2=0.1"], "arm v2 needs --model v2=PATH"),
                       (["--arm", "v2=0.1", "--model", "v3=x.onnx"], "which is no --arm"),
                       (["--arm", "v2=0.1", "--model", f"v2={V2}", "--thresholds", "v2=0.9"], "REVIEW,BLOCK")):
        with pytest.raises(SystemExit, match=says):  # refused before any broker is asked
            main(["control", "split", *argv, "--bootstrap-servers", "127.0.0.1:1"])
