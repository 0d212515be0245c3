"""Alarms: the queue, one alarm, acknowledge and clear."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Query

from backend import alarms
from backend.api.deps import Conn
from backend.api.schemas import AlarmAction, AlarmPublic

router = APIRouter(prefix="/api/alarms", tags=["alarms"])

_STATES = {"open": ("active", "acknowledged"), "active": ("active",), "acknowledged": ("acknowledged",),
           "cleared": ("cleared",)}


@router.get("", response_model=list[AlarmPublic])
async def list_alarms(
    conn: Conn, state: Literal["open", "active", "acknowledged", "cleared"] = "open",
    limit: int = Query(200, ge=1, le=1000),
) -> list[dict[str, Any]]:
    """Alarms in a state (default: not yet cleared), most recently seen first."""
    return await alarms.list_alarms(conn, _STATES[state], limit)


@router.get("/{alarm_id}", response_model=AlarmPublic)
async def get_alarm(alarm_id: int, conn: Conn) -> dict[str, Any]:
    """One alarm with its trail."""
    return await alarms.get_alarm(conn, alarm_id)


@router.post("/{alarm_id}/acknowledge", response_model=AlarmPublic)
async def acknowledge(alarm_id: int, body: AlarmAction, conn: Conn) -> dict[str, Any]:
    """An officer takes the alarm."""
    await alarms.transition(conn, alarm_id, "acknowledge", body.by)
    return await alarms.get_alarm(conn, alarm_id)


@router.post("/{alarm_id}/clear", response_model=AlarmPublic)
async def clear(alarm_id: int, body: AlarmAction, conn: Conn) -> dict[str, Any]:
    """The alarm is dealt with."""
    await alarms.transition(conn, alarm_id, "clear", body.by)
    return await alarms.get_alarm(conn, alarm_id)
