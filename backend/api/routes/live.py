"""The live feed: server-sent events of alarm changes."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

router = APIRouter(prefix="/api", tags=["live"])


@router.get("/live")
async def live(request: Request) -> StreamingResponse:
    """Alarm changes as they happen (`event: alarm`, data: the alarm as in /api/alarms/{id})."""
    return StreamingResponse(
        request.app.state.live.events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
