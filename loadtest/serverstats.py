"""Sampling the server under test: from /proc when it runs here, else from its ``/metrics``.

``--server-stats`` picks the source:

* ``proc``: the process's VmRSS, open fds and CPU time, and the established TCP connections on the
  server port, read from ``/proc`` (``loadtest/procstats.py``). Needs the pid: ``--server-pid``, or
  the process listening on the target port when the target is a loopback address.
* ``metrics``: a plain HTTP GET of ``http(s)://HOST:PORT/metrics`` (the WebSocket URL's host and
  port, or ``--metrics-url``), reading ``process_resident_memory_bytes``, ``process_open_fds``,
  ``process_cpu_seconds_total``, ``roomcast_connections`` (open WebSocket connections),
  ``roomcast_members`` and ``roomcast_rooms``. Works for a server on any machine.
* ``auto`` (default): ``proc`` when the pid is given or found, else ``metrics``.

Only the master (or the single local process) samples, every 2 s. Under Locust, gevent has
monkey-patched the socket module, so the blocking urllib call only blocks its own greenlet.
Every figure is None when it is unavailable.
"""

from __future__ import annotations

import logging
import math
import socket
import ssl
import urllib.error
import urllib.request
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

from loadtest import procstats
from loadtest.settings import SERVER_STATS

log = logging.getLogger("roomcast.loadtest")

MODES = SERVER_STATS
# the timeline's server columns, in order; every sampler returns exactly these keys
KEYS = (
    "server_rss_kb", "server_fds", "server_connections", "server_cpu_s", "server_members",
    "server_rooms",
)
# exposition metric name -> (timeline key, scale to the timeline's unit)
METRICS: dict[str, tuple[str, float]] = {
    "process_resident_memory_bytes": ("server_rss_kb", 1 / 1024),
    "process_open_fds": ("server_fds", 1.0),
    "roomcast_connections": ("server_connections", 1.0),
    "process_cpu_seconds_total": ("server_cpu_s", 1.0),
    "roomcast_members": ("server_members", 1.0),
    "roomcast_rooms": ("server_rooms", 1.0),
}
SCRAPE_TIMEOUT = 1.5


def empty() -> dict[str, Any]:
    return dict.fromkeys(KEYS)


def parse_exposition(text: str, names: set[str] | frozenset[str]) -> dict[str, float]:
    """The values of ``names`` in a Prometheus text exposition; other lines are skipped unparsed.

    A metric with several label sets is summed over them; a sample line may end with a timestamp.
    """
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        brace = line.find("{")
        if brace != -1:
            name = line[:brace].strip()
            if name not in names:
                continue
            rest = line[line.rfind("}") + 1:].split()
        else:
            parts = line.split()
            if not parts or parts[0] not in names:
                continue
            name, rest = parts[0], parts[1:]
        try:
            value = float(rest[0])
        except (IndexError, ValueError):
            continue
        if math.isfinite(value):
            values[name] = values.get(name, 0.0) + value
    return values


def metrics_url(ws_url: str) -> str:
    """``ws://h:p/any/path`` -> ``http://h:p/metrics``; ``wss://`` -> ``https://``."""
    parts = urlsplit(ws_url)
    if parts.scheme not in ("ws", "wss"):
        raise ValueError(f"host must be a ws:// or wss:// URL, not {ws_url!r}")
    netloc = parts.netloc.rpartition("@")[2]  # never send userinfo to the metrics endpoint
    if not netloc:
        raise ValueError(f"no host in {ws_url!r}")
    scheme = "https" if parts.scheme == "wss" else "http"
    return urlunsplit((scheme, netloc, "/metrics", "", ""))


def stats_from_metrics(text: str) -> dict[str, Any]:
    """The timeline's server columns from an exposition text."""
    values = parse_exposition(text, frozenset(METRICS))
    row = empty()
    for name, (key, scale) in METRICS.items():
        if name in values:
            scaled = values[name] * scale
            row[key] = round(scaled, 2) if key == "server_cpu_s" else round(scaled)
    return row


class NoSampler:
    source: str | None = None
    pid: int | None = None
    url: str | None = None

    def sample(self) -> dict[str, Any]:
        return empty()


class ProcSampler(NoSampler):
    source = "proc"
    pid: int  # set by __init__ (NoSampler's stays None)

    def __init__(self, pid: int, port: int | None) -> None:
        self.pid = pid
        self.port = port

    def sample(self) -> dict[str, Any]:
        row = empty()
        row["server_rss_kb"] = procstats.rss_kb(self.pid)
        row["server_fds"] = procstats.open_fds(self.pid)
        row["server_cpu_s"] = procstats.cpu_seconds(self.pid)
        if self.port:
            row["server_connections"] = procstats.established(self.port, self.pid)
        return row


class MetricsSampler(NoSampler):
    source = "metrics"
    url: str  # set by __init__ (NoSampler's stays None)

    def __init__(self, url: str, timeout: float = SCRAPE_TIMEOUT) -> None:
        self.url = url
        self.timeout = timeout
        self.failures = 0
        self._last_error: str | None = None

    def fetch(self) -> str:
        request = urllib.request.Request(self.url, headers={"Accept": "text/plain"})
        context = ssl.create_default_context() if self.url.startswith("https:") else None
        with urllib.request.urlopen(request, timeout=self.timeout, context=context) as response:
            body: bytes = response.read(4 * 1024 * 1024)  # urlopen's return is typed Any
            return body.decode("utf-8", "replace")

    def sample(self) -> dict[str, Any]:
        try:
            text = self.fetch()
        except (OSError, ValueError, urllib.error.URLError) as exc:
            self.failures += 1
            error = f"{type(exc).__name__}: {exc}"
            if error != self._last_error:  # once per distinct cause, not every 2 s
                log.warning("roomcast: cannot scrape %s: %s", self.url, error)
            self._last_error = error
            return empty()
        self._last_error = None
        return stats_from_metrics(text)


def choose(mode: str, host: str, pid: int | None, url: str = "") -> NoSampler:
    """The sampler for ``--server-stats mode`` against the WebSocket URL ``host``.

    ``pid`` is the server's pid when known; for ``proc`` and ``auto`` without one, the process
    listening on the target port is looked up when the target is a loopback address.
    """
    if mode not in MODES:
        raise ValueError(f"--server-stats must be one of {', '.join(MODES)}, not {mode!r}")
    port: int | None = None
    if mode != "metrics":
        try:
            parts = urlsplit(host)
            port = parts.port or (443 if parts.scheme == "wss" else 80)
            if pid is None:
                infos = socket.getaddrinfo(
                    parts.hostname or "127.0.0.1", port, socket.AF_INET, socket.SOCK_STREAM
                )
                address = cast(str, infos[0][4][0])  # AF_INET: sockaddr is (host, port)
                if address.startswith("127."):
                    pid = procstats.listener_pid(port)
        except (ValueError, OSError):
            pass
        if pid is not None:
            return ProcSampler(pid, port)
        if mode == "proc":
            return NoSampler()
    try:
        return MetricsSampler(url or metrics_url(host))
    except ValueError:
        return NoSampler()
