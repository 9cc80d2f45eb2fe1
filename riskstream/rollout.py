"""A canary rollout of a model (issue 23 part 3): pure logic, no I/O.

A rollout moves a *candidate* model through a schedule of traffic shares (``--steps 1,5,25,100`` percent),
each step a split control message (``udfs.split``: arm ``candidate`` with the model, the champion keeps the
rest), one step every ``--every``, while the *guardrails* hold. The guardrails compare the candidate's arm
with the champion's arm over the same period (every committed decision record carrying either arm since
the rollout started):

- **block rate** and **review rate**: the difference candidate - champion, with its interval at ``z`` (99 %
  by default: the guardrails are looked at continuously, and a narrower interval would roll back good
  candidates by chance), must not lie wholly beyond ``+-block_pp`` / ``+-review_pp`` percentage points. A
  breach is a difference the data are sure of, not a point estimate over a tolerance. The split assigns
  users, not events, and blocks come in bursts from single users, so the interval takes the user as the
  unit (``metrics.cluster_diff_interval``: ratio of sums, cluster-robust variance, t): a per-event interval
  (Newcombe's) rolled back a copy of the champion at a quarter to two fifths of the start points on the
  generator's traffic. The counts per user are kept bounded (:class:`ArmCounts`);
- **score distribution**: the PSI between the two arms' score histograms (``SCORE_BINS`` equal bins on
  [0, 1]) at most ``max_score_psi``: a model whose scores mean something else than the champion's;
- **processing errors**: at most ``max_errors`` records of the candidate's arm with ``processing_error``;
- **drift**: the largest feature PSI of the rollout's inputs (both arms' rows: an event's features do not
  depend on its arm) against the candidate's training distribution (``udfs.drift``) at most ``max_psi``, or,
  when the traffic has moved away from both models, at most the champion's PSI on the same rows plus
  ``drift_margin``: the rollout judges the candidate, not the traffic (the job's drift gauges watch the
  traffic).

Nothing is judged before each arm has ``min_events`` records, the rates from 2 users or more (and the
drift check ``udfs.drift.MIN_ROWS``); a step does not advance until it could be judged. A breach rolls back at once (the split ends: the
champion decides all traffic). :func:`tick` is the state machine; the controller
(``riskstream.tools.rollout``) does the reading and the sending.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import asdict, dataclass, field, fields, replace

from .metrics import ClusterSums, cluster_diff_interval

SCORE_BINS = 10
CLUSTER_BUCKETS = 1024  # per arm: the users' groups whose counts the rate guardrails keep (ArmCounts)
CANDIDATE = "candidate"
CHAMPION = "champion"
Z99 = 2.5758293035489
# states
RUNNING, COMPLETE, ROLLED_BACK, PROMOTED = "running", "complete", "rolled_back", "promoted"
LIVE = (RUNNING, COMPLETE)  # a controller is (or should be) watching; the split is in force


class RolloutError(ValueError):
    """Bad operator input, with the reason."""


def parse_steps(text: str) -> tuple[float, ...]:
    """``1,5,25,100`` -> shares in percent, strictly increasing, each in (0, 100] and a multiple of 0.01
    (the split's resolution, ``udfs.split.BUCKETS``)."""
    out = []
    for part in text.split(","):
        part = part.strip().rstrip("%")
        try:
            v = float(part)
        except ValueError:
            raise RolloutError(f"--steps: {part!r} is not a number (give percents, e.g. 1,5,25,100)") from None
        if not math.isfinite(v) or not 0 < v <= 100:
            raise RolloutError(f"--steps: {part} is not a percent in (0, 100]")
        if abs(v * 100 - round(v * 100)) > 1e-6:
            raise RolloutError(f"--steps: {part} is not a multiple of 0.01 % (the split's resolution)")
        if out and v <= out[-1]:
            raise RolloutError(f"--steps must increase: {v:g} after {out[-1]:g}")
        out.append(round(v, 2))
    if not out:
        raise RolloutError("--steps: give at least one percent")
    return tuple(out)


@dataclass(frozen=True)
class Guardrails:
    block_pp: float = 2.0
    review_pp: float = 3.0
    max_score_psi: float | None = 0.5
    max_psi: float | None = 0.25
    drift_margin: float = 0.1
    max_errors: int = 0
    min_events: int = 500
    z: float = Z99

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "Guardrails":
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


_GUARD_NAMES = {"block": "block_pp", "review": "review_pp", "score-psi": "max_score_psi", "drift-psi": "max_psi",
                "drift-margin": "drift_margin", "errors": "max_errors", "min-events": "min_events",
                "confidence": "z"}
_OPTIONAL = {"max_score_psi", "max_psi"}


def parse_guardrails(text: str | None, base: Guardrails = Guardrails()) -> Guardrails:
    """``block=2,review=3,score-psi=0.5,drift-psi=0.25,drift-margin=0.1,errors=0,min-events=500,
    confidence=0.99``; ``score-psi=off`` / ``drift-psi=off`` turn those checks off. Unnamed ones keep
    their defaults."""
    if not text:
        return base
    upd: dict = {}
    for part in text.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep or name not in _GUARD_NAMES:
            raise RolloutError(f"--guardrails: {part!r} is not NAME=VALUE with NAME one of {sorted(_GUARD_NAMES)}")
        key = _GUARD_NAMES[name]
        if key in upd:
            raise RolloutError(f"--guardrails: {name} given twice")
        if value in ("off", "none") and key in _OPTIONAL:
            upd[key] = None
            continue
        try:
            v = float(value)
        except ValueError:
            raise RolloutError(f"--guardrails: {name}={value!r} is not a number") from None
        if not math.isfinite(v) or v < 0:
            raise RolloutError(f"--guardrails: {name} must be a finite number >= 0, got {value}")
        if key in ("max_errors", "min_events"):
            if v != int(v):
                raise RolloutError(f"--guardrails: {name} must be a whole number, got {value}")
            v = int(v)
            if key == "min_events" and v < 1:
                raise RolloutError("--guardrails: min-events must be at least 1")
        if key == "z":
            if not 0.5 <= v < 1:
                raise RolloutError(f"--guardrails: confidence is a level in [0.5, 1), e.g. 0.99, got {value}")
            from statistics import NormalDist

            v = NormalDist().inv_cdf(0.5 + v / 2)
        upd[key] = v
    return replace(base, **upd)


def cluster_bucket(key: str | None) -> int:
    """The group of ``CLUSTER_BUCKETS`` a split key (a user id) counts in: the first 8 bytes of its BLAKE2b
    digest, mod ``CLUSTER_BUCKETS``. Stable across processes (a resumed controller carries on with the same
    groups; Python's ``hash`` is salted per process) and another hash than the split's arm
    (``udfs.split.bucket``), so each arm's users spread over all groups. No key: the group of ``""``."""
    digest = hashlib.blake2b((key or "").encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % CLUSTER_BUCKETS


def _zeros() -> list[int]:
    return [0] * CLUSTER_BUCKETS


@dataclass
class ArmCounts:
    """What the guardrails need of one arm's records: counts, a score histogram, and the events, blocks and
    reviews per group of users (``bucket_*``: the rate intervals take the user as the unit).

    Memory is bounded whatever the number of users: a user's events all count in one of ``CLUSTER_BUCKETS``
    groups (:func:`cluster_bucket`), and the intervals treat each group as a cluster. Groups of whole users
    randomised into the arm are as independent as the users themselves, so the variance stays right; with
    more users than groups it is estimated from ``CLUSTER_BUCKETS`` - 1 degrees of freedom instead of
    users - 1 (t at 99 %: 2.581 instead of 2.576). 3 x 1,024 integers an arm, in memory and the state file."""

    n: int = 0
    block: int = 0
    review: int = 0
    allow: int = 0
    errors: int = 0
    scores: list[int] = field(default_factory=lambda: [0] * SCORE_BINS)
    bucket_events: list[int] = field(default_factory=_zeros)
    bucket_blocks: list[int] = field(default_factory=_zeros)
    bucket_reviews: list[int] = field(default_factory=_zeros)

    def __post_init__(self) -> None:
        # ClusterSums' sums, kept up to date record by record (a look costs nothing whatever the groups): the
        # groups, events and sum of n_g^2 shared, and per kind the sums of k_g, k_g^2 and k_g n_g
        acc = {kind: ClusterSums.of(zip(self.bucket_events, hits))
               for kind, hits in (("block", self.bucket_blocks), ("review", self.bucket_reviews))}
        self._common = [acc["block"].clusters, acc["block"].n, acc["block"].nn]
        self._kind = {kind: [a.k, a.kk, a.kn] for kind, a in acc.items()}

    def add(self, rec: dict, key_field: str = "user_id") -> None:
        """Count one decision record; ``key_field``: the record's field of the split key (``udfs.split``)."""
        self.n += 1
        b = cluster_bucket(rec.get(key_field))
        ng = self.bucket_events[b]
        self.bucket_events[b] = ng + 1
        c = self._common  # (n_g + 1)^2 - n_g^2 = 2 n_g + 1
        c[0] += ng == 0
        c[1] += 1
        c[2] += 2 * ng + 1
        d = rec.get("decision")
        for kind, hits in (("block", self.bucket_blocks), ("review", self.bucket_reviews)):
            acc, kg = self._kind[kind], hits[b]
            if d == kind:  # likewise for k_g^2, and (n_g + 1)(k_g + 1) - n_g k_g = n_g + k_g + 1
                acc[0] += 1
                acc[1] += 2 * kg + 1
                acc[2] += ng + kg + 1
                hits[b] = kg + 1
            else:  # (n_g + 1) k_g - n_g k_g
                acc[2] += kg
        if d in ("block", "review", "allow"):
            setattr(self, d, getattr(self, d) + 1)
        if "processing_error" in (rec.get("reasons") or ()):
            self.errors += 1
        s = rec.get("score")
        if isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s):
            self.scores[score_bin(s)] += 1

    def sums(self, kind: str) -> ClusterSums:
        """``kind`` ("block" or "review") per group of users, as the rate intervals take them."""
        c, (k, kk, kn) = self._common, self._kind[kind]
        return ClusterSums(c[0], c[1], k, kk, c[2], kn)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict | None) -> "ArmCounts":
        if not d:
            return cls()
        if d.get("n") and "bucket_events" not in d:
            raise RolloutError("this rollout's state was written by an earlier riskstream and has no counts per "
                               "user, which the guardrails need: end it (`riskstream rollout rollback`) and start "
                               "it again")
        if "bucket_events" in d and not all(len(d[f]) == CLUSTER_BUCKETS for f in
                                            ("bucket_events", "bucket_blocks", "bucket_reviews")):
            raise RolloutError(f"this rollout's state counts users in other than {CLUSTER_BUCKETS} groups: end it "
                               "(`riskstream rollout rollback`) and start it again")
        return cls(**d)


