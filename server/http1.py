"""HTTP/1.x request heads and responses as bytes: parsing, rendering, the request picows gets.

Pure, no sockets. Every connection's first bytes are an HTTP request head; server/front.py reads
it, and this module turns it into a ``Request`` (or an ``HttpError`` saying which 4xx and why),
renders responses, and builds the minimal upgrade request handed to picows once the gate has
admitted a WebSocket: only the headers picows checks, so a browser's cookies never reach (and
never grow) picows's per-connection read buffer.

Header values are decoded as Latin-1, which cannot fail: a non-UTF-8 ``Authorization`` header is
just a value the token check refuses (401), never a 500.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from http import HTTPStatus

from multidict import CIMultiDict

MAX_HEAD_BYTES = 16 * 1024
MAX_HEADER_LINES = 128
METHODS = ("GET", "HEAD", "OPTIONS")
ALLOW = "GET, HEAD, OPTIONS"
# RFC 9110 5.1 and 5.5: a field name is a token; a value has no control character but HTAB
# (obs-text, 0x80-0xFF, is allowed); a request target is visible ASCII (RFC 9112 3.2, RFC 3986:
# anything else is percent-encoded). Refused here, so that nothing of the kind reaches picows,
# whose own 400 echoes the bytes as a Python repr, or a log line.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_TARGET = re.compile(rb"[\x21-\x7e]+")


class HttpError(Exception):
    """A request we answer with a 4xx/5xx and close: ``status`` and a one-line ``reason``."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    target: str  # path and query, as sent
    version: str  # "HTTP/1.1" or "HTTP/1.0"
    headers: CIMultiDict[str]

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]

    @property
    def is_upgrade(self) -> bool:
        """A WebSocket opening handshake: an HTTP/1.1 GET with ``Upgrade: websocket`` (RFC 6455
        4.1; RFC 9110 7.8: Upgrade is ignored in an HTTP/1.0 request, answered as a plain GET)."""
        return (
            self.method == "GET"
            and self.version == "HTTP/1.1"
            and self.headers.get("upgrade", "").strip().lower() == "websocket"
        )


def head_end(buffer: bytes | bytearray) -> int:
    """Where the head ends (the index after its blank line), -1 if not yet; raises HttpError
    when the head is already longer than allowed."""
    end = buffer.find(b"\r\n\r\n")
    head = buffer if end < 0 else buffer[: end + 4]
    # A line ended by LF alone: answered now, not left to wait for a CRLF CRLF that a client
    # ending its lines so never sends (it held a connection slot until --handshake-timeout).
    if head.count(b"\n") != head.count(b"\r\n"):
        raise HttpError(400, "malformed request: every line must end with CRLF")
    if end < 0:
        if len(buffer) > MAX_HEAD_BYTES:
            raise HttpError(431, "request header fields too large")
        return -1
    if end + 4 > MAX_HEAD_BYTES:
        raise HttpError(431, "request header fields too large")
    return end + 4


def parse_head(head: bytes) -> Request:
    """The request in `head` (up to and including its blank line); raises HttpError."""
    lines = head[:-4].split(b"\r\n")
    if len(lines) - 1 > MAX_HEADER_LINES:
        raise HttpError(431, "too many header lines")
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        raise HttpError(400, "malformed request line")
    if not _TARGET.fullmatch(parts[1]):
        raise HttpError(400, "malformed request target")
    method, target, version = (part.decode("latin-1") for part in parts)
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise HttpError(400, "unsupported HTTP version (use HTTP/1.1)")
    if not target.startswith("/") and not (method == "OPTIONS" and target == "*"):
        raise HttpError(400, "malformed request target")
    headers: CIMultiDict[str] = CIMultiDict()
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            raise HttpError(400, "malformed header line")
        if _CONTROL.search(value):
            raise HttpError(400, "malformed header value")
        headers.add(name.decode("latin-1"), value.strip(b" \t").decode("latin-1"))
    if len(headers.getall("content-length", ())) > 1:
        # RFC 9112 6.3: which length holds cannot be told, and a proxy may have read the other
        raise HttpError(400, "malformed request: Content-Length repeated")
    if method not in METHODS:
        raise HttpError(405, "method not allowed")
    return Request(method, target, version, headers)


def render(
    status: int,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    *,
    head_only: bool = False,
) -> bytes:
    """A complete response, always ``Connection: close`` (one request per connection)."""
    phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else ""
    lines = [f"HTTP/1.1 {status} {phrase}"]
    extra = headers or {}
    if "Content-Type" not in extra:
        lines.append("Content-Type: text/plain; charset=utf-8")
    lines.extend(f"{name}: {value}" for name, value in extra.items())
    lines.append(f"Content-Length: {len(body)}")
    lines.append("Connection: close")
    text = "\r\n".join(lines) + "\r\n\r\n"
    return text.encode("latin-1") + (b"" if head_only else body)


def options_response() -> bytes:
    """What any OPTIONS request gets: the methods every path allows (RFC 9110 9.3.7). HAProxy's
    default ``option httpchk`` sends ``OPTIONS / HTTP/1.0`` and wants a 2xx."""
    return render(200, b"", {"Allow": ALLOW})


def error_response(error: HttpError) -> bytes:
    headers = {"Allow": ALLOW} if error.status == 405 else None
    return render(error.status, error.reason.encode() + b"\n", headers)


_FOR_PICOWS = ("host", "sec-websocket-key", "sec-websocket-version", "sec-websocket-protocol")


def upgrade_for_picows(request: Request) -> bytes:
    """The request picows validates and answers with its 101: the same upgrade, without what
    the server never reads (cookies, user agent...). ``Connection`` is sent as exactly
    ``Upgrade``: Firefox's valid ``keep-alive, Upgrade`` is one picows's own check refuses."""
    lines = [f"GET {request.target} HTTP/1.1", "Upgrade: websocket", "Connection: Upgrade"]
    for name in _FOR_PICOWS:
        value = request.headers.get(name)
        if value is not None:
            lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
