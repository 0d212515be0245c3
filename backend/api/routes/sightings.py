"""Sightings: passages by tag or by station over a time range, as far as the caller may see them.

Police see a stolen bike's passages since the theft; anything else (another tag, a station's traffic)
needs a case number and is audited. An owner sees their own chip's passages since they hold the bike.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query
from psycopg.rows import dict_row
from pydantic import AwareDatetime

from backend import audit, trajectories
from backend.accounts import User
from backend.api.deps import Conn, allow
from backend.api.schemas import SightingPublic
from backend.registry import NotFound
from protocol.ids import TAG_ID_ANY_CASE_PATTERN
from protocol.messages import format_tag, parse_tag, utcnow

router = APIRouter(prefix="/api", tags=["sightings"])


@router.get("/sightings", response_model=list[SightingPublic],
            responses={403: {"description": "case number needed"}, 404: {"description": "not the owner's chip"}})
async def list_sightings(
    conn: Conn,
    user: Annotated[User, allow("police", "owner")],
    tag_id: str | None = Query(None, description="8 hex digits", pattern=TAG_ID_ANY_CASE_PATTERN),
    station_id: str | None = Query(None, max_length=64),
    since: AwareDatetime | None = None,
    until: AwareDatetime | None = None,
    case_number: str | None = Query(None, max_length=40),
    limit: int = Query(500, ge=1, le=10_000),
) -> list[dict[str, Any]]:
    """Police, owner: passages of one tag or at one station, newest first (default: the last hour)."""
    if tag_id is None and station_id is None:
        raise HTTPException(422, "give tag_id or station_id")
    tag = parse_tag(tag_id) if tag_id is not None else None
    until_at: datetime = until or utcnow()
    since_at: datetime = since or until_at - timedelta(hours=1)
    window = await trajectories.tag_window(conn, tag) if tag is not None else None
    if user.role == "owner":
        if tag is None:
            raise HTTPException(403, "an owner can look up only their own chip")
        if window is None or window["owner_id"] != user.owner_id:
            raise NotFound(f"no chip {tag_id} among your bikes", "tag_id")
        since_at = max(since_at, window["chip_since"], window["owner_since"])
    elif case_number is None and station_id is None and window is not None and window["stolen_at"] is not None:
        since_at = max(since_at, window["stolen_at"], window["chip_since"])
        await audit.record(conn, user, "sightings.view", f"tag:{format_tag(tag or 0)}", None, stolen=True)
    else:
        case = audit.require_case_number(case_number, "passages of a chip that is not reported stolen, or a"
                                         " station's traffic")
        subject = f"tag:{format_tag(tag)}" if tag is not None else f"station:{station_id}"
        await audit.record(conn, user, "sightings.view", subject, case, station_id=station_id,
                           since=since_at.isoformat(), until=until_at.isoformat())
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT station_id, tag_id, first_seen_at, last_seen_at, beacons, peak_rssi_dbm, antenna, flags"
            " FROM sightings WHERE first_seen_at >= %s AND first_seen_at < %s"
            " AND (%s::int8 IS NULL OR tag_id = %s) AND (%s::text IS NULL OR station_id = %s)"
            " ORDER BY first_seen_at DESC LIMIT %s",
            (since_at, until_at, tag, tag, station_id, station_id, limit),
        )
        rows = await cur.fetchall()
    for r in rows:
        r["tag_id"] = format_tag(r["tag_id"])
    return rows
