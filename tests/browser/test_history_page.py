"""History, resume and message ids in the page (docs/history.md): a join shows the room's last
messages; a reconnect resumes exactly where the tab left off, or says that messages may be
missing; a chat whose answer never came is sent again with its id and posted once. In Debian's
Chromium against real server processes; network faults come from a loopback proxy
(netfault.FaultyLink), restarts from real signals. What the page shows (history, then the join;
a divider) is checked at desktop size and at 390x844; the protocol handling behind it (resume,
retries, ids) at desktop size only (conftest.desktop_only)."""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import jwt
import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import desktop_only
from tests.browser.netfault import FaultyLink
from tests.browser.pages import (
    Frames,
    Seed,
    chat_texts,
    dividers,
    join,
    log,
    member,
    say,
    seqs,
    wait_until,
)
from tests.redis_support import start_redis
from tests.support import ServerProcess, free_port

NewPage = Callable[..., Page]
Launch = Callable[..., ServerProcess]
Device = dict[str, object]
Link = Callable[[ServerProcess | int], FaultyLink]

SECRET = "browser-test-secret-that-is-long-enough-for-hs256"
BACK = 20_000  # ms: a page's reconnect backoff is capped at 5 s; a restart takes a few


@pytest.fixture
def link() -> Iterator[Link]:
    """Puts a FaultyLink in front of a server (or a port); closes them after the test."""
    links: list[FaultyLink] = []

    def _link(target: ServerProcess | int) -> FaultyLink:
        port = target if isinstance(target, int) else target.port
        proxy = FaultyLink(port)
        links.append(proxy)
        return proxy

    yield _link
    for proxy in links:
        proxy.close()


def alice_behind_and_bob(
    new_page: NewPage, device: Device, net: FaultyLink, server: ServerProcess
) -> tuple[Frames, Page, Page]:
    """alice joins #lobby through `net` (the test decides when her network fails), bob
    straight to `server`; returns alice's frames and both pages once she sees him."""
    alice_page = new_page(**device)
    frames = Frames(alice_page)
    alice = join(alice_page, net, "alice", "lobby")
    bob = join(new_page(), server, "bob", "lobby")
    expect(member(alice, "bob")).to_have_count(1)
    return frames, alice, bob


def switch(page: Page, room: str) -> None:
    """Joins `room` with the page's form and waits for the welcome."""
    page.fill("#room", room)
    page.click("#join")
    expect(page.locator("#room-name")).to_have_text(f"#{room}")
    expect(page.locator("#messages .system").last).to_have_text(re.compile(f"joined #{room}$"))
    expect(page.locator("#app")).to_have_attribute("data-joined", "true")


def back_online(page: Page) -> None:
    expect(page.locator("#status")).to_have_attribute("data-state", "online", timeout=BACK)
    expect(page.locator("#app")).to_have_attribute("data-joined", "true", timeout=BACK)


def says(page: Page, texts: list[str]) -> None:
    """Sends each text and waits until the server has acked it (the composer is empty again)."""
    for text in texts:
        say(page, text)
        expect(page.locator("#composer")).to_have_attribute("data-outbox", "idle")
    expect(chat_texts(page).last).to_have_text(texts[-1])


# ---------- history on join ----------


def test_a_join_shows_the_rooms_last_messages_then_the_join(
    server: ServerProcess, new_page: NewPage, device: Device
) -> None:
    writer = join(new_page(), server, "writer", "lobby")
    said = [f"m{n}" for n in range(1, 53)]
    says(writer, said)
    page = new_page(**device)
    frames = Frames(page)
    join(page, server, "reader", "lobby")
    expect(chat_texts(page)).to_have_text(said[-50:])  # the page asks for the last 50
    assert seqs(page) == list(range(3, 53))
    assert frames.of_type("join")[-1]["history"] == 50
    # ...then the join itself; and nothing was missed on a first visit
    expect(page.locator("#messages li").last).to_have_text(re.compile("reader joined #lobby$"))
    expect(dividers(page)).to_have_count(0)
    # the writer's own messages are his, in the history too
    again = join(new_page(), server, "writer", "lobby")
    expect(again.locator("#messages .chat.own")).to_have_count(50)
    say(writer, "live")
    expect(chat_texts(page).last).to_have_text("live")
    assert seqs(page)[-2:] == [52, 53]


