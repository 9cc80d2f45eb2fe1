"""The case workflow as plain functions: statuses, who may do what, what each step does to the label, and
a case's priority and due time. The store applies these inside its transactions; the pages only call it.

Statuses (``cases.status``):

- ``open``: in the queue. ``owner`` (who claimed it) may be set.
- ``snoozed``: out of the queue until ``snooze_until``; then it is open again (:func:`effective_status`).
- ``escalated``: waits for a lead; only a lead or an admin decides it.
- ``approval``: an analyst proposed to overturn a block (``legit`` on a ``block`` case); a second person,
  a lead or admin who is not the proposer, approves (the case closes with that verdict) or rejects (open
  again).
- ``closed``: with a verdict: ``fraud``, ``legit`` or ``inconclusive``.

Labels (what goes to the labels topic; see docs/contracts.md, Labels): only a ``fraud`` or ``legit`` verdict
that closes a case sends a label, through the outbox, exactly once. Escalate, snooze, inconclusive, a
proposal awaiting approval and a rejection send nothing. A reopen sends nothing either: a label already on
the topic stays the event's label until the case is closed again. Closing a reopened case with the verdict
its last label already says sends nothing (the topic says it already); with the other verdict it sends one
*corrected* label (``revision`` 2, 3, ...), and since the newest label of an event wins, the job counts the
correction. Closing a reopened case ``inconclusive`` leaves the earlier label standing (a label cannot be
withdrawn, only corrected).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

ROLES = ("analyst", "lead", "admin")
STATUSES = ("open", "snoozed", "escalated", "approval", "closed")
VERDICTS = ("fraud", "legit")  # the verdicts that are labels
CLOSING = ("fraud", "legit", "inconclusive")
ACTIONS = ("claim", "release", "assign", "fraud", "legit", "inconclusive", "escalate", "snooze", "reopen",
           "approve", "reject")
MAX_SNOOZE_MS = 30 * 86400_000

HOUR_MS = 3600_000
SLA_MS = {"review": 4 * HOUR_MS, "block": 24 * HOUR_MS}  # from the decision to the verdict, before tightening
HIGH_SCORE = 0.9
HIGH_AMOUNT = 1000.0


class WorkflowError(Exception):
    """A step that is not allowed: ``status`` is the HTTP status the pages answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def is_lead(role: str | None) -> bool:
    return role in ("lead", "admin")


def effective_status(status: str, snooze_until: int | None, now: int) -> str:
    """A snoozed case whose time has come is open again."""
    if status == "snoozed" and (snooze_until is None or snooze_until <= now):
        return "open"
    return status


@dataclass(frozen=True)
class Step:
    """What an action does to a case: its new status, verdict and owner, and the label it sends (None: none;
    else ``(label, revision)``)."""

    status: str
    verdict: str | None = None
    owner: str | None = None
    keep_owner: bool = True
    label: tuple[str, int] | None = None
    proposed: str | None = None


def label_for(verdict: str, last_label: str | None, last_revision: int) -> tuple[str, int] | None:
    """The label a closing verdict sends given the case's last label (``None``: none yet): a first label,
    nothing when the topic already says this verdict, else a corrected label with the next revision."""
    if verdict not in VERDICTS:
        return None
    if last_label is None:
        return verdict, 1
    if last_label == verdict:
        return None
    return verdict, last_revision + 1


