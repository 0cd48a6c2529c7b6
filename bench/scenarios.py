"""The four scenarios, run from the coordinator against one running server.

Each function takes a started server, a ``Context`` (driver CPUs, source addresses) and its
parameters, and returns a flat dict of figures (JSON-serialisable). Nothing here asserts on
timings; correctness problems (losses, disconnects, missing confirmations) are reported as
figures, and ``problems`` lists them in words.
"""

from __future__ import annotations

import math
import os
import shlex
import time
import traceback
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.driver import (
    CONNS_PER_SOURCE_ADDRESS,
    MAX_CONNS_PER_WORKER,
    AddressPool,
    DriverPool,
    workers_for,
)
from bench.promstats import FLUSH_METRIC, Histogram, flush_histogram, window_figures
from bench.servers import (
    NICE,
    OURS,
    RunningRedis,
    RunningServer,
    start_redis,
    start_server,
    stop_noting,
)

MS = 1e6  # ns per ms


@dataclass
class Context:
    driver_cpus: list[int]
    addresses: AddressPool = field(default_factory=AddressPool)
    log: Any = print


@dataclass
class Conn:
    cid: int
    room: str
    username: str
    src: str = ""
    worker: int = 0


def _percentiles(values_ns: array[int] | bytes) -> dict[str, float | None]:
    if not values_ns:
        return {"p50_ms": None, "p99_ms": None, "p999_ms": None, "max_ms": None, "mean_ms": None}
    import numpy as np  # noqa: PLC0415

    arr = np.frombuffer(values_ns, dtype=np.int64) if isinstance(values_ns, bytes) else np.asarray(
        values_ns, dtype=np.int64
    )
    p50, p99, p999 = np.percentile(arr, [50, 99, 99.9])
    return {
        "p50_ms": float(p50) / MS,
        "p99_ms": float(p99) / MS,
        "p999_ms": float(p999) / MS,
        "max_ms": float(arr.max()) / MS,
        "mean_ms": float(arr.mean()) / MS,
    }


def _receipt_pace(values_ns: array[int], ids: array[int]) -> dict[str, float | None]:
    """µs between one message's successive receipts (from its first to its 99th-percentile
    receipt, all rooms' members together), the median over messages: the pace of the slower of
    the server's writes and the driver's reads, which is what spreads a broadcast's latencies."""
    if not ids or len(ids) != len(values_ns):
        return {"receipt_pace_us": None}
    import numpy as np  # noqa: PLC0415

    lat = np.asarray(values_ns, dtype=np.int64)
    msg = np.asarray(ids, dtype=np.int64)
    order = np.lexsort((lat, msg))
    lat, msg = lat[order], msg[order]
    starts = np.flatnonzero(np.r_[True, msg[1:] != msg[:-1]])
    ends = np.r_[starts[1:], len(msg)]
    paces = []
    for a, b in zip(starts, ends, strict=True):
        k = int(0.99 * (b - a)) - 1
        if k >= 1:
            paces.append((lat[a + k] - lat[a]) / k / 1e3)
    return {"receipt_pace_us": float(np.median(paces)) if paces else None}


