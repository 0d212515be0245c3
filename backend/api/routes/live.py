"""The live feed: server-sent events of alarm changes."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from backend import alarms
from backend.accounts import User
from backend.api.deps import allow

router = APIRouter(prefix="/api", tags=["live"])


@router.get("/live")
async def live(request: Request, user: Annotated[User, allow("police", "admin", "installer")]) -> StreamingResponse:
    """Police, admin: alarm changes as they happen (`event: alarm`, data: the alarm as in /api/alarms/{id}).
    Installer: those of alarms about stations."""
    scope = alarms.INSTALLERS if user.role == "installer" else alarms.POLICE
    return StreamingResponse(
        request.app.state.live.events(scope),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
