"""Native savepoints (issue 20: a restore at 3M users within 2 min), on the real broker with `riskstream run`
MiniCluster processes on RocksDB:

A (parallelism 1) decides the first third -> `riskstream savepoint --format native` (SP1; Flink's own
checkpoint statistics say NATIVE) -> `riskstream cancel` without --format (SP2: native too, the default on
RocksDB). Restoring either onto the hashmap backend is refused at start, before Flink, by `run` (a path and
`latest`) and by `submit --from-savepoint` (no cluster needed for the refusal). B restores SP1 by path with
the changelog, so from a private copy in CLAIM mode, at the same parallelism (the case where Flink 2.2.1 reuses
the savepoint's files in the checkpoints after it: FLINK-39964), decides the second third, takes a native
savepoint on request (SP3: a job with the changelog, so refused later for a restore with the changelog) and is
killed (a lost process). Its retained checkpoint names the copy's files by absolute path, is refused on
hashmap too, and C restores it (`latest`) at parallelism 2 and decides the last third.

Checked on features, as tests/test_rescale.py does: every event has exactly one committed decision, and its
features equal the offline replay over the whole history (a user's everywhere; an ip's and a device's where
every event of the key travels one path). Most users of the later thirds had events before each restore, so
their first event after it reads state carried by the native savepoint (and then by a checkpoint on top of its
claimed copy).

On a standalone cluster without the changelog, `submit --from-savepoint --parallelism 2` restores the native
savepoint that `cancel` took by default at parallelism 1, as it is (NO_CLAIM), with the same check of the
features."""

from __future__ import annotations

import os
import sys
import time

import pytest

from riskstream import paths, topics
from riskstream.ops import flink_rest, lineage
from tests.test_rescale import every_event_once_with_the_replays_features
from tests.test_restore_lineage import Job, cli, decisions, produce_events, same_path, wait_decided

# three `riskstream run` starts and six refused ones: 1.5-4 min on the shared 2-core box; the cluster's: 2-4 min
pytestmark = [pytest.mark.kafka, pytest.mark.flink, pytest.mark.long]

JOB = "ns-job"
COUNT = 900


def _refused(res, *needles) -> None:
    assert res.returncode != 0, res.stdout + res.stderr[-3000:]
    for n in needles:
        assert n in res.stderr, (n, res.stderr[-3000:])


