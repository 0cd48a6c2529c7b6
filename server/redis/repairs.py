"""Repairing a room's stream on this node: asking Redis, and delivering what it answers.

The decisions are server/redis/positions.py's (pure); this module does the asking (a marker
script and a read of the room's stream, queued on the command pipeline right after each other)
and the telling: the missed messages delivered, the members told when the stream was lost
(``reset``) or messages could not be recovered (``gap``), then what was held replayed through
the broker's normal path.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable

from ..core import ChatCore, Room
from ..protocol import StatusMessage, encode
from . import scripts
from .joins import Joining, Joins
from .pipeline import OTHER, Op, Pipeline
from .positions import DELIVER, RESET, Held, Positions
from .wire import CHAT, UnknownEnvelope, chat_position, open_envelope
from .wire import JOIN as JOIN_NOTICE

log = logging.getLogger("roomcast.redis")


class Repairs:
    def __init__(
        self,
        core: ChatCore,
        positions: Positions,
        pipeline: Pipeline,
        joins: Joins,
        *,
        node: str,
        publish_command: Callable[[], str],
        replay: Callable[[bytes, bytes], None],
    ) -> None:
        """`replay(channel, data)` is the broker's handling of a message from a room channel."""
        self._core = core
        self._positions = positions
        self._pipeline = pipeline
        self._joins = joins
        self._node = node
        self._publish_command = publish_command
        self._replay = replay

    def start(self, name: str, held: Held | None = None) -> None:
        """Holds what arrives for the room and asks Redis for a marker and what this node
        missed; the repair finishes when both are in (``marker`` and the read's reply)."""
        positions = self._positions
        if not positions.start(name, held):
            return
        repair = positions.repairs[name]
        repair.joins_asked = self._joins.asked
        known = positions.last(name)
        mark: list[tuple[str, int]] = []  # the marker's reply comes just before the read's

        def marked(reply: object) -> None:
            mark.append(scripts.parse_mark_reply(reply))

        def fetched(reply: object) -> None:
            if positions.repairs.get(name) is not repair:
                return  # the repair it was for started over (a lost subscription): stale
            epoch, bound = mark[0]
            read_epoch, entries = scripts.parse_repair_fetch_reply(reply)
            # The read is of the marker's stream unless Redis lost it between the two (then
            # nothing is read, and what the node lacks is told as a gap, never skipped).
            positions.read(name, epoch, bound, entries if read_epoch == epoch else [])
            self.finish(name)

        command = scripts.mark_command(self._publish_command(), name, self._node)
        self._pipeline.push(Op(OTHER, command, room=name, on_reply=marked))
        # After this node's position, or from the start of a stream of another epoch (a reset:
        # the new stream's messages are all new here).
        epoch, after = known if known is not None else ("", 0)
        self._pipeline.push(Op(
            OTHER, scripts.repair_fetch_command(name, epoch, after), room=name, on_reply=fetched
        ))

    def marker(self, name: str) -> None:
        """This node's marker came back through the room's subscription."""
        self._positions.marker(name)
        self.finish(name)

    def finish(self, name: str) -> None:
        positions = self._positions
        repair = positions.repairs.get(name)
        if repair is None:
            return
        seqs: list[int | None] = []
        arrived: set[str] = set()  # local joiners whose notice the repair holds
        for _, data in repair.held:
            seq = None
            with contextlib.suppress(UnknownEnvelope, ValueError):
                kind, sender, _ = open_envelope(data)
                if kind == CHAT:
                    epoch, number = chat_position(sender)
                    seq = number if epoch == repair.stream_epoch else None
                elif kind == JOIN_NOTICE:
                    arrived.add(sender)
            seqs.append(seq)
        outcome = positions.finish(name, seqs)
        if outcome is None:
            return
        room = self._core.rooms.get(name)
        if room is not None:
            if outcome.rolled_back:
                log.error(
                    "Redis's stream of #%s went back from seq %d to %d in epoch %s (restarted "
                    "from an older snapshot?): the messages after %d are lost, and the stream "
                    "starts over in a new epoch; persist with appendonly yes, or not at all",
                    name, outcome.rolled_back, outcome.seq, outcome.epoch, outcome.seq,
                )
                # What Redis numbered again until now is delivered after this reset; then the
                # stream goes, so that a resume from a position past `seq` is `epoch changed`,
                # never answered with the new chats as if nothing were missing.
                tell_reset(self._core, room, outcome.epoch, outcome.seq)
                self._pipeline.push(
                    Op(OTHER, scripts.forget_command(name, outcome.epoch), room=name)
                )
            elif outcome.reset:  # the new stream from its start: what it holds, then the gap
                tell_reset(self._core, room, outcome.epoch, 0)
            stranded = _Stranded(self._core, self._joins, room, outcome.epoch,
                                 self._joins.stranded(room, repair.joins_asked, arrived))
            for seq, payload in zip(outcome.seqs, outcome.deliver, strict=True):
                stranded.place_before(seq)
                self._core.deliver(room, payload)
            if outcome.missing:
                tell(self._core, room, "gap", f"{outcome.missing} messages could not be "
                     "recovered: they are no longer in the room's history")
            send_due_acks(self._core, positions, room)
        else:
            stranded = None
        for (channel, data), seq in zip(outcome.held, seqs, strict=True):
            if stranded is not None and seq is not None:
                stranded.place_before(seq)
            self._replay(channel, data)
        if stranded is not None:
            stranded.place_before(None)


