"""Run a headless Locust swarm and write the reports (what ``make loadtest`` runs).

    python -m loadtest.run                          # start a local server, default swarm (~3 min)
    python -m loadtest.run --quick                  # 30 s, 300 users
    python -m loadtest.run --host ws://10.0.0.5:8080 --users 5000 --run-time 5m
    python -m loadtest.run -- --room-sizes 2000,20*50 --chat-interval 5   # extra Locust args
    python -m loadtest.run --scenario storm         # 1,000 users resume with `since` at once
    python -m loadtest.run --scenario storm --nodes 2   # the same on two nodes + redis-server
    python -m loadtest.run --compare-history        # fan-out with history off vs on, CPU/delivery

Without ``--host`` it starts ``python -m server --host 127.0.0.1 --port 0 --rate-limit 0`` (pinned
with taskset to the last CPU, and Locust to the others, when there are at least two), reads the
port from its ready line, samples its RSS and sockets during the run and stops it afterwards;
with ``--scenario storm --nodes N`` (N > 1) it starts a redis-server (no persistence) on a free
loopback port and N servers with ``--redis-url``, all on that CPU. Locust runs in a subprocess;
this module never imports gevent. Reports go to ``results/loadtest/<prefix>*`` and a summary
between the markers of ``results/README.md``; the storm's and ``--compare-history``'s go to
``results/loadtest/storm/`` and ``results/loadtest/history/`` and to their own sub-sections of
that section, so that the default scenario's reference run stays as it is. A ``--quick`` run
writes everything under ``results/quick/`` instead, and prints the summary.
The exit code is Locust's (1 when any request failed); ``--compare-history`` also fails when the
ratio could not be computed.
"""


from __future__ import annotations

import argparse
import datetime as dt
import json
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

from loadtest import compare, report

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
    parser.add_argument("--users", type=int, default=None,
                        help="peak number of simulated users (env USERS; default 12000; storm "
                        "1000; --compare-history 1000)")
    parser.add_argument("--spawn-rate", type=float, default=None,
                        help="users started per second (env SPAWN_RATE; default 200)")
    parser.add_argument("--run-time", default=None,
                        help="total run time, Locust syntax (env DURATION; default 3m; storm: "
                        "at most, the run stops after the storm; --compare-history: per leg, "
                        "default 60s)")
    parser.add_argument("--scenario", default=env.get("SCENARIO", "all"),
                        choices=["all", "capacity", "fanout", "swarm", "resume", "storm"],
                        help="user classes to run (env SCENARIO; default all)")
    parser.add_argument("--quick", action="store_true",
                        help="a short run: 300 users, 100/s, 30 s (overrides the three above; "
                        "storm: 100 users; --compare-history: 200 users, 14 s legs, one pair)")
    parser.add_argument("--nodes", type=int, default=1,
                        help="storm: local server nodes; more than 1 also starts a redis-server "
                        "and links the nodes through it (--redis-url)")
    parser.add_argument("--compare-history", action="store_true",
                        help="run the fan-out swarm against a server with --history-size 0 and "
                        "one with the default history, and compare CPU per delivery")
    parser.add_argument("--pairs", type=int, default=None,
                        help="--compare-history: off/on pairs, in alternating order (default 3; "
                        "--quick 1)")
    parser.add_argument("--processes", type=int, default=1,
                        help="Locust processes on this machine (-1: one per CPU)")
    parser.add_argument("--out", type=Path, default=None,
                        help="report directory (default results/loadtest, results/loadtest/storm "
                        "or results/loadtest/history; with --quick under results/quick/)")
    parser.add_argument("--prefix", default=None,
                        help="report file prefix (default roomcast; storm-1node, storm-2nodes; "
                        "history)")
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
    storm = args.scenario == "storm" and not args.compare_history
    if args.nodes < 1:
        parser.error("--nodes must be at least 1")
    if args.nodes > 1 and not storm:
        parser.error("--nodes is for --scenario storm (the other scenarios use one --host)")
    if args.nodes > 1 and args.host:
        parser.error("--nodes starts local servers; with --host, give the nodes as "
                     "-- --storm-hosts ws://A,ws://B")
    if args.compare_history and args.host:
        parser.error("--compare-history starts its own servers (history off and on)")
    users, rate, run_time = (1000, 200.0, "60s") if args.compare_history else (
        (1000, 200.0, "3m") if storm else (12000, 200.0, "3m"))
    if args.quick:
        args.users, args.spawn_rate, args.run_time = (
            (200, 100.0, "14s") if args.compare_history else
            (100, 100.0, "60s") if storm else (300, 100.0, "30s"))
    else:
        args.users = args.users if args.users is not None else int(env.get("USERS", users))
        args.spawn_rate = (args.spawn_rate if args.spawn_rate is not None
                           else float(env.get("SPAWN_RATE", rate)))
        args.run_time = args.run_time or env.get("DURATION", run_time)
    if args.pairs is None:
        args.pairs = 1 if args.quick else 3
    if args.pairs < 1:
        parser.error("--pairs must be at least 1")
    results = ROOT / "results" / ("quick" if args.quick else "")
    sub = "history" if args.compare_history else "storm" if storm else ""
    if args.out is None:
        args.out = results / "loadtest" / sub if sub else results / "loadtest"
    if args.prefix is None:
        args.prefix = ("history" if args.compare_history else
                       f"storm-{args.nodes}node{'s' if args.nodes > 1 else ''}" if storm
                       else "roomcast")
    # the README sub-section the run writes (None: the default scenario's section)
    args.section = ("history" if args.compare_history else args.prefix if storm else None)
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
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.workdir, ignore_errors=True)
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


