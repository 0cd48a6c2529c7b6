"""History on vs off with the Locust harness: ``python -m loadtest.run --compare-history``.

The same fan-out swarm runs against a fresh local server started with ``--history-size 0``
(off) and with the default history (on), in pairs of alternating order (off, on; then on, off;
...). While each leg runs, a ``Probe`` (a thread of run.py, no gevent) reads every 2 s the
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
No gevent and no Locust here.
"""

from __future__ import annotations

import statistics
import threading
import time
import urllib.request
from collections.abc import Sequence
from typing import Any

from loadtest import procstats, serverstats

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
