"""Smoke run of the benchmark driver (bench/): tiny scenarios against roomcast and the Node peer.

Asserts that messages are delivered and none are lost; never asserts on timings (benchmarks are
not timed tests). Keeps `make bench` from rotting.
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
NODE_READY = (ROOT / "bench" / "peers" / "node_ws" / "node_modules" / "ws").is_dir() and bool(
    shutil.which("node")
)

SERVERS = [
    "roomcast",
    pytest.param(
        "node_ws",
        marks=pytest.mark.skipif(not NODE_READY, reason="run `make node-deps` for the Node peer"),
    ),
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
