"""Node leases and the sweeper: the members of a node that died leave, with notices, in time.

Every node renews ``node:{ID}`` (TTL --node-ttl) every TTL/3. Every TTL/2 (jittered) each node
tries a short lock; the holder looks for nodes whose lease expired, removes their members from
the rooms' member hashes with leave notices (one script per member), and leaves a tombstone so a
swept node that comes back knows to re-register everything.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable

from ..protocol import SystemMessage, encode
from .link import COMMAND_TIMEOUT, REDIS_ERRORS, Link
from .scripts import leave_command
from .wire import (
    NODES_KEY,
    SWEEP_LOCK_KEY,
    SWEPT_TOMBSTONE_TTL,
    lease_key,
    members_key,
    node_rooms_key,
    swept_key,
)

log = logging.getLogger("roomcast.redis")


class Leases:
    def __init__(
        self,
        link: Link,
        node: str,
        ttl: float,
        *,
        is_up: Callable[[], bool],
        on_expired: Callable[[], None],
        on_lost: Callable[[BaseException], None],
    ) -> None:
        self._link = link
        self.node = node
        self.ttl = ttl
        self._is_up = is_up
        self._on_expired = on_expired
        self._on_lost = on_lost
        self.has_lease = False

    async def take(self) -> bool:
        """Registers this node with a fresh lease; True when it had been swept meanwhile."""
        client = self._link.client
        swept = bool(await client.exists(swept_key(self.node)))
        await client.set(lease_key(self.node), "1", px=int(self.ttl * 1000))
        await client.sadd(NODES_KEY, self.node)
        self.has_lease = True
        return swept

    async def give_up(self) -> None:
        pipe = self._link.client.pipeline(transaction=False)
        pipe.delete(lease_key(self.node), node_rooms_key(self.node))
        pipe.srem(NODES_KEY, self.node)
        await pipe.execute()

    async def renew_forever(self) -> None:
        period = max(0.05, self.ttl / 3)
        while True:
            await asyncio.sleep(period)
            if not self._is_up():
                continue
            try:
                previous = await asyncio.wait_for(
                    self._link.client.set(
                        lease_key(self.node), "1", px=int(self.ttl * 1000), get=True
                    ),
                    COMMAND_TIMEOUT,
                )
            except asyncio.CancelledError:
                raise
            except REDIS_ERRORS as exc:
                self._on_lost(exc)
                continue
            if previous is None and self.has_lease and self._is_up():
                log.warning("this node's lease had expired in Redis; re-registering members")
                self._on_expired()

    async def sweep_forever(self, publish_command: str, history_ttl: float) -> None:
        period = max(0.05, self.ttl / 2)
        while True:
            await asyncio.sleep(period * (0.75 + random.random() / 2))
            if not self._is_up():
                continue
            try:
                await self.sweep(period, publish_command, history_ttl)
            except asyncio.CancelledError:
                raise
            except REDIS_ERRORS as exc:
                log.info("sweep skipped: %s", exc)

    async def sweep(self, lock_seconds: float, publish_command: str, history_ttl: float) -> int:
        """Removes the members of nodes whose lease expired (one sweeper at a time)."""
        client = self._link.client
        got = await client.set(SWEEP_LOCK_KEY, self.node, nx=True, px=int(lock_seconds * 1000))
        if not got:
            return 0
        swept = 0
        for raw in await client.smembers(NODES_KEY):
            node = raw.decode()
            if node == self.node or await client.exists(lease_key(node)):
                continue
            swept += await self._sweep_node(node, publish_command, history_ttl)
        return swept

    async def _sweep_node(self, node: str, publish_command: str, history_ttl: float) -> int:
        client = self._link.client
        removed = 0
        now = int(time.time() * 1000)
        for raw_room in await client.smembers(node_rooms_key(node)):
            room = raw_room.decode()
            entries: list[tuple[str, str]] = []
            async for field, name in client.hscan_iter(
                members_key(room), match=f"{node}:*", count=500
            ):
                entries.append((field.decode(), name.decode("utf-8", "replace")))
            if not entries:
                continue
            pipe = client.pipeline(transaction=False)
            for field, name in entries:
                notice = encode(SystemMessage(f"{name} left #{room}", "leave", room, name, 0, now))
                pipe.execute_command(
                    *leave_command(
                        publish_command, room, field, notice, b"", force=False, ttl=history_ttl
                    )
                )
            await pipe.execute()
            removed += len(entries)
        pipe = client.pipeline(transaction=False)
        pipe.delete(node_rooms_key(node))
        pipe.srem(NODES_KEY, node)
        pipe.set(swept_key(node), "1", ex=SWEPT_TOMBSTONE_TTL)
        await pipe.execute()
        log.info("node %s stopped renewing its lease: removed its %d members", node, removed)
        return removed
