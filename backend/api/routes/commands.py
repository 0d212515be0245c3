"""Commands to stations: signed with the hot-list key, published to the station's commands topic, audited."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel

from backend import audit, commands, stations
from backend.api.deps import Conn
from backend.api.routes.stations import Installer, StationId
from protocol.messages import CommandName

router = APIRouter(prefix="/api/stations", tags=["stations"])


class StationCommandSent(BaseModel):
    """A command published to a station: the station acts on it if it arrives before `expires_at` (its metrics and,
    for `status`, its status say it did)."""

    station_id: str
    name: CommandName
    seq: int
    issued_at: datetime
    expires_at: datetime


@router.post("/{station_id}/commands/{name}", status_code=202, response_model=StationCommandSent)
async def send_command(
    station_id: StationId, name: CommandName, conn: Conn, user: Installer, request: Request
) -> dict[str, Any]:
    """Installer, admin: tell a station to publish its status now (`status`) or to send every sightings batch the
    backend has not confirmed again now (`resend`)."""
    await stations.get_station(conn, station_id)  # 404 for a station that does not exist
    settings = request.app.state.settings
    command = await commands.issue_command(conn, station_id, name, settings.station_command_ttl_s)
    await audit.record(conn, user, "station.command", f"station:{station_id}", command=name, seq=command.seq)
    # Committed first: no command leaves without its audit record.
    await conn.commit()
    request.app.state.publisher.publish_command(command)
    return command.model_dump(include={"station_id", "name", "seq", "issued_at", "expires_at"})
