"""Read models of alarms for the API and the live feed: a page of alarms or one, each with its trail and, for a
stolen bike on the move, where to meet it next and the zone borders it crossed, as the viewer's scope shows it
(backend.access.Scope.shown). A page costs three queries whatever its size."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row

from backend import prediction
from backend.access import EVERYTHING, Scope
from backend.alarms.kinds import AlarmKind, severity_rank
from backend.alarms.store import AlarmNotFound
from protocol.messages import format_tag

# With each alarm, the zone borders its stolen bike crossed (backend.zones.crossings), oldest first.
_ALARM_SELECT = """
    SELECT a.alarm_id AS id, a.kind, a.severity, a.state, a.tag_id, b.plate, a.station_id,
           s.name AS station_name, coalesce(a.reader_lat, s.lat) AS lat, coalesce(a.reader_lon, s.lon) AS lon,
           coalesce(s.mobile, false) AS mobile_reader, a.first_seen_at, a.last_seen_at, a.sightings,
           a.raised_at, a.updated_at, a.assignee, a.assigned_by, a.assigned_at, a.acknowledged_by, a.acknowledged_at,
           a.cleared_by, a.cleared_at, t.report_id IS NOT NULL AS stolen,
           (SELECT coalesce(jsonb_agg(to_jsonb(z) - 'crossing_id' - 'alarm_id' - 'tag_id' - 'recorded_at'
                                      ORDER BY z.crossed_at, z.crossing_id), '[]')
            FROM zone_crossings z WHERE z.alarm_id = a.alarm_id) AS crossings
    FROM alarms a
    LEFT JOIN bikes b USING (bike_id)
    LEFT JOIN stations s ON s.station_id = a.station_id
    LEFT JOIN theft_reports t ON t.bike_id = a.bike_id AND t.recovered_at IS NULL
"""
# Each chip's passages since its alarm began (a minute of slack), the latest `limit` of each, with station
# positions (a mobile reader's position at the passage): one query for a whole page of alarms.
_TRAILS = """
    SELECT r.i, t.station_id, t.lat, t.lon, t.seen_at
    FROM unnest(%s::int8[], %s::timestamptz[]) WITH ORDINALITY AS r(tag_id, since, i)
    CROSS JOIN LATERAL (
        SELECT x.station_id, coalesce(x.reader_lat, st.lat) AS lat, coalesce(x.reader_lon, st.lon) AS lon,
               x.first_seen_at AS seen_at
        FROM sightings x JOIN stations st USING (station_id)
        WHERE x.tag_id = r.tag_id AND x.first_seen_at >= r.since - interval '1 minute'
        ORDER BY x.first_seen_at DESC LIMIT %s
    ) t
