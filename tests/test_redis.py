"""Scale-out through a real Redis: several real server processes, real sockets, no mocks."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.conftest import Launch
from tests.rawws import RawClient, until
from tests.redis_support import RedisServer, start_cluster
from tests.support import ServerProcess, free_port, tcp_sockets

pytestmark = pytest.mark.usefixtures("raw_clients")

TTL = "1"  # --node-ttl for these tests: a dead node's members go within ~2 s


def node(launch: Launch, redis: RedisServer, *extra: str) -> ServerProcess:
    return launch("--rate-limit", "0", "--redis-url", redis.url, "--node-ttl", TTL, *extra)


async def joined(server: ServerProcess, name: str, room: str = "general") -> tuple[RawClient, Any]:
    client = await RawClient.connect(server.host, server.port)
    client.send_json({"type": "join", "username": name, "room": room})
    welcome = await client.recv_json()
    assert welcome["text"] == f"{name} joined #{room}", welcome
    return client, welcome


def chat_text(text: str) -> Callable[[Any], bool]:
    return lambda m: m.get("type") == "chat" and m.get("text") == text


async def wait_for(condition: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        await asyncio.sleep(0.05)


async def test_the_welcome_says_each_node_s_text_limit_and_only_the_welcome(
    launch: Launch, redis_server: RedisServer
) -> None:
    a = node(launch, redis_server, "--max-text-length", "500")
    b = node(launch, redis_server, "--max-text-length", "300")
    alice, welcome = await joined(a, "alice", "limits")
    assert welcome["max_text_length"] == 500
    bob, welcome = await joined(b, "bob", "limits")
    assert welcome["max_text_length"] == 300  # its own node's limit: that node takes the chat
    notice = await alice.recv_json()
    assert notice["text"] == "bob joined #limits" and "max_text_length" not in notice
    await alice.close()
    await bob.close()


async def test_clients_on_two_nodes_chat_both_ways(
    launch: Launch, redis_server: RedisServer
) -> None:
    a, b = node(launch, redis_server), node(launch, redis_server)
    alice, welcome = await joined(a, "alice", "lobby")
    assert welcome["users"] == ["alice"] and welcome["count"] == 1
    bob, welcome = await joined(b, "bob", "lobby")
    assert sorted(welcome["users"]) == ["alice", "bob"] and welcome["count"] == 2
    notice = await alice.recv_json()
    assert notice["text"] == "bob joined #lobby" and notice["count"] == 2
    assert "users" not in notice

    bob.send_json({"type": "chat", "text": "hi from b"})
    for client in (alice, bob):
        message = await client.recv_json()
        assert message["username"] == "bob" and message["text"] == "hi from b"
    alice.send_json({"type": "chat", "text": "hi from a"})
    for client in (alice, bob):
        message = await client.recv_json()
        assert message["username"] == "alice" and message["text"] == "hi from a"

    bob.send_json({"type": "leave"})
    notice = await alice.recv_json()
    assert notice["event"] == "leave" and notice["username"] == "bob" and notice["count"] == 1
    _, welcome = await joined(b, "carol", "lobby")
    assert sorted(welcome["users"]) == ["alice", "carol"] and welcome["count"] == 2


async def test_a_node_subscribes_only_to_rooms_it_has_members_in(
    launch: Launch, redis_server: RedisServer
) -> None:
    a, b = node(launch, redis_server), node(launch, redis_server)
    client = aioredis.Redis(port=redis_server.port)
    try:

        async def subscribers(room: str) -> int:
            reply = await client.pubsub_numsub(f"room:{{{room}}}")
            return int(reply[0][1])

        alice, _ = await joined(a, "alice", "quiet")
        assert await subscribers("quiet") == 1  # only node a: b has nobody in it
        alice.send_json({"type": "chat", "text": "only a hears this"})
        await until(alice, chat_text("only a hears this"))
        assert await subscribers("quiet") == 1

        bob, _ = await joined(b, "bob", "quiet")
        assert await subscribers("quiet") == 2
        bob.send_json({"type": "join", "room": "elsewhere", "username": "bob"})
        await until(bob, lambda m: m.get("text") == "bob joined #elsewhere")
        await wait_for(
            lambda: _eq(subscribers("quiet"), 1), what="node b to unsubscribe from #quiet"
        )
        await alice.close()
        await wait_for(lambda: _eq(subscribers("quiet"), 0), what="no subscriber to #quiet")
        assert await client.hlen("room:{quiet}:members") == 0
    finally:
        await client.aclose()


async def _eq(value: Any, expected: int) -> bool:
    return bool(await value == expected)


async def test_concurrent_senders_on_two_nodes_every_member_sees_one_order(
    launch: Launch, redis_server: RedisServer
) -> None:
    a, b = node(launch, redis_server), node(launch, redis_server)
    members = []
    for server, name in ((a, "a1"), (b, "b1"), (a, "a2"), (b, "b2")):
        client, _ = await joined(server, name, "race")
        members.append(client)
    # Everyone has seen everyone join once the last joiner's notice reached the first members.
    for client in members[:3]:
        await until(client, lambda m: m.get("text") == "b2 joined #race")
    per_sender = 60
    for i in range(per_sender):  # two senders on two nodes, interleaved without waiting
        members[0].send_json({"type": "chat", "text": f"a1-{i}"})
        members[1].send_json({"type": "chat", "text": f"b1-{i}"})
        if i % 10 == 9:
            await asyncio.sleep(0)
    streams = []
    for client in members:
        seen: list[str] = []
        while len(seen) < 2 * per_sender:
            message = await client.recv_json()
            if message["type"] == "chat":
                seen.append(message["text"])
        streams.append(seen)
    for stream in streams:
        assert sorted(stream) == sorted(streams[0])
        assert [t for t in stream if t.startswith("a1")] == [f"a1-{i}" for i in range(per_sender)]
        assert [t for t in stream if t.startswith("b1")] == [f"b1-{i}" for i in range(per_sender)]
    assert streams[1] == streams[0] and streams[2] == streams[0] and streams[3] == streams[0]


async def test_a_joiner_sees_nothing_published_before_its_join(
    launch: Launch, redis_server: RedisServer
) -> None:
    a, b = node(launch, redis_server), node(launch, redis_server)
    alice, _ = await joined(a, "alice", "order")
    for i in range(20):
        alice.send_json({"type": "chat", "text": f"before-{i}"})
    bob, welcome = await joined(b, "bob", "order")
    alice.send_json({"type": "chat", "text": "after"})
    # Everything bob gets after his welcome was published after his join: no "before-" message
    # that preceded his join notice in the channel, and "after" arrives.
    seen = []
    while True:
        message = await bob.recv_json()
        if message.get("type") == "chat":
            seen.append(message["text"])
            if message["text"] == "after":
                break
    alice_stream = []
    while True:
        message = await alice.recv_json()
        alice_stream.append(message.get("text"))
        if message.get("text") == "after":
            break
    # Bob's chats are exactly the suffix of alice's stream after "bob joined #order".
    position = alice_stream.index("bob joined #order")
    assert seen == [t for t in alice_stream[position + 1 :] if t != "bob joined #order"]
    assert welcome["count"] == 2


async def test_killed_node_members_leave_the_others_lists_within_the_lease(
    launch: Launch, redis_server: RedisServer
) -> None:
    a, b = node(launch, redis_server), node(launch, redis_server)
    alice, _ = await joined(a, "alice", "lease")
    await joined(b, "bob", "lease")
    await until(alice, lambda m: m.get("text") == "bob joined #lease")
    b.proc.send_signal(signal.SIGKILL)
    started = time.monotonic()
    notice = await until(alice, lambda m: m.get("event") == "leave", timeout=10)
    elapsed = time.monotonic() - started
    assert notice["username"] == "bob" and notice["count"] == 1
    assert elapsed < 3 * float(TTL) + 2, elapsed
    _, welcome = await joined(a, "carol", "lease")
    assert sorted(welcome["users"]) == ["alice", "carol"]


async def test_redis_restart_mid_conversation(launch: Launch, redis_server: RedisServer) -> None:
    a, b = node(launch, redis_server), node(launch, redis_server)
    alice, _ = await joined(a, "alice", "flaky")
    bob, _ = await joined(b, "bob", "flaky")
    await until(alice, lambda m: m.get("text") == "bob joined #flaky")
    alice.send_json({"type": "chat", "text": "before the outage"})
    await until(bob, chat_text("before the outage"))

    redis_server.stop()
    outage = await until(alice, lambda m: m.get("event") == "outage")
    assert outage["type"] == "system" and "other chat servers" in outage["text"]
    await until(bob, lambda m: m.get("event") == "outage")
    # Local delivery keeps working during the outage.
    alice.send_json({"type": "chat", "text": "during the outage"})
    await until(alice, chat_text("during the outage"))

    redis_server.start()
    await until(alice, lambda m: m.get("event") == "recovered", timeout=15)
    await until(bob, lambda m: m.get("event") == "recovered", timeout=15)
    alice.send_json({"type": "chat", "text": "after the outage"})
    await until(bob, chat_text("after the outage"))
    bob.send_json({"type": "chat", "text": "and back"})
    await until(alice, chat_text("and back"))
    assert a.proc.poll() is None and b.proc.poll() is None
    for server in (a, b):  # outage and recovery logged once each, not per message
        assert server.text().count("lost Redis") == 1, server.text()
        assert server.text().count("is back after") == 1, server.text()
    # Membership was re-registered in the restarted (empty) Redis.
    client = aioredis.Redis(port=redis_server.port)
    try:
        assert await client.hlen("room:{flaky}:members") == 2
    finally:
        await client.aclose()


async def test_sigterm_while_redis_is_down_stops_the_node_at_once(
    launch: Launch, redis_server: RedisServer
) -> None:
    """A node retrying an unreachable Redis still stops on SIGTERM (it once hung until killed
    when the signal found its recovery closing a subscriber connection)."""
    a = node(launch, redis_server)
    alice, _ = await joined(a, "alice", "outage")
    redis_server.stop()
    await until(alice, lambda m: m.get("event") == "outage")
    await alice.close()
    await wait_for(
        lambda: asyncio.sleep(0, "retrying with backoff" in a.text()), what="a retry"
    )
    assert a.stop(timeout=5) == 0, a.text()[-2000:]
    assert "stopped" in a.text()


async def test_unreachable_redis_at_start_serves_locally_then_links(launch: Launch) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}"
    a = launch("--rate-limit", "0", "--redis-url", url, "--node-ttl", TTL)
    alice, welcome = await joined(a, "alice", "early")
    assert welcome["users"] == ["alice"]
    alice.send_json({"type": "chat", "text": "local only"})
    await until(alice, chat_text("local only"))
    assert "cannot reach Redis" in a.text()

    redis = RedisServer(port)
    redis.start()
    try:
        b = launch("--rate-limit", "0", "--redis-url", url, "--node-ttl", TTL)
        bob, welcome = await joined(b, "bob", "early")
        # Node a registered alice once Redis came up; bob sees her.
        deadline = time.monotonic() + 10
        while sorted(welcome["users"]) != ["alice", "bob"]:
            assert time.monotonic() < deadline, welcome
            await bob.close()
            await asyncio.sleep(0.1)
            bob, welcome = await joined(b, "bob", "early")
        bob.send_json({"type": "chat", "text": "hello a"})
        await until(alice, chat_text("hello a"))
    finally:
        redis.close()


async def test_workers_share_one_port_and_chat(redis_server: RedisServer, launch: Launch) -> None:
    sup = launch(
        "--rate-limit", "0", "--redis-url", redis_server.url, "--workers", "2",
        "--node-ttl", TTL,
    )
    assert sup.text().count("roomcast listening on") == 1
    workers = set(_children(sup.proc.pid))
    assert len(workers) == 2, sup.text()
    clients = []
    owners: set[int] = set()
    for i in range(40):
        client, _ = await joined(sup, f"user{i}", "shared")
        clients.append(client)
        owners.add(_owner_pid(client, workers))
        if len(owners) == 2 and i >= 3:
            break
    assert owners == workers, "all connections landed on one worker"
    first, last = clients[0], clients[-1]
    assert _owner_pid(first, workers) != _owner_pid(last, workers) or len(clients) > 2
    last.send_json({"type": "chat", "text": "across workers"})
    for client in clients:
        await until(client, chat_text("across workers"))


async def test_a_dead_worker_is_restarted_and_sigterm_stops_all(
    redis_server: RedisServer, launch: Launch
) -> None:
    sup = launch("--redis-url", redis_server.url, "--workers", "2", "--node-ttl", TTL)
    workers = _children(sup.proc.pid)
    assert len(workers) == 2
    os.kill(workers[0], signal.SIGKILL)
    deadline = time.monotonic() + 15
    while True:
        now = _children(sup.proc.pid)
        if len(now) == 2 and workers[0] not in now:
            break
        assert time.monotonic() < deadline, sup.text()
        await asyncio.sleep(0.05)
    client, _ = await joined(sup, "still", "here")
    await client.close()
    assert sup.stop() == 0
    for pid in now:
        assert not _alive(pid)


def test_workers_without_redis_are_refused() -> None:
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    result = subprocess.run(
        [sys.executable, "-m", "server", "--port", "0", "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == 2
    assert "--workers 2: needs --redis-url" in result.stderr


async def test_redis_cluster_sharded_pubsub(launch: Launch) -> None:
    nodes = start_cluster(3)
    try:
        url = nodes[0].url
        a = launch("--rate-limit", "0", "--redis-url", url, "--redis-cluster", "true")
        b = launch("--rate-limit", "0", "--redis-url", url, "--redis-cluster", "true")
        rooms = [f"room{i}" for i in range(6)]
        pairs = []
        for room in rooms:
            alice, _ = await joined(a, "alice", room)
            bob, welcome = await joined(b, "bob", room)
            assert sorted(welcome["users"]) == ["alice", "bob"], welcome

            def bob_joined(m: dict[str, Any], r: str = room) -> bool:
                return m.get("text") == f"bob joined #{r}"

            await until(alice, bob_joined)
            pairs.append((alice, bob))
        for room, (alice, bob) in zip(rooms, pairs, strict=True):
            alice.send_json({"type": "chat", "text": f"to {room}"})
            await until(bob, chat_text(f"to {room}"))
            bob.send_json({"type": "chat", "text": f"back from {room}"})
            await until(alice, chat_text(f"back from {room}"))
        # Sharded subscriptions, spread over more than one shard.
        counts = []
        for shard in nodes:
            client = aioredis.Redis(port=shard.port)
            try:
                channels = await client.execute_command("PUBSUB", "SHARDCHANNELS")
                counts.append(len(channels))
                for channel in channels:
                    reply = await client.execute_command("PUBSUB", "SHARDNUMSUB", channel)
                    assert int(reply[1]) == 2, (channel, reply)
                assert await client.execute_command("PUBSUB", "NUMPAT") == 0
                assert await client.execute_command("PUBSUB", "CHANNELS") == []
            finally:
                await client.aclose()
        assert sum(counts) == len(rooms), counts
        assert sum(1 for c in counts if c) >= 2, counts
    finally:
        for shard in nodes:
            shard.close()


# ---- processes ---------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as fh:
            found += [int(p) for p in fh.read().split()]
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _owner_pid(client: RawClient, pids: set[int]) -> int:
    """The worker process that holds the server side of `client`'s TCP connection."""
    sock = client.writer.get_extra_info("socket")
    local_port = sock.getsockname()[1]
    inodes = {sock.inode for sock in tcp_sockets() if sock.remote_port == local_port}
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                return pid
    raise AssertionError(f"no worker holds the connection from port {local_port}")


