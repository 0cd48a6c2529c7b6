"""The server: wires the parts together once (``build``), routes requests, owns the connections.

``build`` is the one place that constructs things from the settings: the counters and the
``ServerState`` metrics read, the chat core and its broker (in-process, or Redis with
``--redis-url``), the upgrade gate, the static site and the metrics. ``App`` then routes each
request (an upgrade goes through the gate, anything else to the site), keeps the list of open
connections and runs the core's flush once per event-loop tick; ``serve`` runs it until
SIGTERM/SIGINT and drains.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import signal
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from . import httpclient
from .acceptor import Acceptor, websocket_protocol_factory
from .broker import LocalBroker
from .config import WORKER_OF, Config
from .connection import Connection, EchoConnection
from .core import ChatCore
from .front import Front
from .gate import Admitted, Gate, Refused
from .heartbeat import Heartbeat
from .history import History
from .http import NOT_FOUND, Response, Route, StaticSite
from .http1 import Request
from .listening import bound_socket, url_host
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import Metrics, Timings
from .protocol import CloseCode
from .retention import Retention
from .settings import Settings
from .state import Counters, RefusalReason, ServerState

if TYPE_CHECKING:
    from .redis.broker import RedisBroker

log = logging.getLogger("roomcast")


class App:
    """Routes requests, owns the connections, runs the per-tick flush and drops slow consumers."""

    retention: Retention | None = None  # the single-node history's timer and file (build())

    def __init__(
        self,
        config: Config,
        loop: asyncio.AbstractEventLoop,
        counters: Counters,
        gate: Gate,
        site: StaticSite,
    ) -> None:
        self.config = config
        self.loop = loop
        self.counters = counters
        self.gate = gate
        self.site = site
        self._echo_path = config.echo_path
        self.max_message_bytes = config.max_message_bytes
        self.max_buffered_bytes = config.max_buffered_bytes
        self.frame_budget = config.max_frames_per_second
        self.close_grace = config.ping_timeout
        self.connections: list[Connection] = []
        self.slow: set[Connection] = set()  # connections with unsent bytes waiting
        timings = Timings()
        self.core = ChatCore(
            config, self.request_flush, counters=counters,
            delayed=timings.delayed,
        )
        self.state = ServerState(counters, self.connections, self.core.rooms, self.slow)
        self.metrics = Metrics(self.state, timings)
        self.heartbeat = Heartbeat(
            loop, lambda: self.connections, config.ping_interval, config.ping_timeout
        )
        self.acceptor: Acceptor | None = None
        self.broker: RedisBroker | None = None
        self._all_gone = asyncio.Event()
        self._cut_short = asyncio.Event()  # a second signal: stop waiting for the drain
        self._flush_seconds = timings.flush
        self.handshake_timeout = config.handshake_timeout
        self._websocket_protocol = websocket_protocol_factory(
            _quiet_picows(), max_frame_size=config.max_message_bytes
        )
        supervisor = os.environ.get(WORKER_OF)
        if supervisor:  # a --workers worker: the public /metrics is the whole server's
            site.routes["/metrics"] = lambda request: merged_metrics(supervisor)
        elif not config.metrics_listen:
            site.routes["/metrics"] = self.metrics_page
        site.routes["/readyz"] = self.readiness_page
        site.routes["/auth/check"] = self._auth_check

    # ---- requests (front.FrontOwner) ---------------------------------------------------------

    def begin(self, peer: str) -> Refused | None:
        return self.gate.begin(peer)

    def end(self, peer: str) -> None:
        self.gate.end(peer)

    def note(self, label: RefusalReason, text: str) -> None:
        self.gate.note(label, text)

    def may_linger(self, peer: str) -> bool:
        return self.gate.may_linger(peer)

    def lingered(self, peer: str) -> None:
        self.gate.lingered(peer)

    def respond(self, request: Request) -> Response | Awaitable[Response]:
        """A plain HTTP request: the page, health, readiness, metrics, the token check."""
        return self.site.respond(request)

    def upgrade(self, request: Request, peer: str) -> Refused | Admitted:
        if self.state.draining:
            return self.gate.refuse(RefusalReason.DRAINING, 503, "server is shutting down")
        return self.gate.check(
            request.target, request.headers, peer, len(self.connections), self.loop.time()
        )

    def listener(self, admitted: Admitted, request: Request) -> Connection:
        if self._echo_path and request.path == self._echo_path:
            return EchoConnection(self, admitted)
        return Connection(self, admitted)

    def websocket_protocol(self, listener_factory: Callable[[Any], Any]) -> Any:
        return self._websocket_protocol(listener_factory)

    def _auth_check(self, request: Request) -> Response:
        problem = self.gate.token_problem(request.target, request.headers)
        no_store = {"Cache-Control": "no-store"}
        if problem is None:
            return Response(200, b"ok\n", no_store)
        return Response(401, problem.encode() + b"\n", no_store)

    def metrics_page(self, request: Request) -> Response:
        return Response(200, self.metrics.render(), {"Content-Type": METRICS_CONTENT_TYPE})

    def readiness_page(self, request: Request) -> Response:
        if self.state.ready:
            return Response(200, b"ready\n")
        return Response(503, b"not ready\n")

    # ---- connections (connection.Owner) -------------------------------------------------------

    def attach(self, conn: Connection) -> None:
        conn.slot = len(self.connections)
        self.connections.append(conn)
        self.gate.opened(conn, conn.client_ip, conn.identity, counted=conn.counted)
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
        self.slow.discard(conn)
        self.gate.closed(conn, conn.client_ip)
        if self.state.draining and not connections:
            self._all_gone.set()
        if log.isEnabledFor(logging.DEBUG):
            log.debug("disconnected: %s", conn.peer())

    def paused(self, conn: Connection) -> None:
        self.slow.add(conn)

    def resumed(self, conn: Connection) -> None:
        self.slow.discard(conn)

    # ---- the per-tick flush -------------------------------------------------------------------

    def request_flush(self) -> None:
        """The core queued frames: flush them once, at the end of this event-loop tick."""
        self.loop.call_soon(self._flush_tick)

    def _flush_tick(self) -> None:
        started = time.perf_counter()
        self.core.flush()
        self._flush_seconds.observe(time.perf_counter() - started)

    # ---- lifecycle ----------------------------------------------------------------------------

    def started(self, acceptor: Acceptor) -> None:
        self.acceptor = acceptor
        self.state.accepting = True
        self.heartbeat.start()
        self.metrics.start_lag_probe(self.loop)
        self.gate.start(self.loop)
        if self.retention is not None:  # read back before the loop serves any client
            self.retention.start(self.loop)

    def linked(self, broker: RedisBroker) -> None:
        self.broker = broker
        self.state.broker = broker
        self.core.use_broker(broker)
        self.metrics.start_broker_probe(self.loop, broker)

    def cut_drain_short(self) -> None:
        """A second SIGTERM/SIGINT: `shutdown` stops waiting for the clients to go (it aborts
        the ones still open at once) and still saves the history."""
        self._cut_short.set()

    async def shutdown(self, code: CloseCode) -> None:
        """Stops accepting, closes every client with `code`, waits (bounded: --shutdown-timeout,
        or until ``cut_drain_short``) for them to go, then saves the history."""
        self.state.draining = True
        if self.acceptor is not None:
            self.acceptor.close()
        self.heartbeat.stop()
        self.metrics.stop()
        self.gate.stop()
        if self.retention is not None:
            self.retention.hold()  # the rooms the drain empties stay for the save
        self.core.flush()
        for conn in list(self.connections):
            conn.close(code, "server shutting down")
        if self.connections:
            waits = [
                asyncio.ensure_future(self._all_gone.wait()),
                asyncio.ensure_future(self._cut_short.wait()),
            ]
            await asyncio.wait(
                waits, timeout=self.config.shutdown_timeout, return_when=asyncio.FIRST_COMPLETED
            )
            for waiting in waits:
                waiting.cancel()
            if self.connections:
                why = "drain cut short" if self._cut_short.is_set() else "drain timed out"
                log.warning("%s: %d clients still open; aborting them", why, len(self.connections))
        for conn in list(self.connections):
            conn.transport.disconnect(graceful=False)
        if self.retention is not None:
            self.retention.finish()  # after the drain: everything delivered is in the file




async def merged_metrics(supervisor: str) -> Response:
    try:
        body = await httpclient.get(supervisor)
    except httpclient.FetchError as exc:
        log.warning("cannot get the merged metrics from the supervisor: %s", exc)
        return Response(503, b"metrics unavailable\n")
    return Response(200, body, {"Content-Type": METRICS_CONTENT_TYPE})


class Admin:
    """``--metrics-listen``: /metrics, /readyz and /healthz on an address of their own (keep it
    private: the public port then answers /metrics with 404). No WebSocket here."""

    def __init__(self, app: App) -> None:
        self._app = app
        self.loop = app.loop
        self.handshake_timeout = app.handshake_timeout
        self._routes: dict[str, Route] = {
            "/metrics": app.metrics_page,
            "/readyz": app.readiness_page,
            "/healthz": lambda request: Response(200, b"ok\n"),
        }

    def begin(self, peer: str) -> Refused | None:
        return None

    def end(self, peer: str) -> None:
        pass

    def may_linger(self, peer: str) -> bool:
        return True  # a private address: no one floods it

    def lingered(self, peer: str) -> None:
        pass

    def note(self, label: RefusalReason, text: str) -> None:
        self._app.note(label, text)

    def respond(self, request: Request) -> Response | Awaitable[Response]:
        route = self._routes.get(request.path)
        return route(request) if route is not None else NOT_FOUND

    def upgrade(self, request: Request, peer: str) -> Refused | Admitted:
        return Refused(404, b"no WebSocket here\n", {})

    def listener(self, admitted: Admitted, request: Request) -> Connection:
        raise AssertionError("the admin address never admits an upgrade")

    def websocket_protocol(self, listener_factory: Callable[[Any], Any]) -> Any:
        raise AssertionError("the admin address never admits an upgrade")


def build(settings: Settings, loop: asyncio.AbstractEventLoop) -> App:
    """Every part of a server, built once from the settings and handed what it needs."""
    config = settings.config
    counters = Counters()
    gate = Gate(config, settings.security, counters)
    app = App(config, loop, counters, gate, StaticSite())
    history = History.from_config(config)
    app.core.use_broker(LocalBroker(app.core, history))  # until (unless) Redis links this node
    if not config.redis_url:
        app.retention = Retention(history, config.history_file)
        app.state.history = history
    return app


def _quiet_picows() -> logging.LoggerAdapter[logging.Logger]:
    """picows logs every connection at INFO and peer protocol errors at ERROR: keep it quiet.

    A LoggerAdapter (not a Logger) also stops picows creating one Logger object per connection.
    """
    logger = logging.getLogger("picows.server")
    logger.setLevel(logging.CRITICAL)
    return logging.LoggerAdapter(logger, {})


def listen(app: App, tls: ssl.SSLContext | None = None) -> Acceptor:
    """Starts accepting on the configured address: every connection begins at a Front."""
    config = app.config
    sock = bound_socket(
        config.host, config.port, option="--host and --port", reuse_port=config.reuse_port
    )
    acceptor = Acceptor(
        app.loop, sock, lambda peer: Front(app, peer), app.counters, ssl_context=tls
    )
    acceptor.start()
    app.started(acceptor)
    return acceptor


async def serve(settings: Settings) -> int:
    config = settings.config
    loop = asyncio.get_running_loop()
    app = build(settings, loop)
    tls = settings.security.tls
    admin_sock = None
    if config.metrics_listen:
        # Bound before the listener starts, which reads (and deletes) the history file: a
        # refused bind must end the server with the saved history still on disk.
        admin_host, _, admin_port = config.metrics_listen.rpartition(":")
        admin_sock = bound_socket(
            admin_host.strip("[]"), int(admin_port), option="--metrics-listen"
        )
    acceptor = listen(app, tls)
    admin = None
    if admin_sock is not None:
        admin = Acceptor(loop, admin_sock, lambda peer: Front(Admin(app), peer), app.counters)
        admin.start()
        shown_host, shown_port = admin.address
        print(f"roomcast metrics on http://{url_host(shown_host)}:{shown_port}/metrics", flush=True)
    broker = None
    if config.redis_url:
        # Imported only here: a single node never loads redis-py (about 7 MB per process).
        from .redis.broker import RedisBroker  # noqa: PLC0415
        from .redis.broker import start as start_redis  # noqa: PLC0415

        broker = RedisBroker(app.core, config, app.counters)
        app.linked(broker)  # not ready until the link is up
        await start_redis(broker)
    host, port = acceptor.address
    http, ws = ("https", "wss") if tls else ("http", "ws")
    shown = url_host(host)
    print(f"roomcast listening on {http}://{shown}:{port}/", flush=True)
    log.info(
        "serving on %s://%s:%d (page at %s://%s:%d/), file-descriptor limit %d",
        ws, shown, port, http, shown, port, resource.getrlimit(resource.RLIMIT_NOFILE)[0],
    )

    stop = asyncio.Event()
    received: list[signal.Signals] = []

    def on_signal(sig: signal.Signals) -> None:
        received.append(sig)
        if len(received) == 1:
            stop.set()
            return
        # Another signal while shutting down means "stop waiting", not "die now": the
        # handlers stay installed until we return, so the history file is still written.
        log.warning("%s again: cutting the drain short", sig.name)
        app.cut_drain_short()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        await stop.wait()
        # SIGTERM is how service managers restart us: 1012 tells clients to come back.
        first = received[0]
        code = CloseCode.SERVICE_RESTART if first is signal.SIGTERM else CloseCode.GOING_AWAY
        log.info("%s: closing %d connections with %d", first.name, len(app.connections), code)
        await app.shutdown(code)
        if admin is not None:
            admin.close()
        if broker is not None:
            await broker.close()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("stopped")
    return 0
