"""The portal's notification settings in headless Chromium, in Chinese and in English: an owner chooses SMS and
e-mail and quiet hours, their armed bike moves, and the portal shows the notifications the backend's sender handed
to the (local) SMS gateway and SMTP server. The pictures are build/screenshots/owner-notifications-{lang}.png."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest
from py_vapid import Vapid

from backend.api.app import create_app
from bikeguard.services import free_port
from protocol.messages import parse_tag
from tests import factories
from tests.backend.notify_standins import http_standin, smtp_server
from tests.backend.test_notifications_outbox import MOTION, _write
from tests.backend.test_pages_browser import OWNER_PASSWORD, _api_as, _clerk, _sign_in
from tests.browser import browser_page, console_errors, raw_keys, require_chromium, screenshot_path
from tests.serving import served


def _vapid_key() -> str:
    import base64

    vapid = Vapid()
    vapid.generate_keys()
    raw = vapid.private_key.private_numbers().private_value.to_bytes(32, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@pytest.fixture
def served_with_providers(database_url: str) -> Iterator[dict[str, Any]]:
    """The backend (with its notification sender) on a free port, an SMS gateway stand-in and an SMTP server."""
    require_chromium()
    port = free_port()
    with http_standin() as gateway, smtp_server() as (smtp_port, mailbox):
        settings = factories.settings(
            database_url,
            http_port=port,
            sms_gateway_url=gateway.url,
            smtp_host="127.0.0.1",
            smtp_port=smtp_port,
            smtp_tls="none",
            vapid_private_key=_vapid_key(),
            notify_poll_s=0.5,
        )
        with served(create_app(settings, run_ingest=False), port) as url:
            yield {"url": url, "gateway": gateway, "mailbox": mailbox}


WORDS = {
    "en": {"title": "Notifications", "saved": "Saved.", "sent": "sent by SMS", "kind": "Your armed bike moved"},
    "zh": {"title": "消息通知", "saved": "已保存。", "sent": "已通过短信发送", "kind": "已布防的车辆发生移动"},
}


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_an_owner_chooses_notifications_and_sees_what_was_sent(served_with_providers, database_url, lang) -> None:
    base, gateway, mailbox = (served_with_providers[k] for k in ("url", "gateway", "mailbox"))
    words = WORDS[lang]
    with _api_as(base, _clerk(database_url)) as clerk:
        done = clerk.post("/api/bikes", json=factories.registration(plate="HZ-50005")).json()
    slip = done["owner_login"]
    with browser_page(1300, 1250) as page:
        page.goto(f"{base}/portal?lang={lang}")
        _sign_in(page, slip["username"], slip["initial_password"])
        page.wait_for_selector("#password-form")
        page.fill("#current", slip["initial_password"])
        page.fill("#new", OWNER_PASSWORD)
        page.fill("#repeat", OWNER_PASSWORD)
        page.click("#password-form button")
        page.wait_for_selector("#notify:not([hidden]) #nt-channels input")
        assert words["title"] in page.inner_text("#notify")
        # The three channels this deployment offers, none chosen yet; SMS goes to the registered number by default.
        assert page.eval_on_selector_all("#nt-channels input", "els => els.map(e => [e.value, e.checked])") == [
            ["webpush", False],
            ["sms", False],
            ["email", False],
        ]
        assert "*" in page.inner_text("#nt-sms-default")
        page.check("#nt-channels input[value=sms]")
        page.check("#nt-channels input[value=email]")
        page.fill("#nt-form [name=email]", "owner@example.org")
        page.select_option("#nt-form [name=language]", lang)
        # Quiet hours that do not hold now (in the browser's own time zone, which the page sends along).
        start, end = page.evaluate(
            "() => [2, 9].map(h => new Date(Date.now() + h * 3600e3).toTimeString().slice(0, 5))"
        )
        page.fill("#nt-form [name=quiet_start]", start)
        page.fill("#nt-form [name=quiet_end]", end)
        page.click("#nt-save")
        page.wait_for_selector("#nt-status:not([hidden])")
        assert page.inner_text("#nt-status") == words["saved"]

        # Arm the bike; it moves: the sender hands the SMS and the e-mail over, and the portal says so.
        page.click(".bg-bike button[data-act=arm]")
        page.wait_for_selector(".bg-bike.armed")
        with psycopg.connect(database_url, autocommit=True) as conn:
            factories.station(conn, "st-gate")
            conn.execute("UPDATE stations SET name = %s WHERE station_id = 'st-gate'", ("Wulin Gate",))
            _write(conn, factories.batch("st-gate", 1, [parse_tag(done["bike"]["tag_id"])], flags=MOTION))
        page.reload()
        page.wait_for_function("() => document.querySelectorAll('#nt-recent li.sent').length === 2", timeout=30000)
        assert page.input_value("#nt-form [name=quiet_start]") == start
        recent = page.inner_text("#nt-recent")
        assert words["kind"] in recent and words["sent"] in recent and "HZ-50005" in recent
        # The service worker the installed app pushes through registers with the portal as its scope.
        scope = page.evaluate(
            "() => navigator.serviceWorker.register('/portal/sw.js', {scope: '/portal'}).then(r => r.scope)"
        )
        assert scope == f"{base}/portal"
        page.wait_for_timeout(300)
        page.screenshot(path=str(screenshot_path(f"owner-notifications-{lang}.png")), full_page=True)
        assert console_errors(page) == []
        assert raw_keys(page) == []
    [sms] = gateway.requests
    assert "HZ-50005" in sms.json()["text"] and "Wulin Gate" in sms.json()["text"]
    [mail] = mailbox.messages
    assert mail["To"] == "owner@example.org"
    manifest = httpx.get(f"{base}/portal/manifest.webmanifest")
    assert manifest.headers["content-type"] == "application/manifest+json"
    assert manifest.json()["scope"] == "/portal" and manifest.json()["start_url"] == "/portal"
    worker = httpx.get(f"{base}/portal/sw.js")
    assert worker.headers["service-worker-allowed"] == "/portal" and "showNotification" in worker.text
    assert "content-security-policy" in worker.headers
