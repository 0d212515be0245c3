"""A stolen bike crossing a zone's border: its consecutive passages at two stations on either side of it.

The straight line between the two stations is judged against each zone's border, so a crossing is found with no
station on the border itself. Zones are cached per ingest worker as prepared shapely geometries and reloaded when
their revision changes; only a round with stolen chips' evidence pays for it (one small read, plus one for the
chips' previous passages), so the alarm hot path of every other round is untouched.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from shapely import STRtree, prepared
from shapely.geometry import LineString, Point, shape
from shapely.geometry.base import BaseGeometry

from backend.alarms.evidence import Evidence
from backend.alarms.kinds import AlarmKind
from protocol.ids import format_tag

HEADINGS = ("north", "northeast", "east", "southeast", "south", "southwest", "west", "northwest")
# Two passages further apart in time are no straight ride: the bike may have gone anywhere in between.
MAX_GAP = timedelta(hours=2)
_KIND = AlarmKind.STOLEN_CHIP_SEEN


@dataclass(frozen=True, slots=True)
class CachedZone:
    """A zone as the alarm engine judges it: its polygon, prepared for fast tests, and its border."""

    zone_id: int
    name: str
    polygon: BaseGeometry
    fast: prepared.PreparedGeometry
    border: BaseGeometry


@dataclass(frozen=True, slots=True)
class Crossing:
    """A stolen chip entering or leaving a zone between two passages."""

    tag_id: int
    zone_id: int
    zone_name: str
    direction: str  # 'entered' or 'left'
    heading: str  # one of HEADINGS
    crossed_at: datetime
    time_basis: str  # 'interpolated' (along the line between the passages) or 'passage' (the one after)
    from_station_id: str
    from_seen_at: datetime
    to_station_id: str
    to_seen_at: datetime
    lat: float
    lon: float


def heading(lat1: float, lon1: float, lat2: float, lon2: float) -> str:
    """The compass word (HEADINGS) of the initial bearing from the first point to the second."""
    p1, p2, dl = math.radians(lat1), math.radians(lat2), math.radians(lon2 - lon1)
    bearing = math.degrees(
        math.atan2(
            math.sin(dl) * math.cos(p2), math.cos(p1) * math.sin(p2) - math.sin(p1) * math.cos(p2) * math.cos(dl)
        )
    )
    return HEADINGS[round((bearing % 360) / 45) % 8]


def borders_crossed(
    zones: Sequence[CachedZone], a: tuple[float, float], b: tuple[float, float]
) -> list[tuple[CachedZone, str, float, Point]]:
    """Each zone border the straight line from a to b (lon, lat) crosses: (zone, 'entered' or 'left', how far along
    the line (0 to 1), where), in order along the line. A line inside or outside a zone throughout crosses nothing."""
    if a == b:
        return []
    line = LineString([a, b])
    found: list[tuple[CachedZone, str, float, Point]] = []
    for zone in zones:
        if not zone.fast.intersects(line) or zone.fast.contains(line):
            continue
        hits = zone.border.intersection(line)
        # Cut the line where it meets the border (a stretch along the border cuts at both ends) and judge each piece
        # by its middle: a line that only touches a corner changes nothing.
        cuts = sorted(
            {line.project(Point(xy), normalized=True) for g in getattr(hits, "geoms", [hits]) for xy in g.coords}
            - {0.0, 1.0}
        )
        ends = [0.0, *cuts, 1.0]
        middles = [(lo + hi) / 2 for lo, hi in zip(ends, ends[1:], strict=False)]
        inside = [zone.polygon.contains(line.interpolate(m, normalized=True)) for m in middles]
        for i, at in enumerate(cuts):
            if inside[i] != inside[i + 1]:
                found.append((zone, "left" if inside[i] else "entered", at, line.interpolate(at, normalized=True)))
    return sorted(found, key=lambda f: f[2])


class _Zones:
    """One revision of the zones, with a spatial index so a line is tested only against zones near it."""

    def __init__(self, zones: Sequence[CachedZone]) -> None:
        self.zones = tuple(zones)
        self._tree = STRtree([z.polygon for z in self.zones])

    def __len__(self) -> int:
        return len(self.zones)

    def near(self, a: tuple[float, float], b: tuple[float, float]) -> list[CachedZone]:
        """The zones whose bounding box meets the line from a to b, in the order they were drawn."""
        return [self.zones[i] for i in sorted(self._tree.query(LineString([a, b])))]


class ZoneCache:
    """The zones, as prepared geometries, reloaded when their revision (bumped by every change) moves."""

    def __init__(self) -> None:
        self.revision = -1
        self.zones = _Zones(())

    def current(self, cur: psycopg.Cursor[Any]) -> _Zones:
        """The zones as they are now: one one-row read, and a reload only after a change."""
        row = cur.execute("SELECT revision FROM zones_revision").fetchone()
        revision = int(row[0]) if row else 0
        if revision != self.revision:
            zones = []
            for zone_id, name, geometry in cur.execute("SELECT zone_id, name, geometry FROM zones ORDER BY zone_id"):
                polygon = shape(geometry)
                zones.append(CachedZone(int(zone_id), name, polygon, prepared.prep(polygon), polygon.boundary))
            self.zones, self.revision = _Zones(zones), revision
        return self.zones


# Each stolen chip's last known passage before this round: its open alarm's (where it was last seen) and its
# position (backend.alarms.detectors.chip_cloned keeps it), with station positions; and where this round's stations
# are. Both through primary keys or the alarms' one-open index.
_PLACES = """
    SELECT p.tag_id, p.station_id, p.last_seen_at, s.lat, s.lon FROM (
        SELECT tag_id, station_id, last_seen_at FROM alarms
        WHERE kind = %(kind)s AND state <> 'cleared' AND subject = ANY(%(subjects)s)
        UNION ALL
        SELECT tag_id, station_id, last_seen_at FROM chip_positions WHERE tag_id = ANY(%(tags)s)
    ) p JOIN stations s USING (station_id)
    UNION ALL
    SELECT NULL, station_id, NULL, lat, lon FROM stations WHERE station_id = ANY(%(stations)s)
