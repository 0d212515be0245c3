"""Coverage: which roads the stations hear, which they miss, and where the next stations should go.

Works in metres on a local flat projection around the network (fine at city scale). A station covers a
disc of its read range, or, when its antennas' orientations are known, one sector per antenna.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from shapely import LineString, MultiLineString, Point, Polygon
from shapely.geometry.base import BaseGeometry
from shapely.ops import unary_union

DEFAULT_RANGE_M = 100.0
_M_PER_DEG_LAT = 111_320.0


@dataclass(frozen=True, slots=True)
class Antenna:
    """One antenna's beam: its centre bearing (degrees from north), width and range."""

    bearing_deg: float
    beamwidth_deg: float = 120.0
    range_m: float = DEFAULT_RANGE_M


@dataclass(frozen=True, slots=True)
class StationSite:
    """A station's position and what it hears: a disc of range_m, or its antennas' sectors."""

    station_id: str
    lat: float
    lon: float
    range_m: float = DEFAULT_RANGE_M
    antennas: tuple[Antenna, ...] = ()


@dataclass(frozen=True, slots=True)
class Suggestion:
    """A proposed site and the uncovered road length it would add."""

    lat: float
    lon: float
    gain_m: float


@dataclass
class Coverage:
    """The result: lengths, the uncovered pieces and the suggested next sites (all lat/lon)."""

    road_m: float
    covered_m: float
    station_areas: list[list[tuple[float, float]]] = field(default_factory=list)
    uncovered: list[list[tuple[float, float]]] = field(default_factory=list)
    suggestions: list[Suggestion] = field(default_factory=list)
    # Road each station hears (metres, by station_id): a station that hears little road is badly placed.
    station_road_m: dict[str, float] = field(default_factory=dict)

    @property
    def share(self) -> float:
        """Covered share of the road length, 0..1."""
        return self.covered_m / self.road_m if self.road_m else 0.0


class Projection:
    """Equirectangular metres around a reference point."""

    def __init__(self, lat0: float, lon0: float) -> None:
        self.lat0, self.lon0 = lat0, lon0
        self.m_per_deg_lon = _M_PER_DEG_LAT * math.cos(math.radians(lat0))

    def to_m(self, lat: float, lon: float) -> tuple[float, float]:
        """(x east, y north) in metres."""
        return (lon - self.lon0) * self.m_per_deg_lon, (lat - self.lat0) * _M_PER_DEG_LAT

    def to_latlon(self, x: float, y: float) -> tuple[float, float]:
        """Back to (lat, lon)."""
        return self.lat0 + y / _M_PER_DEG_LAT, self.lon0 + x / self.m_per_deg_lon


def station_area(site: StationSite, proj: Projection) -> BaseGeometry:
    """What one station hears, in metres: a disc, or the union of its antennas' sectors."""
    x, y = proj.to_m(site.lat, site.lon)
    if not site.antennas:
        return Point(x, y).buffer(site.range_m, 32)
    sectors = []
    for a in site.antennas:
        start, end = a.bearing_deg - a.beamwidth_deg / 2, a.bearing_deg + a.beamwidth_deg / 2
        steps = max(2, int(a.beamwidth_deg / 5))
        arc = [
            (
                x + a.range_m * math.sin(math.radians(start + (end - start) * i / steps)),
                y + a.range_m * math.cos(math.radians(start + (end - start) * i / steps)),
            )
            for i in range(steps + 1)
        ]
        sectors.append(Polygon([(x, y), *arc]))
    return unary_union(sectors)


def roads_from_geojson(roads: dict[str, Any]) -> list[list[tuple[float, float]]]:
    """(lat, lon) polylines from a GeoJSON FeatureCollection of LineStrings/MultiLineStrings."""
    out: list[list[tuple[float, float]]] = []
    for f in roads.get("features", []):
        g = f["geometry"]
        lines = [g["coordinates"]] if g["type"] == "LineString" else g["coordinates"]
        out.extend([[(lat, lon) for lon, lat in line] for line in lines])
    return out


def _lines(geom: BaseGeometry) -> list[LineString]:
    if geom.is_empty:
        return []
    if isinstance(geom, LineString):
        return [geom]
    if isinstance(geom, MultiLineString):
        return list(geom.geoms)
    return [g for part in getattr(geom, "geoms", []) for g in _lines(part)]


def _candidates(roads: Sequence[LineString], spacing_m: float) -> list[Point]:
    """Road vertices (intersections first) and points every spacing_m along every road."""
    seen: set[tuple[int, int]] = set()
    out: list[Point] = []
    for road in roads:
        for xy in road.coords:
            key = (round(xy[0]), round(xy[1]))
            if key not in seen:
                seen.add(key)
                out.append(Point(xy))
    for road in roads:
        d = spacing_m
        while d < road.length:
            p = road.interpolate(d)
            key = (round(p.x), round(p.y))
            if key not in seen:
                seen.add(key)
                out.append(p)
            d += spacing_m
    return out


def compute(
    stations: Iterable[StationSite],
    roads_latlon: Sequence[Sequence[tuple[float, float]]],
    suggest: int = 5,
    new_range_m: float = DEFAULT_RANGE_M,
) -> Coverage:
    """Road coverage of the stations and up to `suggest` greedy next sites (each adds the most uncovered road)."""
    sites = list(stations)
    all_pts = [p for r in roads_latlon for p in r] or [(s.lat, s.lon) for s in sites]
    if not all_pts:
        return Coverage(0.0, 0.0)
    proj = Projection(sum(p[0] for p in all_pts) / len(all_pts), sum(p[1] for p in all_pts) / len(all_pts))
    roads = [LineString([proj.to_m(*p) for p in r]) for r in roads_latlon if len(r) >= 2]
    network = unary_union(roads)
    areas = [station_area(s, proj) for s in sites]
    covered_area = unary_union(areas) if areas else Polygon()
    road_m = float(network.length)
    uncovered = network.difference(covered_area)

    suggestions: list[Suggestion] = []
    remaining = uncovered
    candidates = _candidates(roads, new_range_m / 2)
    for _ in range(suggest):
        if remaining.is_empty:
            break
        best, best_gain = None, 0.0
        for c in candidates:
            if c.distance(remaining) > new_range_m:
                continue
            gain = remaining.intersection(c.buffer(new_range_m, 32)).length
            if gain > best_gain + 1e-6:
                best, best_gain = c, gain
        if best is None or best_gain < 1.0:
            break
        lat, lon = proj.to_latlon(best.x, best.y)
        suggestions.append(Suggestion(lat, lon, round(best_gain, 1)))
        remaining = remaining.difference(best.buffer(new_range_m, 32))

    def ring(poly: BaseGeometry) -> list[list[tuple[float, float]]]:
        polys = [poly] if isinstance(poly, Polygon) else list(getattr(poly, "geoms", []))
        return [[proj.to_latlon(x, y) for x, y in p.exterior.coords] for p in polys if not p.is_empty]

    return Coverage(
        road_m=road_m,
        covered_m=road_m - float(uncovered.length),
        station_areas=[r for a in areas for r in ring(a)],
        uncovered=[[proj.to_latlon(x, y) for x, y in line.coords] for line in _lines(uncovered)],
        suggestions=suggestions,
        station_road_m={s.station_id: float(network.intersection(a).length) for s, a in zip(sites, areas, strict=True)},
    )
