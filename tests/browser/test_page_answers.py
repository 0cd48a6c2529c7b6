"""The page matches each answer of the server to what it asked: a refused join or leave (the
presence rate limit) changes nothing, a join's refusal never settles a chat, the answers to a
join the page has superseded are ignored, and a server that accepts and then closes at once is
retried ever more slowly. Debian's Chromium; a real server where its timing makes the case, a
scripted one (Playwright's WebSocket routes) where the case needs an order a real one gives only
by chance."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any

from playwright.sync_api import Page, WebSocketRoute, expect

from tests.browser.conftest import desktop_only
from tests.browser.pages import chat_texts, join, member, open_page, say, wait_until
from tests.support import ServerProcess

NewPage = Callable[..., Page]
Launch = Callable[..., ServerProcess]
Device = dict[str, object]
WS = re.compile(r"/ws")
JOIN_SLOW_DOWN = "Slow down! Max 1 joins and leaves/10s"


def welcome(room: str, seq: int = 0) -> str:
    return json.dumps({
        "type": "system", "event": "join", "room": room, "username": "alice",
        "users": ["alice"], "count": 1, "epoch": "E1", "seq": seq,
        "text": f"alice joined #{room}", "timestamp": 1,
    })


def history(room: str, messages: list[dict[str, Any]]) -> str:
    return json.dumps({
        "type": "history", "room": room, "epoch": "E1", "messages": messages, "recovered": True,
    })


def presence_refusal(kind: str) -> str:
    return json.dumps({
        "type": "error", "code": "rate_limited", "text": JOIN_SLOW_DOWN,
        "retry_after_ms": 3000, "refused": kind,
    })


class Scripted:
    """A scripted server: records what the page sends; the test answers through `ws`."""

    def __init__(self, page: Page) -> None:
        self.ws: WebSocketRoute | None = None
        self.sent: list[dict[str, Any]] = []
        self.opened: list[float] = []
        page.route_web_socket(WS, self._accept)

    def _accept(self, ws: WebSocketRoute) -> None:
        self.ws = ws
        self.opened.append(time.monotonic())
        ws.on_message(lambda message: self.sent.append(json.loads(message)))

    def send(self, *frames: str) -> None:
        assert self.ws is not None
        for frame in frames:
            self.ws.send(frame)

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [frame for frame in self.sent if frame.get("type") == kind]


def fill_and_join(page: Page, room: str) -> None:
    page.fill("#username", "alice")
    page.fill("#room", room)
    page.click("#join")


def joined_scripted(page: Page, server: ServerProcess) -> Scripted:
    """The page served by `server`, its WebSocket scripted, joined to #a as alice."""
    fake = Scripted(page)
    open_page(page, server)
    fill_and_join(page, "a")
    wait_until(page, lambda: len(fake.of_type("join")) == 1)
    fake.send(history("a", []), welcome("a"))
    expect(page.locator("#app")).to_have_attribute("data-joined", "true")
    return fake


@desktop_only
def test_a_server_that_accepts_then_closes_is_retried_with_a_growing_backoff(
    server: ServerProcess, new_page: NewPage, device: Device
) -> None:
    """Before: a connection that opened reset the backoff, so a server closing each connection
    right after the join (1011, or a page dropped as a slow consumer again and again) was
    reconnected to every 0.25-0.5 s for ever (21 connections in 10 s)."""
    page = new_page(**device)
    opened: list[float] = []

    def close_after_join(ws: WebSocketRoute) -> None:
        opened.append(time.monotonic())
        ws.on_message(
            lambda m: ws.close(code=1011, reason="x") if json.loads(m)["type"] == "join" else None
        )

    page.route_web_socket(WS, close_after_join)
    open_page(page, server)
    fill_and_join(page, "r")
    start = time.monotonic()
    while time.monotonic() - start < 8:
        page.wait_for_timeout(200)
    # Retries after 0.25-0.5, 0.5-1, 1-2, 2-4 s...: at most 5 more connections in 8 s
    assert len([t for t in opened if t >= start]) <= 5, [round(t - start, 2) for t in opened]


@desktop_only
def test_a_refused_join_never_settles_the_chat_waiting_for_its_ack(
    server: ServerProcess, new_page: NewPage, device: Device
) -> None:
    """With Redis a chat's ack comes after a round trip, a join's refusal at once: it came
    first and the page took it for the chat's, kept the text, and a second Send posted it
    twice."""
    page = new_page(**device)
    fake = joined_scripted(page, server)
    say(page, "hello")
    wait_until(page, lambda: len(fake.of_type("chat")) == 1)
    chat = fake.of_type("chat")[0]
    fill_and_join(page, "b")
    wait_until(page, lambda: len(fake.of_type("join")) == 2)
    fake.send(presence_refusal("join"))
    expect(page.locator("#messages .error").last).to_have_text(
        re.compile(r"Not joined: Slow down! .* \(try again in 3 s\)")
    )
    expect(page.locator("#composer")).to_have_attribute("data-outbox", "sending")
    fake.send(
        json.dumps({"type": "chat", "username": "alice", "text": "hello", "timestamp": 2,
                    "seq": 1}),
        json.dumps({"type": "ack", "id": chat["id"], "seq": 1}),
    )
    expect(page.locator("#composer")).to_have_attribute("data-outbox", "idle")
    expect(page.locator("#input")).to_have_value("")
    expect(page.locator("#composer-error")).to_be_hidden()
    expect(page.locator("#room-name")).to_have_text("#a")  # where the server kept it


