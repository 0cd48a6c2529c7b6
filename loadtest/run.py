"""Run a headless Locust swarm and write the reports (what ``make loadtest`` runs).

    python -m loadtest.run                          # start a local server, default swarm (~3 min)
    python -m loadtest.run --quick                  # 30 s, 300 users
    python -m loadtest.run --host ws://10.0.0.5:8080 --users 5000 --run-time 5m
    python -m loadtest.run -- --room-sizes 2000,20*50 --chat-interval 5   # extra Locust args

Without ``--host`` it starts ``python -m server --host 127.0.0.1 --port 0 --rate-limit 0`` (pinned
with taskset to the last CPU, and Locust to the others, when there are at least two), reads the
port from its ready line, samples its RSS and sockets during the run and stops it afterwards.
Locust runs in a subprocess; this module never imports gevent. Reports go to
``results/loadtest/<prefix>*`` and a summary between the markers of ``results/README.md``;
a ``--quick`` run writes them to ``results/quick/loadtest/`` and ``results/quick/README.md``
instead, so that the committed reference run's reports stay as they are, and prints the summary.
The exit code is Locust's (1 when any request failed).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import resource
import selectors
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from loadtest import report

ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILE = ROOT / "loadtest" / "locustfile.py"
READY = "roomcast listening on http://"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.run",
        description="Headless Locust swarm against roomcast; reports into results/loadtest/.",
        epilog="Arguments after '--' go to Locust unchanged (e.g. -- --room-sizes 500,10*40).",
    )
    parser.add_argument("--host", help="ws://HOST:PORT of a running server (default: start one)")
    parser.add_argument("--users", type=int, default=int(env.get("USERS", "12000")),
                        help="peak number of simulated users (env USERS; default 12000)")
    parser.add_argument("--spawn-rate", type=float, default=float(env.get("SPAWN_RATE", "200")),
                        help="users started per second (env SPAWN_RATE; default 200)")
    parser.add_argument("--run-time", default=env.get("DURATION", "3m"),
                        help="total run time, Locust syntax (env DURATION; default 3m)")
    parser.add_argument("--scenario", default=env.get("SCENARIO", "all"),
                        choices=["all", "capacity", "fanout", "swarm", "resume"],
                        help="user classes to run (env SCENARIO; default all)")
    parser.add_argument("--quick", action="store_true",
                        help="a short run: 300 users, 100/s, 30 s (overrides the three above)")
    parser.add_argument("--processes", type=int, default=1,
                        help="Locust processes on this machine (-1: one per CPU)")
    parser.add_argument("--out", type=Path, default=None,
                        help="report directory (default results/loadtest; with --quick "
                        "results/quick/loadtest)")
    parser.add_argument("--prefix", default="roomcast", help="report file prefix")
    parser.add_argument("--readme", type=Path, default=None,
                        help="README whose loadtest section gets the summary (default "
                        "results/README.md; with --quick results/quick/README.md)")
    parser.add_argument("--no-readme", action="store_true", help="leave the README alone")
    parser.add_argument("--server-pid", type=int, default=0,
                        help="pid of the (local) server given by --host, to sample its RSS")
    parser.add_argument("--server-stats", choices=("auto", "proc", "metrics"),
                        default=env.get("LOADTEST_SERVER_STATS", "auto"),
                        help="sample the server from /proc (local) or its /metrics "
                        "(default auto: /proc when it is a local process, else /metrics)")
    parser.add_argument("--server-arg", action="append", default=[],
                        help="extra argument for the local server (repeatable)")
    parser.add_argument("locust_args", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    results = ROOT / "results" / ("quick" if args.quick else "")
    if args.quick:
        args.users, args.spawn_rate, args.run_time = 300, 100.0, "30s"
    if args.out is None:
        args.out = results / "loadtest"
    if args.readme is None:
        args.readme = results / "README.md"
    return args


def _raise_fd_limit() -> None:
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
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _raise_fd_limit()  # inherited by the server and Locust
    args.out.mkdir(parents=True, exist_ok=True)
    prefix = str(args.out / args.prefix)
    for old in args.out.glob(f"{args.prefix}_*.csv"):
        old.unlink()
    server_prefix, locust_prefix = cpu_split() if not args.host else ([], [])
    server: LocalServer | None = None
    host, server_pid = args.host, args.server_pid
    if host is None:
        server = LocalServer(server_prefix, args.server_arg)
        host, server_pid = server.url, server.pid
        print(f"loadtest: started {' '.join(server.cmd)} -> {host} (pid {server_pid})", flush=True)
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
    cmd += args.locust_args
    env = {**os.environ, "SCENARIO": args.scenario, "PYTHONUNBUFFERED": "1"}
    print("loadtest: " + " ".join(cmd), flush=True)
    started = dt.datetime.now(dt.UTC)
    load_before = os.getloadavg()[0]
    try:
        code = subprocess.call(cmd, cwd=ROOT, env=env)
    finally:
        if server is not None:
            server_code = server.stop()
            print(f"loadtest: server exited with {server_code}", flush=True)
    if not Path(f"{prefix}_stats.csv").exists():
        print("loadtest: Locust wrote no stats; nothing to summarise", file=sys.stderr)
        return code or 1
    report.annotate_html(Path(f"{prefix}.html"), prefix)
    shape = (f"{args.users:,} users started at {args.spawn_rate:g}/s, {args.run_time} in all"
             + (f", {args.processes} Locust processes" if args.processes != 1 else
                ", one Locust process"))
    server_text = (
        "The server was started by the harness (`python -m server --rate-limit 0`), pinned to its "
        "own CPU, on the same machine as Locust." if server is not None
        else f"Server: `{host}`, started separately."
    )
    load_after = os.getloadavg()[0]
    context = {
        "load": f"Load average (1 min) {load_before:.1f} before and {load_after:.1f} after the run "
        f"on {os.cpu_count()} CPUs (the server and Locust both run here, so other work on the "
        "machine shows in the figures).",
        "command": "make loadtest" if argv is None and len(sys.argv) == 1
        else "python -m loadtest.run " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "shape": shape,
        "server": server_text,
        "relative_prefix": os.path.relpath(prefix, args.readme.parent),
    }
    section = report.markdown(prefix, context)
    print(section, flush=True)
    if not args.no_readme:
        report.replace_section(args.readme, section)
        print(f"loadtest: summary written to {args.readme}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
