"""The zone editor in headless Chromium, in English and Chinese: a commander draws a zone by clicking its corners,
saves it, renames and deletes one; the live map shows the zones and a stolen bike leaving one. The pictures taken
here are the ones in docs/police.md."""

from __future__ import annotations

from datetime import timedelta

import psycopg
import pytest
from psycopg.types.json import Jsonb

from backend.alarms import engine
from backend.ingest import writer
from backend.zones.crossings import ZoneCache
from bikeguard.demo import town_roads_geojson
from firmware_sim.town import Town
from maps.words import words
from protocol.messages import parse_batch_rows, utcnow
from tests import factories
from tests.backend.test_pages_browser import _sign_in, server  # noqa: F401 - the fixture
from tests.browser import browser_page, console_errors, raw_keys, screenshot_path


def _town(database_url: str) -> str:
    """A small town's stations and roads, and a police account; returns its username."""
    town = Town.generate(7, stations=9, bikes=10)
    with psycopg.connect(database_url) as conn:
        for st in town.stations:
            factories.station(conn, st.station_id, st.lat, st.lon)
            conn.execute("UPDATE stations SET name = %s WHERE station_id = %s", (st.name, st.station_id))
        for feature in town_roads_geojson(town)["features"]:
            conn.execute(
                "INSERT INTO roads (name, geometry) VALUES (%s, %s)",
                (feature["properties"]["name"], Jsonb(feature["geometry"])),
            )
        return factories.account(conn, "police", "zhou.wei")


def _zones(database_url: str) -> list[tuple[str, int]]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT name, jsonb_array_length(geometry->'coordinates'->0) FROM zones ORDER BY name")
        return [(r[0], int(r[1])) for r in rows]


@pytest.mark.parametrize(
    ("lang", "names", "words"),
    [
        ("en", ("Station square", "North bridge", "Old town"), ("Zone “Station square” saved.", "Renamed to")),
        ("zh", ("车站广场", "北桥", "老城区"), ("区域“车站广场”已保存。", "已改名为")),
    ],
)
def test_a_commander_draws_a_zone_by_clicks_saves_renames_and_deletes(
    server: str,  # noqa: F811
    database_url: str,
    lang: str,
    names: tuple[str, str, str],
    words: tuple[str, str],
) -> None:
    police = _town(database_url)
    with browser_page(1400, 900) as page:
        page.goto(f"{server}/police/zones?lang={lang}")
        _sign_in(page, police, factories.PASSWORD)
        page.wait_for_selector("#zone-map .leaflet-control-scale")
        page.wait_for_timeout(400)  # Leaflet's fit to the stations
        box = page.locator("#zone-map").bounding_box()
        assert box is not None
        x0, y0, w, h = box["x"], box["y"], box["width"], box["height"]
        assert page.is_disabled("#zone-save")
        # A quadrilateral around the middle of the town, corner by corner.
        for fx, fy in ((0.35, 0.3), (0.65, 0.28), (0.7, 0.7), (0.32, 0.68)):
            page.mouse.click(x0 + w * fx, y0 + h * fy)
        assert page.is_enabled("#zone-save")
        assert "4" in page.inner_text("#zone-count")
        # Saving without a name is refused in the page's language; nothing is stored.
        page.click("#zone-save")
        assert page.inner_text("#zone-error") == ("Give the zone a name." if lang == "en" else "请为区域命名。")
        page.fill("#zone-name", names[0])
        page.click("#zone-save")
        page.wait_for_selector("#zone-list li")
        assert page.inner_text("#zone-done") == words[0]
        assert _zones(database_url) == [(names[0], 5)]  # four corners, closed
        assert page.locator("#zone-map path.bg-zone-shape").count() == 1

        # A second zone, a triangle; then a bow tie, which the server refuses with its reason, in the page's language.
        for fx, fy in ((0.1, 0.1), (0.25, 0.1), (0.17, 0.22)):
            page.mouse.click(x0 + w * fx, y0 + h * fy)
        page.fill("#zone-name", names[2])
        page.click("#zone-save")
        page.locator("#zone-list li").nth(1).wait_for()
        for fx, fy in ((0.8, 0.1), (0.95, 0.25), (0.95, 0.1), (0.8, 0.25)):
            page.mouse.click(x0 + w * fx, y0 + h * fy)
        page.fill("#zone-name", "X")
        page.click("#zone-save")
        page.locator("#zone-error").wait_for()
        error = page.inner_text("#zone-error")
        assert error == (
            "The border crosses itself: click the corners in order around the zone."
            if lang == "en"
            else "边界自相交：请沿区域边界依次点击拐点。"
        )
        page.click("#zone-clear")

        # Rename the first, delete the other (two clicks: the first asks).
        row = page.locator("#zone-list li").filter(has=page.locator(f"input[value='{names[0]}']"))
        row.locator("input").fill(names[1])
        row.locator("button[data-act='rename']").click()
        page.locator("#zone-done", has_text=words[1]).wait_for()
        other = page.locator("#zone-list li").filter(has=page.locator(f"input[value='{names[2]}']"))
        other.locator("button[data-act='delete']").click()
        other.locator("button[data-act='delete']").click()
        page.locator("#zone-list li").nth(1).wait_for(state="detached")
        assert _zones(database_url) == [(names[1], 5)]

        # The picture for the guide: the zone on the map, a new one half drawn.
        for fx, fy in ((0.12, 0.55), (0.24, 0.5), (0.26, 0.8)):
            page.mouse.click(x0 + w * fx, y0 + h * fy)
        page.fill("#zone-name", names[2])
        page.wait_for_timeout(300)
        page.screenshot(path=str(screenshot_path(f"zones-{lang}.png")))
        assert raw_keys(page) == []
        # Chromium logs the refused bow tie's 422; nothing else went wrong.
        assert [e for e in console_errors(page) if "status of 422" not in e] == []
        assert len(console_errors(page)) == 1


