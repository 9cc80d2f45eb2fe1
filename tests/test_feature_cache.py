"""The feature cache (udfs.replay.FeatureCache): a second replay, score or train over the same file, labels,
settings, spec and code reads the vectors instead of replaying, and gives byte-identical outputs; any change
to what the vectors depend on replays again. The reference is the uncached run."""

from __future__ import annotations

import orjson
import pytest

from riskstream.generator import TrafficGenerator
from udfs.replay import FeatureCache, replay_file, score_file

DAY = 86_400_000


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cache")
    recs = [r for r in TrafficGenerator(seed=21, bad_share=0.0, days=3).generate(900) if r.event is not None]
    events = [r.event for r in recs]
    events.insert(450, dict(events[100]))  # a duplicate event id: the job dead-letters it
    (d / "events.jsonl").write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    frauds = [r.event for r in recs if r.label.get("fraud")]
    assert len(frauds) > 5
    (d / "labels.jsonl").write_bytes(b"".join(orjson.dumps({"event_id": e["event_id"], "fraud": True}) + b"\n"
                                              for e in frauds))
    return d


def _replay(d, out, cache, **kw):
    return replay_file(d / "events.jsonl", d / out, labels_path=d / "labels.jsonl", label_delay_ms=DAY,
                       rejects_path=d / f"{out}.rejects", cache_dir=cache, **kw)


def test_a_second_replay_reads_the_cache_and_writes_the_same_bytes(files, tmp_path):
    ref = _replay(files, "ref.jsonl", None)
    assert ref["feature_cache"] == "off" and ref["rejected"] == {"duplicate_event_id": 1}
    first = _replay(files, "a.jsonl", tmp_path)
    second = _replay(files, "b.jsonl", tmp_path)
    assert (first["feature_cache"], second["feature_cache"]) == ("stored", "hit")
    for out in ("a.jsonl", "b.jsonl"):
        assert (files / out).read_bytes() == (files / "ref.jsonl").read_bytes()
        assert (files / f"{out}.rejects").read_bytes() == (files / "ref.jsonl.rejects").read_bytes()
    strip = lambda st: {k: v for k, v in st.items() if k not in ("feature_cache", "rejects_file")}
    assert strip(first) == strip(second) == strip(ref)
    assert len(list(tmp_path.glob("*.npz"))) == 1


def test_score_reads_what_replay_stored(files, tmp_path):
    from riskstream import paths

    model = paths.models_dir() / "risk_gbdt_v1.onnx"
    _replay(files, "r.jsonl", tmp_path)
    kw = dict(labels_path=files / "labels.jsonl", label_delay_ms=DAY)
    ref = score_file(files / "events.jsonl", files / "s0.csv", model, **kw)
    hit = score_file(files / "events.jsonl", files / "s1.csv", model, cache_dir=tmp_path, **kw)
    assert hit["feature_cache"] == "hit"
    assert (files / "s0.csv").read_bytes() == (files / "s1.csv").read_bytes()


@pytest.mark.parametrize("change", ["labels", "delay", "input", "settings", "code", "corrupt"])
def test_what_the_vectors_depend_on_makes_a_new_entry(files, tmp_path, monkeypatch, change):
    assert _replay(files, "a.jsonl", tmp_path)["feature_cache"] == "stored"
    d = files
    kw: dict = {}
    if change in ("labels", "input"):
        d = tmp_path / "copy"
        d.mkdir()
        for f in ("events.jsonl", "labels.jsonl"):
            (d / f).write_bytes((files / f).read_bytes())
        name = "labels.jsonl" if change == "labels" else "events.jsonl"
        lines = (d / name).read_bytes().splitlines(keepends=True)
        (d / name).write_bytes(b"".join(lines[:-1]))  # one label, or one event, fewer
    elif change == "settings":
        kw["allowed_lateness_ms"] = 30_000
    elif change == "code":
        monkeypatch.setattr(FeatureCache, "_code_digest", staticmethod(lambda: "another core"))
    elif change == "corrupt":
        (entry,) = tmp_path.glob("*.npz")
        entry.write_bytes(b"not an npz")
    if change == "delay":
        res = replay_file(d / "events.jsonl", d / "b.jsonl", labels_path=d / "labels.jsonl", label_delay_ms=2 * DAY,
                          cache_dir=tmp_path)
    else:
        res = _replay(d, "b.jsonl", tmp_path, **kw)
    assert res["feature_cache"] == "stored"
    ref = replay_file(d / "events.jsonl", d / "c.jsonl", labels_path=d / "labels.jsonl",
                      label_delay_ms=2 * DAY if change == "delay" else DAY, **kw)
    assert ref["feature_cache"] == "off"
    assert (d / "b.jsonl").read_bytes() == (d / "c.jsonl").read_bytes()