def score_bin(s: float) -> int:
    """The score's bin of ``SCORE_BINS`` equal bins on [0, 1] (1.0 in the last; outside clamped)."""
    return min(SCORE_BINS - 1, max(0, int(s * SCORE_BINS)))


def hist_psi(expected: list[int], actual: list[int]) -> float | None:
    """PSI of two histograms over the same bins (``udfs.drift.psi``: shares smoothed); None if one is empty."""
    from udfs.drift import psi

    if sum(expected) == 0 or sum(actual) == 0:
        return None
    return psi([c / sum(expected) for c in expected], [c / sum(actual) for c in actual])


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool | None  # None: not judged yet (too few events)
    detail: str


@dataclass(frozen=True)
class Verdict:
    status: str  # "hold" (every check judged and within bounds), "wait" (not all judged yet), "breach"
    checks: tuple[Check, ...]

    @property
    def reason(self) -> str:
        bad = [c for c in self.checks if c.ok is False]
        return "; ".join(f"{c.name}: {c.detail}" for c in bad)

    def summary(self) -> str:
        return "; ".join(f"{c.name} {'ok' if c.ok else 'BREACH' if c.ok is False else 'waiting'} ({c.detail})"
                         for c in self.checks)


def _rate_check(name: str, a: ClusterSums, b: ClusterSums, tol_pp: float, z: float) -> Check:
    d = cluster_diff_interval(a, b, z)
    if d is None:
        return Check(name, None, f"{a.clusters} and {b.clusters} users (groups of users) of 2 each")
    d_, lo, hi = d
    tol = tol_pp / 100
    text = (f"candidate {100 * a.k / a.n:.2f} % vs champion {100 * b.k / b.n:.2f} %, difference {100 * d_:+.2f} pp "
            f"[{100 * lo:+.2f}, {100 * hi:+.2f}] by user, bound +-{tol_pp:g} pp")
    return Check(name, not (lo > tol or hi < -tol), text)


