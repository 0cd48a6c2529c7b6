"""Who Redis should list as this node's members, and what to announce after an outage.

While Redis was unreachable, members joined and left this node's rooms with only local notices.
When it is back, the node compares what Redis knew (``known``, as of the outage: nothing if the
sweeper removed this node meanwhile) with who is here now, and makes the difference true in
Redis: a leave for each member gone, a join for each new one (both announced, flagged so that
this node does not deliver them twice), a plain re-registration for the others. Pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ..protocol import SystemMessage, encode

Registered = dict[str, tuple[str, str]]  # member field -> (room, username)


class Change:
    __slots__ = ("field", "kind", "name", "notice", "room")

    def __init__(self, kind: str, field: str, room: str, name: str, notice: bytes) -> None:
        self.kind = kind  # "leave", "join" or "keep"
        self.field = field
        self.room = room
        self.name = name
        self.notice = notice  # the encoded notice with count 0 (empty for "keep")


def changes(known: Mapping[str, tuple[str, str]], current: Registered, now_ms: int
            ) -> Iterable[Change]:
    """What makes Redis's member lists say `current` when they said `known`."""
    for field, (room, name) in known.items():
        if field not in current:  # left while Redis was away
            notice = SystemMessage(f"{name} left #{room}", "leave", room, name, 0, now_ms)
            yield Change("leave", field, room, name, encode(notice))
    for field, (room, name) in current.items():
        if known.get(field) == (room, name):
            yield Change("keep", field, room, name, b"")
        else:  # joined while Redis was away (or this node was swept meanwhile)
            notice = SystemMessage(f"{name} joined #{room}", "join", room, name, 0, now_ms)
            yield Change("join", field, room, name, encode(notice))
