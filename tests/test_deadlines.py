"""The timer wheel behind token expiry (server/deadlines.py), with a clock the test moves."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.deadlines import Deadlines


def test_deadlines_fire_once_in_order_and_can_be_cancelled() -> None:
    wheel: Deadlines[str] = Deadlines(1.0, start=0.0)
    wheel.add("late", 5.5)
    wheel.add("early", 1.2)
    wheel.add("past", -3.0)
    wheel.add("gone", 2.0)
    wheel.discard("gone")
    wheel.discard("never-added")
    assert wheel.pop_due(0.5) == ["past"]
    assert wheel.pop_due(1.1) == []
    assert wheel.pop_due(1.3) == ["early"]
    assert "late" in wheel and len(wheel) == 1
    wheel.add("late", 3.0)  # moved earlier
    assert wheel.pop_due(10_000.0) == ["late"]
    assert len(wheel) == 0 and wheel.pop_due(20_000.0) == []


def test_a_long_gap_visits_only_occupied_buckets_and_loses_nothing() -> None:
    wheel: Deadlines[int] = Deadlines(0.5, start=0.0)
    for item in range(100):
        wheel.add(item, 10.0 + item * 1000.0)
    assert wheel.pop_due(5.0) == []
    assert wheel.pop_due(1e9) == list(range(100))  # a clock jump: every one, earliest first


def test_items_due_in_the_current_bucket_wait_for_their_own_deadline() -> None:
    wheel: Deadlines[str] = Deadlines(10.0, start=0.0)
    wheel.add("a", 3.0)
    wheel.add("b", 7.0)
    assert wheel.pop_due(5.0) == ["a"]
    assert wheel.pop_due(6.9) == []
    assert wheel.pop_due(7.0) == ["b"]


def test_resolution_must_be_positive() -> None:
    with pytest.raises(ValueError, match="resolution"):
        Deadlines(0.0)


@given(st.lists(st.tuples(st.integers(0, 50), st.floats(0, 100)), max_size=60),
       st.lists(st.floats(0, 120), max_size=10))
def test_every_item_is_reported_once_and_never_early(adds: list[tuple[int, float]],
                                                    sweeps: list[float]) -> None:
    wheel: Deadlines[int] = Deadlines(1.0, start=0.0)
    deadline: dict[int, float] = {}
    for item, when in adds:
        wheel.add(item, when)
        deadline[item] = when
    reported: list[int] = []
    now = 0.0
    for step in [*sorted(sweeps), 200.0]:
        now = max(now, step)
        due = wheel.pop_due(now)
        assert all(deadline[item] <= now for item in due)
        reported += due
    assert sorted(reported) == sorted(deadline)
