"""Command-line options; each can also come from the environment as ROOMCAST_<OPTION>."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

ENV_PREFIX = "ROOMCAST_"


@dataclass(frozen=True, slots=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 8080
    rate_limit: int = 10
    rate_window: float = 10.0
    max_message_bytes: int = 65536
    max_text_length: int = 4000
    max_username_length: int = 32
    max_room_length: int = 64
    max_users_list: int = 500
    max_buffered_bytes: int = 1 << 20
    ping_interval: float = 30.0
    ping_timeout: float = 10.0
    shutdown_timeout: float = 5.0
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

    @property
    def auth_enabled(self) -> bool:
        return bool(self.jwt_secret or self.jwt_public_key)


_HELP: dict[str, str] = {
    "host": "address to listen on",
    "port": "TCP port to listen on (0 picks a free one)",
    "rate_limit": "chat messages allowed per client per --rate-window (0 disables the limit)",
    "rate_window": "length of the rate-limit window in seconds",
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
}

_LOG_LEVELS = ("debug", "info", "warning", "error")


def _positive_or_zero(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if value < 0:
            raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


def build_parser(env: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(
        prog="roomcast",
        description="roomcast: a WebSocket chat server (rooms, usernames, broadcasting) "
        "wire-compatible with the ws tutorial's protocol. Every option can also be set "
        "with an environment variable ROOMCAST_<OPTION>, e.g. ROOMCAST_PORT=9000.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    defaults = Config()
    for f in fields(Config):
        flag = "--" + f.name.replace("_", "-")
        env_name = ENV_PREFIX + f.name.upper()
        default = getattr(defaults, f.name)
        kind: Callable[[str], Any]
        if isinstance(default, bool):
            kind = _parse_bool
        elif isinstance(default, int):
            kind = _positive_or_zero(int)
        elif isinstance(default, float):
            kind = _positive_or_zero(float)
        else:
            kind = str
        if env_name in env:
            try:
                default = kind(env[env_name])
            except (ValueError, argparse.ArgumentTypeError) as exc:
                parser.error(f"{env_name}={env[env_name]!r}: {exc}")
        extra: dict[str, Any] = {}
        if f.name == "log_level":
            extra["choices"] = _LOG_LEVELS
            default = str(default).lower()
        elif f.name == "log_format":
            extra["choices"] = ("text", "json")
        parser.add_argument(
            flag,
            dest=f.name,
            type=kind,
            default=default,
            help=f"{_HELP[f.name]} (env {env_name})",
            **extra,
        )
    return parser


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {text!r}")


def parse_config(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> Config:
    parser = build_parser(env)
    namespace = parser.parse_args(argv)
    config = Config(**vars(namespace))
    if config.ping_interval <= 0 or config.ping_timeout <= 0:
        parser.error("--ping-interval and --ping-timeout must be > 0")
    if config.rate_limit and config.rate_window <= 0:
        parser.error("--rate-window must be > 0 when --rate-limit is set")
    if bool(config.certfile) != bool(config.keyfile):
        parser.error("--certfile and --keyfile go together")
    if config.workers < 1:
        parser.error("--workers must be >= 1")
    if config.workers > 1 and not config.redis_url:
        parser.error(
            f"--workers {config.workers} needs --redis-url: the workers are separate processes "
            "and only reach each other's clients through Redis"
        )
    if config.redis_url and config.node_ttl <= 0:
        parser.error("--node-ttl must be > 0")
    _check_security_options(parser, config)
    for name in ("max_message_bytes", "max_text_length", "max_username_length", "max_room_length"):
        if getattr(config, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    return config


def _check_security_options(parser: argparse.ArgumentParser, config: Config) -> None:
    # Imported here: auth imports core, which imports this module.
    from .admission import OriginPolicy, parse_networks  # noqa: PLC0415
    from .auth import check_public_key, parse_algorithms  # noqa: PLC0415

    try:
        parse_algorithms(
            config.jwt_algorithms,
            has_secret=bool(config.jwt_secret),
            has_public_key=bool(config.jwt_public_key),
        )
        parse_networks(config.trusted_proxies)
        OriginPolicy.from_option(config.allowed_origins, allow_all=True)
        if config.jwt_public_key:
            with open(config.jwt_public_key, encoding="utf-8") as file:
                check_public_key(file.read())
    except (OSError, ValueError) as exc:
        parser.error(f"{exc}")
    if config.jwt_algorithms and not config.auth_enabled:
        parser.error("--jwt-algorithms needs --jwt-secret or --jwt-public-key")
    if config.token_sweep_interval <= 0 or config.handshake_timeout <= 0:
        parser.error("--token-sweep-interval and --handshake-timeout must be > 0")
    if config.handshake_rate and config.handshake_window <= 0:
        parser.error("--handshake-window must be > 0 when --handshake-rate is set")
