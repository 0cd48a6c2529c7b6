"""Interest-based subscriptions: a node listens to a room's channel only while it serves the room.

Reference counts per room (local members and arrivals); a change marks the room dirty, and
``reconcile`` turns the dirty rooms into SUBSCRIBE/UNSUBSCRIBE batches on the right shards' links,
waits for the subscriptions to be confirmed, and returns the SADD/SREM commands that keep
``node:{ID}:rooms`` (what the sweeper cleans if this node dies) in step.
"""

from __future__ import annotations

import asyncio

from .link import COMMAND_TIMEOUT, Link, Subscriber
from .pipeline import OTHER, Op
from .wire import channel_name, node_rooms_key


class Interest:
    def __init__(self, node: str) -> None:
        self._rooms_key = node_rooms_key(node)
        self.refs: dict[str, int] = {}  # room -> local members and arrivals
        self.subscribed: set[str] = set()  # rooms whose SUBSCRIBE was sent (and no UNSUBSCRIBE)
        self.dirty: set[str] = set()  # rooms whose interest changed since the last reconcile
        self._channels: dict[bytes, str] = {}  # subscribed channel -> room

    def add(self, room: str) -> None:
        refs = self.refs.get(room, 0)
        self.refs[room] = refs + 1
        if not refs:
            self.dirty.add(room)

    def remove(self, room: str) -> None:
        refs = self.refs.get(room, 0) - 1
        if refs > 0:
            self.refs[room] = refs
        else:
            self.refs.pop(room, None)
            self.dirty.add(room)

    def room_of(self, channel: bytes) -> str | None:
        return self._channels.get(channel)

    def forget(self) -> None:
        """The link is gone, and its subscriptions with it."""
        self.subscribed.clear()
        self._channels.clear()

    def want_all(self) -> None:
        """After a reconnect: every room served here must be subscribed again."""
        self.forget()
        self.dirty = set(self.refs)

    async def reconcile(self, link: Link) -> list[Op]:
        """(Un)subscribes the dirty rooms; returns once the subscriptions are confirmed."""
        dirty, self.dirty = self.dirty, set()
        ops: list[Op] = []
        subs: dict[Subscriber, list[bytes]] = {}
        unsubs: dict[Subscriber, list[bytes]] = {}
        for name in dirty:
            wanted = name in self.refs
            if wanted == (name in self.subscribed):
                continue
            channel = channel_name(name)
            sub = await link.subscriber_for(channel)
            if wanted:
                self.subscribed.add(name)
                self._channels[channel] = name
                subs.setdefault(sub, []).append(channel)
                ops.append(Op(OTHER, ("SADD", self._rooms_key, name)))
            else:
                self.subscribed.discard(name)
                self._channels.pop(channel, None)
                unsubs.setdefault(sub, []).append(channel)
                ops.append(Op(OTHER, ("SREM", self._rooms_key, name)))
        for sub, channels in unsubs.items():
            await sub.send(link.unsubscribe_command, channels)
        for sub, channels in subs.items():
            await sub.send(link.subscribe_command, channels)
        for sub, channels in subs.items():
            await asyncio.wait_for(sub.confirmed(channels), COMMAND_TIMEOUT)
        return ops
