"""Command-line options; each can also come from the environment as ROOMCAST_<OPTION>.

Every option has one rule (type, range, choices, a readable file) checked the same way whether
the value came from a flag or from the environment; a bad value is one line naming the option,
the value and what is allowed (``ConfigError``), never a traceback. Options that only make sense
together are checked after that.
"""

from __future__ import annotations

import argparse
import difflib
import math
import os
import re
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, NoReturn

from .about import version_line
from .addresses import PATH, listen_problem, redis_url_problem

ENV_PREFIX = "ROOMCAST_"
WORKER_OF = "ROOMCAST_WORKER_OF"  # set by the supervisor for its workers: where its /metrics is


DEFAULT_HISTORY_MAX_BYTES = 64 << 20


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
    max_frames_per_second: int = 2000
    ping_interval: float = 30.0
    ping_timeout: float = 10.0
    shutdown_timeout: float = 5.0
    # ---- room history (docs/history.md) ----
    history_size: int = 100
    history_ttl: float = 300.0
    history_max_bytes: int = DEFAULT_HISTORY_MAX_BYTES
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
        """One line: control characters in the value (``--host $'a\\nb'``) are escaped."""
        if self.source == "env":
            where = f"{ENV_PREFIX}{self.option.upper()}"
            where += "" if self.value is None else f"={self.value!s}"
        else:
            where = f"--{self.option.replace('_', '-')}"
            where += "" if self.value is None else f" {self.value!s}"
        return one_line(f"{where}: {self.problem}")

    def given_as(self, sources: Mapping[str, str]) -> ConfigError:
        """The same error naming the option as the user gave it: a flag or ROOMCAST_<OPTION>."""
        return ConfigError(
            self.option, self.value, self.problem, source=sources.get(self.option, "")
        )


def one_line(text: str) -> str:
    """`text` with every unprintable character (newline, tab, NUL, bidi controls...) escaped
    as Python writes it in a string literal, so that a message stays one readable line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


@dataclass(frozen=True, slots=True)
class Rule:
    """What an option accepts beyond its type."""

    low: float | None = None  # inclusive
    high: float | None = None  # inclusive
    above: float | None = None  # exclusive lower bound
    choices: tuple[str, ...] = ()
    file: bool = False  # a readable file (when set)


# Every number has an upper bound as well as a lower one: past it a value breaks something at
# run time (an OverflowError in picows or the rate limiter, a non-integer TTL sent to Redis, an
# array of 8 bytes per allowed event in every client) or makes no sense for a chat server.
# Durations have a floor too: a timer every microsecond is a busy loop.
_GIB = 1 << 30
_DAY = 86_400.0
_RULES: dict[str, Rule] = {
    "port": Rule(low=0, high=65535),
    "rate_limit": Rule(low=0, high=10_000),  # each client's window is 8 bytes per allowed chat
    "rate_window": Rule(low=0.1, high=_DAY),
    "join_rate_limit": Rule(low=0, high=10_000),
    "max_message_bytes": Rule(low=1, high=_GIB),  # picows's read buffer grows to twice this
    "max_text_length": Rule(low=1, high=_GIB),
    "max_username_length": Rule(low=1, high=1024),
    "max_room_length": Rule(low=1, high=1024),
    "max_users_list": Rule(low=0, high=10_000),
    "max_buffered_bytes": Rule(low=1, high=_GIB),
    "max_frames_per_second": Rule(low=0, high=1_000_000),
    "ping_interval": Rule(low=0.1, high=_DAY),
    "ping_timeout": Rule(low=0.1, high=3600),
    "shutdown_timeout": Rule(low=0, high=3600),
    "history_size": Rule(low=0, high=100_000),
    "history_ttl": Rule(low=0, high=30 * _DAY),
    "history_max_bytes": Rule(low=1, high=64 * _GIB),
    "log_level": Rule(choices=("debug", "info", "warning", "error")),
    "log_format": Rule(choices=("text", "json")),
    "certfile": Rule(file=True),
    "keyfile": Rule(file=True),
    "node_ttl": Rule(low=1, high=_DAY),  # sent to Redis in whole milliseconds
    "workers": Rule(low=1, high=256),
    "jwt_public_key": Rule(file=True),
    "jwt_leeway": Rule(low=0, high=3600),
    "token_sweep_interval": Rule(low=0.1, high=3600),
    "max_connections": Rule(low=0, high=10_000_000),
    "max_connections_per_ip": Rule(low=0, high=10_000_000),
    "handshake_rate": Rule(low=0, high=10_000),
    "handshake_window": Rule(low=0.1, high=_DAY),
    "handshake_timeout": Rule(low=0.1, high=3600),
}

# ROOMCAST_* variables that are not options but are legitimately in a server's environment.
_OTHER_VARIABLES = frozenset({
    WORKER_OF,
    "ROOMCAST_FUZZ_SEED",  # replays a run of tests/test_fuzz.py, whose servers inherit it
})

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
    "max_frames_per_second": "WebSocket frames (data, control and fragments) a client may "
    "send per second, counted in runs of that many: a run shorter than a second closes the "
    "connection with 1008 (0 disables the limit)",
    "ping_interval": "seconds of silence after which a client is pinged",
    "ping_timeout": "seconds a pinged client has to answer before it is dropped (close 1001)",
    "shutdown_timeout": "seconds to wait for closing handshakes and writes on shutdown",
    "history_size": "chat messages kept per room for `history` and `since` joins and id "
    "deduplication (0: none; messages still get a seq, resumes are never recovered)",
    "history_ttl": "seconds a room's history is kept after its last member left (0: forgotten "
    "at once)",
    "history_max_bytes": "memory all room history may use: past it the rooms nobody is in go "
    "first, least recently active first (their stream is lost), then the oldest messages of "
    "the least recently active rooms (one node: refused with --redis-url)",
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
    "jwt_leeway": "seconds of clock skew allowed on exp, nbf and iat",
    "token_sweep_interval": "seconds between sweeps that close connections whose token "
    "expired (close 4001)",
    "allowed_origins": "comma-separated Origins allowed to open a WebSocket: exact "
    "(https://chat.example.com), patterns (*.example.com) or *; empty: all when auth is off, "
    "same-origin only when it is on",
    "trusted_proxies": "comma-separated proxy addresses/CIDRs whose X-Forwarded-For is "
    "believed for the client address",
    "max_connections": "open WebSockets allowed in total; past it upgrades get 503 (0: no "
    "limit but the file-descriptor limit)",
    "max_connections_per_ip": "open WebSockets and unfinished upgrade requests per client "
    "address; past it connections get 429 (0: no limit)",
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
    parts = []
    if rule.above is not None:
        parts.append(f"> {rule.above:g}")
    if rule.low is not None:
        parts.append(f">= {rule.low:g}")
    if rule.high is not None:
        parts.append(f"<= {rule.high:.15g}")
    return f"must be {kind} {' and '.join(parts)}" if parts else f"must be {kind}"


# What int() and float() accept beyond plain numbers (8_0, "٨٠", " 80", "0x50" for neither, but
# underscores and non-ASCII digits for both) is refused: a port of 8_0 is not 80.
_INTEGER = re.compile(r"-?[0-9]+")
_NUMBER = re.compile(r"-?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?")


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
        if not (_INTEGER if isinstance(default, int) else _NUMBER).fullmatch(text):
            raise ValueError(_describe_range(kind, rule))
        value: float = int(text) if isinstance(default, int) else float(text)
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
        problem = _not_a_regular_file(text)
        if problem:
            raise ValueError(problem)
        if not os.access(text, os.R_OK):
            raise ValueError("file is not readable")
    return text


def _not_a_regular_file(path: str) -> str:
    """Why `path` is not an existing regular file ("" when it is one). A FIFO would hang the
    start on open(), a directory fails later with a less helpful error."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "no such file"
    except OSError as exc:
        return exc.strerror or str(exc)
    if stat.S_ISDIR(mode):
        return "is a directory, not a file"
    if not stat.S_ISREG(mode):
        return "is not a regular file (a FIFO, socket or device)"
    return ""


