"""results/: the README (latest figures, ratios, targets) and the plots, from the run files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeGuard

from bench.promstats import FLUSH_METRIC
from bench.servers import NOHISTORY, OURS, PEERS, SERVER_KINDS, VARIANTS
from bench.suite import BEST, OURS_IN, PAIRS, TARGETS, Check

LOADTEST_START = "<!-- loadtest:start -->"
LOADTEST_END = "<!-- loadtest:end -->"
SERVER_ORDER = [OURS, *VARIANTS, *PEERS]  # rows of the tables
PLOT_ORDER = [OURS, *PEERS]  # lines of the plots (a variant runs in a few configurations only)
COLORS = {"roomcast": "tab:blue", "node_ws": "tab:orange", "py_websockets": "tab:green",
          "uws": "tab:red"}

# (figure key, column title, format, lower is better?)
COLUMNS: dict[str, list[tuple[str, str, str, bool]]] = {
    "fanout": [
        ("deliveries_per_s", "deliveries/s", "{:,.0f}", False),
        ("p50_ms", "p50 ms", "{:.2f}", True),
        ("p99_ms", "p99 ms", "{:.2f}", True),
        ("p999_ms", "p99.9 ms", "{:.2f}", True),
        ("max_ms", "max ms", "{:.2f}", True),
        ("receipt_pace_us", "receipt pace µs", "{:.2f}", True),
        ("cpu_per_delivery_us", "server CPU µs/delivery", "{:.2f}", True),
        ("server_cpu_util", "server CPU util", "{:.0%}", True),
        ("flush_p50_us", "server delay p50 µs", "{:,.0f}", True),
        ("flush_p99_us", "server delay p99 µs", "{:,.0f}", True),
        ("losses", "losses", "{:,}", True),
    ],
    "saturate": [
        ("deliveries_per_s", "deliveries/s", "{:,.0f}", False),
        ("messages_per_s", "messages/s", "{:,.0f}", False),
        ("server_cpu_util", "server CPU util", "{:.0%}", True),
        ("cpu_per_delivery_us", "server CPU µs/delivery", "{:.2f}", True),
        ("losses", "losses", "{:,}", True),
    ],
    "capacity": [
        ("connections", "connections", "{:,}", False),
        ("cookie_bytes", "Cookie header (bytes)", "{:,}", False),
        ("rss_per_conn_bytes", "RSS/conn (bytes)", "{:,.0f}", True),
        ("rss_final_bytes", "RSS at end (MiB)", "mib", True),
        ("connect_rate_per_s", "connects/s", "{:,.0f}", False),
        ("connect_p99_ms_worst_step", "connect p99 ms (worst step)", "{:.1f}", True),
        ("alive", "alive", "{:,}", False),
        ("received_broadcast", "got the broadcast", "{:,}", False),
    ],
    "joinstorm": [
        ("storm_ms", "all confirmed after (ms)", "{:,.1f}", True),
        ("bytes_sent", "bytes sent (MiB)", "mib", True),
        ("frames", "frames", "{:,}", True),
        ("server_cpu_s", "server CPU s", "{:.2f}", True),
    ],
}


def fmt(value: Any, spec: str) -> str:
    if value is None:
        return "—"
    if spec == "mib":
        return f"{value / 2**20:,.1f}"
    try:
        return spec.format(value)
    except (ValueError, TypeError):
        return str(value)


def ratio(ours: Any, peer: Any) -> str:
    if not isinstance(ours, int | float) or not isinstance(peer, int | float) or peer == 0:
        return "—"
    r = ours / peer
    return f"{r:.2f}x" if r >= 0.01 else f"{r:.4f}x"


def load_runs(runs_dir: Path) -> list[dict[str, Any]]:
    runs = []
    for path in sorted(runs_dir.glob("*.json")):
        try:
            run = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        run["_file"] = path.name
        runs.append(run)
    runs.sort(key=lambda r: r.get("started", ""))
    return runs


def latest_records(runs: list[dict[str, Any]]) -> tuple[dict[str, dict[str, Any]], bool]:
    """config id -> latest record (with its run). Quick runs only count when no full run exists."""
    full = [r for r in runs if not r.get("quick")]
    use = full or runs
    out: dict[str, dict[str, Any]] = {}
    for run in use:
        for rec in run.get("results", []):
            out[rec["id"]] = {**rec, "_run": run}
    return out, not full and bool(runs)


def _fig(rec: dict[str, Any], server: str, key: str) -> Any:
    return rec.get("runs", {}).get(server, {}).get(key)


LOWER_IS_BETTER = {"cpu_per_delivery_us", "p50_ms", "p99_ms", "p999_ms", "max_ms",
                   "receipt_pace_us", "rss_per_conn_bytes", "storm_ms", "bytes_sent",
                   "server_cpu_s"}
_OPS: dict[str, Any] = {
    "le": lambda a, b: a <= b, "lt": lambda a, b: a < b, "ge": lambda a, b: a >= b,
    "gt": lambda a, b: a > b, "eq": lambda a, b: a == b,
}
_OP_TEXT = {"le": "<=", "lt": "<", "ge": ">=", "gt": ">", "eq": "="}


def _number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def best_peer(rec: dict[str, Any], figure: str) -> tuple[str | None, Any]:
    """(peer, value) of the best peer for ``figure`` in this record: the lowest value for a
    cost, the highest otherwise; peers that failed or reported problems do not count. A peer
    that ran in the record's pairs is ranked by its median over them, not by its first run."""
    found = []
    for peer in PEERS:
        run = rec.get("runs", {}).get(peer) or {}
        value = run.get(figure)
        if run.get("error") or run.get("problems") or not _number(value):
            continue
        median = rec.get("pairs", {}).get(peer, {}).get(figure, {}).get("median_other")
        found.append((median if _number(median) else value, peer))
    if not found:
        return None, None
    value, peer = (min if figure in LOWER_IS_BETTER else max)(found)
    return peer, value


PAIRED_FIGURES = ("cpu_per_delivery_us", "p99_ms")


def median(values: list[float]) -> float | None:
    if not values:
        return None
    v = sorted(values)
    mid = len(v) // 2
    return v[mid] if len(v) % 2 else (v[mid - 1] + v[mid]) / 2


def pair_figures(rec: dict[str, Any], variant: str) -> dict[str, dict[str, Any]]:
    """Ours vs ``variant`` over every pair the record ran (the first runs, then ``repeats``,
    pair i being the i-th run of each): per figure, both sides' values, the pairs' ratios and
    their median, and per ratio whether ours ran first in its pair. A run with an error or
    problems leaves its pair out."""
    repeats = rec.get("repeats", {})
    ours = [rec["runs"].get(OURS, {}), *repeats.get(OURS, [])]
    other = [rec["runs"].get(variant, {}), *repeats.get(variant, [])]
    out: dict[str, dict[str, Any]] = {}
    for key in PAIRED_FIGURES:
        a, b, ratios, ours_first = [], [], [], []
        for index, (x, y) in enumerate(zip(ours, other, strict=False)):
            if any(r.get("error") or r.get("problems") for r in (x, y)):
                continue
            va, vb = x.get(key), y.get(key)
            if _number(va) and _number(vb) and vb:
                a.append(va)
                b.append(vb)
                ratios.append(va / vb)
                ours_first.append(_ran_first(x, y, index))
        out[key] = {"ours": a, "other": b, "ratios": ratios, "median_ours": median(a),
                    "median_other": median(b), "median_ratio": median(ratios),
                    "ours_first": ours_first}
    return out


