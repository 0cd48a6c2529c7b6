"""The connections to Redis: one command client, and one subscriber connection per shard.

Owns connecting (timeouts, no hidden retries: the broker decides what an outage means) and the
subscriber connections' reader tasks, which hand every pushed message to ``on_message`` and report
a lost connection to ``on_lost``. Knows nothing about rooms or members.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.connection import Connection, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

REDIS_ERRORS = (RedisError, OSError, asyncio.TimeoutError)
COMMAND_TIMEOUT = 5.0
CONNECT_TIMEOUT = 2.0

OnMessage = Callable[[bytes, bytes], None]  # (channel, data)
OnLost = Callable[[BaseException], None]


def is_connection_error(exc: BaseException) -> bool:
    return isinstance(exc, (RedisConnectionError, RedisTimeoutError, OSError))


class Subscriber:
    """One subscribed connection and its reader task; counts the confirmations it awaits."""

    def __init__(self, kwargs: dict[str, Any], on_message: OnMessage, on_lost: OnLost) -> None:
        self.conn = Connection(**kwargs)
        self._on_message = on_message
        self._on_lost = on_lost
        self.pending: dict[bytes, int] = {}  # channel -> (un)subscribe confirmations awaited
        self.changed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.alive = False

    async def connect(self) -> None:
        await self.conn.connect()  # type: ignore[no-untyped-call]
        # redis-py's default handler for pushed messages formats each one into a debug log line.
        self.conn._parser.set_pubsub_push_handler(_as_is)  # type: ignore[attr-defined]
        self.alive = True
        self.task = asyncio.get_running_loop().create_task(self._read())

    async def send(self, command: str, channels: list[bytes]) -> None:
        for channel in channels:
            self.pending[channel] = self.pending.get(channel, 0) + 1
        await self.conn.send_command(command, *channels)

    async def confirmed(self, channels: list[bytes]) -> None:
        pending = self.pending
        while any(pending.get(c) for c in channels):
            if not self.alive:
                raise ConnectionError("subscriber connection lost")
            self.changed.clear()
            await self.changed.wait()

    async def _read(self) -> None:
        on_message = self._on_message
        pending = self.pending
        try:
            while True:
                reply = await self.conn.read_response(timeout=None, push_request=True)
                if not isinstance(reply, list) or len(reply) < 3:
                    continue
                kind = reply[0]
                if kind in (b"message", b"smessage"):
                    on_message(reply[1], reply[2])
                elif kind in (b"subscribe", b"unsubscribe", b"ssubscribe", b"sunsubscribe"):
                    channel = reply[1]
                    left = pending.get(channel, 0) - 1
                    if left > 0:
                        pending[channel] = left
                    else:
                        pending.pop(channel, None)
                    self.changed.set()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.alive = False
            self.changed.set()
            self._on_lost(exc)

    async def close(self) -> None:
        self.alive = False
        self.changed.set()
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()
            # asyncio.wait, not `await self.task` under suppress(CancelledError): that would
            # also swallow a cancellation of the task running close() (a recovery being
            # stopped at shutdown, which then went on retrying Redis and never let the
            # process exit).
            await asyncio.wait({self.task})
        with contextlib.suppress(Exception):
            await self.conn.disconnect()


class Link:
    """A command client and the subscriber connections, (re)made together by ``connect``."""

    def __init__(
        self, url: str, *, cluster: bool, on_message: OnMessage, on_lost: OnLost, name: str = ""
    ) -> None:
        """`on_lost` is told when a subscriber connection drops; `name` is what CLIENT LIST
        shows for this node's connections."""
        self.url = url
        self.name = name
        self.cluster = cluster
        self.publish_command = "SPUBLISH" if cluster else "PUBLISH"
        self.subscribe_command = "SSUBSCRIBE" if cluster else "SUBSCRIBE"
        self.unsubscribe_command = "SUNSUBSCRIBE" if cluster else "UNSUBSCRIBE"
        self._on_message = on_message
        self._on_lost = on_lost
        self.client: Any = None
        self.subscribers: dict[tuple[str, int], Subscriber] = {}

    async def connect(self) -> None:
        common: dict[str, Any] = {
            "socket_timeout": COMMAND_TIMEOUT,
            "socket_connect_timeout": CONNECT_TIMEOUT,
            "retry": Retry(NoBackoff(), 0),
        }
        if self.name:
            common["client_name"] = self.name
        client: Any
        if self.cluster:
            client = RedisCluster.from_url(self.url, **common)
            await asyncio.wait_for(client.initialize(), COMMAND_TIMEOUT)
        else:
            client = Redis.from_url(self.url, **common)
        self.client = client
        await asyncio.wait_for(client.ping(), COMMAND_TIMEOUT)
        if not self.cluster:
            await self.subscriber_for(b"")

    async def connect_with_backoff(
        self,
        prepare: Callable[[Any], Awaitable[None]],
        failed: Callable[[int, BaseException], None],
    ) -> tuple[int, float]:
        """Connects afresh and runs `prepare(client)`, retrying with a jittered backoff up to
        5 s (`failed(attempts so far, why)` after each failure); returns the failed attempts and
        the delay reached."""
        await self.disconnect()
        delay = 0.1
        attempts = 0
        while True:
            try:
                await self.connect()
                await prepare(self.client)
                return attempts, delay
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                attempts += 1
                failed(attempts, exc)
                await self.disconnect()
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 5.0)

    async def subscriber_for(self, channel: bytes) -> Subscriber:
        """The live subscriber connection for `channel`'s shard, connected if need be."""
        if self.cluster:
            node = self.client.get_node_from_key(channel)
            address = (node.host, int(node.port))
        else:
            address = ("", 0)
        sub = self.subscribers.get(address)
        if sub is None or not sub.alive:
            kwargs: dict[str, Any] = dict(parse_url(self.url))
            if self.cluster:
                kwargs.pop("db", None)
                kwargs["host"], kwargs["port"] = address
            kwargs.update(socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=None)
            if self.name:
                kwargs["client_name"] = self.name + ":sub"
            sub = Subscriber(kwargs, self._on_message, self._on_lost)
            self.subscribers[address] = sub
            await asyncio.wait_for(sub.connect(), COMMAND_TIMEOUT)
        return sub

    async def roundtrip(self) -> float | None:
        """Seconds for one PING, or None when it fails."""
        if self.client is None:
            return None
        started = time.monotonic()
        try:
            await asyncio.wait_for(self.client.ping(), COMMAND_TIMEOUT)
        except (*REDIS_ERRORS, TimeoutError):
            return None
        return time.monotonic() - started

    async def disconnect(self) -> None:
        subscribers = list(self.subscribers.values())
        self.subscribers.clear()
        for sub in subscribers:
            await sub.close()
        client, self.client = self.client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.aclose()


async def _as_is(reply: Any) -> Any:
    return reply
