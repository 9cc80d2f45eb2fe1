"""State bytes per key with the long horizons: the Python stage's pickled window dict and the JVM stage's
encoded ``KeyState`` (``LocalRunner``), per entity, over generator traffic spread over weeks, and for one
busy key over 40 days (bounded by horizon / bucket, not by rate). Needs the JVM module built
(``mvn -f udfs/jvm/pom.xml package``) for the JVM figures; ``--no-jvm`` skips them.

    python -m benchmarks.state_per_key --events 50000 --days 42 [--no-jvm] [--delayed]

``--delayed``: the spec with the delayed label windows (``udfs.features.FEATURES_WITH_DELAYED``), whatever
the switch ``DELAYED_LABEL_WINDOWS`` says.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys

import orjson

from riskstream.generator import TrafficGenerator
from udfs.chain import DEFAULT_DEDUP_HORIZON_MS, EntityStep
from udfs.events import Event
from udfs.features import DAY, ENTITIES, FEATURES_WITH_DELAYED
from udfs.chain import spec_document
from udfs.windows import DEFAULT_LATENESS_MS


def _dist(sizes: list[int]) -> dict:
    s = sorted(sizes)
    if not s:
        return {"keys": 0}
    return {"keys": len(s), "median": s[len(s) // 2], "p99": s[min(len(s) - 1, int(len(s) * 0.99))], "max": s[-1]}


def python_state(events: list[Event], features=None) -> dict:
    out = {}
    for e in ENTITIES:
        store = EntityStep(e, DEFAULT_LATENESS_MS, DEFAULT_DEDUP_HORIZON_MS, features).fold(events)
        out[e.name] = _dist([len(pickle.dumps(s, protocol=pickle.HIGHEST_PROTOCOL)) for s in store.values()])
    return out


def jvm_state(events: list[Event], features=None) -> dict:
    from pyflink.java_gateway import get_gateway
    from pyflink.util.java_utils import add_jars_to_context_class_loader

    from tests.jvm_jar import build_jar

    add_jars_to_context_class_loader([build_jar().as_uri()])
    J = get_gateway().jvm.io.riskstream.flink
    spec = orjson.dumps(spec_document(DEFAULT_LATENESS_MS, features)).decode()
    jsonl = "\n".join(orjson.dumps(ev._asdict()).decode() for ev in events)
    return {e.name: _dist(json.loads(J.LocalRunner.run(spec, e.name, DEFAULT_DEDUP_HORIZON_MS, jsonl))["state_bytes"])
            for e in ENTITIES}


def hot_key(days: int = 40, per_hour: int = 60) -> list[Event]:
    """One user, device, ip and card: ``per_hour`` payments an hour for ``days`` days, 20 devices rotating."""
    t0 = 1_767_225_600_000
    step = 3_600_000 // per_hour
    return [Event(f"h{i}", "payment", "hot-user", f"hot-dev-{i % 20}", "10.0.0.1", 10.0 + i % 50, "EUR", t0 + i * step,
                  None, "hot-card") for i in range(days * 24 * per_hour)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=50_000)
    ap.add_argument("--days", type=float, default=42)
    ap.add_argument("--seed", type=int, default=101)
    ap.add_argument("--no-jvm", action="store_true")
    ap.add_argument("--delayed", action="store_true", help="the spec with the delayed label windows")
    a = ap.parse_args(argv)
    feats = FEATURES_WITH_DELAYED if a.delayed else None
    evs = [Event(**r.event) for r in TrafficGenerator(seed=a.seed, days=a.days).generate(a.events) if r.event]
    hot = hot_key()
    res = {"traffic": {"events": len(evs), "days": a.days, "python_pickled": python_state(evs, feats)},
           "hot_key": {"events": len(hot), "days": len(hot) * 60_000 // DAY, "python_pickled": python_state(hot, feats)}}
    if not a.no_jvm:
        res["traffic"]["jvm_encoded"] = jvm_state(evs, feats)
        res["hot_key"]["jvm_encoded"] = jvm_state(hot, feats)
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
