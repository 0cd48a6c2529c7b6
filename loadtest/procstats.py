"""Reading a local server's footprint from /proc: RSS, open fds and established connections.

The server has no ``/metrics`` endpoint yet, so the harness samples the process directly when it
runs on the same machine (``--server-pid``, or found from the listening port when the target is a
loopback address). Linux only; every function returns None when the data is unavailable.
"""

from __future__ import annotations

import os
from pathlib import Path

_TCP_ESTABLISHED = "01"
_TCP_LISTEN = "0A"


def rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def open_fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def _tcp_rows(pid: int | None = None) -> list[list[str]]:
    base = f"/proc/{pid}/net" if pid else "/proc/net"
    rows: list[list[str]] = []
    for name in ("tcp", "tcp6"):
        try:
            with open(f"{base}/{name}") as f:
                next(f, None)
                rows.extend(line.split() for line in f)
        except OSError:
            continue
    return rows


def established(port: int, pid: int | None = None) -> int | None:
    """TCP connections in ESTABLISHED state whose local port is ``port`` (the server's side)."""
    suffix = f":{port:04X}"
    rows = _tcp_rows(pid)
    if not rows:
        return None
    return sum(1 for r in rows if len(r) > 3 and r[3] == _TCP_ESTABLISHED and r[1].endswith(suffix))


def listener_pid(port: int) -> int | None:
    """The pid of the process listening on ``port`` (only processes of this user are visible)."""
    suffix = f":{port:04X}"
    inodes = {
        r[9] for r in _tcp_rows() if len(r) > 9 and r[3] == _TCP_LISTEN and r[1].endswith(suffix)
    }
    if not inodes:
        return None
    targets = {f"socket:[{inode}]" for inode in inodes}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            for fd in os.scandir(f"/proc/{entry.name}/fd"):
                if os.readlink(fd.path) in targets:
                    return int(entry.name)
        except OSError:
            continue
    return None
