"""Real-browser fixtures: Playwright's sync API driving Debian's Chromium (never a downloaded one).

The browser is module-scoped so that it is gone before any other test module (some of which run
an asyncio loop) starts; each test gets fresh browser contexts, i.e. separate users.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Playwright must never try to fetch its own browsers: this machine cannot, and we do not want it.
os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")

if not CHROMIUM.exists() and os.geteuid() != 0:
    pytest.skip(
        f"{CHROMIUM} is missing and we are not root, so it cannot be installed "
        "(run `make system-deps` or `apt-get install chromium`)",
        allow_module_level=True,
    )

from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright  # noqa: E402

NewPage = Callable[..., Page]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def new_page(browser: Browser) -> Iterator[NewPage]:
    """Opens a page in its own context (its own storage: another person); closed after the test."""
    contexts: list[BrowserContext] = []
    page_errors: list[str] = []

    def _new_page(**context_options: object) -> Page:
        context = browser.new_context(**context_options)  # type: ignore[arg-type]
        context.set_default_timeout(10_000)
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda error: page_errors.append(f"{page.url}: {error}"))
        return page

    yield _new_page
    for context in contexts:
        context.close()
    assert page_errors == [], "uncaught JavaScript errors in the page"
