"""The compiled hot path (server/fastpath.pyx): the fan-out's partial sends, and picows's read
buffer cut to what is needed.

The read-buffer tests run a real server inside the test's process, on uvloop as in production,
over real sockets, so they can look at what picows holds for each connection. The fan-out loop
and the transport tuning are otherwise exercised by every server test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import uvloop

from server import fastpath
from server.app import App, build, listen
from server.connection import Connection
from server.protocol import CloseCode, text_frame
from server.settings import load
from tests.rawws import PING, TEXT, RawClient, encode_frame, until

SMALL = fastpath.READ_BUFFER_BYTES


class Writer:
    """A member's writer that records which way the fan-out handed it bytes."""

    def __init__(self) -> None:
        self.whole: list[bytes] = []
        self.rests: list[bytes] = []

    def __call__(self, data: bytes) -> None:
        self.whole.append(data)

    def rest(self, data: bytes) -> None:
        self.rests.append(data)


def test_what_a_send_leaves_goes_to_rest_and_never_as_a_frame() -> None:
    # A remainder starts anywhere in a frame: here, inside text of U+2208 (E2 88 88), where a
    # 0x88 byte (a CLOSE frame's first) is likely; it must not reach the writer as if whole.
    sender, reader = socket.socketpair()
    with sender, reader:
        sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        blob = text_frame(("\u2208" * 100_000).encode())
        writer = Writer()
        member = fastpath.Member(writer)
        member.fd = sender.fileno()
        fastpath.fanout([member], blob)
        [rest] = writer.rests
        assert writer.whole == [] and 0 < len(rest) < len(blob)
        taken = bytearray()
        while len(taken) < len(blob) - len(rest):
            taken += reader.recv(1 << 16)
        assert bytes(taken) + rest == blob
        member.fd = -1  # a paused or TLS connection: everything goes to the writer, whole
        fastpath.fanout([member], blob)
        assert writer.whole == [blob]


def on_uvloop(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """Runs an async test on its own uvloop loop, as the server runs (bounded: 60 s)."""

    def run() -> None:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(asyncio.wait_for(test(), 60))

    return run


@contextlib.asynccontextmanager
async def serving(*args: str) -> AsyncIterator[tuple[App, int]]:
    loop = asyncio.get_running_loop()
    app = build(load(["--host", "127.0.0.1", "--port", "0", *args], env={}), loop)
    acceptor = listen(app)
    try:
        yield app, acceptor.address[1]
    finally:
        for client in list(RawClient.open_clients):
            await client.close()
        await app.shutdown(CloseCode.GOING_AWAY)


async def joined(port: int, app: App, name: str) -> tuple[RawClient, Connection]:
    client = await RawClient.connect("127.0.0.1", port)
    client.send_json({"type": "join", "room": "r", "username": name})
    await until(client, lambda m: m.get("event") == "join" and m.get("username") == name)
    [conn] = [c for c in app.connections if c.member.name == name]
    return client, conn


def read_buffer(conn: Connection) -> tuple[int, int]:
    held = fastpath.read_buffer(conn.transport.underlying_transport.get_protocol())
    assert held is not None, "picows's read buffer was not found"
    return held


async def condition(check: Callable[[], bool], timeout: float = 5.0) -> None:
    """Returns once `check()` holds (looked at once per loop pass), within `timeout` seconds."""
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0)


def chat_frame(text: str) -> bytes:
    """A chat as JSON with ASCII escapes: 4,000 accented letters (the longest text) make 24 KB."""
    return encode_frame(TEXT, json.dumps({"type": "chat", "text": text}).encode())


def accented(size: int, first: int = 0xE0) -> str:
    return "".join(chr(first + i % 26) for i in range(size))


@on_uvloop
async def test_a_new_connection_keeps_a_small_read_buffer_not_picows_2_kib() -> None:
    async with serving() as (app, port):
        _, conn = await joined(port, app, "alice")
        assert read_buffer(conn) == (SMALL, 0)


@on_uvloop
async def test_a_silent_connection_gives_back_what_a_big_message_grew() -> None:
    async with serving("--ping-interval", "0.5") as (app, port):
        client, conn = await joined(port, app, "alice")
        text = accented(4_000)
        client.writer.write(chat_frame(text))
        await until(client, lambda m: m.get("type") == "chat" and m["text"] == text)
        assert read_buffer(conn)[0] > 4 * SMALL
        # The heartbeat trims a connection's buffer just before it pings it for its silence.
        while (await client.recv_frame()).opcode != PING:
            pass
        assert read_buffer(conn) == (SMALL, 0)


@on_uvloop
async def test_an_unfinished_frame_is_never_trimmed_and_frames_arrive_whole() -> None:
    async with serving() as (app, port):
        client, conn = await joined(port, app, "alice")
        protocol = conn.transport.underlying_transport.get_protocol()
        text = accented(3_000)
        frame = chat_frame(text)
        client.writer.write(frame[:1_000])
        await condition(lambda: read_buffer(conn)[1] == 1_000)
        before = read_buffer(conn)
        assert not fastpath.trim_read_buffer(protocol)
        assert read_buffer(conn) == before
        client.writer.write(frame[1_000:])
        await until(client, lambda m: m.get("type") == "chat" and m["text"] == text)
        # Nothing waits now: trimmed, and a big masked frame written in small pieces still grows
        # the small buffer back correctly.
        assert fastpath.trim_read_buffer(protocol)
        assert read_buffer(conn) == (SMALL, 0)
        text = accented(4_000, first=0xC0)
        frame = chat_frame(text)
        for start in range(0, len(frame), 997):
            client.writer.write(frame[start : start + 997])
            await client.writer.drain()
        await until(client, lambda m: m.get("type") == "chat" and m["text"] == text)

