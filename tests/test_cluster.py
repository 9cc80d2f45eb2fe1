"""The local standalone Flink cluster: up (one TaskManager with the configured slots), a PyFlink job
submitted with ``flink run -d -py`` runs to FINISHED on it, down leaves no process and frees the port."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time

import pytest

from riskstream.ops import cluster, procs

JOB = """
from pyflink.common import Types
from pyflink.datastream import StreamExecutionEnvironment

env = StreamExecutionEnvironment.get_execution_environment()
env.set_parallelism(2)
(env.from_collection(list(range(100)), type_info=Types.INT())
    .map(lambda x: x * 2, output_type=Types.INT())
    .print())
client = env.execute_async("riskstream-cluster-smoke")
print("EXECUTE_ASYNC_JOB_ID", client.get_job_id())
"""


def test_up_refuses_a_taken_rest_port(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(RuntimeError, match=f"port {port} .* taken"):
            cluster.up(rest_port=port, root=tmp_path / "flink")
    assert cluster.pids(tmp_path / "flink") == {"jobmanager": None, "taskmanager": None}


@pytest.mark.flink
def test_cluster_up_submit_down(tmp_path):
    root = tmp_path / "flink"
    job_file = tmp_path / "smoke_job.py"
    job_file.write_text(JOB)
    # two TaskManagers of one slot each (`cluster up --taskmanagers 2 --slots 1`), on the default RocksDB
    lay = cluster.up(slots=1, root=root, deadline_s=90, settings=cluster.ClusterSettings(taskmanagers=2))
    try:
        st = cluster.status(root)
        assert st["running"] and st["ready"], st
        assert (st["taskmanagers"], st["slots_total"], st["slots_available"]) == (2, 2, 2), st
        daemon_pids = [p for p in st["pids"].values() if p]
        assert len(daemon_pids) == 3 and set(st["pids"]) == {"jobmanager", "taskmanager", "taskmanager-2"}
        assert "state.backend.type: \"rocksdb\"" in (lay.conf_dir / "config.yaml").read_text()
        assert cluster.up(root=root) == lay  # idempotent while healthy
        assert (lay.conf_dir / "config.yaml").read_text().count(f"rest.port: {lay.rest_port}") == 1

        proc = subprocess.run(cluster.flink_command(lay, "run", "-m", lay.address, "-d", "-py", str(job_file)),
                              env=cluster.flink_env(lay), capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}\n{cluster.log_tail(root)}"
        submitted = re.search(r"Job has been submitted with JobID ([0-9a-f]{32})", proc.stdout)
        assert submitted, proc.stdout
        job_id = submitted.group(1)
        assert f"EXECUTE_ASYNC_JOB_ID {job_id}" in proc.stdout  # execute_async returns the cluster's job id

        assert cluster.wait_for_job(job_id, ("FINISHED",), root=root, deadline_s=60) == "FINISHED"
        assert {"id": job_id, "name": "riskstream-cluster-smoke", "state": "FINISHED"} in cluster.status(root)["jobs"]
        # print() output of the TaskManager goes to its .out file: "<subtask>> <value>" lines
        out = "".join(f.read_text() for f in lay.log_dir.glob("*taskexecutor*.out"))
        values = [int(line.split("> ", 1)[1]) for line in out.splitlines() if "> " in line]
        assert sorted(values) == [2 * i for i in range(100)]

        # a TaskManager process that exits on its own (a FATAL error stops it) is started again by its
        # supervisor: same supervisor pid, a new TaskManager id registered, the exit in its console log
        known = cluster.taskmanager_ids(lay.rest_url)
        java = _java_in_group(st["pids"]["taskmanager"])
        os.kill(java, signal.SIGKILL)
        t0 = time.monotonic()
        while not (cluster.taskmanager_ids(lay.rest_url) - known):
            assert time.monotonic() - t0 < 90, "the exited TaskManager was not started again within 90 s"
            time.sleep(0.2)  # polling interval
        assert cluster.pids(root)["taskmanager"] == st["pids"]["taskmanager"] and _java_in_group(st["pids"]["taskmanager"]) != java
        assert "exited with code 137 (see its log); starting it again" in (lay.log_dir / "taskmanager.console").read_text()

        # a TaskManager lost (its process group SIGKILLed) and replaced: the replacement takes its name
        assert "heartbeat.interval: 2000" in (lay.conf_dir / "config.yaml").read_text()
        lost = st["pids"]["taskmanager-2"]
        os.killpg(lost, signal.SIGKILL)
        t0 = time.monotonic()
        while procs.pid_alive(lost):  # SIGKILL is delivered asynchronously: until the process is gone
            assert time.monotonic() - t0 < 30, "a SIGKILLed TaskManager still runs after 30 s"
            time.sleep(0.05)  # polling interval
        name, pid = cluster.add_taskmanager(root=root, deadline_s=90)
        daemon_pids.append(pid)
        assert name == "taskmanager-2" and pid != lost and cluster.pids(root)["taskmanager-2"] == pid
        assert cluster.status(root)["running"] is True
    finally:
        stopped = cluster.down(root=root)
    assert stopped
    assert not any(procs.group_alive(p) for p in daemon_pids), "a Flink process outlived `down`"
    assert cluster.pids(root) == {"jobmanager": None, "taskmanager": None}
    assert not list(lay.run_dir.glob("*.pid"))
    assert not procs.port_in_use(lay.rest_port)
    assert cluster.status(root)["running"] is False


def _java_in_group(pgid: int) -> int:
    """The java process of a daemon's process group (its supervisor and scripts are bash)."""
    for d in os.listdir("/proc"):
        try:
            if d.isdigit() and os.getpgid(int(d)) == pgid and open(f"/proc/{d}/comm").read().strip() == "java":
                return int(d)
        except (ProcessLookupError, FileNotFoundError, PermissionError):
            continue
    raise AssertionError(f"no java process in group {pgid}")


