"""What chat users expect from the page: leaving, unread counts, refused messages kept, safe
links, clear sign-in failures, a name per tab, typing indicators. Each at desktop and at phone
size (390x844), in Debian's Chromium against real server processes."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable

import jwt
import pytest
from playwright.sync_api import Dialog, Page, WebSocketRoute, expect

from tests.browser.netfault import FaultyLink
from tests.browser.pages import Frames, chat_texts, join, member, open_page, say, wait_until
from tests.support import ServerProcess

NewPage = Callable[..., Page]
Launch = Callable[..., ServerProcess]
Device = dict[str, object]

SECRET = "browser-test-secret-that-is-long-enough-for-hs256"


def token_for(name: str, *, secret: str = SECRET, expires_in: float = 3600) -> str:
    return jwt.encode(
        {"sub": name, "exp": int(time.time() + expires_in)}, secret, algorithm="HS256"
    )


def visibility_is(page: Page, state: str) -> None:
    """Waits until the page's document.visibilityState is `state` (polled with evaluate:
    wait_for_function compiles its predicate with eval, which the page's CSP forbids)."""
    wait_until(page, lambda: page.evaluate("document.visibilityState") == state)


def no_horizontal_scroll(page: Page) -> bool:
    return bool(page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"))


# ---------- leave ----------


def test_leave_button_leaves_the_room_and_another_can_be_joined(
    server: ServerProcess, new_page: NewPage, device: Device
) -> None:
    alice_page = new_page(**device)
    frames = Frames(alice_page)
    alice = join(alice_page, server, "alice", "first")
    bob = join(new_page(), server, "bob", "first")
    expect(member(alice, "bob")).to_have_count(1)
    expect(alice.locator("#leave")).to_be_visible()

    alice.click("#leave")
    expect(alice.locator("#app")).to_have_attribute("data-joined", "false")
    expect(alice.locator("#messages .system .text").last).to_have_text("You left #first.")
    expect(alice.locator("#room-name")).to_have_text("")
    expect(alice.locator("#members li")).to_have_count(0)
    expect(alice.locator("#member-count")).to_have_text("0")
    expect(alice.locator("#leave")).to_be_hidden()
    expect(alice.locator("#input")).to_be_disabled()
    expect(alice).to_have_title("roomcast")
    assert {"type": "leave"} in frames.sent
    # The server told the room.
    expect(bob.locator("#messages .system").last).to_have_text(re.compile("alice left #first"))
    expect(member(bob, "alice")).to_have_count(0)
    say(bob, "after alice left")
    expect(chat_texts(bob).last).to_have_text("after alice left")

    # She can join another room; nothing from the one she left reaches her.
    alice.fill("#room", "second")
    alice.click("#join")
    expect(alice.locator("#app")).to_have_attribute("data-joined", "true")
    expect(alice.locator("#room-name")).to_have_text("#second")
    expect(member(alice, "alice")).to_have_count(1)
    expect(alice.locator("#member-count")).to_have_text("1")
    expect(alice.locator("#leave")).to_be_visible()
    say(alice, "hello second")
    expect(chat_texts(alice)).to_have_text(["hello second"])
    expect(chat_texts(bob)).to_have_text(["after alice left"])
    assert no_horizontal_scroll(alice)

    # Ask for a third room and leave before the server's answer is back: the late confirmation
    # must not put her back into a room she left.
    alice.fill("#room", "third")
    alice.evaluate(
        "() => { document.getElementById('join').click(); "
        "document.getElementById('leave').click(); }"
    )
    expect(alice.locator("#messages .system .text").last).to_have_text("You left #second.")
    join(new_page(), server, "carol", "third")  # carol's confirmation: alice's has arrived too
    assert frames.types()[-2:] == ["join", "leave"]
    wait_until(alice, lambda: alice.evaluate("document.title") == "roomcast")
    expect(alice.locator("#app")).to_have_attribute("data-joined", "false")
    expect(alice.locator("#room-name")).to_have_text("")


# ---------- unread count ----------


def test_unread_count_in_the_title_while_the_tab_is_hidden(
    server: ServerProcess, new_tab: NewPage, new_page: NewPage, device: Device
) -> None:
    reader = join(new_tab(**device), server, "reader")
    writer = join(new_page(), server, "writer")
    expect(member(reader, "writer")).to_have_count(1)
    say(writer, "while you watch")
    expect(chat_texts(reader)).to_have_text(["while you watch"])
    expect(reader).to_have_title("#general · roomcast")

    new_tab()  # another tab comes to the front: the reader's is hidden now, really
    visibility_is(reader, "hidden")
    say(writer, "one")
    say(writer, "two")
    expect(reader).to_have_title("(2) #general · roomcast")
    # Joins and leaves are not unread chat; the next chat proves they were not counted.
    join(new_page(), server, "passer-by")
    expect(reader.locator("#messages .system").last).to_have_text(re.compile("passer-by joined"))
    # Nor are the reader's own messages, sent from another of their tabs.
    say(join(new_page(), server, "reader"), "from my other tab")
    expect(chat_texts(reader).last).to_have_text("from my other tab")
    say(writer, "three")
    expect(chat_texts(reader).last).to_have_text("three")
    expect(reader).to_have_title("(3) #general · roomcast")

    reader.bring_to_front()  # the user comes back to the tab
    visibility_is(reader, "visible")
    expect(reader).to_have_title("#general · roomcast")
    say(writer, "seen at once")
    expect(chat_texts(reader).last).to_have_text("seen at once")
    expect(reader).to_have_title("#general · roomcast")


def test_chats_replayed_on_a_resume_count_as_unread_and_a_joins_context_does_not(
    server: ServerProcess, new_tab: NewPage, new_page: NewPage, device: Device
) -> None:
    """What a resume replays went by while the connection was down: the user has not seen it.
    The room's last messages a join shows first are its context, not news."""
    net = FaultyLink(server.port)
    try:
        writer = join(new_page(), server, "writer", "lobby")
        say(writer, "context one")
        say(writer, "context two")
        expect(chat_texts(writer)).to_have_count(2)

        reader = open_page(new_tab(**device), net)
        new_tab()  # the reader's tab is hidden from here on
        visibility_is(reader, "hidden")
        reader.evaluate(
            "() => { document.getElementById('username').value = 'reader'; "
            "document.getElementById('room').value = 'lobby'; "
            "document.getElementById('join').click(); }"
        )
        expect(reader.locator("#app")).to_have_attribute("data-joined", "true")
        expect(chat_texts(reader)).to_have_text(["context one", "context two"])
        expect(reader).to_have_title("#lobby · roomcast")  # the join's context is not unread

        net.refuse(True)
        assert net.cut() == 1
        expect(reader.locator("#status")).to_have_attribute("data-state", "reconnecting")
        expect(member(writer, "reader")).to_have_count(0)
        say(writer, "missed one")
        say(join(new_page(), server, "reader", "lobby"), "mine, from another tab")
        say(writer, "missed two")
        expect(chat_texts(writer)).to_have_count(5)
        net.refuse(False)

        expect(reader.locator("#status")).to_have_attribute("data-state", "online", timeout=20_000)
        expect(chat_texts(reader)).to_have_text(
            ["context one", "context two", "missed one", "mine, from another tab", "missed two"]
        )
        expect(reader.locator("#messages .divider")).to_have_count(0)  # a complete resume
        expect(reader).to_have_title("(2) #lobby · roomcast")  # not the reader's own
        say(writer, "live")
        expect(chat_texts(reader).last).to_have_text("live")
        expect(reader).to_have_title("(3) #lobby · roomcast")

        reader.bring_to_front()
        visibility_is(reader, "visible")
        expect(reader).to_have_title("#lobby · roomcast")
        assert no_horizontal_scroll(reader)
    finally:
        net.close()


# ---------- a room link ----------


def test_a_room_link_opens_the_room_at_once_once_the_tab_has_a_name(
    server: ServerProcess, new_page: NewPage, device: Device
) -> None:
    """README: "`/?room=dev` opens a room directly". A tab without a name asks for it first,
    with the room filled in; a tab that has one (sessionStorage) goes straight in."""
    page = new_page(**device)
    frames = Frames(page)
    page.goto(f"{server.http_url}/?room=dev")
    expect(page.locator("#status")).to_have_attribute("data-state", "online")
    expect(page.locator("#room")).to_have_value("dev")
    expect(page.locator("#username")).to_be_focused()
    expect(page.locator("#app")).to_have_attribute("data-joined", "false")
    assert frames.of_type("join") == []
    page.keyboard.type("alice")
    page.keyboard.press("Enter")
    expect(page.locator("#room-name")).to_have_text("#dev")
    expect(member(page, "alice")).to_have_count(1)

    # The same tab follows a link to another room: it knows its name, so it joins at once.
    page.goto(f"{server.http_url}/?room=ops")
    expect(page.locator("#app")).to_have_attribute("data-joined", "true")
    expect(page.locator("#room-name")).to_have_text("#ops")
    expect(member(page, "alice")).to_have_count(1)
    expect(page.locator("#messages .system").last).to_have_text(re.compile("alice joined #ops"))
    expect(page.locator("#input")).to_be_focused()
    expect(page).to_have_title("#ops · roomcast")
    assert frames.of_type("join")[-1]["room"] == "ops"
    say(page, "straight in")
    expect(chat_texts(page)).to_have_text(["straight in"])
    # A link without a room, or a new tab (no name yet), does not join anything by itself.
    page.goto(f"{server.http_url}/")
    expect(page.locator("#status")).to_have_attribute("data-state", "online")
    expect(page.locator("#app")).to_have_attribute("data-joined", "false")
    other = new_page(same_context_as=page)
    other.goto(f"{server.http_url}/?room=ops")
    expect(other.locator("#status")).to_have_attribute("data-state", "online")
    expect(other.locator("#username")).to_be_focused()
    expect(other.locator("#app")).to_have_attribute("data-joined", "false")
    assert no_horizontal_scroll(page)


# ---------- the length limit ----------


def test_the_length_limit_counts_characters_as_the_server_does_not_utf16_units(
    server: ServerProcess, new_page: NewPage, device: Device
) -> None:
    alice = join(new_page(**device), server, "alice")
    bob = join(new_page(), server, "bob")
    expect(member(alice, "bob")).to_have_count(1)
    box = alice.locator("#input")

    emoji = "\U0001f642" * 2500  # 2,500 characters for the server, 5,000 UTF-16 units
    box.fill(emoji)
    assert box.input_value() == emoji, "cut"  # not to 2,000 (no diff of 5,000 characters)
    expect(alice.locator("#counter")).to_have_text("2500 / 4000")
    expect(alice.locator("#send")).to_be_enabled()
    alice.click("#send")
    expect(chat_texts(bob)).to_have_count(1)
    assert chat_texts(bob).last.text_content() == emoji, "not delivered whole"
    expect(box).to_have_value("")
    expect(alice.locator("#composer-error")).to_be_hidden()

    box.fill("\U0001f642" * 4000)
    expect(alice.locator("#counter")).to_have_text("4000 / 4000")
    expect(alice.locator("#counter")).to_have_attribute("data-level", "full")
    expect(alice.locator("#send")).to_be_enabled()
    over = "x" * 4001  # one character more than the server takes: said, not cut
    box.fill(over)
    assert box.input_value() == over, "cut"
    expect(alice.locator("#counter")).to_have_text("4001 / 4000")
    expect(alice.locator("#counter")).to_have_attribute("data-level", "over")
    expect(alice.locator("#send")).to_be_disabled()
    assert no_horizontal_scroll(alice)


def test_a_limit_the_server_announces_in_its_welcome_replaces_the_default(
    launch: Launch, new_page: NewPage, device: Device
) -> None:
    """The welcome carries the server's --max-text-length: the page's counter and Send button
    follow it, counted in characters as the server counts them."""
    server = launch("--max-text-length", "10")
    page = new_page(**device)
    bob = join(new_page(), server, "bob")
    join(page, server, "alice")
    expect(page.locator("#counter")).to_have_text("0 / 10")
    page.fill("#input", "\U0001f642" * 10)
    expect(page.locator("#counter")).to_have_text("10 / 10")
    expect(page.locator("#send")).to_be_enabled()
    page.click("#send")
    expect(chat_texts(bob)).to_have_text(["\U0001f642" * 10])
    page.fill("#input", "eleven long")
    expect(page.locator("#counter")).to_have_text("11 / 10")
    expect(page.locator("#send")).to_be_disabled()
    assert no_horizontal_scroll(page)


# ---------- refused messages ----------


def without_announced_limit(ws: WebSocketRoute) -> None:
    """Passes a page's WebSocket through, minus the welcome's `max_text_length`."""
    upstream = ws.connect_to_server()

    def to_page(message: str | bytes) -> None:
        frame = json.loads(message)
        frame.pop("max_text_length", None)
        ws.send(json.dumps(frame))

    upstream.on_message(to_page)
    ws.on_message(upstream.send)


def test_a_refused_message_stays_in_the_composer_until_one_is_accepted(
    launch: Launch, new_page: NewPage, device: Device
) -> None:
    server = launch("--rate-limit", "0", "--max-text-length", "20")
    alice_page = new_page(**device)
    # A server that does not announce its limit in the welcome (as before it did): the page
    # lets a longer text go, and the server refuses it.
    alice_page.route_web_socket(re.compile(r"/ws"), without_announced_limit)
    alice = join(alice_page, server, "alice")
    bob = join(new_page(), server, "bob")
    expect(member(alice, "bob")).to_have_count(1)

    too_long = "this is longer than twenty characters"
    say(alice, too_long)
    refusal = alice.locator("#composer-error")
    expect(refusal).to_be_visible()
    expect(refusal).to_have_attribute("data-code", "text_too_long")
    expect(refusal).to_contain_text("longer than 20 characters")
    expect(alice.locator("#input")).to_have_value(too_long)
    expect(alice.locator("#input")).to_be_editable()
    expect(alice.locator("#input")).to_have_attribute("aria-invalid", "true")
    expect(alice.locator("#messages .error")).to_have_count(0)  # shown by the composer instead
    # "Near it": the reason is drawn inside the composer's box.
    outer = alice.locator("#composer").bounding_box()
    inner = refusal.bounding_box()
    assert outer is not None and inner is not None
    assert outer["y"] <= inner["y"] and inner["y"] + inner["height"] <= outer["y"] + outer["height"]
    # The composer grows with the text: all of the refused message is in view (on a phone it
    # takes two lines).
    assert alice.locator("#input").evaluate("t => t.scrollHeight <= t.clientHeight")
    assert no_horizontal_scroll(alice)
    # Clearing the text clears the reason with it.
    alice.fill("#input", "")
    expect(refusal).to_be_hidden()
    say(alice, too_long)
    expect(refusal).to_be_visible()

    say(alice, "short enough")
    expect(chat_texts(bob)).to_have_text(["short enough"])
    expect(alice.locator("#input")).to_have_value("")
    expect(refusal).to_be_hidden()
    expect(alice.locator("#input")).to_have_attribute("aria-invalid", "false")


def test_a_chat_in_flight_while_switching_rooms_is_still_settled(
    server: ServerProcess, new_page: NewPage, device: Device
) -> None:
    page = join(new_page(**device), server, "alice", "one")
    page.fill("#input", "sent on the way out")
    page.fill("#room", "two")
    # Send, then switch rooms before the server's answer can arrive.
    page.evaluate(
        "() => { document.getElementById('send').click(); "
        "document.getElementById('join').click(); }"
    )
    expect(page.locator("#room-name")).to_have_text("#two")
    expect(page.locator("#app")).to_have_attribute("data-joined", "true")
    expect(chat_texts(page)).to_have_text(["sent on the way out"])
    expect(page.locator("#input")).to_have_value("")  # accepted in #one: not left to resend
    expect(page.locator("#input")).to_be_editable()


# ---------- links ----------


def test_links_in_chat_text_are_safe_anchors_and_the_rest_stays_text(
    server: ServerProcess, new_page: NewPage, device: Device
) -> None:
    target = f"{server.http_url}/healthz"
    text = (
        f"docs at {target}, or (see https://127.0.0.1:9/a_(b)?q=1&r=2). "
        "Not links: javascript:alert(1) JaVaScRiPt:alert(2) data:text/html,<b>x</b> "
        'ftp://127.0.0.1/f http:// http://[oops <a href="http://127.0.0.1:9/">y</a>'
    )
    dialogs: list[str] = []
    reader = new_page(**device)

    def on_dialog(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    reader.on("dialog", on_dialog)
    writer = join(new_page(), server, "writer")
    join(reader, server, "reader")
    say(writer, text)
    for page in (writer, reader):
        line = chat_texts(page).last
        expect(line).to_have_text(text)  # every character is still shown
        links = line.locator("a")
        expect(links).to_have_count(3)
        found = links.evaluate_all(
            "as => as.map(a => [a.getAttribute('href'), a.textContent, a.target, a.rel])"
        )
        assert found == [
            [target, target, "_blank", "noopener noreferrer"],
            [
                "https://127.0.0.1:9/a_(b)?q=1&r=2",
                "https://127.0.0.1:9/a_(b)?q=1&r=2",
                "_blank",
                "noopener noreferrer",
            ],
            ["http://127.0.0.1:9/", "http://127.0.0.1:9/", "_blank", "noopener noreferrer"],
        ]
        expect(page.locator("#messages b, #messages img")).to_have_count(0)
        assert page.locator("#messages a").evaluate_all(
            "as => as.every(a => a.protocol === 'http:' || a.protocol === 'https:')"
        )

    # Following a link opens it in a new tab that cannot reach back into the chat.
    with reader.context.expect_page() as opened:
        chat_texts(reader).last.locator("a").first.click()
    popup = opened.value
    popup.wait_for_load_state()
    assert popup.url == target
    expect(popup.locator("body")).to_have_text("ok")
    assert popup.evaluate("window.opener") is None
    assert popup.evaluate("document.referrer") == ""
    assert dialogs == []
    assert no_horizontal_scroll(reader)


# ---------- sign-in failures and retries ----------


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        (
            f"?token={token_for('visitor', secret='some-other-secret-that-is-long-enough')}",
            "bad token signature",
        ),
        (f"?token={token_for('visitor', expires_in=-60)}", "token expired"),
        ("", "token required"),
    ],
    ids=["bad-signature", "expired-before-loading", "no-token"],
)
def test_a_refused_token_stops_the_page_with_the_servers_reason(
    launch: Launch, new_page: NewPage, device: Device, query: str, reason: str
) -> None:
    """Needs the server's GET /auth/check: the page cannot see the upgrade's 401 itself."""
    server = launch("--jwt-secret", SECRET, "--jwt-leeway", "0")
    page = new_page(**device)
    page.clock.install()
    frames = Frames(page)
    with page.expect_response(re.compile(r"/auth/check(\?|$)")) as checked:
        page.goto(f"{server.http_url}/{query}")
    assert checked.value.status == 401
    status = page.locator("#status")
    expect(status).to_have_attribute("data-state", "refused")
    expect(status).to_have_text("Not signed in")
    expect(page.locator("#messages .error").last).to_contain_text(reason)
    # No retry is pending: however much time passes, the page does not connect again (a
    # retry would set the state to "connecting" at once).
    page.clock.run_for(120_000)
    expect(status).to_have_attribute("data-state", "refused")
    assert len(frames.sockets) == 1
    expect(page.locator("#messages .error")).to_have_count(1)


