"""The chat core: rooms, presence, validation, rate limits and fan-out. No sockets, no asyncio.

A member is anything with a ``write(bytes)`` callable; the picows adapter passes the socket
transport's ``write``, tests pass ``list.append``. Messages to a room are framed once and queued on
the room; ``flush()`` (scheduled once per event-loop tick) joins a room's queued frames into one
buffer and writes the *same* bytes object to every member, so a broadcast costs one encode, one
frame and one write per member per tick, whatever the number of messages in that tick.

Ordering: every member's byte stream is exactly the sequence of events it took part in. Members
who joined during the current tick (or received a direct message while the room had queued frames)
sit in ``room.late`` with a ``cursor`` into the room's queue, and get only the frames queued after
it. A member that leaves first receives what was queued for it. See docs/backpressure.md.

Where a room's messages go is the broker's business (server/broker.py): the core encodes a
message once and hands the payload to ``broker.publish``; the in-process ``LocalBroker`` frames it
and queues it on the room at once, a distributed broker delivers it when it comes back from the
other nodes' common channel (``deliver``). Joins and leaves go through the broker the same way.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Container
from itertools import chain, islice
from typing import TYPE_CHECKING

from . import protocol
from .config import Config
from .protocol import (
    Chat,
    ChatMessage,
    CloseCode,
    DecodeFailure,
    ErrorCode,
    InvalidUTF8,
    Join,
    SystemMessage,
    encode,
    error_frame,
    text_frame,
)

if TYPE_CHECKING:
    from .broker import Broker

Write = Callable[[bytes], object]

DEFAULT_ROOM = "general"
DEFAULT_USERNAME = "Anonymous"

# C0/C1 controls, line/paragraph separators, bidi overrides and isolates, zero-width spaces, BOM:
# characters that break one-line rendering or let a name impersonate another.
_FORBIDDEN_IN_NAMES = re.compile(
    "[\x00-\x1f\x7f-\x9f\u200b\u200e\u200f\u2028-\u202e\u2066-\u2069\ufeff]"
)


class Member:
    """One participant. Kept small: a server holds tens of thousands of these."""

    __slots__ = (
        "allowed_rooms",
        "cursor",
        "fixed_name",
        "late",
        "name",
        "rate_log",
        "rate_pos",
        "room",
        "slot",
        "write",
    )

    def __init__(self, write: Write) -> None:
        self.write = write
        # From an authenticated identity (see server/auth.py): the name every join uses whatever
        # the client sends, and the rooms it may join (anything supporting `in`; None: all).
        self.fixed_name: str | None = None
        self.allowed_rooms: Container[str] | None = None
        self.name = DEFAULT_USERNAME
        self.room: Room | None = None
        self.slot = 0  # index in room.members or room.late (O(1) swap-remove); -1: arriving
        self.late = False  # True while in room.late
        self.cursor = 0  # with late: first frame of room.pending this member still has to get
        self.rate_log: list[float] | None = None  # ring of the last `rate_limit` chat times
        self.rate_pos = 0


class Room:
    __slots__ = ("arriving", "late", "members", "name", "pending")

    def __init__(self, name: str) -> None:
        self.name = name
        self.arriving = 0  # members whose join the broker has not admitted yet (slot -1)
        self.members: list[Member] = []  # get every frame of the current tick
        self.late: list[Member] = []  # get room.pending[member.cursor:] this tick
        self.pending: list[bytes] = []  # frames queued this tick, flushed once

    def __len__(self) -> int:
        return len(self.members) + len(self.late)

    def names(self, limit: int) -> list[str]:
        return [m.name for m in islice(chain(self.members, self.late), limit)]


class Stats:
    """Counters, bumped per message or per broadcast, never per recipient."""

    __slots__ = (
        "broadcasts",
        "bytes_sent",
        "chats",
        "coalesced_frames",
        "deliveries",
        "errors",
        "joins",
        "leaves",
        "messages_in",
        "rate_limited",
        "writes",
    )

    def __init__(self) -> None:
        self.messages_in = 0
        self.chats = 0
        self.joins = 0
        self.leaves = 0
        self.errors = 0
        self.rate_limited = 0
        self.broadcasts = 0  # room flushes
        self.deliveries = 0  # frames delivered (frames x recipients)
        self.writes = 0  # socket writes issued by flushes
        self.coalesced_frames = 0  # frames that rode in another frame's write
        self.bytes_sent = 0


def clean_name(value: str | None, default: str, max_length: int) -> str | None:
    """The name to use, or None when it is invalid (too long or has control characters)."""
    if value is None:
        return default
    value = value.strip()
    if not value:
        return default
    if len(value) > max_length or _FORBIDDEN_IN_NAMES.search(value):
        return None
    return value


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class ChatCore:
    def __init__(
        self,
        config: Config,
        schedule: Callable[[Callable[[], None]], object],
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_ms: Callable[[], int] = wall_clock_ms,
    ) -> None:
        self.config = config
        self.rooms: dict[str, Room] = {}
        self.stats = Stats()
        self._schedule = schedule
        from .broker import LocalBroker  # noqa: PLC0415  (broker imports core's types)

        self.broker: Broker = LocalBroker(self)
        self._publish = self.broker.publish
        self._clock = clock
        self._wall_ms = wall_ms
        self._dirty: list[Room] = []
        self._flush_scheduled = False
        self._rate_limit = config.rate_limit
        self._rate_window = config.rate_window
        self._slow_down = (
            f"Slow down! Max {config.rate_limit} msgs/{config.rate_window:g}s"
            if config.rate_limit
            else ""
        )

    # ---- inbound ------------------------------------------------------------------------------

    def handle_text(self, member: Member, payload: bytes) -> CloseCode | None:
        """Handles one complete text message; returns a close code when the peer must go."""
        self.stats.messages_in += 1
        try:
            message = protocol.decode(payload)
        except InvalidUTF8:
            return CloseCode.INVALID_TEXT
        except DecodeFailure as failure:
            self.send_error(member, failure.code, failure.text)
            return None
        kind = type(message)
        if kind is Chat:
            self.chat(member, message.text)  # type: ignore[union-attr]
        elif kind is Join:
            self.join(member, message.room, message.username)  # type: ignore[union-attr]
        else:
            self.leave(member)
        return None

    def handle_binary(self, member: Member) -> None:
        self.stats.messages_in += 1
        self.send_error(
            member, ErrorCode.BINARY_UNSUPPORTED, "Binary messages are not supported"
        )

    def chat(self, member: Member, text: str) -> None:
        room = member.room
        if room is None:
            self.send_error(member, ErrorCode.NOT_IN_ROOM, "Join a room first")
            return
        if not text or text.isspace():
            self.send_error(member, ErrorCode.EMPTY_TEXT, "Message text is empty")
            return
        if len(text) > self.config.max_text_length:
            self.send_error(
                member,
                ErrorCode.TEXT_TOO_LONG,
                f"Message text is longer than {self.config.max_text_length} characters",
            )
            return
        if self._rate_limit:
            retry_after = self._rate_check(member)
            if retry_after:
                self.stats.rate_limited += 1
                self.send_error(
                    member,
                    ErrorCode.RATE_LIMITED,
                    self._slow_down,
                    retry_after_ms=max(1, int(retry_after * 1000)),
                )
                return
        self.stats.chats += 1
        self._publish(room, encode(ChatMessage(member.name, text, self._wall_ms())))

    def join(self, member: Member, room_name: str | None, username: str | None) -> None:
        name = member.fixed_name
        if name is None:
            name = clean_name(username, DEFAULT_USERNAME, self.config.max_username_length)
        if name is None:
            self.send_error(
                member,
                ErrorCode.INVALID_USERNAME,
                f"Username must be at most {self.config.max_username_length} characters "
                "without control characters",
            )
            return
        room_key = clean_name(room_name, DEFAULT_ROOM, self.config.max_room_length)
        if room_key is None:
            self.send_error(
                member,
                ErrorCode.INVALID_ROOM,
                f"Room name must be at most {self.config.max_room_length} characters "
                "without control characters",
            )
            return
        if member.allowed_rooms is not None and room_key not in member.allowed_rooms:
            self.send_error(
                member, ErrorCode.FORBIDDEN_ROOM, f"Your token does not allow room #{room_key}"
            )
            return
        if member.room is not None:
            self.leave(member)
        room = self.rooms.get(room_key)
        if room is None:
            room = self.rooms[room_key] = Room(room_key)
        self.stats.joins += 1
        member.name = name
        member.room = room
        member.slot = -1
        room.arriving += 1
        self.broker.join(room, member)

    def admit(self, room: Room, member: Member, welcome: bytes | None) -> None:
        """Puts an arriving member into the room's delivery lists at this point of its stream.

        It gets every frame queued from now on, none queued before; `welcome` (a frame) is written
        first. The broker calls this once it has placed the join in the room's order.
        """
        room.arriving -= 1
        if room.pending:
            member.late = True
            member.cursor = len(room.pending)
            member.slot = len(room.late)
            room.late.append(member)
        else:
            member.slot = len(room.members)
            room.members.append(member)
        if welcome is not None:
            member.write(welcome)

    def set_broker(self, broker: Broker) -> None:
        self.broker = broker
        self._publish = broker.publish

    def deliver(self, room: Room, payload: bytes) -> None:
        """Queues one encoded message (from this node or another) on the room's next flush."""
        self._enqueue(room, text_frame(payload))

    def notice(self, room: Room, member: Member, event: str, count: int) -> SystemMessage:
        verb = "joined" if event == "join" else "left"
        return SystemMessage(
            f"{member.name} {verb} #{room.name}", event, room.name, member.name, count,
            self._wall_ms(),
        )

    def drop_if_empty(self, room: Room) -> bool:
        """Forgets a room nobody on this node is in or arriving at; True when it was dropped."""
        if len(room) or room.arriving:
            return False
        if self.rooms.get(room.name) is room:
            del self.rooms[room.name]
        return True

    def leave(self, member: Member) -> None:
        """An explicit leave: the member still gets what was queued for it before it left."""
        room = member.room
        if room is None:
            return
        if room.pending and member.slot >= 0:
            start = member.cursor if member.late else 0
            if start < len(room.pending):
                member.write(b"".join(room.pending[start:]))
        self._remove(room, member)

    def disconnect(self, member: Member) -> None:
        """The member's connection is gone or going: nothing more is written to it."""
        if member.room is not None:
            self._remove(member.room, member)

    # ---- outbound -----------------------------------------------------------------------------

    def send_error(
        self, member: Member, code: ErrorCode, text: str, retry_after_ms: int | None = None
    ) -> None:
        self.stats.errors += 1
        self.send_direct(member, error_frame(code, text, retry_after_ms))

    def send_direct(self, member: Member, frame: bytes) -> None:
        """Writes one frame to one member now, after whatever its room queued for it so far."""
        room = member.room
        if room is None or not room.pending or member.slot < 0:
            member.write(frame)
            return
        pending = room.pending
        if member.late:
            start = member.cursor
        else:
            start = 0
            _swap_remove(room.members, member)
            member.late = True
            member.slot = len(room.late)
            room.late.append(member)
        member.cursor = len(pending)
        if start < len(pending):
            member.write(b"".join(pending[start:]) + frame)
        else:
            member.write(frame)

    def flush(self) -> None:
        """Writes every room's frames queued during this tick: one write per member per room."""
        self._flush_scheduled = False
        dirty = self._dirty
        if not dirty:
            return
        self._dirty = []
        stats = self.stats
        for room in dirty:
            pending = room.pending
            room.pending = []
            blob = pending[0] if len(pending) == 1 else b"".join(pending)
            members = room.members
            for member in members:
                member.write(blob)
            recipients = len(members)
            stats.broadcasts += 1
            stats.writes += recipients
            stats.deliveries += recipients * len(pending)
            stats.coalesced_frames += recipients * (len(pending) - 1)
            stats.bytes_sent += recipients * len(blob)
            if room.late:
                self._settle_late(room, pending)

    def _settle_late(self, room: Room, pending: list[bytes]) -> None:
        stats = self.stats
        members = room.members
        for member in room.late:
            start = member.cursor
            if start < len(pending):
                tail = b"".join(pending[start:])
                member.write(tail)
                stats.writes += 1
                stats.deliveries += len(pending) - start
                stats.bytes_sent += len(tail)
            member.late = False
            member.cursor = 0
            member.slot = len(members)
            members.append(member)
        room.late = []

    # ---- internals ----------------------------------------------------------------------------

    def _enqueue(self, room: Room, frame: bytes) -> None:
        if not room.pending:
            self._dirty.append(room)
            if not self._flush_scheduled:
                self._flush_scheduled = True
                self._schedule(self.flush)
        room.pending.append(frame)

    def _remove(self, room: Room, member: Member) -> None:
        if member.slot < 0:
            room.arriving -= 1
        else:
            _swap_remove(room.late if member.late else room.members, member)
        member.late = False
        member.cursor = 0
        member.slot = 0
        member.room = None
        self.stats.leaves += 1
        self.broker.leave(room, member)

    def _rate_check(self, member: Member) -> float:
        """Sliding window as in the seed: at most N chats in any window. Returns seconds to wait."""
        now = self._clock()
        log = member.rate_log
        if log is None:
            log = member.rate_log = [float("-inf")] * self._rate_limit
        oldest = log[member.rate_pos]
        elapsed = now - oldest
        if elapsed < self._rate_window:
            return self._rate_window - elapsed
        log[member.rate_pos] = now
        member.rate_pos = (member.rate_pos + 1) % self._rate_limit
        return 0.0


def _swap_remove(items: list[Member], member: Member) -> None:
    index = member.slot
    last = items.pop()
    if last is not member:
        items[index] = last
        last.slot = index
