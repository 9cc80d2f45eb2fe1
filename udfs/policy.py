"""Decision policy: score thresholds plus rules on features -> allow / review / block with reason codes.

The policy is versioned: its version is part of every ``decision_id``, so a policy change yields new ids
(downstream sees a new decision) while a replay under the same policy yields the same ids (idempotent).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .features import FEATURE_NAMES, SIGNALS

ALLOW, REVIEW, BLOCK = "allow", "review", "block"
DECISIONS = (ALLOW, REVIEW, BLOCK)
_RANK = {ALLOW: 0, REVIEW: 1, BLOCK: 2}
SCORE = "score"  # a rule condition on the model's score rather than a feature
_OPS = {">=": lambda a, b: a >= b, ">": lambda a, b: a > b, "<=": lambda a, b: a <= b,
        "<": lambda a, b: a < b, "==": lambda a, b: a == b}


@dataclass(frozen=True)
class Rule:
    """``feature op value`` (all conditions must hold, optionally only for some event types) -> decision."""

    code: str
    decision: str
    conditions: tuple[tuple[str, str, float], ...]
    event_types: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.decision not in DECISIONS:
            raise ValueError(f"rule {self.code}: decision must be one of {DECISIONS}")
        for name, op, _ in self.conditions:
            if name not in FEATURE_NAMES and name != SCORE and name not in SIGNALS:
                raise ValueError(f"rule {self.code}: unknown feature {name!r} (a feature name, a signal "
                                 f"{SIGNALS} or 'score')")
            if op not in _OPS:
                raise ValueError(f"rule {self.code}: unknown operator {op!r}")


DEFAULT_RULES: tuple[Rule, ...] = (
    Rule("card_testing_velocity", BLOCK, (("user_payments_10m", ">=", 8), ("amount", "<=", 20.0)),
         ("payment", "add_payment_method")),
    Rule("device_ring_promo", REVIEW, (("device_distinct_users_24h", ">=", 4), ("device_promos_24h", ">=", 4)),
         ("promo_redeem", "signup")),
    Rule("new_account_big_order", REVIEW, (("user_age_ms", "<", 3_600_000), ("amount", ">=", 800.0)),
         ("place_order", "payment")),
    # one card paying for several accounts within a day: shared or stolen instrument (rings, BIN attacks)
    Rule("shared_payment_instrument", REVIEW, (("payment_distinct_users_24h", ">=", 3),),
         ("add_payment_method", "place_order", "payment")),
    # label feedback: users confirmed as fraud used this device in the last 7 days (a fraud ring)
    Rule("known_fraud_device", REVIEW, (("device_known_fraud_users_7d", ">=", 1),)),
)


@dataclass(frozen=True)
class Policy:
    version: str = "p1"
    review_threshold: float = 0.5
    block_threshold: float = 0.9
    rules: tuple[Rule, ...] = field(default=DEFAULT_RULES)

    def __post_init__(self) -> None:
        if not 0.0 <= self.review_threshold <= self.block_threshold <= 1.0:
            raise ValueError("thresholds must satisfy 0 <= review_threshold <= block_threshold <= 1")

    def decide(self, score: float, features: list[float], event_type: str, late: bool = False,
               signals: dict[str, float] | None = None) -> tuple[str, list[str]]:
        """Return (decision, reason codes). The strongest of score band and rules wins."""
        decision = ALLOW
        reasons: list[str] = []
        if score >= self.block_threshold:
            decision = BLOCK
            reasons.append("score_block")
        elif score >= self.review_threshold:
            decision = REVIEW
            reasons.append("score_review")
        idx = _index()
        for rule in self.rules:
            if rule.event_types and event_type not in rule.event_types:
                continue
            if all(_OPS[op](score if name == SCORE else features[idx[name]] if name in idx
                            else (signals or {}).get(name, 0.0), value)
                   for name, op, value in rule.conditions):
                reasons.append(f"rule:{rule.code}")
                if _RANK[rule.decision] > _RANK[decision]:
                    decision = rule.decision
        if late:
            reasons.append("late_event")
        return decision, reasons


    def decide_many(self, scores, X, event_types: list[str], lates, S=None) -> tuple[list[str], list[list[str]]]:
        """:meth:`decide` over a batch at once: ``scores`` (n), ``X`` (n x features, float64), ``S`` (n x
        ``SIGNALS``, NaN or a None matrix for signals no stage set, read as 0.0 like an absent one).
        Returns (decisions, reasons) equal to :meth:`decide` row by row.

        Pitfall: compare in float64. A float32 score against a float threshold compares in float32 under
        NumPy 2 and can disagree with the per-row comparison at the threshold."""
        import numpy as np

        scores = np.asarray(scores, dtype=np.float64)
        n = len(scores)
        X = np.asarray(X, dtype=np.float64)
        S = np.zeros((n, len(SIGNALS))) if S is None else np.nan_to_num(np.asarray(S, dtype=np.float64), nan=0.0)
        rank = np.zeros(n, dtype=np.int8)
        reasons: list[list[str]] = [[] for _ in range(n)]
        block = scores >= self.block_threshold
        review = ~block & (scores >= self.review_threshold)
        rank[block], rank[review] = 2, 1
        for i in np.flatnonzero(block):
            reasons[i].append("score_block")
        for i in np.flatnonzero(review):
            reasons[i].append("score_review")
        idx, sidx = _index(), {name: i for i, name in enumerate(SIGNALS)}
        types = np.asarray(event_types, dtype=object)
        for rule in self.rules:
            hit = np.isin(types, rule.event_types) if rule.event_types else np.ones(n, dtype=bool)
            for name, op, value in rule.conditions:
                col = scores if name == SCORE else X[:, idx[name]] if name in idx else S[:, sidx[name]]
                hit &= _OPS[op](col, value)
            code = f"rule:{rule.code}"
            for i in np.flatnonzero(hit):
                reasons[i].append(code)
            rank = np.where(hit, np.maximum(rank, _RANK[rule.decision]), rank)
        for i in np.flatnonzero(np.asarray(lates, dtype=bool)):
            reasons[i].append("late_event")
        return [DECISIONS[r] for r in rank.tolist()], reasons


_IDX: dict[str, int] = {}


def _index() -> dict[str, int]:
    if not _IDX:
        _IDX.update({n: i for i, n in enumerate(FEATURE_NAMES)})
    return _IDX
