"""Offline replay: the job's feature computation over a list of events, in the given (arrival) order.

This is the *same* stage chain the streaming job runs per key (``udfs.chain``), with plain dicts as the
keyed stores and the job's key-expiry rule; training sets and audits come from here, so there is no
second implementation.
"""

from __future__ import annotations

import heapq
import os
from typing import Iterable, Iterator

import numpy as np

from .chain import DEFAULT_DEDUP_HORIZON_MS, DEFAULT_OUT_OF_ORDERNESS_MS, Chain
from .drift import monitor_for
from .events import DUPLICATE_EVENT_ID, OPTIONAL_FIELDS, Event
from .features import FEATURE_NAMES
from .ingest import DEFAULT_MAX_REJECT_SHARE, Input, Loaded, Mapping, load_input
from .labels import FRAUD, LEGIT, NO_LABELS, Label, label_arrival
from .windows import DEFAULT_LATENESS_MS, event_values


class FeatureReplay:
    """The job's entity stages (``udfs.chain.Chain``) over in-memory stores, returning whole vectors.

    Labels with arrival times (:meth:`add_label`, or ``labels``: ``(arrival_ts, udfs.labels.Label)`` pairs as
    ``read_labels`` returns them) reach the stages as in the job: a label is folded before
    the first event whose ``ts`` is at or after its ``arrival_ts`` (ties in the order they were added), so
    no event's features see a label that had not yet arrived."""

    def __init__(self, allowed_lateness_ms: int = DEFAULT_LATENESS_MS,
                 dedup_horizon_ms: int = DEFAULT_DEDUP_HORIZON_MS,
                 out_of_orderness_ms: int = DEFAULT_OUT_OF_ORDERNESS_MS, labels: Iterable | None = None,
                 features: tuple | None = None):
        """``features``: the feature spec (default ``features.FEATURES``; ``features.FEATURES_WITH_GRAPH``
        adds the graph features whatever the switch)."""
        self.chain = Chain(allowed_lateness_ms, dedup_horizon_ms, out_of_orderness_ms, features=features)
        self._labels: list = []
        self._seq = 0
        self.labels_applied = 0
        for arrival, label in labels or ():
            self.add_label(arrival, label)

    def add_label(self, arrival_ts: int, label: Label) -> None:
        """Schedule a label (``udfs.labels.Label``, as ``parse_label`` returns it) to arrive at ``arrival_ts``."""
        if not isinstance(label, Label):
            raise TypeError(f"a label is a udfs.labels.Label, not {type(label).__name__}")
        self._seq += 1
        heapq.heappush(self._labels, (int(arrival_ts), self._seq, label))

    def _arrive(self, ts: int) -> None:
        while self._labels and self._labels[0][0] <= ts:
            self.chain.label(heapq.heappop(self._labels)[2])
            self.labels_applied += 1

    def step(self, ev: Event) -> tuple[list[float], bool] | None:
        """Feature vector (``FEATURE_NAMES`` order) of one event and whether it was late for a key, or
        None for a duplicate event id, which the job dead-letters (``udfs.dedup``)."""
        self._arrive(ev.ts)
        res = self.chain.process(ev)
        if res is None:
            return None
        return event_values(ev) + res[0], res[1]


def replay(events: Iterable[Event], allowed_lateness_ms: int = DEFAULT_LATENESS_MS,
           dedup_horizon_ms: int = DEFAULT_DEDUP_HORIZON_MS,
           out_of_orderness_ms: int = DEFAULT_OUT_OF_ORDERNESS_MS,
           labels: Iterable | None = None, features: tuple | None = None) -> Iterator[tuple[Event, list[float], bool]]:
    """(event, features, late) per event the job would score; duplicate event ids are skipped. ``labels``:
    ``(arrival_ts, label)`` pairs (:class:`FeatureReplay`); ``features``: the spec (default FEATURES)."""
    r = FeatureReplay(allowed_lateness_ms, dedup_horizon_ms, out_of_orderness_ms, labels, features)
    for ev in events:
        res = r.step(ev)
        if res is not None:
            yield ev, res[0], res[1]


