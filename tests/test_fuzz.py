"""A fuzz test over real sockets: thousands of random and mutated frames (and some mangled
handshakes and fragment floods) against a running server, while hoarders flood it with frames
whose replies and pongs they never read, and two well-behaved clients keep chatting.

The server must never fail (no 1011, no traceback, no exit), must refuse what is wrong with the
documented close codes, must deliver every well-behaved message, in order and on time,
throughout, and must stay within a memory bound. Reproducible: the seed is printed; set
ROOMCAST_FUZZ_SEED to replay one run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import socket
import struct
import time

from tests.conftest import Launch
from tests.rawws import CLOSE, PING, PONG, RawClient
from tests.support import ServerProcess, rss_kib, tcp_sockets

FRAMES = 3000
FUZZERS = 6
HOARDERS = 2
BUFFERED = 65536  # --max-buffered-bytes for this run
# The server may grow by this much over the whole run: the hoarders hold at most BUFFERED each
# (the kernel holds the rest), partial messages at most 4,096 bytes each; the rest is
# allocator slack (measured: about 3 MB).
RSS_BOUND_KIB = 12 * 1024
LATE = 2.0  # seconds: no well-behaved message may take longer to arrive
# The fuzzers send FRAMES however long that takes (about 11 s alone; a busy machine, the other
# xdist worker on the same 2 cores, has taken 30 s): a time budget made the frame count depend
# on the machine's load. This only stops a run that would otherwise never end.
STUCK_AFTER = 90.0  # under the suite's 120 s pytest timeout, so this message is the one seen
DOCUMENTED_CLOSES = {1000, 1001, 1002, 1007, 1009, 1012, 4000}
# What a peer may legitimately send in a CLOSE, and so what the server echoes back (RFC 6455 7.4);
# an invalid code (1005, 1006, 5000...) is answered with 1002.
ECHOABLE = set(range(1000, 1004)) | set(range(1007, 1015)) | set(range(3000, 5000))

TEMPLATES = [
    b'{"type":"join","room":"fuzz","username":"fuzzer"}',
    b'{"type":"chat","text":"hello there"}',
    b'{"type":"leave"}',
    b'{"type":"join","room":null,"username":""}',
    b'{"type":"chat","text":"\\u00e9\\ud83d\\ude00"}',
]


def mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        action = rng.randrange(5)
        if action == 0 and out:  # flip a bit
            i = rng.randrange(len(out))
            out[i] ^= 1 << rng.randrange(8)
        elif action == 1 and out:  # truncate
            del out[rng.randrange(len(out)) :]
        elif action == 2:  # insert random bytes
            i = rng.randrange(len(out) + 1)
            out[i:i] = os.urandom(rng.randint(1, 8))
        elif action == 3 and out:  # duplicate a slice
            i = rng.randrange(len(out))
            out[i:i] = out[i : i + rng.randint(1, 16)]
        else:  # swap in a hostile value
            out += rng.choice([b"\xff\xfe", b"\xed\xa0\x80", b"\x00", b'"' * 3, b"9" * 400])
    return bytes(out)


def frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    rsv: int = 0,
    masked: bool = True,
    claimed: int | None = None,
) -> bytes:
    """A client frame, optionally malformed (RSV bits, no mask, a lying length)."""
    size = len(payload) if claimed is None else claimed
    head = bytearray([(0x80 if fin else 0) | (rsv << 4) | (opcode & 0x0F)])
    mask_bit = 0x80 if masked else 0
    if size < 126:
        head.append(mask_bit | size)
    elif size < 65536:
        head.append(mask_bit | 126)
        head += struct.pack("!H", size)
    else:
        head.append(mask_bit | 127)
        head += struct.pack("!Q", size)
    if not masked:
        return bytes(head) + payload
    key = os.urandom(4)
    head += key
    return bytes(head) + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def random_frames(rng: random.Random) -> list[bytes]:
    """One 'move' of a fuzzer: usually one frame, sometimes a fragmented sequence."""
    roll = rng.random()
    if roll < 0.30:
        return [frame(0x1, mutate(rng, rng.choice(TEMPLATES)))]
    if roll < 0.40:
        return [frame(0x1, rng.choice(TEMPLATES))]  # valid traffic between the junk
    if roll < 0.50:
        return [frame(rng.choice([0x1, 0x2]), os.urandom(rng.randint(0, 200)))]
    if roll < 0.62:  # fragments, sometimes in a wrong order, sometimes with a PING inside
        payload = mutate(rng, rng.choice(TEMPLATES)) if rng.random() < 0.5 else TEMPLATES[1]
        cut = rng.randint(0, len(payload))
        first = rng.choice([0x1, 0x1, 0x1, 0x2, 0x0])
        seq = [frame(first, payload[:cut], fin=False)]
        if rng.random() < 0.3:
            seq.append(frame(PING, b"mid"))
        seq.append(frame(rng.choice([0x0, 0x0, 0x0, 0x1]), payload[cut:], fin=rng.random() < 0.9))
        return seq
    if roll < 0.70:  # any opcode, any RSV bits
        return [
            frame(
                rng.randrange(16),
                os.urandom(rng.randint(0, 130)),
                fin=rng.random() < 0.8,
                rsv=rng.randrange(8),
            )
        ]
    if roll < 0.74:  # control frames, some too long, close frames with odd codes
        kind = rng.choice([PING, PONG, CLOSE])
        if kind == CLOSE:
            code = rng.choice([1000, 1001, 1005, 1006, 999, 4999, 5000, 65535, 3000])
            return [frame(CLOSE, struct.pack("!H", code) + mutate(rng, b"bye"))]
        return [frame(kind, os.urandom(rng.choice([0, 10, 125, 126, 300])))]
    if roll < 0.76:  # a fragment flood: a message that never ends, in tiny or empty pieces
        piece = frame(0x0, rng.choice([b"", b"x", b"xy"]), fin=False)
        return [frame(0x1, b"", fin=False) + piece * rng.randint(200, 3000)]
    if roll < 0.86:
        return [frame(0x1, rng.choice(TEMPLATES), masked=False)]  # clients must mask
    if roll < 0.92:  # a length that lies: huge, or more than what follows
        claimed = rng.choice([1 << 20, 1 << 40, (1 << 63) + 5, 200])
        return [frame(0x1, b"short", claimed=claimed)]
    return [os.urandom(rng.randint(1, 64))]  # raw garbage


def mangled_handshake(rng: random.Random, host: str, port: int) -> bytes:
    request = (
        f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    choice = rng.randrange(4)
    if choice == 0:
        return mutate(rng, request)
    if choice == 1:
        return request.replace(b"13", b"8")  # unsupported version
    if choice == 2:
        return b"GET / HTTP/1.1\r\n" + b"X-Junk: " + b"a" * 20000 + b"\r\n\r\n"  # over 16 KiB
    return b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(200)) + b"\r\n"


class Fuzzer:
    def __init__(self, server: ServerProcess, rng: random.Random) -> None:
        self.server = server
        self.rng = rng
        self.client: RawClient | None = None
        self.reader_task: asyncio.Task[None] | None = None
        self.sent = 0
        self.closes: list[int | None] = []
        self.handshakes = 0

    async def _drain(self, client: RawClient) -> None:
        """Reads what the server sends until it hangs up; records its close codes."""
        with contextlib.suppress(
            asyncio.IncompleteReadError, ConnectionError, TimeoutError, AssertionError
        ):
            while True:
                got = await client.recv_frame(timeout=30)
                if got.opcode == CLOSE:
                    self.closes.append(got.close_code)

    async def _reconnect(self) -> RawClient:
        await self._drop()
        self.handshakes += 1
        client = await RawClient.connect(self.server.host, self.server.port)
        self.client = client
        self.reader_task = asyncio.create_task(self._drain(client))
        return client

    async def _drop(self) -> None:
        if self.client is not None:
            await self.client.close()
            self.client = None
        if self.reader_task is not None:
            self.reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.reader_task
            self.reader_task = None

    async def _handshake_junk(self) -> None:
        reader, writer = await asyncio.open_connection(self.server.host, self.server.port)
        try:
            writer.write(mangled_handshake(self.rng, self.server.host, self.server.port))
            with contextlib.suppress(ConnectionError, TimeoutError):
                answer = await asyncio.wait_for(reader.read(4096), 5)
                assert not answer.startswith(b"HTTP/1.1 5"), answer  # never a server error
        finally:
            writer.close()
            # wait, or the socket may outlive the test's loop and warn during a later test
            with contextlib.suppress(ConnectionError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 5)

    async def run(self, frames: int, deadline: float) -> None:
        while self.sent < frames and time.monotonic() < deadline:
            if self.rng.random() < 0.02:
                await self._handshake_junk()
                continue
            client = self.client
            if client is None or client.writer.is_closing() or self.reader_task.done():  # type: ignore[union-attr]
                client = await self._reconnect()
            for raw in random_frames(self.rng):
                client.writer.write(raw)
                self.sent += 1
            with contextlib.suppress(ConnectionError):
                await client.writer.drain()
            if self.rng.random() < 0.05:
                await self._drop()  # also abandons frames the server is still waiting on
            await asyncio.sleep(0)
        await self._drop()


HOARD_ATTEMPTS = 3
# A drain this long means the flood is stuck in TCP itself: seen with ss, the server's end had
# nothing unread while both ends sat at cwnd 1 with RTO backoff 4 and the kernel counted
# receive-queue prunes and drops (the hoarder's full, small receive buffer); about one hoarder
# in 20 here, whether the buffer is set before or after connecting.
HOARD_STALL = 10.0


async def hoard(server: ServerProcess, rng: random.Random) -> int:
    """Floods invalid frames and pings without reading a byte of the replies and pongs, until
    the server drops it; returns the close code it then reads behind what it had been sent.
    A flood that TCP stalls is tried again on a new connection, but only once the server is
    seen to have read everything that reached it (else the stall would be the server's)."""
    for _ in range(HOARD_ATTEMPTS):
        code = await _hoard_once(server, rng)
        if code is not None:
            return code
    raise AssertionError(f"{HOARD_ATTEMPTS} hoarding floods in a row stalled in TCP")


async def _hoard_once(server: ServerProcess, rng: random.Random) -> int | None:
    client = await RawClient.connect(server.host, server.port)
    client.writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    junk = frame(0x1, b"not json") * 500
    pings = frame(PING, b"p" * 125) * 250
    try:
        with contextlib.suppress(ConnectionError):
            for _ in range(400):  # 100,000+ frames to answer if nothing stopped it
                client.writer.write(rng.choice([junk, pings]))
                try:
                    await asyncio.wait_for(client.writer.drain(), HOARD_STALL)
                except TimeoutError:
                    local_port = client.writer.get_extra_info("sockname")[1]
                    unread = await server_unread_bytes(server.port, local_port)
                    assert unread == 0, f"the server left {unread} bytes of a hoarder unread"
                    return None
        return (await client.expect_close(timeout=30)).close_code or 0
    finally:
        await client.close()


async def server_unread_bytes(server_port: int, peer_port: int, within: float = 2.0) -> int:
    """0 once the server's socket for this peer holds nothing unread (polled for `within`
    seconds: a retransmitted segment may have just arrived), else what it still holds."""
    deadline = time.monotonic() + within
    while True:
        unread = _unread_now(server_port, peer_port)
        if unread == 0 or time.monotonic() > deadline:
            return unread
        await asyncio.sleep(0.05)


def _unread_now(server_port: int, peer_port: int) -> int:
    """rx_queue of the server's end of the connection."""
    for sock in tcp_sockets():
        if (sock.local_port, sock.remote_port) == (server_port, peer_port):
            return sock.rx_queue
    raise AssertionError("the server's socket for the hoarder is gone")


async def test_fuzzed_frames_never_hurt_a_well_behaved_client(launch: Launch) -> None:
    seed = int(os.environ.get("ROOMCAST_FUZZ_SEED", str(random.SystemRandom().randrange(1 << 32))))
    print(f"fuzz seed {seed}")
    # No frame budget: the hoarders must be dropped for what they do not read, and
    # tests/test_connection.py floods the budget on its own.
    server = launch(
        "--rate-limit", "0", "--max-message-bytes", "4096", "--max-buffered-bytes", str(BUFFERED),
        "--max-frames-per-second", "0",
    )
    stuck_at = time.monotonic() + STUCK_AFTER
    sender = await RawClient.connect(server.host, server.port)
    listener = await RawClient.connect(server.host, server.port)
    for client, name in ((listener, "calm-listener"), (sender, "calm-sender")):
        client.send_json({"type": "join", "room": "calm", "username": name})
    sent: list[str] = []
    received: list[str] = []
    sent_at: dict[str, float] = {}
    latest = 0.0
    await asyncio.wait_for(listener.recv_json(), 5)  # its own join: the server is serving
    before = rss_kib(server.proc.pid)
    peak = before
    fuzzers = [Fuzzer(server, random.Random(seed + i)) for i in range(FUZZERS)]
    fuzzing = asyncio.gather(
        *(f.run(FRAMES // FUZZERS + 1, stuck_at) for f in fuzzers),
        *(hoard(server, random.Random(seed - 1 - i)) for i in range(HOARDERS)),
    )

    async def drain_sender() -> None:
        with contextlib.suppress(asyncio.CancelledError):
            while True:
                await sender.recv_json(timeout=30)

    async def listen() -> None:
        while True:
            message = await listener.recv_json(timeout=10)
            if message.get("type") == "chat" and message.get("username") == "calm-sender":
                if message["text"] == "end":
                    return
                nonlocal latest
                latest = max(latest, time.monotonic() - sent_at[message["text"]])
                received.append(message["text"])

    sender_drain = asyncio.create_task(drain_sender())
    listening = asyncio.create_task(listen())
    n = 0
    try:
        while not fuzzing.done():
            n += 1
            text = f"n={n}"
            sent_at[text] = time.monotonic()
            sender.send_json({"type": "chat", "text": text})
            sent.append(text)
            await asyncio.wait({fuzzing}, timeout=0.02)
            peak = max(peak, rss_kib(server.proc.pid))
            assert time.monotonic() < stuck_at, "fuzzing is stuck"
        hoarded = (await fuzzing)[FUZZERS:]
        sender.send_json({"type": "chat", "text": "end"})
        done, _ = await asyncio.wait({listening}, timeout=10)
        assert done, f"sent {len(sent)}, received {len(received)}; server: {server.text()[-2000:]}"
        listening.result()
    finally:
        sender_drain.cancel()
        listening.cancel()
        for task in (sender_drain, listening):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    total = sum(f.sent for f in fuzzers)
    closes = [code for f in fuzzers for code in f.closes]
    print(f"{total} fuzz frames, {sum(f.handshakes for f in fuzzers)} handshakes, closes {closes}")
    assert total >= FRAMES, f"only {total} frames before the fuzzers stopped"
    assert received == sent, "a well-behaved message was lost, duplicated or reordered"
    assert len(sent) > 20
    assert latest < LATE, f"a well-behaved message took {latest:.2f} s"
    assert hoarded == [4000] * HOARDERS, hoarded  # dropped, and told why behind what it had
    growth = peak - before
    print(f"rss grew {growth} KiB at most; slowest calm message {latest:.3f} s")
    assert growth < RSS_BOUND_KIB, f"the server grew by {growth} KiB"
    assert 1009 in closes, "no fragment flood was cut off"
    assert 1011 not in closes, server.text()
    assert all(code in DOCUMENTED_CLOSES or code in ECHOABLE for code in closes if code), closes
    assert {1002, 1007} & set(closes), "the fuzzer never tripped a protocol check"
    # still healthy: a fresh client can join and chat, and the process is alive and quiet
    fresh = await RawClient.connect(server.host, server.port)
    fresh.send_json({"type": "join", "room": "after", "username": "fresh"})
    assert (await fresh.recv_json())["text"] == "fresh joined #after"
    fresh.send_json({"type": "chat", "text": "ok"})
    assert (await fresh.recv_json())["text"] == "ok"
    for client in (fresh, sender, listener):
        await client.close()
    RawClient.open_clients.clear()
    assert server.proc.poll() is None
    log = server.text()
    assert "Traceback" not in log and "internal error" not in log, log[-3000:]
    print(json.dumps({"seed": seed, "frames": total, "calm_messages": len(sent)}))


async def test_a_close_with_a_code_nobody_may_send_is_answered_1002(launch: Launch) -> None:
    """Found by the fuzzer: the server used to echo 1006 and 5000, which RFC 6455 forbids."""
    server = launch()
    try:
        for sent, answered in ((1006, 1002), (5000, 1002), (1015, 1002), (999, 1002), (4999, 4999)):
            client = await RawClient.connect(server.host, server.port)
            client.send_frame(CLOSE, struct.pack("!H", sent))
            assert (await client.expect_close()).close_code == answered, sent
            await client.close()
    finally:
        RawClient.open_clients.clear()


async def test_frames_with_reserved_bits_close_1002(launch: Launch) -> None:
    """No extension is negotiated, so RSV1-3 must be zero (RFC 6455 section 5.2)."""
    server = launch()
    try:
        # (a PING with RSV bits is answered by picows itself, before the application sees it)
        for opcode, rsv in ((0x1, 4), (0x1, 2), (0x1, 1), (0x2, 4), (0x8, 4)):
            client = await RawClient.connect(server.host, server.port)
            client.writer.write(frame(opcode, b'{"type":"leave"}', rsv=rsv))
            assert (await client.expect_close()).close_code == 1002, (opcode, rsv)
            await client.close()
    finally:
        RawClient.open_clients.clear()