class _Parser(argparse.ArgumentParser):
    """argparse, but an error is one line, not the whole usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


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
    return read_config(argv, env)[0]


def read_config(
    argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
) -> tuple[Config, Mapping[str, str]]:
    """``load_config``, and where each option given came from ("flag" or "env"), so that a
    later check of a value names it as the user gave it (``ConfigError.given_as``)."""
    env = os.environ if env is None else env
    namespace = build_parser().parse_args(argv)
    _check_variables(env)
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
    except ConfigError as exc:
        raise exc.given_as(sources) from None
    return config, sources


def _check_variables(env: Mapping[str, str]) -> None:
    """A ROOMCAST_* variable that is no option is a typo (ROOMCAST_JWT_SECERT would otherwise
    start the server with authentication off): refused, naming the likely intended one. The
    value is not shown: it may be a secret."""
    known = sorted(f.name.upper() for f in fields(Config))
    for name in sorted(env):
        option = name[len(ENV_PREFIX) :]
        if not name.startswith(ENV_PREFIX) or option in known or name in _OTHER_VARIABLES:
            continue
        close = difflib.get_close_matches(option, known, n=1)
        hint = f"; did you mean {ENV_PREFIX}{close[0]}?" if close else ""
        raise ConfigError(option.lower(), None, f"is not a roomcast option{hint}", source="env")


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
    if config.redis_url:
        problem = redis_url_problem(config.redis_url, cluster=config.redis_cluster)
        if problem:
            raise ConfigError("redis_url", config.redis_url, problem)
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
        problem = listen_problem(host.strip("[]"))
        if problem:
            raise ConfigError("metrics_listen", config.metrics_listen, problem)
    if config.history_file:
        _check_history_file(config)
    if config.redis_url and config.history_max_bytes != DEFAULT_HISTORY_MAX_BYTES:
        raise ConfigError(
            "history_max_bytes", str(config.history_max_bytes),
            "caps one node's memory and does nothing with --redis-url, where the history lives "
            "in Redis: bound it with --history-size and --history-ttl, and Redis's maxmemory",
        )
    if config.echo_path and not PATH.fullmatch(config.echo_path):
        raise ConfigError(
            "echo_path",
            config.echo_path,
            "must be a path starting with / of printable ASCII characters, without spaces, "
            "? or #",
        )
    if not config.host:
        raise ConfigError("host", "''", "must be an address to listen on")
    problem = listen_problem(config.host)
    if problem:
        raise ConfigError("host", config.host, problem)


def _check_history_file(config: Config) -> None:
    path = config.history_file
    if config.redis_url:
        raise ConfigError(
            "history_file", path, "is for a single node and cannot be combined with --redis-url"
        )
    if os.path.exists(path):
        problem = _not_a_regular_file(path)
        if problem:  # a FIFO would hang the start reading it back
            raise ConfigError("history_file", path, problem)
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
