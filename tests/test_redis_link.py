"""The Redis link (server/redis/link.py) without a Redis server: how its subscriber
connection's reader is stopped."""

from __future__ import annotations

import asyncio

import pytest

from server.redis.link import Subscriber


async def test_closing_a_subscriber_never_swallows_the_closers_own_cancellation() -> None:
    """A recovery cancelled at shutdown while it closes a subscriber must end cancelled: it
    once swallowed the CancelledError and went on retrying Redis, and the process never
    exited."""
    sub = Subscriber({"host": "127.0.0.1", "port": 1}, lambda channel, data: None, lambda e: None)
    started, reader_cancelled, release = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def reader() -> None:  # a read in progress ends a moment after it is cancelled
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            reader_cancelled.set()
            await release.wait()
            raise

    sub.task = asyncio.get_running_loop().create_task(reader())
    await asyncio.wait_for(started.wait(), 5)
    closer = asyncio.get_running_loop().create_task(sub.close())
    await asyncio.wait_for(reader_cancelled.wait(), 5)  # close() now waits for the reader
    closer.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(closer, 5)
    assert sub.task.cancelled() and not sub.alive
