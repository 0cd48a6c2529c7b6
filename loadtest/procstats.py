"""Reading a local server's footprint from /proc: RSS, open fds, CPU time, established connections.

The harness samples the process directly when it runs on the same machine (``--server-pid``, or
found from the listening port when the target is a loopback address); otherwise it scrapes the
server's ``/metrics`` (``loadtest/serverstats.py``). Linux only; every function returns None when
the data is unavailable.
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
    """TCP connections in ESTABLISHED state on the server's side of ``port``.

    Only the addresses the port's listening sockets are bound to count: other processes' client
    sockets may use the same port number on another address (e.g. ``127.0.0.11:PORT``).
    """
    suffix = f":{port:04X}"
    rows = [r for r in _tcp_rows(pid) if len(r) > 3 and r[1].endswith(suffix)]
    if not rows:
        return None
    listening = {r[1] for r in rows if r[3] == _TCP_LISTEN}
    if not listening or any(set(local[: -len(suffix)]) == {"0"} for local in listening):
        return sum(1 for r in rows if r[3] == _TCP_ESTABLISHED)  # wildcard (or no) listener
    return sum(1 for r in rows if r[3] == _TCP_ESTABLISHED and r[1] in listening)


def listener_pid(port: int) -> int | None:
    """The pid of the process listening on ``port`` (only processes of this user are visible)."""
    suffix = f":{port:04X}"
    inodes = {
        r[9] for r in _tcp_rows() if len(r) > 9 and r[3] == _TCP_LISTEN and r[1].endswith(suffix)
    }
    if not inodes:
        return None
    targets = {f"socket:[{inode}]" for inode in inodes}
    with os.scandir("/proc") as entries:
        for entry in entries:
            if not entry.name.isdigit():
                continue
            try:
                with os.scandir(f"/proc/{entry.name}/fd") as fds:
                    for fd in fds:
                        if os.readlink(fd.path) in targets:
                            return int(entry.name)
            except OSError:
                continue
    return None


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time of ``pid`` so far (``/proc/<pid>/stat`` fields 14 and 15)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        fields = text[text.rindex(")") + 2:].split()  # fields from the 3rd (state) on
        ticks = int(fields[11]) + int(fields[12])
        return round(ticks / os.sysconf("SC_CLK_TCK"), 2)
    except (OSError, ValueError, IndexError):
        return None


def oncpu_seconds(pid: int) -> float | None:
    """On-CPU time of all of ``pid``'s threads so far, in nanosecond resolution (the first field
    of ``/proc/<pid>/task/<tid>/schedstat``): a reconnect storm takes tenths of a second, which
    ``cpu_seconds``'s 10 ms ticks would round to a few ticks."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tasks:
        try:
            total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # a thread that just ended
    return total / 1e9
