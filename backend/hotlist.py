"""The hot list: the chips of stolen bikes, pushed to every gateway as a retained, versioned message."""

from __future__ import annotations

from typing import Any

import psycopg

from protocol.messages import Hotlist, format_tag


async def issue_hotlist(conn: psycopg.AsyncConnection[Any]) -> Hotlist:
    """Record a new version of the hot list (monotonic across workers) and return it."""
    cur = await conn.execute(
        "INSERT INTO hotlist_versions (tag_ids)"
        " SELECT coalesce(array_agg(c.tag_id ORDER BY c.tag_id), '{}')"
        " FROM theft_reports t JOIN chips c USING (bike_id) WHERE t.recovered_at IS NULL"
        " RETURNING version, issued_at, tag_ids"
    )
    version, issued_at, tag_ids = await cur.fetchone()  # type: ignore[misc]
    return Hotlist(version=version, issued_at=issued_at, tags=[format_tag(t) for t in tag_ids])
