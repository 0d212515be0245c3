"""Sightings: passages by tag or by station over a time range, as far as the caller may see them.

Police see a stolen bike's passages since the theft; anything else (another tag, a station's traffic)
needs a case number and is audited. An owner sees their own chip's passages since they hold the bike.
backend.access decides which part of the time range the caller may see.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query

from backend import trajectories
from backend.access import viewer_of
from backend.accounts import User
from backend.api.deps import Conn, Reads, Settings, allow
from backend.api.schemas import ApiTime, SightingPublic
from protocol.ids import TAG_ID_ANY_CASE_PATTERN
from protocol.messages import parse_tag, utcnow

router = APIRouter(prefix="/api", tags=["sightings"])


@router.get(
    "/sightings",
    response_model=list[SightingPublic],
    responses={403: {"description": "case number needed"}, 404: {"description": "not the owner's chip"}},
)
async def list_sightings(
    conn: Conn,
    reads: Reads,
    settings: Settings,
    user: Annotated[User, allow("police", "owner")],
    tag_id: str | None = Query(None, description="8 hex digits", pattern=TAG_ID_ANY_CASE_PATTERN),
    station_id: str | None = Query(None, max_length=64),
    since: ApiTime | None = None,
    until: ApiTime | None = None,
    case_number: str | None = Query(None, max_length=40),
    limit: int = Query(500, ge=1, le=10_000),
) -> list[dict[str, Any]]:
    """Police, owner: passages of one tag or at one station, newest first (default: the last hour)."""
    if tag_id is None and station_id is None:
        raise HTTPException(422, "give tag_id or station_id")
    until_at: datetime = until or utcnow()
    since_at: datetime = since or until_at - timedelta(hours=1)
    since_at, until_at = await viewer_of(user, settings).passages_window(
        conn, tag_id, station_id, since_at, until_at, case_number
    )
    tag = parse_tag(tag_id) if tag_id is not None else None
    return await trajectories.passages(reads, since_at, until_at, tag_id=tag, station_id=station_id, limit=limit)
