"""Where a moving bike goes next: the likeliest next stations from historical moves, with arrival times.

A first-order model over station_transitions (refreshed from recent passages): from the station where the
bike was last seen, each next station's share of the moves is its probability; the station it just came
from is left out (a bike being ridden away rarely turns straight back), and the rest renormalised.

Few moves are weak evidence: three moves seen, all to one station, do not make that station certain. Each
estimate keeps a share for "somewhere not seen yet" (UNSEEN_MOVES pseudo-moves, additive smoothing), so it
approaches the observed share only as history grows, and says how many moves it rests on.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg

# Pseudo-moves to stations not seen yet: 3 of 3 moves to one station gives 60 %, 300 of 300 gives 99 %.
UNSEEN_MOVES = 2


@dataclass(frozen=True, slots=True)
class Interception:
    """A station where the bike may be met, how likely, and when."""

    station_id: str
    name: str
    lat: float
    lon: float
    probability: float
    eta_at: datetime
    eta_latest_at: datetime
    moves: int
    based_on_moves: int  # every move seen from this station (the one it came from left out)


async def refresh(conn: psycopg.AsyncConnection[Any], days: int = 14, max_gap_min: int = 30) -> int:
    """Rebuild the transition counts from the last `days` of passages; returns the number of pairs."""
    cur = await conn.execute("SELECT bikeguard_refresh_transitions(%s, make_interval(mins => %s))", (days, max_gap_min))
    row = await cur.fetchone()
    return int(row[0]) if row else 0


@dataclass(frozen=True, slots=True)
class Departure:
    """A bike that left `at_station` at `left_at`, having come from `came_from` (if known)."""

    at_station: str
    left_at: datetime
    came_from: str | None = None


async def next_stations(
    conn: psycopg.AsyncConnection[Any],
    at_station: str,
    left_at: datetime,
    came_from: str | None = None,
    limit: int = 3,
    min_moves: int = 3,
) -> list[Interception]:
    """The likeliest next stations after `at_station` (left at `left_at`), most likely first."""
    (found,) = await next_stations_of(conn, [Departure(at_station, left_at, came_from)], limit, min_moves)
    return found


async def next_stations_of(
    conn: psycopg.AsyncConnection[Any],
    departures: list[Departure],
    limit: int = 3,
    min_moves: int = 3,
) -> list[list[Interception]]:
    """next_stations for each departure, in one query whatever their number."""
    if not departures:
        return []
    # A mobile reader (a patrol car) is no place a bike rides to or from: moves to or from it say nothing of where
    # a bike goes next, and it is no interception point.
    cur = await conn.execute(
        "SELECT r.i, t.to_station, s.name, s.lat, s.lon, t.moves, t.median_travel_s, t.p90_travel_s"
        " FROM unnest(%s::text[], %s::text[]) WITH ORDINALITY AS r(at_station, came_from, i)"
        " JOIN station_transitions t ON t.from_station = r.at_station"
        "  AND t.to_station IS DISTINCT FROM r.came_from AND t.moves >= %s"
        " JOIN stations s ON s.station_id = t.to_station AND NOT s.mobile"
        " JOIN stations f ON f.station_id = r.at_station AND NOT f.mobile",
        ([d.at_station for d in departures], [d.came_from for d in departures], min_moves),
    )
    rows: list[list[tuple[Any, ...]]] = [[] for _ in departures]
    for row in await cur.fetchall():
        rows[int(row[0]) - 1].append(row[1:])
    return [_likeliest(d, found, limit) for d, found in zip(departures, rows, strict=True)]


def _likeliest(departure: Departure, rows: list[tuple[Any, ...]], limit: int) -> list[Interception]:
    total = sum(r[4] for r in rows)
    if not total:
        return []
    left_at = departure.left_at
    out = [
        Interception(
            sid,
            name,
            lat,
            lon,
            moves / (total + UNSEEN_MOVES),
            left_at + timedelta(seconds=median_s),
            left_at + timedelta(seconds=p90_s),
            moves,
            total,
        )
        for sid, name, lat, lon, moves, median_s, p90_s in rows
    ]
    out.sort(key=lambda i: (-i.probability, i.eta_at))
    return out[:limit]
