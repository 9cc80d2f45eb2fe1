"""The deployment files in deploy/ (image, Flink Kubernetes Operator manifest, Prometheus configuration).

Nothing here can run them (no Docker engine, no Kubernetes, no JVM in this tier), so the tests check that
they parse and that everything they name exists and agrees:
- repository files the Dockerfile copies and image paths the manifest names;
- jars: Flink distribution jars (as the installed apache-flink wheel ships lib/, opt/ and plugins/) or
  coordinates of pom-deps.txt;
- Flink configuration keys: string constants of the option classes in the wheel's Flink jars (read with
  zipfile, no JVM); operator keys against the operator's own list;
- job flags and RISKSTREAM_* variables: JobConfig fields and riskstream.paths variables;
- metric names in the alert rules: Flink's own metric names (again from the jars) and the job's counters.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import shlex
import struct
import zipfile
from functools import lru_cache
from pathlib import Path

import pytest
import yaml
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from riskstream.config import JobConfig
from riskstream.ops.jars import parse_pom_deps

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = DEPLOY / "Dockerfile.dockerignore"
MANIFEST = DEPLOY / "k8s" / "flinkdeployment.yaml"
PROM_SNIPPET = DEPLOY / "flink-conf-prometheus.yaml"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"

PYTHON_DRIVER = "org.apache.flink.client.python.PythonDriver"
PROM_FACTORY = "org.apache.flink.metrics.prometheus.PrometheusReporterFactory"
# PythonDriver's own options (flink run -py ...), which precede the job's flags in job.args
DRIVER_OPTIONS = {"-py", "--python", "-pym", "--pyModule", "-pyfs", "--pyFiles", "-pyarch", "--pyArchives",
                  "-pyclientexec", "--pyClientExecutable", "-pyexec", "--pyExecutable", "-pyreq",
                  "--pyRequirements", "-pypath", "--pyPythonPath"}
# Operator keys used by deploy/ (kubernetes.operator.*), from KubernetesOperatorConfigOptions of the Flink
# Kubernetes Operator release 1.13.0, the first with flinkVersion v2_2. They are not in the Flink jars.
OPERATOR_KEYS = {
    "kubernetes.operator.periodic.savepoint.interval",
    "kubernetes.operator.periodic.checkpoint.interval",
    "kubernetes.operator.savepoint.history.max.count",
    "kubernetes.operator.savepoint.history.max.age",
    "kubernetes.operator.savepoint.format.type",
    "kubernetes.operator.savepoint.cleanup.enabled",
    "kubernetes.operator.savepoint.dispose-on-delete",
    "kubernetes.operator.savepoint.trigger.grace-period",
    "kubernetes.operator.job.upgrade.last-state-fallback.enabled",
    "kubernetes.operator.deployment.rollback.enabled",
    "kubernetes.operator.deployment.readiness.timeout",
    "kubernetes.operator.job.upgrade.ignore-pending-savepoint",
    "kubernetes.operator.job.savepoint-on-deletion",
    "kubernetes.operator.job.restart.failed",
    "kubernetes.operator.cluster.health-check.enabled",
    "kubernetes.operator.cluster.health-check.restarts.threshold",
    "kubernetes.operator.cluster.health-check.restarts.window",
    "kubernetes.operator.cluster.health-check.checkpoint-progress.enabled",
    "kubernetes.operator.cluster.health-check.checkpoint-progress.window",
}
# Prometheus names of Flink's metric scopes (the reporter's flink_<logical scope>_<name>), longest first
SYSTEM_SCOPES = ("flink_taskmanager_job_task_operator_", "flink_taskmanager_job_task_", "flink_taskmanager_job_",
                 "flink_taskmanager_", "flink_jobmanager_job_", "flink_jobmanager_")
OPERATOR_SCOPE = "flink_taskmanager_job_task_operator_"


# --------------------------------------------------------------------------------------------- helpers

def flink_version() -> str:
    return importlib.metadata.version("apache-flink")


def pyflink_dir() -> Path:
    spec = importlib.util.find_spec("pyflink")
    assert spec and spec.submodule_search_locations, "apache-flink is not installed"
    return Path(next(iter(spec.submodule_search_locations)))


def dist_jars() -> dict[str, Path]:
    """Jars of the Flink distribution as the apache-flink wheel ships it: relative path -> file."""
    d = pyflink_dir()
    return {p.relative_to(d).as_posix(): p for sub in ("lib", "opt", "plugins") for p in (d / sub).rglob("*.jar")}


def utf8_constants(data: bytes) -> set[str]:
    """The CONSTANT_Utf8 entries of a class file's constant pool (string literals, names)."""
    out: set[str] = set()
    if data[:4] != b"\xca\xfe\xba\xbe":
        return out
    count = struct.unpack_from(">H", data, 8)[0]
    i, index = 10, 1
    while index < count:
        tag = data[i]
        if tag == 1:
            length = struct.unpack_from(">H", data, i + 1)[0]
            out.add(data[i + 3:i + 3 + length].decode("utf-8", "replace"))
            i += 3 + length
        elif tag in (3, 4, 9, 10, 11, 12, 17, 18):
            i += 5
        elif tag in (5, 6):  # long and double take two pool slots
            i += 9
            index += 1
        elif tag in (7, 8, 16, 19, 20):
            i += 3
        elif tag == 15:
            i += 4
        else:
            raise ValueError(f"unknown constant-pool tag {tag}")
        index += 1
    return out


