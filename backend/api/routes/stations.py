"""Stations: list, create/update, recent activity; the road map."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query

from backend import stations
from backend.api.deps import Conn
from backend.api.schemas import StationActivity, StationCreate, StationPublic

router = APIRouter(prefix="/api", tags=["stations"])


@router.get("/stations", response_model=list[StationPublic])
async def list_stations(conn: Conn) -> list[dict[str, Any]]:
    """Every station with its online/offline state."""
    return await stations.list_stations(conn)


@router.put("/stations", status_code=200)
async def upsert_stations(body: list[StationCreate], conn: Conn) -> dict[str, int]:
    """Create or update stations."""
    return {"stations": await stations.upsert_stations(conn, [s.model_dump() for s in body])}


@router.get("/stations/activity", response_model=list[StationActivity])
async def station_activity(conn: Conn, minutes: int = Query(10, ge=1, le=1440)) -> list[dict[str, Any]]:
    """Passages per station in the last N minutes."""
    return await stations.activity(conn, minutes)


@router.get("/roads")
async def get_roads(conn: Conn) -> dict[str, Any]:
    """The road network as GeoJSON."""
    return await stations.roads_geojson(conn)


@router.put("/roads")
async def put_roads(body: dict[str, Any], conn: Conn) -> dict[str, int]:
    """Replace the road network (a GeoJSON FeatureCollection of LineStrings)."""
    return {"roads": await stations.replace_roads(conn, body)}
