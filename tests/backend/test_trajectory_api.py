"""A bike's trajectory over the API: the replay summary and the GPX, GeoJSON and CSV downloads, with the same
privacy rules as the passages (owner since they hold it, police a stolen bike or with a case number, audited)."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timedelta
from typing import Any

import gpxpy
import psycopg
import pytest

from protocol.messages import utcnow
from tests import factories
from tests.backend.conftest import Staff

# Each form of the trajectory, and what its audit record says was read.
VIEWS = {
    "trajectory": None,
    "trajectory/summary": "summary",
    "trajectory.gpx": "gpx",
    "trajectory.geojson": "geojson",
    "trajectory.csv": "csv",
}
# (station, lat, lon, seconds after the start, stay in range): north from a to b (twice at b), then east to c.
ROUTE = (
    ("st-a", 30.270, 120.150, 10, 60),
    ("st-b", 30.279, 120.150, 190, 10),
    ("st-b", 30.279, 120.150, 205, 10),
    ("st-c", 30.279, 120.160, 400, 30),
)


def _ride(database_url: str, tag_hex: str, start: datetime) -> None:
    """The chip passes the stations of ROUTE, starting at `start`."""
    with psycopg.connect(database_url) as conn:
        for station_id, lat, lon, at_s, stay_s in ROUTE:
            factories.station(conn, station_id, lat, lon)
            first = start + timedelta(seconds=at_s)
            conn.execute(
                "INSERT INTO sightings VALUES (%s, %s, %s, %s, 3, -60, 0, 0, 1)",
                (first, first + timedelta(seconds=stay_s), station_id, int(tag_hex, 16)),
            )


def _window(start: datetime) -> dict[str, str]:
    return {"since": (start - timedelta(minutes=1)).isoformat(), "until": (start + timedelta(hours=1)).isoformat()}


@pytest.fixture
def ride(staff: Staff) -> dict[str, Any]:
    """A registered bike that has ridden ROUTE: its registration, owner, start time and window."""
    done = staff.register()
    start = utcnow()
    _ride(staff.database_url, done["bike"]["tag_id"], start)
    return {
        "registration": done,
        "bike_id": done["bike"]["bike_id"],
        "owner": staff.owner_of(done),
        "start": start,
        "window": _window(start),
    }


def _stolen(ride: dict[str, Any], after_s: float) -> None:
    theft = {"stolen_at": (ride["start"] + timedelta(seconds=after_s)).isoformat()}
    assert ride["owner"].post(f"/api/bikes/{ride['bike_id']}/theft", json=theft).status_code == 201


def _trajectory_audit(staff: Staff, bike_id: int) -> list[dict[str, Any]]:
    return [
        a
        for a in staff.admin.get("/api/audit").json()
        if a["action"] == "bike.trajectory" and a["subject"] == f"bike:{bike_id}"
    ]


def test_summary_has_stops_with_dwell_and_legs_with_distance_speed_and_heading(ride: dict[str, Any]) -> None:
    r = ride["owner"].get(f"/api/bikes/{ride['bike_id']}/trajectory/summary", params=ride["window"])

    assert r.status_code == 200, r.text
    body = r.json()
    assert body["bike_id"] == ride["bike_id"] and body["tag_id"] == ride["registration"]["bike"]["tag_id"]
    assert [(s["station_id"], s["passages"], s["dwell_s"]) for s in body["stops"]] == [
        ("st-a", 1, 60.0),
        ("st-b", 2, 25.0),
        ("st-c", 1, 30.0),
    ]
    assert body["stops"][1]["station_name"] == "Station st-b"
    north, east = body["legs"]
    assert (north["from_station"], north["to_station"], north["heading"]) == ("st-a", "st-b", "N")
    assert 990 < north["distance_m"] < 1010 and north["duration_s"] == 120 and 29 < north["speed_kmh"] < 31
    assert east["heading"] == "E" and east["duration_s"] == 400 - 215
    # The window shown: the owner's starts when they got the bike (at registration), not at the `since` asked.
    assert datetime.fromisoformat(ride["window"]["since"]) < datetime.fromisoformat(body["since"]) <= ride["start"]
    assert datetime.fromisoformat(body["until"]) == datetime.fromisoformat(ride["window"]["until"])


def test_gpx_download_reads_back_with_the_stops_in_order(ride: dict[str, Any]) -> None:
    r = ride["owner"].get(f"/api/bikes/{ride['bike_id']}/trajectory.gpx", params=ride["window"])

    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/gpx+xml"
    # Named after the window's days: one day, or first_last when the hour asked for runs past midnight UTC.
    first, last = ride["start"].date(), datetime.fromisoformat(ride["window"]["until"]).date()
    days = first.isoformat() if first == last else f"{first}_{last}"
    assert r.headers["content-disposition"] == f'attachment; filename="bike-{ride["bike_id"]}-{days}.gpx"'
    assert r.headers["cache-control"] == "no-store"
    gpx = gpxpy.parse(r.text)
    points = gpx.tracks[0].segments[0].points
    assert [(round(p.latitude, 3), round(p.longitude, 3)) for p in points] == [
        (30.27, 120.15),
        (30.279, 120.15),
        (30.279, 120.16),
    ]
    assert points[0].time == ride["start"].replace(microsecond=0) + timedelta(seconds=10)
    assert [w.name for w in gpx.waypoints] == ["Station st-a", "Station st-b", "Station st-c"]
    assert gpx.tracks[0].name == f"Bikeguard bike {ride['bike_id']} (chip {ride['registration']['bike']['tag_id']})"


def test_geojson_download_is_a_line_and_a_point_per_stop(ride: dict[str, Any]) -> None:
    r = ride["owner"].get(f"/api/bikes/{ride['bike_id']}/trajectory.geojson", params=ride["window"])

    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/geo+json"
    assert r.headers["content-disposition"].endswith('.geojson"')
    geo = r.json()
    assert geo["type"] == "FeatureCollection"
    line, *points = geo["features"]
    assert line["geometry"] == {
        "type": "LineString",
        "coordinates": [[120.15, 30.27], [120.15, 30.279], [120.16, 30.279]],
    }
    assert line["properties"]["bike_id"] == ride["bike_id"]
    assert [p["geometry"]["type"] for p in points] == ["Point"] * 3
    assert [p["properties"]["station_id"] for p in points] == ["st-a", "st-b", "st-c"]
    assert points[1]["properties"]["dwell_s"] == 25


def test_csv_download_has_a_header_and_a_row_per_stop(ride: dict[str, Any]) -> None:
    r = ride["owner"].get(f"/api/bikes/{ride['bike_id']}/trajectory.csv", params=ride["window"])

    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "text/csv; charset=utf-8"
    assert r.headers["content-disposition"].endswith('.csv"')
    header, *rows = list(csv.reader(io.StringIO(r.text)))
    assert header[:3] == ["tag_id", "station_id", "station_name"] and "speed_kmh" in header
    assert [row[1] for row in rows] == ["st-a", "st-b", "st-c"]
    assert dict(zip(header, rows[1], strict=True))["heading"] == "N"


def test_a_window_over_two_days_names_both_in_the_file_name(staff: Staff, ride: dict[str, Any]) -> None:
    window = {"since": "2025-03-01T22:00:00+00:00", "until": "2025-03-02T06:00:00+00:00", "case_number": "C-2025-7"}
    r = staff.police.get(f"/api/bikes/{ride['bike_id']}/trajectory.csv", params=window)
    assert f'filename="bike-{ride["bike_id"]}-2025-03-01_2025-03-02.csv"' in r.headers["content-disposition"]
    assert r.text.count("\n") == 1  # only the header: the bike was not registered yet


def test_an_unknown_export_format_is_refused(ride: dict[str, Any]) -> None:
    assert ride["owner"].get(f"/api/bikes/{ride['bike_id']}/trajectory.kml").status_code == 422


@pytest.mark.parametrize("view", VIEWS)
def test_an_owner_gets_their_own_bikes_trajectory_and_anothers_is_a_404(
    staff: Staff, ride: dict[str, Any], view: str
) -> None:
    stranger = staff.owner_of(staff.register())
    assert ride["owner"].get(f"/api/bikes/{ride['bike_id']}/{view}", params=ride["window"]).status_code == 200
    r = stranger.get(f"/api/bikes/{ride['bike_id']}/{view}", params=ride["window"])
    assert r.status_code == 404 and r.json()["detail"] == f"no bike {ride['bike_id']}"


@pytest.mark.parametrize("view", VIEWS)
def test_clerks_and_installers_get_no_trajectory(staff: Staff, ride: dict[str, Any], view: str) -> None:
    for caller in (staff.clerk, staff.installer):
        assert caller.get(f"/api/bikes/{ride['bike_id']}/{view}", params=ride["window"]).status_code == 403


@pytest.mark.parametrize("view", VIEWS)
def test_police_see_a_stolen_bikes_trajectory_since_the_theft_and_are_audited(
    staff: Staff, ride: dict[str, Any], view: str
) -> None:
    _stolen(ride, after_s=100)

    r = staff.police.get(f"/api/bikes/{ride['bike_id']}/{view}", params=ride["window"])

    assert r.status_code == 200, r.text
    assert _stations(view, r.text) == ["st-b", "st-c"]  # nothing from before the theft
    (entry,) = _trajectory_audit(staff, ride["bike_id"])
    assert (entry["actor"], entry["role"], entry["case_number"]) == (staff.police.username, "police", None)
    assert entry["detail"]["stolen"] is True
    assert entry["detail"].get("view") == VIEWS[view]


@pytest.mark.parametrize("view", VIEWS)
def test_police_need_a_case_number_for_a_bike_not_stolen_and_the_access_is_audited(
    staff: Staff, ride: dict[str, Any], view: str
) -> None:
    url = f"/api/bikes/{ride['bike_id']}/{view}"
    refused = staff.police.get(url, params=ride["window"])
    assert refused.status_code == 403 and "case number" in refused.json()["detail"]
    assert staff.police.get(url, params={**ride["window"], "case_number": "x"}).status_code == 403
    assert _trajectory_audit(staff, ride["bike_id"]) == []

    r = staff.police.get(url, params={**ride["window"], "case_number": "HZ-2026-1122"})

    assert r.status_code == 200, r.text
    assert _stations(view, r.text) == ["st-a", "st-b", "st-c"]
    (entry,) = staff.admin.get("/api/audit", params={"case_number": "HZ-2026-1122"}).json()
    assert (entry["actor"], entry["action"], entry["subject"]) == (
        staff.police.username,
        "bike.trajectory",
        f"bike:{ride['bike_id']}",
    )
    assert datetime.fromisoformat(entry["detail"]["since"]) == datetime.fromisoformat(ride["window"]["since"])


def _stations(view: str, text: str) -> list[str]:
    """The distinct stations, in order, of any form of the trajectory."""
    if view.endswith(".gpx"):
        ids = [w.description.split(",")[0] for w in gpxpy.parse(text).waypoints]
    elif view.endswith(".geojson"):
        ids = [f["properties"]["station_id"] for f in json.loads(text)["features"][1:]]
    elif view.endswith(".csv"):
        ids = [row["station_id"] for row in csv.DictReader(io.StringIO(text))]
    elif view.endswith("summary"):
        ids = [s["station_id"] for s in json.loads(text)["stops"]]
    else:
        ids = [p["station_id"] for p in json.loads(text)]
    return [s for i, s in enumerate(ids) if i == 0 or ids[i - 1] != s]


def test_a_download_needs_a_sign_in(staff: Staff, ride: dict[str, Any]) -> None:
    assert staff.anonymous.get(f"/api/bikes/{ride['bike_id']}/trajectory.gpx").status_code == 401
