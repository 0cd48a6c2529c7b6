"""Binding the addresses roomcast listens on, and the one error that says which option failed.

Shared by the server (its public port and ``--metrics-listen``) and the supervisor (the port its
workers share), so that a busy or unusable address is always reported with the address and the
option that named it, never as a traceback. Imports no picows: the supervisor stays small.
"""

from __future__ import annotations

import os
import socket


class CannotListen(Exception):
    """An address could not be bound: the address, the option that named it, and why."""

    def __init__(self, option: str, host: str, port: int, error: OSError) -> None:
        shown = f"[{host}]" if ":" in host else host
        # asyncio's start_server wraps the errno in its own sentence: say it once, plainly
        reason = os.strerror(error.errno) if error.errno else str(error)
        super().__init__(f"cannot listen on {shown}:{port} (from {option}): {reason}")


def bound_socket(
    host: str, port: int, *, option: str, reuse_port: bool = False, backlog: int | None = 4096
) -> socket.socket:
    """A bound socket, listening with `backlog` (None: bound only, to reserve a SO_REUSEPORT
    port for workers) and non-blocking; CannotListen naming `option` when the address fails."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        if backlog is not None:
            sock.listen(backlog)
            sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise CannotListen(option, host, port, exc) from None
    except BaseException:
        sock.close()
        raise
    return sock


def url_host(host: str) -> str:
    """`host` as it goes in a URL: an IPv6 address in brackets (RFC 3986 3.2.2)."""
    return f"[{host}]" if ":" in host else host