def test_a_connection_refused_for_another_reason_is_retried_until_it_succeeds(
    launch: Launch, new_page: NewPage, device: Device
) -> None:
    """Full server (503): the token is fine, so the page keeps retrying with backoff."""
    server = launch("--jwt-secret", SECRET, "--max-connections", "1", "--rate-limit", "0")
    first = open_page(new_page(), server, f"?token={token_for('first')}")
    page = new_page(**device)
    token = token_for("second")
    with page.expect_request(re.compile(r"/auth/check\?token=")) as checked:
        page.goto(f"{server.http_url}/?token={token}")
    assert checked.value.url.endswith(f"/auth/check?token={token}")
    status = page.locator("#status")
    expect(status).to_have_text(re.compile(r"Connecting in \d+\.\d s"))
    expect(status).to_have_attribute("data-state", "connecting")
    first.close()  # a place frees up: a retry can succeed now
    expect(status).to_have_attribute("data-state", "online", timeout=15_000)
    page.fill("#username", "ignored")
    page.click("#join")
    expect(member(page, "second")).to_have_count(1)
    expect(page.locator("#messages .error")).to_have_count(0)


# ---------- a name per tab ----------


def test_the_name_belongs_to_the_tab_and_survives_its_reload(
    server: ServerProcess, new_page: NewPage, device: Device
) -> None:
    first = join(new_page(**device), server, "alice")
    # The old shared key of earlier versions must not leak into a new tab either.
    first.evaluate("localStorage.setItem('roomcast.username', 'from-an-old-version')")
    second = open_page(new_page(same_context_as=first), server)
    expect(second.locator("#username")).to_have_value("")
    join(second, server, "bob")
    assert first.evaluate("localStorage.getItem('roomcast.username')") is None

    for page, name in ((first, "alice"), (second, "bob")):
        page.reload()
        expect(page.locator("#status")).to_have_attribute("data-state", "online")
        expect(page.locator("#username")).to_have_value(name)
    third = open_page(new_page(same_context_as=first), server)
    expect(third.locator("#username")).to_have_value("")


