"""The audit log, for admins."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from backend import audit
from backend.accounts import User
from backend.api.deps import Conn, allow
from backend.api.schemas import ApiTime, AuditEntry

router = APIRouter(prefix="/api/audit", tags=["audit"])


@router.get("", response_model=list[AuditEntry])
async def list_audit(
    conn: Conn,
    _user: Annotated[User, allow("admin")],
    since: ApiTime | None = None,
    actor: str | None = Query(None, max_length=64),
    case_number: str | None = Query(None, max_length=40),
    limit: int = Query(200, ge=1, le=5000),
) -> list[dict[str, Any]]:
    """Admin: audit records, newest first."""
    return await audit.entries(conn, since=since, actor=actor, case_number=case_number, limit=limit)
