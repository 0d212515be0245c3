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
async def live(request: Request, _user: Annotated[User, allow("police", "admin")]) -> StreamingResponse:
    """Police, admin: alarm changes as they happen (`event: alarm`, data: the alarm as in /api/alarms/{id})."""
    return StreamingResponse(
        request.app.state.live.events(hidden_kinds=alarms.OWNER_ONLY_KINDS),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
