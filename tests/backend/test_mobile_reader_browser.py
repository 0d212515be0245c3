"""The police live map with a mobile reader, through the real backend in headless Chromium (en and zh): the patrol
car drawn where it last was (a dashed ring, its last fix in the tooltip), and a stolen chip it heard shown where the
car was when it heard it."""

from __future__ import annotations

from datetime import timedelta

import psycopg
import pytest
from playwright.sync_api import Locator, expect

from backend.alarms import engine
from backend.ingest import writer
from maps.words import words
from protocol.messages import ReaderPosition, parse_batch_rows, utcnow
from tests import factories
from tests.backend.test_pages_browser import _sign_in, server  # noqa: F401 - server is a fixture
from tests.browser import browser_page, console_errors, screenshot_path

DEPOT = (30.2620, 120.1400)
HEARD_AT = (30.2735, 120.1562)
TAG = 0x5A5A77


def _patrol_car_hears_a_stolen_chip(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        factories.station(conn, "st-bridge", 30.2700, 120.1500)
        factories.station(conn, "patrol-7", *DEPOT)
        conn.execute("UPDATE stations SET mobile = true, name = 'Patrol car 7' WHERE station_id = 'patrol-7'")
        factories.theft(conn, factories.bike(conn, TAG, "HZ-70007"))
        batch = factories.batch("patrol-7", 1, [TAG])
        fix_at = utcnow() - timedelta(seconds=3)
        placed = batch.model_copy(
            update={
                "sightings": [
                    s.model_copy(update={"position": ReaderPosition(lat=HEARD_AT[0], lon=HEARD_AT[1], fix_at=fix_at)})
                    for s in batch.sightings
                ]
            }
        )
        with conn.transaction():
            result = writer.write_batches(conn, [parse_batch_rows(placed.to_json())])
            engine.raise_alarms(conn, result.committed, engine.ON_COMMIT)
        # The registry moved the car to the fix; the alarm is where it heard the chip.
        assert conn.execute("SELECT lat, lon FROM stations WHERE station_id = 'patrol-7'").fetchone() == HEARD_AT
        assert conn.execute("SELECT reader_lat, reader_lon FROM alarms").fetchone() == HEARD_AT


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_officer_sees_the_patrol_car_where_it_last_was_and_the_stolen_chip_it_heard(
    server: str,  # noqa: F811 - the fixture imported above
    database_url: str,
    lang: str,
) -> None:
    w = words(lang)
    with psycopg.connect(database_url) as conn:
        police = factories.account(conn, "police", "officer.li")
    _patrol_car_hears_a_stolen_chip(database_url)
    with browser_page(1400, 900) as page:
        errors = console_errors(page)
        page.goto(f"{server}/?lang={lang}")
        _sign_in(page, police, factories.PASSWORD)
        page.wait_for_selector("#bg-live-status.connected")
        expect(page.locator(".bg-alarm-icon")).to_have_count(1)
        # The alarm's marker stands where the car heard the chip: the map projects it to the same point as the
        # patrol car's own ring (moved there from the depot).
        ring = page.locator("path.leaflet-interactive[stroke-dasharray='4 3']")
        expect(ring).to_have_count(1)
        ring.dispatch_event("mouseover")  # the alarm's marker lies on top of it: the same place
        tooltip = page.locator(".leaflet-tooltip:not(.bg-alarm-label)")
        expect(tooltip).to_contain_text("Patrol car 7")
        expect(tooltip).to_contain_text(w["mobile_reader"].split("{")[0].strip())
        # Measured once the map has settled: while it pans or zooms to the alarm, Leaflet moves its marker icons
        # and its vector layer by separate transforms, and the two can be caught apart mid-animation.
        apart = (0.0, 0.0)
        for _ in range(100):
            alarm_centre, ring_centre = _centre(page.locator(".bg-alarm-icon")), _centre(ring)
            apart = (abs(alarm_centre[0] - ring_centre[0]), abs(alarm_centre[1] - ring_centre[1]))
            if max(apart) < 15:
                break
            page.wait_for_timeout(100)
        assert max(apart) < 15, apart
        page.screenshot(path=str(screenshot_path(f"police-mobile-reader-{lang}.png")))
        assert errors == []


def _centre(locator: Locator) -> tuple[float, float]:
    box = locator.bounding_box()
    assert box is not None
    return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
