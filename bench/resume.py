"""The reconnect storm: a thousand clients resume with ``since`` at the same instant.

Every room has one publisher (the room's "others": it chats on at ``rate`` msg/s throughout)
and ``members`` members that each remember their position (the welcome's epoch, the last seq
they got). Then the members lose their connections, the publishers chat on for ``outage``
seconds, the members reconnect (timed apart) and all send their ``join`` with ``since`` at one
instant. Measured: the time until every member has its ``history`` answer and its welcome (it
is live again), how many got ``recovered: true``, and against every room's publisher (what the
server placed in the room's order, as its echoes told it) each member's chats that never came,
came twice or came with another seq; and the server's CPU during the storm.

Setups, each on fresh processes:

* ``restart``: one node with ``--history-file``; SIGTERM (the members get 1012), the same
  command again on the same port; the publishers come back first (resuming too) and chat on.
* ``disconnect``: one node; every member's connection dies at once (RST).
* ``two_nodes``: two nodes on Redis (as in twonode; each room's members split, the publisher on
  node A); every member's connection dies at once and it resumes on the *other* node. A server
  that does not serve ``since`` across nodes (no ``epoch`` in the welcome, no ``history``
  answer: Redis mode before its history) is reported in ``unsupported``, not as an error.

Nothing here asserts; the figures and ``problems`` say what happened.
"""

from __future__ import annotations

import shlex
import shutil
import signal
import tempfile
import time
import traceback
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client.parser import text_string_to_metric_families

from bench.driver import DriverPool
from bench.promstats import scrape
from bench.scenarios import MS, Conn, Context, _assign, _percentiles, _rooms, _sleep_until_ns
from bench.servers import OURS, RunningRedis, RunningServer, start_redis, start_server, stop_noting

T = TypeVar("T")

SETUPS = ("restart", "disconnect", "two_nodes")
LABELS = {
    "restart": "one node, SIGTERM + restart with --history-file",
    "disconnect": "one node, every member's connection dropped (RST)",
    "two_nodes": "two nodes + Redis, dropped, resumed on the other node",
}


def resume(
    ctx: Context,
    server_cpus: list[int],
    *,
    rooms: int,
    members: int,
    rate: float = 20.0,
    size: int = 100,
    lead: float = 1.0,
    outage: float = 2.0,
    tail: float = 1.0,
    setups: tuple[str, ...] = SETUPS,
    server_args: tuple[str, ...] = (),
) -> dict[str, dict[str, Any]]:
    """{setup: figures}; a setup that fails carries ``error`` (the others still run).
    ``server_args`` go to every roomcast node (e.g. ``--history-size 0`` to see the storm
    fail)."""
    out: dict[str, dict[str, Any]] = {}
    for setup in setups:
        if setup not in SETUPS:
            raise ValueError(f"unknown resume setup {setup!r}; choose from {', '.join(SETUPS)}")
        t0 = time.monotonic()
        out[setup] = _setup(setup, ctx, server_cpus, tuple(server_args), rooms=rooms,
                            members=members, rate=rate, size=size, lead=lead, outage=outage,
                            tail=tail)
        out[setup]["elapsed_s"] = time.monotonic() - t0
    return out


def read_before(read: Callable[[], T], start_ns: int,
                clock: Callable[[], int] = time.monotonic_ns,
                sleep_until: Callable[[int], None] | None = None) -> tuple[T, int]:
    """``read()`` as shortly before ``start_ns`` as it can be, and how many ns before it was
    taken (negative: after). A read after the instant would miss a small storm's start, so the
    read 50 ms ahead has a stand-in taken at once: a driver that wakes too late for the first
    (a loaded machine) keeps the early one, which counts more of the publishers' chatting but
    all of the storm."""
    early, early_ns = read(), clock()
    (sleep_until or _sleep_until_ns)(start_ns - 50_000_000)
    late, late_ns = read(), clock()
    return (early, start_ns - early_ns) if late_ns > start_ns else (late, start_ns - late_ns)