@desktop_only
def test_coming_back_to_a_room_shows_only_what_is_new_and_flags_a_gap(
    launch: Launch, new_page: NewPage, device: Device
) -> None:
    server = launch("--rate-limit", "0", "--history-size", "5")
    alice = join(new_page(**device), server, "alice", "a")
    bob = join(new_page(), server, "bob", "a")
    expect(member(alice, "bob")).to_have_count(1)
    says(bob, ["a1", "a2", "a3"])
    expect(chat_texts(alice)).to_have_text(["a1", "a2", "a3"])
    switch(alice, "b")
    says(bob, ["a4"])
    switch(alice, "a")
    # the room's last messages are a1..a4: the three on screen are not shown twice
    expect(chat_texts(alice)).to_have_text(["a1", "a2", "a3", "a4"])
    assert seqs(alice) == [1, 2, 3, 4]
    expect(dividers(alice)).to_have_count(0)
    switch(alice, "b")
    says(bob, ["a5", "a6", "a7", "a8", "a9", "a10"])  # the room keeps a6..a10
    switch(alice, "a")
    expect(chat_texts(alice)).to_have_count(9)
    assert log(alice) == ["a1", "a2", "a3", "a4", "--", "a6", "a7", "a8", "a9", "a10"]
    expect(dividers(alice)).to_have_text(re.compile("You may have missed messages"))


# ---------- positions per tab ----------


@desktop_only
def test_a_tab_keeps_its_own_position_across_a_reload_and_another_tab_has_none(
    launch: Launch, new_page: NewPage, device: Device
) -> None:
    server = launch("--rate-limit", "0", "--history-size", "5")
    tab = join(new_page(**device), server, "alice", "lobby")
    bob = join(new_page(), server, "bob", "lobby")
    expect(member(tab, "bob")).to_have_count(1)
    says(bob, ["m1", "m2"])
    expect(chat_texts(tab)).to_have_text(["m1", "m2"])
    tab.goto("about:blank")  # the tab goes elsewhere; its sessionStorage stays with it
    says(bob, [f"m{n}" for n in range(3, 10)])  # the room keeps m5..m9
    # Another tab of the same person (shared localStorage) was never in the room.
    other = join(new_page(same_context_as=tab), server, "alice", "lobby")
    expect(chat_texts(other)).to_have_text(["m5", "m6", "m7", "m8", "m9"])
    expect(dividers(other)).to_have_count(0)
    # The first tab comes back: it was at m2, and m3 and m4 are gone.
    join(tab, server, "alice", "lobby")
    expect(chat_texts(tab)).to_have_count(5)
    assert log(tab) == ["--", "m5", "m6", "m7", "m8", "m9"]
    expect(dividers(tab)).to_contain_text("more were sent while you were away")
    assert tab.evaluate("localStorage.length") == 0
    # Reloaded with nothing new since: the same messages, nothing flagged.
    tab.reload()
    join(tab, server, "alice", "lobby")
    expect(chat_texts(tab)).to_have_text(["m5", "m6", "m7", "m8", "m9"])
    expect(dividers(tab)).to_have_count(0)


# ---------- restarts ----------


@desktop_only
def test_a_planned_restart_resumes_with_no_divider_no_gap_and_no_duplicate(
    launch: Launch, link: Link, new_page: NewPage, device: Device, tmp_path: Path
) -> None:
    port = free_port()
    args = ("--rate-limit", "0", "--history-file", str(tmp_path / "history.bin"))
    first = launch(*args, port=port)
    net = link(port)  # alice's way to the server, so the test decides when she is back
    frames, alice, bob = alice_behind_and_bob(new_page, device, net, first)
    says(bob, ["b1", "b2"])
    expect(chat_texts(alice)).to_have_text(["b1", "b2"])

    net.refuse(True)
    assert first.stop(signal.SIGTERM) == 0  # 1012 to every client, the history saved
    expect(alice.locator("#messages .system", has_text="server restarting")).to_have_count(1)
    second = launch(*args, port=port)
    assert "restored the history of 1 rooms (2 messages)" in second.text()
    back_online(bob)  # bob comes back by himself and talks while alice is still away
    says(bob, ["b3", "b4"])
    expect(chat_texts(alice)).to_have_text(["b1", "b2"])
    net.refuse(False)
    back_online(alice)
    expect(chat_texts(alice)).to_have_text(["b1", "b2", "b3", "b4"])
    says(bob, ["b5"])
    for page in (alice, bob):
        expect(chat_texts(page)).to_have_text(["b1", "b2", "b3", "b4", "b5"])
        assert seqs(page) == [1, 2, 3, 4, 5]
        expect(dividers(page)).to_have_count(0)
    resume = frames.of_type("join")[-1]
    assert resume["since"]["seq"] == 2 and "history" not in resume


