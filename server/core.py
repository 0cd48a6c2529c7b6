"""The chat core: the rules of join, chat and leave, presence notices and rate limits.

No sockets, no asyncio. A client's text message is decoded once and checked (names, lengths,
rooms a token allows, rate limits); where a room's messages go is the broker's business (the
``Broker`` protocol below; the in-process one is server/broker.py, the Redis one server/redis/).
A chat goes to ``broker.chat`` unencoded (its seq is not known yet): the broker gives it its place
in the room's order (the seq), encodes it once, and hands it back through ``enqueue`` (a frame)
or ``deliver`` (a payload).
Joins work the same way: the core makes the member *arriving* and calls ``broker.join`` (with
the history the joiner asked for); the broker places it with ``admit`` (welcome now) or ``hold``
+ ``release`` (placed now, welcome later, what arrives meanwhile is kept for it). Who receives
which frames, and when, is server/delivery.py's business.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Protocol

from . import protocol
from .config import Config
from .delivery import Delivery, Member, Room
from .names import DEFAULT_ROOM, DEFAULT_USERNAME, clean_name
from .protocol import (
    Chat,
    ChatMessage,
    CloseCode,
    DecodeFailure,
    ErrorCode,
    InvalidUTF8,
    Join,
    Position,
    SystemMessage,
    Typing,
    TypingMessage,
    encode,
    error_frame,
    text_frame,
)
from .ratelimit import Ring
from .state import Counters

__all__ = ["Broker", "ChatCore", "Member", "Replay", "Room"]

TYPING_INTERVAL = 2.0  # seconds: at most one typing event per member goes out per interval


# What a joiner asked to be replayed before its welcome: the last K messages (an int), every
# message after a position (`since`), or nothing (None: a seed client's join).
Replay = int | Position | None


class Broker(Protocol):
    """Where the core sends a room's messages, joins and leaves (see the module docstring)."""

    def chat(self, room: Room, sender: Member, message: ChatMessage, chat_id: str | None) -> None:
        """Places one chat (``message.seq`` still 0) in `room`'s order: sets its seq, encodes it
        once and delivers it to every member of `room`, on every node, in one order. With a
        `chat_id`, the sender gets an ``ack`` after its own copy, and a chat whose (username,
        id) the room's history still holds is not posted again: the sender gets the same ack."""

    def join(self, room: Room, member: Member, replay: Replay) -> None:
        """`member` (arriving, ``member.room is room``) joins: announce it and admit it; when
        `replay` is not None its ``history`` message comes before its welcome, and the live
        messages after the welcome start exactly where the replay ends."""

    def leave(self, room: Room, member: Member) -> None:
        """`member` has been taken out of `room` (it receives nothing more): announce it."""

    def typing(self, room: Room, member: Member, payload: bytes) -> None:
        """`member` is typing: tell the members of `room` that asked for typing events."""


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
        delayed: Callable[[int, float], object] | None = None,
    ) -> None:
        """`request_flush` is called (at most once per flush) when frames are queued: the owner
        then calls ``flush()`` at the end of the event-loop tick."""
        self.config = config
        self.rooms: dict[str, Room] = {}
        self.counters = Counters() if counters is None else counters
        delivery = Delivery(self.counters, request_flush, delayed=delayed)
        # What brokers and the adapter call, bound once: no extra call per message.
        self.deliver = delivery.deliver
        self.enqueue = delivery.enqueue
        self.admit = delivery.admit
        self.hold = delivery.hold
        self.release = delivery.release
        self.send_direct = delivery.send_direct
        self.flush = delivery.flush
        self._delivery = delivery
        self.broker: Broker = _NO_BROKER
        self._chat = _NO_BROKER.chat  # bound once: no extra lookup per message
        self._clock = clock
        self._wall_ms = wall_ms
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
        self._chat = broker.chat

    # ---- inbound ------------------------------------------------------------------------------

    def handle_text(self, member: Member, payload: bytes) -> CloseCode | None:
        """Handles one complete text message; returns a close code when the peer must go."""
        self.counters.messages_in += 1
        try:
            message = protocol.decode(payload)
        except InvalidUTF8:
            return CloseCode.INVALID_TEXT
        except DecodeFailure as failure:
            self.send_error(member, failure.code, failure.text, chat_id=failure.chat_id)
            return None
        kind = type(message)
        if kind is Chat:
            self.chat(member, message.text, message.id)  # type: ignore[union-attr]
        elif kind is Join:
            join: Join = message  # type: ignore[assignment]
            replay = join.since if join.since is not None else join.history
            self.join(member, join.room, join.username, replay, typing=bool(join.typing))
        elif kind is Typing:
            self.typing(member)
        elif member.room is not None and not self._join_refused(member, "leave"):
            self.leave(member)
        return None

    def handle_binary(self, member: Member) -> None:
        self.counters.messages_in += 1
        self.send_error(
            member, ErrorCode.BINARY_UNSUPPORTED, "Binary messages are not supported"
        )

    def chat(self, member: Member, text: str, chat_id: str | None = None) -> None:
        room = member.room
        if room is None:
            self.send_error(member, ErrorCode.NOT_IN_ROOM, "Join a room first", chat_id=chat_id)
            return
        if not text or text.isspace():
            self.send_error(member, ErrorCode.EMPTY_TEXT, "Message text is empty", chat_id=chat_id)
            return
        if len(text) > self.config.max_text_length:
            self.send_error(
                member,
                ErrorCode.TEXT_TOO_LONG,
                f"Message text is longer than {self.config.max_text_length} characters",
                chat_id=chat_id,
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
                    chat_id=chat_id,
                )
                return
        self.counters.chats += 1
        self._chat(room, member, ChatMessage(member.name, text, self._wall_ms()), chat_id)

    def typing(self, member: Member) -> None:
        """Tells the room's members that asked for it that `member` is typing; at most one per
        TYPING_INTERVAL per member goes out, the others are dropped (a hint, never stored)."""
        room = member.room
        if room is None:
            self.send_error(member, ErrorCode.NOT_IN_ROOM, "Join a room first")
            return
        now = self._clock()
        if now - member.typing_at < TYPING_INTERVAL:
            return
        member.typing_at = now
        self.broker.typing(room, member, encode(TypingMessage(room.name, member.name)))

    def deliver_typing(self, room: Room, payload: bytes, sender: Member | None) -> None:
        """A typing event (from this node or another) to the members that asked for them."""
        self._delivery.send_to_typing_watchers(room, text_frame(payload), sender)

    def join(
        self,
        member: Member,
        room_name: str | None,
        username: str | None,
        replay: Replay = None,
        *,
        typing: bool = False,
    ) -> None:
        """`typing`: whether the member asked for typing events; like everything else, it
        changes only if the join is accepted (a refused join changes nothing)."""
        name = member.fixed_name
        if name is None:
            name = clean_name(username, DEFAULT_USERNAME, self.config.max_username_length)
        if name is None:
            self.send_error(
                member,
                ErrorCode.INVALID_USERNAME,
                f"Username must be at most {self.config.max_username_length} characters "
                "without control or invisible characters",
            )
            return
        room_key = clean_name(room_name, DEFAULT_ROOM, self.config.max_room_length)
        if room_key is None:
            self.send_error(
                member,
                ErrorCode.INVALID_ROOM,
                f"Room name must be at most {self.config.max_room_length} characters "
                "without control or invisible characters",
            )
            return
        if member.allowed_rooms is not None and room_key not in member.allowed_rooms:
            self.send_error(
                member, ErrorCode.FORBIDDEN_ROOM, f"Your token does not allow room #{room_key}"
            )
            return
        if self._join_refused(member, "join"):
            return  # nothing changes: still in its room, nobody told anything
        if member.room is not None:
            self.leave(member)
        room = self.rooms.get(room_key)
        if room is None:
            room = self.rooms[room_key] = Room(room_key)
        self.counters.joins += 1
        member.wants_typing = typing
        member.name = name
        member.room = room
        member.slot = -1
        room.arriving += 1
        self.broker.join(room, member, replay)

    def leave(self, member: Member) -> None:
        """An explicit leave: the member still gets what was queued for it before it left."""
        room = member.room
        if room is None:
            return
        self._delivery.catch_up(member)
        self._remove(room, member)

    def disconnect(self, member: Member) -> None:
        """The member's connection is gone or going: nothing more is written to it."""
        if member.room is not None:
            self._remove(member.room, member)

    # ---- the broker's side (deliver, admit, hold, release: server/delivery.py) ------------

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
        self,
        member: Member,
        code: ErrorCode,
        text: str,
        retry_after_ms: int | None = None,
        *,
        chat_id: str | None = None,
        refused: str | None = None,
    ) -> None:
        """An error to the member at fault; `chat_id` names the refused chat when it had one,
        `refused` the type of a join or leave the presence rate limit refused."""
        self.counters.errors += 1
        self.send_direct(member, error_frame(code, text, retry_after_ms, chat_id, refused))

    # ---- internals ----------------------------------------------------------------------------

    def _remove(self, room: Room, member: Member) -> None:
        self._delivery.remove(room, member)
        self.counters.leaves += 1
        self.broker.leave(room, member)

    def _join_refused(self, member: Member, kind: str) -> bool:
        """Spends one of the member's joins and leaves: False when the limit allows it (or is
        off); else sends it `rate_limited` naming the `kind` refused ("join" or "leave", so that
        a client can tell it from a refused chat) and returns True: the caller changes nothing."""
        if not self._join_rate_limit:
            return False
        now = self._clock()
        ring = member.join_rate
        if ring is None:
            # Most connections join once: the first join's time is kept inline, and the ring
            # (160 bytes) made only when a second one comes.
            if math.isnan(member.first_join):  # no join yet
                member.first_join = now
                return False
            ring = member.join_rate = Ring(self._join_rate_limit)
            ring.spend(member.first_join, self._rate_window)
        retry_after = ring.spend(now, self._rate_window)
        if not retry_after:
            return False
        self.counters.presence_rate_limited += 1
        wait = max(1, int(retry_after * 1000))
        self.send_error(
            member, ErrorCode.RATE_LIMITED, self._join_slow_down, retry_after_ms=wait, refused=kind
        )
        return True


class _Unwired:
    """The broker of a core nobody wired yet: using it is a programming error."""

    def chat(self, room: Room, sender: Member, message: ChatMessage, chat_id: str | None) -> None:
        raise RuntimeError("ChatCore has no broker: call use_broker() first")

    def join(self, room: Room, member: Member, replay: Replay) -> None:
        raise RuntimeError("ChatCore has no broker: call use_broker() first")

    def leave(self, room: Room, member: Member) -> None:
        raise RuntimeError("ChatCore has no broker: call use_broker() first")

    def typing(self, room: Room, member: Member, payload: bytes) -> None:
        raise RuntimeError("ChatCore has no broker: call use_broker() first")


_NO_BROKER = _Unwired()
