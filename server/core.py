"""The chat core: rooms, presence, validation, rate limits and fan-out. No sockets, no asyncio.

A member is anything with a ``write(bytes)`` callable; the picows adapter passes the socket
transport's ``write``, tests pass ``list.append``. Messages to a room are framed once and queued on
the room; ``flush()`` (requested once per event-loop tick) joins a room's queued frames into one
buffer and writes the *same* bytes object to every member, so a broadcast costs one encode, one
frame and one write per member per tick, whatever the number of messages in that tick.

Ordering: every member's byte stream is exactly the sequence of events it took part in. Members
who joined during the current tick (or received a direct message while the room had queued frames)
sit in ``room.late`` with a ``cursor`` into the room's queue, and get only the frames queued after
it. A member that leaves first receives what was queued for it. See docs/backpressure.md.

Where a room's messages go is the broker's business (the ``Broker`` protocol below; the in-process
one is server/broker.py, the Redis one server/redis/): the core encodes a message once and hands
the payload to ``broker.publish``; the broker hands it back through ``deliver`` when its place in
the room's order is known. Joins work the same way: the core makes the member *arriving* and calls
``broker.join``; the broker places it with ``admit`` (welcome now) or ``hold`` + ``release``
(placed now, welcome later, what arrives meanwhile is kept for it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Container, Iterator
from itertools import chain, islice
from typing import Protocol

from . import protocol
from .config import Config
from .names import DEFAULT_ROOM, DEFAULT_USERNAME, clean_name
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
from .ratelimit import Ring
from .state import Counters

Write = Callable[[bytes], object]


class Broker(Protocol):
    """Where the core sends a room's messages, joins and leaves (see the module docstring)."""

    def publish(self, room: Room, payload: bytes) -> None:
        """Delivers one encoded message to every member of `room`, on every node, in one order."""

    def join(self, room: Room, member: Member) -> None:
        """`member` (arriving, ``member.room is room``) joins: announce it and admit it."""

    def leave(self, room: Room, member: Member) -> None:
        """`member` has been taken out of `room` (it receives nothing more): announce it."""


