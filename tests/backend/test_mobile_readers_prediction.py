"""Likely next stations leave mobile readers out: a patrol car is no place a bike rides to, nor from."""

from __future__ import annotations

import asyncio

import psycopg

from backend import prediction
from protocol.messages import utcnow
from tests.backend.test_prediction import town_history  # noqa: F401 - a fixture


def test_a_mobile_reader_is_no_interception_point_and_no_departure(town_history: str) -> None:  # noqa: F811
    with psycopg.connect(town_history) as conn:
        conn.execute("UPDATE stations SET mobile = true WHERE station_id = 'st-c'")

    async def run() -> tuple[list[prediction.Interception], list[prediction.Interception]]:
        async with await psycopg.AsyncConnection.connect(town_history, autocommit=True) as conn:
            await prediction.refresh(conn)
            after_b = await prediction.next_stations(conn, "st-b", utcnow(), came_from="st-a")
            after_c = await prediction.next_stations(conn, "st-c", utcnow())
            return after_b, after_c

    after_b, after_c = asyncio.run(run())
    assert [i.station_id for i in after_b] == ["st-d"]
    assert after_c == []
