"""The picows adapter: sockets, WebSocket duties picows leaves to us, plain HTTP, lifecycle.

Everything about chat lives in ``core``; this module turns frames into core calls and core writes
into socket writes. ``on_ws_frame`` stays synchronous and allocation-light: no task, future or
timer per message.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import signal
import ssl
import time
from typing import Any

from multidict import CIMultiDict
from picows import (
    WSCloseCode,
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
)

from .acceptor import Acceptor, listening_socket, picows_protocol_factory
from .admission import (
    Limits,
    OriginPolicy,
    client_address,
    handshake_problem,
    parse_networks,
)
from .auth import AuthError, Identity, Verifier, parse_algorithms
from .config import Config
from .core import ChatCore, Member
from .deadlines import Deadlines
from .heartbeat import Heartbeat
from .http import StaticSite
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import Metrics
from .protocol import CloseCode, close_reply
from .reassembly import Fragments, Message, reassemble
from .redis_broker import RedisBroker
from .redis_broker import attach as attach_redis

log = logging.getLogger("roomcast")

_NO_HEADERS: CIMultiDict[str] = CIMultiDict()
_TEXT = WSMsgType.TEXT
_CONTINUATION = WSMsgType.CONTINUATION
_BINARY = WSMsgType.BINARY
_CLOSE = WSMsgType.CLOSE
_PONG = WSMsgType.PONG
_DATA = (_TEXT, _BINARY, _CONTINUATION)


class Connection(WSListener):
    """One WebSocket client. Holds the transport, the core's Member and reassembly state."""

    __slots__ = (
        "app",
        "awaiting_pong",
        "client_ip",
        "closing",
        "fragments",
        "heard",
        "identity",
        "member",
        "slot",
        "transport",
    )

    def __init__(self, app: App) -> None:
        self.app = app
        self.heard = True
        self.awaiting_pong = False
        self.closing = False
        self.fragments: Fragments | None = None
        self.slot = 0
        self.client_ip = "?"  # the address admission limits are counted against
        self.identity: Identity | None = None  # from the token, when auth is on

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        # picows keeps the parsed upgrade request and our 101 response for the connection's
        # lifetime; their header tables (~1 KiB) are not needed once admitted.
        transport.request.headers = _NO_HEADERS
        transport.response.headers = _NO_HEADERS
        self.member = Member(transport.underlying_transport.write)
        if self.identity is not None:
            self.member.fixed_name = self.identity.name
            self.member.allowed_rooms = self.identity.rooms
        self.app.attach(self)

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
                code = self.app.core.handle_text(self.member, frame.get_payload_as_bytes())
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
                self.app.config.max_message_bytes,
            )
            if outcome is None:
                return
            if not isinstance(outcome, Message):
                self.close(outcome.code, outcome.reason)
            elif outcome.binary:
                self.app.core.handle_binary(self.member)
            else:
                code = self.app.core.handle_text(self.member, outcome.payload)
                if code is not None:
                    self.close(code, "invalid UTF-8 in text message")

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if not self.closing:
            self.closing = True
            self.app.core.disconnect(self.member)
        self.app.detach(self)

    def pause_writing(self) -> None:
        self.app.paused.add(self)

    def resume_writing(self) -> None:
        self.app.paused.discard(self)

    # ---- closing ------------------------------------------------------------------------------

    def close(self, code: int, reason: str, *, abort: bool = False) -> None:
        """Leaves the room, sends CLOSE with `code` and closes the socket (at once if `abort`)."""
        if self.closing:
            return
        self.closing = True
        self.app.core.disconnect(self.member)
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
            self.app.heartbeat_timeouts += 1
            # A peer that does not answer pings does not read either: abort, do not wait.
            self.close(CloseCode.GOING_AWAY, "heartbeat timeout", abort=True)

    def peer(self) -> str:
        try:
            name = self.transport.underlying_transport.get_extra_info("peername")
        except Exception:
            return "?"
        return f"{name[0]}:{name[1]}" if name else "?"


