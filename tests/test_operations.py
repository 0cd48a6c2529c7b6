"""Production operation: metrics, readiness, logs, native TLS, graceful restarts."""

from __future__ import annotations

import asyncio
import json
import pathlib
import signal
import socket
import ssl
import subprocess
import sys
import urllib.request

import pytest
import websockets

from tests.conftest import Launch
from tests.rawws import RawClient, chat_until_left
from tests.support import ServerProcess, free_port, start_server

pytestmark = pytest.mark.usefixtures("raw_clients")


def scrape(server: ServerProcess) -> dict[str, float]:
    with urllib.request.urlopen(server.http_url + "/metrics", timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


async def joined(server: ServerProcess, name: str) -> RawClient:
    client = await RawClient.connect(server.host, server.port)
    client.send_json({"type": "join", "username": name})
    await client.recv_json()
    return client


async def test_metrics_count_connections_deliveries_and_errors(server: ServerProcess) -> None:
    before = scrape(server)
    assert before["roomcast_connections"] == 0
    a, b, c = [await joined(server, n) for n in "abc"]
    for client in (a, b):  # the later joins' notices
        while (await client.recv_json()).get("username") != "c":
            pass
    for n in range(5):
        a.send_json({"type": "chat", "text": f"m{n}"})
    for client in (a, b, c):
        for _ in range(5):
            assert (await client.recv_json())["type"] == "chat"
    a.send_frame(0x1, b"not json")
    assert (await a.recv_json())["code"] == "invalid_json"
    after = scrape(server)
    assert after["roomcast_connections"] == 3
    assert after["roomcast_rooms"] == 1 and after["roomcast_members"] == 3
    assert after["roomcast_chat_messages_total"] == 5
    assert after["roomcast_messages_received_total"] == 3 + 5 + 1
    assert after["roomcast_errors_sent_total"] == 1
    # 5 chats to 3 members, plus 3 join notices to the members already there (b saw c, a saw b, c)
    assert after["roomcast_deliveries_total"] == 15 + 3
    assert after["roomcast_bytes_sent_total"] > 0
    assert after["roomcast_event_loop_lag_seconds_count"] >= 0
    assert after["roomcast_fanout_flush_seconds_count"] >= 1
    # one per room flush: the 5 chats may share ticks, so at least one
    assert after['roomcast_fanout_delay_seconds_count{room_size="1-10"}'] >= 1
    assert after['roomcast_fanout_delay_seconds_count{room_size="1001+"}'] == 0
    assert after["roomcast_ready"] == 1
    assert after["process_resident_memory_bytes"] > 1e6 and after["process_open_fds"] >= 4
    for name in (
        "roomcast_slow_consumers_dropped_total",
        "roomcast_rate_limited_total",
        "roomcast_heartbeat_timeouts_total",
        "roomcast_coalesced_messages_total",
        "roomcast_writes_total",
        "roomcast_accept_exhausted_total",
    ):
        assert name in after


async def test_rate_limited_messages_are_counted(launch: Launch) -> None:
    server = launch("--rate-limit", "1", "--rate-window", "60")
    client = await joined(server, "spammer")
    for _ in range(3):
        client.send_json({"type": "chat", "text": "x"})
    codes = [(await client.recv_json()).get("code") for _ in range(3)]
    assert codes.count("rate_limited") == 2
    assert scrape(server)["roomcast_rate_limited_total"] == 2


def test_health_and_readiness(server: ServerProcess) -> None:
    for path, body in (("/healthz", b"ok\n"), ("/readyz", b"ready\n")):
        with urllib.request.urlopen(server.http_url + path, timeout=5) as response:
            assert (response.status, response.read()) == (200, body)


async def test_json_logs_one_object_per_line_and_connection_events_at_debug(
    launch: Launch,
) -> None:
    server = launch("--log-format", "json", "--log-level", "debug", "--rate-limit", "0")
    client = await joined(server, "logger")
    for _ in range(20):
        client.send_json({"type": "chat", "text": "quiet"})
    for _ in range(20):
        await client.recv_json()
    await client.close()
    server.stop(signal.SIGINT)
    lines = [line for line in server.text().splitlines() if line.startswith("{")]
    entries = [json.loads(line) for line in lines]
    assert all({"time", "level", "logger", "message"} <= e.keys() for e in entries)
    assert any(e["level"] == "debug" and "connected" in e["message"] for e in entries)
    assert not any("quiet" in e["message"] for e in entries), "never a line per message"


async def test_info_logs_do_not_grow_with_traffic(launch: Launch) -> None:
    server = launch("--rate-limit", "0")
    clients = [await joined(server, f"u{i}") for i in range(5)]
    baseline = len(server.text().splitlines())
    for _ in range(50):
        clients[0].send_json({"type": "chat", "text": "hello"})
    for _ in range(50 + 4):  # the later joins' notices, then the chats
        await clients[0].recv_json()
    for client in clients:
        await client.close()
    assert len(server.text().splitlines()) == baseline


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[pathlib.Path, pathlib.Path]:
    """A self-signed certificate for 127.0.0.1 / localhost, made with the openssl CLI."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


def client_tls(cert: pathlib.Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(cert))
    return context


async def test_native_tls_serves_wss(
    launch: Launch, certificate: tuple[pathlib.Path, pathlib.Path]
) -> None:
    cert, key = certificate
    server = launch("--certfile", str(cert), "--keyfile", str(key))
    assert "roomcast listening on https://" in server.text()
    url = f"wss://127.0.0.1:{server.port}/"
    tls = client_tls(cert)
    async with (
        websockets.connect(url, ssl=tls, open_timeout=5) as alice,
        websockets.connect(url, ssl=tls, open_timeout=5) as bob,
    ):
        await alice.send(json.dumps({"type": "join", "username": "alice"}))
        await asyncio.wait_for(alice.recv(), 5)
        await bob.send(json.dumps({"type": "join", "username": "bob"}))
        await asyncio.wait_for(bob.recv(), 5)
        await asyncio.wait_for(alice.recv(), 5)
        await alice.send(json.dumps({"type": "chat", "text": "over tls"}))
        message = json.loads(await asyncio.wait_for(bob.recv(), 5))
        assert message["text"] == "over tls"
        # A client that only listens gets every message as it comes (uvloop's TLS transport
        # pauses at its high-water mark, not above it), and 24 KB of JSON passes through a read
        # buffer trimmed to 640 bytes after the handshake (server/fastpath.pyx).
        long_text = "".join(chr(0xE0 + i % 26) for i in range(4_000))
        texts = ["one", long_text, "three", "four"]
        for text in texts:
            await alice.send(json.dumps({"type": "chat", "text": text}))
            message = json.loads(await asyncio.wait_for(bob.recv(), 5))
            assert message["text"] == text
    def fetch() -> int:
        url = f"https://127.0.0.1:{server.port}/healthz"
        with urllib.request.urlopen(url, timeout=5, context=tls) as response:
            return int(response.status)

    assert await asyncio.to_thread(fetch) == 200


async def test_a_tls_client_that_stops_reading_is_dropped_and_the_room_goes_on(
    launch: Launch, certificate: tuple[pathlib.Path, pathlib.Path]
) -> None:
    """Over native TLS the slow-consumer rule holds as over TCP: what waits behind a client that
    stopped reading is counted, and past --max-buffered-bytes it is dropped (CLOSE 4000)."""
    cert, key = certificate
    server = launch(
        "--certfile", str(cert), "--keyfile", str(key),
        "--rate-limit", "0", "--max-buffered-bytes", "262144", "--max-frames-per-second", "0",
    )
    tls = client_tls(cert)
    talker = await RawClient.connect(server.host, server.port, tls=tls)
    talker.send_json({"type": "join", "username": "talker"})
    stalled = await RawClient.connect(server.host, server.port, tls=tls)
    stalled.writer.get_extra_info("socket").setsockopt(
        socket.SOL_SOCKET, socket.SO_RCVBUF, 65536
    )
    transport = stalled.writer.transport
    assert isinstance(transport, asyncio.ReadTransport)
    transport.pause_reading()  # reads nothing from here on
    stalled.send_json({"type": "join", "username": "stalled"})
    text = "z" * 3900
    dropped = await chat_until_left(talker, "stalled", lambda n: text)  # at most 16 MB
    assert dropped is not None, "the stalled TLS client was dropped"
    assert "dropping slow consumer" in server.text()
    talker.send_json({"type": "chat", "text": "still here"})
    while (await talker.recv_json()).get("text") != "still here":
        pass


def test_bad_certificate_is_a_clear_error(tmp_path: pathlib.Path) -> None:
    bogus = tmp_path / "bogus.pem"
    bogus.write_text("not a certificate")
    with pytest.raises(RuntimeError, match=r"error: --certfile \S+: cannot load it"):
        start_server("--certfile", str(bogus), "--keyfile", str(bogus), timeout=10)


# ---- graceful restart under load ----------------------------------------------------------------


async def chatter(url: str, name: str, log: list[tuple[str, object]], stop: asyncio.Event) -> None:
    """A client that chats, and reconnects (then rejoins) when the server asks it to."""
    while not stop.is_set():
        try:
            async with websockets.connect(url, open_timeout=2) as ws:
                await ws.send(json.dumps({"type": "join", "username": name, "room": "restart"}))
                log.append(("joined", name))
                n = 0
                while not stop.is_set():
                    n += 1
                    await ws.send(json.dumps({"type": "chat", "text": f"{name}-{n}"}))
                    while True:
                        message = json.loads(await asyncio.wait_for(ws.recv(), 5))
                        if message["type"] == "chat" and message["username"] == name:
                            log.append(("echo", message["text"]))
                            break
                    await asyncio.sleep(0.02)  # a human-ish pace, not synchronisation
        except websockets.ConnectionClosed as closed:
            log.append(("closed", closed.rcvd.code if closed.rcvd else None))
        except (OSError, TimeoutError, websockets.InvalidHandshake):
            await asyncio.sleep(0.05)  # server not back yet: retry with a short backoff


async def test_graceful_restart_under_chatting_load() -> None:
    port = free_port()
    first = start_server("--rate-limit", "0", port=port)
    url = f"ws://127.0.0.1:{port}/"
    log: list[tuple[str, object]] = []
    stop = asyncio.Event()
    tasks = [asyncio.create_task(chatter(url, f"c{i}", log, stop)) for i in range(5)]
    second = None
    try:

        async def until(predicate: object, timeout: float = 10) -> None:
            async with asyncio.timeout(timeout):
                while not predicate():  # type: ignore[operator]
                    await asyncio.sleep(0.01)

        await until(lambda: sum(1 for kind, _ in log if kind == "echo") >= 25)
        first.proc.send_signal(signal.SIGTERM)
        exit_code = await asyncio.wait_for(asyncio.to_thread(first.proc.wait), 10)
        assert exit_code == 0
        closes = [value for kind, value in log if kind == "closed"]
        assert closes and set(closes) == {1012}, closes
        mark = len(log)
        second = start_server("--rate-limit", "0", port=port)
        await until(
            lambda: {v for k, v in log[mark:] if k == "joined"} == {f"c{i}" for i in range(5)}
        )
        await until(
            lambda: (
                {str(v).split("-")[0] for k, v in log[mark:] if k == "echo"}
                == {f"c{i}" for i in range(5)}
            )
        )
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
        first.stop()
        if second is not None:
            second.stop()


def test_an_ipv6_address_is_printed_in_brackets() -> None:
    """`--host ::1`: the URLs the server prints are URLs (RFC 3986), not `http://::1:8080/`."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "server", "--host", "::1", "--port", "0",
         "--metrics-listen", "[::1]:0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(2)]
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
    assert lines[0].startswith("roomcast metrics on http://[::1]:"), lines
    assert lines[1].startswith("roomcast listening on http://[::1]:"), lines
