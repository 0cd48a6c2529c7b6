"""The HTTP front (server/front.py, server/http1.py): what every connection meets first.

Pure parsing and rendering without sockets, then over real sockets: health checks as load
balancers send them, refusals that are 4xx and never a traceback, unfinished requests counted
against --max-connections-per-ip, and a browser-sized handshake that picows never sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import os

import pytest

from server.front import Front
from server.http1 import (
    MAX_HEAD_BYTES,
    HttpError,
    head_end,
    parse_head,
    render,
    upgrade_for_picows,
)
from tests.conftest import Launch
from tests.handshake import upgrade
from tests.rawws import RawClient
from tests.support import ServerProcess, free_port

UPGRADE = (
    b"GET /chat?token=t HTTP/1.1\r\nHost: h:1\r\nUpgrade: websocket\r\n"
    b"Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\nCookie: " + b"c=" + b"x" * 1500 + b"\r\n"
    b"User-Agent: Mozilla/5.0\r\nSec-WebSocket-Protocol: roomcast.jwt, abc\r\n\r\n"
)

# ---- pure -------------------------------------------------------------------------------------


def test_a_request_head_is_parsed_case_insensitively_in_latin_1() -> None:
    request = parse_head(UPGRADE)
    assert (request.method, request.target, request.path) == ("GET", "/chat?token=t", "/chat")
    assert request.is_upgrade and request.headers["connection"] == "keep-alive, Upgrade"
    bad = parse_head(b"GET / HTTP/1.0\r\nAuthorization: Bearer \xff\xfe\r\n\r\n")
    assert bad.headers["authorization"] == "Bearer \xff\xfe"  # a value, never an exception


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"POST / HTTP/1.1\r\n\r\n", 405),
        (b"GET / HTTP/2.0\r\n\r\n", 400),
        (b"GET /\r\n\r\n", 400),
        (b"GET http://x/ HTTP/1.1\r\n\r\n", 400),
        (b"GET * HTTP/1.1\r\n\r\n", 400),  # "*" is for OPTIONS only
        (b"GET / HTTP/1.1\r\nNo colon here\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n" + b"A: b\r\n" * 129 + b"\r\n", 431),
        # what the attacker audit found passing through to picows (whose 400 echoed it) or on
        (b"GET / HTTP/1.1\r\nHost: evil\x1b]0;title\x07\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nSec-WebSocket-Protocol: \x1b[2Jpwned\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nX-A: del\x7f\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nX\x00A: b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nX\x1bA: b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n(A): b\r\n\r\n", 400),
        (b"GET /a\x00b HTTP/1.1\r\n\r\n", 400),
        (b"GET /a\x1bb HTTP/1.1\r\n\r\n", 400),
        (b"GET /caf\xe9 HTTP/1.1\r\n\r\n", 400),
        (b"GET /a\rb HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 6\r\n\r\n", 400),
    ],
)
def test_bad_requests_are_4xx_with_a_reason(head: bytes, status: int) -> None:
    with pytest.raises(HttpError) as caught:
        parse_head(head)
    assert caught.value.status == status and caught.value.reason


def test_the_head_is_bounded_before_it_ends() -> None:
    assert head_end(b"GET / HTTP/1.1\r\n") == -1
    assert head_end(UPGRADE) == len(UPGRADE)
    with pytest.raises(HttpError):
        head_end(b"GET / HTTP/1.1\r\nX: " + b"y" * MAX_HEAD_BYTES)


@pytest.mark.parametrize(
    "head",
    [
        b"GET / HTTP/1.1\n",
        b"GET /healthz HTTP/1.1\r\nHost: a\n\n",
        b"GET / HTTP/1.1\r\nA: b\n\r\n\r\n",
    ],
)
def test_a_line_ended_by_lf_alone_is_a_400_at_once(head: bytes) -> None:
    with pytest.raises(HttpError) as caught:
        head_end(head)
    assert caught.value.status == 400
    assert head_end(b"GET / HTTP/1.1\r\n\r\n\n") == 18  # what follows the head is not the head


async def test_a_bare_lf_request_is_answered_not_left_to_time_out(server: ServerProcess) -> None:
    """Before: no answer until --handshake-timeout, counted as handshake_timeout."""
    answer = await raw_request(server, b"GET /healthz HTTP/1.1\nHost: a\n\n")
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert b"every line must end with CRLF" in answer


def test_picows_gets_only_what_it_checks() -> None:
    minimal = upgrade_for_picows(parse_head(UPGRADE))
    assert b"Cookie" not in minimal and b"Mozilla" not in minimal
    assert b"Connection: Upgrade\r\n" in minimal and b"GET /chat?token=t HTTP/1.1" in minimal
    assert b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==" in minimal
    assert b"sec-websocket-protocol: roomcast.jwt, abc" in minimal
    assert len(minimal) < 300


def test_head_responses_carry_the_length_but_no_body() -> None:
    full = render(200, b"ok\n")
    head = render(200, b"ok\n", head_only=True)
    assert full.endswith(b"\r\n\r\nok\n") and head.endswith(b"\r\n\r\n")
    assert b"Content-Length: 3" in head and b"Connection: close" in head


# ---- over real sockets ------------------------------------------------------------------------


async def raw_request(server: ServerProcess, data: bytes) -> bytes:
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(server.host, server.port), 5
    )
    try:
        writer.write(data)
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


@pytest.mark.parametrize(
    ("request_line", "status", "body"),
    [
        (b"GET /healthz HTTP/1.1", b"200", b"ok\n"),
        (b"GET /healthz HTTP/1.0", b"200", b"ok\n"),
        (b"HEAD /healthz HTTP/1.1", b"200", b""),
        (b"HEAD /healthz HTTP/1.0", b"200", b""),
        (b"HEAD /readyz HTTP/1.0", b"200", b""),
        (b"GET /readyz HTTP/1.0", b"200", b"ready\n"),
        (b"OPTIONS / HTTP/1.0", b"200", b""),  # HAProxy's default `option httpchk`
        (b"OPTIONS * HTTP/1.1", b"200", b""),
        (b"DELETE /healthz HTTP/1.1", b"405", b"method not allowed\n"),
    ],
)
async def test_health_checks_as_load_balancers_send_them(
    server: ServerProcess, request_line: bytes, status: bytes, body: bytes
) -> None:
    answer = await raw_request(server, request_line + b"\r\nHost: x\r\n\r\n")
    head, _, received = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 " + status)
    assert received == body
    assert b"b'" not in answer  # no Python bytes repr anywhere
    if request_line.startswith((b"OPTIONS", b"DELETE")):
        assert b"\r\nAllow: GET, HEAD, OPTIONS\r\n" in head + b"\r\n"


@pytest.mark.parametrize("method", [b"HEAD", b"OPTIONS"])
async def test_only_a_get_opens_a_websocket(server: ServerProcess, method: bytes) -> None:
    request = UPGRADE.replace(b"GET /chat?token=t ", method + b" / ")
    answer = await raw_request(server, request)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:100]  # an HTTP answer, never a 101


async def test_a_non_utf8_authorization_header_is_a_401_not_a_500(launch: Launch) -> None:
    server = launch("--jwt-secret", "a secret long enough for HS256 tokens")
    answer = await upgrade(server.host, server.port, "/", {"Authorization": "Bearer \udcff"})
    assert answer.status == 401, answer
    assert b"token" in answer.body


MANY_FIELDS = "&".join(f"a{i}=1" for i in range(40))


@pytest.mark.parametrize(
    ("kind", "target"),
    [
        ("upgrade", "//[x"),  # urlsplit raises "Invalid IPv6 URL"
        ("upgrade", "/?" + MANY_FIELDS),  # parse_qs(max_num_fields=32) raises
        ("upgrade", "/?token=%ff%fe"),
        ("check", "/auth/check?" + MANY_FIELDS),
        ("check", "/auth/check?token=%ff%fe"),
    ],
)
async def test_any_request_target_with_auth_on_is_a_401_never_a_dropped_connection(
    launch: Launch, kind: str, target: str
) -> None:
    server = launch("--jwt-secret", "a secret long enough for HS256 tokens")
    if kind == "upgrade":
        status = (await upgrade(server.host, server.port, target)).status
    else:
        request = f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        status = int((await raw_request(server, request)).split(b" ", 2)[1])
    assert status == 401
    assert "Traceback" not in server.text()


async def test_unfinished_requests_count_against_the_per_address_limit(launch: Launch) -> None:
    server = launch("--max-connections-per-ip", "3", "--handshake-timeout", "30")
    slow = []
    for _ in range(3):  # a slowloris: three requests that never end
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")
        slow.append((reader, writer))
    try:
        refused = await upgrade(server.host, server.port)
        assert refused.status == 429 and refused.headers["retry-after"] == "5"
        # another address is served meanwhile
        other = await upgrade(server.host, server.port, local_addr=("127.0.0.2", 0))
        assert other.status == 101
        reader, writer = slow.pop()
        writer.close()  # one gives up: its slot is free again
        await asyncio.wait_for(reader.read(), 5)
        for _ in range(50):
            if (await upgrade(server.host, server.port)).status == 101:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the freed slot was never reusable")
    finally:
        for _, writer in slow:
            writer.close()


@pytest.mark.usefixtures("raw_clients")
async def test_a_browser_sized_handshake_chats_normally(server: ServerProcess) -> None:
    cookies = "; ".join(f"cookie{i}={'v' * 40}" for i in range(35))  # about 1.6 KB
    client = await RawClient.connect(
        server.host, server.port, "/", {"Cookie": cookies, "User-Agent": "Mozilla/5.0 " * 20}
    )
    client.send_json({"type": "join", "username": "browser"})
    assert (await client.recv_json())["text"] == "browser joined #general"


async def test_bad_requests_are_counted_by_reason_and_logged_once(launch: Launch) -> None:
    server = launch("--handshake-timeout", "0.2")
    for _ in range(3):
        await raw_request(server, b"POST / HTTP/1.1\r\nHost: x\r\n\r\n")
    await raw_request(server, b"GET / HTTP/1.1\r\n" + b"A: b\r\n" * 200 + b"\r\n")
    await raw_request(server, b"GET / HTTP/1.1\r\n")  # never finished: dropped on the timeout
    metrics = (await raw_request(server, b"GET /metrics HTTP/1.1\r\n\r\n")).decode()
    assert 'roomcast_handshakes_refused_total{reason="method"} 3.0' in metrics
    assert 'roomcast_handshakes_refused_total{reason="too_large"} 1.0' in metrics
    assert 'roomcast_handshakes_refused_total{reason="handshake_timeout"} 1.0' in metrics
    assert server.text().count("refused a request (method") == 1


async def test_metrics_listen_moves_metrics_off_the_public_port(launch: Launch) -> None:
    admin_port = free_port()
    server = launch("--metrics-listen", f"127.0.0.1:{admin_port}")
    assert f"roomcast metrics on http://127.0.0.1:{admin_port}/metrics" in server.text()
    public = await raw_request(server, b"GET /metrics HTTP/1.1\r\n\r\n")
    assert public.startswith(b"HTTP/1.1 404")
    admin = ServerProcess(server.proc, "127.0.0.1", admin_port)
    metrics = await raw_request(admin, b"GET /metrics HTTP/1.1\r\n\r\n")
    assert metrics.startswith(b"HTTP/1.1 200") and b"roomcast_connections " in metrics
    assert (await raw_request(admin, b"HEAD /readyz HTTP/1.0\r\n\r\n")).startswith(b"HTTP/1.1 200")
    assert (await raw_request(admin, b"GET /healthz HTTP/1.1\r\n\r\n")).endswith(b"ok\n")
    assert (await raw_request(admin, b"GET / HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 404")
    assert (await upgrade("127.0.0.1", admin_port)).status == 404  # never a WebSocket there
    assert (await upgrade(server.host, server.port)).status == 101


class _Transport:
    def __init__(self) -> None:
        self.written = b""
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += data

    def can_write_eof(self) -> bool:
        return False

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


class _FailingOwner:
    """A server whose routes raise: what a bug in our own code looks like to the front."""

    handshake_timeout = 5.0

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.noted: list[str] = []
        self.ended: list[str] = []

    def begin(self, peer: str) -> None:
        return None

    def end(self, peer: str) -> None:
        self.ended.append(peer)

    def note(self, label: str, text: str) -> None:
        self.noted.append(label)

    def respond(self, request: object) -> object:
        raise RuntimeError("a bug in a route")

    def upgrade(self, request: object, peer: str) -> object:
        raise RuntimeError("a bug in the gate")


@pytest.mark.parametrize("head", [b"GET /healthz HTTP/1.1\r\n\r\n", UPGRADE])
async def test_our_own_failure_is_a_logged_500_and_frees_the_slot(
    head: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    owner = _FailingOwner(asyncio.get_running_loop())
    front = Front(owner, ("127.0.0.9", 5000))  # type: ignore[arg-type]
    transport = _Transport()
    front.connection_made(transport)
    front.data_received(head)
    assert transport.written.startswith(b"HTTP/1.1 500 ") and transport.closed
    assert b"bug" not in transport.written  # the detail goes to the log, not to the client
    assert owner.noted == ["internal_error"] and owner.ended == ["127.0.0.9"]
    assert "a bug in" in caplog.text and "Traceback" in caplog.text


@pytest.mark.parametrize(
    "after",
    [b"GET /healthz HTTP/1.1\r\n\r\n", b"\x00junk" * 4000, UPGRADE],
    ids=["another-request", "junk", "an-upgrade"],
)
@pytest.mark.parametrize(
    "first", [b"GET /healthz HTTP/1.1\r\n\r\n", b"BREW / HTTP/1.1\r\n\r\n"], ids=["ok", "bad"]
)
async def test_what_arrives_after_the_answer_is_never_parsed(
    launch: Launch, first: bytes, after: bytes
) -> None:
    """One answer per connection: bytes sent after it (in the same packet or later) are
    dropped, not parsed (they were, and each ended in a logged traceback and `internal_error`)."""
    server = launch()
    answer = await raw_request(server, first + after)
    assert answer.count(b"HTTP/1.1 ") == 1, answer
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(first)
    assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 ")
    writer.write(after)
    rest = await asyncio.wait_for(reader.read(), 5)
    assert b"HTTP/1.1 " not in rest, rest
    writer.close()
    metrics = (await raw_request(server, b"GET /metrics HTTP/1.1\r\n\r\n")).decode()
    assert 'roomcast_handshakes_refused_total{reason="internal_error"} 0.0' in metrics
    assert "Traceback" not in server.text() and "ERROR" not in server.text()


async def test_refused_connections_do_not_linger_past_the_address_limit(launch: Launch) -> None:
    """An answered connection lingers (so its answer is not lost to a reset), holding its
    descriptor: no more of them per address than --max-connections-per-ip, or a flood of
    refusals from one address would hold thousands (10,819 were seen with a limit of 10)."""
    server = launch("--max-connections-per-ip", "5", "--handshake-timeout", "30")
    fds = f"/proc/{server.proc.pid}/fd"
    base = len(os.listdir(fds))
    opened = []
    try:
        for _ in range(300):  # never read, never closed: each is answered 429 at accept
            opened.append(await asyncio.open_connection(server.host, server.port))
        answered = 0
        for reader, _ in opened[5:]:
            with contextlib.suppress(ConnectionError):
                answered += (await asyncio.wait_for(reader.read(), 5)).startswith(b"HTTP/1.1 429")
        assert answered >= 5  # the lingering ones, at least, got their answer
        held = len(os.listdir(fds)) - base
        assert held <= 5 + 5 + 2, held  # the slots, the lingering, a little slack
    finally:
        for _, writer in opened:
            writer.close()


GOOD_UPGRADE = (
    b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
)


@pytest.mark.parametrize(
    ("extra", "status"),
    [
        (b"X-A: one\ntwo\r\n", b"400"),  # a lone LF in a value: picows answered it, echoing it
        (b"X-A: one\rtwo\r\n", b"400"),
        (b"X-A: one\x00two\r\n", b"400"),
        (b"Host: other\r\n", b"400"),  # two Host headers
        (b"Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n", b"400"),
        (b"Sec-WebSocket-Version: 13\r\n", b"400"),
        (b"Content-Length: 12\r\n", b"400"),  # a body would be read as the first frames
        (b"Transfer-Encoding: chunked\r\n", b"400"),
        (b"Sec-WebSocket-Protocol: one\x1b[2J\r\n", b"400"),  # was picows's 400, echoing it
        (b"Content-Length: 0\r\nContent-Length: 12\r\n", b"400"),  # only the first was read
    ],
    ids=[
        "lf", "cr", "nul", "two-hosts", "two-keys", "two-versions", "length", "chunked",
        "escape-in-protocol", "two-lengths",
    ],
)
async def test_malformed_upgrades_get_our_fixed_400(
    launch: Launch, extra: bytes, status: bytes
) -> None:
    server = launch()
    body = b"\x81\x8c" + b"\x00" * 4 + b'{"type":"x"}' if b"Content" in extra else b""
    answer = await raw_request(server, GOOD_UPGRADE + extra + b"\r\n" + body)
    assert answer.startswith(b"HTTP/1.1 " + status + b" "), answer
    assert b"one" not in answer and b"other" not in answer  # nothing of the request echoed
    metrics = (await raw_request(server, b"GET /metrics HTTP/1.1\r\n\r\n")).decode()
    assert 'roomcast_handshakes_refused_total{reason="bad_request"} 1.0' in metrics
    assert "ERROR" not in server.text()


async def test_an_http_1_0_upgrade_is_a_plain_request(server: ServerProcess) -> None:
    """RFC 9110 7.8: Upgrade is ignored in HTTP/1.0; the page is the answer, never a 101."""
    answer = await raw_request(server, GOOD_UPGRADE.replace(b"HTTP/1.1", b"HTTP/1.0") + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:80]
