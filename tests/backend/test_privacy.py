"""Nobody sees what is not theirs: owner isolation, installers without personal data, police case numbers
with audit records, masked resident ID numbers, and an audit log the database keeps append-only."""

from __future__ import annotations

from datetime import datetime, timedelta

import psycopg
import pytest

from protocol.messages import utcnow
from tests import factories
from tests.backend.conftest import Staff


def test_an_owner_sees_only_their_own_bikes_and_anothers_is_a_404(staff: Staff) -> None:
    mine, theirs = staff.register(), staff.register()
    me = staff.owner_of(mine)
    assert [b["bike_id"] for b in me.get("/api/bikes").json()] == [mine["bike"]["bike_id"]]
    other = theirs["bike"]["bike_id"]
    missing = me.get("/api/bikes/999999")
    for path in ("", "/history", "/certificate", "/trajectory"):
        r = me.get(f"/api/bikes/{other}{path}")
        assert r.status_code == 404, path
        assert r.json()["detail"] == missing.json()["detail"].replace("999999", str(other))
    for path, body in (("/arm", {"armed": True}), ("/theft", {}), ("/recovered", None), ("/transfer-consent", None)):
        assert me.post(f"/api/bikes/{other}{path}", json=body).status_code == 404, path
    assert me.get(f"/bikes/{other}/certificate").status_code == 404
    assert me.get("/api/bikes", params={"plate": theirs["bike"]["plate"]}).json() == [
        mine["bike"] | {"owner": me.get(f"/api/bikes/{mine['bike']['bike_id']}").json()["owner"]}
    ]


def test_an_owner_cannot_see_anothers_sightings_or_alarms(staff: Staff) -> None:
    mine, theirs = staff.register(), staff.register()
    me = staff.owner_of(mine)
    assert me.get("/api/sightings", params={"tag_id": theirs["bike"]["tag_id"]}).status_code == 404
    assert me.get("/api/sightings", params={"tag_id": mine["bike"]["tag_id"]}).status_code == 200
    assert me.get("/api/sightings", params={"station_id": "st-001"}).status_code == 403
    with psycopg.connect(staff.database_url) as conn:
        alarm = conn.execute(
            "INSERT INTO alarms (kind, severity, subject, tag_id, bike_id, first_seen_at, last_seen_at)"
            " VALUES ('armed_bike_moving', 'warning', 'tag:x', %s, %s, now(), now()) RETURNING alarm_id",
            (int(theirs["bike"]["tag_id"], 16), theirs["bike"]["bike_id"]),
        ).fetchone()[0]  # type: ignore[index]
    assert me.get("/api/alarms").json() == []
    assert me.get(f"/api/alarms/{alarm}").status_code == 404
    assert staff.owner_of(theirs).get(f"/api/alarms/{alarm}").status_code == 200
    # An armed bike moving is its owner's business: the police do not see it.
    assert staff.police.get(f"/api/alarms/{alarm}").status_code == 404


def test_installers_see_stations_and_no_personal_data(staff: Staff) -> None:
    bike = staff.register()["bike"]
    assert staff.installer.get("/api/stations").status_code == 200
    station = [{"station_id": "st-inst", "name": "Gate", "lat": 30.2, "lon": 120.1}]
    assert staff.installer.put("/api/stations", json=station).status_code == 200
    for path in (
        f"/api/bikes/{bike['bike_id']}",
        f"/api/bikes?plate={bike['plate']}",
        f"/api/bikes/{bike['bike_id']}/owner",
        "/api/owners/1",
        "/api/audit",
    ):
        assert staff.installer.get(path).status_code == 403, path
    # Alarms about stations only (test_station_offline_alarm.py): no bike, no person.
    assert staff.installer.get("/api/alarms").json() == []
    assert staff.installer.post("/api/owners/lookup", json={"id_number": factories.id_number()}).status_code == 403
    assert staff.police.put("/api/stations", json=station).status_code == 403


def test_police_need_a_case_number_for_an_owner_and_each_access_is_audited(staff: Staff) -> None:
    done = staff.register()
    bike_id = done["bike"]["bike_id"]
    police_view = staff.police.get(f"/api/bikes/{bike_id}").json()
    assert police_view["owner"] is None and police_view["plate"] == done["bike"]["plate"]
    refused = staff.police.get(f"/api/bikes/{bike_id}/owner")
    assert refused.status_code == 403 and "case number" in refused.json()["detail"]
    assert staff.police.get(f"/api/bikes/{bike_id}/owner", params={"case_number": "x"}).status_code == 403
    r = staff.police.get(f"/api/bikes/{bike_id}/owner", params={"case_number": "HZ-2024-0815"})
    assert r.status_code == 200 and r.json()["name"] == "Wang Fang"
    assert r.json()["id_number_masked"] == done["owner"]["id_number_masked"]
    records = staff.admin.get("/api/audit", params={"case_number": "HZ-2024-0815"}).json()
    assert [(a["actor"], a["role"], a["action"], a["subject"]) for a in records] == [
        (staff.police.username, "police", "owner.view", f"owner:{done['owner']['owner_id']}")
    ]


def _passages(database_url: str, station_id: str, tag_hex: str, *ats: datetime) -> None:
    with psycopg.connect(database_url) as conn:
        if conn.execute("SELECT 1 FROM stations WHERE station_id = %s", (station_id,)).fetchone() is None:
            factories.station(conn, station_id)
        for at in ats:
            conn.execute(
                "INSERT INTO sightings VALUES (%s, %s, %s, %s, 3, -60, 0, 0, 1)", (at, at, station_id, int(tag_hex, 16))
            )


