"""The chat page at `/`, driven in headless Chromium against real server processes."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import jwt
from playwright.sync_api import Browser, Dialog, Page, expect

from tests.browser.pages import chat_texts, join, member, say
from tests.support import ServerProcess, free_port, start_server

NewPage = Callable[..., Page]
Launch = Callable[..., ServerProcess]

XSS = "<img src=x onerror=alert(1)>"


def test_two_pages_chat_in_the_same_room(server: ServerProcess, new_page: NewPage) -> None:
    alice = join(new_page(), server, "alice")
    bob = join(new_page(), server, "bob")

    expect(alice.locator("#messages .system").last).to_have_text(re.compile("bob joined #general"))
    expect(bob.locator("#messages .system").last).to_have_text(re.compile("bob joined #general"))
    for page in (alice, bob):
        expect(member(page, "alice")).to_have_count(1)
        expect(member(page, "bob")).to_have_count(1)
        expect(page.locator("#member-count")).to_have_text("2")

    say(alice, "hello from alice")
    for page in (alice, bob):
        line = page.locator("#messages .chat").last
        expect(line.locator(".sender")).to_have_text("alice")
        expect(line.locator(".text")).to_have_text("hello from alice")
        expect(line.locator("time")).to_have_text(re.compile(r"\d"))
    expect(alice.locator("#messages .chat").last).to_have_class(re.compile(r"\bown\b"))
    expect(alice.locator("#input")).to_have_value("")

    # Bob closes his tab: alice sees him leave and the member list shrinks.
    bob.close()
    expect(alice.locator("#messages .system").last).to_have_text(re.compile("bob left #general"))
    expect(member(alice, "bob")).to_have_count(0)
    expect(alice.locator("#member-count")).to_have_text("1")


def test_markup_in_messages_and_names_is_shown_as_text(
    server: ServerProcess, new_page: NewPage
) -> None:
    dialogs: list[str] = []
    pages = []
    for name in (XSS, "reader"):
        page = new_page()

        def on_dialog(dialog: Dialog) -> None:
            dialogs.append(dialog.message)
            dialog.dismiss()

        page.on("dialog", on_dialog)
        page.add_init_script("window.__alerts = []; window.alert = m => __alerts.push(String(m));")
        pages.append(join(page, server, name))
    sender, reader = pages

    say(sender, XSS)
    say(sender, "after the markup")  # arrives after the markup had every chance to run
    for page in pages:
        expect(chat_texts(page)).to_have_text([XSS, "after the markup"])
        expect(page.locator("#messages .chat .sender").first).to_have_text(XSS)
        expect(member(page, XSS).locator(".member-name")).to_have_text(XSS)
        expect(page.locator("#messages img, #members img")).to_have_count(0)
        assert page.evaluate("window.__alerts") == []
    assert dialogs == []
    assert reader.title() == "#general · roomcast"


def test_page_reconnects_and_rejoins_after_a_server_restart(new_page: NewPage) -> None:
    port = free_port()
    first = start_server("--rate-limit", "0", port=port)
    try:
        alice = join(new_page(), first, "alice", "restart")
        bob = join(new_page(), first, "bob", "restart")
        say(alice, "before the restart")
        expect(chat_texts(bob)).to_have_text(["before the restart"])
    finally:
        first.stop()

    for page in (alice, bob):
        expect(page.locator("#status")).to_have_attribute(
            "data-state", "reconnecting", timeout=5_000
        )
        expect(page.locator("#app")).to_have_attribute("data-joined", "false")
        expect(page.locator("#members li")).to_have_count(0)
        expect(page.locator("#messages .system").last).to_have_text(re.compile("reconnecting"))
        expect(page.locator("#send")).to_be_disabled()

    second = start_server("--rate-limit", "0", port=port)
    try:
        for page in (alice, bob):
            expect(page.locator("#status")).to_have_attribute(
                "data-state", "online", timeout=15_000
            )
            expect(page.locator("#app")).to_have_attribute("data-joined", "true")
            expect(page.locator("#room-name")).to_have_text("#restart")
        # Both rejoined #restart by themselves: each sees both names again.
        for page in (alice, bob):
            expect(member(page, "alice")).to_have_count(1, timeout=10_000)
            expect(member(page, "bob")).to_have_count(1, timeout=10_000)
        expect(alice.locator("#messages .system", has_text="Reconnected.")).to_have_count(1)
        say(bob, "after the restart")
        for page in (alice, bob):
            expect(chat_texts(page).last).to_have_text("after the restart")
        expect(chat_texts(alice)).to_have_text(["before the restart", "after the restart"])
    finally:
        second.stop()


def test_rate_limit_error_reaches_only_the_sender(
    launch: Launch, new_page: NewPage, device: dict[str, object]
) -> None:
    server = launch("--rate-limit", "3", "--rate-window", "60")
    alice = join(new_page(**device), server, "alice")
    bob = join(new_page(), server, "bob")
    expect(member(alice, "bob")).to_have_count(1)

    for n in range(4):
        say(alice, f"burst {n}")
    # The refused message stays in alice's composer, the reason next to it.
    refusal = alice.locator("#composer-error")
    expect(refusal).to_have_attribute("data-code", "rate_limited")
    expect(refusal).to_contain_text("Slow down! Max 3 msgs/60s")
    expect(refusal).to_contain_text(re.compile(r"try again in \d+ s"))
    expect(alice.locator("#input")).to_have_value("burst 3")
    expect(alice.locator("#input")).to_be_editable()
    expect(chat_texts(bob)).to_have_text(["burst 0", "burst 1", "burst 2"])

    # Bob has his own budget; once his message is back, anything for him has arrived too.
    say(bob, "bob is fine")
    expect(chat_texts(bob).last).to_have_text("bob is fine")
    expect(chat_texts(alice).last).to_have_text("bob is fine")
    expect(bob.locator("#messages .error, #composer-error:visible")).to_have_count(0)
    expect(alice.locator("#input")).to_have_value("burst 3")
    expect(alice.locator("#composer-error")).to_be_visible()


def test_room_and_token_come_from_the_url(server: ServerProcess, new_page: NewPage) -> None:
    page = new_page()
    with page.expect_websocket() as opened:
        page.goto(f"{server.http_url}/?room=dev&token=t0k%2Ben")
    assert opened.value.url.startswith(f"ws://127.0.0.1:{server.port}/")
    assert opened.value.url.endswith("?token=t0k%2Ben")
    expect(page.locator("#room")).to_have_value("dev")
    expect(page.locator("#status")).to_have_attribute("data-state", "online")
    page.fill("#username", "carol")
    page.click("#join")
    expect(page.locator("#room-name")).to_have_text("#dev")
    expect(page.locator("#messages .system").last).to_have_text(re.compile("carol joined #dev"))
    expect(member(page, "carol")).to_have_count(1)


def test_empty_messages_are_not_sent_and_the_limit_is_shown(
    server: ServerProcess, new_page: NewPage
) -> None:
    alice = join(new_page(), server, "alice")
    bob = join(new_page(), server, "bob")
    # 4000 characters; the attribute counts UTF-16 units, two for an emoji
    expect(alice.locator("#input")).to_have_attribute("maxlength", "8000")
    expect(alice.locator("#counter")).to_have_text("0 / 4000")

    alice.fill("#input", "   ")
    expect(alice.locator("#send")).to_be_disabled()
    alice.press("#input", "Enter")
    expect(alice.locator("#input")).to_have_value("   ")  # nothing was sent, nothing cleared

    alice.fill("#input", "hello")
    expect(alice.locator("#counter")).to_have_text("5 / 4000")
    expect(alice.locator("#send")).to_be_enabled()
    alice.click("#send")
    expect(chat_texts(bob)).to_have_text(["hello"])
    expect(alice.locator("#messages .error")).to_have_count(0)
    expect(alice.locator("#counter")).to_have_text("0 / 4000")


def test_repeated_usernames_are_counted(server: ServerProcess, new_page: NewPage) -> None:
    first = join(new_page(), server, "sam")
    second = join(new_page(), server, "sam")
    for page in (first, second):
        expect(member(page, "sam").locator(".member-times")).to_have_text("\u00d72")
        expect(page.locator("#member-count")).to_have_text("2")
    second.close()
    expect(first.locator("#member-count")).to_have_text("1")
    expect(member(first, "sam")).to_have_count(1)
    expect(member(first, "sam").locator(".member-times")).to_have_count(0)


def test_members_list_mentions_the_capped_rest(launch: Launch, new_page: NewPage) -> None:
    server = launch("--max-users-list", "1")
    join(new_page(), server, "first")
    late = join(new_page(), server, "late")
    expect(late.locator("#member-count")).to_have_text("2")
    expect(late.locator("#members li")).to_have_count(1)
    expect(late.locator("#members-more")).to_have_text("and 1 more")


def test_auto_scroll_does_not_yank_a_reader_who_scrolled_up(
    server: ServerProcess, new_page: NewPage
) -> None:
    reader = join(new_page(viewport={"width": 800, "height": 500}), server, "reader")
    writer = join(new_page(), server, "writer")
    for n in range(30):
        say(writer, f"line {n}")
    expect(chat_texts(reader)).to_have_count(30)
    box = reader.locator("#messages")
    # Following the conversation: the newest line is in view.
    expect(chat_texts(reader).last).to_be_in_viewport()
    assert box.evaluate("m => m.scrollHeight > m.clientHeight")

    box.evaluate("m => { m.scrollTop = 0; }")
    say(writer, "while you were away")
    expect(chat_texts(reader)).to_have_count(31)
    assert box.evaluate("m => m.scrollTop") == 0
    expect(reader.locator("#jump")).to_be_visible()
    reader.click("#jump")
    expect(chat_texts(reader).last).to_be_in_viewport()
    expect(reader.locator("#jump")).to_be_hidden()


def test_phone_width_has_no_horizontal_scroll(server: ServerProcess, new_page: NewPage) -> None:
    page = join(new_page(viewport={"width": 360, "height": 700}, is_mobile=True), server, "phone")
    say(page, "a-long-word-without-spaces-" * 10)
    expect(chat_texts(page)).to_have_count(1)
    for selector in ("#input", "#send", "#messages", "#members"):
        expect(page.locator(selector)).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


def test_an_expired_token_stops_the_page_instead_of_reconnecting(
    launch: Launch, new_page: NewPage
) -> None:
    secret = "browser-test-secret-that-is-long-enough-for-hs256"
    server = launch("--jwt-secret", secret, "--jwt-leeway", "0", "--token-sweep-interval", "0.1")
    token = jwt.encode({"sub": "visitor", "exp": int(time.time()) + 2}, secret, algorithm="HS256")
    page = new_page()
    page.goto(f"{server.http_url}/?token={token}")
    expect(page.locator("#status")).to_have_attribute("data-state", "online")
    page.fill("#username", "ignored")
    page.click("#join")
    expect(page.locator("#app")).to_have_attribute("data-joined", "true")
    expect(member(page, "visitor")).to_have_count(1)  # the name comes from the token
    # the server closes with 4001 when the token expires; the page must not retry with it
    expect(page.locator("#messages .error").last).to_have_text(
        re.compile("token has expired"), timeout=10_000
    )
    expect(page.locator("#status")).to_have_attribute("data-state", "expired")


def test_the_page_runs_under_its_content_security_policy(
    server: ServerProcess, browser: Browser
) -> None:
    """The page is served with a policy that allows only its own script, style and socket
    (every other browser test fails on a violation it reports); an inline script is refused.
    Its own context, not new_page's: the violation provoked here is expected."""
    context = browser.new_context()
    page = context.new_page()
    response = page.goto(server.http_url)
    assert response is not None
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    blocked: list[str] = []
    page.on("console", lambda message: blocked.append(message.text))
    page.evaluate(
        "() => { const s = document.createElement('script'); s.textContent = 'window.ran = 1';"
        " document.body.append(s); }"
    )
    assert page.evaluate("() => window.ran") is None
    assert any("Content Security Policy" in text for text in blocked)
    context.close()
