"""Station health at a fixed clock: online, offline (last will, missed heartbeats, never heard), degraded."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from backend.station_health import station_health
from tests import factories

NOW = datetime(2026, 6, 2, 18, 30, tzinfo=UTC)


def status(conn: psycopg.Connection, station_id: str, state: str, received_at: datetime, **payload: Any) -> None:
    conn.execute(
        "INSERT INTO station_status (station_id, state, reported_at, received_at, payload) VALUES (%s, %s, %s, %s, %s)"
        " ON CONFLICT (station_id) DO UPDATE SET state = excluded.state, received_at = excluded.received_at,"
        " payload = excluded.payload",
        (station_id, state, received_at, received_at, Jsonb({"station_id": station_id, "state": state, **payload})),
    )


def passages(conn: psycopg.Connection, station_id: str, end: datetime, n: int) -> None:
    """Steady traffic of n passages an hour at the station from two hours before `end` to one hour after: n in the
    hour before `end`, and in each clock hour around it (the usual rate is read from hourly counts)."""
    gap = timedelta(hours=1) / n if n else timedelta(0)
    rows = [(end - timedelta(hours=2) + gap * (i + 0.5), station_id, i) for i in range(3 * n)]
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO sightings (first_seen_at, last_seen_at, station_id, tag_id, beacons, peak_rssi_dbm, antenna,"
            " flags, batch_seq) VALUES (%s, %s, %s, %s, 1, -60, 0, 0, 1)",
            [(at, at, sid, tag) for at, sid, tag in rows],
        )


def health_at(database_url: str, now: datetime = NOW) -> dict[str, dict[str, Any]]:
    async def run() -> list[dict[str, Any]]:
        async with await psycopg.AsyncConnection.connect(database_url) as conn:
            return await station_health(conn, now)

    return {h["station_id"]: h for h in asyncio.run(run())}


def ensure_partitions(conn: psycopg.Connection) -> None:
    """Day partitions for the last eight days before NOW (before any row lands in the default partition; a no-op on
    TimescaleDB, which makes its chunks as rows come)."""
    conn.execute(
        "SELECT bikeguard_ensure_partitions(%s::date, %s::date)", ((NOW - timedelta(days=8)).date(), NOW.date())
    )


def test_station_with_fresh_heartbeat_is_online_with_its_spool_and_noise(database_url):
    with psycopg.connect(database_url) as conn:
        factories.station(conn, "st-ok")
        status(
            conn,
            "st-ok",
            "online",
            NOW - timedelta(seconds=20),
            spool_depth=12,
            spool_dropped=3,
            noise_floor_dbm=-96,
            firmware="1.2",
        )
    h = health_at(database_url)["st-ok"]
    assert h["health"] == "online" and h["reasons"] == []
    assert (h["spool_depth"], h["spool_dropped"], h["noise_floor_dbm"], h["firmware"]) == (12, 3, -96, "1.2")
    assert h["last_heartbeat_at"] == NOW - timedelta(seconds=20)


def test_last_will_offline_is_offline_even_when_recent(database_url):
    with psycopg.connect(database_url) as conn:
        factories.station(conn, "st-will")
        status(conn, "st-will", "offline", NOW - timedelta(seconds=5))
    h = health_at(database_url)["st-will"]
    assert h["health"] == "offline" and "last status says offline" in h["reasons"][0]


def test_two_missed_heartbeats_make_a_station_offline(database_url):
    with psycopg.connect(database_url) as conn:
        factories.station(conn, "st-quiet")
        factories.station(conn, "st-slow")
        conn.execute("UPDATE stations SET heartbeat_interval_s = 120 WHERE station_id = 'st-slow'")
        status(conn, "st-quiet", "online", NOW - timedelta(seconds=61))
        status(conn, "st-slow", "online", NOW - timedelta(seconds=200))
    health = health_at(database_url)
    assert health["st-quiet"]["health"] == "offline" and "no heartbeat for 61 s" in health["st-quiet"]["reasons"][0]
    assert health["st-slow"]["health"] == "online"  # 200 s < 2 × 120 s
    assert health_at(database_url, NOW - timedelta(seconds=2))["st-quiet"]["health"] == "online"


def test_never_heard_station_is_offline_and_decommissioned_ones_are_left_out(database_url):
    with psycopg.connect(database_url) as conn:
        factories.station(conn, "st-new")
        factories.station(conn, "st-gone")
        conn.execute("UPDATE stations SET lifecycle = 'decommissioned' WHERE station_id = 'st-gone'")
    health = health_at(database_url)
    assert health["st-new"]["health"] == "offline" and health["st-new"]["reasons"] == ["never heard from"]
    assert "st-gone" not in health


def test_station_hearing_far_fewer_passages_than_usual_for_the_hour_is_degraded(database_url):
    with psycopg.connect(database_url) as conn:
        ensure_partitions(conn)
        for sid in ("st-dull", "st-busy", "st-few"):
            factories.station(conn, sid)
            status(conn, sid, "online", NOW - timedelta(seconds=10))
        for day in range(1, 8):
            passages(conn, "st-dull", NOW - timedelta(days=day), 40)
            passages(conn, "st-busy", NOW - timedelta(days=day), 40)
            passages(conn, "st-few", NOW - timedelta(days=day), 10)  # usual 10 < 20: too few to judge
        passages(conn, "st-dull", NOW, 9)  # 9 < 25 % of 40
        passages(conn, "st-busy", NOW, 10)  # 10 = 25 %: not below
        passages(conn, "st-few", NOW, 0)
        # Passages at another time of day do not count toward the usual figure.
        passages(conn, "st-busy", NOW - timedelta(days=1, hours=3), 500)
    health = health_at(database_url)
    dull = health["st-dull"]
    assert dull["health"] == "degraded" and dull["usual_passages"] == 40 and dull["passages_last_hour"] == 9
    assert "9 passages in the last hour, usually 40" in dull["reasons"][0]
    assert health["st-busy"]["health"] == "online" and health["st-busy"]["usual_passages"] == 40
    assert health["st-few"]["health"] == "online"


def test_usual_rate_is_a_median_so_one_busy_day_does_not_make_a_station_degraded(database_url):
    with psycopg.connect(database_url) as conn:
        ensure_partitions(conn)
        factories.station(conn, "st-new-site")
        status(conn, "st-new-site", "online", NOW - timedelta(seconds=10))
        passages(conn, "st-new-site", NOW - timedelta(days=1), 300)  # only one day of history
        passages(conn, "st-new-site", NOW, 5)
    h = health_at(database_url)["st-new-site"]
    assert h["usual_passages"] == 0 and h["health"] == "online"


def test_health_route_is_for_police_installers_and_admins(staff, database_url):
    with psycopg.connect(database_url) as conn:
        factories.station(conn, "st-api")
    for caller in (staff.police, staff.installer, staff.admin):
        r = caller.get("/api/stations/health")
        assert r.status_code == 200, r.text
        assert [h["health"] for h in r.json() if h["station_id"] == "st-api"] == ["offline"]
    assert staff.clerk.get("/api/stations/health").status_code == 403
    assert staff.anonymous.get("/api/stations/health").status_code == 401
