"""A raw WebSocket client over a blocking socket, for bench tools that need exact bytes and no
event loop (child processes opening thousands of idle connections, flooders): the upgrade
request, masked client frames, and a connect that waits for the 101."""

from __future__ import annotations

import base64
import os
import socket


def upgrade_request() -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame of at most 125 bytes."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked


def connect(port: int, source: str | None = None, timeout: float | None = 5) -> socket.socket:
    """A socket upgraded to WebSocket on 127.0.0.1:`port` (from `source`, when given)."""
    sock = socket.create_connection(
        ("127.0.0.1", port), timeout=timeout,
        source_address=None if source is None else (source, 0),
    )
    sock.sendall(upgrade_request())
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed during the upgrade")
        answer += chunk
    if b" 101 " not in answer.split(b"\r\n", 1)[0]:
        raise ConnectionError(answer.split(b"\r\n", 1)[0].decode(errors="replace"))
    return sock
