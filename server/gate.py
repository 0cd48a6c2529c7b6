"""The upgrade gate: who may open a WebSocket, decided before one exists, and token expiry.

One place for the whole decision on an upgrade request: a malformed request (400), the Origin
(403), the connection and handshake limits (429/503), the token (401). A refusal is counted by
reason and answered by the adapter as a plain HTTP response; an admission carries the client
address the limits count against and the token's identity. Connections with a token that expires
are closed with 4001 by one periodic sweep, not one timer each.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol

from .admission import Limits, client_address, handshake_problem, is_trusted_proxy
from .config import Config
from .deadlines import Deadlines
from .identity import AuthError, Identity
from .protocol import CloseCode
from .security import Security
from .state import Counters, RefusalReason

log = logging.getLogger("roomcast")


@dataclass(frozen=True, slots=True)
class Admitted:
    client_ip: str  # the address the limits count against
    identity: Identity | None  # from the token, when authentication is on
    subprotocol: str | None  # to echo in the 101 response (a token offered as a subprotocol)
    counted: bool = False  # the connection already holds a slot of client_ip (since accept)


@dataclass(frozen=True, slots=True)
class Refused:
    status: int
    body: bytes
    headers: dict[str, str]


class Expirable(Protocol):
    """A connection as the token sweep sees it."""

    closing: bool

    def __hash__(self) -> int: ...

    def close(self, code: int, reason: str) -> None: ...


class Headers(Protocol):
    def get(self, key: str, /) -> Any: ...

    def getall(self, key: str, default: Any, /) -> Any: ...


_BEARER = {"WWW-Authenticate": 'Bearer realm="roomcast"'}


class Gate:
    def __init__(
        self, config: Config, security: Security, counters: Counters, clock: Any = time.time
    ) -> None:
        self._security = security
        self._verifier = security.verifier
        self._counters = counters
        self._leeway = config.jwt_leeway
        self._sweep_interval = config.token_sweep_interval
        self._wall = clock
        self.limits = Limits(
            max_connections=config.max_connections,
            max_per_ip=config.max_connections_per_ip,
            rate=config.handshake_rate,
            window=config.handshake_window,
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._expiry: Deadlines[Expirable] | None = None
        self._timer: asyncio.TimerHandle | None = None

    def refuse(
        self, label: RefusalReason, status: int, text: str, headers: dict[str, str] | None = None
    ) -> Refused:
        """A refusal, counted under `label` (roomcast_handshakes_refused_total's reason)."""
        self.note(label, text)
        return Refused(status, text.encode() + b"\n", headers or {})

    def note(self, label: RefusalReason, text: str) -> None:
        """Counts a refused request under `label`; the first of each kind is logged at INFO
        (one line per kind, not per request: a flood of refusals must not flood the log)."""
        refused = self._counters.refused
        if not refused[label]:  # (every reason starts at 0: RefusalReason)
            log.info("refused a request (%s: %s); further ones are counted, not logged", label,
                     text)
        refused[label] += 1

    def begin(self, peer: str) -> Refused | None:
        """A TCP connection from `peer` was accepted: None when it may go on, holding one of the
        address's slots until ``end`` (or until its WebSocket closes), else the refusal. A
        trusted proxy's connections are counted against their client once its headers arrive."""
        if self.behind_proxy(peer):
            return None
        refusal = self.limits.may_start(peer)
        if refusal is not None:
            return self.refuse(refusal.label, refusal.status, refusal.reason, refusal.headers)
        self.limits.opened(peer)
        return None

    def end(self, peer: str) -> None:
        """The connection `begin` let through is gone before it became a WebSocket."""
        if not self.behind_proxy(peer):
            self.limits.closed(peer)

    def may_linger(self, peer: str) -> bool:
        """Whether an answered connection from `peer` may linger (Limits.may_linger; a trusted
        proxy's always may: it carries many clients)."""
        return self.behind_proxy(peer) or self.limits.may_linger(peer)

    def lingered(self, peer: str) -> None:
        if not self.behind_proxy(peer):
            self.limits.lingered(peer)

    def behind_proxy(self, peer: str) -> bool:
        """Whether `peer` is a trusted proxy (its clients are told by X-Forwarded-For)."""
        proxies = self._security.proxies
        return bool(proxies) and is_trusted_proxy(peer, proxies)

    def check(
        self, path: str, headers: Headers, peer: str, open_connections: int, now: float
    ) -> Admitted | Refused:
        """Origin, limits, then the token: the whole decision on one upgrade request."""
        problem = handshake_problem(headers)
        if problem is not None:
            return self.refuse(problem.label, problem.status, problem.reason, problem.headers)
        if not self._security.origins.allows(headers.get("origin"), headers.get("host")):
            return self.refuse(RefusalReason.ORIGIN, 403, "origin not allowed")
        address = peer
        if self._security.proxies:
            forwarded = headers.getall("x-forwarded-for", ())
            address = client_address(peer, forwarded, self._security.proxies)
        holding = address == peer and not self.behind_proxy(peer)
        refusal = self.limits.check(address, open_connections, now, holding=holding)
        if refusal is not None:
            return self.refuse(refusal.label, refusal.status, refusal.reason, refusal.headers)
        if self._verifier is None:
            return Admitted(address, None, None, holding)
        try:
            identity, subprotocol = self._verifier.authenticate(path, headers)
        except AuthError as exc:
            return self.refuse(RefusalReason.UNAUTHORIZED, 401, exc.reason, _BEARER)
        return Admitted(address, identity, subprotocol, holding)

    def token_problem(self, path: str, headers: Headers) -> str | None:
        """Why the token this request presents would be refused, or None (also when auth is
        off). For ``GET /auth/check``: a browser cannot read the 401 of a refused upgrade."""
        if self._verifier is None:
            return None
        try:
            self._verifier.authenticate(path, headers)
        except AuthError as exc:
            return exc.reason
        return None

    # ---- open connections ---------------------------------------------------------------------

    def opened(
        self, conn: Expirable, client_ip: str, identity: Identity | None, *, counted: bool = False
    ) -> None:
        """The WebSocket is open; `counted`: its slot was taken at accept already."""
        if not counted:
            self.limits.opened(client_ip)
        if identity is not None and identity.expires_at is not None and self._expiry is not None:
            assert self._loop is not None
            left = identity.expires_at + self._leeway - self._wall()
            self._expiry.add(conn, self._loop.time() + left)

    def closed(self, conn: Expirable, client_ip: str) -> None:
        self.limits.closed(client_ip)
        if self._expiry is not None:
            self._expiry.discard(conn)

    # ---- the token sweep ----------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        if self._verifier is not None:
            self._expiry = Deadlines(self._sweep_interval, loop.time())
            self._timer = loop.call_later(self._sweep_interval, self._sweep)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _sweep(self) -> None:
        """One timer for every connection: closes those whose token expired (4001)."""
        assert self._loop is not None and self._expiry is not None
        self._timer = self._loop.call_later(self._sweep_interval, self._sweep)
        for conn in self._expiry.pop_due(self._loop.time()):
            if not conn.closing:
                self._counters.tokens_expired += 1
                conn.close(CloseCode.TOKEN_EXPIRED, "token expired")
