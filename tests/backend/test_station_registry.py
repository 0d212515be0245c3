"""The station registry: mounting and radio settings, and the life cycle planned → … → decommissioned."""

from __future__ import annotations

import psycopg
import pytest

from tests import factories


def new_station(**overrides: object) -> dict[str, object]:
    body: dict[str, object] = {
        "station_id": f"st-{factories.tag().lower()}",
        "name": "West Lake Road / Baochu Road",
        "lat": 30.26,
        "lon": 120.15,
        "address": "Pole 17, West Lake Road",
        "mount_height_m": 3.5,
        "antenna_bearing_deg": 270,
        "radio_settings": {"channel": 7, "tx_power_dbm": 10},
    }
    body.update(overrides)
    return body


def test_installer_registers_a_station_as_planned_with_its_mounting(staff):
    body = new_station()
    r = staff.installer.post("/api/stations", json=body)
    assert r.status_code == 201, r.text
    station = r.json()
    assert station["lifecycle"] == "planned"
    assert station["address"] == "Pole 17, West Lake Road"
    assert station["mount_height_m"] == 3.5 and station["antenna_bearing_deg"] == 270
    assert station["radio_settings"] == {"channel": 7, "tx_power_dbm": 10}
    assert station["heartbeat_interval_s"] == 30
    assert [h["to_state"] for h in station["history"]] == ["planned"]
    assert station["history"][0]["changed_by"] == f"installer:{staff.installer.username}"
    assert staff.installer.post("/api/stations", json=body).status_code == 409


def test_station_goes_through_its_life_cycle_forward_recording_who_and_when(staff):
    sid = staff.installer.post("/api/stations", json=new_station()).json()["station_id"]
    for state in ("installed", "commissioned", "active"):
        r = staff.installer.post(f"/api/stations/{sid}/lifecycle", json={"state": state, "note": "on site"})
        assert r.status_code == 200, r.text
    r = staff.admin.post(f"/api/stations/{sid}/lifecycle", json={"state": "decommissioned"})
    assert r.status_code == 200, r.text
    history = r.json()["history"]
    assert [(h["from_state"], h["to_state"]) for h in history] == [
        (None, "planned"),
        ("planned", "installed"),
        ("installed", "commissioned"),
        ("commissioned", "active"),
        ("active", "decommissioned"),
    ]
    assert history[-1]["changed_by"] == f"admin:{staff.admin.username}"
    assert all(h["changed_at"] for h in history)


@pytest.mark.parametrize("target", ["planned", "commissioned", "active", "installed"])
def test_backward_skipping_or_repeated_steps_are_refused_with_409(staff, target):
    sid = staff.installer.post("/api/stations", json=new_station()).json()["station_id"]
    staff.installer.post(f"/api/stations/{sid}/lifecycle", json={"state": "installed"})
    r = staff.installer.post(f"/api/stations/{sid}/lifecycle", json={"state": target})
    if target == "commissioned":
        assert r.status_code == 200
        return
    assert r.status_code == 409
    assert f"is installed: it cannot become {target}" in r.json()["detail"]
    assert "allowed: commissioned, decommissioned" in r.json()["detail"]


def test_decommissioned_from_any_state_and_then_final(staff):
    sid = staff.installer.post("/api/stations", json=new_station()).json()["station_id"]
    assert staff.installer.post(f"/api/stations/{sid}/lifecycle", json={"state": "decommissioned"}).status_code == 200
    r = staff.installer.post(f"/api/stations/{sid}/lifecycle", json={"state": "active"})
    assert r.status_code == 409 and "decommissioned is final" in r.json()["detail"]


def test_unknown_station_is_404_and_bad_values_are_422(staff):
    assert staff.installer.post("/api/stations/st-none/lifecycle", json={"state": "installed"}).status_code == 404
    assert staff.installer.get("/api/stations/st-none").status_code == 404
    assert staff.installer.post("/api/stations", json=new_station(antenna_bearing_deg=360)).status_code == 422
    assert staff.installer.post("/api/stations", json=new_station(mount_height_m=0)).status_code == 422
    sid = staff.installer.post("/api/stations", json=new_station()).json()["station_id"]
    assert staff.installer.post(f"/api/stations/{sid}/lifecycle", json={"state": "gone"}).status_code == 422


def test_installer_updates_mounting_and_radio_settings(staff):
    sid = staff.installer.post("/api/stations", json=new_station()).json()["station_id"]
    r = staff.installer.request(
        "PATCH",
        f"/api/stations/{sid}",
        json={
            "antenna_bearing_deg": None,
            "radio_settings": {"channel": 3},
            "heartbeat_interval_s": 60,
            "name": None,
        },
    )
    assert r.status_code == 200, r.text
    station = r.json()
    assert station["antenna_bearing_deg"] is None and station["radio_settings"] == {"channel": 3}
    assert station["heartbeat_interval_s"] == 60 and station["name"] == "West Lake Road / Baochu Road"
    assert station["address"] == "Pole 17, West Lake Road"


def test_only_installers_and_admins_change_stations(staff):
    assert staff.police.post("/api/stations", json=new_station()).status_code == 403
    assert staff.clerk.post("/api/stations", json=new_station()).status_code == 403
    sid = staff.installer.post("/api/stations", json=new_station()).json()["station_id"]
    assert staff.police.post(f"/api/stations/{sid}/lifecycle", json={"state": "installed"}).status_code == 403
    assert staff.police.get(f"/api/stations/{sid}").status_code == 200
    assert staff.clerk.get(f"/api/stations/{sid}").status_code == 403


def test_bulk_put_still_registers_stations_in_service(staff, database_url):
    body = [{"station_id": "st-bulk-1", "name": "Bulk 1", "lat": 30.1, "lon": 120.1}]
    assert staff.installer.put("/api/stations", json=body).status_code == 200
    assert staff.installer.put("/api/stations", json=[{**body[0], "name": "Bulk one"}]).status_code == 200
    listed = {s["station_id"]: s for s in staff.police.get("/api/stations").json()}
    assert listed["st-bulk-1"]["lifecycle"] == "active" and listed["st-bulk-1"]["name"] == "Bulk one"
    with psycopg.connect(database_url) as conn:
        history = conn.execute(
            "SELECT to_state FROM station_lifecycle_history WHERE station_id = 'st-bulk-1'"
        ).fetchall()
    assert history == [("active",)]
