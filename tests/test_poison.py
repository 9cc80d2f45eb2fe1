"""Poison records on a real broker (issue 21): a gzip-compressed ~1.7 MB record, tombstones (null values, with
and without a key), an empty value, then valid events, eight of them under one event id for eight users. With
restarts disabled, any sink failure fails the job and this test. Every record must end as exactly one
decision or dead letter; `riskstream verify` must account for every one of them (and must not raise)."""

from __future__ import annotations

import base64
import gzip
import hashlib
from collections import Counter

import orjson
import pytest

from riskstream import topics
from riskstream.config import JobConfig
from tests.test_kafka_integration import read_all
from udfs.events import DEAD_LETTER_ORIGINAL_MAX_BYTES

pytestmark = [pytest.mark.kafka, pytest.mark.flink]

MIB = 1024 * 1024


def big_record(n: int = 1_700_000) -> bytes:
    """JSON-looking bytes that gzip shrinks below the broker's 1 MiB cap (8 letters: ~3 bits a byte)."""
    import random

    rng = random.Random(21)
    head = b'{"event_id":"big","user_id":"u-big","extras":{"blob":"'
    return head + bytes(rng.choice(b"abcdefgh") for _ in range(n - len(head) - 3)) + b'"}}'


def valid_events() -> list[bytes]:
    from riskstream.generator import TrafficGenerator

    evs = [r.event for r in TrafficGenerator(seed=21, bad_share=0.0).generate(40)]
    ts = evs[0]["ts"]
    # ids are per user: e1 under eight users is eight events, each with its own decision
    evs += [{"event_id": "e1", "event_type": "login", "user_id": f"u-dup-{i}", "device_id": "d-shared",
             "ip": "10.0.0.1", "amount": 0, "currency": "EUR", "ts": ts + i} for i in range(8)]
    return [orjson.dumps(e) for e in evs]


@pytest.mark.parametrize("runtime", ["jvm", "python"])
def test_poison_records_each_end_as_one_dead_letter_and_the_job_never_restarts(kafka_bootstrap, runtime):
    from kafka import KafkaProducer

    from pipelines import decision_job
    from riskstream.tools.audit import verify

    names = (f"poison-{runtime}.events", f"poison-{runtime}.decisions", f"poison-{runtime}.dead")
    labels_topic = f"poison-{runtime}.labels"
    topics.ensure_topics(kafka_bootstrap, topics.topic_specs(*names, partitions=2)
                         + [topics.labels_topic_spec(labels_topic, 1)])
    big = big_record()
    assert len(gzip.compress(big)) < MIB < len(big)
    good = valid_events()
    # what goes where: (partition, key, value); the poison first, then the valid events. (kafka-python
    # refuses a record with neither key nor value; tests/test_dead_letters.py covers a null key.)
    poison = [(0, None, big), (0, b"u-gone", None), (1, b"", None), (0, b"u-empty", b""), (1, b"k" * 100, None)]
    p = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", compression_type="gzip",
                      max_request_size=4 * MIB)
    try:
        for part, key, value in poison:
            p.send(names[0], key=key, value=value, partition=part).get(timeout=60)
        for raw in good:
            p.send(names[0], key=orjson.loads(raw)["user_id"].encode(), value=raw)
        p.send(labels_topic, key=b"label-key", value=None)  # a tombstone on the labels topic too
        p.flush(timeout=60)
    finally:
        p.close()

    cfg = JobConfig(bootstrap_servers=kafka_bootstrap, events_topic=names[0], decisions_topic=names[1],
                    dead_letter_topic=names[2], labels_topic=labels_topic, control_topic=f"poison-{runtime}.control",
                    bounded=True, parallelism=2, starting_offsets="earliest", stage_runtime=runtime,
                    transactional_id_prefix=f"it-poison-{runtime}", group_id=f"poison-{runtime}",
                    job_name=f"poison-{runtime}", checkpoint_interval_ms=500, restart_attempts=0)
    decision_job.run(cfg, wait=True)  # restart_attempts 0: a failed sink would fail the job and raise here

    events = read_all(kafka_bootstrap, names[0])
    assert len(events) == len(poison) + len(good)
    decisions = [orjson.loads(m.value) for m in read_all(kafka_bootstrap, names[1])]
    dead = [orjson.loads(m.value) for m in read_all(kafka_bootstrap, names[2])]

    # every valid event exactly one decision, identified by (user_id, event_id)
    want = Counter((orjson.loads(r)["user_id"], orjson.loads(r)["event_id"]) for r in good)
    assert Counter((d["user_id"], d["event_id"]) for d in decisions) == want and max(want.values()) == 1

    # every poison record exactly one dead letter (and the labels topic's tombstone its own)
    reasons = Counter(d["reason"] for d in dead)
    assert reasons == {"oversized": 1, "null_value": 4, "invalid_json": 1}, reasons
    assert len(decisions) + len(dead) == len(events) + 1
    (over,) = [d for d in dead if d["reason"] == "oversized"]
    assert over["original_truncated"] is True and over["original_size"] == len(big)
    assert over["original_sha256"] == hashlib.sha256(big).hexdigest()
    assert base64.b64decode(over["original_b64"]) == big[:DEAD_LETTER_ORIGINAL_MAX_BYTES]
    (empty,) = [d for d in dead if d["reason"] == "invalid_json"]
    assert empty["original_b64"] == "" and empty["original_size"] == 0 and "original_null" not in empty
    tomb_in = {(m.partition, m.offset): m.key for m in events if m.value is None}
    tomb_out = {(d["partition"], d["offset"]): d for d in dead if d["reason"] == "null_value" and d["topic"] == names[0]}
    assert set(tomb_out) == set(tomb_in) and len(tomb_in) == 3
    for where, key in tomb_in.items():
        d = tomb_out[where]
        assert d["original_null"] is True and d["original_size"] == 0
        assert (None if d["key_b64"] is None else base64.b64decode(d["key_b64"])) == key
    (lab,) = [d for d in dead if d["reason"] == "null_value" and d["topic"] == labels_topic]
    assert base64.b64decode(lab["key_b64"]) == b"label-key" and lab["offset"] == 0

    # verify reads the same topics: every record accounted for, per (user, event id), without raising
    rep = verify(kafka_bootstrap, *names)
    assert (rep["events"], rep["tombstones"], rep["malformed"]) == (len(events), 3, 2)
    assert (rep["decided"], rep["distinct_event_ids"]) == (len(good), len(good))
    assert (rep["missing"], rep["duplicates"], rep["unexpected"], rep["wrong_reason"], rep["unreadable_outputs"]) \
        == (0, 0, 0, 0, 0)
    assert rep["truncated_dead_letters"] == 1 and rep["dead_letter_reasons"]["null_value"] == 4
