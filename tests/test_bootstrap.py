"""Warm start (`riskstream bootstrap`): the state built from a history equals the state the stages hold after
processing that history. Checked on what matters, the features of the events that follow: the JVM stages
restored from the bootstrapped savepoint and fed the rest of the traffic give exactly the values the Python
reference (``udfs.replay.FeatureReplay``) computes over history + rest, labels included."""

from __future__ import annotations

import random

import orjson
import pytest

from riskstream.config import JobConfig
from riskstream.generator import TrafficGenerator
from udfs.events import Event
from udfs.replay import FeatureReplay
from udfs.windows import event_values

pytestmark = pytest.mark.flink

LATENESS, DEDUP = 60_000, 600_000  # the stages' settings in tests/test_jvm_windows.py's _run


def _traffic(n: int, seed: int):
    """(history, rest, labels): generated traffic over 3 days with its slow scenarios, cut at 75 %, plus labels
    for a share of the history's events arriving 1 h to 2 days after them, and only those that arrive before
    the history ends (later ones would reach the live job on the labels topic)."""
    events = [Event(**r.event) for r in TrafficGenerator(seed=seed, bad_share=0.0, days=3).generate(n)
              if r.event is not None]
    frauds = {r.event["event_id"] for r in TrafficGenerator(seed=seed, bad_share=0.0, days=3).generate(n)
              if r.event is not None and r.label.get("fraud")}
    cut = len(events) * 3 // 4
    history, rest = events[:cut], events[cut:]
    end = max(e.ts for e in history)
    rnd = random.Random(seed)
    labels = []
    for ev in history:
        if ev.event_id in frauds or rnd.random() < 0.03:
            arrival = ev.ts + rnd.randrange(3_600_000, 2 * 86_400_000)
            if arrival <= end:
                labels.append({"event_id": ev.event_id, "user_id": ev.user_id, "device_id": ev.device_id,
                               "event_ts": ev.ts, "label": "fraud" if ev.event_id in frauds else "legit",
                               "ip": ev.ip, "payment_ref": ev.payment_ref, "arrival_ts": arrival})
    # analysts overturn some fraud labels later: a legit label for the same (user, event) removes it
    for x in [x for x in labels if x["label"] == "fraud"][::3]:
        if x["arrival_ts"] + 3_600_000 <= end:
            labels.append({**x, "label": "legit", "arrival_ts": x["arrival_ts"] + 3_600_000})
    assert len(labels) > 20 and any(x["label"] == "fraud" for x in labels)
    assert any(x["label"] == "legit" and x["event_id"] in frauds for x in labels)
    # and some overturned while the live job runs: the live stage must find the bootstrapped entry
    rest_start, rest_end = rest[0].ts, rest[-1].ts
    late = [{**x, "label": "legit", "arrival_ts": rnd.randrange(rest_start, rest_end)}
            for x in labels if x["label"] == "fraud"][1::3]
    assert late
    return history, rest, labels, sorted(late, key=lambda x: x["arrival_ts"])


def replayed(history, rest, labels_path) -> tuple[dict, FeatureReplay]:
    """The reference: the Python chain over history + rest, the labels folded at arrival; per event of
    ``rest`` its entity features (the event's own values cut off) and its late flag."""
    from udfs.replay import read_labels

    replay = FeatureReplay(LATENESS, DEDUP, labels=read_labels(labels_path))
    want = {}
    for ev in history + rest:
        got = replay.step(ev)
        if ev in rest and got is not None:
            want[ev.event_id] = (got[0][len(event_values(ev)):], got[1])
    return want, replay


def live_records(rest, late) -> list:
    """What the live stages read: the events of ``rest`` with the ``late`` labels (topic spelling with
    ``arrival_ts``, in arrival order) before the first event at or after their arrival, as the replay folds
    them."""
    records, pending = [], list(late)
    for ev in rest:
        while pending and pending[0]["arrival_ts"] <= ev.ts:
            x = pending.pop(0)
            records.append(("label", (x["event_id"], x["user_id"], x["device_id"], x["event_ts"], x["label"],
                                      x["ip"], x["payment_ref"])))
        records.append(("event", ev))
    return records


def assert_stages_match(got: dict, want: dict) -> None:
    """Every entity stage's output (``tests.test_jvm_windows._run_branches``) equals the reference's slice
    of the features and its late flag, for every event of ``want``."""
    from udfs.features import ENTITIES, features_for

    at = 0
    for e in ENTITIES:
        n = len(features_for(e.name))
        mine = {eid: v[:2] for eid, v in got[e.name].items()}
        assert set(mine) == set(want), e.name
        bad = [eid for eid in want if (mine[eid][0], mine[eid][1]) != (want[eid][0][at:at + n], want[eid][1])]
        assert not bad, (e.name, len(bad), bad[:3])
        at += n