def _setup(setup: str, ctx: Context, server_cpus: list[int], server_args: tuple[str, ...],
           **params: Any) -> dict[str, Any]:
    redis: RunningRedis | None = None
    nodes: list[RunningServer] = []
    workdir = tempfile.mkdtemp(prefix="bench-resume-")
    extra = server_args
    fig: dict[str, Any] = {"setup": setup}
    try:
        if setup == "two_nodes":
            redis = start_redis(cpus=server_cpus)
            extra += ("--redis-url", redis.url)
            nodes = [start_server(OURS, cpus=server_cpus, extra=extra) for _ in range(2)]
        else:
            if setup == "restart":
                extra += ("--history-file", str(Path(workdir) / "history.bin"))
            nodes = [start_server(OURS, cpus=server_cpus, extra=extra)]
        fig |= _storm(setup, nodes, redis, ctx, server_cpus, extra, **params)
        fig["server_commands"] = [shlex.join(n.command) for n in nodes]
        if redis is not None:
            fig["redis_command"] = shlex.join(redis.command)
    except Exception:
        fig["error"] = traceback.format_exc(limit=4)
        for i, n in enumerate(nodes):
            fig[f"node_{'ab'[i]}_output_tail"] = n.text()[-1000:]
        if redis is not None:
            fig["redis_log_tail"] = redis.log_tail()
    finally:
        for i, n in enumerate(nodes):
            stop_noting(fig, f"node {'AB'[i]}", n)
            if fig.get("lost"):  # what the nodes logged (warnings and up) while chats went missing
                fig[f"node_{'ab'[i]}_output_tail"] = n.text()[-2000:]
        if redis is not None:
            stop_noting(fig, "redis-server", redis)
        shutil.rmtree(workdir, ignore_errors=True)
    return fig


def _connect(pool: DriverPool, plan: list[tuple[RunningServer, list[Conn]]],
             nodes: list[RunningServer]) -> dict[str, Any]:
    """Opens storm connections (tracks kept across connections), node by node; each track
    remembers the node (A, B) of its latest connection."""
    out: dict[str, Any] = {"connected": 0, "connect_failed": 0}
    t0 = time.monotonic()
    for server, conns in plan:
        per: list[list[tuple[int, str, str, str]]] = [[] for _ in range(len(pool))]
        for c in conns:
            per[c.worker].append((c.cid, c.room, c.username, c.src))
        tag = "AB"[nodes.index(server)] if server in nodes else "?"
        replies = pool.call("connect", [{"url": server.ws_url, "conns": p, "resume": True,
                                         "tag": tag} for p in per], timeout=120)
        out["connected"] += sum(r["connected"] for r in replies)
        out["connect_failed"] += sum(r["failed"] for r in replies)
        if out["connect_failed"]:
            out.setdefault("connect_failures", [f for r in replies for f in r["failures"]][:5])
    out["connect_elapsed_s"] = time.monotonic() - t0
    return out


def _per_worker(pool: DriverPool, conns: list[Conn]) -> list[list[int]]:
    per: list[list[int]] = [[] for _ in range(len(pool))]
    for c in conns:
        per[c.worker].append(c.cid)
    return per


