"""Command-line options; each can also come from the environment as ROOMCAST_<OPTION>.

Every option has one rule (type, range, choices, a readable file) checked the same way whether
the value came from a flag or from the environment; a bad value is one line naming the option,
the value and what is allowed (``ConfigError``), never a traceback. Options that only make sense
together are checked after that.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
import re
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, NoReturn

from .about import version_line

ENV_PREFIX = "ROOMCAST_"


@dataclass(frozen=True, slots=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 8080
    rate_limit: int = 10
    rate_window: float = 10.0
    join_rate_limit: int = 10
    max_message_bytes: int = 65536
    max_text_length: int = 4000
    max_username_length: int = 32
    max_room_length: int = 64
    max_users_list: int = 500
    max_buffered_bytes: int = 1 << 20
    ping_interval: float = 30.0
    ping_timeout: float = 10.0
    shutdown_timeout: float = 5.0
    # ---- room history (docs/history.md) ----
    history_size: int = 100
    history_ttl: float = 300.0
    history_max_bytes: int = 64 << 20
    history_file: str = ""
    log_level: str = "info"
    log_format: str = "text"
    certfile: str = ""
    keyfile: str = ""
    redis_url: str = ""
    redis_cluster: bool = False
    node_ttl: float = 15.0
    workers: int = 1
    reuse_port: bool = False
    # ---- authentication and admission (docs/security.md) ----
    jwt_secret: str = ""
    jwt_public_key: str = ""
    jwt_algorithms: str = ""
    jwt_audience: str = ""
    jwt_issuer: str = ""
    jwt_leeway: float = 5.0
    token_sweep_interval: float = 1.0
    allowed_origins: str = ""
    trusted_proxies: str = ""
    max_connections: int = 0
    max_connections_per_ip: int = 0
    handshake_rate: int = 0
    handshake_window: float = 10.0
    handshake_timeout: float = 10.0
    metrics_listen: str = ""
    # ---- compliance mode ----
    echo_path: str = ""

    @property
    def auth_enabled(self) -> bool:
        return bool(self.jwt_secret or self.jwt_public_key)


class ConfigError(ValueError):
    """A bad option: which one, the value given, and what is allowed."""

    def __init__(self, option: str, value: object, problem: str, *, source: str = "") -> None:
        self.option = option
        self.value = value
        self.problem = problem
        self.source = source  # "env" when the value came from ROOMCAST_<OPTION>
        super().__init__(self.describe())

    def describe(self) -> str:
        if self.source == "env":
            where = f"{ENV_PREFIX}{self.option.upper()}={self.value!s}"
        else:
            where = f"--{self.option.replace('_', '-')} {self.value!s}"
        return f"{where}: {self.problem}"


@dataclass(frozen=True, slots=True)
class Rule:
    """What an option accepts beyond its type."""

    low: float | None = None  # inclusive
    high: float | None = None  # inclusive
    above: float | None = None  # exclusive lower bound
    choices: tuple[str, ...] = ()
    file: bool = False  # a readable file (when set)


_RULES: dict[str, Rule] = {
    "port": Rule(low=0, high=65535),
    "rate_limit": Rule(low=0),
    "rate_window": Rule(above=0),
    "join_rate_limit": Rule(low=0),
    "max_message_bytes": Rule(low=1),
    "max_text_length": Rule(low=1),
    "max_username_length": Rule(low=1),
    "max_room_length": Rule(low=1),
    "max_users_list": Rule(low=0),
    "max_buffered_bytes": Rule(low=1),
    "ping_interval": Rule(above=0),
    "ping_timeout": Rule(above=0),
    "shutdown_timeout": Rule(low=0),
    "history_size": Rule(low=0, high=100_000),
    "history_ttl": Rule(low=0),
    "history_max_bytes": Rule(low=1),
    "log_level": Rule(choices=("debug", "info", "warning", "error")),
    "log_format": Rule(choices=("text", "json")),
    "certfile": Rule(file=True),
    "keyfile": Rule(file=True),
    "node_ttl": Rule(above=0),
    "workers": Rule(low=1, high=256),
    "jwt_public_key": Rule(file=True),
    "jwt_leeway": Rule(low=0),
    "token_sweep_interval": Rule(above=0),
    "max_connections": Rule(low=0),
    "max_connections_per_ip": Rule(low=0),
    "handshake_rate": Rule(low=0),
    "handshake_window": Rule(above=0),
    "handshake_timeout": Rule(above=0),
}

_HELP: dict[str, str] = {
    "host": "address to listen on",
    "port": "TCP port to listen on (0 picks a free one)",
    "rate_limit": "chat messages allowed per client per --rate-window (0 disables the limit)",
    "rate_window": "length of the rate-limit window in seconds (chats, joins and leaves)",
    "join_rate_limit": "joins and leaves allowed per client per --rate-window, so no client "
    "can flood a room with notices (0 disables the limit; independent of --rate-limit)",
    "max_message_bytes": "largest WebSocket message accepted, fragments included; "
    "larger ones close the connection with 1009",
    "max_text_length": "longest chat text in characters",
    "max_username_length": "longest username in characters",
    "max_room_length": "longest room name in characters",
    "max_users_list": "most member names sent to a joiner (the total is always in `count`)",
    "max_buffered_bytes": "unsent bytes allowed per connection before it is dropped "
    "as a slow consumer (close 4000)",
    "ping_interval": "seconds of silence after which a client is pinged",
    "ping_timeout": "seconds a pinged client has to answer before it is dropped (close 1001)",
    "shutdown_timeout": "seconds to wait for closing handshakes and writes on shutdown",
    "history_size": "chat messages kept per room for `history` and `since` joins and id "
    "deduplication (0: none; messages still get a seq, resumes are never recovered)",
    "history_ttl": "seconds a room's history is kept after its last member left (0: forgotten "
    "at once)",
    "history_max_bytes": "memory all room history may use: past it the rooms nobody is in go "
    "first, least recently active first (their stream is lost), then the oldest messages of "
    "the least recently active rooms",
    "history_file": "file the history is written to on SIGTERM/SIGINT, after the drain, and "
    "read back (then deleted) at start, so a planned restart loses nothing (empty: history "
    "lives and dies with the process)",
    "log_level": "debug, info, warning or error",
    "log_format": "text (human-readable) or json (one object per line)",
    "certfile": "PEM certificate chain: serve wss:// and https:// directly (with --keyfile)",
    "keyfile": "PEM private key for --certfile",
    "redis_url": "redis://host:port/db of the Redis that links several roomcast nodes "
    "(empty: single node, in-process broker)",
    "redis_cluster": "--redis-url points at a Redis Cluster: use sharded Pub/Sub (Redis 7)",
    "node_ttl": "seconds a node's lease lives in Redis; the members of a node that stopped "
    "renewing it are removed (with leave notices) after about this long",
    "workers": "server processes sharing the port (SO_REUSEPORT); more than 1 needs --redis-url",
    "reuse_port": "bind the port with SO_REUSEPORT so other processes can share it",
    "jwt_secret": "HMAC secret: every upgrade then needs a valid JWT (prefer the env variable "
    "to the flag, which shows in ps)",
    "jwt_public_key": "PEM public key file (RSA, EC or Ed25519): every upgrade then needs a "
    "valid JWT",
    "jwt_algorithms": "comma-separated JWT algorithm allowlist ('none' is never allowed; "
    "empty: HS256 with --jwt-secret, RS256,ES256,EdDSA with --jwt-public-key)",
    "jwt_audience": "required `aud` of tokens (empty: not checked)",
    "jwt_issuer": "required `iss` of tokens (empty: not checked)",
    "jwt_leeway": "seconds of clock skew allowed on exp and nbf",
    "token_sweep_interval": "seconds between sweeps that close connections whose token "
    "expired (close 4001)",
    "allowed_origins": "comma-separated Origins allowed to open a WebSocket: exact "
    "(https://chat.example.com), patterns (*.example.com) or *; empty: all when auth is off, "
    "same-origin only when it is on",
    "trusted_proxies": "comma-separated proxy addresses/CIDRs whose X-Forwarded-For is "
    "believed for the client address",
    "max_connections": "open WebSockets allowed in total; past it upgrades get 503 (0: no "
    "limit but the file-descriptor limit)",
    "max_connections_per_ip": "open WebSockets per client address; past it upgrades get 429 "
    "(0: no limit)",
    "handshake_rate": "upgrades allowed per client address per --handshake-window; past it "
    "429 with Retry-After (0: no limit)",
    "handshake_window": "length in seconds of the handshake-rate window",
    "handshake_timeout": "seconds a new connection has to send its HTTP request",
    "metrics_listen": "HOST:PORT to serve /metrics, /readyz and /healthz on, off the public "
    "port (which then answers /metrics with 404); empty: /metrics on the public port",
    "echo_path": "compliance mode: an upgrade to exactly this path (e.g. /echo) gets an echo "
    "connection, handled like chat connections but echoing every message; used to run the "
    "Autobahn TestSuite (empty: off)",
}


def _describe_range(kind: str, rule: Rule) -> str:
    if rule.above is not None:
        return f"must be a number > {rule.above:g}"
    if rule.low is not None and rule.high is not None:
        return f"must be {kind} from {rule.low:g} to {rule.high:g}"
    if rule.low is not None:
        return f"must be {kind} >= {rule.low:g}"
    return f"must be {kind}"


def _convert(name: str, default: object, text: str) -> object:
    """`text` as the option's type, checked against its rule; raises ValueError(what is allowed)."""
    rule = _RULES.get(name, Rule())
    if isinstance(default, bool):
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError("must be true or false")
    if isinstance(default, int | float):
        kind = "an integer" if isinstance(default, int) else "a number"
        try:
            value: float = int(text) if isinstance(default, int) else float(text)
        except ValueError:
            raise ValueError(_describe_range(kind, rule)) from None
        if (
            not math.isfinite(value)
            or (rule.low is not None and value < rule.low)
            or (rule.high is not None and value > rule.high)
            or (rule.above is not None and value <= rule.above)
        ):
            raise ValueError(_describe_range(kind, rule))
        return value
    if rule.choices:
        lowered = text.strip().lower()
        if lowered not in rule.choices:
            raise ValueError(f"must be one of {', '.join(rule.choices)}")
        return lowered
    if rule.file and text:
        if not os.path.isfile(text):
            raise ValueError("no such file")
        if not os.access(text, os.R_OK):
            raise ValueError("file is not readable")
    return text


