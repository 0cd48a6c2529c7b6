"""Benchmark peer: the seed tutorial's chat protocol on the Python ``websockets`` library.

Written the way a Python developer would write it with the library's asyncio API: one coroutine
per connection, ``json`` for encoding, ``websockets.asyncio.server.broadcast`` for fan-out, the
library's own keepalive pings (every 30 s, like the seed). Same behaviour as the seed's server:
every join/leave sends a system message with the full member list to every member (the joiner
too), every chat goes to every member (the sender too).

Usage: python server.py [--host 127.0.0.1] [--port 8080]
Prints ``roomcast listening on http://HOST:PORT/`` once bound, like roomcast itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import time
from typing import Any

from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed

rooms: dict[str, set[ServerConnection]] = {}


class Member:
    __slots__ = ("room", "username")

    def __init__(self) -> None:
        self.room: str | None = None
        self.username = "Anonymous"


members: dict[ServerConnection, Member] = {}


def send_room(room: str, message: dict[str, Any]) -> None:
    sockets = rooms.get(room)
    if sockets:
        broadcast(sockets, json.dumps(message, separators=(",", ":")))


def leave(ws: ServerConnection, member: Member) -> None:
    room = member.room
    if room is None:
        return
    member.room = None
    sockets = rooms.get(room)
    if sockets is None:
        return
    sockets.discard(ws)
    if not sockets:
        del rooms[room]
        return
    send_room(
        room,
        {
            "type": "system",
            "text": f"{member.username} left #{room}",
            "users": [members[s].username for s in sockets],
        },
    )


def join(ws: ServerConnection, member: Member, msg: dict[str, Any]) -> None:
    room = msg.get("room") or "general"
    username = msg.get("username") or "Anonymous"
    leave(ws, member)
    member.room = room
    member.username = username
    sockets = rooms.setdefault(room, set())
    sockets.add(ws)
    send_room(
        room,
        {
            "type": "system",
            "text": f"{username} joined #{room}",
            "users": [members[s].username for s in sockets],
        },
    )


async def handler(ws: ServerConnection) -> None:
    member = Member()
    members[ws] = member
    try:
        async for raw in ws:
            try:
                msg = json.loads(raw)
            except ValueError:
                await ws.send(json.dumps({"type": "error", "text": "Invalid JSON"}))
                continue
            kind = msg.get("type") if isinstance(msg, dict) else None
            if kind == "join":
                join(ws, member, msg)
            elif kind == "chat":
                if member.room is None:
                    await ws.send(json.dumps({"type": "error", "text": "Join a room first"}))
                    continue
                send_room(
                    member.room,
                    {
                        "type": "chat",
                        "username": member.username,
                        "text": msg.get("text"),
                        "timestamp": int(time.time() * 1000),
                    },
                )
            elif kind == "leave":
                leave(ws, member)
            else:
                await ws.send(json.dumps({"type": "error", "text": "Unknown message type"}))
    except ConnectionClosed:
        pass
    finally:
        leave(ws, member)
        del members[ws]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")))
    args = parser.parse_args()

    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)

    async with serve(handler, args.host, args.port, ping_interval=30, ping_timeout=30) as server:
        host, port = next(iter(server.sockets)).getsockname()[:2]
        print(f"roomcast listening on http://{host}:{port}/", flush=True)
        await stop


if __name__ == "__main__":
    asyncio.run(main())
