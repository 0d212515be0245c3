"""Station MQTT credentials: issue (or rotate) a station's password, shown once; who issued which when."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel

from backend import audit, provisioning
from backend.api.deps import Conn
from backend.api.routes.stations import Installer, StationId

router = APIRouter(prefix="/api/stations", tags=["stations"])


class StationCredentialsPublic(BaseModel):
    """A station's new MQTT user and password; the password is in this response only."""

    station_id: str
    username: str
    password: str
    issued_at: datetime
    # BIKEGUARD_GATEWAY_HOTLIST_PUBLIC_KEY: the station takes only hot lists signed with its private half.
    hotlist_public_key: str
    # For a vendor station: its [[device]] block for the bridge's devices file, with the password; the broker's
    # address in it is provisioning.BROKER_PLACEHOLDER for the installer to fill in. None for our own stations.
    bridge_device_entry: str | None = None


class StationCredentialRecord(BaseModel):
    """One password a station was given: who issued it when, and who revoked it when (never the password)."""

    issued_by: str
    issued_at: datetime
    revoked_by: str | None
    revoked_at: datetime | None


@router.post("/{station_id}/credentials", status_code=201, response_model=StationCredentialsPublic)
async def issue_credentials(
    station_id: StationId, conn: Conn, user: Installer, request: Request, response: Response
) -> dict[str, Any]:
    """Installer, admin: a new MQTT password for the station, replacing its previous one (shown only here), the
    backend's hot-list public key and, for a vendor station, its [[device]] block for the bridge's devices file."""
    issued = await provisioning.issue_credentials(conn, station_id, user.actor)
    await audit.record(conn, user, "station.credentials_issue", f"station:{station_id}")
    response.headers["Cache-Control"] = "no-store"
    return {
        "station_id": issued.station_id,
        "username": issued.username,
        "password": issued.password,
        "issued_at": issued.issued_at,
        "hotlist_public_key": request.app.state.settings.hotlist_public_key,
        "bridge_device_entry": provisioning.bridge_device_entry(issued, provisioning.BROKER_PLACEHOLDER),
    }


@router.get("/{station_id}/credentials", response_model=list[StationCredentialRecord])
async def credential_history(station_id: StationId, conn: Conn, _user: Installer) -> list[dict[str, Any]]:
    """Installer, admin: who issued and revoked the station's MQTT passwords, and when (newest first)."""
    return await provisioning.credential_history(conn, station_id)