class _Parser(argparse.ArgumentParser):
    """argparse, but an error is one line, not the whole usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _Version(argparse.Action):
    """--version, computed only when asked (it looks up the git revision)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        print(version_line())  # on stdout, as --version does everywhere
        parser.exit(0)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="roomcast",
        description="roomcast: a WebSocket chat server (rooms, usernames, broadcasting) "
        "wire-compatible with the ws tutorial's protocol. Every option can also be set "
        "with an environment variable ROOMCAST_<OPTION>, e.g. ROOMCAST_PORT=9000.",
    )
    parser.add_argument("--version", action=_Version)
    defaults = Config()
    for f in fields(Config):
        default = getattr(defaults, f.name)
        shown = f" (default: {default!s})" if default != "" else ""
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            default=None,
            metavar=f.name.upper() if not isinstance(default, bool) else "BOOL",
            help=f"{_HELP[f.name]}{shown} (env {ENV_PREFIX}{f.name.upper()})",
        )
    return parser


def load_config(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> Config:
    """The options from flags over the environment over the defaults; raises ConfigError."""
    env = os.environ if env is None else env
    namespace = build_parser().parse_args(argv)
    defaults = Config()
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for f in fields(Config):
        default = getattr(defaults, f.name)
        text: str | None = getattr(namespace, f.name)
        source = "flag"
        if text is None:
            text = env.get(ENV_PREFIX + f.name.upper())
            source = "env"
        if text is None:
            continue
        sources[f.name] = source
        try:
            values[f.name] = _convert(f.name, default, text)
        except ValueError as exc:
            raise ConfigError(f.name, text, str(exc), source=source) from None
    config = Config(**values)
    try:
        _check_together(config)
    except ConfigError as exc:  # name it as the user gave it: a flag or ROOMCAST_<OPTION>
        raise ConfigError(
            exc.option, exc.value, exc.problem, source=sources.get(exc.option, "")
        ) from None
    return config


def _check_together(config: Config) -> None:
    if bool(config.certfile) != bool(config.keyfile):
        missing = "keyfile" if config.certfile else "certfile"
        given = "certfile" if config.certfile else "keyfile"
        raise ConfigError(
            given, getattr(config, given), f"needs --{missing} too (a certificate and its key)"
        )
    if config.workers > 1 and not config.redis_url:
        raise ConfigError(
            "workers",
            config.workers,
            "needs --redis-url: the workers are separate processes and only reach each other's "
            "clients through Redis",
        )
    if config.redis_url and not config.redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(
            "redis_url", config.redis_url, "must start with redis://, rediss:// or unix://"
        )
    if config.jwt_algorithms and not config.auth_enabled:
        raise ConfigError(
            "jwt_algorithms", config.jwt_algorithms, "needs --jwt-secret or --jwt-public-key"
        )
    if config.metrics_listen:
        host, colon, port = config.metrics_listen.rpartition(":")
        if not colon or not host or not port.isdigit() or int(port) > 65535:
            raise ConfigError(
                "metrics_listen", config.metrics_listen, "must be HOST:PORT, e.g. 127.0.0.1:9100"
            )
        _check_listenable("metrics_listen", config.metrics_listen, host.strip("[]"))
    if config.history_file:
        _check_history_file(config)
    if config.echo_path and not config.echo_path.startswith("/"):
        raise ConfigError("echo_path", config.echo_path, "must be a path starting with /")
    if not config.host:
        raise ConfigError("host", "''", "must be an address to listen on")
    _check_listenable("host", config.host, config.host)


_HOST_NAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")


def _check_listenable(option: str, value: str, host: str) -> None:
    """An IP address, or a host name this machine resolves (``localhost``, /etc/hosts). What is
    neither a well-formed name nor an address (999.1.1.1, a slash) is refused without a lookup."""
    problem = "must be an IP address or a host name this machine resolves"
    try:
        ipaddress.ip_address(host)
        return
    except ValueError:
        pass
    if not _HOST_NAME.fullmatch(host) or host.rstrip(".").rsplit(".", 1)[-1].isdigit():
        raise ConfigError(option, value, problem)
    try:
        socket.getaddrinfo(host, None, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError):
        raise ConfigError(option, value, problem) from None


def _check_history_file(config: Config) -> None:
    path = config.history_file
    if config.redis_url:
        raise ConfigError(
            "history_file", path, "is for a single node and cannot be combined with --redis-url"
        )
    if os.path.isdir(path):
        raise ConfigError("history_file", path, "is a directory, not a file")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ConfigError("history_file", path, f"its directory {directory} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ConfigError("history_file", path, f"its directory {directory} is not writable")


def parse_config(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> Config:
    """``load_config``, exiting with status 2 and one line on stderr when an option is bad."""
    try:
        return load_config(argv, env)
    except ConfigError as exc:
        exit_with(exc)


def exit_with(error: ConfigError) -> NoReturn:
    build_parser().error(error.describe())
