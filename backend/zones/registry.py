"""Zones: named polygons commanders draw on the map, checked before they are stored; every change is audited and
bumps the zones' revision, so cached copies (backend.zones.crossings.ZoneCache) reload."""

from __future__ import annotations

import math
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from shapely.geometry import Polygon
from shapely.validation import explain_validity

from backend import audit
from backend.accounts import User

MAX_VERTICES = 500
# A bridge is a few hundred square metres; a county rarely more than a few thousand square kilometres.
MIN_AREA_M2 = 100.0
MAX_AREA_KM2 = 50_000.0
MAX_NAME_CHARS = 80
_M_PER_DEGREE = 111_320.0

_COLUMNS = "zone_id, name, geometry, created_by, created_at, updated_by, updated_at"


class ZoneError(Exception):
    """Base of zone errors; `field` names the input, `code` the refusal (words in both languages: zones_err_*),
    `params` the values in its message."""

    def __init__(self, message: str, field: str | None = None, code: str | None = None, **params: str | int) -> None:
        super().__init__(message)
        self.field = field
        self.code = code
        self.params = params


class InvalidZone(ZoneError):
    """A name or polygon that cannot be a zone (open, self-intersecting, too small or too large, ...)."""


class ZoneNotFound(ZoneError):
    """No zone with that id."""


class ZoneExists(ZoneError):
    """Another zone already has that name."""


def clean_name(name: str) -> str:
    """The name as stored (trimmed); refuses an empty or overlong one."""
    name = " ".join(name.split())
    if not name:
        raise InvalidZone("a zone needs a name", "name", "zones_err_name_empty")
    if len(name) > MAX_NAME_CHARS:
        raise InvalidZone(f"a zone's name has at most {MAX_NAME_CHARS} characters", "name", "zones_err_name_long")
    return name


def _ring(geometry: Any) -> list[tuple[float, float]]:
    """The polygon's one ring of (lon, lat) from GeoJSON, with its shape (not yet its geometry) checked."""
    if not isinstance(geometry, dict) or geometry.get("type") != "Polygon":
        raise InvalidZone("the zone must be a GeoJSON Polygon", "geometry", "zones_err_not_polygon")
    rings = geometry.get("coordinates")
    if not isinstance(rings, list) or len(rings) != 1 or not isinstance(rings[0], list):
        raise InvalidZone("the polygon must have exactly one ring (no holes)", "geometry", "zones_err_one_ring")
    ring: list[tuple[float, float]] = []
    for point in rings[0]:
        ok = isinstance(point, list) and len(point) == 2
        ok = ok and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in point)
        if not ok or not (-180 <= point[0] <= 180 and -90 <= point[1] <= 90):
            raise InvalidZone(
                f"a vertex must be [longitude, latitude] on the earth, not {str(point)[:40]}",
                "geometry",
                "zones_err_vertex",
            )
        ring.append((float(point[0]), float(point[1])))
    return ring


def _area_m2(polygon: Polygon) -> float:
    """The polygon's area, on a plane fitted at its latitude (good to a fraction of a percent at county scale)."""
    lat = math.radians(polygon.centroid.y)
    return float(polygon.area) * _M_PER_DEGREE**2 * math.cos(lat)


