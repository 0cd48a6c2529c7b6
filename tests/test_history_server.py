"""Room history and resume on one node, over real sockets and real server processes: history on
join, resume after a dropped connection, a slow consumer and a restart, ids over the wire, and
what a client that asks for none of it sees."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Launch
from tests.frames import server_frames
from tests.rawws import CLOSE, TEXT, RawClient, chat_until_left
from tests.support import ServerProcess, metric
from tests.test_connection import stalled_socket

pytestmark = pytest.mark.usefixtures("raw_clients")


async def join(
    server: ServerProcess, name: str, room: str = "lobby", **fields: Any
) -> tuple[RawClient, Any, Any]:
    """Connects and joins; returns (client, its `history` message or None, its welcome)."""
    client = await RawClient.connect(server.host, server.port)
    client.send_json({"type": "join", "username": name, "room": room, **fields})
    first = await client.recv_json()
    if first["type"] == "history":
        welcome = await client.recv_json()
        assert welcome["type"] == "system" and "users" in welcome, welcome
        return client, first, welcome
    assert first["type"] == "system" and first["username"] == name, first
    return client, None, first


async def chats(client: RawClient, count: int) -> list[Any]:
    """The next `count` chat messages (skipping notices)."""
    got: list[Any] = []
    while len(got) < count:
        message = await client.recv_json()
        if message["type"] == "chat":
            got.append(message)
    return got


async def say(client: RawClient, texts: list[str]) -> list[int]:
    """Sends the chats, ten at a time, and waits for their echoes; returns their seqs."""
    echoes: list[Any] = []
    for start in range(0, len(texts), 10):
        batch = texts[start : start + 10]
        for text in batch:
            client.send_json({"type": "chat", "text": text})
        echoes += await chats(client, len(batch))
    assert [m["text"] for m in echoes] == texts
    return [m["seq"] for m in echoes]


def drop(client: RawClient) -> None:
    """The TCP connection dies (RST), as when a network goes away."""
    sock = client.writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    client.writer.transport.abort()


async def left(client: RawClient, name: str) -> None:
    while True:
        message = await client.recv_json()
        if message.get("event") == "leave" and message.get("username") == name:
            return


async def test_history_on_join_then_live(launch: Launch) -> None:
    server = launch("--rate-limit", "0", "--history-size", "3")
    talker, _, _ = await join(server, "talker")
    seqs = await say(talker, [f"m{n}" for n in range(5)])
    assert seqs == [1, 2, 3, 4, 5]
    late, history, welcome = await join(server, "late", history=10)
    assert history is not None and history["room"] == "lobby"
    assert [m["text"] for m in history["messages"]] == ["m2", "m3", "m4"]  # --history-size 3
    assert (history["recovered"], history["reason"]) == (False, "too many")
    assert (welcome["epoch"], welcome["seq"]) == (history["epoch"], 5)
    _, history, _ = await join(server, "again", history=2)
    assert history is not None and history["recovered"] is True and "reason" not in history
    assert [m["seq"] for m in history["messages"]] == [4, 5]
    talker.send_json({"type": "chat", "text": "live"})
    [live] = await chats(late, 1)
    assert (live["text"], live["seq"]) == ("live", 6)


async def test_a_dropped_connection_resumes_exactly_then_goes_live(launch: Launch) -> None:
    server = launch("--rate-limit", "0")
    talker, _, _ = await join(server, "talker")
    reader, _, welcome = await join(server, "reader")
    await say(talker, ["before"])
    [seen] = await chats(reader, 1)
    position = {"epoch": welcome["epoch"], "seq": seen["seq"]}
    drop(reader)
    await left(talker, "reader")
    missed = [f"missed {n}" for n in range(5)]
    await say(talker, missed)
    # more chats go out while the resume is on its way: each lands in the replay or live, once
    burst = [f"burst {n}" for n in range(30)]
    for text in burst[:15]:
        talker.send_json({"type": "chat", "text": text})
    back = await RawClient.connect(server.host, server.port)
    back.send_json({"type": "join", "username": "reader", "room": "lobby", "since": position})
    for text in burst[15:]:
        talker.send_json({"type": "chat", "text": text})
    await chats(talker, 30)
    history = await back.recv_json()
    welcome = await back.recv_json()
    assert history["type"] == "history" and history["recovered"] is True
    assert history["epoch"] == position["epoch"] == welcome["epoch"]
    replayed = history["messages"]
    live = await chats(back, 35 - len(replayed))
    stream = replayed + live
    assert [m["text"] for m in stream] == missed + burst
    assert [m["seq"] for m in stream] == list(range(seen["seq"] + 1, seen["seq"] + 36))
    assert welcome["seq"] == seen["seq"] + len(replayed)  # the replay ends where live begins


async def test_resumes_that_cannot_be_complete_say_why(launch: Launch) -> None:
    server = launch("--rate-limit", "0", "--history-size", "5")
    talker, _, _ = await join(server, "talker")
    _, _, welcome = await join(server, "watcher")
    epoch = welcome["epoch"]
    await say(talker, [f"m{n}" for n in range(1, 9)])  # seqs 1..8, the room keeps 4..8
    cases = [
        ({"epoch": epoch, "seq": 2}, False, "too old"),
        ({"epoch": epoch, "seq": 3}, True, None),
        ({"epoch": "not-this-stream", "seq": 3}, False, "epoch changed"),
        ({"epoch": epoch, "seq": 9}, False, "unknown position"),
    ]
    for since, recovered, reason in cases:
        _, history, welcome = await join(server, "resumer", since=since)
        assert history is not None
        assert (history["recovered"], history.get("reason")) == (recovered, reason), since
        assert [m["seq"] for m in history["messages"]] == [4, 5, 6, 7, 8]  # the newest kept
        assert welcome["seq"] == 8


async def test_a_resume_too_big_for_one_replay_is_too_many(launch: Launch) -> None:
    # a replay carries at most 2 x --max-buffered-bytes = 128 KiB: 40 of these do not fit
    server = launch("--rate-limit", "0", "--history-size", "100", "--max-buffered-bytes", "65536")
    talker, _, welcome = await join(server, "talker")
    big = "b" * 3900
    await say(talker, [f"{n}{big}" for n in range(40)])
    _, history, _ = await join(server, "resumer", since={"epoch": welcome["epoch"], "seq": 0})
    assert history is not None and (history["recovered"], history["reason"]) == (False, "too many")
    seqs = [m["seq"] for m in history["messages"]]
    assert seqs == list(range(41 - len(seqs), 41)) and 20 < len(seqs) < 40


async def test_a_retried_id_is_acked_again_and_not_posted_twice(launch: Launch) -> None:
    server = launch("--rate-limit", "0")
    sender, _, _ = await join(server, "sender")
    witness, _, _ = await join(server, "witness")
    sender.send_json({"type": "chat", "text": "only once", "id": "msg-1"})
    echo = await sender.recv_json()
    while echo["type"] != "chat":
        echo = await sender.recv_json()
    ack = await sender.recv_json()
    assert ack == {"type": "ack", "id": "msg-1", "seq": echo["seq"]}
    sender.send_json({"type": "chat", "text": "only once", "id": "msg-1"})
    assert await sender.recv_json() == ack
    # after a reconnect too (the connection died before the ack could be read)
    drop(sender)
    again, _, _ = await join(server, "sender")
    again.send_json({"type": "chat", "text": "only once", "id": "msg-1"})
    again.send_json({"type": "chat", "text": "marker"})
    got = [await again.recv_json() for _ in range(2)]
    assert got[0] == ack and got[1]["text"] == "marker"
    assert [m["text"] for m in await chats(witness, 2)] == ["only once", "marker"]


async def test_a_slow_consumer_dropped_with_4000_resumes_with_no_gap(launch: Launch) -> None:
    limit = 262144
    server = launch(
        "--rate-limit", "0", "--max-buffered-bytes", str(limit), "--ping-timeout", "60",
        "--history-size", "2000", "--max-frames-per-second", "0",
    )
    talker, _, _ = await join(server, "talker")
    stalled = await RawClient.connect(server.host, server.port)
    stalled_socket(stalled)
    stalled.send_json({"type": "join", "username": "stalled", "room": "lobby"})
    text = "z" * 3900
    sent = await chat_until_left(talker, "stalled", lambda n: f"{n}:{text}")  # at most 16 MB
    assert sent is not None, "the stalled client was dropped"
    texts, code = await messages_until_close(stalled)
    assert code == 4000
    welcome = texts[0]
    received = [m for m in texts[1:] if m["type"] == "chat"]
    assert received and [m["seq"] for m in received] == list(range(1, len(received) + 1))
    last = received[-1]["seq"]
    assert last < sent, "it missed some"
    since = {"epoch": welcome["epoch"], "seq": last}
    _, history, back = await join(server, "stalled", since=since)
    assert history is not None and history["recovered"] is True, history.get("reason")
    assert [m["seq"] for m in history["messages"]] == list(range(last + 1, sent + 1))
    assert [m["text"].split(":")[0] for m in history["messages"]] == [
        str(n) for n in range(last, sent)
    ]
    assert back["seq"] == sent


async def messages_until_close(client: RawClient) -> tuple[list[Any], int]:
    """Every text message the server sent until it hung up, and the code of its final CLOSE
    (like tests/test_connection.py's read_until_close, keeping the messages)."""
    # the stream's private read buffer: typeshed does not declare it
    data = bytearray(client.reader._buffer)  # type: ignore[attr-defined]
    client.reader._buffer.clear()  # type: ignore[attr-defined]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while loop.time() < deadline:
        chunk = await asyncio.wait_for(client.reader.read(1 << 20), deadline - loop.time())
        if not chunk:
            break
        data += chunk
    messages: list[Any] = []
    frames = server_frames(bytes(data))
    code = 0
    for index, (_, opcode, payload) in enumerate(frames):
        if opcode == CLOSE:
            code = int.from_bytes(payload[:2], "big")
            assert index == len(frames) - 1, "nothing after the CLOSE"
        elif opcode == TEXT:
            messages.append(json.loads(payload))
    assert code, "the last frame is a CLOSE"
    return messages, code


# ---- restarts ------------------------------------------------------------------------------


class Session:
    """A talker says three things with ids; a reader saw the first of them."""

    def __init__(self) -> None:
        self.clients: list[RawClient] = []
        self.position: dict[str, Any] = {}
        self.seqs: list[int] = []

    async def run(self, server: ServerProcess, tag: str) -> Session:
        talker, _, _ = await join(server, "talker")
        reader, _, welcome = await join(server, "reader")
        self.clients = [talker, reader]
        for n in range(3):
            talker.send_json({"type": "chat", "text": f"said {n}", "id": f"{tag}-{n}"})
            [echo] = await chats(talker, 1)
            ack = await talker.recv_json()
            assert ack == {"type": "ack", "id": f"{tag}-{n}", "seq": echo["seq"]}
            self.seqs.append(echo["seq"])
        [first] = await chats(reader, 1)
        self.position = {"epoch": welcome["epoch"], "seq": first["seq"]}
        return self

    async def closed_with(self, code: int) -> None:
        """Each client gets `code` and answers it, so the server's drain does not wait."""
        for client in self.clients:
            assert (await client.expect_close()).close_code == code
            client.send_frame(CLOSE, code.to_bytes(2, "big"))


async def exited(server: ServerProcess) -> int:
    """Waits for the process to end by itself, then for its output."""
    code = await asyncio.wait_for(asyncio.to_thread(server.proc.wait), 15)
    server.stop()  # it has exited: this only collects the rest of its output
    return code


async def saved_by_a_planned_restart(
    launch: Launch, path: Path, *options: str
) -> tuple[ServerProcess, Session]:
    """A server with `--history-file path` runs a Session and is stopped with SIGTERM."""
    first = launch("--rate-limit", "0", "--history-file", str(path), *options)
    session = await Session().run(first, "id")
    first.proc.send_signal(signal.SIGTERM)
    await session.closed_with(1012)
    assert await exited(first) == 0
    return first, session


async def test_a_planned_restart_with_a_history_file_loses_nothing(
    launch: Launch, tmp_path: Path
) -> None:
    path = tmp_path / "history.bin"
    first, session = await saved_by_a_planned_restart(launch, path)
    position, seqs = session.position, session.seqs
    assert path.exists() and "saved the history of 1 rooms" in first.text()
    second = launch("--rate-limit", "0", "--history-file", str(path))
    assert not path.exists(), "read back, then deleted"
    assert "restored the history of 1 rooms (3 messages)" in second.text()
    _, history, welcome = await join(second, "reader", since=position)
    assert history is not None and history["recovered"] is True
    assert [m["text"] for m in history["messages"]] == ["said 1", "said 2"]
    assert (welcome["epoch"], welcome["seq"]) == (position["epoch"], seqs[-1])
    # a retry of an id from before the restart is still recognised
    talker, _, _ = await join(second, "talker")
    talker.send_json({"type": "chat", "text": "said 2", "id": "id-2"})
    assert await talker.recv_json() == {"type": "ack", "id": "id-2", "seq": seqs[-1]}
    talker.send_json({"type": "chat", "text": "after the restart"})
    [echo] = await chats(talker, 1)
    assert echo["seq"] == seqs[-1] + 1  # the stream goes on


async def test_a_planned_restart_keeps_the_rooms_its_drain_empties_even_with_ttl_0(
    launch: Launch, tmp_path: Path
) -> None:
    """--history-ttl 0 forgets a room when its last member leaves; the drain's 1012 is not such
    a leave (before: "saved the history of 0 rooms", resume said epoch changed)."""
    path = tmp_path / "history.bin"
    first, session = await saved_by_a_planned_restart(launch, path, "--history-ttl", "0")
    assert "saved the history of 1 rooms (3 messages" in first.text()
    second = launch("--rate-limit", "0", "--history-file", str(path), "--history-ttl", "0")
    _, history, _ = await join(second, "reader", since=session.position)
    assert history is not None and history["recovered"] is True
    assert [m["text"] for m in history["messages"]] == ["said 1", "said 2"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_second_signal_cuts_the_drain_short_and_the_history_is_still_saved(
    launch: Launch, tmp_path: Path, sig: signal.Signals
) -> None:
    """A client that never answers its CLOSE holds the drain open (here up to a minute); a
    second signal means "stop waiting", not "die": the rest are aborted, logged, and the
    history file is written before a clean exit (before: killed by the signal, no file)."""
    path = tmp_path / "history.bin"
    server = launch(
        "--rate-limit", "0", "--history-file", str(path),
        "--shutdown-timeout", "60", "--ping-timeout", "60",
    )
    session = await Session().run(server, "id")  # two clients that will never answer
    loop = asyncio.get_running_loop()
    started = loop.time()
    server.proc.send_signal(sig)
    while "closing 2 connections" not in server.text():
        assert loop.time() - started < 10, server.text()
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.3)  # well inside the drain
    assert server.proc.poll() is None, "still draining"
    server.proc.send_signal(sig)
    assert await exited(server) == 0
    assert loop.time() - started < 10  # not the minute of --shutdown-timeout
    output = server.text()
    assert f"{sig.name} again: cutting the drain short" in output
    assert "drain cut short: 2 clients still open; aborting them" in output
    assert "saved the history of 1 rooms (3 messages" in output and path.exists()
    assert "Traceback" not in output and "stopped" in output
    second = launch("--rate-limit", "0", "--history-file", str(path))
    _, history, _ = await join(second, "reader", since=session.position)
    assert history is not None and history["recovered"] is True
    assert [m["text"] for m in history["messages"]] == ["said 1", "said 2"]


async def test_after_kill_9_resuming_clients_learn_the_stream_was_lost(
    launch: Launch, tmp_path: Path
) -> None:
    """Also when the crashed process had itself been restarted from a history file: the file
    was deleted when it was read, so nothing stale comes back."""
    path = tmp_path / "history.bin"
    planned = launch("--rate-limit", "0", "--history-file", str(path))
    session = await Session().run(planned, "before")
    planned.proc.send_signal(signal.SIGTERM)
    await session.closed_with(1012)
    assert await exited(planned) == 0
    crashing = launch("--rate-limit", "0", "--history-file", str(path))
    assert "restored the history of 1 rooms" in crashing.text()
    session = await Session().run(crashing, "after")  # the stream goes on past the file
    position = session.position
    assert position["seq"] == 4
    crashing.proc.send_signal(signal.SIGKILL)
    assert await exited(crashing) == -signal.SIGKILL
    assert not path.exists()
    restarted = launch("--rate-limit", "0", "--history-file", str(path))
    assert "no saved history" in restarted.text()
    _, history, welcome = await join(restarted, "reader", since=position)
    assert history is not None
    assert (history["recovered"], history["reason"]) == (False, "epoch changed")
    assert welcome["epoch"] != position["epoch"] and welcome["seq"] == 0


async def test_without_a_history_file_a_restart_is_a_new_stream(launch: Launch) -> None:
    first = launch("--rate-limit", "0")
    session = await Session().run(first, "id")
    first.proc.send_signal(signal.SIGTERM)
    await session.closed_with(1012)
    assert await exited(first) == 0
    second = launch("--rate-limit", "0")
    _, history, _ = await join(second, "reader", since=session.position)
    assert history is not None and history["reason"] == "epoch changed"


async def test_a_corrupt_history_file_is_logged_and_the_server_starts(
    launch: Launch, tmp_path: Path
) -> None:
    path = tmp_path / "history.bin"
    path.write_bytes(b"\x93\x01\x02garbage")
    server = launch("--rate-limit", "0", "--history-file", str(path))
    assert "ignoring history file" in server.text()
    talker, _, welcome = await join(server, "talker")
    assert welcome["seq"] == 0
    assert await say(talker, ["works"]) == [1]


async def test_a_refused_metrics_address_leaves_the_saved_history_on_disk(
    launch: Launch, tmp_path: Path
) -> None:
    path = tmp_path / "history.bin"
    _, session = await saved_by_a_planned_restart(launch, path)
    saved = path.read_bytes()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = f"127.0.0.1:{taken.getsockname()[1]}"
        with pytest.raises(RuntimeError, match="--metrics-listen"):
            launch("--rate-limit", "0", "--history-file", str(path), "--metrics-listen", busy)
    assert path.read_bytes() == saved, "a server that never served must not consume the file"
    second = launch("--rate-limit", "0", "--history-file", str(path))
    _, history, _ = await join(second, "reader", since=session.position)
    assert history is not None and history["recovered"] is True


def test_a_history_file_in_a_missing_directory_is_refused_at_start(
    launch: Launch, tmp_path: Path
) -> None:
    with pytest.raises(RuntimeError, match="does not exist"):
        launch("--history-file", str(tmp_path / "nowhere" / "history.bin"))


# ---- a client that asks for none of it ----------------------------------------------------------


async def test_a_seed_client_sees_todays_messages_plus_only_the_additive_fields(
    launch: Launch,
) -> None:
    server = launch("--rate-limit", "0")
    seed = await RawClient.connect(server.host, server.port)
    seed.send_frame(TEXT, b'{"type":"join","username":"seed","room":"general"}')
    other, _, _ = await join(server, "other", room="general", typing=True)
    other.send_json({"type": "chat", "text": "hello", "id": "x1"})
    other.send_json({"type": "chat", "text": "again", "id": "x1"})  # a duplicate: only acked
    other.send_json({"type": "typing"})
    other.send_json({"type": "leave"})
    seen = [await seed.recv_json() for _ in range(4)]  # up to "other left"
    # anything sent to it because of what `other` did came before that notice; its own chat
    # comes next, so nothing slipped in between
    seed.send_frame(TEXT, b'{"type":"chat","text":"mine"}')
    seen.append(await seed.recv_json())
    notice = ["type", "text", "event", "room", "username", "count", "timestamp"]
    chat = ["type", "username", "text", "timestamp", "seq"]
    assert [(m["type"], sorted(m)) for m in seen] == [
        ("system", sorted([*notice, "users", "epoch", "seq", "max_text_length"])),
        ("system", sorted(notice)),
        ("chat", sorted(chat)),
        ("system", sorted(notice)),
        ("chat", sorted(chat)),
    ]
    assert [m.get("text") for m in seen[2:]] == ["hello", "other left #general", "mine"]


def readme_lines(after: str) -> list[Any]:
    """The JSON lines of the README's first code block after the sentence `after`."""
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = text.split(after, 1)[1].split("```\n", 1)[1].split("```", 1)[0]
    return [json.loads(line) for line in block.splitlines()]


def same_but_clocks(got: Any, shown: Any, epoch: str, shown_epoch: str) -> None:
    """Equal, but for timestamps and the (random) epoch."""
    if isinstance(shown, dict):
        assert sorted(got) == sorted(shown)
        for key, value in shown.items():
            if key == "timestamp":
                assert isinstance(got[key], int)
            elif key == "epoch":
                assert (got[key], value) == (epoch, shown_epoch)
            else:
                same_but_clocks(got[key], value, epoch, shown_epoch)
    elif isinstance(shown, list):
        assert len(got) == len(shown)
        for a, b in zip(got, shown, strict=True):
            same_but_clocks(a, b, epoch, shown_epoch)
    else:
        assert got == shown


async def test_the_readme_terminal_session_with_a_resume(launch: Launch) -> None:
    """The README's wscat lines, the server's answers and the resume, as shown there."""
    server = launch("--rate-limit", "0")
    shown = readme_lines("wscat prints the server's answers")
    client = await RawClient.connect(server.host, server.port)
    client.send_frame(TEXT, b'{"type":"join","username":"terminal-user","room":"general"}')
    welcome = await client.recv_json()
    epoch, shown_epoch = welcome["epoch"], shown[0]["epoch"]
    client.send_frame(TEXT, b'{"type":"chat","text":"Hello from the terminal!"}')
    echo = await client.recv_json()
    for got, line in zip([welcome, echo], shown, strict=True):
        same_but_clocks(got, line, epoch, shown_epoch)
    other, _, _ = await join(server, "other", room="general")
    drop(client)
    await left(other, "terminal-user")
    await say(other, ["Did you see this?"])
    typed, *answers = readme_lines("the server replays what you missed before your welcome.")
    back = await RawClient.connect(server.host, server.port)
    line = json.dumps(typed, separators=(",", ":")).replace(shown_epoch, epoch)
    assert re.fullmatch(r'\{"type":"join",.*"since":\{"epoch":"[0-9a-f]{16}","seq":1\}\}', line)
    back.send_frame(TEXT, line.encode())
    for shown_answer in answers:
        same_but_clocks(await back.recv_json(), shown_answer, epoch, shown_epoch)


async def test_an_empty_room_is_swept_after_the_ttl_and_its_metrics_say_so(
    launch: Launch,
) -> None:
    server = launch("--rate-limit", "0", "--history-ttl", "0.5")
    talker, _, welcome = await join(server, "talker", room="brief")
    await say(talker, ["one", "two"])
    assert metric(server, "roomcast_history_messages") == 2
    assert metric(server, "roomcast_history_rooms") == 1
    talker.send_json({"type": "leave"})
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while await asyncio.to_thread(metric, server, "roomcast_history_rooms") != 0:
        assert loop.time() < deadline, "the room's history was never swept"
        await asyncio.sleep(0.05)
    _, history, _ = await join(server, "talker", room="brief",
                               since={"epoch": welcome["epoch"], "seq": 2})
    assert history is not None and history["reason"] == "epoch changed"
    assert metric(server, "roomcast_history_streams_dropped_total") == 1
    assert metric(server, "roomcast_resumes_total") == 1
    assert metric(server, "roomcast_resumes_recovered_total") == 0
