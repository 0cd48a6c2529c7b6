"""The load driver: picows WebSocket clients on uvloop, in worker processes.

The coordinator (``DriverPool``) starts N worker processes, pinned to the driver CPUs, and sends
them commands over pipes, one command at a time per worker. A worker owns a set of connections
(each with a source address 127.0.0.x, so that more connections than one address's ephemeral
ports can be opened) and runs the per-connection work of every scenario in its event loop:

- ``connect``: open connections (bounded concurrency), time each handshake;
- ``join``: send every connection's join at a common instant and time its confirmation (the first
  system message whose text is ``<me> joined #<room>``);
- ``fanout_start``: open-loop publishing on a fixed schedule; the members' sockets go to the
  compiled receiver (``bench/fastrecv.pyx``, a thread without the GIL) for the measurement, which
  records the latency from the scheduled send time (carried in the chat text as
  ``id:send_ns:padding``) to the receipt; ``spread_start`` is its one-chat-per-room variant, read
  in Python;
- ``saturate_start``/``saturate_stop``: closed loop, each room keeps D messages in flight, where a
  message is complete once every member of the room received it;
- ``stats``/``snapshot``/``collect``: counters, and the recorded samples.

All timestamps are ``CLOCK_MONOTONIC`` nanoseconds, which are comparable across processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import multiprocessing as mp
import os
import socket
import struct
import threading
import time
import traceback
from array import array
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, Protocol

import msgspec

MAX_CONNS_PER_WORKER = 15_000
CONNECT_TIMEOUT_S = 60.0
USE_AIOFASTNET = os.environ.get("BENCH_AIOFASTNET", "1") != "0"
CONNS_PER_SOURCE_ADDRESS = 2_000

LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on with 0 s: close() sends an RST
CHAT_MARK = b'"type":"chat"'
ERROR_MARK = b'"type":"error"'
TEXT_MARK = b'"text":"'


class _System(msgspec.Struct):
    type: str = ""
    text: str = ""


_decode_system = msgspec.json.Decoder(_System).decode


def chat_frame(text: str) -> bytes:
    return b'{"type":"chat","text":"' + text.encode() + b'"}'


def chat_text(msg_id: int, send_ns: int, size: int) -> str:
    """``id:send_ns:`` padded with 'x' to ``size`` characters (never shorter than the header)."""
    head = f"{msg_id}:{send_ns}:"
    return head + "x" * max(0, size - len(head))


def parse_chat(data: bytes) -> tuple[int, int]:
    """(message id, scheduled send time in ns) from a chat frame sent by a publisher."""
    i = data.index(TEXT_MARK) + len(TEXT_MARK)
    j = data.index(b":", i)
    k = data.index(b":", j + 1)
    return int(data[i:j]), int(data[j + 1 : k])


def header_size(n: int) -> int:
    """Bytes of an unmasked server frame header for an n-byte payload."""
    return 2 if n < 126 else 4 if n < 65536 else 10


# --------------------------------------------------------------------------- worker side


def _client_class() -> type:
    from picows import WSListener, WSMsgType  # noqa: PLC0415  (imported in the worker only)

    text_type = WSMsgType.TEXT
    close_type = WSMsgType.CLOSE

    class Client(WSListener):
        def __init__(self, worker: Worker, cid: int, room: str, username: str) -> None:
            super().__init__()
            self.worker = worker
            self.cid = cid
            self.room = room
            self.username = username
            self.tag = ""  # a group label for per-group latencies (twonode: which half)
            self.expect = f"{username} joined #{room}"
            self.transport: Any = None
            self.join_sent_ns = 0
            self.confirmed_ns = 0
            self.frames = 0
            self.nbytes = 0
            self.chats = 0
            self.errors = 0
            self.close_code = 0
            self.alive = False
            self.sat: _SatRoom | None = None
            self.sat_count = 0

        def on_ws_connected(self, transport: Any) -> None:
            self.transport = transport
            self.alive = True

        def on_ws_frame(self, transport: Any, frame: Any) -> None:
            mtype = frame.msg_type
            if mtype != text_type:
                if mtype == close_type:
                    self.close_code = int(frame.get_close_code())
                    transport.disconnect(graceful=False)
                return
            if self.confirmed_ns and self.worker.count_only:
                # join storm: after its own confirmation a member only counts presence traffic
                n = frame.payload_size
                self.frames += 1
                self.nbytes += n + (2 if n < 126 else 4 if n < 65536 else 10)
                return
            data = frame.get_payload_as_bytes()
            n = len(data)
            self.frames += 1
            self.nbytes += n + (2 if n < 126 else 4 if n < 65536 else 10)
            if CHAT_MARK in data:
                self.chats += 1
                room = self.sat
                if room is not None:
                    # saturate: the k-th chat a member receives is the room's k-th message
                    # (one publisher per room, per-connection order); inlined for speed
                    room.receipts += 1
                    seq = self.sat_count
                    self.sat_count = seq + 1
                    pending = room.pending
                    got = pending.get(seq, 0) + 1
                    if got < room.members:
                        pending[seq] = got
                        return
                    pending.pop(seq, None)
                    room.completed += 1
                    if room.running:
                        room.send_next()
                    return
                handler = self.worker.on_chat
                if handler is not None:
                    handler(self, data)
            elif ERROR_MARK in data:
                self.errors += 1
            elif not self.confirmed_ns and _decode_system(data).text == self.expect:
                self.confirmed_ns = time.monotonic_ns()
                self.worker.confirmed += 1

        def on_ws_disconnected(self, transport: Any) -> None:
            if self.alive:
                self.alive = False
                self.worker.disconnected += 1

    return Client


# --------------------------------------------------------------------------- resume (storm)

HISTORY_PREFIX = b'{"type":"history"'
SEQ_KEY = b'"seq":'


class _Replayed(msgspec.Struct):
    text: str = ""
    seq: int = 0


class _History(msgspec.Struct):
    epoch: str = ""
    messages: list[_Replayed] = msgspec.field(default_factory=list)
    recovered: bool = False
    reason: str | None = None


class _Welcome(msgspec.Struct):
    text: str = ""
    epoch: str | None = None
    seq: int | None = None


_decode_history = msgspec.json.Decoder(_History).decode
_decode_welcome = msgspec.json.Decoder(_Welcome).decode


def message_id(text: str) -> int:
    """The publisher's message id from a chat text ``id:send_ns:padding``."""
    return int(text.split(":", 1)[0])


