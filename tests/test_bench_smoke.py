"""Smoke run of the benchmark driver (bench/): tiny scenarios against roomcast and the Node peers.

Asserts that messages are delivered and none are lost; never asserts on timings (benchmarks are
not timed tests). Keeps `make bench` from rotting. Also the uWebSockets.js peer's wire
behaviour, the flush-histogram arithmetic, target verdicts against the best peer, and where
quick runs write.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

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

    def rec(cid: str, scenario: str, **runs: dict[str, object]) -> dict[str, object]:
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
    rows = {t["config"]: t for t in evaluate_targets(records)}
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
    rows = {t["config"]: t for t in evaluate_targets(records)}
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
