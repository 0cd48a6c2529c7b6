"""History and resume across nodes on a real redis-server (server/redis/): one order and one
numbering everywhere, resume on any node, acked ids exactly once through a node's death, a lost
stream told, and nothing lost through Pub/Sub drops and stalls."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.conftest import Launch
from tests.rawws import RawClient, until
from tests.redis_support import LosingProxy, RedisServer, start_redis
from tests.support import ServerProcess

pytestmark = pytest.mark.usefixtures("raw_clients")


def node(launch: Launch, redis: RedisServer, *extra: str) -> ServerProcess:
    return launch("--rate-limit", "0", "--redis-url", redis.url, "--node-ttl", "1", *extra)


async def join(
    server: ServerProcess, name: str, room: str = "h", **fields: Any
) -> tuple[RawClient, dict[str, Any] | None, dict[str, Any]]:
    """A joined client, the `history` it got (if it asked) and its welcome."""
    client = await RawClient.connect(server.host, server.port)
    client.send_json({"type": "join", "username": name, "room": room, **fields})
    history = None
    while True:
        message = await client.recv_json(timeout=10)
        if message.get("type") == "history":
            history = message
        elif message.get("text") == f"{name} joined #{room}":
            return client, history, message


async def chats(client: RawClient, count: int) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    while len(seen) < count:
        message = await client.recv_json(timeout=10)
        if message.get("type") == "chat":
            seen.append(message)
    return seen


async def chats_until(client: RawClient, last_text: str) -> list[dict[str, Any]]:
    seen = []
    while True:
        message = await client.recv_json(timeout=10)
        if message.get("type") == "chat":
            seen.append(message)
            if message["text"] == last_text:
                return seen


async def test_seqs_are_one_sequence_per_room_on_every_node(
    launch: Launch, redis_server: RedisServer
) -> None:
    a, b = node(launch, redis_server), node(launch, redis_server)
    ann, _, welcome_a = await join(a, "ann")
    bob, _, welcome_b = await join(b, "bob")
    assert welcome_a["epoch"] == welcome_b["epoch"] and welcome_b["seq"] == 0
    for n in range(5):
        (ann if n % 2 else bob).send_json({"type": "chat", "text": f"m{n}"})
    seen_a = await chats(ann, 5)
    seen_b = await chats(bob, 5)
    assert [m["seq"] for m in seen_a] == [m["seq"] for m in seen_b] == [1, 2, 3, 4, 5]
    assert [m["text"] for m in seen_a] == [m["text"] for m in seen_b]  # one order
    assert sorted(m["text"] for m in seen_a) == [f"m{n}" for n in range(5)]


async def test_a_client_resumes_on_the_other_node_with_exactly_what_it_missed(
    launch: Launch, redis_server: RedisServer
) -> None:
    a, b = node(launch, redis_server), node(launch, redis_server)
    talker, _, _ = await join(a, "talker")
    leaver, _, welcome = await join(a, "leaver")
    talker.send_json({"type": "chat", "text": "seen"})
    last = (await chats_until(leaver, "seen"))[-1]
    await leaver.close()  # its connection drops; the room goes on
    for n in range(3):
        talker.send_json({"type": "chat", "text": f"missed {n}"})
    await chats_until(talker, "missed 2")
    back, history, welcome = await join(
        b, "leaver", since={"epoch": welcome["epoch"], "seq": last["seq"]}
    )
    assert history is not None and history["recovered"] is True
    assert [m["text"] for m in history["messages"]] == ["missed 0", "missed 1", "missed 2"]
    assert welcome["seq"] == history["messages"][-1]["seq"]
    talker.send_json({"type": "chat", "text": "live"})
    live = await chats_until(back, "live")
    assert [m["seq"] for m in live] == [welcome["seq"] + 1]  # no gap, no duplicate
    stale = await join(b, "stale", since={"epoch": "not-this-one", "seq": 1})
    assert stale[1] is not None and stale[1]["recovered"] is False
    assert stale[1]["reason"] == "epoch changed"


async def test_acked_ids_exactly_once_through_a_node_killed_mid_conversation(
    launch: Launch, redis_server: RedisServer
) -> None:
    """Numbered messages from two senders, one of them on a node that is killed -9; its
    client resumes on the surviving node and retries what was not acked: one order everywhere,
    no gap, every acked id exactly once."""
    a, b = node(launch, redis_server), node(launch, redis_server)
    watcher, _, welcome = await join(b, "watcher")
    steady, _, _ = await join(b, "steady")
    victim, _, victim_welcome = await join(a, "victim")
    acked: dict[str, int] = {}
    sent_by_victim = [f"v{n}" for n in range(20)]
    for n, text in enumerate(sent_by_victim):
        victim.send_json({"type": "chat", "text": text, "id": text})
        steady.send_json({"type": "chat", "text": f"s{n}", "id": f"s{n}"})
        if n == 9:
            a.proc.send_signal(signal.SIGKILL)  # mid-flight: some of v0..v9 acked, some not
            break
    with pytest.raises((ConnectionError, TimeoutError, asyncio.IncompleteReadError)):
        while True:
            message = await victim.recv_json(timeout=5)
            if message.get("type") == "ack":
                acked[message["id"]] = message["seq"]
    position = max(acked.values(), default=victim_welcome["seq"])
    back, history, _ = await join(
        b, "victim", since={"epoch": victim_welcome["epoch"], "seq": position}
    )
    assert history is not None and history["recovered"] is True
    for text in sent_by_victim:  # the retry of everything not acked, with the same ids
        if text not in acked:
            back.send_json({"type": "chat", "text": text, "id": text})
    back.send_json({"type": "chat", "text": "done", "id": "done"})
    while "done" not in acked:
        message = await back.recv_json(timeout=10)
        if message.get("type") == "ack":
            assert acked.setdefault(message["id"], message["seq"]) == message["seq"]
    seen = await chats_until(watcher, "done")
    texts = [m["text"] for m in seen]
    first = welcome["seq"] + 1
    assert [m["seq"] for m in seen] == list(range(first, first + len(seen)))
    victim_texts = [t for t in texts if t.startswith("v")]
    assert len(victim_texts) == len(set(victim_texts)), "an id was posted twice"
    assert set(victim_texts) == {t for t in sent_by_victim if t in acked}
    for text, seq in acked.items():  # every ack names the message's one place
        assert seen[[m["text"] for m in seen].index(text)]["seq"] == seq


async def test_a_redis_that_lost_its_data_is_told_and_never_replayed_as_recovered(
    launch: Launch, redis_server: RedisServer
) -> None:
    a = node(launch, redis_server)
    ann, _, welcome = await join(a, "ann")
    ann.send_json({"type": "chat", "text": "before"})
    before = (await chats_until(ann, "before"))[-1]
    redis_server.stop()  # no persistence: the streams are gone
    redis_server.start()
    await until(ann, lambda m: m.get("event") == "recovered", timeout=20)
    ann.send_json({"type": "chat", "text": "after"})
    reset = await until(ann, lambda m: m.get("event") == "reset" or m.get("text") == "after")
    assert reset.get("event") == "reset" and reset["epoch"] != welcome["epoch"]
    after = (await chats_until(ann, "after"))[-1]
    assert after["seq"] == reset["seq"] + 1
    _, history, _ = await join(a, "late", since={"epoch": welcome["epoch"], "seq": before["seq"]})
    assert history is not None and history["recovered"] is False
    assert history["reason"] == "epoch changed"


async def test_a_dropped_subscriber_is_repaired_and_loses_nothing(
    launch: Launch, redis_server: RedisServer
) -> None:
    a, b = node(launch, redis_server), node(launch, redis_server)
    listener, _, _ = await join(a, "listener")
    talker, _, _ = await join(b, "talker")
    client = aioredis.Redis(port=redis_server.port)
    try:
        for n in range(60):
            talker.send_json({"type": "chat", "text": f"m{n}"})
            if n == 20:  # every subscriber connection is cut while messages flow
                await client.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
            await asyncio.sleep(0.005)
        talker.send_json({"type": "chat", "text": "last"})
        seen = await chats_until(listener, "last")
    finally:
        await client.aclose()
    numbered = [m for m in seen if m["seq"]]
    assert [m["text"] for m in numbered] == [f"m{n}" for n in range(60)] + ["last"]
    assert [m["seq"] for m in numbered] == list(range(1, 62))


async def test_a_redis_stall_shorter_than_the_timeout_loses_nothing(
    launch: Launch, redis_server: RedisServer
) -> None:
    a, b = node(launch, redis_server), node(launch, redis_server)
    listener, _, _ = await join(a, "listener")
    talker, _, _ = await join(b, "talker")
    client = aioredis.Redis(port=redis_server.port)
    try:
        stall = asyncio.ensure_future(client.execute_command("DEBUG", "SLEEP", "1.5"))
        for n in range(30):
            talker.send_json({"type": "chat", "text": f"m{n}"})
            await asyncio.sleep(0.02)
        await asyncio.wait_for(stall, 10)
        talker.send_json({"type": "chat", "text": "last"})
        seen = await chats_until(listener, "last")
    finally:
        await client.aclose()
    assert [m["seq"] for m in seen] == list(range(1, 32))
    assert "lost Redis" not in a.text() and "lost Redis" not in b.text()


async def test_an_outage_repairs_what_the_other_nodes_said_meanwhile(
    launch: Launch, redis_server: RedisServer
) -> None:
    """Node A loses its link (Redis drops every connection of A's) while B keeps talking through
    Redis: when A is back, its members get what they missed, in order, before what follows."""
    a, b = node(launch, redis_server), node(launch, redis_server)
    listener, _, _ = await join(a, "listener")
    talker, _, _ = await join(b, "talker")
    talker.send_json({"type": "chat", "text": "m0"})
    await chats_until(listener, "m0")
    client = aioredis.Redis(port=redis_server.port)
    try:
        listed = (await client.execute_command("CLIENT", "LIST")).decode()
        names = {line.split(" name=")[1].split(" ")[0] for line in listed.splitlines()}
        node_a = next(n for n in names if n.startswith("roomcast:") and a_node(a) in n)
        for name in (node_a, node_a + ":sub"):
            for line in listed.splitlines():
                if f" name={name} " in line:
                    await client.execute_command("CLIENT", "KILL", "ID", line.split()[0][3:])
        for n in range(1, 11):
            talker.send_json({"type": "chat", "text": f"m{n}"})
        talker.send_json({"type": "chat", "text": "last"})
        seen = await chats_until(listener, "last")
    finally:
        await client.aclose()
    assert [m["text"] for m in seen if m["seq"]] == [f"m{n}" for n in range(1, 11)] + ["last"]
    assert [m["seq"] for m in seen if m["seq"]] == list(range(2, 13))


async def received_until(client: RawClient, predicate: Any) -> list[dict[str, Any]]:
    """Every message `client` gets, up to and including the first that matches."""
    seen = []
    while True:
        message = await client.recv_json(timeout=15)
        seen.append(message)
        if predicate(message):
            return seen


@pytest.mark.parametrize("copy_first", [False, True], ids=["nothing-back", "copy-back"])
async def test_a_chat_in_flight_when_the_link_drops_reaches_every_member_once(
    launch: Launch, redis_server: RedisServer, copy_first: bool
) -> None:
    """Node A's chat runs in Redis (placed, numbered, published) but Redis's answer never
    reaches A: the link drops right then. A cannot know; its members get the chat at once,
    unnumbered (and, with `copy_first`, its numbered copy had come back through A's subscription
    already: that one, then). Either way A's members see it once, also after A is back and has
    repaired the room from Redis, and B's members once, numbered."""
    proxy = LosingProxy(redis_server.port)
    try:
        a = launch("--rate-limit", "0", "--redis-url", proxy.url, "--node-ttl", "5")
        b = node(launch, redis_server)
        ann, _, _ = await join(a, "ann")
        lis, _, _ = await join(a, "lis")
        bob, _, _ = await join(b, "bob")
        ann.send_json({"type": "chat", "text": "m0"})
        for client in (ann, lis, bob):
            await chats_until(client, "m0")
        proxy.arm(b"in flight", mute_all=not copy_first)
        ann.send_json({"type": "chat", "text": "in flight"})
        seen = {
            "ann": await received_until(ann, lambda m: m.get("event") == "recovered"),
            "lis": await received_until(lis, lambda m: m.get("event") == "recovered"),
        }
        assert proxy.cut.is_set()
        ann.send_json({"type": "chat", "text": "after"})
        seen["ann"] += await chats_until(ann, "after")
        seen["lis"] += await chats_until(lis, "after")
        seen["bob"] = await chats_until(bob, "after")
    finally:
        proxy.close()
    for name, messages in seen.items():
        copies = [m for m in messages if m.get("text") == "in flight"]
        assert len(copies) == 1, (name, copies)
    (on_b,) = [m for m in seen["bob"] if m.get("text") == "in flight"]
    assert on_b["seq"] == 2
    (on_a,) = [m for m in seen["lis"] if m.get("text") == "in flight"]
    assert on_a["seq"] == (2 if copy_first else 0)
    assert any(m.get("event") == "outage" for m in seen["lis"])
    assert "lost Redis" in a.text()


def a_node(server: ServerProcess) -> str:
    """The node id a server logged at start."""
    return server.text().split(" as node ")[1].split()[0]


async def test_history_size_zero_still_numbers_and_acks(launch: Launch) -> None:
    redis = start_redis()
    try:
        a = node(launch, redis, "--history-size", "0")
        ann, history, welcome = await join(a, "ann", history=5)
        assert history is not None and history["reason"] == "history disabled"
        ann.send_json({"type": "chat", "text": "x", "id": "i1"})
        chat = await until(ann, lambda m: m.get("type") == "chat")
        ack = await until(ann, lambda m: m.get("type") == "ack")
        assert chat["seq"] == ack["seq"] == welcome["seq"] + 1
    finally:
        redis.close()