def _storm(  # noqa: PLR0917  (the setup's processes, then its parameters by name)
    setup: str,
    nodes: list[RunningServer],
    redis: RunningRedis | None,
    ctx: Context,
    server_cpus: list[int],
    extra: tuple[str, ...],
    *,
    rooms: int,
    members: int,
    rate: float,
    size: int,
    lead: float,
    outage: float,
    tail: float,
) -> dict[str, Any]:
    # member 0 of each group is the room's publisher; the others are the storm's clients
    groups = _rooms("z", rooms, members + 1)
    conns = [c for g in groups for c in g]
    pubs = [g[0] for g in groups]
    storm = [c for g in groups for c in g[1:]]
    two = len(nodes) > 1
    half = (members + 2) // 2  # two nodes: the publisher and the first members on node A
    on_a = {c.cid for g in groups for c in g[:half]} if two else {c.cid for c in conns}

    def node_of(c: Conn, swapped: bool = False) -> RunningServer:
        return nodes[0] if (c.cid in on_a) != swapped else nodes[-1]

    def procs() -> dict[str, RunningServer | RunningRedis]:
        out: dict[str, RunningServer | RunningRedis] = {"node_a": nodes[0]}
        if two:
            out["node_b"] = nodes[1]
        if redis is not None:
            out["redis"] = redis
        return out

    def cpu(trees: dict[str, list[int]]) -> dict[str, float]:
        # on-CPU ns from schedstat: a storm takes tenths of a second, 10 ms ticks are too coarse
        return {name: p.oncpu_seconds(trees[name]) for name, p in procs().items()}

    fig: dict[str, Any] = {"rooms": rooms, "members": members, "clients": len(storm),
                           "publishers": len(pubs), "nodes": len(nodes), "rate": rate,
                           "outage_s": outage}
    with _assign(conns, ctx, groups) as pool:
        pool.call("rtracks", [{"tracks": [(c.cid, c.room, c is g[0]) for g in groups for c in g
                                          if c.worker == w]} for w in range(len(pool))])
        first = _connect(pool, [(n, [c for c in conns if node_of(c) is n]) for n in nodes],
                         nodes)
        fig["first_connect"] = first
        # one room at a time, all its members at once (twonode does the same: it keeps the
        # join race of two new rooms on one Redis node out of this measurement)
        t_join = time.monotonic()
        confirmed = 0
        for i, g in enumerate(groups):
            pool.call("join", {"start_ns": time.monotonic_ns() + 10_000_000,
                               "cids": [c.cid for c in g]})
            want = (i + 1) * len(g)
            ok, s = pool.wait_for(lambda s, t=want: s["confirmed"] >= t,
                                  timeout=30, stall=10.0, key="confirmed")
            confirmed = s["confirmed"]
            if not ok:
                break
        fig |= {"join_ok": confirmed >= len(conns), "confirmed": confirmed,
                "join_elapsed_ms": (time.monotonic() - t_join) * 1e3}
        presence = sum(m * (m + 1) // 2 for m in [members + 1] * rooms)
        pool.wait_for(lambda s: s["frames"] >= presence, timeout=60, stall=2.0)
        s = pool.stats()
        fig["welcomes_without_epoch"] = s["r_no_epoch"]

        pool.call("rpublish_start", {"rate": rate, "size": size})
        time.sleep(lead)

        # ---- the drop
        if setup == "restart":
            fig |= _restart(nodes, server_cpus, extra)
            # the publishers come back first: they resume too, then chat on while the
            # members are still away
            back = _connect(pool, [(nodes[0], pubs)], nodes)
            fig["publishers_reconnected"] = back["connected"]
            pool.call("rresume", [{"start_ns": time.monotonic_ns(), "cids": p}
                                  for p in _per_worker(pool, pubs)])
            pool.wait_for(lambda s: s["r_pub_live"] >= len(pubs), timeout=30, stall=10.0,
                          key="r_pub_live")
        else:
            dropped = pool.call("rdrop", [{"cids": p} for p in _per_worker(pool, storm)])
            fig["dropped"] = sum(r["dropped"] for r in dropped)
        ok, s = pool.wait_for(lambda s: s["r_live"] == 0, timeout=30, stall=10.0, key="r_live")
        fig["members_still_live_after_drop"] = s["r_live"]
        time.sleep(outage)
        counted0 = _server_resumes(nodes, fig)

        # ---- the storm: reconnect (timed apart), then every join with `since` at one instant
        again = _connect(pool, [(n, [c for c in storm if node_of(c, swapped=two) is n])
                                for n in nodes], nodes)
        fig |= {"reconnected": again["connected"], "reconnect_failed": again["connect_failed"],
                "reconnect_elapsed_s": again["connect_elapsed_s"]}
        if again.get("connect_failures"):
            fig["reconnect_failures"] = again["connect_failures"]
        start_ns = time.monotonic_ns() + 300_000_000
        pool.send("rresume", [{"start_ns": start_ns, "cids": p}
                              for p in _per_worker(pool, storm)])
        trees = {name: p.tree_pids() for name, p in procs().items()}
        (c0, t0), ahead_ns = read_before(lambda: (cpu(trees), time.monotonic()), start_ns)
        fig["cpu_read_ahead_ms"] = ahead_ns / 1e6
        if ahead_ns < 0:
            fig["cpu_read_late_ms"] = -ahead_ns / 1e6
        sent = pool.gather("rresume")
        fig["resumes_sent"] = sum(r["sent"] for r in sent)
        done, s = pool.wait_for(lambda s: s["r_welcomed"] >= len(storm), timeout=60,
                                stall=5.0, key="r_welcomed", interval=0.02)
        c1, t1 = cpu(trees), time.monotonic()
        fig["storm_complete"] = done
        by = {k: c1[k] - c0[k] for k in c0}
        fig |= {"storm_window_s": t1 - t0, "server_cpu_storm_s": sum(by.values()),
                "server_cpu_storm_by_process_s": by}

        # ---- live again: the publishers chat on, then stop; everything placed must arrive
        time.sleep(tail)
        stop = pool.call("rpublish_stop")
        fig["publisher_sent"] = sum(r["sent"] for r in stop)
        # the reference first: every publisher has the echo of its last chat (a chat sent
        # into a SIGTERM may never be placed: then its count stops moving), and only then
        # every member has all that its publisher saw placed
        pool.wait_for(lambda s: s["r_pub_placed"] >= s["r_pub_sent"], timeout=30, stall=2.0,
                      key="r_pub_placed")
        settled, s = pool.wait_for(lambda s: s["r_have"] >= s["r_expected"], timeout=30,
                                   stall=3.0, key="r_have")
        fig["settled"] = settled
        fig |= _collect(pool.call("rcollect", timeout=60), len(storm))
        counted1 = _server_resumes(nodes, fig)
        # the server's own count of the storm (roomcast_resumes*_total), to set beside ours
        for key in ("resumes", "resumes_recovered"):
            if key in counted0 and key in counted1:
                fig[f"server_counted_{key}"] = counted1[key] - counted0[key]
        stats = pool.stats()
        fig["errors"] = stats["errors"]
        fig["server_exited"] = "; ".join(
            f"{name} exited with {p.proc.returncode}" for name, p in procs().items()
            if not p.alive())
    fig |= _verdict(fig, two)
    return fig


def _server_resumes(nodes: list[RunningServer], fig: dict[str, Any]) -> dict[str, float]:
    """``roomcast_resumes_total`` and ``roomcast_resumes_recovered_total`` summed over the
    nodes (empty when a node has no such metric or cannot be scraped)."""
    out: dict[str, float] = {}
    for node in nodes:
        if node.metrics_url is None:
            return {}
        try:
            text = scrape(node.metrics_url)
        except OSError as exc:
            fig["metrics_scrape_error"] = f"{node.metrics_url}: {exc!r}"
            return {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in ("roomcast_resumes_total", "roomcast_resumes_recovered_total"):
                    key = sample.name[len("roomcast_"):-len("_total")]
                    out[key] = out.get(key, 0.0) + float(sample.value)
    return out


def _restart(nodes: list[RunningServer], server_cpus: list[int], extra: tuple[str, ...],
             ) -> dict[str, Any]:
    """SIGTERM, wait for the exit (the drain, the history file), the same command again on the
    same port; ``nodes[0]`` is replaced by the new process."""
    old = nodes[0]
    t0 = time.monotonic()
    old.proc.send_signal(signal.SIGTERM)
    code = old.proc.wait(30)
    t1 = time.monotonic()
    old.stop()  # collects the rest of its output
    new = start_server(OURS, cpus=server_cpus, extra=extra, port=old.port)
    t2 = time.monotonic()
    nodes[0] = new
    return {"old_exit_code": code, "drain_s": t1 - t0, "restart_s": t2 - t1,
            "downtime_s": t2 - t0, "old_output_tail": old.text()[-500:]}


def _collect(replies: list[dict[str, Any]], clients: int) -> dict[str, Any]:
    sums = ("missing", "duplicates", "mismatched", "unexpected", "jumps", "recovered",
            "not_recovered", "no_history", "no_welcome", "replayed", "publisher_placed")
    out: dict[str, Any] = {k: sum(r[k] for r in replies) for k in sums}
    reasons: dict[str, int] = {}
    for r in replies:
        for k, v in r["reasons"].items():
            reasons[k] = reasons.get(k, 0) + v
    out["reasons"] = reasons
    out["epochs"] = sorted({e for r in replies for e in r["epochs"]})
    out["publisher_recovered"] = [x for r in replies for x in r["publisher_recovered"]]
    out["close_codes"] = sorted({c for r in replies for c in r["close_codes"]})
    lost: dict[str, Any] = {"members": 0, "by_node": {}, "by_room": {}, "in_replay_range": 0,
                            "live": 0, "examples": []}
    for r in replies:
        part = r["lost"]
        for key in ("members", "in_replay_range", "live"):
            lost[key] += part[key]
        for key in ("by_node", "by_room"):
            for k, v in part[key].items():
                lost[key][k] = lost[key].get(k, 0) + v
        lost["examples"] += part["examples"][: max(0, 5 - len(lost["examples"]))]
    if lost["members"]:
        out["lost"] = lost
    hist, welcome = array("q"), array("q")
    for r in replies:
        hist.frombytes(r["history_waits_ns"])
        welcome.frombytes(r["welcome_waits_ns"])
    first = min((r["first_resume_ns"] for r in replies if r["first_resume_ns"]), default=0)
    last_h = max(r["last_history_ns"] for r in replies)
    last_w = max(r["last_welcome_ns"] for r in replies)
    out["history_answers"] = len(hist)
    out["live_again"] = len(welcome)
    out["all_history_ms"] = (last_h - first) / MS if first and last_h else None
    out["all_live_ms"] = (last_w - first) / MS if first and last_w else None
    out |= {f"history_{k}": v for k, v in _percentiles(hist).items()}
    out |= {f"live_{k}": v for k, v in _percentiles(welcome).items()}
    expected = [n for r in replies for n in r["expected_per_member"]]
    out["room_messages_mean"] = sum(expected) / len(expected) if expected else None
    out["replayed_per_client"] = out["replayed"] / clients if clients else None
    return out


def _verdict(fig: dict[str, Any], two: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    clients = fig["clients"]
    cpu_s = fig.get("server_cpu_storm_s")
    out["server_cpu_per_resume_us"] = cpu_s / clients * 1e6 if clients and cpu_s else None
    unsupported = []
    if fig.get("welcomes_without_epoch"):
        unsupported.append(f"{fig['welcomes_without_epoch']} of {clients} members' welcomes "
                           "carried no epoch")
    if fig.get("no_history"):
        unsupported.append(f"{fig['no_history']} of {fig.get('resumes_sent')} resumes got no "
                           "`history` answer before their welcome")
    out["supported"] = not unsupported
    if unsupported:
        where = "across nodes (Redis mode)" if two else "on this node"
        out["unsupported"] = (f"the server does not serve `since` {where}: "
                              + "; ".join(unsupported))
    problems = []
    if not fig.get("join_ok"):
        problems.append(f"only {fig.get('confirmed')} join confirmations arrived")
    for key in ("connect_failed", "reconnect_failed"):
        if fig.get(key):
            problems.append(f"{fig[key]} {key.replace('_', ' ')}")
    if out.get("unsupported"):
        problems.append(out["unsupported"])
    if not fig.get("storm_complete"):
        problems.append(f"only {fig.get('live_again')} of {clients} members were live again")
    if fig.get("not_recovered"):
        problems.append(f"{fig['not_recovered']} resumes not recovered ({fig.get('reasons')})")
    for key in ("missing", "duplicates", "mismatched", "unexpected"):
        if fig.get(key):
            problems.append(f"{fig[key]} chats {key} over all members")
    lost = fig.get("lost")
    if lost:
        problems.append(f"the missing chats: {lost['members']} members, by node "
                        f"{lost['by_node']}, by room {lost['by_room']}, "
                        f"{lost['in_replay_range']} within the replays' range, "
                        f"{lost['live']} after the welcome")
    if fig.get("errors"):
        problems.append(f"{fig['errors']} error messages received")
    if fig.get("cpu_read_late_ms"):
        problems.append(f"the server CPU counters were read {fig['cpu_read_late_ms']:.0f} ms "
                        "after the storm began: server_cpu_storm_s misses its start")
    if fig.get("server_exited"):
        problems.append(f"server exited: {fig['server_exited']}")
    if fig.get("old_exit_code") not in (None, 0):
        problems.append(f"the restarted server exited with {fig['old_exit_code']} on SIGTERM")
    out["problems"] = problems
    # every member recovered exactly what it missed and is live again
    out["lossless"] = 1.0 if (
        fig.get("storm_complete") and fig.get("recovered") == clients
        and not any(fig.get(k) for k in ("missing", "duplicates", "mismatched", "unexpected"))
    ) else 0.0
    return out

