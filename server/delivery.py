"""Members, rooms and the per-tick coalesced fan-out: who gets which frames, in which order.

A member (``fastpath.Member``, compiled because the fan-out loop reads it per recipient) has a
``write(bytes)`` callable: the socket transport's ``write``, tests' ``list.append``; while its
transport is empty, the fan-out sends on its socket directly. Frames for a room are queued on the
room;
``flush()`` (requested once per event-loop tick) joins a room's queued frames into one buffer and
writes the *same* bytes object to every member, so a broadcast costs one frame and one write per
member per tick, whatever the number of messages in that tick. Counters move per room flush,
never per recipient in the fan-out loop; the room frames a member gets in a write of its own
(caught up before a direct frame or a leave, or kept while its join was held and written on its
release) are counted as that one write, like a late member's. A welcome, an ack or an error is
not a delivery.

Ordering: every member's byte stream is exactly the sequence of events it took part in. Members
who were placed during the current tick (or received a direct message while the room had queued
frames) sit in ``room.late`` with a ``cursor`` into the room's queue and get only the frames
queued after it. A member placed with ``hold`` sits in ``room.held``: what it receives is kept
until ``release`` writes its welcome first. No sockets, no asyncio: see docs/backpressure.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from itertools import chain, islice

from .fastpath import Member, fanout
from .protocol import text_frame
from .state import Counters

__all__ = ["Delivery", "Member", "Room"]


class _Kept(list[bytes]):
    """What is kept for a held member, in order: the room's frames and its direct ones (acks,
    errors). `frames` and `size` are the room's share, the deliveries its release writes."""

    __slots__ = ("frames", "size")

    def __init__(self) -> None:
        super().__init__()
        self.frames = 0
        self.size = 0


class Room:
    __slots__ = ("arriving", "held", "late", "members", "name", "pending", "queued_at")

    def __init__(self, name: str) -> None:
        self.name = name
        self.arriving = 0  # members whose join the broker has not placed yet (slot -1)
        self.members: list[Member] = []  # get every frame of the current tick
        self.late: list[Member] = []  # get room.pending[member.cursor:] this tick
        self.held: list[Member] = []  # placed, welcome not written yet: frames kept for them
        self.pending: list[bytes] = []  # frames queued this tick, flushed once
        self.queued_at = 0.0  # when its first frame of this tick was queued (Delivery.clock)

    def __len__(self) -> int:
        return len(self.members) + len(self.late) + len(self.held)

    def all_members(self) -> Iterator[Member]:
        """Every placed member (not the arriving ones)."""
        return chain(self.members, self.late, self.held)

    def names(self, limit: int) -> list[str]:
        return [m.name for m in islice(self.all_members(), limit)]


class Delivery:
    """The fan-out of every room of this node."""

    def __init__(
        self,
        counters: Counters,
        request_flush: Callable[[], object],
        *,
        clock: Callable[[], float] = time.perf_counter,
        delayed: Callable[[int, float], object] | None = None,
    ) -> None:
        """`request_flush` is called (at most once per flush) when frames are queued: the owner
        then calls ``flush()`` at the end of the event-loop tick. `delayed(recipients, seconds)`
        is told, per room flush, how long its first frame waited from being queued to the last
        member's write: the server-side latency a load driver cannot blur."""
        self.counters = counters
        self._request_flush = request_flush
        self._clock = clock
        self._delayed = delayed
        self._dirty: list[Room] = []
        self._flush_requested = False

    def deliver(self, room: Room, payload: bytes) -> None:
        """Queues one encoded message (from this node or another) on the room's next flush."""
        self.enqueue(room, text_frame(payload))

    def enqueue(self, room: Room, frame: bytes) -> None:
        if not room.pending:
            room.queued_at = self._clock()
            self._dirty.append(room)
            if not self._flush_requested:
                self._flush_requested = True
                self._request_flush()
        room.pending.append(frame)

    # ---- placing members ----------------------------------------------------------------------

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
        member.held = _Kept()
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
        if held:
            member.write(welcome + b"".join(held))
            if isinstance(held, _Kept) and held.frames:
                self._counted(held.frames, held.size)
        else:
            member.write(welcome)
        self._place(room, member, member.cursor)

    def catch_up(self, member: Member) -> None:
        """Writes what was queued for a placed member so far (it is about to leave)."""
        room = member.room
        if room is None or not room.pending or member.slot < 0 or member.held is not None:
            return
        start = member.cursor if member.late else 0
        pending = room.pending
        if start < len(pending):
            tail = b"".join(pending[start:])
            member.write(tail)
            self._counted(len(pending) - start, len(tail))

    def remove(self, room: Room, member: Member) -> None:
        """Takes a member out of the room's lists; it receives nothing more from the room."""
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

    # ---- writing ------------------------------------------------------------------------------

    def send_to_typing_watchers(self, room: Room, frame: bytes, sender: Member | None) -> None:
        """A frame only for the members that asked for typing events, the sender excepted."""
        for member in [m for m in room.all_members() if m.wants_typing and m is not sender]:
            self.send_direct(member, frame)

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
            tail = b"".join(pending[start:])
            member.write(tail + frame)
            self._counted(len(pending) - start, len(tail))
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
            fanout(members, blob)  # compiled: one send() per member (server/fastpath.pyx)
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
            if self._delayed is not None:
                self._delayed(len(room), self._clock() - room.queued_at)

    def _settle_late(self, room: Room, pending: list[bytes]) -> None:
        members = room.members
        for member in room.late:
            start = member.cursor
            if start < len(pending):
                tail = b"".join(pending[start:])
                member.write(tail)
                self._counted(len(pending) - start, len(tail))
            member.late = False
            member.cursor = 0
            member.slot = len(members)
            members.append(member)
        room.late = []

    def _keep_for_held(
        self, room: Room, member: Member, pending: list[bytes] | None = None
    ) -> None:
        """Moves the frames of `pending` (the room's queue by default) past the member's cursor
        into what is kept for it; its cursor then points past them."""
        queue = room.pending if pending is None else pending
        start = member.cursor
        held = member.held
        assert isinstance(held, _Kept)
        if start < len(queue):
            frames = queue[start:]
            held.extend(frames)
            held.frames += len(frames)
            held.size += sum(map(len, frames))
        member.cursor = len(room.pending)

    def _counted(self, frames: int, size: int) -> None:
        """One write of `frames` of a room's frames (`size` bytes) to one member."""
        counters = self.counters
        counters.writes += 1
        counters.deliveries += frames
        counters.coalesced_frames += frames - 1
        counters.bytes_sent += size

    @staticmethod
    def _place(room: Room, member: Member, cursor: int) -> None:
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


def _swap_remove(items: list[Member], member: Member) -> None:
    index = member.slot
    last = items.pop()
    if last is not member:
        items[index] = last
        last.slot = index
