"""Headless Chromium for tests: Debian's chromium driven by playwright (no browser download needed)."""

from __future__ import annotations

import os
import re
import shutil
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import ConsoleMessage, Page

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/lib/chromium/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

_console_errors: weakref.WeakKeyDictionary[Page, list[str]] = weakref.WeakKeyDictionary()


def chromium_path() -> str | None:
    """Path of an installed Chromium, or None when there is none."""
    for candidate in CHROMIUM_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("chromium")


def require_chromium() -> str:
    """Chromium's path; skips the test when it is missing, except under CI, where that is a failure."""
    path = chromium_path()
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("CI must run the browser tests: chromium is not installed (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium); CI installs it")
    return path


def console_errors(page: Page) -> list[str]:
    """Console errors and uncaught exceptions the page has produced so far (live list)."""
    return _console_errors.setdefault(page, [])


def raw_keys(page: Page) -> list[str]:
    """Translation keys shown as they are (`alarm_low_battery`) instead of their words: a missing translation."""
    from backend.web.translations import MESSAGES
    from maps.words import WORDS

    keys = {key for key in (*MESSAGES["en"], *WORDS["en"]) if "_" in key}
    words = set(re.findall(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)+", page.inner_text("body")))
    return sorted(words & keys)


def _pictures_after_fonts(page: Page) -> None:
    """page.screenshot waits for the page's web fonts (the Chinese one is large): a picture shows words, not boxes."""
    take = page.screenshot

    def screenshot(**kwargs: Any) -> bytes:
        page.evaluate("document.fonts.ready.then(() => true)")
        return take(**kwargs)

    page.screenshot = screenshot  # type: ignore[method-assign]


@contextmanager
def browser_page(width: int = 1400, height: int = 900, timezone_id: str | None = None) -> Iterator[Page]:
    """A playwright Page in headless Chromium whose console errors are collected (see console_errors); the browser's
    time zone is the machine's unless `timezone_id` (IANA) is given."""
    from playwright.sync_api import sync_playwright

    executable = require_chromium()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(
                viewport={"width": width, "height": height}, device_scale_factor=1, timezone_id=timezone_id
            )
            page = context.new_page()
            errors = console_errors(page)

            def on_console(msg: ConsoleMessage) -> None:
                if msg.type == "error":
                    errors.append(f"console: {msg.text} ({msg.location.get('url', '')})")

            page.on("console", on_console)
            page.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))
            _pictures_after_fonts(page)
            yield page
        finally:
            browser.close()


def screenshot_path(name: str) -> Path:
    """Where a test keeps the picture of a page a person would see: build/screenshots/ (look at them after a run).

    BIKEGUARD_SCREENSHOTS=docs/screenshots refreshes the guides' pictures instead; a plain test run leaves the
    repository untouched.
    """
    default = Path(__file__).resolve().parents[1] / "build" / "screenshots"
    folder = Path(os.environ.get("BIKEGUARD_SCREENSHOTS") or default)
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


def screenshot(
    url: str,
    path: Path | str,
    *,
    width: int = 1400,
    height: int = 900,
    wait_for: str | None = None,
    settle_ms: int = 1000,
) -> list[str]:
    """Save a PNG of `url` (after `wait_for`, a CSS selector, appears); returns the page's console errors.

    settle_ms lets Leaflet finish its zoom animation: a picture taken mid-animation shows vector layers
    at the old scale.
    """
    path = Path(path)
    with browser_page(width, height) as page:
        page.goto(url, wait_until="load")
        if wait_for:
            page.wait_for_selector(wait_for)
        page.wait_for_timeout(settle_ms)
        path.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(path))
        return list(console_errors(page))