def _scrape(server: ServerProcess) -> tuple[int, dict[str, float]]:
    try:
        with urllib.request.urlopen(server.http_url + "/readyz", timeout=5) as response:
            status = response.status
    except urllib.error.HTTPError as error:
        status = error.code
    with urllib.request.urlopen(server.http_url + "/metrics", timeout=5) as response:
        lines = response.read().decode().splitlines()
    values = {}
    for line in lines:
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return status, values


async def test_readiness_and_metrics_follow_the_broker(
    launch: Launch, redis_server: RedisServer
) -> None:
    server = node(launch, redis_server)

    async def scrape() -> tuple[int, dict[str, float]]:
        return await asyncio.to_thread(_scrape, server)

    status, values = await scrape()
    assert status == 200 and values["roomcast_broker_up"] == 1
    assert values["roomcast_broker_outages_total"] == 0

    async def measured() -> bool:
        return (await scrape())[1].get("roomcast_broker_roundtrip_seconds_count", 0) >= 1

    await wait_for(measured, what="a broker round trip")

    redis_server.stop()

    async def not_ready() -> bool:
        return (await scrape())[0] == 503

    await wait_for(not_ready, what="/readyz to turn 503 with Redis down")
    _, values = await scrape()
    assert values["roomcast_broker_up"] == 0 and values["roomcast_broker_outages_total"] == 1

    redis_server.start()

    async def ready() -> bool:
        return (await scrape())[0] == 200

    await wait_for(ready, timeout=15, what="/readyz to recover with Redis")