# a --quick storm: rooms of 25 (four publishers for 100 users), one second for each phase
QUICK_STORM_ARGS = ["--storm-room-size", "25", "--storm-lead", "1", "--storm-outage", "1",
                    "--storm-tail", "1"]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _raise_fd_limit()  # inherited by the servers and Locust
    args.out.mkdir(parents=True, exist_ok=True)
    if args.compare_history:
        return compare_history(args, argv)
    prefix = str(args.out / args.prefix)
    clean(args.out, args.prefix)
    server_prefix, locust_prefix = cpu_split() if not args.host else ([], [])
    servers: list[LocalServer] = []
    redis: LocalRedis | None = None
    host, server_pid = args.host, args.server_pid
    extra: list[str] = []
    started = dt.datetime.now(dt.UTC)
    load_before = os.getloadavg()[0]
    try:
        if host is None:
            server_args = list(args.server_arg)
            if args.nodes > 1:
                redis = LocalRedis(server_prefix)
                print(f"loadtest: started {' '.join(redis.cmd)} (pid {redis.pid})", flush=True)
                server_args += ["--redis-url", redis.url]
            for _ in range(args.nodes):
                server = LocalServer(server_prefix, server_args)
                servers.append(server)
                print(f"loadtest: started {' '.join(server.cmd)} -> {server.url} (pid "
                      f"{server.pid})", flush=True)
            host, server_pid = servers[0].url, servers[0].pid
            if args.scenario == "storm":
                pids = [s.pid for s in servers] + ([redis.pid] if redis is not None else [])
                extra += ["--storm-cpu-pids", ",".join(map(str, pids))]
                if len(servers) > 1:
                    extra += ["--storm-hosts", ",".join(s.url for s in servers)]
        if args.scenario == "storm" and args.quick:
            extra += QUICK_STORM_ARGS
        code = run_locust(args, scenario=args.scenario, host=host, server_pid=server_pid,
                          prefix=prefix, locust_prefix=locust_prefix, extra=extra)
    finally:
        for i, server in enumerate(servers):
            name = "server" if len(servers) == 1 else f"node {'ABCDEFGH'[i % 8]}"
            print(f"loadtest: {name} exited with {server.stop()}", flush=True)
        if redis is not None:
            print(f"loadtest: redis-server exited with {redis.stop()}", flush=True)
    if not Path(f"{prefix}_stats.csv").exists():
        print("loadtest: Locust wrote no stats; nothing to summarise", file=sys.stderr)
        return code or 1
    report.annotate_html(Path(f"{prefix}.html"), prefix)
    shape = (f"{args.users:,} users started at {args.spawn_rate:g}/s, {args.run_time} in all"
             + (f", {args.processes} Locust processes" if args.processes != 1 else
                ", one Locust process"))
    if not servers:
        server_text = f"Server: `{host}`, started separately."
    elif redis is not None:
        server_text = (
            f"The harness started {len(servers)} nodes (`python -m server --rate-limit 0 "
            "--redis-url ...`) and a redis-server without persistence, all pinned to one CPU, "
            "Locust on the others of the same machine.")
    else:
        server_text = (
            "The server was started by the harness (`python -m server --rate-limit 0`), pinned "
            "to its own CPU, on the same machine as Locust.")
    context = {
        "load": load_text(load_before, os.getloadavg()[0]),
        "command": command_text(argv),
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "shape": shape,
        "server": server_text,
        "relative_prefix": os.path.relpath(prefix, args.readme.parent),
    }
    if args.section is not None:
        section = report.storm_markdown(prefix, context, args.section)
    else:
        section = report.markdown(prefix, context)
    print(section, flush=True)
    if not args.no_readme:
        report.replace_section(args.readme, section, args.section)
        print(f"loadtest: summary written to {args.readme}", flush=True)
    return code


# the fan-out load of --compare-history: rooms of 100, 10 msg/s each (1,000 users: 10,000
# deliveries/s, which one Locust process reads with little lag; at 20,000 it fell behind and its
# publishers' catch-up bursts made the server coalesce writes); --quick: rooms of 50
COMPARE_ARGS = ["--fanout-room-size", "100", "--fanout-rate", "10"]
QUICK_COMPARE_ARGS = ["--fanout-room-size", "50", "--fanout-rate", "10"]


