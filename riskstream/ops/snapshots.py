"""``riskstream snapshots <job>``: a job's lineage as an operator reads it.

Every run (when it started, what it restored, how it ended or whether it is alive), every completed
checkpoint and savepoint of the job (its age, the run that wrote it, the events topic's source offsets it
would resume from, when the snapshot's files hold them; a savepoint's format, and the state backend a native
savepoint or a checkpoint restores on), the half-written ones (marked: never restorable,
removed by the next retention), and what ``--restore-from latest`` would pick and why (or why it refuses).
Read-only: it takes no claim and writes nothing.
"""

from __future__ import annotations

import time
from pathlib import Path

from . import lineage, restore, runguard


def _writer(snap: lineage.Snapshot, runs: list[dict], records: list[dict]) -> str | None:
    """The job id of the run that wrote ``snap``: a checkpoint's folder is named by it; a savepoint's lineage
    record names it, else its folder name carries its first six digits (the newest run started before it)."""
    if not snap.savepoint:
        return snap.path.parent.name
    uri = snap.uri
    for r in records:
        if r["kind"] == "savepoint" and r.get("path") == uri:
            return r.get("job_id")
    name = snap.path.name
    if name.startswith("savepoint-"):
        prefix = name.split("-")[1]
        cands = [r for r in runs if r.get("job_id", "").startswith(prefix)
                 and r.get("started_at", 0) / 1000 <= snap.written_at + 1]
        if cands:
            return cands[-1]["job_id"]
    return None


def _offsets(snap: lineage.Snapshot, topic: str | None) -> dict[int, int] | None:
    if not topic:
        return None
    try:
        found = restore.snapshot_offsets(snap, topic)
    except OSError:
        return None
    return {str(p): o for p, o in sorted(found.items())} or None


def listing(job_name: str, home: Path | None = None, probe: bool = True) -> dict:
    """The job's lineage as a dict (what ``--json`` prints); ``probe``: ask whether unended runs are alive."""
    now = time.time()
    records = lineage.read(job_name, home)
    runs = [r for r in records if r["kind"] == "run"]
    ended = runguard.ended_runs(records)
    live = {lr.job_id: lr for lr in runguard.live_runs(job_name, home)} if probe else {}
    holder = runguard.holder(job_name, home) if probe else None
    topic_of = {r["job_id"]: r.get("events_topic") for r in runs}
    run_rows = []
    for r in runs:
        end = ended.get(r["job_id"])
        status = ("alive" if r["job_id"] in live else
                  f"ended {end['state']}" if end else "gone (no end recorded: killed, or its job ended elsewhere)")
        run_rows.append({
            "job_id": r["job_id"], "started_at": r.get("started_at"), "runner": r.get("runner"),
            "pid": r.get("pid"), "rest_url": r.get("rest_url"), "restored_from": r.get("restored_from"),
            "restored_checkpoint_id": r.get("restored_checkpoint_id"), "status": status,
            "ended_at": end.get("ended_at") if end else None,
            "evidence": live[r["job_id"]].evidence if r["job_id"] in live else None})
    done, half = lineage.all_snapshots(job_name, home)
    stopped = {r.get("path"): r.get("stopped") for r in records if r["kind"] == "savepoint"}
    snaps = []
    for s in sorted(done, key=lambda s: (s.checkpoint_id, s.written_at)):
        writer = _writer(s, runs, records)
        topic = topic_of.get(writer) or next((t for t in reversed(list(topic_of.values())) if t), None)
        fmt, backend = restore.snapshot_backend(job_name, s, home)
        snaps.append({"kind": "savepoint" if s.savepoint else "checkpoint", "checkpoint_id": s.checkpoint_id,
                      "format": fmt if s.savepoint else None, "backend": backend,
                      "path": s.uri, "complete": True, "written_at": int(s.written_at * 1000),
                      "age_s": round(now - s.written_at, 1), "run": writer,
                      "stopped": stopped.get(s.uri) if s.savepoint else None,
                      "events_topic": topic, "offsets": _offsets(s, topic)})
    for h in sorted(half):
        try:
            mtime = h.stat().st_mtime
        except OSError:
            continue
        snaps.append({"kind": "checkpoint" if h.name.startswith("chk-") else "savepoint",
                      "checkpoint_id": int(h.name[4:]) if h.name.startswith("chk-") and h.name[4:].isdigit() else None,
                      "path": h.resolve().as_uri(), "complete": False, "written_at": int(mtime * 1000),
                      "age_s": round(now - mtime, 1),
                      "run": h.parent.name if h.name.startswith("chk-") else None,
                      "stopped": None, "events_topic": None, "offsets": None})
    try:
        res = lineage.resolve_latest(job_name, home)
        if res is None:
            latest = {"path": None, "checkpoint_id": None, "why": "the job never ran: a first start without state"}
        elif res.snapshot is None:
            latest = {"path": None, "checkpoint_id": None, "why": res.how}
        else:
            latest = {"path": res.snapshot.uri, "checkpoint_id": res.snapshot.checkpoint_id,
                      "kind": "savepoint" if res.snapshot.savepoint else "checkpoint", "why": res.how}
    except lineage.ManualRestoreRequired as e:
        latest = {"path": None, "checkpoint_id": None, "refused": str(e), "why": str(e)}
    return {"job": job_name, "folder": str(lineage.job_dir(job_name, home)),
            "lineage": str(lineage.lineage_path(job_name, home)), "runs": run_rows, "snapshots": snaps,
            "latest": latest, "live": [lr.to_json() for lr in live.values()],
            "lock_holder": holder}


