"""One WebSocket client over picows: frames in, core calls, the duties picows leaves to us.

picows parses frames; this listener reassembles fragmented messages, answers CLOSE (picows does
not), fails frames with reserved bits, turns complete messages into core calls and closes the
connection with the code the core or the reassembly asks for. ``on_ws_frame`` stays synchronous
and allocation-light: no task, future or timer per message. The server that owns the connection
(``Owner``) registers it and watches it while its writes are paused.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol

from multidict import CIMultiDict
from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport

from .core import ChatCore, Member
from .protocol import CloseCode, close_reply
from .reassembly import Fragments, Message, reassemble
from .state import Counters

if TYPE_CHECKING:
    from .gate import Admitted

log = logging.getLogger("roomcast")

_NO_HEADERS: CIMultiDict[str] = CIMultiDict()
_TEXT = WSMsgType.TEXT
_CONTINUATION = WSMsgType.CONTINUATION
_BINARY = WSMsgType.BINARY
_CLOSE = WSMsgType.CLOSE
_PONG = WSMsgType.PONG
_DATA = (_TEXT, _BINARY, _CONTINUATION)


class Owner(Protocol):
    """What a connection needs from the server that accepted it."""

    core: ChatCore
    counters: Counters
    max_message_bytes: int

    def attach(self, conn: Connection) -> None: ...

    def detach(self, conn: Connection) -> None: ...

    def paused(self, conn: Connection) -> None: ...

    def resumed(self, conn: Connection) -> None: ...


class Connection(WSListener):
    """One WebSocket client. Holds the transport, the core's Member and reassembly state."""

    __slots__ = (
        "awaiting_pong",
        "client_ip",
        "closing",
        "fragments",
        "heard",
        "identity",
        "member",
        "owner",
        "slot",
        "transport",
    )

    def __init__(self, owner: Owner, admitted: Admitted) -> None:
        self.owner = owner
        self.client_ip = admitted.client_ip  # the address admission limits are counted against
        self.identity = admitted.identity  # from the token, when auth is on
        self.heard = True
        self.awaiting_pong = False
        self.closing = False
        self.fragments: Fragments | None = None
        self.slot = 0

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        # picows keeps the parsed upgrade request and our 101 response for the connection's
        # lifetime; their header tables (~1 KiB) are not needed once admitted.
        transport.request.headers = _NO_HEADERS
        transport.response.headers = _NO_HEADERS
        self.member = Member(transport.underlying_transport.write)
        identity = self.identity
        if identity is not None:
            self.member.fixed_name = identity.name
            self.member.allowed_rooms = identity.rooms
        self.owner.attach(self)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if self.closing:
            return  # frames still in the read buffer after we decided to close
        self.heard = True
        try:
            if frame.rsv1 or frame.rsv2 or frame.rsv3:
                # No extension is negotiated, so RFC 6455 section 5.2 requires failing.
                self.close(CloseCode.PROTOCOL_ERROR, "reserved bits set")
                return
            kind = frame.msg_type
            if kind is _TEXT and frame.fin and self.fragments is None:
                code = self.owner.core.handle_text(self.member, frame.get_payload_as_bytes())
                if code is not None:
                    self.close(code, "invalid UTF-8 in text message")
            elif kind is _PONG:
                pass
            else:
                self._slow_path(kind, frame)
        except Exception:
            log.exception("internal error handling a frame from %s", self.peer())
            self.close(CloseCode.INTERNAL_ERROR, "internal error")

    def _slow_path(self, kind: WSMsgType, frame: WSFrame) -> None:
        if kind is _CLOSE:
            received = frame.get_close_code().value
            self.close(close_reply(received), "")
        elif kind in _DATA:
            self.fragments, outcome = reassemble(
                self.fragments,
                kind.value,
                bool(frame.fin),
                frame.get_payload_as_bytes(),
                self.owner.max_message_bytes,
            )
            if outcome is None:
                return
            if not isinstance(outcome, Message):
                self.close(outcome.code, outcome.reason)
            elif outcome.binary:
                self.owner.core.handle_binary(self.member)
            else:
                code = self.owner.core.handle_text(self.member, outcome.payload)
                if code is not None:
                    self.close(code, "invalid UTF-8 in text message")

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if not self.closing:
            self.closing = True
            self.owner.core.disconnect(self.member)
        self.owner.detach(self)

    def pause_writing(self) -> None:
        self.owner.paused(self)

    def resume_writing(self) -> None:
        self.owner.resumed(self)

    # ---- closing ------------------------------------------------------------------------------

    def close(self, code: int, reason: str, *, abort: bool = False) -> None:
        """Leaves the room, sends CLOSE with `code` and closes the socket (at once if `abort`)."""
        if self.closing:
            return
        self.closing = True
        self.owner.core.disconnect(self.member)
        self.fragments = None
        transport = self.transport
        if not transport.is_close_frame_sent:
            transport.send_close(WSCloseCode(int(code)), reason.encode())
        transport.disconnect(graceful=not abort)

    def ping(self) -> None:
        if not self.closing:
            self.transport.send_ping()

    def ping_timed_out(self) -> None:
        if not self.closing:
            log.debug("heartbeat timeout: dropping %s", self.peer())
            self.owner.counters.heartbeat_timeouts += 1
            # A peer that does not answer pings does not read either: abort, do not wait.
            self.close(CloseCode.GOING_AWAY, "heartbeat timeout", abort=True)

    def unsent_bytes(self) -> int:
        return int(self.transport.underlying_transport.get_write_buffer_size())

    def peer(self) -> str:
        try:
            name = self.transport.underlying_transport.get_extra_info("peername")
        except Exception:
            return "?"
        return f"{name[0]}:{name[1]}" if name else "?"
