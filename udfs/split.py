"""A traffic split (A/B test) of the deciding model: pure logic, the same in every runtime.

A split message (``udfs.control``, kind ``split``) names arms besides the champion, each with its share of
the traffic, its own model and optionally its own score thresholds::

    {"kind": "split", "version": "ab1", "key": "user", "salt": "",
     "arms": [{"name": "v2", "share": 0.05, "path": "models/risk_gbdt_v2.onnx",
               "review_threshold": 0.4, "block_threshold": 0.9}]}

The champion (arm ``champion``) keeps the rest. ``"arms": []`` ends the split.

Assignment: an event goes to the arm of its *bucket*, a stable hash of the split's entity key (the user by
default, so one user always sees one arm, across restarts and on every subtask):
``bucket = first 8 bytes of sha256(salt + "\\x1f" + key), big-endian, mod BUCKETS``. The arms take
contiguous bucket ranges in the order listed, from bucket 0; the champion takes the rest (the tail). An
event without a key (an optional entity's, e.g. no payment instrument) goes to the champion. Changing a
share moves only the users of the buckets between the old and the new boundary; another ``salt``
reshuffles everyone (a new experiment).

The JVM computes the same bucket (``io.riskstream.flink.ArmBucket``); :data:`BUCKETS` reaches it from here.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass

from .features import ENTITIES

BUCKETS = 10_000  # the resolution of a share: 0.0001 (0.01 %)
CHAMPION = "champion"
SPLIT_KEYS = {e.name: e.key_field for e in ENTITIES}
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,31}$")
_VERSION = re.compile(r"^[A-Za-z0-9._-]{1,32}$")
MAX_ARMS = 16
_ARM_FIELDS = {"name", "share", "path", "review_threshold", "block_threshold"}


class SplitError(ValueError):
    """A split message that cannot be applied, with the reason."""


def bucket(key: str | None, salt: str = "", buckets: int = BUCKETS) -> int:
    """The key's bucket in [0, buckets), or -1 without a key."""
    if key is None:
        return -1
    h = hashlib.sha256(f"{salt}\x1f{key}".encode("utf-8")).digest()
    return int.from_bytes(h[:8], "big") % buckets


def _share_buckets(name: str, share) -> int:
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not math.isfinite(share):
        raise SplitError(f"arm {name}: 'share' must be a number in (0, 1], got {share!r}")
    if not (0 < share <= 1 or (name == CHAMPION and share == 0)):
        raise SplitError(f"arm {name}: share {share} is not in (0, 1]")
    n = round(share * BUCKETS)
    if abs(share * BUCKETS - n) > 1e-6:
        raise SplitError(f"arm {name}: share {share} is not a multiple of {1 / BUCKETS:g} (the split's resolution)")
    return n


def _threshold(name: str, arm: dict, which: str) -> float | None:
    v = arm.get(which)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and 0 <= v <= 1):
        raise SplitError(f"arm {name}: {which} must be a number in [0, 1], got {v!r}")
    return float(v)


