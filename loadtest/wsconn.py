"""One chat connection of a simulated user: websocket-client on a gevent-patched socket.

Locust monkey-patches the standard library with gevent before it imports the locustfile, so the
blocking calls of websocket-client (connect, send, recv) yield to other users instead of
blocking the process. Each connection gets one receiving greenlet; the user's own greenlet only
sends. Connect, join and send are reported as Locust requests of type ``WS``; connection
failures, server errors and unexpected closes as failed requests whose error text names the cause.
"""

from __future__ import annotations

import contextlib
import errno
import json
import re
import socket
import ssl
import struct
import time
from collections.abc import Callable
from typing import Any, cast
from urllib.parse import urlsplit

import gevent
import gevent.event
import websocket
from websocket import ABNF

from loadtest.fanout import FanoutTracker, parse_stamp
from loadtest.resume import SeqTracker
from loadtest.rooms import RoomDirectory

IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
CHAT_PREFIX = b'{"type":"chat"'
HISTORY_PREFIX = b'{"type":"history"'
SEQ_KEY = b'"seq":'
MARK = re.compile(rb'"text":"#(\d+) ')  # a storm publisher's numbered chat (resume.text_mark)
LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on with 0 s: close() sends an RST

# fire(name, response_time_ms, response_length, exception_or_None)
Fire = Callable[[str, float, int, Exception | None], None]


class ConnectFailed(Exception):
    """TCP connect or WebSocket handshake failed; the text names the cause (errno, status)."""


class JoinFailed(Exception):
    pass


class ConnectionClosed(Exception):
    """The server closed the connection, or it broke, while the user still wanted it."""


class ServerError(Exception):
    """The server answered with an ``error`` message."""


def describe(exc: BaseException) -> str:
    """A short, stable cause (Locust groups failures by their text)."""
    if isinstance(exc, websocket.WebSocketBadStatusException):
        return f"handshake status {exc.status_code}"
    if isinstance(exc, (socket.timeout, TimeoutError, websocket.WebSocketTimeoutException)):
        return "timeout"
    if isinstance(exc, OSError) and exc.errno:
        return f"{type(exc).__name__} {errno.errorcode.get(exc.errno, exc.errno)}"
    return type(exc).__name__