def test_a_crash_shows_the_divider_then_what_the_new_server_has(
    launch: Launch, link: Link, new_page: NewPage, device: Device, tmp_path: Path
) -> None:
    port = free_port()
    args = ("--rate-limit", "0", "--history-file", str(tmp_path / "history.bin"))
    first = launch(*args, port=port)
    net = link(port)
    alice = join(new_page(**device), net, "alice", "lobby")
    bob = join(new_page(), first, "bob", "lobby")
    expect(member(alice, "bob")).to_have_count(1)
    says(bob, ["b1", "b2"])
    expect(chat_texts(alice)).to_have_text(["b1", "b2"])

    net.refuse(True)
    assert first.stop(signal.SIGKILL) == -signal.SIGKILL  # no history file written
    expect(alice.locator("#status")).to_have_attribute("data-state", "reconnecting")
    launch(*args, port=port)
    back_online(bob)
    expect(dividers(bob)).to_have_count(1)
    says(bob, ["after the crash"])
    net.refuse(False)
    back_online(alice)
    expect(chat_texts(alice)).to_have_count(3)
    assert log(alice) == ["b1", "b2", "--", "after the crash"]
    expect(dividers(alice)).to_contain_text("You may have missed messages")
    expect(dividers(alice)).to_contain_text("lost the room's history")
    says(bob, ["later"])
    expect(chat_texts(alice).last).to_have_text("later")
    assert log(alice) == ["b1", "b2", "--", "after the crash", "later"]
    assert seqs(alice) == [1, 2, 1, 2]  # a new stream: its own numbers


# ---------- retries: ids and acks ----------


@desktop_only
def test_a_chat_the_killed_server_never_answered_is_sent_again_and_posted_once(
    launch: Launch, new_page: NewPage, device: Device
) -> None:
    port = free_port()
    first = launch("--rate-limit", "0", port=port)
    alice_page = new_page(**device)
    frames = Frames(alice_page)
    alice = join(alice_page, first, "alice", "lobby")
    bob = join(new_page(), first, "bob", "lobby")
    expect(member(alice, "bob")).to_have_count(1)
    says(alice, ["hello"])

    first.proc.send_signal(signal.SIGSTOP)  # the chat reaches its socket, nobody reads it
    say(alice, "sent as the server died")
    wait_until(alice, lambda: len(frames.of_type("chat")) == 2)
    composer = alice.locator("#composer")
    expect(composer).to_have_attribute("data-outbox", "sending")
    expect(alice.locator("#input")).to_have_value("sent as the server died")
    expect(alice.locator("#input")).not_to_be_editable()
    first.stop(signal.SIGKILL)
    # Down: the message is not shown as sent, and the composer says it will go again.
    expect(composer).to_have_attribute("data-outbox", "waiting")
    expect(alice.locator("#composer-note")).to_have_text(re.compile("^Not confirmed yet"))
    expect(alice.locator("#input")).to_have_value("sent as the server died")
    expect(chat_texts(alice)).to_have_text(["hello"])

    launch("--rate-limit", "0", port=port)
    for page in (alice, bob):
        back_online(page)
        expect(chat_texts(page)).to_have_text(["hello", "sent as the server died"])
    expect(composer).to_have_attribute("data-outbox", "idle")
    expect(alice.locator("#input")).to_have_value("")
    expect(alice.locator("#composer-note")).to_be_hidden()
    says(bob, ["marker"])
    for page in (alice, bob):
        expect(chat_texts(page)).to_have_text(["hello", "sent as the server died", "marker"])
    first_try, retry = frames.of_type("chat")[1:]
    assert first_try == retry and len(first_try["id"]) == 32


