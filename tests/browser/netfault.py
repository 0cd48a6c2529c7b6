"""Network faults between a browser and a real server, which a browser cannot be told to have.

`FaultyLink` is a TCP proxy on loopback: the page is loaded through it (so its WebSocket goes
through it too, to the host it was served from) and the test decides, at a moment of its
choosing, that the network fails:

- `cut()`: every open connection is reset (RST to the browser and to the server), as when a
  network goes away or a NAT forgets the flow;
- `refuse(True)`: until `refuse(False)`, new connections are reset at once (the network is
  still down, the page's retries fail);
- `swallow(True)`: what the server sends to the browser is dropped on the floor (a reply lost
  on the way). Dropped bytes break the WebSocket's framing, so `cut()` afterwards;
- `hold(True)`: until `hold(False)`, what the browser sends is kept back (a slow uplink); what
  the server sends still flows;
- `stall(True)`: until `stall(False)`, what the server sends is not read (a browser that stops
  reading: the server's socket fills up, as for a slow consumer); then it flows again, in order.

The proxy runs its own asyncio loop in a thread (the Playwright sync API owns the test's thread);
flags are plain attributes read by that loop, commands cross over with run_coroutine_threadsafe.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
TIMEOUT = 10.0


def reset(writer: asyncio.StreamWriter) -> None:
    """Closes with an RST: no FIN, no WebSocket close frame (an abnormal closure, 1006)."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):  # already closed
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultyLink:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.refusing = False
        self.swallowing = False
        self.accepted = 0  # connections forwarded to the server
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._loop = asyncio.new_event_loop()
        self._uplink = asyncio.Event()  # set: the browser's bytes flow (belongs to the loop)
        self._uplink.set()
        self._downlink = asyncio.Event()  # set: the server's bytes are read and passed on
        self._downlink.set()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._server = self._run(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = int(self._server.sockets[0].getsockname()[1])

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(TIMEOUT)

    def refuse(self, on: bool) -> None:
        self.refusing = on

    def swallow(self, on: bool) -> None:
        self.swallowing = on

    def hold(self, on: bool) -> None:
        async def _hold() -> None:
            if on:
                self._uplink.clear()
            else:
                self._uplink.set()

        self._run(_hold())

    def stall(self, on: bool) -> None:
        async def _stall() -> None:
            if on:
                self._downlink.clear()
            else:
                self._downlink.set()

        self._run(_stall())

    def cut(self) -> int:
        """Resets every open connection; returns how many there were."""

        async def _cut() -> int:
            pairs = list(self._pairs)
            self._pairs.clear()
            for browser_side, server_side in pairs:
                reset(browser_side)
                reset(server_side)
            return len(pairs)

        return self._run(_cut())

    def close(self) -> None:
        self.refusing = True
        self.hold(False)  # a pump waiting to forward sees its connection end
        self.stall(False)
        self.cut()

        async def _close() -> None:
            self._server.close()
            await self._server.wait_closed()
            # let the pumps of the connections just cut see their end
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), TIMEOUT)

        try:
            self._run(_close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(TIMEOUT)
            self._loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            reset(writer)
            return
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(*self.target), TIMEOUT
            )
        except (OSError, TimeoutError):
            reset(writer)  # the server is down: the browser sees a failed connection
            return
        self.accepted += 1
        pair = (writer, up_writer)
        self._pairs.add(pair)
        try:
            await asyncio.gather(
                self._pump(reader, up_writer, downstream=False),
                self._pump(up_reader, writer, downstream=True),
            )
        finally:
            self._pairs.discard(pair)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, downstream: bool
    ) -> None:
        try:
            while True:
                if downstream:
                    await self._downlink.wait()  # stalled: the server's bytes wait in its socket
                data = await reader.read(65536)
                if not data:
                    break
                if downstream and self.swallowing:
                    continue
                if not downstream:
                    await self._uplink.wait()
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            # one side finished (or was reset): the other goes with it
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
