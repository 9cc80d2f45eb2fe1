"""State backend, memory and any Flink setting, on every path: flags and RISKSTREAM_* variables of `run`,
`submit` and `cluster up`, FLINK_CONF_DIR for a local run, the precedence between them, and what reaches
the Flink configuration of a built job (the JVM's own view of it, not ours)."""

from __future__ import annotations

import argparse

import pytest

from riskstream.config import LOCAL_ROCKSDB_MANAGED_MEMORY, JobConfig
from riskstream.jobflags import add_job_flags, job_config


def _cfg(argv: list[str], monkeypatch=None, env: dict[str, str] | None = None) -> JobConfig:
    ap = argparse.ArgumentParser()
    add_job_flags(ap)
    for k, v in (env or {}).items():
        monkeypatch.setenv(k, v)
    return job_config(ap.parse_args(argv))


def test_defaults_by_where_the_job_runs():
    cfg = JobConfig()
    assert cfg.state_backend is None and cfg.max_parallelism == 128
    local, cluster = cfg.flink_settings(local=True), cfg.flink_settings(local=False)
    assert local == {"state.backend.type": "hashmap"}
    assert cluster == {"state.backend.type": "rocksdb", "execution.checkpointing.incremental": "true",
                       "state.backend.rocksdb.timer-service.factory": "ROCKSDB",
                       "state.backend.rocksdb.use-bloom-filter": "true"}
    # unset, the job leaves the changelog to where it runs: off for `run`, the cluster's for `submit`
    assert cfg.changelog is None and not any(k.startswith("state.changelog") for k in {**local, **cluster})
    on = JobConfig(state_backend="rocksdb", changelog=True)
    assert {k: v for k, v in on.flink_settings(True).items() if k.startswith("state.changelog")} == {
        "state.changelog.enabled": "true", "state.changelog.storage": "filesystem",
        "state.changelog.periodic-materialize.interval": "3 min",
        "state.changelog.dstl.dfs.base-path": on.checkpoint_dir[: -len("/checkpoints")] + "/changelog"}
    # on a cluster the storage is the TaskManagers' (Flink reads it from their config only): not the job's
    assert {k for k in on.flink_settings(False) if k.startswith("state.changelog")} == {
        "state.changelog.enabled", "state.changelog.periodic-materialize.interval"}
    # --no-changelog: off for this job even on a cluster that turns it on
    assert JobConfig(changelog=False).flink_settings(False)["state.changelog.enabled"] == "false"


def test_changelog_in_effect_on_a_cluster():
    """The job's on/off beats the cluster's; the storage and folder are always the cluster's."""
    from riskstream.config import changelog_in_effect

    cluster = {"state.changelog.enabled": "true", "state.changelog.storage": "filesystem",
               "state.changelog.dstl.dfs.base-path": "file:///c/changelog",
               "state.changelog.periodic-materialize.interval": "3 min"}
    assert changelog_in_effect({}, cluster) == cluster
    assert changelog_in_effect({"state.changelog.enabled": "false"}, cluster) == {"state.changelog.enabled": "false"}
    assert changelog_in_effect({}, {}) == {"state.changelog.enabled": "false"}
    on = changelog_in_effect({"state.changelog.enabled": "true", "state.changelog.periodic-materialize.interval": "1 min",
                              "state.changelog.dstl.dfs.base-path": "file:///job/own"},
                             {**cluster, "state.changelog.enabled": "false"})
    assert on == {**cluster, "state.changelog.periodic-materialize.interval": "1 min"}
    # a cluster without a changelog storage: Flink's default, memory, which the job refuses
    assert changelog_in_effect({"state.changelog.enabled": "true"}, {})["state.changelog.storage"] == "memory"


def test_flags_variables_and_flink_conf_precedence(monkeypatch):
    cfg = _cfg(["--state-backend", "rocksdb", "--no-incremental-checkpoints", "--rocksdb-local-dir", "/fast/disk",
                "--managed-memory", "1g", "--flink-conf", "state.backend.rocksdb.block.cache-size=64m",
                "--flink-conf", "execution.checkpointing.incremental=true"])
    s = cfg.flink_settings(local=True)
    assert s["state.backend.type"] == "rocksdb" and s["state.backend.rocksdb.localdir"] == "/fast/disk"
    assert s["taskmanager.memory.managed.size"] == "1g"
    assert s["state.backend.rocksdb.block.cache-size"] == "64m"
    assert s["execution.checkpointing.incremental"] == "true"  # the flink_conf item beats the flag
    # variables when no flag: ';' separates items, a JSON list keeps values with ';'
    cfg = _cfg([], monkeypatch, {"RISKSTREAM_STATE_BACKEND": "rocksdb",
                                 "RISKSTREAM_FLINK_CONF": "a.b=1; c.d = x y"})
    assert cfg.flink_conf == ("a.b=1", "c.d=x y")
    assert cfg.flink_settings(local=True)["taskmanager.memory.managed.size"] == LOCAL_ROCKSDB_MANAGED_MEMORY
    cfg = _cfg([], monkeypatch, {"RISKSTREAM_FLINK_CONF": '["env.java.opts.all=-Da=1;b"]'})
    assert cfg.flink_conf == ("env.java.opts.all=-Da=1;b",)
    # a flag beats the variable
    assert _cfg(["--state-backend", "hashmap"], monkeypatch).state_backend == "hashmap"


