"""The real server process over real sockets."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import socket
import urllib.error
import urllib.request

import pytest
import websockets

from tests.conftest import Launch
from tests.rawws import BINARY, CLOSE, CONTINUATION, PING, PONG, TEXT, RawClient
from tests.support import ServerProcess, rss_kib

pytestmark = pytest.mark.usefixtures("raw_clients")


async def joined(server: ServerProcess, name: str, room: str = "general") -> RawClient:
    client = await RawClient.connect(server.host, server.port)
    client.send_json({"type": "join", "username": name, "room": room})
    welcome = await client.recv_json()
    assert welcome["text"] == f"{name} joined #{room}", welcome
    return client


async def until(predicate_json: object, client: RawClient) -> dict[str, object]:
    """The next message for which predicate(message) holds, skipping others."""
    while True:
        message = await client.recv_json()
        if predicate_json(message):  # type: ignore[operator]
            return message  # type: ignore[no-any-return]


# ---- the seed's protocol -----------------------------------------------------------------------


async def test_two_clients_chat_with_a_stock_websocket_client(server: ServerProcess) -> None:
    async with websockets.connect(server.ws_url, open_timeout=5) as alice, websockets.connect(
        server.ws_url, open_timeout=5
    ) as bob:
        await alice.send(json.dumps({"type": "join", "username": "alice", "room": "general"}))
        first = json.loads(await asyncio.wait_for(alice.recv(), 5))
        assert first["users"] == ["alice"]
        await bob.send(json.dumps({"type": "join", "username": "bob", "room": "general"}))
        assert json.loads(await asyncio.wait_for(bob.recv(), 5))["users"] == ["alice", "bob"]
        notice = json.loads(await asyncio.wait_for(alice.recv(), 5))
        assert notice["type"] == "system" and notice["text"] == "bob joined #general"
        await bob.send(json.dumps({"type": "chat", "text": "Hello from the terminal!"}))
        for ws in (alice, bob):
            message = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert message["type"] == "chat" and message["username"] == "bob"
            assert message["text"] == "Hello from the terminal!"
            assert abs(message["timestamp"] / 1000 - __import__("time").time()) < 60


async def test_the_readme_terminal_session(server: ServerProcess) -> None:
    """The exact lines the README (and the seed) tell a user to type into wscat."""
    client = await RawClient.connect(server.host, server.port)
    watcher = await joined(server, "watcher")
    client.send_frame(TEXT, b'{"type":"join","username":"terminal-user","room":"general"}')
    welcome = await client.recv_json()
    assert welcome["text"] == "terminal-user joined #general"
    # exactly the fields the README shows, in its order
    assert list(welcome) == ["type", "text", "event", "room", "username", "count", "timestamp",
                             "users", "epoch", "seq", "max_text_length"]
    assert (welcome["count"], welcome["users"], welcome["seq"], welcome["max_text_length"]) == (
        2, ["watcher", "terminal-user"], 0, 4000)
    client.send_frame(TEXT, b'{"type":"chat","text":"Hello from the terminal!"}')
    message = await until(lambda m: m["type"] == "chat", watcher)
    assert (message["username"], message["text"]) == ("terminal-user", "Hello from the terminal!")
    own = await until(lambda m: m["type"] == "chat", client)
    assert list(own) == ["type", "username", "text", "timestamp", "seq"] and own["seq"] == 1


@pytest.mark.parametrize("how", ["leave", "close-frame", "reset"])
async def test_every_kind_of_departure_is_announced(server: ServerProcess, how: str) -> None:
    stayer = await joined(server, "stayer")
    leaver = await joined(server, "leaver")
    await until(lambda m: m.get("text") == "leaver joined #general", stayer)
    if how == "leave":
        leaver.send_json({"type": "leave"})
    elif how == "close-frame":
        leaver.send_frame(CLOSE, (1000).to_bytes(2, "big"))
    else:
        sock = leaver.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        leaver.writer.transport.abort()
    notice = await until(lambda m: m["type"] == "system", stayer)
    assert notice["text"] == "leaver left #general" and notice["count"] == 1


async def test_bad_input_over_the_wire_keeps_the_connection_usable(launch: Launch) -> None:
    server = launch("--rate-limit", "2", "--rate-window", "60")
    sender = await RawClient.connect(server.host, server.port)
    sender.send_json({"type": "chat", "text": "too early"})
    assert (await sender.recv_json())["code"] == "not_in_room"
    sender.send_json({"type": "join", "username": "sender"})
    await sender.recv_json()
    witness = await joined(server, "witness")
    await until(lambda m: m.get("text") == "witness joined #general", sender)
    bad = [
        (TEXT, b"{oops", "invalid_json"),
        (TEXT, b"[]", "invalid_message"),
        (TEXT, b'{"type":"dance"}', "unknown_type"),
        (TEXT, b'{"type":"chat","text":{"a":1}}', "invalid_message"),
        (TEXT, b'{"type":"chat","text":""}', "empty_text"),
        (TEXT, json.dumps({"type": "chat", "text": "x" * 4001}).encode(), "text_too_long"),
        (TEXT, json.dumps({"type": "join", "username": "n" * 33}).encode(), "invalid_username"),
        (TEXT, json.dumps({"type": "join", "username": "a\x00b"}).encode(), "invalid_username"),
        (TEXT, json.dumps({"type": "join", "room": "r" * 65}).encode(), "invalid_room"),
        (BINARY, b"\x00\x01", "binary_unsupported"),
    ]
    for opcode, payload, code in bad:
        sender.send_frame(opcode, payload)
        error = await sender.recv_json()
        assert (error["type"], error["code"]) == ("error", code), payload
    sender.send_json({"type": "chat", "text": "one"})
    sender.send_json({"type": "chat", "text": "two"})
    sender.send_json({"type": "chat", "text": "three"})
    got = [await sender.recv_json() for _ in range(3)]
    assert [m.get("text") for m in got if m["type"] == "chat"] == ["one", "two"]
    [limited] = [m for m in got if m["type"] == "error"]
    assert limited["code"] == "rate_limited" and limited["retry_after_ms"] > 0
    # the witness saw the two chats and nothing of the errors
    seen = [await witness.recv_json() for _ in range(2)]
    assert [m["text"] for m in seen] == ["one", "two"]
    witness.send_json({"type": "chat", "text": "ping"})
    assert (await witness.recv_json())["text"] == "ping"


# ---- WebSocket duties picows leaves to us ------------------------------------------------------


async def test_fragmented_message_with_an_interleaved_ping(server: ServerProcess) -> None:
    client = await joined(server, "frag")
    message = json.dumps({"type": "chat", "text": "assembled from pieces"}).encode()
    client.send_frame(TEXT, message[:5], fin=False)
    client.send_frame(CONTINUATION, message[5:12], fin=False)
    client.send_frame(PING, b"mid")
    client.send_frame(CONTINUATION, message[12:], fin=True)
    pong = await client.recv_frame()
    assert (pong.opcode, pong.payload) == (PONG, b"mid")
    chat = await client.recv_json()
    assert chat["text"] == "assembled from pieces"


async def test_fragmented_binary_is_refused_with_an_error(server: ServerProcess) -> None:
    client = await joined(server, "bin")
    client.send_frame(BINARY, b"ab", fin=False)
    client.send_frame(CONTINUATION, b"cd", fin=True)
    assert (await client.recv_json())["code"] == "binary_unsupported"


async def test_message_bigger_than_the_limit_over_fragments_closes_1009(launch: Launch) -> None:
    server = launch("--max-message-bytes", "1000")
    client = await joined(server, "big")
    for _ in range(3):
        client.send_frame(TEXT if _ == 0 else CONTINUATION, b"x" * 400, fin=False)
    close = await client.expect_close()
    assert close.close_code == 1009
    assert await client.wait_eof()


async def test_single_frame_bigger_than_the_limit_closes_1009(launch: Launch) -> None:
    server = launch("--max-message-bytes", "1000")
    client = await joined(server, "big")
    client.send_frame(TEXT, b"y" * 2000)
    assert (await client.expect_close()).close_code == 1009


@pytest.mark.parametrize(
    "frames",
    [
        [(CONTINUATION, b"orphan", True)],
        [(TEXT, b"{", False), (TEXT, b"{}", True)],
    ],
    ids=["continuation-without-start", "new-message-inside-fragments"],
)
async def test_fragmentation_errors_close_1002(
    server: ServerProcess, frames: list[tuple[int, bytes, bool]]
) -> None:
    client = await joined(server, "proto")
    for opcode, payload, fin in frames:
        client.send_frame(opcode, payload, fin)
    assert (await client.expect_close()).close_code == 1002


@pytest.mark.parametrize(
    "payload", [b'{"type":"chat","text":"\xff\xfe"}', b"\xc3\x28"], ids=["in-string", "bare"]
)
async def test_invalid_utf8_closes_1007_and_others_see_a_leave(
    server: ServerProcess, payload: bytes
) -> None:
    stayer = await joined(server, "stayer")
    client = await joined(server, "broken")
    client.send_frame(TEXT, payload)
    assert (await client.expect_close()).close_code == 1007
    notice = await until(lambda m: m["type"] == "system" and m["event"] == "leave", stayer)
    assert notice["username"] == "broken"


async def test_invalid_utf8_split_across_fragments_closes_1007(server: ServerProcess) -> None:
    client = await joined(server, "split")
    client.send_frame(TEXT, b'{"type":"chat","text":"\xe2\x82', fin=False)
    client.send_frame(CONTINUATION, b'"}', fin=True)
    assert (await client.expect_close()).close_code == 1007


@pytest.mark.parametrize(("sent", "echoed"), [(1000, 1000), (4321, 4321), (None, 1000)])
async def test_close_frames_are_echoed(
    server: ServerProcess, sent: int | None, echoed: int
) -> None:
    client = await joined(server, "closer")
    client.send_frame(CLOSE, b"" if sent is None else sent.to_bytes(2, "big"))
    frame = await client.expect_close()
    assert frame.close_code == echoed, "never 0, never 1005"
    assert await client.wait_eof()


async def test_server_answers_pings(server: ServerProcess) -> None:
    client = await RawClient.connect(server.host, server.port)
    client.send_frame(PING, b"are you there")
    frame = await client.recv_frame()
    assert (frame.opcode, frame.payload) == (PONG, b"are you there")


async def test_idle_clients_are_pinged_and_silent_ones_dropped(launch: Launch) -> None:
    server = launch("--ping-interval", "0.3", "--ping-timeout", "0.3")
    answering = await joined(server, "answering")
    silent = await joined(server, "silent")
    ping = await silent.recv_frame(timeout=5)
    assert ping.opcode == PING
    # `silent` never answers; `answering` does (recv_json answers pings) and sees it leave
    notice = await until(lambda m: m.get("event") == "leave", answering)
    assert notice["username"] == "silent"
    close = await silent.expect_close()
    assert close.close_code == 1001
    # the answering client is still served after several more ping rounds
    for _ in range(3):
        answering.send_json({"type": "chat", "text": "still alive"})
        assert (await answering.recv_json())["text"] == "still alive"


# ---- slow consumers -----------------------------------------------------------------------------


async def test_a_client_that_stops_reading_is_dropped_and_memory_stays_bounded(
    launch: Launch,
) -> None:
    server = launch("--rate-limit", "0", "--max-buffered-bytes", "262144")
    reader = await joined(server, "reader")
    stalled = await RawClient.connect(server.host, server.port)
    stalled.writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.send_json({"type": "join", "username": "stalled"})
    await until(lambda m: m.get("text") == "stalled joined #general", reader)
    before = rss_kib(server.proc.pid)
    text = "z" * 3900
    sent = 0
    left = None
    # 40 MB through the room; the stalled client reads nothing
    while sent < 10_000 and left is None:
        for _ in range(50):
            reader.send_json({"type": "chat", "text": text})
        sent += 50
        echoed = 0
        while echoed < 50:
            message = await reader.recv_json()
            if message.get("event") == "leave":
                left = message
            elif message["type"] == "chat":
                echoed += 1
    assert left is not None and left["username"] == "stalled", "the stalled client was dropped"
    assert sent * len(text) > 262144 * 2
    growth_kib = rss_kib(server.proc.pid) - before
    assert growth_kib < 32 * 1024, f"server grew {growth_kib} KiB"
    await asyncio.sleep(0)  # let the log line arrive
    deadline = asyncio.get_running_loop().time() + 5
    while "slow consumer" not in server.text() and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    assert "dropping slow consumer" in server.text()


# ---- plain HTTP on the same port ----------------------------------------------------------------


def http_get(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read(), response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as error:
        return error.code, error.read(), ""


def test_page_and_health_check(server: ServerProcess) -> None:
    status, body, kind = http_get(server.http_url + "/")
    assert status == 200 and b"<html" in body.lower() and kind.startswith("text/html")
    status, body, _ = http_get(server.http_url + "/?room=dev")
    assert status == 200
    assert http_get(server.http_url + "/healthz")[:2] == (200, b"ok\n")
    assert http_get(server.http_url + "/nope")[0] == 404
    assert http_get(server.http_url + "/static/../../etc/passwd")[0] == 404


# ---- process behaviour --------------------------------------------------------------------------


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 1012), (signal.SIGINT, 1001)])
async def test_signals_close_every_client_and_exit_0(
    launch: Launch, sig: signal.Signals, code: int
) -> None:
    """SIGINT: going away (1001). SIGTERM, what service managers send to restart: 1012."""
    server = launch()
    clients = [await joined(server, f"c{i}") for i in range(3)]
    server.proc.send_signal(sig)
    for client in clients:
        assert (await client.expect_close()).close_code == code
        client.send_frame(CLOSE, (1001).to_bytes(2, "big"))
    exit_code = await asyncio.wait_for(asyncio.to_thread(server.proc.wait), 10)
    assert exit_code == 0


def test_soft_fd_limit_is_raised_to_the_hard_limit(server: ServerProcess) -> None:
    with open(f"/proc/{server.proc.pid}/limits") as limits:
        line = next(x for x in limits if x.startswith("Max open files"))
    soft, hard = line.split()[3:5]
    assert soft == hard


def _tiny_fd_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (48, 48))


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def test_running_out_of_descriptors_keeps_serving_and_recovers(launch: Launch) -> None:
    server = launch("--rate-limit", "0", preexec_fn=_tiny_fd_limit)
    clients: list[RawClient] = []
    refused = None
    for i in range(60):
        try:
            clients.append(
                await asyncio.wait_for(joined(server, f"u{i}"), 1.5)
            )
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError) as exc:
            refused = exc
            break
    assert refused is not None, "the descriptor limit was never reached"
    held = len(clients)
    assert held > 10
    # existing clients are still served, and the server does not spin
    before = cpu_seconds(server.proc.pid)
    clients[0].send_json({"type": "chat", "text": "still here"})
    assert (await until(lambda m: m["type"] == "chat", clients[-1]))["text"] == "still here"
    await asyncio.sleep(1.0)  # measuring idle CPU needs wall time to pass
    assert cpu_seconds(server.proc.pid) - before < 0.5, "accept loop is spinning"
    assert "accept() failed: Too many open files" in server.text()
    assert server.text().count("accept() failed") == 1, "logged once per episode"
    # free some descriptors: the server accepts again
    for client in clients[:10]:
        await client.close()
    newcomer = await asyncio.wait_for(joined(server, "newcomer"), 10)
    newcomer.send_json({"type": "chat", "text": "made it"})
    assert (await until(lambda m: m["type"] == "chat", newcomer))["text"] == "made it"
