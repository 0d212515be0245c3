"""Bikes (minimal registry): register, look up, report stolen, mark recovered."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from backend import registry
from backend.api.deps import Conn
from backend.api.schemas import BikeCreate, BikePublic, TheftReportCreate
from protocol.messages import parse_tag

router = APIRouter(prefix="/api/bikes", tags=["bikes"])


@router.post("", response_model=BikePublic, status_code=201)
async def register_bike(body: BikeCreate, conn: Conn) -> dict[str, Any]:
    """Register an owner's bike with its chip."""
    return await registry.register_bike(
        conn, body.owner_name, body.plate, parse_tag(body.tag_id), body.brand, body.colour
    )


@router.get("/{plate}", response_model=BikePublic)
async def get_bike(plate: str, conn: Conn) -> dict[str, Any]:
    """A bike by plate."""
    return await registry.get_bike(conn, plate)


@router.post("/{plate}/theft", response_model=BikePublic, status_code=201)
async def report_stolen(plate: str, body: TheftReportCreate, conn: Conn, request: Request) -> dict[str, Any]:
    """Report the bike stolen: its chip goes on the hot list at once."""
    bike = await registry.report_stolen(
        conn, plate, body.stolen_at, body.place, body.circumstances, body.police_report
    )
    await conn.commit()
    await request.app.state.publish_hotlist()
    return bike


@router.post("/{plate}/recovered", response_model=BikePublic)
async def mark_recovered(plate: str, conn: Conn, request: Request) -> dict[str, Any]:
    """The bike is back: its chip leaves the hot list."""
    bike = await registry.mark_recovered(conn, plate)
    await conn.commit()
    await request.app.state.publish_hotlist()
    return bike
