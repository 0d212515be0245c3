"""The police console through the real backend in headless Chromium: its language, the stolen bikes (heard by a
station or not yet), a theft report and a recovery from the page, signing out."""

from __future__ import annotations

import psycopg
import pytest
from playwright.sync_api import expect

from maps.words import words
from tests import factories
from tests.backend.test_counter_browser import _bike_photo
from tests.backend.test_pages_browser import _api_as, _owner_api, _sign_in, server  # noqa: F401 - server is a fixture
from tests.browser import browser_page, console_errors, raw_keys, screenshot_path


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_officer_lists_stolen_bikes_files_a_report_marks_one_recovered_and_signs_out(
    server: str,  # noqa: F811 - the fixture imported above
    database_url: str,
    lang: str,
) -> None:
    w = words(lang)
    with psycopg.connect(database_url) as conn:
        clerk = factories.account(conn, "clerk", "zhang.min")
        police = factories.account(conn, "police", "officer.li")
        factories.station(conn, "st-bridge", 30.27, 120.15)
    with _api_as(server, clerk) as api:
        quiet = api.post("/api/bikes", json=factories.registration(plate="HZ-60001")).json()
        photo = {"photo": ("bike.jpg", _bike_photo(), "image/jpeg")}
        assert api.post(f"/api/bikes/{quiet['bike']['bike_id']}/photos", files=photo).status_code == 201
        assert api.post("/api/bikes", json=factories.registration(plate="HZ-60002")).status_code == 201
    slip = quiet["owner_login"]
    with _owner_api(server, slip) as owner:
        r = owner.post(f"/api/bikes/{quiet['bike']['bike_id']}/theft", json={"place": "Wulin Square"})
        assert r.status_code == 201

    with browser_page(1500, 950) as page:
        page.on("dialog", lambda dialog: dialog.accept())  # "Recovered: HZ-60001?"
        page.goto(f"{server}/?lang={lang}")
        _sign_in(page, police, factories.PASSWORD)
        page.wait_for_selector("#bg-live-status.connected")
        assert w["title"] in page.inner_text("#bg-header")
        assert w["signed_in_as"].format(name="Police officer.li") in page.inner_text("#bg-header")
        assert page.inner_text("#bg-live-status") == w["live_connected"]

        # A stolen bike no station has heard yet is on the list all the same.
        page.click("#bg-panel-tabs button[data-panel=stolen]")
        page.wait_for_selector(".bg-stolen-bike")
        card = page.inner_text(".bg-stolen-bike")
        assert "HZ-60001" in card and w["not_heard_since"] in card and "Wulin Square" in card
        assert page.inner_text("#bg-stolen-count") == "1"
        # Its photo, to recognise it in the street.
        photo = page.locator(".bg-stolen-bike img.bg-photo")
        expect(photo).to_have_count(1)
        assert photo.evaluate("img => img.decode().then(() => img.naturalWidth > 0)")

        # A report from the page needs the case number typed beside the search.
        page.fill("#bg-search-q", "HZ-60002")
        page.click("#bg-search button[type=submit]")
        page.wait_for_selector("#bg-search-result .bg-report")
        page.click("#bg-search-result .bg-report summary")
        page.fill("#bg-search-result [name=place]", "Qingchun Road bike park")
        page.click("#bg-search-result .bg-report button")
        expect(page.locator("#bg-action-status")).to_have_text(w["report_needs_case"])
        page.fill("#bg-search-case", "HZ-2026-0042")
        page.click("#bg-search-result .bg-report button")
        expected = w["reported"].format(plate="HZ-60002", case="HZ-2026-0042")
        expect(page.locator("#bg-action-status")).to_have_text(expected)
        expect(page.locator("#bg-stolen-count")).to_have_text("2")
        # The search shown again as it was made (no case number): the case typed for the report read no owner.
        expect(page.locator("#bg-search-result .bg-report")).to_have_count(0)
        assert w["owner_is"].split("{")[0].strip() not in page.inner_text("#bg-search-result")
        assert "HZ-2026-0042" in page.inner_text("#bg-stolen-list")
        page.screenshot(path=str(screenshot_path(f"police-stolen-{lang}.png")))

        # The owner's bike is back: recovered from the list, it leaves it.
        page.click(f".bg-stolen-bike[data-bike-id='{quiet['bike']['bike_id']}'] button[data-recover-bike]")
        expect(page.locator("#bg-stolen-count")).to_have_text("1")
        assert "HZ-60001" not in page.inner_text("#bg-stolen-list")
        assert console_errors(page) == []
        assert raw_keys(page) == []

        page.click("#bg-sign-out")
        page.wait_for_url("**/login")
    with _api_as(server, police) as officer:
        (still,) = officer.get("/api/bikes/stolen").json()
        assert still["bike"]["plate"] == "HZ-60002" and still["bike"]["theft"]["police_report"] == "HZ-2026-0042"
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT case_number FROM audit_log WHERE action = 'bike.theft_report' AND actor = %s", (police,)
        ).fetchone()
    assert row is not None and row[0] == "HZ-2026-0042"
