"""The walk-through of docs/models.md end to end on the shipped sample (models/samples/payments.csv and its
mapping): replay with the mapping, train with periods and a gap, score; each output checked against an
independent computation (the generator's own events, brute-force metrics). No JVM."""

from __future__ import annotations

import csv
import itertools
from pathlib import Path

import numpy as np
import orjson
import pytest

from models.samples import build_payments
from riskstream.cli import main
from riskstream.generator import TrafficGenerator
from udfs.events import Event
from udfs.features import FEATURE_NAMES
from udfs.labels import Label
from udfs.replay import replay

SAMPLE = Path(__file__).resolve().parent.parent / "models" / "samples"
CSV, MAPPING = SAMPLE / "payments.csv", SAMPLE / "payments.mapping.toml"
DAY = 86_400_000
TEST_FROM = 1_769_040_000_000  # 2026-01-22T00:00:00Z = --train-until 2026-01-15 + --gap 7d
K = 5


def _read_csv(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_the_shipped_sample_is_what_its_builder_writes():
    rows = build_payments.rows()
    got = _read_csv(CSV)
    assert len(got) == len(rows) == build_payments.EVENTS
    assert got == [{c: r[c] for c in build_payments.COLUMNS} for r in rows]


@pytest.fixture(scope="module")
def walk(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    mp = pytest.MonkeyPatch()
    mp.setenv("RISKSTREAM_HOME", str(home))
    try:
        out = home / "work"
        out.mkdir()
        assert main(["replay", "--input", str(CSV), "--mapping", str(MAPPING), "--output", str(out / "f.jsonl")]) == 0
        assert main(["train", "--events", str(CSV), "--mapping", str(MAPPING), "--version", "sample_v1",
                     "--train-until", "2026-01-15", "--gap", "7d", "--top-k", str(K), "--max-iter", "30"]) == 0
        model = home / "models" / "sample_v1" / "sample_v1.onnx"
        assert main(["score", "--input", str(CSV), "--mapping", str(MAPPING), "--model", str(model),
                     "--output", str(out / "s.csv")]) == 0
        yield home, out
    finally:
        mp.undo()


def test_replay_with_the_mapping_equals_the_generators_own_events(walk):
    _, out = walk
    gen = TrafficGenerator(seed=build_payments.SEED, sim_rate=build_payments.EVENTS / (build_payments.DAYS * 86_400))
    recs = sorted(gen.generate(build_payments.EVENTS), key=lambda r: r.event["ts"])
    events = [Event(**r.event) for r in recs]
    # the mapping's label column feeds the label features too: each fraud label 7 days after its event
    # (udfs.labels.label_arrival without --label-delay), as train feeds them
    labels = sorted(((ev.ts + 7 * DAY, Label.of_event(ev, "fraud")) for ev, r in zip(events, recs)
                     if r.label.get("fraud")), key=lambda x: x[0])
    want = [(ev.ts, vec) for ev, vec, _ in replay(events, labels=labels)]
    got = [orjson.loads(x) for x in (out / "f.jsonl").read_bytes().splitlines()]
    assert [(g["ts"], [g[n] for n in FEATURE_NAMES]) for g in got] == want
    labels = {r["tx_id"]: (int(r["is_fraud"]), r["fraud_type"] or "normal") for r in _read_csv(CSV)}
    assert all((g["label"], g["scenario"]) == labels[g["event_id"]] for g in got)
    assert not (out / "f.jsonl.rejects.jsonl").exists()


def _auc(s, y):
    pos = [a for a, t in zip(s, y) if t]
    neg = [a for a, t in zip(s, y) if not t]
    return sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in pos for b in neg) / (len(pos) * len(neg))


def _ap(s, y):
    total, ap, tp, seen, prev = sum(y), 0.0, 0, 0, 0.0
    for _, grp in itertools.groupby(sorted(zip(s, y), key=lambda r: -r[0]), key=lambda r: r[0]):
        grp = list(grp)
        tp += sum(t for _, t in grp)
        seen += len(grp)
        ap += (tp / total - prev) * tp / seen
        prev = tp / total
    return ap


def test_train_with_periods_and_a_gap_writes_scores_the_card_agrees_with(walk):
    home, _ = walk
    d = home / "models" / "sample_v1"
    assert sorted(p.name for p in d.iterdir()) == ["sample_v1.json", "sample_v1.md", "sample_v1.onnx",
                                                   "sample_v1.test_scores.csv"]
    spec = orjson.loads((d / "sample_v1.json").read_bytes())
    m, sp = spec["metrics"], spec["split"]
    src = _read_csv(CSV)
    rows = _read_csv(d / "sample_v1.test_scores.csv")
    # the test rows are exactly the sample's rows from the test period's start on, in time order
    from udfs.ingest import to_epoch_ms

    want_ids = [r["tx_id"] for r in src if to_epoch_ms(r["tx_time"], "datetime", "Europe/Paris") >= TEST_FROM]
    assert [r["event_id"] for r in rows] == want_ids
    assert sp["method"] == "periods" and sp["gap_ms"] == 7 * DAY and sp["test_from"] == TEST_FROM
    n_train = sum(1 for r in src if to_epoch_ms(r["tx_time"], "datetime", "Europe/Paris") < TEST_FROM - 7 * DAY)
    assert sp["train_rows"] == n_train and sp["gap_rows"] == len(src) - n_train - len(rows)
    s = [float(r["score"]) for r in rows]
    y = [int(r["label"]) for r in rows]
    assert m["roc_auc"] == pytest.approx(_auc(s, y), abs=2e-4)
    assert m["average_precision"] == pytest.approx(_ap(s, y), abs=2e-4)
    # precision top-k per day, users, by hand: max score per user per day, top k, fraud users / k, found removed
    found, per_day = set(), []
    for day in sorted({int(r["ts"]) // DAY for r in rows}):
        best: dict = {}
        for r in rows:
            if int(r["ts"]) // DAY == day and r["user_id"] not in found:
                sc, fr = best.get(r["user_id"], (-1.0, 0))
                best[r["user_id"]] = (max(sc, float(r["score"])), max(fr, int(r["label"])))
        # ties at the k-th score are taken at random: count the tied users' fraud at its expected share
        ranked = sorted(best.items(), key=lambda kv: -kv[1][0])
        cut = ranked[min(K, len(ranked)) - 1][1][0]
        above = [(u, v) for u, v in ranked if v[0] > cut]
        tied = [(u, v) for u, v in ranked if v[0] == cut]
        need = min(K, len(ranked)) - len(above)
        per_day.append((sum(v[1] for _, v in above) + need * sum(v[1] for _, v in tied) / len(tied)) / K)
        found |= {u for u, v in above + (tied if need == len(tied) else []) if v[1]}
    pk = m["precision_at_k_per_day"]["user"]
    assert pk["k"] == K and pk["days"] == len(per_day) == 7
    assert pk["mean"] == pytest.approx(np.mean(per_day), abs=1e-4)
    assert set(m["precision_at_k_per_day"]) == {"user", "payment_ref"}
    card = " ".join((d / "sample_v1.md").read_text(encoding="utf-8").split())
    assert "gap of 7 days" in card and f"Precision top-{K} per day" in card and "read through a mapping" in card
    # decisions: the policy's score bands (rules can only escalate)
    for r in rows:
        sc = float(r["score"])
        assert r["decision"] == ("block" if sc >= 0.9 else "review" if sc >= 0.5 else r["decision"])


def test_score_gives_every_event_the_models_score_and_decision(walk):
    home, out = walk
    got = _read_csv(out / "s.csv")
    assert len(got) == build_payments.EVENTS and set(got[0]) >= {"event_id", "ts", "user_id", "device_id", "score",
                                                                    "decision", "reasons", "label"}
    test = {r["event_id"]: r for r in _read_csv(home / "models" / "sample_v1" / "sample_v1.test_scores.csv")}
    same = [(g["score"], g["decision"], g["reasons"]) == (test[g["event_id"]]["score"], test[g["event_id"]]["decision"],
                                                          test[g["event_id"]]["reasons"])
            for g in got if g["event_id"] in test]
    assert len(same) == len(test) and all(same)
    assert {g["model_version"] for g in got} == {"sample_v1"}


def test_one_labels_file_with_a_label_delay_and_constants_on_every_command(tmp_path, monkeypatch):
    """The own-data path without traps: the sample without its currency column (--const currency=EUR) and
    without its label column, one labels file (integer ids, `fraud`) read by replay, train and score with
    --label-delay 7d, and the report reading score's CSV. The training spelling of a label gives the same
    features as the labels topic's spelling with its keys and arrival_ts = event time + 7 days."""
    monkeypatch.setenv("RISKSTREAM_HOME", str(tmp_path / "home"))
    rows = _read_csv(CSV)
    data = tmp_path / "payments.csv"
    cols = [c for c in rows[0] if c not in ("currency", "is_fraud", "fraud_type")]
    with open(data, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, cols)
        w.writeheader()
        w.writerows({c: r[c] for c in cols} for r in rows)
    mapping = tmp_path / "m.toml"
    text = MAPPING.read_text()
    mapping.write_text(text[:text.index("[label]")].replace('currency = "currency"\n', ""))
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(orjson.dumps({"event_id": int(r["tx_id"]), "fraud": r["is_fraud"] == "1"}).decode() + "\n"
                              for r in rows if r["is_fraud"] != ""))
    flags = ["--mapping", str(mapping), "--const", "currency=EUR", "--labels", str(labels), "--label-delay", "7d"]
    assert main(["replay", "--input", str(data), *flags, "--output", str(tmp_path / "f.jsonl")]) == 0

    # the same labels in the topic's spelling, keys from the replayed events, arriving 7 days after them
    feats = [orjson.loads(x) for x in open(tmp_path / "f.jsonl", "rb")]
    src = {r["tx_id"]: r for r in rows}
    topic = tmp_path / "topic-labels.jsonl"
    topic.write_text("".join(orjson.dumps({
        "event_id": e["event_id"], "user_id": e["user_id"], "device_id": e["device_id"], "event_ts": e["ts"],
        "label": "fraud", "ip": src[e["event_id"]]["ip_address"], "payment_ref": src[e["event_id"]]["card_hash"] or None,
        "arrival_ts": e["ts"] + 7 * DAY}).decode() + "\n" for e in feats if src[e["event_id"]]["is_fraud"] == "1"))
    assert main(["replay", "--input", str(data), "--mapping", str(mapping), "--const", "currency=EUR",
                 "--labels", str(topic), "--output", str(tmp_path / "g.jsonl")]) == 0
    again = [orjson.loads(x) for x in open(tmp_path / "g.jsonl", "rb")]
    label_feats = [n for n in FEATURE_NAMES if "fraud" in n]
    assert [[e[n] for n in label_feats] for e in feats] == [[e[n] for n in label_feats] for e in again]
    assert sum(any(e[n] > 0 for n in label_feats) for e in feats) > 10  # the labels did reach the features

    assert main(["train", "--events", str(data), *flags, "--version", "own_v1", "--train-until", "2026-01-15",
                 "--gap", "7d", "--top-k", str(K), "--max-iter", "30"]) == 0
    model = tmp_path / "home" / "models" / "own_v1" / "own_v1.onnx"
    assert main(["score", "--input", str(data), *flags, "--model", str(model), "--output", str(tmp_path / "s.csv")]) == 0
    assert main(["report", "--decisions", str(tmp_path / "s.csv"), "--out", str(tmp_path / "r.html")]) == 0
    scored = _read_csv(tmp_path / "s.csv")
    assert len(scored) == len(feats) == len(rows)


@pytest.mark.parametrize("delay", [None, "3d", "none"])
def test_train_and_replay_feed_the_label_features_by_one_rule(tmp_path, delay):
    """One labels file, half its labels with an arrival_ts (1 day after the event) and half without: replay and
    train give every event the same label features, whatever --label-delay says (udfs.labels.label_arrival).
    The expected arrival of each label is computed here, by hand, and checked through a third path: the
    labels topic's spelling with that arrival_ts."""
    from models.train import file_dataset
    from udfs.ingest import Mapping, parse_label_delay
    from udfs.replay import replay_file

    rows = _read_csv(CSV)
    mapping_path = tmp_path / "m.toml"
    text = MAPPING.read_text()
    mapping_path.write_text(text[:text.index("[label]")])
    labelled = [r for r in rows if r["is_fraud"] != ""]
    replay_file(CSV, tmp_path / "plain.jsonl", mapping=Mapping.load(mapping_path))  # each event's ts in epoch ms
    ts = {e["event_id"]: e["ts"] for e in map(orjson.loads, open(tmp_path / "plain.jsonl", "rb"))}
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(orjson.dumps({"event_id": int(r["tx_id"]), "fraud": r["is_fraud"] == "1",
                                            **({"arrival_ts": ts[r["tx_id"]] + DAY} if i % 2 else {})}).decode() + "\n"
                              for i, r in enumerate(labelled)))
    ms = parse_label_delay(delay)
    assert replay_file(CSV, tmp_path / "f.jsonl", mapping=Mapping.load(mapping_path), labels_path=labels,
                       label_delay_ms=ms)["verdict"] is None
    feats = {e["event_id"]: e for e in map(orjson.loads, open(tmp_path / "f.jsonl", "rb"))}
    data = file_dataset(CSV, labels, mapping=Mapping.load(mapping_path), label_delay=ms)
    label_feats = [i for i, n in enumerate(FEATURE_NAMES) if "fraud" in n]
    assert len(data.event_ids) == len(labelled) == len(feats)
    for eid, x in zip(data.event_ids, data.x):
        assert [float(x[i]) for i in label_feats] == pytest.approx([feats[eid][FEATURE_NAMES[i]] for i in label_feats])

    # the third path: each fraud label in the topic's spelling, arriving when the rule says
    src = {r["tx_id"]: r for r in rows}
    topic = tmp_path / "topic.jsonl"
    with open(topic, "w") as f:
        for i, r in enumerate(labelled):
            if r["is_fraud"] != "1" or delay == "none":
                continue
            e = feats[r["tx_id"]]
            arrival = e["ts"] + (3 * DAY if delay == "3d" else DAY if i % 2 else 7 * DAY)
            f.write(orjson.dumps({"event_id": e["event_id"], "user_id": e["user_id"], "device_id": e["device_id"],
                                  "event_ts": e["ts"], "label": "fraud", "ip": src[r["tx_id"]]["ip_address"],
                                  "payment_ref": src[r["tx_id"]]["card_hash"] or None,
                                  "arrival_ts": arrival}).decode() + "\n")
    replay_file(CSV, tmp_path / "g.jsonl", mapping=Mapping.load(mapping_path), labels_path=topic)
    again = {e["event_id"]: e for e in map(orjson.loads, open(tmp_path / "g.jsonl", "rb"))}
    names = [FEATURE_NAMES[i] for i in label_feats]
    assert all([feats[k][n] for n in names] == [again[k][n] for n in names] for k in feats)
    seen = sum(any(e[n] > 0 for n in names) for e in feats.values())
    assert (seen == 0) if delay == "none" else (seen > 10)
