"""The broker seam: where a room's messages, joins and leaves go once the core has made them.

The core encodes each outgoing room message exactly once and calls ``broker.publish(room,
payload)``; it calls ``broker.join`` when a member asks to join (the member is then *arriving*:
``member.room`` is set but it receives nothing yet) and ``broker.leave`` after a member has left
the room's delivery lists. The broker decides when and where things are delivered and calls back
into the core: ``core.deliver`` (frame once, queue on the room's coalesced flush), ``core.admit``
(put an arriving member into the room's order) and ``core.drop_if_empty``.

``LocalBroker`` is the single-process broker: everything happens synchronously, in the order the
core calls it, exactly as if there were no seam. ``server.redis_broker.RedisBroker`` spreads rooms
over several processes or machines through Redis Pub/Sub (see docs/scaling.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from .protocol import encode, text_frame

if TYPE_CHECKING:
    from .core import ChatCore, Member, Room


class Broker(Protocol):
    def publish(self, room: Room, payload: bytes) -> None:
        """Delivers one encoded message to every member of `room`, on every node, in one order."""

    def join(self, room: Room, member: Member) -> None:
        """`member` (arriving, ``member.room is room``) joins: announce it and admit it."""

    def leave(self, room: Room, member: Member) -> None:
        """`member` has been taken out of `room` (it receives nothing more): announce it."""


class LocalBroker:
    """In-process delivery: today's single-node behaviour, with no extra work per message."""

    __slots__ = ("core", "publish")

    def __init__(self, core: ChatCore) -> None:
        self.core = core
        # Publishing is delivering: the core's own method, no extra call per message.
        self.publish: Callable[[Room, bytes], None] = core.deliver

    def join(self, room: Room, member: Member) -> None:
        join_locally(self.core, room, member)

    def leave(self, room: Room, member: Member) -> None:
        core = self.core
        if core.drop_if_empty(room):
            return
        core.deliver(room, encode(core.notice(room, member, "leave", len(room))))


def join_locally(core: ChatCore, room: Room, member: Member) -> None:
    """A join decided on this node alone: a notice to the others, then the joiner's own copy.

    The joiner's copy carries the member list (itself included) and is written at once, so its
    stream starts here, before any frame queued after its cursor.
    """
    present = len(room)
    notice = core.notice(room, member, "join", present + 1)
    if present:
        core.deliver(room, encode(notice))
    core.admit(room, member, None)
    notice.users = room.names(core.config.max_users_list)
    member.write(text_frame(encode(notice)))
