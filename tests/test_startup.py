"""Start-up refusals: each bad setting fails `riskstream run` in seconds with a message that names the fix.
The Kafka checks run against the real broker."""

from __future__ import annotations

import json
import shutil

import pytest

from riskstream import topics
from riskstream.cli import main


def run(*args: str) -> str:
    with pytest.raises(SystemExit) as e:
        main(["run", *args])
    return str(e.value)


@pytest.mark.parametrize("args, says", [
    (["--parallelism", "0"], "--parallelism: Input should be greater than or equal to 1"),
    (["--events-topic", "bad topic!"], "is not a valid Kafka topic name"),
    (["--events-topic", "a", "--decisions-topic", "a"], "must all be different topics"),
    (["--bootstrap-servers", "localhost"], "is not host:port"),
    (["--review-threshold", "0.95"], "review_threshold must not exceed block_threshold"),
    (["--transaction-timeout-ms", "2000000"], "exceeds the broker's transaction.max.timeout.ms"),
    (["--python-execution-mode", "fast"], "--python-execution-mode: Input should be 'process' or 'thread'"),
])
def test_invalid_config_is_refused_with_the_field_named(args, says):
    msg = run(*args)
    assert "invalid configuration" in msg and says in msg, msg


def test_missing_model_is_refused(tmp_path):
    msg = run("--model-path", str(tmp_path / "nope.onnx"), "--bootstrap-servers", "127.0.0.1:1")
    assert "does not exist: pass --model-path with an .onnx file" in msg, msg


def test_mismatched_model_is_refused(tmp_path):
    shutil.copy("models/risk_gbdt_v1.onnx", tmp_path / "m.onnx")
    spec = json.load(open("models/risk_gbdt_v1.json"))
    spec["feature_names"] = spec["feature_names"][:-1] + ["device_events_99d"]
    (tmp_path / "m.json").write_text(json.dumps(spec))
    msg = run("--model-path", str(tmp_path / "m.onnx"), "--bootstrap-servers", "127.0.0.1:1")
    assert "trained on other features than this job computes" in msg and "device_events_99d" in msg, msg


def test_a_jars_folder_without_the_jvm_operators_is_refused(tmp_path):
    from riskstream.ops.jars import flink_jar_urls

    for jar in flink_jar_urls():  # the connector only, not riskstream-jvm.jar
        if "riskstream-jvm" not in jar:
            shutil.copy(jar.removeprefix("file://"), tmp_path)
    msg = run("--jars-dir", str(tmp_path), "--bootstrap-servers", "127.0.0.1:1")
    assert "riskstream-jvm.jar" in msg and "run `riskstream jars`" in msg, msg


def test_restore_path_without_a_checkpoint_is_refused(tmp_path):
    msg = run("--restore-from", str(tmp_path), "--bootstrap-servers", "127.0.0.1:1")
    assert "is not a savepoint or checkpoint folder" in msg, msg


@pytest.mark.kafka
def test_missing_topics_are_refused(kafka_bootstrap):
    msg = run("--bootstrap-servers", kafka_bootstrap, "--events-topic", "nowhere.events",
              "--decisions-topic", "nowhere.decisions", "--dead-letter-topic", "nowhere.dead")
    assert "nowhere.events, nowhere.decisions, nowhere.dead do not exist" in msg, msg


@pytest.mark.kafka
def test_a_dead_letter_topic_too_small_for_the_largest_dead_letter_is_refused(kafka_bootstrap):
    names = ["small.events", "small.decisions", "small.dead"]
    specs = topics.topic_specs(*names)
    specs[2] = topics.TopicSpec(names[2], 1, {})  # broker default: 1 MiB records
    topics.ensure_topics(kafka_bootstrap, specs)
    msg = run("--bootstrap-servers", kafka_bootstrap, "--events-topic", names[0], "--decisions-topic", names[1],
              "--dead-letter-topic", names[2])
    assert "set its max.message.bytes to at least 2097152" in msg, msg


@pytest.mark.kafka
def test_a_transaction_timeout_above_the_brokers_maximum_is_refused(kafka_bootstrap):
    """The config model knows the local broker's default maximum; a broker configured lower is caught by
    asking it (here: a config built without validation stands in for a broker with a lower maximum)."""
    from riskstream.config import JobConfig
    from riskstream.ops.preflight import StartupError, check_kafka

    names = ["tx.events", "tx.decisions", "tx.dead"]
    topics.ensure_topics(kafka_bootstrap, topics.topic_specs(*names))
    ok = JobConfig(bootstrap_servers=kafka_bootstrap, events_topic=names[0], decisions_topic=names[1],
                   dead_letter_topic=names[2])
    check_kafka(ok)
    too_long = JobConfig.model_construct(**{**dict(ok), "transaction_timeout_ms": 900_001})
    with pytest.raises(StartupError, match="exceeds broker 1's transaction.max.timeout.ms 900000"):
        check_kafka(too_long)
