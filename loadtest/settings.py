"""Harness parameters: Locust custom arguments, each also settable from a ``LOADTEST_*`` variable,
and the ``SCENARIO`` variable that picks the user classes.

In distributed runs the master forwards custom arguments to its workers with every spawn message,
so a value given on the master's command line (or in its environment) reaches every worker.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
from dataclasses import dataclass
from typing import Any

SCENARIOS = ("capacity", "fanout", "swarm", "resume", "storm", "all")
RESUME_ON = ("other", "same")
SERVER_STATS = ("auto", "proc", "metrics")

# (option, env var, default, help). Kept as data so docs/loadtest.md and --help cannot drift apart.
OPTIONS: list[tuple[str, str, str, str]] = [
    ("--room-sizes", "LOADTEST_ROOM_SIZES", "1000,100*2,20*10,5*40",
     "swarm rooms as SIZE or SIZE*COUNT, filled in order and reused in rounds"),
    ("--chat-fraction", "LOADTEST_CHAT_FRACTION", "0.1",
     "share of swarm users that chat; the rest only listen"),
    ("--chat-interval", "LOADTEST_CHAT_INTERVAL", "30",
     "mean seconds between two messages of a chatting swarm user (exponential)"),
    ("--session-seconds", "LOADTEST_SESSION_SECONDS", "300",
     "mean seconds a swarm user stays in a room before it leaves (then it switches room or "
     "reconnects)"),
    ("--message-bytes", "LOADTEST_MESSAGE_BYTES", "120", "size of the chat text that users send"),
    ("--fanout-room-size", "LOADTEST_FANOUT_ROOM_SIZE", "100",
     "members of each fan-out room (the first member of each room publishes)"),
    ("--fanout-rate", "LOADTEST_FANOUT_RATE", "2",
     "messages per second that the publisher of each fan-out room sends"),
    ("--capacity-room-size", "LOADTEST_CAPACITY_ROOM_SIZE", "20",
     "members of each room that the idle capacity users join"),
    ("--resume-room-size", "LOADTEST_RESUME_ROOM_SIZE", "20",
     "members of each resume room (its first member chats and stays; the others drop their "
     "connection now and then and resume with `since`)"),
    ("--resume-rate", "LOADTEST_RESUME_RATE", "1",
     "messages per second that the first member of each resume room sends"),
    ("--resume-interval", "LOADTEST_RESUME_INTERVAL", "30",
     "mean seconds a resume user stays connected before its connection drops (exponential)"),
    ("--resume-offline", "LOADTEST_RESUME_OFFLINE", "3",
     "mean seconds a dropped resume user stays away before it resumes (uniform, 0.5x-1.5x)"),
    ("--storm-room-size", "LOADTEST_STORM_ROOM_SIZE", "100",
     "members of each reconnect-storm room (each room also gets one publisher connection of the "
     "Locust process, not a user)"),
    ("--storm-rate", "LOADTEST_STORM_RATE", "10",
     "messages per second that each storm room's publisher sends, throughout the run (a user "
     "away longer than --history-size / rate seconds, outage and reconnect, is 'too old')"),
    ("--storm-lead", "LOADTEST_STORM_LEAD", "2",
     "seconds every storm user stays live after the last one joined, before the first drop"),
    ("--storm-outage", "LOADTEST_STORM_OUTAGE", "2",
     "seconds between the drop (an RST on every storm user's connection) and the reconnect"),
    ("--storm-tail", "LOADTEST_STORM_TAIL", "2",
     "seconds of live chat after the last resume, before the round is checked"),
    ("--storm-rounds", "LOADTEST_STORM_ROUNDS", "1",
     "storms to run, then the run stops (0: one storm after another until --run-time)"),
    ("--storm-pause", "LOADTEST_STORM_PAUSE", "5",
     "seconds live between the end of one storm round and the next drop"),
    ("--storm-timeout", "LOADTEST_STORM_TIMEOUT", "30",
     "seconds the storm waits for all users to join, to reconnect and to resume, at most"),
    ("--storm-hosts", "LOADTEST_STORM_HOSTS", "",
     "the nodes the storm users spread over, 'ws://A,ws://B' (default: --host); room r's "
     "publisher is on node r mod N, user i on node i mod N"),
    ("--storm-resume-on", "LOADTEST_STORM_RESUME_ON", "other",
     "where a storm user reconnects and resumes with several --storm-hosts: 'other' (the next "
     "node) or 'same'"),
    ("--storm-cpu-pids", "LOADTEST_STORM_CPU_PIDS", "",
     "pids (comma-separated) whose on-CPU time is summed over each storm, e.g. the nodes and "
     "redis-server (default: the processes listening on loopback --storm-hosts)"),
    ("--receipt-events", "LOADTEST_RECEIPT_EVENTS", "200",
     "per-receipt latency events fired per second per Locust process at most (a uniform "
     "sample beyond that; exact figures go to the summary)"),
    ("--fanout-timeout", "LOADTEST_FANOUT_TIMEOUT", "10",
     "seconds after which a message that some member has not received counts as lost"),
    ("--connect-timeout", "LOADTEST_CONNECT_TIMEOUT", "10",
     "seconds for TCP connect + WebSocket handshake, and for the join acknowledgement"),
    ("--source-addresses", "LOADTEST_SOURCE_ADDRESSES", "auto",
     "local addresses to connect from: 'auto' (127.0.0.1-127.0.0.16 when the target is "
     "loopback, else the default route), 'none', a list 'A,B,...' or a range 'A-B'"),
    ("--server-pid", "LOADTEST_SERVER_PID", "0",
     "pid of a server on this machine, to sample its RSS and open sockets (0: none)"),
    ("--server-stats", "LOADTEST_SERVER_STATS", "auto",
     "where the master samples the server's RSS, fds and connections: 'proc' (/proc of a local "
     "server), 'metrics' (GET its /metrics) or 'auto' (proc when the server is a local process "
     "found by --server-pid or by its loopback port, else metrics)"),
    ("--metrics-url", "LOADTEST_METRICS_URL", "",
     "URL of the server's /metrics (default: http(s)://HOST:PORT/metrics of the ws(s):// host)"),
    ("--room-prefix", "LOADTEST_ROOM_PREFIX", "lt",
     "prefix of the room names (each Locust process adds its own token)"),
]


def selected_scenario() -> str:
    """The scenario the ``SCENARIO`` variable names (default ``all``)."""
    scenario = os.environ.get("SCENARIO", "all").strip().lower() or "all"
    if scenario not in SCENARIOS:
        raise ValueError(f"SCENARIO must be one of {', '.join(SCENARIOS)}, not {scenario!r}")
    return scenario


def add_arguments(parser: Any) -> None:
    """Registers the options on Locust's (configargparse) parser."""
    group = parser.add_argument_group("roomcast", "roomcast load-test parameters, docs/loadtest.md")
    for flag, env, default, help_text in OPTIONS:
        group.add_argument(flag, type=str, env_var=env, default=default, help=help_text)