class _Stranded:
    """The joins a repair places itself (``Joins.stranded``), each where its script ran: before
    the first chat after the seq it read, so its replay ends where its live delivery begins.
    The repaired chats and then the held ones go through ``place_before`` in the room's order."""

    def __init__(
        self, core: ChatCore, joins: Joins, room: Room, epoch: str,
        stranded: list[tuple[str, Joining]],
    ) -> None:
        self._core = core
        self._joins = joins
        self._room = room
        # another epoch's position says nothing about this stream: placed before all of it
        self._waiting = [
            (joining.notice.seq or 0 if joining.notice.epoch == epoch else -1, field, joining)
            for field, joining in stranded
        ]
        self._waiting.sort(key=lambda waiting: waiting[0])

    def place_before(self, seq: int | None) -> None:
        """Places the joins that come before chat `seq` (all that are left, for None)."""
        while self._waiting and (seq is None or self._waiting[0][0] < seq):
            _, field, joining = self._waiting.pop(0)
            log.warning("placing %s in #%s: its join notice was lost with the subscription",
                        joining.member.name, self._room.name)
            self._core.deliver(self._room, joining.announced())
            self._joins.positioned(field, self._room)


def deliver_judged(
    core: ChatCore, positions: Positions, room: Room, sender: str, payload: bytes
) -> int:
    """A CHAT envelope's chat (`sender` holds its epoch and seq) goes to the room's members if
    it is the next one here (or the first of a new epoch, after the reset notice); returns the
    verdict (GAP: not delivered)."""
    epoch, seq = chat_position(sender)
    verdict = positions.judge(room.name, epoch, seq)
    if verdict == RESET:
        tell_reset(core, room, epoch, seq - 1)
    if verdict in (DELIVER, RESET):
        core.deliver(room, payload)
        send_due_acks(core, positions, room)
    return verdict


def send_due_acks(core: ChatCore, positions: Positions, room: Room) -> None:
    """The acks that waited for their chat to be delivered here: each after the sender's copy
    (send_direct writes after what the room queued), if the sender is still in the room."""
    for sender, frame in positions.acks_due(room.name):
        if sender.room is room:
            core.send_direct(sender, frame)


def tell_reset(core: ChatCore, room: Room, epoch: str, seq: int) -> None:
    """The room's stream was lost in Redis: its members learn the new position."""
    log.warning("the history of #%s was lost in Redis: new epoch %s", room.name, epoch)
    status = StatusMessage(
        "The message history was lost: some messages may be missing", "reset", room.name,
        int(time.time() * 1000), epoch, seq,
    )
    core.deliver(room, encode(status))


def tell(core: ChatCore, room: Room, event: str, text: str) -> None:
    """A status notice for the room's members (no username, no count: nobody's presence)."""
    core.deliver(room, encode(StatusMessage(text, event, room.name, int(time.time() * 1000))))
