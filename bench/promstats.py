"""The server-side figure the driver cannot blur: roomcast's fan-out delay histogram.

roomcast times each room flush, from the first message of the tick being queued (on its arrival)
to the write to the room's last member, into a Prometheus histogram labelled by room size; a
bench configuration has one room size, so its series are summed. The bench scrapes ``/metrics``
before and after a measured window, subtracts the bucket counts and interpolates quantiles inside
the buckets the way Prometheus's ``histogram_quantile`` does, so the figure covers exactly the
flushes of that window.
"""

from __future__ import annotations

import math
import urllib.request
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

# The histogram's name, in one place (server/metrics.py defines it).
FLUSH_METRIC = "roomcast_fanout_delay_seconds"


@dataclass(frozen=True)
class Histogram:
    """Cumulative bucket counts by upper bound (the last bound is +Inf), sum and count."""

    buckets: tuple[tuple[float, float], ...]
    sum: float
    count: float

    def __sub__(self, earlier: Histogram) -> Histogram:
        before = dict(earlier.buckets)
        return Histogram(
            tuple((le, n - before.get(le, 0.0)) for le, n in self.buckets),
            self.sum - earlier.sum,
            self.count - earlier.count,
        )

    def quantile(self, q: float) -> float | None:
        """The q-quantile (0..1), linear inside its bucket; the first bucket starts at 0 and
        a quantile in the +Inf bucket is the highest finite bound. None without observations."""
        if not self.buckets or self.count <= 0:
            return None
        rank = q * self.buckets[-1][1]
        lower_bound, lower_count = 0.0, 0.0
        for le, cumulative in self.buckets:
            if cumulative >= rank:
                if math.isinf(le):
                    return lower_bound
                in_bucket = cumulative - lower_count
                if in_bucket <= 0:
                    return le
                return lower_bound + (le - lower_bound) * (rank - lower_count) / in_bucket
            lower_bound, lower_count = le, cumulative
        return lower_bound

    def mean(self) -> float | None:
        return self.sum / self.count if self.count > 0 else None


def parse_histogram(text: str, name: str) -> Histogram | None:
    """The histogram ``name`` from Prometheus text, its labelled series summed (None when the
    exposition has none)."""
    for family in text_string_to_metric_families(text):
        if family.name != name or family.type != "histogram":
            continue
        buckets: dict[float, float] = {}
        total_sum = total_count = 0.0
        for sample in family.samples:
            if sample.name == name + "_bucket":
                le = float(sample.labels["le"])
                buckets[le] = buckets.get(le, 0.0) + float(sample.value)
            elif sample.name == name + "_sum":
                total_sum += float(sample.value)
            elif sample.name == name + "_count":
                total_count += float(sample.value)
        return Histogram(tuple(sorted(buckets.items())), total_sum, total_count)
    return None


# no proxy from the environment: the scrape goes straight to the loopback server
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def scrape(url: str, timeout: float = 5.0) -> str:
    with _OPENER.open(url, timeout=timeout) as resp:
        body: bytes = resp.read()
    return body.decode()


def flush_histogram(url: str, timeout: float = 5.0) -> Histogram | None:
    return parse_histogram(scrape(url, timeout), FLUSH_METRIC)


def window_figures(before: Histogram | None, after: Histogram | None) -> dict[str, float | None]:
    """p50/p99/mean (µs) and the number of room flushes between two scrapes."""
    if before is None or after is None:
        return {}
    window = after - before
    p50, p99, mean = window.quantile(0.5), window.quantile(0.99), window.mean()
    return {
        "flush_count": window.count,
        "flush_p50_us": None if p50 is None else p50 * 1e6,
        "flush_p99_us": None if p99 is None else p99 * 1e6,
        "flush_mean_us": None if mean is None else mean * 1e6,
        "flush_over_top_bucket": window.count - next(
            (n for le, n in reversed(window.buckets) if not math.isinf(le)), window.count),
    }
