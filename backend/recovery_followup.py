"""Recovery follow-up: a stolen bike whose chip is back at its owner's usual stations, and has stayed there, was
probably recovered without anyone saying so. Its owner is asked ("Is your bike back?") and the police get a
'possibly_recovered' alarm, so the list of stolen bikes and the county's statistics stay true.

The usual stations are those where the chip was most often seen in the USUAL_DAYS before the theft (while the
owner held the bike). The bike is
"back" when, since its last passage anywhere else after the theft, it has been seen only at usual stations, for at
least the dwell (BIKEGUARD_RECOVERY_DWELL_S) from the first of those passages to the last. A periodic check in the
backend judges it (backend.api.app's lifespan), never the ingest's hot path. One alarm per stay: the alarm is
cleared when the chip is seen elsewhere again or the bike is marked recovered; a stay whose alarm someone cleared by
hand is not raised again, a later stay is.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from backend.alarms.kinds import AlarmKind
from backend.alarms.store import NOTIFY_CHANNEL
from backend.notifications import outbox
from backend.settings import BackendSettings

log = logging.getLogger(__name__)

KIND = AlarmKind.POSSIBLY_RECOVERED
# "The weeks before the theft", and how many of the stations seen most there count as the owner's usual places
# (home, work, and one more: a parent's, the station by the market).
USUAL_DAYS = 28
USUAL_STATIONS = 3
SEEN_ELSEWHERE = "bikeguard (seen elsewhere)"
RECOVERED = "bikeguard (bike recovered)"

# Per open theft report of a chipped bike: its usual stations (only while its owner held it and its chip was on it:
# a former owner's places are not this owner's, nor another bike's places its chip's); its last passage elsewhere
# since the theft; and the passages since then (all at usual stations), up to `now`. Reads each chip's own passages
# through the (tag, time) index: a few hundred stolen bikes are a few hundred small range scans.
_STAYS = """
WITH stolen AS (
    SELECT t.report_id, t.bike_id, t.stolen_at, c.tag_id,
           ARRAY(SELECT y.station_id FROM sightings y
                 WHERE y.tag_id = c.tag_id AND y.first_seen_at < t.stolen_at
                   AND y.first_seen_at >= greatest(t.stolen_at - make_interval(days => %(days)s), ob.valid_from,
                                                   cb.valid_from)
                 GROUP BY y.station_id ORDER BY count(*) DESC, y.station_id LIMIT %(top)s) AS usual
    FROM theft_reports t JOIN bikes b USING (bike_id) JOIN chips c ON c.bike_id = t.bike_id
    JOIN bike_bindings ob ON ob.bike_id = t.bike_id AND ob.kind = 'owner' AND ob.valid_to IS NULL
    JOIN bike_bindings cb ON cb.bike_id = t.bike_id AND cb.kind = 'chip' AND cb.valid_to IS NULL
    WHERE t.recovered_at IS NULL AND b.status = 'active' AND t.stolen_at <= %(now)s
), away AS (
    SELECT s.*, (SELECT max(y.last_seen_at) FROM sightings y
                 WHERE y.tag_id = s.tag_id AND y.first_seen_at >= s.stolen_at AND y.first_seen_at <= %(now)s
                   AND NOT (y.station_id = ANY(s.usual))) AS away_at
    FROM stolen s WHERE cardinality(s.usual) > 0
)
SELECT a.report_id, a.bike_id, a.tag_id, a.away_at, h.station_id, h.home_from, h.home_until, h.n
FROM away a CROSS JOIN LATERAL (
    SELECT (array_agg(y.station_id ORDER BY y.first_seen_at DESC))[1] AS station_id,
           min(y.first_seen_at) AS home_from, max(y.last_seen_at) AS home_until, count(*) AS n
    FROM sightings y
    WHERE y.tag_id = a.tag_id AND y.first_seen_at >= a.stolen_at AND y.first_seen_at <= %(now)s
      AND (a.away_at IS NULL OR y.first_seen_at > a.away_at)) h
"""

# Raise one alarm per stay (its first passage at home is the alarm's first_seen_at), or bring the open one up to
# date; a stay whose alarm was cleared by hand is not raised again.
_RAISE = """
INSERT INTO alarms AS a (kind, severity, subject, tag_id, bike_id, station_id, first_seen_at, last_seen_at, sightings)
SELECT %(kind)s, %(severity)s, 'tag:' || lpad(upper(to_hex(c.tag_id)), 8, '0'), c.tag_id, c.bike_id, c.station_id,
       c.home_from, c.home_until, c.n
FROM unnest(%(tags)s::int8[], %(bikes)s::int8[], %(stations)s::text[], %(froms)s::timestamptz[],
            %(untils)s::timestamptz[], %(ns)s::int[]) AS c(tag_id, bike_id, station_id, home_from, home_until, n)
WHERE NOT EXISTS (SELECT 1 FROM alarms x WHERE x.kind = %(kind)s AND x.bike_id = c.bike_id
                  AND x.state = 'cleared' AND x.first_seen_at >= c.home_from)
