"""The broker seam in the core, without sockets or Redis."""

from __future__ import annotations

import json

import pytest

from server.broker import LocalBroker
from server.config import Config
from server.core import ChatCore, Member, Replay, Room
from server.protocol import ChatMessage, encode, text_frame
from tests.frames import server_messages
from tests.test_core import Client


class Deferred:
    """A broker that, like a distributed one, delivers only when told to (in its own order)."""

    def __init__(self, core: ChatCore) -> None:
        self.core = core
        self.published: list[tuple[Room, bytes]] = []
        self.arrivals: list[tuple[Room, Member]] = []
        self.leaves: list[tuple[Room, str]] = []
        self.seq = 0

    def chat(self, room: Room, sender: Member, message: ChatMessage, chat_id: str | None) -> None:
        self.seq += 1
        message.seq = self.seq
        self.published.append((room, encode(message)))

    def join(self, room: Room, member: Member, replay: Replay) -> None:
        self.arrivals.append((room, member))

    def leave(self, room: Room, member: Member) -> None:
        self.leaves.append((room, member.name))
        self.core.drop_if_empty(room)

    def typing(self, room: Room, member: Member, payload: bytes) -> None:
        raise AssertionError("not used here")

    def release(self) -> None:
        """Delivers what was published and admits the arrivals, in that order."""
        for room, payload in self.published:
            self.core.deliver(room, payload)
        self.published.clear()
        for room, member in self.arrivals:
            self.core.admit(room, member, text_frame(b'{"type":"system","text":"welcome"}'))
        self.arrivals.clear()


def test_the_local_broker_numbers_stores_and_delivers_the_same_bytes() -> None:
    core = ChatCore(Config(), lambda: None)
    broker = LocalBroker(core)
    core.use_broker(broker)
    assert core.broker is broker
    alice = Client(core)
    alice.join("alice")
    alice.messages()
    alice.chat("one")
    alice.chat("two")
    room = core.rooms["general"]
    stream = broker.history.get("general")
    assert stream is not None and stream.last == 2
    # encoded and framed once: the room's queue and the history hold the same objects
    assert len(room.pending) == 2
    assert all(a is b for a, b in zip(room.pending, stream.entries, strict=True))
    assert [m["seq"] for m in server_messages(b"".join(stream.entries))] == [1, 2]


def test_a_core_without_a_broker_says_so() -> None:
    core = ChatCore(Config(), lambda: None)
    writes: list[bytes] = []
    with pytest.raises(RuntimeError, match="use_broker"):
        core.join(Member(writes.append), "r", "alice")


def test_the_core_hands_chats_to_the_broker_and_delivers_nothing_itself() -> None:
    core = ChatCore(Config(rate_limit=0), lambda: None)
    broker = Deferred(core)
    core.use_broker(broker)
    alice, bob = Client(core), Client(core)
    alice.join("alice")
    bob.join("bob")
    assert alice.writes == [] and bob.writes == []  # arriving: nothing yet
    room = core.rooms["general"]
    assert room.arriving == 2 and len(room) == 0
    broker.release()
    assert room.arriving == 0 and len(room) == 2
    alice.chat("hi")
    [(published_room, payload)] = broker.published
    assert published_room is room
    assert json.loads(payload)["text"] == "hi"
    core.flush()
    assert [m["text"] for m in alice.messages()] == ["welcome"]  # not delivered by the core
    broker.release()
    core.flush()
    assert alice.messages()[0]["text"] == "hi"
    assert bob.messages()[-1]["text"] == "hi"


def test_an_arriving_member_that_leaves_is_not_left_in_the_room() -> None:
    core = ChatCore(Config(), lambda: None)
    broker = Deferred(core)
    core.use_broker(broker)
    alice = Client(core)
    alice.join("alice", "r")
    alice.send({"type": "chat", "text": "early"})  # allowed while arriving; ordered by broker
    alice.send({"type": "leave"})
    assert [name for _, name in broker.leaves] == ["alice"]
    assert [json.loads(p)["text"] for _, p in broker.published] == ["early"]
    assert "r" not in core.rooms and broker.leaves[0][0].arriving == 0
    alice.send({"type": "chat", "text": "x"})
    assert alice.messages()[-1]["code"] == "not_in_room"
