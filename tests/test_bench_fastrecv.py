"""The load driver's compiled receiver (bench/fastrecv.pyx) on real sockets (socketpairs).

The benchmark's fan-out latencies come from it, so what it parses is checked here byte by byte:
frames split anywhere across reads, the three length encodings, warm-up ids, groups (tags),
what is not a chat, CLOSE and EOF, what it leaves unread when stopped mid-frame, and the driver
handing a real picows client's socket to it and back.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import socket
import struct
import threading
import time
from array import array
from collections.abc import Callable, Iterator

import pytest
import uvloop

from bench.fastrecv import Receiver

WAIT_S = 10.0
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455


def frame(payload: bytes, opcode: int = 1) -> bytes:
    """An unmasked server frame."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return head + payload


def chat(msg_id: int, send_ns: int, pad: int = 20) -> bytes:
    text = f"{msg_id}:{send_ns}:" + "x" * pad
    return frame(b'{"type":"chat","room":"r","user":"u","text":"' + text.encode() + b'"}')


@pytest.fixture
def pairs() -> Iterator[list[tuple[socket.socket, socket.socket]]]:
    made = [socket.socketpair() for _ in range(3)]
    for ours, _ in made:
        ours.setblocking(False)
    yield made
    for a, b in made:
        a.close()
        b.close()


def start(receiver: Receiver, expected: int, timeout_s: float = WAIT_S) -> threading.Thread:
    thread = threading.Thread(target=receiver.run, args=(expected, timeout_s), daemon=True)
    thread.start()
    return thread


def finish(thread: threading.Thread) -> None:
    thread.join(WAIT_S)
    assert not thread.is_alive(), "the receiver did not return"


def test_latency_is_receipt_minus_the_scheduled_send_time_and_frames_split_anywhere(
        pairs: list[tuple[socket.socket, socket.socket]]) -> None:
    (ours, peer), *_ = pairs
    receiver = Receiver([ours.fileno()], [0], 0, 4)
    sent_ns = time.monotonic_ns() - 2_000_000_000  # scheduled two seconds ago
    wire = chat(7, sent_ns) + chat(8, sent_ns, pad=300) + chat(9, sent_ns)
    thread = start(receiver, 3)
    for i in range(len(wire)):  # one byte per send: every split point, the 16-bit length too
        peer.send(wire[i : i + 1])
    finish(thread)
    assert receiver.measured == 3
    lat = array("q", receiver.latencies())
    assert len(lat) == 3
    assert all(2_000_000_000 <= x < 2_000_000_000 + WAIT_S * 1e9 for x in lat), list(lat)
    assert receiver.leftover_bytes == 0
    assert receiver.malformed == 0
    assert receiver.cpu_ns > 0  # its own thread's CPU time, for the driver's cost per frame


def test_warm_up_ids_are_counted_apart_and_groups_keep_their_own_latencies(
        pairs: list[tuple[socket.socket, socket.socket]]) -> None:
    fds = [ours.fileno() for ours, _ in pairs]
    receiver = Receiver(fds, [0, 1, 2], 5, 1)  # capacity 1: the store grows
    now = time.monotonic_ns()
    for (_, peer), delay in zip(pairs, (1_000_000, 2_000_000_000, 3_000_000_000), strict=True):
        peer.sendall(chat(4, now) + chat(5, now - delay) + chat(6, now - delay))
    thread = start(receiver, 6)
    finish(thread)
    assert (receiver.measured, receiver.warm_received) == (6, 3)
    assert len(array("q", receiver.latencies())) == 6
    first = array("q", receiver.latencies(0))
    second = array("q", receiver.latencies(1))
    third = array("q", receiver.latencies(2))
    assert len(first) == len(second) == len(third) == 2
    assert min(first) >= 1_000_000
    assert min(second) >= 2_000_000_000
    assert min(third) >= 3_000_000_000


