"""Resolve the jars named in pom-deps.txt through Maven into ``.riskstream/jars/<section>/``.

Idempotent: a section whose coordinates did not change since the last successful resolution is left
alone. Transitive *runtime* dependencies are included; ``provided`` ones (the Flink runtime itself,
which PyFlink ships) are not, so the connector never drags a second Flink onto the classpath.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path
from xml.sax.saxutils import escape

from .. import paths

DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.6.1"


class PomDepsError(ValueError):
    pass


def parse_pom_deps(text: str) -> dict[str, list[tuple[str, str, str]]]:
    """Parse ``[section]`` headers and ``group:artifact:version`` lines (``#`` starts a comment)."""
    sections: dict[str, list[tuple[str, str, str]]] = {}
    current: str | None = None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1].strip()
            sections.setdefault(current, [])
            continue
        if current is None:
            raise PomDepsError(f"pom-deps.txt line {lineno}: coordinate before any [section]: {raw!r}")
        parts = line.split(":")
        if len(parts) != 3 or not all(parts):
            raise PomDepsError(f"pom-deps.txt line {lineno}: expected group:artifact:version, got {raw!r}")
        sections[current].append((parts[0], parts[1], parts[2]))
    return sections


def _pom(section: str, coords: list[tuple[str, str, str]]) -> str:
    deps = "\n".join(
        f"    <dependency><groupId>{escape(g)}</groupId><artifactId>{escape(a)}</artifactId>"
        f"<version>{escape(v)}</version></dependency>"
        for g, a, v in coords
    )
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>riskstream.local</groupId>
  <artifactId>jars-{escape(section)}</artifactId>
  <version>0</version>
  <packaging>pom</packaging>
  <dependencies>
{deps}
  </dependencies>
</project>
"""


def resolve(sections: list[str] | None = None, force: bool = False, out=sys.stdout) -> dict[str, list[Path]]:
    """Fetch every (or the named) section; return the jar files per section."""
    spec = parse_pom_deps(paths.pom_deps_file().read_text())
    wanted = sections or list(spec)
    unknown = [s for s in wanted if s not in spec]
    if unknown:
        raise PomDepsError(f"unknown pom-deps.txt section(s) {unknown}; known: {sorted(spec)}")
    if shutil.which("mvn") is None:
        raise RuntimeError("Maven (mvn) is not on PATH; it is needed to fetch the jars in pom-deps.txt")
    result: dict[str, list[Path]] = {}
    for section in wanted:
        coords = spec[section]
        target = paths.jars_root() / section
        stamp = target / ".resolved"
        digest = hashlib.sha256(repr(coords).encode()).hexdigest()
        if not force and stamp.exists() and stamp.read_text() == digest:
            jars = sorted(target.glob("*.jar"))
            print(f"[jars] {section}: up to date ({len(jars)} jars in {target})", file=out)
            result[section] = jars
            continue
        build = paths.jars_root() / ".build" / section
        build.mkdir(parents=True, exist_ok=True)
        (build / "pom.xml").write_text(_pom(section, coords))
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        cmd = [
            "mvn", "-B", "-q", "-f", str(build / "pom.xml"),
            f"{DEPENDENCY_PLUGIN}:copy-dependencies",
            f"-DoutputDirectory={target}", "-DincludeScope=runtime",
        ]
        print(f"[jars] {section}: resolving {len(coords)} coordinates through Maven ...", file=out, flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"Maven failed for section [{section}]:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
        jars = sorted(target.glob("*.jar"))
        for jar in jars:
            print(f"[jars] {section}: fetched {jar.name}", file=out)
        stamp.write_text(digest)
        result[section] = jars
    return result


JVM_MODULE_JAR = "riskstream-jvm.jar"


def jvm_module_dir() -> Path:
    return paths.PROJECT_ROOT / "udfs" / "jvm"


def _module_digest(module: Path) -> str:
    h = hashlib.sha256()
    for f in sorted([module / "pom.xml", *(module / "src").rglob("*")]):
        if f.is_file():
            h.update(str(f.relative_to(module)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def build_jvm_module(force: bool = False, out=sys.stdout) -> Path:
    """Build riskstream's JVM operators (``udfs/jvm``, Maven) into the Flink jars folder, so jobs receive
    them with the connector through the one ``jars_dir`` setting. Rebuilt only when its sources changed
    (a digest beside the jar); Maven's own output stays in ``udfs/jvm/target`` (ignored)."""
    module = jvm_module_dir()
    target_dir = paths.flink_jars_dir()
    target_dir.mkdir(parents=True, exist_ok=True)
    jar, stamp = target_dir / JVM_MODULE_JAR, target_dir / ".riskstream-jvm.sha256"
    digest = _module_digest(module)
    if not force and jar.is_file() and stamp.is_file() and stamp.read_text() == digest:
        print(f"[jars] jvm: up to date ({jar})", file=out)
        return jar
    if shutil.which("mvn") is None:
        raise RuntimeError("Maven (mvn) is not on PATH; it is needed to build the JVM operators in udfs/jvm")
    cmd = ["mvn", "-B", "-q", "-f", str(module / "pom.xml"), "package", "-DskipTests"]
    print("[jars] jvm: building udfs/jvm with Maven ...", file=out, flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    built = module / "target" / JVM_MODULE_JAR
    if proc.returncode != 0 or not built.is_file():
        raise RuntimeError(f"Maven failed to build udfs/jvm:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    shutil.copyfile(built, jar)
    stamp.write_text(digest)
    print(f"[jars] jvm: built {jar}", file=out)
    return jar


def flink_jar_urls(jars_dir: Path | None = None) -> list[str]:
    """``file://`` URLs of the connector jars for ``pipeline.jars``; fails with what to run if absent."""
    d = Path(jars_dir) if jars_dir else paths.flink_jars_dir()
    jars = sorted(d.glob("*.jar"))
    if not jars:
        raise FileNotFoundError(
            f"no connector jars in {d}: run `riskstream jars` (or `make jars`) to fetch them from Maven, "
            "or point RISKSTREAM_JARS_DIR at a folder that holds them"
        )
    if not (d / JVM_MODULE_JAR).is_file():
        raise FileNotFoundError(
            f"riskstream's JVM operators ({JVM_MODULE_JAR}) are not in {d}: run `riskstream jars` (or `make "
            "jars`), which builds udfs/jvm with Maven, or put the jar into RISKSTREAM_JARS_DIR"
        )
    return [j.resolve().as_uri() for j in jars]
