"""The canary on the real broker: a `riskstream run` MiniCluster job (JVM stages, batched decide stage) under
live traffic and `riskstream rollout` controller processes.

1. A candidate that blocks nearly everything (risk_gbdt_v2 with the arm's thresholds review 0, block 0: every scored event blocked)
   starts at 20 % with 20 s steps (judged from 60 records an arm): the controller rolls it back by itself within the first step interval,
   exits 3 and says why (log line, state file); the control topic holds the step and the end of the split;
   the records of the candidate's arm stop at the rollback: every event sent after the job applied it has
   no arm. The controller's counts equal a hand count of the committed records between the offsets it
   started and stopped at, and the judgement recomputed by brute force on that hand count breaches too.
   In the metrics (the decide stage's counters over Flink's REST API): each arm's
   ``arm.<arm>.decisions_<kind>`` equal a count of the records of that arm, and stay there while more
   events are decided after the rollback; the job-wide ``decisions_<kind>`` keep growing by those events
   (the champion decides them, outside any arm: without a split, records and counters carry no arm).
2. A second rollout on the same job (refused while one is live, accepted after) of a candidate that
   decides like the champion (a copy of risk_gbdt_v1) goes through 50 % and 100 % and completes; `rollout
   status` from another process shows it; `rollout promote` from another process makes it the champion and
   ends the split, and the controller stops by itself.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter

import orjson
import pytest

from riskstream import paths, topics
from riskstream.ops import flink_rest
from tests.test_kafka_integration import read_all
from tests.test_restore_lineage import Job, cli, wait_decided

pytestmark = [pytest.mark.kafka, pytest.mark.flink, pytest.mark.long]

V1, V2 = "models/risk_gbdt_v1.onnx", "models/risk_gbdt_v2.onnx"


class Traffic:
    """Generated events sent at ``rate`` per second on a thread until stopped; ``sent`` counts them."""

    def __init__(self, bootstrap, topic, events, rate):
        self.events, self.sent, self.stop = events, 0, threading.Event()
        self.t = threading.Thread(target=self._run, args=(bootstrap, topic, rate), daemon=True)
        self.t.start()

    def _run(self, bootstrap, topic, rate):
        from kafka import KafkaProducer

        p = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
        t0 = time.monotonic()
        try:
            for i, e in enumerate(self.events):
                if self.stop.is_set():
                    break
                ahead = i / rate - (time.monotonic() - t0)
                if ahead > 0:
                    self.stop.wait(ahead)  # the send rate, not synchronisation
                p.send(topic, key=e["user_id"].encode(), value=orjson.dumps(e))
                if i % 20 == 19:
                    p.flush(timeout=30)
                self.sent = i + 1
            p.flush(timeout=30)
        finally:
            p.close()

    def halt(self) -> int:
        self.stop.set()
        self.t.join(timeout=60)
        return self.sent


def _applied(rest, job_id, n, deadline_s=60):
    t_end = time.monotonic() + deadline_s
    while flink_rest.user_counters(rest, job_id, ("control_applied",)).get("control_applied", 0) < n:
        assert time.monotonic() < t_end, f"{n} control messages not applied within {deadline_s}s"
        time.sleep(0.3)  # polling interval


_ARM_COUNTER = re.compile(r"(?:^|\.)arm\.([^.]+)\.decisions_(allow|review|block)$")
_JOB_COUNTER = re.compile(r"(?:^|\.)decisions_(allow|review|block)$")


def _decision_counters(rest, job_id) -> tuple[dict[str, Counter], int, list[str]]:
    """The decide stage's counters over REST, summed over subtasks: ({arm: {kind: n}} from
    ``arm.<arm>.decisions_<kind>``, the job-wide ``decisions_<kind>`` total, the metric ids read)."""
    arms: dict[str, Counter] = {}
    total, ids = 0, []
    for vals in flink_rest.vertex_metrics(rest, job_id, lambda i: "decisions_" in i).values():
        for mid, v in vals.items():
            ids.append(mid)
            if m := _ARM_COUNTER.search(mid):
                arms.setdefault(m[1], Counter())[m[2]] += int(v or 0)
            elif _JOB_COUNTER.search(mid):
                total += int(v or 0)
    return arms, total, ids


def _counters_after(rest, job_id, n, deadline_s=60):
    """The counters once the job-wide total has counted ``n`` decisions (Flink's REST API serves metrics a
    fetch interval late): a snapshot taken after the first ``n`` decisions were made."""
    t_end = time.monotonic() + deadline_s
    seen = "no answer"
    while True:
        try:
            arms, total, ids = _decision_counters(rest, job_id)
            if total >= n:
                return arms, total
            seen = f"{total} counted; ids {ids}"
        except (flink_rest.FlinkError, flink_rest.HttpError) as e:  # a loaded JobManager answers 500 now and then
            seen = str(e)
        assert time.monotonic() < t_end, f"decisions_* did not count {n} within {deadline_s}s: {seen}"
        time.sleep(0.5)  # polling interval


def _decided(bootstrap, topic, ids, deadline_s=60) -> list[dict]:
    """Every committed decision, once the events ``ids`` all have theirs."""
    t_end = time.monotonic() + deadline_s
    while True:
        got = [orjson.loads(m.value) for m in read_all(bootstrap, topic)]
        if ids <= {d["event_id"] for d in got}:
            return got
        assert time.monotonic() < t_end, f"not all of {len(ids)} events decided within {deadline_s}s"
        time.sleep(0.5)  # polling interval


def _by_arm(records) -> dict[str, Counter]:
    out: dict[str, Counter] = {}
    for d in records:
        if d.get("arm") is not None:
            out.setdefault(d["arm"], Counter())[d["decision"]] += 1
    return out


def _controller(env, tmp_path, name, args):
    log = tmp_path / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "riskstream.cli", "rollout", "start", *args], env=env,
                                stdout=out, stderr=subprocess.STDOUT, cwd=paths.PROJECT_ROOT, start_new_session=True)
    return proc, log


def _wait_exit(proc, log, deadline_s):
    try:
        return proc.wait(timeout=deadline_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"the controller did not end within {deadline_s}s\n" + log.read_text()[-3000:])


def _state(home, control):
    from riskstream.tools.rollout import state_path

    old = os.environ.get("RISKSTREAM_HOME")
    os.environ["RISKSTREAM_HOME"] = str(home)
    try:
        return orjson.loads(state_path(control).read_bytes())
    finally:
        if old is None:
            del os.environ["RISKSTREAM_HOME"]
        else:
            os.environ["RISKSTREAM_HOME"] = old


def test_a_canary_that_blocks_far_more_is_rolled_back_by_itself_and_a_good_one_is_promoted(kafka_bootstrap, tmp_path):
    from riskstream import rollout as ro
    from riskstream.generator import TrafficGenerator
    from tests.test_rollout import _clusters, cluster_diff_brute

    job = "canary"
    home = tmp_path / "home"
    env = {**os.environ, "RISKSTREAM_HOME": str(home), "RISKSTREAM_JARS_ROOT": str(paths.jars_root())}
    names = tuple(f"{job}.{t}" for t in ("events", "decisions", "dead", "control"))
    topics.ensure_topics(kafka_bootstrap, topics.topic_specs(*names[:3], partitions=2)
                         + [topics.control_topic_spec(names[3])])
    flags = ["--bootstrap-servers", kafka_bootstrap, "--events-topic", names[0], "--decisions-topic", names[1],
             "--dead-letter-topic", names[2], "--control-topic", names[3], "--labels-topic", "", "--group-id",
             f"{job}-group", "--job-name", job, "--transactional-id-prefix", f"{job}-tx", "--starting-offsets",
             "earliest", "--checkpoint-interval-ms", "1000", "--stage-runtime", "jvm", "--parallelism", "1"]
    topic_flags = ["--bootstrap-servers", kafka_bootstrap, "--control-topic", names[3], "--decisions-topic",
                   names[1], "--dead-letter-topic", names[2]]
    # a candidate deciding like the champion: a copy of v1 under another file name (same version inside)
    copy = tmp_path / "models" / "risk_gbdt_v1.onnx"
    copy.parent.mkdir()
    shutil.copy(V1, copy)
    shutil.copy(V1.replace(".onnx", ".json"), copy.with_suffix(".json"))
    events = [r.event for r in TrafficGenerator(seed=23, bad_share=0.0).generate(40_000)]
    # then other users' traffic, later (their own ids: the seed is in them): 400 s at 200 events/s, for a
    # loaded machine whose job lags (the rollback's check in the metrics waits until the job has decided past
    # the rollback) and for the good canary, judged by user, which needs 100 records an arm at each step
    events += [r.event for r in TrafficGenerator(seed=24, bad_share=0.0, start_ts=max(e["ts"] for e in events)
                                                 + 60_000).generate(40_000)]
    assert len({e["event_id"] for e in events}) == len(events)
    times: dict[str, float] = {}
    run = Job(env, tmp_path, flags)
    traffic = None
    try:
        t0 = time.monotonic()
        run.running(checkpoint=True)
        times["job running"] = time.monotonic() - t0
        traffic = Traffic(kafka_bootstrap, names[0], events, rate=200)

        # -- 1: a candidate that blocks nearly everything ------------------------------------------------
        every_s = 20
        t1 = time.monotonic()
        proc, log = _controller(env, tmp_path, "bad", [
            "--model", V2, "--thresholds", "0,0", "--steps", "20,50,100", "--every", f"{every_s}s",
            "--guardrails", "min-events=60", "--poll", "0.5", "--id", "bad", *topic_flags])
        rc = _wait_exit(proc, log, 120)
        times["bad canary: start -> controller exit"] = time.monotonic() - t1
        text = log.read_text()
        assert rc == 3, text
        st = _state(home, names[3])
        assert st["status"] == ro.ROLLED_BACK and "guardrail breached at 20 %" in st["reason"], st["reason"]
        assert "block rate" in st["reason"], st["reason"]
        assert "ROLLED BACK to the champion: guardrail breached" in text, text
        step, back = st["history"][0], st["history"][-1]
        assert [h["event"] for h in st["history"]] == ["step", ro.ROLLED_BACK]
        assert back["at"] - step["at"] < every_s * 1000, "not rolled back within one step interval"
        control = [orjson.loads(m.value) for m in read_all(kafka_bootstrap, names[3], "read_uncommitted")]
        assert control == [step["sent"][0]["message"], back["sent"][0]["message"]]
        assert control[0]["arms"][0]["share"] == 0.2 and control[1]["arms"] == []
        assert [s["offset"] for s in step["sent"] + back["sent"]] == [0, 1]

        # the rollback is applied by the job; every event sent after that has no arm
        _applied(run.rest, run.job_id, 2)
        mark = traffic.sent
        t_end = time.monotonic() + 60
        while traffic.sent < mark + 300:
            assert time.monotonic() < t_end and traffic.t.is_alive(), "traffic stopped"
            time.sleep(0.2)  # polling interval
        after = {e["event_id"] for e in events[mark:mark + 300]}

        # ... and in the metrics: once those events are decided, each arm's counters equal a count of the
        # records of that arm; while more events are decided, they stay there and the job-wide ones grow
        first = _decided(kafka_bootstrap, names[1], after, deadline_s=180)
        hand_arms = _by_arm(first)
        assert set(hand_arms) == {ro.CANDIDATE, ro.CHAMPION} and hand_arms[ro.CANDIDATE]["block"] >= 60, hand_arms
        arms1, total1 = _counters_after(run.rest, run.job_id, len(first))
        assert arms1 == hand_arms, (arms1, hand_arms)
        mark2 = traffic.sent
        t_end = time.monotonic() + 60
        while traffic.sent < mark2 + 200:
            assert time.monotonic() < t_end and traffic.t.is_alive(), "traffic stopped"
            time.sleep(0.2)  # polling interval
        second = _decided(kafka_bootstrap, names[1], {e["event_id"] for e in events[mark2:mark2 + 200]},
                          deadline_s=180)
        arms2, total2 = _counters_after(run.rest, run.job_id, len(second))
        assert len(second) >= len(first) + 200 and _by_arm(second) == hand_arms
        assert arms2[ro.CANDIDATE] == arms1[ro.CANDIDATE], "the candidate's counters grew after the rollback"
        assert arms2 == arms1, "an arm's counters grew without a split"
        unsplit = [total - sum(sum(c.values()) for c in a.values()) for a, total in ((arms1, total1), (arms2, total2))]
        assert unsplit[1] - unsplit[0] >= 200, f"the champion's decisions did not grow in the metrics: {unsplit}"
        times["bad canary: the rollback in the metrics"] = time.monotonic() - t1

        # the controller's counts against a hand count between its start and final offsets
        msgs = read_all(kafka_bootstrap, names[1])
        judged = [orjson.loads(m.value) for m in msgs
                  if st["start_offsets"]["decisions"][str(m.partition)] <= m.offset
                  < st["offsets"]["decisions"][str(m.partition)]]
        hand = {a: [d for d in judged if d.get("arm") == a] for a in (ro.CANDIDATE, ro.CHAMPION)}
        for a, ds in hand.items():
            c = st["counts"][a]
            assert (c["n"], c["block"], c["review"], c["errors"]) == (
                len(ds), sum(d["decision"] == "block" for d in ds), sum(d["decision"] == "review" for d in ds),
                sum("processing_error" in d["reasons"] for d in ds)), a
        n1, n2 = len(hand["candidate"]), len(hand["champion"])
        k1 = sum(d["decision"] == "block" for d in hand["candidate"])
        k2 = sum(d["decision"] == "block" for d in hand["champion"])
        assert n1 >= 60 and n2 >= 60 and k1 / n1 > 0.95 > 0.3 > k2 / n2, (k1, n1, k2, n2)
        # judged as the controller judges, by user (groups of users), recomputed by brute force
        _, lo, _ = cluster_diff_brute(_clusters(hand["candidate"], "block"), _clusters(hand["champion"], "block"),
                                      ro.Z99)
        assert lo > 0.02, "the hand count's interval by user does not breach the 2 pp bound"
        times["bad canary: records after the rollback"] = time.monotonic() - t1

        # -- 2: a second rollout: a candidate deciding like the champion, promoted ------------------------
        t2 = time.monotonic()
        args = ["--model", str(copy), "--steps", "50,100", "--every", "4s", "--guardrails", "min-events=100",
                "--poll", "0.5", "--id", "good", *topic_flags]
        proc, log = _controller(env, tmp_path, "good", args)
        t_end = time.monotonic() + 120
        while True:  # poll the state file until the last step held
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < t_end, log.read_text()[-3000:]
            try:
                st = _state(home, names[3])
            except (FileNotFoundError, orjson.JSONDecodeError):
                st = {}
            if st.get("id") == "good" and st["status"] == ro.COMPLETE:
                break
            time.sleep(0.5)  # polling interval
        times["good canary: start -> complete"] = time.monotonic() - t2
        second = cli(env, "rollout", "start", "--model", V2, *topic_flags)
        assert second.returncode != 0 and "rollout good of risk_gbdt_v1 is complete" in second.stderr, second.stderr
        assert "its controller is running" in second.stderr
        status = cli(env, "rollout", "status", *topic_flags[2:4])
        assert status.returncode == 0 and "COMPLETE" in status.stdout and "step 2 of 2" in status.stdout, status
        assert "guardrails: hold" in status.stdout, status.stdout
        promoted = cli(env, "rollout", "promote", "--reason", "test", *topic_flags)
        assert promoted.returncode == 0, promoted.stderr
        assert _wait_exit(proc, log, 30) == 0
        st = _state(home, names[3])
        assert st["status"] == ro.PROMOTED and [h["event"] for h in st["history"]] == \
            ["step", "step", ro.COMPLETE, ro.PROMOTED]
        assert "PROMOTED" in log.read_text() or "promoted" in log.read_text()
        control = [orjson.loads(m.value) for m in read_all(kafka_bootstrap, names[3], "read_uncommitted")]
        assert [c.get("kind") for c in control[2:]] == ["split", "split", "model", "split"]
        assert control[-2] == {"kind": "model", "role": "champion", "path": str(copy)} and control[-1]["arms"] == []
        _applied(run.rest, run.job_id, 6)
        sent = traffic.halt()
        times["good canary: promoted"] = time.monotonic() - t2
        wait_decided(kafka_bootstrap, names[1], sent)
    finally:
        if traffic is not None:
            traffic.halt()
        for k, v in times.items():
            print(f"[canary] {k}: {v:.1f}s", file=sys.stderr)
        run.kill()

    got = [orjson.loads(m.value) for m in read_all(kafka_bootstrap, names[1])]
    assert sorted(d["event_id"] for d in got) == sorted(e["event_id"] for e in events[:sent]), "not exactly once"
    by_id = {d["event_id"]: d for d in got}
    assert all("arm" not in by_id[i] for i in after), "a record carries an arm after the rollback was applied"
    bad_arm = [d for d in got if d.get("arm") == "candidate" and d["model_version"] == "risk_gbdt_v2"]
    assert bad_arm and all(d["policy_version"].endswith("+candidate") for d in bad_arm)
