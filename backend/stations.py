"""Stations as the backend knows them: position, latest status, recent passages; and the road map."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb


async def upsert_stations(conn: psycopg.AsyncConnection[Any], stations: list[dict[str, Any]]) -> int:
    """Create or update stations by id (name and position)."""
    async with conn.cursor() as cur:
        await cur.executemany(
            "INSERT INTO stations (station_id, name, lat, lon) VALUES (%(station_id)s, %(name)s, %(lat)s, %(lon)s)"
            " ON CONFLICT (station_id) DO UPDATE SET name = excluded.name, lat = excluded.lat, lon = excluded.lon",
            stations,
        )
    return len(stations)


async def list_stations(conn: psycopg.AsyncConnection[Any]) -> list[dict[str, Any]]:
    """Every station with its state: online/offline from its retained status, unknown if never heard."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT s.station_id, s.name, s.lat, s.lon, coalesce(st.state, 'unknown') AS state,"
            " st.received_at AS last_status_at, st.payload AS status"
            " FROM stations s LEFT JOIN station_status st USING (station_id) ORDER BY s.station_id"
        )
        return await cur.fetchall()


async def activity(conn: psycopg.AsyncConnection[Any], minutes: int) -> list[dict[str, Any]]:
    """Passages per station in the last `minutes` (counts only: no tag is named)."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT s.station_id, count(x.tag_id) AS passages FROM stations s"
            " LEFT JOIN sightings x ON x.station_id = s.station_id"
            "  AND x.first_seen_at >= now() - make_interval(mins => %s)"
            " GROUP BY s.station_id ORDER BY s.station_id",
            (minutes,),
        )
        return await cur.fetchall()


async def replace_roads(conn: psycopg.AsyncConnection[Any], roads: dict[str, Any]) -> int:
    """Replace the road network with a GeoJSON FeatureCollection of LineStrings."""
    features = roads.get("features", [])
    async with conn.transaction():
        await conn.execute("DELETE FROM roads")
        async with conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO roads (name, geometry) VALUES (%s, %s)",
                [((f.get("properties") or {}).get("name"), Jsonb(f["geometry"])) for f in features],
            )
    return len(features)


async def roads_geojson(conn: psycopg.AsyncConnection[Any]) -> dict[str, Any]:
    """The road network as a GeoJSON FeatureCollection."""
    cur = await conn.execute("SELECT name, geometry FROM roads ORDER BY road_id")
    return {
        "type": "FeatureCollection",
        "features": [
            {"type": "Feature", "properties": {"name": name}, "geometry": geometry}
            for name, geometry in await cur.fetchall()
        ],
    }