@desktop_only
def test_a_join_refused_for_rate_leaves_the_page_in_its_room(
    launch: Launch, new_page: NewPage, device: Device
) -> None:
    """Before: the page took the room it asked for as its own while the server kept it in the
    old one, and a chat waited "until you are back in #c" for ever."""
    server = launch("--join-rate-limit", "2", "--rate-limit", "0")
    alice = join(new_page(**device), server, "alice", "a")
    bob = join(new_page(), server, "bob", "b")
    alice.fill("#room", "b")
    alice.click("#join")  # the second join: allowed
    expect(member(alice, "bob")).to_have_count(1)
    alice.fill("#room", "c")
    alice.click("#join")  # the third in 10 s: refused, alice stays in #b
    expect(alice.locator("#messages .error").last).to_contain_text("Not joined: Slow down!")
    expect(alice.locator("#room-name")).to_have_text("#b")
    say(alice, "still in b")
    expect(chat_texts(bob).last).to_have_text("still in b")
    expect(alice.locator("#composer")).to_have_attribute("data-outbox", "idle")


@desktop_only
def test_a_leave_refused_for_rate_puts_the_page_back_in_its_room(
    launch: Launch, new_page: NewPage, device: Device
) -> None:
    """Before: the page said "You left" and showed nothing more of the room, while the server,
    as documented, kept it there: bob's chats reached alice's socket and were dropped."""
    server = launch("--join-rate-limit", "1", "--rate-limit", "0")
    alice = join(new_page(**device), server, "alice", "a")
    bob = join(new_page(), server, "bob", "a")
    expect(member(alice, "bob")).to_have_count(1)
    alice.click("#leave")
    expect(alice.locator("#messages .error").last).to_contain_text("Not left: Slow down!")
    expect(alice.locator("#app")).to_have_attribute("data-joined", "true")
    expect(alice.locator("#room-name")).to_have_text("#a")
    expect(member(alice, "bob")).to_have_count(1)
    expect(member(bob, "alice")).to_have_count(1)  # the server never let her go
    say(bob, "still there?")
    expect(chat_texts(alice).last).to_have_text("still there?")


@desktop_only
def test_what_the_room_sent_before_a_refused_leave_is_shown_once_it_is_refused(
    server: ServerProcess, new_page: NewPage, device: Device
) -> None:
    page = new_page(**device)
    fake = joined_scripted(page, server)
    page.click("#leave")
    wait_until(page, lambda: len(fake.of_type("leave")) == 1)
    # sent by the server before it read the leave, which it then refuses
    fake.send(json.dumps({"type": "chat", "username": "bob", "text": "in between",
                          "timestamp": 3, "seq": 1}))
    fake.send(presence_refusal("leave"))
    expect(chat_texts(page)).to_have_text(["in between"])
    expect(page.locator("#room-name")).to_have_text("#a")


@desktop_only
def test_a_leave_that_went_through_shows_nothing_more_of_the_room(
    server: ServerProcess, new_page: NewPage, device: Device
) -> None:
    page = new_page(**device)
    fake = joined_scripted(page, server)
    page.click("#leave")
    wait_until(page, lambda: len(fake.of_type("leave")) == 1)
    fake.send(json.dumps({"type": "chat", "username": "bob", "text": "before the leave",
                          "timestamp": 3, "seq": 1}))
    fill_and_join(page, "b")  # the leave was not refused: its answer would have come first
    wait_until(page, lambda: len(fake.of_type("join")) == 2)
    fake.send(history("b", []), welcome("b"))
    expect(page.locator("#room-name")).to_have_text("#b")
    expect(page.locator("#app")).to_have_attribute("data-joined", "true")
    expect(chat_texts(page)).to_have_count(0)


@desktop_only
def test_the_answer_to_a_superseded_join_is_ignored(
    server: ServerProcess, new_page: NewPage, device: Device
) -> None:
    """Join #a, leave and join #b before #a's answer: #a's history was shown after "You left",
    the header went to #a, and the chat written for #b was let go unsent."""
    page = new_page(**device)
    fake = Scripted(page)
    open_page(page, server)
    fill_and_join(page, "a")
    page.click("#leave")
    fill_and_join(page, "b")
    say(page, "for b")
    wait_until(page, lambda: [j["room"] for j in fake.of_type("join")] == ["a", "b"])
    secret = {"type": "chat", "username": "zed", "text": "secret of a", "timestamp": 1, "seq": 1}
    fake.send(history("a", [secret]), welcome("a", 1))
    page.evaluate("0")
    expect(page.locator("#composer")).to_have_attribute("data-outbox", "waiting")
    fake.send(history("b", []), welcome("b"))
    expect(page.locator("#room-name")).to_have_text("#b")
    wait_until(page, lambda: [c["text"] for c in fake.of_type("chat")] == ["for b"])
    expect(chat_texts(page)).to_have_count(0)  # nothing of #a


@desktop_only
def test_a_refused_leave_then_a_refused_join_leave_the_page_in_its_room(
    server: ServerProcess, new_page: NewPage, device: Device
) -> None:
    """Both from one budget, so once limited both are likely refused. Before: the join dropped
    the refused leave's snapshot, and the join's refusal put the page in no room while the
    server kept it in #a."""
    page = new_page(**device)
    fake = joined_scripted(page, server)
    page.click("#leave")
    fill_and_join(page, "b")
    wait_until(page, lambda: len(fake.of_type("join")) == 2)
    fake.send(presence_refusal("leave"), presence_refusal("join"))
    expect(page.locator("#messages .error")).to_have_count(2)
    expect(page.locator("#app")).to_have_attribute("data-joined", "true")
    expect(page.locator("#room-name")).to_have_text("#a")
    fake.send(json.dumps({"type": "chat", "username": "bob", "text": "still here",
                          "timestamp": 4, "seq": 1}))
    expect(chat_texts(page)).to_have_text(["still here"])