def test_bootstrapped_state_equals_the_replayed_state(tmp_path):
    from tests.jvm_jar import build_jar
    from tests.test_jvm_windows import _run_branches
    from udfs.features import ENTITIES, features_for

    from riskstream.ops.bootstrap import bootstrap

    history, rest, labels, late = _traffic(4000, seed=5)
    hist_file, label_file = tmp_path / "history.jsonl", tmp_path / "labels.jsonl"
    hist_file.write_bytes(b"".join(orjson.dumps(e.to_dict()) + b"\n" for e in history))
    label_file.write_bytes(b"".join(orjson.dumps({k: v for k, v in x.items() if v is not None}) + b"\n"
                                    for x in labels))
    cfg = JobConfig(job_name="bootstrap-test", allowed_lateness_ms=LATENESS, dedup_horizon_ms=DEDUP)
    res = bootstrap(cfg, hist_file, labels_path=label_file, output=tmp_path / "savepoint")
    assert res.events == len(history) and res.labels == len(labels) and res.rejected == 0
    assert res.keys["user"] == len({e.user_id for e in history})
    assert (res.path / "_metadata").is_file()

    # the reference: the Python chain over history + rest, the labels (the late ones too) folded at arrival
    all_labels = tmp_path / "all-labels.jsonl"
    all_labels.write_bytes(b"".join(orjson.dumps({k: v for k, v in x.items() if v is not None}) + b"\n"
                                    for x in labels + late))
    want, replay = replayed(history, rest, all_labels)
    assert replay.labels_applied == len(labels) + len(late)
    records = live_records(rest, late)

    jar = build_jar()
    sizes = [len(features_for(e.name)) for e in ENTITIES]
    for parallelism in (1, 3):  # written with 128 key groups at parallelism 2: restored at 1 and at 3
        out = tmp_path / f"p{parallelism}"
        out.mkdir()
        # each entity's stage on its own branch, every label reaching each of them, as in the job
        got = _run_branches(jar, records, parallelism, out,
                            extra={"execution.state-recovery.path": res.path.as_uri()})
        at = 0
        for e, n in zip(ENTITIES, sizes):
            mine = {eid: v[:2] for eid, v in got[e.name].items()}
            assert set(mine) == set(want), e.name
            if parallelism == 1 or e.name == "user":  # at 3, a shared key's events may interleave otherwise
                bad = {eid: [names for names, a, b in zip([f.name for f in features_for(e.name)], mine[eid][0],
                                                          want[eid][0][at:at + n]) if a != b]
                       for eid in want if (mine[eid][0], mine[eid][1]) != (want[eid][0][at:at + n], want[eid][1])}
                assert not bad, (e.name, parallelism, dict(list(bad.items())[:3]))
            at += n
    # the savepoint restores into the job's stages and nothing else: a key that only the history saw is there
    assert ENTITIES[0].name == "user"


@pytest.mark.long  # about a minute: the fold, the savepoint, one restored run
def test_a_bootstrapped_savepoint_restores_on_rocksdb_with_the_changelog(tmp_path):
    """The cluster's production default (RocksDB with the changelog over it) restores a savepoint only in CLAIM
    mode: a bootstrapped savepoint is restored from a private copy (``lineage.restore_mode``, as `run
    --restore-from` and `submit --from-savepoint` do), the stages give exactly the replay's features, and the
    savepoint itself is left as it was written."""
    from tests.jvm_jar import build_jar
    from tests.test_jvm_windows import _run_branches

    from riskstream.ops import lineage
    from riskstream.ops.bootstrap import bootstrap

    history, rest, labels, late = _traffic(1500, seed=9)
    hist_file, label_file = tmp_path / "history.jsonl", tmp_path / "labels.jsonl"
    hist_file.write_bytes(b"".join(orjson.dumps(e.to_dict()) + b"\n" for e in history))
    label_file.write_bytes(b"".join(orjson.dumps({k: v for k, v in x.items() if v is not None}) + b"\n"
                                    for x in labels))
    cfg = JobConfig(job_name="bootstrap-changelog-test", allowed_lateness_ms=LATENESS, dedup_horizon_ms=DEDUP)
    res = bootstrap(cfg, hist_file, labels_path=label_file, output=tmp_path / "savepoint")
    written = {f: f.stat().st_size for f in res.path.rglob("*")}
    all_labels = tmp_path / "all-labels.jsonl"
    all_labels.write_bytes(b"".join(orjson.dumps({k: v for k, v in x.items() if v is not None}) + b"\n"
                                    for x in labels + late))
    want, _ = replayed(history, rest, all_labels)

    snap = lineage.read_snapshot(res.path, savepoint=True)
    path, mode, note = lineage.restore_mode(cfg.job_name, snap, changelog=True, home=tmp_path / "home")
    assert mode == "CLAIM" and "private copy" in note
    out = tmp_path / "restored"
    out.mkdir()
    got = _run_branches(build_jar(), live_records(rest, late), 1, out, extra={
        "execution.state-recovery.path": path, "execution.state-recovery.claim-mode": "CLAIM",
        "state.backend.type": "rocksdb", "state.changelog.enabled": "true",
        "state.changelog.storage": "filesystem", "state.changelog.dstl.dfs.base-path": (tmp_path / "log").as_uri()})
    assert_stages_match(got, want)
    assert {f: f.stat().st_size for f in res.path.rglob("*")} == written  # the savepoint itself: untouched