def jar_strings(jar: Path, wanted) -> set[str]:
    out: set[str] = set()
    with zipfile.ZipFile(jar) as z:
        for name in z.namelist():
            if name.endswith(".class") and wanted(name):
                out |= utf8_constants(z.read(name))
    return out


def _jar(rel_glob: str) -> Path:
    found = sorted(pyflink_dir().glob(rel_glob))
    assert found, f"the apache-flink wheel has no {rel_glob}"
    return found[0]


@lru_cache(maxsize=None)
def flink_option_strings() -> frozenset[str]:
    """String constants of the ConfigOption holder classes (*Options) of flink-dist and flink-python."""
    def options(n):
        return n.startswith("org/apache/flink/") and n.endswith("Options.class")
    return frozenset(jar_strings(_jar("lib/flink-dist-*.jar"), options)
                     | jar_strings(_jar("opt/flink-python-*.jar"), options))


@lru_cache(maxsize=None)
def reporter_option_strings() -> frozenset[str]:
    """Suffixes a metrics.reporter.<name>. key can take: MetricOptions and the Prometheus reporter's own."""
    metric_options = jar_strings(_jar("lib/flink-dist-*.jar"),
                                 lambda n: n == "org/apache/flink/configuration/MetricOptions.class")
    prom = jar_strings(_jar("plugins/metrics-prometheus/flink-metrics-prometheus-*.jar"),
                       lambda n: n.startswith("org/apache/flink/metrics/prometheus/"))
    return frozenset(metric_options | prom)


@lru_cache(maxsize=None)
def flink_metric_strings() -> frozenset[str]:
    """String constants of the classes that name Flink's job, checkpoint and task metrics."""
    prefixes = ("org/apache/flink/runtime/metrics/", "org/apache/flink/runtime/checkpoint/",
                "org/apache/flink/runtime/scheduler/metrics/", "org/apache/flink/runtime/executiongraph/")
    return frozenset(jar_strings(_jar("lib/flink-dist-*.jar"), lambda n: n.startswith(prefixes)))


def job_counters() -> set[str]:
    """The counters the job registers on its operator metric groups (udfs/flink.py)."""
    from udfs.policy import DECISIONS

    src = (ROOT / "udfs" / "flink.py").read_text()
    names = set(re.findall(r'\.counter\("(\w+)"\)', src))
    assert 'counter(f"decisions_{d}")' in src, "udfs/flink.py no longer names decisions_<kind> counters"
    return names | {f"decisions_{d}" for d in DECISIONS}


