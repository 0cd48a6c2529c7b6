"""Real-browser fixtures: Playwright's sync API driving Debian's Chromium (never a downloaded one).

The browsers are module-scoped so that they are gone before any other test module (some of which
run an asyncio loop) starts; each test gets fresh browser contexts, i.e. separate users.

Two kinds of browser:
- `browser` / `new_page`: Playwright launches Chromium; every page is its own foreground window,
  which Playwright keeps "visible" and focused whatever happens (by design).
- `new_tab`: tabs of one window of a Chromium we start ourselves with a DevTools port on loopback,
  driven over CDP without Playwright's page defaults, so switching tabs really hides the others
  (`document.visibilityState` turns "hidden"), as it does for a user.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import stop_process

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

from playwright.sync_api import (  # noqa: E402
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    Playwright,
    sync_playwright,
)

NewPage = Callable[..., Page]

# Every feature is checked on a desktop window and on a phone-sized one.
DEVICES: dict[str, dict[str, object]] = {
    "desktop": {"viewport": {"width": 1280, "height": 800}},
    "phone": {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True},
}


# For tests of the page's protocol handling rather than its layout (history, resume, retries):
# one device is enough; every feature's layout is checked at both sizes by its own tests.
desktop_only = pytest.mark.parametrize("device", [DEVICES["desktop"]], ids=["desktop"])


@pytest.fixture(params=sorted(DEVICES))
def device(request: pytest.FixtureRequest) -> dict[str, object]:
    """Context options for one device (desktop, phone at 390x844): pass to new_page(**device)."""
    return DEVICES[request.param]


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as pw:
        yield pw


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    chromium = playwright.chromium.launch(
        executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
    )
    try:
        yield chromium
    finally:
        chromium.close()


def _watch_errors(page: Page, errors: list[str]) -> Page:
    page.on("pageerror", lambda error: errors.append(f"{page.url}: {error}"))

    def console(message: ConsoleMessage) -> None:
        # what the page's Content-Security-Policy blocked: the page must need nothing it forbids
        if message.type == "error" and "Content Security Policy" in message.text:
            errors.append(f"{page.url}: {message.text}")

    page.on("console", console)
    return page


@pytest.fixture
def new_page(browser: Browser) -> Iterator[NewPage]:
    """Opens a page in its own context (its own storage: another person); closed after the test.

    `same_context_as=page` opens another tab of the same person instead (shared localStorage,
    its own sessionStorage)."""
    contexts: list[BrowserContext] = []
    page_errors: list[str] = []

    def _new_page(same_context_as: Page | None = None, **context_options: object) -> Page:
        if same_context_as is not None:
            return _watch_errors(same_context_as.context.new_page(), page_errors)
        context = browser.new_context(**context_options)  # type: ignore[arg-type]
        context.set_default_timeout(10_000)
        contexts.append(context)
        return _watch_errors(context.new_page(), page_errors)

    yield _new_page
    for context in contexts:
        context.close()
    assert page_errors == [], "uncaught JavaScript errors in the page"


@pytest.fixture(scope="module")
def tab_browser(playwright: Playwright) -> Iterator[Browser]:
    """A Chromium with one window whose tabs hide each other, connected over CDP (loopback)."""
    profile = tempfile.mkdtemp(prefix="roomcast-chromium-")
    proc = subprocess.Popen(
        [
            str(CHROMIUM),
            "--headless",
            *CHROMIUM_ARGS,
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",  # Chromium picks one and writes it to DevToolsActivePort
            f"--user-data-dir={profile}",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        active_port = Path(profile, "DevToolsActivePort")
        deadline = time.monotonic() + 20
        port = ""
        while not port:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("Chromium did not open its DevTools port")
            if active_port.exists():
                port = active_port.read_text().split("\n", 1)[0].strip()
            if not port:
                time.sleep(0.05)  # polling for the file, bounded by the deadline above
        # no_defaults: no focus emulation on the default context's pages, so hidden tabs are hidden
        chromium = playwright.chromium.connect_over_cdp(
            f"http://127.0.0.1:{port}", no_defaults=True
        )
        try:
            yield chromium
        finally:
            chromium.close()
    finally:
        stop_process(proc)
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def new_tab(tab_browser: Browser) -> Iterator[NewPage]:
    """Opens a tab in the shared window (it comes to the front, hiding the others); closed after
    the test. `viewport={...}` sizes it."""
    context = tab_browser.contexts[0]
    tabs: list[Page] = []
    page_errors: list[str] = []

    def _new_tab(viewport: dict[str, int] | None = None, **_ignored: object) -> Page:
        tab = _watch_errors(context.new_page(), page_errors)
        tab.set_default_timeout(10_000)
        if viewport is not None:
            tab.set_viewport_size(viewport)  # type: ignore[arg-type]
        tabs.append(tab)
        return tab

    yield _new_tab
    for tab in tabs:
        tab.close()
    assert page_errors == [], "uncaught JavaScript errors in the page"
