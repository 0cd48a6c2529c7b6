from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from tests.rawws import RawClient
from tests.redis_support import RedisServer, start_redis
from tests.support import ServerProcess, start_server

Launch = Callable[..., ServerProcess]


@pytest.fixture
def launch() -> Iterator[Launch]:
    """Starts real server processes on port 0; stops them (SIGTERM, then SIGKILL) after the test."""
    started: list[ServerProcess] = []

    def _launch(*args: str, **kwargs: object) -> ServerProcess:
        server = start_server(*args, **kwargs)  # type: ignore[arg-type]
        started.append(server)
        return server

    yield _launch
    for server in started:
        server.stop()


@pytest.fixture
async def raw_clients(launch: Launch) -> AsyncIterator[list[RawClient]]:
    """Closes every RawClient a test opened, inside the test's own event loop, before the
    servers stop (so a server's drain does not wait for clients that will never answer)."""
    RawClient.open_clients.clear()
    yield RawClient.open_clients
    for client in RawClient.open_clients:
        await client.close()
    RawClient.open_clients.clear()


@pytest.fixture
def server(launch: Launch) -> ServerProcess:
    """A default server, with the rate limit out of the way of tests that are not about it."""
    return launch("--rate-limit", "0")


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server on a free port, without persistence; removed after the test."""
    server = start_redis()
    try:
        yield server
    finally:
        server.close()