class Target:
    """A parsed ``ws://host:port/path`` with its resolved address."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss"):
            raise ValueError(f"host must be a ws:// or wss:// URL, not {url!r}")
        self.url = url
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if parts.scheme == "wss" else 80)
        self.secure = parts.scheme == "wss"
        infos = socket.getaddrinfo(self.host, self.port, socket.AF_INET, socket.SOCK_STREAM)
        self.address = cast(tuple[str, int], infos[0][4][:2])  # AF_INET: (host, port)


class ChatConnection:
    """Connect, join, chat, leave; the receiving greenlet feeds the fan-out tracker."""

    def __init__(
        self,
        *,
        member: int,
        username: str,
        target: Target,
        source_address: str | None,
        fire: Fire,
        tracker: FanoutTracker,
        directory: RoomDirectory,
        timeout: float,
        on_held: Callable[[int], None],
        seq_tracker: SeqTracker | None = None,
    ) -> None:
        self.member = member
        # resume users: every chat's seq, the history answers and the welcome's position
        self.seq_tracker = seq_tracker
        self.username = username
        self.target = target
        self.source_address = source_address
        self._fire = fire
        self._tracker = tracker
        self._directory = directory
        self._timeout = timeout
        self._on_held = on_held
        self.ws: websocket.WebSocket | None = None
        self.room: str | None = None
        self.joined = False
        self.closing = False
        self._receiver: gevent.Greenlet[[websocket.WebSocket], None] | None = None
        self._join_ack: gevent.event.Event | None = None
        # time.time() at which the latest join's `history` answer and welcome were read (None:
        # not yet), taken by the receiving greenlet (the reconnect storm's figures)
        self.history_at: float | None = None
        self.welcomed_at: float | None = None

    @property
    def alive(self) -> bool:
        return self.ws is not None and self._receiver is not None and not self._receiver.dead

    # -- connect / close -------------------------------------------------------------------------
    def _open_socket(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.source_address:
                # Bind the address only; the port is picked at connect() time per destination,
                # so each source address offers the whole ephemeral range to each server port.
                sock.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                sock.bind((self.source_address, 0))
            sock.settimeout(self._timeout)
            sock.connect(self.target.address)
            if self.target.secure:
                context = ssl.create_default_context()
                return context.wrap_socket(sock, server_hostname=self.target.host)
        except BaseException:
            sock.close()
            raise
        return sock

    def connect(self) -> bool:
        start = time.perf_counter()
        sock: socket.socket | None = None
        try:
            sock = self._open_socket()
            ws = websocket.create_connection(
                self.target.url,
                socket=sock,
                timeout=self._timeout,
                skip_utf8_validation=True,  # the pure-Python validator costs more than the test
                enable_multithread=True,
            )
            ws.settimeout(None)
        except Exception as exc:
            if sock is not None:
                sock.close()
            elapsed = (time.perf_counter() - start) * 1000.0
            self._fire("connect", elapsed, 0, ConnectFailed(describe(exc)))
            return False
        self._fire("connect", (time.perf_counter() - start) * 1000.0, 0, None)
        self.ws = ws
        self.closing = False
        self._receiver = gevent.spawn(self._receive_loop, ws)
        return True

    def close(self) -> None:
        """Deliberate close (the user leaves or stops): not a failure."""
        ws, receiver = self.ws, self._receiver
        if ws is None:
            return
        self.closing = True
        self._forget_room()
        with contextlib.suppress(Exception):  # the socket may be gone already; we close anyway
            ws.send_close(websocket.STATUS_NORMAL)
        if receiver is not None and not receiver.dead:
            receiver.join(timeout=2.0)
            if not receiver.dead:
                receiver.kill(block=False)
        ws.shutdown()  # type: ignore[no-untyped-call]  # websocket-client leaves it unannotated
        self.ws = None

    def abort(self) -> None:
        """The connection dies (an RST, no CLOSE), as when a network goes away: not a failure."""
        ws, receiver = self.ws, self._receiver
        if ws is None:
            return
        self.closing = True
        self._forget_room()
        assert ws.sock is not None  # a connected WebSocket has its socket until shutdown()
        with contextlib.suppress(OSError):
            ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
        with contextlib.suppress(OSError):
            ws.sock.close()
        if receiver is not None and not receiver.dead:
            receiver.kill(block=False)
        self.ws = None

    # -- protocol --------------------------------------------------------------------------------
    def _send_json(self, payload: dict[str, Any]) -> int:
        assert self.ws is not None
        data = json.dumps(payload, separators=(",", ":"))
        self.ws.send(data)
        return len(data)

    def join(self, room: str, since: dict[str, Any] | None = None) -> bool:
        """Joins ``room`` (with ``since``: resumes from that position) and waits for the
        welcome; reported as ``join``."""
        if self.ws is None:
            return False
        if self.room is not None:
            self._forget_room()
        self._join_ack = gevent.event.Event()
        self.room = room
        self.history_at = self.welcomed_at = None
        start = time.perf_counter()
        exc: Exception | None = None
        payload: dict[str, Any] = {"type": "join", "room": room, "username": self.username}
        if since is not None:
            payload["since"] = since
        try:
            length = self._send_json(payload)
            self._join_ack.wait(self._timeout)
            if not (self.joined and self.room == room):
                exc = JoinFailed("timeout" if self.alive else "connection closed")
        except Exception as error:
            exc, length = JoinFailed(describe(error)), 0
        elapsed = (time.perf_counter() - start) * 1000.0
        self._fire("join", elapsed, length, exc)
        if exc is not None:
            if not self.joined:
                self.room = None
            return False
        return True

    def leave(self) -> None:
        if self.ws is None or self.room is None:
            return
        self._forget_room()
        try:
            self._send_json({"type": "leave"})
        except Exception as error:
            self._fire("leave", 0.0, 0, ConnectionClosed(describe(error)))

    def chat(self, text: str) -> bool:
        if self.ws is None:
            return False
        start = time.perf_counter()
        try:
            length = self._send_json({"type": "chat", "text": text})
        except Exception as error:
            self._fire("send", (time.perf_counter() - start) * 1000.0, 0,
                       ConnectionClosed(describe(error)))
            return False
        self._fire("send", (time.perf_counter() - start) * 1000.0, length, None)
        return True

    def _forget_room(self) -> None:
        if self.room is not None:
            self._directory.left(self.room, self.member)
            self._tracker.member_gone(self.member, self.room)
        if self.joined:
            self.joined = False
            self._on_held(-1)
        self.room = None

    # -- receiving -------------------------------------------------------------------------------
    def _receive_loop(self, ws: websocket.WebSocket) -> None:
        """Reads frames straight off the socket, many per recv() call.

        websocket-client's own reader makes two or three recv() calls per frame; in a big room a
        load generator receives tens of thousands of frames per second, so that would make the
        generator, not the server, the bottleneck. Server frames are never masked, which keeps
        this parser short. websocket-client still does the handshake and all sending.
        """
        sock = ws.sock
        buf = bytearray()
        pos = 0
        fragments: list[bytes] = []
        try:
            assert sock is not None  # connect() hands over a connected WebSocket
            while True:
                chunk = sock.recv(262144)
                if not chunk:
                    raise ConnectionResetError(errno.ECONNRESET, "EOF")
                if pos:
                    del buf[:pos]
                    pos = 0
                buf += chunk
                end = len(buf)
                while end - pos >= 2:
                    b0, b1 = buf[pos], buf[pos + 1]
                    length = b1 & 0x7F
                    head = 2
                    if length == 126:
                        if end - pos < 4:
                            break
                        length = int.from_bytes(buf[pos + 2:pos + 4], "big")
                        head = 4
                    elif length == 127:
                        if end - pos < 10:
                            break
                        length = int.from_bytes(buf[pos + 2:pos + 10], "big")
                        head = 10
                    if b1 & 0x80:
                        head += 4  # a masked server frame is a protocol error; skip the key
                    if end - pos < head + length:
                        break
                    payload = bytes(buf[pos + head:pos + head + length])
                    pos += head + length
                    opcode = b0 & 0x0F
                    if opcode in (ABNF.OPCODE_TEXT, ABNF.OPCODE_BINARY, ABNF.OPCODE_CONT):
                        fragments.append(payload)
                        if b0 & 0x80:  # FIN
                            data = fragments[0] if len(fragments) == 1 else b"".join(fragments)
                            fragments = []
                            self._handle(data)
                    elif opcode == ABNF.OPCODE_PING:
                        ws.pong(payload)
                    elif opcode == ABNF.OPCODE_CLOSE:
                        if not self.closing:
                            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                            self._lost(f"closed by server, code {code}")
                            with contextlib.suppress(Exception):
                                ws.send_close(websocket.STATUS_NORMAL)
                        return
        except Exception as error:
            if not self.closing:
                self._lost(f"connection lost: {describe(error)}")
        finally:
            if not self.closing:
                self._forget_room()

    def _lost(self, cause: str) -> None:
        self._fire("closed", 0.0, 0, ConnectionClosed(cause))
        if self._join_ack is not None:
            self._join_ack.set()  # wake a pending join; it sees the connection is gone

    def _handle(self, data: bytes) -> None:
        now = time.time()
        seqs = self.seq_tracker
        if seqs is not None:
            if data.startswith(HISTORY_PREFIX):
                self.history_at = now
                try:
                    seqs.history(json.loads(data))
                except ValueError:
                    self._fire("receive", 0.0, len(data), ServerError("invalid JSON from server"))
                return
            if data.startswith(CHAT_PREFIX):
                i = data.rfind(SEQ_KEY)
                if i != -1:
                    mark = MARK.search(data) if seqs.marks else None
                    with contextlib.suppress(ValueError):
                        seqs.chat(int(data[i + len(SEQ_KEY):-1]), "live",
                                  int(mark[1]) if mark is not None else None)
        if b'"users"' not in data and b'"lt1 ' not in data and b'"error"' not in data:
            return  # somebody else's join or leave notice, or an unstamped chat: nothing to do
        try:
            message = json.loads(data)
        except ValueError:
            self._fire("receive", 0.0, len(data), ServerError("invalid JSON from server"))
            return
        kind = message.get("type")
        if kind == "chat":
            text = message.get("text")
            stamped = parse_stamp(text) if isinstance(text, str) else None
            if stamped is not None:
                self._tracker.received(stamped[0], stamped[1], self.member, len(data), now)
        elif kind == "system":
            if (
                "users" in message
                and message.get("event") == "join"
                and message.get("username") == self.username
                and message.get("room") == self.room
                and self._join_ack is not None
                and not self._join_ack.is_set()
            ):
                if seqs is not None:
                    epoch, seq = message.get("epoch"), message.get("seq")
                    seqs.welcome(epoch if isinstance(epoch, str) else None,
                                 seq if isinstance(seq, int) else None)
                self.joined = True
                self.welcomed_at = now
                self._on_held(1)
                assert self.room is not None  # join() set it before it sent the join
                self._directory.joined(self.room, self.member, now)
                self._join_ack.set()
        elif kind == "error":
            self._fire("receive", 0.0, len(data), ServerError(str(message.get("code"))))