# ---------- typing ----------


def pause_clock(page: Page) -> None:
    """Freezes the page's clock (installed before loading) a second ahead of now."""
    now = page.evaluate("Date.now()")
    page.clock.pause_at(now + 1000)


def test_the_page_asks_for_typing_events_and_sends_at_most_one_every_two_seconds(
    server: ServerProcess, new_page: NewPage, device: Device
) -> None:
    page = new_page(**device)
    page.clock.install()
    frames = Frames(page)
    join(page, server, "alice")
    assert frames.of_type("join")[-1] == {
        "type": "join",
        "room": "general",
        "username": "alice",
        "typing": True,
        "history": 50,
    }
    pause_clock(page)
    box = page.locator("#input")
    box.fill("   ")  # only spaces: not typing a message
    box.fill("")
    box.press_sequentially("hello")
    page.clock.run_for(1_999)
    box.press_sequentially(" wor")
    page.clock.run_for(1)  # 2 s after the first one
    box.press_sequentially("ld")
    box.press("Enter")
    expect(chat_texts(page)).to_have_text(["hello world"])
    wait_until(page, lambda: "chat" in frames.types())
    assert frames.types()[-3:] == ["typing", "typing", "chat"]
    assert len(frames.of_type("typing")) == 2
    # A server that predates `typing` answers it with unknown_type: not the user's business.
    expect(page.locator("#messages .error")).to_have_count(0)
    expect(page.locator("#composer-error")).to_be_hidden()


