"""Starting real server processes for integration tests.

The server prints one line ``roomcast listening on http://HOST:PORT/`` on stdout once its socket
is bound; tests pass ``--port 0`` and read the port from that line, so they never race for ports.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

READY_LINE = re.compile(r"roomcast listening on (?P<scheme>https?)://(?P<host>[^:/]+):(?P<port>\d+)/")


@dataclass
class ServerProcess:
    proc: subprocess.Popen[str]
    host: str
    port: int
    output: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)  # held while bytes move
    decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace")
    )
    pump: threading.Thread | None = None
    scheme: str = "http"

    @property
    def http_url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"{'wss' if self.scheme == 'https' else 'ws'}://{self.host}:{self.port}/"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Signals the server and waits for it; returns its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        if self.pump is not None:
            self.pump.join(timeout)
        if self.proc.stdout is not None:
            with self.lock:  # not while _take reads from it
                self.proc.stdout.close()
        return self.proc.returncode

    def text(self) -> str:
        """Everything the server has written so far (stdout and stderr are merged), up to this
        call: what the pipe holds is taken first, so a line the server logged before a client
        saw what followed it is in the text (the pump thread alone could trail the socket)."""
        with self.lock:
            self._take()
            return "".join(self.output)

    def _take(self) -> bool:
        """Moves what the pipe holds into `output`, with `lock` held; False once it is at EOF.
        Bytes leave the pipe only under the lock, so none are ever between pipe and `output`
        while `text()` looks."""
        stdout = self.proc.stdout
        if stdout is None or stdout.closed:
            return False
        fd = stdout.fileno()
        while select.select([fd], [], [], 0)[0]:
            data = os.read(fd, 65536)
            if not data:
                return False
            self.output.append(self.decoder.decode(data))
        return True


# Ports for tests that must know theirs before the process binds (a restart on the same port,
# a proxy's config file). They come from below the kernel's ephemeral range (32768-60999 here), so
# no client socket and no `--port 0` server can take one between free_port and the bind; each
# pytest-xdist worker draws from its own slice, so two workers never hand out the same port.
_FIXED_PORTS = range(10000, 20000)  # + 10000 stays below 32768 too: Redis Cluster's bus ports
_fixed_port_cursor = 0


def _worker_slice() -> range:
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    workers = max(int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")), 1)
    size = len(_FIXED_PORTS) // workers
    start = _FIXED_PORTS.start + (worker % workers) * size
    return range(start, start + size)


def free_port(host: str = "127.0.0.1") -> int:
    """A port free now that nothing else in the test run will take; for tests that must know it
    before the process binds. Successive calls in one worker give different ports."""
    global _fixed_port_cursor
    ports = _worker_slice()
    if _fixed_port_cursor == 0:
        _fixed_port_cursor = os.getpid() % len(ports)  # runs in parallel checkouts start apart
    for _ in range(len(ports)):
        port = ports[_fixed_port_cursor % len(ports)]
        _fixed_port_cursor += 1
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free port in {ports}")


def start_server(
    *args: str,
    host: str = "127.0.0.1",
    port: int = 0,
    env: dict[str, str] | None = None,
    timeout: float = 15.0,
    preexec_fn: Callable[[], object] | None = None,
    command: list[str] | None = None,
) -> ServerProcess:
    """Starts ``python -m server`` (or `command`) and returns once it listens, or raises."""
    cmd = command or [sys.executable, "-m", "server", "--host", host, "--port", str(port)]
    cmd = [*cmd, *args]
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=full_env,
        preexec_fn=preexec_fn,  # noqa: PLW1509
    )
    server = ServerProcess(proc, host, 0)
    ready = threading.Event()

    def pump() -> None:
        # The server must never block on a full pipe, so the output is taken as it comes.
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        try:
            while True:
                select.select([fd], [], [])
                with server.lock:
                    alive = server._take()
                    match = None if ready.is_set() else READY_LINE.search("".join(server.output))
                if match:
                    server.host, server.port = match["host"], int(match["port"])
                    server.scheme = match["scheme"]
                    ready.set()
                if not alive:
                    break
        except (OSError, ValueError):
            pass  # the pipe was closed under us (stop() gave up waiting for this thread)
        ready.set()  # EOF: the process is gone

    server.pump = threading.Thread(target=pump, daemon=True)
    server.pump.start()
    if not ready.wait(timeout) or not server.port:
        server.stop(signal.SIGKILL)
        raise RuntimeError(f"server did not start: {cmd}\n{server.text()}")
    return server


@contextlib.contextmanager
def running_server(*args: str, **kwargs: object) -> Iterator[ServerProcess]:
    server = start_server(*args, **kwargs)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        server.stop()


def rss_kib(pid: int) -> int:
    """A process's resident memory, in KiB (from /proc)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


@dataclass(frozen=True)
class TcpSocket:
    """One IPv4 TCP socket of this machine, as /proc/net/tcp lists it."""

    local_port: int
    remote_port: int
    rx_queue: int  # bytes received and not yet read by its owner
    inode: str  # what /proc/<pid>/fd/<n> links to as socket:[inode]


def tcp_sockets() -> Iterator[TcpSocket]:
    """Every IPv4 TCP socket of this machine (/proc/net/tcp: addresses and queues in hex)."""
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            yield TcpSocket(
                local_port=int(fields[1].split(":")[1], 16),
                remote_port=int(fields[2].split(":")[1], 16),
                rx_queue=int(fields[4].split(":")[1], 16),
                inode=fields[9],
            )


def metric(server: ServerProcess, name: str) -> float:
    """One unlabelled sample of the server's /metrics."""
    with urllib.request.urlopen(server.http_url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    [value] = [line.split()[1] for line in text.splitlines() if line.startswith(name + " ")]
    return float(value)


def stop_process(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM, then SIGKILL if it has not exited within 10 s: a test's helper process gone."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