def test_the_zone_editor_is_for_police_and_admins_only(server: str, database_url: str) -> None:  # noqa: F811
    with psycopg.connect(database_url) as conn:
        clerk = factories.account(conn, "clerk", "li.na")
    with browser_page() as page:
        page.goto(f"{server}/police/zones?lang=en")
        _sign_in(page, clerk, factories.PASSWORD)
        page.wait_for_url("**/police/zones?lang=en")  # back to the page asked for, its query too
        page.get_by_text("Not for your account").wait_for()
        assert page.locator("#zone-map").count() == 0
        assert "this page is for: police, admin" in page.inner_text("main")


# The county around the town's first station, and a station 1.5 km to its north, outside it.
COUNTY = {
    "type": "Polygon",
    "coordinates": [[[120.13, 30.25], [120.17, 30.25], [120.17, 30.28], [120.13, 30.28], [120.13, 30.25]]],
}


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_the_live_map_shows_the_zones_and_a_stolen_bike_that_left_one(
    server: str,  # noqa: F811
    database_url: str,
    lang: str,
) -> None:
    w = words(lang)
    with psycopg.connect(database_url, autocommit=True) as conn:
        police = factories.account(conn, "police", "officer.wu")
        factories.station(conn, "st-square", 30.258, 120.146)
        factories.station(conn, "st-north", 30.295, 120.152)
        conn.execute("UPDATE stations SET name = 'Station square' WHERE station_id = 'st-square'")
        conn.execute("UPDATE stations SET name = 'North road' WHERE station_id = 'st-north'")
        factories.theft(conn, factories.bike(conn, 0xD00D, "HZ-77001"), utcnow() - timedelta(hours=1))
        name = "Xihu county" if lang == "en" else "西湖县"
        conn.execute(
            "INSERT INTO zones (name, geometry, created_by, updated_by) VALUES (%s, %s, 'x', 'x')",
            (name, Jsonb(COUNTY)),
        )
        conn.execute("UPDATE zones_revision SET revision = revision + 1")
        # Through the ingest's writer and alarm engine: seen on the square, then on the north road.
        for seq, (station, minutes) in enumerate((("st-square", 9), ("st-north", 3)), start=1):
            batch = factories.batch(station, seq, [0xD00D], at=utcnow() - timedelta(minutes=minutes))
            with conn.transaction():
                result = writer.write_batches(conn, [parse_batch_rows(batch.to_json())])
            engine.raise_alarms(conn, result.committed, engine.ON_COMMIT, zones=ZoneCache())
        crossed_at = conn.execute("SELECT crossed_at FROM zone_crossings").fetchone()[0]  # type: ignore[index]
    with browser_page(1500, 950) as page:
        page.goto(f"{server}/?lang={lang}")
        _sign_in(page, police, factories.PASSWORD)
        page.wait_for_selector("#bg-live-status.connected")
        page.wait_for_selector(".bg-alarm .bg-crossing")
        text = page.inner_text(".bg-alarm .bg-crossing")
        t = page.evaluate("iso => new Date(iso).toLocaleTimeString([], { hour12: false })", crossed_at.isoformat())
        said = w["zones_left"].format(zone=name, heading=w["zones_heading_north"], t=t)
        assert said in text
        assert w["zones_time_interpolated"].format(**{"from": "Station square", "to": "North road"}) in text
        assert page.locator("path.bg-zone").count() == 1
        assert name in page.inner_text(".bg-zone-label")
        assert page.locator("path.bg-crossing-point").count() == 1
        assert page.get_attribute(".bg-zones-link", "href") == "/police/zones"
        # The console leads to the police's other pages, in the console's language.
        tools = [page.get_attribute(a, "href") for a in (".bg-tools a >> nth=0", ".bg-tools a >> nth=1")]
        assert tools == [f"/hotsheet?lang={lang}", f"/statistics?lang={lang}"]
        page.click(".bg-tools a >> nth=1")
        page.wait_for_url("**/statistics?lang=*")
        page.go_back()
        page.wait_for_selector(".bg-alarm .bg-crossing")
        page.hover("path.bg-crossing-point")
        page.wait_for_selector(".bg-crossing-label")
        page.screenshot(path=str(screenshot_path(f"zones-live-{lang}.png")))
        page.click(".bg-alarm .bg-crossing")  # the card opens the alarm's popup
        page.wait_for_selector(".bg-popup")
        assert said in page.inner_text(".bg-popup")
        assert raw_keys(page) == []
        assert console_errors(page) == []
