"""The station-offline alarm: raised once per outage after two missed heartbeats or a last will, cleared when the
station reports again, never raised for silence from before the backend was listening; installers see it."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import psycopg
from psycopg_pool import AsyncConnectionPool

from backend import access
from backend.alarms import store
from backend.alarms.station_watch import offline_stations
from backend.live import LiveFeed
from tests import factories
from tests.backend.test_station_health import status

NOW = datetime.now(UTC)
LONG_AGO = NOW - timedelta(hours=1)


def in_service(
    conn: psycopg.Connection, station_id: str, lifecycle: str = "active", since: datetime = LONG_AGO
) -> None:
    factories.station(conn, station_id)
    conn.execute(
        "UPDATE stations SET lifecycle = %s, lifecycle_changed_at = %s WHERE station_id = %s",
        (lifecycle, since, station_id),
    )


def watch(database_url: str, now: datetime = NOW, listening_since: datetime = LONG_AGO) -> dict[str, Any]:
    """One pass of the station watch at `now`; returns what it found offline."""

    async def run() -> dict[str, Any]:
        async with await psycopg.AsyncConnection.connect(database_url) as conn:
            offline = await offline_stations(conn, now, listening_since)
            await store.sync_station_offline(conn, offline)
            return offline

    return asyncio.run(run())


def station_alarms(database_url: str, station_id: str) -> list[dict[str, Any]]:
    with psycopg.connect(database_url) as conn:
        cur = conn.execute(
            "SELECT alarm_id, state, severity, first_seen_at, cleared_by FROM alarms"
            " WHERE kind = 'station_offline' AND station_id = %s ORDER BY alarm_id",
            (station_id,),
        )
        return [dict(zip(("id", "state", "severity", "since", "cleared_by"), r, strict=True)) for r in cur]


def test_two_missed_heartbeats_raise_one_alarm_per_outage(database_url):
    with psycopg.connect(database_url) as conn:
        in_service(conn, "st-ok")
        in_service(conn, "st-quiet")
        status(conn, "st-ok", "online", NOW - timedelta(seconds=50))
        status(conn, "st-quiet", "online", NOW - timedelta(seconds=61))
    offline = watch(database_url)
    assert set(offline) == {"st-quiet"}
    assert "no heartbeat for 61 s (expected every 30 s)" in offline["st-quiet"][1]
    watch(database_url, NOW + timedelta(seconds=10))
    (alarm,) = station_alarms(database_url, "st-quiet")
    assert alarm["state"] == "active" and alarm["severity"] == "warning"
    assert alarm["since"] == NOW - timedelta(seconds=61)
    assert station_alarms(database_url, "st-ok") == []


def test_last_will_raises_at_once_and_a_heartbeat_clears_it(database_url):
    with psycopg.connect(database_url) as conn:
        in_service(conn, "st-will")
        status(conn, "st-will", "offline", NOW - timedelta(seconds=2))
    watch(database_url)
    assert [a["state"] for a in station_alarms(database_url, "st-will")] == ["active"]
    with psycopg.connect(database_url) as conn:
        status(conn, "st-will", "online", NOW + timedelta(seconds=20))
    watch(database_url, NOW + timedelta(seconds=25))
    (alarm,) = station_alarms(database_url, "st-will")
    assert alarm["state"] == "cleared" and alarm["cleared_by"] == store.STATION_BACK
    # The next outage is a new alarm.
    with psycopg.connect(database_url) as conn:
        status(conn, "st-will", "offline", NOW + timedelta(seconds=30))
    watch(database_url, NOW + timedelta(seconds=31))
    assert [a["state"] for a in station_alarms(database_url, "st-will")] == ["cleared", "active"]


def test_an_outage_cleared_by_hand_is_not_raised_again(database_url):
    with psycopg.connect(database_url) as conn:
        in_service(conn, "st-down")
        status(conn, "st-down", "online", NOW - timedelta(minutes=5))
    watch(database_url)
    (alarm,) = station_alarms(database_url, "st-down")

    async def clear() -> None:
        async with await psycopg.AsyncConnection.connect(database_url) as conn:
            await store.transition(conn, alarm["id"], "clear", "Installer Wang")

    asyncio.run(clear())
    watch(database_url, NOW + timedelta(seconds=10))
    assert [(a["state"], a["cleared_by"]) for a in station_alarms(database_url, "st-down")] == [
        ("cleared", "Installer Wang")
    ]


def test_silence_before_listening_or_before_service_does_not_count(database_url):
    with psycopg.connect(database_url) as conn:
        in_service(conn, "st-new", since=NOW - timedelta(seconds=30))  # just commissioned, not heard yet
        in_service(conn, "st-stale")
        in_service(conn, "st-planned", lifecycle="planned")
        in_service(conn, "st-installed", lifecycle="installed")
        status(conn, "st-stale", "online", NOW - timedelta(minutes=10))
    # A backend that started 20 s ago has not yet had the chance to hear anyone.
    assert watch(database_url, listening_since=NOW - timedelta(seconds=20)) == {}
    offline = watch(database_url, NOW + timedelta(seconds=61))
    assert set(offline) == {"st-new", "st-stale"}
    assert offline["st-new"][1] == "never heard from"
    assert station_alarms(database_url, "st-planned") == station_alarms(database_url, "st-installed") == []


def test_a_worker_that_just_started_does_not_clear_another_workers_alarm(database_url):
    with psycopg.connect(database_url) as conn:
        in_service(conn, "st-gone")
        status(conn, "st-gone", "online", NOW - timedelta(minutes=10))
    watch(database_url)
    watch(database_url, listening_since=NOW - timedelta(seconds=5))
    assert [a["state"] for a in station_alarms(database_url, "st-gone")] == ["active"]


def test_a_decommissioned_station_has_its_alarm_cleared(database_url):
    with psycopg.connect(database_url) as conn:
        in_service(conn, "st-old")
        status(conn, "st-old", "offline", NOW - timedelta(minutes=1))
    watch(database_url)
    with psycopg.connect(database_url) as conn:
        conn.execute("UPDATE stations SET lifecycle = 'decommissioned' WHERE station_id = 'st-old'")
    watch(database_url, NOW + timedelta(seconds=10))
    assert [a["state"] for a in station_alarms(database_url, "st-old")] == ["cleared"]


def test_installers_see_station_alarms_and_no_bike_alarms(database_url, staff):
    with psycopg.connect(database_url) as conn:
        in_service(conn, "st-dark")
        status(conn, "st-dark", "offline", NOW - timedelta(minutes=1))
        bike_id = factories.bike(conn, 0x5A5A0001)
        factories.theft(conn, bike_id)
        conn.execute(
            "INSERT INTO alarms (kind, severity, subject, tag_id, bike_id, station_id, first_seen_at, last_seen_at)"
            " VALUES ('stolen_chip_seen', 'critical', 'tag:5A5A0001', %s, %s, 'st-dark', now(), now())",
            (0x5A5A0001, bike_id),
        )
    watch(database_url)
    installer = {a["kind"]: a for a in staff.installer.get("/api/alarms").json()}
    police = {a["kind"]: a for a in staff.police.get("/api/alarms").json()}
    assert set(installer) == {"station_offline"} and set(police) == {"station_offline", "stolen_chip_seen"}
    assert staff.installer.get(f"/api/alarms/{police['stolen_chip_seen']['id']}").status_code == 404
    offline = installer["station_offline"]
    assert (offline["station_id"], offline["station_name"], offline["plate"]) == ("st-dark", "Station st-dark", None)
    r = staff.installer.post(f"/api/alarms/{offline['id']}/acknowledge")
    assert r.status_code == 200 and r.json()["acknowledged_by"].startswith("Installer")
    assert staff.installer.post(f"/api/alarms/{police['stolen_chip_seen']['id']}/clear").status_code == 404
    assert staff.clerk.get("/api/alarms").status_code == 403


def test_the_live_feed_gives_installers_station_alarms_only(database_url):
    with psycopg.connect(database_url) as conn:
        in_service(conn, "st-feed")
        status(conn, "st-feed", "offline", NOW - timedelta(seconds=1))
        bike_id = factories.bike(conn, 0x5A5A0002)

    async def run() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        async with AsyncConnectionPool(database_url, min_size=1, max_size=2) as pool:
            feed = LiveFeed(database_url, pool)
            feed.start()
            await asyncio.wait_for(feed.ready.wait(), 10)
            seen: dict[str, list[dict[str, Any]]] = {"installer": [], "police": []}

            async def follow(who: str, scope: access.Scope) -> None:
                async for event in feed.events(scope):
                    if event.startswith(b"event: alarm"):
                        seen[who].append(orjson.loads(event.split(b"data: ", 1)[1]))

            tasks = [
                asyncio.create_task(follow("installer", access.INSTALLERS)),
                asyncio.create_task(follow("police", access.POLICE)),
            ]
            while feed.viewers < 2:
                await asyncio.sleep(0.01)
            async with pool.connection() as conn:
                await store.sync_station_offline(conn, await offline_stations(conn, NOW, LONG_AGO))
                await conn.execute(
                    "INSERT INTO alarms (kind, severity, subject, tag_id, bike_id, first_seen_at, last_seen_at)"
                    " VALUES ('tamper', 'warning', 'tag:5A5A0002', %s, %s, now(), now())"
                    " RETURNING pg_notify(%s, alarm_id::text)",
                    (0x5A5A0002, bike_id, store.NOTIFY_CHANNEL),
                )
            for _ in range(500):
                if len(seen["police"]) == 2:
                    break
                await asyncio.sleep(0.01)
            for t in tasks:
                t.cancel()
            await feed.stop()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*tasks)
            return seen["installer"], seen["police"]

    installer, police = asyncio.run(run())
    assert [a["kind"] for a in installer] == ["station_offline"]
    assert sorted(a["kind"] for a in police) == ["station_offline", "tamper"]