def evaluate(cand: ArmCounts, champ: ArmCounts, g: Guardrails, drift: tuple[float, int] | None = None,
             champion_drift: tuple[float, int] | None = None, min_drift_rows: int = 500) -> Verdict:
    """The guardrails on the two arms' counts. ``drift``: (largest feature PSI, rows) of both arms' inputs
    against the candidate's training distribution, None when its spec has none; ``champion_drift`` the same
    rows against the champion's model's."""
    checks = []
    # errors are judged from the first record: one is enough to know
    checks.append(Check("errors", cand.errors <= g.max_errors,
                        f"{cand.errors} processing error(s) in {cand.n} records, at most {g.max_errors}"))
    enough = cand.n >= g.min_events and champ.n >= g.min_events
    wait = f"{cand.n} and {champ.n} records of {g.min_events} each"
    for name, attr, tol in (("block rate", "block", g.block_pp), ("review rate", "review", g.review_pp)):
        checks.append(_rate_check(name, cand.sums(attr), champ.sums(attr), tol, g.z)
                      if enough else Check(name, None, wait))
    if g.max_score_psi is not None:
        p = hist_psi(champ.scores, cand.scores) if enough else None
        checks.append(Check("score distribution", None, wait) if p is None else
                      Check("score distribution", p <= g.max_score_psi,
                            f"PSI {p:.3f} of the candidate's scores against the champion's, at most "
                            f"{g.max_score_psi:g}"))
    if g.max_psi is not None and drift is not None:
        psi_, rows = drift
        if rows < min_drift_rows:
            checks.append(Check("drift", None, f"{rows} of {min_drift_rows} rows"))
        else:
            bound, why = g.max_psi, f"at most {g.max_psi:g}"
            if champion_drift is not None and champion_drift[1] >= min_drift_rows \
                    and champion_drift[0] + g.drift_margin > bound:
                bound = champion_drift[0] + g.drift_margin
                why = (f"at most the champion's {champion_drift[0]:.3f} on the same rows + {g.drift_margin:g} "
                       "(the traffic is beyond both models' training)")
            checks.append(Check("drift", psi_ <= bound,
                                f"largest feature PSI {psi_:.3f} of both arms' inputs against the candidate's "
                                f"training, {why}"))
    if any(c.ok is False for c in checks):
        return Verdict("breach", tuple(checks))
    return Verdict("hold" if all(c.ok for c in checks) else "wait", tuple(checks))