@desktop_only
def test_a_chat_whose_ack_was_lost_is_retried_with_its_id_and_posted_once(
    server: ServerProcess, link: Link, new_page: NewPage, device: Device
) -> None:
    net = link(server)
    frames, alice, bob = alice_behind_and_bob(new_page, device, net, server)

    net.swallow(True)  # the server's answers to alice are lost on the way
    say(alice, "posted, answer lost")
    expect(chat_texts(bob)).to_have_text(["posted, answer lost"])  # the server posted it
    composer = alice.locator("#composer")
    expect(composer).to_have_attribute("data-outbox", "sending")
    expect(chat_texts(alice)).to_have_count(0)
    net.refuse(True)
    assert net.cut() == 1
    expect(composer).to_have_attribute("data-outbox", "waiting")
    expect(alice.locator("#composer-note")).to_contain_text("posted only once")
    net.swallow(False)
    net.refuse(False)

    back_online(alice)
    expect(composer).to_have_attribute("data-outbox", "idle")
    expect(alice.locator("#input")).to_have_value("")
    says(bob, ["marker"])
    for page in (alice, bob):
        expect(chat_texts(page)).to_have_text(["posted, answer lost", "marker"])
        assert seqs(page) == [1, 2]
        expect(dividers(page)).to_have_count(0)
    first_try, retry = frames.of_type("chat")
    assert first_try == retry  # the same id: the server acked it again instead of posting it


@desktop_only
def test_a_chat_written_while_the_network_is_down_goes_out_once_it_is_back(
    server: ServerProcess, link: Link, new_page: NewPage, device: Device
) -> None:
    net = link(server)
    frames, alice, bob = alice_behind_and_bob(new_page, device, net, server)
    says(bob, ["before"])
    expect(chat_texts(alice)).to_have_text(["before"])

    net.refuse(True)
    assert net.cut() == 1
    expect(alice.locator("#status")).to_have_attribute("data-state", "reconnecting")
    expect(member(bob, "alice")).to_have_count(0)
    say(alice, "written offline")
    composer = alice.locator("#composer")
    expect(composer).to_have_attribute("data-outbox", "waiting")
    expect(alice.locator("#composer-note")).to_have_text(
        "Not sent yet: it goes out once you are back in #lobby."
    )
    expect(alice.locator("#input")).to_have_value("written offline")
    expect(alice.locator("#input")).not_to_be_editable()
    says(bob, ["meanwhile"])
    net.refuse(False)

    back_online(alice)
    expect(composer).to_have_attribute("data-outbox", "idle")
    expect(alice.locator("#input")).to_have_value("")
    for page in (alice, bob):  # resumed with what bob said meanwhile, then alice's message
        expect(chat_texts(page)).to_have_text(["before", "meanwhile", "written offline"])
        assert seqs(page) == [1, 2, 3]
        expect(dividers(page)).to_have_count(0)
    assert [f["text"] for f in frames.of_type("chat")] == ["written offline"]  # sent once


@desktop_only
def test_the_ack_not_an_echo_that_looks_the_same_settles_the_composer(
    server: ServerProcess, link: Link, new_page: NewPage, device: Device
) -> None:
    """Two tabs of the same name send the same words: the other tab's echo is not ours."""
    net = link(server)
    mine = join(new_page(**device), net, "sam", "lobby")
    theirs = join(new_page(), server, "sam", "lobby")
    expect(mine.locator("#member-count")).to_have_text("2")
    net.hold(True)  # what this tab sends is late
    say(mine, "same words")
    say(theirs, "same words")
    expect(chat_texts(mine)).to_have_text(["same words"])  # theirs: our name, our text
    composer = mine.locator("#composer")
    expect(composer).to_have_attribute("data-outbox", "sending")
    expect(mine.locator("#input")).to_have_value("same words")
    net.hold(False)
    expect(composer).to_have_attribute("data-outbox", "idle")
    expect(mine.locator("#input")).to_have_value("")
    for page in (mine, theirs):
        expect(chat_texts(page)).to_have_text(["same words", "same words"])