class Track:
    """What one simulated user of a reconnect storm remembers across its connections: its
    position (epoch, last seq), every chat it got (message id -> seq, live or replayed) and how
    its latest resume went. A publisher's track is the room's reference: the chats the server
    placed in the room's order, as their echoes (and its own replays) told it."""

    __slots__ = ("cid", "client", "close_codes", "dups", "epoch", "got", "history_ns", "jumps",
                 "live", "no_history", "node", "publisher", "reason", "recovered", "replayed",
                 "resume_sent_ns", "resumes", "room", "sent", "seq", "welcome_ns",
                 "welcome_seq")

    def __init__(self, cid: int, room: str, publisher: bool) -> None:
        self.cid = cid
        self.room = room
        self.publisher = publisher
        self.client: Any = None
        self.node = ""  # the tag of the node its latest connection went to
        self.epoch: str | None = None
        self.seq = 0  # the position: the last seq received (or the welcome's)
        self.got: dict[int, int] = {}
        self.dups = 0  # chats received again (same message id), live or replayed
        self.jumps = 0  # chats whose seq was not position + 1 (diagnostic)
        self.live = False
        self.sent = 0  # a publisher's next message id
        self.resumes = 0
        self.close_codes: list[int] = []
        self.reset_resume(0)

    def reset_resume(self, sent_ns: int) -> None:
        self.resume_sent_ns = sent_ns
        self.history_ns = 0
        self.welcome_ns = 0
        self.recovered: bool | None = None
        self.reason: str | None = None
        self.replayed = 0
        self.no_history = False
        self.welcome_seq: int | None = None

    def chat(self, msg_id: int, seq: int) -> None:
        if msg_id in self.got:
            self.dups += 1
        else:
            self.got[msg_id] = seq
        if seq != self.seq + 1:
            self.jumps += 1
        self.seq = max(self.seq, seq)

    def history(self, data: bytes, now: int) -> None:
        message = _decode_history(data)
        self.history_ns = now
        self.recovered = message.recovered
        self.reason = message.reason
        self.replayed = len(message.messages)
        for m in message.messages:
            self.chat(message_id(m.text), m.seq)

    def welcome(self, message: _Welcome, now: int) -> None:
        self.welcome_ns = now
        self.live = True
        if self.resume_sent_ns and not self.history_ns:
            self.no_history = True
        if message.epoch is not None:
            self.epoch = message.epoch
        if message.seq is not None:
            self.welcome_seq = message.seq
            self.seq = message.seq


def _resume_client_class(base: type) -> type:
    from picows import WSMsgType  # noqa: PLC0415  (imported in the worker only)

    text_type = WSMsgType.TEXT
    close_type = WSMsgType.CLOSE

    class ResumeClient(base):  # type: ignore[misc]
        """A storm client: every frame goes to its track (history, chats, the welcome)."""

        track: Track
        confirmed_ns: int  # set by Client.__init__; the dynamic base hides it from mypy

        def on_ws_frame(self, transport: Any, frame: Any) -> None:
            mtype = frame.msg_type
            if mtype != text_type:
                if mtype == close_type:
                    self.close_code = int(frame.get_close_code())
                    self.track.close_codes.append(self.close_code)
                    transport.disconnect(graceful=False)
                return
            data = frame.get_payload_as_bytes()
            n = len(data)
            self.frames += 1
            self.nbytes += n + (2 if n < 126 else 4 if n < 65536 else 10)
            track = self.track
            if data.startswith(HISTORY_PREFIX):
                track.history(data, time.monotonic_ns())
            elif CHAT_MARK in data:
                self.chats += 1
                i = data.rindex(SEQ_KEY) + len(SEQ_KEY)
                track.chat(parse_chat(data)[0], int(data[i:-1]))
            elif ERROR_MARK in data:
                self.errors += 1
            elif not self.confirmed_ns:
                message = _decode_welcome(data)
                if message.text == self.expect:
                    self.confirmed_ns = time.monotonic_ns()
                    self.worker.confirmed += 1
                    track.welcome(message, self.confirmed_ns)

        def on_ws_disconnected(self, transport: Any) -> None:
            # dropping is what a storm does: counted per track, not as a server problem
            self.alive = False
            self.track.live = False

    return ResumeClient


