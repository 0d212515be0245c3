"""Issue 11, finding 2: police skipping the case-number rule by back-dating a theft report.

The attack: as police, report a bike stolen "in the year 2000", then read its passages from long before the
report without a case number (trajectory, its downloads, /api/sightings), then mark it recovered; the audit log
said case_number=None. Now a theft report filed by police needs a case number (and is audited with it), and
without a case number police see a stolen bike only from a bounded time before the theft was reported.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest

from backend.alarms import engine
from backend.ingest import writer
from protocol.messages import parse_batch_rows, utcnow
from tests import factories
from tests.backend.conftest import Staff

YEAR_2000 = "2000-01-01T00:00:00Z"
# The look-back police get without a case number by default: 24 h of the theft before its report.
LOOKBACK = timedelta(hours=24)


def _held_for_a_year(database_owner_url: str, bike_id: int) -> None:
    """The bike was registered (owner, plate and chip bound) a year ago; the history trigger forbids rewriting it,
    so the test does it as the database owner with triggers off."""
    with psycopg.connect(database_owner_url) as conn:
        conn.execute("SET LOCAL session_replication_role = replica")
        conn.execute("UPDATE bike_bindings SET valid_from = now() - interval '365 days' WHERE bike_id = %s", (bike_id,))


def _passage(database_url: str, tag_hex: str, station_id: str, at: datetime) -> None:
    with psycopg.connect(database_url) as conn:
        factories.station(conn, station_id)
        conn.execute(
            "INSERT INTO sightings VALUES (%s, %s, %s, %s, 3, -60, 0, 0, 1)",
            (at, at + timedelta(seconds=20), station_id, int(tag_hex, 16)),
        )


@pytest.fixture
def old_bike(staff: Staff, database_owner_url: str) -> dict[str, Any]:
    """A bike its owner has held for a year, seen 10 days ago (its owner's everyday life) and 2 hours ago."""
    bike = staff.register()["bike"]
    _held_for_a_year(database_owner_url, bike["bike_id"])
    now = utcnow()
    _passage(staff.database_url, bike["tag_id"], "st-home", now - timedelta(days=10))
    _passage(staff.database_url, bike["tag_id"], "st-shop", now - timedelta(hours=2))
    return bike


def _stations_seen(staff: Staff, bike: dict[str, Any]) -> dict[str, set[str]]:
    """Which stations police see the bike at, without a case number, through each way of reading passages."""
    window = {"since": YEAR_2000, "until": (utcnow() + timedelta(minutes=1)).isoformat()}
    path = f"/api/bikes/{bike['bike_id']}/trajectory"
    seen: dict[str, set[str]] = {}
    r = staff.police.get(path, params=window)
    assert r.status_code == 200, r.text
    seen["trajectory"] = {p["station_id"] for p in r.json()}
    r = staff.police.get(f"{path}/summary", params=window)
    assert r.status_code == 200, r.text
    seen["summary"] = {s["station_id"] for s in r.json()["stops"]}
    r = staff.police.get(f"{path}.csv", params=window)
    assert r.status_code == 200, r.text
    seen["csv"] = {line.split(",")[1] for line in r.text.splitlines()[1:]}
    r = staff.police.get(f"{path}.gpx", params=window)
    assert r.status_code == 200, r.text
    seen["gpx"] = {s for s in ("st-home", "st-shop") if s in r.text}
    r = staff.police.get("/api/sightings", params={"tag_id": bike["tag_id"], **window})
    assert r.status_code == 200, r.text
    seen["sightings"] = {p["station_id"] for p in r.json()}
    return seen


def test_police_cannot_file_a_theft_report_without_a_case_number(staff: Staff, old_bike: dict[str, Any]) -> None:
    bike_id = old_bike["bike_id"]

    r = staff.police.post(f"/api/bikes/{bike_id}/theft", json={"stolen_at": YEAR_2000})

    assert r.status_code == 403, r.text
    assert "case number" in r.json()["detail"]
    assert staff.police.get(f"/api/bikes/{bike_id}").json()["stolen"] is False
    assert staff.police.get(f"/api/bikes/{bike_id}/trajectory").status_code == 403


def test_a_backdated_theft_report_shows_police_no_passages_from_before_the_lookback(
    staff: Staff, old_bike: dict[str, Any]
) -> None:
    bike_id = old_bike["bike_id"]
    r = staff.police.post(
        f"/api/bikes/{bike_id}/theft", params={"case_number": "HZ-2026-0815"}, json={"stolen_at": YEAR_2000}
    )
    assert r.status_code == 201, r.text

    seen = _stations_seen(staff, old_bike)

    # The passage 2 h before the report is within the look-back; the one 10 days before is the owner's life.
    assert seen == {view: {"st-shop"} for view in ("trajectory", "summary", "csv", "gpx", "sightings")}
    summary = staff.police.get(f"/api/bikes/{bike_id}/trajectory/summary", params={"since": YEAR_2000}).json()
    reported_at = datetime.fromisoformat(staff.police.get(f"/api/bikes/{bike_id}").json()["theft"]["reported_at"])
    assert datetime.fromisoformat(summary["since"]) == reported_at - LOOKBACK
    # With the case number, the whole window (and it is audited under it).
    r = staff.police.get(
        "/api/sightings", params={"tag_id": old_bike["tag_id"], "since": YEAR_2000, "case_number": "HZ-2026-0815"}
    )
    assert {p["station_id"] for p in r.json()} == {"st-home", "st-shop"}


def test_a_theft_report_by_police_is_audited_with_its_case_number(staff: Staff, old_bike: dict[str, Any]) -> None:
    bike_id = old_bike["bike_id"]
    r = staff.police.post(
        f"/api/bikes/{bike_id}/theft", params={"case_number": "HZ-2026-0815"}, json={"stolen_at": YEAR_2000}
    )
    assert r.status_code == 201, r.text
    assert r.json()["theft"]["police_report"] == "HZ-2026-0815"
    assert staff.police.post(f"/api/bikes/{bike_id}/recovered").status_code == 200

    records = [a for a in staff.admin.get("/api/audit").json() if a["subject"] == f"bike:{bike_id}"]

    by_action = {a["action"]: a for a in records}
    assert by_action["bike.theft_report"]["case_number"] == "HZ-2026-0815"
    assert by_action["bike.theft_report"]["detail"]["stolen_at"].startswith("2000-01-01")
    # Marking it recovered is recorded under the case the report was filed with.
    assert by_action["bike.recovered"]["case_number"] == "HZ-2026-0815"


def test_a_backdated_report_from_the_counter_gives_police_no_more(staff: Staff, old_bike: dict[str, Any]) -> None:
    # A clerk (or the owner) may give any time of theft; what police see without a case number stays bounded.
    r = staff.clerk.post(f"/api/bikes/{old_bike['bike_id']}/theft", json={"stolen_at": YEAR_2000})
    assert r.status_code == 201, r.text

    seen = _stations_seen(staff, old_bike)

    assert seen == {view: {"st-shop"} for view in ("trajectory", "summary", "csv", "gpx", "sightings")}


def test_police_search_shows_no_last_seen_from_before_the_lookback(staff: Staff, old_bike: dict[str, Any]) -> None:
    with psycopg.connect(staff.database_url) as conn:
        conn.execute("DELETE FROM sightings WHERE station_id = 'st-shop'")
    assert staff.clerk.post(f"/api/bikes/{old_bike['bike_id']}/theft", json={"stolen_at": YEAR_2000}).status_code == 201

    (found,) = staff.police.get("/api/bikes/search", params={"q": old_bike["plate"]}).json()

    assert found["bike"]["stolen"] is True
    assert found["last_seen"] is None


def test_a_backdated_report_does_not_turn_a_late_old_passage_into_a_stolen_chip_alarm(
    staff: Staff, old_bike: dict[str, Any]
) -> None:
    # The alarm's trail is shown to police without a case number: a station's backlog from before the look-back,
    # arriving after a report back-dated to 2000, must not start one.
    r = staff.police.post(
        f"/api/bikes/{old_bike['bike_id']}/theft", params={"case_number": "HZ-2026-0815"}, json={"stolen_at": YEAR_2000}
    )
    assert r.status_code == 201, r.text
    tag = int(old_bike["tag_id"], 16)

    def judged(at: datetime, seq: int) -> list[int]:
        with psycopg.connect(staff.database_url, autocommit=True) as conn:
            factories.station(conn, "st-late")
            with conn.transaction():
                result = writer.write_batches(
                    conn, [parse_batch_rows(factories.batch("st-late", seq, [tag], at).to_json())]
                )
            return engine.raise_alarms(conn, result.committed, engine.ON_COMMIT)

    assert judged(utcnow() - timedelta(days=5), 1) == []  # before the report's look-back: no alarm
    assert len(judged(utcnow() - LOOKBACK / 2, 2)) == 1  # within it: the stolen chip's alarm
    with psycopg.connect(staff.database_url) as conn:
        ((first_seen_at,),) = conn.execute(
            "SELECT first_seen_at FROM alarms WHERE tag_id = %s AND kind = 'stolen_chip_seen'", (tag,)
        ).fetchall()
    assert first_seen_at > utcnow() - LOOKBACK
