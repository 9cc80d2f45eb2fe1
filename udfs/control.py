"""Live operations without a restart: the control messages the decide stage accepts (pure logic).

Messages arrive as JSON on the control topic and reach every parallel instance of the decide stage
through Flink broadcast state, so they are checkpointed with the windows. After a restore, the job
scores and decides with the model and rules that were in force at the checkpoint.

- ``{"kind": "model", "role": "champion", "path": "models/risk_gbdt_v2.onnx"}`` switches the model that
  decides. The path must exist on every TaskManager (the image, or a shared volume); a relative path is
  taken from the project root. The new model's feature spec must match the job's, or the message is
  refused and the old model keeps scoring.
- ``{"kind": "model", "role": "challenger", "path": "..."}`` adds a shadow model. Its score, and the
  decision it would have made under the same rules, go into each decision record as ``shadow`` and never
  act. ``"path": null`` removes it.
- ``{"kind": "split", "version": "ab1", "key": "user", "arms": [{"name": "v2", "share": 0.05, "path": "...",
  "review_threshold": 0.4}]}`` splits the traffic: each arm decides its share of the users (a stable hash
  of the key, ``udfs.split``) with its own model and optionally its own thresholds; the champion keeps the
  rest. Records carry ``arm``. Every arm's model must match the job's spec, or the whole split is refused
  and the previous one (or none) stays. ``"arms": []`` ends the split.
- ``{"kind": "rules", "version": "r2", "rules": [...]}`` replaces the rule set from the next event. A rule is
  ``{"code": "...", "decision": "review"|"block", "when": [[name, op, value], ...],
  "event_types": [...]}`` where name is a feature or ``score``, op one of ``>= > <= < ==`` and value a
  finite number. All conditions must hold.

A message that fails validation raises :class:`ControlError` with the reason. The job sends it, with the
original bytes, to the dead-letter topic as ``control_rejected``. Nothing changes, and the job goes on.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from pathlib import Path

import orjson

from .events import EVENT_TYPE_INDEX
from .policy import DEFAULT_RULES, Policy, Rule
from .split import BUCKETS, Arm, Split, SplitError, arm_policy, parse_split

MAX_RULES = 200
_CODE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_VERSION = re.compile(r"^[A-Za-z0-9._-]{1,32}$")
BUILTIN_RULES_VERSION = "builtin"


class ControlError(ValueError):
    pass


def parse_rules(obj: dict) -> tuple[str, tuple[Rule, ...]]:
    version = obj.get("version")
    if not isinstance(version, str) or not _VERSION.match(version):
        raise ControlError("rules need a 'version' of 1-32 letters, digits, '.', '_', '-'")
    rules = obj.get("rules")
    if not isinstance(rules, list) or len(rules) > MAX_RULES:
        raise ControlError(f"'rules' must be a list of at most {MAX_RULES} rules")
    out, codes = [], set()
    for i, r in enumerate(rules):
        where = f"rule {i}"
        if not isinstance(r, dict) or set(r) - {"code", "decision", "when", "event_types"}:
            raise ControlError(f"{where}: an object with code, decision, when and optional event_types")
        code = r.get("code")
        if not isinstance(code, str) or not _CODE.match(code):
            raise ControlError(f"{where}: 'code' must be lower-case letters, digits and '_'")
        if code in codes:
            raise ControlError(f"{where}: duplicate code {code!r}")
        codes.add(code)
        if r.get("decision") not in ("review", "block"):
            raise ControlError(f"rule {code}: 'decision' must be review or block")
        when = r.get("when")
        if not isinstance(when, list) or not when:
            raise ControlError(f"rule {code}: 'when' must be a non-empty list of [name, op, value]")
        conds = []
        for c in when:
            if not (isinstance(c, list) and len(c) == 3 and isinstance(c[0], str) and isinstance(c[1], str)):
                raise ControlError(f"rule {code}: condition {c!r} is not [name, op, value]")
            v = c[2]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ControlError(f"rule {code}: value {v!r} is not a finite number")
            conds.append((c[0], c[1], float(v)))
        types = r.get("event_types")
        if types is not None:
            if not isinstance(types, list) or not types or any(t not in EVENT_TYPE_INDEX for t in types):
                raise ControlError(f"rule {code}: event_types must be a non-empty list of {sorted(EVENT_TYPE_INDEX)}")
            types = tuple(types)
        try:
            out.append(Rule(code, r["decision"], tuple(conds), types))
        except ValueError as e:
            raise ControlError(str(e)) from None
    return version, tuple(out)


def parse_control(raw: bytes) -> dict:
    """Validate a control message's shape (not the model file: see :meth:`Control.apply`)."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise ControlError(f"not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ControlError("a control message is a JSON object")
    kind = obj.get("kind")
    if kind == "model":
        if set(obj) - {"kind", "role", "path"} or obj.get("role") not in ("champion", "challenger"):
            raise ControlError("a model message is {kind: model, role: champion|challenger, path}")
        path = obj.get("path")
        if path is None and obj["role"] == "challenger":
            return {"kind": "model", "role": "challenger", "path": None}
        if not isinstance(path, str) or not path.endswith(".onnx"):
            raise ControlError("'path' must name an .onnx file (null only removes the challenger)")
        return {"kind": "model", "role": obj["role"], "path": path}
    if kind == "rules":
        version, rules = parse_rules(obj)
        return {"kind": "rules", "version": version, "rules": rules}
    if kind == "split":
        try:
            return parse_split(obj)
        except SplitError as e:
            raise ControlError(f"split refused: {e}") from None
    raise ControlError(f"unknown kind {kind!r} (model, rules or split)")


