"""The graph features (docs/features.md#graph-features) in the job's Python stages, against the reference.

- The Flink stage (``udfs.flink.EntityStage``) driven in this process by a small stand-in for Flink's keyed
  runtime (ValueStates stored pickled, event-time timers fired by ``udfs.chain.Chain``'s watermark rule): every
  event's values equal Chain's, so do the keys holding graph state per stage after every event, and keys
  idle past their expiry lose it; the two label stores share one wall-clock timer (no MiniCluster: seconds).
- The job (``build_core`` on a MiniCluster, fraud labels arriving days late on the labels input, parallelism
  1 and 2) against ``udfs.replay.replay_file`` on the same events and labels: a decision per event and every
  feature of every event equal. It runs in a subprocess with ``RISKSTREAM_GRAPH_FEATURES=1`` (the spec is
  fixed at import; this process has the switch off), which writes the decisions and the replay to files.
  Pitfall: at parallelism 2 a shared key's events reach its stage through two subtasks; the source sends each
  event only once the one before it was decided, so the order is the input's (without it, one run had 388
  of 2,500 events differ in some feature).
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from tests.test_job_flink import _labelled_days, run_paced
from tests.test_job_flink import _Pace as _LabelPace
from udfs.events import Event
from udfs.features import FEATURES_WITH_GRAPH, GRAPH_AGGS, spec_entities

ROOT = Path(__file__).resolve().parent.parent
DAY = 24 * 3600 * 1000
GRAPH_NAMES = [f.name for f in FEATURES_WITH_GRAPH if f.agg in GRAPH_AGGS]
NAMES = [f.name for f in FEATURES_WITH_GRAPH]


def ring_traffic(n: int, seed: int = 11, days: float = 14) -> tuple[list[dict], list[tuple[int, dict]]]:
    """Generator ring traffic (valid events only) and its labels as on the labels topic, in daily batches
    (few batches, so the job test's pacer waits little), 3 % of normal events mislabelled then corrected."""
    return _labelled_days(days, n, seed=seed, rings=True, mistaken=0.03, label_seed=3)


def interleave(events: list[dict], labels: list[tuple[int, dict]]) -> list[tuple[str, dict]]:
    """("L", label) / ("E", event) in the order the replay folds them: each label before the first event at
    or after its arrival time (``udfs.replay.FeatureReplay``)."""
    seq, j = [], 0
    for e in events:
        while j < len(labels) and labels[j][0] <= e["ts"]:
            seq.append(("L", labels[j][1]))
            j += 1
        seq.append(("E", e))
    return seq


# -- the Python stage in this process, against Chain ----------------------------------------------------
class _Keyed:
    """A stand-in for one keyed operator's runtime: ValueStates per (name, current key), stored pickled (a
    stage must store what it changed: a read returns a fresh copy, as from the state backend), event-time
    timers per (timestamp, key) (Flink keeps one per pair), processing-time timers only recorded."""

    def __init__(self):
        self.key = None
        self.data: dict[tuple[str, str], bytes] = {}
        self.timers: set[tuple[int, str]] = set()
        self.ptimers: set[tuple[int, str]] = set()
        self.domain = None

    # RuntimeContext
    def get_state(self, desc):
        return _Value(self, desc.name)

    def get_metrics_group(self):
        return self

    def counter(self, name):
        return self

    def inc(self, n: int = 1):
        pass

    # the context of process_element / on_timer
    def timer_service(self):
        return self

    def register_event_time_timer(self, t: int):
        self.timers.add((int(t), self.key))

    def register_processing_time_timer(self, t: int):
        self.ptimers.add((int(t), self.key))

    def time_domain(self):
        return self.domain

    def keys_of(self, name: str) -> set:
        return {k for (n, k) in self.data if n == name}


class _Value:
    def __init__(self, rt: _Keyed, name: str):
        self.rt, self.name = rt, name

    def value(self):
        raw = self.rt.data.get((self.name, self.rt.key))
        return None if raw is None else pickle.loads(raw)

    def update(self, v):
        self.rt.data[(self.name, self.rt.key)] = pickle.dumps(v)

    def clear(self):
        self.rt.data.pop((self.name, self.rt.key), None)


class StageRunner:
    """The job's Python entity stages (``udfs.flink.EntityStage``) chained in this process, each on its own
    keyed runtime, with the watermark of ``udfs.chain.Chain`` (newest event time so far minus the
    out-of-orderness bound minus 1 ms, as it stood before the event) firing each stage's due timers."""

    def __init__(self, features=FEATURES_WITH_GRAPH, lateness_ms: int = 60_000, out_of_orderness_ms: int = 5_000):
        from pyflink.datastream.time_domain import TimeDomain

        from udfs.flink import EntityKey, EntityStage

        self.event_time = TimeDomain.EVENT_TIME
        self.entities = spec_entities(features)
        self.stages, self.rts, self.keys = [], [], []
        for e in self.entities:
            st = EntityStage(e.name, lateness_ms, labels=True, features=features)
            rt = _Keyed()
            st.open(rt)
            self.stages.append(st)
            self.rts.append(rt)
            self.keys.append(EntityKey(e))
        self.ooo = out_of_orderness_ms
        self.max_ts = None

    def _fire(self) -> None:
        if self.max_ts is None:
            return
        wm = self.max_ts - self.ooo - 1
        for st, rt in zip(self.stages, self.rts):
            while True:
                due = sorted(t for t in rt.timers if t[0] <= wm)
                if not due:
                    break
                for t in due:
                    rt.timers.discard(t)
                    rt.key, rt.domain = t[1], self.event_time
                    list(st.on_timer(t[0], rt))

    def label(self, label) -> None:
        from udfs.chain import label_record

        rec = label_record(label)
        for st, rt, key in zip(self.stages, self.rts, self.keys):
            if st.labels:
                rt.key = key.get_key(rec)
                assert list(st.process_element(rec, rt)) == []

    def event(self, ev: Event):
        """The record the last stage emits for ``ev``, or None (dead-lettered: a duplicate)."""
        from udfs.chain import pack
        from udfs.flink import DEAD_LETTER_TAG

        self._fire()
        rec = pack(ev)
        try:
            for st, rt, key in zip(self.stages, self.rts, self.keys):
                rt.key = key.get_key(rec)
                out = list(st.process_element(rec, rt))
                assert len(out) == 1, out
                if out[0][0] is DEAD_LETTER_TAG:
                    return None
                rec = out[0]
            return rec
        finally:
            self.max_ts = ev.ts if self.max_ts is None else max(self.max_ts, ev.ts)

    def graph_keys(self) -> dict[str, int]:
        return {e.name: len(rt.keys_of(f"{e.name}_graph")) for e, st, rt in zip(self.entities, self.stages, self.rts)
                if st.gstate is not None}


def _label(body: dict):
    from udfs.labels import parse_label

    return parse_label(orjson.dumps(body))


def test_python_stages_equal_the_chain_and_drop_idle_graph_state():
    """Every event's values (window and graph) and late flag from the Flink stages equal Chain's, with
    labels in between; after each event the keys holding graph state per stage equal Chain's (a members
    key's graph state goes with its windows, a link key on its own timer, when Chain drops them). Then part
    of the traffic comes back 60 days later, past every key's expiry (it spans 14 days; the longest
    retention, the device's, is 37): only the returning keys hold graph state, in both."""
    from udfs.chain import Chain, unpack

    events, labels = ring_traffic(2000)
    again = [{**e, "event_id": "again-" + e["event_id"], "ts": e["ts"] + 60 * DAY} for e in events[:300]]
    seq = interleave(events + again, labels)
    chain = Chain(60_000, features=FEATURES_WITH_GRAPH)
    run = StageRunner()
    n = fraud_seen = 0
    share = NAMES.index("graph_group_fraud_share_7d")
    for kind, item in seq:
        if kind == "L":
            chain.label(_label(item))
            run.label(_label(item))
            continue
        ev = Event(**item)
        want = chain.process(ev)
        got = run.event(ev)
        assert (got is None) == (want is None), ev
        if got is None:
            continue
        _, vals, late, _ = unpack(got)
        names = NAMES[len(NAMES) - len(vals):]  # the stages' values follow the event's own features
        assert (vals, late) == (want[0], want[1]), (ev.event_id, [(nm, g, w) for nm, g, w in zip(names, vals, want[0])
                                                                  if g != w])
        assert run.graph_keys() == chain.graph_keys(), ev
        fraud_seen += vals[share - (len(NAMES) - len(vals))] > 0
        n += 1
        if not ev.event_id.startswith("again-"):
            before = dict(run.graph_keys())
    assert n == len(events) + len(again) and fraud_seen > 20, (n, fraud_seen)
    fields = {"ip": "ip", "device": "device_id", "payment": "payment_ref", "link": "user_id"}
    returning = {name: len({e[f] for e in again if e.get(f)}) for name, f in fields.items()}
    assert all(before[name] > 2 * returning[name] for name in fields), (before, returning)
    assert run.graph_keys() == chain.graph_keys() == returning, (run.graph_keys(), returning)


def test_graph_label_store_goes_by_its_wall_clock_ttl():
    """A members stage's two label stores (the window labels, the graph labels) share one pending
    processing-time timer per key: each store goes once its own TTL after the key's last label has passed
    (the graph store's at least the graph's label horizon plus a day; the ip's window labels much sooner),
    never before, and then no timer remains."""
    from pyflink.datastream.time_domain import TimeDomain

    from udfs.flink import graph_label_ttl_ms, label_ttl_ms

    run = StageRunner()
    ip = "1.2.3.4"
    run.label(_label({"event_id": "e1", "user_id": "u1", "device_id": "d1", "ip": ip, "event_ts": 1_767_225_600_000,
                      "label": "fraud"}))
    k = [e.name for e in run.entities].index("ip")
    st, rt = run.stages[k], run.rts[k]
    rt.key = ip
    at = st.known.value()["at"]
    assert st.glabels.value()["at"] == at and st.glabels.value()["lab"]
    ttl = {"ip_labels": label_ttl_ms(st.step), "ip_graph_labels": graph_label_ttl_ms(st.step)}
    assert ttl["ip_labels"] < 31 * DAY <= ttl["ip_graph_labels"], ttl
    fired = 0
    while rt.ptimers:
        assert len(rt.ptimers) == 1, rt.ptimers  # one pending timer for both stores
        t, rt.key = rt.ptimers.pop()
        rt.domain = TimeDomain.PROCESSING_TIME
        list(st.on_timer(t, rt))
        fired += 1
        for name, d in ttl.items():
            assert ((name, ip) in rt.data) == (at + d > t), (name, t - at, d)
    assert not any(key == ip for _, key in rt.data) and fired == 2, (rt.data, fired)


# -- the job on a MiniCluster, against the replay (in a subprocess with the switch on) ------------------
class _Pace(_LabelPace):
    """The label test's pacer (tests/test_job_flink.py: each label batch reaches the stages after every
    earlier event was decided and before the next event), and with ``each_event`` also before every event
    until the one before it has been decided, so every stage sees the events in input order whatever
    subtasks they travel through (at parallelism 2 a shared ip's events from two users otherwise interleave
    as the subtasks run). Polls the decision count tightly, with a deadline; no fixed sleeps."""

    def __init__(self, count_file: str, rest: str, stages: tuple[str, ...], each_event: bool):
        super().__init__(count_file, rest, stages)
        self.each_event = each_event

    def _decided(self) -> int:
        try:
            return os.path.getsize(self.count_file)
        except FileNotFoundError:
            return 0

    def __call__(self, s: str) -> str:
        if self.each_event and s[0] == "E" and self.prev == "E":
            deadline = time.monotonic() + 120
            while self._decided() < self.events:
                if time.monotonic() > deadline:
                    raise TimeoutError("pacer: the previous event was not decided within 120 s")
                time.sleep(0.0005)
        return super().__call__(s)


def run_job(out: Path, runtime: str, parallelism: int, n: int) -> None:
    """The subprocess's part (``RISKSTREAM_GRAPH_FEATURES=1``): the job over ring traffic with its labels,
    the decisions and dead letters to ``out/job``, the replay's features to ``out/features.jsonl``, timings to
    ``out/run.json``. The decide stage runs the default model, which follows the switch (the shipped graph
    model: it refuses a model of the other spec)."""
    from pipelines import decision_job
    from riskstream.config import DEFAULT_GRAPH_MODEL, JobConfig
    from riskstream.ops.procs import free_port
    from udfs.features import ENTITIES, GRAPH_FEATURES
    from udfs.replay import replay_file

    assert GRAPH_FEATURES and "link" in [e.name for e in ENTITIES]
    events, labels = ring_traffic(n)
    seq = [k + orjson.dumps(x).decode() for k, x in interleave(events, labels)]
    t0 = time.monotonic()
    # Python bundles of one element: each element's output leaves its operator before the next comes in; no
    # network buffer timeout (a record is sent at once: the paced source waits for each decision)
    cfg = JobConfig(parallelism=parallelism, checkpoint_interval_ms=500, bundle_time_ms=10, bundle_size=1,
                    arrow_batch_size=1, buffer_timeout_ms=0, stage_runtime=runtime, rest_port=free_port())
    assert cfg.model_path == Path(DEFAULT_GRAPH_MODEL)
    env = decision_job.make_env(cfg)
    count_file = str(out / "decided")
    stages = tuple(f"{e.name}-windows" for e in ENTITIES if e.reads_labels)
    run_paced(env, cfg, seq, _Pace(count_file, f"http://127.0.0.1:{cfg.rest_port}", stages, parallelism > 1),
              out / "job", "riskstream-graph-job-test")
    t_job = time.monotonic() - t0
    (out / "events.jsonl").write_bytes(b"\n".join(orjson.dumps(e) for e in events) + b"\n")
    (out / "labels.jsonl").write_bytes(b"\n".join(orjson.dumps({**b, "arrival_ts": a}) for a, b in labels) + b"\n")
    stats = replay_file(out / "events.jsonl", out / "features.jsonl", labels_path=out / "labels.jsonl")
    (out / "run.json").write_bytes(orjson.dumps({"job_s": t_job, "labels": sum(1 for x in seq if x[0] == "L"),
                                                 "events": len(events),
                                                 "labels_applied": stats["labels_applied"]}))


JOB_EVENTS = 4000


@pytest.mark.flink
# parallelism 1 is long (the default run keeps 2, the case where subtasks could reorder a key's events; the JVM
# stages at 1 are held to Chain value for value in tests/test_jvm_windows.py, the Python ones in-process above)
@pytest.mark.parametrize("runtime,parallelism", [("python", 2), ("jvm", 2), pytest.param("python", 1, marks=pytest.mark.long),
                                                 pytest.param("jvm", 1, marks=pytest.mark.long)])
def test_graph_features_in_the_job_equal_the_replay(runtime, parallelism, tmp_path):
    """Two weeks of ring traffic, fraud labels arriving 1-14 days late in daily batches (some corrected by a
    legit label) on the job's labels input, against ``replay_file`` with the same labels at their arrival: a
    decision per event, and every feature of every event equal to the replay's, the graph features among
    them (the pacer fixes the arrival order at every stage, at parallelism 2 too)."""
    from pipelines.decision_job import GRAPH_RUNTIMES

    if runtime not in GRAPH_RUNTIMES:
        pytest.skip(f"the {runtime} stages do not compute the graph features yet (GRAPH_RUNTIMES={GRAPH_RUNTIMES})")
    env = {**os.environ, "RISKSTREAM_GRAPH_FEATURES": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "tests.test_graph_job", str(tmp_path), runtime, str(parallelism),
                           str(JOB_EVENTS)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    run = orjson.loads((tmp_path / "run.json").read_bytes())
    assert run["labels_applied"] == run["labels"] > 50
    got, dead = {}, []
    for f in sorted((tmp_path / "job").rglob("*")):
        if f.is_file() and not f.name.startswith("."):
            for line in f.read_bytes().splitlines():
                rec = orjson.loads(line)
                if "decision_id" in rec:
                    assert rec["event_id"] not in got, rec["event_id"]
                    got[rec["event_id"]] = rec["features"]
                else:
                    dead.append(rec)
    want = {}
    for line in (tmp_path / "features.jsonl").read_bytes().splitlines():
        row = orjson.loads(line)
        want[row["event_id"]] = {n: row[n] for n in NAMES}
    # every input accounted for: a decision per event id, nothing dead-lettered
    assert not dead, dead[:3]
    assert set(got) == set(want) and len(want) == run["events"]
    check_equal(got, want)


def check_equal(got: dict, want: dict) -> None:
    """Every feature of every event equal (the graph features named first when they differ), and the graph
    features exercised: fraud two hops away, groups, shared entities."""
    for eid, w in want.items():
        g = got[eid]
        diff = {n: (g.get(n), w[n]) for n in GRAPH_NAMES if g.get(n) != w[n]}
        assert not diff, (eid, diff)
        assert g == w, (eid, {n: (g.get(n), w[n]) for n in w if g.get(n) != w[n]})
    for name in GRAPH_NAMES:
        assert sum(1 for w in want.values() if w[name] > 0) > 20, name


if __name__ == "__main__":  # the job test's subprocess: out_dir runtime parallelism events
    a = sys.argv[1:]
    run_job(Path(a[0]), a[1], int(a[2]), int(a[3]))


@pytest.mark.flink
def test_plan_with_graph_features_has_the_link_stage():
    """The job's plan test (tests/test_job_flink.py) with the switch on, in a subprocess: one keyed stage per
    entity of the graph spec, ``link-windows`` (uid ``link-windows``) after ``payment-windows``."""
    env = {**os.environ, "RISKSTREAM_GRAPH_FEATURES": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "tests/test_job_flink.py::test_plan_builds_without_broker_with_stable_uids[python]",
                           "-m", "flink"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "1 passed" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-2000:]
    probe = subprocess.run([sys.executable, "-c",
                            "from udfs.features import ENTITIES; print([e.name for e in ENTITIES])"],
                           cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert probe.stdout.strip() == "['user', 'ip', 'device', 'payment', 'link']"