class App:
    """Routes requests, owns the connections, runs the per-tick flush and the heartbeat."""

    def __init__(self, config: Config, loop: asyncio.AbstractEventLoop) -> None:
        self.config = config
        self.loop = loop
        self.core = ChatCore(config, self._schedule_flush)
        self.site = StaticSite()
        self.connections: list[Connection] = []
        self.paused: set[Connection] = set()
        self.slow_consumers_dropped = 0
        self.heartbeat_timeouts = 0
        self.heartbeat = Heartbeat(
            loop, lambda: self.connections, config.ping_interval, config.ping_timeout
        )
        self.draining = False
        self.acceptor: Acceptor | None = None
        self.broker: RedisBroker | None = None
        self._all_gone = asyncio.Event()
        self.refused: collections.Counter[str] = collections.Counter()
        self.metrics = Metrics(self)
        self.site.routes["/metrics"] = self._metrics
        self.site.routes["/readyz"] = self._readyz
        self._flush_seconds = self.metrics.flush_duration

        self._init_admission(config)

    # ---- admission and authentication at the upgrade (docs/security.md) -----------------------

    def _init_admission(self, config: Config) -> None:
        self.verifier: Verifier | None = None
        if config.auth_enabled:
            public_key = ""
            if config.jwt_public_key:
                with open(config.jwt_public_key, encoding="utf-8") as file:
                    public_key = file.read()
            self.verifier = Verifier(
                secret=config.jwt_secret,
                public_key=public_key,
                algorithms=parse_algorithms(
                    config.jwt_algorithms,
                    has_secret=bool(config.jwt_secret),
                    has_public_key=bool(public_key),
                ),
                audience=config.jwt_audience,
                issuer=config.jwt_issuer,
                leeway=config.jwt_leeway,
                max_username_length=config.max_username_length,
            )
        self.origins = OriginPolicy.from_option(
            config.allowed_origins, allow_all=not config.auth_enabled
        )
        self.proxies = parse_networks(config.trusted_proxies)
        self.limits = Limits(
            max_connections=config.max_connections,
            max_per_ip=config.max_connections_per_ip,
            rate=config.handshake_rate,
            window=config.handshake_window,
        )
        self.expiry: Deadlines[Connection] = Deadlines(
            config.token_sweep_interval, self.loop.time()
        )
        self._expiry_timer: asyncio.TimerHandle | None = None
        self.tokens_expired = 0

    def admit(self, request: WSUpgradeRequest, peer: Any) -> Any:
        """Origin, limits, then the token: a refusal is an HTTP answer, before any WebSocket."""
        headers = request.headers
        problem = handshake_problem(headers)
        if problem is not None:
            return self.refuse("bad_request", 400, problem.encode() + b"\n")
        if not self.origins.allows(headers.get("origin"), headers.get("host")):
            return self.refuse("origin", 403, b"origin not allowed\n")
        address = peer[0] if isinstance(peer, tuple) and peer else "?"
        if self.proxies:
            address = client_address(address, headers.getall("x-forwarded-for", ()), self.proxies)
        refusal = self.limits.check(address, len(self.connections), self.loop.time())
        if refusal is not None:
            return self.refuse(
                refusal.label, refusal.status, refusal.reason.encode() + b"\n", refusal.headers
            )
        conn = Connection(self)
        conn.client_ip = address
        if self.verifier is None:
            return conn
        try:
            conn.identity, subprotocol = self.verifier.authenticate(
                request.path.decode("latin-1"), headers
            )
        except AuthError as exc:
            return self.refuse(
                "unauthorized",
                401,
                exc.reason.encode() + b"\n",
                {"WWW-Authenticate": 'Bearer realm="roomcast"'},
            )
        if subprotocol is None:
            return conn
        response = WSUpgradeResponse.create_101_response({"Sec-WebSocket-Protocol": subprotocol})
        return WSUpgradeResponseWithListener(response, conn)

    def start_token_sweep(self) -> None:
        if self.verifier is not None:
            self._expiry_timer = self.loop.call_later(
                self.config.token_sweep_interval, self._sweep_tokens
            )

    def _sweep_tokens(self) -> None:
        """One timer for every connection: closes those whose token expired (4001)."""
        self._expiry_timer = self.loop.call_later(
            self.config.token_sweep_interval, self._sweep_tokens
        )
        for conn in self.expiry.pop_due(self.loop.time()):
            if not conn.closing:
                self.tokens_expired += 1
                conn.close(CloseCode.TOKEN_EXPIRED, "token expired")

    # ---- connections --------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Taking traffic: started, not draining, and linked to Redis when one is configured."""
        broker_ok = self.broker is None or self.broker.up
        return self.acceptor is not None and not self.draining and broker_ok

    def route(self, request: WSUpgradeRequest, peer: Any = None) -> Any:
        if request.headers.get("upgrade", "").lower() == "websocket":
            if self.draining:
                return self.refuse("draining", 503, b"server is shutting down\n")
            return self.admit(request, peer)
        return WSUpgradeResponseWithListener(self.site.respond(request), None)

    def refuse(self, reason: str, status: int, body: bytes, headers: Any = None) -> Any:
        """Answers an upgrade with an HTTP error before any WebSocket exists; counted by reason."""
        self.refused[reason] += 1
        response = WSUpgradeResponse.create_error_response(status, body, headers)
        return WSUpgradeResponseWithListener(response, None)

    def _metrics(self) -> Any:
        return WSUpgradeResponse.create_ok_response(
            self.metrics.render(), {"Content-Type": METRICS_CONTENT_TYPE}
        )

    def _readyz(self) -> Any:
        if self.ready:
            return WSUpgradeResponse.create_ok_response(b"ready\n")
        return WSUpgradeResponse.create_error_response(503, b"not ready\n")

    def attach(self, conn: Connection) -> None:
        conn.slot = len(self.connections)
        self.connections.append(conn)
        self.limits.opened(conn.client_ip)
        identity = conn.identity
        if identity is not None and identity.expires_at is not None:
            left = identity.expires_at + self.config.jwt_leeway - time.time()
            self.expiry.add(conn, self.loop.time() + left)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("connected: client %s (peer %s)", conn.client_ip, conn.peer())

    def detach(self, conn: Connection) -> None:
        connections = self.connections
        index = conn.slot
        if index < len(connections) and connections[index] is conn:
            last = connections.pop()
            if last is not conn:
                connections[index] = last
                last.slot = index
        self.paused.discard(conn)
        self.limits.closed(conn.client_ip)
        if conn.identity is not None:
            self.expiry.discard(conn)
        if self.draining and not connections:
            self._all_gone.set()
        if log.isEnabledFor(logging.DEBUG):
            log.debug("disconnected: %s", conn.peer())

    # ---- the per-tick flush -------------------------------------------------------------------

    def _schedule_flush(self, flush: Any) -> None:
        # The core asks for its own flush; we run it inside _flush_tick, which also times it and
        # checks the slow consumers once per tick.
        self.loop.call_soon(self._flush_tick)

    def _flush_tick(self) -> None:
        started = time.perf_counter()
        self.core.flush()
        self._flush_seconds.observe(time.perf_counter() - started)
        if self.paused:
            self._drop_slow_consumers()

    def _drop_slow_consumers(self) -> None:
        limit = self.config.max_buffered_bytes
        for conn in list(self.paused):
            buffered = conn.transport.underlying_transport.get_write_buffer_size()
            if buffered > limit and not conn.closing:
                self.slow_consumers_dropped += 1
                log.warning(
                    "dropping slow consumer %s (%s): %d bytes unsent > --max-buffered-bytes %d",
                    conn.peer(),
                    conn.member.name,
                    buffered,
                    limit,
                )
                self.paused.discard(conn)
                conn.close(CloseCode.SLOW_CONSUMER, "slow consumer", abort=True)

    # ---- shutdown -----------------------------------------------------------------------------

    async def shutdown(self, code: CloseCode) -> None:
        """Stops accepting, closes every client with `code`, waits (bounded) for them to go."""
        self.draining = True
        if self.acceptor is not None:
            self.acceptor.close()
        self.heartbeat.stop()
        self.metrics.stop()
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
        self.core.flush()
        for conn in list(self.connections):
            conn.close(code, "server shutting down")
        if self.connections:
            try:
                await asyncio.wait_for(self._all_gone.wait(), self.config.shutdown_timeout)
            except TimeoutError:
                log.warning("%d clients still open; aborting them", len(self.connections))
        for conn in list(self.connections):
            conn.transport.disconnect(graceful=False)


