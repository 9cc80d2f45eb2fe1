"""Live operations under traffic (real broker, MiniCluster): switch the model, add a challenger and replace
the rules through the control topic while events flow. Decisions switch without a restart, with no gap or
duplicate, and the window state is intact (user features equal the offline replay for every event)."""

from __future__ import annotations

import base64
import json
import shutil
import threading
import time

import orjson
import pytest

from riskstream import topics
from riskstream.config import JobConfig
from riskstream.generator import TrafficGenerator
from riskstream.ops import flink_rest
from riskstream.ops.procs import free_port
from riskstream.tools.audit import verify
from udfs.features import FEATURE_NAMES

pytestmark = [pytest.mark.kafka, pytest.mark.flink]

RULES_R2 = {"kind": "rules", "version": "r2", "rules": [
    {"code": "big_amount", "decision": "review", "when": [["amount", ">=", 300]]},
    {"code": "very_sure", "decision": "block", "when": [["score", ">=", 0.8]], "event_types": ["payment"]}]}


def _send(bootstrap: str, topic: str, msg) -> None:
    from kafka import KafkaProducer

    p = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    p.send(topic, orjson.dumps(msg) if not isinstance(msg, bytes) else msg).get(timeout=30)
    p.close()


def _labels_until(rest: str, job_id: str, fraud: int, legit: int, deadline_s: float = 90) -> None:
    """Poll the device stage's label counters over REST until the labels were applied."""
    t0 = time.monotonic()
    while True:
        got = flink_rest.user_counters(rest, job_id, ("labels_fraud", "labels_legit"))
        if got.get("labels_fraud") == fraud and got.get("labels_legit") == legit:
            return
        assert time.monotonic() - t0 < deadline_s, f"label counters {got} within {deadline_s:.0f}s"
        time.sleep(0.3)  # polling interval