def state_key(msg: dict) -> str:
    """Where a message lives in broadcast state: the newest of each kind/role wins."""
    return msg["role"] if msg["kind"] == "model" else msg["kind"]


def state_text(msg: dict, raw: bytes) -> str:
    """What the JVM's control state keeps of a message: its text as sent, but a split's canonical form
    (``udfs.split.parse_split``: every default filled in), which ``io.riskstream.flink.ControlAttach`` reads
    for the key field and the salt."""
    return orjson.dumps(msg).decode() if msg["kind"] == "split" else raw.decode("utf-8")


@dataclass
class Control:
    """What the decide stage decides with: champion, optional challenger, policy (thresholds + rules)."""

    champion: object  # a udfs.scoring.Scorer
    policy: Policy
    challenger: object | None = None
    rules_version: str = BUILTIN_RULES_VERSION
    project_root: Path | None = None
    split: Split | None = None

    @classmethod
    def initial(cls, scorer, policy: Policy, project_root: Path | None = None) -> "Control":
        return cls(scorer, policy, None, BUILTIN_RULES_VERSION if policy.rules == DEFAULT_RULES else "config",
                   project_root=project_root)

    def _load(self, path: str):
        from .scoring import ModelError, Scorer

        p = Path(path)
        if not p.is_absolute() and self.project_root is not None:
            p = self.project_root / p
        try:
            return Scorer(p)
        except (ModelError, OSError) as e:
            raise ControlError(f"model refused, the current one keeps scoring: {e}") from None

    def arm_policy(self, arm: Arm) -> Policy:
        return arm_policy(self.policy, arm)

    def route(self, key: str | None) -> tuple[object, Policy, str | None]:
        """(scorer, policy, arm name) for an event whose split key is ``key``; arm None without a split."""
        if self.split is None:
            return self.champion, self.policy, None
        arm = self.split.arms[self.split.arm_index(self.split.bucket_of(key))]
        return arm.scorer or self.champion, self.arm_policy(arm), arm.name

    def apply(self, msg: dict) -> str:
        """Apply a parsed message (all or nothing); return what changed, for logs."""
        if msg["kind"] == "split":
            return self._apply_split(msg)
        if msg["kind"] == "rules":
            self.policy = replace(self.policy, rules=msg["rules"])
            self.rules_version = msg["version"]
            return f"rules {msg['version']} ({len(msg['rules'])} rules)"
        if msg["path"] is None:
            self.challenger = None
            return "challenger removed"
        scorer = self._load(msg["path"])
        if msg["role"] == "champion":
            self.champion = scorer
        else:
            self.challenger = scorer
        return f"{msg['role']} {scorer.version}"

    def _apply_split(self, msg: dict) -> str:
        if not msg["arms"]:
            self.split = None
            return f"split {msg['version']}: ended, the champion decides all traffic"
        arms = []
        for a in msg["arms"]:
            scorer = None
            if a.get("path") is not None:
                try:
                    scorer = self._load(a["path"])
                except ControlError as e:
                    raise ControlError(f"split {msg['version']} refused, arm {a['name']}: {e}") from None
            arm = Arm(a["name"], a["lo"], a["hi"], scorer, a.get("review_threshold"), a.get("block_threshold"))
            try:
                arm_policy(self.policy, arm)
            except ValueError as e:
                raise ControlError(f"split {msg['version']} refused, arm {a['name']}: {e}") from None
            arms.append(arm)
        self.split = Split(msg["version"], msg["key_field"], msg["salt"], tuple(arms))
        return f"split {msg['version']} by {msg['key']}: " + ", ".join(
            f"{a.name} {100 * (a.hi - a.lo) / BUCKETS:g} %" + (f" ({a.scorer.version})" if a.scorer else "")
            for a in arms)
