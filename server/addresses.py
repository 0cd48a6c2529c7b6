"""What the address-valued options must look like: a Redis URL, the ports of allowed origins, a
host to listen on, a URL path. Pure checks (a host name is resolved, nothing else touches the
network): each returns None or the problem, which server/config.py reports as a ConfigError.
"""

from __future__ import annotations

import inspect
import ipaddress
import re
import socket
from typing import Any
from urllib.parse import urlsplit

PATH = re.compile(r"/[\x21-\x22\x24-\x3e\x40-\x7e]*")  # printable ASCII, no space, ? or #


class _Bad(Exception):
    """A problem found deep in a check, returned by the check's public function."""


def redis_url_problem(url: str, *, cluster: bool) -> str | None:
    """The URL as redis-py reads it (server/redis/link.py), with what it lets through refused
    here: a port out of range or 0 (which it silently makes 6379), a database that is not a
    small non-negative integer (/abc is silently 0, /1/2 is 12), no host, unknown parameters
    (which fail every connection attempt, forever)."""
    example = "e.g. redis://127.0.0.1:6379/0 or unix:///run/redis.sock?db=0"
    if not url.startswith(("redis://", "rediss://", "unix://")):
        return f"must start with redis://, rediss:// or unix://, {example}"
    from redis.asyncio import connection  # noqa: PLC0415 (only when Redis is configured)

    try:
        _check_redis_url(url, cluster=cluster, connection=connection, example=example)
    except _Bad as problem:
        return str(problem)
    return None


def _check_redis_url(url: str, *, cluster: bool, connection: Any, example: str) -> None:
    """Raises _Bad with the problem."""
    try:
        parsed = connection.parse_url(url)
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise _Bad(f"{str(exc).rstrip('.')}; {example}") from None
    if url.startswith("unix://"):
        if not parsed.get("path"):
            raise _Bad(f"must name the socket file, {example}")
    else:
        if not parts.hostname:
            raise _Bad(f"must name the Redis host, {example}")
        if port == 0:
            raise _Bad("port must be from 1 to 65535")
        if parts.path not in ("", "/") and not re.fullmatch(r"/[0-9]+", parts.path):
            raise _Bad(
                f"the database (the path) must be a number from 0 to {_REDIS_DBS - 1}, {example}"
            )
    db = parsed.get("db", 0)
    if not 0 <= db < _REDIS_DBS:
        raise _Bad(
            f"the database must be a number from 0 to {_REDIS_DBS - 1} (Redis's default count)"
        )
    if cluster and db != 0:
        raise _Bad("a Redis Cluster has only database 0")
    accepted = set(connection.URL_QUERY_ARGUMENT_PARSERS)
    for cls in parsed.get("connection_class", connection.Connection).__mro__:
        init = vars(cls).get("__init__")
        if init is not None:
            accepted |= set(inspect.signature(init).parameters) - {"self", "args", "kwargs"}
    unknown = sorted(set(parsed) - accepted - {"connection_class"})
    if unknown:
        raise _Bad(f"unknown parameter {unknown[0]!r}")


_REDIS_DBS = 16  # Redis's `databases` default: SELECT of any other fails, retried forever


_HOST_NAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")


def listen_problem(host: str) -> str | None:
    """An IP address, or a host name this machine resolves (``localhost``, /etc/hosts). What is
    neither a well-formed name nor an address (999.1.1.1, a slash) is refused without a lookup."""
    problem = "must be an IP address or a host name this machine resolves"
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    if not _HOST_NAME.fullmatch(host) or host.rstrip(".").rsplit(".", 1)[-1].isdigit():
        return problem
    try:
        socket.getaddrinfo(host, None, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError):
        return problem
    return None
