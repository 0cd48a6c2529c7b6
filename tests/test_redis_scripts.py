"""The Lua scripts that decide a room's order (server/redis/scripts.py), in a real redis-server:
numbering, history, deduplication, epochs, joins with their replay, leaves and the TTL."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from server.protocol import ChatMessage, SystemMessage, encode
from server.redis import scripts
from server.redis.wire import (
    ANNOUNCED,
    CHAT,
    JOIN,
    MARK,
    announced_head,
    channel_name,
    chat_position,
    history_key,
    join_head,
    member_field,
    members_key,
    meta_key,
    open_envelope,
)
from tests.redis_support import start_redis


def stored_after(room: str, after: int, upto: int | None = None) -> tuple[object, ...]:
    """The XRANGE of a room's stored messages of seqs after `after` (up to `upto`)."""
    return ("XRANGE", history_key(room), f"0-{after + 1}", "+" if upto is None else f"0-{upto}")


@pytest.fixture
async def client() -> AsyncIterator[aioredis.Redis]:
    server = await asyncio.to_thread(start_redis)
    redis = aioredis.Redis(port=server.port)
    await scripts.load(redis)
    try:
        yield redis
    finally:
        await redis.aclose()
        await asyncio.to_thread(server.close)


@pytest.fixture
async def channel(client: aioredis.Redis) -> AsyncIterator[aioredis.client.PubSub]:
    pubsub = client.pubsub()
    await pubsub.subscribe(channel_name("r"))
    while True:
        message = await pubsub.get_message(timeout=5)
        if message is not None and message["type"] == "subscribe":
            break
    yield pubsub
    await pubsub.aclose()


async def published(pubsub: aioredis.client.PubSub) -> bytes:
    async with asyncio.timeout(5):
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
            if message is not None:
                return bytes(message["data"])


async def chat(
    client: aioredis.Redis, text: str, key: str = "", size: int = 3, epoch: str = "e1"
) -> tuple[bool, int, str]:
    payload = encode(ChatMessage("ann", text, 1, 0))
    command = scripts.chat_command("PUBLISH", "r", payload, epoch=epoch, size=size, key=key)
    return scripts.parse_chat_reply(await client.execute_command(*command))


async def join(
    client: aioredis.Redis, name: str, replay: tuple[str, int, str] = ("", 0, ""), size: int = 3
) -> scripts.JoinReply:
    notice = encode(SystemMessage(f"{name} joined #r", "join", "r", name, 0, 5))
    field = member_field("n2", hash(name) & 0xFFFF)
    command = scripts.join_command(
        "PUBLISH", "r", field, name, notice, head=join_head(field), limit=10, epoch="e1",
        replay=replay, size=size,
    )
    return scripts.JoinReply(await client.execute_command(*command))


async def test_chats_are_numbered_stored_capped_and_published_with_their_seq(
    client: aioredis.Redis, channel: aioredis.client.PubSub
) -> None:
    for n in range(1, 6):
        assert await chat(client, f"m{n}") == (True, n, "e1")
        kind, sender, payload = open_envelope(await published(channel))
        assert kind == CHAT and chat_position(sender) == ("e1", n)
        assert json.loads(payload) == {
            "type": "chat", "username": "ann", "text": f"m{n}", "timestamp": 1, "seq": n
        }
    stored = scripts.parse_fetch_reply(await client.execute_command(*stored_after("r", 0)))
    assert [seq for seq, _ in stored] == [3, 4, 5]  # capped at --history-size (3)
    assert [json.loads(p)["text"] for _, p in stored] == ["m3", "m4", "m5"]
    later = await client.execute_command(*stored_after("r", 3, 4))
    assert [seq for seq, _ in scripts.parse_fetch_reply(later)] == [4]


async def test_a_retried_id_is_not_posted_again_while_the_room_holds_it(
    client: aioredis.Redis, channel: aioredis.client.PubSub
) -> None:
    assert await chat(client, "first", key="ann\x00id-1") == (True, 1, "e1")
    await published(channel)
    assert await chat(client, "first", key="ann\x00id-1") == (False, 1, "e1")  # same ack
    assert await chat(client, "other", key="bob\x00id-1") == (True, 2, "e1")  # its own scope
    for n in range(3):
        await chat(client, f"filler {n}")
    # four newer messages pushed id-1 out of a 3-message history: a retry is a new message now
    assert await chat(client, "first", key="ann\x00id-1") == (True, 6, "e1")
    assert await client.zcard("room:{r}:ids") <= 3


async def test_a_lost_stream_gets_a_new_epoch_and_starts_over(client: aioredis.Redis) -> None:
    await chat(client, "a")
    await chat(client, "b")
    await client.delete(meta_key("r"))  # what a Redis restart without persistence leaves
    assert await chat(client, "c", epoch="e2") == (True, 1, "e2")
    stored = scripts.parse_fetch_reply(await client.execute_command(*stored_after("r", 0)))
    assert [json.loads(p)["text"] for _, p in stored] == ["c"]  # nothing of e1 survives


