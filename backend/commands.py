"""Commands to stations: issued with a seq from the database (monotonic across workers), signed and published by
the hot-list publisher (backend.hotlist), audited by the route that sends them."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import psycopg

from protocol.messages import StationCommand, utcnow


async def issue_command(
    conn: psycopg.AsyncConnection[Any], station_id: str, name: str, ttl_s: int, args: dict[str, str] | None = None
) -> StationCommand:
    """A new, unsigned command for one station: its seq is above every command issued before (station_command_seq,
    migration 0017), and it expires `ttl_s` after now."""
    cur = await conn.execute("SELECT nextval('station_command_seq')")
    (seq,) = await cur.fetchone()  # type: ignore[misc]
    issued_at = utcnow()
    return StationCommand(
        station_id=station_id,
        name=name,
        args=args or {},
        seq=seq,
        issued_at=issued_at,
        expires_at=issued_at + timedelta(seconds=ttl_s),
    )
