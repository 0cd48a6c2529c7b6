"""The merged /metrics of a --workers server (server/aggregate.py) is valid Prometheus text:
`promtool check metrics` passes it without a warning, counters keep the `_total` names a single
process exports, no family is left without samples, and per-process gauges (the start time, the
descriptors) are carried per worker instead of being added up."""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.request

import websocket
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from server.aggregate import Merger
from tests.conftest import Launch
from tests.redis_support import RedisServer
from tests.support import ServerProcess

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def promtool_check(text: str) -> subprocess.CompletedProcess[str]:
    """`promtool check metrics` on `text`; a clear failure (never a skip) when it is missing."""
    path = shutil.which("promtool")
    if path is None:
        raise RuntimeError(
            "promtool not found: install the Debian package prometheus "
            "(scripts/ensure-system-packages.sh does)"
        )
    return subprocess.run([path, "check", "metrics"], input=text, capture_output=True, text=True,
                          timeout=60, check=False)


def assert_promtool_clean(text: str) -> None:
    done = promtool_check(text)
    assert (done.returncode, done.stdout + done.stderr) == (0, ""), text


def samples(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def headers(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(("# HELP ", "# TYPE "))]


def families_without_samples(text: str) -> list[str]:
    declared = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
    names = {name for name, _ in samples(text)}
    suffixes = ("", "_total", "_bucket", "_count", "_sum")
    return [family for family in declared if not any(family + s in names for s in suffixes)]


def exposition(deliveries: int, connections: int, start: float) -> str:
    """What one worker writes (prometheus_client's own text format): a counter, a histogram with
    its `_created` gauge, plain gauges and a process start time."""
    registry = CollectorRegistry(auto_describe=False)
    Counter("roomcast_deliveries", "messages delivered", registry=registry).inc(deliveries)
    flush = Histogram("roomcast_fanout_flush_seconds", "a flush", buckets=(0.001, 0.01),
                      registry=registry)
    flush.observe(0.0005)
    flush.observe(0.005)
    Gauge("roomcast_connections", "open WebSocket connections",
          registry=registry).set(connections)
    Gauge("process_start_time_seconds", "Start time of the process since unix epoch in seconds.",
          registry=registry).set(start)
    return generate_latest(registry).decode()


def test_the_merge_of_prometheus_client_output_passes_promtool() -> None:
    one = exposition(10, 3, 1_700_000_000.5)
    two = exposition(5, 4, 1_700_000_100.25)
    assert_promtool_clean(one)  # the input is clean; so must the merge be
    merged = Merger().merge([(0, 100, one), (1, 101, two)])
    assert_promtool_clean(merged)
    assert "# TYPE roomcast_deliveries_total counter" in merged.splitlines()
    assert "# HELP roomcast_deliveries_total messages delivered" in merged.splitlines()
    assert families_without_samples(merged) == []
    assert "_created" not in merged
    values = samples(merged)
    assert values[("roomcast_deliveries_total", ())] == 15
    assert values[("roomcast_fanout_flush_seconds_count", ())] == 4
    assert values[("roomcast_connections", ())] == 7
    assert values[("process_start_time_seconds", (("worker", "0"),))] == 1_700_000_000.5
    assert values[("process_start_time_seconds", (("worker", "1"),))] == 1_700_000_100.25
    assert ("process_start_time_seconds", ()) not in values


def test_help_text_is_escaped_as_the_text_format_wants() -> None:
    text = (
        '# HELP roomcast_odd a "quoted" back\\\\slash\n# TYPE roomcast_odd gauge\n'
        'roomcast_odd{path="a\\"b"} 1.0\n'
    )
    merged = Merger().merge([(0, 1, text), (1, 2, text)])
    assert '# HELP roomcast_odd a "quoted" back\\\\slash' in merged.splitlines()
    assert samples(merged)[("roomcast_odd", (("path", 'a"b'),))] == 2
    assert_promtool_clean(merged)


# ---- a real --workers server ------------------------------------------------------------------


def scrape(server: ServerProcess) -> str:
    with urllib.request.urlopen(f"{server.http_url}/metrics", timeout=10) as response:
        body: bytes = response.read()
        return body.decode()


def chat(server: ServerProcess, clients: int = 3) -> None:
    """A few clients join one room and each says something: counters and histograms move."""
    sockets = [websocket.create_connection(server.ws_url, timeout=5) for _ in range(clients)]
    try:
        for i, ws in enumerate(sockets):
            ws.send(f'{{"type": "join", "username": "u{i}", "room": "promtool"}}')
            ws.recv()
        for i, ws in enumerate(sockets):
            ws.send(f'{{"type": "chat", "text": "hello {i}"}}')
        time.sleep(0.5)
    finally:
        for ws in sockets:
            ws.close()


def merged_with_every_worker(server: ServerProcess) -> str:
    deadline = time.monotonic() + 20
    while True:
        text = scrape(server)
        values = samples(text)
        if all(values.get(("roomcast_worker_up", (("worker", w),))) == 1 for w in ("0", "1")):
            return text
        assert time.monotonic() < deadline, server.text()
        time.sleep(0.2)


def test_the_merged_metrics_of_a_real_workers_server_pass_promtool(
    launch: Launch, redis_server: RedisServer
) -> None:
    single = launch("--redis-url", redis_server.url, "--rate-limit", "0")
    sup = launch("--redis-url", redis_server.url, "--workers", "2", "--rate-limit", "0")
    chat(single)
    chat(sup)
    one = scrape(single)
    assert_promtool_clean(one)
    merged = merged_with_every_worker(sup)
    assert_promtool_clean(merged)
    # a labelled family with nothing counted yet (no refusals) is empty in one process too
    assert set(families_without_samples(merged)) <= set(families_without_samples(one))
    # every family a single process declares is declared by the merge under the same name,
    # with the same help (the histograms' per-process `_created` gauges aside)
    expected = [line for line in headers(one) if "_created" not in line]
    assert sorted(set(expected) - set(headers(merged))) == []
    assert "# TYPE roomcast_deliveries_total counter" in merged.splitlines()
    values = samples(merged)
    assert values[("roomcast_chat_messages_total", ())] == 3
    starts = [values[("process_start_time_seconds", (("worker", w),))] for w in ("0", "1")]
    assert all(time.time() - 300 < start <= time.time() for start in starts), starts
    assert ("process_start_time_seconds", ()) not in values
