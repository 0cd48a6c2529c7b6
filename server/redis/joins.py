"""The cross-node join protocol: a local member from its join request to its welcome.

A join is one script in Redis (register, count, publish the notice, list up to
--max-users-list names). Two things then arrive, in either order, on different connections: the
notice, back through the room's subscription (its position in the channel is where the joiner's
stream starts), and the script's reply (the count and names for the welcome). When the notice
comes first the member is placed at once and ``hold``-ed by the core; the reply ``release``-s it
with its welcome written before everything kept for it.
"""

from __future__ import annotations

from ..broker import join_locally
from ..core import ChatCore, Member, Room
from ..protocol import SystemMessage, encode, text_frame
from .wire import parse_join_reply


class Joining:
    """A local member between its join request and its welcome."""

    __slots__ = ("count", "member", "notice", "positioned", "room", "users")

    def __init__(self, member: Member, room: Room, notice: SystemMessage) -> None:
        self.member = member
        self.room = room
        self.notice = notice
        self.count = 0
        self.users: list[str] | None = None  # from the script's reply
        self.positioned = False  # its notice came back through the subscription

    def welcome(self) -> bytes:
        notice = self.notice
        notice.count = self.count
        notice.users = self.users
        return text_frame(encode(notice))


class Joins:
    def __init__(self, core: ChatCore) -> None:
        self._core = core
        self.pending: dict[str, Joining] = {}  # member field -> its join in progress

    def expect(self, field: str, member: Member, room: Room, notice: SystemMessage) -> None:
        self.pending[field] = Joining(member, room, notice)

    def cancel(self, field: str) -> None:
        """The member left (or went) before its welcome; the core has already let it go."""
        self.pending.pop(field, None)

    def positioned(self, field: str, room: Room) -> None:
        """The member's notice came back through `room`'s subscription: its stream starts here."""
        joining = self.pending.get(field)
        if joining is None or joining.positioned or joining.room is not room:
            return
        joining.positioned = True
        if joining.users is not None:
            del self.pending[field]
            self._core.admit(room, joining.member, joining.welcome())
        else:
            self._core.hold(room, joining.member)

    def replied(self, field: str, reply: object) -> None:
        """The join script's reply: the room's count and names at the notice's position."""
        joining = self.pending.get(field)
        if joining is None:
            return
        joining.count, joining.users = parse_join_reply(reply)
        if joining.positioned:
            del self.pending[field]
            self._core.release(joining.member, joining.welcome())

    def fail_over(self, max_users: int) -> None:
        """Redis is gone: every join in progress completes on this node alone."""
        pending, self.pending = self.pending, {}
        core = self._core
        for joining in pending.values():
            room = joining.room
            member = joining.member
            if member.room is not room:
                continue
            if joining.positioned:  # held: its welcome describes the room as this node sees it
                joining.users = room.names(max_users)
                joining.count = len(room)
                core.release(member, joining.welcome())
            else:
                join_locally(core, room, member)
