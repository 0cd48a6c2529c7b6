"""Starting the servers under test (roomcast and its peers) the same way, and reading their costs.

Every server is a separate process started from a command line, pinned with ``taskset`` to the
server CPU (when the machine has two or more), given the same file-descriptor limit, and it
prints ``roomcast listening on http://HOST:PORT/`` once bound. CPU time and RSS are read from
``/proc`` for the whole process tree (the server and every descendant).
"""

from __future__ import annotations

import os
import re
import resource
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
READY_LINE = re.compile(r"roomcast listening on http://(?P<host>[^:/]+):(?P<port>\d+)/")
FD_LIMIT = 20_000
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class ServerKind:
    name: str
    label: str
    argv: tuple[str, ...]  # without --host/--port
    # the Node peers need their node_modules: (peer directory, module that must be installed)
    node_module: tuple[str, str] | None = None
    metrics: bool = False  # serves Prometheus text at /metrics (roomcast)

    def command(self, host: str, port: int = 0) -> list[str]:
        return [*self.argv, "--host", host, "--port", str(port)]


# Limits a benchmark's publishers would trip (they send thousands of chats a second), off.
ROOMCAST_ARGV = (
    sys.executable, "-m", "server", "--rate-limit", "0", "--max-frames-per-second", "0",
    "--log-level", "warning", "--ping-interval", "600",
)

SERVER_KINDS: dict[str, ServerKind] = {
    "roomcast": ServerKind(
        "roomcast",
        "roomcast (uvloop + picows + msgspec)",
        ROOMCAST_ARGV,
        metrics=True,
    ),
    # the same server with room history off: what history costs, measured beside it
    "roomcast-nohistory": ServerKind(
        "roomcast-nohistory",
        "roomcast with room history off (--history-size 0)",
        (*ROOMCAST_ARGV, "--history-size", "0"),
        metrics=True,
    ),
    "node_ws": ServerKind(
        "node_ws",
        "Node.js ws peer",
        ("node", str(ROOT / "bench" / "peers" / "node_ws" / "server.js")),
        node_module=("node_ws", "ws"),
    ),
    "uws": ServerKind(
        "uws",
        "uWebSockets.js peer (C++, native pub/sub)",
        ("node", str(ROOT / "bench" / "peers" / "uws" / "server.js")),
        node_module=("uws", "uwebsockets"),
    ),
    "py_websockets": ServerKind(
        "py_websockets",
        "Python websockets peer",
        (sys.executable, str(ROOT / "bench" / "peers" / "py_websockets" / "server.py")),
    ),
}
OURS = "roomcast"
# Scheduling priority of servers and driver: raised above the machine's other work (when allowed)
# so that neighbours disturb the measurements less; the same for every server.
NICE = {"value": -10}


def nice_prefix() -> list[str]:
    value = NICE["value"]
    if value == 0 or (value < 0 and os.geteuid() != 0) or not shutil.which("nice"):
        return []
    return ["nice", "-n", str(value)]


PEERS = ("uws", "node_ws", "py_websockets")
# Our own server run another way, beside it in the configurations that name them
# (``Config.variants``): compared with ours, never counted as a peer.
NOHISTORY = "roomcast-nohistory"
VARIANTS = (NOHISTORY,)


