"""A stolen bike crossing a zone's border between two passages: through the real ingest (sightings published to the
broker, written, judged) to the alarm the police API returns."""

from __future__ import annotations

from datetime import datetime, timedelta

import psycopg

from backend.alarms import engine
from backend.ingest import writer
from backend.zones.crossings import ZoneCache
from protocol import topics
from protocol.messages import parse_batch_rows, utcnow
from tests import factories
from tests.backend.test_ingest import count, wait_until

# The county: lat 30.20 to 30.30, lon 120.10 to 120.20; no station stands on its border.
COUNTY = {
    "type": "Polygon",
    "coordinates": [[[120.10, 30.20], [120.20, 30.20], [120.20, 30.30], [120.10, 30.30], [120.10, 30.20]]],
}
INSIDE, INSIDE_TOO, NORTH_OUTSIDE = (30.28, 120.15), (30.22, 120.12), (30.32, 120.15)


def _setup(database_url: str, prefix: str, tag: int) -> dict[str, str]:
    names = {"in": f"{prefix}-in", "in2": f"{prefix}-in2", "out": f"{prefix}-out"}
    with psycopg.connect(database_url) as conn:
        factories.station(conn, names["in"], *INSIDE)
        factories.station(conn, names["in2"], *INSIDE_TOO)
        factories.station(conn, names["out"], *NORTH_OUTSIDE)
        factories.theft(conn, factories.bike(conn, tag), utcnow() - timedelta(hours=1))
    return names


def _pass(publish, database_url: str, station: str, seq: int, tag: int, at) -> None:  # type: ignore[no-untyped-def]
    """One passage of the chip at the station, published as a gateway does; waits until it is written."""
    publish(topics.station_topic(station, "sightings"), factories.batch(station, seq, [tag], at=at).to_json())
    wait_until(lambda: count(database_url, "SELECT count(*) FROM sightings WHERE station_id = %s", station) >= seq)


def _crossings(database_url: str) -> list[tuple[object, ...]]:
    with psycopg.connect(database_url) as conn:
        return conn.execute(
            "SELECT zone_name, direction, heading, time_basis, from_station_id, to_station_id FROM zone_crossings"
            " ORDER BY crossed_at"
        ).fetchall()


def test_a_stolen_bike_leaving_the_county_between_two_stations_says_so_on_its_alarm(
    staff, ingest, publish, database_url, topic_prefix
):
    tag = 0xC0FFEE
    st = _setup(database_url, topic_prefix, tag)
    assert staff.police.post("/api/zones", json={"name": "Xihu county", "geometry": COUNTY}).status_code == 201
    left_at = utcnow() - timedelta(minutes=10)
    _pass(publish, database_url, st["in"], 1, tag, left_at)
    wait_until(lambda: count(database_url, "SELECT count(*) FROM alarms") == 1)
    arrived = utcnow() - timedelta(minutes=2)
    _pass(publish, database_url, st["out"], 1, tag, arrived)
    wait_until(lambda: count(database_url, "SELECT count(*) FROM zone_crossings") >= 1)
    assert _crossings(database_url) == [("Xihu county", "left", "north", "interpolated", st["in"], st["out"])]

    (alarm,) = staff.police.get("/api/alarms").json()
    (crossing,) = alarm["crossings"]
    assert alarm["kind"] == "stolen_chip_seen" and alarm["station_id"] == st["out"]
    assert crossing["direction"] == "left" and crossing["heading"] == "north"
    assert crossing["from_station_id"] == st["in"] and crossing["to_station_id"] == st["out"]
    # The border (lat 30.30) is halfway between the stations (30.28 and 30.32): halfway between the passages.
    assert abs(crossing["lat"] - 30.30) < 1e-9 and abs(crossing["lon"] - 120.15) < 1e-9
    from_at, to_at = left_at, arrived - timedelta(seconds=5)  # factories.batch: first seen 5 s before `at`
    assert abs(datetime.fromisoformat(crossing["from_seen_at"]) - from_at) < timedelta(milliseconds=1)
    assert abs(datetime.fromisoformat(crossing["to_seen_at"]) - to_at) < timedelta(milliseconds=1)
    with psycopg.connect(database_url) as conn:
        crossed_at = conn.execute("SELECT crossed_at FROM zone_crossings").fetchone()[0]  # type: ignore[index]
    assert abs((crossed_at - (from_at + (to_at - from_at) / 2)).total_seconds()) < 0.001
    assert staff.police.get(f"/api/alarms/{alarm['id']}").json()["crossings"] == [crossing]


