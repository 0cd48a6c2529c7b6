"""``python -m bench.history_memory [--rooms N] [--text-length N]``: what room history costs.

Fills a ``server.history.History`` the way the single-node broker does (one ``ChatMessage``
encoded once per chat, stored as its payload), with and without client ids, and reports, per
stored message, the memory beyond the payload's own length as tracemalloc counts it (every
Python allocation: the bytes object's header, the deque slots, the id, its key tuple and index
slot) and as the process's RSS grew; and per room, a stream with nothing stored. These are the
figures behind ``history.ENTRY_OVERHEAD``, ``ID_OVERHEAD`` and ``STREAM_OVERHEAD`` (which must
not be below them: they make ``--history-max-bytes`` a cap on real memory) and docs/history.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tracemalloc

from server import history as history_module
from server.history import History
from server.protocol import ChatMessage


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def fill(history: History, rooms: int, per_room: int, text: str, ids: bool) -> int:
    """Stores `per_room` chats in each of `rooms` rooms; returns the frame bytes stored."""
    frame_bytes = 0
    for r in range(rooms):
        stream = history.open(f"room-{r:06d}")
        for n in range(per_room):
            message = ChatMessage(f"user{n % 50:04d}", text, 1_700_000_000_000 + n)
            chat_id = f"{r:06d}-{n:06d}-7f3a9c" if ids else None
            frame_bytes += len(history.add(stream, message, chat_id))
    return frame_bytes


def rss_growth(rooms: int, per_room: int, text: str, ids: bool) -> int:
    """RSS growth of filling a history, in a fresh process: no tracemalloc table (which grows
    RSS too) and no memory freed by an earlier measurement to reuse."""
    probe = (
        "import json, sys\n"
        "from bench.history_memory import fill, rss_bytes\n"
        "from server.history import History\n"
        "rooms, per_room, text, ids = json.loads(sys.argv[1])\n"
        "history = History(per_room, 300.0, 1 << 40, 1 << 20)\n"
        "before = rss_bytes()\n"
        "fill(history, rooms, per_room, text, ids)\n"
        "print(rss_bytes() - before)\n"
    )
    argument = json.dumps([rooms, per_room, text, ids])
    done = subprocess.run(
        [sys.executable, "-c", probe, argument], capture_output=True, text=True, check=True
    )
    return int(done.stdout)


def measure(rooms: int, per_room: int, text: str, ids: bool) -> dict[str, float]:
    stored = rooms * per_room
    gc.collect()
    history = History(per_room, 300.0, 1 << 40, 1 << 20)
    tracemalloc.start()
    before, _ = tracemalloc.get_traced_memory()
    frames = fill(history, rooms, per_room, text, ids)
    after, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "messages": stored,
        "frame_bytes_per_message": frames / stored,
        "traced_bytes_per_message": (after - before) / stored,
        "traced_overhead_per_message": (after - before - frames) / stored,
        "rss_bytes_per_message": rss_growth(rooms, per_room, text, ids) / stored,
        "accounted_bytes_per_message": history.bytes / stored,
    }


def measure_streams(rooms: int) -> float:
    gc.collect()
    history = History(100, 300.0, 1 << 40, 1 << 20)
    tracemalloc.start()
    before, _ = tracemalloc.get_traced_memory()
    for r in range(rooms):
        history.open(f"room-{r:06d}")
    after, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return (after - before) / rooms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rooms", type=int, default=1000)
    parser.add_argument("--per-room", type=int, default=100)
    parser.add_argument("--text-length", type=int, default=60)
    args = parser.parse_args()
    text = ("lorem ipsum dolor sit amet " * 200)[: args.text_length]
    report = {
        "without_ids": measure(args.rooms, args.per_room, text, ids=False),
        "with_ids": measure(args.rooms, args.per_room, text, ids=True),
        "empty_stream_bytes_traced": measure_streams(args.rooms),
        "constants": {
            "ENTRY_OVERHEAD": history_module.ENTRY_OVERHEAD,
            "ID_OVERHEAD": history_module.ID_OVERHEAD,
            "STREAM_OVERHEAD": history_module.STREAM_OVERHEAD,
        },
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
