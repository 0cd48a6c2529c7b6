"""Per-client rate limits: a sliding window of the last N event times, as the seed counts chats.

The core keeps one ``Ring`` per member and per kind of event (chats; joins and leaves), made the
first time the member does that kind of thing. ``Ring.spend`` either records the event or says
how long the client must wait: at most ``limit`` events fit in any ``window`` seconds. A ring
costs one small object and ``8 * limit`` bytes of ``array('d')``, nothing per event.
"""

from __future__ import annotations

from array import array

_NEVER = array("d", [float("-inf")])


class Ring:
    """The times of one client's last ``limit`` events of one kind, oldest at ``pos``."""

    __slots__ = ("pos", "times")

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("a rate limit of 0 means no limit: make no Ring")
        self.times = _NEVER * limit
        self.pos = 0

    def spend(self, now: float, window: float) -> float:
        """Records an event at `now` and returns 0.0 when it fits in the window; otherwise
        records nothing and returns the seconds until it would fit."""
        times = self.times
        pos = self.pos
        elapsed = now - times[pos]
        if elapsed < window:
            return window - elapsed
        times[pos] = now
        self.pos = (pos + 1) % len(times)
        return 0.0