def test_a_native_savepoint_restores_every_keys_state_and_not_on_the_other_backend(kafka_bootstrap, tmp_path):
    from riskstream.generator import TrafficGenerator

    home = tmp_path / "home"
    env = {**os.environ, "RISKSTREAM_HOME": str(home), "RISKSTREAM_JARS_ROOT": str(paths.jars_root())}
    env.pop("RISKSTREAM_SAVEPOINT_FORMAT", None)  # the default is under test
    names = ("ns.events", "ns.decisions", "ns.dead")
    topics.ensure_topics(kafka_bootstrap, topics.topic_specs(*names, partitions=2))
    flags = ["--bootstrap-servers", kafka_bootstrap, "--events-topic", names[0], "--decisions-topic", names[1],
             "--dead-letter-topic", names[2], "--control-topic", "", "--labels-topic", "", "--group-id", "ns-group",
             "--job-name", JOB, "--transactional-id-prefix", "ns-tx", "--starting-offsets", "earliest",
             "--checkpoint-interval-ms", "1000"]
    rocks = ["--state-backend", "rocksdb"]
    # a small customer base (about 225 users for 900 events), so most keys return after each restore
    events = [r.event for r in TrafficGenerator(seed=43, bad_share=0.0).generate(COUNT)]
    thirds = [events[:300], events[300:600], events[600:]]
    carried = [len({e["user_id"] for e in thirds[1]} & {e["user_id"] for e in thirds[0]}),
               len({e["user_id"] for e in thirds[2]} & {e["user_id"] for e in thirds[0] + thirds[1]})]
    times: dict[str, float] = {}

    # -- A on RocksDB: a native savepoint on request, and by default when it stops --------------------------
    produce_events(kafka_bootstrap, names[0], thirds[0])
    a = Job(env, tmp_path, flags, rocks)
    try:
        a_id = a.running(checkpoint=True)
        wait_decided(kafka_bootstrap, names[1], 300)
        res = cli(env, "savepoint", JOB, "--format", "native")
        assert res.returncode == 0, res.stderr + a.text()
        assert "native savepoint (--format)" in res.stderr, res.stderr
        sp1 = res.stdout.strip().splitlines()[-1]
        stats = next(h for h in flink_rest.checkpoints(a.rest, a_id)["history"]
                     if h.get("is_savepoint") and same_path(h["external_path"], sp1))
        assert stats["savepointFormat"] == "NATIVE", stats  # Flink's word, not riskstream's reading
        t0 = time.monotonic()
        res = cli(env, "cancel", JOB)
        times["A: stop with a native savepoint"] = time.monotonic() - t0
        assert res.returncode == 0, res.stderr + a.text()
        assert "native savepoint (the job runs on rocksdb)" in res.stderr, res.stderr
        sp2 = res.stdout.strip().splitlines()[-1]
        a.proc.wait(timeout=60)
    finally:
        a.kill()
    recs = {r["path"]: r for r in lineage.read(JOB, home) if r["kind"] == "savepoint"}
    for sp in (sp1, sp2):
        assert lineage.snapshot_format(sp) == "native" and lineage.names_rocksdb_files(sp), sp
        rec = next(r for p, r in recs.items() if same_path(p, sp))
        assert (rec["format"], rec["backend"]) == ("native", "rocksdb"), rec
    res = cli(env, "snapshots", JOB)
    assert res.returncode == 0 and "native (rocksdb only)" in res.stdout, res.stdout

    # -- onto hashmap: refused at start, before Flink, saying what to do ---------------------------------
    runs_before = [r["job_id"] for r in lineage.read(JOB, home) if r["kind"] == "run"]
    heap = ["--state-backend", "hashmap"]
    for restore in (sp1, "latest"):
        t0 = time.monotonic()
        res = cli(env, "run", *flags, *heap, "--restore-from", restore, timeout=180)
        times[f"refused: run --restore-from {'latest' if restore == 'latest' else 'SP1'}"] = time.monotonic() - t0
        _refused(res, "is a native savepoint of the rocksdb state backend", "this job runs on hashmap",
                 "--state-backend rocksdb", f"riskstream savepoint {JOB} --format canonical")
    res = cli(env, "submit", *flags, *heap, "--from-savepoint", sp1, timeout=180)
    _refused(res, "riskstream submit:", "is a native savepoint of the rocksdb state backend")
    res = cli(env, "submit", *flags, "--from-savepoint", sp1, timeout=180)  # rocksdb, a cluster's default: passes
    _refused(res, "no Flink cluster is running")  # to the next check (this test starts no cluster)
    assert [r["job_id"] for r in lineage.read(JOB, home) if r["kind"] == "run"] == runs_before  # nothing started

    # -- B: SP1 by path, with the changelog (a private copy, claimed), at the same parallelism -------------
    produce_events(kafka_bootstrap, names[0], thirds[1])
    t0 = time.monotonic()
    b = Job(env, tmp_path, flags, (*rocks, "--changelog", "--restore-from", sp1))
    try:
        b_id = b.running(checkpoint=True)
        times["B: start -> running from SP1, first checkpoint"] = time.monotonic() - t0
        assert "private copy of " + lineage.local_path(sp1).name in b.text(), b.text()
        restored = lineage.local_path(b.restored()["external_path"])
        assert restored.parent == lineage.claimed_dir(JOB, home).resolve(), restored
        wait_decided(kafka_bootstrap, names[1], 600)
        # a native savepoint of a job with the changelog: taken on request, with a note (not by default)
        res = cli(env, "savepoint", JOB, "--format", "native")
        assert res.returncode == 0 and "--no-changelog" in res.stderr and "FLINK-39964" in res.stderr, res.stderr
        sp3 = res.stdout.strip().splitlines()[-1]
        sp3_id = lineage.read_snapshot(sp3).checkpoint_id
        t_end = time.monotonic() + 60  # a checkpoint after it: what `latest` picks once B is lost
        while ((flink_rest.checkpoints(b.rest, b_id).get("latest") or {}).get("completed") or {}).get("id", 0) <= sp3_id:
            assert time.monotonic() < t_end, b.text()
            time.sleep(0.2)  # polling interval
    finally:
        b.kill()  # a lost process: its retained checkpoint is what `latest` resumes from
    assert lineage.names_changelog_handles(sp3) and not lineage.names_changelog_handles(sp1)

    # -- SP3 with the changelog: Flink 2.2.1 would write checkpoints it cannot restore (FLINK-39964) ------
    res = cli(env, "run", *flags, *rocks, "--changelog", "--restore-from", sp3, timeout=180)
    _refused(res, "FLINK-39964", "--no-changelog")

    # -- B's checkpoint: the copy's files by absolute path (the FLINK-39964 case would name them relative) --
    b_chk = lineage.resolve_latest(JOB, home).snapshot
    assert b_chk.path.parent.name == b_id and not b_chk.savepoint, b_chk
    assert f"/claimed/{restored.name}/".encode() in (b_chk.path / "_metadata").read_bytes()
    # ... and RocksDB's own format
    res = cli(env, "run", *flags, *heap, "--restore-from", "latest", timeout=180)
    _refused(res, "is a checkpoint of the rocksdb state backend", "this job runs on hashmap")

    # -- C: latest (B's checkpoint, on top of the claimed copy's files), at parallelism 2 ---------------------
    produce_events(kafka_bootstrap, names[0], thirds[2])
    c = Job(env, tmp_path, flags, (*rocks, "--changelog", "--parallelism", "2", "--restore-from", "latest"))
    try:
        c_id = c.running(checkpoint=True)
        assert same_path(c.restored()["external_path"], b_chk.uri), c.restored()
        assert {v["parallelism"] for v in flink_rest.job_details(c.rest, c_id)["vertices"]} == {2}
        wait_decided(kafka_bootstrap, names[1], COUNT)
    finally:
        c.kill()
    for k, v in times.items():
        print(f"[native] {k}: {v:.1f}s", file=sys.stderr)
    print(f"[native] users carried over each restore: {carried}", file=sys.stderr)
    assert min(carried) >= 100, carried

    every_event_once_with_the_replays_features(kafka_bootstrap, names, events, tmp_path)