def read_events(path) -> Iterator[tuple[int, bytes | dict]]:
    """Records of a JSON-lines (``.jsonl``/``.json``) or Parquet (``.parquet``) file, in file order. A null
    optional column (extras, payment_ref) in Parquet means the field is absent."""
    from pathlib import Path

    p = Path(path)
    if p.suffix == ".parquet":
        import pyarrow.parquet as pq

        n = 0
        for batch in pq.ParquetFile(p).iter_batches(batch_size=10_000):
            for row in batch.to_pylist():
                n += 1
                yield n, {k: v for k, v in row.items() if v is not None or k not in OPTIONAL_FIELDS}
        return
    with open(p, "rb") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip(b"\r\n")
            if line:
                yield n, line


class FeatureCache:
    """Replayed feature vectors on disk, so that ``train``, ``score`` and ``replay`` over one file, one labels
    schedule and one spec replay it once (a replay costs ~0.5 ms per event; reading the input again is
    cheap). An entry is keyed by everything the vectors depend on: the input file's bytes, the mapping and
    order, the resolved label schedule, the feature settings, the spec's fingerprint and the source of the
    ``udfs`` package (any change to the core makes a new key). An entry that does not match the input it is
    read for is ignored. At most ``keep`` entries stay (the newest); writes are atomic (``os.replace``)."""

    VERSION = 1

    def __init__(self, root, keep: int = 8):
        from pathlib import Path

        self.root = Path(root)
        self.keep = keep

    @staticmethod
    def _code_digest() -> str:
        import hashlib
        from pathlib import Path

        h = hashlib.sha256()
        for f in sorted(Path(__file__).resolve().parent.glob("*.py")):
            h.update(f.name.encode())
            h.update(f.read_bytes())
        return h.hexdigest()

    def key(self, inp: Input, labels: list, settings: tuple) -> str:
        import hashlib

        import orjson

        from .features import spec_fingerprint

        h = hashlib.sha256()
        with open(inp.path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        h.update(orjson.dumps([self.VERSION, repr(inp.mapping), inp.order, list(settings), spec_fingerprint(),
                               self._code_digest()]))
        h.update(orjson.dumps([(a, lab.wire()) for a, lab in labels]))
        return h.hexdigest()[:32]

    def get(self, key: str, inp: Input):
        """(vectors, late, duplicate mask over ``inp.events``, labels applied), or None."""
        path = self.root / f"{key}.npz"
        try:
            with np.load(path, allow_pickle=False) as z:
                vecs, late, dup = z["vecs"], z["late"], z["dup"]
                names, applied = list(z["names"]), int(z["applied"])
        except (OSError, KeyError, ValueError):
            return None
        if (names != list(FEATURE_NAMES) or len(dup) != len(inp.events)
                or vecs.shape != (int((~dup).sum()), len(FEATURE_NAMES)) or len(late) != len(vecs)):
            return None
        try:
            os.utime(path)  # the newest use keeps it
        except OSError:
            pass  # evicted meanwhile by another process: the vectors read are still whole
        return vecs, late, dup, applied

    def put(self, key: str, vecs: np.ndarray, late: np.ndarray, dup: np.ndarray, applied: int) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{key}.{os.getpid()}.npz"
        np.savez(tmp, vecs=vecs, late=late, dup=dup, names=np.asarray(FEATURE_NAMES), applied=np.int64(applied))
        os.replace(tmp, self.root / f"{key}.npz")
        # entries only: another process's temporary file (a dot name) is its own to replace
        entries = sorted((p for p in self.root.glob("*.npz") if not p.name.startswith(".")),
                         key=_mtime, reverse=True)
        for old in entries[self.keep:]:
            old.unlink(missing_ok=True)


def _mtime(p) -> float:
    """A file's mtime, 0 once another process removed it."""
    try:
        return p.stat().st_mtime
    except OSError:
        return 0.0


def _reject_duplicate(inp: Input, item: Loaded) -> None:
    inp.reject(item, DUPLICATE_EVENT_ID, f"event_id {item.event.event_id!r} seen within the dedup horizon "
                                         "(the job dead-letters it)")


def replay_input(inp: Input, allowed_lateness_ms: int = DEFAULT_LATENESS_MS,
                 dedup_horizon_ms: int = DEFAULT_DEDUP_HORIZON_MS,
                 out_of_orderness_ms: int = DEFAULT_OUT_OF_ORDERNESS_MS, labels: Iterable | None = None,
                 replayer: FeatureReplay | None = None, cache: FeatureCache | None = None,
                 stats: dict | None = None) -> Iterator[tuple[Loaded, list[float], bool]]:
    """(loaded event, features, late) per valid event of an input (``udfs.ingest.load_input``), in its
    order. A duplicate event id is added to the input's rejects (the job dead-letters it) and skipped.
    ``labels``: ``(arrival_ts, label)`` pairs; ``replayer``: a :class:`FeatureReplay` to run (its labels
    may be added while iterating: no ``cache`` then). ``cache``: read the vectors from it when it holds
    them, else store them once the input is exhausted. ``stats`` (a dict) receives ``labels_applied`` and
    ``feature_cache`` (hit, stored or off)."""
    stats = stats if stats is not None else {}
    labels = list(labels or ())
    if cache is not None and replayer is not None:
        raise ValueError("replay_input: a cache needs the labels up front, not a replayer")
    key = None
    if cache is not None:
        key = cache.key(inp, labels, (allowed_lateness_ms, dedup_horizon_ms, out_of_orderness_ms))
        hit = cache.get(key, inp)
        if hit is not None:
            vecs, late, dup, applied = hit
            stats.update(labels_applied=applied, feature_cache="hit")
            j = 0
            for item, d in zip(inp.events, dup.tolist()):
                if d:
                    _reject_duplicate(inp, item)
                    continue
                yield item, vecs[j].tolist(), bool(late[j])
                j += 1
            return
    r = replayer or FeatureReplay(allowed_lateness_ms, dedup_horizon_ms, out_of_orderness_ms, labels)
    from array import array

    flat, lates, dups = array("d"), array("b"), array("b")
    for item in inp.events:
        res = r.step(item.event)
        dups.append(res is None)
        if res is None:
            _reject_duplicate(inp, item)
            continue
        if key is not None:
            flat.extend(res[0])
            lates.append(res[1])
        yield item, res[0], res[1]
    stats.update(labels_applied=r.labels_applied, feature_cache="off" if key is None else "stored")
    if key is not None:
        vecs = np.frombuffer(flat, dtype=np.float64).reshape(-1, len(FEATURE_NAMES))
        cache.put(key, vecs, np.frombuffer(lates, dtype=np.int8).astype(bool),
                  np.frombuffer(dups, dtype=np.int8).astype(bool), r.labels_applied)


def event_fields(item: Loaded) -> dict:
    """The leading fields of an offline output row: event_id, ts, user_id, device_id, payment_ref if any."""
    ev = item.event
    d = {"event_id": ev.event_id, "ts": ev.ts, "user_id": ev.user_id, "device_id": ev.device_id}
    if ev.payment_ref is not None:
        d["payment_ref"] = ev.payment_ref
    return d


def replay_file(input_path, output_path, allowed_lateness_ms: int = DEFAULT_LATENESS_MS,
                dedup_horizon_ms: int = DEFAULT_DEDUP_HORIZON_MS,
                out_of_orderness_ms: int = DEFAULT_OUT_OF_ORDERNESS_MS, *, mapping: Mapping | None = None,
                order: str = "file", rejects_path=None,
                max_reject_share: float = DEFAULT_MAX_REJECT_SHARE, labels_path=None,
                label_delay_ms: int | str | None = None, cache_dir=None) -> dict:
    """Write one JSON line per valid event: ``event_id``, ``ts``, ``user_id``, ``device_id``
    (``payment_ref``), ``late``, every feature by name, and ``label`` / ``scenario`` when the mapping
    declares a label column. Records the job would dead-letter are skipped, counted by reason (as the job
    would route them) and, with ``rejects_path``, written there with their row and line numbers.
    ``verdict`` in the result is why the input is unusable (too many rejects), or None. ``labels_path``: a
    labels file for the label features (:func:`label_schedule`: the file, else the mapping's label column).
    ``cache_dir``: a :class:`FeatureCache` folder (None: no cache)."""
    import orjson

    inp = load_input(input_path, mapping, order)
    labels = label_schedule(inp, labels_path, label_delay_ms)
    stats = {"events": 0, "late": 0}
    run: dict = {}
    cache = FeatureCache(cache_dir) if cache_dir is not None else None
    with open(output_path, "wb") as out:
        for item, vec, late in replay_input(inp, allowed_lateness_ms, dedup_horizon_ms, out_of_orderness_ms,
                                            labels, cache=cache, stats=run):
            stats["events"] += 1
            stats["late"] += late
            row = {**event_fields(item), "late": late, **dict(zip(FEATURE_NAMES, vec))}
            if inp.labelled:
                row["label"] = None if item.fraud is None else int(item.fraud)
                row["scenario"] = item.scenario
            out.write(orjson.dumps(row))
            out.write(b"\n")
    if rejects_path is not None and inp.rejects:
        inp.write_rejects(rejects_path)
    return {**stats, "records": inp.records, "rejected": inp.rejected(), "refused": inp.refused(),
            "out_of_order": inp.out_of_order, "order": order, "verdict": inp.verdict(max_reject_share),
            "labels": len(labels), **run,
            "rejects_file": str(rejects_path) if rejects_path is not None and inp.rejects else None}


def read_labels(path, inp: Input | None = None, label_delay_ms: int | str | None = None) -> list:
    """A labels file's ``(arrival_ts, label)`` pairs sorted by arrival, or [] without one. One format for
    ``train``, ``replay`` and ``score``, JSON lines, each line in either spelling:

    - a label as on the labels topic (``event_id``, ``user_id``, ``device_id``, ``event_ts``, ``label``
      fraud/legit, optional ``ip``, ``payment_ref``; ``udfs.labels.parse_label``);
    - a training label: ``event_id`` (string or integer, as in the events), ``fraud`` (true/false, 0/1,
      yes/no), optional ``user_id`` and ``scenario``: its keys and time are its event's in ``inp`` (a
      label for an event not in the file is skipped; a legit one adds nothing).

    When a label reaches the label features: ``udfs.labels.label_arrival`` (``label_delay_ms`` after its
    event when given, none with ``"none"``, else its ``arrival_ts``, else 7 days after its event), the rule
    ``train`` follows too. An ``arrival_ts`` before its event is refused (IngestError naming the line)."""
    if path is None or label_delay_ms == NO_LABELS:
        return []
    import orjson

    from .ingest import IngestError, json_objects, training_label
    from .labels import parse_label
    from .events import MAX_TS_MS, MIN_TS_MS, Rejection

    by_id: dict[str, list] = {}
    for item in inp.events if inp is not None else ():
        by_id.setdefault(item.event.event_id, []).append(item.event)
    out = []
    try:
        for n, obj in json_objects(path):
            line = orjson.dumps(obj)
            arr = obj.get("arrival_ts")
            if arr is not None and (isinstance(arr, bool) or not isinstance(arr, int)
                                    or not MIN_TS_MS <= arr < MAX_TS_MS):
                raise IngestError(f"labels file {path} line {n}: arrival_ts must be the label's arrival "
                                  "time in epoch ms")
            if "label" in obj:  # the labels topic's spelling
                res = parse_label(line)
                if isinstance(res, Rejection):
                    raise IngestError(f"labels file {path} line {n}: {res.detail}")
                labels = [res]
            elif "fraud" in obj:  # the training spelling: keys from the event
                try:
                    eid, fraud = training_label(obj)
                except ValueError as e:
                    raise IngestError(f"labels file {path} line {n}: {e}") from None
                user = obj.get("user_id")
                labels = [Label.of_event(ev, FRAUD if fraud else LEGIT) for ev in by_id.get(eid, ())
                          if user is None or str(user) == ev.user_id]
            else:
                raise IngestError(f"labels file {path} line {n}: a label has `label` (fraud/legit, with the "
                                  "event's keys) or `fraud` (true/false, keys from the events file)")
            for lab in labels:
                if arr is not None and arr < lab.event_ts:
                    raise IngestError(f"labels file {path} line {n}: arrival_ts is before the labelled "
                                      "event's event_ts")
                out.append((label_arrival(lab.event_ts, arr, label_delay_ms), lab))
    except OSError as e:
        raise IngestError(f"labels file {path}: {e}") from None
    except IngestError as e:
        raise e if str(e).startswith("labels file") else IngestError(f"labels file {path} {e}") from None
    out.sort(key=lambda x: x[0])
    return out


def label_schedule(inp: Input, labels_path=None, label_delay_ms: int | str | None = None) -> list:
    """The ``(arrival_ts, label)`` pairs that reach the label features offline, the same for train, replay,
    score and bootstrap: the labels file's (:func:`read_labels`), else the fraud labels of the mapping's
    label column (each arriving by ``udfs.labels.label_arrival``: 7 days after its event unless
    ``label_delay_ms`` says otherwise), else none."""
    if labels_path is not None or not inp.labelled or label_delay_ms == NO_LABELS:
        return read_labels(labels_path, inp, label_delay_ms)
    out = [(label_arrival(ev.ts, None, label_delay_ms), Label.of_event(ev, FRAUD))
           for ev in (item.event for item in inp.events if item.fraud)]
    out.sort(key=lambda x: x[0])
    return out


SCORE_COLUMNS = ("event_id", "ts", "user_id", "device_id", "payment_ref", "event_type", "score", "decision",
                 "reasons", "late", "model_version")


def score_file(input_path, output_path, model_path, allowed_lateness_ms: int = DEFAULT_LATENESS_MS,
               dedup_horizon_ms: int = DEFAULT_DEDUP_HORIZON_MS,
               out_of_orderness_ms: int = DEFAULT_OUT_OF_ORDERNESS_MS, *, mapping: Mapping | None = None,
               order: str = "file", rejects_path=None, max_reject_share: float = DEFAULT_MAX_REJECT_SHARE,
               policy=None, batch: int = 4096, labels_path=None, label_delay_ms: int | str | None = None,
               compare=(), cache_dir=None) -> dict:
    """Per-event scores and decisions offline: the job's features (this replay), the model's score (the
    job's ``Scorer``) and the policy's decision and reasons (default ``udfs.policy.Policy()``: thresholds
    and rules; label-feedback signals are not replayed, so rules on them never fire). Writes JSON lines, or
    CSV when ``output_path`` ends in ``.csv`` (reasons joined by ``|``). Columns: ``SCORE_COLUMNS``, then
    ``label`` and ``scenario`` when the mapping declares a label column, then per ``compare`` model (paths;
    the same replay, one pass) ``score_<version>`` and ``decision_<version>``."""
    import csv

    import orjson

    from .policy import Policy
    from .scoring import Scorer

    scorer = Scorer(model_path)
    others = [Scorer(c) for c in compare]
    names = [o.version for o in others]
    if len(set(names) | {scorer.version}) != len(names) + 1:
        from .scoring import ModelError

        raise ModelError(f"--compare: each model needs its own version, got {[scorer.version, *names]}")
    monitor = monitor_for(scorer.spec)  # None for a model without a training distribution
    policy = policy or Policy()
    inp = load_input(input_path, mapping, order)
    labels = label_schedule(inp, labels_path, label_delay_ms)
    run: dict = {}
    as_csv = str(output_path).lower().endswith(".csv")
    cols = list(SCORE_COLUMNS) + (["label", "scenario"] if inp.labelled else []) + [
        c for v in names for c in (f"score_{v}", f"decision_{v}")]
    stats = {"events": 0, "late": 0, "decisions": {"allow": 0, "review": 0, "block": 0}}
    with open(output_path, "w", encoding="utf-8", newline="") as out:
        w = csv.writer(out) if as_csv else None
        if w:
            w.writerow(cols)
        pending: list[tuple[Loaded, list[float], bool]] = []

        def flush() -> None:
            if not pending:
                return
            x = np.asarray([v for _, v, _ in pending], dtype=np.float32)
            scores = scorer.score_batch(x)
            if monitor is not None:
                monitor.add(x)
            compared = [o.score_batch(x).tolist() for o in others]
            for k, ((item, vec, late), s) in enumerate(zip(pending, scores.tolist())):
                ev = item.event
                decision, reasons = policy.decide(s, vec, ev.event_type, late)
                stats["decisions"][decision] += 1
                row = {"event_id": ev.event_id, "ts": ev.ts, "user_id": ev.user_id, "device_id": ev.device_id,
                       "payment_ref": ev.payment_ref, "event_type": ev.event_type, "score": round(s, 6),
                       "decision": decision, "reasons": reasons, "late": late, "model_version": scorer.version}
                if inp.labelled:
                    row["label"] = None if item.fraud is None else int(item.fraud)
                    row["scenario"] = item.scenario
                for v, cs in zip(names, compared):
                    row[f"score_{v}"] = round(cs[k], 6)
                    row[f"decision_{v}"] = policy.decide(cs[k], vec, ev.event_type, late)[0]
                if w:
                    w.writerow(["" if row[c] is None else "|".join(row[c]) if c == "reasons"
                                else int(row[c]) if c == "late" else row[c] for c in cols])
                else:
                    if row["payment_ref"] is None:
                        del row["payment_ref"]
                    out.write(orjson.dumps(row).decode() + "\n")
            pending.clear()

        for item, vec, late in replay_input(inp, allowed_lateness_ms, dedup_horizon_ms, out_of_orderness_ms,
                                            labels, cache=FeatureCache(cache_dir) if cache_dir is not None else None,
                                            stats=run):
            stats["events"] += 1
            stats["late"] += late
            pending.append((item, vec, late))
            if len(pending) >= batch:
                flush()
        flush()
    if rejects_path is not None and inp.rejects:
        inp.write_rejects(rejects_path)
    return {**stats, "records": inp.records, "rejected": inp.rejected(), "refused": inp.refused(),
            "out_of_order": inp.out_of_order, "order": order, "verdict": inp.verdict(max_reject_share),
            "model_version": scorer.version, **run,
            "rejects_file": str(rejects_path) if rejects_path is not None and inp.rejects else None,
            **drift_stats(monitor, scorer.version)}


def drift_stats(monitor, model_version: str) -> dict:
    """``drift``: the drifted features (name, PSI, shares beyond the training range), ``drift_warning``: the
    line to print (None without drift), or ``drift: None`` for a model without a training distribution."""
    if monitor is None:
        return {"drift": None, "drift_warning": None}
    return {"drift": [{"feature": d.name, "psi": round(d.psi, 4), "above_train_max": round(d.above, 4),
                       "below_train_min": round(d.below, 4)} for d in monitor.drifted()],
            "drift_warning": monitor.warning(model_version)}
