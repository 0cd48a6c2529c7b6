"""The single-node broker: a room's order, seqs, history, joins and leaves, in this process alone.

Everything happens synchronously, in the order the core calls it: a chat gets the next seq of
its room's stream (server/history.py) and is encoded and framed once, and that one frame is
stored and queued for the room at the same moment, so what a joiner is replayed and what it then
receives live meet exactly, with no gap and no duplicate. ``join_locally`` is also what the Redis
broker does while Redis is unreachable.
"""

from __future__ import annotations

from .core import ChatCore, Member, Replay, Room
from .history import History, Stream
from .protocol import ChatMessage, Position, ack_frame, encode, history_frame, text_frame


class LocalBroker:
    """In-process order and delivery, with the room history kept in `history`."""

    __slots__ = ("core", "enqueue", "history", "send_direct")

    def __init__(self, core: ChatCore, history: History | None = None) -> None:
        self.core = core
        self.history = History.from_config(core.config) if history is None else history
        self.enqueue = core.enqueue  # the frame history.add made: stored and sent, one object
        self.send_direct = core.send_direct

    def chat(self, room: Room, sender: Member, message: ChatMessage, chat_id: str | None) -> None:
        history = self.history
        stream = history.get(room.name) or history.open(room.name)
        if chat_id is not None:
            seq = history.acked(stream, message.username, chat_id)
            if seq is not None:  # a retry of a message the room already has: not posted again
                self.core.counters.duplicate_chats += 1
                self.send_direct(sender, ack_frame(chat_id, seq))
                return
        self.enqueue(room, history.add(stream, message, chat_id))
        if chat_id is not None:  # after the sender's own copy, which the room queued first
            self.send_direct(sender, ack_frame(chat_id, message.seq))

    def join(self, room: Room, member: Member, replay: Replay) -> None:
        stream = self.history.open(room.name)
        before = b"" if replay is None else self._replay(stream, replay)
        join_locally(self.core, room, member, before=before, stream=stream)

    def leave(self, room: Room, member: Member) -> None:
        if leave_locally(self.core, room, member):
            self.history.close(room.name)

    def typing(self, room: Room, member: Member, payload: bytes) -> None:
        self.core.deliver_typing(room, payload, member)

    def _replay(self, stream: Stream, replay: int | Position) -> bytes:
        history = self.history
        if isinstance(replay, Position):
            payloads, recovered, reason = history.since(stream, replay.epoch, replay.seq)
            self.core.counters.resumes += 1
            self.core.counters.resumes_recovered += recovered
        else:
            payloads, recovered, reason = history.last(stream, replay)
        return history_frame(stream.name, stream.epoch, payloads, recovered, reason)


def join_locally(
    core: ChatCore, room: Room, member: Member, *, before: bytes = b"", stream: Stream | None = None
) -> None:
    """A join decided on this node alone: a notice to the others, then the joiner's own copy.

    The joiner's copy carries the member list (itself included), with a `stream` its epoch and
    last seq, and the server's --max-text-length; it is written at once, after `before` (a
    `history` frame), so the joiner's stream starts here, before any frame queued after its
    cursor.
    """
    present = len(room)
    notice = core.notice(room, member, "join", present + 1)
    if present:
        core.deliver(room, encode(notice))
    core.admit(room, member, None)
    notice.users = room.names(core.config.max_users_list)
    if stream is not None:
        notice.epoch = stream.epoch
        notice.seq = stream.last
    notice.max_text_length = core.config.max_text_length
    member.write(before + text_frame(encode(notice)))


def leave_locally(core: ChatCore, room: Room, member: Member) -> bool:
    """A leave decided on this node alone: the room is told, or forgotten (then True)."""
    if core.drop_if_empty(room):
        return True
    core.deliver(room, encode(core.notice(room, member, "leave", len(room))))
    return False
