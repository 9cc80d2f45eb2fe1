"""Window-stage cost: µs per event of the window update per entity, and bytes of state per key.

    .venv/bin/python -m benchmarks.windows [--events 100000] [--repeats 5] [--flink]

Prints figures and writes JSON to benchmarks/results/windows.json. Medians over ``--repeats`` runs of
the same seeded stream. ``--flink`` also times the whole job core on a local MiniCluster (collection
source, discarding sink) and the same operator shape with trivial Python functions, to separate
riskstream's work from PyFlink's per-operator cost.
"""

from __future__ import annotations

import argparse
import pickle
import statistics
import sys
import time
from pathlib import Path

import orjson

from riskstream.generator import TrafficGenerator
from udfs.events import Event
from udfs.features import ENTITIES
from udfs.windows import EntityWindows

OUT = Path(__file__).resolve().parent / "results"


def time_entity(entity: str, events: list[Event]) -> tuple[float, dict]:
    w = EntityWindows(entity)
    store: dict[str, dict] = {}
    key = w.key_field
    t0 = time.perf_counter()
    for ev in events:
        k = getattr(ev, key)
        if k is None:  # an optional entity's keyless event: no state
            continue
        st, _, _ = w.update(store.get(k), ev)
        store[k] = st
    elapsed = time.perf_counter() - t0
    sizes = sorted(len(pickle.dumps(s, protocol=pickle.HIGHEST_PROTOCOL)) for s in store.values())
    return elapsed / len(events) * 1e6, {"keys": len(sizes), "median": sizes[len(sizes) // 2],
                                         "p99": sizes[int(len(sizes) * 0.99)], "max": sizes[-1]}


def hot_key_bytes(hours: float = 30, per_second: float = 2.0) -> dict:
    """One user firing events for longer than the longest horizon: state must stay bounded."""
    w = EntityWindows("user")
    st, sizes = None, []
    n = int(hours * 3600 * per_second)
    for i in range(n):
        ev = Event(f"e{i}", "payment", "hot", f"d{i % 50}", f"ip{i % 200}", 5.0, "EUR",
                   1_767_225_600_000 + int(i * 1000 / per_second))
        st, _, _ = w.update(st, ev)
        if i % 3600 == 0:
            sizes.append(len(pickle.dumps(st, protocol=pickle.HIGHEST_PROTOCOL)))
    return {"events": n, "bytes_at_end": sizes[-1], "bytes_max": max(sizes)}


def flink_rates(n: int) -> dict:
    from benchmarks._flink_core import run_core

    return {"job_core_eps": run_core(n, trivial=False), "trivial_functions_eps": run_core(n, trivial=True)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--flink", action="store_true")
    a = ap.parse_args(argv)
    events = [Event(**r.event) for r in TrafficGenerator(seed=3).generate(a.events)]
    result: dict = {"events": len(events), "repeats": a.repeats}
    for entity in (e.name for e in ENTITIES):
        runs = [time_entity(entity, events) for _ in range(a.repeats)]
        result[entity] = {"us_per_event_median": round(statistics.median(r[0] for r in runs), 2),
                          "us_per_event_runs": [round(r[0], 2) for r in runs],
                          "state_bytes_per_key": runs[0][1]}
        print(f"{entity:6} window update: {result[entity]['us_per_event_median']:.1f} µs/event (median of "
              f"{a.repeats}); state bytes/key median {runs[0][1]['median']}, p99 {runs[0][1]['p99']}, "
              f"max {runs[0][1]['max']} over {runs[0][1]['keys']} keys")
    result["hot_key"] = hot_key_bytes()
    print(f"hot key, 2 events/s for 30 h: {result['hot_key']['bytes_at_end']} bytes at the end, "
          f"{result['hot_key']['bytes_max']} max")
    if a.flink:
        result["flink"] = flink_rates(min(a.events, 60_000))
        print(f"MiniCluster p=1, thread mode: job core {result['flink']['job_core_eps']:.0f} events/s; same "
              f"operators with trivial functions {result['flink']['trivial_functions_eps']:.0f} events/s")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "windows.json").write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    print(f"wrote {OUT / 'windows.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
