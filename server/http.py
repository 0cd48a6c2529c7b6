"""Plain HTTP on the WebSocket port: the browser page, its assets, and the server's own routes.

Every request is answered from memory (a small file table read at start, and routes the server
registers: health, readiness, metrics, the token check) with ``Connection: close``; GET and HEAD,
HTTP/1.1 and HTTP/1.0 alike, so load balancers' health checks get their 200 or 503.
"""

from __future__ import annotations

import mimetypes
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import resources

from .http1 import Request

# The page loads only its own script, style and socket, and is framed by no one: an injected
# script (none is known; app.js never uses innerHTML) could neither run inline nor talk elsewhere.
_PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_NO_CACHE = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": _PAGE_POLICY,
}


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


NOT_FOUND = Response(404, b"not found\n")

Route = Callable[[Request], "Response | Awaitable[Response]"]


class StaticSite:
    def __init__(self) -> None:
        self.files: dict[str, tuple[bytes, str]] = {}
        static = resources.files("server") / "static"
        if static.is_dir():
            for entry in static.iterdir():
                if entry.is_file():
                    kind = mimetypes.guess_type(entry.name)[0] or "application/octet-stream"
                    if kind.startswith("text/") or kind in ("application/javascript",):
                        kind += "; charset=utf-8"
                    self.files[entry.name] = (entry.read_bytes(), kind)
        self.routes: dict[str, Route] = {"/healthz": lambda request: Response(200, b"ok\n")}

    def respond(self, request: Request) -> Response | Awaitable[Response]:
        path = request.path
        route = self.routes.get(path)
        if route is not None:
            return route(request)
        if path in ("/", "/index.html"):
            return self._file("index.html")
        if path.startswith("/static/"):
            return self._file(path[len("/static/") :])
        return NOT_FOUND

    def _file(self, name: str) -> Response:
        found = self.files.get(name)
        if found is None:
            return NOT_FOUND
        body, kind = found
        return Response(200, body, {"Content-Type": kind, **_NO_CACHE})
