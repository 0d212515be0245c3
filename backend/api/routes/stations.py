"""Stations: list, create/update, recent activity; the road map."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from backend import stations
from backend.accounts import User
from backend.api.deps import Conn, allow
from backend.api.schemas import RoadsCreate, StationActivity, StationCreate, StationPublic

router = APIRouter(prefix="/api", tags=["stations"])
Viewer = Annotated[User, allow("police", "installer", "admin")]
Installer = Annotated[User, allow("installer", "admin")]


@router.get("/stations", response_model=list[StationPublic])
async def list_stations(conn: Conn, _user: Viewer) -> list[dict[str, Any]]:
    """Police, installer, admin: every station with its online/offline state."""
    return await stations.list_stations(conn)


@router.put("/stations", status_code=200)
async def upsert_stations(body: list[StationCreate], conn: Conn, _user: Installer) -> dict[str, int]:
    """Installer, admin: create or update stations."""
    return {"stations": await stations.upsert_stations(conn, [s.model_dump() for s in body])}


@router.get("/stations/activity", response_model=list[StationActivity])
async def station_activity(conn: Conn, _user: Viewer, minutes: int = Query(10, ge=1, le=1440)) -> list[dict[str, Any]]:
    """Police, installer, admin: passages per station in the last N minutes."""
    return await stations.activity(conn, minutes)


@router.get("/roads")
async def get_roads(conn: Conn, _user: Viewer) -> dict[str, Any]:
    """Police, installer, admin: the road network as GeoJSON."""
    return await stations.roads_geojson(conn)


@router.put("/roads")
async def put_roads(body: RoadsCreate, conn: Conn, _user: Installer) -> dict[str, int]:
    """Installer, admin: replace the road network (a GeoJSON FeatureCollection of LineStrings)."""
    return {"roads": await stations.replace_roads(conn, body.model_dump(mode="json"))}
