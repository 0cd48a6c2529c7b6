"""Who Redis should list as this node's members, and what to announce after an outage.

While Redis was unreachable, members joined and left this node's rooms with only local notices.
When it is back, the node compares what Redis knew (``known``, as of the outage: nothing if the
sweeper removed this node meanwhile) with who is here now, and makes the difference true in
Redis: a leave for each member gone, a join for each new one (both announced, flagged so that
this node does not deliver them twice), a plain re-registration for the others. The same after
Redis forgot this node while it stayed reachable (FLUSHALL, a lease expired). Pure: the broker
builds the scripts and sends the commands.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping

from ..core import Member, Room
from ..protocol import SystemMessage
from .pipeline import OTHER, Op
from .wire import members_key, swept_key

Registered = dict[str, tuple[str, str]]  # member field -> (room, username)


class Change:
    __slots__ = ("field", "kind", "name", "notice", "room")

    def __init__(
        self, kind: str, field: str, room: str, name: str, notice: SystemMessage | None
    ) -> None:
        self.kind = kind  # "leave", "join" or "keep"
        self.field = field
        self.room = room
        self.name = name
        self.notice = notice  # the notice with count 0 (None for "keep")


def changes(known: Mapping[str, tuple[str, str]], current: Registered, now_ms: int
            ) -> Iterable[Change]:
    """What makes Redis's member lists say `current` when they said `known`."""
    for field, (room, name) in known.items():
        if field not in current:  # left while Redis was away
            notice = SystemMessage(f"{name} left #{room}", "leave", room, name, 0, now_ms)
            yield Change("leave", field, room, name, notice)
    for field, (room, name) in current.items():
        if known.get(field) == (room, name):
            yield Change("keep", field, room, name, None)
        else:  # joined while Redis was away (or this node was swept meanwhile)
            notice = SystemMessage(f"{name} joined #{room}", "join", room, name, 0, now_ms)
            yield Change("join", field, room, name, notice)


def registration(
    rooms: Iterable[Room],
    field: Callable[[Member], str],
    known: Registered,
    *,
    node: str,
    swept: bool,
    leave: Callable[[Change, SystemMessage], Op],
    join: Callable[[Change, SystemMessage], Op],
) -> tuple[list[Op], Registered]:
    """The commands that make Redis list who is in `rooms` now, when it listed `known` (nothing
    if this node was `swept`), and who that is: what the node has registered from then on."""
    current: Registered = {}
    for room in rooms:
        for member in room.all_members():
            current[field(member)] = (room.name, member.name)
    ops = [Op(OTHER, ("DEL", swept_key(node)))] if swept else []
    now = int(time.time() * 1e3)
    for change in changes({} if swept else known, current, now):
        notice = change.notice
        if notice is None:  # kept: registered again, nothing announced
            ops.append(Op(OTHER, ("HSET", members_key(change.room), change.field, change.name)))
        elif change.kind == "leave":
            ops.append(leave(change, notice))
        else:
            ops.append(join(change, notice))
    return ops, current