class Member:
    """One participant. Kept small: a server holds tens of thousands of these."""

    __slots__ = (
        "allowed_rooms",
        "chat_rate",
        "cursor",
        "fixed_name",
        "held",
        "join_rate",
        "late",
        "name",
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
        # Where the member is in its room: index in room.members, room.late or room.held (O(1)
        # swap-remove); -1 while arriving.
        self.slot = 0
        self.late = False  # True while in room.late
        self.held: list[bytes] | None = None  # not None while in room.held: frames kept for it
        self.cursor = 0  # late or held: first frame of room.pending this member still has to get
        self.chat_rate: Ring | None = None  # times of its last `rate_limit` chats
        self.join_rate: Ring | None = None  # times of its last `join_rate_limit` joins and leaves


class Room:
    __slots__ = ("arriving", "held", "late", "members", "name", "pending")

    def __init__(self, name: str) -> None:
        self.name = name
        self.arriving = 0  # members whose join the broker has not placed yet (slot -1)
        self.members: list[Member] = []  # get every frame of the current tick
        self.late: list[Member] = []  # get room.pending[member.cursor:] this tick
        self.held: list[Member] = []  # placed, welcome not written yet: frames kept for them
        self.pending: list[bytes] = []  # frames queued this tick, flushed once

    def __len__(self) -> int:
        return len(self.members) + len(self.late) + len(self.held)

    def all_members(self) -> Iterator[Member]:
        """Every placed member (not the arriving ones)."""
        return chain(self.members, self.late, self.held)

    def names(self, limit: int) -> list[str]:
        return [m.name for m in islice(self.all_members(), limit)]


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class ChatCore:
    def __init__(
        self,
        config: Config,
        request_flush: Callable[[], object],
        *,
        counters: Counters | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_ms: Callable[[], int] = wall_clock_ms,
    ) -> None:
        """`request_flush` is called (at most once per flush) when frames are queued: the owner
        then calls ``flush()`` at the end of the event-loop tick."""
        self.config = config
        self.rooms: dict[str, Room] = {}
        self.counters = Counters() if counters is None else counters
        self._request_flush = request_flush
        self.broker: Broker = _NO_BROKER
        self._publish: Callable[[Room, bytes], None] = _NO_BROKER.publish
        self._clock = clock
        self._wall_ms = wall_ms
        self._dirty: list[Room] = []
        self._flush_requested = False
        self._rate_limit = config.rate_limit
        self._rate_window = config.rate_window
        self._slow_down = (
            f"Slow down! Max {config.rate_limit} msgs/{config.rate_window:g}s"
            if config.rate_limit
            else ""
        )
        # Joins and leaves have their own limit: each sends a notice to every member of a room.
        self._join_rate_limit = config.join_rate_limit
        self._join_slow_down = (
            f"Slow down! Max {config.join_rate_limit} joins and leaves/{config.rate_window:g}s"
        )

    def use_broker(self, broker: Broker) -> None:
        self.broker = broker
        self._publish = broker.publish

    # ---- inbound ------------------------------------------------------------------------------

    def handle_text(self, member: Member, payload: bytes) -> CloseCode | None:
        """Handles one complete text message; returns a close code when the peer must go."""
        self.counters.messages_in += 1
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
        elif member.room is not None and not self._join_refused(member):
            self.leave(member)
        return None

    def handle_binary(self, member: Member) -> None:
        self.counters.messages_in += 1
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
            ring = member.chat_rate
            if ring is None:
                ring = member.chat_rate = Ring(self._rate_limit)
            retry_after = ring.spend(self._clock(), self._rate_window)
            if retry_after:
                self.counters.rate_limited += 1
                self.send_error(
                    member,
                    ErrorCode.RATE_LIMITED,
                    self._slow_down,
                    retry_after_ms=max(1, int(retry_after * 1000)),
                )
                return
        self.counters.chats += 1
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
        if self._join_refused(member):
            return  # nothing changes: still in its room, nobody told anything
        if member.room is not None:
            self.leave(member)
        room = self.rooms.get(room_key)
        if room is None:
            room = self.rooms[room_key] = Room(room_key)
        self.counters.joins += 1
        member.name = name
        member.room = room
        member.slot = -1
        room.arriving += 1
        self.broker.join(room, member)

    def leave(self, member: Member) -> None:
        """An explicit leave: the member still gets what was queued for it before it left."""
        room = member.room
        if room is None:
            return
        if room.pending and member.slot >= 0 and member.held is None:
            start = member.cursor if member.late else 0
            if start < len(room.pending):
                member.write(b"".join(room.pending[start:]))
        self._remove(room, member)

    def disconnect(self, member: Member) -> None:
        """The member's connection is gone or going: nothing more is written to it."""
        if member.room is not None:
            self._remove(member.room, member)

    # ---- the broker's side --------------------------------------------------------------------

    def deliver(self, room: Room, payload: bytes) -> None:
        """Queues one encoded message (from this node or another) on the room's next flush."""
        self._enqueue(room, text_frame(payload))

    def admit(self, room: Room, member: Member, welcome: bytes | None) -> None:
        """Puts an arriving member into the room's delivery lists at this point of its stream.

        It gets every frame queued from now on, none queued before; `welcome` (a frame) is written
        first. The broker calls this once it has placed the join in the room's order.
        """
        room.arriving -= 1
        self._place(room, member, len(room.pending))
        if welcome is not None:
            member.write(welcome)

    def hold(self, room: Room, member: Member) -> None:
        """Places an arriving member at this point of the room's stream, like ``admit``, but
        keeps what it receives until ``release`` writes its welcome first."""
        room.arriving -= 1
        member.held = []
        member.cursor = len(room.pending)
        member.slot = len(room.held)
        room.held.append(member)

    def release(self, member: Member, welcome: bytes) -> None:
        """Writes a held member's welcome, then what was kept for it; it is then a plain member."""
        room = member.room
        held = member.held
        if room is None or held is None:
            return
        _swap_remove(room.held, member)
        member.held = None
        member.write(welcome + b"".join(held) if held else welcome)
        self._place(room, member, member.cursor)

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

    # ---- outbound -----------------------------------------------------------------------------

    def send_error(
        self, member: Member, code: ErrorCode, text: str, retry_after_ms: int | None = None
    ) -> None:
        self.counters.errors += 1
        self.send_direct(member, error_frame(code, text, retry_after_ms))

    def send_direct(self, member: Member, frame: bytes) -> None:
        """Writes one frame to one member now, after whatever its room queued for it so far."""
        room = member.room
        if room is None or member.slot < 0:
            member.write(frame)
            return
        if member.held is not None:
            self._keep_for_held(room, member)
            member.held.append(frame)
            return
        if not room.pending:
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
        self._flush_requested = False
        dirty = self._dirty
        if not dirty:
            return
        self._dirty = []
        counters = self.counters
        for room in dirty:
            pending = room.pending
            room.pending = []
            blob = pending[0] if len(pending) == 1 else b"".join(pending)
            members = room.members
            for member in members:
                member.write(blob)
            recipients = len(members)
            counters.broadcasts += 1
            counters.writes += recipients
            counters.deliveries += recipients * len(pending)
            counters.coalesced_frames += recipients * (len(pending) - 1)
            counters.bytes_sent += recipients * len(blob)
            if room.late:
                self._settle_late(room, pending)
            if room.held:
                for member in room.held:
                    self._keep_for_held(room, member, pending)

    def _settle_late(self, room: Room, pending: list[bytes]) -> None:
        counters = self.counters
        members = room.members
        for member in room.late:
            start = member.cursor
            if start < len(pending):
                tail = b"".join(pending[start:])
                member.write(tail)
                counters.writes += 1
                counters.deliveries += len(pending) - start
                counters.bytes_sent += len(tail)
            member.late = False
            member.cursor = 0
            member.slot = len(members)
            members.append(member)
        room.late = []

    # ---- internals ----------------------------------------------------------------------------

    def _keep_for_held(
        self, room: Room, member: Member, pending: list[bytes] | None = None
    ) -> None:
        """Moves the frames of `pending` (the room's queue by default) past the member's cursor
        into what is kept for it; its cursor then points past them."""
        queue = room.pending if pending is None else pending
        start = member.cursor
        assert member.held is not None
        if start < len(queue):
            member.held.extend(queue[start:])
        member.cursor = len(room.pending)

    def _place(self, room: Room, member: Member, cursor: int) -> None:
        """Into the delivery lists, getting room.pending[cursor:] and everything after."""
        if room.pending:
            member.late = True
            member.cursor = cursor
            member.slot = len(room.late)
            room.late.append(member)
        else:
            member.late = False
            member.cursor = 0
            member.slot = len(room.members)
            room.members.append(member)

    def _enqueue(self, room: Room, frame: bytes) -> None:
        if not room.pending:
            self._dirty.append(room)
            if not self._flush_requested:
                self._flush_requested = True
                self._request_flush()
        room.pending.append(frame)

    def _remove(self, room: Room, member: Member) -> None:
        if member.slot < 0:
            room.arriving -= 1
        elif member.held is not None:
            _swap_remove(room.held, member)
            member.held = None
        else:
            _swap_remove(room.late if member.late else room.members, member)
        member.late = False
        member.cursor = 0
        member.slot = 0
        member.room = None
        self.counters.leaves += 1
        self.broker.leave(room, member)

    def _join_refused(self, member: Member) -> bool:
        """Spends one of the member's joins and leaves: False when the limit allows it (or is
        off); else sends it `rate_limited` and returns True, and the caller changes nothing."""
        if not self._join_rate_limit:
            return False
        ring = member.join_rate
        if ring is None:
            ring = member.join_rate = Ring(self._join_rate_limit)
        retry_after = ring.spend(self._clock(), self._rate_window)
        if not retry_after:
            return False
        wait = max(1, int(retry_after * 1000))
        self.send_error(member, ErrorCode.RATE_LIMITED, self._join_slow_down, retry_after_ms=wait)
        return True


class _Unwired:
    """The broker of a core nobody wired yet: using it is a programming error."""

    def publish(self, room: Room, payload: bytes) -> None:
        raise RuntimeError("ChatCore has no broker: call use_broker() first")

    def join(self, room: Room, member: Member) -> None:
        raise RuntimeError("ChatCore has no broker: call use_broker() first")

    def leave(self, room: Room, member: Member) -> None:
        raise RuntimeError("ChatCore has no broker: call use_broker() first")


_NO_BROKER = _Unwired()


def _swap_remove(items: list[Member], member: Member) -> None:
    index = member.slot
    last = items.pop()
    if last is not member:
        items[index] = last
        last.slot = index