def decide(action: str, *, kind: str, status: str, owner: str | None, proposed_by: str | None,
           proposed: str | None, user: str, role: str, last_label: str | None = None, last_revision: int = 0,
           assignee: str | None = None) -> Step:
    """The step ``action`` by ``user`` (``role``) takes on a case (``status`` already effective), or
    :class:`WorkflowError`. Pure: no database, no clock."""
    if action not in ACTIONS:
        raise WorkflowError(400, f"unknown action {action!r}")
    if role not in ROLES:
        raise WorkflowError(403, f"unknown role {role!r}")
    lead = is_lead(role)
    if action == "reopen":
        if not lead:
            raise WorkflowError(403, "only a lead or an admin reopens a case")
        if status != "closed":
            raise WorkflowError(409, f"the case is {status}, not closed: nothing to reopen")
        return Step("open", None, owner=None, keep_owner=False)
    if action in ("approve", "reject"):
        if status != "approval":
            raise WorkflowError(409, f"the case is {status}: there is no overturn to {action}")
        if not lead:
            raise WorkflowError(403, "a lead or an admin approves or rejects an overturned block")
        if user == proposed_by:
            raise WorkflowError(403, "a second person approves an overturn: not the analyst who proposed it")
        if action == "reject":
            return Step("open", None, owner=proposed_by, keep_owner=False)
        return Step("closed", proposed, label=label_for(proposed, last_label, last_revision))
    if status == "closed":
        raise WorkflowError(409, "the case is closed; a lead can reopen it")
    if status == "approval":
        raise WorkflowError(409, f"the case waits for a second person to approve {proposed_by}'s overturn")
    if status == "escalated" and not lead:
        raise WorkflowError(403, "the case is escalated: a lead or an admin decides it")
    if owner is not None and owner != user and not lead and action != "claim":
        raise WorkflowError(409, f"the case is claimed by {owner}")
    if action == "claim":
        if owner is not None and owner != user:
            raise WorkflowError(409, f"the case is already claimed by {owner}")
        return Step(status, owner=user, keep_owner=False)
    if action == "release":
        return Step(status, owner=None, keep_owner=False)
    if action == "assign":
        if not lead:
            raise WorkflowError(403, "only a lead or an admin assigns a case to someone")
        return Step(status, owner=assignee, keep_owner=False)
    if action == "escalate":
        if status == "escalated":
            raise WorkflowError(409, "the case is already escalated")
        return Step("escalated", owner=None, keep_owner=False)
    if action == "snooze":
        return Step("snoozed", owner=None, keep_owner=False)
    # a closing verdict
    if kind == "block" and action == "legit" and last_label != "legit":
        return Step("approval", owner=user, keep_owner=False, proposed="legit")  # overturning a block
    return Step("closed", action, owner=owner or user, keep_owner=False,
                label=label_for(action, last_label, last_revision))


# -- priority and due time ---------------------------------------------------------------------------------

def sla_ms(kind: str, score: float | None, amount: float | None) -> int:
    """How long a case may wait for its verdict: 4 h for a review, 24 h for a block; halved for a score of
    0.9 or more, halved again for an amount of 1,000 or more (in the event's currency: amounts of different
    currencies are not converted)."""
    t = SLA_MS.get(kind, SLA_MS["review"])
    if score is not None and score >= HIGH_SCORE:
        t //= 2
    if amount is not None and amount >= HIGH_AMOUNT:
        t //= 2
    return t


def due_at(kind: str, decided_at: int | None, score: float | None, amount: float | None) -> int | None:
    return None if decided_at is None else decided_at + sla_ms(kind, score, amount)


def priority(score: float | None, amount: float | None, decided_at: int | None, due: int | None, now: int) -> int:
    """0-100, higher first: 50 x score, up to 25 for the amount (log scale: 10 -> 6, 1,000 -> 19, 10,000
    and more -> 25), up to 25 for the share of the time to the due time already gone (25 at and past it)."""
    s = 50.0 * min(1.0, max(0.0, score or 0.0))
    a = 25.0 * min(1.0, math.log10(1.0 + max(0.0, amount or 0.0)) / 4.0)
    if decided_at is None or due is None or due <= decided_at:
        w = 0.0
    else:
        w = 25.0 * min(1.0, max(0.0, (now - decided_at) / (due - decided_at)))
    return int(round(s + a + w))


def breached(due: int | None, now: int) -> bool:
    return due is not None and now > due
