"""The daily hot sheet in headless Chromium, as an officer opens it for the morning briefing, in both languages; the
pictures taken here are docs/screenshots/hotsheet-en.png and hotsheet-zh.png."""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from playwright.sync_api import expect
from pypdf import PdfReader

from backend.api.app import create_app
from backend.web.translations import MESSAGES
from bikeguard.services import free_port
from protocol.messages import utcnow
from tests import factories
from tests.backend.test_counter_browser import _bike_photo
from tests.backend.test_pages_browser import _api_as, _owner_api, _sign_in
from tests.browser import browser_page, console_errors, raw_keys, require_chromium, screenshot_path
from tests.serving import served


@pytest.fixture
def server(database_url: str) -> Iterator[str]:
    """The backend (API and pages, no ingest) served by uvicorn on a free port."""
    require_chromium()
    port = free_port()
    with served(create_app(factories.settings(database_url, http_port=port), run_ingest=False), port) as url:
        yield url


_BIKES = (
    ("浙A·70001", "Yadea", "G5", "blue", 2.5),
    ("浙A·70002", "Aima", "A500", "white", 7),
    ("浙A·70003", "Emma", "Q3", "red", 20),
)


def _town(database_url: str) -> None:
    """Three stations on a road, and the moves behind the likeliest next stations."""
    with psycopg.connect(database_url) as conn:
        for i, (sid, name) in enumerate(
            (("st-west", "West Lake Gate"), ("st-wulin", "Wulin Square"), ("st-bridge", "Qiantang Bridge"))
        ):
            factories.station(conn, sid, 30.27 + i / 500, 120.15)
            conn.execute("UPDATE stations SET name = %s WHERE station_id = %s", (name, sid))
        start = utcnow() - timedelta(hours=3)
        for tag in range(8):
            for j, sid in enumerate(("st-west", "st-wulin", "st-bridge")):
                at = start + timedelta(seconds=tag * 600 + j * 240)
                conn.execute(
                    "INSERT INTO sightings VALUES (%s, %s, %s, %s, 3, -60, 0, 4, 1)",
                    (at, at + timedelta(seconds=15), sid, 0x7100 + tag),
                )
        conn.execute("SELECT bikeguard_refresh_transitions(14, make_interval(mins => 30))")


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_officer_opens_the_hot_sheet_with_photos_last_sightings_and_next_stations(
    server: str,
    database_url: str,
    lang: str,
) -> None:
    t = MESSAGES[lang]
    _town(database_url)
    with psycopg.connect(database_url) as conn:
        clerk = factories.account(conn, "clerk", "zhang.min")
        police = factories.account(conn, "police", "officer.li")
    with _api_as(server, clerk) as api:
        done = [
            api.post(
                "/api/bikes", json=factories.registration(plate=plate, brand=brand, model=model, colour=colour)
            ).json()
            for plate, brand, model, colour, _ in _BIKES
        ]
        for d in done[:2]:
            photo = {"photo": ("bike.jpg", _bike_photo(), "image/jpeg")}
            assert api.post(f"/api/bikes/{d['bike']['bike_id']}/photos", files=photo).status_code == 201
    for d, (_, _, _, _, hours_ago) in zip(done, _BIKES, strict=True):
        with _owner_api(server, d["owner_login"]) as owner:
            assert owner.post(f"/api/bikes/{d['bike']['bike_id']}/theft", json={}).status_code == 201
        reported = utcnow() - timedelta(hours=hours_ago)
        with psycopg.connect(database_url) as conn:
            conn.execute(
                "UPDATE theft_reports SET reported_at = %s, stolen_at = %s WHERE bike_id = %s",
                (reported, reported - timedelta(minutes=40), d["bike"]["bike_id"]),
            )
    with psycopg.connect(database_url) as conn:  # the first bike was ridden west to Wulin Square since its theft
        tag = int(done[0]["bike"]["tag_id"], 16)
        for minutes, sid in ((50, "st-west"), (45, "st-wulin")):
            at = utcnow() - timedelta(minutes=minutes)
            conn.execute("INSERT INTO sightings VALUES (%s, %s, %s, %s, 3, -60, 0, 0, 1)", (at, at, sid, tag))

    with browser_page(1100, 1000) as page:
        page.goto(f"{server}/hotsheet?lang={lang}")
        _sign_in(page, police, factories.PASSWORD)
        page.wait_for_selector("#hotsheet")
        blocks = page.locator(".bg-hs-bike")
        expect(blocks).to_have_count(3)
        assert [blocks.nth(i).get_attribute("data-plate") for i in range(3)] == [b[0] for b in _BIKES]
        first = blocks.nth(0).inner_text()
        assert "Yadea · G5 · blue" in first
        assert "Wulin Square" in first and "Qiantang Bridge" in first  # last seen, and where it is likely next
        assert t["hotsheet_not_seen"] in blocks.nth(1).inner_text()
        assert t["hotsheet_no_photo"] in blocks.nth(2).inner_text()
        photos = page.locator(".bg-hs-bike img.bg-hs-photo")
        expect(photos).to_have_count(2)
        assert all(photos.nth(i).evaluate("img => img.decode().then(() => img.naturalWidth > 0)") for i in range(2))
        assert t["hotsheet_heading"] in page.inner_text("#hotsheet")
        for d in done:
            assert d["owner_login"]["username"] not in page.content()
        assert raw_keys(page) == []
        assert console_errors(page) == []
        page.screenshot(path=str(screenshot_path(f"hotsheet-{lang}.png")), full_page=True)

        # Printed, the sheet alone: no controls, no page header.
        page.emulate_media(media="print")
        assert not page.locator(".bg-hs-bar").is_visible() and not page.locator(".bg-top").is_visible()
        page.emulate_media(media="screen")

        # The PDF link carries the language, and opens with the officer's session; kept in build/ to look at.
        assert page.get_attribute("#hotsheet-pdf", "href") == f"/hotsheet.pdf?lang={lang}"
        pdf = page.request.get(f"{server}/hotsheet.pdf?lang={lang}")
        assert pdf.ok and pdf.headers["content-type"] == "application/pdf"
        text = "".join(p.extract_text() for p in PdfReader(io.BytesIO(pdf.body())).pages).replace("\x00", "")
        assert all(b[0] in text for b in _BIKES) and t["hotsheet_title"] in text
        (Path(__file__).resolve().parents[2] / "build").mkdir(exist_ok=True)
        (Path(__file__).resolve().parents[2] / "build" / f"hotsheet-{lang}.pdf").write_bytes(pdf.body())

        # The sheet at an earlier moment leaves out the bikes reported since.
        page.fill("input[name=at]", (utcnow() + timedelta(hours=8) - timedelta(hours=5)).strftime("%Y-%m-%dT%H:%M"))
        page.click(".bg-hs-bar form button")
        page.wait_for_url("**/hotsheet?**at=**")
        expect(page.locator(".bg-hs-bike")).to_have_count(2)
        assert "at=" in (page.get_attribute("#hotsheet-pdf", "href") or "")