class _SatRoom:
    __slots__ = ("completed", "depth", "members", "pending", "publisher", "receipts", "running",
                 "sent", "size", "text_type")

    def __init__(self, publisher: Any, members: int, depth: int, size: int, text_type: Any):
        self.publisher = publisher
        self.members = members
        self.depth = depth
        self.size = size
        self.text_type = text_type
        self.running = False
        self.sent = 0
        self.completed = 0
        self.receipts = 0
        self.pending: dict[int, int] = {}

    def send_next(self) -> None:
        pub = self.publisher
        if pub.alive:
            pub.transport.send(
                self.text_type, chat_frame(chat_text(self.sent, time.monotonic_ns(), self.size))
            )
            self.sent += 1


class Worker:
    def __init__(self, index: int) -> None:
        self.index = index
        self.client_cls = _client_class()
        self.resume_cls = _resume_client_class(self.client_cls)
        self.clients: list[Any] = []
        self.tracks: dict[int, Track] = {}  # resume storm: per cid, across connections
        self._pub_timer: asyncio.Handle | None = None  # call_soon, then call_at
        self.on_chat: Callable[[Any, bytes], None] | None = None
        self.count_only = False
        self.confirmed = 0
        self.disconnected = 0
        self.connect_failures: list[str] = []
        # fanout
        self.latencies = array("q")
        self.measured = 0
        self.receiver: Any = None  # bench.fastrecv.Receiver while a fan-out measures
        self.latency_ids = array("i")  # the message id of each latency (the receiver's)
        self.receiver_errors = 0
        self.receiver_close_codes: set[int] = set()
        self.tag_latencies: dict[str, array[int]] = {}
        self.warm_received = 0
        self.warm_ids = 0
        self.fan_sent = 0
        self.fan_sent_measured = 0
        self.fan_late_ns: list[int] = []
        self.fan_done = False
        self._timer: asyncio.TimerHandle | None = None
        # saturate
        self.sat_rooms: list[_SatRoom] = []
        self.snapshots: dict[str, dict[str, int]] = {}

    # ---- connections

    async def op_connect(
        self, url: str, conns: list[tuple[int, str, str, str]], concurrency: int = 64,
        tag: str = "", headers: dict[str, str] | None = None, *, resume: bool = False,
    ) -> dict[str, Any]:
        """Opens the connections; with ``resume`` they are storm clients of their tracks
        (``rtracks``), and a cid connecting again replaces its earlier (closed) client."""
        from picows import ws_connect  # noqa: PLC0415

        sem = asyncio.Semaphore(concurrency)
        durations = array("d")
        cls = self.resume_cls if resume else self.client_cls
        if resume:
            again = {c[0] for c in conns}
            self.clients = [c for c in self.clients if c.cid not in again]

        async def one(cid: int, room: str, username: str, src: str) -> None:
            async with sem:
                t0 = time.monotonic()
                client = cls(self, cid, room, username)
                client.tag = tag
                if resume:
                    client.track = self.tracks[cid]
                    client.track.client = client
                    client.track.node = tag
                try:
                    # a loaded server (200,000 connections on one CPU) can take seconds to
                    # answer: time out later than picows's 5 s default handshake timeout
                    _transport, listener = await asyncio.wait_for(
                        ws_connect(lambda: client, url, local_addr=(src, 0),
                                   use_aiofastnet=USE_AIOFASTNET, extra_headers=headers,
                                   websocket_handshake_timeout=CONNECT_TIMEOUT_S),
                        CONNECT_TIMEOUT_S + 5,
                    )
                except Exception as exc:
                    self.connect_failures.append(f"{src}: {exc!r}")
                    return
                if listener is None or not client.alive:
                    # the server answered the upgrade without switching protocols
                    self.connect_failures.append(f"{src}: no WebSocket (upgrade refused)")
                    return
                durations.append(time.monotonic() - t0)
                self.clients.append(listener)

        start = time.monotonic()
        await asyncio.gather(*(one(*c) for c in conns))
        elapsed = time.monotonic() - start
        return {
            "connected": len(durations),
            "failed": len(conns) - len(durations),
            "failures": self.connect_failures[:5],
            "elapsed_s": elapsed,
            "durations_s": durations.tobytes(),
        }

    async def op_join(
        self, start_ns: int, first: int = 0, count_only: bool = False,
        cids: list[int] | None = None,
    ) -> dict[str, Any]:
        """Sends the join of every client from index ``first`` on (only those in ``cids`` when
        given) at ``start_ns``; with ``count_only``, frames after a client's confirmation are
        only counted, not inspected."""
        self.count_only = count_only
        delay = (start_ns - time.monotonic_ns()) / 1e9
        if delay > 0:
            await asyncio.sleep(delay)
        from picows import WSMsgType  # noqa: PLC0415

        text = WSMsgType.TEXT
        wanted = None if cids is None else set(cids)
        sent = 0
        for client in self.clients[first:]:
            if wanted is not None and client.cid not in wanted:
                continue
            sent += 1
            client.join_sent_ns = time.monotonic_ns()
            frame = msgspec.json.encode(
                {"type": "join", "room": client.room, "username": client.username}
            )
            client.transport.send(text, frame)
        return {"sent": sent}

    def op_stats(self) -> dict[str, Any]:
        clients = self.clients
        return {
            "clients": len(clients),
            "confirmed": self.confirmed,
            "disconnected": self.disconnected,
            "frames": sum(c.frames for c in clients),
            "bytes": sum(c.nbytes for c in clients),
            "chats": sum(c.chats for c in clients),
            "errors": sum(c.errors for c in clients) + self.receiver_errors,
            "with_chat": sum(1 for c in clients if c.chats),
            "alive": sum(1 for c in clients if c.alive),
            "close_codes": sorted({c.close_code for c in clients if c.close_code}
                                  | self.receiver_close_codes),
            "measured": self.receiver.measured if self.receiver is not None else self.measured,
            "fan_sent": self.fan_sent,
            "fan_sent_measured": self.fan_sent_measured,
            "fan_done": self.fan_done,
            "sat_receipts": sum(r.receipts for r in self.sat_rooms),
            "sat_sent": sum(r.sent for r in self.sat_rooms),
            "sat_completed": sum(r.completed for r in self.sat_rooms),
            **(self._resume_stats() if self.tracks else {}),
        }

    # ---- resume (reconnect storm)

    def op_rtracks(self, tracks: list[tuple[int, str, bool]]) -> dict[str, Any]:
        """One track per (cid, room, is publisher)."""
        for cid, room, publisher in tracks:
            self.tracks[cid] = Track(cid, room, publisher)
        return {"tracks": len(self.tracks)}

    def op_rdrop(self, cids: list[int]) -> dict[str, Any]:
        """The connections die at once: an RST, as when the network goes away."""
        wanted = set(cids)
        n = 0
        for client in self.clients:
            if client.cid in wanted and client.alive:
                with contextlib.suppress(OSError, AttributeError):
                    sock = client.transport.underlying_transport.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
                client.transport.disconnect(graceful=False)
                n += 1
        return {"dropped": n}

    async def op_rresume(self, start_ns: int, cids: list[int]) -> dict[str, Any]:
        """At ``start_ns`` every client in ``cids`` sends its join with ``since`` its position
        (an epoch of "" when its server never gave one)."""
        from picows import WSMsgType  # noqa: PLC0415

        wanted = set(cids)
        clients = [c for c in self.clients if c.cid in wanted and c.alive]
        frames = [msgspec.json.encode(
            {"type": "join", "room": c.room, "username": c.username,
             "since": {"epoch": c.track.epoch or "", "seq": c.track.seq}}) for c in clients]
        delay = (start_ns - time.monotonic_ns()) / 1e9
        if delay > 0:
            await asyncio.sleep(delay)
        text = WSMsgType.TEXT
        for client, frame in zip(clients, frames, strict=True):
            track = client.track
            track.reset_resume(time.monotonic_ns())
            track.resumes += 1
            client.transport.send(text, frame)
        return {"sent": len(clients), "missing": len(wanted) - len(clients)}

    def op_rpublish_start(self, rate: float, size: int) -> dict[str, Any]:
        """Every publisher that is joined sends one chat per 1/rate s (open loop, like the
        room's other members chatting on); one that is down sends nothing meanwhile."""
        from picows import WSMsgType  # noqa: PLC0415

        text = WSMsgType.TEXT
        pubs = [t for t in self.tracks.values() if t.publisher]
        loop = asyncio.get_running_loop()
        period = 1.0 / rate
        state = {"next": loop.time()}

        def tick() -> None:
            now = time.monotonic_ns()
            for track in pubs:
                client = track.client
                if track.live and client is not None and client.alive:
                    client.transport.send(text, chat_frame(chat_text(track.sent, now, size)))
                    track.sent += 1
            # open loop, but a stall of the driver's loop is not made up for in one burst
            state["next"] = max(state["next"] + period, loop.time() - period)
            self._pub_timer = loop.call_at(max(state["next"], loop.time()), tick)

        self._pub_timer = loop.call_soon(tick)
        return {"publishers": len(pubs)}

    def op_rpublish_stop(self) -> dict[str, Any]:
        if self._pub_timer is not None:
            self._pub_timer.cancel()
            self._pub_timer = None
        return {"sent": sum(t.sent for t in self.tracks.values() if t.publisher)}

    def _room_refs(self) -> dict[str, dict[int, int]]:
        return {t.room: t.got for t in self.tracks.values() if t.publisher}

    def _resume_stats(self) -> dict[str, Any]:
        refs = self._room_refs()
        members = [t for t in self.tracks.values() if not t.publisher]
        resumed = [t for t in members if t.resume_sent_ns]
        return {
            "r_live": sum(1 for t in members if t.live),
            "r_pub_live": sum(1 for t in self.tracks.values() if t.publisher and t.live),
            "r_pub_sent": sum(t.sent for t in self.tracks.values() if t.publisher),
            "r_pub_placed": sum(len(t.got) for t in self.tracks.values() if t.publisher),
            "r_no_epoch": sum(1 for t in members if t.live and t.epoch is None),
            "r_resumed": len(resumed),
            "r_history": sum(1 for t in resumed if t.history_ns),
            "r_welcomed": sum(1 for t in resumed if t.welcome_ns),
            "r_have": sum(len(t.got) for t in members),
            "r_expected": sum(len(refs.get(t.room, ())) for t in members),
        }

    def op_rcollect(self) -> dict[str, Any]:
        """Per resuming member, against its room's publisher: the chats it never got, got
        twice, got with another seq, or got without the room having them; and its resume."""
        refs = self._room_refs()
        out: dict[str, Any] = {"missing": 0, "duplicates": 0, "mismatched": 0, "unexpected": 0,
                               "jumps": 0, "recovered": 0, "not_recovered": 0, "no_history": 0,
                               "no_welcome": 0, "replayed": 0, "reasons": {}, "epochs": [],
                               "members": 0, "expected_per_member": [], "missed_at_drop": 0}
        history_waits, welcome_waits = array("q"), array("q")
        last_history = last_welcome = 0
        # where the missing chats were: which node the member resumed on, which room, and
        # whether they lay inside the replay's range (seq <= the welcome's) or after it (live)
        lost: dict[str, Any] = {"members": 0, "by_node": {}, "by_room": {}, "in_replay_range": 0,
                                "live": 0, "examples": []}
        for t in self.tracks.values():
            if t.publisher:
                continue
            out["members"] += 1
            ref = refs.get(t.room, {})
            got = t.got
            out["expected_per_member"].append(len(ref))
            gone = sorted(ref[k] for k in ref if k not in got)
            out["missing"] += len(gone)
            if gone:
                lost["members"] += 1
                lost["by_node"][t.node] = lost["by_node"].get(t.node, 0) + len(gone)
                lost["by_room"][t.room] = lost["by_room"].get(t.room, 0) + len(gone)
                edge = t.welcome_seq if t.welcome_seq is not None else -1
                inside = sum(1 for q in gone if q <= edge)
                lost["in_replay_range"] += inside
                lost["live"] += len(gone) - inside
                if len(lost["examples"]) < 5:
                    lost["examples"].append({"cid": t.cid, "room": t.room, "node": t.node,
                                             "welcome_seq": t.welcome_seq,
                                             "recovered": t.recovered, "missing_seqs": gone[:12]})
            out["unexpected"] += sum(1 for k in got if k not in ref)
            out["mismatched"] += sum(1 for k, s in got.items() if k in ref and ref[k] != s)
            out["duplicates"] += t.dups
            out["jumps"] += t.jumps
            out["replayed"] += t.replayed
            if t.epoch is not None and t.epoch not in out["epochs"]:
                out["epochs"].append(t.epoch)
            if not t.resume_sent_ns:
                continue
            if t.history_ns:
                history_waits.append(t.history_ns - t.resume_sent_ns)
                last_history = max(last_history, t.history_ns)
                if t.recovered:
                    out["recovered"] += 1
                else:
                    out["not_recovered"] += 1
                    key = t.reason or "?"
                    out["reasons"][key] = out["reasons"].get(key, 0) + 1
            if t.no_history:
                out["no_history"] += 1
            if t.welcome_ns:
                welcome_waits.append(t.welcome_ns - t.resume_sent_ns)
                last_welcome = max(last_welcome, t.welcome_ns)
            else:
                out["no_welcome"] += 1
        pubs = [t for t in self.tracks.values() if t.publisher]
        out |= {
            "history_waits_ns": history_waits.tobytes(),
            "welcome_waits_ns": welcome_waits.tobytes(),
            "last_history_ns": last_history,
            "last_welcome_ns": last_welcome,
            "first_resume_ns": min((t.resume_sent_ns for t in self.tracks.values()
                                    if t.resume_sent_ns and not t.publisher), default=0),
            "publisher_sent": sum(t.sent for t in pubs),
            "publisher_placed": sum(len(t.got) for t in pubs),
            "publisher_recovered": [t.recovered for t in pubs if t.resume_sent_ns],
            "close_codes": sorted({c for t in self.tracks.values() for c in t.close_codes}),
            "lost": lost,
        }
        return out

    def op_clients(self) -> list[tuple[int, str, str, bool, int, int]]:
        """Per connection: (cid, room, tag, confirmed, frames, chats) — for diagnosing losses."""
        return [(c.cid, c.room, c.tag, bool(c.confirmed_ns), c.frames, c.chats)
                for c in self.clients]

    def op_join_times(self, first: int = 0) -> dict[str, Any]:
        sent = [c.join_sent_ns for c in self.clients[first:] if c.join_sent_ns]
        done = [c.confirmed_ns for c in self.clients[first:] if c.confirmed_ns]
        return {
            "first_sent_ns": min(sent) if sent else 0,
            "last_confirmed_ns": max(done) if done else 0,
            "confirmed": len(done),
            "waits_ns": array("q", [c.confirmed_ns - c.join_sent_ns for c in self.clients[first:]
                                    if c.confirmed_ns]).tobytes(),
        }

    # ---- simple broadcast (capacity check)

    def op_say(self, cids: list[int], text: str) -> dict[str, Any]:
        from picows import WSMsgType  # noqa: PLC0415

        wanted = set(cids)
        n = 0
        for client in self.clients:
            if client.cid in wanted and client.alive:
                client.transport.send(WSMsgType.TEXT, chat_frame(text))
                n += 1
        return {"sent": n}

    async def op_fill(self, cids: list[int], count: int, text: str,
                      patience: float = 60.0) -> dict[str, Any]:
        """``count`` chats from every client in ``cids``, one per client per round, the next
        round once every echo of this one is back: at most one chat in flight per connection,
        so that the server's per-connection read buffers never grow (they never shrink, and
        would count as the history's memory)."""
        from picows import WSMsgType  # noqa: PLC0415

        wanted = set(cids)
        clients = [c for c in self.clients if c.cid in wanted and c.alive]
        frame = chat_frame(text)
        text_type = WSMsgType.TEXT
        deadline = time.monotonic() + patience
        for _ in range(count):
            target = [c.chats + 1 for c in clients]
            for client in clients:
                client.transport.send(text_type, frame)
            while any(c.chats < t for c, t in zip(clients, target, strict=True)):
                if time.monotonic() > deadline:
                    return {"sent_rounds": _, "stalled": True}
                await asyncio.sleep(0.001)
        return {"sent_rounds": count, "stalled": False}

    def op_reset_counters(self) -> dict[str, Any]:
        for c in self.clients:
            c.chats = 0
            c.frames = 0
            c.nbytes = 0
        return {}

    # ---- fanout (open loop)

    def _fan_receive(self, client: Any, data: bytes) -> None:
        now = time.monotonic_ns()
        msg_id, send_ns = parse_chat(data)
        if msg_id >= self.warm_ids:
            self.latencies.append(now - send_ns)
            self.measured += 1
            if client.tag:
                lat = self.tag_latencies.get(client.tag)
                if lat is None:
                    lat = self.tag_latencies[client.tag] = array("q")
                lat.append(now - send_ns)
        else:
            self.warm_received += 1

    def op_fanout_start(
        self,
        *,
        publishers: list[int],
        rate: float,
        start_ns: int,
        count: int,
        warm: int,
        size: int,
    ) -> dict[str, Any]:
        from picows import WSMsgType  # noqa: PLC0415

        text = WSMsgType.TEXT
        pubs = [c for c in self.clients if c.cid in set(publishers)]
        self.latencies = array("q")
        self.latency_ids = array("i")
        self.tag_latencies = {}
        self.measured = self.warm_received = self.fan_sent = self.fan_sent_measured = 0
        self.fan_late_ns = []
        self.warm_ids = warm
        self.fan_done = not pubs
        self.on_chat = self._fan_receive
        self._start_receiver(warm)
        period_ns = round(1e9 / rate)
        loop = asyncio.get_running_loop()
        state = {"next": 0}
        spin_ns = 3_000_000

        def tick() -> None:
            k = state["next"]
            due = start_ns + k * period_ns
            # wake ~1.5 ms early (libuv timers have millisecond resolution), then spin to the
            # scheduled instant so that latency is measured from the intended send time
            while time.monotonic_ns() < due:
                pass
            now = time.monotonic_ns()
            while k < count and start_ns + k * period_ns <= now:
                sched = start_ns + k * period_ns
                self.fan_late_ns.append(now - sched)
                for pub in pubs:
                    if pub.alive:
                        pub.transport.send(text, chat_frame(chat_text(k, sched, size)))
                        self.fan_sent += 1
                        if k >= warm:
                            self.fan_sent_measured += 1
                k += 1
                now = time.monotonic_ns()
            state["next"] = k
            if k >= count:
                self.fan_done = True
                return
            wait = (start_ns + k * period_ns - spin_ns - time.monotonic_ns()) / 1e9
            self._timer = loop.call_later(max(0.0, wait), tick)

        if pubs:
            wait = (start_ns - spin_ns - time.monotonic_ns()) / 1e9
            self._timer = loop.call_later(max(0.0, wait), tick)
        return {"publishers": len(pubs)}

    def op_spread_start(self, *, sends: list[tuple[int, int]], size: int) -> dict[str, Any]:
        """One chat per (publisher cid, due ns), each sent at its own instant (a broadcast per
        room spread over a window); receipts are timed from the due instant as in fanout."""
        from picows import WSMsgType  # noqa: PLC0415

        text = WSMsgType.TEXT
        by_cid = {c.cid: c for c in self.clients}
        # a publisher whose connection failed sends nothing (its room's receipts count as lost)
        plan = sorted((due, cid) for cid, due in sends if cid in by_cid)
        self.latencies = array("q")
        self.latency_ids = array("i")
        self.tag_latencies = {}
        self.measured = self.warm_received = self.fan_sent = self.fan_sent_measured = 0
        self.fan_late_ns = []
        self.warm_ids = 0
        self.fan_done = not plan
        self.on_chat = self._fan_receive
        loop = asyncio.get_running_loop()
        state = {"next": 0}

        def tick() -> None:
            i = state["next"]
            now = time.monotonic_ns()
            while i < len(plan) and plan[i][0] <= now:
                due, cid = plan[i]
                client = by_cid[cid]
                self.fan_late_ns.append(now - due)
                if client.alive:
                    client.transport.send(text, chat_frame(chat_text(i, due, size)))
                    self.fan_sent += 1
                    self.fan_sent_measured += 1
                i += 1
                now = time.monotonic_ns()
            state["next"] = i
            if i >= len(plan):
                self.fan_done = True
                return
            self._timer = loop.call_later(max(0.0, (plan[i][0] - now) / 1e9), tick)

        if plan:
            self._timer = loop.call_later(max(0.0, (plan[0][0] - time.monotonic_ns()) / 1e9),
                                          tick)
        return {"planned": len(plan), "unconnected": len(sends) - len(plan)}

    def op_socknames(self) -> list[tuple[int, str]]:
        """(cid, "ip:port") of each connection's local end: the server sees it as the peer."""
        out = []
        for c in self.clients:
            if c.transport is None:
                continue
            name = c.transport.underlying_transport.get_extra_info("sockname")
            if name:
                out.append((c.cid, f"{name[0]}:{name[1]}"))
        return out

    def op_rss(self) -> int:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _start_receiver(self, warm: int) -> None:
        """Hands every open connection's socket to the compiled receiver for the measurement
        (bench/fastrecv.pyx says why); picows stops reading them until ``_stop_receiver``."""
        from bench.fastrecv import Receiver  # noqa: PLC0415  (built by make setup)

        clients, fds, tags = [], [], []
        tag_ids: dict[str, int] = {}
        for c in self.clients:
            under = c.transport.underlying_transport if c.transport is not None else None
            sock = under.get_extra_info("socket") if under is not None else None
            if under is None or not c.alive or under.is_closing() or sock is None \
                    or sock.fileno() < 0:
                continue
            clients.append(c)
            fds.append(sock.fileno())
            tags.append(tag_ids.setdefault(c.tag, len(tag_ids) + 1) if c.tag else 0)
        receiver = Receiver(fds, tags, warm, 1 << 16)  # before pausing: it may raise
        for c in clients:
            c.transport.underlying_transport.pause_reading()
        self.receiver, self.receiver_clients, self.receiver_tags = receiver, clients, tag_ids
        # runs until stopped (the coordinator decides when every delivery arrived)
        self.receiver_thread = threading.Thread(target=receiver.run, args=(1 << 62, 3600.0),
                                                daemon=True, name="fastrecv")
        self.receiver_thread.start()

    def _stop_receiver(self) -> dict[str, int]:
        """Stops the receiver, keeps what it measured, gives the sockets back to picows (with
        the unfinished frame the receiver held, and a PONG for the last PING it read)."""
        from server.front import feed  # noqa: PLC0415  (how roomcast hands bytes to picows)

        receiver = self.receiver
        if receiver is None:
            return {}
        receiver.stop()
        self.receiver_thread.join()
        self.receiver = None
        self.latencies = array("q", receiver.latencies())
        self.latency_ids = array("i", receiver.ids())
        for tag, n in self.receiver_tags.items():
            self.tag_latencies[tag] = array("q", receiver.latencies(n))
        self.measured = receiver.measured
        self.warm_received = receiver.warm_received
        self.receiver_errors += receiver.errors
        if receiver.last_close_code:
            self.receiver_close_codes.add(receiver.last_close_code)
        for i, c in enumerate(self.receiver_clients):
            under = c.transport.underlying_transport
            feed(under.get_protocol(), receiver.unread(i))
            under.resume_reading()
            ping = receiver.ping_payload(i)
            if ping is not None and c.alive:
                c.transport.send_pong(ping)
        # a connection closed while the receiver read it is seen by picows (EOF) on resuming
        return {"receiver_closed": receiver.closed, "receiver_malformed": receiver.malformed,
                "receiver_cpu_s": receiver.cpu_ns / 1e9, "receiver_frames": receiver.frames}

    def op_fanout_collect(self) -> dict[str, Any]:
        receiver = self._stop_receiver()
        late = sorted(self.fan_late_ns)
        return {
            **receiver,
            "latencies_ns": self.latencies.tobytes(),
            "latency_ids": self.latency_ids.tobytes(),
            "tag_latencies_ns": {t: a.tobytes() for t, a in self.tag_latencies.items()},
            "measured": self.measured,
            "warm_received": self.warm_received,
            "sent": self.fan_sent,
            "sent_measured": self.fan_sent_measured,
            "late_p99_ns": late[int(0.99 * (len(late) - 1))] if late else 0,
            "late_max_ns": late[-1] if late else 0,
            "late_first_ns": self.fan_late_ns[:12],
        }

    # ---- saturate (closed loop)

    def op_saturate_start(
        self,
        *,
        rooms: list[tuple[int, list[int]]],
        depth: int,
        size: int,
        start_ns: int,
        marks: dict[str, int],
    ) -> dict[str, Any]:
        from picows import WSMsgType  # noqa: PLC0415

        by_cid = {c.cid: c for c in self.clients}
        self.sat_rooms = []
        self.snapshots = {}
        for publisher, members in rooms:
            room = _SatRoom(by_cid[publisher], len(members), depth, size, WSMsgType.TEXT)
            for cid in members:
                by_cid[cid].sat = room
                by_cid[cid].sat_count = 0
            self.sat_rooms.append(room)
        self.on_chat = None
        loop = asyncio.get_running_loop()

        def begin() -> None:
            for room in self.sat_rooms:
                room.running = True
                for _ in range(room.depth):
                    room.send_next()

        def snap(name: str) -> None:
            self.snapshots[name] = {
                "ns": time.monotonic_ns(),
                "receipts": sum(r.receipts for r in self.sat_rooms),
                "completed": sum(r.completed for r in self.sat_rooms),
            }

        loop.call_later(max(0.0, (start_ns - time.monotonic_ns()) / 1e9), begin)
        for name, at_ns in marks.items():
            loop.call_later(max(0.0, (at_ns - time.monotonic_ns()) / 1e9), snap, name)
        return {"rooms": len(self.sat_rooms)}

    def op_saturate_stop(self) -> dict[str, Any]:
        for room in self.sat_rooms:
            room.running = False
        return {}

    def op_saturate_collect(self) -> dict[str, Any]:
        return {
            "snapshots": self.snapshots,
            "receipts": sum(r.receipts for r in self.sat_rooms),
            "sent": sum(r.sent for r in self.sat_rooms),
            "expected": sum(r.sent * r.members for r in self.sat_rooms),
            "completed": sum(r.completed for r in self.sat_rooms),
        }

    def op_close_all(self) -> dict[str, Any]:
        for c in self.clients:
            if c.transport is not None:
                c.transport.disconnect(graceful=False)
        self.clients = []
        return {}


