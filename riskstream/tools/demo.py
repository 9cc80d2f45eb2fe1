"""`riskstream demo`: broker up, labelled traffic in, the job on a MiniCluster, every event decided, summary.

Latency is measured from the event's arrival at the broker (the events topic stamps records with log
append time) to ``decided_at`` in the decision (``latency_ms``), and to the moment a ``read_committed``
consumer received it (``visible_latency_ms``, which adds the wait for the checkpoint that commits it). The
arrival is the decision's own ``arrived_at`` (the job copies the event record's timestamp into it), else the
event record's timestamp as read here: the report's latency panel measures the same.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter

import orjson

from .. import topics
from ..config import JobConfig
from ..generator import LONG_SCENARIOS, MALFORMED, NORMAL, RING_SCENARIO, SCENARIOS, TrafficGenerator
from ..kafka_io import produce, progress_printer
from ..metrics import percentile
from ..ops import broker, flink_rest
from ..ops.procs import free_port


def reset_topics(bootstrap: str, cfg: JobConfig, partitions: int, deadline_s: float = 60) -> None:
    from kafka import KafkaAdminClient

    names = [cfg.events_topic, cfg.decisions_topic, cfg.dead_letter_topic]
    extra = [t for t in (cfg.control_topic, cfg.labels_topic) if t]  # old control messages would replay
    topics.delete_topics(bootstrap, names + extra)
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        t0 = time.monotonic()
        while set(names + extra) & set(admin.list_topics()):
            if time.monotonic() - t0 > deadline_s:
                raise TimeoutError(f"topics {names} still exist {deadline_s}s after deletion")
            time.sleep(0.2)  # polling interval
    finally:
        admin.close()
    t0 = time.monotonic()
    while True:
        try:
            topics.ensure_topics(bootstrap, topics.topic_specs(*names, partitions=partitions)
                                 + ([topics.control_topic_spec(cfg.control_topic)] if cfg.control_topic else [])
                                 + ([topics.labels_topic_spec(cfg.labels_topic)] if cfg.labels_topic else []))
            return
        except Exception as e:  # deletion may still be settling in the controller
            if time.monotonic() - t0 > deadline_s:
                raise TimeoutError(f"could not recreate topics {names}: {e}") from e
            time.sleep(0.5)


def summarize(labels: dict[str, dict], decisions: dict[str, dict], dead: list[dict], sent: int,
              append_ts: dict[str, int], seen_at: dict[str, float], dup: int) -> dict:
    by_kind = Counter(d["decision"] for d in decisions.values())
    scen: dict[str, dict] = {}
    present = {lab["scenario"] for lab in labels.values()}
    for name in (*SCENARIOS, *(x for x in (*LONG_SCENARIOS, RING_SCENARIO) if x in present), NORMAL):
        ids = [e for e, lab in labels.items() if lab["scenario"] == name]
        dec = [decisions[e]["decision"] for e in ids if e in decisions]
        entry = {"events": len(ids), "caught": sum(1 for d in dec if d != "allow")}
        entry["blocked"] = sum(1 for d in dec if d == "block")
        entry["allowed"] = sum(1 for d in dec if d == "allow")
        entry["catch_rate" if name != NORMAL else "flag_rate"] = round(entry["caught"] / max(1, len(ids)), 4)
        scen[name] = entry
    arrival = {e: d["arrived_at"] if d.get("arrived_at") is not None else append_ts.get(e)
               for e, d in decisions.items()}
    lat = [d["decided_at"] - arrival[e] for e, d in decisions.items() if arrival[e] is not None]
    vis = [seen_at[e] * 1000 - arrival[e] for e in decisions if arrival[e] is not None and e in seen_at]
    valid = sum(1 for lab in labels.values() if lab["scenario"] != MALFORMED)
    return {
        "events": sent,
        "valid_events": valid,
        "decisions": {k: by_kind.get(k, 0) for k in ("allow", "review", "block")},
        "dead_letter": len(dead),
        "dead_letter_reasons": dict(Counter(d["reason"] for d in dead)),
        "missing": sum(1 for e, lab in labels.items() if lab["scenario"] != MALFORMED and e not in decisions),
        "duplicates": dup,
        "scenarios": scen,
        "latency_ms": {"p50": percentile(lat, 0.5), "p99": percentile(lat, 0.99), "max": percentile(lat, 1.0)},
        "visible_latency_ms": {"p50": percentile(vis, 0.5), "p99": percentile(vis, 0.99)},
    }


def run_demo(cfg: JobConfig, events: int, rate: float, seed: int, bad_share: float, port: int,
             partitions: int = 2, deadline_s: float = 600, keep_broker: bool = False, log=sys.stderr,
             challenger: str | None = None, report_path: str | None = None, ab: str | None = None,
             rings: bool = False) -> dict:
    """With ``rings``, the generator's fraud rings, households, offices and public wifi are in the traffic
    (what the graph features are for, ``RISKSTREAM_GRAPH_FEATURES=1``).
    With ``challenger`` (an .onnx path), a shadow model scores alongside (sent on the control topic);
    with ``ab`` (an .onnx path), a 50/50 traffic split (``AB_SPLIT``) of the champion and that model decides,
    applied before any event is sent; with ``report_path``, the effectiveness report is written there from
    the decisions and labels (per arm with ``ab``)."""
    from kafka import KafkaConsumer

    from pipelines import decision_job

    t_start = time.monotonic()
    was_running = broker.status()["running"]
    lay = broker.up(port=port, out=log)
    cfg = cfg.model_copy(update={"bootstrap_servers": lay.bootstrap})
    job = None
    try:
        reset_topics(lay.bootstrap, cfg, partitions)
        print(f"[demo] topics ready: {cfg.events_topic} -> {cfg.decisions_topic}, {cfg.dead_letter_topic}",
              file=log)
        rest_port = free_port()
        job = decision_job.run(cfg, wait=False, extra_conf={"rest.port": str(rest_port),
                                                            "rest.bind-port": str(rest_port),
                                                            "rest.address": "127.0.0.1"})
        job_id = str(job.get_job_id())
        print(f"[demo] job {job_id} submitted to the local MiniCluster "
              f"(parallelism {cfg.parallelism}, {cfg.python_execution_mode} mode)", file=log, flush=True)
        took = flink_rest.wait_running(f"http://127.0.0.1:{rest_port}", job_id, deadline_s=120)
        print(f"[demo] job running, first checkpoint done after {took:.1f}s; sending traffic", file=log, flush=True)
        if challenger:
            from kafka import KafkaProducer

            p = KafkaProducer(bootstrap_servers=lay.bootstrap, acks="all")
            p.send(cfg.control_topic, orjson.dumps({"kind": "model", "role": "challenger", "path": challenger})
                   ).get(timeout=30)
            p.close()
            print(f"[demo] challenger {challenger} sent on {cfg.control_topic}", file=log, flush=True)
        if ab:
            from kafka import KafkaProducer

            split = ab_split(ab)
            p = KafkaProducer(bootstrap_servers=lay.bootstrap, acks="all")
            p.send(cfg.control_topic, orjson.dumps(split)).get(timeout=30)
            p.close()
            want = 1 + bool(challenger)
            t_end = time.monotonic() + 60
            rest = f"http://127.0.0.1:{rest_port}"
            while flink_rest.user_counters(rest, job_id, ("control_applied",)).get("control_applied", 0) < want:
                if time.monotonic() > t_end:
                    raise TimeoutError(f"the split was not applied within 60s (dead letters on "
                                       f"{cfg.dead_letter_topic} say why)")
                time.sleep(0.3)  # polling interval
            print(f"[demo] split {split['version']} applied: 50 % of the users decided by {ab}, the champion the "
                  "rest", file=log, flush=True)
        records = list(TrafficGenerator(seed=seed, bad_share=bad_share, rings=rings).generate(events))
        labels = {r.label["event_id"]: r.label for r in records}
        expected_dead = sum(1 for r in records if r.raw is not None)
        consumer = KafkaConsumer(cfg.events_topic, cfg.decisions_topic, cfg.dead_letter_topic,
                                 bootstrap_servers=lay.bootstrap, isolation_level="read_committed",
                                 auto_offset_reset="earliest", enable_auto_commit=False,
                                 group_id=None, fetch_max_wait_ms=50)
        sent_box: dict[str, int] = {}
        producer = threading.Thread(
            target=lambda: sent_box.setdefault("n", produce(lay.bootstrap, cfg.events_topic, records, rate,
                                                            progress=progress_printer(events, "generate", log))),
            daemon=True)
        producer.start()
        decisions: dict[str, dict] = {}
        dead: list[dict] = []
        append_ts: dict[str, int] = {}
        seen_at: dict[str, float] = {}
        dup = 0
        show = progress_printer(events, "decided", log)
        t_deadline = time.monotonic() + deadline_s
        while len(decisions) + len(dead) < len(records):
            if time.monotonic() > t_deadline:
                raise TimeoutError(f"only {len(decisions)} decisions and {len(dead)} dead letters for "
                                   f"{len(records)} events after {deadline_s}s")
            batch = consumer.poll(timeout_ms=200)
            now = time.time()
            for tp, msgs in batch.items():
                for m in msgs:
                    if tp.topic == cfg.events_topic:
                        try:
                            append_ts[orjson.loads(m.value)["event_id"]] = m.timestamp
                        except Exception:  # malformed records have no usable id: they are counted as dead
                            pass
                    elif tp.topic == cfg.decisions_topic:
                        d = orjson.loads(m.value)
                        if d["event_id"] in decisions:
                            dup += 1
                        decisions[d["event_id"]] = d
                        seen_at.setdefault(d["event_id"], now)
                    else:
                        rec = orjson.loads(m.value)
                        if rec["reason"] in ("control_rejected", "invalid_label"):  # not from the events
                            print(f"[demo] dead letter from another input: {rec['reason']}: {rec['detail']}",
                                  file=log, flush=True)
                        else:
                            dead.append(rec)
            show(len(decisions) + len(dead))
        producer.join()
        consumer.close()
        summary = summarize(labels, decisions, dead, sent_box.get("n", len(records)), append_ts, seen_at, dup)
        summary["expected_dead_letter"] = expected_dead
        summary["seconds"] = round(time.monotonic() - t_start, 1)
        summary["model_version"] = next(iter(decisions.values()))["model_version"] if decisions else None
        if report_path:
            from . import report

            fig = report.build_report(list(decisions.values()), labels)
            fig["source"] = f"riskstream demo, {cfg.decisions_topic} (read_committed)"
            fig["generated_at"] = int(time.time() * 1000)
            from pathlib import Path

            Path(report_path).parent.mkdir(parents=True, exist_ok=True)
            Path(report_path).write_text(report.render_html(fig), encoding="utf-8")
            keys = ("roc_auc", "average_precision", "precision_at_budget", "recall_at_budget", "catch_rate",
                    "false_positive_rate")
            summary["report"] = {"path": str(report_path), "text": report.render_text(fig),
                                 "headline": {k: v for k, v in fig["headline"].items() if not isinstance(v, dict)}}
            if fig.get("arms"):
                summary["report"]["arms"] = {"verdicts": fig["arms"]["verdicts"],
                                             **{a["arm"]: {"events": a["events"], "model_versions": a["model_versions"],
                                                           **{k: a[k]["rate"] for k in ("block_rate", "review_rate",
                                                                                        "catch_rate",
                                                                                        "false_positive_rate")}}
                                                for a in fig["arms"]["arms"]}}
            cc = fig.get("champion_challenger")
            if cc:
                summary["report"]["champion_vs_challenger"] = {
                    "agreement_rate": cc["agreement_rate"],
                    **{role: {"model": next(iter(cc[role].get("model_versions") or {"?": 0})),
                              **{k: cc[role].get(k) for k in keys}} for role in ("champion", "challenger")}}
        return summary
    finally:
        if job is not None:
            try:
                job.cancel().result()
            except Exception as e:  # the job may already have failed; the summary or error says why
                print(f"[demo] cancel: {e}", file=log)
        if not was_running and not keep_broker:
            broker.down(out=log)


def ab_split(model: str) -> dict:
    """The demo's 50/50 split: arm v2 (``model``) against the champion, by user."""
    return {"kind": "split", "version": "demo-ab", "key": "user", "salt": "demo",
            "arms": [{"name": "v2", "share": 0.5, "path": model}]}


