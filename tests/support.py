"""Starting real server processes for integration tests.

The server prints one line ``roomcast listening on http://HOST:PORT/`` on stdout once its socket
is bound; tests pass ``--port 0`` and read the port from that line, so they never race for ports.
"""

from __future__ import annotations

import contextlib
import os
import re
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
    grown: threading.Condition = field(default_factory=threading.Condition)  # a line came
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
            self.proc.stdout.close()
        return self.proc.returncode

    def text(self) -> str:
        """Everything the server has written so far (stdout and stderr are merged)."""
        return "".join(self.output)

    def wait_for_text(self, needle: str, timeout: float = 10.0) -> bool:
        """Whether `needle` is in the output within `timeout` seconds. For what the server logs
        next to what a client is told: the log reaches the test through a pipe and a thread, so
        it may trail the socket (from async code: ``await asyncio.to_thread(...)``)."""
        with self.grown:
            return self.grown.wait_for(
                lambda: needle in self.text() or self.proc.poll() is not None, timeout
            ) and needle in self.text()


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago; only for tests that must restart on the same port."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


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
        assert proc.stdout is not None
        for line in proc.stdout:
            with server.grown:
                server.output.append(line)
                server.grown.notify_all()
            match = READY_LINE.search(line)
            if match and not ready.is_set():
                server.host, server.port = match["host"], int(match["port"])
                server.scheme = match["scheme"]
                ready.set()
        ready.set()  # EOF: the process is gone
        with server.grown:
            server.grown.notify_all()

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
