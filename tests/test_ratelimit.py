"""The sliding window behind the chat and join rate limits."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.ratelimit import Ring


def test_the_window_admits_limit_events_then_says_how_long_to_wait() -> None:
    ring = Ring(3)
    assert [ring.spend(t, 10.0) for t in (0.0, 1.0, 2.0)] == [0.0, 0.0, 0.0]
    assert ring.spend(3.0, 10.0) == 7.0  # the event at 0.0 leaves the window at 10.0
    assert ring.spend(9.999, 10.0) == pytest.approx(0.001)
    assert ring.spend(10.0, 10.0) == 0.0
    assert ring.spend(10.5, 10.0) == 0.5  # now 1.0 is the oldest


def test_a_limit_of_zero_is_no_ring() -> None:
    with pytest.raises(ValueError):
        Ring(0)


@settings(max_examples=200, deadline=None, database=None)
@given(st.integers(1, 5), st.lists(st.floats(0, 3), max_size=60))
def test_no_window_ever_holds_more_than_limit_events(limit: int, gaps: list[float]) -> None:
    ring, now, accepted = Ring(limit), 0.0, []
    for gap in gaps:
        now += gap
        wait = ring.spend(now, 5.0)
        assert wait >= 0.0
        if wait == 0.0:
            accepted.append(now)
        else:  # refused: waiting exactly that long would have been accepted
            assert min(t for t in accepted[-limit:]) + 5.0 == pytest.approx(now + wait)
    for start in accepted:
        assert len([t for t in accepted if start <= t < start + 5.0]) <= limit