def compare_history(args: argparse.Namespace, argv: list[str] | None) -> int:
    """The fan-out swarm against a fresh server per leg, history off and on (compare.py)."""
    server_prefix, locust_prefix = cpu_split()
    started = dt.datetime.now(dt.UTC)
    load_before = os.getloadavg()[0]
    settle = 2.0 if args.quick else 5.0
    locust_extra = QUICK_COMPARE_ARGS if args.quick else COMPARE_ARGS
    legs: list[dict[str, Any]] = []
    codes: list[int] = []
    for pair, label in compare.order(args.pairs):
        name = f"{args.prefix}-{label}-{pair}"
        prefix = str(args.out / name)
        clean(args.out, name)
        server_args = [*args.server_arg, *(["--history-size", "0"] if label == "off" else [])]
        server = LocalServer(server_prefix, server_args)
        print(f"loadtest: history {label} (pair {pair}): started {' '.join(server.cmd)} -> "
              f"{server.url} (pid {server.pid})", flush=True)
        probe = compare.Probe(server.pid, server.url.replace("ws://", "http://", 1).rstrip("/")
                              + "/metrics").start()
        try:
            code = run_locust(args, scenario="fanout", host=server.url, server_pid=server.pid,
                              prefix=prefix, locust_prefix=locust_prefix, extra=locust_extra)
            probe.stop()
        finally:
            print(f"loadtest: server exited with {server.stop()}", flush=True)
        codes.append(code)
        leg = compare.leg_figures(probe.rows, args.users, settle)
        summary = report.read_summary(prefix)
        fanout = summary.get("fanout", {})
        has_stats = Path(f"{prefix}_stats.csv").exists()
        h = report.headline(prefix) if has_stats else {}
        leg |= {
            "pair": pair, "label": label, "prefix": name, "locust_exit": code,
            "server_command": " ".join(server.cmd),
            "relative_prefix": os.path.relpath(prefix, args.readme.parent),
            "receipts": fanout.get("receipts"), "receipt_p50_ms": fanout.get("receipt_p50_ms"),
            "receipt_p99_ms": fanout.get("receipt_p99_ms"),
            "lost_messages": fanout.get("lost_messages"),
            "failures": h.get("failures"), "requests": h.get("requests"),
            "probe": probe.rows,
        }
        legs.append(leg)
        if has_stats:
            report.annotate_html(Path(f"{prefix}.html"), prefix, [
                (f"History {label}: server CPU per delivery",
                 "n/a" if leg.get("cpu_per_delivery_us") is None
                 else f"{leg['cpu_per_delivery_us']:.3f} µs"),
                ("Deliveries/s in the window", f"{leg.get('deliveries_per_s') or 'n/a'}"),
            ])
        cpu = leg.get("cpu_per_delivery_us")
        print(f"loadtest: history {label} (pair {pair}): "
              + (f"{cpu:.3f} µs CPU per delivery over {leg['window_s']} s, "
                 f"{leg['deliveries_per_s']:,} deliveries/s" if cpu is not None
                 else leg.get("error", "no figures")), flush=True)
    result = compare.compare(legs)
    users_text = (f"the fan-out swarm, {args.users:,} users started at {args.spawn_rate:g}/s in "
                  f"rooms of {locust_extra[1]} at {locust_extra[3]} msg/s per room, "
                  f"{args.run_time} per leg, {args.pairs} pair(s) of legs in alternating order "
                  "(off, on; on, off; ...)")
    context = {
        "load": load_text(load_before, os.getloadavg()[0]),
        "command": command_text(argv),
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "shape": users_text + (" with Locust arguments `" + " ".join(args.locust_args) + "`"
                               if args.locust_args else ""),
        "server": "Each leg starts a fresh server (`python -m server --rate-limit 0`, with "
        "`--history-size 0` for *off*, the default `--history-size 100` for *on*), pinned to "
        "its own CPU, on the same machine as Locust.",
        "relative_compare": os.path.relpath(args.out / f"{args.prefix}_compare.json",
                                            args.readme.parent),
    }
    record = {**result, "context": context, "settle_s": settle, "users": args.users,
              "locust_args": [*locust_extra, *args.locust_args]}
    compare_path = args.out / f"{args.prefix}_compare.json"
    compare_path.write_text(json.dumps(record, indent=2) + "\n")
    section = report.history_markdown(result, context, args.section)
    print(section, flush=True)
    print(f"loadtest: figures in {compare_path}", flush=True)
    if not args.no_readme:
        report.replace_section(args.readme, section, args.section)
        print(f"loadtest: summary written to {args.readme}", flush=True)
    if result.get("ratio") is None:
        print("loadtest: the ratio could not be computed (see the legs' errors above)",
              file=sys.stderr)
        return max([*codes, 1])
    return max(codes)


if __name__ == "__main__":
    sys.exit(main())
