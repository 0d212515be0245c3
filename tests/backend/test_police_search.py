"""Police search by plate, frame number or chip: the bike and where it was last seen; owners only with a case."""

from __future__ import annotations

import psycopg

from backend.ingest import writer
from protocol.messages import parse_batch_rows
from tests import factories
from tests.backend.conftest import Staff


def _seen(database_url: str, station: str, tag: int, seq: int = 1) -> None:
    with psycopg.connect(database_url) as conn:
        if conn.execute("SELECT 1 FROM stations WHERE station_id = %s", (station,)).fetchone() is None:
            factories.station(conn, station, lat=30.3, lon=120.2)
        writer.write_batches(conn, [parse_batch_rows(factories.batch(station, seq, [tag]).to_json())])


def test_search_finds_a_bike_by_plate_frame_or_chip_without_owner_or_whereabouts(
    staff: Staff, database_url: str
) -> None:
    done = staff.register(plate="HZ-00777", tag_id="0C0C0C77")
    _seen(database_url, "st-s", 0x0C0C0C77)
    for q in ("HZ-00777", done["bike"]["frame_number"].lower(), "0c0c0c77"):
        r = staff.police.get("/api/bikes/search", params={"q": q})
        assert r.status_code == 200, r.text
        assert [(f["bike"]["plate"], f["last_seen"], f["owner"]) for f in r.json()] == [("HZ-00777", None, None)]
    assert staff.police.get("/api/bikes/search", params={"q": "nothing-like-it"}).json() == []
    assert staff.clerk.get("/api/bikes/search", params={"q": "HZ-00777"}).status_code == 403


def test_search_with_a_case_number_shows_owner_and_last_station_and_is_audited(staff: Staff, database_url: str) -> None:
    done = staff.register(plate="HZ-00778", tag_id="0C0C0C78")
    _seen(database_url, "st-s", 0x0C0C0C78)
    assert staff.police.get("/api/bikes/search", params={"q": "HZ-00778", "case_number": "x"}).status_code == 403
    r = staff.police.get("/api/bikes/search", params={"q": "HZ-00778", "case_number": "HZ-2026-0042"})
    [found] = r.json()
    assert found["owner"]["name"] == done["owner"]["name"]
    assert found["last_seen"]["station_id"] == "st-s" and found["last_seen"]["lat"] == 30.3
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT action, case_number FROM audit_log WHERE action = 'owner.view'").fetchall() == [
            ("owner.view", "HZ-2026-0042")
        ]


def test_a_stolen_bike_shows_where_it_was_last_seen_since_the_theft(staff: Staff, database_url: str) -> None:
    done = staff.register(plate="HZ-00779", tag_id="0C0C0C79")
    theft = staff.police.post(f"/api/bikes/{done['bike']['bike_id']}/theft", params={"case_number": "C-779"}, json={})
    assert theft.status_code == 201
    _seen(database_url, "st-s", 0x0C0C0C79)
    [found] = staff.police.get("/api/bikes/search", params={"q": "0C0C0C79"}).json()
    assert found["bike"]["stolen"] and found["owner"] is None
    assert found["last_seen"]["station_id"] == "st-s"