# -- the state machine ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Action:
    kind: str  # "split" (share in percent), "end" (end the split), "promote" (champion message, then end)
    share: float | None = None
    reason: str = ""


def new_state(rollout_id: str, model: str, model_version: str, steps: tuple[float, ...], every_ms: int,
              guardrails: Guardrails, now_ms: int, thresholds: tuple[float, float] | None = None,
              promote_at_end: bool = False, **extra) -> dict:
    return {"id": rollout_id, "model": model, "model_version": model_version, "arm": CANDIDATE,
            "thresholds": list(thresholds) if thresholds else None, "steps": list(steps), "every_ms": every_ms,
            "guardrails": guardrails.to_json(), "promote_at_end": promote_at_end, "status": RUNNING,
            "step": -1, "step_started_at": None, "started_at": now_ms, "ended_at": None, "reason": None,
            "history": [], **extra}


def start(state: dict, now_ms: int) -> list[Action]:
    """The first step (step -1 -> 0)."""
    if state["step"] != -1 or state["status"] != RUNNING:
        return []
    return _advance(state, now_ms)


def _advance(state: dict, now_ms: int) -> list[Action]:
    state["step"] += 1
    state["step_started_at"] = now_ms
    share = state["steps"][state["step"]]
    state["history"].append({"at": now_ms, "event": "step", "step": state["step"], "share": share})
    return [Action("split", share)]


