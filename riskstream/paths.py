"""Where riskstream keeps its local files.

Everything lives under one ignored work folder, ``.riskstream/`` in the project checkout by default
(``RISKSTREAM_HOME`` moves it). Nothing here names a machine path: the root is derived from this file.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def home() -> Path:
    return Path(os.environ.get("RISKSTREAM_HOME", PROJECT_ROOT / ".riskstream")).resolve()


def jars_root() -> Path:
    return Path(os.environ.get("RISKSTREAM_JARS_ROOT", home() / "jars")).resolve()


def flink_jars_dir() -> Path:
    """The single setting through which jobs receive their connector jars (RISKSTREAM_JARS_DIR)."""
    return Path(os.environ.get("RISKSTREAM_JARS_DIR", jars_root() / "flink")).resolve()


def kafka_jars_dir() -> Path:
    return jars_root() / "kafka"


def pom_deps_file() -> Path:
    return PROJECT_ROOT / "pom-deps.txt"


def models_dir() -> Path:
    return PROJECT_ROOT / "models"