@desktop_only
def test_a_chat_written_for_one_room_is_not_sent_to_the_next(
    server: ServerProcess, link: Link, new_page: NewPage, device: Device
) -> None:
    net = link(server)
    alice = join(new_page(**device), net, "alice", "lobby")
    bob = join(new_page(), server, "bob", "lobby")
    expect(member(alice, "bob")).to_have_count(1)
    net.refuse(True)
    net.cut()
    say(alice, "for the lobby")
    expect(alice.locator("#composer")).to_have_attribute("data-outbox", "waiting")
    alice.fill("#room", "elsewhere")
    alice.click("#join")  # offline: the page goes back to #elsewhere instead
    net.refuse(False)
    back_online(alice)
    expect(alice.locator("#room-name")).to_have_text("#elsewhere")
    expect(alice.locator("#composer")).to_have_attribute("data-outbox", "idle")
    expect(alice.locator("#input")).to_have_value("for the lobby")  # given back, editable
    expect(alice.locator("#input")).to_be_editable()
    expect(alice.locator("#composer-note")).to_be_hidden()
    says(bob, ["marker"])
    expect(chat_texts(bob)).to_have_text(["marker"])
    expect(chat_texts(alice)).to_have_count(0)


@desktop_only
def test_a_chat_waiting_for_a_refused_join_is_given_back(
    launch: Launch, new_page: NewPage, device: Device
) -> None:
    server = launch("--rate-limit", "0", "--jwt-secret", SECRET)
    token = jwt.encode(
        {"sub": "alice", "rooms": ["lobby"], "exp": int(time.time()) + 3600}, SECRET,
        algorithm="HS256",
    )
    alice = join(new_page(**device), server, "alice", "lobby", query=f"?token={token}")
    alice.fill("#room", "secret")
    # Join the forbidden room and write for it before the server's answer is back.
    alice.evaluate(
        "() => { document.getElementById('join').click();"
        " const box = document.getElementById('input'); box.value = 'for the secret room';"
        " document.getElementById('composer').requestSubmit(); }"
    )
    expect(alice.locator("#messages .error").last).to_have_attribute("data-code", "forbidden_room")
    expect(alice.locator("#composer")).to_have_attribute("data-outbox", "idle")
    expect(alice.locator("#input")).to_have_value("for the secret room")
    expect(alice.locator("#input")).to_be_editable()
    expect(alice.locator("#room-name")).to_have_text("#lobby")
    expect(chat_texts(alice)).to_have_count(0)  # and not posted in the lobby either
    says(alice, ["in the lobby"])
    expect(chat_texts(alice)).to_have_text(["in the lobby"])


@desktop_only
def test_a_chat_waiting_when_the_page_gives_up_is_given_back(
    launch: Launch, link: Link, new_page: NewPage, device: Device
) -> None:
    server = launch("--rate-limit", "0", "--jwt-secret", SECRET, "--jwt-leeway", "0")
    expires = int(time.time()) + 5
    token = jwt.encode({"sub": "alice", "exp": expires}, SECRET, algorithm="HS256")
    net = link(server)
    alice = join(new_page(**device), net, "alice", "lobby", query=f"?token={token}")
    net.refuse(True)
    net.cut()
    say(alice, "never to be sent")
    expect(alice.locator("#composer")).to_have_attribute("data-outbox", "waiting")
    # Back only once the token has expired: the page's retry is refused and it stops.
    # (wait_for_function would be blocked by the page's Content-Security-Policy: it evals)
    wait_until(alice, lambda: time.time() > expires + 1)
    net.refuse(False)
    expect(alice.locator("#status")).to_have_attribute("data-state", "refused", timeout=BACK)
    expect(alice.locator("#composer")).to_have_attribute("data-outbox", "idle")
    expect(alice.locator("#composer-note")).to_be_hidden()
    expect(alice.locator("#input")).to_have_value("never to be sent")
    expect(alice.locator("#input")).to_be_editable()


