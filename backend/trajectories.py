"""Trajectories: a tag's passages as an ordered path of stops, with dwell, direction and speed between them."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, NamedTuple
from xml.sax.saxutils import escape

import psycopg
from psycopg.rows import dict_row

from protocol.messages import format_tag

_EARTH_RADIUS_M = 6_371_000.0
_COMPASS = ("N", "NE", "E", "SE", "S", "SW", "W", "NW")


# Stops and legs are named tuples, immutable as frozen dataclasses are but made five times faster (a frozen dataclass
# sets each field through object.__setattr__): a week's trajectory makes ~900 of them for each request.
class Stop(NamedTuple):
    """A stay within range of one station: consecutive passages there merged."""

    station_id: str
    station_name: str
    lat: float
    lon: float
    arrived_at: datetime
    left_at: datetime
    passages: int

    @property
    def dwell_s(self) -> float:
        """How long the tag stayed in range."""
        return (self.left_at - self.arrived_at).total_seconds()


class Leg(NamedTuple):
    """The way from one stop to the next."""

    from_station: str
    to_station: str
    distance_m: float
    duration_s: float
    heading: str

    @property
    def speed_kmh(self) -> float | None:
        """Straight-line speed; None when the stops overlap in time."""
        return self.distance_m / self.duration_s * 3.6 if self.duration_s > 0 else None


@dataclass(frozen=True, slots=True)
class Trajectory:
    """A tag's (or a bike's) stops in time order and the legs between them."""

    tag_id: int | None
    stops: list[Stop]
    legs: list[Leg]
    bike_id: int | None = None


def _point(lat: float, lon: float) -> tuple[float, float, float, float]:
    """A position in radians with its latitude's sine and cosine: computed once for both legs a stop ends."""
    p = math.radians(lat)
    return p, math.radians(lon), math.sin(p), math.cos(p)