def _assign(conns: list[Conn], ctx: Context, groups: list[list[Conn]],
            per_source: int = CONNS_PER_SOURCE_ADDRESS,
            per_process: int = MAX_CONNS_PER_WORKER) -> DriverPool:
    """Spreads whole groups (rooms) over workers (``per_process`` connections each at most) and
    connections over source addresses (``per_source`` connections per address at most)."""
    n = workers_for(len(conns), ctx.driver_cpus, per_process)
    # balance by connection count, keeping each group in one worker (closed loops need that)
    load = [0] * n
    for group in sorted(groups, key=len, reverse=True):
        w = min(range(n), key=load.__getitem__)
        load[w] += len(group)
        for c in group:
            c.worker = w
    addrs = ctx.addresses.take(len(conns), per_source)
    per = math.ceil(len(conns) / len(addrs))
    for i, c in enumerate(conns):
        c.src = addrs[i // per]
    return DriverPool(n, ctx.driver_cpus, NICE["value"] if os.geteuid() == 0 else 0)


def browser_cookie(size: int) -> str:
    """A ``Cookie`` header value of ``size`` bytes, shaped like a browser's (name=value pairs of
    analytics and session cookies), for the browser-handshake capacity variant."""
    pairs: list[str] = []
    i = 0
    while sum(len(p) + 2 for p in pairs) < size:
        pairs.append(f"_c{i}=" + "ab12CD34ef56GH78"[i % 16] * 40)
        i += 1
    return "; ".join(pairs)[:size]


def _connect(pool: DriverPool, server: RunningServer, conns: list[Conn],
             tag: str = "", headers: dict[str, str] | None = None) -> dict[str, Any]:
    per: list[list[tuple[int, str, str, str]]] = [[] for _ in range(len(pool))]
    for c in conns:
        per[c.worker].append((c.cid, c.room, c.username, c.src))
    t0 = time.monotonic()
    replies = pool.call(
        "connect", [{"url": server.ws_url, "conns": p, "tag": tag, "headers": headers}
                    for p in per], timeout=600
    )
    elapsed = time.monotonic() - t0
    durations = array("d")
    for r in replies:
        durations.frombytes(r["durations_s"])
    failed = sum(r["failed"] for r in replies)
    out: dict[str, Any] = {
        "connected": len(durations),
        "connect_failed": failed,
        "connect_elapsed_s": elapsed,
        "connect_rate_per_s": len(durations) / elapsed if elapsed > 0 else None,
    }
    if durations:
        s = sorted(durations)
        out["connect_p50_ms"] = s[len(s) // 2] * 1e3
        out["connect_p99_ms"] = s[int(0.99 * (len(s) - 1))] * 1e3
    if failed:
        out["connect_failures"] = [f for r in replies for f in r["failures"]][:5]
    return out


def _join(pool: DriverPool, expected_confirmations: int, first: int = 0,
          timeout: float = 120.0, count_only: bool = False) -> dict[str, Any]:
    start_ns = time.monotonic_ns() + 200_000_000
    pool.call("join", {"start_ns": start_ns, "first": first, "count_only": count_only},
              timeout=timeout)
    ok, s = pool.wait_for(
        lambda s: s["confirmed"] >= expected_confirmations, timeout=timeout, stall=20.0
    )
    times = pool.call("join_times", {"first": first})
    last = max(t["last_confirmed_ns"] for t in times)
    return {
        "join_ok": ok,
        "confirmed": s["confirmed"],
        "join_start_ns": start_ns,
        "join_elapsed_ms": (last - start_ns) / MS if last else None,
    }


def _settle_frames(
    pool: DriverPool, expected_frames: int, timeout: float = 120.0
) -> dict[str, Any]:
    """Waits until the presence traffic of the joins has reached the clients."""
    ok, s = pool.wait_for(lambda s: s["frames"] >= expected_frames, timeout=timeout, stall=5.0)
    return {"presence_frames": s["frames"], "presence_frames_expected": expected_frames,
            "presence_settled": ok}


def _presence_frames(room_sizes: list[int]) -> int:
    """Frames the clients receive while a room of size M fills one by one: each joiner gets its
    confirmation and every earlier member a notice (the seed's protocol and ours agree)."""
    return sum(m * (m + 1) // 2 for m in room_sizes)


def _problems(fig: dict[str, Any]) -> list[str]:
    out = []
    if fig.get("connect_failed"):
        out.append(f"{fig['connect_failed']} connections failed")
    if fig.get("join_ok") is False:
        out.append(f"only {fig.get('confirmed')} join confirmations arrived")
    if fig.get("losses"):
        out.append(f"{fig['losses']} deliveries lost")
    if fig.get("disconnected"):
        out.append(f"{fig['disconnected']} connections closed by the server "
                   f"(close codes {fig.get('close_codes')})")
    if fig.get("errors"):
        out.append(f"{fig['errors']} error messages received")
    if fig.get("server_exited"):
        out.append(f"server exited: {fig['server_exited']}")
    if fig.get("receiver_malformed"):
        out.append(f"the driver's receiver met {fig['receiver_malformed']} frames it could not "
                   "read (masked or over 64 KiB) and stopped reading those connections")
    if fig.get("receiver_closed"):
        out.append(f"{fig['receiver_closed']} connections ended while the driver's receiver "
                   "read them")
    return out


def _receiver_figures(replies: list[dict[str, Any]]) -> dict[str, float | None]:
    """What the driver's compiled receiver could not read, and its CPU time per frame read,
    summed over the workers."""
    out: dict[str, float | None] = {
        k: sum(r.get(k, 0) for r in replies)
        for k in ("receiver_malformed", "receiver_closed", "receiver_cpu_s", "receiver_frames")}
    frames, cpu = out["receiver_frames"], out["receiver_cpu_s"]
    out["driver_cpu_per_receipt_us"] = cpu / frames * 1e6 if frames and cpu else None
    return out


def _finish(fig: dict[str, Any], pool: DriverPool, *servers: RunningServer | RunningRedis,
            ) -> dict[str, Any]:
    s = pool.stats()
    fig["disconnected"] = s["disconnected"]
    fig["close_codes"] = s["close_codes"]
    fig["errors"] = s["errors"]
    for server in servers:
        if not server.alive():
            tail = server.text() if isinstance(server, RunningServer) else server.log_tail()
            fig["server_exited"] = (f"{shlex.join(server.command)}: code "
                                    f"{server.proc.returncode}; output tail: {tail[-500:]}")
    fig["problems"] = _problems(fig)
    return fig


def _rooms(prefix: str, rooms: int, members: int, start: int = 0) -> list[list[Conn]]:
    groups = []
    cid = start
    for r in range(rooms):
        group = []
        for m in range(members):
            group.append(Conn(cid, f"{prefix}{r}", f"{prefix}{r}u{m}"))
            cid += 1
        groups.append(group)
    return groups


def _flush_scrape(server: RunningServer, fig: dict[str, Any]) -> Histogram | None:
    """The server's flush histogram now (None for a server without /metrics); a failed scrape
    is recorded in ``fig`` and gives None."""
    url = server.metrics_url
    if url is None:
        return None
    try:
        hist = flush_histogram(url)
    except OSError as exc:
        fig["flush_scrape_error"] = f"{url}: {exc!r}"
        return None
    if hist is None:
        fig["flush_scrape_error"] = f"{url} has no {FLUSH_METRIC} histogram"
    return hist


def _sleep_until_ns(t_ns: int) -> None:
    delay = (t_ns - time.monotonic_ns()) / 1e9
    if delay > 0:
        time.sleep(delay)


# --------------------------------------------------------------------------- scenarios


def fanout(
    server: RunningServer,
    ctx: Context,
    *,
    rooms: int,
    members: int,
    rate: float,
    size: int = 100,
    duration: float = 8.0,
    warmup: float = 1.0,
    on_measure: Any = None,
) -> dict[str, Any]:
    """R rooms x M members, member 0 of each room publishes ``rate`` msg/s on a fixed schedule."""
    groups = _rooms("f", rooms, members)
    conns = [c for g in groups for c in g]
    with _assign(conns, ctx, groups) as pool:
        fig: dict[str, Any] = _connect(pool, server, conns)
        fig |= _join(pool, len(conns))
        fig |= _settle_frames(pool, _presence_frames([members] * rooms))
        warm = round(warmup * rate)
        count = warm + round(duration * rate)
        start_ns = time.monotonic_ns() + 300_000_000
        per: list[list[int]] = [[] for _ in range(len(pool))]
        for g in groups:
            per[g[0].worker].append(g[0].cid)
        pool.call(
            "fanout_start",
            [
                {"publishers": p, "rate": rate, "start_ns": start_ns, "count": count,
                 "warm": warm, "size": size}
                for p in per
            ],
        )
        measure_ns = start_ns + round(warm * 1e9 / rate)
        # roomcast's own flush histogram, scraped outside the CPU window (the scrape costs CPU),
        # half a period before it: after the last warm-up message, before the first measured
        _sleep_until_ns(measure_ns - round(0.5e9 / rate))
        flush0 = _flush_scrape(server, fig)
        _sleep_until_ns(measure_ns)
        cpu0, t0 = server.cpu_seconds(), time.monotonic()
        if on_measure is not None:
            on_measure()
        end_ns = start_ns + round(count * 1e9 / rate)
        _sleep_until_ns(end_ns)
        expected = (count - warm) * rooms * members
        pool.wait_for(
            lambda s: s["fan_done"] and s["measured"] >= expected,
            timeout=60, stall=3.0, key="measured",
        )
        cpu1, t1 = server.cpu_seconds(), time.monotonic()
        if flush0 is not None:
            fig |= window_figures(flush0, _flush_scrape(server, fig))
        replies = pool.call("fanout_collect")
        fig |= _receiver_figures(replies)
        lat = array("q")
        ids = array("i")
        for r in replies:
            lat.frombytes(r["latencies_ns"])
            ids.frombytes(r["latency_ids"])
        sent_measured = sum(r["sent_measured"] for r in replies)
        expected = sent_measured * members
        deliveries = sum(r["measured"] for r in replies)
        cpu = cpu1 - cpu0
        fig |= {
            "messages_sent": sent_measured,
            "deliveries": deliveries,
            "deliveries_expected": expected,
            "losses": expected - deliveries,
            "window_s": t1 - t0,
            "deliveries_per_s": deliveries / (t1 - t0) if t1 > t0 else None,
            "server_cpu_s": cpu,
            "server_cpu_util": cpu / (t1 - t0) if t1 > t0 else None,
            "cpu_per_delivery_us": cpu / deliveries * 1e6 if deliveries else None,
            "driver_send_late_p99_ms": max(r["late_p99_ns"] for r in replies) / MS,
            "driver_send_late_max_ms": max(r["late_max_ns"] for r in replies) / MS,
        }
        fig |= _percentiles(lat)
        fig |= _receipt_pace(lat, ids)
        return _finish(fig, pool, server)


def saturate(
    server: RunningServer,
    ctx: Context,
    *,
    rooms: int,
    members: int,
    depth: int,
    size: int = 100,
    duration: float = 5.0,
    warmup: float = 1.0,
) -> dict[str, Any]:
    """Closed loop: each room keeps ``depth`` messages in flight (done = every member has it)."""
    groups = _rooms("s", rooms, members)
    conns = [c for g in groups for c in g]
    with _assign(conns, ctx, groups) as pool:
        fig: dict[str, Any] = _connect(pool, server, conns)
        fig |= _join(pool, len(conns))
        fig |= _settle_frames(pool, _presence_frames([members] * rooms))
        start_ns = time.monotonic_ns() + 300_000_000
        marks = {"begin": start_ns + round(warmup * 1e9),
                 "end": start_ns + round((warmup + duration) * 1e9)}
        per: list[list[tuple[int, list[int]]]] = [[] for _ in range(len(pool))]
        for g in groups:
            per[g[0].worker].append((g[0].cid, [c.cid for c in g]))
        pool.call(
            "saturate_start",
            [{"rooms": p, "depth": depth, "size": size, "start_ns": start_ns, "marks": marks}
             for p in per],
        )
        _sleep_until_ns(marks["begin"])
        cpu0 = server.cpu_seconds()
        _sleep_until_ns(marks["end"])
        cpu1 = server.cpu_seconds()
        pool.call("saturate_stop")
        pool.wait_for(
            lambda s: s["sat_receipts"] >= s["sat_sent"] * members,
            timeout=60, stall=3.0, key="sat_receipts",
        )
        replies = pool.call("saturate_collect")
        window = duration
        receipts = sum(r["snapshots"]["end"]["receipts"] - r["snapshots"]["begin"]["receipts"]
                       for r in replies)
        completed = sum(r["snapshots"]["end"]["completed"] - r["snapshots"]["begin"]["completed"]
                        for r in replies)
        expected = sum(r["expected"] for r in replies)
        total = sum(r["receipts"] for r in replies)
        cpu = cpu1 - cpu0
        fig |= {
            "messages_sent": sum(r["sent"] for r in replies),
            "deliveries": receipts,
            "deliveries_per_s": receipts / window,
            "messages_per_s": completed / window,
            "losses": expected - total,
            "deliveries_expected_total": expected,
            "deliveries_total": total,
            "window_s": window,
            "server_cpu_s": cpu,
            "server_cpu_util": cpu / window,
            "cpu_per_delivery_us": cpu / receipts * 1e6 if receipts else None,
        }
        return _finish(fig, pool, server)


def capacity(
    server: RunningServer,
    ctx: Context,
    *,
    connections: int,
    room_size: int = 10,
    steps: int = 6,
    settle: float = 1.0,
    cookie_bytes: int = 0,
) -> dict[str, Any]:
    """K idle connections in rooms of ``room_size``, opened in ``steps`` equal batches; server RSS
    after each batch; RSS per connection = slope of a least-squares line through the batches.
    ``cookie_bytes`` > 0 sends a browser-sized ``Cookie`` header with every handshake."""
    headers = {"Cookie": browser_cookie(cookie_bytes)} if cookie_bytes else None
    import numpy as np  # noqa: PLC0415

    rooms = math.ceil(connections / room_size)
    groups = _rooms("c", rooms, room_size)
    conns = [c for g in groups for c in g][:connections]
    groups = [[c for c in g if c.cid < connections] for g in groups]
    with _assign(conns, ctx, groups) as pool:
        time.sleep(settle)
        rss0 = server.rss_bytes()
        points: list[tuple[int, int]] = [(0, rss0)]
        fig: dict[str, Any] = {"rss_baseline_bytes": rss0}
        per_step = math.ceil(rooms / steps) * room_size
        durations: list[float] = []
        elapsed = 0.0
        confirmed = 0
        step_joins_ms = []
        for lo in range(0, len(conns), per_step):
            batch = conns[lo : lo + per_step]
            before = [st["clients"] for st in pool.call("stats")]
            c_fig = _connect(pool, server, batch, headers=headers)
            elapsed += c_fig["connect_elapsed_s"]
            if c_fig.get("connect_failed"):
                fig["connect_failed"] = fig.get("connect_failed", 0) + c_fig["connect_failed"]
                fig.setdefault("connect_failures", c_fig.get("connect_failures"))
            durations.append(c_fig.get("connect_p99_ms") or 0.0)
            start_ns = time.monotonic_ns() + 100_000_000
            pool.call("join", [{"start_ns": start_ns, "first": f} for f in before], timeout=120)
            target = confirmed + c_fig["connected"]
            _ok, s = pool.wait_for(lambda s, t=target: s["confirmed"] >= t, timeout=120,
                                   stall=20)
            confirmed = s["confirmed"]
            step_joins_ms.append((time.monotonic_ns() - start_ns) / MS)
            done_rooms = [len(g) for g in groups if g and g[0].cid < lo + len(batch)]
            _settle_frames(pool, _presence_frames(done_rooms))
            time.sleep(settle)
            samples = []
            for _ in range(3):
                samples.append(server.rss_bytes())
                time.sleep(0.1)
            points.append((sum(before) + c_fig["connected"], int(np.median(samples))))
        xs = np.array([p[0] for p in points[1:]], dtype=float)
        ys = np.array([p[1] for p in points[1:]], dtype=float)
        slope = float(np.polyfit(xs, ys, 1)[0]) if len(xs) >= 2 else None
        # every connection alive, and every one receives a broadcast in its room
        pool.call("reset_counters")
        senders = [g[0].cid for g in groups if g]
        per_w: list[list[int]] = [[] for _ in range(len(pool))]
        for g in groups:
            if g:
                per_w[g[0].worker].append(g[0].cid)
        pool.call("say", [{"cids": p, "text": "capacity-check"} for p in per_w])
        _ok, s = pool.wait_for(lambda s: s["with_chat"] >= len(conns), timeout=60, stall=5.0,
                              key="with_chat")
        fig |= {
            "connections": len(conns),
            "cookie_bytes": cookie_bytes,
            "rooms": len(senders),
            "connected": points[-1][0],
            "confirmed": confirmed,
            "join_ok": confirmed >= len(conns),
            "connect_elapsed_s": elapsed,
            "connect_rate_per_s": points[-1][0] / elapsed if elapsed else None,
            "connect_p99_ms_worst_step": max(durations) if durations else None,
            "join_step_ms": step_joins_ms,
            "rss_points": points,
            "rss_final_bytes": points[-1][1],
            "rss_per_conn_bytes": slope,
            "alive": s["alive"],
            "received_broadcast": s["with_chat"],
            "losses": len(conns) - s["with_chat"],
        }
        return _finish(fig, pool, server)


def joinstorm(
    server: RunningServer, ctx: Context, *, members: int, timeout: float = 180.0
) -> dict[str, Any]:
    """M connected clients send their join to one room at the same instant."""
    groups = _rooms("j", 1, members)
    conns = groups[0]
    with _assign(conns, ctx, groups) as pool:
        fig: dict[str, Any] = _connect(pool, server, conns)
        cpu0 = server.cpu_seconds()
        j = _join(pool, len(conns), timeout=timeout, count_only=True)
        expected_frames = _presence_frames([members])
        settled = _settle_frames(pool, expected_frames, timeout=timeout)
        cpu1 = server.cpu_seconds()
        s = pool.stats()
        fig |= {
            "members": members,
            "join_ok": j["join_ok"],
            "confirmed": j["confirmed"],
            "storm_ms": j["join_elapsed_ms"],
            "bytes_sent": s["bytes"],
            "frames": s["frames"],
            "frames_expected": expected_frames,
            "presence_settled": settled["presence_settled"],
            "server_cpu_s": cpu1 - cpu0,
        }
        return _finish(fig, pool, server)


# fn(server, ctx, **params) -> figures; the signatures differ, so they are called with **params
SCENARIOS: dict[str, Callable[..., dict[str, Any]]] = {
    "fanout": fanout, "saturate": saturate, "capacity": capacity, "joinstorm": joinstorm}


# --------------------------------------------------------------------------- twonode

SETUPS = ("one_node", "two_nodes")
HALVES = ("origin", "other")


def twonode(
    ctx: Context,
    server_cpus: list[int],
    *,
    mode: str = "fanout",
    rooms: int,
    members: int,
    rate: float = 50.0,
    depth: int = 8,
    size: int = 100,
    duration: float = 3.0,
    warmup: float = 1.0,
    setups: tuple[str, ...] = SETUPS,
) -> dict[str, dict[str, Any]]:
    """The same workload on one roomcast node (in-process broker) and on two nodes linked by
    Redis, every room's members split in halves: the first half (with the publisher, member 0)
    on node A, the other half on node B. ``mode`` is ``fanout`` (open loop at ``rate`` msg/s per
    room, latencies per half) or ``saturate`` (closed loop, ``depth`` messages in flight per
    room). Server CPU is summed over every process under test (nodes and Redis), all pinned to
    ``server_cpus``. Returns {setup: figures}; a setup that fails carries ``error``."""
    if mode not in ("fanout", "saturate"):
        raise ValueError(f"twonode mode must be fanout or saturate, not {mode!r}")
    out: dict[str, dict[str, Any]] = {}
    for setup in setups:
        t0 = time.monotonic()
        out[setup] = _twonode_setup(setup, ctx, server_cpus, mode=mode, rooms=rooms,
                                    members=members, rate=rate, depth=depth, size=size,
                                    duration=duration, warmup=warmup)
        out[setup]["elapsed_s"] = time.monotonic() - t0
    return out


def _twonode_setup(setup: str, ctx: Context, server_cpus: list[int], **params: Any,
                   ) -> dict[str, Any]:
    redis: RunningRedis | None = None
    nodes: list[RunningServer] = []
    fig: dict[str, Any] = {}
    try:
        if setup == "two_nodes":
            redis = start_redis(cpus=server_cpus)
            extra = ("--redis-url", redis.url)
            nodes = [start_server(OURS, cpus=server_cpus, extra=extra) for _ in range(2)]
        else:
            nodes = [start_server(OURS, cpus=server_cpus)]
        fig = _twonode_run(nodes, redis, ctx, **params)
        fig["server_commands"] = [shlex.join(n.command) for n in nodes]
        if redis is not None:
            fig["redis_command"] = shlex.join(redis.command)
    except Exception:
        fig = {"error": traceback.format_exc(limit=3)}
        for i, n in enumerate(nodes):
            fig[f"node_{'ab'[i]}_output_tail"] = n.text()[-1000:]
        if redis is not None:
            fig["redis_log_tail"] = redis.log_tail()
    finally:
        for i, n in enumerate(nodes):
            stop_noting(fig, f"node {'AB'[i]}", n)
        if redis is not None:
            stop_noting(fig, "redis-server", redis)
    return fig


def _twonode_run(
    nodes: list[RunningServer],
    redis: RunningRedis | None,
    ctx: Context,
    *,
    mode: str,
    rooms: int,
    members: int,
    rate: float,
    depth: int,
    size: int,
    duration: float,
    warmup: float,
) -> dict[str, Any]:
    groups = _rooms("t", rooms, members)
    conns = [c for g in groups for c in g]
    half = (members + 1) // 2
    by_half: dict[str, list[Conn]] = {
        "origin": [c for g in groups for c in g[:half]],
        "other": [c for g in groups for c in g[half:]],
    }
    per_room = {"origin": half, "other": members - half}
    node_of = {"origin": nodes[0], "other": nodes[-1]}
    procs: dict[str, RunningServer | RunningRedis] = {"node_a": nodes[0]}
    if len(nodes) > 1:
        procs["node_b"] = nodes[1]
    if redis is not None:
        procs["redis"] = redis

    def cpu() -> dict[str, float]:
        return {name: p.cpu_seconds() for name, p in procs.items()}

    with _assign(conns, ctx, groups) as pool:
        fig: dict[str, Any] = {"nodes": len(nodes), "members_per_node_per_room":
                               [half, members - half] if len(nodes) > 1 else [members]}
        for tag in HALVES:
            c_fig = _connect(pool, node_of[tag], by_half[tag], tag=tag)
            for key in ("connected", "connect_failed"):
                fig[key] = fig.get(key, 0) + c_fig[key]
            if c_fig.get("connect_failures"):
                fig.setdefault("connect_failures", c_fig["connect_failures"])
        # One room at a time (all its members at once, on both nodes): a node that gets the first
        # joins of two rooms in the same instant loses one room's subscription (server bug,
        # reported), which this scenario is not about.
        t_join = time.monotonic()
        for i, g in enumerate(groups):
            start_ns = time.monotonic_ns() + 20_000_000
            pool.call("join", {"start_ns": start_ns, "cids": [c.cid for c in g]})
            target = (i + 1) * members
            _ok, s = pool.wait_for(lambda s, t=target: s["confirmed"] >= t, timeout=30,
                                   stall=10.0, key="confirmed")
            if not _ok:
                break
        fig |= {"join_ok": s["confirmed"] >= len(conns), "confirmed": s["confirmed"],
                "join_elapsed_ms": (time.monotonic() - t_join) * 1e3}
        # Across nodes, which of two members joining at once notices the other depends on the
        # Redis round trip, so the presence count is a guide: stop waiting once it is reached
        # or the traffic has been quiet for 2 s (leftover notices are not chats).
        expected_frames = _presence_frames([members] * rooms)
        _ok, s = pool.wait_for(lambda s: s["frames"] >= expected_frames, timeout=60, stall=2.0)
        fig |= {"presence_frames": s["frames"], "presence_frames_expected": expected_frames}
        if mode == "fanout":
            fig |= _twonode_fanout(pool, groups, cpu, per_room, members=members,
                                   rooms=rooms, rate=rate, size=size, duration=duration,
                                   warmup=warmup)
        else:
            fig |= _twonode_saturate(pool, groups, cpu, members=members, depth=depth, size=size,
                                     duration=duration, warmup=warmup)
        return _finish(fig, pool, *procs.values())


def _cpu_figures(c0: dict[str, float], c1: dict[str, float], window: float,
                 deliveries: int) -> dict[str, Any]:
    by = {k: c1[k] - c0[k] for k in c0}
    total = sum(by.values())
    return {
        "server_cpu_s": total,
        "cpu_by_process_s": by,
        "server_cpu_util": total / window if window > 0 else None,
        "cpu_per_delivery_us": total / deliveries * 1e6 if deliveries else None,
        "cpu_per_delivery_by_process_us": {k: v / deliveries * 1e6 if deliveries else None
                                           for k, v in by.items()},
    }


def _twonode_fanout(pool: DriverPool, groups: list[list[Conn]], cpu: Any,
                    per_room: dict[str, int], *, members: int,
                    rooms: int, rate: float, size: int, duration: float, warmup: float,
                    ) -> dict[str, Any]:
    warm = round(warmup * rate)
    count = warm + round(duration * rate)
    start_ns = time.monotonic_ns() + 300_000_000
    per: list[list[int]] = [[] for _ in range(len(pool))]
    for g in groups:
        per[g[0].worker].append(g[0].cid)
    pool.call(
        "fanout_start",
        [{"publishers": p, "rate": rate, "start_ns": start_ns, "count": count, "warm": warm,
          "size": size} for p in per],
    )
    _sleep_until_ns(start_ns + round(warm * 1e9 / rate))
    c0, t0 = cpu(), time.monotonic()
    _sleep_until_ns(start_ns + round(count * 1e9 / rate))
    expected = (count - warm) * rooms * members
    pool.wait_for(lambda s: s["fan_done"] and s["measured"] >= expected,
                  timeout=60, stall=3.0, key="measured")
    c1, t1 = cpu(), time.monotonic()
    replies = pool.call("fanout_collect")
    lat = array("q")
    tags: dict[str, array[int]] = {t: array("q") for t in HALVES}
    for r in replies:
        lat.frombytes(r["latencies_ns"])
        for t, raw in r["tag_latencies_ns"].items():
            tags[t].frombytes(raw)
    sent = sum(r["sent_measured"] for r in replies)
    deliveries = sum(r["measured"] for r in replies)
    window = t1 - t0
    fig: dict[str, Any] = {
        "messages_sent": sent,
        "deliveries": deliveries,
        "deliveries_expected": sent * members,
        "losses": sent * members - deliveries,
        "window_s": window,
        "deliveries_per_s": deliveries / window if window > 0 else None,
        "driver_send_late_p99_ms": max(r["late_p99_ns"] for r in replies) / MS,
        "driver_send_late_max_ms": max(r["late_max_ns"] for r in replies) / MS,
        **_receiver_figures(replies),
    }
    fig |= _cpu_figures(c0, c1, window, deliveries)
    fig |= _percentiles(lat)
    for t in HALVES:
        # every room sends ``sent / rooms`` messages to per_room[t] members of this half
        exp = sent // rooms * per_room[t] * rooms if rooms else 0
        fig[f"{t}_deliveries"] = len(tags[t])
        fig[f"{t}_losses"] = exp - len(tags[t])
        fig |= {f"{t}_{k}": v for k, v in _percentiles(tags[t]).items()}
    return fig


def _twonode_saturate(pool: DriverPool, groups: list[list[Conn]], cpu: Any, *, members: int,
                      depth: int, size: int, duration: float, warmup: float) -> dict[str, Any]:
    start_ns = time.monotonic_ns() + 300_000_000
    marks = {"begin": start_ns + round(warmup * 1e9),
             "end": start_ns + round((warmup + duration) * 1e9)}
    per: list[list[tuple[int, list[int]]]] = [[] for _ in range(len(pool))]
    for g in groups:
        per[g[0].worker].append((g[0].cid, [c.cid for c in g]))
    pool.call("saturate_start", [{"rooms": p, "depth": depth, "size": size,
                                  "start_ns": start_ns, "marks": marks} for p in per])
    _sleep_until_ns(marks["begin"])
    c0 = cpu()
    _sleep_until_ns(marks["end"])
    c1 = cpu()
    pool.call("saturate_stop")
    pool.wait_for(lambda s: s["sat_receipts"] >= s["sat_sent"] * members,
                  timeout=60, stall=3.0, key="sat_receipts")
    replies = pool.call("saturate_collect")
    receipts = sum(r["snapshots"]["end"]["receipts"] - r["snapshots"]["begin"]["receipts"]
                   for r in replies)
    completed = sum(r["snapshots"]["end"]["completed"] - r["snapshots"]["begin"]["completed"]
                    for r in replies)
    expected = sum(r["expected"] for r in replies)
    total = sum(r["receipts"] for r in replies)
    fig: dict[str, Any] = {
        "messages_sent": sum(r["sent"] for r in replies),
        "deliveries": receipts,
        "deliveries_per_s": receipts / duration,
        "messages_per_s": completed / duration,
        "losses": expected - total,
        "deliveries_expected_total": expected,
        "deliveries_total": total,
        "window_s": duration,
    }
    return fig | _cpu_figures(c0, c1, duration, receipts)


# scenarios that start their own processes: fn(ctx, server_cpus, **params) -> {setup: figures}
MULTI_SCENARIOS = {"twonode": twonode}