def _tls_context(config: Config) -> ssl.SSLContext | None:
    if not config.certfile:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config.certfile, config.keyfile)
    return context


def _quiet_picows() -> logging.LoggerAdapter[logging.Logger]:
    """picows logs every connection at INFO and peer protocol errors at ERROR: keep it quiet.

    A LoggerAdapter (not a Logger) also stops picows creating one Logger object per connection.
    """
    logger = logging.getLogger("picows.server")
    logger.setLevel(logging.CRITICAL)
    return logging.LoggerAdapter(logger, {})


async def serve(config: Config) -> int:
    loop = asyncio.get_running_loop()
    app = App(config, loop)
    factory = picows_protocol_factory(
        app.route,
        _quiet_picows(),
        handshake_timeout=config.handshake_timeout,
        max_frame_size=config.max_message_bytes,
        read_buffer_init_size=2048,  # picows never allocates less
    )
    tls = _tls_context(config)
    sock = listening_socket(config.host, config.port, reuse_port=config.reuse_port)
    acceptor = Acceptor(loop, sock, factory, ssl_context=tls)
    acceptor.start()
    app.acceptor = acceptor
    broker = app.broker = await attach_redis(app.core, config)  # None without --redis-url
    host, port = acceptor.address
    http, ws = ("https", "wss") if tls else ("http", "ws")
    print(f"roomcast listening on {http}://{host}:{port}/", flush=True)
    log.info("serving on %s://%s:%d (page at %s://%s:%d/)", ws, host, port, http, host, port)
    app.heartbeat.start()
    app.metrics.start_lag_probe(loop)
    if broker is not None:
        app.metrics.start_broker_probe(loop, broker)
    app.start_token_sweep()

    stop = asyncio.Event()
    received: list[signal.Signals] = []

    def on_signal(sig: signal.Signals) -> None:
        received.append(sig)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    # SIGTERM is how service managers restart us: 1012 tells clients to come back.
    code = CloseCode.SERVICE_RESTART if received[0] is signal.SIGTERM else CloseCode.GOING_AWAY
    log.info("%s: closing %d connections with %d", received[0].name, len(app.connections), code)
    await app.shutdown(code)
    if broker is not None:
        await broker.close()
    log.info("stopped")
    return 0
