"""Smoke run of the benchmark driver (bench/): tiny scenarios against roomcast and the Node peers.

Asserts that messages are delivered and none are lost; never asserts on timings (benchmarks are
not timed tests). Keeps `make bench` from rotting. Also the uWebSockets.js peer's wire
behaviour, the flush-histogram arithmetic, target verdicts against the best peer, where
quick runs write, what history costs (on vs off, memory per stored message), the reconnect
storm, and the report's history and resume sections.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench import flood
from bench.scenarios import Context, capacity, fanout, joinstorm, twonode
from bench.servers import RunningServer, cpu_split, start_server
from bench.suite import parse_id

ROOT = Path(__file__).resolve().parent.parent


def _node_ready(peer: str, module: str) -> bool:
    return (ROOT / "bench" / "peers" / peer / "node_modules" / module).is_dir() and bool(
        shutil.which("node"))


NODE_READY = _node_ready("node_ws", "ws")
UWS_READY = _node_ready("uws", "uwebsockets")
needs_uws = pytest.mark.skipif(not UWS_READY, reason="run `make node-deps` for the uWS peer")

SERVERS = [
    "roomcast",
    pytest.param(
        "node_ws",
        marks=pytest.mark.skipif(not NODE_READY, reason="run `make node-deps` for the Node peer"),
    ),
    pytest.param("uws", marks=needs_uws),
]


@pytest.fixture
def ctx() -> Context:
    return Context(cpu_split()[1])


@pytest.fixture(params=SERVERS)
def server(request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    srv = start_server(request.param, cpus=cpu_split()[0], timeout=20)
    try:
        yield srv
    finally:
        srv.stop()


def _clean(fig: dict[str, object]) -> None:
    assert fig["problems"] == [], fig["problems"]
    assert fig["disconnected"] == 0
    assert fig["errors"] == 0


def test_fanout_smoke(server: RunningServer, ctx: Context) -> None:
    fig = fanout(server, ctx, rooms=1, members=5, rate=20, size=64, duration=1.5, warmup=0.5)
    _clean(fig)
    assert fig["messages_sent"] == 30
    assert fig["deliveries"] == 30 * 5
    assert fig["losses"] == 0
    assert fig["p50_ms"] is not None
    # read by the compiled receiver: every frame understood, no connection ended meanwhile
    assert fig["receipt_pace_us"] is not None
    assert fig["receiver_malformed"] == fig["receiver_closed"] == 0
    assert "flush_scrape_error" not in fig
    if server.kind.metrics:
        # roomcast's own flush histogram over the window: one flush per message at this rate
        # (a scrape delayed past the window's first message misses that one flush)
        assert 1 <= fig["flush_count"] <= 30
        assert 0 < fig["flush_p50_us"] <= fig["flush_p99_us"]
    else:
        assert "flush_count" not in fig


def test_joinstorm_smoke(server: RunningServer, ctx: Context) -> None:
    fig = joinstorm(server, ctx, members=20, timeout=30)
    _clean(fig)
    assert fig["confirmed"] == 20
    assert fig["frames"] == fig["frames_expected"] == 20 * 21 // 2
    assert fig["bytes_sent"] > 0


def test_capacity_smoke(server: RunningServer, ctx: Context) -> None:
    fig = capacity(server, ctx, connections=50, room_size=10, steps=2, settle=0.1)
    _clean(fig)
    assert fig["connected"] == 50
    assert fig["alive"] == 50
    assert fig["received_broadcast"] == 50
    assert fig["losses"] == 0
    assert isinstance(fig["rss_per_conn_bytes"], float)


# twonode starts its own processes (one node; two nodes + redis-server). A missing redis-server
# fails these tests with the reason (start_redis raises), it never skips them.


def test_twonode_fanout_smoke(ctx: Context) -> None:
    out = twonode(ctx, cpu_split()[0], mode="fanout", rooms=2, members=6, rate=20, size=64,
                  duration=1.0, warmup=0.5)
    assert set(out) == {"one_node", "two_nodes"}
    for setup, fig in out.items():
        assert "error" not in fig, (setup, fig.get("error"))
        _clean(fig)
        assert fig["confirmed"] == 12
        assert fig["messages_sent"] == 2 * 20
        assert fig["deliveries"] == fig["deliveries_expected"] == 2 * 20 * 6
        assert fig["losses"] == 0
        # three of each room's six members are on the publisher's node, three on the other
        assert fig["origin_deliveries"] == fig["other_deliveries"] == 2 * 20 * 3
        assert fig["origin_losses"] == fig["other_losses"] == 0
        assert fig["origin_p50_ms"] is not None and fig["other_p50_ms"] is not None
    assert set(out["two_nodes"]["cpu_by_process_s"]) == {"node_a", "node_b", "redis"}
    assert "--redis-url" in out["two_nodes"]["server_commands"][1]
    assert set(out["one_node"]["cpu_by_process_s"]) == {"node_a"}


def test_twonode_saturate_smoke(ctx: Context) -> None:
    out = twonode(ctx, cpu_split()[0], mode="saturate", rooms=2, members=4, depth=2, size=64,
                  duration=1.0, warmup=0.3, setups=("two_nodes",))
    fig = out["two_nodes"]
    assert "error" not in fig, fig.get("error")
    _clean(fig)
    assert fig["deliveries"] > 0
    assert fig["deliveries_total"] == fig["deliveries_expected_total"] > 0
    assert fig["losses"] == 0


def test_twonode_ids_round_trip() -> None:
    for cid in ("twonode-fanout-4x100-r50-s100", "twonode-saturate-4x100-d8-s100"):
        cfg = parse_id(cid)
        assert cfg.id == cid
        assert cfg.scenario == "twonode"


# ---- the uWebSockets.js peer speaks roomcast's protocol (presence, capped users, errors)


@needs_uws
async def test_uws_peer_protocol() -> None:
    import asyncio  # noqa: PLC0415
    import json  # noqa: PLC0415

    from websockets.asyncio.client import connect  # noqa: PLC0415

    srv = start_server("uws", extra=("--max-users-list", "2"), timeout=20)

    async def recv(ws: object) -> dict[str, object]:
        raw = await asyncio.wait_for(ws.recv(), 5)  # type: ignore[attr-defined]
        return dict(json.loads(raw))

    try:
        async with (connect(srv.ws_url, open_timeout=5) as a,
                    connect(srv.ws_url, open_timeout=5) as b,
                    connect(srv.ws_url, open_timeout=5) as c):
            await a.send('{"type":"chat","text":"early"}')
            assert await recv(a) == {"type": "error", "code": "not_in_room",
                                     "text": "Join a room first"}
            await a.send("not json")
            assert (await recv(a))["code"] == "invalid_json"
            await a.send('{"type":"dance"}')
            assert (await recv(a))["code"] == "unknown_type"
            await a.send(b"\x00binary")
            assert (await recv(a))["code"] == "binary_unsupported"

            await a.send('{"type":"join","room":"r","username":"alice"}')
            first = await recv(a)
            assert first["users"] == ["alice"] and first["count"] == 1
            await b.send('{"type":"join","room":"r","username":"bob"}')
            mine = await recv(b)
            assert mine["text"] == "bob joined #r" and mine["users"] == ["alice", "bob"]
            notice = await recv(a)
            assert notice["text"] == "bob joined #r" and notice["count"] == 2
            assert "users" not in notice  # only the joiner's copy carries the list
            await c.send('{"type":"join","username":"carol","room":"r"}')
            mine = await recv(c)
            assert mine["count"] == 3 and len(mine["users"]) == 2  # type: ignore[arg-type]
            for ws in (a, b):
                assert (await recv(ws))["text"] == "carol joined #r"

            await b.send('{"type":"chat","text":"hi"}')
            for ws in (a, b, c):  # the sender too
                got = await recv(ws)
                assert (got["type"], got["username"], got["text"]) == ("chat", "bob", "hi")
            await b.send('{"type":"chat","text":"   "}')
            assert (await recv(b))["code"] == "empty_text"

            await c.send('{"type":"leave"}')
            for ws in (a, b):
                got = await recv(ws)
                assert (got["text"], got["count"]) == ("carol left #r", 2)
            await b.close()
            got = await recv(a)
            assert (got["text"], got["event"], got["count"]) == ("bob left #r", "leave", 1)
            await c.send('{"type":"chat","text":"gone"}')
            assert (await recv(c))["code"] == "not_in_room"
    finally:
        assert srv.stop() in (0, -15)


# ---- the flush histogram: quantiles interpolated inside the buckets of a window


def test_flush_histogram_window_quantiles() -> None:
    from bench.promstats import FLUSH_METRIC, parse_histogram, window_figures  # noqa: PLC0415

    def exposition(counts: tuple[int, int, int, int], total: float) -> str:
        b1, b2, b3, inf = counts
        return "\n".join([
            f"# HELP {FLUSH_METRIC} flush", f"# TYPE {FLUSH_METRIC} histogram",
            f'{FLUSH_METRIC}_bucket{{le="0.0001"}} {b1}',
            f'{FLUSH_METRIC}_bucket{{le="0.001"}} {b2}',
            f'{FLUSH_METRIC}_bucket{{le="0.01"}} {b3}',
            f'{FLUSH_METRIC}_bucket{{le="+Inf"}} {inf}',
            f"{FLUSH_METRIC}_sum {total}", f"{FLUSH_METRIC}_count {inf}", ""])

    before = parse_histogram(exposition((50, 50, 50, 50), 0.001), FLUSH_METRIC)
    # the window adds 100 flushes: none under 100 µs, 50 up to 1 ms, 49 up to 10 ms, 1 beyond
    after = parse_histogram(exposition((50, 100, 149, 150), 0.301), FLUSH_METRIC)
    fig = window_figures(before, after)
    assert fig["flush_count"] == 100
    # rank 50 is the top of the (100 µs, 1 ms] bucket; rank 99 is at 49/49 of (1 ms, 10 ms]
    assert fig["flush_p50_us"] == pytest.approx(1000.0)
    assert fig["flush_p99_us"] == pytest.approx(10_000.0)
    assert fig["flush_mean_us"] == pytest.approx(3000.0)
    assert fig["flush_over_top_bucket"] == 1
    # over the whole history, rank 37.5 of 150 lies in the first bucket [0, 100 µs]
    assert after is not None and after.quantile(0.25) == pytest.approx(100e-6 * 37.5 / 50)
    assert before is not None
    half = (after - before).quantile(0.25)  # rank 25 of the 50 in (100 µs, 1 ms]
    assert half == pytest.approx(100e-6 + 900e-6 * 25 / 50)
    assert window_figures(None, after) == {}
    assert parse_histogram("# nothing here\n", FLUSH_METRIC) is None


def test_flush_histogram_sums_its_room_size_series() -> None:
    from bench.promstats import FLUSH_METRIC, parse_histogram  # noqa: PLC0415

    lines = [f"# HELP {FLUSH_METRIC} delay", f"# TYPE {FLUSH_METRIC} histogram"]
    for size, (fast, total) in {"1-10": (3, 4), "11-100": (1, 6)}.items():
        lines += [f'{FLUSH_METRIC}_bucket{{room_size="{size}",le="0.001"}} {fast}',
                  f'{FLUSH_METRIC}_bucket{{room_size="{size}",le="+Inf"}} {total}',
                  f'{FLUSH_METRIC}_sum{{room_size="{size}"}} 0.5',
                  f'{FLUSH_METRIC}_count{{room_size="{size}"}} {total}']
    histogram = parse_histogram("\n".join([*lines, ""]), FLUSH_METRIC)
    assert histogram is not None
    assert histogram.buckets == ((0.001, 4.0), (float("inf"), 10.0))
    assert (histogram.sum, histogram.count) == (1.0, 10.0)


# ---- targets: against the best peer of the same run, a named peer, or an absolute bound


def test_targets_use_the_best_peer_of_the_run() -> None:
    from bench.report import evaluate_targets  # noqa: PLC0415

    def rec(cid: str, scenario: str, **runs: dict[str, object]) -> dict[str, Any]:
        return {"id": cid, "scenario": scenario, "runs": runs}

    records = {
        # CPU: uws is the best peer (lowest); py_websockets is lower still but lost messages
        "fanout-4x100-r50-s100": rec(
            "fanout-4x100-r50-s100", "fanout",
            roomcast={"cpu_per_delivery_us": 2.5, "problems": []},
            uws={"cpu_per_delivery_us": 2.2, "problems": []},
            node_ws={"cpu_per_delivery_us": 4.4, "problems": []},
            py_websockets={"cpu_per_delivery_us": 1.0, "problems": ["9 deliveries lost"]}),
        "saturate-4x250-d8-s100": rec(
            "saturate-4x250-d8-s100", "saturate",
            roomcast={"cpu_per_delivery_us": 0.29, "problems": []},
            uws={"cpu_per_delivery_us": 0.47, "problems": []},
            node_ws={"cpu_per_delivery_us": 3.4, "problems": []}),
        # a named peer: below Node's, whatever uws does
        "capacity-18000": rec(
            "capacity-18000", "capacity",
            roomcast={"rss_per_conn_bytes": 6000.0, "problems": []},
            uws={"rss_per_conn_bytes": 1100.0, "problems": []},
            node_ws={"rss_per_conn_bytes": 6400.0, "problems": []}),
        "scaleout-200000": rec("scaleout-200000", "scaleout",
                               roomcast={"held": 0.0, "problems": []}),
    }
    # the peer targets (each configuration's history and resume targets are tested below)
    rows = {t["config"]: t for t in evaluate_targets(records) if not t["hint"]}
    fan = rows["fanout-4x100-r50-s100"]
    assert fan["verdict"] == "MISSED"
    assert fan["checks"][0]["peer"] == "uws"
    assert fan["checks"][0]["peer_value"] == 2.2
    assert rows["saturate-4x250-d8-s100"]["verdict"] == "met"
    assert rows["saturate-4x250-d8-s100"]["checks"][0]["peer"] == "uws"
    assert rows["capacity-18000"]["verdict"] == "met"
    assert rows["capacity-18000"]["checks"][0]["peer"] == "node_ws"
    assert rows["scaleout-200000"]["verdict"] == "MISSED"
    assert rows["fanout-1x1000-r20-s100"]["verdict"] == "not measured"
    # our own problems make a target missed whatever the figures say
    records["saturate-4x250-d8-s100"]["runs"]["roomcast"]["problems"] = ["3 deliveries lost"]
    rows = {t["config"]: t for t in evaluate_targets(records) if not t["hint"]}
    assert rows["saturate-4x250-d8-s100"]["verdict"] == "MISSED"


# ---- quick runs write beside the committed reference run, never over it


def test_quick_runs_write_beside_the_reference_run() -> None:
    from bench.__main__ import results_dir  # noqa: PLC0415
    from loadtest.run import parse_args  # noqa: PLC0415

    assert results_dir(None, quick=False) == ROOT / "results"
    assert results_dir(None, quick=True) == ROOT / "results" / "quick"
    assert results_dir("/tmp/elsewhere", quick=True) == Path("/tmp/elsewhere")
    quick = parse_args(["--quick"])
    assert quick.out == ROOT / "results" / "quick" / "loadtest"
    assert quick.readme == ROOT / "results" / "quick" / "README.md"
    full = parse_args([])
    assert full.out == ROOT / "results" / "loadtest"
    assert full.readme == ROOT / "results" / "README.md"


# ---- scaleout: several driver processes and source addresses, workers on Redis


def test_scaleout_smoke(ctx: Context) -> None:
    from bench.scaleout import scaleout  # noqa: PLC0415

    out = scaleout(ctx, cpu_split()[0], connections=60, workers=2, room_size=10, steps=2,
                   per_source=25, per_process=25, broadcast_rate=200.0, settle=0.2)
    fig = out["roomcast"]
    assert "error" not in fig, (fig.get("error"), fig.get("server_output_tail"))
    _clean(fig)
    assert fig["held"] == 1.0
    assert fig["connected"] == fig["confirmed"] == fig["received_broadcast"] == 60
    assert fig["broadcast_deliveries"] == 60 and fig["losses"] == 0
    assert fig["driver_processes"] == 3  # 60 connections, at most 25 per process
    assert len(fig["source_addresses"]) == 3  # at most 25 per address
    assert fig["workers"] == 2 and len(fig["worker_base_rss_bytes"]) == 2
    assert all(rss > 0 for rss in fig["worker_base_rss_bytes"])
    assert sum(fig["conns_per_worker"]) == 60  # every connection found on a worker by ss
    assert fig["redis_after"]["used_memory"] > 0
    assert fig["redis_after"]["pubsub_channels"] >= 1
    assert fig["broadcast_p99_ms"] is not None
    assert "--workers 2" in fig["server_command"] and "--redis-url" in fig["server_command"]


def test_scaleout_ids_round_trip() -> None:
    for cid in ("scaleout-200000", "scaleout-20000-w4"):
        cfg = parse_id(cid)
        assert cfg.id == cid
        assert cfg.scenario == "scaleout"
    assert parse_id("scaleout-20000-w4").params["workers"] == 4


# ---- the browser-handshake capacity variant really sends its cookies


async def test_driver_sends_the_browser_cookie_header() -> None:
    import asyncio  # noqa: PLC0415

    from bench.driver import Worker  # noqa: PLC0415
    from bench.scenarios import browser_cookie  # noqa: PLC0415

    requests: list[bytes] = []

    async def handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        requests.append(await reader.readuntil(b"\r\n\r\n"))
        writer.close()  # no upgrade: only the request matters here

    server = await asyncio.start_server(handshake, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    cookie = browser_cookie(1500)
    worker = Worker(0)
    try:
        out = await asyncio.wait_for(worker.op_connect(
            f"ws://127.0.0.1:{port}/", [(1, "r", "u", "127.0.0.1")],
            headers={"Cookie": cookie}), 20)
    finally:
        worker.op_close_all()
        server.close()
        await asyncio.wait_for(server.wait_closed(), 5)
    assert out["failed"] == 1  # the server never upgraded: not counted as a connection
    assert len(requests) == 1
    assert len(cookie) == 1500
    assert f"Cookie: {cookie}\r\n".encode() in requests[0]
    assert parse_id("capacity-18000-c1500").params["cookie_bytes"] == 1500


# ---- what history costs: the history-off variant, memory per stored message


def test_the_history_off_variant_runs_beside_ours_and_really_has_no_history() -> None:
    import asyncio  # noqa: PLC0415
    import json  # noqa: PLC0415

    from websockets.asyncio.client import connect  # noqa: PLC0415

    from bench.__main__ import with_variants  # noqa: PLC0415
    from bench.servers import NOHISTORY  # noqa: PLC0415
    from bench.suite import STANDARD  # noqa: PLC0415

    by_id = {c.id: c for c in STANDARD}
    for cid in ("saturate-4x250-d8-s100", "fanout-4x100-r50-s100", "fanout-1x1000-r20-s100"):
        assert by_id[cid].variants == (NOHISTORY,)
        # right after ours (same conditions), and not without ours
        assert with_variants(["roomcast", "uws", "node_ws"], by_id[cid]) == [
            "roomcast", NOHISTORY, "uws", "node_ws"]
        assert with_variants(["uws"], by_id[cid]) == ["uws"]
    assert with_variants(["roomcast"], by_id["capacity-18000"]) == ["roomcast"]

    async def history_reason(url: str) -> object:
        async with connect(url, open_timeout=5) as ws:
            await ws.send('{"type":"join","room":"r","username":"u","history":5}')
            first = json.loads(await asyncio.wait_for(ws.recv(), 5))
            return (first["type"], first["recovered"], first.get("reason"))

    for kind, reason in ((NOHISTORY, "history disabled"), ("roomcast", None)):
        srv = start_server(kind, timeout=20)
        try:
            assert asyncio.run(history_reason(srv.ws_url)) == ("history", reason is None, reason)
        finally:
            assert srv.stop() in (0, -15)


def test_histmem_smoke(ctx: Context) -> None:
    from bench.histmem import histmem  # noqa: PLC0415
    from bench.servers import NOHISTORY  # noqa: PLC0415

    out = histmem(ctx, cpu_split()[0], rooms=20, per_room=10, steps=2, settle=0.1)
    inproc = out["in_process"]
    assert "error" not in inproc, inproc.get("error")
    assert "bench.history_memory --rooms 20 --per-room 10" in inproc["command"]
    assert inproc["without_ids"]["messages"] == 200
    assert inproc["with_ids"]["traced_bytes_per_message"] > (
        inproc["without_ids"]["traced_bytes_per_message"])
    on, off = out["roomcast"], out[NOHISTORY]
    for fig in (on, off):
        assert "error" not in fig, (fig.get("error"), fig.get("server_output_tail"))
        assert fig["problems"] == [], fig["problems"]
        assert fig["chats"] == fig["echoes"] == 200 and fig["losses"] == 0
        assert [p[0] for p in fig["rss_points"]] == [0, 100, 200]
        assert isinstance(fig["rss_per_message_bytes"], float)
        assert fig["frame_bytes"] > 60  # a 60-character text plus the chat's other fields
    # the server stored every chat of the fill, and counts more than their frames' bytes
    assert on["history_messages"] == 200
    assert on["counted_per_message_bytes"] > on["frame_bytes"]
    assert off["history_messages"] == 0
    assert "--history-size 10" in on["server_command"]
    assert "--history-size 0" in off["server_command"]


# ---- the reconnect storm


def test_resume_storm_smoke(ctx: Context) -> None:
    """One node (restart with --history-file, mass disconnect) and two nodes on Redis (every
    member resuming on the other node) lose nothing."""
    from bench.resume import resume  # noqa: PLC0415

    out = resume(ctx, cpu_split()[0], rooms=2, members=5, rate=20, lead=0.3, outage=0.5,
                 tail=0.3)
    assert set(out) == {"restart", "disconnect", "two_nodes"}
    for setup, fig in out.items():
        assert "error" not in fig, (setup, fig.get("error"))
        assert fig["clients"] == fig["resumes_sent"] == fig["live_again"] == 10
        assert fig["storm_complete"] is True
        assert fig["publisher_placed"] > 0
        assert fig["duplicates"] == fig["mismatched"] == fig["unexpected"] == 0
        assert fig["server_cpu_storm_s"] > 0
    for setup in ("restart", "disconnect", "two_nodes"):
        fig = out[setup]
        assert fig["supported"] is True and fig["problems"] == [], (setup, fig["problems"])
        assert fig["recovered"] == 10 and fig["missing"] == 0 and fig["lossless"] == 1.0
        # the server's own counters agree (after a restart they start at 0 again: the
        # publishers' own resumes came before the storm, so they are not in the difference)
        assert fig["server_counted_resumes"] == fig["server_counted_resumes_recovered"] == 10
        # they missed something while away, and the replay carried it
        assert fig["replayed"] > 0 and fig["all_history_ms"] is not None
    restart = out["restart"]
    assert restart["old_exit_code"] == 0 and restart["close_codes"] == [1012]
    assert restart["publisher_recovered"] == [True, True]
    assert "--history-file" in restart["server_commands"][0]
    assert out["disconnect"]["dropped"] == 10
    two = out["two_nodes"]
    assert "--redis-url" in two["server_commands"][1]
    assert set(two["server_cpu_storm_by_process_s"]) == {"node_a", "node_b", "redis"}
    # half of each room resumed on node A, the other half on node B
    assert sum(1 for c in two["server_commands"] if "--redis-url" in c) == 2


START_NS = 1_000_000_000


@pytest.mark.parametrize(("woke_at", "kept", "ahead"), [
    (START_NS - 50_000_000, "second", 50_000_000),  # on time: the reading 50 ms ahead
    (START_NS + 88_000_000, "first", 300_000_000),  # descheduled past the storm's start
])
def test_the_storm_cpu_reading_precedes_the_storm_even_when_the_driver_wakes_late(
    woke_at: int, kept: str, ahead: int,
) -> None:
    from bench.resume import read_before  # noqa: PLC0415

    now = [START_NS - 300_000_000]
    readings = iter(["first", "second"])

    def sleep_until(_ns: int) -> None:
        now[0] = woke_at

    reading, ns_ahead = read_before(lambda: next(readings), START_NS, clock=lambda: now[0],
                                    sleep_until=sleep_until)
    assert (reading, ns_ahead) == (kept, ahead)


def test_a_storm_against_a_server_that_ignores_since_says_so() -> None:
    """What the two-node storm reported before Redis mode served `since`: the welcomes carry
    no epoch and no resume gets a `history` answer; said in words, and the target missed."""
    from bench.resume import _verdict  # noqa: PLC0415

    fig = {"clients": 10, "publishers": 2, "join_ok": True, "storm_complete": True,
           "welcomes_without_epoch": 10, "no_history": 10, "resumes_sent": 10, "recovered": 0,
           "missing": 120, "live_again": 10}
    out = _verdict(fig, two=True)
    assert out["supported"] is False and out["lossless"] == 0.0
    assert out["unsupported"] == (
        "the server does not serve `since` across nodes (Redis mode): 10 of 10 members' "
        "welcomes carried no epoch; 10 of 10 resumes got no `history` answer before their "
        "welcome")
    assert out["problems"][0] == out["unsupported"]
    assert "120 chats missing over all members" in out["problems"]


def test_a_storm_whose_cpu_was_read_late_says_its_figure_misses_the_start() -> None:
    from bench.resume import _verdict  # noqa: PLC0415

    fig = {"clients": 10, "publishers": 2, "join_ok": True, "storm_complete": True,
           "resumes_sent": 10, "recovered": 10, "live_again": 10, "server_cpu_storm_s": 0.0}
    assert _verdict(fig, two=False)["problems"] == []
    out = _verdict(fig | {"cpu_read_late_ms": 12.4}, two=False)
    assert out["problems"] == ["the server CPU counters were read 12 ms after the storm began: "
                               "server_cpu_storm_s misses its start"]
    assert out["lossless"] == 1.0  # what the clients got is not in doubt


def test_resume_storm_counts_what_a_server_without_history_loses(ctx: Context) -> None:
    from bench.resume import resume  # noqa: PLC0415

    out = resume(ctx, cpu_split()[0], rooms=1, members=4, rate=20, lead=0.3, outage=0.5,
                 tail=0.3, setups=("disconnect",), server_args=("--history-size", "0"))
    fig = out["disconnect"]
    assert "error" not in fig, fig.get("error")
    assert fig["storm_complete"] is True
    assert (fig["recovered"], fig["not_recovered"]) == (0, 4)
    assert fig["reasons"] == {"history disabled": 4}
    assert (fig["server_counted_resumes"], fig["server_counted_resumes_recovered"]) == (4, 0)
    # what was said while they were away never reached them
    assert fig["missing"] >= 4 and fig["lossless"] == 0.0
    assert any("not recovered" in p for p in fig["problems"])


def test_a_track_counts_duplicates_jumps_and_replays() -> None:
    from bench.driver import Track, _decode_welcome  # noqa: PLC0415

    track = Track(1, "r", publisher=False)
    track.welcome(_decode_welcome(b'{"type":"system","text":"u joined #r","epoch":"e1",'
                                  b'"seq":0}'), 1)
    assert (track.epoch, track.seq, track.no_history) == ("e1", 0, False)
    track.chat(10, 1)
    track.chat(11, 2)
    track.reset_resume(100)
    # a replay of one missed chat and one already seen: the position moves, one duplicate
    track.history(b'{"type":"history","room":"r","epoch":"e1","messages":['
                  b'{"type":"chat","username":"p","text":"11:0:x","timestamp":0,"seq":2},'
                  b'{"type":"chat","username":"p","text":"12:0:x","timestamp":0,"seq":3}],'
                  b'"recovered":true}', 150)
    assert (track.recovered, track.replayed, track.dups, track.seq) == (True, 2, 1, 3)
    track.chat(14, 5)  # a gap: seq 4 never came
    assert track.jumps == 2 and track.got == {10: 1, 11: 2, 12: 3, 14: 5}
    track.reset_resume(200)
    track.welcome(_decode_welcome(b'{"type":"system","text":"u joined #r"}'), 250)
    assert track.no_history is True and track.epoch == "e1"  # no epoch given: the old kept


def test_resume_and_histmem_ids_round_trip() -> None:
    for cid, scenario in (("resume-10x100-r20", "resume"), ("histmem-1000x100", "histmem")):
        cfg = parse_id(cid)
        assert (cfg.id, cfg.scenario) == (cid, scenario)
    assert parse_id("resume-3x7-r5").params | {} == {
        "rooms": 3, "members": 7, "rate": 5.0, "size": 100, "lead": 1.0, "outage": 2.0,
        "tail": 1.0}


# ---- the report: history on/off, memory, the storm, and hints that quote the profile


def _run_file(tmp: Path, name: str, started: str, results: list[dict[str, Any]],
              flamegraph: dict[str, object] | None = None) -> None:
    import json  # noqa: PLC0415

    run: dict[str, object] = {"started": started, "command": "python -m bench", "quick": False,
                              "results": results, "complete": True, "machine": {},
                              "versions": {}}
    if flamegraph is not None:
        run["flamegraph"] = flamegraph
    (tmp / "runs").mkdir(exist_ok=True)
    (tmp / "runs" / name).write_text(json.dumps(run))


HOT: dict[str, Any] = {"total_samples": 1000, "self": [
    {"frame": "ChatCore.flush (server/core.py:380)", "samples": 700, "pct": 70.0},
    {"frame": "Runner.run (asyncio/runners.py:118)", "samples": 200, "pct": 20.0},
    {"frame": "History.add (server/history.py:210)", "samples": 30, "pct": 3.0}],
    "total": []}


def test_the_readme_shows_history_costs_the_storm_and_quotes_the_runs_flamegraph(
    tmp_path: Path,
) -> None:
    from bench.report import load_runs, pair_figures, write_readme  # noqa: PLC0415
    from bench.servers import NOHISTORY  # noqa: PLC0415

    fan = {"id": "fanout-4x100-r50-s100", "scenario": "fanout", "note": "target",
           "params": {"rooms": 4, "members": 100, "rate": 50},
           "reproduce": 'make bench BENCH_ARGS="--only fanout-4x100-r50-s100"',
           "runs": {"roomcast": {"cpu_per_delivery_us": 3.0, "p99_ms": 5.0, "problems": []},
                    NOHISTORY: {"cpu_per_delivery_us": 2.5, "p99_ms": 4.0, "problems": []},
                    "uws": {"cpu_per_delivery_us": 2.2, "p99_ms": 4.0, "problems": []}},
           "repeats": {"roomcast": [{"cpu_per_delivery_us": 2.875}, {"cpu_per_delivery_us": 2.6}],
                       NOHISTORY: [{"cpu_per_delivery_us": 2.5}, {"cpu_per_delivery_us": 2.5}]}}
    fan["pairs"] = {NOHISTORY: pair_figures(fan, NOHISTORY)}
    mem = {"id": "histmem-1000x100", "scenario": "histmem", "note": "",
           "params": {"rooms": 1000, "per_room": 100, "text_length": 60, "steps": 4},
           "reproduce": 'make bench BENCH_ARGS="--only histmem-1000x100"',
           "runs": {"in_process": {"command": ".venv/bin/python -m bench.history_memory",
                                   "without_ids": {"traced_bytes_per_message": 201.4},
                                   "with_ids": {"traced_bytes_per_message": 325.0}},
                    "roomcast": {"rss_per_message_bytes": 204.6, "frame_bytes": 143.8,
                                 "counted_per_message_bytes": 203.8, "problems": []},
                    NOHISTORY: {"rss_per_message_bytes": 1e-12, "problems": []}}}
    storm = {"id": "resume-10x100-r20", "scenario": "resume", "note": "target",
             "params": {"rooms": 10, "members": 100, "rate": 20.0, "outage": 2.0},
             "reproduce": 'make bench BENCH_ARGS="--only resume-10x100-r20"',
             "runs": {"restart": {"clients": 1000, "recovered": 1000, "lossless": 1.0,
                                  "server_cpu_storm_s": 0.0731, "problems": []},
                      "two_nodes": {"clients": 1000, "recovered": 0, "no_history": 1000,
                                    "lossless": 0.0, "unsupported": "the server does not "
                                    "serve `since` across nodes (Redis mode): no epoch",
                                    "problems": ["the server does not serve `since`"]}}}
    _run_file(tmp_path, "a.json", "2026-12-01T10:00:00", [fan, mem, storm],
              {"config": "fanout-4x100-r50-s100", "hot": HOT, "svg": "f.svg",
               "command": "py-spy", "duration_s": 22, "rate_hz": 250})
    readme = write_readme(tmp_path, load_runs(tmp_path / "runs"), []).read_text()

    # three pairs: 1.20x, 1.15x, 1.04x; the medians are shown and judged
    assert ("| fanout-4x100-r50-s100 | 2.88 | 2.50 | 1.15x | 1.20x, 1.15x, 1.04x | "
            "≤ 1.1x: **MISSED** |") in readme
    assert "median of 3 pairs 1.15x (1.20x, 1.15x, 1.04x; medians ours 2.875 vs " \
        f"{NOHISTORY} 2.5) (needs <= 1.1x) — missed" in readme
    assert f"| fanout-4x100-r50-s100 | *ours/{NOHISTORY}* |" in readme
    assert "| every Python allocation | 201 B | 325 B |" in readme
    assert "| roomcast | 205 B |" in readme and f"| {NOHISTORY} | 0 B |" in readme
    assert "| resume-10x100-r20 | one node, SIGTERM + restart with --history-file | 1,000 |" \
        in readme
    assert "| 73 |" in readme  # the storm's server CPU in ms
    assert "two nodes + Redis, dropped, resumed on the other node: the server does not " \
        "serve `since` across nodes" in readme
    gaps = readme[readme.index("## What would close the gaps"):]
    assert "`fanout-4x100-r50-s100`; `fanout-4x100-r50-s100` (history)" in gaps
    assert "`resume-10x100-r20` (resume-two_nodes)" in gaps
    assert "`resume-10x100-r20` (resume-restart)" not in gaps  # met
    # the CPU hints quote the flamegraph of the run that measured the miss, by frame
    assert gaps.count("this run's flamegraph (`fanout-4x100-r50-s100`, 1,000 samples) has the "
                      "most own samples in `ChatCore.flush (server/core.py:380)` 70.0%") == 2
    assert "frames of `server/history.py`: `History.add (server/history.py:210)` 3.0%" in gaps


def test_a_hint_names_the_run_of_a_flamegraph_from_another_run() -> None:
    from bench.report import flamegraph_quote  # noqa: PLC0415

    fg = {"config": "fanout-4x100-r50-s100", "hot": HOT, "_file": "old.json"}
    assert flamegraph_quote(fg, "new.json").startswith(
        "the latest flamegraph (run `old.json`) (`fanout-4x100-r50-s100`, 1,000 samples)")
    assert flamegraph_quote(None, "new.json").startswith("no flamegraph was recorded")
    assert "failed" in flamegraph_quote({"error": "py-spy", "_file": "x.json"}, "x.json")
    cold = {**fg, "hot": {**HOT, "self": HOT["self"][:2]}}
    assert "no `server/history.py` frame among its hottest" in flamegraph_quote(cold, "old.json")


def test_only_a_missed_cpu_figure_quotes_the_flamegraph() -> None:
    from bench.report import gap_hints  # noqa: PLC0415

    def target(figure: str) -> dict[str, object]:
        checks = [{"figure": f, "met": f != figure} for f in ("p99_ms", "cpu_per_delivery_us")]
        return {"config": "fanout-1x1000-r20-s100", "hint": None, "checks": checks}

    (latency,) = gap_hints([target("p99_ms")], {}, [])
    assert latency.startswith("fanout into 1,000 members") and "Profile:" not in latency
    # the p99 row first, the CPU row second: one line for the configuration, with the profile
    (both,) = gap_hints([target("p99_ms"), target("cpu_per_delivery_us")], {}, [])
    assert both.startswith(latency) and "Profile: no flamegraph was recorded" in both


def test_history_on_off_is_judged_on_the_median_of_the_pairs() -> None:
    from bench.report import evaluate_targets, pair_figures  # noqa: PLC0415
    from bench.servers import NOHISTORY  # noqa: PLC0415

    def fig(cpu: float, problems: list[str] | None = None) -> dict[str, object]:
        return {"cpu_per_delivery_us": cpu, "problems": problems or []}

    rec: dict[str, Any] = {
        "id": "saturate-4x250-d8-s100", "scenario": "saturate",
        # the first pair misses (1.3x): a noisy neighbour; the other two meet it
        "runs": {"roomcast": fig(1.3), NOHISTORY: fig(1.0)},
        "repeats": {"roomcast": [fig(1.05), fig(0.9), fig(5.0, ["server exit code 1"])],
                    NOHISTORY: [fig(1.0), fig(1.0), fig(1.0)]}}
    paired = pair_figures(rec, NOHISTORY)["cpu_per_delivery_us"]
    assert paired["ratios"] == pytest.approx([1.3, 1.05, 0.9])  # the run with problems is out
    assert paired["median_ratio"] == pytest.approx(1.05)
    rec["pairs"] = {NOHISTORY: pair_figures(rec, NOHISTORY)}
    [row] = [t for t in evaluate_targets({rec["id"]: rec}) if t["hint"] == "history"
             and t["config"] == rec["id"]]
    assert row["verdict"] == "met"
    assert row["checks"][0]["pairs"] == pytest.approx([1.3, 1.05, 0.9])
    del rec["pairs"]  # one pair only: judged on it
    [row] = [t for t in evaluate_targets({rec["id"]: rec}) if t["hint"] == "history"
             and t["config"] == rec["id"]]
    assert row["verdict"] == "MISSED"


def test_the_standard_history_comparisons_run_in_pairs() -> None:
    from bench.suite import STANDARD  # noqa: PLC0415

    paired = {c.id: (c.pairs, c.paired_peers) for c in STANDARD if c.variants}
    assert paired == {"saturate-4x250-d8-s100": (5, ("uws",)),
                      "fanout-4x100-r50-s100": (5, ("uws",)),
                      "fanout-1x1000-r20-s100": (5, ("uws", "node_ws", "py_websockets"))}


@needs_uws
def test_run_config_runs_ours_the_variant_and_the_paired_peer_in_alternating_pairs(
    ctx: Context,
) -> None:
    from bench.__main__ import run_config  # noqa: PLC0415
    from bench.servers import NOHISTORY  # noqa: PLC0415
    from bench.suite import fanout as fanout_config  # noqa: PLC0415

    # 5,000 deliveries a second: a few ms of server CPU, which schedstat reads (ticks read 0)
    cfg = fanout_config(2, 50, 50, size=64, duration=1.0, variants=(NOHISTORY,), pairs=3,
                        paired_peers=("uws",))
    cfg.params["warmup"] = 0.2  # nine runs: the order is what is checked, not steady figures
    rec = run_config(cfg, ["roomcast", "uws"], ctx, cpu_split()[0], {})
    assert list(rec["runs"]) == ["roomcast", NOHISTORY, "uws"]
    repeats = rec["repeats"]
    assert len(repeats["roomcast"]) == len(repeats[NOHISTORY]) == len(repeats["uws"]) == 2

    def start(fig: dict[str, Any]) -> float:
        return float(fig["started_monotonic"])

    # pair 1: ours first; pair 2: the others first; pair 3: ours first again
    first = rec["runs"]
    assert start(first["roomcast"]) < start(first[NOHISTORY]) < start(first["uws"])
    assert start(repeats[NOHISTORY][0]) < start(repeats["uws"][0]) < start(
        repeats["roomcast"][0])
    assert start(repeats["roomcast"][1]) < start(repeats[NOHISTORY][1]) < start(
        repeats["uws"][1])
    for fig in (*first.values(), *(f for runs in repeats.values() for f in runs)):
        _clean(fig)
        assert fig["deliveries"] == fig["deliveries_expected"] > 0
    assert "--history-size 0" in repeats[NOHISTORY][0]["server_command"]
    for partner in (NOHISTORY, "uws"):
        paired = rec["pairs"][partner]["cpu_per_delivery_us"]
        assert len(paired["ratios"]) == 3 and paired["median_ratio"] is not None
        assert paired["ours"] == [
            f["cpu_per_delivery_us"] for f in (first["roomcast"], *repeats["roomcast"])]


def test_server_cpu_is_read_finer_than_a_clock_tick() -> None:
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    from bench.servers import SERVER_KINDS  # noqa: PLC0415

    # a child that burns 3 ms of CPU when told to, then waits: 10 ms ticks read it as 0 or 0.01
    code = ("import sys,time\nprint(flush=True)\nsys.stdin.readline()\nt=time.perf_counter()\n"
            "while time.perf_counter()-t<0.003: pass\nprint(flush=True)\nsys.stdin.readline()")
    with subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        server = RunningServer(SERVER_KINDS["roomcast"], proc, "127.0.0.1", 0, [])
        proc.stdout.readline()  # started: the interpreter's start-up CPU is outside the window
        before = server.cpu_seconds()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        proc.stdout.readline()
        spent = server.cpu_seconds() - before
        proc.kill()
    assert 0 < spent < 0.01  # ticks read 0 or 0.01; preemption can only make it less than 3 ms


def test_a_target_against_the_best_peer_is_judged_on_its_pairs_when_it_ran_in_pairs() -> None:
    from bench.report import evaluate_targets, pair_figures  # noqa: PLC0415

    def fig(cpu: float) -> dict[str, object]:
        return {"cpu_per_delivery_us": cpu, "problems": []}

    rec: dict[str, Any] = {
        "id": "saturate-4x250-d8-s100", "scenario": "saturate",
        # the first pair misses (1.2x), the other two meet it: a tie judged on the median
        "runs": {"roomcast": fig(1.8), "uws": fig(1.5), "node_ws": fig(7.0)},
        "repeats": {"roomcast": [fig(1.5), fig(1.4)], "uws": [fig(1.6), fig(1.5)]}}

    def verdict() -> dict[str, Any]:
        [row] = [t for t in evaluate_targets({rec["id"]: rec})
                 if t["config"] == rec["id"] and t["hint"] != "history"]
        return row

    assert verdict()["verdict"] == "MISSED"  # no pairs: the first runs, 1.2x
    rec["pairs"] = {"uws": pair_figures(rec, "uws")}
    row = verdict()
    assert row["verdict"] == "met"
    check = row["checks"][0]
    assert check["peer"] == "uws" and check["pairs"] == pytest.approx([1.2, 1.5 / 1.6, 1.4 / 1.5])
    assert check["ratio"] == pytest.approx(1.5 / 1.6)  # the median of the three
    rec["repeats"] = {"roomcast": [fig(1.9), fig(1.7)], "uws": [fig(1.6), fig(1.5)]}
    rec["pairs"] = {"uws": pair_figures(rec, "uws")}
    assert verdict()["verdict"] == "MISSED"  # 1.2x, 1.19x, 1.13x: the median misses


def test_the_1x1000_p99_is_judged_on_the_uws_pairs_and_on_one_run_against_an_unpaired_peer(
        ) -> None:
    from bench.report import evaluate_targets, pair_figures  # noqa: PLC0415

    def fig(p99: float) -> dict[str, object]:
        return {"cpu_per_delivery_us": 1.0, "p99_ms": p99, "problems": []}

    rec: dict[str, Any] = {
        "id": "fanout-1x1000-r20-s100", "scenario": "fanout",
        # the first pair misses (1.1x), the repeats meet it
        "runs": {"roomcast": fig(11.0), "uws": fig(10.0), "node_ws": fig(16.0)},
        "repeats": {"roomcast": [fig(9.0), fig(9.5)], "uws": [fig(10.0), fig(10.0)]}}
    rec["pairs"] = {"uws": pair_figures(rec, "uws")}

    def p99_check() -> dict[str, Any]:
        [row] = [t for t in evaluate_targets({rec["id"]: rec})
                 if t["config"] == rec["id"] and t["hint"] != "history"]
        checks: list[dict[str, Any]] = row["checks"]
        [check] = [c for c in checks if c["figure"] == "p99_ms"]
        return check

    check = p99_check()
    assert check["met"] and check["ratio"] == pytest.approx(0.95)
    assert check["pairs"] == pytest.approx([1.1, 0.9, 0.95])
    rec["runs"]["node_ws"] = fig(9.8)  # the best peer ran once: its one run decides
    check = p99_check()
    assert check["peer"] == "node_ws" and not check["met"]
    assert check["ratio"] == pytest.approx(11.0 / 9.8)
    # node_ws in the pairs too: its median (12.0) ranks it, behind uws's (10.0), whose pairs
    # judge; the lowest single run (node_ws's first, 9.8) no longer picks the peer
    rec["repeats"]["node_ws"] = [fig(12.0), fig(13.0)]
    rec["pairs"]["node_ws"] = pair_figures(rec, "node_ws")
    check = p99_check()
    assert check["peer"] == "uws" and check["met"] and check["ratio"] == pytest.approx(0.95)
    rec["repeats"]["node_ws"] = [fig(9.0), fig(9.2)]  # its median now best: its pairs judge
    rec["pairs"]["node_ws"] = pair_figures(rec, "node_ws")
    check = p99_check()
    assert check["peer"] == "node_ws" and check["pairs"] == pytest.approx(
        [11.0 / 9.8, 9.0 / 9.0, 9.5 / 9.2])
    assert check["ratio"] == pytest.approx(9.5 / 9.2) and not check["met"]


def test_receipt_pace_is_the_median_per_message_spacing_up_to_its_99th_percentile_receipt(
        ) -> None:
    from array import array  # noqa: PLC0415

    from bench.scenarios import _receipt_pace  # noqa: PLC0415

    lat, ids = array("q"), array("i")
    for msg, step_ns in ((1, 5_000), (2, 7_000), (3, 9_000)):
        for member in range(200):  # shuffled: receipts of several workers arrive interleaved
            lat.append(1_000_000 + ((member * 37) % 200) * step_ns)
            ids.append(msg)
    lat.append(900_000_000)  # a straggler past the 99th percentile of the median message
    ids.append(2)
    assert _receipt_pace(lat, ids)["receipt_pace_us"] == pytest.approx(7.0)
    assert _receipt_pace(lat, array("i"))["receipt_pace_us"] is None  # read in Python: no ids


@pytest.mark.parametrize("budget", [2000, 0], ids=["budget", "no-budget"])
def test_flood_smoke(budget: int) -> None:
    """bench.flood runs: the calm client's round trips are timed, and the flooders are closed
    for the frame budget exactly when there is one (never asserting on the times)."""
    result = flood.run(flooders=2, kind="ping", seconds=1.5, budget=budget)
    assert result.round_trips and result.rss_peak >= result.rss_before > 0
    assert result.closed == (2 if budget else 0)
