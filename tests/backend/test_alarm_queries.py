"""A page of alarms costs three queries whatever its size (alarms, trails, next stations), each alarm with its own."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import psycopg
from psycopg import AsyncCursor

from backend import prediction
from backend.alarms import queries
from protocol.messages import utcnow
from tests import factories
from tests.backend.test_prediction import town_history  # noqa: F401 - fixture


class CountingCursor(AsyncCursor[Any]):
    """Counts the statements sent through it."""

    sent = 0

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        CountingCursor.sent += 1
        return await super().execute(*args, **kwargs)


def _alarm(conn: psycopg.Connection, kind: str, severity: str, tag: int, station: str) -> None:
    bike = factories.bike(conn, tag)
    conn.execute(
        "INSERT INTO alarms (kind, severity, subject, tag_id, bike_id, station_id, first_seen_at, last_seen_at)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, now())",
        (kind, severity, f"tag:{tag:08X}", tag, bike, station, utcnow() - timedelta(hours=3)),
    )


def test_a_page_of_alarms_has_each_ones_trail_and_next_stations_in_three_queries(town_history: str):  # noqa: F811
    with psycopg.connect(town_history) as conn:
        conn.execute("DELETE FROM chips WHERE tag_id IN (100, 101, 200, 201)")  # the town's chips, now bikes'
        _alarm(conn, "stolen_chip_seen", "critical", 100, "st-b")
        _alarm(conn, "stolen_chip_seen", "critical", 200, "st-a")
        _alarm(conn, "armed_bike_moving", "warning", 201, "st-d")
        _alarm(conn, "tamper", "warning", 101, "st-c")

    async def run() -> tuple[list[dict[str, Any]], int, dict[int, list[prediction.Interception]]]:
        async with await psycopg.AsyncConnection.connect(
            town_history, autocommit=True, cursor_factory=CountingCursor
        ) as conn:
            await prediction.refresh(conn)
            CountingCursor.sent = 0
            page = await queries.list_alarms(conn)
            sent = CountingCursor.sent
            # What each alarm's next stations are, asked one by one.
            one_by_one = {}
            for alarm in page:
                if alarm["kind"] == "stolen_chip_seen":
                    came_from = next(
                        p["station_id"] for p in reversed(alarm["trail"]) if p["station_id"] != alarm["station_id"]
                    )
                    one_by_one[alarm["id"]] = await prediction.next_stations(
                        conn, alarm["station_id"], alarm["last_seen_at"], came_from
                    )
            return page, sent, one_by_one

    page, sent, one_by_one = asyncio.run(run())
    assert sent == 3
    trails = {a["tag_id"]: [p["station_id"] for p in a["trail"]] for a in page}
    assert trails == {
        "00000064": ["st-a", "st-b", "st-c", "st-b"],  # its passages, then where the alarm last saw it
        "000000C8": ["st-a", "st-b", "st-d", "st-a"],
        "000000C9": ["st-a", "st-b", "st-d"],
        "00000065": [],  # a tamper has no trail to follow
    }
    for alarm in page:
        expected = one_by_one.get(alarm["id"], [])
        assert [(n["station_id"], n["probability"], n["eta_at"]) for n in alarm["next_stations"]] == [
            (n.station_id, round(n.probability, 3), n.eta_at) for n in expected
        ]
    assert any(one_by_one.values())