ORDER BY c.tag_id
ON CONFLICT (kind, subject) WHERE state <> 'cleared' DO UPDATE SET
    station_id = excluded.station_id, last_seen_at = greatest(a.last_seen_at, excluded.last_seen_at),
    sightings = excluded.sightings, updated_at = now()
RETURNING alarm_id
"""

# Clear the open alarms whose bike is no longer stolen, or whose chip was seen elsewhere after its stay began.
_CLEAR = """
WITH gone AS (
    UPDATE alarms a SET state = 'cleared', cleared_at = now(), updated_at = now(),
        cleared_by = CASE WHEN t.report_id IS NULL THEN %(recovered)s ELSE %(elsewhere)s END
    FROM alarms x LEFT JOIN theft_reports t ON t.bike_id = x.bike_id AND t.recovered_at IS NULL
    LEFT JOIN unnest(%(bikes)s::int8[], %(aways)s::timestamptz[]) AS c(bike_id, away_at) ON c.bike_id = x.bike_id
    WHERE a.alarm_id = x.alarm_id AND x.kind = %(kind)s AND x.state <> 'cleared'
      AND (t.report_id IS NULL OR c.away_at > x.first_seen_at)
    RETURNING a.alarm_id
)
SELECT alarm_id, pg_notify(%(channel)s, alarm_id::text) FROM gone
"""


@dataclass(frozen=True, slots=True)
class Stay:
    """Where a stolen bike's chip has been since its last passage elsewhere: at its usual stations (or nowhere)."""

    report_id: int
    bike_id: int
    tag_id: int
    away_at: datetime | None  # its last passage at a station that is not one of its usual ones, since the theft
    station_id: str | None  # its latest usual station
    home_from: datetime | None
    home_until: datetime | None
    sightings: int

    def dwelt(self, dwell: timedelta) -> bool:
        """Whether it has been seen at its usual stations, and nowhere else, for at least the dwell."""
        return self.home_from is not None and self.home_until is not None and self.home_until - self.home_from >= dwell


@dataclass(frozen=True, slots=True)
class FollowUp:
    """What one check did: the alarms raised or brought up to date, and those cleared."""

    raised: list[int]
    cleared: list[int]


async def stays(conn: psycopg.AsyncConnection[Any], now: datetime) -> list[Stay]:
    """Each stolen, chipped bike's stay at its usual stations as of `now` (bikes with no passages before the theft
    have no usual stations and are left out)."""
    cur = await conn.execute(_STAYS, {"days": USUAL_DAYS, "top": USUAL_STATIONS, "now": now})
    return [Stay(*row) for row in await cur.fetchall()]


async def check(conn: psycopg.AsyncConnection[Any], now: datetime, dwell: timedelta) -> FollowUp:
    """One follow-up round: raise (or update) a 'possibly_recovered' alarm for each stolen bike back home for the
    dwell, tell its owner once per alarm, and clear those no longer true; NOTIFY each change. Safe with several
    backend workers (one open alarm per chip; the owner's notification is keyed by the alarm)."""
    found = await stays(conn, now)
    back = [s for s in found if s.dwelt(dwell)]
    async with conn.transaction():
        cur = await conn.execute(
            _CLEAR,
            {
                "bikes": [s.bike_id for s in found],
                "aways": [s.away_at for s in found],
                "kind": KIND.value,
                "recovered": RECOVERED,
                "elsewhere": SEEN_ELSEWHERE,
                "channel": NOTIFY_CHANNEL,
            },
        )
        cleared = [int(r[0]) for r in await cur.fetchall()]
        raised: list[int] = []
        if back:
            cur = await conn.execute(
                _RAISE,
                {
                    "kind": KIND.value,
                    "severity": KIND.severity.value,
                    "tags": [s.tag_id for s in back],
                    "bikes": [s.bike_id for s in back],
                    "stations": [s.station_id for s in back],
                    "froms": [s.home_from for s in back],
                    "untils": [s.home_until for s in back],
                    "ns": [s.sightings for s in back],
                },
            )
            raised = [int(r[0]) for r in await cur.fetchall()]
        if raised:
            await outbox.possibly_recovered(conn, raised)
            await conn.execute("SELECT pg_notify(%s, a::text) FROM unnest(%s::int8[]) a", (NOTIFY_CHANNEL, raised))
    return FollowUp(raised, cleared)


async def follow_up(pool: AsyncConnectionPool, settings: BackendSettings) -> None:
    """Every recovery_check_interval_s: the follow-up round (check) on the stolen bikes. Runs until cancelled."""
    every_s, dwell = settings.recovery_check_interval_s, timedelta(seconds=settings.recovery_dwell_s)
    while True:
        try:
            async with pool.connection() as conn:
                done = await check(conn, datetime.now(UTC), dwell)
            if done.raised or done.cleared:
                log.info(
                    "recovery follow-up: %d alarms raised or updated, %d cleared", len(done.raised), len(done.cleared)
                )
        except Exception:  # whatever failed is retried next time: the API must go on
            log.exception("recovery follow-up failed; will retry in %.0f s", every_s)
        await asyncio.sleep(every_s)
