"""History and resume across nodes on a real redis-server (server/redis/): one order and one
numbering everywhere, resume on any node, acked ids exactly once through a node's death, a lost
stream told, and nothing lost through Pub/Sub drops and stalls."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from server.history import History
from server.protocol import ChatMessage, frame_payload
from server.redis.joins import replayed
from server.redis.scripts import JoinReply
from tests.conftest import Launch
from tests.rawws import RawClient, until
from tests.redis_support import LosingProxy, RedisServer, cli, start_redis
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


class Inbox:
    """Everything one client receives, in order, read in the background so that several clients
    can be waited on at once; `wait` is bounded by a timeout, never by a sleep."""

    def __init__(self, client: RawClient) -> None:
        self.client = client
        self.messages: list[dict[str, Any]] = []
        self.ended: BaseException | None = None  # why reading stopped (the node died)
        self._arrived = asyncio.Event()
        self._task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        try:
            while True:
                self.messages.append(await self.client.recv_json(timeout=60))
                self._arrived.set()
        except Exception as exc:  # the connection's end, whatever form it takes
            self.ended = exc
            self._arrived.set()

    async def wait(self, predicate: Callable[[], bool], timeout: float = 10) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                if self.ended is not None:
                    raise AssertionError(f"connection ended ({self.ended!r}): {self.messages}")
                self._arrived.clear()
                await self._arrived.wait()

    async def wait_ended(self, timeout: float = 10) -> None:
        async with asyncio.timeout(timeout):
            await asyncio.shield(self._task)

    def stop(self) -> None:
        self._task.cancel()

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("type") == kind]

    def welcome(self) -> dict[str, Any]:
        return next(m for m in self.messages if m.get("event") == "join" and "users" in m)

    def acks(self) -> dict[str, int]:
        acks: dict[str, int] = {}
        for ack in self.of("ack"):  # an id acked twice (a retry) names the same seq
            assert acks.setdefault(ack["id"], ack["seq"]) == ack["seq"], ack
        return acks

    def texts(self) -> set[str]:
        return {m["text"] for m in self.of("chat")}


async def joined(
    server: ServerProcess, name: str, inboxes: list[Inbox], **fields: Any
) -> Inbox:
    """A client joined to room `h` (its `history`, if it asked, and its welcome received)."""
    inbox = Inbox(await RawClient.connect(server.host, server.port))
    inboxes.append(inbox)
    inbox.client.send_json({"type": "join", "username": name, "room": "h", **fields})
    await inbox.wait(lambda: any(m.get("event") == "join" and "users" in m for m in inbox.messages))
    return inbox


async def test_acked_ids_exactly_once_through_a_node_killed_mid_conversation(
    launch: Launch, redis_server: RedisServer
) -> None:
    """Numbered messages with ids from two senders, one per node; node A is killed -9 right
    after Redis placed one of its sender's chats and before the ack could reach it (a proxy
    loses everything Redis sends A from that chat on). Both of A's clients resume on node B with
    `since`; its sender retries every id it has no ack for (one that Redis placed, one that may
    or may not have got there) and one it was acked: every client sees seqs 1..N with no gap,
    the same message at the same seq as the room's history in Redis, and every id in that
    history exactly once, at the seq of its ack(s)."""
    proxy = LosingProxy(redis_server.port)
    proxy.cut_after = 60.0  # never cut: node A dies first, with its last answers lost
    inboxes: list[Inbox] = []
    try:
        a = launch("--rate-limit", "0", "--redis-url", proxy.url, "--node-ttl", "1")
        b = node(launch, redis_server)
        ann = await joined(a, "ann", inboxes)  # the sender on the node that dies
        lis = await joined(a, "lis", inboxes)  # a listener there
        bob = await joined(b, "bob", inboxes)  # the sender on the node that lives
        wat = await joined(b, "wat", inboxes)  # a watcher there
        sent: dict[str, list[str]] = {"ann": [], "bob": []}

        def say(inbox: Inbox, name: str, chat_id: str) -> None:
            sent[name].append(chat_id)
            inbox.client.send_json({"type": "chat", "text": chat_id, "id": chat_id})

        for n in range(5):  # acked on both sides
            say(ann, "ann", f"ann-{n}")
            say(bob, "bob", f"bob-{n}")
        await ann.wait(lambda: set(sent["ann"]) <= set(ann.acks()))
        await bob.wait(lambda: set(sent["bob"]) <= set(bob.acks()))
        # From the moment node A sends ann-5 to Redis, nothing Redis sends reaches A: ann-5 is
        # placed (B's watcher sees it) but neither its copy nor its ack gets back to ann.
        proxy.arm(b'"ann-5"', mute_all=True)
        say(ann, "ann", "ann-5")
        say(ann, "ann", "ann-6")  # right behind it: A may or may not pass it on before it dies
        say(bob, "bob", "bob-5")
        await wat.wait(lambda: "ann-5" in wat.texts())
        a.proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(a.proc.wait, 10)
        await ann.wait_ended()
        await lis.wait_ended()
        placed_in_flight = next(m["seq"] for m in wat.of("chat") if m["text"] == "ann-5")
        assert "ann-5" not in ann.texts() | set(ann.acks()) | lis.texts()
        say(bob, "bob", "bob-6")  # while A's clients are away

        # A's clients resume on B from the last chat each received; B's sender talks meanwhile.
        positions = {
            inbox: (inbox.of("chat") or [inbox.welcome()])[-1]["seq"] for inbox in (ann, lis)
        }
        epoch = ann.welcome()["epoch"]
        resume = [
            asyncio.ensure_future(
                joined(b, name, inboxes, since={"epoch": epoch, "seq": positions[old]})
            )
            for name, old in (("ann", ann), ("lis", lis))
        ]
        say(bob, "bob", "bob-7")  # racing the resumes
        ann2, lis2 = await asyncio.gather(*resume)
        say(bob, "bob", "bob-8")
        for inbox in (ann2, lis2):
            (history,) = [m for m in inbox.messages if m.get("type") == "history"]
            assert history["recovered"] is True, history
            assert inbox.messages.index(history) == inbox.messages.index(inbox.welcome()) - 1
            old = ann if inbox is ann2 else lis
            ends = [m["seq"] for m in history["messages"]] or [positions[old]]
            assert inbox.welcome()["seq"] == ends[-1]  # where live delivery takes over

        # ann retries every id it has no ack for, with the same text, and one that it was acked.
        acked_before = ann.acks()
        unacked = [i for i in sent["ann"] if i not in acked_before]
        assert "ann-5" in unacked
        for chat_id in [*unacked, "ann-0"]:
            ann2.client.send_json({"type": "chat", "text": chat_id, "id": chat_id})
        say(ann2, "ann", "ann-7")  # and goes on
        await ann2.wait(lambda: {*unacked, "ann-0", "ann-7"} <= set(ann2.acks()))
        await bob.wait(lambda: set(sent["bob"]) <= set(bob.acks()))
        say(bob, "bob", "end")  # placed after every other message: each client reads to it
        for inbox in (ann2, lis2, bob, wat):
            await inbox.wait(lambda: "end" in inbox.texts())  # noqa: B023 - awaited right here
        await bob.wait(lambda: "end" in bob.acks())

        client = aioredis.Redis(port=redis_server.port)
        try:
            stored: list[tuple[bytes, dict[bytes, bytes]]] = await client.execute_command(
                "XRANGE", "room:{h}:history", "-", "+"
            )
        finally:
            await client.aclose()
    finally:
        for inbox in inboxes:
            inbox.stop()
        proxy.close()

    room = [json.loads(fields[b"p"]) for _, fields in stored]  # the room's whole history
    assert [m["seq"] for m in room] == list(range(1, len(room) + 1))
    texts = [m["text"] for m in room]
    assert sorted(texts) == sorted([*sent["ann"], *sent["bob"]]), "an id lost or posted twice"
    views = {  # what each client got, old connection, replay and live, in order
        "ann": ann.of("chat") + next(iter(ann2.of("history")))["messages"] + ann2.of("chat"),
        "lis": lis.of("chat") + next(iter(lis2.of("history")))["messages"] + lis2.of("chat"),
        "bob": bob.of("chat"),
        "wat": wat.of("chat"),
    }
    for name, view in views.items():  # no gap, no duplicate, one order: the room's, exactly
        assert view == room, name
    for acks_of in (ann, ann2):  # a retried id is acked with the seq it was acked with before
        for chat_id, seq in acks_of.acks().items():
            assert ann.acks().get(chat_id, seq) == ann2.acks().get(chat_id, seq) == seq
    for name, acks in (("ann", {**ann.acks(), **ann2.acks()}), ("bob", bob.acks())):
        assert set(acks) == set(sent[name]), name  # every id acked in the end
        for chat_id, seq in acks.items():  # at its one place in the room
            assert room[seq - 1]["text"] == chat_id and room[seq - 1]["username"] == name
    # The retry of the id Redis had placed before the kill got its original seq back, and so
    # did the retry of an acked one: neither was published again.
    assert ann2.acks()["ann-5"] == placed_in_flight
    assert ann2.acks()["ann-0"] == acked_before["ann-0"]
    assert not any(m["text"] in ("ann-5", "ann-0") for m in ann2.of("chat"))
    for inbox in (ann, lis, ann2, lis2, bob, wat):
        assert not inbox.of("error"), inbox.of("error")


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


async def test_a_node_back_after_the_new_epoch_began_gets_all_of_it_after_the_reset(
    launch: Launch, redis_server: RedisServer
) -> None:
    """Redis restarts without persistence while A and B serve a room; A is back first and its
    member starts the new stream (seqs 1..6) while B is still reconnecting. B's member is told
    the reset, then gets every message of the new stream, in order, once, then live ones
    (before: B's repair read the new stream after the old stream's last seq, 10, and skipped
    1..6 behind a `reset` at seq 6)."""
    proxy = LosingProxy(redis_server.port)
    try:
        a = node(launch, redis_server)
        b = launch("--rate-limit", "0", "--redis-url", proxy.url, "--node-ttl", "1")
        ann, _, _ = await join(a, "ann")
        bob, _, _ = await join(b, "bob")
        for n in range(10):  # the old stream goes further than the new one will
            ann.send_json({"type": "chat", "text": f"old{n}"})
        await chats_until(bob, "old9")
        await chats_until(ann, "old9")
        proxy.refuse(6.0)  # B cannot be back before A has said everything below
        redis_server.stop()
        redis_server.start()
        await until(ann, lambda m: m.get("event") == "recovered", timeout=20)
        for n in range(1, 7):
            ann.send_json({"type": "chat", "text": f"new{n}"})
        await chats_until(ann, "new6")
        seen = await received_until(bob, lambda m: m.get("event") == "recovered")
        assert any(m.get("event") == "outage" for m in seen)
        ann.send_json({"type": "chat", "text": "live"})
        seen = await received_until(bob, lambda m: m.get("text") == "live")
        # a resume on B from the start of the new stream is exact
        _, history, _ = await join(b, "late", since={"epoch": reset_epoch(seen), "seq": 0})
    finally:
        proxy.close()
    assert history is not None and history["recovered"] is True
    assert [m["text"] for m in history["messages"]] == [f"new{n}" for n in range(1, 7)] + ["live"]
    resets = [m for m in seen if m.get("event") == "reset"]
    assert len(resets) == 1 and resets[0]["seq"] == 0, resets
    after = seen[seen.index(resets[0]) + 1:]
    got = [(m["seq"], m["text"]) for m in after if m.get("type") == "chat"]
    assert got == [(n, f"new{n}") for n in range(1, 7)] + [(7, "live")]
    assert not [m for m in seen[:seen.index(resets[0])] if m.get("type") == "chat"]
    assert not [m for m in seen if m.get("event") == "gap"]


def reset_epoch(seen: list[dict[str, Any]]) -> str:
    """The epoch of the reset notice among `seen`."""
    return str(next(m["epoch"] for m in seen if m.get("event") == "reset"))


async def test_a_flushall_during_traffic_keeps_one_numbering_on_both_nodes(
    launch: Launch, redis_server: RedisServer
) -> None:
    """FLUSHALL while both nodes' members chat (Redis stays up): each node finds its lease gone
    and registers again without leaving the Redis path, so every chat, with or without an id,
    reaches both members once, numbered, in one order (before: for the re-registration the node
    served alone, silently: chats delivered only on their own node with seq 0, and chats with
    ids refused as `unavailable` though Redis answered)."""
    a, b = node(launch, redis_server), node(launch, redis_server)
    ann, _, _ = await join(a, "ann")
    bob, _, _ = await join(b, "bob")
    client = aioredis.Redis(port=redis_server.port)
    sent: list[str] = []
    try:
        for n in range(700):  # 2 ms apart: through the lease renewals (every 0.33 s) after it
            if n == 100:
                await client.execute_command("FLUSHALL")
            text = f"{'ann' if n % 2 else 'bob'}-{n}"
            if n % 2:
                ann.send_json({"type": "chat", "text": text})
            else:
                bob.send_json({"type": "chat", "text": text, "id": text})
            sent.append(text)
            await asyncio.sleep(0.002)
        ann.send_json({"type": "chat", "text": "last"})
        seen = {"ann": await received_until(ann, lambda m: m.get("text") == "last"),
                "bob": await received_until(bob, lambda m: m.get("text") == "last")}
    finally:
        await client.aclose()
    assert "lease had expired" in a.text() and "lease had expired" in b.text()
    for name, messages in seen.items():
        assert not [m for m in messages if m.get("type") == "error"], name
        assert not [m for m in messages if m.get("event") in ("outage", "gap")], name
        chats = [m for m in messages if m.get("type") == "chat"]
        assert [m["text"] for m in chats] == [m["text"] for m in seen["ann"]
                                               if m.get("type") == "chat"], name  # one order
        assert sorted(m["text"] for m in chats) == sorted([*sent, "last"]), name  # each once
        assert all(m["seq"] for m in chats), [m for m in chats if not m["seq"]][:3]
        resets = [i for i, m in enumerate(messages) if m.get("event") == "reset"]
        assert len(resets) == 1, name
        after = [m["seq"] for m in messages[resets[0]:] if m.get("type") == "chat"]
        assert after == list(range(1, len(after) + 1)), name
    # Every chat with an id is acked once. An ack may trail "last": it comes back on the node's
    # command connection, the chats on its subscription.
    acks = [m["id"] for m in seen["bob"] if m.get("type") == "ack"]
    while len(acks) < len(sent) // 2:
        message = await bob.recv_json(timeout=10)
        if message.get("type") == "ack":
            acks.append(message["id"])
    assert sorted(acks) == sorted(text for text in sent if text.startswith("bob"))


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


@pytest.mark.parametrize("copy_first", [False, True])
async def test_a_chat_with_an_id_lost_in_flight_is_answered_and_its_retry_posted_once(
    launch: Launch, redis_server: RedisServer, copy_first: bool
) -> None:
    """As above, with an id: A cannot deliver it unnumbered (its place is unknown) and has no
    ack to give, so its sender is told `unavailable` (never left waiting for an ack); its retry
    after the outage is acked with the seq Redis had given it, and nobody sees it twice."""
    proxy = LosingProxy(redis_server.port)
    try:
        a = launch("--rate-limit", "0", "--redis-url", proxy.url, "--node-ttl", "5")
        b = node(launch, redis_server)
        ann, _, _ = await join(a, "ann")
        bob, _, _ = await join(b, "bob")
        proxy.arm(b"in flight", mute_all=not copy_first)
        ann.send_json({"type": "chat", "text": "in flight", "id": "c1"})
        before = await received_until(ann, lambda m: m.get("event") == "recovered")
        ann.send_json({"type": "chat", "text": "in flight", "id": "c1"})  # the retry
        after = await received_until(ann, lambda m: m.get("type") == "ack")
        ann.send_json({"type": "chat", "text": "after"})
        after += await chats_until(ann, "after")
        on_b = await chats_until(bob, "after")
    finally:
        proxy.close()
    errors = [m for m in before if m.get("type") == "error"]
    assert [(m["code"], m["id"]) for m in errors] == [("unavailable", "c1")], errors
    assert not [m for m in before if m.get("type") == "ack"]  # no ack could come
    assert [m for m in after if m.get("type") == "ack"] == [{"type": "ack", "id": "c1", "seq": 1}]
    # once everywhere, with the seq Redis gave it before the drop (A's repair brings it when its
    # copy had not come back yet); the retry is not posted again
    for messages in (before + after, on_b):
        assert [m["seq"] for m in messages if m.get("text") == "in flight"] == [1]


def a_node(server: ServerProcess) -> str:
    """The node id a server logged at start."""
    return server.text().split(" as node ")[1].split()[0]


async def test_every_ack_comes_after_the_senders_own_copy(
    launch: Launch, redis_server: RedisServer
) -> None:
    """The ack is the chat script's reply and the copy comes through the subscription: without
    waiting for the copy, about one ack in five came first."""
    a = node(launch, redis_server)
    ann, _, _ = await join(a, "ann")
    for i in range(300):
        ann.send_json({"type": "chat", "text": f"t{i}", "id": f"i{i}"})
        first, second = await ann.recv_json(), await ann.recv_json()
        assert (first["type"], first["text"], second) == (
            "chat", f"t{i}", {"type": "ack", "id": f"i{i}", "seq": first["seq"]}
        ), i


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


async def test_history_k_beyond_the_size_is_recovered_when_it_gets_every_chat(
    launch: Launch, redis_server: RedisServer
) -> None:
    """`history: K` with K > --history-size for a room that has had fewer chats than that: all
    of them, recovered (as on one node); `too many` once the room has had more than it keeps."""
    a, b = node(launch, redis_server, "--history-size", "3"), node(
        launch, redis_server, "--history-size", "3"
    )
    talker, _, _ = await join(a, "talker")
    for text in ("m0", "m1"):
        talker.send_json({"type": "chat", "text": text})
    await chats_until(talker, "m1")
    for server in (a, b):  # on the talker's node and on the other
        _, history, welcome = await join(server, "late", history=10)
        assert history is not None and (history["recovered"], "reason" in history) == (True, False)
        assert [(m["text"], m["seq"]) for m in history["messages"]] == [("m0", 1), ("m1", 2)]
        assert welcome["seq"] == 2
    for text in ("m2", "m3", "m4"):
        talker.send_json({"type": "chat", "text": text})
    await chats_until(talker, "m4")
    _, history, welcome = await join(b, "later", history=10)
    assert history is not None and (history["recovered"], history["reason"]) == (False, "too many")
    assert [m["text"] for m in history["messages"]] == ["m2", "m3", "m4"]
    assert welcome["seq"] == 5
    _, history, _ = await join(b, "exact", history=3)
    assert history is not None and history["recovered"] is True


@pytest.mark.parametrize("size", [0, 1, 3, 5])
def test_history_k_is_answered_alike_on_one_node_and_on_redis(size: int) -> None:
    """For every room length and every K, a join's `history: K` gets the same messages, the same
    `recovered` and the same `reason` from server/history.py (one node) as from
    server/redis/joins.py on what the join script returns (the newest K of a stream capped at
    --history-size)."""
    for sent in range(2 * size + 2):
        history = History(size, 10.0, 1 << 30, 1 << 20)
        stream = history.open("r")
        for n in range(sent):
            history.add(stream, ChatMessage("u", f"m{n}", 1), None)
        stored = [bytes(frame_payload(frame)) for frame in stream.entries]
        for count in range(2 * size + 3):
            frames, recovered, reason = history.last(stream, count)
            reply = JoinReply([1, [b"u"], stream.epoch.encode(), sent,
                               b"history disabled" if not size else b"ok",
                               *(stored[-count:] if count else [])])
            expected = ([bytes(frame_payload(f)) for f in frames], recovered, reason)
            assert replayed(count, reply, size, 1 << 20) == expected, (sent, count)


@pytest.mark.parametrize("count", [0, 10**17])
async def test_history_k_of_zero_or_beyond_any_float_gets_its_history_and_welcome(
    launch: Launch, redis_server: RedisServer, count: int
) -> None:
    """K = 0 (Redis's COUNT 0 is nil to Lua) and a K Lua can only hold as a float (1e+17, which
    Redis refuses as a count): answered as on one node, never a join left without a welcome."""
    a = node(launch, redis_server, "--history-size", "3")
    talker, _, _ = await join(a, "talker")
    talker.send_json({"type": "chat", "text": "m0"})
    await chats_until(talker, "m0")
    _, history, welcome = await join(a, "late", history=count)
    assert history is not None and (history["recovered"], "reason" in history) == (True, False)
    assert [m["text"] for m in history["messages"]] == ([] if count == 0 else ["m0"])
    assert welcome["seq"] == 1


async def test_what_redis_refuses_is_told_to_the_joiner_and_the_sender(
    launch: Launch, redis_server: RedisServer
) -> None:
    """Redis answering a script with an error (here: out of memory) is our side's failure: it is
    logged, the joiner still gets its welcome (its history `unavailable`, as in an outage) and
    the sender of a chat that reached no one gets an `unavailable` error with its id."""
    a = node(launch, redis_server, "--node-ttl", "60")  # no lease refresh during the test
    talker, _, _ = await join(a, "talker")
    redis = aioredis.from_url(redis_server.url)
    try:
        await redis.config_set("maxmemory", "1")  # every write is refused: OOM
        _, history, welcome = await join(a, "late", history=5)
        assert history is not None and history["recovered"] is False
        assert history["reason"] == "history unavailable"
        assert sorted(welcome["users"]) == ["late", "talker"]
        talker.send_json({"type": "chat", "text": "refused", "id": "c1"})
        while (message := await talker.recv_json(timeout=10)).get("type") != "error":
            assert message.get("type") != "chat", message  # it reached no one
        assert (message["code"], message["id"]) == ("unavailable", "c1")
    finally:
        await redis.config_set("maxmemory", "0")
        await redis.aclose()
    logged = "redis command EVALSHA failed: command not allowed when used memory"
    for _ in range(100):  # the server's log is read by a thread: it may lag the client a little
        if logged in a.text():
            break
        await asyncio.sleep(0.05)
    assert logged in a.text()


async def test_a_redis_back_from_an_older_snapshot_is_told_and_its_new_chats_delivered(
    launch: Launch, redis_server: RedisServer
) -> None:
    """Redis is killed and restarts from a snapshot taken 5 chats earlier (same epoch, seq 5
    where both nodes had delivered 10): it numbers new chats 6, 7, 8 again. Before, every node
    took them for duplicates and delivered them to nobody, the sender included, while the
    sender was acked, and a resume from seq 8 was `recovered` with 9, 10 of the new numbering.
    Now the first node to see it tells its members (`reset` at seq 5, same epoch), delivers
    them, logs why, and has Redis drop that stream: what follows is a new epoch (a `reset` at
    0 on every node), and a resume from the old numbering is `epoch changed`."""
    a, b = node(launch, redis_server), node(launch, redis_server)
    ann, _, welcome = await join(a, "ann")
    bob, _, _ = await join(b, "bob")
    for n in range(10):
        if n == 5:
            await chats_until(bob, "old4")
            cli(redis_server.port, "SAVE")  # the snapshot Redis comes back from
        ann.send_json({"type": "chat", "text": f"old{n}"})
    await chats_until(bob, "old9")
    await chats_until(ann, "old9")
    assert redis_server.proc is not None
    redis_server.proc.kill()  # no chance to save what came after the snapshot
    redis_server.proc.wait()
    redis_server.start()
    for client in (ann, bob):
        await until(client, lambda m: m.get("event") == "recovered", timeout=20)
    for n in range(3):
        ann.send_json({"type": "chat", "text": f"new{n}", "id": f"n{n}"})
    for client in (ann, bob):
        seen = await received_until(client, lambda m: m.get("text") == "new2")
        resets = [(m["epoch"], m["seq"]) for m in seen if m.get("event") == "reset"]
        # told first: at Redis's seq, or (another node's repair dropped the stream already)
        # at the start of the new epoch
        first = resets[0]
        assert first == (welcome["epoch"], 5) or (first[0] != welcome["epoch"] and first[1] == 0)
        # each chat numbered right after the reset in front of it: new ones, delivered once
        numbered = []
        position = 0
        for message in seen:
            if message.get("event") == "reset":
                position = message["seq"]
            elif message.get("type") == "chat":
                position += 1
                assert message["seq"] == position, seen
                numbered.append(message["text"])
        assert numbered == ["new0", "new1", "new2"]
    assert "went back from seq 10 to 5" in a.text() + b.text()
    _, history, _ = await join(b, "late", since={"epoch": welcome["epoch"], "seq": 8})
    assert history is not None and history["recovered"] is False
    assert history["reason"] == "epoch changed"
