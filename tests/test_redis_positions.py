"""What a node has delivered of each room (server/redis/positions.py) and what it still owes
Redis an answer for (server/redis/pipeline.py), without Redis: the rules that keep a chat from
reaching a node's members twice when the link drops with the chat in flight."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from server.protocol import ChatMessage, encode
from server.redis.outage import deliver_held
from server.redis.pipeline import OTHER, PUBLISH, Op, Pipeline
from server.redis.positions import DELIVER, DUPLICATE, GAP, RESET, Positions
from server.redis.wire import split_seq


def chat(text: str, seq: int = 0, sent_at: int = 1_700_000_000_000) -> bytes:
    """A chat as the origin encodes it (seq 0) or as Redis numbers it."""
    prefix, suffix = split_seq(encode(ChatMessage("ann", text, sent_at, 0)))
    return b"%s%d%s" % (prefix, seq, suffix)


def repaired(positions: Positions, room: str, fetched: list[tuple[int, bytes]], bound: int) -> Any:
    assert positions.start(room)
    positions.marker(room)
    positions.read(room, "e1", bound, fetched)
    return positions.finish(room, [])


def test_a_room_is_judged_by_its_epoch_and_next_seq() -> None:
    positions = Positions()
    assert positions.judge("r", "e1", 1) == DELIVER
    assert positions.judge("r", "e1", 1) == DUPLICATE
    assert positions.judge("r", "e1", 3) == GAP
    assert positions.judge("r", "e1", 2) == DELIVER
    assert positions.judge("r", "e2", 1) == RESET
    assert positions.last("r") == ("e2", 1)


def test_an_ack_waits_for_its_chat_to_be_delivered_here() -> None:
    """The chat script's reply (the ack) and the chat's copy (the subscription) race: the ack
    goes only once the copy is delivered, in the order the acks came."""
    positions = Positions()
    assert not positions.ack_now("r", "e1", 1, "ack 1")  # nothing delivered in the room yet
    assert not positions.ack_now("r", "e1", 2, "ack 2")
    assert positions.acks_due("r") == []
    assert positions.judge("r", "e1", 1) == DELIVER
    assert positions.acks_due("r") == ["ack 1"]
    assert positions.judge("r", "e1", 2) == DELIVER
    assert positions.acks_due("r") == ["ack 2"] and positions.acks_due("r") == []
    assert positions.ack_now("r", "e1", 2, "a retry of 2")  # its copy was delivered already
    assert not positions.ack_now("r", "e1", 3, "ack 3")
    assert positions.judge("r", "e1", 5) == GAP  # a gap: delivery has not reached 3
    assert positions.acks_due("r") == []
    assert repaired(positions, "r", [(3, chat("3", 3)), (4, chat("4", 4))], 5) is not None
    assert positions.acks_due("r") == ["ack 3"]  # the repair delivered it


def test_an_ack_of_an_epoch_the_room_left_goes_and_one_of_the_next_epoch_waits() -> None:
    positions = Positions()
    assert positions.judge("r", "e1", 1) == DELIVER
    assert not positions.ack_now("r", "e1", 2, "old")  # its copy was lost with the stream
    assert not positions.ack_now("r", "e2", 1, "new")  # Redis started a new stream already
    assert positions.judge("r", "e1", 1) == DUPLICATE
    assert positions.acks_due("r") == []  # still at e1: both may yet come
    assert positions.judge("r", "e2", 1) == RESET
    assert positions.acks_due("r") == ["old", "new"]
    assert not positions.ack_now("r", "e2", 2, "forgotten")
    positions.forget("r")  # no member of the room here any more
    assert positions.judge("r", "e2", 2) == DELIVER and positions.acks_due("r") == []


def test_a_stream_that_went_back_is_told_and_its_new_chats_are_delivered() -> None:
    """The audit: Redis killed and restarted from an older snapshot (seq 20 where this node had
    delivered 30, same epoch) numbered new chats 21-30 again; every node took them for
    duplicates and delivered them to nobody, while their senders were acked."""
    positions = Positions()
    for seq in range(1, 31):
        positions.judge("r", "e1", seq)
    assert positions.start("r")
    positions.marker("r")
    positions.read("r", "e1", 20, [])
    outcome = positions.finish("r", [21])  # a new chat 21 held during the repair
    assert outcome is not None
    assert (outcome.reset, outcome.rolled_back, outcome.epoch, outcome.seq) == (True, 30, "e1", 20)
    assert outcome.deliver == [] and outcome.missing == 0
    assert positions.judge("r", "e1", 21) == DELIVER  # the new 21, not a duplicate


def test_a_repair_delivers_what_the_node_missed_in_order() -> None:
    positions = Positions()
    positions.judge("r", "e1", 1)
    outcome = repaired(positions, "r", [(2, chat("b", 2)), (3, chat("c", 3))], bound=3)
    assert outcome.deliver == [chat("b", 2), chat("c", 3)]
    assert (outcome.missing, outcome.seq) == (0, 3)


def test_a_chat_delivered_here_unnumbered_is_not_delivered_again_by_the_repair() -> None:
    positions = Positions()
    positions.judge("r", "e1", 1)
    # the link dropped with this chat in flight: delivered here unnumbered
    positions.delivered_unnumbered("r", chat("in flight"))
    # Redis had placed it (seq 3) between two chats of other nodes
    fetched = [(2, chat("b", 2)), (3, chat("in flight", 3)), (4, chat("d", 4))]
    outcome = repaired(positions, "r", fetched, bound=4)
    assert outcome.deliver == [chat("b", 2), chat("d", 4)]
    assert (outcome.missing, outcome.seq) == (0, 4)  # had already: not missing either
    assert positions.unnumbered == {}  # only that repair could bring it back


def test_an_unnumbered_chat_redis_never_placed_is_forgotten_after_the_repair() -> None:
    positions = Positions()
    positions.judge("r", "e1", 1)
    positions.delivered_unnumbered("r", chat("never placed"))
    outcome = repaired(positions, "r", [(2, chat("b", 2))], bound=2)
    assert outcome.deliver == [chat("b", 2)]
    # a later chat with the same text is another chat: delivered
    assert positions.judge("r", "e1", 3) == DELIVER and positions.unnumbered == {}


def test_only_the_same_chat_of_the_same_room_is_skipped() -> None:
    positions = Positions()
    positions.judge("r", "e1", 1)
    positions.judge("other", "e1", 1)
    positions.delivered_unnumbered("r", chat("hello"))
    same_text_later = chat("hello", 2, sent_at=1_700_000_000_001)
    outcome = repaired(positions, "r", [(2, same_text_later)], bound=2)
    assert outcome.deliver == [same_text_later]
    positions.delivered_unnumbered("r", chat("hello"))
    outcome = repaired(positions, "other", [(2, chat("hello", 2))], bound=2)
    assert outcome.deliver == [chat("hello", 2)]
    positions.forget("r")
    assert positions.unnumbered == {}


class Recorder:
    """Just enough of the core for server/redis/outage.py: its rooms and what it delivers."""

    def __init__(self, *rooms: str) -> None:
        self.rooms = {name: SimpleNamespace(name=name) for name in rooms}
        self.delivered: list[bytes] = []

    def deliver(self, room: SimpleNamespace, payload: bytes) -> None:
        self.delivered.append(payload)


def held_chat(seq: int, text: str, epoch: str = "e1") -> tuple[bytes, bytes]:
    return b"room:r", b"S%s:%d\n%s" % (epoch.encode(), seq, chat(text, seq))


def test_what_a_dropped_repair_held_goes_out_as_far_as_it_is_in_order() -> None:
    # The subscription dropped and its repair held what the new one brought; then the link
    # dropped too. What continues the room's order goes out at once (3, 4; not 2 again); what
    # follows a gap (6, 7: chat 5 was never read) waits for the repair after the outage, which
    # brings it in order, once. A notice (not in the stream) goes out as it is.
    positions = Positions()
    positions.judge("r", "e1", 2)
    assert positions.start("r")
    for seq, text in [(2, "b"), (3, "c"), (4, "d")]:
        positions.keep("r", held_chat(seq, text))
    positions.keep("r", (b"room:r", b"{notice}"))
    for seq, text in [(6, "f"), (7, "g")]:
        positions.keep("r", held_chat(seq, text))
    core = Recorder("r")
    deliver_held(core, positions, positions.abandon())  # type: ignore[arg-type]
    assert core.delivered == [chat("c", 3), chat("d", 4), b"{notice}"]
    fetched = [(seq, chat(text, seq)) for seq, text in [(4, "d"), (5, "e"), (6, "f"), (7, "g")]]
    outcome = repaired(positions, "r", fetched, bound=7)
    assert outcome.deliver == [chat("e", 5), chat("f", 6), chat("g", 7)]
    assert (outcome.missing, outcome.seq) == (0, 7)


class Replies:
    """A stand-in for redis-py's pipeline: answers each command with its position."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.sent: list[tuple[Any, ...]] = []

    def pipeline(self, transaction: bool) -> Replies:
        return self

    def execute_command(self, *args: Any) -> None:
        self.sent.append(args)

    async def execute(self, raise_on_error: bool) -> list[Any]:
        if self.fail:
            raise ConnectionError("the link dropped")
        return list(range(len(self.sent)))


