"""``python -m bench.flood``: what a flood of tiny frames costs a calm client, with and without
the frame budget (``--max-frames-per-second``).

Starts roomcast (pinned to the server CPU, like every benchmark's server, with ``--rate-limit 0``
and the frame budget given by ``--budget``), then ``--flooders`` processes, each on its own
connection sending ``--kind`` frames as fast as the kernel takes them (or paced to ``--paced``
frames a second, or reconnecting whenever they are closed), while one calm client chats with
itself every 0.2 s and times each round trip. Prints the round trips, the server's peak RSS and
how many flooders the server closed, e.g.::

    python -m bench.flood --flooders 20 --kind junk              # the default budget, 2000
    python -m bench.flood --flooders 20 --kind junk --budget 0   # no budget: what it was before

Not part of ``make bench``: it measures a defence, not a cost.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import socket
import struct
import time
from dataclasses import dataclass

from bench.rawclient import client_frame, connect, upgrade_request
from bench.servers import RunningServer, cpu_split, start_server

KINDS = {  # what one flooding frame says
    "junk": (0x1, b"not json"),
    "chat": (0x1, b'{"type":"chat","text":"x"}'),
    "ping": (0x9, b""),
    "pong": (0xA, b"p"),
}
BATCH = 4000  # frames per send()


def _flood_once(port: int, blob: bytes, until: float, pause: float, reconnect: bool) -> None:
    sock = connect(port)
    # A flooder does not read: what the server answers waits in a small window.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(0.5)
    try:
        while time.monotonic() < until:
            try:
                sock.sendall(blob)
            except TimeoutError:
                if reconnect:
                    return  # the server stopped reading this connection: start another
                continue
            if pause:
                time.sleep(pause)
    finally:
        sock.close()


def flooder(port: int, kind: str, seconds: float, paced: int, reconnect: bool) -> None:
    opcode, payload = KINDS[kind]
    # paced: a tenth of a second's frames every tenth of a second
    blob = client_frame(opcode, payload) * (max(1, paced // 10) if paced else BATCH)
    pause = 0.1 if paced else 0.0
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        with contextlib.suppress(OSError):  # closed by the server: 1008, or reset after grace
            _flood_once(port, blob, until, pause, reconnect)
        if not reconnect:
            return


async def _recv(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readexactly(2)
    size = head[1] & 0x7F
    if size == 126:
        size = struct.unpack("!H", await reader.readexactly(2))[0]
    elif size == 127:
        size = struct.unpack("!Q", await reader.readexactly(8))[0]
    return head[0] & 0x0F, await reader.readexactly(size)


async def calm_client(server: RunningServer, seconds: float) -> tuple[list[float], int]:
    """Round trips of a chat to a room of one, every 0.2 s; and the server's peak RSS."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(upgrade_request())
    await reader.readuntil(b"\r\n\r\n")
    writer.write(client_frame(0x1, b'{"type":"join","room":"calm","username":"calm"}'))
    await asyncio.wait_for(_recv(reader), 10)
    times: list[float] = []
    peak = server.rss_bytes()
    until = time.monotonic() + seconds
    n = 0
    while time.monotonic() < until:
        n += 1
        text = f"m{n}"
        started = time.monotonic()
        writer.write(client_frame(0x1, json.dumps({"type": "chat", "text": text}).encode()))
        while True:
            opcode, payload = await asyncio.wait_for(_recv(reader), 60)
            if opcode == 0x1 and json.loads(payload).get("text") == text:
                break
        times.append(time.monotonic() - started)
        peak = max(peak, server.rss_bytes())
        await asyncio.sleep(0.2)
    writer.close()
    return times, peak


@dataclass
class FloodResult:
    round_trips: list[float]  # seconds, sorted
    rss_before: int  # bytes
    rss_peak: int
    closed: int  # connections the server closed for the frame budget

    def line(self, args: argparse.Namespace) -> str:
        times = self.round_trips
        return (
            f"{args.flooders} flooders ({args.kind}, budget {args.budget or 'off'}"
            f"{f', paced {args.paced}/s' if args.paced else ''}"
            f"{', reconnecting' if args.reconnect else ''}), {args.seconds:g} s: calm round "
            f"trips n={len(times)} median {times[len(times) // 2] * 1000:.1f} ms, worst "
            f"{times[-1] * 1000:.0f} ms; server RSS {self.rss_before / 2**20:.1f} -> peak "
            f"{self.rss_peak / 2**20:.1f} MiB; closed for the frame budget: {self.closed}"
        )


def run(
    flooders: int, kind: str, seconds: float, budget: int, *, paced: int = 0,
    reconnect: bool = False,
) -> FloodResult:
    server_cpus, driver_cpus = cpu_split()
    server = start_server(
        "roomcast", cpus=server_cpus, extra=("--max-frames-per-second", str(budget))
    )
    affinity = os.sched_getaffinity(0)
    try:
        if driver_cpus:
            os.sched_setaffinity(0, driver_cpus)
        before = server.rss_bytes()
        floods = [
            multiprocessing.get_context("spawn").Process(
                target=flooder, args=(server.port, kind, seconds, paced, reconnect)
            )
            for _ in range(flooders)
        ]
        for process in floods:
            process.start()
        times, peak = asyncio.run(calm_client(server, seconds))
        for process in floods:
            process.join(seconds + 30)
        closed = server.text().count("frames in under a second")
    finally:
        os.sched_setaffinity(0, affinity)
        server.stop()
    return FloodResult(sorted(times), before, peak, closed)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.flood", description=__doc__)
    parser.add_argument("--flooders", type=int, default=20)
    parser.add_argument("--kind", choices=sorted(KINDS), default="junk")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--budget", type=int, default=2000, help="--max-frames-per-second")
    parser.add_argument("--paced", type=int, default=0, help="frames a second per flooder")
    parser.add_argument("--reconnect", action="store_true", help="flooders reconnect when closed")
    args = parser.parse_args()
    result = run(
        args.flooders, args.kind, args.seconds, args.budget, paced=args.paced,
        reconnect=args.reconnect,
    )
    print(result.line(args))


if __name__ == "__main__":
    main()