@dataclass(frozen=True)
class Settings:
    room_sizes: tuple[int, ...]
    chat_fraction: float
    chat_interval: float
    session_seconds: float
    message_bytes: int
    fanout_room_size: int
    fanout_rate: float
    capacity_room_size: int
    resume_room_size: int
    resume_rate: float
    resume_interval: float
    resume_offline: float
    storm_room_size: int
    storm_rate: float
    storm_lead: float
    storm_outage: float
    storm_tail: float
    storm_rounds: int
    storm_pause: float
    storm_timeout: float
    storm_hosts: tuple[str, ...]
    storm_resume_on: str
    storm_cpu_pids: tuple[int, ...]
    receipt_events: int
    fanout_timeout: float
    connect_timeout: float
    source_addresses: str
    server_pid: int
    server_stats: str
    metrics_url: str
    room_prefix: str

    @classmethod
    def from_options(cls, options: argparse.Namespace | None) -> Settings:
        def get(flag: str) -> str:
            name = flag.lstrip("-").replace("-", "_")
            default = next(d for f, _, d, _ in OPTIONS if f == flag)
            value = getattr(options, name, None) if options is not None else None
            return default if value in (None, "") else str(value)

        settings = cls(
            room_sizes=parse_room_sizes(get("--room-sizes")),
            chat_fraction=float(get("--chat-fraction")),
            chat_interval=float(get("--chat-interval")),
            session_seconds=float(get("--session-seconds")),
            message_bytes=int(get("--message-bytes")),
            fanout_room_size=int(get("--fanout-room-size")),
            fanout_rate=float(get("--fanout-rate")),
            capacity_room_size=int(get("--capacity-room-size")),
            resume_room_size=int(get("--resume-room-size")),
            resume_rate=float(get("--resume-rate")),
            resume_interval=float(get("--resume-interval")),
            resume_offline=float(get("--resume-offline")),
            storm_room_size=int(get("--storm-room-size")),
            storm_rate=float(get("--storm-rate")),
            storm_lead=float(get("--storm-lead")),
            storm_outage=float(get("--storm-outage")),
            storm_tail=float(get("--storm-tail")),
            storm_rounds=int(get("--storm-rounds")),
            storm_pause=float(get("--storm-pause")),
            storm_timeout=float(get("--storm-timeout")),
            storm_hosts=tuple(h.strip() for h in get("--storm-hosts").split(",") if h.strip()),
            storm_resume_on=get("--storm-resume-on").strip().lower(),
            storm_cpu_pids=tuple(int(p) for p in get("--storm-cpu-pids").split(",") if p.strip()),
            receipt_events=int(get("--receipt-events")),
            fanout_timeout=float(get("--fanout-timeout")),
            connect_timeout=float(get("--connect-timeout")),
            source_addresses=get("--source-addresses"),
            server_pid=int(get("--server-pid")),
            server_stats=get("--server-stats").strip().lower(),
            metrics_url=get("--metrics-url").strip(),
            room_prefix=get("--room-prefix"),
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.server_stats not in SERVER_STATS:
            raise ValueError(f"--server-stats must be one of {', '.join(SERVER_STATS)}")
        if self.storm_resume_on not in RESUME_ON:
            raise ValueError(f"--storm-resume-on must be one of {', '.join(RESUME_ON)}")
        if self.storm_rounds < 0:
            raise ValueError("--storm-rounds must be 0 (until the run ends) or more")
        for name in ("storm_lead", "storm_outage", "storm_tail", "storm_pause"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must not be negative")
        if not 0.0 <= self.chat_fraction <= 1.0:
            raise ValueError("--chat-fraction must be between 0 and 1")
        for name in ("chat_interval", "session_seconds", "fanout_rate", "fanout_timeout",
                     "connect_timeout", "resume_rate", "resume_interval", "resume_offline",
                     "storm_rate", "storm_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive")
        for name in ("message_bytes", "fanout_room_size", "capacity_room_size",
                     "resume_room_size", "storm_room_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1")


_ROOM_SIZE = re.compile(r"^\s*(\d+)\s*(?:\*\s*(\d+))?\s*$")


def parse_room_sizes(spec: str) -> tuple[int, ...]:
    """``"1000,50*3,5"`` -> ``(1000, 50, 50, 50, 5)``."""
    sizes: list[int] = []
    for part in spec.split(","):
        match = _ROOM_SIZE.match(part)
        if not match:
            raise ValueError(f"bad room size {part!r} in {spec!r} (want SIZE or SIZE*COUNT)")
        size, count = int(match[1]), int(match[2] or 1)
        if size < 1 or count < 1:
            raise ValueError(f"room sizes and counts must be positive: {part!r}")
        sizes.extend([size] * count)
    return tuple(sizes)


def parse_source_addresses(spec: str, target_host: str) -> list[str]:
    """The local addresses to bind outgoing connections to (empty: let the kernel choose).

    One source address can open about 28,000 connections to one destination address and port (the
    ephemeral port range, 32768-60999 by default). Every address in 127.0.0.0/8 is a loopback
    address on Linux without any configuration, so against a loopback target 'auto' spreads the
    connections over 127.0.0.1-127.0.0.16. Against another host, list addresses that are
    configured on this machine's interfaces.
    """
    spec = spec.strip().lower()
    if spec in ("", "none"):
        return []
    if spec == "auto":
        try:
            loopback = ipaddress.ip_address(target_host).is_loopback
        except ValueError:
            loopback = target_host == "localhost"
        return [f"127.0.0.{i}" for i in range(1, 17)] if loopback else []
    if "-" in spec and "," not in spec:
        first_text, last_text = (s.strip() for s in spec.split("-", 1))
        first, last = ipaddress.ip_address(first_text), ipaddress.ip_address(last_text)
        # mypy rejects comparing IPv4 with IPv6; a mixed range raises TypeError here at run time
        if last < first:  # type: ignore[operator]
            raise ValueError(f"empty address range {spec!r}")
        count = int(last) - int(first) + 1
        return [str(ipaddress.ip_address(int(first) + i)) for i in range(count)]
    return [str(ipaddress.ip_address(part.strip())) for part in spec.split(",") if part.strip()]
