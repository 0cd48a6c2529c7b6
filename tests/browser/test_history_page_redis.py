"""The page against a node linked through a real redis-server when that link fails
(docs/history.md, Redis mode; docs/protocol.md, status notices): chats delivered during an
outage (unnumbered, `"seq": 0`) are shown; a chat the node could not place (`unavailable`) waits
in the composer and goes out, once, when the node can place it; and after Redis lost the room's
stream (`reset`) the page moves to the new epoch, says that messages may be missing and keeps
showing what follows. A resume or a join during an outage (`history unavailable`, a welcome
without an epoch) gets a divider that says the history could not be reached, and the numbered
chats that follow once the node is back are never shown twice after a later reconnect; what a
repair could not recover (`gap`) is the divider, where the messages are missing. In Debian's
Chromium at desktop size: what is checked here is the page's reading of the protocol, which no
viewport changes (the layout at 390x844 is checked by the other page tests), and the outages
cost seconds each.

The node's link to Redis goes through a loopback proxy (netfault.FaultyLink) when the test must
cut it without Redis losing anything; stopping and restarting the redis-server (no persistence)
is what loses the streams."""

from __future__ import annotations

from collections.abc import Callable, Iterator

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
)
from tests.redis_support import RedisServer
from tests.support import ServerProcess

# one device: see the docstring
pytestmark = desktop_only

NewPage = Callable[..., Page]
Launch = Callable[..., ServerProcess]
Device = dict[str, object]
Link = Callable[[int], FaultyLink]

BACK = 20_000  # ms: the node retries Redis with a backoff capped at 5 s, the page likewise
OUTAGE = "Lost contact with the other chat servers"
RECOVERED = "Reconnected to the other chat servers"


@pytest.fixture
def link() -> Iterator[Link]:
    """A FaultyLink in front of a port (Redis's, or a node's); closed after the test. Request it
    before `launch` so that the nodes stop while their Redis is still reachable."""
    links: list[FaultyLink] = []

    def _link(port: int) -> FaultyLink:
        proxy = FaultyLink(port)
        links.append(proxy)
        return proxy

    yield _link
    for proxy in links:
        proxy.close()


@pytest.fixture
def redis_link(redis_server: RedisServer, link: Link) -> FaultyLink:
    """A redis-server behind a FaultyLink: the nodes' link to it can fail while it keeps
    everything. Request it before `launch`."""
    return link(redis_server.port)


def node(launch: Launch, redis_url: str) -> ServerProcess:
    return launch("--rate-limit", "0", "--redis-url", redis_url)


def via(proxy: FaultyLink) -> str:
    return f"redis://127.0.0.1:{proxy.port}"


def notice(page: Page, text: str) -> None:
    """Waits for a system line (outage, recovered)."""
    expect(page.locator("#messages .system", has_text=text)).to_have_count(1, timeout=BACK)


# ---------- an outage: the node serves its own members alone ----------


def test_chats_delivered_during_an_outage_are_shown_unnumbered(
    redis_link: FaultyLink, launch: Launch, new_page: NewPage, device: Device
) -> None:
    """During an outage a chat without id reaches the node's own members with `"seq": 0`: not
    a place in the stream, so never taken for one already on screen."""
    net = redis_link
    server = node(launch, via(net))
    alice = join(new_page(**device), server, "alice", "lobby")
    carol = Seed(new_page(), server, "carol", "lobby")
    expect(member(alice, "carol")).to_have_count(1)
    carol.say("before")
    expect(chat_texts(alice)).to_have_text(["before"])

    net.refuse(True)
    net.cut()  # the node's connections to Redis reset; Redis keeps everything
    notice(alice, OUTAGE)
    carol.say("during the outage")
    expect(chat_texts(alice)).to_have_text(["before", "during the outage"])

    net.refuse(False)
    notice(alice, RECOVERED)
    carol.say("after")
    expect(chat_texts(alice)).to_have_text(["before", "during the outage", "after"])
    assert seqs(alice) == [1, 0, 2]  # unnumbered as sent; the stream went on where it was
    expect(dividers(alice)).to_have_count(0)


