"""The police's list of stolen bikes: every open theft report, where each bike was last seen since the theft."""

from __future__ import annotations

from datetime import timedelta

import psycopg

from protocol.messages import utcnow
from tests import factories
from tests.backend.conftest import Staff


def _seen(database_url: str, tag_hex: str, station_id: str, minutes_ago: float) -> None:
    at = utcnow() - timedelta(minutes=minutes_ago)
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "INSERT INTO sightings VALUES (%s, %s, %s, %s, 3, -60, 0, 0, 1)", (at, at, station_id, int(tag_hex, 16))
        )


def test_police_see_every_stolen_bike_latest_report_first_with_where_it_was_seen_since(staff: Staff) -> None:
    with psycopg.connect(staff.database_url) as conn:
        factories.station(conn, "st-bridge", 30.28, 120.16)
    heard = staff.register(plate="HZ-50001")
    unheard = staff.register(plate="HZ-50002")
    staff.register(plate="HZ-50003")  # not stolen: not on the list
    assert staff.owner_of(heard).post(f"/api/bikes/{heard['bike']['bike_id']}/theft", json={}).status_code == 201
    _seen(staff.database_url, heard["bike"]["tag_id"], "st-bridge", 90)  # before the theft: not shown
    r = staff.police.post(f"/api/bikes/{unheard['bike']['bike_id']}/theft?case_number=HZ-2026-0101", json={})
    assert r.status_code == 201
    _seen(staff.database_url, heard["bike"]["tag_id"], "st-bridge", -0.1)

    listed = staff.police.get("/api/bikes/stolen")
    assert listed.status_code == 200
    rows = listed.json()
    assert [r["bike"]["plate"] for r in rows] == ["HZ-50002", "HZ-50001"]
    assert rows[0]["last_seen"] is None  # no station has heard it yet: it is on the list all the same
    assert rows[1]["last_seen"]["station_id"] == "st-bridge"
    assert all(r["owner"] is None for r in rows)
    assert staff.admin.get("/api/bikes/stolen").status_code == 200
    with psycopg.connect(staff.database_url) as conn:
        audited = conn.execute("SELECT count(*) FROM audit_log WHERE action = 'bikes.stolen_list'").fetchone()
    assert audited is not None and audited[0] == 2


def test_a_sighting_from_before_the_theft_is_not_where_a_stolen_bike_was_last_seen(staff: Staff) -> None:
    with psycopg.connect(staff.database_url) as conn:
        factories.station(conn, "st-home", 30.28, 120.16)
    done = staff.register(plate="HZ-50004")
    _seen(staff.database_url, done["bike"]["tag_id"], "st-home", 30)
    assert staff.owner_of(done).post(f"/api/bikes/{done['bike']['bike_id']}/theft", json={}).status_code == 201
    (row,) = staff.police.get("/api/bikes/stolen").json()
    assert row["last_seen"] is None


def test_only_police_and_admins_see_the_list(staff: Staff) -> None:
    done = staff.register(plate="HZ-50005")
    owner = staff.owner_of(done)
    for caller in (staff.clerk, staff.installer, owner):
        assert caller.get("/api/bikes/stolen").status_code == 403
    assert staff.anonymous.get("/api/bikes/stolen").status_code == 401
