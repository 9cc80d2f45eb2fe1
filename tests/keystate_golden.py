"""The JVM stage's state encoding (KeyState) pinned: a seeded stream, the spec documents it ran with, and the
bytes each key's state had after it, written by the encoder before aggregates became plug-ins (issue 22).
``python -m tests.keystate_golden JAR`` rewrites ``tests/keystate_golden.json`` with the given jar: only ever
for a deliberate change of the state format (savepoints of older jobs would no longer restore)."""

from __future__ import annotations

import base64
import hashlib
import json
import random
import sys
from pathlib import Path

from udfs.events import EVENT_TYPES, PAYMENT_REF_TYPES, Event

GOLDEN = Path(__file__).resolve().parent / "keystate_golden.json"
LATENESS = 60_000
DEDUP = 600_000
T0 = 1_767_225_600_000
MIN = 60_000
DAY = 24 * 60 * MIN


def stream() -> list[Event]:
    """Seeded traffic over 45 days with what the encoding has to carry: out-of-order and late events,
    duplicate ids, keyless payments, a device with 300 users in a minute (a sparse sketch) and one with 900
    (a dense sketch), and keys quiet for longer than their undelayed horizons and than their retention."""
    r = random.Random(22)
    out: list[Event] = []
    t = T0
    for i in range(4000):
        t += r.randrange(0, 30 * MIN)
        et = r.choice(EVENT_TYPES)
        pref = f"card{r.randrange(30)}" if et in PAYMENT_REF_TYPES and r.random() < 0.8 else None
        ts = t + r.randrange(-10 * MIN, 10 * MIN)
        ev = Event(f"e{i}", et, f"u{r.randrange(60)}", f"d{r.randrange(40)}", f"ip{r.randrange(25)}",
                   r.randrange(1, 100_000) / 100, "EUR", ts, None, pref)
        out.append(ev)
        if i % 37 == 5:  # late: past the lateness behind its keys
            out.append(ev._replace(event_id=f"late{i}", ts=ts - 20 * MIN))
        if i % 41 == 9 and i > 20:  # a duplicate id of a recent event
            out.append(out[-r.randrange(2, 12)])
        if i in (1500, 2500):  # many users on one device, ip and card within a minute: HyperLogLog buckets
            n = 300 if i == 1500 else 900
            for k in range(n):
                out.append(Event(f"burst{i}-{k}", "payment", f"bu{i}-{k}", f"dev-burst{i}", f"ip-burst{i}",
                                 1.0 + k % 13, "EUR", ts + k * 50, None, f"card-burst{i}"))
        if i == 3000:  # quiet for 33 days: past the 30-day horizons, not past the delayed windows' reach
            t += 33 * DAY
    return out


def jsonl(events: list[Event]) -> str:
    return "\n".join(json.dumps(e._asdict()) for e in events)


def specs() -> dict[str, dict]:
    from udfs.chain import spec_document
    from udfs.features import BASE_FEATURES, FEATURES_WITH_DELAYED

    return {"delayed": spec_document(LATENESS, FEATURES_WITH_DELAYED), "base": spec_document(LATENESS, BASE_FEATURES)}


# (spec, entity): every entity with the delayed label windows (versions 2 and 3 of the layout), and the two
# whose layout differs without them
RUNS = (("delayed", "user"), ("delayed", "ip"), ("delayed", "device"), ("delayed", "payment"), ("base", "ip"),
        ("base", "device"))


def digest(states: dict[str, str]) -> str:
    """One hash of every key and its state bytes (``states``: key -> base64), in key order."""
    h = hashlib.sha256()
    for k in sorted(states):
        h.update(k.encode() + b"\0" + base64.b64decode(states[k]) + b"\0")
    return h.hexdigest()


def main(jar: str) -> None:
    from pyflink.java_gateway import get_gateway
    from pyflink.util.java_utils import add_jars_to_context_class_loader

    add_jars_to_context_class_loader([Path(jar).resolve().as_uri()])
    J = get_gateway().jvm.io.riskstream.flink
    evs = jsonl(stream())
    out = {"lateness_ms": LATENESS, "dedup_ms": DEDUP, "runs": []}
    for name, entity in RUNS:
        states = json.loads(J.LocalRunner.states(json.dumps(specs()[name]), entity, DEDUP, evs))
        # one digest of every key's bytes; the full bytes of the 6 smallest and 6 largest (sketches, delayed counts)
        by_size = sorted(states, key=lambda k: (len(states[k]), k))
        out["runs"].append({"spec": name, "entity": entity, "keys": len(states), "digest": digest(states),
                            "states": {k: states[k] for k in by_size[:6] + by_size[-6:]}})
    out["specs"] = specs()
    GOLDEN.write_text(json.dumps(out, sort_keys=True))
    print(GOLDEN, GOLDEN.stat().st_size, "bytes", [(r["spec"], r["entity"], r["keys"]) for r in out["runs"]])


if __name__ == "__main__":
    main(sys.argv[1])
