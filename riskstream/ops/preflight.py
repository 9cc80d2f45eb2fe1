"""Start-up checks: fail in seconds with what to fix, not minutes later in a restart loop. :func:`preflight`
runs them all before the job is built (``pipelines.decision_job.run``); :func:`check_kafka` is the Kafka
side."""

from __future__ import annotations

from ..config import JobConfig
from .errors import StartupError

__all__ = ["StartupError", "check_kafka", "preflight"]


def preflight(cfg: JobConfig) -> None:
    """Fail fast, before any Flink work, with a message that says what to fix: a missing or mismatched
    model, missing jars, a restore path that is no checkpoint, then the Kafka side (broker, topics,
    transaction timeout, dead-letter record size)."""
    from udfs.scoring import Scorer

    from .jars import flink_jar_urls
    from .restore import resolve_restore_path

    Scorer(cfg.resolved_model_path())
    flink_jar_urls(cfg.jars_dir)
    resolve_restore_path(cfg)
    check_kafka(cfg)


def check_kafka(cfg: JobConfig, timeout_s: float = 10.0) -> None:
    """Broker reachable, the three topics exist, the sink's transaction timeout is allowed by every
    broker, and the dead-letter topic takes the largest dead letter (see ``topics.DEAD_LETTER_MAX_BYTES``)."""
    from kafka.errors import KafkaError

    from .broker import broker_ready

    if not broker_ready(cfg.bootstrap_servers, timeout_s=timeout_s, client_props=_client_props(cfg)):
        raise StartupError(f"no Kafka broker answers at {cfg.bootstrap_servers}; start the local one with "
                           "`riskstream stack up` or pass --bootstrap-servers")
    try:
        conf = _inspect(cfg, timeout_s)
    except KafkaError as e:
        raise StartupError(f"the Kafka cluster at {cfg.bootstrap_servers} refused the start-up checks "
                           f"({type(e).__name__}: {e}); check the credentials and ACLs (DESCRIBE, "
                           "DESCRIBE_CONFIGS, CREATE for the control and labels topics)") from None
    _check_limits(cfg, conf)


def _inspect(cfg: JobConfig, timeout_s: float) -> dict:
    from kafka import KafkaAdminClient
    from kafka.admin import ConfigResource, ConfigResourceType

    from kafka.admin import NewTopic

    from ..topics import control_topic_spec, labels_topic_spec

    admin = KafkaAdminClient(bootstrap_servers=cfg.bootstrap_servers, request_timeout_ms=int(timeout_s * 1000),
                             **_client_props(cfg))
    try:
        existing = set(admin.list_topics())

        for name, spec_of in ((cfg.control_topic, control_topic_spec), (cfg.labels_topic, labels_topic_spec)):
            if name and name not in existing:  # the job's own input topics: created when missing
                spec = spec_of(name)
                try:
                    admin.create_topics([NewTopic(spec.name, spec.partitions, 1, topic_configs=spec.config)])
                except Exception as e:
                    if "TopicAlreadyExists" not in type(e).__name__:
                        raise StartupError(f"topic {name} does not exist and could not be created ({e}); create it "
                                           "or disable it with an empty topic name") from None
        missing = [t for t in (cfg.events_topic, cfg.decisions_topic, cfg.dead_letter_topic) if t not in existing]
        if missing:
            raise StartupError(
                f"topic(s) {', '.join(missing)} do not exist on {cfg.bootstrap_servers}: create them "
                "(`riskstream stack up` creates the default ones with the right settings) or pass "
                "--events-topic/--decisions-topic/--dead-letter-topic")
        brokers = [str(b["broker_id"]) for b in admin.describe_cluster()["brokers"]]
        conf = admin.describe_configs(
            [ConfigResource(ConfigResourceType.BROKER, b, configs={"transaction.max.timeout.ms": None})
             for b in brokers]
            + [ConfigResource(ConfigResourceType.TOPIC, cfg.dead_letter_topic, configs={"max.message.bytes": None})],
            config_filter="all")
    finally:
        admin.close()
    return conf


def _check_limits(cfg: JobConfig, conf: dict) -> None:
    from ..topics import DEAD_LETTER_MAX_BYTES

    for b, c in conf.get("broker", {}).items():
        limit = int(c["transaction.max.timeout.ms"]["value"])
        if cfg.transaction_timeout_ms > limit:
            raise StartupError(
                f"transaction_timeout_ms {cfg.transaction_timeout_ms} exceeds broker {b}'s "
                f"transaction.max.timeout.ms {limit}: the exactly-once sinks could not start; lower "
                "--transaction-timeout-ms or raise the broker setting")
    dl = conf.get("topic", {}).get(cfg.dead_letter_topic, {}).get("max.message.bytes")
    if dl and int(dl["value"]) < DEAD_LETTER_MAX_BYTES:
        raise StartupError(
            f"dead-letter topic {cfg.dead_letter_topic} takes records up to {dl['value']} bytes, but a dead letter "
            f"for a maximal event needs up to {DEAD_LETTER_MAX_BYTES}: set its max.message.bytes to at least "
            f"{DEAD_LETTER_MAX_BYTES} (kafka-configs.sh --alter --entity-type topics --entity-name "
            f"{cfg.dead_letter_topic} --add-config max.message.bytes={DEAD_LETTER_MAX_BYTES})")


def _client_props(cfg: JobConfig) -> dict:
    return cfg.kafka_python_properties()
