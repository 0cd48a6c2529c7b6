"""The cross-node join protocol (server/redis/joins.py) and the core's hold/release, with the
Redis side played by the test: the notice and the script's reply arrive in either order."""

from __future__ import annotations

import json
from typing import Any

from server.config import Config
from server.core import ChatCore, Member, Replay, Room
from server.protocol import ChatMessage, Position, encode
from server.redis.joins import Joins, replayed
from server.redis.pipeline import Pipeline
from server.redis.positions import Positions
from server.redis.repairs import Repairs, deliver_judged
from server.redis.scripts import JoinReply
from server.redis.wire import CHAT, open_envelope
from tests.frames import server_messages


def reply(count: int, names: list[bytes], epoch: bytes = b"e1", last: int = 0) -> JoinReply:
    """A join script's reply with no replay asked for."""
    return JoinReply([count, names, epoch, last, b""])


class Manual:
    """A broker that records joins; the test decides when Redis 'answers'."""

    def __init__(self) -> None:
        self.arrivals: list[tuple[Room, Member]] = []

    def chat(self, room: Room, sender: Member, message: ChatMessage, chat_id: str | None) -> None:
        raise AssertionError("not used here")

    def join(self, room: Room, member: Member, replay: Replay) -> None:
        self.arrivals.append((room, member))

    def leave(self, room: Room, member: Member) -> None:
        pass

    def typing(self, room: Room, member: Member, payload: bytes) -> None:
        raise AssertionError("not used here")


class World:
    def __init__(self) -> None:
        self.core = ChatCore(Config(rate_limit=0), lambda: None, wall_ms=lambda: 1)
        self.broker = Manual()
        self.core.use_broker(self.broker)
        self.joins = Joins(self.core, 100, 1 << 20)
        self.out: dict[str, list[bytes]] = {}

    def member(self, name: str) -> Member:
        self.out[name] = []
        member = Member(self.out[name].append)
        self.core.join(member, "r", name)
        room, arrived = self.broker.arrivals[-1]
        notice = self.core.notice(room, arrived, "join", 0)
        self.joins.expect(name, arrived, room, notice, None)
        return member

    def received(self, name: str) -> list[dict[str, Any]]:
        data = b"".join(self.out[name])
        self.out[name].clear()
        return server_messages(data)

    def chat(self, text: str) -> None:
        self.core.deliver(self.core.rooms["r"], json.dumps({"type": "chat", "text": text}).encode())


def test_reply_first_then_notice_admits_with_the_welcome_at_once() -> None:
    world = World()
    world.member("ann")
    room = world.core.rooms["r"]
    world.joins.replied("ann", reply(1, [b"ann"]))
    assert world.received("ann") == []  # not placed yet: nothing, not even the welcome
    world.chat("before")  # published before ann's notice: not hers
    world.joins.positioned("ann", room)
    world.chat("after")
    world.core.flush()
    messages = world.received("ann")
    assert [m.get("users") for m in messages[:1]] == [["ann"]]
    assert [m.get("text") for m in messages[1:]] == ["after"]


def test_notice_first_holds_what_arrives_until_the_reply() -> None:
    world = World()
    world.member("ann")
    room = world.core.rooms["r"]
    world.chat("before")
    world.joins.positioned("ann", room)  # placed here: gets what follows, held
    world.chat("one")
    world.core.flush()
    world.chat("two")  # queued in the next tick, not flushed yet
    assert world.received("ann") == []  # held until its welcome is known
    world.joins.replied("ann", reply(2, [b"bob", b"ann"]))
    world.chat("three")
    world.core.flush()
    messages = world.received("ann")
    assert messages[0]["users"] == ["bob", "ann"] and messages[0]["count"] == 2
    assert [m["text"] for m in messages[1:]] == ["one", "two", "three"]
    assert not room.held and world.core.rooms["r"].members


def test_a_direct_message_to_a_held_member_keeps_its_place() -> None:
    world = World()
    ann = world.member("ann")
    room = world.core.rooms["r"]
    world.joins.positioned("ann", room)
    world.chat("one")
    world.core.send_direct(ann, b"\x81\x0f" + b'{"type":"err"} ')
    world.chat("two")
    world.joins.replied("ann", reply(1, [b"ann"]))
    world.core.flush()
    kinds = [m.get("text") or m.get("type") for m in world.received("ann")]
    assert kinds == ["ann joined #r", "one", "err", "two"]


def test_a_held_member_that_leaves_gets_nothing_more_and_leaves_no_trace() -> None:
    world = World()
    ann = world.member("ann")
    room = world.core.rooms["r"]
    world.joins.positioned("ann", room)
    world.chat("one")
    world.core.disconnect(ann)
    world.joins.cancel("ann")
    world.joins.replied("ann", reply(1, [b"ann"]))  # a late reply changes nothing
    world.core.flush()
    assert world.received("ann") == [] and not room.held and len(room) == 0


