"""Which room each simulated user joins, and who is in each room of this Locust process.

Every Locust process (local runner or worker) names its rooms with its own random token, so a
room's members all live in one process. The publisher of a message therefore knows every member
that should receive it, and "last member" latency is measured on one clock without any
coordination between processes or machines (see docs/loadtest.md).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class Seat:
    room: str
    index: int
    position: int  # 1 for the first member to take a seat in this room


@dataclass
class SeatPlan:
    """Hands out seats in rooms of the given sizes, fullest-first, then opens a new round."""

    prefix: str
    sizes: Sequence[int]
    _names: list[str] = field(default_factory=list)
    _capacity: list[int] = field(default_factory=list)
    _taken: list[int] = field(default_factory=list)
    _vacant: list[int] = field(default_factory=list)  # heap of room indexes with a free seat
    _rounds: int = 0

    def _open_round(self) -> None:
        for i, size in enumerate(self.sizes):
            index = len(self._names)
            self._names.append(f"{self.prefix}-s{size}-r{self._rounds}-{i}")
            self._capacity.append(size)
            self._taken.append(0)
            heapq.heappush(self._vacant, index)
        self._rounds += 1

    def take(self) -> Seat:
        while True:
            while self._vacant:
                index = self._vacant[0]
                if self._taken[index] < self._capacity[index]:
                    self._taken[index] += 1
                    if self._taken[index] == self._capacity[index]:
                        heapq.heappop(self._vacant)
                    return Seat(self._names[index], index, self._taken[index])
                heapq.heappop(self._vacant)
            self._open_round()

    def release(self, seat: Seat) -> None:
        was_full = self._taken[seat.index] == self._capacity[seat.index]
        self._taken[seat.index] = max(0, self._taken[seat.index] - 1)
        if was_full:
            heapq.heappush(self._vacant, seat.index)

    def occupancy(self) -> dict[str, int]:
        return {name: n for name, n in zip(self._names, self._taken, strict=True) if n}


class RoomDirectory:
    """Members of each room in this process, with the time their join was acknowledged."""

    def __init__(self) -> None:
        self._rooms: dict[str, dict[int, float]] = {}

    def joined(self, room: str, member: int, at: float) -> None:
        self._rooms.setdefault(room, {})[member] = at

    def left(self, room: str, member: int) -> None:
        members = self._rooms.get(room)
        if members is not None:
            members.pop(member, None)
            if not members:
                del self._rooms[room]

    def members_since(self, room: str, sent: float) -> set[int]:
        """Members whose join was acknowledged before ``sent``: each of them must receive it."""
        return {m for m, at in self._rooms.get(room, {}).items() if at <= sent}

    def size(self, room: str) -> int:
        return len(self._rooms.get(room, ()))
