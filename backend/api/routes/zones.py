"""Zones (backend.zones.registry): named polygons police and admins draw on the map; a stolen bike's alarm says when
it crosses their borders. Only police and admins see or change them."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Self

from fastapi import APIRouter, Path, Response
from pydantic import BaseModel, Field, model_validator

from backend.accounts import User
from backend.api.deps import Conn, allow
from backend.zones import registry

router = APIRouter(prefix="/api/zones", tags=["zones"])
ZoneId = Annotated[int, Path(ge=1, le=2**63 - 1)]
Commander = Annotated[User, allow("police", "admin")]
# The polygon's own checks (closed, not crossing itself, a sane size) are backend.zones.registry's, with clear words.
Geometry = Annotated[
    dict[str, Any], Field(description='GeoJSON {"type": "Polygon", "coordinates": [[[lon, lat], ...]]}')
]


class ZoneCreate(BaseModel):
    """A new zone: its name and its border."""

    name: str = Field(max_length=200)
    geometry: Geometry


class ZoneUpdate(BaseModel):
    """A new name, a new border, or both."""

    name: str | None = Field(None, max_length=200)
    geometry: Geometry | None = None

    @model_validator(mode="after")
    def _something(self) -> Self:
        if self.name is None and self.geometry is None:
            raise ValueError("give a new name, a new border (geometry), or both")
        return self


class ZonePublic(BaseModel):
    """A zone as stored."""

    zone_id: int
    name: str
    geometry: dict[str, Any]
    created_by: str
    created_at: datetime
    updated_by: str
    updated_at: datetime


@router.get("", response_model=list[ZonePublic])
async def list_zones(conn: Conn, _user: Commander) -> list[dict[str, Any]]:
    """Police, admin: every zone, by name."""
    return await registry.list_zones(conn)


@router.post("", response_model=ZonePublic, status_code=201)
async def create_zone(body: ZoneCreate, conn: Conn, user: Commander) -> dict[str, Any]:
    """Police, admin: draw a zone (audited); 422 says what is wrong with its border, 409 when its name is taken."""
    return await registry.create_zone(conn, user, body.name, body.geometry)


@router.put("/{zone_id}", response_model=ZonePublic)
async def update_zone(zone_id: ZoneId, body: ZoneUpdate, conn: Conn, user: Commander) -> dict[str, Any]:
    """Police, admin: rename a zone or move its border (audited)."""
    return await registry.update_zone(conn, user, zone_id, body.name, body.geometry)


@router.delete("/{zone_id}", status_code=204)
async def delete_zone(zone_id: ZoneId, conn: Conn, user: Commander) -> Response:
    """Police, admin: remove a zone (audited); crossings recorded with it keep its name."""
    await registry.delete_zone(conn, user, zone_id)
    return Response(status_code=204)
