"""A deliberately low-level WebSocket client for tests: it sends exactly the frames we ask for
(fragments, bad UTF-8, odd close codes) and reports exactly the frames the server sends."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import ssl
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

TEXT, BINARY, CONTINUATION, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA
TIMEOUT = 5.0


@dataclass
class Frame:
    opcode: int
    fin: bool
    payload: bytes

    @property
    def close_code(self) -> int | None:
        return struct.unpack("!H", self.payload[:2])[0] if len(self.payload) >= 2 else None

    def json(self) -> Any:
        assert self.opcode == TEXT, self
        return json.loads(self.payload)


def encode_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """A masked client frame."""
    head = bytearray([(0x80 if fin else 0) | opcode])
    size = len(payload)
    if size < 126:
        head.append(0x80 | size)
    elif size < 65536:
        head.append(0x80 | 126)
        head += struct.pack("!H", size)
    else:
        head.append(0x80 | 127)
        head += struct.pack("!Q", size)
    mask = os.urandom(4)
    head += mask
    return bytes(head) + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class RawClient:
    open_clients: list[RawClient] = []  # closed by the `raw_clients` fixture after each test

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        RawClient.open_clients.append(self)

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        path: str = "/",
        headers: dict[str, str] | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> RawClient:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=tls), TIMEOUT
        )
        client = cls(reader, writer)  # registered first: a cancelled handshake is closed too
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: {host}:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ] + [f"{k}: {v}" for k, v in (headers or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        response = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        status = response.split(b"\r\n", 1)[0]
        if b" 101 " not in status:
            await client.close()
            raise ConnectionError(f"upgrade refused: {response!r}")
        return client

    def send_frame(self, opcode: int, payload: bytes, fin: bool = True) -> None:
        self.writer.write(encode_frame(opcode, payload, fin))

    def send_json(self, message: Any) -> None:
        self.send_frame(TEXT, json.dumps(message).encode())

    async def recv_frame(self, timeout: float = TIMEOUT) -> Frame:
        async def read() -> Frame:
            b0, b1 = await self.reader.readexactly(2)
            size = b1 & 0x7F
            if size == 126:
                size = struct.unpack("!H", await self.reader.readexactly(2))[0]
            elif size == 127:
                size = struct.unpack("!Q", await self.reader.readexactly(8))[0]
            assert not b1 & 0x80, "server frames must not be masked"
            payload = await self.reader.readexactly(size)
            return Frame(b0 & 0x0F, bool(b0 & 0x80), payload)

        return await asyncio.wait_for(read(), timeout)

    async def recv_json(self, timeout: float = TIMEOUT) -> Any:
        """The next text message, answering pings on the way (as a browser would)."""
        while True:
            frame = await self.recv_frame(timeout)
            if frame.opcode == PING:
                self.send_frame(PONG, frame.payload)
                continue
            return frame.json()

    async def expect_close(self, timeout: float = TIMEOUT) -> Frame:
        """Skips data frames until the server's CLOSE; then checks the server hangs up."""
        while True:
            frame = await self.recv_frame(timeout)
            if frame.opcode == CLOSE:
                return frame

    async def wait_eof(self, timeout: float = TIMEOUT) -> bool:
        try:
            data = await asyncio.wait_for(self.reader.read(), timeout)
        except ConnectionResetError:
            return True
        return data == b"" or self.reader.at_eof()

    async def close(self) -> None:
        self.writer.close()
        # (TLS: a server that already hung up may leave the closing handshake half done)
        with contextlib.suppress(ConnectionError, TimeoutError, ssl.SSLError):
            await asyncio.wait_for(self.writer.wait_closed(), TIMEOUT)


async def until(client: RawClient, predicate: Callable[[Any], bool], timeout: float = 10.0) -> Any:
    """The next message that satisfies `predicate`, skipping others, within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no matching message")
        message = await client.recv_json(timeout=left)
        if predicate(message):
            return message


async def chat_until_left(
    talker: RawClient, name: str, text_of: Callable[[int], str], limit: int = 4000
) -> int | None:
    """Chats through the talker's room ten at a time (each batch echoed back before the next)
    until the room hears that `name` left, at most `limit` chats: how many went out by then
    (None: it never left). `text_of(n)` is the text of chat n."""
    sent = 0
    while sent < limit:
        for _ in range(10):
            talker.send_json({"type": "chat", "text": text_of(sent)})
            sent += 1
        echoed = 0
        left = False
        while echoed < 10:
            message = await talker.recv_json()
            if message.get("event") == "leave" and message.get("username") == name:
                left = True
            elif message["type"] == "chat":
                echoed += 1
        if left:
            return sent
    return None
