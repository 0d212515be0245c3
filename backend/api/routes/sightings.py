"""Sightings: passages by tag or by station over a time range."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from fastapi import APIRouter, HTTPException, Query
from psycopg.rows import dict_row
from pydantic import AwareDatetime

from backend.api.deps import Conn
from backend.api.schemas import SightingPublic
from protocol.messages import format_tag, parse_tag, utcnow

router = APIRouter(prefix="/api", tags=["sightings"])


@router.get("/sightings", response_model=list[SightingPublic])
async def list_sightings(
    conn: Conn,
    tag_id: str | None = Query(None, description="8 hex digits"),
    station_id: str | None = None,
    since: AwareDatetime | None = None,
    until: AwareDatetime | None = None,
    limit: int = Query(500, ge=1, le=10_000),
) -> list[dict[str, Any]]:
    """Passages of one tag or at one station, newest first (default: the last hour)."""
    if tag_id is None and station_id is None:
        raise HTTPException(422, "give tag_id or station_id")
    try:
        tag = parse_tag(tag_id) if tag_id is not None else None
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from exc
    until_at: datetime = until or utcnow()
    since_at: datetime = since or until_at - timedelta(hours=1)
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
