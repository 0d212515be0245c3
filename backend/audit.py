"""The audit log: who saw or changed personal data, and under which case number. Append-only in the database.

When a case number is needed and what is recorded for a reading is backend.access's to say; this module keeps
the log.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from backend.accounts import User


async def record(
    conn: psycopg.AsyncConnection[Any],
    user: User,
    action: str,
    subject: str | None = None,
    case_number: str | None = None,
    **detail: Any,
) -> None:
    """Append one record in the current transaction (so it exists exactly when the access happened)."""
    await conn.execute(
        "INSERT INTO audit_log (account_id, actor, role, action, subject, case_number, detail)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s)",
        (user.account_id, user.username, user.role, action, subject, case_number, Jsonb(detail)),
    )


async def entries(
    conn: psycopg.AsyncConnection[Any],
    *,
    since: datetime | None = None,
    actor: str | None = None,
    case_number: str | None = None,
    limit: int = 200,
) -> list[dict[str, Any]]:
    """Audit records, newest first, optionally filtered."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT audit_id, at, account_id, actor, role, action, subject, case_number, detail FROM audit_log"
            " WHERE (%s::timestamptz IS NULL OR at >= %s) AND (%s::text IS NULL OR actor = %s)"
            " AND (%s::text IS NULL OR case_number = %s) ORDER BY audit_id DESC LIMIT %s",
            (since, since, actor, actor, case_number, case_number, limit),
        )
        return await cur.fetchall()
