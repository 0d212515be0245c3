"""The station watch: a station in service that misses its heartbeats (or whose last will came) raises a
'station offline' alarm, cleared when it reports again. Online or offline is station_health's judgement."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from backend.alarms import store
from backend.station_health import HealthRules, liveness

log = logging.getLogger(__name__)

_RULES = HealthRules()
# Stations expected to report: those not yet installed, or decommissioned, are never "offline".
_WATCHED = """
SELECT s.station_id, s.heartbeat_interval_s, s.lifecycle_changed_at, st.state AS status_state,
       st.received_at AS last_heartbeat_at
FROM stations s LEFT JOIN station_status st USING (station_id)
WHERE s.lifecycle IN ('commissioned', 'active')
"""


async def offline_stations(
    conn: psycopg.AsyncConnection[Any], now: datetime, listening_since: datetime, rules: HealthRules = _RULES
) -> dict[str, tuple[datetime, str]]:
    """Stations in service that are offline at `now`: id → (since when, why). One small query, no passages.

    Silence before listening_since (when the backend began receiving statuses) or before the station entered its
    current life-cycle state does not count, so a restart of the backend does not report every station offline.
    """
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(_WATCHED)
        rows = await cur.fetchall()
    offline = {}
    for row in rows:
        heard_since = max(listening_since, row["lifecycle_changed_at"])
        online, why = liveness(row, now, rules, heard_since)
        if not online:
            offline[row["station_id"]] = (row["last_heartbeat_at"] or heard_since, why or "offline")
    return offline


async def watch_stations(pool: AsyncConnectionPool, every_s: float) -> None:
    """Every every_s: raise a station-offline alarm for each station in service that missed two heartbeats (or
    whose last will came), and clear it when the station reports again. Runs until cancelled."""
    listening_since = datetime.now(UTC)
    while True:
        try:
            async with pool.connection() as conn:
                offline = await offline_stations(conn, datetime.now(UTC), listening_since)
                await store.sync_station_offline(conn, offline)
        except Exception:  # whatever failed is retried next time: the API must go on
            log.exception("station watch failed; will retry in %.0f s", every_s)
        await asyncio.sleep(every_s)
