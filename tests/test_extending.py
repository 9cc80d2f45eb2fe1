"""docs/extending.md, followed: its tagged code blocks are applied to a temporary copy of the project, and
the new entity and features must then work everywhere the chain runs, without any other edit.

A tagged block is preceded by ``<!-- extending: <file> after '<anchor line>' -->``: its code goes right
after the anchor line of that file. An anchor that no longer exists fails the test (the page is stale).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "extending.md"
TAG = re.compile(r"<!-- extending: (\S+) after '([^\n]*)' -->\s*\n([ \t]*)```python\n(.*?)\n[ \t]*```", re.S)
PACKAGES = ("udfs", "riskstream", "pipelines", "benchmarks", "models", "tests")


def _apply_doc(dst: Path) -> list[str]:
    """Copy the packages to ``dst`` and apply every tagged block; return the files changed."""
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, dst / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    blocks = TAG.findall(DOC.read_text())
    assert len(blocks) >= 5, "docs/extending.md lost its tagged code blocks"
    changed = []
    for rel, anchor, fence, code in blocks:
        f = dst / rel
        lines = f.read_text().split("\n")
        assert anchor in lines, f"docs/extending.md: anchor {anchor!r} is no longer a line of {rel}"
        i = lines.index(anchor)
        # the fence is indented with its markdown list item: the code's own indentation is what follows
        block = [line[len(fence):] if line.startswith(fence) else line for line in code.split("\n")]
        lines[i + 1:i + 1] = block
        f.write_text("\n".join(lines))
        changed.append(rel)
    return sorted(set(changed))


CHECK = r'''
import random
from tests.oracle import oracle_features
from udfs import events
from udfs.chain import Chain
from udfs.events import Event, Rejection, parse_event
from udfs.features import ENTITIES, FEATURE_NAMES, features_for
from udfs.chain import spec_document

assert [e.name for e in ENTITIES][-1] == "ship_to", ENTITIES
assert "user_refunds_24h" in FEATURE_NAMES and "ship_to_orders_1h" in FEATURE_NAMES
doc = spec_document(60_000)
assert doc["entities"][-1]["key_field"] == "ship_to" and doc["entities"][-1]["optional"]

# the contract: accepted on orders, refused elsewhere with its own reason, absent means none
base = b'{"event_id":"e1","event_type":"place_order","user_id":"u","device_id":"d","ip":"i","amount":1,"currency":"EUR","ts":1767225600000'
assert parse_event(base + b',"ship_to":"addr-1"}').ship_to == "addr-1"
assert parse_event(base + b'}').ship_to is None
bad = parse_event(base.replace(b"place_order", b"login") + b',"ship_to":"addr-1"}')
assert isinstance(bad, Rejection) and bad.reason == "invalid_ship_to", bad
assert "invalid_ship_to" in events.REASON_CODES

# the chain (replay, baselines) computes the new entity's features as the brute-force oracle does
r = random.Random(3)
evs = []
for i in range(1500):
    et = r.choice(events.EVENT_TYPES)
    evs.append(Event(f"e{i}", et, f"u{r.randrange(30)}", f"d{r.randrange(20)}", f"ip{r.randrange(9)}",
                     r.randrange(400) / 4, "EUR", 1_767_225_600_000 + i * 30_000 + r.randrange(-9_000, 9_000),
                     None, None, f"a{r.randrange(12)}" if et == "place_order" else None))
chain = Chain(allowed_lateness_ms=60_000)
got = [chain.process(ev)[0] for ev in evs]
names = [f.name for f in features_for("ship_to")]
by_key = {}
for ev, vals in zip(evs, got):
    if ev.ship_to is not None:
        by_key.setdefault(ev.ship_to, []).append((ev, vals[-len(names):]))
checked = 0
for key, rows in by_key.items():
    want = oracle_features("ship_to", [ev for ev, _ in rows], 60_000)
    for (ev, vals), (w, _) in zip(rows, want):
        assert vals == w, (ev, vals, w)
        checked += 1
assert checked == sum(ev.ship_to is not None for ev in evs) > 100
print("ok", checked)
'''

PLAN = r'''
from pipelines import decision_job
from riskstream.config import JobConfig

cfg = JobConfig(bootstrap_servers="127.0.0.1:1")
env = decision_job.make_env(cfg)
decision_job.build(env, cfg)
sg = env._generate_stream_graph(clear_transformations=False)
it = sg.getStreamNodes().iterator()
names = []
while it.hasNext():
    names.append(it.next().getOperatorName())
stages = [n for n in names if n.endswith("-windows") or n == "score-decide"]
assert stages[-2:] == ["ship_to-windows", "score-decide"], stages
print("ok", stages)
'''


def _run(dst: Path, code: str) -> str:
    """Run ``code`` against the modified copy (its packages first on the path; jars from this checkout)."""
    import os

    from riskstream.paths import flink_jars_dir

    env = {**os.environ, "PYTHONPATH": str(dst), "RISKSTREAM_JARS_DIR": str(flink_jars_dir()),
           "RISKSTREAM_HOME": str(dst / ".riskstream")}
    p = subprocess.run([sys.executable, "-c", code], cwd=dst, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    return p.stdout


def test_the_documented_entity_and_feature_steps_work_without_touching_wiring(tmp_path):
    changed = _apply_doc(tmp_path)
    assert changed == ["udfs/events.py", "udfs/features.py"]  # the page's steps touch nothing else
    assert _run(tmp_path, CHECK).startswith("ok")


@pytest.mark.flink
def test_the_documented_entity_gets_its_own_stage_in_the_job_plan(tmp_path):
    _apply_doc(tmp_path)
    assert "ship_to-windows" in _run(tmp_path, PLAN)