def publish(payload: bytes, room: str = "r") -> Op:
    return Op(PUBLISH, ("FCALL", "chat"), room=room, payload=payload)


def test_a_chat_whose_copy_came_back_before_the_answer_is_not_delivered_again_locally() -> None:
    pipeline = Pipeline()
    mine, other = publish(chat("mine")), publish(chat("still out"))
    pipeline.push(mine)
    pipeline.push(other)
    pipeline.push(Op(OTHER, ("HSET", "k", "f", "v"), room="r"))
    pipeline.came_back("r", chat("mine", 7))  # its numbered copy, through the subscription
    pipeline.came_back("elsewhere", chat("still out", 8))  # another room's chat: not this one
    abandoned = pipeline.abandon()  # the link drops before Redis answered
    assert [op.payload for op in abandoned if op.kind == PUBLISH] == [None, chat("still out")]
    assert pipeline.unanswered == {}


@pytest.mark.parametrize("copies_back", [0, 1, 2])
def test_the_same_text_posted_twice_in_one_millisecond_counts_twice(copies_back: int) -> None:
    # Identical payloads are interchangeable, but each one counts: as many are delivered
    # locally as did not come back, never one for both nor one too many.
    pipeline = Pipeline()
    pipeline.push(publish(chat("ok")))
    pipeline.push(publish(chat("ok")))
    for seq in range(copies_back):
        pipeline.came_back("r", chat("ok", 7 + seq))
    left = [op.payload for op in pipeline.abandon() if op.payload is not None]
    assert left == [chat("ok")] * (2 - copies_back)