@pytest.mark.parametrize("argv,fix", [
    (["--state-backend", "memory"], "hashmap"),
    (["--flink-conf", "no-value"], "KEY=VALUE"),
    (["--flink-conf", "=1"], "KEY=VALUE"),
    (["--managed-memory", "lots"], "memory size"),
    (["--taskmanager-heap", "2 gigs"], "memory size"),
    (["--parallelism", "4", "--max-parallelism", "2"], "max_parallelism"),
])
def test_bad_settings_fail_at_start_with_the_fix(argv, fix):
    with pytest.raises(SystemExit) as e:
        _cfg(argv)
    assert fix in str(e.value)


def test_submit_passes_every_setting_and_refuses_cluster_memory():
    from riskstream.ops.submit import SubmitError, job_flags

    argv, _ = job_flags({"state_backend": "hashmap", "incremental_checkpoints": False,
                         "flink_conf": ["a.b=1", "c=2"]})
    assert argv == ["--state-backend", "hashmap", "--no-incremental-checkpoints", "--flink-conf", "a.b=1",
                    "--flink-conf", "c=2"]
    for name in ("managed_memory", "taskmanager_heap"):
        with pytest.raises(SubmitError, match="cluster up"):
            job_flags({name: "1g"})


def test_cluster_config_is_rocksdb_by_default_and_takes_every_setting(tmp_path):
    from riskstream.ops import cluster

    lay = cluster.ClusterLayout(root=tmp_path, rest_port=8081)
    conf = cluster.cluster_config(lay, 2, 6123)
    assert conf["state.backend.type"] == "rocksdb" and conf["execution.checkpointing.incremental"] is True
    assert conf["state.backend.rocksdb.timer-service.factory"] == "ROCKSDB"
    # the production default: the changelog over RocksDB, into the cluster's folder, materialized every 3 min
    assert conf["state.changelog.enabled"] is True and conf["state.changelog.storage"] == "filesystem"
    assert conf["state.changelog.dstl.dfs.base-path"] == (tmp_path / "changelog").resolve().as_uri()
    assert conf["state.changelog.periodic-materialize.interval"] == "3 min"
    # --no-changelog: off, but the storage stays configured, so a job's own --changelog works on it
    conf = cluster.cluster_config(lay, 2, 6123, cluster.ClusterSettings(changelog=False))
    assert conf["state.changelog.enabled"] is False
    assert conf["state.changelog.dstl.dfs.base-path"] == (tmp_path / "changelog").resolve().as_uri()
    assert conf["taskmanager.memory.process.size"] == cluster.TASKMANAGER_MEMORY
    s = cluster.ClusterSettings(state_backend="hashmap", taskmanager_heap="3g", managed_memory="256m",
                                flink_conf=("taskmanager.numberOfTaskSlots=4",))
    conf = cluster.cluster_config(lay, 2, 6123, s)
    assert conf["state.backend.type"] == "hashmap" and "execution.checkpointing.incremental" not in conf
    assert conf["state.changelog.enabled"] is False  # hashmap: small state, no changelog unless asked for
    assert conf["taskmanager.memory.task.heap.size"] == "3g" and conf["taskmanager.memory.managed.size"] == "256m"
    assert "taskmanager.memory.process.size" not in conf  # derived from heap + managed, no conflict
    assert conf["taskmanager.numberOfTaskSlots"] == "4"  # flink_conf last


def test_cluster_up_flags_are_validated(monkeypatch):
    from riskstream.cli import build_parser, cluster_settings

    a = build_parser().parse_args(["cluster", "up", "--taskmanagers", "2", "--managed-memory", "700m",
                                   "--flink-conf", "x.y=1"])
    s = cluster_settings(a)
    assert (s.taskmanagers, s.state_backend, s.managed_memory, s.flink_conf) == (2, "rocksdb", "700m", ("x.y=1",))
    # `cluster up` without flags: RocksDB with the changelog over it (off before: opt-in with --changelog)
    assert s.changelog is None and s.changelog_on
    assert not cluster_settings(build_parser().parse_args(["cluster", "up", "--no-changelog"])).changelog_on
    assert not cluster_settings(build_parser().parse_args(["cluster", "up", "--state-backend", "hashmap"])).changelog_on
    assert cluster_settings(build_parser().parse_args(["cluster", "up", "--state-backend", "hashmap",
                                                       "--changelog"])).changelog_on
    monkeypatch.setenv("RISKSTREAM_CHANGELOG", "false")
    assert not cluster_settings(build_parser().parse_args(["cluster", "up"])).changelog_on
    assert cluster_settings(build_parser().parse_args(["cluster", "up", "--changelog"])).changelog_on
    monkeypatch.delenv("RISKSTREAM_CHANGELOG")
    monkeypatch.setenv("RISKSTREAM_FLINK_CONF", "p.q=2")
    assert cluster_settings(build_parser().parse_args(["cluster", "up"])).flink_conf == ("p.q=2",)
    for bad in (["--taskmanagers", "0"], ["--managed-memory", "much"], ["--flink-conf", "novalue"]):
        with pytest.raises(SystemExit, match="cluster up"):
            cluster_settings(build_parser().parse_args(["cluster", "up", *bad]))