async def test_a_join_reads_its_position_and_replay_at_its_notice(
    client: aioredis.Redis, channel: aioredis.client.PubSub
) -> None:
    for n in range(1, 6):
        await chat(client, f"m{n}")
    for _ in range(5):
        await published(channel)
    reply = await join(client, "bob", ("since", 3, "e1"))
    assert (reply.count, reply.names, reply.epoch, reply.last) == (1, ["bob"], "e1", 5)
    assert reply.status == "ok" and [json.loads(p)["seq"] for p in reply.payloads] == [4, 5]
    kind, _, notice = open_envelope(await published(channel))
    assert kind == JOIN and json.loads(notice)["count"] == 1
    cases = [
        (("since", 5, "e1"), "ok", []),
        (("since", 1, "e1"), "too old", [3, 4, 5]),  # 2 was trimmed: the newest instead
        (("since", 9, "e1"), "unknown position", [3, 4, 5]),
        (("since", 4, "other"), "epoch changed", [3, 4, 5]),
        (("last", 2, ""), "ok", [4, 5]),
        (("", 0, ""), "", []),
    ]
    for replay, status, seqs in cases:
        reply = await join(client, "carol", replay)
        assert reply.status == status, replay
        assert [json.loads(p)["seq"] for p in reply.payloads] == seqs, replay
    assert (await join(client, "dan", ("last", 2, ""), size=0)).status == "history disabled"


async def test_an_emptied_room_starts_its_ttl_and_a_join_stops_it(client: aioredis.Redis) -> None:
    await join(client, "bob")
    await chat(client, "hello")
    notice = encode(SystemMessage("bob left #r", "leave", "r", "bob", 0, 5))
    field = member_field("n2", hash("bob") & 0xFFFF)
    left = await client.execute_command(
        *scripts.leave_command("PUBLISH", "r", field, notice, b"", force=False, ttl=300)
    )
    assert left == 0
    assert 0 < await client.ttl(meta_key("r")) <= 300
    assert 0 < await client.ttl(history_key("r")) <= 300
    assert 299_000 < await client.pttl(history_key("r")) <= 300_000
    await join(client, "carol")
    assert await client.ttl(meta_key("r")) == -1  # occupied again: kept
    assert await client.ttl(history_key("r")) == -1


async def test_the_leave_script_announces_only_what_it_removed(
    client: aioredis.Redis, channel: aioredis.client.PubSub
) -> None:
    await client.hset(members_key("r"), mapping={"n1:1": "bob", "n1:2": "carol"})
    notice = encode(SystemMessage("bob left #r", "leave", "r", "bob", 0, 5))

    async def leave(head: bytes, *, force: bool) -> int:
        command = scripts.leave_command(
            "PUBLISH", "r", "n1:1", notice, head, force=force, ttl=300
        )
        return int(await client.execute_command(*command))

    assert await leave(b"", force=False) == 1
    assert json.loads(await published(channel))["count"] == 1
    # gone already: no second notice, unless forced (a node announcing after an outage)
    assert await leave(b"", force=False) == 1
    await leave(announced_head("n1"), force=True)
    kind, sender, payload = open_envelope(await published(channel))
    assert (kind, sender, json.loads(payload)["count"]) == (ANNOUNCED, "n1", 1)


async def test_a_repair_marker_carries_the_streams_position(
    client: aioredis.Redis, channel: aioredis.client.PubSub
) -> None:
    command = scripts.mark_command("PUBLISH", "r", "n1")
    assert scripts.parse_mark_reply(await client.execute_command(*command)) == ("", 0)
    assert open_envelope(await published(channel)) == (MARK, "n1/:0", b"{}")
    await chat(client, "a")
    await published(channel)
    assert scripts.parse_mark_reply(await client.execute_command(*command)) == ("e1", 1)
    assert open_envelope(await published(channel))[1] == "n1/e1:1"


async def test_a_fraction_of_a_second_of_ttl_is_kept_not_rounded_to_nothing(
    client: aioredis.Redis,
) -> None:
    """--history-ttl 0.5 keeps an emptied room's history half a second, as on one node."""
    await join(client, "bob")
    await chat(client, "hello")
    notice = encode(SystemMessage("bob left #r", "leave", "r", "bob", 0, 5))
    field = member_field("n2", hash("bob") & 0xFFFF)
    await client.execute_command(
        *scripts.leave_command("PUBLISH", "r", field, notice, b"", force=False, ttl=0.5)
    )
    assert 0 < await client.pttl(history_key("r")) <= 500