def test_coming_back_enters_the_county_southbound(staff, ingest, publish, database_url, topic_prefix):
    tag = 0xC0FFEF
    st = _setup(database_url, topic_prefix, tag)
    assert staff.admin.post("/api/zones", json={"name": "Xihu county", "geometry": COUNTY}).status_code == 201
    _pass(publish, database_url, st["out"], 1, tag, utcnow() - timedelta(minutes=10))
    wait_until(lambda: count(database_url, "SELECT count(*) FROM alarms") == 1)
    _pass(publish, database_url, st["in"], 1, tag, utcnow() - timedelta(minutes=5))
    wait_until(lambda: count(database_url, "SELECT count(*) FROM zone_crossings") >= 1)
    assert _crossings(database_url) == [("Xihu county", "entered", "south", "interpolated", st["out"], st["in"])]


def test_no_crossing_when_both_passages_are_on_the_same_side(staff, ingest, publish, database_url, topic_prefix):
    tag = 0xC0FFF0
    st = _setup(database_url, topic_prefix, tag)
    assert staff.police.post("/api/zones", json={"name": "Xihu county", "geometry": COUNTY}).status_code == 201
    _pass(publish, database_url, st["in"], 1, tag, utcnow() - timedelta(minutes=10))
    wait_until(lambda: count(database_url, "SELECT count(*) FROM alarms") == 1)
    _pass(publish, database_url, st["in2"], 1, tag, utcnow() - timedelta(minutes=5))
    wait_until(
        lambda: (
            count(database_url, "SELECT count(*) FROM alarms WHERE station_id = %s AND sightings = 2", st["in2"]) == 1
        )
    )
    assert _crossings(database_url) == []
    (alarm,) = staff.police.get("/api/alarms").json()
    assert alarm["crossings"] == []


def test_a_zone_drawn_later_is_judged_at_once_and_one_deleted_is_not(database_url, topic_prefix):
    """The engine's cached zones follow every change (the revision), with passages in one round or two."""
    tag = 0xC0FFF1
    st = _setup(database_url, topic_prefix, tag)
    cache = ZoneCache()
    seq = iter(range(1, 100))

    def ride(*stops: str) -> None:
        with psycopg.connect(database_url, autocommit=True) as conn:
            batches = []
            for station in stops:
                n = next(seq)  # each passage three minutes after the one before
                at = utcnow() - timedelta(minutes=50 - 3 * n)
                batches.append(parse_batch_rows(factories.batch(station, n, [tag], at=at).to_json()))
            with conn.transaction():
                result = writer.write_batches(conn, batches)
            engine.raise_alarms(conn, result.committed, engine.ON_COMMIT, zones=cache)

    ride(st["in"], st["out"])
    assert _crossings(database_url) == []  # no zone yet
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "INSERT INTO zones (name, geometry, created_by, updated_by) VALUES ('County', %s, 'x', 'x')",
            (psycopg.types.json.Jsonb(COUNTY),),
        )
        conn.execute("UPDATE zones_revision SET revision = revision + 1")
    ride(st["in"], st["out"])  # both passages in one round: the first is the second's previous passage
    assert _crossings(database_url) == [
        ("County", "entered", "south", "interpolated", st["out"], st["in"]),
        ("County", "left", "north", "interpolated", st["in"], st["out"]),
    ]
    with psycopg.connect(database_url) as conn:
        conn.execute("DELETE FROM zones")
        conn.execute("UPDATE zones_revision SET revision = revision + 1")
    ride(st["in"])
    assert len(_crossings(database_url)) == 2
