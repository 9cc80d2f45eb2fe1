"""`riskstream consume`: the example downstream reader. It uses ``isolation_level=read_committed`` so
it never sees decisions from aborted (e.g. pre-crash) transactions; records appear once the job's
checkpoint commits them."""

from __future__ import annotations

import sys

import orjson


def consume(bootstrap: str, topic: str, follow: bool = False, decision: str | None = None, limit: int = 0,
            group_id: str | None = None, idle_ms: int = 5000, out=sys.stdout) -> int:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, isolation_level="read_committed",
                             auto_offset_reset="earliest", group_id=group_id,
                             enable_auto_commit=group_id is not None,
                             consumer_timeout_ms=-1 if follow else idle_ms)
    n = 0
    try:
        for msg in consumer:
            try:
                rec = orjson.loads(msg.value)
            except orjson.JSONDecodeError:
                print(f"# skipping non-JSON record at {msg.partition}:{msg.offset}", file=sys.stderr)
                continue
            if decision and rec.get("decision") != decision:
                continue
            out.write(orjson.dumps(rec).decode() + "\n")
            n += 1
            if limit and n >= limit:
                break
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    print(f"# {n} records", file=sys.stderr)
    return 0
