"""Where one idle joined connection's bytes go: ``python -m bench.connection_memory [N]``.

Runs a real roomcast server in this process (uvloop, the real accept loop, HTTP front, picows,
the compiled fan-out) with tracemalloc on, opens N connections from a child process (real
sockets on loopback, each joins a room of 10), and compares a tracemalloc snapshot before and
after, grouped by the line of roomcast's code that was running when the memory was allocated:
picows and uvloop are C extensions, so their allocations are charged to the roomcast line that
called into them (``front.py`` handing a socket to picows builds picows's protocol, transport and
read buffer, ...). It also reports the process's RSS slope, which counts what tracemalloc cannot
see (memory allocated outside Python's allocators, allocator overhead). docs/performance.md
quotes a run of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import sys
import time
import tracemalloc
from collections import defaultdict
from multiprocessing import Process

import uvloop

from bench.rawclient import client_frame, connect
from server.app import build, listen
from server.settings import load

CLIENTS_PER_ADDRESS = 2000


def rss() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _clients(port: int, count: int, ready: str) -> None:  # pragma: no cover - child process
    """Opens `count` WebSocket connections, each joined, then waits to be killed."""
    sockets = []
    for index in range(count):
        source = f"127.0.0.{2 + index // CLIENTS_PER_ADDRESS}"
        sock = connect(port, source, timeout=None)
        join = json.dumps({"type": "join", "room": f"r{index // 10}", "username": f"u{index}"})
        sock.sendall(client_frame(0x1, join.encode()))
        sockets.append(sock)
    with open(ready, "w") as done:
        done.write("ok")
    time.sleep(3600)


async def measure(count: int) -> None:
    settings = load([
        "--host", "127.0.0.1", "--port", "0",
        "--rate-limit", "0", "--ping-interval", "600", "--log-level", "warning",
    ])
    loop = asyncio.get_running_loop()
    app = build(settings, loop)
    acceptor = listen(app)
    port = acceptor.address[1]
    ready = f"/tmp/roomcast-connection-memory-{os.getpid()}"
    gc.collect()
    before_rss = rss()
    before = tracemalloc.take_snapshot()
    child = Process(target=_clients, args=(port, count, ready), daemon=True)
    child.start()
    while len(app.connections) < count:  # noqa: ASYNC110 (a count to reach, not an event)
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)  # the last joins' welcomes flushed
    gc.collect()
    after = tracemalloc.take_snapshot()
    after_rss = rss()
    child.kill()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(ready)
    by_line: dict[str, int] = defaultdict(int)
    for stat in after.compare_to(before, "lineno"):
        frame = stat.traceback[0]
        where = frame.filename
        if "/server/" in where:
            where = "server/" + where.split("/server/", 1)[1]
        elif "site-packages/" in where:
            where = where.split("site-packages/", 1)[1]
        by_line[f"{where}:{frame.lineno}"] += stat.size_diff
    traced = sum(by_line.values())
    print(f"{count} idle joined connections, tracemalloc (allocation sites, bytes per connection):")
    for where, size in sorted(by_line.items(), key=lambda item: -item[1])[:25]:
        if size / count >= 4:
            print(f"  {size / count:8.0f}  {where}")
    print(f"  {traced / count:8.0f}  total seen by tracemalloc")
    print(f"RSS: {(after_rss - before_rss) / count:.0f} bytes per connection "
          f"({before_rss / 2**20:.1f} -> {after_rss / 2**20:.1f} MiB)")


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    tracemalloc.start(1)
    uvloop.run(measure(count))


if __name__ == "__main__":
    main()