"""


def _has_trail(alarm: dict[str, Any]) -> bool:
    return alarm["tag_id"] is not None and AlarmKind(alarm["kind"]).has_trail


async def _trails(
    conn: psycopg.AsyncConnection[Any], alarms: list[dict[str, Any]], limit: int
) -> list[list[dict[str, Any]]]:
    """Each alarm's chip's passages since the alarm began, oldest first, with station positions; only for the
    kinds about a bike on the move (a low battery or a tamper has no trail to follow)."""
    trails: list[list[dict[str, Any]]] = [[] for _ in alarms]
    wanted = [i for i, a in enumerate(alarms) if _has_trail(a)]
    if wanted:
        cur = await conn.execute(
            _TRAILS, ([alarms[i]["tag_id"] for i in wanted], [alarms[i]["first_seen_at"] for i in wanted], limit)
        )
        for n, station_id, lat, lon, seen_at in await cur.fetchall():
            trails[wanted[int(n) - 1]].append({"station_id": station_id, "lat": lat, "lon": lon, "seen_at": seen_at})
    for i in wanted:
        alarm, trail = alarms[i], trails[i]
        trail.sort(key=lambda p: p["seen_at"])
        # The hot-list alert may be newer than any closed passage: end the trail where it was last seen.
        if alarm["lat"] is not None and (not trail or trail[-1]["station_id"] != alarm["station_id"]):
            trail.append(
                {
                    "station_id": alarm["station_id"],
                    "lat": alarm["lat"],
                    "lon": alarm["lon"],
                    "seen_at": alarm["last_seen_at"],
                }
            )
    return trails


async def _next_stations(
    conn: psycopg.AsyncConnection[Any], alarms: list[dict[str, Any]], trails: list[list[dict[str, Any]]]
) -> list[list[dict[str, Any]]]:
    """Interception points for each stolen bike on the move: its likeliest next stations and when."""
    found: list[list[dict[str, Any]]] = [[] for _ in alarms]
    wanted = [
        i
        for i, a in enumerate(alarms)
        if AlarmKind(a["kind"]).intercepts and a["state"] != "cleared" and a["station_id"] is not None
    ]
    departures = []
    for i in wanted:
        alarm = alarms[i]
        came_from = next((p["station_id"] for p in reversed(trails[i]) if p["station_id"] != alarm["station_id"]), None)
        departures.append(prediction.Departure(alarm["station_id"], alarm["last_seen_at"], came_from))
    for i, interceptions in zip(wanted, await prediction.next_stations_of(conn, departures), strict=True):
        found[i] = [
            {
                "station_id": n.station_id,
                "name": n.name,
                "lat": n.lat,
                "lon": n.lon,
                "probability": round(n.probability, 3),
                "eta_at": n.eta_at,
                "eta_latest_at": n.eta_latest_at,
                "moves": n.moves,
                "based_on_moves": n.based_on_moves,
            }
            for n in interceptions
        ]
    return found


def _public(alarm: dict[str, Any]) -> dict[str, Any]:
    alarm = dict(alarm)
    if alarm["tag_id"] is not None:
        alarm["tag_id"] = format_tag(alarm["tag_id"])
    return alarm


async def _complete(
    conn: psycopg.AsyncConnection[Any], rows: list[dict[str, Any]], trail_limit: int = 50
) -> list[dict[str, Any]]:
    """The rows as the API gives them, with trails and next stations: two queries for all of them."""
    trails = await _trails(conn, rows, trail_limit)
    next_stations = await _next_stations(conn, rows, trails)
    evidence = await _evidence(conn, [r["id"] for r in rows if r["kind"] == AlarmKind.CHIP_CLONED])
    return [
        {**_public(row), "trail": trail, "next_stations": nexts, "evidence": evidence.get(row["id"], [])}
        for row, trail, nexts in zip(rows, trails, next_stations, strict=True)
    ]


async def get_alarm(
    conn: psycopg.AsyncConnection[Any], alarm_id: int, trail_limit: int = 50, scope: Scope = EVERYTHING
) -> dict[str, Any]:
    """One alarm with its trail, as the scope shows it; raises AlarmNotFound (also when the scope does not allow it)."""
    where, params = scope.sql()
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(_ALARM_SELECT + " WHERE a.alarm_id = %s" + where, (alarm_id, *params))
        row = await cur.fetchone()
    if row is None:
        raise AlarmNotFound(f"no alarm {alarm_id}")
    (alarm,) = await _complete(conn, [row], trail_limit)
    return scope.shown(alarm)


# The evidence an alarm keeps (a v2 chip's replayed or forged beacons), newest first, at most this many each.
EVIDENCE_SHOWN = 20


async def _evidence(conn: psycopg.AsyncConnection[Any], alarm_ids: list[int]) -> dict[int, list[dict[str, Any]]]:
    """The kept evidence of these cloned-chip alarms, by alarm: one query for all of them."""
    if not alarm_ids:
        return {}
    cur = await conn.execute(
        "SELECT x.alarm_id, x.evidence FROM unnest(%s::int8[]) AS a(alarm_id),"
        " LATERAL (SELECT alarm_id, evidence FROM alarm_evidence e WHERE e.alarm_id = a.alarm_id"
        " ORDER BY evidence_id DESC LIMIT %s) AS x",
        (alarm_ids, EVIDENCE_SHOWN),
    )
    found: dict[int, list[dict[str, Any]]] = {}
    for alarm_id, evidence in await cur.fetchall():
        found.setdefault(int(alarm_id), []).append({k: v for k, v in evidence.items() if k != "tag_id"})
    return found


async def get_alarms(conn: psycopg.AsyncConnection[Any], alarm_ids: list[int]) -> list[dict[str, Any]]:
    """Several alarms (those that exist), each in full (the live feed shows each viewer what its scope shows), the
    most severe first."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(_ALARM_SELECT + " WHERE a.alarm_id = ANY(%s)", (alarm_ids,))
        rows = await cur.fetchall()
    rows.sort(key=lambda r: (severity_rank(r["severity"]), alarm_ids.index(r["id"])))
    return await _complete(conn, rows)


async def list_alarms(
    conn: psycopg.AsyncConnection[Any],
    states: tuple[str, ...] = ("active", "acknowledged"),
    limit: int = 200,
    scope: Scope = EVERYTHING,
) -> list[dict[str, Any]]:
    """Alarms in the given states the scope allows, most recently seen first, each with its trail, as the scope shows
    them."""
    where, params = scope.sql()
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            _ALARM_SELECT + " WHERE a.state = ANY(%s)" + where + " ORDER BY a.last_seen_at DESC LIMIT %s",
            (list(states), *params, limit),
        )
        rows = await cur.fetchall()
    return [scope.shown(alarm) for alarm in await _complete(conn, rows)]
