"""Raising and the life cycle of alarms: one open alarm per (kind, subject), every change announced by NOTIFY.

Raising is the ingest's (sync, in its detection transaction); the station watch and the API's acknowledge, clear
and assign are async.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg

from backend.alarms.evidence import Evidence
from backend.alarms.kinds import AlarmKind
from backend.notifications import outbox

NOTIFY_CHANNEL = "bikeguard_alarms"
# Who clears a station's alarm when it reports again (or leaves service).
STATION_BACK = "bikeguard (no longer offline)"


class AlarmError(Exception):
    """Base of alarm errors."""


class AlarmNotFound(AlarmError):
    """No alarm with that id."""


class AlarmStateError(AlarmError):
    """The transition is not allowed from the alarm's current state."""


# Raise or update one open alarm per (kind, chip) from evidence rows; only chips bound to a bike count. The
# partial unique index alarms_one_open makes several workers raising at once update one alarm. The same statement
# writes the owner's notifications to the outbox (backend.notifications.outbox): no round trip more.
_RAISE = (
    """
    WITH e AS (
        SELECT * FROM unnest(%(kinds)s::text[], %(severities)s::text[], %(tags)s::int8[], %(stations)s::text[],
                             %(firsts)s::timestamptz[], %(lasts)s::timestamptz[], %(lats)s::float8[],
                             %(lons)s::float8[])
            AS e(kind, severity, tag_id, station_id, first_seen_at, last_seen_at, reader_lat, reader_lon)
    ), per_tag AS (
        SELECT kind, severity, tag_id, min(first_seen_at) AS first_seen_at, max(last_seen_at) AS last_seen_at,
               (array_agg(station_id ORDER BY last_seen_at DESC))[1] AS station_id, count(*) AS n,
               (array_agg(reader_lat ORDER BY last_seen_at DESC))[1] AS reader_lat,
               (array_agg(reader_lon ORDER BY last_seen_at DESC))[1] AS reader_lon
        FROM e GROUP BY kind, severity, tag_id
    ), raised AS (
        INSERT INTO alarms AS a (kind, severity, subject, tag_id, bike_id, station_id,
                                 first_seen_at, last_seen_at, sightings, reader_lat, reader_lon)
        SELECT p.kind, p.severity, 'tag:' || lpad(upper(to_hex(p.tag_id)), 8, '0'), p.tag_id,
               c.bike_id, p.station_id, p.first_seen_at, p.last_seen_at, p.n, p.reader_lat, p.reader_lon
        FROM per_tag p JOIN chips c USING (tag_id)
        WHERE c.bike_id IS NOT NULL
        ORDER BY p.kind, p.tag_id
        ON CONFLICT (kind, subject) WHERE state <> 'cleared' DO UPDATE SET
            station_id = CASE WHEN excluded.last_seen_at >= a.last_seen_at
                              THEN excluded.station_id ELSE a.station_id END,
            -- Where a mobile reader saw it last goes with the station that saw it last (null for a fixed station).
            reader_lat = CASE WHEN excluded.last_seen_at >= a.last_seen_at
                              THEN excluded.reader_lat ELSE a.reader_lat END,
            reader_lon = CASE WHEN excluded.last_seen_at >= a.last_seen_at
                              THEN excluded.reader_lon ELSE a.reader_lon END,
            first_seen_at = least(a.first_seen_at, excluded.first_seen_at),
            last_seen_at = greatest(a.last_seen_at, excluded.last_seen_at),
            sightings = a.sightings + excluded.sightings,
            updated_at = now()
        RETURNING alarm_id, kind, tag_id, bike_id, station_id, last_seen_at
    )
    """
    + outbox.ALARM_CTE
    + """
    SELECT alarm_id, pg_notify(%(channel)s, alarm_id::text) FROM raised
    """
    + outbox.ALARM_WAKE
    + """
    ORDER BY kind, tag_id
"""
)


def raise_evidence(cur: psycopg.Cursor[Any], evidence: list[Evidence]) -> list[int]:
    """Raise or update one open alarm per kind and chip bound to a bike; NOTIFY each at commit.

    One query whatever the number of kinds and chips; returns the alarm ids (by kind, then chip).
    """
    if not evidence:
        return []
    rows = cur.execute(
        _RAISE,
        {
            "kinds": [e.kind.value for e in evidence],
            "severities": [e.kind.severity.value for e in evidence],
            "tags": [e.tag_id for e in evidence],
            "stations": [e.station_id for e in evidence],
            "firsts": [e.first_seen_at for e in evidence],
            "lasts": [e.last_seen_at for e in evidence],
            "lats": [e.reader_lat for e in evidence],
            "lons": [e.reader_lon for e in evidence],
            "channel": NOTIFY_CHANNEL,
        },
    ).fetchall()
    return [int(r[0]) for r in rows]


