"""A raw WebSocket upgrade request that returns the server's whole HTTP answer (refusals)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
from dataclasses import dataclass

TIMEOUT = 5.0


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes


async def upgrade(
    host: str,
    port: int,
    path: str = "/",
    headers: dict[str, str] | None = None,
    *,
    local_addr: tuple[str, int] | None = None,
) -> Answer:
    """Sends an upgrade request; returns the status, headers and (for a refusal) the body.

    `headers` are added to, or replace, the standard upgrade headers.

    A 101 answer is returned at once (the connection is then closed without a CLOSE frame).
    """
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(host, port, local_addr=local_addr), TIMEOUT
    )
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        fields = {
            "Host": f"{host}:{port}",
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": key,
            "Sec-WebSocket-Version": "13",
        }
        given = headers or {}
        lowered = {name.lower() for name in given}
        fields = {k: v for k, v in fields.items() if k.lower() not in lowered} | given
        lines = [f"GET {path} HTTP/1.1"] + [f"{k}: {v}" for k, v in fields.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape"))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split()[1])
        parsed: dict[str, str] = {}
        for line in header_lines:
            if ":" in line:
                name, _, value = line.partition(":")
                parsed[name.strip().lower()] = value.strip()
        body = b""
        if status != 101:
            length = int(parsed.get("content-length", "0"))
            body = await asyncio.wait_for(reader.readexactly(length), TIMEOUT)
        return Answer(status, parsed, body)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), TIMEOUT)
