"""deploy/Caddyfile in front of real servers: a real Caddy (Debian's), the shipped file itself.

Only the site address and the upstream are substituted (plain HTTP on loopback, no ACME: Caddy
must never reach out to a certificate authority from a test); everything else, the matchers, the
header rule and the health check, is the file operators install.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import shutil
import subprocess

import pytest
import websockets

from tests.conftest import Launch
from tests.support import ServerProcess, free_port, stop_process

CADDY = shutil.which("caddy") or "/usr/bin/caddy"
DEPLOY = pathlib.Path(__file__).parent.parent / "deploy" / "Caddyfile"


class Caddy:
    """The shipped Caddyfile on a loopback port; ``await Caddy(...).start()`` returns once Caddy
    accepts connections (on another port if the one picked was taken in the meantime)."""

    def __init__(self, folder: pathlib.Path, upstream_port: int) -> None:
        if not pathlib.Path(CADDY).exists():
            pytest.fail("caddy is not installed: run `make test` (it installs it)")
        self.folder = folder
        self.upstream_port = upstream_port
        self.log = folder / "caddy.log"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> Caddy:
        for _ in range(5):
            self._run(free_port())
            if await self._accepting():
                return self
            self.stop()
            if "address already in use" not in self.log.read_text():
                break  # not the race between free_port and Caddy's bind: nothing to retry
        pytest.fail(f"caddy did not start:\n{self.log.read_text()}")

    def _run(self, port: int) -> None:
        self.port = port
        site = DEPLOY.read_text()
        for old, new in (
            ("chat.example.com {", f"http://127.0.0.1:{port} {{"),
            ("reverse_proxy 127.0.0.1:8080 {", f"reverse_proxy 127.0.0.1:{self.upstream_port} {{"),
        ):
            assert old in site, f"deploy/Caddyfile no longer contains {old!r}"
            site = site.replace(old, new)
        config = self.folder / "Caddyfile"
        # default_bind: Caddy would otherwise listen on every interface, not just loopback
        config.write_text(
            "{\n\tadmin off\n\tauto_https off\n\tdefault_bind 127.0.0.1\n}\n" + site
        )
        home = {key: str(self.folder / key.lower()) for key in ("XDG_DATA_HOME", "XDG_CONFIG_HOME")}
        home["HOME"] = str(self.folder)  # Caddy keeps its state there: not in the real home
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [CADDY, "run", "--config", str(config), "--adapter", "caddyfile"],
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **home},
            )  # fmt: skip

    async def _accepting(self) -> bool:
        """Caddy itself answers on the port (not whoever took it after free_port let it go)."""
        assert self.proc is not None
        async with asyncio.timeout(10):
            while self.proc.poll() is None:
                try:
                    async with asyncio.timeout(1):  # a listener that is not Caddy may never answer
                        answer = await self.request("/metrics")  # Caddy answers it, not upstream
                except (OSError, TimeoutError):
                    await asyncio.sleep(0.05)  # still binding: Caddy has no readiness signal
                    continue
                return b"\r\nserver: caddy\r\n" in answer.lower() and self.proc.poll() is None
        return False

    async def request(self, path: str, headers: str = "") -> bytes:
        async with asyncio.timeout(10):
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}Connection: close\r\n\r\n"
                .encode()
            )
            answer = await reader.read()
            writer.close()
            return answer

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


async def test_caddy_hides_metrics_and_readiness_checks_health_and_drops_cookies(
    tmp_path: pathlib.Path,
) -> None:
    heads: list[bytes] = []
    health_checked = asyncio.Event()

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        heads.append(head)
        if head.startswith(b"GET /readyz "):
            health_checked.set()
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nready\n"
            )
        else:
            writer.write(b"HTTP/1.1 418 Teapot\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(upstream, "127.0.0.1", 0)
    caddy = await Caddy(tmp_path, server.sockets[0].getsockname()[1]).start()
    try:
        # Caddy's own health check asks the upstream for /readyz directly ...
        await asyncio.wait_for(health_checked.wait(), 15)
        heads.clear()
        # ... while a client asking Caddy for it, or for /metrics, is answered 404 by Caddy
        for path in ("/metrics", "/readyz", "/metrics?format=x"):
            assert (await caddy.request(path)).startswith(b"HTTP/1.1 404"), path
        assert not [head for head in heads if not head.startswith(b"GET /readyz ")]
        answer = await caddy.request("/ws", "Cookie: session=secret; tracker=x\r\n")
        assert answer.startswith(b"HTTP/1.1 418"), answer  # it went through to the upstream
        [proxied] = [head for head in heads if head.startswith(b"GET /ws ")]
        assert b"cookie" not in proxied.lower() and b"secret" not in proxied
        assert b"x-forwarded-for: 127.0.0.1" in proxied.lower()
    finally:
        caddy.stop()
        server.close()
        await server.wait_closed()


async def test_chat_through_caddy(launch: Launch, tmp_path: pathlib.Path) -> None:
    server: ServerProcess = launch("--rate-limit", "0", "--trusted-proxies", "127.0.0.1/32")
    caddy = await Caddy(tmp_path, server.port).start()
    try:
        await caddy.request("/healthz")  # up and proxying
        url = f"ws://127.0.0.1:{caddy.port}/"
        async with asyncio.timeout(15):
            async with websockets.connect(url) as ann, websockets.connect(url) as bob:
                await ann.send(json.dumps({"type": "join", "username": "ann", "room": "caddy"}))
                assert json.loads(await ann.recv())["text"] == "ann joined #caddy"
                await bob.send(json.dumps({"type": "join", "username": "bob", "room": "caddy"}))
                assert json.loads(await bob.recv())["text"] == "bob joined #caddy"
                assert json.loads(await ann.recv())["text"] == "bob joined #caddy"
                await bob.send(json.dumps({"type": "chat", "text": "through caddy"}))
                for client in (ann, bob):
                    message = json.loads(await client.recv())
                    assert (message["username"], message["text"]) == ("bob", "through caddy")
    finally:
        caddy.stop()