def _distance_m_and_heading(
    a: tuple[float, float, float, float], b: tuple[float, float, float, float]
) -> tuple[float, str]:
    """Great-circle distance (haversine) and 8-point compass direction from _point a to _point b."""
    p1, l1, sin1, cos1 = a
    p2, l2, sin2, cos2 = b
    dl = l2 - l1
    h = math.sin((p2 - p1) / 2) ** 2 + cos1 * cos2 * math.sin(dl / 2) ** 2
    bearing = math.degrees(math.atan2(math.sin(dl) * cos2, cos1 * sin2 - sin1 * cos2 * math.cos(dl)))
    return 2 * _EARTH_RADIUS_M * math.asin(math.sqrt(h)), _COMPASS[int((bearing + 360 + 22.5) // 45) % 8]


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in metres."""
    return _distance_m_and_heading(_point(lat1, lon1), _point(lat2, lon2))[0]


def heading(lat1: float, lon1: float, lat2: float, lon2: float) -> str:
    """Compass direction (8 points) from the first point to the second."""
    return _distance_m_and_heading(_point(lat1, lon1), _point(lat2, lon2))[1]


def build(
    tag_id: int | None, passages: list[tuple[str, str, float, float, datetime, datetime]], bike_id: int | None = None
) -> Trajectory:
    """Stops and legs from passages (station_id, name, lat, lon, first_seen_at, last_seen_at) in time order."""
    # A week's trajectory is ~440 passages, and this loop is a third of the time the API takes to answer: each stop is
    # made once, after its passages are merged, and each position's trigonometry is computed once.
    runs: list[list[Any]] = []
    for station_id, name, lat, lon, first, last in passages:
        # A mobile reader's passages are at its own position each time: one stop only while it stays in one place.
        if runs and runs[-1][0] == station_id and runs[-1][2] == lat and runs[-1][3] == lon:
            run = runs[-1]
            run[5] = max(run[5], last)
            run[6] += 1
        else:
            runs.append([station_id, name, lat, lon, first, last, 1])
    stops = [Stop(*run) for run in runs]
    points = [_point(s.lat, s.lon) for s in stops]
    legs = []
    for a, b, from_point, to_point in zip(stops, stops[1:], points, points[1:], strict=False):
        distance, direction = _distance_m_and_heading(from_point, to_point)
        legs.append(Leg(a.station_id, b.station_id, distance, (b.arrived_at - a.left_at).total_seconds(), direction))
    return Trajectory(tag_id, stops, legs, bike_id)


TRAJECTORY_SQL = (
    "SELECT x.station_id, s.name, coalesce(x.reader_lat, s.lat), coalesce(x.reader_lon, s.lon),"
    " x.first_seen_at, x.last_seen_at"
    " FROM sightings x JOIN stations s USING (station_id)"
    " WHERE x.tag_id = %s AND x.first_seen_at >= %s AND x.first_seen_at < %s"
    " ORDER BY x.first_seen_at LIMIT %s"
)
"""A tag's passages in [since, until) with their stations, oldest first (tag_id, since, until, limit); a mobile
reader's passage is placed where the reader was (its GPS fix), a fixed station's at the station."""


async def trajectory(
    conn: psycopg.AsyncConnection[Any], tag_id: int, since: datetime, until: datetime, limit: int = 20_000
) -> Trajectory:
    """A tag's trajectory over [since, until) from its passages (one index range scan)."""
    # Binary results: ~440 rows of two timestamps each load faster than from their text (about 0.3 ms a week).
    cur = await conn.execute(TRAJECTORY_SQL, (tag_id, since, until, limit), binary=True)
    return build(tag_id, await cur.fetchall())


def _tag(t: Trajectory) -> str:
    return format_tag(t.tag_id) if t.tag_id is not None else ""


def _name(t: Trajectory) -> str:
    if t.bike_id is None:
        return f"Bikeguard tag {_tag(t)}"
    return f"Bikeguard bike {t.bike_id}" + (f" (chip {_tag(t)})" if t.tag_id is not None else "")


def totals(t: Trajectory) -> dict[str, float | int]:
    """What an owner asks of a day: the distance between the stations passed, the time on the way between them,
    the time parked (stayed at a station) and the stops."""
    return {
        "distance_m": round(sum((leg.distance_m for leg in t.legs), 0.0), 1),
        "moving_s": round(sum((leg.duration_s for leg in t.legs if leg.duration_s > 0), 0.0), 1),
        "parked_s": round(sum((stop.dwell_s for stop in t.stops), 0.0), 1),
        "stops": len(t.stops),
    }


def to_summary(t: Trajectory) -> dict[str, Any]:
    """Stops with their dwell and legs with distance, speed and heading, and their totals, as JSON-ready values
    (times in ISO 8601)."""
    return {
        "bike_id": t.bike_id,
        "tag_id": _tag(t) or None,
        "totals": totals(t),
        "stops": [
            {
                "station_id": s.station_id,
                "station_name": s.station_name,
                "lat": s.lat,
                "lon": s.lon,
                "arrived_at": s.arrived_at.isoformat(),
                "left_at": s.left_at.isoformat(),
                "dwell_s": s.dwell_s,
                "passages": s.passages,
            }
            for s in t.stops
        ],
        "legs": [
            {
                "from_station": leg.from_station,
                "to_station": leg.to_station,
                "distance_m": round(leg.distance_m, 1),
                "duration_s": leg.duration_s,
                "speed_kmh": None if leg.speed_kmh is None else round(leg.speed_kmh, 1),
                "heading": leg.heading,
            }
            for leg in t.legs
        ],
    }


def to_geojson(t: Trajectory) -> dict[str, Any]:
    """The path as a LineString plus one Point per stop, with times and dwell."""
    line = {
        "type": "Feature",
        "properties": {"bike_id": t.bike_id, "tag_id": _tag(t), "stops": len(t.stops)},
        "geometry": {"type": "LineString", "coordinates": [[s.lon, s.lat] for s in t.stops]},
    }
    points = [
        {
            "type": "Feature",
            "properties": {
                "station_id": s.station_id,
                "name": s.station_name,
                "arrived_at": s.arrived_at.isoformat(),
                "left_at": s.left_at.isoformat(),
                "dwell_s": s.dwell_s,
                "passages": s.passages,
            },
            "geometry": {"type": "Point", "coordinates": [s.lon, s.lat]},
        }
        for s in t.stops
    ]
    return {"type": "FeatureCollection", "features": [line, *points]}


def to_csv(t: Trajectory) -> str:
    """One row per stop, with the leg that led to it."""
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(
        [
            "tag_id",
            "station_id",
            "station_name",
            "lat",
            "lon",
            "arrived_at",
            "left_at",
            "dwell_s",
            "from_station",
            "distance_m",
            "speed_kmh",
            "heading",
        ]
    )
    for i, s in enumerate(t.stops):
        leg = t.legs[i - 1] if i else None
        speed = leg.speed_kmh if leg else None
        w.writerow(
            [
                _tag(t),
                s.station_id,
                s.station_name,
                f"{s.lat:.6f}",
                f"{s.lon:.6f}",
                s.arrived_at.isoformat(),
                s.left_at.isoformat(),
                f"{s.dwell_s:.0f}",
                leg.from_station if leg else "",
                f"{leg.distance_m:.0f}" if leg else "",
                f"{speed:.1f}" if speed is not None else "",
                leg.heading if leg else "",
            ]
        )
    return out.getvalue()


def to_gpx(t: Trajectory) -> str:
    """GPX 1.1: one track through the stops (arrival times) and a waypoint per stop."""
    name = _name(t)
    wpts = "".join(
        f'  <wpt lat="{s.lat:.6f}" lon="{s.lon:.6f}"><time>{_gpx_time(s.arrived_at)}</time>'
        f"<name>{escape(s.station_name)}</name><desc>{escape(s.station_id)}, {s.dwell_s:.0f} s</desc></wpt>\n"
        for s in t.stops
    )
    trkpts = "".join(
        f'      <trkpt lat="{s.lat:.6f}" lon="{s.lon:.6f}"><time>{_gpx_time(s.arrived_at)}</time></trkpt>\n'
        for s in t.stops
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<gpx version="1.1" creator="Bikeguard" xmlns="http://www.topografix.com/GPX/1/1">\n'
        f"  <metadata><name>{escape(name)}</name></metadata>\n{wpts}"
        f"  <trk><name>{escape(name)}</name>\n    <trkseg>\n{trkpts}    </trkseg>\n  </trk>\n</gpx>\n"
    )


def _gpx_time(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


ExportFormat = Literal["gpx", "geojson", "csv"]
EXPORT_MEDIA_TYPES: dict[ExportFormat, str] = {
    "gpx": "application/gpx+xml",
    "geojson": "application/geo+json",
    "csv": "text/csv; charset=utf-8",
}
"""The formats a trajectory can be exported in, with their media types."""


def export(t: Trajectory, fmt: ExportFormat) -> str:
    """The trajectory as a GPX, GeoJSON or CSV document."""
    if fmt == "gpx":
        return to_gpx(t)
    if fmt == "geojson":
        return json.dumps(to_geojson(t), ensure_ascii=False)
    if fmt == "csv":
        return to_csv(t)
    raise ValueError(f"no export format {fmt!r}")


def export_filename(bike_id: int, since: datetime, until: datetime, fmt: str) -> str:
    """A file name for a bike's export: bike-123-2026-11-22.gpx, or with both days when the window spans several."""
    first, last = since.astimezone(UTC).date(), (until - timedelta(microseconds=1)).astimezone(UTC).date()
    days = first.isoformat() if last <= first else f"{first.isoformat()}_{last.isoformat()}"
    return f"bike-{bike_id}-{days}.{fmt}"


# Registry-aware passages: which passages belong to a bike (to whom they may be shown is backend.access's).


async def _bike_passages(
    conn: psycopg.AsyncConnection[Any],
    bike_id: int,
    since: datetime,
    until: datetime,
    limit: int,
    *,
    newest_first: bool = False,
) -> list[dict[str, Any]]:
    order = "DESC" if newest_first else "ASC"
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT x.station_id, s.name AS station_name, coalesce(x.reader_lat, s.lat) AS lat,"
            " coalesce(x.reader_lon, s.lon) AS lon, x.first_seen_at, x.last_seen_at, x.tag_id"
            " FROM bike_bindings cb"
            " JOIN sightings x ON x.tag_id = cb.tag_id"
            "  AND x.first_seen_at >= greatest(cb.valid_from, %s)"
            "  AND x.first_seen_at < least(coalesce(cb.valid_to, 'infinity'), %s)"
            " JOIN stations s ON s.station_id = x.station_id"
            f" WHERE cb.bike_id = %s AND cb.kind = 'chip' ORDER BY x.first_seen_at {order} LIMIT %s",
            (since, until, bike_id, limit),
        )
        return await cur.fetchall()


async def last_passage_of_bike(
    conn: psycopg.AsyncConnection[Any], bike_id: int, since: datetime, until: datetime
) -> dict[str, Any] | None:
    """Where the bike was last seen in [since, until) (the passages of_bike counts), as last_seen gives it."""
    rows = await _bike_passages(conn, bike_id, since, until, 1, newest_first=True)
    if not rows:
        return None
    row = rows[0]
    return {k: row[k] for k in ("station_id", "station_name", "lat", "lon")} | {"seen_at": row["last_seen_at"]}


async def of_bike(
    conn: psycopg.AsyncConnection[Any], bike_id: int, since: datetime, until: datetime, limit: int = 1000
) -> list[dict[str, Any]]:
    """The bike's passages in [since, until), oldest first: each chip counts only while it was the bike's."""
    rows = await _bike_passages(conn, bike_id, since, until, limit)
    for r in rows:
        r["tag_id"] = format_tag(r["tag_id"])
    return rows


async def bike_trajectory(
    conn: psycopg.AsyncConnection[Any], bike_id: int, since: datetime, until: datetime, limit: int = 20_000
) -> Trajectory:
    """The bike's trajectory over [since, until), from the passages of_bike counts; labelled by its latest chip."""
    rows = await _bike_passages(conn, bike_id, since, until, limit)
    passages = [
        (r["station_id"], r["station_name"], r["lat"], r["lon"], r["first_seen_at"], r["last_seen_at"]) for r in rows
    ]
    return build(rows[-1]["tag_id"] if rows else None, passages, bike_id)


async def passages(
    conn: psycopg.AsyncConnection[Any],
    since: datetime,
    until: datetime,
    *,
    tag_id: int | None = None,
    station_id: str | None = None,
    limit: int = 500,
) -> list[dict[str, Any]]:
    """Passages in [since, until) of one chip, at one station or both, newest first; their tag_id in hex."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT station_id, tag_id, first_seen_at, last_seen_at, beacons, peak_rssi_dbm, antenna, flags"
            " FROM sightings WHERE first_seen_at >= %s AND first_seen_at < %s"
            " AND (%s::int8 IS NULL OR tag_id = %s) AND (%s::text IS NULL OR station_id = %s)"
            " ORDER BY first_seen_at DESC LIMIT %s",
            (since, until, tag_id, tag_id, station_id, station_id, limit),
        )
        rows = await cur.fetchall()
    for r in rows:
        r["tag_id"] = format_tag(r["tag_id"])
    return rows


async def last_seen_of(
    conn: psycopg.AsyncConnection[Any], chips: list[tuple[int, datetime]]
) -> list[dict[str, Any] | None]:
    """last_seen for each (tag id, since), in one query whatever their number (a list of stolen bikes)."""
    found: list[dict[str, Any] | None] = [None] * len(chips)
    if not chips:
        return found
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT r.i, x.station_id, x.station_name, x.lat, x.lon, x.seen_at"
            " FROM unnest(%s::int8[], %s::timestamptz[]) WITH ORDINALITY AS r(tag_id, since, i)"
            " CROSS JOIN LATERAL ("
            "  SELECT s.station_id, st.name AS station_name, coalesce(s.reader_lat, st.lat) AS lat,"
            "   coalesce(s.reader_lon, st.lon) AS lon, s.last_seen_at AS seen_at"
            "  FROM sightings s JOIN stations st USING (station_id)"
            "  WHERE s.tag_id = r.tag_id"
            "   AND s.last_seen_at >= r.since AND s.first_seen_at >= r.since - interval '1 hour'"
            "  ORDER BY s.first_seen_at DESC LIMIT 1) x",
            ([tag for tag, _ in chips], [since for _, since in chips]),
        )
        for row in await cur.fetchall():
            found[int(row.pop("i")) - 1] = row
    return found


async def last_seen(conn: psycopg.AsyncConnection[Any], tag_id: int, since: datetime | None) -> dict[str, Any] | None:
    """The chip's latest passage (still going on at or after since, if given) with its station, or None."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT x.station_id, st.name AS station_name, st.lat, st.lon, x.last_seen_at AS seen_at"
            " FROM sightings x JOIN stations st USING (station_id)"
            " WHERE x.tag_id = %s AND (%s::timestamptz IS NULL"
            "   OR (x.last_seen_at >= %s::timestamptz AND x.first_seen_at >= %s::timestamptz - interval '1 hour'))"
            " ORDER BY x.first_seen_at DESC LIMIT 1",
            (tag_id, since, since, since),
        )
        return await cur.fetchone()
