"""server/metrics.py without a server: the hot-path histograms and what a scrape makes of them."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from server.metrics import Buckets, Metrics, Timings
from server.state import Counters, RefusalReason, ServerState

FLUSH = "roomcast_fanout_flush_seconds"
DELAY = "roomcast_fanout_delay_seconds"


def family_lines(text: str, name: str) -> list[str]:
    """The lines of one family in the text format, `_created` values blanked (a clock)."""
    out = []
    for line in text.splitlines():
        bare = line.removeprefix("# HELP ").removeprefix("# TYPE ")
        if not bare.startswith(name):
            continue
        created_value = bare.startswith(f"{name}_created") and not line.startswith("#")
        out.append(line.rsplit(" ", 1)[0] if created_value else line)
    return out


def metrics() -> Metrics:
    return Metrics(ServerState(Counters(), [], {}, set()), Timings())


def test_a_value_on_a_bound_counts_in_that_bound_and_past_the_last_in_inf() -> None:
    buckets = Buckets((0.1, 1.0))
    for value in (0.0, 0.1, 0.5, 1.0, 7.0):
        buckets.observe(value)
    assert buckets.counts == [2, 2, 1]  # le=0.1: 0.0 and 0.1; le=1: 0.5 and 1.0; +Inf: 7.0
    assert buckets.sum == pytest.approx(8.6)


def test_a_scrape_writes_what_prometheus_clients_own_histogram_writes() -> None:
    values = (0.0, 0.00005, 0.00007, 0.0003, 0.004, 0.2, 3.0)
    ours = metrics()
    for value in values:
        ours.timings.flush.observe(value)
    registry = CollectorRegistry()
    theirs = Histogram(FLUSH, "duration of one tick's fan-out flush over all rooms with queued "
                       "messages", buckets=ours.timings.flush.bounds, registry=registry)
    for value in values:
        theirs.observe(value)
    expected = family_lines(generate_latest(registry).decode(), FLUSH)
    assert len(expected) == 2 + 11 + 2 + 3  # help, type, buckets, count, sum, created family
    assert family_lines(ours.render().decode(), FLUSH) == expected


def test_a_flush_delay_is_counted_by_the_size_of_its_room() -> None:
    ours = metrics()
    for recipients in (1, 10, 11, 100, 101, 1000, 1001, 250_000):
        ours.timings.delayed(recipients, 0.001)
    text = ours.render().decode()
    for size, count in (("1-10", 2), ("11-100", 2), ("101-1000", 2), ("1001+", 2)):
        assert f'{DELAY}_count{{room_size="{size}"}} {count:.1f}' in text
        assert f'{DELAY}_bucket{{le="0.001",room_size="{size}"}} {count:.1f}' in text
        assert f'{DELAY}_bucket{{le="0.0005",room_size="{size}"}} 0.0' in text


def test_every_refusal_reason_is_exported_at_zero_before_its_first_refusal() -> None:
    # a series that first appears at 1 never rises for increase(): the alert on it would miss
    # the first refusal of its kind
    counters = Counters()
    ours = Metrics(ServerState(counters, [], {}, set()), Timings())
    text = ours.render().decode()
    for reason in RefusalReason:
        assert f'roomcast_handshakes_refused_total{{reason="{reason}"}} 0.0' in text
    counters.refused[RefusalReason.PER_IP] += 1
    assert 'roomcast_handshakes_refused_total{reason="per_ip"} 1.0' in ours.render().decode()