def test_typing_shows_who_is_typing_for_four_seconds(
    server: ServerProcess, new_page: NewPage, device: Device
) -> None:
    """Needs the server to forward `typing` to members that joined with "typing": true."""
    reader = new_page(**device)
    reader.clock.install()
    join(reader, server, "reader")
    alice = join(new_page(), server, "alice")
    expect(member(reader, "alice")).to_have_count(1)
    pause_clock(reader)

    alice.locator("#input").press_sequentially("hel")
    indicator = reader.locator("#typing")
    expect(indicator).to_have_text("alice is typing…")
    expect(indicator).to_be_visible()
    expect(alice.locator("#typing")).to_have_text("")  # nobody else is typing
    reader.clock.run_for(3_900)
    expect(indicator).to_have_text("alice is typing…")
    reader.clock.run_for(200)
    expect(indicator).to_have_text("")
    assert no_horizontal_scroll(reader)


def test_a_chat_or_a_leave_clears_the_senders_typing_indicator(
    server: ServerProcess, new_page: NewPage, device: Device
) -> None:
    """Needs the server to forward `typing` to members that joined with "typing": true."""
    reader = new_page(**device)
    reader.clock.install()
    join(reader, server, "reader")
    alice = join(new_page(), server, "alice")
    bob = join(new_page(), server, "bob")
    expect(member(reader, "bob")).to_have_count(1)
    pause_clock(reader)  # frozen: only the chat or the leave can clear an indicator

    alice.locator("#input").press_sequentially("on my way")
    indicator = reader.locator("#typing")
    expect(indicator).to_have_text("alice is typing…")
    alice.press("#input", "Enter")
    expect(chat_texts(reader)).to_have_text(["on my way"])
    expect(indicator).to_have_text("")

    bob.locator("#input").press_sequentially("wait")
    expect(indicator).to_have_text("bob is typing…")
    bob.click("#leave")
    expect(member(reader, "bob")).to_have_count(0)
    expect(indicator).to_have_text("")


def test_several_typers_are_condensed_into_one_line(
    server: ServerProcess, new_page: NewPage, device: Device
) -> None:
    """Needs the server to forward `typing` to members that joined with "typing": true."""
    reader = new_page(**device)
    reader.clock.install()
    join(reader, server, "reader")
    writers = [join(new_page(), server, name) for name in ("amy", "ben", "cat", "dan")]
    expect(reader.locator("#member-count")).to_have_text("5")
    pause_clock(reader)

    indicator = reader.locator("#typing")
    expected = [
        "amy is typing…",
        "amy and ben are typing…",
        "amy, ben and cat are typing…",
        "amy, ben and 2 others are typing…",
    ]
    for writer, text in zip(writers, expected, strict=True):
        writer.locator("#input").press_sequentially("hi")
        expect(indicator).to_have_text(text)
    assert no_horizontal_scroll(reader)
