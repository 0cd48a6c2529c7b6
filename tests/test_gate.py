"""The upgrade gate (server/gate.py) without sockets: each refusal, its counting, token expiry."""

from __future__ import annotations

import asyncio
import time

import jwt
from multidict import CIMultiDict

from server.config import Config
from server.gate import Admitted, Gate, Refused
from server.protocol import CloseCode
from server.security import Security
from server.state import Counters

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
SECRET = "a secret long enough for HS256 tokens"


def upgrade(**extra: str) -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict(
        {"Host": "chat.example", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
         "Sec-WebSocket-Key": KEY}
    )
    for name, value in extra.items():
        headers[name.replace("_", "-")] = value
    return headers


def gate(**options: object) -> tuple[Gate, Counters]:
    config = Config(**options)  # type: ignore[arg-type]
    counters = Counters()
    return Gate(config, Security.load(config), counters), counters


def test_an_open_server_admits_with_the_peer_address() -> None:
    door, counters = gate()
    assert door.begin("192.0.2.1") is None
    decision = door.check("/", upgrade(), "192.0.2.1", 0, 0.0)
    # its slot was taken at accept (begin): the WebSocket keeps it
    assert decision == Admitted("192.0.2.1", None, None, counted=True)
    assert not +counters.refused  # (+: the reasons with a count above 0)


def test_unfinished_requests_hold_their_address_slots() -> None:
    door, counters = gate(max_connections_per_ip=2)
    assert door.begin("192.0.2.1") is None
    assert door.begin("192.0.2.1") is None  # two requests still being sent (a slowloris)
    refused = door.begin("192.0.2.1")
    assert isinstance(refused, Refused) and refused.status == 429
    assert refused.headers == {"Retry-After": "5"}
    assert door.begin("192.0.2.2") is None  # other addresses are not affected
    door.end("192.0.2.1")  # one gave up: its slot is free again
    assert door.begin("192.0.2.1") is None
    # a request that holds a slot passes the per-address check at the upgrade
    assert isinstance(door.check("/", upgrade(), "192.0.2.1", 3, 0.0), Admitted)
    assert +counters.refused == {"per_ip": 1}


def test_each_refusal_has_its_status_and_reason_label() -> None:
    door, counters = gate(
        jwt_secret=SECRET, allowed_origins="https://chat.example", max_connections=5
    )
    token = jwt.encode({"sub": "ann"}, SECRET, algorithm="HS256")
    cases = [
        (upgrade(Connection="keep-alive"), "/", 0, 400, "bad_request"),
        (upgrade(Origin="https://evil.example"), "/", 0, 403, "origin"),
        (upgrade(), f"/?token={token}", 5, 503, "max_connections"),
        (upgrade(), "/", 0, 401, "unauthorized"),
        (upgrade(), "/?token=not.a.jwt", 0, 401, "unauthorized"),
    ]
    for headers, path, open_now, status, _ in cases:
        decision = door.check(path, headers, "192.0.2.1", open_now, 0.0)
        assert isinstance(decision, Refused) and decision.status == status, (status, decision)
    assert +counters.refused == {"bad_request": 1, "origin": 1, "max_connections": 1,
                                "unauthorized": 2}
    refused = door.check("/", upgrade(), "192.0.2.1", 0, 0.0)
    assert isinstance(refused, Refused) and "WWW-Authenticate" in refused.headers
    admitted = door.check(f"/?token={token}", upgrade(), "192.0.2.1", 0, 0.0)
    assert isinstance(admitted, Admitted) and admitted.identity is not None
    assert admitted.identity.name == "ann"


def test_per_address_limits_count_the_client_behind_a_trusted_proxy() -> None:
    door, counters = gate(max_connections_per_ip=1, trusted_proxies="10.0.0.0/8")
    first = door.check("/", upgrade(X_Forwarded_For="203.0.113.5"), "10.0.0.1", 0, 0.0)
    assert isinstance(first, Admitted) and first.client_ip == "203.0.113.5"

    class Conn:
        closing = False

        def close(self, code: int, reason: str) -> None:
            raise AssertionError("no token, no expiry")

    conn = Conn()
    door.opened(conn, first.client_ip, None)
    second = door.check("/", upgrade(X_Forwarded_For="203.0.113.5"), "10.0.0.1", 1, 0.0)
    assert isinstance(second, Refused) and second.status == 429
    other = door.check("/", upgrade(X_Forwarded_For="203.0.113.6"), "10.0.0.1", 1, 0.0)
    assert isinstance(other, Admitted)
    door.closed(conn, first.client_ip)
    assert isinstance(door.check("/", upgrade(X_Forwarded_For="203.0.113.5"), "10.0.0.1", 0,
                                 0.0), Admitted)
    assert +counters.refused == {"per_ip": 1}


async def test_one_sweep_closes_expired_tokens_with_4001() -> None:
    door, counters = gate(jwt_secret=SECRET, token_sweep_interval=0.05, jwt_leeway=0)
    soon = jwt.encode({"sub": "ann", "exp": int(time.time()) + 2}, SECRET, algorithm="HS256")
    later = jwt.encode({"sub": "bob", "exp": int(time.time()) + 3600}, SECRET, algorithm="HS256")
    closed: list[tuple[str, int]] = []

    class Conn:
        def __init__(self, name: str) -> None:
            self.name = name
            self.closing = False

        def close(self, code: int, reason: str) -> None:
            self.closing = True
            closed.append((self.name, code))

    door.start(asyncio.get_running_loop())
    try:
        for name, token in (("ann", soon), ("bob", later)):
            decision = door.check(f"/?token={token}", upgrade(), "192.0.2.1", 0, 0.0)
            assert isinstance(decision, Admitted)
            door.opened(Conn(name), decision.client_ip, decision.identity)
        deadline = time.monotonic() + 5
        while not closed and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
    finally:
        door.stop()
    assert closed == [("ann", CloseCode.TOKEN_EXPIRED)]
    assert counters.tokens_expired == 1
