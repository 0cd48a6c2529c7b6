"""Plain HTTP on the WebSocket port: the browser page, its assets and health checks.

picows answers a non-upgrade GET with the response we return and then closes the connection, so
everything here is a small in-memory file table: no disk access per request.
"""

from __future__ import annotations

import mimetypes
from collections.abc import Callable
from importlib import resources
from typing import Any

from picows import WSUpgradeRequest, WSUpgradeResponse

_NO_CACHE = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}


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
        self.routes: dict[str, Callable[[], Any]] = {"/healthz": self._healthz}

    def respond(self, request: WSUpgradeRequest) -> Any:
        path = request.path.decode("latin-1").split("?", 1)[0]
        route = self.routes.get(path)
        if route is not None:
            return route()
        if path in ("/", "/index.html"):
            return self._file("index.html")
        if path.startswith("/static/"):
            return self._file(path[len("/static/") :])
        return WSUpgradeResponse.create_error_response(404, b"not found\n")

    def _file(self, name: str) -> Any:
        found = self.files.get(name)
        if found is None:
            return WSUpgradeResponse.create_error_response(404, b"not found\n")
        body, kind = found
        return WSUpgradeResponse.create_ok_response(body, {"Content-Type": kind, **_NO_CACHE})

    @staticmethod
    def _healthz() -> Any:
        return WSUpgradeResponse.create_ok_response(b"ok\n")
