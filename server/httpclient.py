"""A minimal HTTP/1.1 GET over asyncio, on loopback: how a ``--workers`` supervisor scrapes its
workers' private metrics, and how a worker fetches the merged view for a public /metrics."""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit

TIMEOUT = 5.0


class FetchError(Exception):
    """The other process did not answer usefully."""


async def get(url: str) -> bytes:
    """The body of a 200 answer to GET `url` within TIMEOUT; raises FetchError otherwise."""
    parts = urlsplit(url)
    if parts.hostname is None or parts.port is None:
        raise FetchError(f"not a host:port URL: {url}")
    try:
        async with asyncio.timeout(TIMEOUT):
            reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
            try:
                path = parts.path or "/"
                writer.write(
                    f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: close\r\n\r\n"
                    .encode()
                )
                answer = await reader.read()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError) as exc:
        raise FetchError(f"{url}: {exc}") from None
    head, _, body = answer.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200 "):
        status = head.split(b"\r\n", 1)[0].decode("latin-1")
        raise FetchError(f"{url}: {status}")
    return body
