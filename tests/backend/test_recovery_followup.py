"""Recovery follow-up: a stolen bike back at its owner's usual stations for the dwell prompts the owner and the
police; not before the dwell, not when it was seen elsewhere meanwhile, not for a bike not stolen, and not once it is
marked recovered."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta
from typing import Any

import psycopg
from fastapi.testclient import TestClient

from backend import recovery_followup
from backend.api.app import create_app
from protocol.messages import utcnow
from tests import factories
from tests.backend.conftest import Caller, Staff

DWELL = timedelta(hours=2)


def _sight(conn: psycopg.Connection, tag: int, station_id: str, at: datetime) -> None:
    conn.execute(
        "INSERT INTO sightings VALUES (%s, %s, %s, %s, 3, -60, 0, 0, 1)",
        (at, at + timedelta(seconds=20), station_id, tag),
    )


def held_since(owner_url: str, bike_id: int, since: datetime, kinds: tuple[str, ...] = ("owner", "chip")) -> None:
    """The bike's owner (and chip) bound since `since`: history the application cannot rewrite, the test (as the
    database owner, triggers off) can."""
    with psycopg.connect(owner_url) as conn:
        conn.execute("SET LOCAL session_replication_role = replica")
        conn.execute(
            "UPDATE bike_bindings SET valid_from = %s WHERE bike_id = %s AND kind = ANY(%s)",
            (since, bike_id, list(kinds)),
        )


class Town:
    """A bike whose owner keeps it at st-home and rides to st-work; st-far is somewhere else."""

    def __init__(self, staff: Staff, owner_url: str, now: datetime, stolen: bool = True) -> None:
        self.staff, self.now = staff, now
        done = staff.register()
        self.bike_id: int = done["bike"]["bike_id"]
        self.plate: str = done["bike"]["plate"]
        self.tag = int(done["bike"]["tag_id"], 16)
        self.owner: Caller = staff.owner_of(done)
        self.stolen_at = now - timedelta(hours=6)
        held_since(owner_url, self.bike_id, now - timedelta(days=30))  # before the weeks of history below
        with psycopg.connect(staff.database_url) as conn:
            for sid in ("st-home", "st-work", "st-far"):
                factories.station(conn, sid)
            for day in range(1, 20):  # the weeks before the theft
                _sight(conn, self.tag, "st-home", self.stolen_at - timedelta(days=day, hours=1))
                _sight(conn, self.tag, "st-home", self.stolen_at - timedelta(days=day, hours=10))
                _sight(conn, self.tag, "st-work", self.stolen_at - timedelta(days=day, hours=3))
            owner_id = conn.execute("SELECT owner_id FROM bikes WHERE bike_id = %s", (self.bike_id,)).fetchone()
            conn.execute(
                "INSERT INTO notification_preferences (owner_id, channels, email) VALUES (%s, '{email}', 'o@x.cn')",
                (owner_id[0],),  # type: ignore[index]
            )
        if stolen:
            assert self.owner.post(f"/api/bikes/{self.bike_id}/theft", json={}).status_code == 201
            with psycopg.connect(staff.database_url) as conn:
                conn.execute(
                    "UPDATE theft_reports SET stolen_at = %s WHERE bike_id = %s", (self.stolen_at, self.bike_id)
                )
                _sight(conn, self.tag, "st-far", self.stolen_at + timedelta(minutes=15))  # ridden away

    def seen(self, station_id: str, *minutes_before_now: float) -> None:
        """Passages of the chip at a station, so many minutes before `now`."""
        with psycopg.connect(self.staff.database_url) as conn:
            for m in minutes_before_now:
                _sight(conn, self.tag, station_id, self.now - timedelta(minutes=m))

    def back_home_for(self, minutes: int) -> None:
        """Seen at st-home every ten minutes for the last `minutes` (up to now)."""
        self.seen("st-home", *range(minutes, -1, -10))

    def check(self, at: datetime | None = None) -> recovery_followup.FollowUp:
        async def run() -> recovery_followup.FollowUp:
            async with await psycopg.AsyncConnection.connect(self.staff.database_url, autocommit=True) as conn:
                return await recovery_followup.check(conn, at or self.now, DWELL)

        return asyncio.run(run())

    def alarms(self, state: str = "open") -> list[tuple[Any, ...]]:
        with psycopg.connect(self.staff.database_url) as conn:
            return conn.execute(
                "SELECT alarm_id, station_id, state, cleared_by FROM alarms WHERE kind = 'possibly_recovered'"
                " AND bike_id = %s AND (%s = 'all' OR state <> 'cleared') ORDER BY alarm_id",
                (self.bike_id, state),
            ).fetchall()

    def told(self) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.staff.database_url) as conn:
            return conn.execute(
                "SELECT event_key, facts->>'plate', facts->>'station_id' FROM notifications"
                " WHERE kind = 'possibly_recovered' AND bike_id = %s",
                (self.bike_id,),
            ).fetchall()


def test_the_prompt_comes_after_the_dwell_at_the_usual_stations_and_not_before(
    staff: Staff, database_owner_url: str
) -> None:
    town = Town(staff, database_owner_url, utcnow())
    town.back_home_for(150)
    home_from = town.now - timedelta(minutes=150)
    assert town.check(home_from + DWELL - timedelta(minutes=5)).raised == []  # an hour and 55 minutes: not yet
    assert town.alarms() == []

    raised = town.check().raised
    assert len(raised) == 1
    assert town.alarms() == [(raised[0], "st-home", "active", None)]
    assert town.told() == [(f"followup:{raised[0]}", town.plate, "st-home")]  # the owner is asked, once per alarm
    assert town.check().raised == raised and len(town.told()) == 1  # the next round updates it: no second one

    # The police see it in their queue; the owner sees it among their alerts.
    police = [a for a in staff.police.get("/api/alarms").json() if a["kind"] == "possibly_recovered"]
    assert [(a["id"], a["plate"], a["station_id"]) for a in police] == [(raised[0], town.plate, "st-home")]
    assert [a["id"] for a in town.owner.get("/api/alarms").json() if a["kind"] == "possibly_recovered"] == raised


def test_a_passage_elsewhere_during_the_dwell_starts_it_again_and_one_after_the_prompt_clears_it(
    staff: Staff, database_owner_url: str
) -> None:
    town = Town(staff, database_owner_url, utcnow())
    town.back_home_for(150)
    town.seen("st-far", 60)  # an hour ago it was across town: home for only the last hour
    assert town.check().raised == []
    assert town.alarms() == []

    later = Town(staff, database_owner_url, utcnow())
    later.back_home_for(150)
    (alarm_id,) = later.check(later.now - timedelta(minutes=20)).raised
    later.seen("st-far", 10)  # it left again: not recovered after all
    assert later.check().cleared == [alarm_id]
    assert later.alarms("all") == [(alarm_id, "st-home", "cleared", recovery_followup.SEEN_ELSEWHERE)]


def test_a_bike_that_is_not_stolen_is_never_prompted_about(staff: Staff, database_owner_url: str) -> None:
    town = Town(staff, database_owner_url, utcnow(), stolen=False)
    town.back_home_for(240)
    assert town.check().raised == []
    assert town.alarms("all") == [] and town.told() == []


def test_the_prompt_is_gone_once_the_bike_is_marked_recovered(staff: Staff, database_owner_url: str) -> None:
    town = Town(staff, database_owner_url, utcnow())
    town.back_home_for(150)
    (alarm_id,) = town.check().raised
    assert town.owner.post(f"/api/bikes/{town.bike_id}/recovered").status_code == 200
    assert town.alarms() == []
    assert [a for a in town.owner.get("/api/alarms").json() if a["kind"] == "possibly_recovered"] == []
    assert [a for a in staff.police.get("/api/alarms").json() if a["kind"] == "possibly_recovered"] == []
    assert town.check().raised == []  # no longer stolen: no new prompt
    ((_, _, state, cleared_by),) = town.alarms("all")
    assert state == "cleared" and cleared_by.endswith("(bike recovered)")


def test_the_backend_runs_the_follow_up_by_itself(database_url: str, database_owner_url: str) -> None:
    settings = factories.settings(database_url, recovery_check_interval_s=0.2)
    with TestClient(create_app(settings, run_ingest=False)) as client:
        staff = Staff(client, database_url)
        town = Town(staff, database_owner_url, utcnow())
        town.back_home_for(150)
        deadline = time.monotonic() + 60
        while not town.alarms() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(town.alarms()) == 1
        assert any(a["kind"] == "possibly_recovered" for a in staff.police.get("/api/alarms").json())


def test_a_former_owners_places_are_not_the_usual_stations(staff: Staff, database_owner_url: str) -> None:
    town = Town(staff, database_owner_url, utcnow())
    held_since(database_owner_url, town.bike_id, town.stolen_at - timedelta(days=1), ("owner",))  # changed hands
    town.back_home_for(150)  # at the former owner's home, not the new owner's
    assert town.check().raised == []
