"""The canary controller: ``riskstream rollout start|resume|status|promote|rollback`` (the logic is
``riskstream.rollout``; this is the reading, the sending and the state file).

It runs as its own process beside the job, not inside it:

- the guardrails need both arms' figures over the whole traffic, which no parallel instance of the decide
  stage sees; a process that reads the decisions topic ``read_committed`` sees exactly the decisions that
  took effect downstream, from every subtask;
- every step and the rollback go to the control topic as ordinary control messages, the only way the job
  changes what decides: the history stays in the topic and each record's ``arm``; a job that wrote its own
  control messages would need a feedback loop through its input and would re-send them on a restore;
- it still acts while the job restarts or is down: its rollback waits in the control topic and is applied
  before the job decides again (the control source resumes from its checkpointed offset).

Its state (``<riskstream home>/rollouts/<control topic>.json``: the schedule, the step, the per-arm counts
(with the counts per group of users the rate guardrails need: 3 x 1,024 integers an arm, whatever the traffic),
the topics' offsets read, the history, the controller's pid and heartbeat) is rewritten after every look
under a file lock, so ``status`` works from another process, ``promote``/``rollback`` from another process
take effect (the controller sees the new status at its next look and exits), and a restarted controller
(``rollout resume``) carries on from its offsets with its counts. Every message it sends is idempotent (the
newest split wins), so a controller that dies between sending and saving sends it again at most.
"""

from __future__ import annotations

import fcntl
import os
import re
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import orjson

from .. import paths
from .. import rollout as ro

POLL_S = 1.0
STALE_S = 30.0  # a heartbeat older than this and a dead pid: the controller is gone


def now_ms() -> int:
    return int(time.time() * 1000)


def state_path(control_topic: str) -> Path:
    return paths.home() / "rollouts" / (re.sub(r"[^A-Za-z0-9._-]", "_", control_topic) + ".json")


@contextmanager
def locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def load(path: Path) -> dict | None:
    try:
        return orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return None