def render(summary: dict) -> str:
    lines = [
        f"events in:        {summary['events']} ({summary['valid_events']} valid)",
        "decisions:        " + ", ".join(f"{k} {v}" for k, v in summary["decisions"].items()),
        f"dead letters:     {summary['dead_letter']} {summary['dead_letter_reasons']}",
        f"missing / dups:   {summary['missing']} / {summary['duplicates']}",
        "scenario                  events  caught  blocked  rate",
    ]
    for name, s in summary["scenarios"].items():
        rate = s.get("catch_rate", s.get("flag_rate"))
        lines.append(f"  {name:<24}{s['events']:>6}  {s['caught']:>6}  {s['blocked']:>7}  {rate:>5.1%}"
                     + ("  (normal traffic flagged)" if name == NORMAL else ""))
    lat, vis = summary["latency_ms"], summary["visible_latency_ms"]
    lines.append(f"latency ms:       p50 {lat['p50']}  p99 {lat['p99']} (arrival -> decided)")
    lines.append(f"visible ms:       p50 {vis['p50']}  p99 {vis['p99']} (arrival -> read_committed consumer)")
    lines.append(f"took {summary['seconds']} s")
    if summary.get("report"):
        lines.append("effectiveness report (" + summary["report"]["path"] + "):")
        lines.extend("  " + ln for ln in summary["report"]["text"].splitlines())
    return "\n".join(lines)