def test_a_repair_skips_one_placed_copy_per_copy_delivered_unnumbered() -> None:
    positions = Positions()
    positions.judge("r", "e1", 1)
    positions.delivered_unnumbered("r", chat("ok"))
    positions.delivered_unnumbered("r", chat("ok"))
    # Redis placed three identical chats: the two delivered here, and one more
    fetched = [(2, chat("ok", 2)), (3, chat("ok", 3)), (4, chat("ok", 4))]
    outcome = repaired(positions, "r", fetched, bound=4)
    assert outcome.deliver == [chat("ok", 4)]
    assert (outcome.missing, outcome.seq) == (0, 4)


def test_answered_chats_are_no_longer_tracked_and_a_lost_link_keeps_them_unanswered() -> None:
    pipeline = Pipeline()
    pipeline.push(publish(chat("a")))
    asyncio.run(pipeline.send(Replies(), pipeline.take(held_back=())))
    assert pipeline.unanswered == {}
    pipeline.push(publish(chat("b")))
    with pytest.raises(ConnectionError):
        asyncio.run(pipeline.send(Replies(fail=True), pipeline.take(held_back=())))
    assert [op.payload for ops in pipeline.unanswered.values() for op in ops] == [chat("b")]
    assert [op.payload for op in pipeline.abandon()] == [chat("b")]


def test_a_round_trip_carries_at_most_a_batch_and_the_rest_keeps_its_order() -> None:
    pipeline = Pipeline()
    ops = [Op(OTHER, ("HSET", str(n)), room="held" if n % 3 == 0 else "r") for n in range(10)]
    for op in ops:
        pipeline.push(op)
    pipeline.wake.clear()
    first = pipeline.take(held_back={"held"}, limit=4)
    assert first == [ops[1], ops[2], ops[4], ops[5]]
    assert pipeline.queued == [ops[0], ops[3], ops[6], ops[7], ops[8], ops[9]]
    assert pipeline.wake.is_set()  # the pump comes back for the rest
    pipeline.wake.clear()
    assert pipeline.take(held_back=(), limit=4) == [ops[0], ops[3], ops[6], ops[7]]
    assert pipeline.take(held_back=(), limit=4) == [ops[8], ops[9]]
    assert not pipeline.queued
    pipeline.wake.clear()
    assert pipeline.take(held_back=()) == [] and not pipeline.wake.is_set()


def test_a_repair_into_a_new_epoch_delivers_the_new_stream_from_its_start() -> None:
    """The node was at seq 10 of e1; Redis lost that stream and e2 holds seqs 3..6 of its 6 (1
    and 2 trimmed): all of e2 that is left is delivered, and the 2 missing ones are told, whatever
    seq the node had reached in e1 (repairs.py reads a new epoch from its start)."""
    positions = Positions()
    for seq in range(1, 11):
        assert positions.judge("r", "e1", seq) == DELIVER
    assert positions.start("r")
    positions.marker("r")
    fetched = [(seq, chat(str(seq), seq)) for seq in range(3, 7)]
    positions.read("r", "e2", 6, fetched)
    outcome = positions.finish("r", [])
    assert outcome is not None and outcome.reset
    assert outcome.deliver == [payload for _, payload in fetched]
    assert outcome.missing == 2 and (outcome.epoch, outcome.seq) == ("e2", 6)
    assert positions.judge("r", "e2", 7) == DELIVER