# ---------- resumes that cannot be complete ----------


@dataclass(frozen=True)
class Incomplete:
    """A resume the server cannot complete: its options, what alice missed, what it replays
    (None: the newest that fit), and the divider's reason."""

    args: tuple[str, ...]
    missed: list[str]
    shown: list[str] | None
    why: str


@pytest.mark.parametrize(
    "case",
    [
        Incomplete(("--history-size", "3"), ["b2", "b3", "b4", "b5", "b6"], ["b4", "b5", "b6"],
                   "more were sent than the server keeps"),
        Incomplete(("--history-size", "0"), ["b2"], [], "this server keeps no history"),
        # a replay carries at most 2 x --max-buffered-bytes: 40 of these do not fit
        Incomplete(("--max-buffered-bytes", "65536"), [f"{n}:{'x' * 3900}" for n in range(40)],
                   None, "more than the server replays at once"),
    ],
    ids=["too-old", "history-disabled", "too-many"],
)
def test_a_resume_that_cannot_be_complete_says_so_and_shows_what_there_is(
    launch: Launch, link: Link, new_page: NewPage, device: Device, case: Incomplete
) -> None:
    args, missed, shown, why = case.args, case.missed, case.shown, case.why
    server = launch("--rate-limit", "0", *args)
    net = link(server)
    alice = join(new_page(**device), net, "alice", "lobby")
    bob = join(new_page(), server, "bob", "lobby")
    expect(member(alice, "bob")).to_have_count(1)
    says(bob, ["b1"])
    expect(chat_texts(alice)).to_have_text(["b1"])
    net.refuse(True)
    net.cut()
    expect(member(bob, "alice")).to_have_count(0)
    says(bob, missed)
    net.refuse(False)
    back_online(alice)
    expect(dividers(alice)).to_have_count(1)
    expect(dividers(alice)).to_contain_text(why)
    got = log(alice)
    assert got[:2] == ["b1", "--"]
    if shown is not None:
        assert got[2:] == shown
    else:  # the newest that fit in one replay, in order, up to the last one
        assert 10 < len(got[2:]) < len(missed) and got[2:] == missed[-len(got[2:]):]
    says(bob, ["live"])
    expect(chat_texts(alice).last).to_have_text("live")


@desktop_only
def test_a_page_dropped_as_a_slow_consumer_resumes_with_no_gap(
    launch: Launch, link: Link, new_page: NewPage, device: Device
) -> None:
    """The page stops reading (its network stalls) while a talker floods the room: the server
    drops it with 4000 and discards what it had queued; once the network flows again the page
    shows what got through, then the close, reconnects and resumes with exactly the rest
    (docs/history.md: a replay may be twice --max-buffered-bytes for this)."""
    server = launch(
        "--rate-limit", "0", "--max-buffered-bytes", "262144", "--ping-timeout", "60",
        "--history-size", "2000",
    )
    net = link(server)
    alice_page = new_page(**device)
    frames = Frames(alice_page)
    alice = join(alice_page, net, "alice", "lobby")
    talker = Seed(new_page(), server, "talker", "lobby")
    expect(member(alice, "talker")).to_have_count(1)
    talker.say("t0")
    expect(chat_texts(alice)).to_have_text(["t0"])

    net.stall(True)  # alice's browser reads nothing more: the server's queue for her grows
    sent = flood_until_dropped(talker, "alice")
    assert sent, "the stalled page was not dropped"
    net.stall(False)
    dropped = "Connection lost (this page fell too far behind); reconnecting…"
    expect(alice.locator("#messages .system", has_text=dropped)).to_have_count(1, timeout=BACK)
    back_online(alice)
    talker.say("live")
    expect(chat_texts(alice).last).to_have_text("live", timeout=BACK)
    shown = seqs(alice)  # the oldest lines may have been dropped (1,000 at most)
    assert shown == list(range(shown[0], sent + 3)), "a gap or a duplicate"
    expect(dividers(alice)).to_have_count(0)
    resume = frames.of_type("join")[-1]
    assert "since" in resume and 1 < resume["since"]["seq"] < sent + 1  # it had missed some


