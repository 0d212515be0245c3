"""Stations: list, create/update, recent activity, commissioning self-tests (also live); the road map."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from backend import audit, selftests, station_health, stations
from backend.accounts import User
from backend.api.deps import Conn, Reads, Token, allow
from backend.api.schemas import (
    RoadsCreate,
    StationActivity,
    StationCreate,
    StationDetail,
    StationHealth,
    StationLifecycleChange,
    StationPublic,
    StationRegister,
    StationUpdate,
    VendorDeviceRegister,
)
from backend.api.streams import event_stream
from protocol.ids import STATION_ID_PATTERN
from protocol.messages import utcnow

router = APIRouter(prefix="/api", tags=["stations"])
Staff = Annotated[User, allow("police", "installer", "admin")]
Installer = Annotated[User, allow("installer", "admin")]
StationId = Annotated[str, Path(pattern=STATION_ID_PATTERN)]


class SelfTestStepPublic(BaseModel):
    """One step of a self-test run as the station reported it; warn passed, but has advice."""

    seq: int
    name: str
    title: str
    status: Literal["pass", "warn", "fail", "skip"]
    message: str
    advice: str
    rssi_dbm: int | None
    noise_floor_dbm: int | None
    elapsed_s: float
    at: datetime
    received_at: datetime


class SelfTestRunPublic(BaseModel):
    """A self-test run: its steps so far and, once its summary came, the result (passed when no step failed)."""

    station_id: str
    run_id: str
    started_at: datetime
    received_at: datetime
    result: Literal["passed", "failed"] | None
    finished_at: datetime | None
    steps_total: int | None
    counts: dict[str, int] | None
    steps: list[SelfTestStepPublic]


@router.get("/stations", response_model=list[StationPublic])
async def list_stations(conn: Conn, _user: Staff) -> list[dict[str, Any]]:
    """Police, installer, admin: every station with its online/offline state."""
    return await stations.list_stations(conn)


@router.put("/stations", status_code=200)
async def upsert_stations(body: list[StationCreate], conn: Conn, _user: Installer) -> dict[str, int]:
    """Installer, admin: create or update stations (name and position); new ones are registered as active."""
    return {"stations": await stations.upsert_stations(conn, [s.model_dump() for s in body], _user.actor)}


@router.post("/stations", status_code=201, response_model=StationDetail)
async def register_station(body: StationRegister, conn: Conn, user: Installer) -> dict[str, Any]:
    """Installer, admin: register a new station as planned, with its mounting and radio settings."""
    return await stations.register_station(conn, body.model_dump(), user.actor)


@router.get("/stations/activity", response_model=list[StationActivity])
async def station_activity(reads: Reads, _user: Staff, minutes: int = Query(10, ge=1, le=1440)) -> list[dict[str, Any]]:
    """Police, installer, admin: passages per station in the last N minutes."""
    return await stations.activity(reads, minutes)


@router.get("/stations/health", response_model=list[StationHealth])
async def health(conn: Conn, _user: Staff) -> list[dict[str, Any]]:
    """Police, installer, admin: every station in service: online, offline or degraded, spool and noise floor."""
    return await station_health.station_health(conn, utcnow())


@router.get("/stations/{station_id}", response_model=StationDetail)
async def get_station(station_id: StationId, conn: Conn, _user: Staff) -> dict[str, Any]:
    """Police, installer, admin: one station's registry record, state and life-cycle history."""
    return await stations.get_station(conn, station_id)


@router.patch("/stations/{station_id}", response_model=StationDetail)
async def update_station(station_id: StationId, body: StationUpdate, conn: Conn, _user: Installer) -> dict[str, Any]:
    """Installer, admin: change a station's address, mounting, radio settings or heartbeat interval."""
    return await stations.update_station(conn, station_id, body.model_dump(exclude_unset=True))


@router.post("/stations/{station_id}/lifecycle", response_model=StationDetail)
async def change_lifecycle(
    station_id: StationId, body: StationLifecycleChange, conn: Conn, user: Installer
) -> dict[str, Any]:
    """Installer, admin: move a station one step forward in its life cycle, or decommission it (409 otherwise)."""
    return await stations.change_lifecycle(conn, station_id, body.state, user.actor, body.note)


@router.put("/stations/{station_id}/vendor-device", response_model=StationDetail)
async def set_vendor_device(
    station_id: StationId, body: VendorDeviceRegister, conn: Conn, user: Installer
) -> dict[str, Any]:
    """Installer, admin: register or replace the vendor device the station is (protocol, device id, time zone);
    409 when another station has the device id."""
    station = await stations.set_vendor_device(conn, station_id, body.protocol, body.device_id, body.time_zone)
    await audit.record(
        conn,
        user,
        "station.vendor_device_set",
        f"station:{station_id}",
        protocol=body.protocol,
        device_id=body.device_id,
        time_zone=body.time_zone,
    )
    return station


@router.delete("/stations/{station_id}/vendor-device", response_model=StationDetail)
async def remove_vendor_device(station_id: StationId, conn: Conn, user: Installer) -> dict[str, Any]:
    """Installer, admin: the station is no longer a vendor device (its [[device]] block leaves the bridge's devices
    file too)."""
    removed = await stations.remove_vendor_device(conn, station_id)
    await audit.record(conn, user, "station.vendor_device_remove", f"station:{station_id}", device_id=removed)
    return await stations.get_station(conn, station_id)


@router.get("/stations/{station_id}/selftests", response_model=list[SelfTestRunPublic])
async def selftest_runs(
    station_id: StationId, conn: Conn, _user: Installer, limit: int = Query(5, ge=1, le=50)
) -> list[dict[str, Any]]:
    """Installer, admin: the station's latest commissioning self-test runs, newest first, with their steps."""
    return await selftests.latest_runs(conn, station_id, limit)


@router.get("/stations/{station_id}/selftests/live")
async def selftest_live(
    station_id: StationId, request: Request, conn: Conn, token: Token, _user: Installer
) -> StreamingResponse:
    """Installer, admin: the station's self-tests as they run, as server-sent events: `ready` (listening: load
    the runs so far now), `step` and `run` (as in /selftests), `station` (its record, when its life cycle
    changed); `signed-out` when the session ends."""
    await stations.get_station(conn, station_id)  # 404 for a station that does not exist
    settings = request.app.state.settings
    events = selftests.live_events(settings.database_url, request.app.state.pool, station_id, settings.live_keepalive_s)
    return event_stream(request, events, token)


@router.get("/roads")
async def get_roads(conn: Conn, _user: Staff) -> dict[str, Any]:
    """Police, installer, admin: the road network as GeoJSON."""
    return await stations.roads_geojson(conn)


@router.put("/roads")
async def put_roads(body: RoadsCreate, conn: Conn, _user: Installer) -> dict[str, int]:
    """Installer, admin: replace the road network (a GeoJSON FeatureCollection of LineStrings)."""
    return {"roads": await stations.replace_roads(conn, body.model_dump(mode="json"))}
