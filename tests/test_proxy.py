"""deploy/nginx.conf in front of a real server: wss:// through a real Nginx with TLS."""

from __future__ import annotations

import asyncio
import json
import pathlib
import shutil
import ssl
import subprocess
import time
from collections.abc import Iterator

import jwt
import pytest
import websockets

from tests.conftest import Launch
from tests.support import ServerProcess, free_port, stop_process

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
DEPLOY = pathlib.Path(__file__).parent.parent / "deploy" / "nginx.conf"


def make_certificate(folder: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


class Nginx:
    def __init__(self, folder: pathlib.Path, upstream_port: int) -> None:
        self.folder = folder
        self.tls_port = free_port()
        self.http_port = free_port()
        self.cert, key = make_certificate(folder)
        site = DEPLOY.read_text()
        for old, new in (
            ("server 127.0.0.1:8080;", f"server 127.0.0.1:{upstream_port};"),
            ("listen 443 ssl;", f"listen 127.0.0.1:{self.tls_port} ssl;"),
            ("listen 80;", f"listen 127.0.0.1:{self.http_port};"),
            ("/etc/ssl/roomcast/fullchain.pem", str(self.cert)),
            ("/etc/ssl/roomcast/privkey.pem", str(key)),
        ):
            assert old in site, f"deploy/nginx.conf no longer contains {old!r}"
            site = site.replace(old, new)
        (folder / "roomcast.conf").write_text(site)
        temp = "\n".join(
            f"    {kind}_temp_path {folder}/{kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        (folder / "nginx.conf").write_text(
            f"daemon off;\nworker_processes 1;\npid {folder}/nginx.pid;\n"
            f"error_log {folder}/error.log info;\nevents {{ worker_connections 256; }}\n"
            f"http {{\n    access_log off;\n{temp}\n    include {folder}/roomcast.conf;\n}}\n"
        )
        self.proc = subprocess.Popen(
            [NGINX, "-p", str(folder), "-e", str(folder / "error.log"),
             "-c", str(folder / "nginx.conf")],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def stop(self) -> None:
        stop_process(self.proc)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def require_nginx() -> None:
    if not pathlib.Path(NGINX).exists():
        pytest.fail(
            "nginx is not installed: run `make test` (it installs it) or apt-get install nginx"
        )


@pytest.fixture
def proxied(launch: Launch, tmp_path: pathlib.Path) -> Iterator[tuple[ServerProcess, Nginx]]:
    require_nginx()
    server = launch("--rate-limit", "0", "--log-level", "debug")
    nginx = Nginx(tmp_path, server.port)
    try:
        yield server, nginx
    finally:
        nginx.stop()


async def connect_when_up(
    url: str, tls: ssl.SSLContext, source: str = "127.0.0.1", **headers: str
) -> websockets.ClientConnection:
    async with asyncio.timeout(10):
        while True:
            try:
                return await websockets.connect(
                    url,
                    ssl=tls,
                    open_timeout=2,
                    local_addr=(source, 0),
                    additional_headers=headers or None,
                )
            except OSError:
                await asyncio.sleep(0.05)  # nginx is still binding its port


async def test_chat_over_wss_through_nginx(proxied: tuple[ServerProcess, Nginx]) -> None:
    _, nginx = proxied
    tls = ssl.create_default_context(cafile=str(nginx.cert))
    url = f"wss://127.0.0.1:{nginx.tls_port}/ws"
    alice = await connect_when_up(url, tls)
    bob = await connect_when_up(url, tls)
    try:
        await alice.send(json.dumps({"type": "join", "username": "alice", "room": "proxy"}))
        assert json.loads(await asyncio.wait_for(alice.recv(), 5))["users"] == ["alice"]
        await bob.send(json.dumps({"type": "join", "username": "bob", "room": "proxy"}))
        await asyncio.wait_for(bob.recv(), 5)
        assert json.loads(await asyncio.wait_for(alice.recv(), 5))["username"] == "bob"
        await bob.send(json.dumps({"type": "chat", "text": "through nginx"}))
        for ws in (alice, bob):
            message = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert (message["username"], message["text"]) == ("bob", "through nginx")
    finally:
        await alice.close()
        await bob.close()


@pytest.mark.parametrize("trusted", [True, False], ids=["proxy-trusted", "proxy-not-trusted"])
async def test_client_address_comes_from_x_forwarded_for_only_behind_a_trusted_proxy(
    launch: Launch, tmp_path: pathlib.Path, trusted: bool
) -> None:
    """Two clients from 127.0.0.2 and 127.0.0.3 through Nginx (which connects from 127.0.0.1),
    with one connection allowed per client address. Trusted, the server tells them apart by
    X-Forwarded-For; not trusted, both are the proxy's address and the second is refused. A
    forged X-Forwarded-For from a client never counts."""
    require_nginx()
    trust = ["--trusted-proxies", "127.0.0.1/32"] if trusted else []
    server = launch("--max-connections-per-ip", "1", "--log-level", "debug", *trust)
    nginx = Nginx(tmp_path, server.port)
    try:
        tls = ssl.create_default_context(cafile=str(nginx.cert))
        url = f"wss://127.0.0.1:{nginx.tls_port}/"
        first = await connect_when_up(url, tls, "127.0.0.2", **{"X-Forwarded-For": "198.51.100.7"})
        try:
            if trusted:
                second = await connect_when_up(url, tls, "127.0.0.3")
                await second.close()
                log = server.text()
                assert "connected: client 127.0.0.2 (peer 127.0.0.1" in log
                assert "connected: client 127.0.0.3 (peer 127.0.0.1" in log
                assert "198.51.100.7" not in log.split("connected: client")[1].split("\n")[0]
            else:
                with pytest.raises(websockets.InvalidStatus) as refused:
                    await websockets.connect(
                        url, ssl=tls, open_timeout=5, local_addr=("127.0.0.3", 0)
                    )
                assert refused.value.response.status_code == 429
                assert "connected: client 127.0.0.1 (peer 127.0.0.1" in server.text()
        finally:
            await first.close()
    finally:
        nginx.stop()


async def test_nginx_never_exposes_metrics_and_drops_cookies(tmp_path: pathlib.Path) -> None:
    """The shipped config in front of a capturing upstream: /metrics and /readyz answer 404 from
    Nginx itself, and an upgrade reaches the upstream without its Cookie header."""
    require_nginx()
    heads: list[bytes] = []

    async def capture(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    upstream = await asyncio.start_server(capture, "127.0.0.1", 0)
    port = upstream.sockets[0].getsockname()[1]
    nginx = Nginx(tmp_path, port)
    try:
        tls = ssl.create_default_context(cafile=str(nginx.cert))

        async def get(path: str, headers: str = "") -> bytes:
            async with asyncio.timeout(10):
                while True:
                    try:
                        reader, writer = await asyncio.open_connection(
                            "127.0.0.1", nginx.tls_port, ssl=tls
                        )
                        break
                    except OSError:
                        await asyncio.sleep(0.05)  # nginx is still binding its port
                writer.write(
                    f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}Connection: close\r\n"
                    "\r\n".encode()
                )
                answer = await reader.read()
                writer.close()
                return answer

        for path in ("/metrics", "/readyz", "/metrics?format=x"):
            assert (await get(path)).startswith(b"HTTP/1.1 404"), path
        assert heads == []  # answered by Nginx: the upstream never saw them
        await get("/ws", "Upgrade: websocket\r\nCookie: session=secret; tracker=x\r\n")
        assert len(heads) == 1 and b"GET /ws " in heads[0]
        assert b"cookie" not in heads[0].lower() and b"secret" not in heads[0]
    finally:
        nginx.stop()
        upstream.close()
        await upstream.wait_closed()


async def test_with_auth_on_the_page_behind_nginx_on_its_own_port_is_same_origin(
    launch: Launch, tmp_path: pathlib.Path
) -> None:
    """Auth on, no --allowed-origins: only same-origin pages may open a WebSocket. Behind the
    shipped config on a port that is not 443, the page's Origin carries that port; with
    `Host $host` nginx dropped it, and the server's rule (a Host without a port is 80 or 443)
    refused the page's own connections with 403."""
    require_nginx()
    secret = "proxy-test-secret-that-is-long-enough-for-hs256"
    server = launch("--jwt-secret", secret, "--rate-limit", "0")
    nginx = Nginx(tmp_path, server.port)
    try:
        tls = ssl.create_default_context(cafile=str(nginx.cert))
        origin = f"https://127.0.0.1:{nginx.tls_port}"
        token = jwt.encode({"sub": "alice", "exp": int(time.time()) + 600}, secret, "HS256")
        url = f"wss://127.0.0.1:{nginx.tls_port}/ws?token={token}"
        page = await connect_when_up(url, tls, Origin=origin)
        await page.close()
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(url, ssl=tls, open_timeout=5,
                                     additional_headers={"Origin": "https://127.0.0.1"})
        assert refused.value.response.status_code == 403  # another port is another origin
    finally:
        nginx.stop()
