"""The delivery counters (server/delivery.py) count every room frame a member is written, in
whichever write it rides: a room flush, a late member's tail, the room's queue written ahead of a
direct frame or a leave, and what was kept for a member whose join waited on Redis (held, then
released). roomcast_deliveries_total, roomcast_writes_total, roomcast_bytes_sent_total and
roomcast_coalesced_messages_total (= deliveries - writes) against what clients really received,
on one node and with a real redis-server; a welcome, an ack or an error is not a delivery."""

from __future__ import annotations

import asyncio
import urllib.request

import pytest

from server.delivery import Delivery, Member, Room
from server.protocol import text_frame
from server.state import Counters
from tests.conftest import Launch
from tests.rawws import PING, PONG, TEXT, Frame, RawClient
from tests.redis_support import RedisServer
from tests.support import ServerProcess

COUNTERS = ("roomcast_deliveries_total", "roomcast_writes_total", "roomcast_bytes_sent_total",
            "roomcast_coalesced_messages_total")


def counts(counters: Counters) -> tuple[int, int, int, int]:
    return counters.deliveries, counters.writes, counters.bytes_sent, counters.coalesced_frames


def placed(room: Room, out: bytearray) -> Member:
    member = Member(out.extend)
    member.room = room
    room.arriving += 1
    return member


def test_what_a_held_member_was_kept_is_counted_when_it_is_released() -> None:
    counters = Counters()
    delivery = Delivery(counters, lambda: None)
    room = Room("r")
    out = bytearray()
    member = placed(room, out)
    delivery.hold(room, member)
    one, two = text_frame(b"one"), text_frame(b"two!")
    delivery.enqueue(room, one)
    delivery.flush()  # nobody to write to yet: the frame is kept for the held member
    ack = text_frame(b"ack")
    delivery.send_direct(member, ack)  # a direct frame is kept too, in order, but not counted
    delivery.enqueue(room, two)
    delivery.flush()
    assert counts(counters) == (0, 0, 0, 0) and out == b""
    welcome = text_frame(b"welcome")
    delivery.release(member, welcome)
    assert bytes(out) == welcome + one + ack + two
    assert counts(counters) == (2, 1, len(one) + len(two), 1)


def test_a_held_member_that_leaves_before_its_release_was_delivered_nothing() -> None:
    counters = Counters()
    delivery = Delivery(counters, lambda: None)
    room = Room("r")
    member = placed(room, bytearray())
    delivery.hold(room, member)
    delivery.enqueue(room, text_frame(b"kept"))
    delivery.flush()
    delivery.remove(room, member)
    assert counts(counters) == (0, 0, 0, 0)


def test_the_queue_written_ahead_of_a_direct_frame_or_a_leave_is_counted() -> None:
    counters = Counters()
    delivery = Delivery(counters, lambda: None)
    room = Room("r")
    outs = [bytearray(), bytearray(), bytearray()]
    members = [placed(room, out) for out in outs]
    for member in members:
        delivery.admit(room, member, None)
    chat = text_frame(b"chat")
    delivery.enqueue(room, chat)
    delivery.send_direct(members[0], text_frame(b"ack"))  # after the chat the room queued
    delivery.catch_up(members[1])  # about to leave: gets the chat now
    delivery.remove(room, members[1])
    delivery.flush()
    assert [bytes(out) for out in outs] == [chat + text_frame(b"ack"), chat, chat]
    assert counts(counters) == (3, 3, 3 * len(chat), 0)
    later = [text_frame(b"a"), text_frame(b"b")]
    for frame in later:
        delivery.enqueue(room, frame)
    delivery.send_direct(members[2], text_frame(b"x"))
    delivery.flush()
    assert counts(counters) == (3 + 4, 3 + 2, 3 * len(chat) + 2 * len(b"".join(later)), 2)


# ---- real servers -----------------------------------------------------------------------------


def scrape(server: ServerProcess) -> dict[str, float]:
    with urllib.request.urlopen(f"{server.http_url}/metrics", timeout=5) as response:
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in COUNTERS:
            values[name] = float(value)
    return values


def wire_size(frame: Frame) -> int:
    """The bytes the server wrote for one unmasked server frame."""
    size = len(frame.payload)
    return size + (2 if size < 126 else 4 if size < 65536 else 10)


async def receive_until_quiet(client: RawClient, quiet: float = 1.0) -> list[Frame]:
    frames: list[Frame] = []
    while True:
        try:
            frame = await client.recv_frame(quiet)
        except TimeoutError:
            return frames
        if frame.opcode == PING:
            client.send_frame(PONG, frame.payload)
        else:
            frames.append(frame)


async def everyone_joins_and_chats_at_once(server: ServerProcess, clients: int) -> list[Frame]:
    """Every client joins one room and sends a chat (with an id: an ack comes back) at once;
    returns the room's frames they received: not their welcomes, acks or errors."""
    sockets = [await RawClient.connect(server.host, server.port) for _ in range(clients)]
    for i, client in enumerate(sockets):
        client.send_json({"type": "join", "username": f"u{i}", "room": "counted"})
        client.send_json({"type": "chat", "text": f"hello from {i}", "id": f"c{i}"})
    received = await asyncio.gather(*(receive_until_quiet(client) for client in sockets))
    room_frames: list[Frame] = []
    for frames in received:
        assert all(frame.opcode == TEXT for frame in frames)
        messages = [frame.json() for frame in frames]
        assert [m["type"] for m in messages].count("ack") == 1, messages
        welcomes = [m for m in messages if m["type"] == "system" and "users" in m]
        assert len(welcomes) == 1, messages
        room_frames += [frame for frame, m in zip(frames, messages, strict=True)
                        if m["type"] in ("chat", "system") and "users" not in m]
    return room_frames


@pytest.mark.parametrize("linked", [False, True], ids=["one-node", "redis"])
@pytest.mark.usefixtures("raw_clients")
async def test_the_counters_move_by_what_the_clients_received(
    launch: Launch, redis_server: RedisServer, linked: bool
) -> None:
    args = ("--redis-url", redis_server.url) if linked else ()
    server = launch(*args, "--rate-limit", "0", "--join-rate-limit", "0")
    clients = 6
    before = scrape(server)
    frames = await everyone_joins_and_chats_at_once(server, clients)
    after = scrape(server)  # before anyone leaves: leave notices would move them again
    moved = {name: after[name] - before[name] for name in COUNTERS}
    # each client: the joins after its own and every chat sent after its join
    assert len(frames) >= clients * 2 - 1
    assert moved["roomcast_deliveries_total"] == len(frames), moved
    assert moved["roomcast_bytes_sent_total"] == sum(map(wire_size, frames)), moved
    assert 1 <= moved["roomcast_writes_total"] <= len(frames), moved
    assert moved["roomcast_coalesced_messages_total"] == (
        moved["roomcast_deliveries_total"] - moved["roomcast_writes_total"]
    ), moved