def parse_split(obj: dict) -> dict:
    """Validate a split message (the model files are checked when it is applied); return its canonical
    form: every default filled in, the key's field (``key_field``) and each arm's bucket range ``[lo, hi)``
    added, the champion last. The canonical form parses to itself."""
    if set(obj) - {"kind", "version", "key", "key_field", "salt", "arms"}:
        raise SplitError(f"unknown field(s) {sorted(set(obj) - {'kind', 'version', 'key', 'key_field', 'salt', 'arms'})} "
                         "(a split is {kind: split, version, key, salt, arms: [{name, share, path, "
                         "review_threshold, block_threshold}]})")
    version = obj.get("version")
    if not isinstance(version, str) or not _VERSION.match(version):
        raise SplitError("a split needs a 'version' of 1-32 letters, digits, '.', '_', '-'")
    key = obj.get("key", "user")
    if key not in SPLIT_KEYS:
        raise SplitError(f"'key' must be an entity of the spec, one of {sorted(SPLIT_KEYS)}, got {key!r}")
    salt = obj.get("salt", "")
    if not isinstance(salt, str) or len(salt) > 64:
        raise SplitError("'salt' must be a string of at most 64 characters")
    arms = obj.get("arms")
    if not isinstance(arms, list) or len(arms) > MAX_ARMS:
        raise SplitError(f"'arms' must be a list of at most {MAX_ARMS} arms ([] ends the split)")
    out, names, lo, champion = [], set(), 0, None
    for i, arm in enumerate(arms):
        if not isinstance(arm, dict) or set(arm) - _ARM_FIELDS - {"lo", "hi"}:
            raise SplitError(f"arm {i}: an object with name, share, path and optional review_threshold, "
                             "block_threshold")
        name = arm.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise SplitError(f"arm {i}: 'name' must be 1-32 lower-case letters, digits, '.', '_', '-'")
        if name in names:
            raise SplitError(f"arm {name}: named twice")
        names.add(name)
        n = _share_buckets(name, arm.get("share"))
        review, block = _threshold(name, arm, "review_threshold"), _threshold(name, arm, "block_threshold")
        if name == CHAMPION:
            if arm.get("path") is not None or review is not None or block is not None:
                raise SplitError("arm champion: the champion decides with the job's model and thresholds; "
                                 "give it only a share")
            champion = n
            continue
        path = arm.get("path")
        if not isinstance(path, str) or not path.endswith(".onnx"):
            raise SplitError(f"arm {name}: 'path' must name an .onnx file")
        if review is not None and block is not None and review > block:
            raise SplitError(f"arm {name}: review_threshold {review} is above block_threshold {block}")
        a = {"name": name, "share": n / BUCKETS, "path": path}
        if review is not None:
            a["review_threshold"] = review
        if block is not None:
            a["block_threshold"] = block
        a["lo"], a["hi"] = lo, lo + n
        lo += n
        out.append(a)
    if champion is not None and lo + champion != BUCKETS:
        raise SplitError(f"the arms add up to {(lo + champion) / BUCKETS:g}, not 1 (or leave the champion out: "
                         "it keeps the rest)")
    if lo > BUCKETS:
        raise SplitError(f"the arms besides the champion add up to {lo / BUCKETS:g}, more than 1")
    if out:
        out.append({"name": CHAMPION, "share": (BUCKETS - lo) / BUCKETS, "lo": lo, "hi": BUCKETS})
    return {"kind": "split", "version": version, "key": key, "key_field": SPLIT_KEYS[key], "salt": salt,
            "arms": out}


@dataclass(frozen=True)
class Arm:
    name: str
    lo: int
    hi: int
    scorer: object | None  # a udfs.scoring.Scorer; None: the champion's (whatever model is champion then)
    review_threshold: float | None = None
    block_threshold: float | None = None


@dataclass(frozen=True)
class Split:
    """An applied split: the arms in bucket order, the champion last."""

    version: str
    key_field: str
    salt: str
    arms: tuple[Arm, ...]

    def bucket_of(self, key: str | None) -> int:
        return bucket(key, self.salt)

    def arm_index(self, b: int) -> int:
        """The index in :attr:`arms` of bucket ``b`` (-1, no key: the champion)."""
        if b >= 0:
            for i, a in enumerate(self.arms):
                if a.lo <= b < a.hi:
                    return i
        return len(self.arms) - 1

    def arm_indices(self, buckets):
        """:meth:`arm_index` over an array of buckets (numpy)."""
        import numpy as np

        b = np.asarray(buckets, dtype=np.int64)
        his = np.asarray([a.hi for a in self.arms[:-1]], dtype=np.int64)
        idx = np.searchsorted(his, b, side="right")  # arm k holds [lo_k, hi_k); the arms are contiguous from 0
        return np.where(b < 0, len(self.arms) - 1, idx)


def arm_policy(policy, arm: Arm):
    """The policy an arm decides with: the job's (its rules in force), with the arm's thresholds. An arm
    with its own thresholds has its own policy version, ``<version>+<arm>``."""
    from dataclasses import replace

    if arm.review_threshold is None and arm.block_threshold is None:
        return policy
    return replace(policy, version=f"{policy.version}+{arm.name}",
                   review_threshold=policy.review_threshold if arm.review_threshold is None else arm.review_threshold,
                   block_threshold=policy.block_threshold if arm.block_threshold is None else arm.block_threshold)