# -- riskstream.ops.submit without a cluster: flags, paths, clear errors ----------------------------------------


def test_job_flags_pass_only_what_was_set():
    from riskstream.ops import submit

    argv, env = submit.job_flags({"events_topic": "a.events", "parallelism": "2", "group_id": None, "bounded": False,
                                  "sasl_username": "u", "sasl_password": "s3cret"})
    assert argv == ["--events-topic", "a.events", "--parallelism", "2", "--no-bounded", "--sasl-username", "u"]
    assert env == {"RISKSTREAM_SASL_PASSWORD": "s3cret"}  # never on the command line
    assert submit.job_flags({"bounded": True}) == (["--bounded"], {})
    with pytest.raises(submit.SubmitError, match="MiniCluster"):
        submit.job_flags({"rest_port": "8082"})


def test_submit_parser_hands_the_job_flags_through():
    from riskstream.cli import build_parser
    from riskstream.ops.submit import settings_from_args

    a = build_parser().parse_args(["submit", "--jobmanager", "h:1", "--from-savepoint", "x", "--events-topic", "t1",
                                   "--checkpoint-interval-ms", "500", "--no-bounded"])
    assert (a.jobmanager, a.from_savepoint, a.wait_running) == ("h:1", "x", False)
    assert settings_from_args(a) == {"events_topic": "t1", "checkpoint_interval_ms": "500", "bounded": False}
    with pytest.raises(SystemExit):
        build_parser().parse_args(["submit", "--rest-port", "8082"])  # a MiniCluster setting only


def test_savepoint_paths(tmp_path):
    from riskstream.ops import submit

    sp = tmp_path / "savepoint-abc"
    sp.mkdir()
    with pytest.raises(submit.SubmitError, match="no _metadata"):
        submit._savepoint_path(str(sp))
    (sp / "_metadata").write_bytes(b"x")
    # a plain path, Flink's own `file:/...` form and a file:/// URI all name the same local savepoint
    assert submit._savepoint_path(str(sp)) == submit._savepoint_path(f"file:{sp}") == sp.as_uri()
    assert submit._savepoint_path(sp.as_uri()) == sp.as_uri()
    assert submit._savepoint_path("s3://bucket/sp-1") == "s3://bucket/sp-1"  # Flink checks remote ones
    assert submit._target_dir("s3://bucket/sps") == "s3://bucket/sps"


def test_commands_without_a_cluster_say_how_to_start_one(tmp_path, monkeypatch):
    from riskstream.cli import main

    monkeypatch.setenv("RISKSTREAM_HOME", str(tmp_path / "home"))
    with pytest.raises(SystemExit, match="no Flink cluster is running .* `riskstream cluster up`"):
        main(["submit", "--events-topic", "t1"])
    with pytest.raises(SystemExit, match="`riskstream cluster up`"):
        main(["savepoint", "0123456789abcdef0123456789abcdef"])
    with pytest.raises(SystemExit, match="neither a Flink job id .* nor a job with a lineage"):
        main(["cancel", "not-a-job"])  # a job name riskstream never ran here
    port = procs.free_port()  # nothing listens there
    with pytest.raises(SystemExit, match=f"no Flink JobManager answers at http://127.0.0.1:{port}"):
        main(["submit", "--jobmanager", f"127.0.0.1:{port}"])
    with pytest.raises(SystemExit, match="either --from-savepoint or --restore-from"):
        submit_args = ["submit", "--from-savepoint", str(tmp_path), "--restore-from", "latest"]
        main(submit_args)
    with pytest.raises(SystemExit, match="invalid configuration"):
        main(["submit", "--parallelism", "0"])
    assert main(["cluster", "status"]) == 1
    with pytest.raises(SystemExit, match="no Flink cluster running .* `riskstream cluster up`"):
        main(["cluster", "add-taskmanager"])