def cpu_split() -> tuple[list[int], list[int]]:
    """(server CPUs, driver CPUs). With one CPU both share it and nothing is pinned."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return cpus, cpus
    return cpus[:1], cpus[1:]


def _raise_fd_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = FD_LIMIT if hard == resource.RLIM_INFINITY else min(FD_LIMIT, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))


def _tree_pids(root: int) -> list[int]:
    """The root pid and all its living descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def _cpu_ticks(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return 0
    # fields after "comm": state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14)
    fields = stat[stat.rindex(b")") + 2 :].split()
    return sum(int(x) for x in fields[11:15])


def _oncpu_ns(pid: int) -> int:
    """Time the process's threads have run, in ns (``/proc/<pid>/task/*/schedstat``): the
    same CPU time as user+sys, without the 10 ms ticks of ``/proc/<pid>/stat``."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total


def oncpu_seconds(root: int, pids: list[int] | None = None) -> float:
    """On-CPU time of a living process tree, ns-precise (exited children are not in it).
    ``pids``: the tree found earlier (finding it reads every process in /proc, which takes
    milliseconds: too long for a window that short)."""
    return sum(_oncpu_ns(p) for p in (pids or _tree_pids(root))) / 1e9


def rss_of(pid: int) -> int:
    """Resident set size of one process in bytes (0 when it is gone)."""
    return _rss_bytes(pid)


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * PAGE_SIZE
    except OSError:
        return 0


@dataclass
class RunningServer:
    kind: ServerKind
    proc: subprocess.Popen[str]
    host: str
    port: int
    command: list[str]
    output: list[str] = field(default_factory=list)
    _pump: threading.Thread | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}/"

    @property
    def metrics_url(self) -> str | None:
        return f"http://{self.host}:{self.port}/metrics" if self.kind.metrics else None

    def tree_pids(self) -> list[int]:
        return _tree_pids(self.pid)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def cpu_seconds(self) -> float:
        """On-CPU time of the server's living process tree so far, ns-precise: a short or light
        window reads as what it cost, never as 0 or one 10 ms tick of ``/proc/<pid>/stat``."""
        return oncpu_seconds(self.pid)

    def oncpu_seconds(self, pids: list[int] | None = None) -> float:
        return oncpu_seconds(self.pid, pids)

    def rss_bytes(self) -> int:
        return sum(_rss_bytes(p) for p in _tree_pids(self.pid))

    def text(self) -> str:
        return "".join(self.output)

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        if self._pump is not None:
            self._pump.join(timeout)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode


def stop_noting(fig: dict[str, Any], label: str, process: RunningServer | RunningRedis,
                **stop: float) -> None:
    """Stops `process`; an exit other than a clean one or SIGTERM's is a problem of the run."""
    code = process.stop(**stop)
    if code not in (0, -15, None):
        fig.setdefault("problems", []).append(f"{label} exit code {code}")


def _pinned(cmd: list[str], cpus: list[int] | None) -> list[str]:
    """``cmd`` pinned to ``cpus`` with taskset (when that pins anything) and niced."""
    if cpus and len(cpus) < os.cpu_count() and shutil.which("taskset"):  # type: ignore[operator]
        cmd = ["taskset", "-c", ",".join(map(str, cpus)), *cmd]
    return [*nice_prefix(), *cmd]


def start_server(
    name: str, host: str = "127.0.0.1", cpus: list[int] | None = None, timeout: float = 20.0,
    extra: tuple[str, ...] | list[str] = (), *, port: int = 0,
) -> RunningServer:
    """Starts one server kind, pinned to ``cpus`` with taskset, and waits for its ready line.
    ``extra`` arguments go after the kind's own (e.g. ``--redis-url`` for roomcast); ``port`` 0
    lets the server pick one (it prints it)."""
    kind = SERVER_KINDS[name]
    cmd = _pinned([*kind.command(host, port), *extra], cpus)
    _raise_fd_limit()  # inherited by the server: every server gets the same limit
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    output: list[str] = []
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not sel.select(max(0.0, deadline - time.monotonic())):
                break
            line = proc.stdout.readline()
            if not line:
                break
            output.append(line)
            match = READY_LINE.search(line)
            if match:
                server = RunningServer(kind, proc, match["host"], int(match["port"]), cmd, output)
                server._pump = threading.Thread(target=_drain, args=(server,), daemon=True)
                server._pump.start()
                return server
    proc.kill()
    proc.wait(5)
    rest = proc.stdout.read() or ""
    raise RuntimeError(f"{name} did not start: {' '.join(cmd)}\n{''.join(output)}{rest}")


def _drain(server: RunningServer) -> None:
    assert server.proc.stdout is not None
    for line in server.proc.stdout:
        if len(server.output) < 2000:
            server.output.append(line)


# --------------------------------------------------------------------------- Redis (twonode)

REDIS_SERVER = shutil.which("redis-server")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def free_port_below_ephemeral(host: str = "127.0.0.1", low: int = 20_000) -> int:
    """A free port below the kernel's ephemeral range, for a server whose workers share it with
    SO_REUSEPORT (inside the range such binds can collide with the driver's own ports)."""
    try:
        first = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        first = 32_768
    for port in range(low + os.getpid() % 997, first):
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port between {low} and {first} on {host}")


def _redis_ping(port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class RunningRedis:
    proc: subprocess.Popen[bytes]
    port: int
    command: list[str]
    workdir: str

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def cpu_seconds(self) -> float:
        return sum(_cpu_ticks(p) for p in _tree_pids(self.pid)) / CLK_TCK

    def tree_pids(self) -> list[int]:
        return _tree_pids(self.pid)

    def oncpu_seconds(self, pids: list[int] | None = None) -> float:
        return oncpu_seconds(self.pid, pids)

    def info(self, section: str = "memory", timeout: float = 10.0) -> dict[str, str]:
        """``INFO <section>`` as a dict of its ``key:value`` lines."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            sock.sendall(f"INFO {section}\r\n".encode())
            buf = b""
            while b"\r\n" not in buf:
                chunk = sock.recv(65536)
                if not chunk:
                    raise RuntimeError("redis closed the connection during INFO")
                buf += chunk
            head, _, rest = buf.partition(b"\r\n")
            if not head.startswith(b"$"):
                raise RuntimeError(f"unexpected INFO reply from redis: {head[:80]!r}")
            size = int(head[1:])
            while len(rest) < size:
                chunk = sock.recv(65536)
                if not chunk:
                    raise RuntimeError("redis closed the connection during INFO")
                rest += chunk
        out = {}
        for line in rest[:size].decode().splitlines():
            key, sep, value = line.partition(":")
            if sep and not key.startswith("#"):
                out[key] = value
        return out

    def log_tail(self, n: int = 1000) -> str:
        try:
            return (Path(self.workdir) / "redis.log").read_text()[-n:]
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        shutil.rmtree(self.workdir, ignore_errors=True)
        return self.proc.returncode


def start_redis(cpus: list[int] | None = None, timeout: float = 10.0) -> RunningRedis:
    """``redis-server`` on a free loopback port, no persistence, pinned like the servers; ready
    once it answers PING. Fails with the reason when redis-server is not installed."""
    if REDIS_SERVER is None:
        raise RuntimeError(
            "redis-server not found: the twonode scenario needs it (Debian package "
            "redis-server; `make bench` installs it through scripts/ensure-system-packages.sh)"
        )
    workdir = tempfile.mkdtemp(prefix="bench-redis-")
    port = free_port()
    cmd = _pinned([REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                   "--appendonly", "no", "--dir", workdir, "--logfile", "redis.log"], cpus)
    proc = subprocess.Popen(cmd, cwd=workdir, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    redis = RunningRedis(proc, port, cmd, workdir)
    deadline = time.monotonic() + timeout
    while not _redis_ping(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = redis.log_tail()
            redis.stop()
            raise RuntimeError(f"redis-server did not start: {' '.join(cmd)}\n{tail}")
        time.sleep(0.05)
    return redis
