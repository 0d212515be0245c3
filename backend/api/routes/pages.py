"""The web pages."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.encoders import jsonable_encoder
from fastapi.responses import HTMLResponse

from backend import alarms, stations
from backend.api.deps import Conn, Settings
from maps.live import build_live_map

router = APIRouter(tags=["pages"])


@router.get("/", response_class=HTMLResponse)
async def live_map(conn: Conn, settings: Settings) -> str:
    """The live map: stations, recent passages, active alarms with their trails."""
    return build_live_map(
        jsonable_encoder(await stations.list_stations(conn)),
        await stations.roads_geojson(conn),
        jsonable_encoder(await stations.activity(conn, 10)),
        jsonable_encoder(await alarms.list_alarms(conn)),
        tile_url=settings.tile_url,
        tile_attribution=settings.tile_attribution,
    )
