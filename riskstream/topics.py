"""Topic design and creation: the default topic names, their settings, and the broker limits the job obeys.

One decisions topic carries every decision kind in a ``decision`` field, rather than one topic per kind:
each event gets exactly one record in one place (the audit "every event decided exactly once" reads one
topic), one transaction per checkpoint spans fewer partitions, and consumers that act on one kind
(order hold, review queue) filter on the field, which costs them little at these volumes. Dead letters
have their own topic: they are not decisions and are read by other people (the producers' owners).
All three topics use broker append time as record timestamp. For the events topic, latency is then
measured from arrival. For the outputs it is a correctness matter: the Flink Kafka sink stamps each
record with its *event* time, and with ``CreateTime`` the broker's time-based retention deletes
decisions about old events (a replay, a backfill) within minutes of writing them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict


# The default topic names: the job's settings (``JobConfig``) and every command's defaults come from here.
EVENTS = "riskstream.events"
DECISIONS = "riskstream.decisions"
DEAD_LETTER = "riskstream.dead-letter"
CONTROL = "riskstream.control"
LABELS = "riskstream.labels"

APPEND_TIME = {"message.timestamp.type": "LogAppendTime"}
# A dead letter carries the original bytes in base64 (4/3 of their size) plus a few hundred bytes, so the
# dead-letter topic must take records larger than the events topic's (Kafka's default: 1 MiB), or the
# one record that most needs keeping fails the sink instead. The sink's max.request.size matches. A
# compressing producer can land a record far above 1 MiB (the broker's cap applies to the compressed
# batch), so dead letters keep at most udfs.events.DEAD_LETTER_ORIGINAL_MAX_BYTES (1 MiB) of the original
# (then its length and SHA-256): at most ~1.42 MB, always below this.
DEAD_LETTER_MAX_BYTES = 2 * 1024 * 1024
# The local broker's transaction.max.timeout.ms (15 min, Kafka's default); the exactly-once sinks' transaction
# timeout must not exceed it (``JobConfig`` checks, and the start-up checks ask the real brokers).
BROKER_MAX_TRANSACTION_TIMEOUT_MS = 15 * 60 * 1000


def topic_specs(events: str, decisions: str, dead_letter: str, partitions: int = 2) -> list[TopicSpec]:
    return [
        TopicSpec(events, partitions, APPEND_TIME),
        TopicSpec(decisions, partitions, APPEND_TIME),
        TopicSpec(dead_letter, 1, {**APPEND_TIME, "max.message.bytes": str(DEAD_LETTER_MAX_BYTES)}),
    ]


def control_topic_spec(name: str) -> TopicSpec:
    """One partition (one order for all instances), kept forever: a restarted job without a checkpoint
    replays it from the start and ends with the newest model and rules."""
    return TopicSpec(name, 1, {**APPEND_TIME, "retention.ms": "-1"})


def labels_topic_spec(name: str, partitions: int = 2) -> TopicSpec:
    """Labels arrive days after their events; keep them long enough to rebuild the 7-day signal."""
    return TopicSpec(name, partitions, {**APPEND_TIME, "retention.ms": str(30 * 24 * 3600 * 1000)})


def ensure_topics(bootstrap: str, specs: list[TopicSpec]) -> list[str]:
    """Create the topics that do not exist; return the names created."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        existing = set(admin.list_topics())
        new = [NewTopic(s.name, s.partitions, 1, topic_configs=s.config) for s in specs if s.name not in existing]
        if new:
            admin.create_topics(new)
        return [t.name for t in new]
    finally:
        admin.close()


def delete_topics(bootstrap: str, names: list[str]) -> None:
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        existing = set(admin.list_topics())
        doomed = [n for n in names if n in existing]
        if doomed:
            admin.delete_topics(doomed)
    finally:
        admin.close()
