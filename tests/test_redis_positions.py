"""What a node has delivered of each room (server/redis/positions.py) and what it still owes
Redis an answer for (server/redis/pipeline.py), without Redis: the rules that keep a chat from
reaching a node's members twice when the link drops with the chat in flight."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from server.protocol import ChatMessage, encode
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


def test_answered_chats_are_no_longer_tracked_and_a_lost_link_keeps_them_unanswered() -> None:
    pipeline = Pipeline()
    pipeline.push(publish(chat("a")))
    asyncio.run(pipeline.send(Replies(), pipeline.take(held_back=())))
    assert pipeline.unanswered == {}
    pipeline.push(publish(chat("b")))
    with pytest.raises(ConnectionError):
        asyncio.run(pipeline.send(Replies(fail=True), pipeline.take(held_back=())))
    assert [op.payload for op in pipeline.unanswered.values()] == [chat("b")]
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