@pytest.mark.parametrize("down", ["outage", "from-start"])
def test_a_chat_the_node_could_not_place_waits_and_goes_out_once_it_can(
    redis_link: FaultyLink, launch: Launch, new_page: NewPage, device: Device, down: str
) -> None:
    """A chat refused with `unavailable` was posted nowhere: it waits in the composer, says why,
    and is sent again with its id when the node is back (`outage`: at its `recovered` notice;
    `from-start`: a node that never reached Redis sends no notice, so on the page's timer)."""
    net = redis_link
    net.refuse(down == "from-start")
    server = node(launch, via(net))
    alice_page = new_page(**device)
    frames = Frames(alice_page)
    alice = join(alice_page, server, "alice", "lobby")
    bob = join(new_page(), server, "bob", "lobby")
    expect(member(alice, "bob")).to_have_count(1)
    composer = alice.locator("#composer")
    if down == "outage":
        say(bob, "before")
        expect(chat_texts(alice)).to_have_text(["before"])
        net.refuse(True)
        net.cut()
        notice(alice, OUTAGE)
    said = ["before"] if down == "outage" else []

    say(alice, "written in the outage")
    expect(composer).to_have_attribute("data-outbox", "waiting")
    expect(alice.locator("#composer-note")).to_have_text(
        "Not sent yet: the server cannot reach the other chat servers; it goes out once it can."
    )
    expect(alice.locator("#input")).to_have_value("written in the outage")
    expect(alice.locator("#input")).not_to_be_editable()
    expect(alice.locator("#composer-error")).to_be_hidden()
    assert len(frames.of_type("chat")) == 1  # it went out once and was refused
    for page in (alice, bob):
        expect(chat_texts(page)).to_have_text(said)  # posted nowhere

    net.refuse(False)
    expect(composer).to_have_attribute("data-outbox", "idle", timeout=BACK)
    expect(alice.locator("#input")).to_have_value("")
    expect(alice.locator("#composer-note")).to_be_hidden()
    say(bob, "marker")
    for page in (alice, bob):
        expect(chat_texts(page)).to_have_text([*said, "written in the outage", "marker"])
    chats = frames.of_type("chat")
    retried = [f for f in chats if f["text"] == "written in the outage"]
    assert len(retried) >= 2 and all(f == retried[0] for f in retried)  # same id every time
    if down == "outage":
        assert len(retried) == 2  # at the notice, not on the timer
        assert seqs(alice) == [1, 2, 3]


# ---------- Redis lost the stream: a reset ----------


def test_after_redis_lost_the_stream_the_page_moves_to_the_new_epoch(
    redis_server: RedisServer, link: Link, launch: Launch, new_page: NewPage, device: Device
) -> None:
    """Redis restarted without persistence: the node tells its members the new position
    (`reset`); the page shows the divider there, then the new stream's chats (numbered from 1
    again), and resumes from the new position after a reconnect."""
    server = node(launch, redis_server.url)
    net = link(server.port)  # alice's way to the node, for the reconnect at the end
    alice_page = new_page(**device)
    frames = Frames(alice_page)
    alice = join(alice_page, net, "alice", "lobby")
    bob = join(new_page(), server, "bob", "lobby")
    expect(member(alice, "bob")).to_have_count(1)
    for text in ("b1", "b2", "b3"):
        say(bob, text)
        expect(bob.locator("#composer")).to_have_attribute("data-outbox", "idle")
    expect(chat_texts(alice)).to_have_text(["b1", "b2", "b3"])
    old = alice.evaluate("JSON.parse(sessionStorage.getItem('roomcast.positions'))")

    redis_server.stop()  # no persistence: the room's stream is gone
    for page in (alice, bob):
        notice(page, OUTAGE)
    redis_server.start()
    for page in (alice, bob):
        notice(page, RECOVERED)
    say(bob, "after the reset")
    say_when_idle(bob, "later")
    for page in (alice, bob):
        expect(chat_texts(page)).to_have_text(["b1", "b2", "b3", "after the reset", "later"])
        assert log(page) == ["b1", "b2", "b3", "--", "after the reset", "later"]
        expect(dividers(page)).to_have_count(1)
        expect(dividers(page)).to_contain_text("You may have missed messages")
        expect(dividers(page)).to_contain_text("the server lost the room's history")
        assert seqs(page) == [1, 2, 3, 1, 2]
    [[room, epoch, seq]] = alice.evaluate(
        "JSON.parse(sessionStorage.getItem('roomcast.positions'))"
    )
    assert room == "lobby" and epoch != old[0][1] and seq == 2

    net.cut()  # alice's connection drops: she resumes from the new position, nothing missed
    expect(alice.locator("#app")).to_have_attribute("data-joined", "true", timeout=BACK)
    expect(alice.locator("#messages .system", has_text="Reconnected.")).to_have_count(1)
    resume = frames.of_type("join")[-1]
    assert resume["since"] == {"epoch": epoch, "seq": 2}
    say(bob, "after the reconnect")
    expect(chat_texts(alice).last).to_have_text("after the reconnect")
    assert seqs(alice) == [1, 2, 3, 1, 2, 3]
    expect(dividers(alice)).to_have_count(1)


def say_when_idle(page: Page, text: str) -> None:
    """Sends `text` once the composer is free again (the previous chat was acked)."""
    expect(page.locator("#composer")).to_have_attribute("data-outbox", "idle")
    say(page, text)


