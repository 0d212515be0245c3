"""Zones: police and admins draw, rename and delete them; their borders are checked; nobody else may touch them."""

from __future__ import annotations

import psycopg
import pytest

from backend.zones.crossings import HEADINGS, heading

# A square of about 2 km by 2 km in Hangzhou, as GeoJSON ([lon, lat], closed).
SQUARE = {
    "type": "Polygon",
    "coordinates": [[[120.14, 30.26], [120.16, 30.26], [120.16, 30.28], [120.14, 30.28], [120.14, 30.26]]],
}


def _polygon(*corners: tuple[float, float]) -> dict[str, object]:
    ring = [list(c) for c in corners]
    return {"type": "Polygon", "coordinates": [ring]}


def test_police_draw_rename_and_delete_a_zone_each_change_audited(staff, database_url):
    r = staff.police.post("/api/zones", json={"name": "  Qiantang   bridge ", "geometry": SQUARE})
    assert r.status_code == 201, r.text
    zone = r.json()
    assert zone["name"] == "Qiantang bridge"
    assert zone["geometry"] == SQUARE
    assert zone["created_by"] == staff.police.username
    zone_id = zone["zone_id"]

    r = staff.admin.put(f"/api/zones/{zone_id}", json={"name": "North bridge"})
    assert r.status_code == 200, r.text
    assert r.json()["name"] == "North bridge" and r.json()["geometry"] == SQUARE
    assert r.json()["updated_by"] == staff.admin.username
    assert [z["name"] for z in staff.police.get("/api/zones").json()] == ["North bridge"]

    assert staff.police.request("DELETE", f"/api/zones/{zone_id}").status_code == 204
    assert staff.police.get("/api/zones").json() == []
    assert staff.police.request("DELETE", f"/api/zones/{zone_id}").status_code == 404
    with psycopg.connect(database_url) as conn:
        actions = conn.execute(
            "SELECT action, actor FROM audit_log WHERE subject = %s ORDER BY audit_id", (f"zone:{zone_id}",)
        ).fetchall()
        revision = conn.execute("SELECT revision FROM zones_revision").fetchone()[0]
    assert actions == [
        ("zone.create", staff.police.username),
        ("zone.update", staff.admin.username),
        ("zone.delete", staff.police.username),
    ]
    assert revision == 3  # each change tells the ingest workers' cached zones to reload


def test_a_second_zone_of_the_same_name_is_refused(staff):
    assert staff.police.post("/api/zones", json={"name": "Station square", "geometry": SQUARE}).status_code == 201
    r = staff.police.post("/api/zones", json={"name": "station SQUARE", "geometry": SQUARE})
    assert r.status_code == 409
    assert r.json()["code"] == "zones_err_exists"


@pytest.mark.parametrize(
    ("geometry", "code"),
    [
        ({"type": "Point", "coordinates": [120.1, 30.2]}, "zones_err_not_polygon"),
        # Not closed: the last corner is not the first.
        (_polygon((120.14, 30.26), (120.16, 30.26), (120.16, 30.28), (120.14, 30.28)), "zones_err_not_closed"),
        # Two corners are no area.
        (_polygon((120.14, 30.26), (120.16, 30.26), (120.14, 30.26)), "zones_err_not_closed"),
        # A bow tie: its border crosses itself.
        (
            _polygon((120.14, 30.26), (120.16, 30.28), (120.16, 30.26), (120.14, 30.28), (120.14, 30.26)),
            "zones_err_self_intersecting",
        ),
        # A few metres across.
        (
            _polygon((120.14, 30.26), (120.14001, 30.26), (120.14001, 30.26001), (120.14, 30.26)),
            "zones_err_small",
        ),
        # Half of China.
        (_polygon((100.0, 20.0), (120.0, 20.0), (120.0, 40.0), (100.0, 20.0)), "zones_err_large"),
        # Latitude off the earth, and a vertex that is no pair of numbers.
        (_polygon((120.14, 30.26), (120.16, 95.0), (120.16, 30.28), (120.14, 30.26)), "zones_err_vertex"),
        (_polygon((120.14, 30.26), ("a", "b"), (120.16, 30.28), (120.14, 30.26)), "zones_err_vertex"),  # type: ignore[arg-type]
        # A hole.
        (
            {"type": "Polygon", "coordinates": [SQUARE["coordinates"][0], SQUARE["coordinates"][0]]},
            "zones_err_one_ring",
        ),
    ],
)
def test_a_border_that_cannot_be_a_zone_is_refused_with_its_reason(staff, geometry, code):
    r = staff.police.post("/api/zones", json={"name": "Bad", "geometry": geometry})
    assert r.status_code == 422, r.text
    assert r.json()["code"] == code
    assert r.json()["field"] == "geometry"
    assert staff.police.get("/api/zones").json() == []


def test_an_empty_name_or_an_empty_change_is_refused(staff):
    r = staff.police.post("/api/zones", json={"name": "   ", "geometry": SQUARE})
    assert r.status_code == 422 and r.json()["code"] == "zones_err_name_empty"
    zone_id = staff.police.post("/api/zones", json={"name": "Bridge", "geometry": SQUARE}).json()["zone_id"]
    assert staff.police.put(f"/api/zones/{zone_id}", json={}).status_code == 422
    r = staff.police.put(f"/api/zones/{zone_id}", json={"geometry": {"type": "Polygon", "coordinates": []}})
    assert r.status_code == 422 and r.json()["code"] == "zones_err_one_ring"
    assert staff.police.put("/api/zones/999999", json={"name": "Elsewhere"}).status_code == 404


def test_only_police_and_admins_see_or_change_zones(staff):
    zone_id = staff.police.post("/api/zones", json={"name": "County line", "geometry": SQUARE}).json()["zone_id"]
    owner = staff.owner_of(staff.register())
    for caller in (owner, staff.clerk, staff.installer):
        assert caller.get("/api/zones").status_code == 403
        assert caller.post("/api/zones", json={"name": "Mine", "geometry": SQUARE}).status_code == 403
        assert caller.put(f"/api/zones/{zone_id}", json={"name": "Mine"}).status_code == 403
        assert caller.request("DELETE", f"/api/zones/{zone_id}").status_code == 403
    anonymous = staff.anonymous
    assert anonymous.get("/api/zones").status_code == 401
    assert anonymous.post("/api/zones", json={"name": "Mine", "geometry": SQUARE}).status_code == 401
    assert anonymous.put(f"/api/zones/{zone_id}", json={"name": "Mine"}).status_code == 401
    assert anonymous.request("DELETE", f"/api/zones/{zone_id}").status_code == 401
    assert [z["name"] for z in staff.admin.get("/api/zones").json()] == ["County line"]


@pytest.mark.parametrize(
    ("to_lat", "to_lon", "word"),
    [
        (31.0, 120.0, "north"),
        (31.0, 121.0, "northeast"),
        (30.0, 121.0, "east"),
        (29.0, 121.0, "southeast"),
        (29.0, 120.0, "south"),
        (29.0, 119.0, "southwest"),
        (30.0, 119.0, "west"),
        (31.0, 119.0, "northwest"),
    ],
)
def test_the_heading_is_the_compass_word_of_the_line_between_stations(to_lat, to_lon, word):
    assert heading(30.0, 120.0, to_lat, to_lon) == word
    assert word in HEADINGS