def _end(state: dict, now_ms: int, status: str, reason: str) -> None:
    state["status"], state["reason"], state["ended_at"] = status, reason, now_ms
    state["history"].append({"at": now_ms, "event": status, "reason": reason})


def tick(state: dict, now_ms: int, verdict: Verdict) -> list[Action]:
    """One look of the controller: a breach rolls back at once; at the end of a step interval, a step whose
    guardrails all hold advances (the last one completes the rollout, or promotes with ``promote_at_end``);
    one not yet judged waits for events. Mutates ``state``; returns what to send."""
    if state["status"] not in LIVE or state["step"] < 0:
        return []
    if verdict.status == "breach":
        reason = f"guardrail breached at {state['steps'][state['step']]:g} %: {verdict.reason}"
        _end(state, now_ms, ROLLED_BACK, reason)
        return [Action("end", reason=reason)]
    if state["status"] == COMPLETE or now_ms < state["step_started_at"] + state["every_ms"]:
        return []
    if verdict.status != "hold":
        state["waiting"] = f"step {state['step'] + 1} not judged yet: {verdict.summary()}"
        return []
    state.pop("waiting", None)
    if state["step"] + 1 < len(state["steps"]):
        return _advance(state, now_ms)
    if state["promote_at_end"]:
        return promote(state, now_ms, "every step held its guardrails (--promote-at-end)")
    state["status"] = COMPLETE
    state["history"].append({"at": now_ms, "event": COMPLETE})
    return []


def promote(state: dict, now_ms: int, reason: str = "by operator") -> list[Action]:
    if state["status"] not in LIVE:
        raise RolloutError(f"rollout {state['id']} is {state['status']}: nothing to promote")
    _end(state, now_ms, PROMOTED, reason)
    return [Action("promote", reason=reason)]


def rollback(state: dict, now_ms: int, reason: str = "by operator") -> list[Action]:
    if state["status"] not in LIVE:
        raise RolloutError(f"rollout {state['id']} is {state['status']}: nothing to roll back")
    _end(state, now_ms, ROLLED_BACK, reason)
    return [Action("end", reason=reason)]


def split_version(state: dict, share: float) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "-", f"{state['id']}-{share:g}")[:32]


def split_message(state: dict, share: float) -> dict:
    """The split control message of a step."""
    arm = {"name": state["arm"], "share": round(share / 100, 4), "path": state["model"]}
    if state.get("thresholds"):
        arm["review_threshold"], arm["block_threshold"] = state["thresholds"]
    return {"kind": "split", "version": split_version(state, share), "key": state.get("key", "user"),
            "salt": state.get("salt", ""), "arms": [arm]}


def end_message(state: dict, what: str) -> dict:
    return {"kind": "split", "version": f"{state['id']}-{what}"[:32], "arms": []}


def champion_message(state: dict) -> dict:
    return {"kind": "model", "role": "champion", "path": state["model"]}