# ---------- joining or resuming during an outage, and what follows ----------

UNREACHABLE = "the server cannot reach the room's history right now"


def reconnected(page: Page, times: int) -> None:
    """Waits for the page's `times`-th reconnection and the welcome that follows it."""
    expect(page.locator("#messages .system", has_text="Reconnected.")).to_have_count(
        times, timeout=BACK
    )
    expect(page.locator("#app")).to_have_attribute("data-joined", "true", timeout=BACK)


def test_a_resume_during_an_outage_says_the_history_is_unreachable_not_lost(
    redis_link: FaultyLink, launch: Launch, link: Link, new_page: NewPage, device: Device
) -> None:
    """A node that cannot reach Redis answers a resume `recovered: false`, reason `history
    unavailable`, with no epoch: the divider says the history could not be reached, not that
    the server lost it (it did not: the stream goes on once the node is back)."""
    server = node(launch, via(redis_link))
    net = link(server.port)  # alice's way to the node
    alice = join(new_page(**device), net, "alice", "lobby")
    bob = join(new_page(), server, "bob", "lobby")
    expect(member(alice, "bob")).to_have_count(1)
    say_when_idle(bob, "b1")
    expect(chat_texts(alice)).to_have_text(["b1"])

    redis_link.refuse(True)
    redis_link.cut()
    notice(alice, OUTAGE)
    net.cut()  # alice's connection drops too: she resumes while the node has no history
    reconnected(alice, 1)
    expect(dividers(alice)).to_have_count(1)
    expect(dividers(alice)).to_contain_text("You may have missed messages")
    expect(dividers(alice)).to_contain_text(UNREACHABLE)
    expect(dividers(alice)).not_to_contain_text("lost the room's history")
    assert log(alice) == ["b1", "--"]


@pytest.mark.parametrize("came", ["resumed", "joined"])
def test_chats_after_an_outage_are_not_shown_twice_after_a_reconnect(
    redis_link: FaultyLink,
    launch: Launch,
    link: Link,
    new_page: NewPage,
    device: Device,
    *,
    came: str,
) -> None:
    """A welcome without an epoch (the node could not reach Redis) leaves the page without a
    stream to place the numbered chats that follow once the node is back. `resumed`: alice was
    in the room and resumed during the outage; she keeps her last position, moves it along with
    what she sees, and her next resume starts from the last chat shown. `joined`: alice opened
    the page during the outage (no position at all); her next join replays the room's last
    messages, and those on screen are not shown again (the older one goes before them). Either
    way every chat is shown once, in the room's order."""
    server = node(launch, via(redis_link))
    net = link(server.port)  # alice's way to the node
    bob = join(new_page(), server, "bob", "lobby")
    alice_page = new_page(**device)
    frames = Frames(alice_page)
    if came == "resumed":
        alice = join(alice_page, net, "alice", "lobby")
        expect(member(alice, "bob")).to_have_count(1)
    say_when_idle(bob, "b1")
    # acked before the link drops (a chat in flight then gets no answer at all)
    expect(bob.locator("#composer")).to_have_attribute("data-outbox", "idle")
    if came == "resumed":
        expect(chat_texts(alice)).to_have_text(["b1"])
        [[_, epoch, _]] = alice.evaluate("JSON.parse(sessionStorage.getItem('roomcast.positions'))")

    redis_link.refuse(True)
    redis_link.cut()
    notice(bob, OUTAGE)
    if came == "resumed":
        net.cut()
        reconnected(alice, 1)
        assert frames.of_type("join")[-1]["since"] == {"epoch": epoch, "seq": 1}
        shown = ["b1"]
    else:
        alice = join(alice_page, net, "alice", "lobby")
        shown = []
    expect(dividers(alice)).to_have_count(1)  # the node cannot say what she missed
    expect(dividers(alice)).to_contain_text(UNREACHABLE)

    redis_link.refuse(False)
    for page in (alice, bob):
        notice(page, RECOVERED)
    say_when_idle(bob, "b2")
    say_when_idle(bob, "b3")
    expect(chat_texts(alice)).to_have_text([*shown, "b2", "b3"])

    net.cut()  # a reconnect once the node is back: nothing was missed, nothing comes twice
    reconnected(alice, 2 if came == "resumed" else 1)
    say_when_idle(bob, "b4")
    expect(chat_texts(alice).last).to_have_text("b4")
    expect(chat_texts(alice)).to_have_text(["b1", "b2", "b3", "b4"])
    assert seqs(alice) == [1, 2, 3, 4]
    assert log(alice) == (
        ["b1", "--", "b2", "b3", "b4"] if came == "resumed" else ["--", "b1", "b2", "b3", "b4"]
    )
    rejoin = frames.of_type("join")[-1]
    if came == "resumed":  # from the last chat shown, in the stream she last knew
        assert rejoin["since"] == {"epoch": epoch, "seq": 3}
    else:  # no position of hers in the lobby: the room's last messages
        assert "since" not in rejoin and rejoin["history"] > 0
    [[room, _, seq]] = alice.evaluate("JSON.parse(sessionStorage.getItem('roomcast.positions'))")
    assert room == "lobby" and seq == 4


