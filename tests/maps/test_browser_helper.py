"""tests/browser.py: skip or fail without Chromium, and console errors are caught."""

from __future__ import annotations

import pytest

from tests import browser


def test_missing_chromium_skips_locally_and_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(browser, "chromium_path", lambda: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install chromium"):
        browser.require_chromium()

    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must run the browser tests"):
        browser.require_chromium()


def test_console_errors_and_uncaught_exceptions_are_collected() -> None:
    with browser.browser_page(320, 200) as page:
        page.set_content("<script>console.log('fine'); console.error('broken widget');</script>")
        page.evaluate("setTimeout(() => { throw new Error('boom'); }, 0)")
        page.wait_for_timeout(200)

        errors = browser.console_errors(page)

    assert len(errors) == 2
    assert "broken widget" in errors[0]
    assert "boom" in errors[1]
