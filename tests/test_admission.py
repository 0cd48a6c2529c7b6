"""Admission before the upgrade: Origin, client address, limits (pure), then over real sockets."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest
from multidict import CIMultiDict

from server.admission import (
    Limits,
    OriginPolicy,
    client_address,
    handshake_problem,
    parse_networks,
)
from tests.conftest import Launch
from tests.handshake import upgrade
from tests.rawws import RawClient
from tests.support import ServerProcess

# ---- Origin -----------------------------------------------------------------------------------


def test_exact_origins_and_subdomain_patterns() -> None:
    policy = OriginPolicy.from_option(
        "https://chat.example.com, *.example.org, http://localhost:8080", allow_all=True
    )
    assert policy.allows("https://chat.example.com")
    assert policy.allows("https://CHAT.example.com:443")
    assert not policy.allows("http://chat.example.com")  # scheme is part of an origin
    assert not policy.allows("https://chat.example.com:8443")
    assert not policy.allows("https://evil-chat.example.com")
    assert policy.allows("https://a.example.org") and policy.allows("http://a.b.example.org:81")
    assert not policy.allows("https://example.org")  # a subdomain pattern is not the apex
    assert not policy.allows("https://example.org.evil.com")
    assert not policy.allows("https://evilexample.org")
    assert policy.allows("http://localhost:8080") and not policy.allows("http://localhost:9090")
    assert not policy.allows("null")
    assert not policy.allows("not an origin")
    assert policy.allows(None)  # not a browser: Origin is a browser-side defence


def test_ip_address_origins_match_as_browsers_send_them() -> None:
    policy = OriginPolicy.from_option("http://127.0.0.1:8080, http://[::1]:8080", allow_all=True)
    assert policy.allows("http://127.0.0.1:8080") and policy.allows("http://[::1]:8080")
    assert not policy.allows("http://[::1]:8081") and not policy.allows("http://127.0.0.2:8080")


def test_defaults_allow_all_without_auth_and_same_origin_with_it() -> None:
    open_policy = OriginPolicy.from_option("", allow_all=True)
    assert open_policy.allows("https://anything.example", "chat.example.com")
    closed = OriginPolicy.from_option("", allow_all=False)
    assert closed.allows("https://chat.example.com", "chat.example.com")
    assert closed.allows("http://127.0.0.1:8080", "127.0.0.1:8080")
    assert not closed.allows("http://127.0.0.1:9999", "127.0.0.1:8080")
    assert not closed.allows("https://evil.example", "chat.example.com")
    # a Host without a port is a page on a default port: another port of the host is not it
    assert closed.allows("http://chat.example.com", "chat.example.com")
    assert not closed.allows("https://chat.example.com:8443", "chat.example.com")
    assert not closed.allows("http://chat.example.com:1234", "chat.example.com")
    assert OriginPolicy.from_option("*", allow_all=False).allows("https://evil.example")


@pytest.mark.parametrize(
    "bad",
    [
        "https://*", "*.", "https://a.com:port", "a/b", "ht!tp://x", "https://exa mple.com",
        "https://a.com:0", "https://a.com:99999", "https://a..com", "https://-a.com",
        "https://[::1", "*.[::1]", "https://a.com/path", "://a.com", "https://",
        "http://fe80::1:8080", "*.127.0.0.1",
    ],
)
def test_bad_origin_patterns_are_rejected(bad: str) -> None:
    with pytest.raises(ValueError):
        OriginPolicy.from_option(bad, allow_all=True)


# ---- client address ---------------------------------------------------------------------------


def test_forwarded_for_is_believed_only_from_trusted_proxies() -> None:
    proxies = parse_networks("10.0.0.0/8, ::1")
    assert client_address("192.0.2.7", ["203.0.113.9"], proxies) == "192.0.2.7"
    assert client_address("10.1.2.3", ["203.0.113.9"], proxies) == "203.0.113.9"
    # a client cannot choose its address by writing its own X-Forwarded-For further left
    assert client_address("10.1.2.3", ["1.1.1.1, 203.0.113.9"], proxies) == "203.0.113.9"
    assert client_address("10.1.2.3", ["1.1.1.1", "203.0.113.9, 10.9.9.9"], proxies) == (
        "203.0.113.9"
    )
    # garbage stops the walk: the last address we could trust is used
    assert client_address("10.1.2.3", ["garbage"], proxies) == "10.1.2.3"
    assert client_address("10.1.2.3", [], proxies) == "10.1.2.3"
    assert client_address("::1", ["[2001:db8::5]:443"], proxies) == "2001:db8::5"
    assert client_address("10.1.2.3", ["10.2.2.2"], proxies) == "10.2.2.2"  # all trusted
    assert client_address("192.0.2.7", ["203.0.113.9"], ()) == "192.0.2.7"
    assert parse_networks("") == ()
    assert parse_networks("127.0.0.1") == (ipaddress.ip_network("127.0.0.1/32"),)


# ---- limits -----------------------------------------------------------------------------------


def test_global_and_per_address_connection_limits() -> None:
    limits = Limits(max_connections=3, max_per_ip=2)
    assert limits.check("a", 0, 0.0) is None
    limits.opened("a")
    limits.opened("a")
    refusal = limits.check("a", 2, 0.0)
    assert refusal is not None and refusal.status == 429
    assert refusal.headers == {"Retry-After": str(Limits.PER_IP_RETRY_AFTER)}
    assert limits.check("b", 2, 0.0) is None
    full = limits.check("b", 3, 0.0)
    assert full is not None and full.status == 503
    limits.closed("a")
    assert limits.check("a", 2, 0.0) is None
    limits.closed("a")
    limits.closed("a")  # more closes than opens never go negative
    assert limits.open_per_ip == {}


def test_handshake_rate_is_a_token_bucket_with_retry_after() -> None:
    limits = Limits(rate=3, window=3.0)  # 3 handshakes, then one per second
    assert [limits.check("a", 0, 100.0) for _ in range(3)] == [None, None, None]
    refusal = limits.check("a", 0, 100.0)
    assert refusal is not None and refusal.status == 429 and refusal.retry_after == 1
    assert limits.check("b", 0, 100.0) is None  # other addresses are not affected
    assert limits.check("a", 0, 100.5) is not None
    assert limits.check("a", 0, 101.1) is None
    assert limits.check("a", 0, 200.0) is None


def test_the_bucket_table_forgets_refilled_addresses() -> None:
    limits = Limits(rate=2, window=1.0)
    for i in range(5000):
        limits.check(f"10.0.{i // 256}.{i % 256}", 0, float(i) * 0.01)
    assert limits.tracked_addresses < 2100


# ---- over real sockets ------------------------------------------------------------------------


async def chatting(server: ServerProcess) -> RawClient:
    client = await RawClient.connect(server.host, server.port)
    client.send_json({"type": "join", "room": "ok"})
    assert (await client.recv_json())["type"] == "system"
    return client


@pytest.mark.usefixtures("raw_clients")
async def test_a_foreign_origin_gets_403(launch: Launch) -> None:
    server = launch("--allowed-origins", "https://chat.example.com,*.example.org")
    answer = await upgrade(server.host, server.port, "/", {"Origin": "https://evil.example"})
    assert answer.status == 403 and b"origin" in answer.body
    for origin in ("https://chat.example.com", "https://team.example.org"):
        allowed = await upgrade(server.host, server.port, "/", {"Origin": origin})
        assert allowed.status == 101, origin
    assert (await upgrade(server.host, server.port, "/")).status == 101  # no Origin: not a browser
    await chatting(server)


async def test_with_auth_on_only_same_origin_pages_by_default(launch: Launch) -> None:
    server = launch("--jwt-secret", "s" * 40)
    here = f"http://{server.host}:{server.port}"
    foreign = await upgrade(server.host, server.port, "/", {"Origin": "https://evil.example"})
    assert foreign.status == 403
    same = await upgrade(server.host, server.port, "/", {"Origin": here})
    assert same.status == 401  # past the Origin check; now it needs a token


async def test_without_auth_every_origin_is_allowed(server: ServerProcess) -> None:
    answer = await upgrade(server.host, server.port, "/", {"Origin": "https://anywhere.example"})
    assert answer.status == 101


@pytest.mark.usefixtures("raw_clients")
async def test_per_address_connection_limit_gets_429_with_retry_after(launch: Launch) -> None:
    server = launch("--max-connections-per-ip", "2")
    first = await RawClient.connect(server.host, server.port)
    await RawClient.connect(server.host, server.port)
    answer = await upgrade(server.host, server.port)
    assert answer.status == 429 and int(answer.headers["retry-after"]) >= 1
    # another address is not affected (all of 127/8 is loopback)
    other = await upgrade(server.host, server.port, local_addr=("127.0.0.2", 0))
    assert other.status == 101
    # a slot frees when a connection closes
    await first.close()
    deadline = asyncio.get_running_loop().time() + 5
    while (await upgrade(server.host, server.port)).status == 429:
        assert asyncio.get_running_loop().time() < deadline, "the slot never freed"
        await asyncio.sleep(0.05)


@pytest.mark.usefixtures("raw_clients")
async def test_handshake_rate_gets_429_with_retry_after(launch: Launch) -> None:
    server = launch("--handshake-rate", "3", "--handshake-window", "60")
    statuses = [(await upgrade(server.host, server.port)).status for _ in range(3)]
    assert statuses == [101, 101, 101]
    answer = await upgrade(server.host, server.port)
    assert answer.status == 429 and int(answer.headers["retry-after"]) >= 1
    assert b"handshakes" in answer.body
    ok = await upgrade(server.host, server.port, local_addr=("127.0.0.3", 0))
    assert ok.status == 101


@pytest.mark.usefixtures("raw_clients")
async def test_global_connection_limit_gets_503(launch: Launch) -> None:
    server = launch("--max-connections", "2")
    kept = [await chatting(server), await chatting(server)]
    answer = await upgrade(server.host, server.port, local_addr=("127.0.0.4", 0))
    assert answer.status == 503
    # those inside keep chatting
    kept[0].send_json({"type": "chat", "text": "inside"})
    assert (await kept[1].recv_json())["text"] == "inside"
    # and plain HTTP is still served
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b" 200 " in (await asyncio.wait_for(reader.readuntil(b"\r\n"), 5))
    writer.close()
    await asyncio.wait_for(writer.wait_closed(), 5)


@pytest.mark.usefixtures("raw_clients")
async def test_forwarded_for_counts_only_behind_a_trusted_proxy(launch: Launch) -> None:
    proxied = launch("--max-connections-per-ip", "1", "--trusted-proxies", "127.0.0.1")
    one = {"X-Forwarded-For": "198.51.100.1"}
    two = {"X-Forwarded-For": "198.51.100.2"}
    await RawClient.connect(proxied.host, proxied.port, "/", one)
    await RawClient.connect(proxied.host, proxied.port, "/", two)  # another client, same proxy
    assert (await upgrade(proxied.host, proxied.port, "/", one)).status == 429
    # a client cannot dodge by prepending an address: the proxy's append is what counts
    spoof = {"X-Forwarded-For": "203.0.113.50, 198.51.100.1"}
    assert (await upgrade(proxied.host, proxied.port, "/", spoof)).status == 429

    direct = launch("--max-connections-per-ip", "1")  # no trusted proxies: header ignored
    await RawClient.connect(direct.host, direct.port, "/", one)
    assert (await upgrade(direct.host, direct.port, "/", two)).status == 429


async def test_handshake_timeout_drops_a_silent_connection(launch: Launch) -> None:
    server = launch("--handshake-timeout", "0.3")
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(b"GET / HTTP/1.1\r\n")  # and never finishes the request
        assert await asyncio.wait_for(reader.read(), 5) == b""
    finally:
        writer.close()
    assert (await upgrade(server.host, server.port)).status == 101


def test_handshake_problems_are_found_before_picows_sees_them() -> None:
    good = {
        "host": "h",
        "connection": "Upgrade",
        "sec-websocket-version": "13",
        "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
    }

    def problem(headers: dict[str, str], *repeated: tuple[str, str]) -> tuple[int, str] | None:
        multi = CIMultiDict(headers)
        for name, value in repeated:
            multi.add(name, value)
        found = handshake_problem(multi)
        return None if found is None else (found.status, found.reason)

    assert problem(good) is None
    assert problem({**good, "connection": "keep-alive"}) is not None
    assert problem({**good, "host": ""}) == (400, "an upgrade needs a Host header")
    assert problem({**good, "host": "  "}) == (400, "an upgrade needs a Host header")
    firefox = {**good, "connection": "keep-alive, Upgrade"}
    assert problem(firefox) is None
    assert firefox == {**good, "connection": "keep-alive, Upgrade"}  # pure: nothing rewritten
    assert problem({**good, "sec-websocket-version": "\udcbf13"}) is not None
    assert problem({**good, "sec-websocket-key": "short"}) is not None
    assert problem({**good, "sec-websocket-key": "\udcbfxx"}) is not None
    # RFC 6455 4.2.2: a version other than 13 is a 426 that names 13
    for version in ("8", "7", "12", "14"):
        assert problem({**good, "sec-websocket-version": version}) == (
            426, "unsupported Sec-WebSocket-Version (use 13)")
    version_missing = {k: v for k, v in good.items() if k != "sec-websocket-version"}
    assert problem(version_missing) is not None and problem(version_missing)[0] == 426  # type: ignore[index]
    # once each (RFC 9112 3.2, RFC 6455 11.3), and no body
    assert problem({k: v for k, v in good.items() if k != "host"}) == (
        400, "an upgrade needs a Host header")
    assert problem(good, ("Host", "other")) == (400, "host must appear once")
    assert problem(good, ("Sec-WebSocket-Key", "AAAAAAAAAAAAAAAAAAAAAA==")) == (
        400, "sec-websocket-key must appear once")
    assert problem(good, ("Sec-WebSocket-Version", "13")) == (
        400, "sec-websocket-version must appear once")
    assert problem({**good, "content-length": "40"}) == (400, "an upgrade request has no body")
    assert problem({**good, "transfer-encoding": "chunked"}) == (
        400, "an upgrade request has no body")
    assert problem({**good, "content-length": "0"}) is None


async def test_a_non_utf8_version_header_gets_400_not_a_traceback(server: ServerProcess) -> None:
    """Found by the fuzz test: picows's own refusal crashes on such a header and logs it."""
    request = (
        f"GET / HTTP/1.1\r\nHost: {server.host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    ).encode() + b"Sec-WebSocket-Version: \xbf\xff 13\r\n\r\n"
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(request)
        answer = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 426"), answer  # a version we do not speak
    assert b"\r\nSec-WebSocket-Version: 13\r\n" in answer
    assert (await upgrade(server.host, server.port)).status == 101
    assert "Traceback" not in server.text()


async def test_firefox_style_connection_header_is_accepted(server: ServerProcess) -> None:
    """Firefox sends `Connection: keep-alive, Upgrade`; picows alone refuses it with 400."""
    answer = await upgrade(server.host, server.port, "/", {"Connection": "keep-alive, Upgrade"})
    assert answer.status == 101


def test_an_address_lingers_no_more_connections_than_its_slots() -> None:
    limits = Limits(max_per_ip=2)
    assert [limits.may_linger("192.0.2.1") for _ in range(3)] == [True, True, False]
    assert limits.may_linger("192.0.2.2")  # another address has its own
    limits.lingered("192.0.2.1")
    assert limits.may_linger("192.0.2.1")
    assert all(Limits().may_linger("192.0.2.1") for _ in range(100))  # no limit: no bound
