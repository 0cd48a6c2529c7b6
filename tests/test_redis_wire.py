"""The Redis wire format (server/redis/wire.py): the envelope, the count split, and the scripts
run in a real redis-server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st

from server.protocol import SystemMessage, encode
from server.redis.wire import (
    ANNOUNCED,
    JOIN,
    PLAIN,
    UnknownEnvelope,
    announced_head,
    channel_name,
    fill_count,
    join_command,
    join_head,
    leave_command,
    member_field,
    members_key,
    node_of,
    open_envelope,
    parse_join_reply,
    split_count,
)
from tests.redis_support import start_redis


def test_envelopes_round_trip() -> None:
    chat = b'{"type":"chat","text":"hi"}'
    assert open_envelope(chat) == (PLAIN, "", chat)
    field = member_field("a1b2c3", 0xDEADBEEF)
    assert node_of(field) == "a1b2c3"
    assert open_envelope(join_head(field) + chat) == (JOIN, field, chat)
    assert open_envelope(announced_head("a1b2c3") + chat) == (ANNOUNCED, "a1b2c3", chat)


@pytest.mark.parametrize("data", [b"", b"Q-node\n{}", b"Jfield-without-payload\n", b"junk"])
def test_foreign_envelopes_are_refused(data: bytes) -> None:
    with pytest.raises(UnknownEnvelope):
        open_envelope(data)


def test_a_room_lives_in_one_cluster_slot() -> None:
    # the hash tag of the members hash and of the channel is the room name itself
    assert members_key("dev").startswith("room:{dev}") and channel_name("dev") == b"room:{dev}"


@given(
    st.text(min_size=1, max_size=40),
    st.text(min_size=1, max_size=40),
    st.integers(min_value=0, max_value=10**9),
)
def test_split_count_puts_any_count_back_in_place(name: str, room: str, count: int) -> None:
    notice = SystemMessage(f'{name} joined #{room}', "join", room, name, 0, 1234)
    prefix, suffix = split_count(encode(notice))
    rebuilt = json.loads(prefix + str(count).encode() + suffix)
    notice.count = count
    assert rebuilt == json.loads(encode(notice))


def test_split_count_with_a_name_that_looks_like_the_count_field() -> None:
    name = ',"count":0,"timestamp":1,'
    prefix, suffix = split_count(encode(SystemMessage("t", "leave", "r", name, 0, 5)))
    message = json.loads(prefix + b"42" + suffix)
    assert message["count"] == 42 and message["username"] == name


def test_fill_count_is_what_the_scripts_do() -> None:
    notice = encode(SystemMessage("a left #r", "leave", "r", "a", 0, 1))
    assert json.loads(fill_count(notice, 7))["count"] == 7


# ---- the scripts, in a real redis-server ------------------------------------------------------


@pytest.fixture
async def client() -> AsyncIterator[aioredis.Redis]:
    server = await asyncio.to_thread(start_redis)
    redis = aioredis.Redis(port=server.port)
    try:
        yield redis
    finally:
        await redis.aclose()
        await asyncio.to_thread(server.close)


async def _published(pubsub: aioredis.client.PubSub) -> bytes:
    while True:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
        if message is not None:
            return bytes(message["data"])


async def test_the_join_script_registers_counts_publishes_and_lists(client: aioredis.Redis) -> None:
    pubsub = client.pubsub()
    await pubsub.subscribe(channel_name("r"))
    await _published_subscribed(pubsub)
    await client.hset(members_key("r"), "n1:1", "bob")
    notice = encode(SystemMessage("alice joined #r", "join", "r", "alice", 0, 5))
    field = member_field("n2", 2)
    reply = await asyncio.wait_for(
        client.execute_command(
            *join_command("PUBLISH", "r", field, "alice", notice, head=join_head(field), limit=1)
        ),
        5,
    )
    count, names = parse_join_reply(reply)
    assert count == 2 and len(names) == 1 and names[0] in ("alice", "bob")  # capped at 1
    kind, sender, payload = open_envelope(await asyncio.wait_for(_published(pubsub), 5))
    assert (kind, sender) == (JOIN, field)
    assert json.loads(payload)["count"] == 2 and json.loads(payload)["username"] == "alice"
    await pubsub.aclose()


async def test_the_leave_script_announces_only_what_it_removed(client: aioredis.Redis) -> None:
    pubsub = client.pubsub()
    await pubsub.subscribe(channel_name("r"))
    await _published_subscribed(pubsub)
    await client.hset(members_key("r"), mapping={"n1:1": "bob", "n1:2": "carol"})
    notice = encode(SystemMessage("bob left #r", "leave", "r", "bob", 0, 5))
    left = await client.execute_command(
        *leave_command("PUBLISH", "r", "n1:1", notice, b"", force=False)
    )
    assert left == 1
    assert json.loads(await asyncio.wait_for(_published(pubsub), 5))["count"] == 1
    # gone already: no second notice, unless forced (a node announcing after an outage)
    assert await client.execute_command(
        *leave_command("PUBLISH", "r", "n1:1", notice, b"", force=False)
    ) == 1
    await client.execute_command(
        *leave_command("PUBLISH", "r", "n1:1", notice, announced_head("n1"), force=True)
    )
    kind, sender, payload = open_envelope(await asyncio.wait_for(_published(pubsub), 5))
    assert (kind, sender, json.loads(payload)["count"]) == (ANNOUNCED, "n1", 1)
    await pubsub.aclose()


async def _published_subscribed(pubsub: aioredis.client.PubSub) -> None:
    """Waits for the subscription's confirmation."""
    while True:
        message = await pubsub.get_message(timeout=5)
        if message is not None and message["type"] == "subscribe":
            return
