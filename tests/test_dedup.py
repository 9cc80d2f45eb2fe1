"""Duplicate event-id policy (pure): against a brute-force model of 'seen for this user within the horizon'."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from udfs import dedup
from udfs.events import Event
from udfs.replay import replay


def _ev(eid: str, user: str, ts: int) -> Event:
    return Event(eid, "login", user, "d", "1.1.1.1", 0.0, "EUR", ts)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abcdef"), st.sampled_from("uv"), st.integers(0, 30)), max_size=60),
       st.sampled_from([5_000, 12_000]))
def test_seen_matches_brute_force(arrivals, horizon):
    """Arrival-ordered, non-decreasing times (the common case): a record is a duplicate exactly when the
    same user sent the same id at an event time within the horizon of the user's newest event."""
    states: dict[str, dict] = {}
    kept: list[tuple[str, str, int]] = []
    t = 1_700_000_000_000
    for eid, user, dt in arrivals:
        t += dt * 1000
        newest = max([ts for _, u, ts in kept if u == user], default=t)
        want = any(e == eid and u == user and ts >= max(newest, t) - horizon for e, u, ts in kept)
        st_ = states.setdefault(user, {})
        assert dedup.seen(st_, eid, max(newest, t), horizon) == want
        if not want:
            dedup.remember(st_, eid, t, t, horizon)
            kept.append((eid, user, t))


def test_memory_is_capped():
    st_: dict = {}
    for i in range(dedup.MAX_IDS_PER_KEY + 500):
        dedup.remember(st_, f"e{i}", 1_000 + i, 1_000 + i, 10**12)
    assert len(st_[dedup.IDS]) == dedup.MAX_IDS_PER_KEY
    last = 1_000 + dedup.MAX_IDS_PER_KEY + 499
    assert not dedup.seen(st_, "e0", last, 10**12) and dedup.seen(st_, f"e{dedup.MAX_IDS_PER_KEY + 499}", last, 10**12)


def test_replay_skips_duplicates_and_does_not_count_them():
    t = 1_767_225_600_000
    evs = [_ev("e1", "u", t), _ev("e1", "u", t), _ev("e2", "u", t + 1000), _ev("e1", "w", t + 2000),
           _ev("e1", "u", t + 700_000)]  # past the 10-minute horizon: decided again
    out = list(replay(evs))
    assert [(e.event_id, e.user_id) for e, _, _ in out] == [("e1", "u"), ("e2", "u"), ("e1", "w"), ("e1", "u")]
    from udfs.features import FEATURE_NAMES

    cnt = FEATURE_NAMES.index("user_events_1m")
    assert out[1][1][cnt] == 2.0  # e1 and e2, the repeat of e1 not counted
    assert [v[cnt] for _, v, _ in out] == [1.0, 2.0, 1.0, 1.0]
    assert len(list(replay(evs, dedup_horizon_ms=0))) == 5
