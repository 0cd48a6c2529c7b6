"""Takes the README's screenshots of the chat page: `.venv/bin/python -m tests.browser.screenshots`.

Starts a real server on a free loopback port, has three people talk in Debian's Chromium and
writes docs/screenshot.png (desktop, ada's view: a link, two people typing, a draft) and
docs/screenshot-mobile.png (390x844, grace's view: her message refused by the rate limit stays in
the composer with the reason). Run it again after changing the page.
"""

from __future__ import annotations

import sys
from pathlib import Path

from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS
from tests.browser.pages import join, member, say
from tests.support import running_server

DOCS = Path(__file__).resolve().parents[2] / "docs"
COMMON = {"color_scheme": "light", "locale": "en-US", "timezone_id": "UTC"}


def person(browser: Browser, **options: object) -> Page:
    context = browser.new_context(**COMMON, **options)  # type: ignore[arg-type]
    context.set_default_timeout(10_000)
    return context.new_page()


def main() -> int:
    # Three chats each in 30 s: grace's fourth is refused, as a fast typist's would be.
    limits = ("--rate-limit", "3", "--rate-window", "30")
    with running_server(*limits) as server, sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        ada = join(person(browser, viewport={"width": 1000, "height": 620}), server, "ada", "lobby")
        grace = join(
            person(
                browser,
                viewport={"width": 390, "height": 844},
                device_scale_factor=2,
                is_mobile=True,
                has_touch=True,
            ),
            server,
            "grace",
            "lobby",
        )
        expect(member(ada, "grace")).to_have_count(1)
        say(ada, "Hi Grace! Did the deploy go out?")
        say(grace, "It did, ten minutes ago. Dashboards: http://localhost:3000/d/roomcast")
        say(ada, "Great. I'll tell the team in #general.")
        linus = join(person(browser), server, "linus", "lobby")
        say(grace, "Restarted the server once to test reconnects: the page rejoined by itself.")
        say(ada, "Nice, no reload needed.")
        say(linus, "Same here, my tab came back on its own.")
        say(grace, "Runbook is updated too.")
        expect(ada.locator("#messages .chat")).to_have_count(7)

        # grace's fourth chat within the window: refused, kept in her composer with the reason.
        say(grace, "Postmortem notes at http://localhost:8000/notes")
        expect(grace.locator("#composer-error")).to_be_visible()

        # ada drafts a reply while linus and grace type (if the server forwards typing events).
        # Their last typing events went out with their chats, and both ends send or forward at
        # most one per 2 s: let that pass, or these would be dropped.
        ada.wait_for_timeout(2_100)
        linus.locator("#input").press_sequentially("one sec")
        grace.locator("#input").press(" ")
        grace.locator("#input").press("Backspace")
        ada.locator("#input").press_sequentially("See you at standup")
        indicator = ada.locator("#typing")
        try:
            expect(indicator).not_to_have_text("", timeout=3_000)
        except AssertionError:
            print("note: this server does not forward typing events: no indicator in the shot")
        grace.locator("#input").blur()

        DOCS.mkdir(exist_ok=True)
        ada.screenshot(path=str(DOCS / "screenshot.png"))
        grace.screenshot(path=str(DOCS / "screenshot-mobile.png"))
        browser.close()
    print(f"wrote {DOCS / 'screenshot.png'} and {DOCS / 'screenshot-mobile.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