async def _serve(conn: Connection, index: int) -> None:
    worker = Worker(index)
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[Any] = asyncio.Queue()
    loop.add_reader(conn.fileno(), lambda: inbox.put_nowait(_recv(conn)))
    # the event loop makes the fd non-blocking; replies (latency samples) can be far larger
    # than the pipe buffer and must be written whole
    os.set_blocking(conn.fileno(), True)
    while True:
        cmd = await inbox.get()
        if cmd is None or cmd["op"] == "exit":
            break
        try:
            method = getattr(worker, "op_" + cmd["op"])
            result = method(**cmd.get("args", {}))
            if asyncio.iscoroutine(result):
                result = await result
            conn.send({"ok": True, "result": result})
        except Exception:
            conn.send({"ok": False, "error": traceback.format_exc()})
    loop.remove_reader(conn.fileno())
    worker.op_close_all()


def _recv(conn: Connection) -> Any:
    try:
        return conn.recv()
    except EOFError:
        return None


def worker_main(conn: Connection, index: int, cpus: list[int], nice: int = 0) -> None:
    import resource  # noqa: PLC0415

    import uvloop  # noqa: PLC0415

    # each driver process holds at most MAX_CONNS_PER_WORKER sockets: make room for them
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = MAX_CONNS_PER_WORKER + 1_000
    if soft < want:
        with contextlib.suppress(ValueError, OSError):
            limit = want if hard == resource.RLIM_INFINITY else min(want, hard)
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))

    if nice:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, 0, nice)
    if cpus:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, cpus)
    logging.getLogger("picows").setLevel(logging.WARNING)
    uvloop.run(_serve(conn, index))
    conn.close()


