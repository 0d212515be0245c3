"""Shared bikes: an owner's link that lets someone else (a family member) see where the bike is — never its owner's
data — until it expires, is withdrawn, or the bike is no longer the owner's."""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row

from backend.registry import InvalidValue, LimitReached

MAX_DAYS = 30
MAX_OPEN_SHARES = 10  # per bike and owner: a link per family member, not a way to publish the bike's whereabouts


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


async def create(
    conn: psycopg.AsyncConnection[Any], owner_id: int, bike_id: int, days: int, label: str | None
) -> tuple[str, dict[str, Any]]:
    """A new share of the owner's bike for `days` (1..MAX_DAYS): the token (shown once, only its hash is kept) and
    the share as listed."""
    if not 1 <= days <= MAX_DAYS:
        raise InvalidValue(f"a link lasts 1 to {MAX_DAYS} days, not {days}", "days")
    token = secrets.token_urlsafe(24)
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT count(*) AS n FROM bike_shares WHERE bike_id = %s AND owner_id = %s AND revoked_at IS NULL"
            " AND expires_at > now()",
            (bike_id, owner_id),
        )
        row = await cur.fetchone()
        if row is not None and row["n"] >= MAX_OPEN_SHARES:
            raise LimitReached(f"this bike already has {MAX_OPEN_SHARES} open links: withdraw one first")
        await cur.execute(
            "INSERT INTO bike_shares (bike_id, owner_id, token_sha256, label, expires_at)"
            " VALUES (%s, %s, %s, %s, now() + make_interval(days => %s))"
            " RETURNING share_id, label, created_at, expires_at, revoked_at",
            (bike_id, owner_id, _digest(token), label, days),
        )
        share = await cur.fetchone()
    assert share is not None
    return token, share


async def of_bike(conn: psycopg.AsyncConnection[Any], owner_id: int, bike_id: int) -> list[dict[str, Any]]:
    """The owner's shares of the bike, newest first (never their tokens)."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT share_id, label, created_at, expires_at, revoked_at FROM bike_shares"
            " WHERE bike_id = %s AND owner_id = %s ORDER BY created_at DESC LIMIT 50",
            (bike_id, owner_id),
        )
        return await cur.fetchall()


async def revoke(conn: psycopg.AsyncConnection[Any], owner_id: int, bike_id: int, share_id: int) -> bool:
    """Withdraw one of the owner's shares of the bike; False if there is no such share of theirs."""
    cur = await conn.execute(
        "UPDATE bike_shares SET revoked_at = coalesce(revoked_at, now())"
        " WHERE share_id = %s AND bike_id = %s AND owner_id = %s",
        (share_id, bike_id, owner_id),
    )
    return cur.rowcount == 1


async def resolve(conn: psycopg.AsyncConnection[Any], token: str) -> dict[str, Any] | None:
    """The share a link's token opens now — bike_id, and `since`: when the sharing owner's period began (nothing
    before it is shown) — or None: unknown, withdrawn, expired, or the bike is no longer that owner's."""
    if not 16 <= len(token) <= 64:
        return None
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT s.share_id, s.bike_id, s.expires_at, ob.valid_from AS since FROM bike_shares s"
            " JOIN bike_bindings ob ON ob.bike_id = s.bike_id AND ob.kind = 'owner' AND ob.valid_to IS NULL"
            "  AND ob.owner_id = s.owner_id"
            " WHERE s.token_sha256 = %s AND s.revoked_at IS NULL AND s.expires_at > now()",
            (_digest(token),),
        )
        return await cur.fetchone()


def window(share: dict[str, Any], since: datetime, until: datetime) -> tuple[datetime, datetime]:
    """The part of [since, until) a share shows: within the sharing owner's period, at most MAX_DAYS back."""
    return max(since, share["since"], until - timedelta(days=MAX_DAYS)), until
