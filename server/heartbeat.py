"""Heartbeats for every connection with one timer, not one task per connection.

Every ``interval`` seconds one sweep looks at all connections: one that sent anything since the
last sweep is alive; a silent one gets a PING and joins a batch; ``timeout`` seconds later one
callback drops every connection of that batch that still has not answered. A silent client is thus
pinged between one and two intervals after it went quiet and dropped ``timeout`` later. Owns the
timers only: what a ping and a drop do is the connection's business.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Protocol


class Pingable(Protocol):
    heard: bool  # set on every received frame (a PONG included)
    awaiting_pong: bool

    def ping(self) -> None: ...

    def ping_timed_out(self) -> None: ...


class Heartbeat:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        connections: Callable[[], Sequence[Pingable]],
        interval: float,
        timeout: float,
    ) -> None:
        self._loop = loop
        self._connections = connections
        self._interval = interval
        self._timeout = timeout
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._timer = self._loop.call_later(self._interval, self._sweep)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _sweep(self) -> None:
        self._timer = self._loop.call_later(self._interval, self._sweep)
        batch = sweep(self._connections())
        if batch:
            self._loop.call_later(self._timeout, self._expire, batch)

    @staticmethod
    def _expire(batch: list[Pingable]) -> None:
        expire(batch)  # each dropped connection counts itself (ping_timed_out)


def sweep(connections: Sequence[Pingable]) -> list[Pingable]:
    """Pings the connections that were silent since the last sweep; returns them."""
    batch = []
    for conn in list(connections):  # a ping may fail and remove a connection while we iterate
        if conn.awaiting_pong:
            continue
        if conn.heard:
            conn.heard = False
            continue
        conn.awaiting_pong = True
        batch.append(conn)
        conn.ping()
    return batch


def expire(batch: list[Pingable]) -> int:
    """Drops the connections of a batch that sent nothing since their ping; returns how many."""
    dropped = 0
    for conn in batch:
        conn.awaiting_pong = False
        if conn.heard:
            conn.heard = False  # spent on this ping: a client that goes quiet is pinged again
        else:
            dropped += 1
            conn.ping_timed_out()
    return dropped
