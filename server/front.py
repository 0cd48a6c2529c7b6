"""The first protocol of every connection: the HTTP request, before any WebSocket exists.

Every accepted socket starts here. The connection takes one of its address's slots at once
(``--max-connections-per-ip`` counts unfinished requests too, so a slowloris cannot hold more
descriptors than the limit), has ``--handshake-timeout`` to send its request head, and then:

* a plain request (GET, HEAD or OPTIONS, HTTP/1.1 or 1.0) is answered from memory and closed;
* an upgrade (a GET with ``Upgrade: websocket``) goes through the gate (server/gate.py); a
  refusal is its HTTP answer;
* an admitted upgrade is handed to picows: the transport switches to a picows protocol, which is
  fed a minimal copy of the request (server/http1.py), so picows's per-connection read buffer
  never holds (or grows for) a browser's cookies, and the buffer is then cut from picows's 2 KiB
  to what an idle connection needs (``fastpath.trim_read_buffer``).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from picows import WSUpgradeResponse, WSUpgradeResponseWithListener

from . import fastpath
from .gate import Admitted, Refused
from .http import Response
from .http1 import (
    HttpError,
    Request,
    error_response,
    head_end,
    options_response,
    parse_head,
    render,
    upgrade_for_picows,
)
from .state import RefusalReason

log = logging.getLogger("roomcast")

LINGER_SECONDS = 2.0  # how long a refused client may go on sending before it is cut off
# the refusal reasons of requests we cannot parse, by status
_LABELS = {405: RefusalReason.METHOD, 431: RefusalReason.TOO_LARGE}


class FrontOwner(Protocol):
    """What the first protocol needs from the server."""

    handshake_timeout: float
    loop: asyncio.AbstractEventLoop

    def begin(self, peer: str) -> Refused | None:
        """A connection from `peer` was accepted: None to go on (it holds a slot), or why not."""

    def end(self, peer: str) -> None:
        """A connection `begin` let through is gone before it became a WebSocket."""

    def note(self, label: RefusalReason, text: str) -> None:
        """Counts a refused request by reason."""

    def may_linger(self, peer: str) -> bool:
        """Whether an answered connection from `peer` may linger (holding its descriptor for
        LINGER_SECONDS); if so, ``lingered`` is told when it is gone."""

    def lingered(self, peer: str) -> None:
        """A connection `may_linger` let linger is gone."""

    def respond(self, request: Request) -> Response | Awaitable[Response]:
        """The answer to a plain HTTP request (or what will be)."""

    def upgrade(self, request: Request, peer: str) -> Refused | Admitted:
        """The gate's decision on an upgrade request."""

    def listener(self, admitted: Admitted, request: Request) -> Any:
        """The picows listener (a Connection) of an admitted upgrade."""

    def websocket_protocol(self, listener_factory: Callable[[Any], Any]) -> Any:
        """A picows server protocol whose listener factory is `listener_factory`."""


def feed(protocol: Any, data: bytes) -> None:
    """Gives ``data`` to picows's protocol (an asyncio buffered protocol, untyped in picows's
    stubs) as if its transport had just read it."""
    view = memoryview(data)
    while view:
        buffer = protocol.get_buffer(len(view))
        size = min(len(buffer), len(view))
        buffer[:size] = view[:size]
        buffer.release()  # a view into picows's buffer, which it may move from here on
        protocol.buffer_updated(size)
        view = view[size:]


