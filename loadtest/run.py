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
this module never imports gevent (the local processes: loadtest/local.py; the history comparison:
loadtest/compare.py). Reports go to ``results/loadtest/<prefix>*`` and a summary
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
import os
import sys
from pathlib import Path

from loadtest import compare, report
from loadtest.local import (
    LocalRedis,
    LocalServer,
    clean,
    command_text,
    cpu_split,
    load_text,
    machine,
    raise_fd_limit,
    run_locust,
)

ROOT = Path(__file__).resolve().parent.parent


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
    full, quick = compare.FULL_SHAPE, compare.QUICK_SHAPE  # --compare-history's legs
    users, rate, run_time = (
        (full.users, full.spawn_rate, full.run_time) if args.compare_history else
        (1000, 200.0, "3m") if storm else (12000, 200.0, "3m"))
    if args.quick:
        args.users, args.spawn_rate, args.run_time = (
            (quick.users, quick.spawn_rate, quick.run_time) if args.compare_history else
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


# a --quick storm: rooms of 25 (four publishers for 100 users), one second for each phase
QUICK_STORM_ARGS = ["--storm-room-size", "25", "--storm-lead", "1", "--storm-outage", "1",
                    "--storm-tail", "1"]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_fd_limit()  # inherited by the servers and Locust
    args.out.mkdir(parents=True, exist_ok=True)
    if args.compare_history:
        return compare.compare_history(args, argv)
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


if __name__ == "__main__":
    sys.exit(main())