def render(d: dict) -> str:
    """The listing as text, for a person."""
    now = time.time()
    out = [f"job {d['job']}: {d['folder']}"]
    if d["live"]:
        for lv in d["live"]:
            out.append(f"LIVE RUN: {lv['what']} job {lv['job_id']}" + (f", pid {lv['pid']}" if lv["pid"] else "")
                       + (f", REST {lv['rest_url']}" if lv["rest_url"] else "") + f" ({lv['evidence']}); stop it with "
                       f"`riskstream cancel {d['job']}`")
    elif d.get("lock_holder"):
        h = d["lock_holder"]
        out.append(f"starting: {h.get('what', '?')} pid {h.get('pid')} holds the job's lock")
    out.append(f"runs ({len(d['runs'])}, oldest first):")
    for r in d["runs"]:
        started = runguard.human_time(r["started_at"] / 1000) if r.get("started_at") else "?"
        restored = (f"restored checkpoint {r['restored_checkpoint_id']}" if r.get("restored_from")
                    else "started without state")
        out.append(f"  {r['job_id']}  started {started}  {restored}  {r['status']}"
                   + (f"  REST {r['rest_url']}" if r.get("rest_url") else ""))
    out.append(f"snapshots ({sum(s['complete'] for s in d['snapshots'])} completed, "
               f"{sum(not s['complete'] for s in d['snapshots'])} half-written):")
    for s in d["snapshots"]:
        age = lineage.human_age(now - s["written_at"] / 1000)
        mark = "" if s["complete"] else "  HALF-WRITTEN (never restored; removed by the next retention)"
        offs = (" offsets " + ", ".join(f"p{p}:{o}" for p, o in s["offsets"].items())) if s.get("offsets") else ""
        cid = s["checkpoint_id"] if s["checkpoint_id"] is not None else "?"
        kind = s["kind"] + (" (stop)" if s.get("stopped") else "")
        if s.get("format") or s.get("backend"):  # native / checkpoint: restorable on that backend only
            mark = "  " + " ".join(x for x in (s.get("format"), f"({s['backend']} only)" if s.get("backend")
                                               else "") if x) + mark
        out.append(f"  {kind:<16} {cid!s:>6}  {age:>12} ago  run {s['run'] or '?'}{offs}{mark}\n      {s['path']}")
    lt = d["latest"]
    if lt.get("refused"):
        out.append(f"--restore-from latest: REFUSED: {lt['refused']}")
    elif lt["path"]:
        out.append(f"--restore-from latest: {lt['kind']} {lt['checkpoint_id']} at {lt['path']}\n  because: {lt['why']}")
    else:
        out.append(f"--restore-from latest: a start without state ({lt['why']})")
    return "\n".join(out)


__all__ = ["listing", "render"]
