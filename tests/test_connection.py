"""The connection adapter (server/connection.py) over real sockets: every byte written to a
client is counted, a slow consumer learns why it was dropped, and frames picows found broken
never reach the room."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import struct
import time

import pytest

from tests.conftest import Launch
from tests.rawws import (
    BINARY,
    CLOSE,
    CONTINUATION,
    PING,
    PONG,
    TEXT,
    Frame,
    RawClient,
    chat_until_left,
    encode_frame,
)
from tests.support import ServerProcess, metric, rss_kib

pytestmark = pytest.mark.usefixtures("raw_clients")

LIMIT = 262144


async def joined(server: ServerProcess, name: str, room: str = "general") -> RawClient:
    client = await RawClient.connect(server.host, server.port)
    client.send_json({"type": "join", "username": name, "room": room})
    while (await client.recv_json()).get("text") != f"{name} joined #{room}":
        pass
    return client


def stalled_socket(client: RawClient, size: int = 65536) -> None:
    """A fixed, small receive buffer, so that the server's writes back up when the client stops
    reading. The server's kernel still takes up to tcp_wmem's maximum (4 MB here) before the
    server itself holds anything, which is why these tests push several megabytes. (Much
    smaller windows make a client that reads again crawl at one window per delayed ACK.)"""
    client.writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


async def dropped(server: ServerProcess, timeout: float = 15.0) -> bool:
    """Whether the server logged a slow-consumer drop within `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while "dropping slow consumer" not in server.text():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def roundtrip(client: RawClient, text: str) -> float:
    started = time.monotonic()
    client.send_json({"type": "chat", "text": text})
    while True:
        message = await client.recv_json(timeout=10)
        if message.get("type") == "chat" and message.get("text") == text:
            return time.monotonic() - started


async def read_until_close(client: RawClient, timeout: float = 30.0) -> tuple[int, int]:
    """Reads everything the server sends until it hangs up; checks that the last frame is a
    CLOSE and returns (frames before it, its code)."""
    # what the stream already read (its private buffer: typeshed does not declare it)
    data = bytearray(client.reader._buffer)  # type: ignore[attr-defined]
    client.reader._buffer.clear()  # type: ignore[attr-defined]
    sock = client.writer.get_extra_info("socket")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        chunk = await asyncio.wait_for(client.reader.read(1 << 20), deadline - loop.time())
        if not chunk:
            break
        data += chunk
    assert sock is not None
    frames: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(data):
        opcode, size = data[pos] & 0x0F, data[pos + 1] & 0x7F
        pos += 2
        if size == 126:
            size = struct.unpack("!H", data[pos : pos + 2])[0]
            pos += 2
        elif size == 127:
            size = struct.unpack("!Q", data[pos : pos + 8])[0]
            pos += 8
        assert pos + size <= len(data), "the stream ends inside a frame"
        frames.append((opcode, bytes(data[pos : pos + size])))
        pos += size
    assert frames and frames[-1][0] == CLOSE, "the last frame is a CLOSE"
    assert all(opcode != CLOSE for opcode, _ in frames[:-1])
    return len(frames) - 1, struct.unpack("!H", frames[-1][1][:2])[0]


async def test_a_dropped_slow_consumer_reads_close_4000_as_its_last_frame(launch: Launch) -> None:
    # --ping-timeout is also the grace time a dropped client has to read its CLOSE
    server = launch(
        "--rate-limit", "0", "--max-buffered-bytes", str(LIMIT), "--ping-timeout", "60",
        "--max-frames-per-second", "0",
    )
    talker = await joined(server, "talker")
    stalled = await RawClient.connect(server.host, server.port)
    stalled_socket(stalled)
    stalled.send_json({"type": "join", "username": "stalled"})
    text = "z" * 3900
    dropped = await chat_until_left(talker, "stalled", lambda n: text)  # at most 16 MB
    assert dropped is not None, "the stalled client was dropped"
    frames, code = await read_until_close(stalled)
    assert code == 4000 and frames > 0  # what it had been sent, then why it was dropped
    assert await stalled.wait_eof()
    assert "dropping slow consumer" in server.text()


async def test_unread_error_replies_count_and_a_good_client_keeps_chatting(launch: Launch) -> None:
    # the frame budget would close the flooder first: these replies must be counted anyway
    server = launch(
        "--rate-limit", "0", "--max-buffered-bytes", str(LIMIT), "--ping-timeout", "60",
        "--max-frames-per-second", "0",
    )
    good = await joined(server, "good")
    flooder = await RawClient.connect(server.host, server.port)
    stalled_socket(flooder)
    before = rss_kib(server.proc.pid)
    junk = encode_frame(TEXT, b"not json") * 1000
    slowest = 0.0
    with contextlib.suppress(ConnectionError):
        for batch in range(300):  # 300,000 error replies (~20 MB) if nothing stopped it
            flooder.writer.write(junk)
            await flooder.writer.drain()
            if batch % 30 == 0:
                slowest = max(slowest, await roundtrip(good, f"still here {batch}"))
            if "dropping slow consumer" in server.text():
                break
    assert await dropped(server)
    growth = rss_kib(server.proc.pid) - before
    assert growth < 4 * 1024, f"server grew {growth} KiB"
    assert slowest < 2.0, f"a well-behaved client waited {slowest:.2f} s"
    frames, code = await read_until_close(flooder)
    assert code == 4000 and frames > 0


async def test_pongs_are_counted_like_any_other_write(launch: Launch) -> None:
    server = launch(
        "--rate-limit", "0", "--max-buffered-bytes", str(LIMIT), "--max-frames-per-second", "0"
    )
    good = await joined(server, "good")
    flooder = await RawClient.connect(server.host, server.port)
    stalled_socket(flooder)
    before = rss_kib(server.proc.pid)
    pings = encode_frame(PING, b"p" * 125) * 500
    slowest = 0.0
    with contextlib.suppress(ConnectionError):
        for batch in range(200):  # 100,000 pongs of 127 bytes (12.7 MB) if nothing stopped it
            flooder.writer.write(pings)
            await flooder.writer.drain()
            if batch % 20 == 0:
                slowest = max(slowest, await roundtrip(good, f"still here {batch}"))
            if "dropping slow consumer" in server.text():
                break
    assert await dropped(server)
    growth = rss_kib(server.proc.pid) - before
    assert growth < 4 * 1024, f"server grew {growth} KiB"
    assert slowest < 2.0, f"a well-behaved client waited {slowest:.2f} s"
    frames, code = await read_until_close(flooder)
    assert code == 4000 and frames > 0


async def test_a_dropped_client_that_never_reads_is_cut_off_after_the_grace_time(
    launch: Launch,
) -> None:
    # --ping-timeout is the grace time; the heartbeat (30 s) cannot be what ends it
    server = launch(
        "--rate-limit", "0", "--max-buffered-bytes", str(LIMIT), "--ping-timeout", "1",
        "--max-frames-per-second", "0",
    )
    talker = await joined(server, "talker")
    stalled = await RawClient.connect(server.host, server.port)
    stalled_socket(stalled)
    stalled.send_json({"type": "join", "username": "stalled"})
    assert await chat_until_left(talker, "stalled", lambda n: "z" * 3900) is not None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while "did not hang up within the grace time" not in server.text():
        assert loop.time() < deadline, "the unread connection was never aborted"
        await asyncio.sleep(0.05)
    assert await stalled.wait_eof()  # reset or closed: the server no longer holds it


async def test_two_close_frames_in_one_segment_get_one_clean_answer(server: ServerProcess) -> None:
    client = await RawClient.connect(server.host, server.port)
    close = encode_frame(CLOSE, struct.pack("!H", 1000) + b"bye")
    client.writer.write(close + close)
    frame = await client.expect_close()
    assert frame.close_code == 1000
    assert await client.wait_eof()


async def test_a_close_carrying_code_0_is_a_protocol_error(server: ServerProcess) -> None:
    client = await RawClient.connect(server.host, server.port)
    client.send_frame(CLOSE, struct.pack("!H", 0))
    assert (await client.expect_close()).close_code == 1002
    empty = await RawClient.connect(server.host, server.port)
    empty.send_frame(CLOSE, b"")  # no code at all: a normal close
    assert (await empty.expect_close()).close_code == 1000


async def test_an_oversized_frame_and_what_follows_never_reach_the_room(launch: Launch) -> None:
    server = launch("--rate-limit", "0", "--max-message-bytes", "1024")
    watcher = await joined(server, "watcher")
    sender = await joined(server, "sender")
    await watcher.recv_json()  # sender's join notice
    padded = json.dumps({"type": "chat", "text": "big", "pad": "x" * 1100}).encode()
    sender.writer.write(
        encode_frame(TEXT, padded) + encode_frame(TEXT, b'{"type":"chat","text":"after"}')
    )
    assert (await sender.expect_close()).close_code == 1009
    watcher.send_json({"type": "chat", "text": "mine"})
    seen = []
    while True:
        message = await watcher.recv_json()
        seen.append(message.get("text"))
        if message.get("text") == "mine":
            break
    assert seen == ["sender left #general", "mine"]


# A frame picows refuses itself (it sends the CLOSE), and the close code it sends.
protocol_errors = pytest.mark.parametrize(
    ("bad_frame", "code"),
    [(encode_frame(TEXT, b"x" * 5000), 1009), (encode_frame(3, b""), 1002)],
    ids=["oversized", "reserved-opcode"],
)


@protocol_errors
async def test_a_chat_sent_just_before_a_protocol_error_still_reaches_the_room(
    launch: Launch, bad_frame: bytes, code: int
) -> None:
    """picows parses one frame ahead: it raises on the bad frame, sends its CLOSE, and only then
    hands over the frame in front of it. That frame was sent before the error and was dropped."""
    server = launch("--rate-limit", "0", "--max-message-bytes", "4096")
    watcher = await joined(server, "watcher")
    sender = await joined(server, "sender")
    await watcher.recv_json()  # sender's join notice
    before = encode_frame(TEXT, b'{"type":"chat","text":"before"}')
    after = encode_frame(TEXT, b'{"type":"chat","text":"after"}')
    sender.writer.write(before + bad_frame + after)
    assert (await sender.expect_close()).close_code == code
    texts = [(await watcher.recv_json())["text"] for _ in range(2)]
    assert texts == ["before", "sender left #general"]
    watcher.send_json({"type": "chat", "text": "mine"})
    assert (await watcher.recv_json())["text"] == "mine"  # nothing from after the error


@protocol_errors
async def test_a_protocol_error_ends_a_connection_whose_writes_queue(
    launch: Launch, bad_frame: bytes, code: int
) -> None:
    """Before: picows's CLOSE was queued behind a backed-up client's data like any frame, the
    member stayed in the room (room traffic queued after the CLOSE) until a heartbeat timeout."""
    server = launch(
        "--rate-limit", "0", "--max-frames-per-second", "0", "--max-message-bytes", "4096",
        "--max-buffered-bytes", str(64 << 20), "--ping-timeout", "60",
    )
    watcher = await joined(server, "watcher")
    attacker = await RawClient.connect(server.host, server.port)
    stalled_socket(attacker)
    attacker.send_json({"type": "join", "username": "attacker"})
    assert (await watcher.recv_json())["text"] == "attacker joined #general"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while metric(server, "roomcast_slow_consumers_watched") < 1:  # its writes now queue
        assert loop.time() < deadline, "the attacker's writes never backed up"
        for _ in range(200):
            watcher.send_json({"type": "chat", "text": "y" * 3900})
        await roundtrip(watcher, "tick")
    attacker.writer.write(bad_frame + encode_frame(TEXT, b'{"type":"chat","text":"after"}'))
    while (message := await watcher.recv_json(timeout=5)).get("event") != "leave":
        assert message.get("text") != "after"
    assert message["text"] == "attacker left #general"  # at once, not at a heartbeat timeout
    assert "heartbeat timeout" not in server.text()
    # everything queued, then the CLOSE as the last frame: no room traffic after it
    frames, close_code = await read_until_close(attacker)
    assert close_code == code and frames > 0


async def test_memory_of_a_slow_client_stays_bounded_whatever_the_room_sends(
    launch: Launch,
) -> None:
    # the talker sends 2,200 frames as fast as the loop takes them: past the default frame budget
    server = launch(
        "--rate-limit", "0", "--max-buffered-bytes", str(LIMIT), "--max-frames-per-second", "0"
    )
    talker = await joined(server, "talker")
    quiet = [await RawClient.connect(server.host, server.port) for _ in range(20)]
    for index, client in enumerate(quiet):
        stalled_socket(client)
        client.send_json({"type": "join", "username": f"q{index}"})
    await asyncio.wait_for(roundtrip(talker, "ready"), 10)
    before = rss_kib(server.proc.pid)
    for _ in range(200):  # 8 MB for each of them: past what the kernel takes, then dropped
        for _ in range(10):
            talker.send_json({"type": "chat", "text": "y" * 3900})
        await roundtrip(talker, "tick")
    growth = rss_kib(server.proc.pid) - before
    # 20 stalled clients hold at most the limit each in the server (the kernel holds the rest)
    assert growth < 20 * LIMIT * 2 // 1024 + 8 * 1024, f"server grew {growth} KiB"
    assert server.text().count("dropping slow consumer") == 20


async def flood(client: RawClient, blob: bytes, times: int) -> Frame:
    """Writes `blob` `times` times, as fast as the server reads, reading meanwhile: returns the
    CLOSE the server ends it with (the server stops reading a flooder, so a write would wait)."""
    closed = asyncio.ensure_future(client.expect_close(timeout=30))
    with contextlib.suppress(ConnectionError):
        for _ in range(times):
            client.writer.write(blob)
            drained = asyncio.ensure_future(client.writer.drain())
            await asyncio.wait({drained, closed}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
            drained.cancel()
            if closed.done():
                break
    frame = await closed
    # The server reads nothing more from a flooder, so not its FIN either: it aborts the
    # connection after the grace time. A test need not wait for that.
    client.writer.transport.abort()
    return frame


async def test_tiny_frame_floods_are_cut_off_and_a_calm_client_keeps_chatting(
    launch: Launch,
) -> None:
    """Floods of frames a few bytes long (junk, chats, pings, pongs): each costs a callback
    whatever it says, and before the frame budget 20 such connections delayed a calm client's
    round trip by 5-10 s (each of their reads held hundreds of thousands of frames)."""
    # the default --max-frames-per-second (2000); a flooder, whose FIN the server does not read,
    # is aborted after --ping-timeout: not 10 s, so that the server stops at once
    server = launch("--rate-limit", "0", "--ping-timeout", "1")
    good = await joined(server, "good")
    before = rss_kib(server.proc.pid)
    chatter = await joined(server, "chatter", room="flood")
    flooders = [chatter] + [await RawClient.connect(server.host, server.port) for _ in range(7)]
    kinds = [
        encode_frame(TEXT, b'{"type":"chat","text":"x"}'),
        encode_frame(TEXT, b"not json"),
        encode_frame(PING, b""),
        encode_frame(PONG, b"p"),
        encode_frame(BINARY, b"b"),
        encode_frame(TEXT, b"{}"),
        encode_frame(PING, b"p" * 125),
        encode_frame(TEXT, b'{"type":"typing"}'),
    ]
    floods = asyncio.gather(
        *(flood(client, kind * 5000, 200) for client, kind in zip(flooders, kinds, strict=True))
    )  # a million frames each if nothing stopped them
    slowest = 0.0
    n = 0
    while not floods.done():
        n += 1
        slowest = max(slowest, await roundtrip(good, f"during the floods {n}"))
        await asyncio.wait({floods}, timeout=0.02)
    for frame in await floods:
        assert (frame.close_code, frame.payload[2:]) == (1008, b"too many frames")
    assert slowest < 2.0, f"a well-behaved client waited {slowest:.2f} s"
    growth = rss_kib(server.proc.pid) - before
    assert growth < 8 * 1024, f"server grew {growth} KiB"
    assert metric(server, "roomcast_frame_floods_total") == len(flooders)
    assert server.text().count("frames in under a second > --max-frames-per-second") == 8


@pytest.mark.parametrize(
    "trigger",
    [bytes([0x80 | 0x40 | TEXT]) + encode_frame(TEXT, b"x")[1:], encode_frame(TEXT, b"\xff")],
    ids=["reserved-bit", "invalid-utf8"],
)
async def test_frames_after_the_servers_close_still_count_against_the_budget(
    launch: Launch, trigger: bytes
) -> None:
    """One bad frame makes the server close (1002, 1007) and read on for the grace time, for
    the peer's answer. Before: the frames read meanwhile were not counted, so 20 connections
    each sending one bad byte and then pings held a calm client's round trip at 0.8-2.3 s and
    grew the server by 50 MB, with no flood ever counted."""
    server = launch("--rate-limit", "0", "--ping-timeout", "60")
    good = await joined(server, "good")
    flooders = [await RawClient.connect(server.host, server.port) for _ in range(8)]
    pings = encode_frame(PING, b"") * 5000

    async def bad_then_pings(client: RawClient) -> int:
        client.writer.write(trigger)
        with contextlib.suppress(ConnectionError):
            for _ in range(200):  # a million frames if nothing stopped them
                client.writer.write(pings)
                await asyncio.wait_for(client.writer.drain(), 30)
        try:
            return int(await client.wait_eof())
        except ConnectionError:  # aborted while our writes were in flight: cut off all the same
            return 1

    floods = asyncio.gather(*(bad_then_pings(client) for client in flooders))
    slowest = 0.0
    n = 0
    while not floods.done():
        n += 1
        slowest = max(slowest, await roundtrip(good, f"during the floods {n}"))
        await asyncio.wait({floods}, timeout=0.02)
    assert await floods == [1] * len(flooders)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while metric(server, "roomcast_connections") > 1:  # let go, long before the 60 s grace
        assert loop.time() < deadline, "the flooders were held for the grace time"
        await asyncio.sleep(0.05)
    assert slowest < 2.0, f"a well-behaved client waited {slowest:.2f} s"
    assert metric(server, "roomcast_frame_floods_total") == len(flooders)
    assert server.text().count("aborting") >= len(flooders)


async def test_a_flood_closed_client_is_let_go_after_a_second_not_after_the_ping_timeout(
    launch: Launch,
) -> None:
    """A flooder is no longer read, so its answer to the 1008 is never seen: it is aborted a
    second after its CLOSE instead of holding its descriptor for --ping-timeout, and a shutdown
    right after it does not wait --shutdown-timeout for it."""
    server = launch(
        "--max-frames-per-second", "100", "--ping-timeout", "60", "--shutdown-timeout", "30"
    )
    client = await RawClient.connect(server.host, server.port)
    for i in range(150):
        client.send_frame(PING, b"%d" % i)
    frame = await client.expect_close()
    assert (frame.close_code, frame.payload[2:]) == (1008, b"too many frames")
    client.send_frame(CLOSE, struct.pack("!H", 1000))  # a polite answer, never read
    server.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(asyncio.to_thread(server.proc.wait), 10) == 0
    assert "did not hang up within the grace time" in server.text()
    assert "drain timed out" not in server.text()
    assert await client.wait_eof()


async def test_a_client_under_the_frame_budget_is_never_closed(launch: Launch) -> None:
    """Frames are counted in runs of --max-frames-per-second: a run that lasts a second or more
    is fine, a run that ends sooner closes with 1008. Pings count like any frame."""
    server = launch("--max-frames-per-second", "20", "--ping-timeout", "1")
    client = await RawClient.connect(server.host, server.port)
    started = time.monotonic()
    for i in range(19):  # the first run: 19 frames at once...
        client.send_frame(PING, b"%d" % i)
    for i in range(19):
        assert (await client.recv_frame()).payload == b"%d" % i
    await asyncio.sleep(max(0.0, started + 1.1 - time.monotonic()))
    for i in range(19):  # ...and its 20th more than a second after it began: a new run
        client.send_frame(PING, b"again %d" % i)
    for i in range(19):
        assert (await client.recv_frame()).payload == b"again %d" % i
    for i in range(2):  # the new run's 19th and 20th frames, well within its second
        client.send_frame(PING, b"last %d" % i)
    assert (await client.recv_frame()).payload == b"last 0"
    frame = await client.expect_close()
    assert (frame.close_code, frame.payload[2:]) == (1008, b"too many frames")
    client.writer.transport.abort()  # (it would not hear our FIN: see flood())


async def test_fragment_floods_are_cut_off_and_cost_little(launch: Launch) -> None:
    """One connection sends a TEXT frame without FIN and then empty CONTINUATION frames without
    end (it took the server from 51 to 406 MB before the frame cap); 50 others park partial
    messages in 2-byte fragments up to the frame cap (an object per fragment made such a message
    cost about 30x its bytes before it became one buffer), then 50 more park 65,280-byte partial
    messages in 64-byte fragments, the most the two caps let through. A well-behaved client
    chats throughout."""
    server = launch("--rate-limit", "0")
    good = await joined(server, "good")
    before = rss_kib(server.proc.pid)
    flooder = await RawClient.connect(server.host, server.port)
    empties = encode_frame(CONTINUATION, b"", fin=False) * 10_000
    flooder.writer.write(encode_frame(TEXT, b"", fin=False))
    # read while writing: frames flooded after the server's CLOSE count against the frame
    # budget too, and then the server stops reading (a write would wait) and aborts
    closed = asyncio.ensure_future(flooder.expect_close(timeout=30))
    slowest = 0.0
    with contextlib.suppress(ConnectionError):
        for batch in range(100):  # a million empty frames if nothing stopped it
            flooder.writer.write(empties)
            drained = asyncio.ensure_future(flooder.writer.drain())
            await asyncio.wait({drained, closed}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
            drained.cancel()
            if closed.done():
                break
            if batch % 10 == 0:
                slowest = max(slowest, await roundtrip(good, f"during the flood {batch}"))
    assert slowest < 2.0, f"a well-behaved client waited {slowest:.2f} s"
    frame = await closed
    flooder.writer.transport.abort()
    assert frame.close_code == 1009 and b"fragments" in frame.payload
    parkers = [await RawClient.connect(server.host, server.port) for _ in range(50)]
    piece = encode_frame(CONTINUATION, b"xy", fin=False)
    for parker in parkers:
        parker.writer.write(encode_frame(TEXT, b"xy", fin=False) + piece * 1023)  # 1,024 frames
        await parker.writer.drain()
    assert await roundtrip(good, "still chatting") < 2.0
    growth = rss_kib(server.proc.pid) - before
    # 50 partial messages of 2 KB and their bookkeeping (measured ~1 MB); before the fix ~50 x 90 KB
    assert growth < 4 * 1024, f"server grew {growth} KiB"
    for parker in parkers:  # the 1,025th frame of a message ends it
        parker.writer.write(piece)
    for parker in parkers[:5]:
        assert (await parker.expect_close()).close_code == 1009
    before = rss_kib(server.proc.pid)
    fullest = [await RawClient.connect(server.host, server.port) for _ in range(50)]
    piece = encode_frame(CONTINUATION, b"x" * 64, fin=False)
    for parker in fullest:
        parker.writer.write(encode_frame(TEXT, b"x" * 64, fin=False) + piece * 1019)
        await parker.writer.drain()
    assert await roundtrip(good, "still chatting") < 2.0
    growth = rss_kib(server.proc.pid) - before
    # 50 x 65,280 bytes parked is 3.1 MiB; measured +4.6 MiB with the connections themselves
    assert growth < 10 * 1024, f"server grew {growth} KiB"


async def test_deeply_nested_json_gets_an_error_and_the_connection_stays_usable(
    server: ServerProcess,
) -> None:
    client = await joined(server, "nester")
    client.send_frame(TEXT, b'{"type":"chat","text":"x","a":' + b"[" * 5000 + b"]" * 5000 + b"}")
    error = await client.recv_json()
    assert error["type"] == "error" and error["code"] == "invalid_message"
    assert await roundtrip(client, "still usable") < 5.0
    assert "Traceback" not in server.text() and "RecursionError" not in server.text()
    assert metric(server, "roomcast_errors_sent_total") == 1  # counted as the peer's error
