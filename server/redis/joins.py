"""The cross-node join protocol: a local member from its join request to its welcome.

A join is one script in Redis (server/redis/scripts.py: register, count, publish the notice,
list up to --max-users-list names, and read the stream's position and the replay the joiner
asked for at that very point). Two things then arrive, in either order, on different
connections: the notice, back through the room's subscription (its position in the channel is
where the joiner's stream starts), and the script's reply (count, names, epoch, last seq,
replay). When the notice comes first the member is placed at once and ``hold``-ed by the core;
the reply ``release``-s it with its ``history`` message and welcome written before everything
kept for it. So the replay ends exactly where live delivery begins, on whichever node.

A notice published while the node's subscription was dead (killed, or dropping messages) never
comes back: the repair that follows (server/redis/repairs.py) places such a **stranded** join
itself, at its position in the room's order (after the chat whose seq the script read), so that
no joiner waits for ever.
"""

from __future__ import annotations

from collections.abc import Callable

from ..broker import join_locally
from ..core import ChatCore, Member, Replay, Room
from ..history import DISABLED, TOO_MANY, TOO_OLD, newest_within
from ..protocol import Position, SystemMessage, encode, payload_history_frame, text_frame
from .scripts import JoinReply

UNAVAILABLE = "history unavailable"  # the reason a resume gets while Redis is unreachable


class Joining:
    """A local member between its join request and its welcome."""

    __slots__ = (
        "before", "count", "member", "notice", "order", "positioned", "replay", "room", "users"
    )

    def __init__(
        self, member: Member, room: Room, notice: SystemMessage, replay: Replay, order: int
    ) -> None:
        self.order = order  # joins asked for on this node before it, plus one
        self.member = member
        self.room = room
        self.notice = notice
        self.replay = replay
        self.count = 0
        self.users: list[str] | None = None  # from the script's reply
        self.before = b""  # the `history` frame, when the joiner asked for one
        self.positioned = False  # its notice came back through the subscription

    def welcome(self, max_text_length: int) -> bytes:
        """The joiner's own copy of its notice (the others' was encoded before any of this)."""
        notice = self.notice
        notice.count = self.count
        notice.users = self.users
        notice.max_text_length = max_text_length
        return self.before + text_frame(encode(notice))

    def announced(self) -> bytes:
        """The notice as the room's other members get it (Redis fills in the count)."""
        notice = self.notice
        return encode(SystemMessage(
            notice.text, notice.event, notice.room, notice.username, self.count, notice.timestamp
        ))


def replayed(
    replay: Replay, reply: JoinReply, size: int, max_bytes: int
) -> tuple[list[bytes], bool, str | None]:
    """What a joiner is replayed, from the script's reply: (payloads oldest first, recovered,
    reason), with the same rules and reasons as on one node (server/history.py): complete or
    flagged, never a partial replay called recovered."""
    payloads = reply.payloads
    if not size:
        return [], False, DISABLED
    if isinstance(replay, Position):
        recovered = reply.status == "ok"
        reason = None if recovered else reply.status
    else:
        # The last K: complete when every one of them is there (all of the room's chats when it
        # has had fewer than K), whatever K; when not, `too many` if K is beyond --history-size
        # (the ring cannot hold them), else `too old`: as History.last decides on one node.
        count = int(replay or 0)
        recovered, reason = True, None
        if len(payloads) < min(count, reply.last):  # seqs start at 1: no more than `last`
            recovered, reason = False, TOO_MANY if count > size else TOO_OLD
    if sum(map(len, payloads)) > max_bytes:  # one replay's limit: the newest that fit
        kept = newest_within(payloads, max_bytes, len)
        # An incomplete replay keeps its own reason (`epoch changed`, `too old`...), as on one
        # node; only a complete one that does not fit is `too many`.
        return kept, False, reason or TOO_MANY
    return payloads, recovered, reason


