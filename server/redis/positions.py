"""What this node has delivered of each room's history stream, and the repair of its gaps.

Every chat comes through its room's channel as ``S<epoch>:<seq>`` (server/redis/wire.py). For
each room it serves, the node remembers the epoch and the last seq it delivered: the next seq is
delivered at once; a seq already delivered is dropped; a jump, or a reconnect after an outage,
starts a **repair**; a new epoch means Redis lost the stream, and the room's members are told.

A repair must deliver what the node missed without breaking the channel's order, in which the
node's own joiners are placed. So: everything arriving for the room is held; one script
publishes a **marker** carrying the stream's last seq B and, on the command connection right
after it, the node reads the stream after its last delivered seq
(from its start if the stream is another epoch). When both the marker (back
through the subscription, in channel order) and the read are in, the node delivers the read
messages that precede everything held (those published before its subscription saw them; what
came after is all in the held part, in order), then the held part up to the marker, through
the normal path. A repair that cannot get a message back (trimmed from the stream) tells the
room how many are missing: never a silent gap.

The ack of a chat (``{"type":"ack"}``, to its sender only) comes from the chat script's reply on
the command connection, while the chat itself comes back through the subscription: either may
arrive first. The protocol puts the ack after the sender's own copy, so an ack whose chat this
node has not delivered yet waits here until it has (or until the room moved to a new epoch, in
which that copy will never come).

A chat of this node's that was in flight when the link dropped was delivered here unnumbered
(its sender's room must not lose it), though Redis may have placed it: the node remembers it,
and the repair after the outage does not deliver its numbered copy here a second time (the
other nodes get that copy once, as any chat). Pure: the broker does the I/O.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from .wire import chat_identity

DELIVER, DUPLICATE, GAP, RESET = 0, 1, 2, 3

Held = tuple[bytes, bytes]  # (channel, data) as it arrived


class Repair:
    __slots__ = ("asked", "bound", "fetched", "held", "joins_asked", "marked", "stream_epoch")

    def __init__(self) -> None:
        self.asked = False  # the marker and the read were asked for
        self.held: list[Held] = []  # in arrival order; up to the marker once `marked`
        self.marked = False  # the marker came back through the subscription
        self.bound = -1  # the stream's last seq when the marker was published
        self.stream_epoch = ""  # and its epoch ("" when Redis had no stream)
        self.fetched: list[tuple[int, bytes]] | None = None  # (seq, payload) read after ours
        self.joins_asked = 0  # local joins asked for before it (server/redis/joins.py)


class Outcome:
    """What finishing a repair means for the room: what to deliver first and what to tell."""

    __slots__ = ("deliver", "epoch", "held", "missing", "reset", "rolled_back", "seq", "seqs")

    def __init__(self) -> None:
        self.deliver: list[bytes] = []  # payloads, before the held messages
        self.seqs: list[int] = []  # and their seqs
        self.held: list[Held] = []  # then these, through the normal path
        self.reset = False  # the stream was lost: tell the members the new position
        self.epoch = ""
        self.seq = 0  # the position the node's delivery continues from
        self.missing = 0  # messages gone from the stream that this node never delivered
        # The stream went back to an older copy of itself, same epoch (a Redis restarted from
        # an older snapshot): the last seq this node had delivered, else 0.
        self.rolled_back = 0


class Positions:
    def __init__(self) -> None:
        self.epochs: dict[str, str] = {}  # room -> epoch of what was delivered
        self.seqs: dict[str, int] = {}  # room -> last seq delivered
        self.repairs: dict[str, Repair] = {}
        # room -> chats delivered here unnumbered that Redis may also have placed: how many
        # copies of each chat_identity (a sender may post the same text twice in one ms)
        self.unnumbered: dict[str, Counter[bytes]] = {}
        # room -> acks waiting for their chat's copy: (epoch, seq, the epoch delivery was at
        # when it began waiting, what the broker sends)
        self.acks: dict[str, list[tuple[str, int, str, Any]]] = {}

    def ack_now(self, room: str, epoch: str, seq: int, ack: Any) -> bool:
        """Whether the ack of chat (epoch, seq) may go now (the chat was delivered here); when
        not, `ack` waits for ``acks_due``."""
        known = self.last(room)
        if known is not None and known[0] == epoch and seq <= known[1]:
            return True
        self.acks.setdefault(room, []).append((epoch, seq, known[0] if known else "", ack))
        return False

    def acks_due(self, room: str) -> list[Any]:
        """The waiting acks whose chats are delivered here now, in the order they came, and
        those whose epoch delivery has moved past (a new epoch that is neither theirs nor the one
        it was at when they began waiting: their copy will never come)."""
        waiting = self.acks.get(room)
        if not waiting:  # nearly always: one dict lookup per delivered chat
            return []
        known = self.last(room)
        if known is None:
            return []
        current, last = known
        due: list[Any] = []
        kept = []
        for entry in waiting:
            epoch, seq, then, ack = entry
            if (seq <= last) if epoch == current else (current != then):
                due.append(ack)
            else:
                kept.append(entry)
        if kept:
            self.acks[room] = kept
        else:
            del self.acks[room]
        return due

    def judge(self, room: str, epoch: str, seq: int) -> int:
        """What to do with chat `seq` of `epoch` arriving for `room` (DELIVER and RESET also
        record it as delivered)."""
        known = self.epochs.get(room)
        if known is None or known != epoch:
            self.epochs[room] = epoch
            self.seqs[room] = seq
            return DELIVER if known is None else RESET
        last = self.seqs[room]
        if seq <= last:
            return DUPLICATE
        if seq == last + 1:
            self.seqs[room] = seq
            return DELIVER
        return GAP

    def delivered_unnumbered(self, room: str, payload: bytes) -> None:
        """This node's chat `payload` (seq 0) was delivered here without its place in the room's
        order, which Redis may have given it anyway: its numbered copy is not to come again."""
        self.unnumbered.setdefault(room, Counter())[chat_identity(payload)] += 1

    def placed(self, room: str, epoch: str, seq: int) -> None:
        """A local joiner's welcome is at (epoch, seq) in the room's stream: where this node's
        delivery stands, if it did not know yet (its first member, or no chat so far)."""
        if room not in self.epochs:
            self.epochs[room] = epoch
            self.seqs[room] = seq

    def last(self, room: str) -> tuple[str, int] | None:
        epoch = self.epochs.get(room)
        return None if epoch is None else (epoch, self.seqs[room])

    def repairing(self, room: str) -> bool:
        return room in self.repairs

    def start(self, room: str, held: Held | None = None) -> bool:
        """Starts holding `room` for a repair; False when one is already under way (and asked
        for). A restarted one (``restart``) has not asked yet: True."""
        repair = self.repairs.get(room)
        if repair is not None:
            if held is not None:
                repair.held.append(held)
            if repair.asked:
                return False
            repair.asked = True
            return True
        repair = self.repairs[room] = Repair()
        repair.asked = True
        if held is not None:
            repair.held.append(held)
        return True

    def restart(self, room: str) -> None:
        """The subscription the repair's marker would come back through is gone: the repair
        starts over (what it held stays held, in order)."""
        repair = self.repairs.pop(room, None)
        if repair is not None:
            fresh = self.repairs[room] = Repair()
            fresh.held = repair.held

    def keep(self, room: str, held: Held) -> None:
        self.repairs[room].held.append(held)

    def marker(self, room: str) -> None:
        """The repair's marker came back: what is held so far is what its read may overlap."""
        repair = self.repairs.get(room)
        if repair is not None:
            repair.marked = True

    def read(self, room: str, epoch: str, bound: int, fetched: list[tuple[int, bytes]]) -> None:
        repair = self.repairs.get(room)
        if repair is not None:
            repair.stream_epoch, repair.bound, repair.fetched = epoch, bound, fetched

    def finish(self, room: str, chat_seqs: list[int | None]) -> Outcome | None:
        """The outcome once both halves are in (else None). `chat_seqs` are the seqs of the held
        messages (None for those that are not chats of the stream's epoch)."""
        repair = self.repairs.get(room)
        if repair is None or not repair.marked or repair.fetched is None:
            return None
        del self.repairs[room]
        # The stream can bring back a chat delivered here unnumbered only in this repair.
        unnumbered = self.unnumbered.pop(room, Counter())
        outcome = Outcome()
        outcome.held = repair.held
        known = self.last(room)
        epoch = repair.stream_epoch
        if not epoch:  # Redis has no stream (nothing said yet, or lost with no chat since)
            outcome.seq = known[1] if known else 0
            outcome.epoch = known[0] if known else ""
            return outcome
        if known is None:  # this node never delivered a chat of the room: nothing to repair
            outcome.epoch, outcome.seq = epoch, repair.bound
            self.epochs[room], self.seqs[room] = epoch, repair.bound
            return outcome
        after = known[1] if known[0] == epoch else 0
        outcome.reset = known[0] != epoch
        if not outcome.reset and repair.bound < after:
            # Redis numbers from its older copy again: seqs this node delivered will name new
            # chats. Taken for duplicates, they would reach nobody here; delivery continues
            # from Redis's position instead, and the members are told (a reset, same epoch).
            outcome.rolled_back, after = after, repair.bound
            outcome.reset = True
        held_chats = [seq for seq in chat_seqs if seq is not None]
        # Everything published after the subscription is held, in order: the read adds only
        # what came before the first of those (and never past the marker's bound).
        upto = min([repair.bound, *(seq - 1 for seq in held_chats)])
        had = 0  # delivered here already, unnumbered
        for seq, payload in repair.fetched:
            if after < seq <= upto:
                if unnumbered:
                    identity = chat_identity(payload)
                    if unnumbered[identity] > 0:
                        unnumbered[identity] -= 1  # each copy delivered here stands for one
                        had += 1
                        continue
                outcome.deliver.append(payload)
                outcome.seqs.append(seq)
        # A reset's read is the new stream from its start (repairs.py): what it no longer holds
        # of the new epoch is missing here too.
        outcome.missing = max(0, upto - after - len(outcome.deliver) - had)
        outcome.epoch = epoch
        outcome.seq = max(after, upto)
        self.epochs[room], self.seqs[room] = epoch, outcome.seq
        return outcome

    def forget(self, room: str) -> None:
        """The node no longer serves the room (no local member): nothing to compare with."""
        self.epochs.pop(room, None)
        self.seqs.pop(room, None)
        self.repairs.pop(room, None)
        self.unnumbered.pop(room, None)
        self.acks.pop(room, None)

    def abandon(self) -> dict[str, list[Held]]:
        """The link is lost mid-repair: what was held, per room, to deliver as it is."""
        held = {room: repair.held for room, repair in self.repairs.items()}
        self.repairs.clear()
        return held
