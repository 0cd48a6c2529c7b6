"""One WebSocket client over picows: frames in, core calls, and every byte written to it counted.

picows parses frames; this listener reassembles fragmented messages, answers CLOSE (picows does
not), fails frames with reserved bits, turns complete messages into core calls and closes the
connection with the code the core or the reassembly asks for. ``on_ws_frame`` stays synchronous
and allocation-light: no task, future or timer per message.

Outgoing bytes, whoever produced them (room flushes, direct replies and errors, picows's own
pongs and pings), go one way: to the socket while nothing waits in the transport, and into this
connection's queue (``Outbox``) as soon as anything does (the transport's high-water mark is 0,
so "paused" means "the kernel did not take everything"). The queue is moved to the transport in
one write when it drains. Past ``--max-buffered-bytes`` of unsent data the client is a slow
consumer: its queue is discarded, CLOSE 4000 is written as its last frame, and the socket is
aborted only if it still has not read that within the grace time.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Protocol

from picows import WSFrame, WSListener, WSMsgType, WSTransport

from . import fastpath
from .core import ChatCore, Member
from .protocol import CloseCode, binary_frame, close_frame, close_reply, text_frame
from .reassembly import Fragments, Message, reassemble
from .state import Counters

if TYPE_CHECKING:
    from .gate import Admitted

log = logging.getLogger("roomcast")

_TEXT = WSMsgType.TEXT
_CONTINUATION = WSMsgType.CONTINUATION
_BINARY = WSMsgType.BINARY
_CLOSE = WSMsgType.CLOSE
_PING = WSMsgType.PING
_PONG = WSMsgType.PONG
_DATA = (_TEXT, _BINARY, _CONTINUATION)
_CLOSE_FRAME = 0x88  # first byte of an unfragmented CLOSE frame
_UNLIMITED = 1 << 62  # frames a connection may send when --max-frames-per-second is 0
# A connection no longer read (a flooder) never shows its answer to our CLOSE or its hang-up:
# waiting the usual grace would only hold its descriptor, and a shutdown's drain, for nothing. A
# second is time enough for a client that reads at all to read the CLOSE before the abort.
_UNREAD_CLOSE_GRACE = 1.0


class Owner(Protocol):
    """What a connection needs from the server that accepted it."""

    core: ChatCore
    counters: Counters
    loop: asyncio.AbstractEventLoop
    max_message_bytes: int
    max_buffered_bytes: int
    frame_budget: int  # --max-frames-per-second (0: no limit)
    close_grace: float  # seconds a closed client has to read its CLOSE before it is aborted

    def attach(self, conn: Connection) -> None: ...

    def detach(self, conn: Connection) -> None: ...

    def paused(self, conn: Connection) -> None: ...

    def resumed(self, conn: Connection) -> None: ...


class HeldClose:
    """picows's CLOSE for a protocol error, held until the frames sent before the error are in.

    `front`: the one frame picows parsed in front of the bad one has not come yet. picows hands
    it over right after writing its CLOSE, as the last frame of that read. Were the bad frame the
    first of its read, no frame is in front; the CLOSE goes out on the next loop tick, before
    any later read is handed over, except when a read that filled picows's buffer is followed in
    the same tick by another whose only frame is one sent after the error: that frame is then
    handled like any (our own checks all apply), which gives the peer nothing it could not have
    had by sending that frame before the bad one."""

    __slots__ = ("data", "front")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.front = True


class Outbox:
    """What waits for a connection whose transport holds unsent bytes."""

    __slots__ = ("dropped", "frames", "size")

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.size = 0
        self.dropped = False  # a slow consumer being dropped: nothing more is queued


def _direct_fd(raw: asyncio.BaseTransport) -> int:
    """The socket the fan-out may send() on directly, or -1 (TLS: bytes must be encrypted)."""
    if raw.get_extra_info("ssl_object") is not None:
        return -1
    sock = raw.get_extra_info("socket")
    return -1 if sock is None else int(sock.fileno())


class Connection(WSListener):
    """One WebSocket client. Holds the transport, the core's Member and reassembly state."""

    __slots__ = (
        "abort_timer",
        "awaiting_pong",
        "client_ip",
        "closing",
        "counted",
        "fragments",
        "heard",
        "identity",
        "member",
        "outbox",
        "owner",
        "picows_close",
        "slot",
        "transport",
    )

    def __init__(self, owner: Owner, admitted: Admitted) -> None:
        self.owner = owner
        self.client_ip = admitted.client_ip  # the address admission limits are counted against
        self.identity = admitted.identity  # from the token, when auth is on
        self.counted = admitted.counted  # its address slot was taken at accept
        self.heard = True
        self.awaiting_pong = False
        self.closing = False
        self.fragments: Fragments | None = None
        self.outbox: Outbox | None = None  # not None while the transport holds unsent bytes
        self.picows_close: HeldClose | None = None  # a CLOSE picows decided on, held a tick
        self.abort_timer: asyncio.TimerHandle | None = None
        self.slot = 0

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        raw = transport.underlying_transport
        # The connection itself is the member's writer and picows's (its __call__): no bound
        # method object per connection for either.
        member = self.member = Member(self)
        # --max-frames-per-second counts frames in runs of that many: `frames_left` of this run
        # are still allowed, and the run must not end less than a second after it began.
        member.frames_left = self.owner.frame_budget or _UNLIMITED
        member.frames_since = self.owner.loop.time()
        identity = self.identity
        if identity is not None:
            self.member.fixed_name = identity.name
            self.member.allowed_rooms = identity.rooms
        fastpath.adopt(transport, self)
        self.owner.attach(self)
        fd = _direct_fd(raw)
        # pause_writing as soon as anything waits: a TCP transport pauses above `high`, but
        # uvloop's TLS transport at or above it (high=0 would pause it after every write, and it
        # resumes only when it next looks, which a client that only listens never makes it do)
        raw.set_write_buffer_limits(high=0 if fd >= 0 else 1)
        if self.outbox is None:
            self.member.fd = fd

    # ---- frames in ----------------------------------------------------------------------------

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if self.closing:
            # Frames still in the read buffer, or arriving while we wait for the peer to hang
            # up: ignored, but its CLOSE ends the wait (both sides have sent theirs). Still
            # counted: picows parses each, and a peer flooding frames after our CLOSE (one bad
            # byte, then pings, until the grace time ends) would otherwise escape the budget.
            if frame.msg_type is _CLOSE:
                transport.disconnect(graceful=True)
                return
            frames_left = self.member.frames_left - 1
            self.member.frames_left = frames_left
            if not frames_left and self._too_many_frames():
                # No longer read: let go a second from now, as a flooder closed with 1008 is
                # (aborting at once would reset the connection and discard our unread CLOSE).
                if self.abort_timer is not None:
                    self.abort_timer.cancel()
                self.abort_timer = self.owner.loop.call_later(
                    _UNREAD_CLOSE_GRACE, self._abort_unread
                )
            return
        self.heard = True
        member = self.member
        frames_left = member.frames_left - 1
        member.frames_left = frames_left
        if not frames_left and self._too_many_frames():
            return
        try:
            held = self.picows_close
            if held is not None:
                # picows found a protocol error while parsing one frame ahead. The frame it
                # parsed before the bad one comes right after its CLOSE, as the last of that
                # read: it was sent before the error and is handled as usual (a CLOSE among
                # them answered as a CLOSE). Nothing after it is processed.
                if not (held.front and frame.last_in_buffer):
                    held.front = False
                    if frame.msg_type is _CLOSE:
                        self._answer_close(frame)
                    return
                held.front = False
            if frame.rsv1 or frame.rsv2 or frame.rsv3:
                # No extension is negotiated, so RFC 6455 section 5.2 requires failing.
                self.close(CloseCode.PROTOCOL_ERROR, "reserved bits set")
                return
            kind = frame.msg_type
            if (
                kind is _TEXT
                and frame.fin
                and self.fragments is None
                and frame.payload_size <= self.owner.max_message_bytes
            ):
                self.text(frame.get_payload_as_bytes())
            elif kind is _PONG:
                pass
            else:
                self._slow_path(kind, frame)
        except Exception:
            log.exception("internal error handling a frame from %s", self.peer())
            self.close(CloseCode.INTERNAL_ERROR, "internal error")

    def _too_many_frames(self) -> bool:
        """A run of --max-frames-per-second frames has ended: if it took less than a second,
        the client is closed with 1008 and nothing more it sends is read (every frame costs
        CPU, whatever it says, and a flood of tiny ones would starve every other client)."""
        owner = self.owner
        member = self.member
        now = owner.loop.time()
        if now - member.frames_since >= 1.0:
            member.frames_since = now
            member.frames_left = owner.frame_budget
            return False
        owner.counters.frame_floods += 1
        log.warning(
            "%s %s (%s): %d frames in under a second > --max-frames-per-second",
            "aborting" if self.closing else "closing",
            self.peer(),
            self.member.name,
            owner.frame_budget,
        )
        self.transport.underlying_transport.pause_reading()  # the rest is not even parsed
        self.close(CloseCode.POLICY_VIOLATION, "too many frames")
        return True

    def _slow_path(self, kind: WSMsgType, frame: WSFrame) -> None:
        if kind is _CLOSE:
            self._answer_close(frame)
        elif kind is _PING:
            # Answered here, not by picows, so that pings count against the frame budget too.
            self.transport.send_pong(frame.get_payload_as_bytes())
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
                self.binary(outcome.payload)
            else:
                self.text(outcome.payload)

    # ---- complete messages (what a kind of connection does with them) ------------------------

    def text(self, payload: bytes) -> None:
        code = self.owner.core.handle_text(self.member, payload)
        if code is not None:
            self.close(code, "invalid UTF-8 in text message")

    def binary(self, payload: bytes) -> None:
        self.owner.core.handle_binary(self.member)

    def _answer_close(self, frame: WSFrame) -> None:
        # picows reports code 0 both for an empty CLOSE and for one carrying 0: the size tells
        reply = close_reply(frame.get_close_code().value, frame.payload_size >= 2)
        self.close(reply, "", answering=True)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.member.fd = -1  # the socket is about to be closed and its number reused
        if not self.closing:
            self.closing = True
            self.owner.core.disconnect(self.member)
        self.outbox = None
        if self.abort_timer is not None:
            self.abort_timer.cancel()
            self.abort_timer = None
        self.owner.detach(self)

    # ---- bytes out ----------------------------------------------------------------------------

    def pause_writing(self) -> None:
        """The transport holds unsent bytes: from now on writes queue here, counted."""
        if self.outbox is not None or self.closing:
            return
        self.outbox = Outbox()
        self.member.fd = -1  # the fan-out must not send around what waits
        self.owner.paused(self)

    def resume_writing(self) -> None:
        """The transport is empty again: the queue goes to it in one write."""
        outbox = self.outbox
        if outbox is None:
            return
        self.outbox = None
        self.owner.resumed(self)
        raw = self.transport.underlying_transport
        if self.closing:
            return
        self.member.fd = _direct_fd(raw)
        if outbox.frames:
            raw.write(b"".join(outbox.frames))  # may pause again at once

    def __call__(self, data: bytes) -> None:
        """Every byte for this client goes through here: the core's (``member.write`` is this
        connection) and the frames picows writes itself (pongs, pings, its CLOSE)."""
        if self.closing:
            return  # our CLOSE is written (or queued first): nothing may follow it
        if data[0] == _CLOSE_FRAME:  # only picows writes one through here
            # picows answers a protocol error it finds while parsing ahead with a CLOSE of its
            # own, before the frames in front of it reached us: hold it for this tick, so that a
            # peer's CLOSE in front of it (RFC 6455 7.1.2: two CLOSE frames) is answered first.
            # Also, and above all, when writes queue: then it ends the connection all the same.
            if self.picows_close is None:
                self.picows_close = HeldClose(data)
                self.owner.loop.call_soon(self._send_picows_close)
            return
        outbox = self.outbox
        if outbox is not None:
            if not outbox.dropped:
                self._enqueue(outbox, data)
            return
        self.transport.underlying_transport.write(data)

    def rest(self, data: bytes) -> None:
        """What the kernel did not take of a fan-out ``send()`` (``fastpath.fanout``): to the
        transport as it is (which then pauses the connection: what follows queues here). Not
        through ``__call__``: a remainder starts anywhere in a frame, even on a 0x88 byte."""
        self.transport.underlying_transport.write(data)

    def _enqueue(self, outbox: Outbox, data: bytes) -> None:
        outbox.frames.append(data)
        outbox.size += len(data)
        if outbox.size > self.owner.max_buffered_bytes - self.unsent_bytes():
            self._overflow(outbox.size + self.unsent_bytes())

    def _overflow(self, unsent: int) -> None:
        """Too much waits for this client: it is dropped, once this tick's flush is over (the
        core may be iterating over its room right now)."""
        if self.outbox is not None:
            self.outbox.dropped = True
            self.outbox.frames = []
        owner = self.owner
        owner.counters.slow_consumers_dropped += 1
        log.warning(
            "dropping slow consumer %s (%s): %d bytes unsent > --max-buffered-bytes %d",
            self.peer(),
            self.member.name,
            unsent,
            owner.max_buffered_bytes,
        )
        owner.loop.call_soon(self.close, CloseCode.SLOW_CONSUMER, "slow consumer")

    def _send_picows_close(self) -> None:
        held = self.picows_close
        if self.closing or held is None:
            return  # we answered a CLOSE in front of the error: that answer stands
        self.closing = True
        self.owner.core.disconnect(self.member)
        self.member.fd = -1
        self.fragments = None
        raw = self.transport.underlying_transport
        outbox = self.outbox
        if outbox is not None and outbox.frames:
            raw.write(b"".join(outbox.frames))  # what was queued goes before the CLOSE
            outbox.frames = []
        raw.write(held.data)
        # picows disconnects on its own, gracefully: never done if the peer does not read
        self.abort_timer = self.owner.loop.call_later(self.owner.close_grace, self._abort_unread)

    # ---- closing ------------------------------------------------------------------------------

    def close(
        self, code: int, reason: str, *, abort: bool = False, answering: bool = False
    ) -> None:
        """Leaves the room, sends CLOSE with `code` as the last frame and closes the socket.

        `answering` a peer's CLOSE, the socket closes once our CLOSE is sent; with `abort`, at
        once. Otherwise we spoke first: the connection is half-closed once our CLOSE is sent and
        goes when the peer answers or hangs up, or is aborted after the grace time (a second
        if we no longer read it: its answer would never be seen). Half-closing
        and reading on (a lingering close) matters: a socket closed while the peer's bytes still
        arrive is answered with a TCP reset, and a reset makes the peer's kernel discard what it
        had not read yet, our CLOSE included.
        """
        if self.closing:
            return
        self.closing = True
        self.owner.core.disconnect(self.member)
        self.member.fd = -1
        self.fragments = None
        transport = self.transport
        raw = transport.underlying_transport
        read_on = raw.is_reading()  # asked before anything below closes the transport
        outbox = self.outbox
        if outbox is not None and outbox.frames and code != CloseCode.SLOW_CONSUMER:
            raw.write(b"".join(outbox.frames))  # what was queued goes before the CLOSE
            outbox.frames = []
        # Written by us, not picows: picows refuses to send once it has decided on a CLOSE of
        # its own, and that one (held back in __call__) is not sent now.
        raw.write(close_frame(int(code), reason))
        if abort:
            transport.disconnect(graceful=False)
            return
        if answering:
            transport.disconnect(graceful=True)
            return
        if raw.can_write_eof():
            raw.write_eof()  # FIN once everything is sent; frames read meanwhile are ignored
        else:
            transport.disconnect(graceful=True)  # TLS cannot half-close
        grace = self.owner.close_grace if read_on else _UNREAD_CLOSE_GRACE
        self.abort_timer = self.owner.loop.call_later(grace, self._abort_unread)

    def _abort_unread(self) -> None:
        self.abort_timer = None
        if not self.transport.is_disconnected:
            log.info("aborting %s: it did not hang up within the grace time", self.peer())
            self.transport.disconnect(graceful=False)

    def ping(self) -> None:
        if not self.closing:
            # Silent for a whole heartbeat interval: whatever a big message grew picows's read
            # buffer to is not needed now.
            fastpath.trim_read_buffer(self.transport.underlying_transport.get_protocol())
            self.transport.send_ping()

    def ping_timed_out(self) -> None:
        if not self.closing:
            log.debug("heartbeat timeout: dropping %s", self.peer())
            self.owner.counters.heartbeat_timeouts += 1
            # A peer that does not answer pings does not read either: abort, do not wait.
            self.close(CloseCode.GOING_AWAY, "heartbeat timeout", abort=True)

    def unsent_bytes(self) -> int:
        """Bytes the transport holds for this client (excluding the queue)."""
        return int(self.transport.underlying_transport.get_write_buffer_size())

    def peer(self) -> str:
        try:
            name = self.transport.underlying_transport.get_extra_info("peername")
        except Exception:
            return "?"
        return f"{name[0]}:{name[1]}" if name else "?"


class EchoConnection(Connection):
    """``--echo-path``: the compliance mode the Autobahn TestSuite drives. Every message comes
    back as it came, through the same frame, reassembly, UTF-8, size, write-accounting and close
    handling as a chat connection; nothing reaches the chat core."""

    __slots__ = ()

    def text(self, payload: bytes) -> None:
        try:
            payload.decode("utf-8")
        except UnicodeDecodeError:
            self.close(CloseCode.INVALID_TEXT, "invalid UTF-8 in text message")
            return
        self.member.write(text_frame(payload))

    def binary(self, payload: bytes) -> None:
        self.member.write(binary_frame(payload))