def _ran_first(ours: dict[str, Any], other: dict[str, Any], pair: int) -> bool:
    """Whether ours ran before the other in their pair: from the runs' start times, or (in run
    files older than those) from the bench's alternation, ours first in pairs 1, 3, 5..."""
    a, b = ours.get("started_monotonic"), other.get("started_monotonic")
    if _number(a) and _number(b):
        return a < b
    return pair % 2 == 0


def evaluate_check(rec: dict[str, Any], check: Check,
                   records: dict[str, dict[str, Any]] | None = None,
                   run: str = OURS) -> dict[str, Any]:
    ours = rec.get("runs", {}).get(run, {})
    a = ours.get(check.figure)
    row: dict[str, Any] = {"figure": check.figure, "ours": a, "op": check.op,
                           "bound": check.factor, "reference": check.reference, "met": None}
    b: Any = None
    limit: float | None = check.factor
    if check.reference is None:
        row["peer"] = None
    else:
        if check.reference.startswith(OURS_IN):
            other = (records or {}).get(check.reference[len(OURS_IN):], {})
            row["peer"], b = check.reference, _fig(other, OURS, check.figure)
        elif check.reference == BEST:
            row["peer"], b = best_peer(rec, check.figure)
            row["peers_missing"] = [peer for peer in PEERS if peer not in rec.get("runs", {})]
        else:
            row["peer"], b = check.reference, _fig(rec, check.reference, check.figure)
        limit = b * check.factor if _number(b) else None
    partner = row["peer"] if check.reference == BEST else check.reference
    paired = (rec.get("pairs", {}).get(partner or "", {}).get(check.figure)
              if run == OURS else None)
    if paired and paired["median_ratio"] is not None:
        # ours and the variant (or the peer) ran in pairs: the verdict is on the median of
        # their ratios
        row |= {"ours": paired["median_ours"], "peer_value": paired["median_other"],
                "ratio": paired["median_ratio"], "pairs": paired["ratios"]}
        row["met"] = bool(_OPS[check.op](paired["median_ratio"], check.factor))
        return row
    row["peer_value"] = b
    if not _number(a) or limit is None:
        return row
    row["ratio"] = a / b if _number(b) and b else None
    row["met"] = bool(_OPS[check.op](a, limit))
    return row


