"""The audit log: who saw or changed personal data, and under which case number. Append-only in the database."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from backend.accounts import User

_CASE_NUMBER = re.compile(r"[A-Za-z0-9][A-Za-z0-9/_.-]{3,39}")


class AuditError(Exception):
    """Base of audit errors."""


class CaseNumberRequired(AuditError):
    """Police access to personal data, or to a bike that is not stolen, needs a case number."""


def require_case_number(case_number: str | None, what: str) -> str:
    """The case number, checked for shape; raises CaseNumberRequired when it is missing or malformed."""
    if case_number is None or not case_number.strip():
        raise CaseNumberRequired(f"a case number is required to see {what}")
    text = case_number.strip()
    if not _CASE_NUMBER.fullmatch(text):
        raise CaseNumberRequired("a case number has 4-40 letters, digits, '/', '_', '.' or '-'")
    return text


async def record(
    conn: psycopg.AsyncConnection[Any], user: User, action: str, subject: str | None = None,
    case_number: str | None = None, **detail: Any,
) -> None:
    """Append one record in the current transaction (so it exists exactly when the access happened)."""
    await conn.execute(
        "INSERT INTO audit_log (account_id, actor, role, action, subject, case_number, detail)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s)",
        (user.account_id, user.username, user.role, action, subject, case_number, Jsonb(detail)),
    )


async def entries(
    conn: psycopg.AsyncConnection[Any], *, since: datetime | None = None, actor: str | None = None,
    case_number: str | None = None, limit: int = 200,
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
