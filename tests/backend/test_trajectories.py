"""Trajectories from passages: stops, dwell, legs with speed and heading, and the exports."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from datetime import UTC, datetime, timedelta

import gpxpy
import psycopg

from backend import trajectories
from protocol.messages import utcnow
from tests import factories

T0 = utcnow().replace(microsecond=0) - timedelta(hours=1)


def _passage(station: str, lat: float, lon: float, at_s: float, stay_s: float):
    return (station, f"Gate {station}", lat, lon, T0 + timedelta(seconds=at_s), T0 + timedelta(seconds=at_s + stay_s))


def test_consecutive_passages_at_one_station_become_one_stop_with_its_dwell():
    t = trajectories.build(
        1,
        [
            _passage("a", 30.270, 120.150, 0, 60),
            _passage("a", 30.270, 120.150, 60, 30),
            _passage("b", 30.275, 120.150, 200, 10),
        ],
    )
    assert [(s.station_id, s.passages, s.dwell_s) for s in t.stops] == [("a", 2, 90.0), ("b", 1, 10.0)]


def test_a_leg_has_distance_speed_and_heading():
    t = trajectories.build(1, [_passage("a", 30.270, 120.150, 0, 10), _passage("b", 30.279, 120.150, 110, 5)])
    (leg,) = t.legs
    assert 990 < leg.distance_m < 1010  # 0.009° of latitude
    assert leg.duration_s == 100 and 35 < leg.speed_kmh < 37
    assert leg.heading == "N"
    back = trajectories.build(1, [_passage("b", 30.279, 120.160, 0, 1), _passage("a", 30.270, 120.150, 50, 1)])
    assert back.legs[0].heading == "SW"


def test_trajectory_reads_one_tags_passages_in_order_within_the_window(database_url):
    with psycopg.connect(database_url) as conn:
        for i, sid in enumerate(("st-a", "st-b", "st-c")):
            factories.station(conn, sid, lat=30.27 + i / 1000)
        conn.execute(
            "INSERT INTO sightings SELECT %s + make_interval(secs => s * 100), %s + make_interval(secs => s * 100 + 5),"
            " 'st-' || chr(97 + s %% 3), t, 2, -60, 0, 0, 1"
            " FROM generate_series(0, 8) s, unnest(ARRAY[7, 8]) t",
            (T0, T0),
        )

    async def read():
        async with await psycopg.AsyncConnection.connect(database_url) as conn:
            return await trajectories.trajectory(conn, 7, T0 + timedelta(seconds=150), T0 + timedelta(seconds=650))

    t = asyncio.run(read())
    assert [s.station_id for s in t.stops] == ["st-c", "st-a", "st-b", "st-c", "st-a"]
    assert all(leg.speed_kmh is not None for leg in t.legs)


def test_trajectory_reads_its_passages_from_the_index_alone(database_owner_url, database_url):
    """Once VACUUM has seen a day, a tag's passages come from the covering index without visiting the table."""
    with psycopg.connect(database_url) as conn:
        factories.station(conn, "st-a")
        conn.execute(
            "INSERT INTO sightings SELECT %s + make_interval(secs => s), %s + make_interval(secs => s + 5),"
            " 'st-a', s %% 50, 2, -60, 0, 0, 1 FROM generate_series(0, 4999) s",
            (T0, T0),
        )
    with psycopg.connect(database_owner_url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE sightings")
    with psycopg.connect(database_url) as conn:
        # On a table this small the planner would rather read it whole; what is proved is that the index covers.
        conn.execute("SET enable_seqscan = off")
        conn.execute("SET enable_bitmapscan = off")
        plan = conn.execute(
            f"EXPLAIN (ANALYZE, FORMAT JSON) {trajectories.TRAJECTORY_SQL}", (7, T0, T0 + timedelta(hours=2), 100)
        ).fetchone()[0][0]["Plan"]
    scans = []
    nodes = [plan]
    while nodes:
        node = nodes.pop()
        nodes.extend(node.get("Plans", []))
        # TimescaleDB's ordered append of its chunks (a Custom Scan "ChunkAppend" naming the hypertable) reads
        # nothing itself: the scans under it are what touch the chunks.
        if node.get("Custom Plan Provider") == "ChunkAppend":
            continue
        if node.get("Relation Name", "").startswith(("sightings", "_hyper_")):
            scans.append((node["Node Type"], node.get("Heap Fetches")))
    assert scans and all(scan == ("Index Only Scan", 0) for scan in scans), scans


def test_exports_are_readable_by_their_own_parsers():
    t = trajectories.build(
        0xABCDEF01,
        [
            _passage("a", 30.270, 120.150, 0, 10),
            _passage("b", 30.279, 120.150, 110, 5),
            _passage("c", 30.279, 120.160, 300, 20),
        ],
    )
    gpx = gpxpy.parse(trajectories.to_gpx(t))
    points = gpx.tracks[0].segments[0].points
    assert [(round(p.latitude, 3), round(p.longitude, 3)) for p in points] == [
        (30.27, 120.15),
        (30.279, 120.15),
        (30.279, 120.16),
    ]
    assert points[1].time == t.stops[1].arrived_at
    assert len(gpx.waypoints) == 3
    rows = list(csv.DictReader(io.StringIO(trajectories.to_csv(t))))
    assert [r["station_id"] for r in rows] == ["a", "b", "c"] and rows[1]["heading"] == "N"
    geo = trajectories.to_geojson(t)
    assert geo["features"][0]["geometry"]["coordinates"][0] == [120.15, 30.27]
    assert len(geo["features"]) == 4


def test_summary_is_json_ready_with_each_stops_dwell_and_each_legs_speed():
    t = trajectories.build(
        0xABCDEF01, [_passage("a", 30.270, 120.150, 0, 10), _passage("b", 30.279, 120.150, 110, 5)], bike_id=12
    )
    summary = json.loads(json.dumps(trajectories.to_summary(t)))
    assert summary["bike_id"] == 12 and summary["tag_id"] == "ABCDEF01"
    assert [s["dwell_s"] for s in summary["stops"]] == [10.0, 5.0]
    assert summary["stops"][1]["arrived_at"] == (T0 + timedelta(seconds=110)).isoformat()
    (leg,) = summary["legs"]
    assert (leg["from_station"], leg["to_station"], leg["heading"], leg["duration_s"]) == ("a", "b", "N", 100.0)
    assert leg["speed_kmh"] == round(t.legs[0].speed_kmh, 1)


def test_a_bike_seen_nowhere_exports_empty_but_valid_documents():
    t = trajectories.build(None, [], bike_id=3)
    assert gpxpy.parse(trajectories.export(t, "gpx")).tracks[0].name == "Bikeguard bike 3"
    assert json.loads(trajectories.export(t, "geojson"))["features"][0]["geometry"]["coordinates"] == []
    assert len(list(csv.reader(io.StringIO(trajectories.export(t, "csv"))))) == 1
    assert trajectories.to_summary(t) == {
        "bike_id": 3,
        "tag_id": None,
        "totals": {"distance_m": 0.0, "moving_s": 0.0, "parked_s": 0.0, "stops": 0},
        "stops": [],
        "legs": [],
    }


def test_export_file_names_carry_the_bike_and_the_days():
    day = datetime(2026, 11, 22, tzinfo=UTC)
    assert trajectories.export_filename(123, day, day + timedelta(days=1), "gpx") == "bike-123-2026-11-22.gpx"
    assert (
        trajectories.export_filename(123, day - timedelta(hours=2), day + timedelta(hours=6), "csv")
        == "bike-123-2026-11-21_2026-11-22.csv"
    )