"""


@dataclass(frozen=True, slots=True)
class _Stop:
    station_id: str
    arrived_at: datetime
    left_at: datetime
    new: bool


def _stops(
    stolen: list[Evidence], rows: list[tuple[Any, ...]]
) -> tuple[dict[int, list[_Stop]], dict[str, tuple[float, float]]]:
    """Per chip, its previous passage and this round's, in time order; and each station's (lon, lat)."""
    where: dict[str, tuple[float, float]] = {}
    stops: dict[int, list[_Stop]] = {}
    for tag_id, station_id, seen_at, lat, lon in rows:
        where[station_id] = (float(lon), float(lat))
        if tag_id is not None and seen_at is not None:
            stops.setdefault(int(tag_id), []).append(_Stop(station_id, seen_at, seen_at, False))
    for e in stolen:
        stops.setdefault(e.tag_id, []).append(_Stop(e.station_id, e.first_seen_at, e.last_seen_at, True))
    for tag_id, chip_stops in stops.items():
        before = [s for s in chip_stops if not s.new]
        new = sorted((s for s in chip_stops if s.new), key=lambda s: (s.arrived_at, s.left_at))
        # Only the latest earlier passage counts (the alarm's and the position may be the same one, or one older).
        first = new[0].arrived_at if new else None
        prior = max((s for s in before if first is None or s.left_at <= first), key=lambda s: s.left_at, default=None)
        stops[tag_id] = ([prior] if prior else []) + new
    return stops, where


def find(cur: psycopg.Cursor[Any], evidence: Sequence[Evidence], cache: ZoneCache) -> list[Crossing]:
    """The zone borders stolen chips crossed between their previous passage and this round's (evidence of stolen
    chips seen); nothing read when there is none or no zone."""
    stolen = [e for e in evidence if e.kind is _KIND]
    if not stolen:
        return []
    zones = cache.current(cur)
    if not zones:
        return []
    tags = sorted({e.tag_id for e in stolen})
    rows = cur.execute(
        _PLACES,
        {
            "kind": _KIND.value,
            "subjects": [f"tag:{format_tag(t)}" for t in tags],
            "tags": tags,
            "stations": sorted({e.station_id for e in stolen}),
        },
    ).fetchall()
    stops, where = _stops(stolen, rows)
    found: list[Crossing] = []
    for tag_id, chip_stops in stops.items():
        for a, b in zip(chip_stops, chip_stops[1:], strict=False):
            if not b.new or a.station_id == b.station_id or a.station_id not in where or b.station_id not in where:
                continue
            if b.arrived_at - a.left_at > MAX_GAP:
                continue
            found += _crossings(tag_id, zones, a, b, where[a.station_id], where[b.station_id])
    return found


def _crossings(
    tag_id: int, zones: _Zones, a: _Stop, b: _Stop, pa: tuple[float, float], pb: tuple[float, float]
) -> list[Crossing]:
    ride = b.arrived_at - a.left_at
    word = heading(pa[1], pa[0], pb[1], pb[0])
    out = []
    for zone, direction, along, point in borders_crossed(zones.near(pa, pb), pa, pb):
        interpolated = ride > timedelta(0)
        out.append(
            Crossing(
                tag_id,
                zone.zone_id,
                zone.name,
                direction,
                word,
                a.left_at + ride * along if interpolated else b.arrived_at,
                "interpolated" if interpolated else "passage",
                a.station_id,
                a.left_at,
                b.station_id,
                b.arrived_at,
                float(point.y),
                float(point.x),
            )
        )
    return out


# Attached to the chip's open stolen-chip alarm, raised or updated by the same transaction just before.
_RECORD = """
    INSERT INTO zone_crossings (alarm_id, tag_id, zone_id, zone_name, direction, heading, crossed_at, time_basis,
                                from_station_id, from_seen_at, to_station_id, to_seen_at, lat, lon)
    SELECT a.alarm_id, x.tag_id, z.zone_id, x.zone_name, x.direction, x.heading, x.crossed_at, x.time_basis,
           x.from_station_id, x.from_seen_at, x.to_station_id, x.to_seen_at, x.lat, x.lon
    FROM unnest(%s::text[], %s::int8[], %s::int8[], %s::text[], %s::text[], %s::text[], %s::timestamptz[], %s::text[],
                %s::text[], %s::timestamptz[], %s::text[], %s::timestamptz[], %s::float8[], %s::float8[])
        AS x(subject, tag_id, zone_id, zone_name, direction, heading, crossed_at, time_basis,
             from_station_id, from_seen_at, to_station_id, to_seen_at, lat, lon)
    JOIN alarms a ON a.kind = %s AND a.subject = x.subject AND a.state <> 'cleared'
    LEFT JOIN zones z ON z.zone_id = x.zone_id  -- a zone deleted meanwhile: the crossing keeps only its name
    ORDER BY a.alarm_id, x.crossed_at
    ON CONFLICT DO NOTHING
"""


def record(cur: psycopg.Cursor[Any], crossings: Sequence[Crossing]) -> None:
    """Keep the crossings with their chips' open stolen-chip alarms (once each, whoever records them)."""
    if not crossings:
        return
    c = crossings
    cur.execute(
        _RECORD,
        (
            [f"tag:{format_tag(x.tag_id)}" for x in c],
            [x.tag_id for x in c],
            [x.zone_id for x in c],
            [x.zone_name for x in c],
            [x.direction for x in c],
            [x.heading for x in c],
            [x.crossed_at for x in c],
            [x.time_basis for x in c],
            [x.from_station_id for x in c],
            [x.from_seen_at for x in c],
            [x.to_station_id for x in c],
            [x.to_seen_at for x in c],
            [x.lat for x in c],
            [x.lon for x in c],
            _KIND.value,
        ),
    )
