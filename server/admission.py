"""Who may open a WebSocket: Origin policy, client address, connection limits, handshake rate.

Pure logic, no sockets: the adapter passes the peer address, the request headers, the number of
open connections and the time, and turns a ``Refusal`` into an HTTP response before the upgrade.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .state import RefusalReason

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


# ---- the upgrade request itself ----------------------------------------------------------------


_ONCE = ("host", "sec-websocket-key", "sec-websocket-version")


def handshake_problem(headers: Any) -> Refusal | None:
    """Why this upgrade request is not a valid WebSocket upgrade (a 400, or 426 for a version we
    do not speak), or None. `headers` is a multidict (``getall``): repeats are refused.

    The same checks picows makes after the listener factory, made first so that the refusal is a
    fixed text: picows's own error echoes the header value and fails (no answer, a traceback
    in the log) when that value is not UTF-8, which a fuzzer finds in seconds. ``Connection`` may
    list other tokens besides ``Upgrade`` (Firefox sends ``keep-alive, Upgrade``; RFC 6455 4.2.1
    allows it). Host, the key and the version appear exactly once (RFC 9112 3.2, RFC 6455 11.3),
    and an upgrade has no body: one would be read as the client's first frames.
    """
    for name in _ONCE:
        if len(headers.getall(name, ())) > 1:
            return _bad(f"{name} must appear once")
    if not headers.get("host", "").strip():
        return _bad("an upgrade needs a Host header")
    if headers.get("content-length", "0").strip() != "0" or "transfer-encoding" in headers:
        return _bad("an upgrade request has no body")
    connection = headers.get("connection")
    if not isinstance(connection, str):
        return _bad("Connection header must include 'Upgrade'")
    if connection.lower() != "upgrade":
        tokens = {token.strip().lower() for token in connection.split(",")}
        if "upgrade" not in tokens:
            return _bad("Connection header must include 'Upgrade'")
    if headers.get("sec-websocket-version") != "13":
        # RFC 6455 4.2.2: 426 naming the version this server speaks
        return Refusal(426, "unsupported Sec-WebSocket-Version (use 13)",
                       RefusalReason.BAD_REQUEST, extra={"Sec-WebSocket-Version": "13"})
    key = headers.get("sec-websocket-key")
    try:
        if (
            not isinstance(key, str)
            or len(base64.b64decode(key.encode("ascii"), validate=True)) != 16
        ):
            return _bad("invalid Sec-WebSocket-Key")
    except (UnicodeEncodeError, binascii.Error):
        return _bad("invalid Sec-WebSocket-Key")
    return None


def _bad(reason: str) -> Refusal:
    return Refusal(400, reason, RefusalReason.BAD_REQUEST)


# ---- Origin -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _OriginRule:
    scheme: str | None  # None: any scheme
    host: str  # lowercase; for a wildcard, the suffix after "*."
    wildcard: bool  # "*.example.com": any subdomain, not the apex
    port: int | None  # None: any port (when the rule has no scheme) or the scheme's default


def _split_origin(origin: str) -> tuple[str, str, int | None] | None:
    """(scheme, host, port) of a serialized origin, or None when it is not one."""
    try:
        parts = urlsplit(origin.strip())
        host = parts.hostname
        port = parts.port
    except ValueError:
        return None
    if not parts.scheme or not host or parts.path not in ("", "/") or parts.query:
        return None
    scheme = parts.scheme.lower()
    return scheme, host.lower(), port if port is not None else _DEFAULT_PORTS.get(scheme)


# What a rule may be: [scheme://][*.]host[:port], the host a DNS name or an IP address, so that a
# typo ("ht!tp://x", "https://exa mple.com") is refused at start instead of matching nothing.
_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*")
_DNS_NAME = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)(\.(?!-)[a-z0-9_-]{1,63}(?<!-))*")


def _parse_rule(text: str) -> _OriginRule:
    text = text.strip()
    problem = f"not an origin or *.domain pattern: {text!r}"
    if "://" in text:
        scheme, _, rest = text.partition("://")
        scheme = scheme.lower()
        if not _SCHEME.fullmatch(scheme):
            raise ValueError(f"bad scheme in origin pattern: {text!r}")
    else:
        scheme, rest = "", text
    rest = rest.removesuffix("/")
    wildcard = rest.startswith("*.")
    if wildcard:
        rest = rest[2:]
    if rest.startswith("["):  # [2001:db8::1]:8080
        host, bracket, port_part = rest[1:].partition("]")
        if not bracket or (port_part and not port_part.startswith(":")):
            raise ValueError(problem)
        colon, port_text = port_part[:1], port_part[1:]
        if wildcard or not _is_ip(host):
            raise ValueError(problem)
    else:
        if rest.count(":") > 1:  # fe80::1:8080 would be read as fe80::1, port 8080
            raise ValueError(f"an IPv6 address in an origin pattern goes in brackets: {text!r}")
        host, colon, port_text = rest.rpartition(":") if ":" in rest else (rest, "", "")
        if _is_ip(host):
            if wildcard:  # *.127.0.0.1: no name ends in an address
                raise ValueError(problem)
        elif not _DNS_NAME.fullmatch(host.lower()):
            raise ValueError(problem)
    port: int | None = None
    if colon:
        if not (port_text.isascii() and port_text.isdigit()):
            raise ValueError(f"bad port in origin pattern: {text!r}")
        if not 1 <= int(port_text) <= 65535:
            raise ValueError(f"port {port_text} of {text} must be from 1 to 65535")
        port = int(port_text)
    elif scheme:
        port = _DEFAULT_PORTS.get(scheme)
    return _OriginRule(scheme or None, host.lower(), wildcard, port)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


class OriginPolicy:
    """``--allowed-origins``: exact origins (``https://chat.example.com``) and patterns.

    ``*.example.com`` matches any subdomain with any scheme and port; ``https://*.example.com``
    only https on the default port. ``*`` allows everything. A request without an Origin header
    (not from a browser) is always allowed: Origin is a defence against cross-site pages, and
    only browsers send it.

    With no rules: ``allow_all`` decides (the server allows every origin when auth is off);
    otherwise only same-origin requests (Origin's host and port equal the Host header) pass.
    """

    def __init__(self, rules: Iterable[str], *, allow_all: bool) -> None:
        texts = [rule.strip() for rule in rules if rule.strip()]
        self.allow_all = "*" in texts or (not texts and allow_all)
        self.same_origin_only = not texts and not allow_all
        self._rules = tuple(_parse_rule(text) for text in texts if text != "*")

    @classmethod
    def from_option(cls, text: str, *, allow_all: bool) -> OriginPolicy:
        return cls(text.split(","), allow_all=allow_all)

    def allows(self, origin: str | None, host: str | None = None) -> bool:
        if origin is None or self.allow_all:
            return True
        parsed = _split_origin(origin)
        if parsed is None:
            return False  # "null" (sandboxed frames, file://) and garbage
        scheme, name, port = parsed
        if self.same_origin_only:
            return host is not None and _same_host(name, port, host)
        for rule in self._rules:
            if rule.scheme is not None and rule.scheme != scheme:
                continue
            if rule.port is not None and rule.port != port:
                continue
            if rule.wildcard:
                if name.endswith("." + rule.host):
                    return True
            elif name == rule.host:
                return True
        return False


def _same_host(name: str, port: int | None, host_header: str) -> bool:
    try:
        parts = urlsplit("//" + host_header.strip())
        host = parts.hostname
        host_port = parts.port
    except ValueError:
        return False
    if host is None or host.lower() != name:
        return False
    if host_port is None:
        # The page's own port was its scheme's default, or the browser would have written it;
        # which default (80 or 443) cannot be told behind a proxy that terminates TLS.
        return port in (80, 443)
    return host_port == port


# ---- client address ---------------------------------------------------------------------------


def parse_networks(text: str) -> tuple[IPNetwork, ...]:
    """``--trusted-proxies``: comma-separated addresses or CIDRs."""
    return tuple(
        ipaddress.ip_network(item.strip(), strict=False) for item in text.split(",") if item.strip()
    )


def _address(text: str) -> IPAddress | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # "[2001:db8::1]:443"
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # "192.0.2.1:443"
        text = text.partition(":")[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _trusted(address: IPAddress, proxies: Sequence[IPNetwork]) -> bool:
    return any(address in network for network in proxies)


def is_trusted_proxy(peer: str, proxies: Sequence[IPNetwork]) -> bool:
    address = _address(peer)
    return address is not None and _trusted(address, proxies)


def client_address(
    peer: str | None, forwarded_for: Sequence[str], proxies: Sequence[IPNetwork]
) -> str:
    """The address limits apply to: the peer, unless the peer is a trusted proxy.

    Behind trusted proxies, ``X-Forwarded-For`` is read right to left (each proxy appends the
    address it received from) and the first address that is not itself a trusted proxy is the
    client; whatever a client wrote further left is ignored, so it cannot pick its own address.
    """
    if peer is None:
        return "?"
    peer_address = _address(peer)
    if peer_address is None or not proxies or not _trusted(peer_address, proxies):
        return peer
    candidate = peer_address
    hops = [hop for value in forwarded_for for hop in value.split(",")]
    for hop in reversed(hops):
        address = _address(hop)
        if address is None:
            break  # garbage: trust nothing further left
        candidate = address
        if not _trusted(address, proxies):
            break
    return str(candidate)


# ---- limits -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int  # 400, 403, 426, 429 or 503
    reason: str  # short text for the response body and the first refusal's log line
    label: RefusalReason  # the `reason` label of roomcast_handshakes_refused_total
    retry_after: int | None = None  # seconds, for the Retry-After header
    extra: dict[str, str] | None = None  # more response headers

    @property
    def headers(self) -> dict[str, str]:
        headers = dict(self.extra or {})
        if self.retry_after is not None:
            headers["Retry-After"] = str(self.retry_after)
        return headers


def _count_up(table: dict[str, int], address: str) -> None:
    table[address] = table.get(address, 0) + 1


def _count_down(table: dict[str, int], address: str) -> None:
    left = table.get(address, 0) - 1
    if left > 0:
        table[address] = left
    else:
        table.pop(address, None)


class Limits:
    """Global and per-address connection limits and a per-address handshake rate.

    The handshake rate is a token bucket per address: ``rate`` handshakes per ``window`` seconds,
    with bursts up to ``rate``. Buckets that have refilled are forgotten (amortised O(1)), so the
    table holds only addresses seen recently. A limit of 0 is off.
    """

    PER_IP_RETRY_AFTER = 5  # seconds suggested to a client over --max-connections-per-ip

    def __init__(
        self, *, max_connections: int = 0, max_per_ip: int = 0, rate: int = 0, window: float = 10.0
    ) -> None:
        self.max_connections = max_connections
        self.max_per_ip = max_per_ip
        self.rate = rate
        self.window = window
        self._refill = rate / window if rate and window > 0 else 0.0
        self.open_per_ip: dict[str, int] = {}
        self.lingering_per_ip: dict[str, int] = {}  # answered connections not closed yet
        self._buckets: dict[str, list[float]] = {}  # address -> [tokens, last update]
        self._prune_at = 1024

    def may_start(self, address: str) -> Refusal | None:
        """At accept, before a byte is read: None when `address` may hold one more connection
        (then count it with ``opened``), or why not. An unfinished request holds a slot too, so
        a slowloris cannot hold more descriptors than ``max_per_ip``."""
        if self.max_per_ip and self.open_per_ip.get(address, 0) >= self.max_per_ip:
            return Refusal(
                429, "too many connections from this address", RefusalReason.PER_IP,
                self.PER_IP_RETRY_AFTER,
            )
        return None

    def check(
        self, address: str, open_connections: int, now: float, *, holding: bool = False
    ) -> Refusal | None:
        """None to admit (and count a handshake), or why not. `holding`: this request already
        holds one of the address's slots (taken at accept)."""
        if self.max_connections and open_connections >= self.max_connections:
            return Refusal(503, "server is at its connection limit", RefusalReason.MAX_CONNECTIONS)
        if self._refill:
            wait = self._take(address, now)
            if wait:
                return Refusal(
                    429, "too many handshakes from this address", RefusalReason.HANDSHAKE_RATE,
                    math.ceil(wait),
                )
        held = self.open_per_ip.get(address, 0) - (1 if holding else 0)
        if self.max_per_ip and held >= self.max_per_ip:
            return Refusal(
                429, "too many connections from this address", RefusalReason.PER_IP,
                self.PER_IP_RETRY_AFTER,
            )
        return None

    def opened(self, address: str) -> None:
        _count_up(self.open_per_ip, address)

    def closed(self, address: str) -> None:
        _count_down(self.open_per_ip, address)

    def may_linger(self, address: str) -> bool:
        """Whether an answered connection from `address` may linger (holding its descriptor a
        little longer): while the address has fewer lingering than ``max_per_ip`` (any number
        without that limit). Counted until ``lingered``."""
        if not self.max_per_ip:
            return True
        if self.lingering_per_ip.get(address, 0) >= self.max_per_ip:
            return False
        _count_up(self.lingering_per_ip, address)
        return True

    def lingered(self, address: str) -> None:
        _count_down(self.lingering_per_ip, address)

    def _take(self, address: str, now: float) -> float:
        """Takes one handshake from the address's bucket; returns seconds to wait, 0 if taken."""
        bucket = self._buckets.get(address)
        if bucket is None:
            if len(self._buckets) >= self._prune_at:
                self._prune(now)
            self._buckets[address] = [self.rate - 1.0, now]
            return 0.0
        tokens = min(float(self.rate), bucket[0] + (now - bucket[1]) * self._refill)
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return 0.0
        bucket[0] = tokens
        return (1.0 - tokens) / self._refill

    def _prune(self, now: float) -> None:
        full = float(self.rate)
        refill = self._refill
        self._buckets = {
            address: bucket
            for address, bucket in self._buckets.items()
            if bucket[0] + (now - bucket[1]) * refill < full
        }
        self._prune_at = max(1024, 2 * len(self._buckets))

    @property
    def tracked_addresses(self) -> int:
        return len(self._buckets)
