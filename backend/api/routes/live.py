"""The live feed: server-sent events of alarm changes."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from backend.access import alarm_scope
from backend.accounts import User
from backend.api.deps import Token, allow
from backend.api.streams import event_stream

router = APIRouter(prefix="/api", tags=["live"])


@router.get("/live")
async def live(
    request: Request, token: Token, user: Annotated[User, allow("police", "admin", "installer")]
) -> StreamingResponse:
    """Police, admin: alarm changes as they happen (`event: alarm`, data: the alarm as in /api/alarms/{id}).
    Installer: those of alarms about stations. Ends with `event: signed-out` when the session does."""
    scope = alarm_scope(user)
    keepalive_s = request.app.state.settings.live_keepalive_s
    return event_stream(request, request.app.state.live.events(scope, keepalive_s), token)
