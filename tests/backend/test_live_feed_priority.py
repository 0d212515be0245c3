"""The live feed sends a stolen chip's alarm before a burst of low-battery updates notified with it."""

from __future__ import annotations

import asyncio
import contextlib

import orjson
import psycopg
from psycopg_pool import AsyncConnectionPool

from backend import access
from backend.alarms import store
from backend.live import LiveFeed
from tests import factories


def test_a_critical_alarm_jumps_the_queue_of_low_battery_updates(database_url):
    burst = 300
    with psycopg.connect(database_url) as conn:
        factories.station(conn, "st-feed")
        bikes = [(0x6B000000 + i, factories.bike(conn, 0x6B000000 + i)) for i in range(burst + 1)]

    async def run() -> list[str]:
        async with AsyncConnectionPool(database_url, min_size=1, max_size=3) as pool:
            feed = LiveFeed(database_url, pool)
            feed.start()
            await asyncio.wait_for(feed.ready.wait(), 10)
            kinds: list[str] = []

            async def follow() -> None:
                async for event in feed.events(access.POLICE):
                    if event.startswith(b"event: alarm"):
                        kinds.append(orjson.loads(event.split(b"data: ", 1)[1])["kind"])

            task = asyncio.create_task(follow())
            while feed.viewers < 1:
                await asyncio.sleep(0.01)
            async with pool.connection() as conn, conn.transaction():  # notified together at commit, stolen last
                for i, (tag, bike_id) in enumerate(bikes):
                    kind, severity = ("stolen_chip_seen", "critical") if i == burst else ("low_battery", "info")
                    await conn.execute(
                        "INSERT INTO alarms (kind, severity, subject, tag_id, bike_id, station_id, first_seen_at,"
                        " last_seen_at) VALUES (%s, %s, %s, %s, %s, 'st-feed', now(), now())"
                        " RETURNING pg_notify(%s, alarm_id::text)",
                        (kind, severity, f"tag:{tag:08X}", tag, bike_id, store.NOTIFY_CHANNEL),
                    )
            for _ in range(1000):
                if len(kinds) == burst + 1:
                    break
                await asyncio.sleep(0.01)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await feed.stop()
            return kinds

    kinds = asyncio.run(run())
    assert len(kinds) == burst + 1
    assert "stolen_chip_seen" in kinds[:5], kinds[:5]