async def test_joins_to_two_new_rooms_at_once_are_both_confirmed(
    launch: Launch, redis_server: RedisServer
) -> None:
    """The second room's subscription is still being confirmed when its join is queued: the join
    must wait for it, or the joiner never hears its own join notice back."""
    server = node(launch, redis_server)
    clients = [await RawClient.connect(server.host, server.port) for _ in range(4)]
    for i, client in enumerate(clients):
        client.send_json({"type": "join", "username": f"u{i}", "room": f"fresh{i}"})
    for i, client in enumerate(clients):
        welcome = await client.recv_json()
        assert welcome["text"] == f"u{i} joined #fresh{i}", welcome
        client.send_json({"type": "chat", "text": f"in fresh{i}"})
        assert (await until(client, lambda m: m.get("type") == "chat"))["text"] == f"in fresh{i}"


async def test_typing_crosses_nodes_only_to_members_that_asked(
    launch: Launch, redis_server: RedisServer
) -> None:
    a, b = node(launch, redis_server), node(launch, redis_server)
    typer, _ = await joined(a, "typer", "t")
    old, _ = await joined(b, "old", "t")  # a seed client, no typing
    new = await RawClient.connect(b.host, b.port)
    new.send_json({"type": "join", "username": "new", "room": "t", "typing": True})
    await until(new, lambda m: m.get("text") == "new joined #t")
    await until(old, lambda m: m.get("text") == "new joined #t")
    typer.send_json({"type": "typing"})
    typer.send_json({"type": "chat", "text": "after typing"})
    assert await until(new, lambda m: m.get("type") == "typing") == {
        "type": "typing", "room": "t", "username": "typer"
    }
    # the old client gets the chat and nothing it does not understand before it
    assert (await old.recv_json())["text"] == "after typing"
