"""The scaleout scenario: very many idle joined connections on one machine (roomcast only).

roomcast runs as ``--workers W --redis-url`` (a supervisor and W worker processes sharing one
port with SO_REUSEPORT) against a ``redis-server`` the bench starts on a free port. The driver
opens K connections from several processes (at most ``MAX_CONNS_PER_WORKER`` sockets each, under
the 20,000-descriptor limit per process) and several source addresses 127.0.0.x (at most
``per_source`` connections each: one address has ~28,000 ephemeral ports, and the driver's
bind-before-connect searches one half of them first, slowing down sharply once that half is
taken, so the default stays at 10,000), in rooms of
``room_size`` whose members the kernel spreads over the workers, so rooms span workers and their
traffic crosses Redis. Every connection joins; then one member of every room sends one chat, the
rooms' sends spread at ``broadcast_rate`` rooms per second, and every connection must receive its
room's message.

Figures: time to connect and join everything, RSS of the whole server process tree per
connection (and each worker's RSS before its first connection: its base cost), Redis memory
(``INFO memory``), how connections and rooms fell over the workers (from /proc), and the
broadcast's latency percentiles from each chat's scheduled send to each receipt.
"""

from __future__ import annotations

import math
import os
import shlex
import time
import traceback
from array import array
from collections import Counter
from pathlib import Path
from statistics import median
from typing import Any

from bench.driver import MAX_CONNS_PER_WORKER, DriverPool
from bench.scenarios import (
    MS,
    Conn,
    Context,
    _assign,
    _connect,
    _finish,
    _percentiles,
    _presence_frames,
    _rooms,
)
from bench.servers import (
    OURS,
    RunningRedis,
    RunningServer,
    free_port_below_ephemeral,
    rss_of,
    start_redis,
    start_server,
    stop_noting,
)