class Front(asyncio.Protocol):
    __slots__ = ("_buffer", "_lingering", "_open", "_owner", "_peer", "_slot", "_timer",
                 "_transport")

    def __init__(self, owner: FrontOwner, peer: Any) -> None:
        self._owner = owner
        # interned: the connection keeps it for its lifetime, and many share an address (NAT)
        self._peer = sys.intern(peer[0]) if isinstance(peer, tuple) and peer else "?"
        self._buffer = bytearray()
        self._transport: Any = None
        self._timer: asyncio.TimerHandle | None = None
        self._slot = False  # holds one of the peer address's slots
        self._open = True  # not answered yet: once it is, nothing more is read
        self._lingering = False

    def connection_made(self, transport: Any) -> None:
        self._transport = transport
        refused = self._owner.begin(self._peer)
        if refused is not None:
            self._answer(render(refused.status, refused.body, refused.headers))
            return
        self._slot = True
        self._timer = self._owner.loop.call_later(self._owner.handshake_timeout, self._too_slow)

    def data_received(self, data: bytes) -> None:
        if not self._open or self._timer is None:
            return  # answered (or timed out) already: what still arrives is dropped
        buffer = self._buffer
        buffer += data
        try:
            end = head_end(buffer)
            if end < 0:
                return
            request = parse_head(bytes(buffer[:end]))
        except HttpError as error:
            self._owner.note(_LABELS.get(error.status, RefusalReason.BAD_REQUEST), error.reason)
            self._answer(error_response(error))
            return
        rest = bytes(buffer[end:])
        self._buffer = bytearray()
        try:
            if not request.is_upgrade:
                self._respond(request)
                return
            outcome = self._owner.upgrade(request, self._peer)
        except Exception:  # ours, not the peer's: logged with detail, a bare 500 to the client
            self._failed(request)
            if self._timer is not None:  # not answered yet
                self._answer(render(500, b"internal error\n", {}))
            return
        if isinstance(outcome, Refused):
            self._answer(render(outcome.status, outcome.body, outcome.headers))
            return
        self._hand_over(outcome, request, rest)

    def _respond(self, request: Request) -> None:
        if request.method == "OPTIONS":
            self._answer(options_response())
            return
        answer = self._owner.respond(request)
        if isinstance(answer, Response):
            self._answer(_render(answer, request))
        else:  # a route that has to ask someone first (a worker's merged /metrics)
            self._timer = self._owner.loop.call_later(
                self._owner.handshake_timeout, self._too_slow
            )
            task = asyncio.ensure_future(answer)
            task.add_done_callback(lambda done: self._answered(done, request))

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        self._release()
        if self._lingering:
            self._lingering = False
            self._owner.lingered(self._peer)

    # ---- endings ------------------------------------------------------------------------------

    def _answered(self, done: asyncio.Future[Response], request: Request) -> None:
        if self._transport.is_closing() or not self._open or self._timer is None:
            return
        try:
            response = done.result()
        except Exception:
            self._failed(request)
            response = Response(500, b"internal error\n")
        self._answer(_render(response, request))

    def _failed(self, request: Request) -> None:
        log.exception("internal error answering %s %s", request.method, request.path)
        self._owner.note(RefusalReason.INTERNAL_ERROR, "the server failed to answer a request")

    def _answer(self, response: bytes) -> None:
        """Writes the whole answer and closes, lingering a little: closing while the client
        still sends would reset the connection and lose the answer. Lingering holds a
        descriptor, so an address gets no more lingering connections than its slots (refused
        ones included: a flood of refusals would otherwise hold thousands): past that the
        connection is closed at once."""
        self._stop_timer()
        self._open = False
        self._buffer = bytearray()
        transport = self._transport
        transport.write(response)
        self._release()
        if transport.can_write_eof() and self._owner.may_linger(self._peer):
            self._lingering = True
            transport.write_eof()
            self._timer = self._owner.loop.call_later(LINGER_SECONDS, transport.abort)
        else:
            transport.close()

    def _too_slow(self) -> None:
        self._timer = None
        self._open = False
        self._owner.note(RefusalReason.HANDSHAKE_TIMEOUT, "no complete request within the timeout")
        self._transport.abort()
        self._release()

    def _hand_over(self, admitted: Admitted, request: Request, rest: bytes) -> None:
        self._stop_timer()
        transport = self._transport
        listener = self._owner.listener(admitted, request)
        if admitted.subprotocol is None:
            answer: Any = listener
        else:
            answer = WSUpgradeResponseWithListener(
                WSUpgradeResponse.create_101_response(
                    {"Sec-WebSocket-Protocol": admitted.subprotocol}
                ),
                listener,
            )
        protocol = self._owner.websocket_protocol(lambda picows_request: answer)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        feed(protocol, upgrade_for_picows(request) + rest)
        fastpath.trim_read_buffer(protocol)
        if getattr(listener, "transport", None) is None:
            # picows refused our copy of a request the gate checked: a bug, not the peer's
            log.error("picows did not complete the handshake of %s", self._peer)
            self._owner.note(RefusalReason.INTERNAL_ERROR, "picows refused a checked upgrade")
            self._release()
            return
        # From here the slot belongs to the WebSocket (released when it closes).
        self._slot = False

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _release(self) -> None:
        if self._slot:
            self._slot = False
            self._owner.end(self._peer)


def _render(response: Response, request: Request) -> bytes:
    return render(
        response.status, response.body, response.headers, head_only=request.method == "HEAD"
    )