def test_the_history_takes_labels_in_either_spelling(tmp_path):
    """`bootstrap --labels` reads the labels file train, replay and score read: a label in the training spelling
    (event_id, fraud; keys and time from its event) folds as the same label in the topic's spelling, and
    arrives by the one rule (``udfs.labels.label_arrival``: here --label-delay 1d)."""
    from riskstream.ops.bootstrap import write_history

    history, _, _, _ = _traffic(600, 11)
    events = tmp_path / "events.jsonl"
    events.write_text("".join(orjson.dumps(e._asdict()).decode() + "\n" for e in history))
    picked = history[::37]
    train = tmp_path / "train.jsonl"
    train.write_text("".join(orjson.dumps({"event_id": e.event_id, "fraud": i % 2 == 0}).decode() + "\n"
                             for i, e in enumerate(picked)))
    topic = tmp_path / "topic.jsonl"
    topic.write_text("".join(orjson.dumps({
        "event_id": e.event_id, "user_id": e.user_id, "device_id": e.device_id, "event_ts": e.ts,
        "label": "fraud" if i % 2 == 0 else "legit", "ip": e.ip, "payment_ref": e.payment_ref,
        "arrival_ts": e.ts + 86_400_000}).decode() + "\n" for i, e in enumerate(picked)))
    a = write_history(events, tmp_path / "a.jsonl", labels_path=train, label_delay_ms=86_400_000)
    b = write_history(events, tmp_path / "b.jsonl", labels_path=topic)
    assert a == b and a["labels"] + a["labels_later"] == len(picked) and a["labels"] > 3
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()


@pytest.mark.long
def test_a_history_of_100k_users_bootstraps_and_restores(tmp_path):
    """The shape that hung (`riskstream bootstrap` of 100k held users, 1 or 2 events each with their own device,
    ip and card: about 20 MB of state per entity, where the adaptive batch scheduler cut a keyed subtask's
    input by data volume across KeyGroupRangeAssignment's ranges) is written, and restored: events of 3,000 of
    those users afterwards, a few of them labelled in the history, get the features the Python reference
    computes over the whole history and them, in every entity."""
    from benchmarks.bench import held_history
    from tests.jvm_jar import build_jar
    from tests.test_jvm_windows import _run_branches
    from udfs.features import features_for
    from udfs.replay import read_labels

    from riskstream.ops.bootstrap import bootstrap

    users, end = 100_000, 1_767_225_600_000  # the history ends 2026-01-01: months before the wall clock
    hist_file = tmp_path / "history.jsonl"
    held_history(hist_file, users, end)
    history = [Event(**orjson.loads(line)) for line in hist_file.read_bytes().splitlines()]
    rnd = random.Random(7)
    labels = [{"event_id": e.event_id, "user_id": e.user_id, "device_id": e.device_id, "event_ts": e.ts,
               "label": "fraud", "ip": e.ip, "payment_ref": e.payment_ref, "arrival_ts": e.ts + 600_000}
              for e in history if e.payment_ref and rnd.random() < 0.004 and e.ts + 600_000 <= history[-1].ts]
    assert len(labels) > 50
    label_file = tmp_path / "labels.jsonl"
    label_file.write_bytes(b"".join(orjson.dumps({k: v for k, v in x.items() if v is not None}) + b"\n"
                                    for x in labels))
    cfg = JobConfig(job_name="bootstrap-100k-test", allowed_lateness_ms=LATENESS, dedup_horizon_ms=DEDUP)
    res = bootstrap(cfg, hist_file, labels_path=label_file, output=tmp_path / "savepoint")
    assert res.events == len(history) and res.labels == len(labels)
    assert res.keys["user"] == users and res.keys["payment"] == users // 2

    # afterwards: one event of every 33rd user (spread over all key groups), on its own device, ip and card
    by_user = {}
    for e in history:
        by_user.setdefault(e.user_id, e)
    rest = []
    for i, u in enumerate(sorted(by_user)[::33]):
        e = by_user[u]
        rest.append(Event(**{**e._asdict(), "event_id": f"after-{i}", "event_type": "payment", "amount": 42.0,
                             "payment_ref": f"held-c{u.split('-u')[1]}", "ts": end + 1_000 * i}))
    replay = FeatureReplay(LATENESS, DEDUP, labels=read_labels(label_file))
    for ev in history:
        replay.step(ev)
    want = {}
    for ev in rest:
        got = replay.step(ev)
        want[ev.event_id] = (got[0][len(event_values(ev)):], got[1])
    assert replay.labels_applied == len(labels)

    out = tmp_path / "restored"
    out.mkdir()
    got = _run_branches(build_jar(), [("event", ev) for ev in rest], 2, out,
                        extra={"execution.state-recovery.path": res.path.as_uri()})
    assert_stages_match(got, want)
    # the history is in the windows: every restored user's 7-day count holds its held events too
    week = [f.name for f in features_for("user")].index("user_events_7d")
    assert all(mine[0][week] >= 2 for mine in got["user"].values())
