"""Helpers the browser tests share: joining a room through the page, sending, watching frames."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, Protocol

from playwright.sync_api import Locator, Page, WebSocket, expect


class Site(Protocol):
    """Where the page is served from: a server, or a proxy in front of one (netfault)."""

    @property
    def http_url(self) -> str: ...


class Node(Site, Protocol):
    """A server itself (a WebSocket URL of its own)."""

    @property
    def ws_url(self) -> str: ...


def open_page(page: Page, server: Site, query: str = "") -> Page:
    """Loads the page and waits until it is online."""
    page.goto(f"{server.http_url}/{query}")
    expect(page.locator("#status")).to_have_attribute("data-state", "online")
    return page


def join(
    page: Page, server: Site, username: str, room: str = "general", query: str = ""
) -> Page:
    """Opens the page, joins `room` as `username` and waits for the server's confirmation."""
    open_page(page, server, query)
    page.fill("#username", username)
    page.fill("#room", room)
    page.click("#join")
    expect(page.locator("#app")).to_have_attribute("data-joined", "true")
    expect(page.locator("#room-name")).to_have_text(f"#{room}")
    return page


def say(page: Page, text: str) -> None:
    """Types `text` and presses Enter (waits until the composer accepts input)."""
    page.fill("#input", text)
    page.press("#input", "Enter")


def chat_texts(page: Page) -> Locator:
    return page.locator("#messages .chat .text")


def dividers(page: Page) -> Locator:
    """The "you may have missed messages" lines."""
    return page.locator("#messages .divider")


def seqs(page: Page) -> list[int]:
    """The seq of every chat line shown, in order."""
    return [int(s) for s in page.locator("#messages .chat").evaluate_all(
        "lines => lines.map(l => l.dataset.seq)"
    )]


def log(page: Page) -> list[str]:
    """The chat lines' texts and the dividers ("--"), in order: where a divider stands."""
    return list(page.locator("#messages .chat .text, #messages .divider").evaluate_all(
        "ls => ls.map(l => l.classList.contains('divider') ? '--' : l.textContent)"
    ))


def member(page: Page, name: str) -> Locator:
    return page.locator(f'#members li[data-username="{name}"]')


def wait_until(page: Page, condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Polls `condition` (which reads state Playwright fills from events) until a deadline;
    each round trip to the page lets Playwright deliver the events that arrived meanwhile."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        page.evaluate("0")


class Frames:
    """Every JSON frame a page sends over its WebSockets, in order (attach before page.goto)."""

    def __init__(self, page: Page) -> None:
        self.sent: list[dict[str, Any]] = []
        self.sockets: list[str] = []
        page.on("websocket", self._watch)

    def _watch(self, ws: WebSocket) -> None:
        self.sockets.append(ws.url)
        ws.on("framesent", self._record)

    def _record(self, payload: str | bytes) -> None:
        self.sent.append(json.loads(payload))

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [frame for frame in self.sent if frame.get("type") == kind]

    def types(self) -> list[str]:
        return [str(frame.get("type")) for frame in self.sent]


class Seed:
    """A client that speaks the protocol itself from a page of the node's origin, as the seed's
    clients do: its chats carry no id, so a node that cannot reach Redis delivers them to its
    own members unnumbered instead of refusing them."""

    def __init__(self, page: Page, server: Node, username: str, room: str) -> None:
        self.page = page
        page.goto(f"{server.http_url}/healthz")  # the node's origin, without the chat page
        page.evaluate(
            """([url, username, room]) => new Promise((resolve, reject) => {
                window.got = [];  // every message received
                window.chats = 0;  // how many of them are chats
                const ws = new WebSocket(url);
                window.ws = ws;
                ws.onmessage = (event) => {
                    const msg = JSON.parse(event.data);
                    window.got.push(msg);
                    if (msg.type === "chat") window.chats += 1;
                    if (msg.type === "system" && Array.isArray(msg.users)) resolve();
                };
                ws.onopen = () => ws.send(JSON.stringify({type: "join", username, room}));
                ws.onclose = () => reject(new Error("closed before the welcome"));
                setTimeout(() => reject(new Error("no welcome")), 10000);
            })""",
            [server.ws_url, username, room],
        )

    def say(self, text: str) -> None:
        self.page.evaluate("text => ws.send(JSON.stringify({type: 'chat', text}))", text)

    def chats(self) -> list[dict[str, Any]]:
        return list(self.page.evaluate("got.filter(m => m.type === 'chat')"))

    def received(self, event: str, username: str) -> bool:
        """Whether a system notice `event` about `username` has arrived."""
        return bool(self.page.evaluate(
            "([event, username]) => got.some(m => m.event === event && m.username === username)",
            [event, username],
        ))