class Joins:
    def __init__(
        self,
        core: ChatCore,
        history_size: int,
        replay_bytes: int,
        placed: Callable[[str, str, int], None] = lambda room, epoch, seq: None,
    ) -> None:
        """`placed(room, epoch, seq)` is told each welcome's position in the room's stream."""
        self._core = core
        self._placed = placed
        self._size = history_size
        self._replay_bytes = replay_bytes
        self._max_text_length = core.config.max_text_length
        self.pending: dict[str, Joining] = {}  # member field -> its join in progress
        self.asked = 0  # joins asked for so far: a repair knows which came before it

    def expect(
        self, field: str, member: Member, room: Room, notice: SystemMessage, replay: Replay
    ) -> Joining:
        self.asked += 1
        joining = self.pending[field] = Joining(member, room, notice, replay, self.asked)
        return joining

    def stranded(self, room: Room, asked: int, arrived: set[str]) -> list[tuple[str, Joining]]:
        """The joins into `room` asked for before a repair (the first `asked`) whose script has
        replied but whose notice did not come back before the repair's marker, nor is held by
        the repair (`arrived`): published while the subscription was dead, it never will."""
        return [
            (field, joining) for field, joining in self.pending.items()
            if joining.room is room and joining.order <= asked and not joining.positioned
            and joining.users is not None and field not in arrived
        ]

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
            self._placed(room.name, joining.notice.epoch or "", joining.notice.seq or 0)
            self._core.admit(room, joining.member, joining.welcome(self._max_text_length))
        else:
            self._core.hold(room, joining.member)

    def replied(self, field: str, reply: JoinReply, joining: Joining | None = None) -> None:
        """The join script's reply: the room at the notice's position. `joining`: the join it
        answers; a member's pending join is keyed by the member, and the reply of a join it
        overtook (cancelled, its script already queued) must not describe the next one."""
        if joining is None:
            joining = self.pending.get(field)
        if joining is None or self.pending.get(field) is not joining:
            return
        joining.count, joining.users = reply.count, reply.names
        joining.notice.epoch, joining.notice.seq = reply.epoch, reply.last
        if joining.replay is not None:
            payloads, recovered, reason = replayed(
                joining.replay, reply, self._size, self._replay_bytes
            )
            joining.before = payload_history_frame(
                joining.room.name, reply.epoch, payloads, recovered, reason
            )
            self._core.counters.resumes += isinstance(joining.replay, Position)
            self._core.counters.resumes_recovered += recovered and isinstance(
                joining.replay, Position
            )
        if joining.positioned:
            del self.pending[field]
            self._placed(joining.room.name, reply.epoch, reply.last)
            self._core.release(joining.member, joining.welcome(self._max_text_length))

    def fail_over(self, max_users: int) -> None:
        """Redis is gone: every join in progress completes on this node alone (a resume is told
        the history is unavailable)."""
        pending, self.pending = self.pending, {}
        for joining in pending.values():
            self._alone(joining, max_users)

    def failed(self, field: str, max_users: int, joining: Joining | None = None) -> None:
        """Redis refused the join's script (an error it answered, logged by the pipeline): the
        join completes on this node alone, as in an outage, so that the joiner is not left
        waiting for a welcome that will never come. (`joining` as for ``replied``.)"""
        current = self.pending.get(field)
        if current is None or (joining is not None and current is not joining):
            return
        del self.pending[field]
        self._alone(current, max_users)

    def _alone(self, joining: Joining, max_users: int) -> None:
        room = joining.room
        member = joining.member
        if member.room is not room:
            return
        if joining.positioned:  # held: its welcome describes the room as this node sees it
            joining.users = room.names(max_users)
            joining.count = len(room)
            if joining.replay is not None and not joining.before:
                joining.before = unavailable(room.name)
            self._core.release(member, joining.welcome(self._max_text_length))
        else:
            before = unavailable(room.name) if joining.replay is not None else b""
            join_locally(self._core, room, member, before=before)


def unavailable(room: str) -> bytes:
    """The `history` answer while Redis cannot be reached: nothing recovered, and why."""
    return payload_history_frame(room, "", [], False, UNAVAILABLE)