# the control path (the decide stage and its broadcast state) is the same for both stage runtimes; the
# Python stages' run is long
@pytest.mark.parametrize("runtime", ["jvm", pytest.param("python", marks=pytest.mark.long)])
def test_model_challenger_and_rules_switch_under_live_traffic(kafka_bootstrap, tmp_path, runtime):
    from kafka import KafkaProducer

    from pipelines import decision_job
    from udfs.replay import replay_file

    # a second model: v1's graph under another version name (same spec, so it is accepted)
    shutil.copy("models/risk_gbdt_v1.onnx", tmp_path / "m2.onnx")
    spec = json.load(open("models/risk_gbdt_v1.json"))
    (tmp_path / "m2.json").write_text(json.dumps({**spec, "model_version": "risk_gbdt_v1_reexport"}))
    bad = dict(spec, feature_names=spec["feature_names"][:-1] + ["nope"])
    shutil.copy("models/risk_gbdt_v1.onnx", tmp_path / "bad.onnx")
    (tmp_path / "bad.json").write_text(json.dumps(bad))

    names = tuple(f"live-{runtime}.{t}" for t in ("events", "decisions", "dead", "control", "labels"))
    # one events partition: arrival order is send order, so every feature (user, ip, device) is exact
    topics.ensure_topics(kafka_bootstrap, topics.topic_specs(*names[:3], partitions=1)
                         + [topics.control_topic_spec(names[3]), topics.labels_topic_spec(names[4])])
    port = free_port()
    cfg = JobConfig(bootstrap_servers=kafka_bootstrap, events_topic=names[0], decisions_topic=names[1],
                    dead_letter_topic=names[2], control_topic=names[3], labels_topic=names[4], parallelism=1,
                    starting_offsets="earliest", transactional_id_prefix=f"it-live-{runtime}",
                    checkpoint_interval_ms=500, rest_port=port, checkpoint_dir=(tmp_path / "ck").as_uri(),
                    stage_runtime=runtime, job_name=f"live-{runtime}", group_id=f"live-{runtime}")
    rest = f"http://127.0.0.1:{port}"
    client = decision_job.run(cfg, wait=False)
    job_id = str(client.get_job_id())
    try:
        flink_rest.wait_running(rest, job_id, deadline_s=180)
        records = list(TrafficGenerator(seed=21, bad_share=0.0).generate(3000))

        # label feedback: three users of one device confirmed as fraud, one of them cleared again, one
        # malformed label; then a new user on that device is reviewed for the fraud-ring signal
        t_ring = records[0].event["ts"]
        for user, verdict in (("ring-u1", "fraud"), ("ring-u2", "fraud"), ("ring-u3", "fraud"), ("ring-u3", "legit")):
            _send(kafka_bootstrap, names[4], {"event_id": f"{user}-e", "user_id": user, "device_id": "ring-d",
                                              "event_ts": t_ring, "label": verdict})
        _send(kafka_bootstrap, names[4], b'{"event_id": "x", "label": "maybe"}')
        _labels_until(rest, job_id, fraud=3, legit=1)
        probe = {"event_id": "ring-probe", "event_type": "login", "user_id": "ring-u9", "device_id": "ring-d",
                 "ip": "10.9.9.9", "amount": 0, "currency": "EUR", "ts": t_ring + 3_600_000}
        _send(kafka_bootstrap, names[0], probe)
        sent = {"n": 0}

        def feed():
            p = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=5)
            t0 = time.monotonic()
            for i, r in enumerate(records):
                p.send(names[0], key=r.key.encode(), value=orjson.dumps(r.event))
                sent["n"] = i + 1
                ahead = (i + 1) / 250 - (time.monotonic() - t0)
                if ahead > 0.002:
                    time.sleep(ahead)  # pacing: 250 events/s
            p.flush()
            p.close()

        feeder = threading.Thread(target=feed)
        feeder.start()
        steps = [(600, {"kind": "model", "role": "champion", "path": str(tmp_path / "m2.onnx")}),
                 (900, {"kind": "model", "role": "champion", "path": str(tmp_path / "bad.onnx")}),
                 (1200, {"kind": "model", "role": "challenger", "path": "models/risk_gbdt_v1.onnx"}),
                 (1800, RULES_R2),
                 (2100, {"kind": "rules", "version": "r3", "rules": [{"code": "x", "decision": "block",
                                                                       "when": [["no_such_feature", ">", 1]]}]})]
        for at, msg in steps:
            while sent["n"] < at:
                time.sleep(0.05)  # waiting for the feed to reach the step
            _send(kafka_bootstrap, names[3], msg)
        feeder.join()

        rep = verify(kafka_bootstrap, *names[:3], wait_s=180)
        assert (rep["missing"], rep["duplicates"], rep["unexpected"]) == (0, 0, 0), rep
        assert rep["decided"] == len(records) + 1

        # no restart: the same job, no exception in its history
        exc = flink_rest.get(rest, f"/jobs/{job_id}/exceptions")
        assert not exc.get("exceptionHistory", {}).get("entries"), exc
        assert flink_rest.job_state(rest, job_id) == "RUNNING"
    finally:
        client.cancel().result()

    from tests.test_kafka_integration import read_all

    decisions = sorted((orjson.loads(m.value) for m in read_all(kafka_bootstrap, names[1])),
                       key=lambda d: d["decided_at"])
    ring = [d for d in decisions if d["event_id"] == "ring-probe"]
    assert len(ring) == 1 and ring[0]["signals"] == {"device_known_fraud_users_7d": 2.0}, ring
    assert "rule:known_fraud_device" in ring[0]["reasons"] and ring[0]["decision"] != "allow"
    decisions = [d for d in decisions if d["event_id"] != "ring-probe"]
    assert all(d["signals"] == {"device_known_fraud_users_7d": 0.0} for d in decisions)
    # each switch happens once, at one point in decision order (one device subtask): no flapping
    def switches(field):
        seq = [d.get(field) for d in decisions]
        return [seq[0]] + [b for a, b in zip(seq, seq[1:]) if a != b]

    assert switches("model_version") == ["risk_gbdt_v1", "risk_gbdt_v1_reexport"]
    assert switches("rules_version") == ["builtin", "r2"]
    shadow = [d for d in decisions if "shadow" in d]
    assert shadow and decisions[-1]["shadow"]["model_version"] == "risk_gbdt_v1"
    first_shadow = decisions.index(shadow[0])
    assert all("shadow" in d for d in decisions[first_shadow:])
    # same graph: the challenger's score equals the champion's
    assert all(d["shadow"]["score"] == d["score"] for d in shadow)
    r2 = [d for d in decisions if d["rules_version"] == "r2"]
    assert r2 and all(("rule:big_amount" in d["reasons"]) == (d["features"]["amount"] >= 300) for d in r2)
    assert all(d["decision"] != "allow" for d in r2 if d["features"]["amount"] >= 300)
    builtin = [d for d in decisions if d["rules_version"] == "builtin"]
    assert not any("rule:big_amount" in d["reasons"] for d in builtin)

    # the two refused messages are dead letters with their reason and bytes; nothing else is
    dead = [orjson.loads(m.value) for m in read_all(kafka_bootstrap, names[2])]
    assert [d["reason"] for d in dead if d["reason"] == "invalid_label"] == ["invalid_label"]
    dead = [d for d in dead if d["reason"] != "invalid_label"]
    assert [d["reason"] for d in dead] == ["control_rejected", "control_rejected"]
    assert "the current one keeps scoring" in dead[0]["detail"] and "trained on other features" in dead[0]["detail"]
    assert orjson.loads(base64.b64decode(dead[0]["original_b64"]))["path"].endswith("bad.onnx")
    assert "unknown feature 'no_such_feature'" in dead[1]["detail"]
    assert orjson.loads(base64.b64decode(dead[1]["original_b64"]))["version"] == "r3"

    # window state intact across every switch: every feature equals the offline replay for every event
    (tmp_path / "events.jsonl").write_bytes(b"\n".join(orjson.dumps(r.event) for r in records) + b"\n")
    replay_file(tmp_path / "events.jsonl", tmp_path / "features.jsonl")
    want = {}
    for line in (tmp_path / "features.jsonl").read_bytes().splitlines():
        row = orjson.loads(line)
        want[row["event_id"]] = row
    for d in decisions:
        assert [d["features"][n] for n in FEATURE_NAMES] == [want[d["event_id"]][n] for n in FEATURE_NAMES], d
    assert len(decisions) == len(records)
