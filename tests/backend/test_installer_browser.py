"""The installer page in headless Chromium; the picture taken here is the one in docs/installer.md."""

from __future__ import annotations

from datetime import timedelta

import psycopg
from psycopg.types.json import Jsonb

from bikeguard.demo import town_roads_geojson
from firmware_sim.town import Town
from protocol.messages import utcnow
from tests import factories
from tests.backend.test_pages_browser import SHOTS, _sign_in, server  # noqa: F401 - the fixture
from tests.browser import browser_page, console_errors


def _town(database_url: str) -> None:
    """A small town: most stations online, one offline (last will), one degraded, one never heard."""
    town = Town.generate(5, stations=8, bikes=10)
    now = utcnow()
    with psycopg.connect(database_url) as conn:
        for i, st in enumerate(town.stations):
            factories.station(conn, st.station_id, st.lat, st.lon)
            conn.execute("UPDATE stations SET name = %s WHERE station_id = %s", (st.name, st.station_id))
            if i == len(town.stations) - 1:
                continue  # never heard from
            state = "offline" if i == 1 else "online"
            conn.execute(
                "INSERT INTO station_status (station_id, state, reported_at, received_at, payload)"
                " VALUES (%s, %s, %s, %s, %s)",
                (st.station_id, state, now, now - timedelta(seconds=3 + i),
                 Jsonb({"station_id": st.station_id, "state": state, "spool_depth": [0, 812, 3, 0, 0, 15, 0][i],
                        "spool_dropped": [0, 0, 0, 0, 0, 2, 0][i], "noise_floor_dbm": -98 + i, "firmware": "1.2"})),
            )
        usual = [(now - timedelta(days=d, minutes=m), town.stations[2].station_id, m)
                 for d in range(1, 8) for m in range(1, 41)]
        usual += [(now - timedelta(minutes=m), st.station_id, m) for st in town.stations[:1] + town.stations[3:]
                  for m in range(1, 30)]
        usual += [(now - timedelta(minutes=m), town.stations[2].station_id, m) for m in range(1, 4)]
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO sightings (first_seen_at, last_seen_at, station_id, tag_id, beacons, peak_rssi_dbm,"
                " antenna, flags, batch_seq) VALUES (%s, %s, %s, %s, 1, -60, 0, 0, 1)",
                [(at, at, sid, tag) for at, sid, tag in usual],
            )
        roads = town_roads_geojson(town)
        for f in roads["features"]:
            conn.execute("INSERT INTO roads (name, geometry) VALUES (%s, %s)",
                         ((f.get("properties") or {}).get("name"), Jsonb(f["geometry"])))


def test_installer_sees_station_health_on_map_and_table_then_coverage(server: str, database_url: str) -> None:  # noqa: F811
    _town(database_url)
    with psycopg.connect(database_url) as conn:
        installer = factories.account(conn, "installer", "chen.jie")
    with browser_page(1400, 1100) as page:
        page.goto(f"{server}/installer?lang=en")
        _sign_in(page, installer, factories.PASSWORD)
        page.wait_for_selector("#station-table")
        rows = page.locator("#station-table tbody tr")
        assert rows.count() == 8
        health = [page.inner_text(f"#station-table tbody tr:nth-child({i + 1}) .bg-health") for i in range(8)]
        assert sorted(set(health)) == ["degraded", "offline", "online"]
        frame = page.frame_locator("#station-map")
        frame.locator("path.leaflet-interactive").first.wait_for()
        assert frame.locator("path.leaflet-interactive[fill='#ca8a04']").count() == 1  # the degraded one
        page.wait_for_timeout(300)
        page.screenshot(path=str(SHOTS / "installer.png"))
        page.click(".bg-tab[data-tab='coverage']")
        page.frame_locator("#coverage-map").locator(".bg-coverage-summary").wait_for()
        assert "Road covered" in page.frame_locator("#coverage-map").locator(".bg-coverage-summary").inner_text()
        page.screenshot(path=str(SHOTS / "installer-coverage.png"))
        page.click(".bg-lang[data-lang='zh']")
        page.wait_for_selector("#station-table")
        assert "基站与状态" in page.inner_text(".bg-tabs")
        assert console_errors(page) == []
