"""History on vs off with the Locust harness: ``python -m loadtest.run --compare-history``.

The same fan-out swarm runs against a fresh local server started with ``--history-size 0``
(off) and with the default history (on), in pairs of alternating order (off, on; then on, off;
...): ``compare_history`` starts each leg's server and Locust and takes its figures. While each
leg runs, a ``Probe`` (a thread of this process, no gevent) reads every 2 s the
server's ``/metrics`` (deliveries, chats, bytes sent, memberships, the history gauges) and its
on-CPU time from ``/proc/<pid>/task/*/schedstat``. The window is the steady part of the leg:
from ``settle`` seconds after every user was in its room to the last sample that still had them
all (so the joins and the stop are left out). Per leg:

* CPU per delivery = server on-CPU time / ``roomcast_deliveries_total`` over the window;
* deliveries per write (``roomcast_writes_total``): 1 when every member reads as fast as the
  server writes; more when frames waited for a slow reader and went out together, which makes
  a delivery cheaper: a sign that the load generator, not the server, set the pace;
* with history on, memory per stored message = ``roomcast_history_bytes`` /
  ``roomcast_history_messages`` at the end of the leg: the bytes the server counts against
  ``--history-max-bytes`` (the frame as sent plus its per-entry overhead, plus each room's
  stream overhead spread over its messages; docs/history.md checks that this is never less
  than what Python really allocates).

Each pair gives a ratio on/off; the result is their median. Single pairs on a shared machine
differ by up to 20% (in one run of three pairs: 1.23, 1.03, 0.97): read the median. The same
ratio per socket write (``cpu_per_write_us``) is a cross-check that coalescing did not move.
The legs' load is a ``Shape``: ``FULL_SHAPE``, or ``QUICK_SHAPE`` with ``--quick``. No gevent
and no Locust here: Locust runs in a subprocess (loadtest/local.py).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtest import local, procstats, report, serverstats

INTERVAL = 2.0
TARGET_RATIO = 1.1  # issue 13: CPU per delivery with history within 10% of without
# /metrics name -> row key
METRICS = {
    "roomcast_deliveries_total": "deliveries",
    "roomcast_chat_messages_total": "chats",
    "roomcast_bytes_sent_total": "bytes_sent",
    "roomcast_writes_total": "writes",
    "roomcast_members": "members",
    "roomcast_connections": "connections",
    "roomcast_history_messages": "history_messages",
    "roomcast_history_bytes": "history_bytes",
    "roomcast_history_rooms": "history_rooms",
}


@dataclass(frozen=True)
class Shape:
    """The legs' load: the fan-out swarm's users, spawn rate and run time per leg (the defaults of
    ``--users``, ``--spawn-rate``, ``--run-time``), its rooms and their rate, the seconds left
    out after the joins (``settle``) and the probe's interval."""

    users: int
    spawn_rate: float
    run_time: str
    room_size: int
    rate: int  # chats per second per room (its first member's)
    settle: float
    interval: float = INTERVAL

    def locust_args(self) -> list[str]:
        return ["--fanout-room-size", str(self.room_size), "--fanout-rate", str(self.rate)]


# rooms of 100, 10 msg/s each (1,000 users: 10,000 deliveries/s, which one Locust process reads
# with little lag; at 20,000 it fell behind and its publishers' catch-up bursts made the server
# coalesce writes); --quick: rooms of 50
FULL_SHAPE = Shape(users=1000, spawn_rate=200.0, run_time="60s", room_size=100, rate=10,
                   settle=5.0)
QUICK_SHAPE = Shape(users=200, spawn_rate=100.0, run_time="14s", room_size=50, rate=10,
                    settle=2.0)