def test_fail_over_completes_every_join_on_this_node() -> None:
    world = World()
    world.member("ann")
    world.member("bob")
    room = world.core.rooms["r"]
    world.joins.positioned("ann", room)  # placed, reply lost with Redis
    world.chat("one")
    world.joins.fail_over(max_users=10)  # bob: never placed: joins locally
    world.core.flush()
    ann = world.received("ann")
    assert ann[0]["text"] == "ann joined #r" and ann[0]["users"] == ["ann"]
    assert [m.get("text") for m in ann[1:]] == ["one", "bob joined #r"]
    bob = world.received("bob")
    assert bob[0]["text"] == "bob joined #r" and sorted(bob[0]["users"]) == ["ann", "bob"]
    assert not world.joins.pending and room.arriving == 0 and len(room) == 2


def test_a_resume_across_nodes_writes_history_then_welcome_then_what_was_held() -> None:
    world = World()
    member = Member(world.out.setdefault("ann", []).append)
    world.core.join(member, "r", "ann", Position("e1", 3))
    room, arrived = world.broker.arrivals[-1]
    world.joins.expect("ann", arrived, room, world.core.notice(room, arrived, "join", 0),
                       Position("e1", 3))
    world.joins.positioned("ann", room)  # placed before the reply: what follows is held
    world.chat("live")
    world.core.flush()
    chats = [encode(ChatMessage("bob", f"m{n}", 1, n)) for n in (4, 5)]
    world.joins.replied("ann", JoinReply([1, [b"ann"], b"e1", 5, b"ok", *chats]))
    world.core.flush()
    history, welcome, live = world.received("ann")
    assert history["type"] == "history" and history["recovered"] is True
    assert [m["seq"] for m in history["messages"]] == [4, 5]
    assert (welcome["epoch"], welcome["seq"], welcome["users"]) == ("e1", 5, ["ann"])
    assert live["text"] == "live"


def test_an_incomplete_replay_is_never_called_recovered() -> None:
    ok = JoinReply([1, [b"a"], b"e1", 9, b"ok", b"x" * 10, b"y" * 10])
    assert replayed(Position("e1", 7), ok, 100, 1 << 20) == ([b"x" * 10, b"y" * 10], True, None)
    # more than one replay may carry: the newest that fit, flagged
    assert replayed(Position("e1", 7), ok, 100, 15) == ([b"y" * 10], False, "too many")
    old = JoinReply([1, [b"a"], b"e1", 9, b"too old", b"y" * 10])
    assert replayed(Position("e1", 1), old, 100, 1 << 20) == ([b"y" * 10], False, "too old")
    # cut to one replay's limit, an incomplete replay still says why it is incomplete
    lost = JoinReply([1, [b"a"], b"e2", 9, b"epoch changed", b"x" * 10, b"y" * 10])
    assert replayed(Position("e1", 1), lost, 100, 15) == ([b"y" * 10], False, "epoch changed")
    assert replayed(Position("e1", 1), old, 100, 5) == ([], False, "too old")
    last = JoinReply([1, [b"a"], b"e1", 9, b"ok", b"y" * 10])
    assert replayed(5, last, 100, 1 << 20)[1:] == (False, "too old")  # 5 asked, 1 stored
    assert replayed(200, last, 100, 1 << 20)[1:] == (False, "too many")  # > --history-size
    assert replayed(5, last, 0, 1 << 20) == ([], False, "history disabled")


# ---- a join whose notice was lost with the subscription (server/redis/repairs.py) -------------


def test_a_join_whose_notice_was_lost_is_placed_by_the_repair_where_its_script_ran() -> None:
    """The audit's stuck joins: a join script that ran while the node's subscription was dead
    (CLIENT KILL TYPE pubsub) published its notice to nobody; the joiner got no history, no
    welcome and no chats for ever, though it was a member. The repair after the resubscription
    now places it after the chat whose seq its script read."""
    world = World()
    positions = Positions()
    world.joins = Joins(world.core, 100, 1 << 20, positions.placed)
    pipeline = Pipeline()
    repairs = Repairs(
        world.core, positions, pipeline, world.joins, node="n1",
        publish_command=lambda: "PUBLISH", replay=lambda channel, data: None,
    )
    world.member("bob")
    room = world.core.rooms["r"]
    world.joins.replied("bob", reply(1, [b"bob"], last=0))
    world.joins.positioned("bob", room)
    for seq in (1, 2):
        positions.judge("r", "e1", seq)  # bob's node delivered the stream up to seq 2
    world.member("ann")
    world.joins.replied("ann", reply(2, [b"bob", b"ann"], last=3))  # at seq 3; notice lost
    world.core.flush()
    world.received("bob")

    positions.restart("r")  # the subscription is gone: resubscribe and repair
    repairs.start("r")
    marker, read = pipeline.take(held_back=())
    repairs.marker("r")  # back through the new subscription
    assert marker.on_reply is not None and read.on_reply is not None
    marker.on_reply([b"e1", 5])
    stream = [(f"{seq}-{seq}".encode(), {b"p": b'{"type":"chat","text":"c%d"}' % seq})
              for seq in (3, 4, 5)]
    read.on_reply([b"e1", stream])
    world.core.flush()

    ann = world.received("ann")
    assert ann[0]["users"] == ["bob", "ann"] and ann[0]["seq"] == 3  # her welcome first
    assert [m["text"] for m in ann[1:]] == ["c4", "c5"]  # then what came after her join
    bob = world.received("bob")
    assert [m["text"] for m in bob] == ["c3", "ann joined #r", "c4", "c5"]
    assert not world.joins.pending and not room.held


