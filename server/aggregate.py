"""One /metrics for a ``--workers`` server: every worker's exposition merged, monotonic.

The supervisor scrapes each worker's private metrics address and merges the families here (pure:
text in, text out). Counters and histograms are summed over the workers; a worker that restarted
(new pid) would make a sum go back, so what a worker had counted when it was last seen is kept as
``retired`` and added for good: the merged counters never decrease. Gauges are summed, except the
ones where a sum means nothing: readiness and the Redis link (the minimum: the server is ready
when every worker is), and the per-process facts (open and maximum descriptors, the process's
start time), which keep a ``worker`` label: a limit or a start time is per process. The
``_created`` gauges that go with a histogram (a creation time per process) are left out. The
output is the Prometheus text format as one process writes it (a counter's ``# HELP``/``# TYPE``
name carries its ``_total``) and passes ``promtool check metrics``. Per-worker detail that
matters also has its own series: ``roomcast_worker_connections{worker}``,
``roomcast_worker_up{worker}``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable

from prometheus_client.parser import text_string_to_metric_families

SampleKey = tuple[str, tuple[tuple[str, str], ...]]  # (sample name, sorted labels)

_MINIMUM = {"roomcast_ready", "roomcast_broker_up", "roomcast_build_info"}
_PER_WORKER = {"process_open_fds", "process_max_fds", "process_start_time_seconds"}
_MONOTONIC_TYPES = {"counter", "histogram", "summary"}


class Family:
    __slots__ = ("documentation", "name", "samples", "type")

    def __init__(self, name: str, kind: str, documentation: str) -> None:
        self.name = name
        self.type = kind
        self.documentation = documentation
        self.samples: dict[SampleKey, float] = {}


class Merger:
    """Merges scrapes of the workers; keeps what restarted workers had counted."""

    def __init__(self) -> None:
        self._last: dict[int, tuple[int, dict[SampleKey, float]]] = {}  # worker -> (pid, seen)
        self._retired: dict[SampleKey, float] = defaultdict(float)

    def merge(self, scrapes: Iterable[tuple[int, int, str]], restarts: int = 0) -> str:
        """`scrapes`: (worker index, pid, exposition text) of the workers that answered."""
        families: dict[str, Family] = {}
        per_worker: dict[str, list[tuple[str, float]]] = defaultdict(list)
        answered: set[int] = set()
        for worker, pid, text in scrapes:
            answered.add(worker)
            seen: dict[SampleKey, float] = {}
            for parsed in text_string_to_metric_families(text):
                if _is_creation_time(parsed.name, parsed.type, families):
                    continue  # a histogram's creation time: per process, summing means nothing
                family = families.get(parsed.name)
                if family is None:
                    family = families[parsed.name] = Family(
                        parsed.name, parsed.type, parsed.documentation
                    )
                for sample in parsed.samples:
                    if sample.name == parsed.name + "_created":
                        continue  # a creation time (OpenMetrics input): means nothing summed
                    labels = dict(sample.labels)
                    if parsed.name in _PER_WORKER:
                        labels["worker"] = str(worker)
                    key: SampleKey = (sample.name, tuple(sorted(labels.items())))
                    value = float(sample.value)
                    if parsed.type in _MONOTONIC_TYPES:
                        seen[key] = value
                    if sample.name == "roomcast_connections":
                        per_worker["roomcast_worker_connections"].append((str(worker), value))
                    if key in family.samples and parsed.name in _MINIMUM:
                        family.samples[key] = min(family.samples[key], value)
                    else:
                        family.samples[key] = family.samples.get(key, 0.0) + value
            previous = self._last.get(worker)
            if previous is not None and previous[0] != pid:  # restarted: keep what it counted
                for key, value in previous[1].items():
                    self._retired[key] += value
            self._last[worker] = (pid, seen)
        for key, value in self._retired.items():
            name = _family_of(key[0], families)
            if name is not None:
                samples = families[name].samples
                samples[key] = samples.get(key, 0.0) + value
        for worker in self._last:
            per_worker["roomcast_worker_up"].append((str(worker), float(worker in answered)))
        return _render(families, per_worker, restarts)


def _is_creation_time(name: str, kind: str, families: dict[str, Family]) -> bool:
    """The ``<family>_created`` gauge the text format writes after a histogram, a summary or a
    counter that has a creation time (it comes after its family, so that one is known; a bare
    ``_created`` sample after a family's own lines parses as an untyped one)."""
    if kind not in ("gauge", "unknown") or not name.endswith("_created"):
        return False
    base = families.get(name[: -len("_created")])
    return base is not None and base.type in _MONOTONIC_TYPES


def _family_of(sample: str, families: dict[str, Family]) -> str | None:
    for suffix in ("", "_total", "_bucket", "_sum", "_count", "_created"):
        if suffix and sample.endswith(suffix) and sample[: -len(suffix)] in families:
            return sample[: -len(suffix)]
        if not suffix and sample in families:
            return sample
    return None


def _escape(value: str) -> str:
    """A label value: backslash, newline and double quote escaped."""
    return _escape_help(value).replace('"', '\\"')


def _escape_help(value: str) -> str:
    """A # HELP text: backslash and newline escaped (quotes stay as they are)."""
    return value.replace("\\", "\\\\").replace("\n", "\\n")


def _exposed(family: Family) -> tuple[str, str]:
    """The name and type of a family's # HELP and # TYPE lines, as a process writes them: the
    parser names a counter without its ``_total``, which the samples (and the lines) carry."""
    if family.type == "counter":
        return family.name + "_total", "counter"
    if family.type == "unknown":
        return family.name, "untyped"
    return family.name, family.type


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _render(
    families: dict[str, Family], per_worker: dict[str, list[tuple[str, float]]], restarts: int
) -> str:
    lines: list[str] = []
    for family in families.values():
        exposed, kind = _exposed(family)
        lines.append(f"# HELP {exposed} {_escape_help(family.documentation)}")
        lines.append(f"# TYPE {exposed} {kind}")
        for (name, labels), value in family.samples.items():
            text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
            shown = f"{name}{{{text}}}" if text else name
            lines.append(f"{shown} {_number(value)}")
    documentation = {
        "roomcast_worker_connections": "open WebSocket connections of each worker",
        "roomcast_worker_up": "1 while the worker answers the supervisor's scrape",
    }
    for name, samples in per_worker.items():
        lines.append(f"# HELP {name} {documentation[name]}")
        lines.append(f"# TYPE {name} gauge")
        lines.extend(f'{name}{{worker="{worker}"}} {_number(value)}' for worker, value in samples)
    lines.append("# HELP roomcast_worker_restarts_total workers the supervisor restarted")
    lines.append("# TYPE roomcast_worker_restarts_total counter")
    lines.append(f"roomcast_worker_restarts_total {float(restarts)!r}")
    return "\n".join(lines) + "\n"