def test_submit_from_a_native_savepoint_on_a_cluster_without_the_changelog(kafka_bootstrap, tmp_path):
    """`riskstream submit --from-savepoint` on a standalone cluster on RocksDB without the changelog: `cancel`
    stops the job with a native savepoint (the default there), the upgraded job restores it as it is (NO_CLAIM:
    no private copy, the savepoint stays) at parallelism 2 instead of 1, and the following events read every
    key's state."""
    from riskstream.generator import TrafficGenerator
    from riskstream.ops import cluster

    home = tmp_path / "home"
    env = {**os.environ, "RISKSTREAM_HOME": str(home), "RISKSTREAM_JARS_ROOT": str(paths.jars_root())}
    env.pop("RISKSTREAM_SAVEPOINT_FORMAT", None)
    names = ("nc.events", "nc.decisions", "nc.dead")
    topics.ensure_topics(kafka_bootstrap, topics.topic_specs(*names, partitions=2))
    flags = ["--bootstrap-servers", kafka_bootstrap, "--events-topic", names[0], "--decisions-topic", names[1],
             "--dead-letter-topic", names[2], "--control-topic", "", "--labels-topic", "", "--group-id", "nc-group",
             "--job-name", "nc-job", "--transactional-id-prefix", "nc-tx", "--starting-offsets", "earliest",
             "--checkpoint-interval-ms", "1000", "--parallelism", "1"]
    events = [r.event for r in TrafficGenerator(seed=47, bad_share=0.0).generate(600)]
    halves = [events[:300], events[300:]]
    carried = len({e["user_id"] for e in halves[1]} & {e["user_id"] for e in halves[0]})
    up = cli(env, "cluster", "up", "--no-changelog", "--deadline", "180", timeout=300)
    assert up.returncode == 0, up.stderr
    rest = cluster.layout(root=home / "flink-cluster").rest_url
    try:
        produce_events(kafka_bootstrap, names[0], halves[0])
        res = cli(env, "submit", "--wait-running", "--deadline", "240", *flags, timeout=400)
        assert res.returncode == 0 and "changelog off" in res.stderr, res.stderr
        wait_decided(kafka_bootstrap, names[1], 300)
        t0 = time.monotonic()
        res = cli(env, "cancel", "nc-job")
        took = time.monotonic() - t0
        assert res.returncode == 0 and "native savepoint (the job runs on rocksdb)" in res.stderr, res.stderr
        sp = res.stdout.strip().splitlines()[-1]
        assert lineage.snapshot_format(sp) == "native" and lineage.names_rocksdb_files(sp)
        files = {f: f.stat().st_size for f in lineage.local_path(sp).rglob("*")}
        produce_events(kafka_bootstrap, names[0], halves[1])
        t0 = time.monotonic()
        res = cli(env, "submit", "--wait-running", "--deadline", "240", "--from-savepoint", sp, *flags,
                  "--parallelism", "2", timeout=400)  # the last --parallelism wins: a rescale from 1
        assert res.returncode == 0 and "private copy" not in res.stderr, res.stderr
        print(f"[native] cluster: stop with a native savepoint {took:.1f}s, submit --from-savepoint -> running "
              f"{time.monotonic() - t0:.1f}s; users carried over: {carried}", file=sys.stderr)
        job2 = res.stdout.strip().splitlines()[-1]
        restored = flink_rest.checkpoints(rest, job2)["latest"]["restored"]
        assert restored["is_savepoint"] and same_path(restored["external_path"], sp), restored
        assert {v["parallelism"] for v in flink_rest.job_details(rest, job2)["vertices"]} == {2}
        wait_decided(kafka_bootstrap, names[1], 600)
        assert cli(env, "cancel", "nc-job", "--no-savepoint").returncode == 0
    finally:
        cli(env, "cluster", "down")
    assert {f: f.stat().st_size for f in lineage.local_path(sp).rglob("*")} == files  # NO_CLAIM: untouched
    every_event_once_with_the_replays_features(kafka_bootstrap, names, events, tmp_path)
    assert carried >= 80, carried  # 92 of this seed's users of the second half had events in the first