def known_env_vars() -> set[str]:
    paths_src = (ROOT / "riskstream" / "paths.py").read_text()
    return ({f"RISKSTREAM_{f.upper()}" for f in JobConfig.model_fields}
            | set(re.findall(r'environ\.get\("(RISKSTREAM_\w+)"', paths_src)))


def pyproject_text() -> str:
    return (ROOT / "pyproject.toml").read_text()


def duration_ms(v) -> int:
    if isinstance(v, int):
        return v
    m = re.fullmatch(r"\s*(\d+)\s*(ms|s|min|h)?\s*", str(v))
    assert m, f"not a duration: {v!r}"
    return int(m.group(1)) * {None: 1, "ms": 1, "s": 1000, "min": 60_000, "h": 3_600_000}[m.group(2)]


# ------------------------------------------------------------------------------------------ Dockerfile

class Dockerfile:
    def __init__(self, path: Path):
        self.instructions: list[tuple[str, str]] = []
        buf = ""
        for line in path.read_text().splitlines():
            s = line.strip()
            if s.startswith("#") or (not buf and not s):
                continue
            if line.rstrip().endswith("\\"):
                buf += line.rstrip()[:-1] + " "
                continue
            buf += line
            word, _, rest = buf.strip().partition(" ")
            self.instructions.append((word.upper(), rest.strip()))
            buf = ""
        assert not buf, "the Dockerfile ends inside a continued line"
        self.args: dict[str, str] = {}
        self.stages: list[dict] = []
        for word, rest in self.instructions:
            if word == "ARG" and not self.stages:
                name, _, default = rest.partition("=")
                self.args[name] = self.subst(default)
            elif word == "FROM":
                parts = self.subst(rest).split()
                self.stages.append({"image": parts[0], "name": parts[2] if len(parts) == 3 else None,
                                    "copy": [], "env": {}, "run": []})
            elif word == "COPY":
                toks = shlex.split(rest)
                flags = {t.split("=", 1)[0]: t.split("=", 1)[1] for t in toks if t.startswith("--")}
                paths = [t for t in toks if not t.startswith("--")]
                self.stages[-1]["copy"].append((flags, paths[:-1], paths[-1]))
            elif word == "ENV":
                for tok in shlex.split(rest):
                    k, _, v = tok.partition("=")
                    self.stages[-1]["env"][k] = v
            elif word == "RUN":
                self.stages[-1]["run"].append(self.subst(rest))

    def subst(self, s: str) -> str:
        return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: self.args.get(m.group(1) or m.group(2), m.group(0)), s)

    @property
    def final(self) -> dict:
        return self.stages[-1]

    def stage(self, name: str) -> dict:
        return next(s for s in self.stages if s["name"] == name)

    def image_files(self) -> dict[str, str]:
        """Image path (a file, or a folder ending in /) -> repository path, from the final stage's COPYs."""
        out = {}
        for flags, srcs, dest in self.final["copy"]:
            if "--from" in flags:
                continue
            for src in srcs:
                if (ROOT / src).is_dir():
                    out[dest.rstrip("/") + "/"] = src.rstrip("/") + "/"
                else:
                    out[(dest + Path(src).name) if dest.endswith("/") else dest] = src
        return out


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return Dockerfile(DOCKERFILE)


@pytest.fixture(scope="module")
def manifest() -> dict:
    docs = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
    assert len(docs) == 1
    return docs[0]