def scrape(url: str, timeout: float = 2.0) -> dict[str, float]:
    request = urllib.request.Request(url, headers={"Accept": "text/plain"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        body: bytes = response.read(4 * 1024 * 1024)
    values = serverstats.parse_exposition(body.decode("utf-8", "replace"), frozenset(METRICS))
    return {METRICS[name]: value for name, value in values.items()}


def sample(pid: int, url: str, started: float) -> dict[str, Any]:
    """One row: the server's counters and gauges, then its CPU time and RSS at once after."""
    row: dict[str, Any] = dict.fromkeys(("deliveries", "chats", "bytes_sent", "writes", "members",
                                         "connections", "history_messages", "history_bytes",
                                         "history_rooms"))
    try:
        row |= scrape(url)
    except (OSError, ValueError) as exc:
        row["error"] = f"{type(exc).__name__}: {exc}"
    row["cpu_s"] = procstats.oncpu_seconds(pid)
    row["rss_kb"] = procstats.rss_kb(pid)
    row["t"] = round(time.monotonic() - started, 3)
    return row


class Probe:
    """Samples a local server every ``interval`` seconds in a thread, and once more on stop()."""

    def __init__(self, pid: int, url: str, interval: float = INTERVAL) -> None:
        self.pid = pid
        self.url = url
        self.interval = interval
        self.rows: list[dict[str, Any]] = []
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> Probe:
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.rows.append(sample(self.pid, self.url, self._started))

    def stop(self) -> None:
        """Stops sampling and takes a last sample (the server must still be running)."""
        self._stop.set()
        self._thread.join(self.interval + 5.0)
        self.rows.append(sample(self.pid, self.url, self._started))


FULL = 0.99  # the share of the users in their rooms that counts as "all" (a straggler or two)


def steady_window(rows: Sequence[dict[str, Any]], members: int, settle: float,
                  ) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The first and last row of the steady part: from ``settle`` s after the first row in
    which all ``members`` (99% of them) were in their rooms to the last such row (None when
    too short)."""
    need = max(1, int(members * FULL))
    full = [r for r in rows if (r.get("members") or 0) >= need and r.get("cpu_s") is not None
            and r.get("deliveries") is not None]
    if not full:
        return None
    start = full[0]["t"] + settle
    steady = [r for r in full if r["t"] >= start]
    if len(steady) < 2:
        return None
    return steady[0], steady[-1]


def leg_figures(rows: Sequence[dict[str, Any]], members: int, settle: float) -> dict[str, Any]:
    """One leg's figures from its probe rows (see the module docstring)."""
    last = rows[-1] if rows else {}
    fig: dict[str, Any] = {
        "samples": len(rows),
        "members_peak": max((r.get("members") or 0 for r in rows), default=0),
        "rss_final_kb": last.get("rss_kb"),
        "history_messages": last.get("history_messages"),
        "history_bytes": last.get("history_bytes"),
        "history_rooms": last.get("history_rooms"),
        "bytes_per_stored_message": round(last["history_bytes"] / last["history_messages"], 1)
        if last.get("history_messages") and last.get("history_bytes") is not None else None,
    }
    window = steady_window(rows, members, settle)
    if window is None:
        fig["error"] = (f"no steady window: fewer than two samples with all {members} users in "
                        f"their rooms, {settle:g} s after they were")
        return fig
    a, b = window
    seconds = b["t"] - a["t"]
    deliveries = b["deliveries"] - a["deliveries"]
    cpu = b["cpu_s"] - a["cpu_s"]
    chats = (b["chats"] or 0) - (a["chats"] or 0)
    sent = (b["bytes_sent"] or 0) - (a["bytes_sent"] or 0)
    writes = (b.get("writes") or 0) - (a.get("writes") or 0)
    fig |= {
        "window_s": round(seconds, 1),
        "deliveries": int(deliveries),
        "deliveries_per_s": round(deliveries / seconds) if seconds > 0 else None,
        "chats": int(chats),
        "server_cpu_s": round(cpu, 3),
        "server_cpu_util": round(cpu / seconds, 3) if seconds > 0 else None,
        "cpu_per_delivery_us": round(cpu * 1e6 / deliveries, 3) if deliveries > 0 else None,
        "bytes_per_delivery": round(sent / deliveries, 1) if deliveries > 0 else None,
        # more than 1: frames waiting for a slow reader went out together (cheaper per delivery)
        "deliveries_per_write": round(deliveries / writes, 3) if writes > 0 else None,
        "cpu_per_write_us": round(cpu * 1e6 / writes, 3) if writes > 0 else None,
    }
    return fig


def order(pairs: int) -> list[tuple[int, str]]:
    """(pair, leg) in run order: off then on, then on then off, and so on."""
    out: list[tuple[int, str]] = []
    for pair in range(1, pairs + 1):
        legs = ("off", "on") if pair % 2 else ("on", "off")
        out.extend((pair, leg) for leg in legs)
    return out


def compare(legs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The pairs' ratios of CPU per delivery (on/off), their median, and memory per stored
    message (the "on" legs' median)."""
    ratios: list[float] = []
    write_ratios: list[float] = []
    by_pair: dict[int, dict[str, dict[str, Any]]] = {}
    for leg in legs:
        by_pair.setdefault(int(leg["pair"]), {})[str(leg["label"])] = leg
    pairs = []
    for number in sorted(by_pair):
        on, off = by_pair[number].get("on", {}), by_pair[number].get("off", {})
        a, b = on.get("cpu_per_delivery_us"), off.get("cpu_per_delivery_us")
        ratio = round(a / b, 3) if a and b else None
        if ratio is not None:
            ratios.append(ratio)
        wa, wb = on.get("cpu_per_write_us"), off.get("cpu_per_write_us")
        write_ratio = round(wa / wb, 3) if wa and wb else None
        if write_ratio is not None:
            write_ratios.append(write_ratio)
        pairs.append({"pair": number, "on_us": a, "off_us": b, "ratio": ratio,
                      "write_ratio": write_ratio})

    def median(label: str, key: str) -> float | None:
        values = [leg[key] for leg in legs if leg["label"] == label and leg.get(key) is not None]
        return round(statistics.median(values), 3) if values else None

    ratio = round(statistics.median(ratios), 3) if ratios else None
    return {
        "pairs": pairs,
        "ratio": ratio,
        "target": TARGET_RATIO,
        "met": None if ratio is None else ratio <= TARGET_RATIO,
        # the same per socket write: not moved by how many frames each write carried
        "write_ratio": round(statistics.median(write_ratios), 3) if write_ratios else None,
        "on_cpu_per_delivery_us": median("on", "cpu_per_delivery_us"),
        "off_cpu_per_delivery_us": median("off", "cpu_per_delivery_us"),
        "bytes_per_stored_message": median("on", "bytes_per_stored_message"),
        "history_messages": median("on", "history_messages"),
        "legs": list(legs),
    }


def compare_history(args: argparse.Namespace, argv: list[str] | None) -> int:
    """The fan-out swarm against a fresh server per leg, history off and on; writes the figures
    and the README sub-section, returns the exit code. ``args`` are run.py's (``--users``,
    ``--spawn-rate`` and ``--run-time`` default to the shape's)."""
    shape = QUICK_SHAPE if args.quick else FULL_SHAPE
    server_prefix, locust_prefix = local.cpu_split()
    started = dt.datetime.now(dt.UTC)
    load_before = os.getloadavg()[0]
    settle = shape.settle
    locust_extra = shape.locust_args()
    legs: list[dict[str, Any]] = []
    codes: list[int] = []
    for pair, label in order(args.pairs):
        name = f"{args.prefix}-{label}-{pair}"
        prefix = str(args.out / name)
        local.clean(args.out, name)
        server_args = [*args.server_arg, *(["--history-size", "0"] if label == "off" else [])]
        server = local.LocalServer(server_prefix, server_args)
        print(f"loadtest: history {label} (pair {pair}): started {' '.join(server.cmd)} -> "
              f"{server.url} (pid {server.pid})", flush=True)
        probe = Probe(server.pid, server.url.replace("ws://", "http://", 1).rstrip("/")
                      + "/metrics", shape.interval).start()
        try:
            code = local.run_locust(args, scenario="fanout", host=server.url, server_pid=server.pid,
                                    prefix=prefix, locust_prefix=locust_prefix,
                                    extra=locust_extra)
            probe.stop()
        finally:
            print(f"loadtest: server exited with {server.stop()}", flush=True)
        codes.append(code)
        leg = leg_figures(probe.rows, args.users, settle)
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
    result = compare(legs)
    users_text = (f"the fan-out swarm, {args.users:,} users started at {args.spawn_rate:g}/s in "
                  f"rooms of {locust_extra[1]} at {locust_extra[3]} msg/s per room, "
                  f"{args.run_time} per leg, {args.pairs} pair(s) of legs in alternating order "
                  "(off, on; on, off; ...)")
    context = {
        "load": local.load_text(load_before, os.getloadavg()[0]),
        "command": local.command_text(argv),
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "machine": local.machine(),
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
