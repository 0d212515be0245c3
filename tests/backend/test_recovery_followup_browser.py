"""The recovery follow-up in the owner portal, in headless Chromium and both languages: "Is your bike back?", and the
prompt gone once the owner marks it recovered; the pictures are docs/screenshots/owner-followup-en.png and -zh.png."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta

import psycopg
import pytest
from playwright.sync_api import expect

from backend import recovery_followup
from backend.api.app import create_app
from backend.web.translations import MESSAGES
from bikeguard.services import free_port
from protocol.messages import utcnow
from tests import factories
from tests.backend.test_pages_browser import OWNER_PASSWORD, _api_as, _owner_api, _sign_in
from tests.backend.test_recovery_followup import held_since
from tests.browser import browser_page, console_errors, raw_keys, require_chromium, screenshot_path
from tests.serving import served


@pytest.fixture
def server(database_url: str) -> Iterator[str]:
    """The backend (API and pages, no ingest) served by uvicorn on a free port."""
    require_chromium()
    port = free_port()
    with served(create_app(factories.settings(database_url, http_port=port), run_ingest=False), port) as url:
        yield url


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_owner_is_asked_whether_the_bike_is_back_and_marks_it_recovered(
    server: str,
    database_url: str,
    database_owner_url: str,
    lang: str,
) -> None:
    t = MESSAGES[lang]
    now = utcnow()
    with psycopg.connect(database_url) as conn:
        clerk = factories.account(conn, "clerk", "zhang.min")
        factories.station(conn, "st-home", 30.27, 120.15)
        conn.execute("UPDATE stations SET name = 'Lakeside Estate' WHERE station_id = 'st-home'")
    with _api_as(server, clerk) as api:
        done = api.post("/api/bikes", json=factories.registration(plate="HZ-71001")).json()
    bike_id, tag = done["bike"]["bike_id"], int(done["bike"]["tag_id"], 16)
    held_since(database_owner_url, bike_id, now - timedelta(days=30))
    stolen_at = now - timedelta(hours=8)
    with _owner_api(server, done["owner_login"]) as owner:
        assert owner.post(f"/api/bikes/{bike_id}/theft", json={}).status_code == 201
    with psycopg.connect(database_url) as conn:
        conn.execute("UPDATE theft_reports SET stolen_at = %s WHERE bike_id = %s", (stolen_at, bike_id))
        home = [stolen_at - timedelta(days=d) for d in range(1, 10)] + [
            now - timedelta(minutes=m) for m in range(150, -1, -10)
        ]
        for at in home:
            conn.execute("INSERT INTO sightings VALUES (%s, %s, %s, %s, 3, -60, 0, 0, 1)", (at, at, "st-home", tag))

    async def follow_up() -> list[int]:
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            return (await recovery_followup.check(conn, now, timedelta(hours=2))).raised

    assert len(asyncio.run(follow_up())) == 1

    with browser_page(1300, 900) as page:
        page.goto(f"{server}/portal?lang={lang}")
        _sign_in(page, done["owner_login"]["username"], OWNER_PASSWORD)
        prompt = page.locator("#alarms li.bg-followup")
        expect(prompt).to_have_count(1)
        text = prompt.inner_text()
        assert t["followup_title"] in text and "HZ-71001" in text and "Lakeside Estate" in text
        assert raw_keys(page) == []
        assert console_errors(page) == []
        page.screenshot(path=str(screenshot_path(f"owner-followup-{lang}.png")))

        prompt.locator("button[data-act=followup-recovered]").click()
        expect(page.locator("#alarms li.bg-followup")).to_have_count(0)
        expect(page.locator(".bg-bike.stolen")).to_have_count(0)
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT recovered_at IS NOT NULL FROM theft_reports WHERE bike_id = %s", (bike_id,)
        ).fetchone()
    assert row is not None and row[0]
