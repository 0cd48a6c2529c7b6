"""The single-node broker: a room's messages, joins and leaves decided in this process alone.

Everything happens synchronously, in the order the core calls it, exactly as if there were no
broker seam: publishing is delivering (the core's own ``deliver``, no extra call per message).
``join_locally`` is also what the Redis broker does while Redis is unreachable.
"""

from __future__ import annotations

from collections.abc import Callable

from .core import ChatCore, Member, Room
from .protocol import encode, text_frame


class LocalBroker:
    """In-process delivery: today's single-node behaviour, with no extra work per message."""

    __slots__ = ("core", "publish")

    def __init__(self, core: ChatCore) -> None:
        self.core = core
        self.publish: Callable[[Room, bytes], None] = core.deliver

    def join(self, room: Room, member: Member) -> None:
        join_locally(self.core, room, member)

    def leave(self, room: Room, member: Member) -> None:
        leave_locally(self.core, room, member)

    def typing(self, room: Room, member: Member, payload: bytes) -> None:
        self.core.deliver_typing(room, payload, member)


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


def leave_locally(core: ChatCore, room: Room, member: Member) -> None:
    """A leave decided on this node alone: the room is forgotten or told."""
    if not core.drop_if_empty(room):
        core.deliver(room, encode(core.notice(room, member, "leave", len(room))))
