"""docs/extending.md, followed: its tagged code blocks are applied to a temporary copy of the project, and
the new aggregate, entity and features must then work everywhere the chain runs, without any other edit:
in the Python chain against a brute-force oracle, and in the JVM stage (the copy's jar, built with the
page's Java class) bit for bit as in the Python stage.

A tagged block is preceded by ``<!-- extending: <file> after '<anchor line>' -->``: its code goes right
after the anchor line of that file; or by ``<!-- extending: <file> new -->``: its code is that new file. An
anchor that no longer exists fails the test (the page is stale).
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
TAG = re.compile(r"<!-- extending: (\S+) (?:after '([^\n]*)'|(new)) -->\s*\n([ \t]*)```(?:python|java)\n(.*?)"
                 r"\n[ \t]*```", re.S)
STD_JAVA = "udfs/jvm/src/main/java/io/riskstream/flink/aggregates/Std.java"
PACKAGES = ("udfs", "riskstream", "pipelines", "benchmarks", "models", "tests")


def _apply_doc(dst: Path) -> list[str]:
    """Copy the packages to ``dst`` and apply every tagged block; return the files changed."""
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, dst / pkg, ignore=shutil.ignore_patterns("__pycache__", "target"))
    blocks = TAG.findall(DOC.read_text())
    assert len(blocks) >= 8, "docs/extending.md lost its tagged code blocks"
    changed = []
    for rel, anchor, new, fence, code in blocks:
        f = dst / rel
        # the fence is indented with its markdown list item: the code's own indentation is what follows
        block = [line[len(fence):] if line.startswith(fence) else line for line in code.split("\n")]
        if new:
            assert not f.exists(), f"docs/extending.md: {rel} is not new"
            f.write_text("\n".join(block) + "\n")
        else:
            lines = f.read_text().split("\n")
            assert anchor in lines, f"docs/extending.md: anchor {anchor!r} is no longer a line of {rel}"
            i = lines.index(anchor)
            lines[i + 1:i + 1] = block
            f.write_text("\n".join(lines))
        changed.append(rel)
    return sorted(set(changed))


CHECK = r'''
import random
import statistics
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

# labels: a label may name the new entity's key (the wire format, the label record), decision records carry it
from udfs.chain import label_record
from udfs.decision import decision_record
from udfs.labels import parse_label
lab = parse_label(b'{"event_id":"e1","user_id":"u","device_id":"d","event_ts":1767225600000,"label":"fraud",'
                  b'"ship_to":"addr-1"}')
assert lab.key("ship_to") == "addr-1" and lab.wire()["ship_to"] == "addr-1", lab
assert label_record(lab)[Event._fields.index("ship_to")] == "addr-1"
assert parse_label(b'{"event_id":"e1","user_id":"u","device_id":"d","event_ts":1767225600000,"label":"fraud",'
                   b'"ship_to":7}').reason == "invalid_label"
rec = decision_record(parse_event(base + b',"ship_to":"addr-1"}'), "allow", 0.1, [], [0.0] * len(FEATURE_NAMES),
                      "m1", "p1", 0, False)
assert list(rec)[3:8] == ["user_id", "device_id", "ip", "payment_ref", "ship_to"] and rec["ship_to"] == "addr-1"

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

# the aggregate: the Python chain's std of amounts against the standard deviation of the window's amounts
from udfs.aggregates import AGGREGATES
from udfs.features import MISSING
assert "std" in AGGREGATES and [f.agg for f in features_for("user") if f.name == "user_spend_std_24h"] == ["std"]
i = [f.name for f in features_for("user")].index("user_spend_std_24h")  # the user's values come first
brute = {"std": lambda xs: statistics.pstdev(xs) if xs else MISSING}
by_user = {}
for ev, vals in zip(evs, got):
    by_user.setdefault(ev.user_id, []).append((ev, vals[i]))
spread = 0
for user, rows in by_user.items():
    want = oracle_features("user", [ev for ev, _ in rows], 60_000, brute=brute)
    for (ev, v), (w, _) in zip(rows, want):
        assert abs(v - w[i]) <= 1e-9 * max(1.0, abs(w[i])), (ev, v, w[i])
        spread += w[i] > 0
assert spread > 200, spread
print("ok", checked, spread)
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


def _run(dst: Path, code: str, *args: str, jars: Path | None = None) -> str:
    """Run ``code`` against the modified copy (its packages first on the path; ``jars``: the Flink jars
    folder, default this checkout's)."""
    import os

    from riskstream.paths import flink_jars_dir

    env = {**os.environ, "PYTHONPATH": str(dst), "RISKSTREAM_JARS_DIR": str(jars or flink_jars_dir()),
           "RISKSTREAM_HOME": str(dst / ".riskstream")}
    p = subprocess.run([sys.executable, "-c", code, *args], cwd=dst, env=env, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    return p.stdout


def test_the_documented_steps_work_without_touching_wiring(tmp_path):
    changed = _apply_doc(tmp_path)
    # the page's steps touch nothing else: the aggregate's two classes, the contract, the spec
    assert changed == ["udfs/aggregates.py", "udfs/events.py", "udfs/features.py", STD_JAVA]
    assert _run(tmp_path, CHECK).startswith("ok")


JVM = r'''
import json, sys
from pathlib import Path
import orjson
from pyflink.java_gateway import get_gateway
from pyflink.util.java_utils import add_jars_to_context_class_loader
from udfs import events
from udfs.chain import EntityStep, spec_document
from udfs.events import Event
from udfs.features import ENTITY_BY_NAME
import random

add_jars_to_context_class_loader([Path(sys.argv[1]).as_uri()])
J = get_gateway().jvm.io.riskstream.flink
r = random.Random(5)
evs = []
for i in range(2500):
    et = r.choice(events.EVENT_TYPES)
    evs.append(Event(f"e{i}", et, f"u{r.randrange(25)}", f"d{r.randrange(20)}", f"ip{r.randrange(9)}",
                     r.randrange(1, 90_000) / 7, "EUR", 1_767_225_600_000 + i * 40_000 + r.randrange(-90_000, 9_000),
                     None, None, f"a{r.randrange(12)}" if et == "place_order" else None))
doc = json.dumps(spec_document(60_000))
assert json.loads(doc)["aggregates"]["std"]["class"] == "Std"
jsonl = "\n".join(orjson.dumps(ev._asdict()).decode() for ev in evs)
for entity in ("user", "ship_to"):
    step = EntityStep(ENTITY_BY_NAME[entity], 60_000, 600_000)
    store, want = {}, []
    for ev in evs:
        k = step.key(ev)
        if k is None:
            want.append(step.empty_values())
            continue
        if step.duplicate(store.get(k), ev):
            want.append(None)
            continue
        store[k], vals, _, _ = step.step(store.get(k), ev)
        want.append(vals)
    got = json.loads(J.LocalRunner.run(doc, entity, 600_000, jsonl))["values"]
    assert got == want, entity
print("ok", len(evs))
'''


@pytest.fixture(scope="module")
def built_copy(tmp_path_factory) -> tuple[Path, Path]:
    """The copy with the page applied, its JVM module built (the page's Java class in it), and a Flink jars
    folder holding that jar instead of this checkout's: (copy, jars folder)."""
    from riskstream.paths import flink_jars_dir

    dst = tmp_path_factory.mktemp("extended")
    _apply_doc(dst)
    pom = dst / "udfs" / "jvm" / "pom.xml"
    p = subprocess.run(["mvn", "-B", "-q", "-f", str(pom), "package", "-DskipTests"], capture_output=True, text=True,
                       timeout=900)
    assert p.returncode == 0, p.stdout[-3000:]
    jars = dst / "flink-jars"
    jars.mkdir()
    for j in flink_jars_dir().glob("*.jar"):
        if j.name != "riskstream-jvm.jar":
            shutil.copy(j, jars / j.name)
    shutil.copy(dst / "udfs" / "jvm" / "target" / "riskstream-jvm.jar", jars / "riskstream-jvm.jar")
    return dst, jars


@pytest.mark.flink
def test_the_documented_aggregate_runs_in_the_jvm_stage_as_in_python(built_copy):
    """The copy's JVM module, built with the page's Java class, computes the new aggregate (and the new
    entity's features) bit for bit as the Python stage does; the spec document names the class."""
    dst, jars = built_copy
    assert _run(dst, JVM, str(jars / "riskstream-jvm.jar")).startswith("ok")


@pytest.mark.flink
def test_the_documented_entity_gets_its_own_stage_in_the_job_plan(built_copy):
    dst, jars = built_copy
    assert "ship_to-windows" in _run(dst, PLAN, jars=jars)


@pytest.mark.flink
def test_a_spec_naming_an_aggregate_without_its_jvm_class_is_refused_when_the_job_is_built(tmp_path):
    """The page applied without its Java class: the job refuses to build, naming the class to write."""
    _apply_doc(tmp_path)
    (tmp_path / STD_JAVA).unlink()
    with pytest.raises(AssertionError, match="no class io.riskstream.flink.aggregates.Std"):
        _run(tmp_path, PLAN)