def test_restore_args_keep_the_savepoint_under_the_changelog(tmp_path, monkeypatch):
    """`flink run`'s restore options: Flink's NO_CLAIM default without the changelog; with it (which Flink
    restores only in CLAIM mode) a private copy of the savepoint is claimed and the savepoint stays; a
    retained checkpoint is claimed in place. The local cluster's `cluster up --changelog` counts too."""
    import struct

    from riskstream.ops import cluster, lineage, submit

    monkeypatch.setenv("RISKSTREAM_HOME", str(tmp_path / "home"))
    sp = tmp_path / "savepoint-abc"
    sp.mkdir()
    (sp / "_metadata").write_bytes(struct.pack(">iiq", 0x4960672D, 6, 7) + b"\0" * 40)
    (sp / "state").write_bytes(b"s")
    assert submit.restore_args(str(sp), "job-x", changelog=False) == ["-s", sp.resolve().as_uri()]
    args = submit.restore_args(str(sp), "job-x", changelog=True)
    copy = lineage.local_path(args[1])
    assert args[0] == "-s" and args[2:] == ["--claimMode", "claim"]
    assert copy.parent == lineage.claimed_dir("job-x") and (copy / "state").read_bytes() == b"s"
    assert (sp / "state").exists()
    chk = tmp_path / "chk-7"
    chk.mkdir()
    (chk / "_metadata").write_bytes((sp / "_metadata").read_bytes())
    assert submit.restore_args(str(chk), "job-x", changelog=True) == ["-s", chk.resolve().as_uri(), "--claimMode", "claim"]
    # the local cluster's own setting
    root = tmp_path / "cluster"
    assert not cluster.changelog_enabled(root)
    lay = cluster.layout(rest_port=8099, root=root)
    lay.conf_dir.mkdir(parents=True)
    (lay.conf_dir / "config.yaml").write_text("state:\n  changelog:\n    enabled: true\n")
    assert cluster.changelog_enabled(root)


def test_submit_follows_the_clusters_changelog(monkeypatch):
    """`submit` restores in CLAIM mode when the job runs with the changelog: its own flag or variable, else
    the cluster's config as its JobManager reports it (on with `cluster up` and the manifest)."""
    from riskstream.ops import flink_rest, submit

    monkeypatch.delenv("RISKSTREAM_CHANGELOG", raising=False)
    conf = {"state.changelog.enabled": "true"}
    monkeypatch.setattr(flink_rest, "cluster_config", lambda url, **kw: conf)
    assert submit.changelog_on("http://jm", None) and not submit.changelog_on("http://jm", False)
    monkeypatch.setenv("RISKSTREAM_CHANGELOG", "false")
    assert not submit.changelog_on("http://jm", None) and submit.changelog_on("http://jm", True)
    monkeypatch.delenv("RISKSTREAM_CHANGELOG")
    conf["state.changelog.enabled"] = "false"
    assert not submit.changelog_on("http://jm", None) and submit.changelog_on("http://jm", True)

    def down(url, **kw):
        raise flink_rest.ClusterNotRunning("no answer")

    monkeypatch.setattr(flink_rest, "cluster_config", down)
    assert submit.changelog_on("http://jm", None, unreadable=True) and not submit.changelog_on("http://jm", None)


def test_a_jobs_changelog_on_a_cluster_without_storage_is_refused(tmp_path, monkeypatch):
    """Flink reads the changelog storage from the TaskManagers' config only: a job's --changelog on a cluster
    that has none would keep every change in memory and in _metadata. Refused at start, saying what to do."""
    from pipelines import decision_job
    from riskstream.ops.errors import StartupError

    (tmp_path / "config.yaml").write_text("state.backend.type: rocksdb\n")
    monkeypatch.setenv("FLINK_CONF_DIR", str(tmp_path))
    with pytest.raises(StartupError, match="no changelog storage.*cluster up.*--no-changelog"):
        decision_job.cluster_changelog({"state.changelog.enabled": "true"}, None)
    assert decision_job.cluster_changelog({}, None) == {"state.changelog.enabled": "false"}
    (tmp_path / "config.yaml").write_text("state.changelog:\n  enabled: true\n  storage: filesystem\n"
                                          "  dstl.dfs.base-path: file:///c/changelog\n")
    on = decision_job.cluster_changelog({}, None)
    assert on["state.changelog.enabled"] == "true" and on["state.changelog.periodic-materialize.interval"] == "3 min"


def test_no_claim_with_the_changelog_is_refused_at_start():
    """Flink cannot restore the changelog in NO_CLAIM mode (it fails at the first checkpoint after the
    restore): a --flink-conf that forces it is refused at start, saying what to do."""
    from pipelines import decision_job
    from riskstream.ops.errors import StartupError

    on, off = {"state.changelog.enabled": "true"}, {"state.changelog.enabled": "false"}
    with pytest.raises(StartupError, match="only in CLAIM mode.*--no-changelog"):
        decision_job.check_claim_mode(on, ("execution.state-recovery.claim-mode=NO_CLAIM",))
    decision_job.check_claim_mode(off, ("execution.state-recovery.claim-mode=NO_CLAIM",))
    decision_job.check_claim_mode(on, ("execution.state-recovery.claim-mode=CLAIM",))
    decision_job.check_claim_mode(on, ())