def flood_until_dropped(talker: Seed, victim: str) -> int:
    """The talker sends 3.9 KB chats, at most 10 ahead of their echoes, until the room is told
    that `victim` left (at most 4,000: 16 MB); returns how many, once every one has come back
    (so the server has delivered them all)."""
    return int(talker.page.evaluate(
        """async (victim) => {
            let left = false;
            ws.addEventListener("message", (event) => {
                const msg = JSON.parse(event.data);
                if (msg.event === "leave" && msg.username === victim) left = true;
            });
            const until = (ok) => new Promise((resolve, reject) => {
                const deadline = Date.now() + 20000;
                const poll = () => ok() ? resolve()
                    : Date.now() > deadline ? reject(new Error("no echo")) : setTimeout(poll, 1);
                poll();
            });
            const filler = "z".repeat(3900);
            const before = chats;
            let n = 0;
            while (!left && n < 4000) {
                n += 1;
                ws.send(JSON.stringify({type: "chat", text: `${n}:${filler}`}));
                await until(() => chats - before >= n - 10);
            }
            await until(() => chats - before >= n);
            return left ? n : 0;
        }""",
        victim,
    ))


# ---------- what the tab keeps ----------


@desktop_only
def test_the_tab_keeps_the_positions_of_its_50_latest_rooms_and_ignores_garbage(
    server: ServerProcess, new_page: NewPage, device: Device
) -> None:
    bob = join(new_page(), server, "bob", "lobby")
    says(bob, ["b1"])
    page = new_page(**device)
    seeded = [[f"room{n}", "0123456789abcdef", n] for n in range(50)]
    garbage = [["lobby", 5, "x"], "not a list", ["r", "e" * 65, 1], ["r2", "e", -1]]
    page.add_init_script(
        f"sessionStorage.setItem('roomcast.positions', JSON.stringify({seeded + garbage}))"
    )
    join(page, server, "alice", "lobby")
    expect(chat_texts(page)).to_have_text(["b1"])
    expect(dividers(page)).to_have_count(0)  # no position of ours in the lobby: a first visit
    stored = page.evaluate("JSON.parse(sessionStorage.getItem('roomcast.positions'))")
    assert len(stored) == 50
    assert stored[:49] == seeded[1:]  # the least recent went
    assert stored[-1][0] == "lobby" and stored[-1][2] == 1


# ---------- across nodes (Redis) ----------


@desktop_only
def test_through_redis_a_chat_whose_ack_was_lost_is_retried_and_posted_once(
    launch: Launch, link: Link, new_page: NewPage, device: Device
) -> None:
    """Redis mode numbers, acks and deduplicates like one node (docs/history.md): a chat that
    reached the room but whose ack never came back is sent again after the resume, with the same
    id, and the room sees it once."""
    redis = start_redis()
    try:
        server = launch("--rate-limit", "0", "--redis-url", redis.url)
        net = link(server)
        page = new_page(**device)
        frames = Frames(page)
        join(page, net, "alice", "lobby")
        bob = join(new_page(), server, "bob", "lobby")
        expect(member(page, "bob")).to_have_count(1)
        for text in ("one", "two"):
            say(page, text)
            expect(page.locator("#input")).to_have_value("")
        expect(chat_texts(page)).to_have_text(["one", "two"])

        net.swallow(True)  # the server's answers (the echo, the ack) never reach the page
        say(page, "fate unknown")
        expect(chat_texts(bob)).to_have_text(["one", "two", "fate unknown"])
        net.cut()
        net.swallow(False)
        back_online(page)
        expect(page.locator("#composer")).to_have_attribute("data-outbox", "idle")
        expect(page.locator("#input")).to_have_value("")  # acked after the retry
        says(bob, ["marker"])
        expect(chat_texts(page).last).to_have_text("marker")
        expect(chat_texts(bob)).to_have_text(["one", "two", "fate unknown", "marker"])
        retried = [f for f in frames.of_type("chat") if f["text"] == "fate unknown"]
        assert len(retried) == 2 and retried[0]["id"] == retried[1]["id"]  # sent twice, once
        server.stop()  # before Redis goes
    finally:
        redis.close()