def job_args(manifest) -> tuple[dict[str, str], dict[str, str]]:
    """(PythonDriver options, job flags) of job.args: the driver's options come first, then the job's."""
    args = [str(a) for a in manifest["spec"]["job"]["args"]]
    driver: dict[str, str] = {}
    i = 0
    while i < len(args) and args[i] in DRIVER_OPTIONS:
        driver[args[i]] = args[i + 1]
        i += 2
    rest = args[i:]
    assert len(rest) % 2 == 0, f"job flags must come in --flag value pairs: {rest}"
    flags: dict[str, str] = {}
    for flag, value in zip(rest[::2], rest[1::2]):
        assert flag.startswith("--") and not value.startswith("--"), f"bad flag pair {flag} {value}"
        assert flag not in flags, f"{flag} given twice"
        flags[flag] = value
    return driver, flags


def all_strings(obj):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield str(k)
            yield from all_strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from all_strings(v)
    elif obj is not None:
        yield str(obj)


def flat(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# ------------------------------------------------------------------------------------------------ tests

def test_every_yaml_file_parses():
    files = sorted(DEPLOY.rglob("*.yaml")) + sorted(DEPLOY.rglob("*.yml"))
    assert {MANIFEST, PROM_SNIPPET, PROMETHEUS, ALERTS} <= set(files)
    for f in files:
        docs = [d for d in yaml.safe_load_all(f.read_text()) if d is not None]
        assert docs and all(isinstance(d, dict) for d in docs), f"{f.relative_to(ROOT)}: no YAML mapping"


def test_flinkdeployment_has_the_required_fields(manifest):
    v = Version(flink_version())
    spec = manifest["spec"]
    assert manifest["apiVersion"] == "flink.apache.org/v1beta1"
    assert manifest["kind"] == "FlinkDeployment"
    assert manifest["metadata"]["name"] and manifest["metadata"]["namespace"]
    assert re.fullmatch(r"[\w./:-]+:[\w.-]+", spec["image"]), "spec.image needs an explicit tag"
    assert spec["flinkVersion"] == f"v{v.major}_{v.minor}"  # the operator's FlinkVersion enum (v2_2)
    assert spec["serviceAccount"]
    job = spec["job"]
    assert job["jarURI"] == f"local:///opt/flink/opt/flink-python-{v}.jar"
    assert job["entryClass"] == PYTHON_DRIVER
    python_jar = dist_jars()[f"opt/flink-python-{v}.jar"]
    with zipfile.ZipFile(python_jar) as z:
        assert PYTHON_DRIVER.replace(".", "/") + ".class" in z.namelist()
    assert "-py" in job["args"]
    assert job["upgradeMode"] == "savepoint" and job["state"] == "running"
    assert isinstance(job["parallelism"], int) and job["parallelism"] >= 1
    for part in ("jobManager", "taskManager"):
        res = spec[part]["resource"]
        assert re.fullmatch(r"\d+[mg]", res["memory"]) and float(res["cpu"]) > 0, part
    conf = spec["flinkConfiguration"]
    # savepoint upgrades need a savepoint folder; HA keeps the job's checkpoints across JobManager restarts
    assert conf["execution.checkpointing.savepoint-dir"]
    assert conf["execution.checkpointing.externalized-checkpoint-retention"] == "RETAIN_ON_CANCELLATION"
    assert conf["high-availability.type"] == "kubernetes"
    assert conf["python.execution-mode"] == "thread"
    assert conf["metrics.reporter.prom.factory.class"] == PROM_FACTORY
    assert int(conf["metrics.reporter.prom.port"]) == 9249


def test_flinkdeployment_holds_the_production_rocksdb_settings(manifest):
    """The manifest carries the same RocksDB settings as the job and `cluster up` (riskstream.config)."""
    from riskstream.config import ROCKSDB_SETTINGS

    conf = manifest["spec"]["flinkConfiguration"]
    assert conf["state.backend.type"] == "rocksdb" and str(conf["execution.checkpointing.incremental"]) == "true"
    for k, v in ROCKSDB_SETTINGS.items():
        assert str(conf.get(k)) == v, f"flinkdeployment.yaml: {k} should be {v!r} (riskstream.config.ROCKSDB_SETTINGS)"


def test_flinkdeployment_runs_the_changelog_over_rocksdb(manifest):
    """The production default on Kubernetes as on `cluster up`: the changelog on, its storage on the shared
    volume beside the checkpoints (the TaskManagers read it from this config only), the settings of
    riskstream.config.CHANGELOG_SETTINGS, and restores in CLAIM mode (Flink refuses NO_CLAIM with it)."""
    from riskstream.config import CHANGELOG_BASE_PATH, CHANGELOG_SETTINGS

    conf = manifest["spec"]["flinkConfiguration"]
    assert str(conf.get("state.changelog.enabled")).lower() == "true"
    for k, v in CHANGELOG_SETTINGS.items():
        assert str(conf.get(k)) == v, f"flinkdeployment.yaml: {k} should be {v!r} (riskstream.config.CHANGELOG_SETTINGS)"
    base = conf[CHANGELOG_BASE_PATH]
    assert base.startswith("file:///flink-data/") and base != conf["execution.checkpointing.dir"], base
    assert conf["execution.state-recovery.claim-mode"] == "CLAIM"


def test_job_flags_are_jobconfig_fields_with_valid_values(manifest):
    driver, flags = job_args(manifest)
    assert set(driver) == {"-pyclientexec", "-py"}
    values = {}
    for flag, value in flags.items():
        field = flag[2:].replace("-", "_")
        assert field in JobConfig.model_fields, f"{flag} is not a job option (JobConfig has no {field})"
        values[field] = value
    assert "sasl_password" not in values, "the SASL password comes from a Secret, never from job.args"
    # restore_from would override the savepoint the operator restores from on every upgrade; rest_port is
    # the local MiniCluster's; jars_dir comes from the image (RISKSTREAM_JARS_DIR); bounded ends the job
    for field in ("restore_from", "rest_port", "jars_dir", "bounded"):
        assert field not in values, f"--{field.replace('_', '-')} does not belong in the FlinkDeployment"
    cfg = JobConfig(**values)  # the job's own validation: topics, host:port, timeouts, thresholds
    assert cfg.model_path.is_absolute()


def test_job_flags_agree_with_flink_configuration(manifest, dockerfile):
    """The job sets these itself from its flags (overriding the cluster's values): they must agree, or
    the operator sizes the cluster for one parallelism and the job runs at another."""
    spec, conf = manifest["spec"], manifest["spec"]["flinkConfiguration"]
    driver, flags = job_args(manifest)
    cfg = JobConfig(**{f[2:].replace("-", "_"): v for f, v in flags.items()})
    assert cfg.parallelism == spec["job"]["parallelism"]
    assert cfg.parallelism <= int(conf["pipeline.max-parallelism"])
    assert cfg.checkpoint_interval_ms == duration_ms(conf["execution.checkpointing.interval"])
    assert cfg.checkpoint_dir == conf["execution.checkpointing.dir"]
    from pipelines.decision_job import RESTART_STRATEGY

    assert {k: conf[k] for k in RESTART_STRATEGY} == RESTART_STRATEGY  # what the job sets, in the manifest too
    assert cfg.restart_attempts == int(conf["restart-strategy.exponential-delay.attempts-before-reset-backoff"])
    assert cfg.python_execution_mode == conf["python.execution-mode"]
    assert cfg.transaction_timeout_ms > duration_ms(conf["execution.checkpointing.timeout"])
    venv_python = dockerfile.final["env"]["PYFLINK_CLIENT_EXECUTABLE"]
    assert driver["-pyclientexec"] == conf["python.client.executable"] == conf["python.executable"] == venv_python
    slots = int(conf["taskmanager.numberOfTaskSlots"])
    assert slots <= float(spec["taskManager"]["resource"]["cpu"]), "one slot per TaskManager CPU at most"


def test_file_uris_are_on_the_mounted_volume(manifest):
    spec = manifest["spec"]
    mounts = {m["mountPath"].rstrip("/") for c in spec["podTemplate"]["spec"]["containers"]
              for m in c.get("volumeMounts", [])}
    uris = [s for s in all_strings(spec) if s.startswith("file://")]
    assert uris
    for uri in uris:
        path = uri[len("file://"):]
        assert any(path == m or path.startswith(m + "/") for m in mounts), f"{uri} is on no mounted volume"


def test_the_persistent_volume_claim_exists(manifest):
    spec = manifest["spec"]
    claims = {v["persistentVolumeClaim"]["claimName"] for v in spec["podTemplate"]["spec"]["volumes"]
              if "persistentVolumeClaim" in v}
    pvcs = {d["metadata"]["name"]: d for f in (DEPLOY / "k8s").glob("*.yaml")
            for d in yaml.safe_load_all(f.read_text()) if d and d.get("kind") == "PersistentVolumeClaim"}
    assert claims and claims <= set(pvcs), f"claims {claims} not defined in deploy/k8s ({sorted(pvcs)})"
    for name in claims:
        # JobManager and TaskManagers all write checkpoints there
        assert pvcs[name]["spec"]["accessModes"] == ["ReadWriteMany"]
        assert pvcs[name]["metadata"]["namespace"] == manifest["metadata"]["namespace"]


def test_image_paths_in_the_manifest_map_to_repository_files(manifest, dockerfile):
    files = dockerfile.image_files()
    named = {m for s in all_strings(manifest) for m in re.findall(r"/opt/riskstream/[\w./-]+", s)}
    assert "/opt/riskstream/pipelines/decision_job.py" in named
    for path in sorted(named):
        repo = files.get(path) or next(
            (r + path[len(img):] for img, r in files.items() if img.endswith("/") and path.startswith(img)), None)
        assert repo, f"{path} is not copied into the image by deploy/Dockerfile"
        assert (ROOT / repo).is_file(), f"{path} -> {repo}: no such file in the repository"
        if repo.endswith(".onnx"):  # the scorer reads the model's spec beside it
            assert (ROOT / repo).with_suffix(".json").is_file()
    # the interpreter the manifest names is the venv built by the Dockerfile
    for path in {m for s in all_strings(manifest) for m in re.findall(r"/opt/venv/[\w./-]+", s)}:
        assert path == "/opt/venv/bin/python"
    assert any("-m venv /opt/venv" in r for r in dockerfile.stage("venv")["run"])
    assert any(flags.get("--from") == "venv" and srcs == ["/opt/venv"]
               for flags, srcs, _ in dockerfile.final["copy"])


def test_dockerfile_copies_exist_and_pass_its_dockerignore(dockerfile):
    patterns = [ln.strip() for ln in DOCKERIGNORE.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert patterns[0] == "*", "the ignore file is an allow-list"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    stages = {s["name"] for s in dockerfile.stages if s["name"]}
    copied = 0
    for stage in dockerfile.stages:
        for flags, srcs, dest in stage["copy"]:
            if "--from" in flags:
                assert flags["--from"] in stages, f"COPY --from={flags['--from']}: no such stage"
                continue
            for src in srcs:
                copied += 1
                assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
                assert src.split("/")[0] in allowed, f"COPY {src}: excluded by {DOCKERIGNORE.name}"
    assert copied
    # the project pieces the brief of the image names, in the final stage
    final_srcs = {s.rstrip("/") for flags, srcs, _ in dockerfile.final["copy"] if "--from" not in flags for s in srcs}
    assert {"pipelines", "udfs", "riskstream", "models", "pyproject.toml", "pom-deps.txt"} <= final_srcs


def test_jars_named_are_distribution_or_pom_deps_jars(manifest, dockerfile):
    dist = dist_jars()
    dist_names = {Path(p).name for p in dist}
    pom = {f"{a}-{v}.jar" for _, a, v in parse_pom_deps((ROOT / "pom-deps.txt").read_text()).get("flink", [])}
    text = dockerfile.subst(DOCKERFILE.read_text()) + "\n" + "\n".join(all_strings(manifest))
    named = set(re.findall(r"[\w.${}-]+\.jar\b", text))
    assert named
    for jar in sorted(named):
        assert "$" not in jar, f"{jar}: unresolved variable"
        assert jar in dist_names or jar in pom, f"{jar} is neither a Flink distribution jar nor in pom-deps.txt"
    # a full path into the image's Flink home exists at the same place in the distribution
    # (lib/ is excepted: the Dockerfile copies flink-python from opt/ into it)
    for sub, rel in re.findall(r"/opt/flink/(opt|plugins)/([\w./-]+\.jar)", text):
        assert f"{sub}/{rel}" in dist, f"/opt/flink/{sub}/{rel} is not in the Flink distribution"
    # the connector jars reach the job through RISKSTREAM_JARS_DIR, filled from the Maven stage
    jars_dir = dockerfile.final["env"]["RISKSTREAM_JARS_DIR"]
    assert any(flags.get("--from") == "jars" and dest.rstrip("/") == jars_dir
               for flags, _, dest in dockerfile.final["copy"])
    assert any("resolve(['flink'])" in r for r in dockerfile.stage("jars")["run"])
    assert pom, "pom-deps.txt has no [flink] jars"


def test_riskstream_variables_are_known():
    known = known_env_vars()
    for f in sorted(p for p in DEPLOY.rglob("*") if p.is_file()):
        for var in set(re.findall(r"RISKSTREAM_[A-Z][A-Z0-9_]*", f.read_text())):
            assert var in known, f"{f.relative_to(ROOT)} names {var}: not a JobConfig field nor a riskstream.paths variable"


def test_secrets_come_from_a_kubernetes_secret(manifest):
    env = [e for c in (manifest["spec"]["jobManager"]["podTemplate"]["spec"]["containers"]
                       + manifest["spec"]["podTemplate"]["spec"]["containers"]) for e in c.get("env", [])]
    names = {e["name"] for e in env}
    assert "RISKSTREAM_SASL_PASSWORD" in names
    for e in env:
        if re.search(r"PASSWORD|SECRET|TOKEN|SASL", e["name"]):
            assert "value" not in e and e["valueFrom"]["secretKeyRef"]["name"], e["name"]
    conf_text = " ".join(all_strings(manifest["spec"]["flinkConfiguration"]))
    assert "sasl.jaas.config" not in conf_text and "password" not in conf_text.lower()


def test_flink_configuration_keys_are_known_options(manifest):
    keys = dict(manifest["spec"]["flinkConfiguration"])
    snippet = flat(yaml.safe_load(PROM_SNIPPET.read_text()))
    assert snippet["metrics.reporter.prom.factory.class"] == PROM_FACTORY
    options, reporter = flink_option_strings(), reporter_option_strings()
    for key in sorted(set(keys) | set(snippet)):
        if key.startswith("kubernetes.operator."):
            assert key in OPERATOR_KEYS, f"{key}: not a Flink Kubernetes Operator option"
        elif m := re.fullmatch(r"metrics\.reporter\.(\w+)\.([\w.-]+)", key):
            assert m.group(2) in reporter, f"{key}: reporters have no option {m.group(2)!r}"
        else:
            assert key in options, f"{key}: no Flink {flink_version()} option has this key"


def test_prometheus_reporter_ships_with_the_distribution(dockerfile):
    """The wheel ships the reporter under plugins/metrics-prometheus/, as the official image does (both are
    the Flink distribution), so the image loads it from there: the Dockerfile only checks it is present."""
    cls = PROM_FACTORY.replace(".", "/") + ".class"
    holders = [rel for rel, jar in dist_jars().items() if cls in zipfile.ZipFile(jar).namelist()]
    assert holders == [f"plugins/metrics-prometheus/flink-metrics-prometheus-{flink_version()}.jar"], holders
    with zipfile.ZipFile(dist_jars()[holders[0]]) as z:
        services = z.read("META-INF/services/org.apache.flink.metrics.reporter.MetricReporterFactory").decode()
    assert PROM_FACTORY in services.split()
    assert any(f"/opt/flink/{holders[0]}" in r for r in dockerfile.final["run"])


def test_base_image_matches_the_installed_flink_and_python(dockerfile):
    installed = flink_version()
    pin = re.search(r'"apache-flink==([^"]+)"', pyproject_text()).group(1)
    assert dockerfile.args["FLINK_VERSION"] == installed == pin
    image = dockerfile.args["FLINK_IMAGE"]
    # the official images' tag convention: <flink>-scala_<scala>-java<jdk>
    assert re.fullmatch(rf"flink:{re.escape(installed)}-scala_2\.12-java17", image), image
    assert dockerfile.final["image"] == image and dockerfile.stage("venv")["image"] == image
    py = dockerfile.args["PYTHON_VERSION"]
    requires = re.search(r'requires-python\s*=\s*"([^"]+)"', pyproject_text()).group(1)
    assert Version(py) in SpecifierSet(requires), f"Python {py} is outside requires-python {requires}"
    classifiers = importlib.metadata.metadata("apache-flink").get_all("Classifier") or []
    assert f"Programming Language :: Python :: {py}" in classifiers, f"apache-flink {installed} lists no Python {py}"
    assert any(f"python{py}" in r.replace("${PYTHON_VERSION}", py) for r in dockerfile.final["run"])


def test_prometheus_scrapes_the_reporter_of_the_deployment(manifest):
    conf = yaml.safe_load(PROMETHEUS.read_text())
    for rule_file in conf["rule_files"]:
        assert (PROMETHEUS.parent / rule_file).is_file()
    (job,) = [j for j in conf["scrape_configs"] if j["job_name"] == "riskstream-flink"]
    assert job["kubernetes_sd_configs"][0]["namespaces"]["names"] == [manifest["metadata"]["namespace"]]
    keep = {tuple(r["source_labels"]): str(r["regex"]) for r in job["relabel_configs"] if r.get("action") == "keep"}
    assert keep[("__meta_kubernetes_pod_label_app",)] == manifest["metadata"]["name"]
    port = manifest["spec"]["flinkConfiguration"]["metrics.reporter.prom.port"]
    assert keep[("__meta_kubernetes_pod_container_port_number",)] == str(port)
    ports = [p["containerPort"] for c in manifest["spec"]["podTemplate"]["spec"]["containers"]
             for p in c.get("ports", [])]
    assert int(port) in ports, "the pod template must declare the reporter port for pod discovery"


def test_alert_rules_use_real_metric_names(manifest):
    _, flags = job_args(manifest)
    job_name, app = flags["--job-name"], manifest["metadata"]["name"]
    counters, system = job_counters(), flink_metric_strings()
    rules = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
    assert len(rules) >= 5
    used_counters = set()
    for r in rules:
        assert r["alert"] and r["labels"]["severity"] in ("critical", "warning", "info") and r["annotations"]["summary"]
        expr = r["expr"]
        metrics = set(re.findall(r"\bflink_\w+", expr))
        assert metrics, f"{r['alert']}: no Flink metric"
        for metric in metrics:
            scope = next((s for s in SYSTEM_SCOPES if metric.startswith(s)), None)
            assert scope, f"{r['alert']}: {metric} is in no Flink metric scope"
            name = metric[len(scope):]
            if scope == OPERATOR_SCOPE and name in counters:
                used_counters.add(name)
            else:
                assert name in system, f"{r['alert']}: Flink {flink_version()} has no metric {name!r} ({metric})"
        for label, value in re.findall(r'(\w+)="([^"]*)"', expr):
            if label == "job_name":
                assert value == job_name, f"{r['alert']}: job_name {value!r}, the job is {job_name!r}"
            if label == "app":
                assert value == app
    assert {"dead_letters", "processing_errors"} <= used_counters
