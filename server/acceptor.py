"""Our own accept loop, so that running out of file descriptors is survivable and visible.

picows's default server (aiofastnet) spins at 100% CPU when accept() fails with EMFILE, and
uvloop's closes the waiting connections silently. Here, when accept() fails for lack of
descriptors or memory, we stop watching the listening socket for a moment (the waiting clients stay
in the kernel's backlog), log it once per episode, count it, and try again; existing clients are
not affected.

Accepted sockets get uvloop's own transports rather than aiofastnet's: measured here, an idle
joined connection costs 8.6 KiB of server RSS with uvloop's transport and 13.5 KiB with
aiofastnet's, for CPU per delivery within 5% (see docs/backpressure.md).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
from collections.abc import Callable
from functools import partial
from typing import Any

from picows.picows import WSAutoPingStrategy, WSProtocol  # type: ignore[attr-defined]

from .state import Counters

log = logging.getLogger("roomcast")

_RESOURCE_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
RETRY_DELAY = 0.25


def websocket_protocol_factory(
    logger: Any, *, max_frame_size: int
) -> Callable[[Callable[[Any], Any]], asyncio.BufferedProtocol]:
    """Makes picows server protocols, as picows's ws_create_server does internally, for sockets
    whose HTTP request server/front.py has already read and admitted (so no handshake timeout
    here: the front enforced it)."""

    def make(listener_factory: Callable[[Any], Any]) -> asyncio.BufferedProtocol:
        protocol: asyncio.BufferedProtocol = WSProtocol(
            None,  # host:port (client side only)
            None,  # path (client side only)
            False,  # is_client_side
            listener_factory,
            logger,
            True,  # disconnect_on_exception
            None,  # handshake timeout: the front's
            False,  # our heartbeat replaces picows's per-connection ping task
            20.0,
            20.0,
            WSAutoPingStrategy.PING_WHEN_IDLE,
            False,  # enable_auto_pong: server/connection.py answers pings, counted
            max_frame_size,
            None,  # extra_headers (client side only)
            2048,  # read_buffer_init_size: picows never allocates less
        )
        return protocol

    return make


class Acceptor:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        protocol_factory: Callable[[Any], asyncio.BaseProtocol],
        counters: Counters,
        *,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._loop = loop
        self._sock = sock
        self._factory = protocol_factory
        self._ssl = ssl_context
        self._watching = False
        self._closed = False
        self._exhausted = False
        self._counters = counters

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._sock.getsockname()[:2]
        return host, port

    def start(self) -> None:
        if not self._watching and not self._closed:
            self._loop.add_reader(self._sock.fileno(), self._on_readable)
            self._watching = True

    def close(self) -> None:
        """Stops accepting; the clients already connected are not touched."""
        if self._closed:
            return
        self._closed = True
        if self._watching:
            self._loop.remove_reader(self._sock.fileno())
            self._watching = False
        self._sock.close()

    def _on_readable(self) -> None:
        for _ in range(256):  # bounded, so a connection storm cannot starve the clients
            try:
                conn, peer = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                if exc.errno in _RESOURCE_ERRORS:
                    self._pause(exc)
                    return
                log.error("accept() failed: %s", exc)
                return
            if self._exhausted:
                self._exhausted = False
                log.warning("accepting connections again")
            self._counters.connections_accepted += 1
            conn.setblocking(False)
            self._loop.create_task(self._connect(conn, peer))

    async def _connect(self, conn: socket.socket, peer: Any) -> None:
        try:
            await self._loop.connect_accepted_socket(
                partial(self._factory, peer), conn, ssl=self._ssl
            )
        except Exception as exc:
            conn.close()
            if log.isEnabledFor(logging.DEBUG):
                log.debug("connection setup failed: %s", exc)

    def _pause(self, exc: OSError) -> None:
        self._loop.remove_reader(self._sock.fileno())
        self._watching = False
        if not self._exhausted:
            self._exhausted = True
            self._counters.accept_exhausted += 1
            log.warning(
                "accept() failed: %s; new clients wait in the backlog, existing ones are served; "
                "retrying every %.2fs",
                exc.strerror,
                RETRY_DELAY,
            )
        self._loop.call_later(RETRY_DELAY, self.start)