async def sync_station_offline(conn: psycopg.AsyncConnection[Any], offline: dict[str, tuple[datetime, str]]) -> None:
    """Raise one 'station offline' alarm per outage of a station in `offline` (id → since when, why), and clear
    the open ones of stations that reported since (or left service); NOTIFY each change. An outage whose alarm
    someone cleared by hand is not raised again; a new outage (a later `since`) is. Safe with several workers."""
    ids, sinces = list(offline), [offline[s][0] for s in offline]
    kind = AlarmKind.STATION_OFFLINE
    async with conn.transaction():
        await conn.execute(
            "WITH raised AS ("
            " INSERT INTO alarms AS a (kind, severity, subject, station_id, first_seen_at, last_seen_at, sightings)"
            " SELECT %(kind)s, %(severity)s, 'station:' || o.station_id, o.station_id, o.since, o.since, 0"
            " FROM unnest(%(ids)s::text[], %(sinces)s::timestamptz[]) AS o(station_id, since)"
            " WHERE NOT EXISTS (SELECT 1 FROM alarms x WHERE x.kind = %(kind)s"
            "  AND x.subject = 'station:' || o.station_id AND x.first_seen_at >= o.since)"
            " ORDER BY o.station_id"
            " ON CONFLICT (kind, subject) WHERE state <> 'cleared' DO NOTHING RETURNING alarm_id)"
            " SELECT pg_notify(%(channel)s, alarm_id::text) FROM raised",
            {
                "kind": kind.value,
                "severity": kind.severity.value,
                "ids": ids,
                "sinces": sinces,
                "channel": NOTIFY_CHANNEL,
            },
        )
        await conn.execute(
            "WITH back AS ("
            " UPDATE alarms a SET state = 'cleared', cleared_by = %(who)s, cleared_at = now(), updated_at = now()"
            " FROM stations s LEFT JOIN station_status st USING (station_id)"
            " WHERE a.kind = %(kind)s AND a.state <> 'cleared' AND s.station_id = a.station_id"
            "  AND NOT (a.station_id = ANY(%(ids)s))"
            # It reported since the outage began, or it is no longer in service: evidence, not just our view
            # (a worker that has only just started does not yet count silence).
            "  AND ((st.state = 'online' AND st.received_at > a.first_seen_at)"
            "       OR s.lifecycle NOT IN ('commissioned', 'active'))"
            " RETURNING a.alarm_id)"
            " SELECT pg_notify(%(channel)s, alarm_id::text) FROM back",
            {"who": STATION_BACK, "kind": kind.value, "ids": ids, "channel": NOTIFY_CHANNEL},
        )


_TRANSITIONS = {
    "acknowledge": ("acknowledged", ("active",), "acknowledged_by", "acknowledged_at"),
    "clear": ("cleared", ("active", "acknowledged"), "cleared_by", "cleared_at"),
}


async def transition(conn: psycopg.AsyncConnection[Any], alarm_id: int, action: str, who: str) -> None:
    """Acknowledge or clear an alarm, recording who and when; NOTIFY the change."""
    new_state, allowed, by_col, at_col = _TRANSITIONS[action]
    async with conn.transaction():
        cur = await conn.execute("SELECT state FROM alarms WHERE alarm_id = %s FOR UPDATE", (alarm_id,))
        row = await cur.fetchone()
        if row is None:
            raise AlarmNotFound(f"no alarm {alarm_id}")
        if row[0] not in allowed:
            raise AlarmStateError(f"alarm {alarm_id} is {row[0]}; cannot {action} it")
        await conn.execute(
            f"UPDATE alarms SET state = %s, {by_col} = %s, {at_col} = now(), updated_at = now() WHERE alarm_id = %s",
            (new_state, who, alarm_id),
        )
        if new_state == "cleared":
            await outbox.alarm_cleared(conn, alarm_id)
        await conn.execute("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, str(alarm_id)))


# The alarms that end with a theft report: a stolen chip seen, and the follow-up asking whether it is back.
_THEFT_KINDS = [AlarmKind.STOLEN_CHIP_SEEN.value, AlarmKind.POSSIBLY_RECOVERED.value]


async def clear_for_recovered_bike(conn: psycopg.AsyncConnection[Any], bike_id: int, who: str) -> list[int]:
    """Clear the bike's open stolen-chip and possibly-recovered alarms now that it is back (police map and owner
    alert alike); NOTIFY each.

    Other kinds (a low battery, a tamper, a cloned chip) stay: they are about the chip, not about the theft.
    """
    cur = await conn.execute(
        "WITH cleared AS ("
        " UPDATE alarms SET state = 'cleared', cleared_by = %(who)s, cleared_at = now(), updated_at = now()"
        " WHERE bike_id = %(bike)s AND kind = ANY(%(kinds)s) AND state <> 'cleared' RETURNING alarm_id)"
        " SELECT alarm_id, pg_notify(%(channel)s, alarm_id::text) FROM cleared",
        {"who": who, "bike": bike_id, "kinds": _THEFT_KINDS, "channel": NOTIFY_CHANNEL},
    )
    return [int(row[0]) for row in await cur.fetchall()]


async def assign(conn: psycopg.AsyncConnection[Any], alarm_id: int, assignee: str, who: str) -> None:
    """Hand an open alarm to someone, recording who did and when; NOTIFY the change."""
    async with conn.transaction():
        cur = await conn.execute("SELECT state FROM alarms WHERE alarm_id = %s FOR UPDATE", (alarm_id,))
        row = await cur.fetchone()
        if row is None:
            raise AlarmNotFound(f"no alarm {alarm_id}")
        if row[0] == "cleared":
            raise AlarmStateError(f"alarm {alarm_id} is cleared; cannot assign it")
        await conn.execute(
            "UPDATE alarms SET assignee = %s, assigned_by = %s, assigned_at = now(), updated_at = now()"
            " WHERE alarm_id = %s",
            (assignee, who, alarm_id),
        )
        await conn.execute("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, str(alarm_id)))
