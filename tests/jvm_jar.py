"""Build the JVM module (udfs/jvm) once per test session and hand its jar to tests."""
from __future__ import annotations
import subprocess
from pathlib import Path
ROOT = Path(__file__).resolve().parent.parent
def build_jar() -> Path:
    subprocess.run(["mvn", "-B", "-q", "-f", str(ROOT / "udfs" / "jvm" / "pom.xml"), "package", "-DskipTests"],
                   check=True, capture_output=True, text=True)
    return ROOT / "udfs" / "jvm" / "target" / "riskstream-jvm.jar"
