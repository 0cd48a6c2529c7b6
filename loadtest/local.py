"""This machine as a load-test run uses it: the processes a run starts here (roomcast servers,
a redis-server, Locust itself), how the CPUs are split between them, and what the reports say
about the machine and the run.

``LocalServer`` starts ``python -m server --host 127.0.0.1 --port 0 --rate-limit 0 --log-level
warning`` and reads the port from its ready line; ``LocalRedis`` a redis-server without
persistence on a free loopback port; ``run_locust`` Locust headless, with its reports under a
prefix. ``cpu_split`` pins the servers to the last CPU and Locust to the others. No gevent here:
Locust runs in a subprocess (run.py and compare.py drive these).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILE = ROOT / "loadtest" / "locustfile.py"
READY = "roomcast listening on http://"


def raise_fd_limit() -> None:
    """The open-files limit up to the hard limit (inherited by the servers and Locust)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def cpu_split() -> tuple[list[str], list[str]]:
    """taskset prefixes for (server, locust): the server on the last CPU, Locust on the rest."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2 or shutil.which("taskset") is None:
        return [], []
    rest = ",".join(str(c) for c in cpus[:-1])
    return ["taskset", "-c", str(cpus[-1])], ["taskset", "-c", rest]


class LocalServer:
    def __init__(self, prefix: list[str], extra: list[str], timeout: float = 20.0) -> None:
        cmd = [*prefix, sys.executable, "-m", "server", "--host", "127.0.0.1", "--port", "0",
               "--rate-limit", "0", "--log-level", "warning", *extra]
        self.cmd = cmd
        self.output: list[str] = []
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        self.url = ""
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while time.monotonic() < deadline and sel.select(deadline - time.monotonic()):
                line = self.proc.stdout.readline()
                if not line:
                    break
                self.output.append(line)
                if READY in line:
                    http = line.split(READY, 1)[1].strip().rstrip("/")
                    self.url = f"ws://{http}/"
                    break
        if not self.url:
            self.stop()
            raise RuntimeError(f"server did not start: {cmd}\n{''.join(self.output)}")
        self._pump = threading.Thread(target=self._drain, daemon=True)
        self._pump.start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)

    @property
    def pid(self) -> int:
        return self.proc.pid  # taskset execs the server, so the pid is the server's

    def stop(self) -> int | None:
        return stop_process(self.proc, 15)


def stop_process(proc: subprocess.Popen[Any], grace: float) -> int | None:
    """SIGTERM, then SIGKILL after `grace` seconds; the exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalRedis:
    """redis-server on a free loopback port, without persistence, for the storm's nodes."""

    def __init__(self, prefix: list[str], timeout: float = 10.0) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server not found: --nodes 2 needs it (Debian package "
                               "redis-server; scripts/ensure-system-packages.sh installs it)")
        self.workdir = tempfile.mkdtemp(prefix="loadtest-redis-")
        self.port = free_port()
        self.cmd = [*prefix, exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                    "--appendonly", "no", "--dir", self.workdir, "--logfile", "redis.log"]
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not self.ping():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = Path(self.workdir, "redis.log")
                tail = log.read_text()[-2000:] if log.exists() else ""
                self.stop()
                raise RuntimeError(f"redis-server did not start: {' '.join(self.cmd)}\n{tail}")
            time.sleep(0.05)

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid  # taskset execs redis-server

    def stop(self) -> int | None:
        code = stop_process(self.proc, 10)
        shutil.rmtree(self.workdir, ignore_errors=True)
        return code


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    python = platform.python_version()
    return f"{os.cpu_count()} x {model}, Linux {platform.release()}, Python {python}"


def command_text(argv: list[str] | None) -> str:
    if argv is None and len(sys.argv) == 1:
        return "make loadtest"
    return "python -m loadtest.run " + " ".join(sys.argv[1:] if argv is None else argv)


def load_text(before: float, after: float) -> str:
    return (f"Load average (1 min) {before:.1f} before and {after:.1f} after the run on "
            f"{os.cpu_count()} CPUs (the server and Locust both run here, so other work on the "
            "machine shows in the figures).")


def run_locust(args: argparse.Namespace, *, scenario: str, host: str, server_pid: int,
               prefix: str, locust_prefix: list[str], extra: list[str]) -> int:
    """Locust headless, its reports under ``prefix``; returns its exit code."""
    if args.processes != 1:
        locust_prefix = []
    cmd = [
        *locust_prefix, sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
        "--host", host, "--users", str(args.users), "--spawn-rate", str(args.spawn_rate),
        "--run-time", args.run_time, "--stop-timeout", "10",
        "--csv", prefix, "--csv-full-history", "--html", f"{prefix}.html", "--only-summary",
        "--server-pid", str(server_pid), "--server-stats", args.server_stats,
    ]
    if args.processes != 1:
        cmd += ["--processes", str(args.processes)]
    cmd += [*extra, *args.locust_args]
    env = {**os.environ, "SCENARIO": scenario, "PYTHONUNBUFFERED": "1"}
    print("loadtest: " + " ".join(cmd), flush=True)
    return subprocess.call(cmd, cwd=ROOT, env=env)


def clean(out: Path, prefix: str) -> None:
    for old in out.glob(f"{prefix}_*.csv"):
        old.unlink()

