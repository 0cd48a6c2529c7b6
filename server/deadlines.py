"""A timer wheel for many deadlines served by one periodic sweep (token expiry).

Adding, removing and re-adding an item are O(1); a sweep costs O(buckets elapsed + items due).
Nothing is scheduled per item: the owner runs ``pop_due(now)`` from one timer every
``resolution`` seconds, so an item is reported at most one resolution after its deadline.
Pure: the clock is whatever the caller passes in.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import Generic, TypeVar

T = TypeVar("T", bound=Hashable)


class Deadlines(Generic[T]):
    def __init__(self, resolution: float, start: float = 0.0) -> None:
        if resolution <= 0:
            raise ValueError("resolution must be > 0")
        self._resolution = resolution
        self._buckets: dict[int, dict[T, float]] = {}
        self._where: dict[T, int] = {}
        self._cursor = self._bucket(start)  # every bucket before this one has been swept

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, item: object) -> bool:
        return item in self._where

    def _bucket(self, when: float) -> int:
        return math.floor(when / self._resolution)

    def add(self, item: T, deadline: float) -> None:
        """Registers (or moves) `item`; a deadline in the past is reported by the next sweep."""
        self.discard(item)
        index = max(self._bucket(deadline), self._cursor)
        self._buckets.setdefault(index, {})[item] = deadline
        self._where[item] = index

    def discard(self, item: T) -> None:
        index = self._where.pop(item, None)
        if index is None:
            return
        bucket = self._buckets[index]
        del bucket[item]
        if not bucket:
            del self._buckets[index]

    def pop_due(self, now: float) -> list[T]:
        """Removes and returns every item whose deadline is <= now, earliest bucket first."""
        due: list[T] = []
        last = self._bucket(now)
        index = self._cursor
        if last - index > len(self._buckets):
            # A long gap (or a clock jump): visit the occupied buckets, not every empty one.
            indices = sorted(i for i in self._buckets if i <= last)
        else:
            indices = [i for i in range(index, last + 1) if i in self._buckets]
        for i in indices:
            bucket = self._buckets[i]
            if i < last:
                items = list(bucket)
            else:
                items = [item for item, deadline in bucket.items() if deadline <= now]
            for item in items:
                del bucket[item]
                del self._where[item]
                due.append(item)
            if not bucket:
                del self._buckets[i]
        self._cursor = max(self._cursor, last)
        return due