# --------------------------------------------------------------------------- coordinator side


class DriverError(RuntimeError):
    pass


class StatsCheck(Protocol):
    """``DriverPool.wait_for``'s test of the summed stats.

    A protocol rather than a ``Callable``: mypy cannot infer a lambda with an extra defaulted
    parameter (``lambda s, t=target: ...``, which binds a loop value) from a ``Callable`` context.
    """

    def __call__(self, s: dict[str, Any], /) -> bool: ...


class DriverPool:
    """N worker processes; ``call`` sends one command to each and gathers the answers."""

    def __init__(self, workers: int, cpus: list[int], nice: int = 0) -> None:
        ctx = mp.get_context("spawn")
        self.conns: list[Connection] = []
        self.procs: list[Any] = []
        for i in range(workers):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=worker_main, args=(child, i, cpus, nice),
                               daemon=True)
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)

    def __len__(self) -> int:
        return len(self.conns)

    def __enter__(self) -> DriverPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(
        self, op: str, args: list[dict[str, Any]] | dict[str, Any] | None = None,
        timeout: float = 120.0,
    ) -> list[Any]:
        self.send(op, args)
        return self.gather(op, timeout)

    def send(self, op: str, args: list[dict[str, Any]] | dict[str, Any] | None = None) -> None:
        """The first half of ``call``: the command goes out, the answers wait for ``gather``
        (so that the coordinator can do something while the workers work)."""
        per = args if isinstance(args, list) else [args or {}] * len(self.conns)
        for conn, a in zip(self.conns, per, strict=True):
            conn.send({"op": op, "args": a})

    def gather(self, op: str, timeout: float = 120.0) -> list[Any]:
        out = []
        deadline = time.monotonic() + timeout
        for i, conn in enumerate(self.conns):
            if not conn.poll(max(0.0, deadline - time.monotonic())):
                raise DriverError(f"driver worker {i} did not answer {op!r} within {timeout} s")
            reply = conn.recv()
            if not reply["ok"]:
                raise DriverError(f"driver worker {i} failed in {op!r}:\n{reply['error']}")
            out.append(reply["result"])
        return out

    def stats(self) -> dict[str, Any]:
        total: dict[str, Any] = {}
        for s in self.call("stats", timeout=30):
            for key, value in s.items():
                if isinstance(value, bool):
                    total[key] = total.get(key, True) and value
                elif isinstance(value, list):
                    total[key] = sorted(set(total.get(key, [])) | set(value))
                else:
                    total[key] = total.get(key, 0) + value
        return total

    def wait_for(
        self,
        done: StatsCheck,
        timeout: float,
        stall: float | None = None,
        key: str = "frames",
        interval: float = 0.05,
    ) -> tuple[bool, dict[str, Any]]:
        """Polls stats until ``done`` (True), the deadline, or ``key`` stalls for ``stall`` s."""
        deadline = time.monotonic() + timeout
        last_value, last_change = None, time.monotonic()
        while True:
            s = self.stats()
            if done(s):
                return True, s
            now = time.monotonic()
            if s.get(key) != last_value:
                last_value, last_change = s.get(key), now
            if now >= deadline or (stall is not None and now - last_change >= stall):
                return False, s
            time.sleep(interval)

    def close(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(OSError, BrokenPipeError):
                conn.send({"op": "exit"})
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        for conn in self.conns:
            conn.close()
        self.conns = []
        self.procs = []


def workers_for(connections: int, driver_cpus: list[int],
                per_process: int = MAX_CONNS_PER_WORKER) -> int:
    """Enough processes for the fd limit, and at least one per driver CPU (when there is load)."""
    return max(math.ceil(connections / per_process), min(len(driver_cpus), 4), 1)


class AddressPool:
    """Hands out source addresses 127.0.0.2..127.0.0.254 round-robin across runs, so that one
    address never carries more than CONNS_PER_SOURCE_ADDRESS connections of one run and the
    TIME_WAIT sockets of earlier runs do not exhaust its ephemeral ports."""

    def __init__(self) -> None:
        # start somewhere different in each bench process, so that a run right after another
        # does not begin on the addresses whose ports the last one left in TIME_WAIT
        self._next = 2 + os.getpid() % 253

    def take(self, connections: int, per_address: int = CONNS_PER_SOURCE_ADDRESS) -> list[str]:
        n = max(1, math.ceil(connections / per_address))
        out = []
        for _ in range(n):
            out.append(f"127.0.0.{self._next}")
            self._next = 2 if self._next >= 254 else self._next + 1
        return out
