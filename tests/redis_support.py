"""Real redis-server processes (standalone and a 3-shard cluster) for the scale-out tests."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field

from tests.support import free_port, stop_process

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")


def require_redis() -> tuple[str, str]:
    """The redis-server and redis-cli paths; a clear failure (never a skip) when missing."""
    if REDIS_SERVER is None or REDIS_CLI is None:
        raise RuntimeError(
            "redis-server/redis-cli not found: install the Debian package redis-server "
            "(scripts/ensure-system-packages.sh does)"
        )
    return REDIS_SERVER, REDIS_CLI


def ping(port: int) -> bool:
    _, cli = require_redis()
    result = subprocess.run(
        [cli, "-p", str(port), "ping"], capture_output=True, text=True, timeout=5
    )
    return result.stdout.strip() == "PONG"


def cli(port: int, *args: str, timeout: float = 10) -> str:
    _, path = require_redis()
    result = subprocess.run(
        [path, "-p", str(port), *args], capture_output=True, text=True, timeout=timeout
    )
    if result.returncode != 0:
        raise RuntimeError(f"redis-cli {args}: {result.stderr}{result.stdout}")
    return result.stdout


@dataclass
class RedisServer:
    port: int
    extra: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    workdir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="roomcast-redis-"))

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        server, _ = require_redis()
        self.proc = subprocess.Popen(
            [
                server, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", self.workdir, "--logfile", "redis.log",
                "--enable-debug-command", "local",  # DEBUG SLEEP: a stall, in the tests
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while not ping(self.port):
            if self.proc.poll() is not None:
                with open(os.path.join(self.workdir, "redis.log")) as log:
                    output = log.read()[-2000:]
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: {output}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {self.port} did not answer PING")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        self.proc = None

    def close(self) -> None:
        """Stops the server and removes its working directory."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


def start_redis(*extra: str, port: int | None = None) -> RedisServer:
    server = RedisServer(free_port() if port is None else port, list(extra))
    server.start()
    return server


def cluster_port() -> int:
    """A free port whose cluster-bus port (port + 10000) is valid and free too."""
    for _ in range(200):
        port = free_port()
        if port + 10000 > 65535:
            continue
        try:
            with socket.socket() as bus:
                bus.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a Redis Cluster node")


def start_cluster(shards: int = 3) -> list[RedisServer]:
    """`shards` masters, no replicas, slots spread by redis-cli --cluster create."""
    nodes: list[RedisServer] = []
    try:
        for _ in range(shards):
            nodes.append(
                start_redis(
                    "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                    "--cluster-node-timeout", "5000",
                    port=cluster_port(),
                )
            )
        cli(
            nodes[0].port, "--cluster", "create",
            *(f"127.0.0.1:{n.port}" for n in nodes), "--cluster-yes",
            timeout=40,  # it waits for the nodes' gossip to agree: 10 s was once too little
        )
        deadline = time.monotonic() + 20
        while not all("cluster_state:ok" in cli(n.port, "cluster", "info") for n in nodes):
            if time.monotonic() > deadline:
                raise RuntimeError("the Redis Cluster did not reach cluster_state:ok")
            time.sleep(0.1)
    except BaseException:
        for node in nodes:
            node.close()
        raise
    return nodes


class LosingProxy:
    """A TCP proxy in front of a redis-server that can lose an answer, for the one outage a
    stopped or killed Redis cannot produce on demand: a command that ran in Redis whose reply
    never reaches the node.

    ``arm(marker)``: the first command carrying `marker` is passed on to Redis; from then on
    nothing Redis sends on that connection (with ``mute_all``: on any connection) reaches the
    node, and `cut_after` seconds later every connection is closed and new ones are refused for
    `down` seconds. ``cut`` is set once that has happened."""

    def __init__(self, redis_port: int) -> None:
        self.redis_port = redis_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.sockets: list[socket.socket] = []
        self.marker: bytes | None = None
        self.mute_all = False
        self.losing: socket.socket | None = None  # the connection whose answers are lost
        self.refusing_until = 0.0
        self.cut = threading.Event()
        self.cut_after = 0.3
        self.down = 1.0
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def arm(self, marker: bytes, *, mute_all: bool) -> None:
        with self.lock:
            self.marker, self.mute_all = marker, mute_all

    def refuse(self, seconds: float) -> None:
        """Closes every connection and refuses new ones for `seconds`: the node behind this
        proxy reconnects no sooner, whatever Redis does meanwhile."""
        self.refusing_until = time.monotonic() + seconds
        self._close_all()

    def close(self) -> None:
        self.closed = True
        self.listener.close()
        self._close_all()

    def _accept(self) -> None:
        while True:
            try:
                node, _ = self.listener.accept()
            except OSError:
                return
            if self.closed or time.monotonic() < self.refusing_until:
                node.close()
                continue
            try:
                redis = socket.create_connection(("127.0.0.1", self.redis_port))
            except OSError:
                node.close()
                continue
            with self.lock:
                self.sockets += [node, redis]
            # close() may have run meanwhile, on another thread: mypy does not know that, and
            # keeps self.closed narrowed to False from the check above
            if self.closed:
                self._close_all()  # type: ignore[unreachable]
            threading.Thread(target=self._to_redis, args=(node, redis), daemon=True).start()
            threading.Thread(target=self._to_node, args=(redis, node), daemon=True).start()

    def _to_redis(self, node: socket.socket, redis: socket.socket) -> None:
        tail = b""
        while data := self._recv(node):
            with self.lock:
                marker = self.marker
                tripped = marker is not None and marker in tail + data
                if tripped:
                    self.marker, self.losing = None, node
            tail = data[-64:]
            self._send(redis, data)
            if tripped:
                threading.Timer(self.cut_after, self._cut).start()
        self._close(node, redis)

    def _to_node(self, redis: socket.socket, node: socket.socket) -> None:
        while data := self._recv(redis):
            with self.lock:
                lost = self.losing is not None and (self.mute_all or self.losing is node)
            if not lost:
                self._send(node, data)
        self._close(node, redis)

    def _cut(self) -> None:
        self.refusing_until = time.monotonic() + self.down
        self._close_all()
        with self.lock:
            self.losing = None
        self.cut.set()

    def _close_all(self) -> None:
        with self.lock:
            sockets, self.sockets = self.sockets, []
        self._close(*sockets)

    @staticmethod
    def _close(*sockets: socket.socket) -> None:
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    @staticmethod
    def _recv(sock: socket.socket) -> bytes:
        try:
            return sock.recv(65536)
        except OSError:
            return b""

    @staticmethod
    def _send(sock: socket.socket, data: bytes) -> None:
        with contextlib.suppress(OSError):
            sock.sendall(data)