def test_messages_a_repair_could_not_recover_are_flagged_where_they_are_missing(
    redis_server: RedisServer, link: Link, launch: Launch, new_page: NewPage, device: Device
) -> None:
    """alice's node loses Redis while bob, on another node, says more than the room keeps
    (`--history-size 3`). Back, her node repairs the room: the three it can still read, and a
    `gap` notice for the two it cannot. The page shows the notice as the divider, with its
    text, before the recovered messages (where the missing ones were), not as a system line."""
    net = link(redis_server.port)  # alice's node's link to Redis
    near = launch("--rate-limit", "0", "--history-size", "3", "--redis-url", via(net))
    far = launch("--rate-limit", "0", "--history-size", "3", "--redis-url", redis_server.url)
    alice = join(new_page(**device), near, "alice", "lobby")
    bob = join(new_page(), far, "bob", "lobby")
    expect(member(alice, "bob")).to_have_count(1)
    say_when_idle(bob, "b1")
    expect(chat_texts(alice)).to_have_text(["b1"])

    net.refuse(True)
    net.cut()
    notice(alice, OUTAGE)
    for n in range(2, 7):
        say_when_idle(bob, f"b{n}")  # placed by bob's node: b2, b3 leave the room's history
    expect(bob.locator("#composer")).to_have_attribute("data-outbox", "idle")
    expect(chat_texts(alice)).to_have_text(["b1"])

    net.refuse(False)
    notice(alice, RECOVERED)
    expect(dividers(alice)).to_have_count(1, timeout=BACK)
    expect(chat_texts(alice)).to_have_text(["b1", "b4", "b5", "b6"])
    expect(dividers(alice)).to_contain_text("You may have missed messages")
    expect(dividers(alice)).to_contain_text(
        "2 messages could not be recovered: they are no longer in the room's history"
    )
    expect(alice.locator("#messages .system", has_text="could not be recovered")).to_have_count(0)
    assert log(alice) == ["b1", "--", "b4", "b5", "b6"]
    assert seqs(alice) == [1, 4, 5, 6]
    say_when_idle(bob, "live")
    expect(chat_texts(alice).last).to_have_text("live")
    assert seqs(alice) == [1, 4, 5, 6, 7]


# ---------- joins the node never answers ----------


def joins_at_once(page: Page, *rooms: str) -> None:
    """Clicks Join for each room in one task of the page: every join is on the wire before the
    server can answer the first."""
    page.evaluate("""rooms => {
        const room = document.getElementById("room");
        for (const name of rooms) {
            room.value = name;
            document.getElementById("join").click();
        }
    }""", list(rooms))


def test_a_join_superseded_before_its_answer_leaves_the_page_in_the_room_it_went_to(
    redis_link: FaultyLink, launch: Launch, new_page: NewPage, device: Device
) -> None:
    """A Redis node never answers a join that a leave or another join overtook (its welcome
    would describe a room the member has left). A page that counted one answer per join took
    the next room's welcome for the skipped one's and stayed out of every room until a
    reconnect (the review found it; a one-node server answers every join, so only this shows
    it)."""
    net = redis_link
    server = node(launch, via(net))
    page = join(new_page(**device), server, "alice", "lobby")
    bob = join(new_page(), server, "bob", "second")
    net.hold(True)  # Redis hears nothing for a moment: the node has both joins before it
    joins_at_once(page, "first", "second")  # the second before the first one's answer
    page.wait_for_timeout(300)
    net.hold(False)
    expect(member(page, "bob")).to_have_count(1)  # the welcome of #second, not of #lobby
    expect(page.locator("#room-name")).to_have_text("#second")
    # Leave, then two joins, in one go: the first join is overtaken again
    net.hold(True)
    page.evaluate("""() => {
        document.getElementById("leave").click();
        const room = document.getElementById("room");
        const join = document.getElementById("join");
        room.value = "third"; join.click();
        room.value = "second"; join.click();
    }""")
    page.wait_for_timeout(300)
    net.hold(False)
    expect(page.locator("#app")).to_have_attribute("data-joined", "true")
    expect(member(page, "bob")).to_have_count(1)
    say(page, "made it")
    expect(chat_texts(bob).last).to_have_text("made it")
    expect(page.locator("#composer")).to_have_attribute("data-outbox", "idle")
