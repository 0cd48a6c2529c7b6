"""A ``--workers`` server's own HTTP endpoint: the merged /metrics, /readyz and /healthz.

Every worker serves its metrics on a private loopback port (the supervisor starts it with
``--metrics-listen 127.0.0.1:0`` and reads the port from its output). This endpoint, run by the
supervisor, scrapes them all and answers one merged exposition (server/aggregate.py): on the
user's ``--metrics-listen`` address when given, else on a private one that the workers forward
their public ``/metrics`` to, so that a scrape of the server's own port sees the whole server
whichever worker the kernel hands it to. The workers are also scraped every few seconds, so that
what a worker counted before it died is known when it is restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

from . import httpclient
from .aggregate import Merger
from .http1 import HttpError, error_response, head_end, options_response, parse_head, render

log = logging.getLogger("roomcast.supervisor")

SCRAPE_INTERVAL = 5.0
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Member(Protocol):
    """A worker as the endpoint sees it."""

    index: int

    @property
    def pid(self) -> int | None: ...

    @property
    def metrics_url(self) -> str | None: ...

    @property
    def is_ready(self) -> bool: ...


class Fleet:
    def __init__(self, workers: Sequence[Member], restarts: Callable[[], int]) -> None:
        self._workers = workers
        self._restarts = restarts
        self._merger = Merger()
        self._server: asyncio.AbstractServer | None = None
        self._scraper: asyncio.Task[None] | None = None
        self.address: tuple[str, int] | None = None

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._serve, host, port)
        self.address = self._server.sockets[0].getsockname()[:2]
        self._scraper = asyncio.get_running_loop().create_task(self._scrape_forever())

    async def stop(self) -> None:
        if self._scraper is not None:
            self._scraper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._scraper
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def metrics(self) -> str:
        async def one(worker: Member) -> tuple[int, int, str] | None:
            url, pid = worker.metrics_url, worker.pid
            if url is None or pid is None:
                return None
            try:
                return worker.index, pid, (await httpclient.get(url)).decode()
            except httpclient.FetchError as exc:
                log.debug("worker %d did not answer its scrape: %s", worker.index, exc)
                return None

        scrapes = await asyncio.gather(*(one(w) for w in self._workers))
        return self._merger.merge([s for s in scrapes if s is not None], self._restarts())

    async def ready(self) -> bool:
        """Every worker runs and its own /readyz says ready (its Redis link, not draining)."""

        async def one(worker: Member) -> bool:
            url = worker.metrics_url
            if not worker.is_ready or url is None:
                return False
            try:
                await httpclient.get(urlunsplit(urlsplit(url)._replace(path="/readyz")))
            except httpclient.FetchError:  # 503 included
                return False
            return True

        return all(await asyncio.gather(*(one(w) for w in self._workers)))

    async def _scrape_forever(self) -> None:
        while True:
            await asyncio.sleep(SCRAPE_INTERVAL)
            with contextlib.suppress(Exception):
                await self.metrics()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(10):
                head = await reader.readuntil(b"\r\n\r\n")
                try:
                    head_end(head)
                    request = parse_head(head)
                except HttpError as error:
                    writer.write(error_response(error))
                    return
                head_only = request.method == "HEAD"
                if request.method == "OPTIONS":
                    writer.write(options_response())
                elif request.path == "/metrics":
                    body = (await self.metrics()).encode()
                    writer.write(render(200, body, {"Content-Type": CONTENT_TYPE},
                                        head_only=head_only))
                elif request.path == "/healthz":
                    writer.write(render(200, b"ok\n", head_only=head_only))
                elif request.path == "/readyz":
                    ready = await self.ready()
                    writer.write(render(200 if ready else 503,
                                        b"ready\n" if ready else b"not ready\n",
                                        head_only=head_only))
                else:
                    writer.write(render(404, b"not found\n", head_only=head_only))
                await writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