def check_polygon(geometry: Any) -> dict[str, Any]:
    """The GeoJSON polygon as stored, if it can be a zone: closed, 3 to MAX_VERTICES corners, not crossing itself,
    between MIN_AREA_M2 and MAX_AREA_KM2; else InvalidZone saying what is wrong."""
    ring = _ring(geometry)
    if len(ring) < 4 or ring[0] != ring[-1]:
        raise InvalidZone(
            "the ring must be closed (its last vertex repeats its first) with at least three corners",
            "geometry",
            "zones_err_not_closed",
        )
    corners = len(ring) - 1
    if corners > MAX_VERTICES:
        raise InvalidZone(
            f"a zone has at most {MAX_VERTICES} corners, not {corners}", "geometry", "zones_err_vertices", n=corners
        )
    polygon = Polygon(ring)
    if not polygon.is_valid:
        raise InvalidZone(
            f"the border crosses itself or doubles back ({explain_validity(polygon)})",
            "geometry",
            "zones_err_self_intersecting",
        )
    area_m2 = _area_m2(polygon)
    if area_m2 < MIN_AREA_M2:
        raise InvalidZone(
            f"the zone is too small ({area_m2:.0f} m², at least {MIN_AREA_M2:.0f})", "geometry", "zones_err_small"
        )
    if area_m2 > MAX_AREA_KM2 * 1e6:
        raise InvalidZone(
            f"the zone is too large ({area_m2 / 1e6:.0f} km², at most {MAX_AREA_KM2:.0f})",
            "geometry",
            "zones_err_large",
        )
    return {"type": "Polygon", "coordinates": [[[lon, lat] for lon, lat in ring]]}


async def list_zones(conn: psycopg.AsyncConnection[Any]) -> list[dict[str, Any]]:
    """Every zone, by name."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(f"SELECT {_COLUMNS} FROM zones ORDER BY lower(name), zone_id")
        return await cur.fetchall()


async def _bump(conn: psycopg.AsyncConnection[Any]) -> None:
    await conn.execute("UPDATE zones_revision SET revision = revision + 1")


async def _write(conn: psycopg.AsyncConnection[Any], sql: str, params: tuple[Any, ...], name: str) -> dict[str, Any]:
    try:
        async with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(sql, params)
            row = await cur.fetchone()
            if row is not None:
                await _bump(conn)
    except psycopg.errors.UniqueViolation as exc:
        raise ZoneExists(f"a zone named {name!r} exists already", "name", "zones_err_exists", name=name) from exc
    if row is None:
        raise ZoneNotFound(f"no zone {params[-1]}", "zone_id", "zones_err_not_found")
    return row


async def create_zone(conn: psycopg.AsyncConnection[Any], user: User, name: str, geometry: Any) -> dict[str, Any]:
    """A new zone, audited; InvalidZone or ZoneExists when it cannot be."""
    name, shape = clean_name(name), check_polygon(geometry)
    async with conn.transaction():  # the audit record commits with the change, or neither does
        zone = await _write(
            conn,
            f"INSERT INTO zones (name, geometry, created_by, updated_by) VALUES (%s, %s, %s, %s) RETURNING {_COLUMNS}",
            (name, Jsonb(shape), user.username, user.username),
            name,
        )
        await audit.record(conn, user, "zone.create", f"zone:{zone['zone_id']}", None, name=name)
    return zone


async def update_zone(
    conn: psycopg.AsyncConnection[Any], user: User, zone_id: int, name: str | None, geometry: Any | None
) -> dict[str, Any]:
    """Rename a zone and/or move its border, audited."""
    new_name = None if name is None else clean_name(name)
    shape = None if geometry is None else Jsonb(check_polygon(geometry))
    async with conn.transaction():
        zone = await _write(
            conn,
            "UPDATE zones SET name = coalesce(%s, name), geometry = coalesce(%s, geometry), updated_by = %s,"
            f" updated_at = now() WHERE zone_id = %s RETURNING {_COLUMNS}",
            (new_name, shape, user.username, zone_id),
            new_name or "",
        )
        await audit.record(
            conn, user, "zone.update", f"zone:{zone_id}", None, name=zone["name"], border_moved=geometry is not None
        )
    return zone


async def delete_zone(conn: psycopg.AsyncConnection[Any], user: User, zone_id: int) -> None:
    """Remove a zone (crossings recorded with it keep its name), audited."""
    async with conn.transaction():
        cur = await conn.execute("DELETE FROM zones WHERE zone_id = %s RETURNING name", (zone_id,))
        row = await cur.fetchone()
        if row is None:
            raise ZoneNotFound(f"no zone {zone_id}", "zone_id", "zones_err_not_found")
        await _bump(conn)
        await audit.record(conn, user, "zone.delete", f"zone:{zone_id}", None, name=row[0])
