"""Alarms: the queue, one alarm, acknowledge, assign and clear.

Police and admins see every alarm except an armed bike moving (that shows where a bike that is not
stolen is), and one about a bike not reported stolen by its kind and station only: its plate, chip and trail
need a case number (audited); an owner sees the alarms of their own bikes raised since they hold them; an installer sees
the alarms about stations (no personal data).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query

from backend.access import alarm_scope, viewer_of
from backend.accounts import User
from backend.alarms import queries, store
from backend.api.deps import Conn, allow
from backend.api.schemas import AlarmAssign, AlarmPublic

router = APIRouter(prefix="/api/alarms", tags=["alarms"])
AlarmId = Annotated[int, Path(ge=1, le=2**63 - 1)]
Viewer = Annotated[User, allow("police", "admin", "owner", "installer")]

_STATES = {
    "open": ("active", "acknowledged"),
    "active": ("active",),
    "acknowledged": ("acknowledged",),
    "cleared": ("cleared",),
}


@router.get("", response_model=list[AlarmPublic])
async def list_alarms(
    conn: Conn,
    user: Viewer,
    state: Literal["open", "active", "acknowledged", "cleared"] = "open",
    limit: int = Query(200, ge=1, le=1000),
) -> list[dict[str, Any]]:
    """Police, admin: alarms in a state (default: not yet cleared), latest first. Owner: those of their bikes.
    Installer: those about stations."""
    return await queries.list_alarms(conn, _STATES[state], limit, alarm_scope(user))


@router.get("/{alarm_id}", response_model=AlarmPublic, responses={403: {"description": "case number malformed"}})
async def get_alarm(
    alarm_id: AlarmId, conn: Conn, user: Viewer, case_number: str | None = Query(None, max_length=40)
) -> dict[str, Any]:
    """Police, admin: one alarm with its trail; about a bike not reported stolen, its plate, chip and trail only
    with a case number (audited). Owner: one of their bikes' alarms. Installer: a station's."""
    viewer = viewer_of(user)
    scope, case = viewer.open_alarm_scope(case_number)
    alarm = await queries.get_alarm(conn, alarm_id, scope=scope)
    await viewer.alarm_opened(conn, alarm, case)
    return alarm


async def _transition(conn: Conn, user: User, alarm_id: int, action: str) -> dict[str, Any]:
    alarm = await queries.get_alarm(conn, alarm_id, scope=alarm_scope(user))
    if not viewer_of(user).may_handle_alarm(alarm["kind"]):
        raise HTTPException(403, "only the police deal with this alarm")
    await store.transition(conn, alarm_id, action, user.display_name or user.username)
    return await queries.get_alarm(conn, alarm_id, scope=alarm_scope(user))


@router.post("/{alarm_id}/acknowledge", response_model=AlarmPublic)
async def acknowledge(alarm_id: AlarmId, conn: Conn, user: Viewer) -> dict[str, Any]:
    """Police, admin: take the alarm (recorded under the signed-in name). Owner: their armed-bike alarm.
    Installer: a station's alarm."""
    return await _transition(conn, user, alarm_id, "acknowledge")


@router.post("/{alarm_id}/clear", response_model=AlarmPublic)
async def clear(alarm_id: AlarmId, conn: Conn, user: Viewer) -> dict[str, Any]:
    """Police, admin: the alarm is dealt with. Owner: their armed-bike alarm ("it was me"). Installer: a
    station's alarm (a station still offline is not alarmed again for the same outage)."""
    return await _transition(conn, user, alarm_id, "clear")


@router.post("/{alarm_id}/assign", response_model=AlarmPublic)
async def assign(
    alarm_id: AlarmId, body: AlarmAssign, conn: Conn, user: Annotated[User, allow("police", "admin")]
) -> dict[str, Any]:
    """Police, admin: hand an open alarm to someone (recorded with who did it and when)."""
    await queries.get_alarm(conn, alarm_id, scope=alarm_scope(user))
    await store.assign(conn, alarm_id, body.assignee.strip(), user.display_name or user.username)
    return await queries.get_alarm(conn, alarm_id, scope=alarm_scope(user))
