"""Real redis-server processes (standalone and a 3-shard cluster) for the scale-out tests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

from tests.support import free_port

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


def cli(port: int, *args: str) -> str:
    _, path = require_redis()
    result = subprocess.run(
        [path, "-p", str(port), *args], capture_output=True, text=True, timeout=10
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
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
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