@pytest.mark.flink
def test_the_built_job_carries_the_settings(tmp_path, monkeypatch):
    """What the JVM's configuration of a built job holds, FLINK_CONF_DIR's file as the local base: the
    file's backend applies when none is configured, riskstream's flags beat the file, ``extra`` (code)
    beats the flags, and a flink_conf item beats everything."""
    from pipelines import decision_job

    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    (conf_dir / "config.yaml").write_text("state:\n  backend:\n    type: rocksdb\n"
                                          "taskmanager.memory.managed.size: 300m\n"
                                          "restart-strategy.exponential-delay.attempts-before-reset-backoff: 99\n")
    monkeypatch.setenv("FLINK_CONF_DIR", str(conf_dir))
    assert decision_job.flink_conf_dir_settings()["state.backend.type"] == "rocksdb"
    cfg = JobConfig(checkpoint_dir=(tmp_path / "ck").as_uri(),
                    flink_conf=("state.backend.rocksdb.block.cache-size=32m", "pipeline.name=overridden"))
    env = decision_job.make_env(cfg, extra={"state.backend.rocksdb.localdir": str(tmp_path / "rocks"),
                                            "pipeline.name": "from-extra"})
    jconf = dict(env._j_stream_execution_environment.getConfiguration().toMap())
    assert jconf["state.backend.type"] == "rocksdb"  # the file's, no flag given
    assert jconf["execution.checkpointing.incremental"] == "true"
    assert jconf["state.backend.rocksdb.timer-service.factory"] == "ROCKSDB"
    assert jconf["taskmanager.memory.managed.size"] == LOCAL_ROCKSDB_MANAGED_MEMORY  # riskstream's beats the file's
    assert jconf["restart-strategy.exponential-delay.attempts-before-reset-backoff"] == str(cfg.restart_attempts)
    assert {k: jconf[k] for k in decision_job.RESTART_STRATEGY} == decision_job.RESTART_STRATEGY
    no_restarts = decision_job.make_env(cfg.model_copy(update={"restart_attempts": 0}))
    assert no_restarts._j_stream_execution_environment.getConfiguration().toMap()["restart-strategy.type"] == "none"
    assert jconf["state.backend.rocksdb.localdir"] == str(tmp_path / "rocks")
    assert jconf["state.backend.rocksdb.block.cache-size"] == "32m"
    assert jconf["pipeline.name"] == "overridden"  # flink_conf beats extra
    assert jconf["pipeline.max-parallelism"] == "128"
    monkeypatch.delenv("FLINK_CONF_DIR")
    env = decision_job.make_env(cfg.model_copy(update={"state_backend": "hashmap", "flink_conf": ()}))
    jconf = dict(env._j_stream_execution_environment.getConfiguration().toMap())
    assert jconf["state.backend.type"] == "hashmap" and "execution.checkpointing.incremental" not in jconf


@pytest.mark.flink
def test_taskmanager_heap_sizes_the_local_jvm():
    """--taskmanager-heap reaches the local run's JVM (-Xmx through JVM_ARGS, before the first Java object):
    the JVM's own maximum heap, in a fresh interpreter."""
    import subprocess
    import sys

    from riskstream.paths import PROJECT_ROOT

    code = ("from pipelines import decision_job\nfrom riskstream.config import JobConfig\n"
            "decision_job.make_env(JobConfig(taskmanager_heap='768 m'))\n"
            "from pyflink.java_gateway import get_gateway\n"
            "print('MAXHEAP', get_gateway().jvm.java.lang.Runtime.getRuntime().maxMemory() // 2**20)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, cwd=PROJECT_ROOT)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("MAXHEAP")]
    assert proc.returncode == 0 and lines, proc.stderr[-2000:]
    assert int(lines[0].split()[1]) == 768


def test_cluster_sized_by_heap_drops_the_distributions_total(tmp_path):
    """`cluster up --taskmanager-heap`: heap and managed memory fix the TaskManager; the distribution's own
    process size would contradict them, so the written config.yaml has none."""
    from riskstream.ops import cluster

    lay = cluster.ClusterLayout(root=tmp_path, rest_port=8081)
    text = cluster.write_conf(lay, 2, 6123, settings=cluster.ClusterSettings(taskmanager_heap="2g")).read_text()
    assert 'taskmanager.memory.task.heap.size: "2g"' in text and "taskmanager.memory.managed.size" in text
    assert "taskmanager.memory.process.size" not in text and "taskmanager.memory.flink.size" not in text
    text = cluster.write_conf(lay, 2, 6123).read_text()
    assert f'taskmanager.memory.process.size: "{cluster.TASKMANAGER_MEMORY}"' in text
