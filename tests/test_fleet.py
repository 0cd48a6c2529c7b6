"""Metrics of a --workers server (server/aggregate.py, server/fleet.py): one scrape of the server
sees every worker, counters never go back, even across a worker's restart, and per-worker
detail keeps a worker label."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from server.aggregate import Merger
from tests.conftest import Launch
from tests.rawws import RawClient
from tests.redis_support import RedisServer
from tests.support import ServerProcess, free_port

WORKER = """# HELP roomcast_deliveries_total messages delivered
# TYPE roomcast_deliveries_total counter
roomcast_deliveries_total {deliveries}
# HELP roomcast_connections open WebSocket connections
# TYPE roomcast_connections gauge
roomcast_connections {connections}
# HELP roomcast_ready 1 when /readyz answers 200
# TYPE roomcast_ready gauge
roomcast_ready {ready}
# HELP process_open_fds Number of open file descriptors.
# TYPE process_open_fds gauge
process_open_fds 17.0
# HELP roomcast_fanout_flush_seconds duration of one tick's fan-out flush
# TYPE roomcast_fanout_flush_seconds histogram
roomcast_fanout_flush_seconds_bucket{{le="0.001"}} {fast}
roomcast_fanout_flush_seconds_bucket{{le="+Inf"}} {flushes}
roomcast_fanout_flush_seconds_count {flushes}
roomcast_fanout_flush_seconds_sum 0.5
roomcast_fanout_flush_seconds_created 1.7e9
"""


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def worker(deliveries: float, connections: float = 3, ready: float = 1) -> str:
    return WORKER.format(deliveries=deliveries, connections=connections, ready=ready, fast=2,
                         flushes=4)


def test_counters_and_histograms_are_summed_gauges_too_but_readiness_is_the_minimum() -> None:
    merged = samples(Merger().merge([(0, 100, worker(10)), (1, 101, worker(5, ready=0))]))
    assert merged[("roomcast_deliveries_total", ())] == 15
    assert merged[("roomcast_connections", ())] == 6
    assert merged[("roomcast_ready", ())] == 0  # one worker is not ready: the server is not
    assert merged[("roomcast_fanout_flush_seconds_bucket", (("le", "0.001"),))] == 4
    assert merged[("roomcast_fanout_flush_seconds_count", ())] == 8
    assert merged[("process_open_fds", (("worker", "0"),))] == 17  # a limit is per process
    assert merged[("roomcast_worker_connections", (("worker", "1"),))] == 3
    assert merged[("roomcast_worker_up", (("worker", "0"),))] == 1
    assert not any(name.endswith("_created") for name, _ in merged)


def test_a_restarted_worker_never_makes_a_counter_go_back() -> None:
    merger = Merger()
    first = samples(merger.merge([(0, 100, worker(10)), (1, 101, worker(5))]))
    later = samples(merger.merge([(0, 100, worker(12)), (1, 202, worker(1))], restarts=1))
    assert first[("roomcast_deliveries_total", ())] == 15
    assert later[("roomcast_deliveries_total", ())] == 12 + 5 + 1  # 5 from the one that died
    assert later[("roomcast_fanout_flush_seconds_count", ())] == 4 + 4 + 4
    assert later[("roomcast_connections", ())] == 6  # a gauge is what is, not what was
    assert later[("roomcast_worker_restarts_total", ())] == 1
    gone = samples(merger.merge([(0, 100, worker(13))], restarts=1))
    assert gone[("roomcast_worker_up", (("worker", "1"),))] == 0


# ---- a real --workers server ------------------------------------------------------------------


async def scrape(host: str, port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return samples(body.decode())


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return [int(p) for p in out.stdout.split()]


@pytest.mark.usefixtures("raw_clients")
async def test_one_scrape_of_the_server_sees_every_worker_and_stays_monotonic(
    launch: Launch, redis_server: RedisServer
) -> None:
    sup = launch("--redis-url", redis_server.url, "--workers", "2", "--node-ttl", "1")
    clients = [await RawClient.connect(sup.host, sup.port) for _ in range(12)]
    first = await scrape(sup.host, sup.port)
    assert first[("roomcast_connections", ())] == 12  # whichever worker answered
    per_worker = {labels: v for (name, labels), v in first.items()
                  if name == "roomcast_worker_connections"}
    assert sorted(dict(k)["worker"] for k in per_worker) == ["0", "1"]
    assert sum(per_worker.values()) == 12
    accepted = [first[("roomcast_connections_accepted_total", ())]]
    for _ in range(5):  # scrapes land on either worker: the total never goes back
        accepted.append((await scrape(sup.host, sup.port))[("roomcast_connections_accepted_total",
                                                          ())])
    assert accepted == sorted(accepted) and accepted[0] >= 12
    for client in clients:
        await client.close()
    victim = children(sup.proc.pid)[0]
    before = (await scrape(sup.host, sup.port))[("roomcast_connections_accepted_total", ())]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while True:
        now = children(sup.proc.pid)
        if len(now) == 2 and victim not in now:
            merged = await scrape(sup.host, sup.port)
            if merged.get(("roomcast_worker_up", (("worker", "0"),))) == 1 and merged.get(
                ("roomcast_worker_up", (("worker", "1"),))
            ) == 1:
                break
        assert time.monotonic() < deadline, sup.text()
        await asyncio.sleep(0.2)
    assert merged[("roomcast_connections_accepted_total", ())] >= before
    assert merged[("roomcast_worker_restarts_total", ())] == 1
    build = [labels for name, labels in merged if name == "roomcast_build_info"]
    assert len(build) == 1 and dict(build[0])["picows"]  # once, not once per worker


async def test_metrics_listen_with_workers_is_the_supervisors(
    launch: Launch, redis_server: RedisServer
) -> None:
    port = free_port()
    sup = launch("--redis-url", redis_server.url, "--workers", "2",
                 "--metrics-listen", f"127.0.0.1:{port}")
    assert f"roomcast metrics on http://127.0.0.1:{port}/metrics" in sup.text()
    merged = await scrape("127.0.0.1", port)
    assert merged[("roomcast_worker_up", (("worker", "1"),))] == 1
    reader, writer = await asyncio.open_connection(sup.host, sup.port)
    writer.write(b"GET /metrics HTTP/1.1\r\n\r\n")
    assert (await asyncio.wait_for(reader.read(), 5)).startswith(b"HTTP/1.1 404")
    writer.close()
    for request, status in ((b"HEAD /healthz HTTP/1.0", b"200"), (b"OPTIONS / HTTP/1.0", b"200")):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)  # the supervisor's
        writer.write(request + b"\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 5)
        assert answer.startswith(b"HTTP/1.1 " + status) and answer.endswith(b"\r\n\r\n"), answer
        writer.close()


async def test_the_servers_readiness_is_every_workers_own(
    launch: Launch, redis_server: RedisServer
) -> None:
    """Before: the supervisor's /readyz said ready whenever the workers ran, while each of them
    answered 503 with Redis down (the address nginx.conf tells health checks to use)."""
    port = free_port()
    launch("--redis-url", redis_server.url, "--workers", "2",
           "--metrics-listen", f"127.0.0.1:{port}")

    async def status() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /readyz HTTP/1.0\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        return answer.split(b" ", 2)[1]

    async def becomes(wanted: bytes) -> None:
        deadline = time.monotonic() + 20
        while (seen := await status()) != wanted:
            assert time.monotonic() < deadline, f"/readyz stayed {seen!r}, not {wanted!r}"
            await asyncio.sleep(0.1)

    await becomes(b"200")
    redis_server.stop()
    await becomes(b"503")
    redis_server.start()
    await becomes(b"200")


def test_version_names_the_build() -> None:
    done = subprocess.run([sys.executable, "-m", "server", "--version"], capture_output=True,
                          text=True, timeout=30, check=False)
    assert done.returncode == 0
    assert done.stdout.startswith("roomcast 0.1.0 (git ") and "picows 2.3.1" in done.stdout


async def test_a_single_server_exports_its_build(server: ServerProcess) -> None:
    merged = await scrape(server.host, server.port)
    [labels] = [labels for name, labels in merged if name == "roomcast_build_info"]
    assert {"version", "revision", "picows", "uvloop", "msgspec"} <= set(dict(labels))
