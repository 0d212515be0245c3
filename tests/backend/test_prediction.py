"""Where next: probabilities and arrival times from historical moves between stations."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import psycopg
import pytest

from backend import prediction
from protocol.messages import utcnow
from tests import factories


def _moves(conn: psycopg.Connection, tag: int, route: list[tuple[str, int]]) -> None:
    """One tag's passages along a route of (station, seconds after the previous passage ended)."""
    at = utcnow() - timedelta(hours=2)
    for station, after_s in route:
        at += timedelta(seconds=after_s)
        conn.execute(
            "INSERT INTO sightings VALUES (%s, %s, %s, %s, 3, -60, 0, 4, 1)",
            (at, at + timedelta(seconds=10), station, tag),
        )
        at += timedelta(seconds=10)


@pytest.fixture
def town_history(database_url: str) -> str:
    """From st-b, bikes went on to st-c nine times (about 60 s) and to st-d three times (about 120 s)."""
    with psycopg.connect(database_url) as conn:
        for i, sid in enumerate(("st-a", "st-b", "st-c", "st-d")):
            factories.station(conn, sid, lat=30.27 + i / 1000)
        for tag in range(9):
            _moves(conn, 100 + tag, [("st-a", 0), ("st-b", 50), ("st-c", 55 + tag)])
        for tag in range(3):
            _moves(conn, 200 + tag, [("st-a", 0), ("st-b", 50), ("st-d", 120)])
        _moves(conn, 300, [("st-b", 0), ("st-a", 3600)])  # an hour apart: not one trip
    return database_url


def test_the_likeliest_next_stations_come_with_probability_and_arrival_time(town_history: str):
    async def run():
        async with await psycopg.AsyncConnection.connect(town_history, autocommit=True) as conn:
            pairs = await prediction.refresh(conn)
            left = utcnow()
            return pairs, left, await prediction.next_stations(conn, "st-b", left, came_from="st-a")

    pairs, left, nxt = asyncio.run(run())
    assert pairs == 3  # a→b, b→c, b→d; the hour-long gap is no move
    # 9 and 3 of 12 moves, with a share kept for stations not seen yet (two pseudo-moves): 9/14 and 3/14.
    assert [(i.station_id, round(i.probability, 2)) for i in nxt] == [("st-c", 0.64), ("st-d", 0.21)]
    assert [(i.moves, i.based_on_moves) for i in nxt] == [(9, 12), (3, 12)]
    assert 55 <= (nxt[0].eta_at - left).total_seconds() <= 66
    assert nxt[0].eta_latest_at >= nxt[0].eta_at


def test_the_station_the_bike_came_from_is_not_predicted(town_history: str):
    async def run():
        async with await psycopg.AsyncConnection.connect(town_history, autocommit=True) as conn:
            await prediction.refresh(conn)
            return await prediction.next_stations(conn, "st-a", utcnow(), came_from="st-b")

    assert asyncio.run(run()) == []  # the only move out of st-a went to st-b, where it came from


def test_a_stolen_bikes_alarm_carries_its_interception_points(town_history: str):
    from backend.alarms import queries as alarms

    with psycopg.connect(town_history) as conn:
        bike = factories.bike(conn, 0xFEED01)
        conn.execute(
            "INSERT INTO alarms (kind, severity, subject, tag_id, bike_id, station_id, first_seen_at, last_seen_at)"
            " VALUES ('stolen_chip_seen', 'critical', 'tag:00FEED01', %s, %s, 'st-b', now(), now())",
            (0xFEED01, bike),
        )

    async def run():
        async with await psycopg.AsyncConnection.connect(town_history, autocommit=True) as conn:
            await prediction.refresh(conn)
            (alarm,) = await alarms.list_alarms(conn)
            return alarm

    alarm = asyncio.run(run())
    assert [n["station_id"] for n in alarm["next_stations"]][:1] == ["st-c"]
    assert alarm["next_stations"][0]["probability"] > 0.5


def test_three_moves_seen_do_not_make_a_station_certain(database_url: str):
    with psycopg.connect(database_url) as conn:
        for i, sid in enumerate(("st-a", "st-b")):
            factories.station(conn, sid, lat=30.27 + i / 1000)
        for tag in range(3):
            _moves(conn, 100 + tag, [("st-a", 0), ("st-b", 50)])

    async def run():
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            await prediction.refresh(conn)
            return await prediction.next_stations(conn, "st-a", utcnow())

    (only,) = asyncio.run(run())
    assert only.station_id == "st-b" and only.based_on_moves == 3
    assert round(only.probability, 2) == 0.6  # not 100 %: three moves are weak evidence
