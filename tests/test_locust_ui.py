"""The README's "watch a swarm in Locust's web UI" recipe, run as written.

The two commands are read from the README; the server is started with `make run` exactly as
documented (only PORT=0 added, so the test does not need port 8080), Locust from the repository
root (so locust.conf applies) with only the server's real port and a free web port changed. The
swarm is started through the web UI's own endpoint, as the Start button does, and must run with
no failures; the web UI must listen on loopback only.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import ServerProcess, start_server

ROOT = Path(__file__).resolve().parent.parent
USERS = 30  # weights 7:1:2: 3 fan-out users in one room, whose publisher sends 2 messages/s
DOCUMENTED_HOST = "ws://127.0.0.1:8080"


def readme_recipe() -> tuple[list[str], list[str]]:
    """The `make run` and `locust` commands of the README's web-UI recipe."""
    text = (ROOT / "README.md").read_text()
    block = text.split("To watch a swarm in Locust's web UI", 1)[1].split("\n\n", 2)[1]
    commands = [
        shlex.split(line, comments=True)
        for line in block.splitlines()
        if line.startswith("    ") and not line.strip().startswith("#")
    ]
    assert len(commands) == 2, block
    make, locust = commands
    assert make[:2] == ["make", "run"], make
    assert Path(locust[0]).name == "locust" and DOCUMENTED_HOST in locust, locust
    return make, locust


@contextlib.contextmanager
def make_run(command: list[str]) -> Iterator[ServerProcess]:
    """`make run` in its own process group, so that stopping it stops the server under make."""
    server = start_server(command=[*command, "PORT=0"], preexec_fn=os.setsid)
    try:
        yield server
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.proc.pid, signal.SIGTERM)
        server.stop()


def free_port_on_every_address() -> int:
    """A port no socket uses on any local address. The machine's load tests hold ports on many
    127.0.0.x addresses, so a port free on 127.0.0.1 alone is often taken elsewhere, and a
    regression to a wildcard web UI would then fail with EADDRINUSE instead of the loopback
    assertion. The socket is bound only, never listening, and closed at once."""
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        return int(sock.getsockname()[1])


def get_json(url: str, data: dict[str, str] | None = None) -> Any:
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    with urllib.request.urlopen(url, data=body, timeout=5) as answer:
        return json.loads(answer.read())


def refused(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def stat(report: dict[str, Any], method: str, name: str) -> int:
    for row in report["stats"]:
        if row["method"] == method and row["name"] == name:
            return int(row["num_requests"])
    return 0


@pytest.mark.timeout(150)
def test_readme_locust_recipe_runs_without_failures(tmp_path: Path) -> None:
    make, locust = readme_recipe()
    env = {k: v for k, v in os.environ.items() if k != "SCENARIO" and not k.startswith("LOCUST_")}
    with make_run(make) as server:
        web_port = free_port_on_every_address()
        host = f"ws://{server.host}:{server.port}"
        command = [host if arg == DOCUMENTED_HOST else arg for arg in locust]
        log = tmp_path / "locust.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [*command, "--web-port", str(web_port)], cwd=ROOT, env=env,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        ui = f"http://127.0.0.1:{web_port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                assert proc.poll() is None, log.read_text()[-3000:]
                with (
                    contextlib.suppress(urllib.error.URLError, ConnectionError),
                    urllib.request.urlopen(ui, timeout=2) as page,
                ):
                    if page.status == 200:
                        break
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.2)
            # 127.0.0.2 is a loopback address too: only a socket bound to 127.0.0.1 refuses it
            assert refused("127.0.0.2", web_port), "Locust's web UI listens beyond 127.0.0.1"

            started = get_json(
                f"{ui}/swarm", {"user_count": str(USERS), "spawn_rate": "10", "host": host}
            )
            assert started["success"], started
            deadline = time.monotonic() + 60
            while True:
                report = get_json(f"{ui}/stats/requests")
                # 15 messages from the fan-out publisher: past the default limit of 10 per 10 s
                if report["user_count"] == USERS and stat(report, "FANOUT", "last member") >= 15:
                    break
                assert time.monotonic() < deadline, json.dumps(report)[-3000:]
                time.sleep(0.5)
            assert stat(report, "WS", "join") >= USERS
            assert report["errors"] == [], report["errors"]
            total = next(row for row in report["stats"] if row["name"] == "Aggregated")
            assert total["num_failures"] == 0 and report["fail_ratio"] == 0, total
            urllib.request.urlopen(urllib.request.Request(f"{ui}/stop", method="POST"), timeout=5)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
