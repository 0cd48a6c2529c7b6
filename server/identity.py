"""Who a token says a client is, without the token machinery: the identity, the rooms it may
join, and the refusal a bad token gets. Split from server/auth.py so that a server without
authentication never imports PyJWT and cryptography (about 9 MB per process)."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass


class AuthError(Exception):
    """The upgrade is refused with 401; ``reason`` is the short text sent to the client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RoomPatterns:
    """The ``rooms`` claim: ``room in patterns`` is True when a name or glob pattern matches."""

    __slots__ = ("exact", "globs")

    def __init__(self, patterns: Iterable[str]) -> None:
        exact: set[str] = set()
        globs: list[str] = []
        for pattern in patterns:
            if any(ch in pattern for ch in "*?["):
                globs.append(pattern)
            else:
                exact.add(pattern)
        self.exact = frozenset(exact)
        self.globs = tuple(globs)

    def __contains__(self, room: object) -> bool:
        if not isinstance(room, str):
            return False
        if room in self.exact:
            return True
        return any(fnmatch.fnmatchcase(room, glob) for glob in self.globs)

    def __repr__(self) -> str:
        return f"RoomPatterns({sorted(self.exact) + list(self.globs)!r})"


@dataclass(frozen=True, slots=True)
class Identity:
    name: str
    rooms: RoomPatterns | None  # None: every room
    expires_at: float | None  # the token's exp (seconds since the epoch), if it has one