def save(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(orjson.dumps(state, option=orjson.OPT_INDENT_2))
    os.replace(tmp, path)


def controller_alive(state: dict) -> bool:
    c = state.get("controller") or {}
    if c.get("host") != socket.gethostname() or not c.get("pid"):
        return (now_ms() - (c.get("heartbeat") or 0)) < STALE_S * 1000
    try:
        os.kill(c["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return (now_ms() - (c.get("heartbeat") or 0)) < STALE_S * 1000


def log(msg: str) -> None:
    print(f"[rollout] {msg}", file=sys.stderr, flush=True)


# -- Kafka ------------------------------------------------------------------------------------------------

class Sender:
    def __init__(self, bootstrap: str, topic: str):
        from kafka import KafkaProducer

        self.topic = topic
        self.p = KafkaProducer(bootstrap_servers=bootstrap, acks="all")

    def send(self, msg: dict) -> int:
        md = self.p.send(self.topic, orjson.dumps(msg)).get(timeout=30)
        return md.offset

    def close(self):
        self.p.close()


def send_actions(state: dict, actions: list[ro.Action], sender: Sender) -> None:
    """Each action as control messages; their offsets go into the newest history entry."""
    for a in actions:
        if a.kind == "split":
            msgs = [ro.split_message(state, a.share)]
        elif a.kind == "end":
            msgs = [ro.end_message(state, "rollback")]
        else:  # promote: the candidate becomes the champion, then the split ends
            msgs = [ro.champion_message(state), ro.end_message(state, "promoted")]
        sent = []
        for m in msgs:
            sent.append({"offset": sender.send(m), "message": m})
        state["history"][-1]["sent"] = sent


def end_offsets(bootstrap: str, topic: str) -> dict[str, int]:
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed", enable_auto_commit=False)
    try:
        parts = c.partitions_for_topic(topic)
        if not parts:
            raise ro.RolloutError(f"topic {topic!r} does not exist on {bootstrap}")
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        return {str(tp.partition): off for tp, off in c.end_offsets(tps).items()}
    finally:
        c.close()


def split_in_force(bootstrap: str, control_topic: str) -> dict | None:
    """The newest split message on the control topic if it has arms (a split in force), else None."""
    from kafka import KafkaConsumer, TopicPartition

    from udfs.control import ControlError, parse_control

    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        tp = TopicPartition(control_topic, 0)
        if not c.partitions_for_topic(control_topic):
            return None
        c.assign([tp])
        c.seek_to_beginning(tp)
        end = c.end_offsets([tp])[tp]
        last = None
        deadline = time.monotonic() + 30
        while c.position(tp) < end and time.monotonic() < deadline:
            for m in c.poll(timeout_ms=500).get(tp, []):
                try:
                    msg = parse_control(m.value)
                except ControlError:
                    continue
                if msg["kind"] == "split":
                    last = msg
        return last if last and last["arms"] else None
    finally:
        c.close()


class Reader:
    """The decisions and dead-letter topics (read_committed) from the state's offsets."""

    def __init__(self, bootstrap: str, topics: dict[str, str], offsets: dict[str, dict[str, int]]):
        from kafka import KafkaConsumer, TopicPartition

        self.c = KafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed",
                               enable_auto_commit=False, group_id=None, max_partition_fetch_bytes=4 * 1024 * 1024)
        self.roles = {}
        tps = []
        for role, topic in topics.items():
            for p, off in offsets[role].items():
                tp = TopicPartition(topic, int(p))
                self.roles[tp] = role
                tps.append((tp, off))
        self.c.assign([tp for tp, _ in tps])
        for tp, off in tps:
            self.c.seek(tp, off)

    def poll(self, timeout_s: float) -> tuple[dict[str, list[dict]], dict[str, dict[str, int]]]:
        out: dict[str, list[dict]] = {"decisions": [], "dead": []}
        for tp, msgs in self.c.poll(timeout_ms=int(timeout_s * 1000), max_records=20_000).items():
            for m in msgs:
                try:
                    v = orjson.loads(m.value)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(v, dict):
                    out[self.roles[tp]].append(v)
        pos: dict[str, dict[str, int]] = {}
        for tp, role in self.roles.items():
            pos.setdefault(role, {})[str(tp.partition)] = self.c.position(tp)
        return out, pos

    def close(self):
        self.c.close()


# -- the controller ----------------------------------------------------------------------------------------

class Controller:
    def __init__(self, path: Path, models_dir: Path | None = None, poll_s: float = POLL_S):
        self.path = path
        self.poll_s = poll_s
        self.models_dir = models_dir or paths.models_dir()
        st = load(path)
        if st is None:
            raise ro.RolloutError(f"no rollout state at {path}")
        self.id = st["id"]
        from udfs.split import SPLIT_KEYS

        self.g = ro.Guardrails.from_json(st["guardrails"])
        self.key_field = SPLIT_KEYS[st.get("key", "user")]  # the records' field of the split key: the users
        self.counts = {a: ro.ArmCounts.from_json((st.get("counts") or {}).get(a)) for a in (ro.CANDIDATE, ro.CHAMPION)}
        self.offsets = st["offsets"]
        self.drift = {}
        d = st.get("drift") or {}
        cand = _monitor(Path(st["model"]))
        if cand is not None and d.get(ro.CANDIDATE):
            cand.load(d[ro.CANDIDATE])
        self.drift[ro.CANDIDATE] = cand
        self.champion_version = d.get("champion_version")
        self.drift[ro.CHAMPION] = None
        if self.champion_version:
            self.drift[ro.CHAMPION] = self._champion_monitor(self.champion_version)
            if self.drift[ro.CHAMPION] is not None and d.get(ro.CHAMPION):
                self.drift[ro.CHAMPION].load(d[ro.CHAMPION])
        self.reader = Reader(st["bootstrap"], st["topics"], self.offsets)
        self.sender = Sender(st["bootstrap"], st["control_topic"])

    def _champion_monitor(self, version: str):
        from udfs.drift import monitor_for

        spec_path = self.models_dir / f"{version}.json"
        if "/" in version or not spec_path.is_file():
            return None
        try:
            spec = orjson.loads(spec_path.read_bytes())
            return monitor_for(spec) if spec.get("model_version") == version else None
        except (orjson.JSONDecodeError, ValueError, KeyError):
            return None

    def _count(self, recs: list[dict]) -> None:
        """Count each arm's records; feed *both* drift monitors with the rows of *both* arms.

        An event's features do not depend on its arm (they are computed before the decide stage), so each
        model's drift is measured on all the rollout's rows: at a 1 % step the candidate's own arm would give
        it a sample a hundredth as large, and the champion's PSI on other users' rows would differ from the
        candidate's by sampling alone, which is what the drift margin compares."""
        import numpy as np

        rows: dict[str, list] = {ro.CANDIDATE: [], ro.CHAMPION: []}
        for r in recs:
            arm = r.get("arm")
            if arm not in rows:
                continue
            self.counts[arm].add(r, self.key_field)
            if arm == ro.CHAMPION and self.champion_version is None and r.get("model_version"):
                self.champion_version = r["model_version"]
                self.drift[ro.CHAMPION] = self._champion_monitor(self.champion_version)
            feats = r.get("features")
            if not feats:
                continue
            for who, mon in self.drift.items():
                if mon is None:
                    continue
                try:
                    rows[who].append([float(feats[n]) for n in mon.names])
                except (KeyError, TypeError, ValueError):
                    pass
        for who, xs in rows.items():
            if xs and self.drift[who] is not None:
                self.drift[who].add(np.asarray(xs))

    def verdict(self) -> ro.Verdict:
        from udfs.drift import MIN_ROWS

        def d(arm):
            m = self.drift[arm]
            return None if m is None else (m.max_psi(), m.rows)

        return ro.evaluate(self.counts[ro.CANDIDATE], self.counts[ro.CHAMPION], self.g, d(ro.CANDIDATE),
                           d(ro.CHAMPION), MIN_ROWS)

    def _rejected(self, dead: list[dict], state: dict) -> str | None:
        """A control_rejected dead letter of one of this rollout's messages: the job's reason."""
        import base64

        for r in dead:
            if r.get("reason") != "control_rejected":
                continue
            try:
                orig = orjson.loads(base64.b64decode(r.get("original_b64") or ""))
            except (ValueError, orjson.JSONDecodeError):
                continue
            if isinstance(orig, dict) and str(orig.get("version", "")).startswith(state["id"]) \
                    or orig == ro.champion_message(state):
                return f"the job refused control message {orig.get('version') or orig}: {r.get('detail')}"
        return None

    def run(self, deadline_s: float | None = None) -> dict:
        """Look every ``poll_s`` until the rollout ends (rolled back, promoted, or ended by another process)."""
        t_end = None if deadline_s is None else time.monotonic() + deadline_s
        log(f"{self.id}: controller pid {os.getpid()} watching {self.path}")
        last_step, last_status = None, None
        try:
            while True:
                got, self.offsets = self.reader.poll(self.poll_s)
                self._count(got["decisions"])
                with locked(self.path):
                    st = load(self.path)
                    if st is None or st["id"] != self.id:
                        log(f"{self.id}: the state file now holds another rollout; stopping")
                        return st or {}
                    if st["status"] not in ro.LIVE:
                        log(f"{self.id}: {st['status']} ({st.get('reason')}); the controller stops")
                        return st
                    self._store(st)
                    t = now_ms()
                    refused = self._rejected(got["dead"], st)
                    if refused:
                        actions = ro.rollback(st, t, refused)
                    elif st["step"] < 0:
                        actions = ro.start(st, t)
                    else:
                        v = self.verdict()
                        st["verdict"] = {"status": v.status, "summary": v.summary(), "at": t}
                        actions = ro.tick(st, t, v)
                    send_actions(st, actions, self.sender)
                    save(self.path, st)
                if st["step"] != last_step and st["status"] in ro.LIVE:
                    last_step = st["step"]
                    log(f"{self.id}: step {st['step'] + 1}/{len(st['steps'])}: {st['steps'][st['step']]:g} % of "
                        f"the users to {st['model_version']} for {st['every_ms'] / 1000:g}s at least")
                if st["status"] == ro.ROLLED_BACK:
                    log(f"{self.id}: ROLLED BACK to the champion: {st['reason']}")
                    return st
                if st["status"] == ro.PROMOTED:
                    log(f"{self.id}: PROMOTED {st['model_version']} to champion: {st['reason']}")
                    return st
                if st["status"] == ro.COMPLETE and last_status != ro.COMPLETE:
                    log(f"{self.id}: every step held; the candidate decides {st['steps'][-1]:g} %. "
                        "`riskstream rollout promote` makes it the champion (the guardrails keep watching)")
                last_status = st["status"]
                if t_end is not None and time.monotonic() > t_end:
                    log(f"{self.id}: controller deadline reached; the rollout stays {st['status']} "
                        "(`riskstream rollout resume` carries on)")
                    return st
        finally:
            self.reader.close()
            self.sender.close()

    def _store(self, st: dict) -> None:
        st["counts"] = {a: c.to_json() for a, c in self.counts.items()}
        st["offsets"] = self.offsets
        st["drift"] = {"champion_version": self.champion_version,
                       **{a: m.counts() for a, m in self.drift.items() if m is not None}}
        st["controller"] = {"pid": os.getpid(), "host": socket.gethostname(), "heartbeat": now_ms()}


def _monitor(model_path: Path):
    from udfs.drift import monitor_for
    from udfs.scoring import load_model_spec

    try:
        return monitor_for(load_model_spec(model_path))
    except (OSError, ValueError, KeyError):
        return None


# -- commands -----------------------------------------------------------------------------------------------

def prepare(bootstrap: str, control_topic: str, decisions_topic: str, dead_letter_topic: str, model: str,
            steps: tuple[float, ...], every_ms: int, guardrails: ro.Guardrails,
            thresholds: tuple[float, float] | None = None, promote_at_end: bool = False,
            rollout_id: str | None = None) -> tuple[Path, dict]:
    """Check everything and write the new rollout's state (step -1: the controller sends the first step).
    Refused with :class:`RolloutError` when the model does not load or match the job's spec, a rollout is
    live on this control topic, a split is already in force, or a topic is missing."""
    from udfs.policy import Policy
    from udfs.scoring import ModelError, Scorer
    from udfs.split import SplitError, parse_split

    from ..ops.broker import broker_ready

    if every_ms < 1000:
        raise ro.RolloutError("--every must be at least 1s")
    try:
        scorer = Scorer(model)
    except (ModelError, OSError) as e:
        raise ro.RolloutError(f"the candidate model does not load: {e}") from None
    if thresholds is not None:
        try:
            Policy(review_threshold=thresholds[0], block_threshold=thresholds[1])
        except ValueError as e:
            raise ro.RolloutError(f"--thresholds: {e}") from None
    path = state_path(control_topic)
    rid = rollout_id or f"ro-{int(time.time())}"
    state = ro.new_state(rid, model, scorer.version, steps, every_ms, guardrails, now_ms(), thresholds,
                         promote_at_end, bootstrap=bootstrap, control_topic=control_topic,
                         topics={"decisions": decisions_topic, "dead": dead_letter_topic}, salt=rid, key="user")
    try:  # every step's message must parse (thresholds, shares)
        for s in steps:
            parse_split(ro.split_message(state, s))
    except SplitError as e:
        raise ro.RolloutError(f"the split would be refused: {e}") from None
    if not broker_ready(bootstrap, timeout_s=5):
        raise ro.RolloutError(f"no Kafka broker answers at {bootstrap}")
    with locked(path):
        old = load(path)
        if old is not None and old["status"] in ro.LIVE:
            who = ("its controller is running (pid {pid})".format(**old["controller"]) if controller_alive(old)
                   else "no controller is running: `riskstream rollout resume` carries it on")
            raise ro.RolloutError(f"rollout {old['id']} of {old['model_version']} is {old['status']} on "
                                  f"{control_topic} at {old['steps'][max(old['step'], 0)]:g} % ({who}); "
                                  "end it first with `riskstream rollout promote` or `rollout rollback`")
        other = split_in_force(bootstrap, control_topic)
        if other is not None:
            raise ro.RolloutError(f"split {other['version']} is in force on {control_topic} (arms "
                                  f"{', '.join(a['name'] for a in other['arms'][:-1])}): end it first "
                                  "(`riskstream control split --end`)")
        state["offsets"] = {"decisions": end_offsets(bootstrap, decisions_topic),
                            "dead": end_offsets(bootstrap, dead_letter_topic)}
        state["start_offsets"] = orjson.loads(orjson.dumps(state["offsets"]))  # where the judged period begins
        state["counts"] = {}
        state["controller"] = {"pid": os.getpid(), "host": socket.gethostname(), "heartbeat": now_ms()}
        save(path, state)
    return path, state


def take_over(path: Path) -> dict:
    """For ``resume``: a live rollout whose controller is gone."""
    with locked(path):
        st = load(path)
        if st is None:
            raise ro.RolloutError(f"no rollout at {path}")
        if st["status"] not in ro.LIVE:
            raise ro.RolloutError(f"rollout {st['id']} is {st['status']}: nothing to resume")
        if controller_alive(st) and st["controller"].get("pid") != os.getpid():
            raise ro.RolloutError(f"rollout {st['id']} has a running controller (pid {st['controller']['pid']})")
        st["controller"] = {"pid": os.getpid(), "host": socket.gethostname(), "heartbeat": now_ms()}
        save(path, st)
    return st


def operator(path: Path, what: str, reason: str | None = None) -> dict:
    """``promote`` or ``rollback`` from any process: send the messages, record the new status."""
    with locked(path):
        st = load(path)
        if st is None:
            raise ro.RolloutError(f"no rollout at {path}")
        t = now_ms()
        actions = (ro.promote if what == "promote" else ro.rollback)(st, t, reason or f"by operator ({what})")
        sender = Sender(st["bootstrap"], st["control_topic"])
        try:
            send_actions(st, actions, sender)
        finally:
            sender.close()
        save(path, st)
    return st


def render_status(st: dict) -> str:
    step = st["step"]
    share = st["steps"][step] if step >= 0 else 0
    lines = [f"rollout {st['id']}: {st['model_version']} ({st['model']}) {st['status'].upper().replace('_', ' ')}",
             f"  steps {', '.join(f'{s:g}' for s in st['steps'])} % every {st['every_ms'] / 1000:g}s; "
             f"now {share:g} % (step {step + 1} of {len(st['steps'])})"]
    if st["status"] in ro.LIVE:
        c = st.get("controller") or {}
        age = (now_ms() - (c.get("heartbeat") or 0)) / 1000
        lines.append(f"  controller pid {c.get('pid')}, last look {age:.0f}s ago"
                     + ("" if controller_alive(st) else " -- GONE: `riskstream rollout resume` carries it on"))
        if st["status"] == ro.RUNNING and step >= 0:
            left = (st["step_started_at"] + st["every_ms"] - now_ms()) / 1000
            lines.append(f"  next step in {max(left, 0):.0f}s if the guardrails hold"
                         + (f" ({st['waiting']})" if st.get("waiting") else ""))
    if st.get("reason"):
        lines.append(f"  reason: {st['reason']}")
    for arm, c in (st.get("counts") or {}).items():
        n = c["n"] or 1
        lines.append(f"  arm {arm:<9} {c['n']:,} records: block {100 * c['block'] / n:.2f} %, review "
                     f"{100 * c['review'] / n:.2f} %, {c['errors']} processing errors")
    if st.get("verdict"):
        lines.append(f"  guardrails: {st['verdict']['status']}: {st['verdict']['summary']}")
    for h in st["history"]:
        t = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(h["at"] / 1000))
        what = f"step {h['step'] + 1}: {h['share']:g} %" if h["event"] == "step" else h["event"]
        sent = ", ".join(f"{s['message'].get('kind')} {s['message'].get('version') or s['message'].get('role')}"
                         f" @{s['offset']}" for s in h.get("sent", []))
        lines.append(f"  {t} {what}" + (f" ({h['reason']})" if h.get("reason") else "") + (f" -> {sent}" if sent else ""))
    return "\n".join(lines)
