"""The registry (minimal for now): owners, bikes, chips, theft reports."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from protocol.messages import format_tag, utcnow


class RegistryError(Exception):
    """Base of registry errors."""


class NotFound(RegistryError):
    """No such bike."""


class Conflict(RegistryError):
    """A one-to-one rule would be broken; the message says what already holds the value."""


async def register_bike(
    conn: psycopg.AsyncConnection[Any], owner_name: str, plate: str, tag_id: int,
    brand: str | None = None, colour: str | None = None,
) -> dict[str, Any]:
    """A new owner with one bike and its chip, all or nothing."""
    try:
        async with conn.transaction():
            cur = await conn.execute("INSERT INTO owners (name) VALUES (%s) RETURNING owner_id", (owner_name,))
            owner_id = (await cur.fetchone())[0]  # type: ignore[index]
            cur = await conn.execute(
                "INSERT INTO bikes (plate, owner_id, brand, colour) VALUES (%s, %s, %s, %s) RETURNING bike_id",
                (plate, owner_id, brand, colour),
            )
            bike_id = (await cur.fetchone())[0]  # type: ignore[index]
            await conn.execute("INSERT INTO chips (tag_id, bike_id) VALUES (%s, %s)", (tag_id, bike_id))
    except psycopg.errors.UniqueViolation as exc:
        what = "plate" if "bikes_plate" in str(exc) else "chip"
        value = plate if what == "plate" else format_tag(tag_id)
        raise Conflict(f"{what} {value} is already registered to another bike") from exc
    return await get_bike(conn, plate)


async def get_bike(conn: psycopg.AsyncConnection[Any], plate: str) -> dict[str, Any]:
    """A bike by plate with its chip and theft state; raises NotFound."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT b.bike_id, b.plate, b.brand, b.colour, b.armed, c.tag_id,"
            " t.report_id IS NOT NULL AS stolen, t.stolen_at"
            " FROM bikes b LEFT JOIN chips c USING (bike_id)"
            " LEFT JOIN theft_reports t ON t.bike_id = b.bike_id AND t.recovered_at IS NULL"
            " WHERE b.plate = %s",
            (plate,),
        )
        row = await cur.fetchone()
    if row is None:
        raise NotFound(f"no bike with plate {plate}")
    if row["tag_id"] is not None:
        row["tag_id"] = format_tag(row["tag_id"])
    return row


async def report_stolen(
    conn: psycopg.AsyncConnection[Any], plate: str, stolen_at: datetime | None = None,
    place: str | None = None, circumstances: str | None = None, police_report: str | None = None,
) -> dict[str, Any]:
    """Open a theft report for the bike; refused if one is already open."""
    bike = await get_bike(conn, plate)
    try:
        await conn.execute(
            "INSERT INTO theft_reports (bike_id, stolen_at, place, circumstances, police_report)"
            " VALUES (%s, %s, %s, %s, %s)",
            (bike["bike_id"], stolen_at or utcnow(), place, circumstances, police_report),
        )
    except psycopg.errors.UniqueViolation as exc:
        raise Conflict(f"bike {plate} is already reported stolen") from exc
    return await get_bike(conn, plate)


async def mark_recovered(conn: psycopg.AsyncConnection[Any], plate: str) -> dict[str, Any]:
    """Close the bike's open theft report; refused if it is not reported stolen."""
    bike = await get_bike(conn, plate)
    cur = await conn.execute(
        "UPDATE theft_reports SET recovered_at = now() WHERE bike_id = %s AND recovered_at IS NULL",
        (bike["bike_id"],),
    )
    if cur.rowcount == 0:
        raise Conflict(f"bike {plate} is not reported stolen")
    return await get_bike(conn, plate)
