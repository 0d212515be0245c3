"""The installer page: stations with their health in a table and on a map, and the coverage map."""

from __future__ import annotations

from datetime import timedelta

import psycopg
from psycopg.types.json import Jsonb

from backend.station_health import REASON_CODES, HealthRules, assess
from backend.web.translations import MESSAGES
from protocol.messages import utcnow
from tests import factories
from tests.backend.conftest import Staff


def _stations(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        factories.station(conn, "st-north", 30.271, 120.150)
        factories.station(conn, "st-south", 30.265, 120.152)
        conn.execute(
            "INSERT INTO station_status (station_id, state, reported_at, received_at, payload)"
            " VALUES ('st-north', 'online', now(), %s, %s)",
            (
                utcnow() - timedelta(seconds=5),
                Jsonb(
                    {
                        "station_id": "st-north",
                        "state": "online",
                        "spool_depth": 4,
                        "spool_dropped": 0,
                        "noise_floor_dbm": -97,
                    }
                ),
            ),
        )
        conn.execute(
            "INSERT INTO roads (name, geometry) VALUES ('Main', %s)",
            (Jsonb({"type": "LineString", "coordinates": [[120.150, 30.260], [120.150, 30.275]]}),),
        )


def test_installer_page_lists_stations_with_health_spool_and_noise(staff: Staff, database_url: str) -> None:
    _stations(database_url)
    for caller in (staff.installer, staff.admin):
        page = caller.get("/installer?lang=en")
        assert page.status_code == 200
        assert 'data-station="st-north"' in page.text and "-97 dBm" in page.text and "4 / 0" in page.text
        assert "never heard from" in page.text  # st-south
    assert "基站与状态" in staff.installer.get("/installer?lang=zh").text
    assert staff.clerk.get("/installer").status_code == 403
    assert staff.anonymous.get("/installer", follow_redirects=False).status_code == 303


def test_installer_maps_use_local_leaflet_and_colour_by_health(staff: Staff, database_url: str) -> None:
    _stations(database_url)
    m = staff.installer.get("/installer/map")
    assert m.status_code == 200 and "/assets/leaflet/leaflet.js" in m.text and "unpkg" not in m.text
    assert "#16a34a" in m.text and "#ea580c" in m.text  # st-north online, st-south offline
    c = staff.installer.get("/installer/coverage")
    assert c.status_code == 200 and "Road covered" in c.text and "/assets/leaflet/leaflet.js" in c.text
    assert staff.police.get("/installer/map").status_code == 403
    assert staff.police.get("/installer/coverage").status_code == 403


def test_every_reason_a_station_is_unhealthy_is_worded_in_both_languages() -> None:
    # installer.html builds the key from the code (`'why_' + code`): the key scan of test_pages cannot see them.
    for words in MESSAGES.values():
        assert [c for c in REASON_CODES if f"why_{c}" not in words] == []
    assert "{t}" in MESSAGES["zh"]["why_batches_missing"] and "{n}" in MESSAGES["zh"]["why_batches_missing"]


def test_a_station_holding_a_hot_list_never_issued_says_so_by_code() -> None:
    now = utcnow()
    row = {
        "station_id": "st-odd",
        "name": "Odd",
        "lat": 30.0,
        "lon": 120.0,
        "lifecycle": "active",
        "heartbeat_interval_s": 30,
        "status_state": "online",
        "last_heartbeat_at": now,
        "payload": {"hotlist_version": 9},
        "hotlist_current": 4,
        "hotlist_behind_since": None,
    }
    h = assess(row, now, HealthRules())
    assert h["reason_codes"] == ["hotlist_unissued"] and "never issued" in h["reasons"][0]
