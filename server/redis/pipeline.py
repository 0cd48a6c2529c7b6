"""The outgoing command queue: what the hot path asks of Redis, sent as one pipeline per batch.

The core's calls (publish, join, leave) are synchronous; each becomes an ``Op`` appended here, and
one task sends everything queued as one pipeline (one round trip per event-loop tick under load).
One queue keeps each room's joins, messages and leaves from this node in order. An op remembers
enough (room, payload) for the broker to deliver it locally if Redis fails under it; a chat
whose numbered copy came back through the subscription before Redis's answer forgets its
payload, so that losing the link then does not deliver it here twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Container
from typing import Any

from .link import COMMAND_TIMEOUT, is_connection_error
from .wire import chat_identity

log = logging.getLogger("roomcast.redis")

PUBLISH, JOIN, LEAVE, OTHER = 0, 1, 2, 3

# Ops per round trip. A reply waits behind everything sent before it, and COMMAND_TIMEOUT must
# tell a dead link from a long queue: 40,000 joins at once (the scaleout bench's first step,
# 12 workers and Redis sharing one CPU) as one pipeline per worker took longer than the
# timeout, each worker declared an outage, and their resyncs piled more work on Redis.
BATCH = 1000


class Op:
    __slots__ = ("args", "kind", "on_error", "on_lost", "on_reply", "payload", "room")

    def __init__(
        self,
        kind: int,
        args: tuple[Any, ...],
        *,
        room: str | None = None,
        payload: bytes | None = None,
        on_reply: Callable[[Any], None] | None = None,
        on_lost: Callable[[], None] | None = None,
        on_error: Callable[[], None] | None = None,
    ) -> None:
        self.kind = kind
        self.args = args
        self.room = room  # the room it concerns, to deliver locally when Redis fails under it
        self.payload = payload  # the encoded message (a notice: with count 0)
        self.on_reply = on_reply
        self.on_lost = on_lost  # the link dropped before the reply: maybe applied, maybe not
        self.on_error = on_error  # Redis answered with an error (logged): not applied, or partly


class Pipeline:
    def __init__(self) -> None:
        self.queued: list[Op] = []
        self.inflight: list[Op] = []
        self.wake = asyncio.Event()
        # chats with a local payload not answered yet, by chat_identity; a list, because a
        # sender may post the same text twice in one millisecond, and each copy counts
        self.unanswered: dict[bytes, list[Op]] = {}

    @property
    def backlog(self) -> int:
        """Commands queued for Redis or awaiting its reply."""
        return len(self.queued) + len(self.inflight)

    def push(self, op: Op) -> None:
        if op.kind == PUBLISH and op.payload is not None:
            self.unanswered.setdefault(chat_identity(op.payload), []).append(op)
        self.queued.append(op)
        self.wake.set()

    def came_back(self, room: str, payload: bytes) -> None:
        """Chat `payload` of `room` came back from Redis numbered: if it is one of ours that
        Redis has not answered yet, it has its place, and is no longer ours to deliver."""
        if self.unanswered:
            identity = chat_identity(payload)
            ops = self.unanswered.get(identity)
            for op in ops or ():
                if op.room == room:
                    op.payload = None  # identical copies are interchangeable: the first
                    self._forget(identity, op)
                    return

    def push_first(self, ops: list[Op]) -> None:
        self.queued[:0] = ops
        self.wake.set()

    def take(self, held_back: Container[str], limit: int = BATCH) -> list[Op]:
        """The first `limit` ops queued, except the ops of rooms in `held_back` (kept, in
        order); what is left stays queued, in order, and the pump comes back for it."""
        if not held_back:
            ops, self.queued = self.queued[:limit], self.queued[limit:]
        else:
            kept: list[Op] = []
            ops = []
            for op in self.queued:
                (ops if len(ops) < limit and op.room not in held_back else kept).append(op)
            self.queued = kept
        if self.queued:
            self.wake.set()
        return ops

    async def send(self, client: Any, ops: list[Op]) -> None:
        """Sends `ops` as one pipeline; hands each reply to its op. Raises on a lost link."""
        self.inflight = ops
        await execute(client, ops)
        self.inflight = []
        if self.unanswered:  # answered now: placed, or refused with an error that was logged
            for op in ops:
                if op.kind == PUBLISH and op.payload is not None:
                    self._forget(chat_identity(op.payload), op)

    def _forget(self, identity: bytes, op: Op) -> None:
        ops = self.unanswered.get(identity)
        if ops is not None and op in ops:
            ops.remove(op)
            if not ops:
                del self.unanswered[identity]

    def abandon(self) -> list[Op]:
        """The link is lost: returns what was in flight or queued (possibly never applied)."""
        ops = self.inflight + self.queued
        self.inflight = []
        self.queued = []
        self.unanswered.clear()
        return ops


async def execute(client: Any, ops: list[Op]) -> None:
    """One pipeline for `ops`; replies go to ``op.on_reply``; a connection error is raised."""
    pipe = client.pipeline(transaction=False)
    for op in ops:
        pipe.execute_command(*op.args)
    results = await asyncio.wait_for(pipe.execute(raise_on_error=False), COMMAND_TIMEOUT)
    for op, result in zip(ops, results, strict=False):
        if isinstance(result, Exception):
            if is_connection_error(result):
                raise result
            log.error("redis command %s failed: %s", op.args[0], result)
            if op.on_error is not None:
                op.on_error()
        elif op.on_reply is not None:
            op.on_reply(result)