def test_what_is_not_a_chat_is_counted_and_never_measured(
        pairs: list[tuple[socket.socket, socket.socket]]) -> None:
    (ours, peer), *_ = pairs
    receiver = Receiver([ours.fileno()], [0], 0, 4)
    now = time.monotonic_ns()
    peer.sendall(
        frame(b'{"type":"system","text":"1:2:x"}')
        + frame(b'{"type":"error","text":"rate limited"}')
        + frame(b"are you there", opcode=9)
        + frame(b"\x00" * 65_536, opcode=2)  # a 64-bit length, binary: skipped whole
        + chat(1, now))
    thread = start(receiver, 1)
    finish(thread)
    assert (receiver.measured, receiver.errors, receiver.other_frames) == (1, 1, 3)
    assert receiver.malformed == 0
    assert receiver.ping_payload(0) == b"are you there"  # for picows to answer afterwards


def test_close_and_eof_end_reading_a_socket(
        pairs: list[tuple[socket.socket, socket.socket]]) -> None:
    (a, peer_a), (b, peer_b), (c, peer_c) = pairs
    receiver = Receiver([a.fileno(), b.fileno(), c.fileno()], [0, 0, 0], 0, 4)
    now = time.monotonic_ns()
    peer_a.sendall(chat(1, now) + frame(struct.pack("!H", 4000) + b"slow", opcode=8)
                   + chat(2, now))  # after its CLOSE nothing is a delivery
    peer_b.sendall(chat(1, now))
    peer_b.shutdown(socket.SHUT_WR)
    peer_c.sendall(chat(1, now) + chat(2, now))
    peer_c.shutdown(socket.SHUT_WR)
    thread = start(receiver, 1 << 40)
    finish(thread)  # returns once no socket is left to read
    assert receiver.measured == 4
    assert receiver.closed == 3
    assert receiver.last_close_code == 4000


def test_stop_returns_and_an_unfinished_frame_is_handed_back(
        pairs: list[tuple[socket.socket, socket.socket]]) -> None:
    (ours, peer), *_ = pairs
    receiver = Receiver([ours.fileno()], [0], 0, 4)
    thread = start(receiver, 1 << 40, timeout_s=3600)
    receiver.stop()
    finish(thread)
    receiver = Receiver([ours.fileno()], [0], 0, 4)  # a stopped receiver stays stopped
    wire = chat(1, time.monotonic_ns())
    peer.sendall(wire + wire[:9])
    finish(start(receiver, 1))
    assert receiver.measured == 1
    assert receiver.leftover_bytes == 9
    assert receiver.unread(0) == wire[:9]  # for picows to go on with
    assert receiver.leftover_bytes == 0
    assert receiver.ping_payload(0) is None


def test_sockets_and_tags_must_pair_up() -> None:
    with pytest.raises(ValueError, match="2 sockets but 1 tags"):
        Receiver([5, 6], [0], 0, 4)


@pytest.mark.parametrize("head", [
    struct.pack("!BBQ", 0x81, 127, 65_537),  # over 64 KiB
    struct.pack("!BBQ", 0x81, 127, 1 << 63),  # negative as a signed length
    struct.pack("!BBQ", 0x81, 127, (1 << 63) - 1),  # overflows header + length
    struct.pack("!BB", 0x81, 0x80 | 5) + b"mask" + b"hello",  # masked, as no server sends
], ids=["65537", "2**63", "2**63-1", "masked"])
def test_a_frame_no_fanout_sends_stops_that_socket_whatever_its_length_field_says(
        pairs: list[tuple[socket.socket, socket.socket]], head: bytes) -> None:
    (ours, peer), (other, other_peer), _ = pairs
    receiver = Receiver([ours.fileno(), other.fileno()], [0, 0], 0, 4)
    peer.sendall(head + b"z" * 64)
    other_peer.sendall(chat(1, time.monotonic_ns()))
    other_peer.shutdown(socket.SHUT_WR)
    finish(start(receiver, 1 << 40))  # returns: neither socket is read any more
    assert (receiver.malformed, receiver.closed, receiver.measured) == (1, 2, 1)