def test_police_see_a_stolen_bikes_trail_since_the_theft_but_need_a_case_number_otherwise(staff: Staff) -> None:
    stolen, parked = staff.register(), staff.register()
    # Passages only count once the chip is the bike's (from registration on): before and after the theft.
    base = utcnow()
    for bike in (stolen, parked):
        _passages(
            staff.database_url, "st-a", bike["bike"]["tag_id"], base + timedelta(seconds=1), base + timedelta(seconds=3)
        )
    window = {"since": (base - timedelta(minutes=1)).isoformat(), "until": (base + timedelta(hours=1)).isoformat()}
    theft = {"stolen_at": (base + timedelta(seconds=2)).isoformat()}
    assert staff.owner_of(stolen).post(f"/api/bikes/{stolen['bike']['bike_id']}/theft", json=theft).status_code == 201

    trail = staff.police.get(f"/api/bikes/{stolen['bike']['bike_id']}/trajectory", params=window)
    assert trail.status_code == 200 and len(trail.json()) == 1  # only what came after the theft
    passages = staff.police.get("/api/sightings", params={"tag_id": stolen["bike"]["tag_id"], **window})
    assert passages.status_code == 200 and len(passages.json()) == 1

    refused = staff.police.get(f"/api/bikes/{parked['bike']['bike_id']}/trajectory", params=window)
    assert refused.status_code == 403 and "case number" in refused.json()["detail"]
    assert staff.police.get("/api/sightings", params={"tag_id": parked["bike"]["tag_id"]}).status_code == 403
    assert staff.police.get("/api/sightings", params={"station_id": "st-a"}).status_code == 403
    with_case = staff.police.get(
        f"/api/bikes/{parked['bike']['bike_id']}/trajectory", params={"case_number": "CASE-42", **window}
    )
    assert with_case.status_code == 200 and len(with_case.json()) == 2
    by_station = staff.police.get("/api/sightings", params={"station_id": "st-a", "case_number": "CASE-42", **window})
    assert by_station.status_code == 200 and len(by_station.json()) == 4

    audit = staff.admin.get("/api/audit", params={"case_number": "CASE-42"}).json()
    assert sorted(a["action"] for a in audit) == ["bike.trajectory", "sightings.view"]
    assert all(a["actor"] == staff.police.username for a in audit)


def test_owner_sees_their_bikes_trail_only_since_they_own_it(staff: Staff) -> None:
    first = staff.register()
    bike_id = first["bike"]["bike_id"]
    base = utcnow()
    _passages(staff.database_url, "st-b", first["bike"]["tag_id"], base + timedelta(milliseconds=10))
    window = {"since": (base - timedelta(minutes=1)).isoformat(), "until": (base + timedelta(hours=1)).isoformat()}
    assert len(staff.owner_of(first).get(f"/api/bikes/{bike_id}/trajectory", params=window).json()) == 1
    r = staff.clerk.post(
        f"/api/bikes/{bike_id}/transfer",
        json={"new_owner": factories.owner_body(), "old_owner_id_number": staff.id_number_of(first)},
    )
    assert r.status_code == 200
    successor = staff.owner_of({"owner_login": r.json()["owner_login"]})
    assert successor.get(f"/api/bikes/{bike_id}/trajectory", params=window).json() == []
    assert successor.get("/api/sightings", params={"tag_id": first["bike"]["tag_id"], **window}).json() == []


def test_resident_id_number_is_masked_everywhere_it_is_shown(staff: Staff) -> None:
    done = staff.register()
    full = staff.id_number_of(done)
    bike_id = done["bike"]["bike_id"]
    shown = [
        staff.clerk.get(f"/api/bikes/{bike_id}").text,
        staff.clerk.get(f"/api/owners/{done['owner']['owner_id']}").text,
        staff.clerk.post("/api/owners/lookup", json={"id_number": full}).text,
        staff.clerk.get(f"/bikes/{bike_id}/certificate").text,
        staff.owner_of(done).get(f"/api/bikes/{bike_id}").text,
    ]
    for text in shown:
        assert full not in text and "*" * 14 + full[-4:] in text


def test_audit_log_is_append_only_in_the_database(staff: Staff) -> None:
    staff.clerk.get(f"/api/owners/{staff.register()['owner']['owner_id']}")
    with psycopg.connect(staff.database_url) as conn:
        assert conn.execute("SELECT count(*) FROM audit_log").fetchone()[0] >= 1  # type: ignore[index]
    for sql in ("UPDATE audit_log SET actor = 'nobody'", "DELETE FROM audit_log", "TRUNCATE audit_log"):
        with psycopg.connect(staff.database_url) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(sql)
    with psycopg.connect(staff.database_url) as conn:
        assert conn.execute("SELECT count(*) FROM audit_log WHERE actor = 'nobody'").fetchone()[0] == 0  # type: ignore[index]


def test_audit_log_is_read_by_admins_only(staff: Staff) -> None:
    staff.clerk.get(f"/api/owners/{staff.register()['owner']['owner_id']}")
    entries = staff.admin.get("/api/audit").json()
    assert [e["action"] for e in entries][:1] == ["owner.view"]
    for caller in (staff.clerk, staff.police, staff.installer):
        assert caller.get("/api/audit").status_code == 403