REDIS_INFO_KEYS = ("used_memory", "used_memory_rss", "used_memory_peak", "connected_clients",
                   "pubsub_channels", "pubsub_shardchannels")


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return out
    for task in tasks:
        try:
            out += [int(x) for x in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return sorted(out)


def _redis_figures(redis: RunningRedis) -> dict[str, int]:
    info = {**redis.info("memory"), **redis.info("clients"), **redis.info("stats")}
    out = {}
    for key in REDIS_INFO_KEYS:
        if key in info:
            try:
                out[key] = int(info[key])
            except ValueError:
                continue
    return out


def _hex_address(text: str) -> str:
    """/proc/net/tcp's ``0100007F:1F90`` -> ``127.0.0.1:8080`` (IPv4, little-endian words)."""
    addr, port = text.split(":")
    raw = int(addr, 16)
    octets = ".".join(str((raw >> shift) & 0xFF) for shift in (0, 8, 16, 24))
    return f"{octets}:{int(port, 16)}"


def connections_by_worker(port: int, pids: list[int]) -> dict[str, int] | None:
    """peer "ip:port" -> pid of the worker holding the server end, for every established
    IPv4 connection to ``port``: socket inodes from each worker's /proc/<pid>/fd, addresses
    from /proc/net/tcp (``ss -p`` takes minutes at 200,000 sockets). None when unreadable."""
    inode_owner: dict[str, int] = {}
    for pid in pids:
        fd_dir = f"/proc/{pid}/fd"
        try:
            names = os.listdir(fd_dir)
        except OSError:
            return None
        for name in names:
            try:
                link = os.readlink(f"{fd_dir}/{name}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inode_owner[link[8:-1]] = pid
    local_port = f":{port:04X}"
    owner: dict[str, int] = {}
    try:
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                fields = line.split()
                # sl local rem st ... inode(9); 01 = ESTABLISHED
                if fields[3] != "01" or not fields[1].endswith(local_port):
                    continue
                owner_pid = inode_owner.get(fields[9])
                if owner_pid is not None:
                    owner[_hex_address(fields[2])] = owner_pid
    except OSError:
        return None
    return owner


def _spread(groups: list[list[Conn]], owner: dict[str, int], names: dict[int, str],
            workers: list[int]) -> dict[str, Any]:
    """How connections and rooms fall over the workers."""
    per_worker = Counter(owner.values())
    spans = []
    for g in groups:
        pids = {owner.get(names.get(c.cid, ""), 0) for c in g}
        pids.discard(0)
        if pids:
            spans.append(len(pids))
    return {
        "conns_mapped": sum(per_worker.values()),
        "conns_per_worker": [per_worker.get(pid, 0) for pid in workers],
        "room_span_mean": sum(spans) / len(spans) if spans else None,
        "room_span_min": min(spans) if spans else None,
        "rooms_on_one_worker": sum(1 for s in spans if s == 1),
    }


def scaleout(
    ctx: Context,
    server_cpus: list[int],
    *,
    connections: int,
    workers: int = 12,
    room_size: int = 10,
    steps: int = 5,
    per_source: int = 10_000,
    per_process: int = MAX_CONNS_PER_WORKER,
    broadcast_rate: float = 1_000.0,
    size: int = 64,
    settle: float = 1.0,
) -> dict[str, dict[str, Any]]:
    """Returns {"roomcast": figures}; a failure carries ``error`` (and the processes' output)."""
    redis: RunningRedis | None = None
    server: RunningServer | None = None
    fig: dict[str, Any] = {}
    t_start = time.monotonic()
    try:
        redis = start_redis(cpus=server_cpus)
        port = free_port_below_ephemeral()
        server = start_server(
            OURS, cpus=server_cpus, port=port, timeout=120,
            extra=("--workers", str(workers), "--redis-url", redis.url),
        )
        fig = _run(server, redis, ctx, connections=connections, room_size=room_size,
                   steps=steps, per_source=per_source, per_process=per_process,
                   broadcast_rate=broadcast_rate,
                   size=size, settle=settle)
        fig["server_command"] = shlex.join(server.command)
        fig["redis_command"] = shlex.join(redis.command)
    except Exception:
        fig = {"error": traceback.format_exc(limit=4)}
        if server is not None:
            fig["server_output_tail"] = server.text()[-1500:]
        if redis is not None:
            fig["redis_log_tail"] = redis.log_tail()
    finally:
        if server is not None:
            stop_noting(fig, "server", server, timeout=60)
        if redis is not None:
            stop_noting(fig, "redis-server", redis)
    fig["elapsed_s"] = time.monotonic() - t_start
    return {OURS: fig}


def _run(server: RunningServer, redis: RunningRedis, ctx: Context, *, connections: int,
         room_size: int, steps: int, per_source: int, per_process: int,
         broadcast_rate: float, size: int,
         settle: float) -> dict[str, Any]:
    import numpy as np  # noqa: PLC0415

    time.sleep(settle)
    workers = _children(server.pid)
    base = {pid: rss_of(pid) for pid in workers}
    supervisor_rss = rss_of(server.pid)
    tree0 = server.rss_bytes()
    redis0 = _redis_figures(redis)
    fig: dict[str, Any] = {
        "connections": connections,
        "workers": len(workers),
        "room_size": room_size,
        "port": server.port,
        "supervisor_rss_bytes": supervisor_rss,
        "worker_base_rss_bytes": [base[p] for p in workers],
        "worker_base_rss_median_bytes": int(median(base.values())) if base else None,
        "rss_tree_base_bytes": tree0,
        "redis_before": redis0,
    }
    rooms = math.ceil(connections / room_size)
    groups = _rooms("x", rooms, room_size)
    conns = [c for g in groups for c in g][:connections]
    groups = [[c for c in g if c.cid < connections] for g in groups]
    groups = [g for g in groups if g]
    with _assign(conns, ctx, groups, per_source=per_source, per_process=per_process) as pool:
        fig["driver_processes"] = len(pool)
        fig["driver_max_conns_per_process"] = per_process
        fig["source_addresses"] = sorted({c.src for c in conns})
        fig |= _fill(pool, server, redis, conns, groups, steps=steps, settle=settle)
        time.sleep(settle)
        final = {pid: rss_of(pid) for pid in workers}
        tree1 = server.rss_bytes()
        xs = np.array([p[0] for p in fig["rss_points"]], dtype=float)
        ys = np.array([p[1] for p in fig["rss_points"]], dtype=float)
        fig |= {
            "rss_tree_final_bytes": tree1,
            "rss_per_conn_bytes": (tree1 - tree0) / connections if connections else None,
            "rss_per_conn_slope_bytes": float(np.polyfit(xs, ys, 1)[0]) if len(xs) >= 2
            else None,
            "worker_final_rss_bytes": [final[p] for p in workers],
            "redis_after": _redis_figures(redis),
            "driver_rss_bytes": sum(pool.call("rss")),
        }
        fig["redis_used_memory_per_conn_bytes"] = (
            (fig["redis_after"].get("used_memory", 0) - redis0.get("used_memory", 0))
            / connections if connections else None)
        t_map = time.monotonic()
        owner = connections_by_worker(server.port, workers)
        if owner is not None:
            names = {cid: name for r in pool.call("socknames") for cid, name in r}
            fig |= _spread(groups, owner, names, workers)
            fig["mapping_elapsed_s"] = time.monotonic() - t_map
        fig |= _broadcast(pool, groups, connections, broadcast_rate, size)
        fig = _finish(fig, pool, server, redis)
    fig["held"] = 1.0 if (
        fig.get("connected") == connections and fig.get("confirmed") == connections
        and fig.get("received_broadcast") == connections and not fig.get("problems")
    ) else 0.0
    return fig


def _fill(pool: DriverPool, server: RunningServer, redis: RunningRedis, conns: list[Conn],
          groups: list[list[Conn]], *, steps: int, settle: float) -> dict[str, Any]:
    """Connects and joins every connection in ``steps`` batches of whole rooms; RSS after each."""
    rooms_per_step = math.ceil(len(groups) / max(1, steps))
    points: list[tuple[int, int]] = [(0, server.rss_bytes())]
    out: dict[str, Any] = {"connect_elapsed_s": 0.0, "connected": 0, "connect_failed": 0,
                           "steps": []}
    confirmed = 0
    t0 = time.monotonic()
    for lo in range(0, len(groups), rooms_per_step):
        batch = [c for g in groups[lo: lo + rooms_per_step] for c in g]
        before = [st["clients"] for st in pool.call("stats")]
        cpu0 = server.cpu_seconds(), redis.cpu_seconds()
        c_fig = _connect(pool, server, batch)
        cpu1 = server.cpu_seconds(), redis.cpu_seconds()
        out["connect_elapsed_s"] += c_fig["connect_elapsed_s"]
        out["connected"] += c_fig["connected"]
        out["connect_failed"] += c_fig["connect_failed"]
        if c_fig.get("connect_failures"):
            out.setdefault("connect_failures", c_fig["connect_failures"])
        t_join = time.monotonic()
        start_ns = time.monotonic_ns() + 100_000_000
        pool.call("join", [{"start_ns": start_ns, "first": f} for f in before], timeout=120)
        target = confirmed + c_fig["connected"]
        _ok, s = pool.wait_for(lambda s, t=target: s["confirmed"] >= t, timeout=600,
                               stall=30.0, key="confirmed")
        confirmed = s["confirmed"]
        join_s = time.monotonic() - t_join
        cpu2 = server.cpu_seconds(), redis.cpu_seconds()
        # across workers the presence count is only a guide (which of two members joining at
        # once notices the other depends on the Redis round trip): stop once it is reached or
        # the traffic has been quiet for 3 s
        expected = _presence_frames([len(g) for g in groups[: lo + rooms_per_step]])
        pool.wait_for(lambda s, e=expected: s["frames"] >= e, timeout=120, stall=3.0)
        time.sleep(settle)
        rss = int(median(server.rss_bytes() for _ in range(3)))
        points.append((out["connected"], rss))
        out["steps"].append({"connected": out["connected"], "confirmed": confirmed,
                             "connect_s": c_fig["connect_elapsed_s"],
                             "connect_p99_ms": c_fig.get("connect_p99_ms"), "join_s": join_s,
                             "connect_server_cpu_s": cpu1[0] - cpu0[0],
                             "connect_redis_cpu_s": cpu1[1] - cpu0[1],
                             "join_server_cpu_s": cpu2[0] - cpu1[0],
                             "join_redis_cpu_s": cpu2[1] - cpu1[1],
                             "rss_tree_bytes": rss})
        if confirmed < target:
            break  # the rest would only pile up behind what is already stuck
    out |= {
        "confirmed": confirmed,
        "join_ok": confirmed >= len(conns),
        "fill_elapsed_s": time.monotonic() - t0,
        "connect_rate_per_s": out["connected"] / out["connect_elapsed_s"]
        if out["connect_elapsed_s"] else None,
        "rss_points": points[1:],
    }
    return out


def _broadcast(pool: DriverPool, groups: list[list[Conn]], connections: int, rate: float,
               size: int) -> dict[str, Any]:
    """Member 0 of every room sends one chat, room i at start + i/rate; every member (the sender
    too) must receive it."""
    pool.call("reset_counters")
    start_ns = time.monotonic_ns() + 500_000_000
    period_ns = 1e9 / rate
    per: list[list[tuple[int, int]]] = [[] for _ in range(len(pool))]
    for i, g in enumerate(groups):
        per[g[0].worker].append((g[0].cid, start_ns + round(i * period_ns)))
    pool.call("spread_start", [{"sends": p, "size": size} for p in per])
    window_s = len(groups) / rate
    _ok, s = pool.wait_for(lambda s: s["fan_done"] and s["measured"] >= connections,
                           timeout=window_s + 120, stall=15.0, key="measured")
    replies = pool.call("fanout_collect")
    lat = array("q")
    for r in replies:
        lat.frombytes(r["latencies_ns"])
    s = pool.stats()
    sent = sum(r["sent_measured"] for r in replies)
    out: dict[str, Any] = {
        "broadcast_rooms": len(groups),
        "broadcast_sent": sent,
        "broadcast_window_s": window_s,
        "broadcast_rate_rooms_per_s": rate,
        "broadcast_deliveries": len(lat),
        "received_broadcast": s["with_chat"],
        "losses": connections - s["with_chat"],
        "driver_send_late_p99_ms": max(r["late_p99_ns"] for r in replies) / MS,
    }
    out |= {f"broadcast_{k}": v for k, v in _percentiles(lat).items()}
    return out