def evaluate_targets(records: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for t in TARGETS:
        rec = records.get(t.config)
        row: dict[str, Any] = {"target": t.text, "config": t.config, "checks": [],
                               "hint": t.hint}
        if rec is None or (t.run != OURS and t.run not in rec.get("runs", {})):
            row["verdict"] = "not measured"
            out.append(row)
            continue
        ours = rec["runs"].get(t.run, {})
        row["checks"] = [evaluate_check(rec, c, records, t.run) for c in t.checks]
        verdicts = [c["met"] for c in row["checks"]]
        problems = ours.get("problems") or ([ours["error"]] if ours.get("error") else [])
        if problems:
            row["verdict"] = "MISSED"
            row["why"] = "our server had problems: " + "; ".join(
                p.strip().splitlines()[-1] if p.strip() else p for p in problems)
        elif None in verdicts:
            row["verdict"] = "not measured"
        else:
            row["verdict"] = "met" if all(verdicts) else "MISSED"
        out.append(row)
    return out


def check_text(c: dict[str, Any]) -> str:
    rel = _OP_TEXT[c["op"]]
    if c.get("met") is None:
        if c.get("reference") not in (None, BEST) or c.get("peer") is None:
            return f"{c['figure']}: not available (no usable peer figure)"
        return f"{c['figure']}: not available"
    verdict = "met" if c["met"] else "missed"
    if c.get("reference") is None:
        return f"{c['figure']}: {c['ours']:.4g} (needs {rel} {c['bound']:g}) — {verdict}"
    bound = c["bound"]
    b = f"1/{round(1 / bound)}" if bound < 0.5 and abs(1 / bound - round(1 / bound)) < 1e-9 \
        else f"{bound:g}"
    ref = str(c.get("reference"))
    who = (f"best peer ({c['peer']})" if ref == BEST else
           f"ours in {ref[len(OURS_IN):]}" if ref.startswith(OURS_IN) else c["peer"])
    missing = (f" (peers not in this run: {', '.join(c['peers_missing'])})"
               if c.get("peers_missing") else "")
    if c.get("pairs"):
        pairs = ", ".join(f"{r:.2f}x" for r in c["pairs"])
        return (f"{c['figure']}: median of {len(c['pairs'])} pairs {c['ratio']:.3g}x ({pairs}; "
                f"medians ours {c['ours']:.4g} vs {who} {c['peer_value']:.4g}) (needs {rel} "
                f"{b}x) — {verdict}")
    return (f"{c['figure']}: ours {c['ours']:.4g} vs {who} {c['peer_value']:.4g} = "
            f"{c['ratio']:.3g}x (needs {rel} {b}x) — {verdict}{missing}")


def write_readme(results: Path, runs: list[dict[str, Any]], plots: list[str]) -> Path:
    records, quick_only = latest_records(runs)
    readme = results / "README.md"
    old = readme.read_text() if readme.exists() else ""
    loadtest = ""
    if LOADTEST_START in old and LOADTEST_END in old:
        loadtest = old[old.index(LOADTEST_START) : old.index(LOADTEST_END) + len(LOADTEST_END)]
    latest = runs[-1] if runs else None
    lines: list[str] = []
    w = lines.append
    w("# roomcast benchmark results")
    w("")
    w("Generated by `make bench` (`bench/`); do not edit by hand — the section between the "
      "`loadtest` markers is written by the Locust harness and kept verbatim.")
    w("")
    w("## How to run")
    w("")
    w("| command | what it runs |")
    w("|---|---|")
    w("| `make bench` | the standard suite (about 22 minutes on 2 cores): every configuration "
      "below against roomcast, the uWebSockets.js peer, the Node.js `ws` peer and the Python "
      "`websockets` peer, the 200,000-connection scaleout, the flamegraph, the plots, this "
      "README |")
    w("| `make bench QUICK=1` | a smaller suite (about two minutes) with smaller parameters and "
      "no scaleout; it writes to `results/quick/` (its own runs, README, plots and "
      "flamegraph, not committed) and prints its figures, leaving this page alone |")
    w("| `make bench SCENARIO=fanout` | one scenario (`fanout`, `saturate`, `capacity`, "
      "`joinstorm`, `twonode`, `histmem`, `resume`, `scaleout`) of the chosen suite |")
    w("| `make bench SCENARIO=resume` | the reconnect storm: 1,000 clients resume with `since` "
      "at once after a restart with `--history-file`, after a mass disconnect, and on two "
      "nodes + Redis (about 30 s) |")
    w("| `make bench SCENARIO=histmem` | memory per stored history message: "
      "`python -m bench.history_memory` in process, and the RSS slope of a running server "
      "filled through its sockets, history on and off (about 40 s) |")
    w("| `make bench SCENARIO=twonode` | the scale-out cost: one roomcast node vs two nodes "
      "linked by Redis on the same workload (about 30 s) |")
    w("| `make bench SCENARIO=scaleout` | 200,000 idle joined connections on roomcast "
      "`--workers 12` + Redis (about 5 minutes; it loads the whole machine); "
      "`BENCH_ARGS=\"--only scaleout-20000\"` for a smaller size |")
    w("| `make bench BENCH_ARGS=\"--only fanout-4x100-r50-s100\"` | one configuration; any id "
      "of the form `fanout-RxM-rRATE-sSIZE`, `saturate-RxM-dDEPTH-sSIZE`, `capacity-K`, "
      "`joinstorm-M`, `twonode-fanout-RxM-rRATE-sSIZE`, `twonode-saturate-RxM-dDEPTH-sSIZE`, "
      "`scaleout-K` (`scaleout-K-wW` for W workers), `resume-RxM-rRATE`, `histmem-RxM` "
      "works |")
    w("| `make bench BENCH_ARGS=\"--servers roomcast,uws\"` | a subset of servers (`roomcast`, "
      "`uws`, `node_ws`, `py_websockets`); with `roomcast`, the configurations that compare "
      f"history on and off also run `{NOHISTORY}` |")
    w("| `make bench BENCH_ARGS=\"--no-flamegraph\"` | skip the py-spy run |")
    w("| `make bench BENCH_ARGS=\"--only fanout-4x100-r50-s100 --servers roomcast --pairs 5\"` "
      f"| history on vs off alone: roomcast and `{NOHISTORY}`, five alternating pairs "
      "(`--servers roomcast,uws`: and uws, five pairs too) |")
    w("| `.venv/bin/python -m bench.pooled --since 2026-12-03` | every pair of every full run "
      "in `runs/` on the latest run's CPU model, pooled per configuration (`--figure p99_ms` "
      "for the p99): the spread one run's verdict is drawn from |")
    w("")
    w("Every run writes `results/runs/<timestamp>.json` (machine, CPU model, versions, "
      "parameters, every figure, the exact command) and past runs are kept. The tables below "
      "show, per configuration, the latest run that measured it"
      + (" (only quick runs exist so far)." if quick_only else "; quick runs are kept in "
         "`runs/` but not shown while a full run exists."))
    w("")
    if latest:
        m = latest.get("machine", {})
        v = latest.get("versions", {})
        w(f"Latest run: [`runs/{latest['_file']}`](runs/{latest['_file']}) — "
          f"`{latest.get('command', '')}`, {latest.get('started', '')}, "
          f"{latest.get('duration_s', 0):.0f} s.")
        w("")
        w(f"- Machine: {m.get('cpu_model', '?')}, {m.get('cpus', '?')} CPUs, "
          f"{m.get('mem_total_gib', 0):.0f} GiB, Linux {m.get('kernel', '?')}; server pinned to "
          f"CPU {m.get('server_cpus')}, driver to CPU {m.get('driver_cpus')}; fd limit "
          f"{m.get('fd_limit')} for every server. Load average at start "
          f"{m.get('loadavg_start')}, at end {m.get('loadavg_end')}.")
        w("- Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()))
        w("")
    w("## Method")
    w("")
    w("- Every server is started the same way (`bench/servers.py`): its own process, `taskset` "
      "to the server CPU, the same 20,000 file-descriptor limit, ready when it prints "
      "`roomcast listening on http://HOST:PORT/`; a fresh server per configuration. roomcast "
      "runs with `--rate-limit 0 --max-frames-per-second 0 --log-level warning "
      "--ping-interval 600`.")
    w("- The peers implement the same chat protocol: **uws** (`bench/peers/uws`) is roomcast's "
      "protocol (constant-size presence notices, the member list only in the joiner's copy) "
      "on uWebSockets.js's native pub/sub (a topic per room, `app.publish` per chat; npm "
      "package `uwebsockets`, the v20 binaries); **node_ws** behaves like the seed tutorial's "
      "Node.js `ws` server (every join and leave sends the full member list to every member); "
      "**py_websockets** is the seed's behaviour on Python `websockets`.")
    w(f"- **History on vs off**: roomcast runs with room history on (the default, "
      f"`--history-size 100`); `{NOHISTORY}` is the same command plus `--history-size 0`, run "
      "right after it in the configurations the history targets name (the saturate and "
      "steady-fanout targets), so that the two share the run's conditions. Its rows and the "
      f"*ours/{NOHISTORY}* ratio rows are in the fanout and saturate tables, summed up in the "
      "history section.")
    w("- **Pairs**: in the three CPU-per-delivery targets (saturate 4x250, fanout 4x100 and "
      f"1x1000), roomcast, `{NOHISTORY}` and **uws** (the C++ anchor) run {PAIRS} times each, "
      "the repeats in alternating order with roomcast (the other first, then roomcast first), "
      "and a target against one of them is judged on the median of the pairs' ratios: "
      "single runs differ by up to 30% on this shared machine. In 1x1000, whose p99 is judged "
      "against the best peer, every peer runs in the pairs, and the best peer is the one with "
      "the lowest median over them (not the lowest first run: the lowest of several noisy "
      "runs sits below a typical one). The tables show each server's first run; the targets "
      "table lists every pair's ratio.")
    w("- The driver (`bench/driver.py`) is picows on uvloop in worker processes pinned to the "
      "other CPU(s), at most 15,000 connections per process, source addresses 127.0.0.2 and "
      "up (2,000 connections per address). Members are joined (confirmation received, presence "
      "traffic drained) before any publishing starts. While a fanout measures, the members' "
      "sockets are read by a compiled receiver (`bench/fastrecv.pyx`: one epoll, `recv()`, "
      "frames parsed in C, in a thread without the GIL) instead of picows: read in Python, the "
      "driver took about 11 µs per frame, slower than roomcast and uWS write (about 6-7 µs per "
      "member), so in a room of 1,000 every server's tail latency was the driver's; the "
      "receiver takes about half that (its own thread's CPU time per frame read, "
      "`driver_cpu_per_receipt_us` in each fanout record of the run's JSON) and the "
      "per-member spacing of receipts follows each server's own pace.")
    w("- **fanout**: R rooms x M members; member 0 of each room publishes at a fixed rate on a "
      "schedule (open loop). Latency runs from the *scheduled* send time (in the text as "
      "`id:ns:padding`) to each receipt, every member including the publisher; the first second "
      "is warm-up. *Receipt pace*: µs between one message's successive receipts, from its first "
      "to its 99th-percentile member (all rooms together), the median over messages: the pace "
      "of the slower of the server's writes and the driver's reads, which is what spreads a "
      "broadcast's latencies over its members. "
      "Server CPU = on-CPU time of the server's process tree (`/proc/<pid>/task/*/schedstat`, "
      "ns-precise: the same time as user+sys without its 10 ms ticks) "
      "over the measured window, divided by deliveries. For roomcast the bench also scrapes "
      f"`/metrics` just before and after the window and reports `{FLUSH_METRIC}` over the "
      "window (bucket counts subtracted, p50/p99 interpolated inside the buckets): per room "
      "flush, the time from its first message of the tick arriving to the write to its last "
      "member (*server delay*), a server-side figure the driver's reading cannot blur.")
    w("- **saturate**: closed loop; each room keeps D messages in flight, a message counting as "
      "done when every member of the room has it. Deliveries/s and CPU over a fixed window after "
      "one second of warm-up.")
    w("- **capacity**: K idle connections in rooms of 10, opened and joined in 6 equal steps; "
      "RSS of the server tree after each step; RSS per connection is the slope of a "
      "least-squares line through the steps. Then one member per room sends a chat and every "
      "connection must receive it.")
    w("- **joinstorm**: M connected clients send their join to one room at the same instant; "
      "time until the last one has its confirmation (the first system message reading "
      "`<me> joined #<room>`); bytes the server sent = WebSocket bytes received by the clients "
      "until all presence traffic has arrived.")
    w("- **twonode** (roomcast only): the same workload twice in one run, on one node (the "
      "in-process broker, as above) and on two nodes started with `--redis-url` plus a "
      "`redis-server --save \"\" --appendonly no` on a free port, all three processes pinned "
      "to the same server CPU. In each room the first half of the members (with the publisher, "
      "member 0) is on node A (*origin*), the other half on node B (*other*); on one node the "
      "same halves are kept apart only in the figures. Rooms are joined one at a time. "
      "`fanout` mode: latencies as in fanout, for all members and per half; `saturate` mode: "
      "as in saturate. Server CPU is the sum over both nodes and Redis (split shown), per "
      "delivery; the *two/one* row divides the two-node figure by the one-node figure. All "
      "processes share one CPU, so the two-node setup gains no parallelism here: it shows "
      "what Redis costs per message, not how far two machines scale.")
    w("- **scaleout** (roomcast only): `--workers W --redis-url` (a supervisor and W workers "
      "sharing one port with SO_REUSEPORT) and a `redis-server` on a free port, all pinned to "
      "the server CPU; the driver opens K connections from several processes (at most 15,000 "
      "sockets each, under the 20,000-descriptor limit) and source addresses (at most 10,000 "
      "connections each), in rooms of 10 that the kernel spreads over the workers (their span "
      "is counted from each worker's sockets in /proc), in 5 steps with every connection "
      "joined. RSS per connection = "
      "(tree RSS at the end - tree RSS before the first connection) / K, with the slope "
      "through the steps beside it; a worker's *base* is its RSS before its first connection. "
      "Redis memory from `INFO memory`. Then member 0 of every room sends one chat, the rooms "
      "spread at 1,000 per second, and every connection must receive its room's chat; latency "
      "from each chat's scheduled send to each receipt.")
    w("- **histmem** (roomcast only): memory per stored history message. In process, "
      "`python -m bench.history_memory` (tracemalloc and RSS of a History filled the way the "
      "broker fills it, with and without ids). On a running server (history on, `--history-size"
      " M`, and off): R connections each join a room of their own and send M chats of the "
      "same 60-character text through their socket in 4 batches, one chat in flight per "
      "connection (so that no read buffer grows); server RSS after the joins and after each "
      "batch, bytes per stored message = the slope through the batches; with history off the "
      "same traffic shows what it leaves behind without storing anything.")
    w("- **resume** (roomcast only): the reconnect storm, see its section: R rooms of M "
      "members and one publisher per room chatting throughout; the members lose their "
      "connections (`restart`: SIGTERM and the same command on the same port with "
      "`--history-file`; `disconnect`: an RST on every member's connection; `two_nodes`: two "
      "nodes + Redis, an RST, and every member resumes on the other node), reconnect, and all "
      "send `join` with `since` at one instant. Every chat a member got, live or replayed, is "
      "checked against what its room's publisher saw placed in the room's order.")
    w("- Caveats: the driver has one CPU of its own on this machine, so latencies include the "
      "driver's time to read every member socket (the compiled receiver's `recv()` and parse, "
      "a few µs per socket), equally for every server. The publishers of a fanout run "
      "share one schedule, so R messages leave at the same instant (a burst of R x M "
      "deliveries). In `saturate` the driver's reading speed bounds the fastest server (watch "
      "the server CPU utilisation: below 100% means the server was waiting for the driver). "
      "In `joinstorm` the driver must read all N(N+1)/2 presence frames, which bounds a fast "
      "server's time from below. The machine is shared with "
      "other work (load averages above; servers and driver run at `nice` "
      "-10 when root), which adds noise to tail latencies: compare runs, not single maxima.")
    w("")
    targets = evaluate_targets(records)
    w("## Targets (ours vs the best peer in the same run, unless a peer is named)")
    w("")
    w("| target | verdict | details |")
    w("|---|---|---|")
    for t in targets:
        details = "<br>".join(check_text(c) for c in t["checks"]) or "—"
        if t.get("why"):
            details += "<br>" + t["why"]
        verdict = f"**{t['verdict']}**"
        w(f"| {t['target']} | {verdict} | {details} |")
    w("")
    for scenario, cols in COLUMNS.items():
        recs = [r for r in records.values() if r["scenario"] == scenario]
        if not recs:
            continue
        w(f"## {scenario}")
        w("")
        w("| configuration | server | " + " | ".join(c[1] for c in cols) + " |")
        w("|---|---|" + "---|" * len(cols))
        for rec in sorted(recs, key=lambda r: r["id"]):
            for server in SERVER_ORDER:
                run = rec["runs"].get(server)
                if run is None:
                    continue
                if run.get("error"):
                    err = run["error"].strip().splitlines()[-1][:160].replace("|", "/")
                    w(f"| {rec['id']} | {server} | failed: {err} |"
                      + " |" * (len(cols) - 1))
                    continue
                cells = [fmt(run.get(k), spec) for k, _t, spec, _lb in cols]
                w(f"| {rec['id']} | {server} | " + " | ".join(cells) + " |")
            for peer in (*VARIANTS, *PEERS):
                if OURS in rec["runs"] and peer in rec["runs"]:
                    cells = [ratio(_fig(rec, OURS, k), _fig(rec, peer, k)) for k, *_ in cols]
                    w(f"| {rec['id']} | *ours/{peer}* | " + " | ".join(cells) + " |")
        w("")
        w("| configuration | why | reproduce | run | problems |")
        w("|---|---|---|---|---|")
        for rec in sorted(recs, key=lambda r: r["id"]):
            probs = "; ".join(
                f"{s}: {', '.join(r.get('problems') or [])}"
                for s, r in rec["runs"].items() if r.get("problems")
            ) or "none"
            w(f"| {rec['id']} | {rec.get('note') or ''} | `{rec['reproduce']}` | "
              f"[{rec['_run']['_file']}](runs/{rec['_run']['_file']}) | {probs} |")
        w("")
    _twonode_section(w, records)
    _history_section(w, records, targets)
    _resume_section(w, records)
    _scaleout_section(w, records)
    if plots:
        w("## Plots")
        w("")
        for p in plots:
            w(f"![{p}]({p})")
            w("")
    fg = _latest_flamegraph(runs)
    w("## Flamegraph of roomcast under fanout")
    w("")
    if fg is None:
        w("No flamegraph recorded yet.")
        w("")
    elif fg.get("error"):
        last = fg["error"].strip().splitlines()[-1] if fg["error"].strip() else "?"
        w(f"py-spy failed in run `{fg['_file']}`: {last}")
    else:
        svg = fg.get("svg", "flamegraph-fanout.svg")
        w(f"[`{svg}`]({svg}): `{fg['config']}` "
          f"({fg.get('duration_s')} s at {fg.get('rate_hz')} Hz, run `{fg['_file']}`), "
          f"recorded with `{fg['command']}`.")
        w("")
        hot = fg.get("hot") or {}
        if hot.get("self"):
            w(f"Hottest frames by own samples (of {hot['total_samples']} samples; native code "
              "in uvloop/picows/msgspec is attributed to the Python frame that called it):")
            w("")
            w("| frame | own samples | share |")
            w("|---|---|---|")
            for h in hot["self"]:
                w(f"| `{h['frame']}` | {h['samples']} | {h['pct']:.1f}% |")
            w("")
            inclusive = [h for h in hot.get("total", []) if h["pct"] < 99.0]
            if inclusive:
                w("Largest subtrees (inclusive):")
                w("")
                w("| frame | samples | share |")
                w("|---|---|---|")
                for h in inclusive:
                    w(f"| `{h['frame']}` | {h['samples']} | {h['pct']:.1f}% |")
                w("")
    missed = [t for t in targets if t["verdict"] == "MISSED"]
    w("## What would close the gaps")
    w("")
    if all(t["verdict"] == "not measured" for t in targets):
        w("No target configuration has been measured yet (run `make bench`).")
    elif not missed:
        w("Every measured target is met in the latest figures.")
    else:
        w("Missed: " + "; ".join(
            f"`{t['config']}`" + (f" ({t['hint']})" if t.get("hint") else "") for t in missed)
          + ".")
        w("")
        for line in gap_hints(missed, records, runs):
            w(f"- {line}")
    w("")
    if loadtest:
        w(loadtest)
        w("")
    readme.write_text("\n".join(lines))
    return readme


HINTS = {
    "saturate": "saturate: CPU per delivery falls as messages queue up (one write "
    "then carries several frames per member); on two cores the one-CPU driver bounds "
    "how far any server is saturated (see the server CPU utilisation below 100%); the "
    "rest is the per-member write in the fan-out loop, and it is the kernel's: profiled with "
    "`perf` against uWS (docs/performance.md), both spend most of their CPU in the same "
    "loopback TCP functions and about the same in their own code; the ratio moves with how "
    "the one-CPU driver paces both, not with code either side could cut.",
    "fanout-4x100": "steady fanout: at chat rates every server makes one `send()` per "
    "member per message, and the kernel's loopback TCP work under it is most of the "
    "cost; uWS runs at about 2x the cost of a bare C `send()` loop, so what separates "
    "us is the work between sends: the compiled fan-out loop (`server/fastpath.pyx`) already "
    "calls `send()` itself, so what remains is the Python work per message before it "
    "(decode, validate, encode once) and the kernel's own wake-ups of the reader.",
    "fanout-1x1000": "fanout into 1,000 members: the server's 1,000 sends and the "
    "driver's reading of 1,000 sockets both take milliseconds and overlap, so the "
    "driver bounds p99 for every server; the server delay figures in the fanout table "
    "show the server's own share.",
    "capacity": "capacity: roomcast already shares picows's write buffer and trims its read "
    "buffer to 640 B; what remains is picows's protocol and transport objects, futures and "
    "a client key (about 1 KB), uvloop's transport (about 1.1 KB), the socket and weak "
    "references (about 200 B) and roomcast's own objects (about 500 B): lower needs picows "
    "to read into one loop-wide buffer and drop client-side state on server connections "
    "(docs/performance.md).",
    "joinstorm": "joinstorm: send the member list only to the joiner (already done) "
    "and coalesce presence notices per tick.",
    "scaleout": "scaleout: see the scaleout section for which part failed (connect, "
    "join or broadcast) and the server output in the run file.",
    "history": "history on vs off: per chat the history numbers, stores and (once the ring "
    "is full) evicts one frame, nothing per recipient, so at chat rates the difference should "
    "be well under 10%; a miss is either noise (a shared machine: "
    "compare the on/off rows of several runs) or per-message work that grew (look for "
    "`server/history.py` frames under `ChatCore.chat` in the flamegraph; `History.add` is also "
    "where every chat is encoded and framed, once, which happens with history off too).",
    "resume-restart": "reconnect storm after a restart: see the resume section for the "
    "reasons of `recovered: false` (an `epoch changed` means the history file was not "
    "written or not read back) and which chats went missing.",
    "resume-disconnect": "reconnect storm after a mass disconnect: see the resume section for "
    "the reasons (`too old`, `too many`: the outage outran `--history-size` or one replay's "
    "byte cap) and which chats went missing.",
    "resume-two_nodes": "reconnect storm on two nodes: a member resuming on the other node "
    "needs the server to serve `since` across nodes (issue 13's Redis side: the room's seq and "
    "its stream in Redis, a join whose script returns the history up to its own position); "
    "the resume section says what this run's server did instead.",
}
# hints whose cost shows in a CPU profile: quoted with the run's flamegraph
PROFILED = ("saturate", "fanout-4x100", "fanout-1x1000", "history")


def _hint_key(t: dict[str, Any]) -> str | None:
    if t.get("hint"):
        return str(t["hint"])
    return next((k for k in HINTS if t["config"].startswith(k)), None)


def flamegraph_quote(fg: dict[str, Any] | None, own_run: str | None) -> str:
    """The hottest frames of a flamegraph, in words, naming the run it was recorded in."""
    if fg is None:
        return "no flamegraph was recorded in these runs (run `make bench` without " \
            "`--no-flamegraph` to get one)."
    if fg.get("error") or not (fg.get("hot") or {}).get("self"):
        return f"the flamegraph of run `{fg['_file']}` failed, so no frames can be quoted."
    hot = fg["hot"]
    top = "; ".join(f"`{h['frame']}` {h['pct']:.1f}%" for h in hot["self"][:3])
    where = ("this run's flamegraph" if fg["_file"] == own_run
             else f"the latest flamegraph (run `{fg['_file']}`)")
    history = [h for h in hot["self"] if "history.py" in h["frame"]]
    hist = ("; frames of `server/history.py`: " + ", ".join(
        f"`{h['frame']}` {h['pct']:.1f}%" for h in history)) if history else \
        "; no `server/history.py` frame among its hottest"
    return (f"{where} (`{fg.get('config')}`, {hot['total_samples']:,} samples) has the most "
            f"own samples in {top}{hist}.")


def _missed_cpu(target: dict[str, Any]) -> bool:
    """Whether a CPU figure is among what the target missed (a latency miss is the driver's
    and a server's pace, which a CPU flamegraph does not show)."""
    return any(c.get("met") is False and str(c.get("figure", "")).startswith("cpu")
               for c in target.get("checks", []))


def gap_hints(missed: list[dict[str, Any]], records: dict[str, dict[str, Any]],
              runs: list[dict[str, Any]]) -> list[str]:
    """One line per kind of missed target; CPU misses quote the hot frames of the flamegraph
    recorded in the same run as the missed figure (else the latest one, named)."""
    latest = _latest_flamegraph(runs)
    by_key: dict[str, list[dict[str, Any]]] = {}
    for t in missed:
        key = _hint_key(t)
        if key is not None:
            by_key.setdefault(key, []).append(t)
    out: list[str] = []
    for key, targets in by_key.items():
        text = HINTS[key]
        cpu = [t for t in targets if _missed_cpu(t)]
        if key in PROFILED and cpu:
            run = records.get(cpu[0]["config"], {}).get("_run", {})
            own = run.get("flamegraph")
            fg = {**own, "_file": run.get("_file")} if own else latest
            text += " Profile: " + flamegraph_quote(fg, run.get("_file"))
        out.append(text)
    return out


TWONODE_SETUPS = (("one_node", "one node"), ("two_nodes", "two nodes + Redis"))
TWONODE_COLUMNS: dict[str, list[tuple[str, str, str]]] = {
    "fanout": [
        ("deliveries_per_s", "deliveries/s", "{:,.0f}"),
        ("p50_ms", "p50 ms", "{:.2f}"),
        ("p99_ms", "p99 ms", "{:.2f}"),
        ("p999_ms", "p99.9 ms", "{:.2f}"),
        ("max_ms", "max ms", "{:.2f}"),
        ("origin_p50_ms", "origin p50", "{:.2f}"),
        ("origin_p99_ms", "origin p99", "{:.2f}"),
        ("other_p50_ms", "other p50", "{:.2f}"),
        ("other_p99_ms", "other p99", "{:.2f}"),
        ("cpu_per_delivery_us", "server CPU µs/delivery (sum)", "{:.2f}"),
        ("server_cpu_util", "server CPU util", "{:.0%}"),
        ("deliveries", "deliveries", "{:,}"),
        ("losses", "losses", "{:,}"),
    ],
    "saturate": [
        ("deliveries_per_s", "deliveries/s", "{:,.0f}"),
        ("messages_per_s", "messages/s", "{:,.0f}"),
        ("cpu_per_delivery_us", "server CPU µs/delivery (sum)", "{:.2f}"),
        ("server_cpu_util", "server CPU util", "{:.0%}"),
        ("deliveries", "deliveries", "{:,}"),
        ("losses", "losses", "{:,}"),
    ],
}


def _cpu_split(fig: dict[str, Any]) -> str:
    by = fig.get("cpu_per_delivery_by_process_us") or {}
    names = {"node_a": "A", "node_b": "B", "redis": "Redis"}
    return " + ".join(f"{names.get(k, k)} {v:.2f}" for k, v in by.items()
                      if isinstance(v, int | float)) or "—"


def _twonode_section(w: Any, records: dict[str, dict[str, Any]]) -> None:
    recs = [r for r in records.values() if r["scenario"] == "twonode"]
    if not recs:
        return
    w("## twonode (Redis between two nodes vs one node)")
    w("")
    w("Each room's members split over node A (*origin*: the publisher's half) and node B "
      "(*other*); the one-node row is the same workload on a single node measured in the same "
      "run. CPU is summed over every process under test; the split column shows node A + "
      "node B + Redis in µs per delivery.")
    w("")
    for mode, cols in TWONODE_COLUMNS.items():
        mrecs = sorted((r for r in recs if r["params"].get("mode", "fanout") == mode),
                       key=lambda r: r["id"])
        if not mrecs:
            continue
        w("| configuration | setup | " + " | ".join(c[1] for c in cols) + " | CPU split µs |")
        w("|---|---|" + "---|" * (len(cols) + 1))
        for rec in mrecs:
            runs = rec["runs"]
            for key, label in TWONODE_SETUPS:
                fig = runs.get(key)
                if fig is None:
                    continue
                if fig.get("error"):
                    err = fig["error"].strip().splitlines()[-1][:160].replace("|", "/")
                    w(f"| {rec['id']} | {label} | failed: {err} |" + " |" * len(cols))
                    continue
                cells = [fmt(fig.get(k), spec) for k, _t, spec in cols]
                w(f"| {rec['id']} | {label} | " + " | ".join(cells) + f" | {_cpu_split(fig)} |")
            one, two = runs.get("one_node", {}), runs.get("two_nodes", {})
            if one and two and not one.get("error") and not two.get("error"):
                cells = [ratio(two.get(k), one.get(k)) if k not in ("deliveries", "losses")
                         else "" for k, _t, _s in cols]
                w(f"| {rec['id']} | *two/one* | " + " | ".join(cells) + " | |")
        w("")
    w("| configuration | why | reproduce | run | problems |")
    w("|---|---|---|---|---|")
    for rec in sorted(recs, key=lambda r: r["id"]):
        probs = "; ".join(
            f"{s}: {', '.join(r.get('problems') or [])}"
            for s, r in rec["runs"].items() if r.get("problems")
        ) or "none"
        w(f"| {rec['id']} | {rec.get('note') or ''} | `{rec['reproduce']}` (all: "
          f"`make bench SCENARIO=twonode`) | "
          f"[{rec['_run']['_file']}](runs/{rec['_run']['_file']}) | {probs} |")
    w("")


SCALEOUT_ROWS: list[tuple[str, str, str]] = [
    ("connections", "connections", "{:,}"),
    ("workers", "server workers", "{:,}"),
    ("driver_processes", "driver processes", "{:,}"),
    ("source_address_count", "driver source addresses", "{:,}"),
    ("connected", "connected", "{:,}"),
    ("confirmed", "joined (confirmation received)", "{:,}"),
    ("received_broadcast", "received their room's broadcast", "{:,}"),
    ("fill_elapsed_s", "time to connect and join all (s)", "{:,.1f}"),
    ("connect_elapsed_s", "of which connecting (s)", "{:,.1f}"),
    ("connect_rate_per_s", "connects per second (while connecting)", "{:,.0f}"),
    ("rss_tree_base_bytes", "server tree RSS before the first connection (MiB)", "mib"),
    ("rss_tree_final_bytes", "server tree RSS at the end (MiB)", "mib"),
    ("rss_per_conn_bytes", "server tree RSS per connection (bytes, end - base)", "{:,.0f}"),
    ("rss_per_conn_slope_bytes", "server tree RSS per connection (bytes, slope of the steps)",
     "{:,.0f}"),
    ("worker_base_rss_median_bytes", "worker base RSS, median (MiB)", "mib"),
    ("supervisor_rss_bytes", "supervisor RSS (MiB)", "mib"),
    ("redis_used_memory_after", "Redis used_memory at the end (MiB)", "mib"),
    ("redis_used_memory_per_conn_bytes", "Redis used_memory per connection (bytes)",
     "{:,.0f}"),
    ("room_span_mean", "workers per room of 10, mean", "{:.2f}"),
    ("conns_per_worker_range", "connections per worker, min-max", "{}"),
    ("broadcast_rooms", "broadcasts (one per room)", "{:,}"),
    ("broadcast_window_s", "spread over (s)", "{:,.1f}"),
    ("broadcast_p50_ms", "broadcast latency p50 (ms)", "{:,.1f}"),
    ("broadcast_p99_ms", "broadcast latency p99 (ms)", "{:,.1f}"),
    ("broadcast_max_ms", "broadcast latency max (ms)", "{:,.1f}"),
    ("driver_rss_bytes", "driver processes' RSS (MiB)", "mib"),
]


def _scaleout_view(fig: dict[str, Any]) -> dict[str, Any]:
    view = dict(fig)
    view["source_address_count"] = len(fig.get("source_addresses") or []) or None
    view["redis_used_memory_after"] = (fig.get("redis_after") or {}).get("used_memory")
    per = fig.get("conns_per_worker") or []
    view["conns_per_worker_range"] = f"{min(per):,}-{max(per):,}" if per else None
    return view


def _scaleout_section(w: Any, records: dict[str, dict[str, Any]]) -> None:
    recs = sorted((r for r in records.values() if r["scenario"] == "scaleout"),
                  key=lambda r: r["params"]["connections"])
    if not recs:
        return
    w("## scaleout (roomcast --workers on Redis, one machine)")
    w("")
    figs = [(rec, _scaleout_view(rec["runs"].get(OURS, {}))) for rec in recs]
    w("| figure | " + " | ".join(f"`{rec['id']}`" for rec, _ in figs) + " |")
    w("|---|" + "---|" * len(figs))
    for key, title, spec in SCALEOUT_ROWS:
        cells = []
        for _rec, view in figs:
            if view.get("error"):
                cells.append("failed: " + view["error"].strip().splitlines()[-1][:120]
                             .replace("|", "/"))
            else:
                cells.append(fmt(view.get(key), spec))
        w(f"| {title} | " + " | ".join(cells) + " |")
    w("")
    w("| configuration | why | reproduce | run | problems |")
    w("|---|---|---|---|---|")
    for rec, view in figs:
        probs = ", ".join(view.get("problems") or []) or "none"
        w(f"| {rec['id']} | {rec.get('note') or ''} | `{rec['reproduce']}` | "
          f"[{rec['_run']['_file']}](runs/{rec['_run']['_file']}) | {probs} |")
    w("")


def _latest_flamegraph(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    for run in reversed(runs):
        fg = run.get("flamegraph")
        if fg:
            return {**fg, "_file": run["_file"]}
    return None


# --------------------------------------------------------------------------- plots


def make_plots(results: Path, runs: list[dict[str, Any]]) -> list[str]:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    records, _ = latest_records(runs)
    made = []

    # latency percentiles vs room size: fanout 1xM at 20 msg/s
    sizes = sorted(
        (r for r in records.values() if r["scenario"] == "fanout" and r["params"]["rooms"] == 1),
        key=lambda r: r["params"]["members"],
    )
    if sizes:
        fig, ax = plt.subplots(figsize=(8, 5))
        for server in PLOT_ORDER:
            pts = [(r["params"]["members"], r["runs"][server]) for r in sizes
                   if server in r["runs"] and r["runs"][server].get("p50_ms") is not None]
            if not pts:
                continue
            xs = [p[0] for p in pts]
            for key, style in (("p50_ms", "-o"), ("p99_ms", "--s"), ("p999_ms", ":^")):
                ax.plot(xs, [p[1][key] for p in pts], style, color=COLORS[server],
                        label=f"{server} {key[:-3]}")
            flush = [(m, f) for m, f in pts if f.get("flush_p99_us") is not None]
            for key, style in (("flush_p50_us", "-.x"), ("flush_p99_us", "-.+")):
                if flush:
                    ax.plot([m for m, _ in flush], [f[key] / 1000 for _, f in flush], style,
                            color="black", label=f"{server} server delay {key[6:9]}")
        rate = sizes[0]["params"]["rate"]
        ax.set(xscale="log", yscale="log", xlabel="room size (members)",
               ylabel="latency from scheduled send; server delay (ms)",
               title=f"fanout: one room, one publisher at {rate:g} msg/s")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, ncol=3)
        fig.tight_layout()
        fig.savefig(results / "latency-vs-room-size.png", dpi=110)
        plt.close(fig)
        made.append("latency-vs-room-size.png")

    # CPU per delivery vs load: fanout with several rooms at several rates, plus saturate
    loads = [r for r in records.values() if r["scenario"] == "fanout" and r["params"]["rooms"] > 1]
    sats = [r for r in records.values() if r["scenario"] == "saturate"]
    if loads or sats:
        fig, ax = plt.subplots(figsize=(8, 5))
        for server in PLOT_ORDER:
            pts = sorted(
                (r["runs"][server]["deliveries_per_s"], r["runs"][server]["cpu_per_delivery_us"])
                for r in loads
                if server in r["runs"] and r["runs"][server].get("cpu_per_delivery_us")
            )
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "-o", color=COLORS[server],
                        label=f"{server} fanout (open loop)")
            spts = [(r["runs"][server]["deliveries_per_s"],
                     r["runs"][server]["cpu_per_delivery_us"])
                    for r in sats
                    if server in r["runs"] and r["runs"][server].get("cpu_per_delivery_us")]
            if spts:
                ax.plot([p[0] for p in spts], [p[1] for p in spts], "*", markersize=14,
                        color=COLORS[server], label=f"{server} saturate (closed loop)")
        ax.set(xscale="log", yscale="log", xlabel="deliveries per second",
               ylabel="server CPU per delivery (µs)",
               title="server CPU per delivered message vs load")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(results / "cpu-per-delivery-vs-load.png", dpi=110)
        plt.close(fig)
        made.append("cpu-per-delivery-vs-load.png")

    caps = [r for r in records.values()
            if r["scenario"] == "capacity" and not r["params"].get("cookie_bytes")]
    if caps:
        cap = max(caps, key=lambda r: r["params"]["connections"])
        fig, ax = plt.subplots(figsize=(8, 5))
        for server in PLOT_ORDER:
            run = cap["runs"].get(server)
            if not run or not run.get("rss_points"):
                continue
            xs = [p[0] for p in run["rss_points"]]
            ys = [p[1] / 2**20 for p in run["rss_points"]]
            slope = run.get("rss_per_conn_bytes")
            label = f"{server} ({slope:,.0f} B/conn)" if slope else server
            ax.plot(xs, ys, "-o", color=COLORS[server], label=label)
        ax.set(xlabel="idle joined connections", ylabel="server RSS (MiB)",
               title=f"{cap['id']}: server memory vs connections (rooms of 10)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(results / "rss-vs-connections.png", dpi=110)
        plt.close(fig)
        made.append("rss-vs-connections.png")
    return made


def labels() -> dict[str, str]:
    return {k: v.label for k, v in SERVER_KINDS.items()}


# --------------------------------------------------------------------------- history, resume


def _reproduce_rows(w: Any, recs: list[dict[str, Any]]) -> None:
    w("| configuration | why | reproduce | run | problems |")
    w("|---|---|---|---|---|")
    for rec in recs:
        probs = "; ".join(
            f"{s}: {', '.join(r.get('problems') or [])}"
            for s, r in rec["runs"].items() if r.get("problems")
        ) or "none"
        w(f"| {rec['id']} | {rec.get('note') or ''} | `{rec['reproduce']}` | "
          f"[{rec['_run']['_file']}](runs/{rec['_run']['_file']}) | {probs.replace('|', '/')} |")
    w("")


def _history_section(w: Any, records: dict[str, dict[str, Any]],
                     targets: list[dict[str, Any]]) -> None:
    onoff = [r for r in records.values()
             if r["scenario"] in ("fanout", "saturate") and NOHISTORY in r["runs"]]
    mem = sorted((r for r in records.values() if r["scenario"] == "histmem"),
                 key=lambda r: r["id"])
    if not onoff and not mem:
        return
    w("## history (what room history costs)")
    w("")
    w("roomcast keeps every room's last `--history-size` chat messages (100 by default) for "
      "`history` and `since` joins ([docs/history.md](../docs/history.md)). "
      f"`{NOHISTORY}` is the same server with `--history-size 0`, run right after roomcast "
      "in the same configurations of the same run.")
    w("")
    if onoff:
        verdicts = {t["config"]: t for t in targets if t.get("hint") == "history"}
        w("| configuration | CPU µs/delivery, history on | off | on/off | each pair's on/off "
          "| target | deliveries/s on | off | p99 ms on | off |")
        w("|---|---|---|---|---|---|---|---|---|---|")
        for rec in sorted(onoff, key=lambda r: r["id"]):
            on, off = rec["runs"].get(OURS, {}), rec["runs"][NOHISTORY]
            t = verdicts.get(rec["id"])
            verdict = f"≤ 1.1x: **{t['verdict']}**" if t else "—"
            if on.get("error") or off.get("error"):
                verdict = "failed (see the run file)"
            paired = rec.get("pairs", {}).get(NOHISTORY, {}).get("cpu_per_delivery_us") or {}
            if paired.get("median_ratio") is not None:
                cpu_on, cpu_off = paired["median_ours"], paired["median_other"]
                onoff_ratio = f"{paired['median_ratio']:.2f}x"
                each = ", ".join(f"{r:.2f}x" for r in paired["ratios"])
            else:
                cpu_on, cpu_off = on.get("cpu_per_delivery_us"), off.get("cpu_per_delivery_us")
                onoff_ratio, each = ratio(cpu_on, cpu_off), "—"
            w(f"| {rec['id']} | {fmt(cpu_on, '{:.2f}')} | {fmt(cpu_off, '{:.2f}')} | "
              f"{onoff_ratio} | {each} | {verdict} | "
              f"{fmt(on.get('deliveries_per_s'), '{:,.0f}')} | "
              f"{fmt(off.get('deliveries_per_s'), '{:,.0f}')} | "
              f"{fmt(on.get('p99_ms'), '{:.2f}')} | {fmt(off.get('p99_ms'), '{:.2f}')} |")
        w("")
        w("With several pairs, the CPU columns are each side's median and *on/off* is the median "
          "of the pairs' ratios (pairs run in alternating order: off then on, on then off); the "
          "other columns are the first pair's, as in the fanout and saturate tables. This "
          "machine is shared with other work: single pairs "
          "differ by up to 20% here, which is why the target is judged on the median.")
        w("")
    for rec in mem:
        _history_memory_table(w, rec)
    if mem:
        _reproduce_rows(w, mem)


def _b(value: Any) -> str:
    return "—" if not _number(value) else f"{value:,.0f} B"


def _history_memory_table(w: Any, rec: dict[str, Any]) -> None:
    runs = rec["runs"]
    p = rec["params"]
    inproc = runs.get("in_process", {})
    on, off = runs.get(OURS, {}), runs.get(NOHISTORY, {})
    w(f"### Memory per stored message (`{rec['id']}`: {p['rooms']:,} rooms x "
      f"{p['per_room']} messages of {p['text_length']}-character texts)")
    w("")
    if inproc:
        w(f"In process: `{inproc.get('command', '?')}` (a History filled the way the broker "
          "fills it; tracemalloc counts every Python allocation, RSS is a fresh process's):")
        w("")
        w("| per stored message | without `id` | with a 20-character `id` |")
        w("|---|---|---|")
        if inproc.get("error"):
            err = inproc["error"].strip().splitlines()[-1][:160].replace("|", "/")
            w(f"| failed: {err} | | |")
        else:
            a, b = inproc.get("without_ids", {}), inproc.get("with_ids", {})
            for key, title in (("frame_bytes_per_message", "the frame (stored as sent)"),
                               ("traced_bytes_per_message", "every Python allocation"),
                               ("rss_bytes_per_message", "RSS growth"),
                               ("accounted_bytes_per_message",
                                "counted against `--history-max-bytes`")):
                w(f"| {title} | {_b(a.get(key))} | "
                  f"{_b(b.get(key))} |")
            w(f"| (per room: an empty stream) | "
              f"{_b(inproc.get('empty_stream_bytes_traced'))} | |")
        w("")
    if on or off:
        w(f"On a running server: `{rec['reproduce']}` (one connection per room sends its "
          f"{p['per_room']} chats through its socket, one in flight at a time; the server's "
          "RSS after the joins and after each batch):")
        w("")
        w("| server | RSS per stored message (slope) | RSS growth / messages | frame | "
          "counted (`roomcast_history_bytes` / messages, streams included) |")
        w("|---|---|---|---|---|")
        for name, fig in ((OURS, on), (NOHISTORY, off)):
            if not fig:
                continue
            if fig.get("error"):
                err = fig["error"].strip().splitlines()[-1][:160].replace("|", "/")
                w(f"| {name} | failed: {err} | | | |")
                continue
            slope = fig.get("rss_per_message_bytes")
            slope = 0.0 if isinstance(slope, float) and abs(slope) < 0.5 else slope
            w(f"| {name} | {_b(slope)} | "
              f"{_b(fig.get('rss_growth_per_message_bytes'))} | "
              f"{_b(fig.get('frame_bytes'))} | "
              f"{_b(fig.get('counted_per_message_bytes'))} |")
        w("")


def _resume_section(w: Any, records: dict[str, dict[str, Any]]) -> None:
    from bench.resume import LABELS, SETUPS  # noqa: PLC0415

    recs = sorted((r for r in records.values() if r["scenario"] == "resume"),
                  key=lambda r: r["id"])
    if not recs:
        return
    w("## resume (reconnect storm)")
    w("")
    p = recs[0]["params"]
    w(f"R rooms x M members; one more client per room, its publisher, chats at {p['rate']:g} "
      "msg/s throughout (the room's others). The members remember their position (the "
      "welcome's `epoch`, the last `seq` they got), lose their connections, stay away "
      f"{p['outage']:g} s while the publishers chat on, reconnect, and then all send their "
      "`join` with `since` at the same instant. *All history* / *all live*: from that instant "
      "until the last member has its `history` answer / its welcome. *Missing*, "
      "*duplicates*, *mismatched*: each member's chats (live and replayed) against what its "
      "room's publisher saw placed in the room's order, summed over the members. Server CPU "
      "is on-CPU time (schedstat) of every server process during the storm.")
    w("")
    cols = [
        ("clients", "clients", "{:,}"),
        ("reconnect_elapsed_s", "reconnect (s)", "{:.2f}"),
        ("all_history_ms", "all history (ms)", "{:,.0f}"),
        ("all_live_ms", "all live (ms)", "{:,.0f}"),
        ("live_p50_ms", "live p50 (ms)", "{:,.0f}"),
        ("live_p99_ms", "live p99 (ms)", "{:,.0f}"),
        ("recovered", "`recovered: true`", "{:,}"),
        ("not_recovered", "`recovered: false`", "{:,}"),
        ("no_history", "no `history`", "{:,}"),
        ("server_counted_resumes_recovered", "the server's count of recovered resumes",
         "{:,.0f}"),
        ("missing", "missing", "{:,}"),
        ("duplicates", "duplicates", "{:,}"),
        ("mismatched", "mismatched", "{:,}"),
        ("replayed_per_client", "replayed per client", "{:.1f}"),
        ("server_cpu_storm_s", "server CPU (ms)", "ms"),
        ("server_cpu_per_resume_us", "CPU per resume (µs)", "{:,.0f}"),
        ("downtime_s", "downtime (s)", "{:.2f}"),
    ]
    w("| configuration | setup | " + " | ".join(c[1] for c in cols) + " |")
    w("|---|---|" + "---|" * len(cols))
    notes = []
    for rec in recs:
        for setup in SETUPS:
            fig = rec["runs"].get(setup)
            if fig is None:
                continue
            label = LABELS[setup]
            if fig.get("error"):
                err = fig["error"].strip().splitlines()[-1][:160].replace("|", "/")
                w(f"| {rec['id']} | {label} | failed: {err} |" + " |" * (len(cols) - 1))
                continue
            cells = [f"{fig[k] * 1e3:,.0f}" if spec == "ms" and isinstance(fig.get(k), float)
                     else fmt(fig.get(k), spec) for k, _t, spec in cols]
            w(f"| {rec['id']} | {label} | " + " | ".join(cells) + " |")
            if fig.get("unsupported"):
                notes.append(f"- `{rec['id']}` {label}: {fig['unsupported']}; so these members "
                             "missed what was said while they were away.")
            elif fig.get("reasons"):
                notes.append(f"- `{rec['id']}` {label}: not recovered because "
                             + ", ".join(f"{k} ({v:,})" for k, v in fig["reasons"].items()))
    w("")
    if notes:
        w("\n".join(notes))
        w("")
    _reproduce_rows(w, recs)