def test_a_frame_longer_than_any_fanout_chat_stops_that_socket_and_is_reported(
        pairs: list[tuple[socket.socket, socket.socket]]) -> None:
    (ours, peer), *_ = pairs
    receiver = Receiver([ours.fileno()], [0], 0, 4)
    head = struct.pack("!BBQ", 0x81, 127, 200_000)
    sender = threading.Thread(target=peer.sendall, args=(head + b"y" * 100_000,), daemon=True)
    sender.start()
    finish(start(receiver, 1))  # returns: its only socket is no longer read
    assert (receiver.malformed, receiver.closed, receiver.measured) == (1, 1, 0)
    peer.close()  # the sender's sendall ends (with an error) however much was read
    sender.join(WAIT_S)


def test_a_closed_socket_is_no_longer_watched(
        pairs: list[tuple[socket.socket, socket.socket]]) -> None:
    (gone, peer_gone), (open_, peer_open), _ = pairs
    receiver = Receiver([gone.fileno(), open_.fileno()], [0, 0], 0, 4)
    peer_gone.shutdown(socket.SHUT_WR)
    peer_open.sendall(chat(1, time.monotonic_ns()))
    receiver.run(1 << 40, 0.3)  # the open socket keeps it reading until the timeout
    assert (receiver.closed, receiver.measured) == (1, 1)
    # a socket at EOF left in a level-triggered epoll would wake it on every call, ~10^5 times
    assert receiver.wakeups <= 3


# --------------------------------------------------------------------------- handing back


def unmask(data: bytes) -> tuple[int, bytes]:
    """(opcode, payload) of one masked client frame of under 126 bytes."""
    opcode, n = data[0] & 0x0F, data[1] & 0x7F
    mask = data[2:6]
    return opcode, bytes(b ^ mask[i % 4] for i, b in enumerate(data[6 : 6 + n]))


async def until_true(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.001)


def test_picows_takes_over_mid_frame_and_the_ping_is_answered() -> None:
    """The driver's worker hands a picows client's socket to the receiver and back: the frame
    the receiver held half of reaches picows whole, and the PING it read gets its PONG."""

    async def scenario() -> None:
        from bench.driver import Worker  # noqa: PLC0415

        upgraded: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
            asyncio.get_running_loop().create_future())

        async def handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            request = await reader.readuntil(b"\r\n\r\n")
            key = next(line.split(b":", 1)[1].strip() for line in request.split(b"\r\n")
                       if line.lower().startswith(b"sec-websocket-key:"))
            accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                         b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
            upgraded.set_result((reader, writer))

        server = await asyncio.start_server(handshake, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        worker = Worker(0)
        try:
            await worker.op_connect(f"ws://127.0.0.1:{port}/", [(0, "r", "u", "127.0.0.1")])
            assert len(worker.clients) == 1, worker.connect_failures
            [client] = worker.clients
            reader, writer = await asyncio.wait_for(upgraded, WAIT_S)
            worker._start_receiver(0)
            receiver = worker.receiver
            first, second = chat(0, time.monotonic_ns()), chat(1, time.monotonic_ns())
            writer.write(first + frame(b"hello?", opcode=9) + second[:10])
            await until_true(lambda: receiver.measured == 1 and receiver.leftover_bytes == 10,
                             "the receiver to read a chat and half of the next")
            worker._stop_receiver()
            pong = await asyncio.wait_for(reader.readexactly(6 + 6), WAIT_S)
            assert unmask(pong) == (0xA, b"hello?")
            writer.write(second[10:])
            await until_true(lambda: client.chats == 1, "picows to finish the second chat")
            assert worker.measured == 1 and client.alive
            writer.close()
        finally:
            for c in worker.clients:
                if c.transport is not None:
                    c.transport.disconnect(graceful=False)
            server.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(asyncio.wait_for(scenario(), 60))
