"""Warm start: the job's window and label state built from a history of events and labels, written as a
savepoint the job starts from (``riskstream bootstrap``, then ``riskstream run --restore-from PATH``).

A new deployment otherwise starts with empty 7- and 30-day windows and no label features: blind for 30
days. The history is read exactly as ``riskstream replay`` reads it (the own-data formats and mapping,
labels with arrival times; a label is folded before the first event whose ``ts`` is at or after its
arrival), written as one JSON line per event or label in arrival order, and folded by the JVM stages'
own logic (``io.riskstream.flink.Bootstrap``: dedup, windows, labels, cleanup timers by the replay's
watermark rule) into a savepoint under the JVM entity stages' uids (State Processor API).

Pitfalls:
- The savepoint holds the entity stages only: the job's sources start where ``starting_offsets`` says
  (``committed``: the group's offsets, else the topic's start). Start the live job from the events the
  history does not cover, or they are counted twice in the windows (e.g. ``--starting-offsets latest``
  when the history runs up to now).
- It is written for the JVM stage runtime (the default); ``max_parallelism`` must be the job's.
- Labels whose arrival is after the history's last event are not folded (the labels topic brings them).
- The fold runs in this process's JVM: give it heap for the state (about 1 KB per user with its device,
  ip and card in memory), e.g. ``JVM_ARGS=-Xmx6g`` for millions of users.
"""

from __future__ import annotations

import heapq
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

from ..config import JobConfig
from . import lineage
from .jars import flink_jar_urls


@dataclass(frozen=True)
class BootstrapResult:
    path: Path
    events: int
    duplicates: int
    labels: int
    keys: dict[str, int]
    rejected: int
    history_start_ts: int | None
    history_end_ts: int | None
    seconds: float


def write_history(input_path, out: Path, *, labels_path=None, mapping=None, order: str = "file",
                  label_delay_ms: int | str | None = None) -> dict:
    """The history as the fold reads it: ``{"event": {...}}`` / ``{"label": {...}}`` lines in arrival order.
    Labels as ``replay`` reads them (either spelling; ``udfs.labels.label_arrival``'s rule with
    ``label_delay_ms``). Returns counts and the event-time range. Raises ``udfs.ingest.IngestError`` on an
    unusable input."""
    from udfs.chain import label_identity
    from udfs.ingest import load_input
    from udfs.replay import read_labels

    inp = load_input(input_path, mapping, order)
    # after the input: a label in the training spelling takes its keys and time from its event
    labels = [(int(a), i, lab) for i, (a, lab) in enumerate(read_labels(labels_path, inp, label_delay_ms))]
    heapq.heapify(labels)
    n_events = n_labels = 0
    first = last = None
    with open(out, "wb") as f:
        for item in inp.events:
            ev = item.event
            while labels and labels[0][0] <= ev.ts:
                eid, uid, did, ets, lab, ip, pref = heapq.heappop(labels)[2]
                # the label stores key labelled events by (user, event id), as the job's label records do
                f.write(orjson.dumps({"label": {"event_id": label_identity(uid, eid), "user_id": uid,
                                                "device_id": did, "ts": ets,
                                                "label": lab, "ip": ip, "payment_ref": pref}}))
                f.write(b"\n")
                n_labels += 1
            f.write(orjson.dumps({"event": ev._asdict()}))
            f.write(b"\n")
            n_events += 1
            first = ev.ts if first is None else min(first, ev.ts)
            last = ev.ts if last is None else max(last, ev.ts)
    return {"events": n_events, "labels": n_labels, "labels_later": len(labels), "rejected": inp.rejected() or 0,
            "first_ts": first, "last_ts": last}


def state_jars(cfg: JobConfig) -> list[str]:
    """The job's jars (connector, this project's JVM module) and the State Processor API ([state])."""
    from .. import paths

    state = sorted((paths.jars_root() / "state").glob("*.jar"))
    if not state:
        raise FileNotFoundError(f"the State Processor API jar is not in {paths.jars_root() / 'state'}: run "
                                "`riskstream jars` (section [state] of pom-deps.txt)")
    return flink_jar_urls(cfg.jars_dir) + [j.resolve().as_uri() for j in state]


def bootstrap(cfg: JobConfig, input_path, *, labels_path=None, mapping=None, order: str = "file",
              output: Path | None = None, parallelism: int = 2,
              label_delay_ms: int | str | None = None) -> BootstrapResult:
    """Fold the history and write the savepoint (default: a new ``bootstrap-<time>`` folder among the job's
    savepoints); record it in the job's lineage as a savepoint of run ``bootstrap``."""
    from pyflink.java_gateway import get_gateway
    from pyflink.util.java_utils import add_jars_to_context_class_loader

    from udfs.chain import spec_document

    if cfg.stage_runtime != "jvm":
        raise ValueError("bootstrap writes the JVM entity stages' state; the Python stages (--stage-runtime "
                         "python) cannot restore it")
    t0 = time.monotonic()
    dest = Path(output) if output else lineage.savepoints_dir(cfg.job_name) / time.strftime("bootstrap-%Y%m%d-%H%M%S")
    dest = dest.resolve()
    if dest.exists():
        raise FileExistsError(f"{dest} exists: a savepoint is written to a new folder (give another --output)")
    jars = state_jars(cfg)
    with tempfile.TemporaryDirectory(prefix="riskstream-bootstrap-") as work:
        hist = Path(work) / "history.jsonl"
        st = write_history(input_path, hist, labels_path=labels_path, mapping=mapping, order=order,
                           label_delay_ms=label_delay_ms)
        if st["events"] == 0:
            raise ValueError(f"{input_path} holds no valid event: nothing to bootstrap")
        add_jars_to_context_class_loader(jars)
        J = get_gateway().jvm.io.riskstream.flink
        spec = orjson.dumps(spec_document(cfg.allowed_lateness_ms)).decode()
        dest.parent.mkdir(parents=True, exist_ok=True)
        summary = orjson.loads(J.Bootstrap.write(
            spec, str(hist), dest.as_uri(), work, int(cfg.dedup_horizon_ms), int(cfg.out_of_orderness_ms),
            int(cfg.max_parallelism), int(parallelism), bool(cfg.labels_topic), cfg.job_name, ";".join(jars)))
    lineage.record_savepoint(cfg.job_name, lineage.BOOTSTRAP_RUN, dest.as_uri(), stopped=False)
    return BootstrapResult(dest, summary["events"], summary["duplicates"], summary["labels"], summary["keys"],
                           st["rejected"], st["first_ts"], st["last_ts"], time.monotonic() - t0)