def test_the_reply_of_an_overtaken_join_never_describes_the_next_one() -> None:
    """Join #r, then #r2 before #r's script ran: both scripts are queued, and a member's join in
    progress is keyed by the member. #r's reply came first and was taken for #r2's: the welcome
    of #r2 listed #r's members and epoch (found by the page test of a superseded join)."""
    world = World()
    ann = world.member("ann")
    overtaken = world.joins.pending["ann"]
    world.core.join(ann, "r2", "ann")  # the core leaves #r; the broker cancels that join
    world.joins.cancel("ann")
    room2, arrived = world.broker.arrivals[-1]
    notice = world.core.notice(room2, arrived, "join", 0)
    latest = world.joins.expect("ann", arrived, room2, notice, None)
    world.joins.replied("ann", reply(1, [b"ann"], epoch=b"epoch-of-r"), overtaken)
    world.joins.failed("ann", 100, overtaken)  # nor does its error, had Redis refused it
    world.joins.positioned("ann", room2)
    world.joins.replied("ann", reply(2, [b"bob", b"ann"], epoch=b"epoch-of-r2"), latest)
    world.core.flush()
    [welcome] = world.received("ann")
    assert (welcome["room"], welcome["users"], welcome["epoch"]) == (
        "r2", ["bob", "ann"], "epoch-of-r2"
    )


def test_a_stranded_join_is_placed_among_the_held_chats_where_its_script_ran() -> None:
    """The repair's held chats come after what it read: a stranded joiner placed before them
    all got the ones its own replay had (the review's case: chat 4 held, the join at seq 4)."""
    world = World()
    positions = Positions()
    world.joins = Joins(world.core, 100, 1 << 20, positions.placed)
    pipeline = Pipeline()
    room_of = world.core.rooms

    def replay(channel: bytes, data: bytes) -> None:
        kind, sender, payload = open_envelope(data)
        assert kind == CHAT
        deliver_judged(world.core, positions, room_of["r"], sender, payload)

    repairs = Repairs(
        world.core, positions, pipeline, world.joins, node="n1",
        publish_command=lambda: "PUBLISH", replay=replay,
    )
    world.member("bob")
    room = room_of["r"]
    world.joins.replied("bob", reply(1, [b"bob"], last=0))
    world.joins.positioned("bob", room)
    for seq in (1, 2):
        positions.judge("r", "e1", seq)
    world.member("ann")
    world.joins.replied("ann", reply(2, [b"bob", b"ann"], last=4))  # notice lost
    world.core.flush()
    world.received("bob")

    def held(seq: int) -> tuple[bytes, bytes]:
        return (b"room:{r}", b"Se1:%d\n" % seq + b'{"type":"chat","text":"c%d"}' % seq)

    repairs.start("r", held(4))  # a gap: 3 is missing
    positions.keep("r", held(5))
    marker, read = pipeline.take(held_back=())
    repairs.marker("r")
    assert marker.on_reply is not None and read.on_reply is not None
    marker.on_reply([b"e1", 5])
    read.on_reply([b"e1", [(b"0-3", {b"p": b'{"type":"chat","text":"c3"}'})]])
    world.core.flush()
    ann = world.received("ann")
    assert ann[0]["users"] == ["bob", "ann"]
    assert [m["text"] for m in ann[1:]] == ["c5"]  # not c4: her replay ends at 4
    assert [m["text"] for m in world.received("bob")] == ["c3", "c4", "ann joined #r", "c5"]


def test_the_read_of_a_repair_that_started_over_is_not_taken_for_the_new_ones() -> None:
    """A lost subscription starts the repair over while its first read is still on its way:
    that read must not finish the new repair (its bound is from before the restart)."""
    world = World()
    positions = Positions()
    pipeline = Pipeline()
    repairs = Repairs(
        world.core, positions, pipeline, world.joins, node="n1",
        publish_command=lambda: "PUBLISH", replay=lambda channel, data: None,
    )
    world.member("bob")
    positions.judge("r", "e1", 1)
    repairs.start("r")
    old_marker, old_read = pipeline.take(held_back=())
    positions.restart("r")  # the subscription is lost: the repair starts over
    repairs.start("r")
    new_marker, new_read = pipeline.take(held_back=())
    repairs.marker("r")  # the new marker is back
    assert old_marker.on_reply is not None and old_read.on_reply is not None
    old_marker.on_reply([b"e1", 1])
    old_read.on_reply([b"e1", []])
    assert positions.repairing("r")  # still waiting for its own read
    assert new_marker.on_reply is not None and new_read.on_reply is not None
    new_marker.on_reply([b"e1", 2])
    new_read.on_reply([b"e1", [(b"0-2", {b"p": b'{"type":"chat","text":"c2"}'})]])
    assert not positions.repairing("r") and positions.last("r") == ("e1", 2)
