"""``python -m bench [--scenario NAME] [--quick] [--only ID,...] [--servers a,b]``.

See results/README.md for the options and what each scenario measures.

Runs the chosen configurations against roomcast and its peers (a fresh server per configuration
and server), records a py-spy flamegraph of roomcast under fanout, and writes
``results/runs/<timestamp>.json``, the plots and ``results/README.md``. A ``--quick`` run writes
the same files under ``results/quick/`` instead (the committed reference run, its README,
flamegraph and plots stay as they are) and prints its figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import importlib.metadata
import json
import os
import platform
import shlex
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import report
from bench.histmem import histmem
from bench.profile import Recorder, hot_frames
from bench.resume import resume
from bench.scaleout import scaleout
from bench.scenarios import MULTI_SCENARIOS, SCENARIOS, Context
from bench.servers import (
    FD_LIMIT,
    NICE,
    OURS,
    PEERS,
    ROOT,
    SERVER_KINDS,
    VARIANTS,
    cpu_split,
    start_server,
    stop_noting,
)
from bench.suite import FLAMEGRAPH_LEAD_S, FLAMEGRAPH_QUICK, FLAMEGRAPH_STANDARD, Config, select

PEERS_DIR = ROOT / "bench" / "peers"


# scenarios that start their own processes: fn(ctx, server_cpus, **params) -> {setup: figures}
MULTI: dict[str, Callable[..., dict[str, dict[str, Any]]]] = {
    **MULTI_SCENARIOS, "scaleout": scaleout, "resume": resume,
    "histmem": histmem}


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def machine(server_cpus: list[int], driver_cpus: list[int]) -> dict[str, Any]:
    cpu_model = next(
        (line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo").splitlines()
         if line.startswith("model name")),
        platform.processor() or "unknown",
    )
    mem_kib = next((int(line.split()[1]) for line in _read("/proc/meminfo").splitlines()
                    if line.startswith("MemTotal:")), 0)
    return {
        "hostname": platform.node(),
        "cpu_model": cpu_model,
        "cpus": os.cpu_count(),
        "mem_total_gib": mem_kib / 2**20,
        "kernel": platform.release(),
        "server_cpus": server_cpus,
        "driver_cpus": driver_cpus,
        "fd_limit": FD_LIMIT,
        "nice": NICE["value"],
        "loadavg_start": _read("/proc/loadavg").split()[:3],
    }


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _run(cmd: list[str]) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False,
                             cwd=ROOT)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _npm_version(peer: str, module: str) -> str | None:
    pkg = PEERS_DIR / peer / "node_modules" / module / "package.json"
    try:
        return str(json.loads(pkg.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return None


def versions() -> dict[str, Any]:
    commit = _run(["git", "rev-parse", "--short", "HEAD"])
    dirty = _run(["git", "status", "--porcelain", "--", "server"])
    return {
        "roomcast": f"{_version('roomcast')} (git {commit}{', server/ modified' if dirty else ''})",
        "python": platform.python_version(),
        "picows": _version("picows"),
        "uvloop": _version("uvloop"),
        "msgspec": _version("msgspec"),
        "aiofastnet": _version("aiofastnet"),
        "websockets": _version("websockets"),
        "node": _run(["node", "--version"]),
        "ws": _npm_version("node_ws", "ws"),
        # a republish of uWebSockets.js's v20 release binaries (see bench/peers/uws/README.md)
        "uwebsockets": _npm_version("uws", "uwebsockets"),
        "py-spy": (_run([str(Path(sys.executable).parent / "py-spy"), "--version"]) or "")
        .replace("py-spy ", "") or None,
    }


def _node_peer_loads(peer: str, module: str) -> str | None:
    """None when ``node`` can load the peer's module (uWS: a binary for this Node), else why."""
    try:
        out = subprocess.run(["node", "-e", f"require({module!r})"], cwd=PEERS_DIR / peer,
                             capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"node cannot run: {exc}"
    if out.returncode != 0:
        return f"node cannot load {module}: {out.stderr.strip().splitlines()[-1:]}"
    return None


def ensure_node_peer(name: str) -> str | None:
    """None when the Node peer ``name`` can run, else why not (installing it when missing)."""
    spec = SERVER_KINDS[name].node_module
    if spec is None:
        return None
    peer, module = spec
    if not (PEERS_DIR / peer / "node_modules" / module).is_dir():
        script = ROOT / "scripts" / "ensure-node-peer.sh"
        try:
            subprocess.run([str(script)], check=True, timeout=600)
        except (OSError, subprocess.SubprocessError) as exc:
            return f"Node peer dependencies missing and {script.name} failed: {exc}"
        if not (PEERS_DIR / peer / "node_modules" / module).is_dir():
            return f"bench/peers/{peer}/node_modules/{module} missing"
    return _node_peer_loads(peer, module)


def results_dir(given: str | None, quick: bool) -> Path:
    """Where a run writes: ``--results`` when given, else results/ (results/quick/ for a quick
    run, so that it never replaces the committed reference run's README, plots, flamegraph)."""
    if given is not None:
        return Path(given)
    return ROOT / "results" / "quick" if quick else ROOT / "results"


def reproduce(cfg: Config) -> str:
    return f'make bench BENCH_ARGS="--only {cfg.id}"'


def summary(cfg: Config, server: str, fig: dict[str, Any]) -> str:
    if fig.get("error"):
        return f"  {server:14s} ERROR {fig['error'].splitlines()[-1][:150]}"
    keys = {
        "fanout": ("deliveries_per_s", "p50_ms", "p99_ms", "max_ms", "receipt_pace_us",
                   "cpu_per_delivery_us", "driver_cpu_per_receipt_us", "flush_p50_us",
                   "flush_p99_us", "losses"),
        "saturate": ("deliveries_per_s", "server_cpu_util", "cpu_per_delivery_us", "losses"),
        "capacity": ("rss_per_conn_bytes", "connect_rate_per_s", "alive", "received_broadcast"),
        "joinstorm": ("storm_ms", "bytes_sent", "frames", "server_cpu_s"),
        "twonode": ("deliveries_per_s", "p50_ms", "p99_ms", "origin_p99_ms", "other_p99_ms",
                    "cpu_per_delivery_us", "losses"),
        "resume": ("clients", "reconnected", "all_history_ms", "all_live_ms", "live_p99_ms",
                   "recovered", "server_counted_resumes_recovered", "not_recovered",
                   "no_history", "missing", "duplicates",
                   "mismatched", "server_cpu_storm_s", "downtime_s", "supported"),
        "histmem": ("chats", "frame_bytes", "rss_per_message_bytes",
                    "counted_per_message_bytes", "losses"),
        "scaleout": ("connected", "confirmed", "received_broadcast", "fill_elapsed_s",
                     "rss_per_conn_bytes", "worker_base_rss_median_bytes",
                     "redis_used_memory_per_conn_bytes", "broadcast_p99_ms", "held"),
    }[cfg.scenario]
    parts = []
    for k in keys:
        if k not in fig:
            continue
        v = fig.get(k)
        parts.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
    if server == "in_process" and "without_ids" in fig:  # histmem's bench.history_memory run
        parts = [f"{k}={fig[ids].get(f):.4g}" for ids, k, f in (
            ("without_ids", "traced_per_message", "traced_bytes_per_message"),
            ("without_ids", "rss_per_message", "rss_bytes_per_message"),
            ("with_ids", "traced_per_message_with_id", "traced_bytes_per_message"))]
    probs = f"  PROBLEMS: {'; '.join(fig['problems'])}" if fig.get("problems") else ""
    return f"  {server:14s} " + " ".join(parts) + probs


# the figures printed at the end of a run, per scenario
HEADLINES = {
    "fanout": ("cpu_per_delivery_us", "p50_ms", "p99_ms", "receipt_pace_us", "flush_p50_us",
               "flush_p99_us"),
    "saturate": ("cpu_per_delivery_us", "deliveries_per_s"),
    "capacity": ("rss_per_conn_bytes",),
    "joinstorm": ("storm_ms",),
}


def terminal_summary(run: dict[str, Any]) -> str:
    """This run's headline figures, every server side by side with ours / the best peer, and
    the verdict of every target this run measured."""
    lines = [f"bench: figures of this run ({'quick suite' if run['quick'] else 'standard'})"]
    records: dict[str, dict[str, Any]] = {}
    for rec in run["results"]:
        records[rec["id"]] = rec
        keys = HEADLINES.get(rec["scenario"])
        if keys is None:
            continue  # twonode and scaleout print their own lines as they finish
        lines.append(f"  {rec['id']}")
        for key in keys:
            cells = []
            for server in (OURS, *VARIANTS, *PEERS):
                fig = rec["runs"].get(server)
                if fig is None:
                    continue
                value = fig.get(key)
                cells.append(f"{server} " + ("—" if not isinstance(value, int | float)
                                             else f"{value:,.4g}"))
            peer, best = report.best_peer(rec, key)
            ours = rec["runs"].get(OURS, {}).get(key)
            vs = (f"  ours/best ({peer}) {ours / best:.2f}x"
                  if isinstance(ours, int | float) and best else "")
            for variant in VARIANTS:
                other = rec["runs"].get(variant, {}).get(key)
                if isinstance(ours, int | float) and isinstance(other, int | float) and other:
                    vs += f"  ours/{variant} {ours / other:.2f}x"
            lines.append(f"    {key:22s} " + "; ".join(cells) + vs)
    for t in report.evaluate_targets(records):
        if t["verdict"] == "not measured" and t["config"] not in records:
            continue
        label = f"{t['config']} ({t['hint']})" if t.get("hint") else t["config"]
        lines.append(f"  target {label}: {t['verdict']}")
        lines.extend(f"    {report.check_text(c)}" for c in t["checks"])
        if t.get("why"):
            lines.append(f"    {t['why'][:300]}")
    return "\n".join(lines)


def with_variants(servers: list[str], cfg: Config) -> list[str]:
    """The servers of one configuration: the chosen ones, and right after ours the variants of
    ours that the configuration names (run back to back, so that they share conditions)."""
    out: list[str] = []
    for name in servers:
        if name not in out:
            out.append(name)
        if name == OURS:
            out += [v for v in cfg.variants if v not in servers and v not in out]
    return out


def run_config(cfg: Config, servers: list[str], ctx: Context, server_cpus: list[int],
               skip: dict[str, str]) -> dict[str, Any]:
    rec: dict[str, Any] = {"id": cfg.id, "scenario": cfg.scenario, "params": cfg.params,
                           "note": cfg.note, "reproduce": reproduce(cfg), "runs": {}}
    print(f"[{time.strftime('%H:%M:%S')}] {cfg.id}", flush=True)
    if cfg.scenario in MULTI:
        # starts its own processes (roomcast only: one node, then two nodes + Redis)
        if OURS not in servers:
            rec["runs"] = {"one_node": {"error": f"{cfg.scenario} measures roomcast only"}}
            return rec
        t0 = time.monotonic()
        try:
            rec["runs"] = MULTI[cfg.scenario](ctx, server_cpus, **cfg.params)
        except Exception:
            rec["runs"] = {"one_node": {"error": traceback.format_exc(limit=3)}}
        for setup, fig in rec["runs"].items():
            print(summary(cfg, setup, fig), flush=True)
        rec["elapsed_s"] = time.monotonic() - t0
        return rec
    def one(name: str, label: str = "") -> dict[str, Any]:
        fig: dict[str, Any]
        server = None
        t0 = time.monotonic()
        load0 = _read("/proc/loadavg").split()[:3]
        try:
            server = start_server(name, cpus=server_cpus)
            fig = SCENARIOS[cfg.scenario](server, ctx, **cfg.params)
            fig["server_command"] = shlex.join(server.command)
        except Exception:
            fig = {"error": traceback.format_exc(limit=3)}
            if server is not None:
                fig["server_output_tail"] = server.text()[-1000:]
        finally:
            if server is not None:
                stop_noting(fig, "server", server)
        fig["elapsed_s"] = time.monotonic() - t0
        fig["started_monotonic"] = t0
        fig["loadavg_before"] = load0
        print(summary(cfg, name + label, fig), flush=True)
        return fig

    for name in with_variants(servers, cfg):
        if name in skip:
            rec["runs"][name] = {"error": skip[name]}
            continue
        rec["runs"][name] = one(name)
    partners = [v for v in (*cfg.variants, *cfg.paired_peers)
                if v in rec["runs"] and OURS in rec["runs"]]
    if partners and cfg.pairs > 1:
        # more pairs: ours once and each variant or paired peer once, in alternating order
        # (them then ours, then ours then them, ...), so that a neighbour's load or a drift
        # falls on both sides of every comparison; pair i is the i-th run of each
        repeats: dict[str, list[dict[str, Any]]] = {}
        for i in range(1, cfg.pairs):
            order = [*partners, OURS] if i % 2 else [OURS, *partners]
            for name in order:
                repeats.setdefault(name, []).append(one(name, f" (pair {i + 1})"))
        rec["repeats"] = repeats
    if partners:
        rec["pairs"] = {v: report.pair_figures(rec, v) for v in partners}
    return rec


def run_flamegraph(cfg: Config, ctx: Context, server_cpus: list[int], results: Path,
                   ) -> dict[str, Any]:
    out = results / "flamegraph-fanout.svg"
    tmp = results / "flamegraph-fanout.svg.tmp"
    # py-spy samples the whole measured window (it starts when the window starts)
    duration = max(2, int(cfg.params["duration"]) - FLAMEGRAPH_LEAD_S)
    info: dict[str, Any] = {"config": cfg.id, "svg": out.name, "duration_s": duration,
                            "rate_hz": 250}
    print(f"[{time.strftime('%H:%M:%S')}] flamegraph: {cfg.id} with py-spy for {duration} s",
          flush=True)
    server = None
    try:
        server = start_server(OURS, cpus=server_cpus)
        rec = Recorder(server.pid, tmp, duration, ctx.driver_cpus, rate=250)
        info["command"] = shlex.join(rec.command).replace(str(tmp), os.path.relpath(out, ROOT))
        fig = SCENARIOS["fanout"](server, ctx, **cfg.params, on_measure=rec.start)
        rec.wait()
        info["figures_under_profiler"] = {k: fig.get(k) for k in
                                          ("deliveries_per_s", "p99_ms", "losses", "problems")}
        if rec.error:
            info["error"] = rec.error
        else:
            tmp.replace(out)
            info["hot"] = hot_frames(out)
    except Exception:
        info["error"] = traceback.format_exc(limit=3)
    finally:
        if server is not None:
            server.stop()
        tmp.unlink(missing_ok=True)
    if info.get("error"):
        print(f"  flamegraph failed: {info['error'][-300:]}", flush=True)
    else:
        top = info["hot"]["self"][:3]
        print("  hottest: " + "; ".join(f"{h['frame']} {h['pct']:.0f}%" for h in top), flush=True)
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario",
                        help="fanout, saturate, capacity, joinstorm, twonode, histmem, resume, "
                        "scaleout or flamegraph")
    parser.add_argument("--quick", action="store_true", help="the quick suite (~1 minute)")
    parser.add_argument("--only", action="append", default=[],
                        help="configuration id(s), comma-separated, e.g. fanout-4x100-r50-s100")
    parser.add_argument("--servers", default=",".join([OURS, *PEERS]),
                        help="comma-separated subset of roomcast,uws,node_ws,py_websockets "
                        "(with roomcast, a configuration's variants of it run too, e.g. "
                        "roomcast-nohistory; name a variant alone to run only it)")
    parser.add_argument("--no-flamegraph", action="store_true")
    parser.add_argument("--pairs", type=int, default=None,
                        help="how many alternating pairs of roomcast and its variant (and "
                        "paired peer, uws) the configurations that compare them run (default: "
                        "the suite's, 3 in the standard suite)")
    parser.add_argument("--nice", type=int, default=NICE["value"],
                        help="scheduling priority of servers and driver (root only below 0)")
    parser.add_argument("--results", default=None,
                        help="output directory (default results/, with --quick results/quick/)")
    args = parser.parse_args(argv)

    known = {*SCENARIOS, *MULTI, "flamegraph"}
    if args.scenario and args.scenario not in known:
        parser.error(f"unknown scenario {args.scenario!r}; choose from {', '.join(sorted(known))}")
    NICE["value"] = args.nice
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    for s in servers:
        if s not in (OURS, *VARIANTS, *PEERS):
            parser.error(f"unknown server {s!r}")
    only = [x for chunk in args.only for x in chunk.split(",") if x]
    configs = [] if args.scenario == "flamegraph" else select(args.scenario, args.quick, only)
    if args.pairs is not None:
        if args.pairs < 1:
            parser.error("--pairs must be at least 1")
        configs = [dataclasses.replace(c, pairs=args.pairs) if c.variants or c.paired_peers else c
                   for c in configs]
    flame = (not args.no_flamegraph and OURS in servers and not only
             and args.scenario in (None, "fanout", "flamegraph"))

    results = results_dir(args.results, args.quick)
    (results / "runs").mkdir(parents=True, exist_ok=True)
    server_cpus, driver_cpus = cpu_split()
    ctx = Context(driver_cpus)
    skip: dict[str, str] = {}
    for name in servers:
        why = ensure_node_peer(name)
        if why:
            skip[name] = why
            print(f"bench: skipping {name}: {why}", flush=True)
    started = dt.datetime.now(dt.UTC)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    run_file = results / "runs" / f"{stamp}.json"
    cmd = shlex.join(
        [os.path.relpath(sys.executable, ROOT), "-m", "bench", *(argv or sys.argv[1:])]
    )
    run: dict[str, Any] = {
        "schema": 1,
        "started": started.isoformat(timespec="seconds"),
        "command": cmd,
        "via_make": "MAKELEVEL" in os.environ,
        "quick": args.quick,
        "scenario": args.scenario,
        "only": only,
        "servers": {s: report.labels()[s] for s in dict.fromkeys(
            [*servers, *(n for c in configs for n in with_variants(servers, c))])},
        "machine": machine(server_cpus, driver_cpus),
        "versions": versions(),
        "results": [],
        "complete": False,
    }
    print(f"bench: {len(configs)} configuration(s) x {len(servers)} server(s) -> {run_file}",
          flush=True)
    t0 = time.monotonic()

    def save() -> None:
        run["duration_s"] = time.monotonic() - t0
        run["machine"]["loadavg_end"] = _read("/proc/loadavg").split()[:3]
        run_file.write_text(json.dumps(run, indent=1, default=str))

    for cfg in configs:
        run["results"].append(run_config(cfg, servers, ctx, server_cpus, skip))
        save()
    if flame:
        cfg = FLAMEGRAPH_QUICK if args.quick else FLAMEGRAPH_STANDARD
        run["flamegraph"] = run_flamegraph(cfg, ctx, server_cpus, results)
    run["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    run["complete"] = True
    save()

    runs = report.load_runs(results / "runs")
    try:
        plots = report.make_plots(results, runs)
    except Exception:
        print("plots failed:\n" + traceback.format_exc(), flush=True)
        plots = []
    readme = report.write_readme(results, runs, plots)
    print(terminal_summary(run), flush=True)
    print(f"bench: wrote {run_file}, {readme} and {len(plots)} plot(s) "
          f"in {time.monotonic() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
