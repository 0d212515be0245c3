"""Staff accounts, made and managed by admins."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path

from backend import accounts, audit
from backend.accounts import User
from backend.api.deps import Conn, PasswordsDep, allow
from backend.api.schemas import AccountCreate, AccountCreated, AccountDetail, OwnerLogin

router = APIRouter(prefix="/api/accounts", tags=["accounts"])
AccountId = Annotated[int, Path(ge=1, le=2**63 - 1)]


@router.get("", response_model=list[AccountDetail])
async def list_accounts(conn: Conn, _user: Annotated[User, allow("admin")]) -> list[dict[str, Any]]:
    """Admin: every account."""
    return await accounts.list_accounts(conn)


@router.post("", response_model=AccountCreated, status_code=201)
async def create_account(
    body: AccountCreate, conn: Conn, passwords: PasswordsDep, user: Annotated[User, allow("admin")]
) -> dict[str, Any]:
    """Admin: a staff account (clerk, police, installer, admin); a first password is generated if none is given."""
    password = body.password or accounts.slip_password(12)
    account = await accounts.create_account(
        conn,
        passwords,
        username=body.username,
        password=password,
        role=body.role,
        display_name=body.display_name,
        created_by=user.actor,
        must_change_password=body.must_change_password,
    )
    await audit.record(conn, user, "account.create", f"account:{account['account_id']}", role=body.role)
    return {"account": account, "initial_password": None if body.password else password}


@router.post("/{account_id}/disable", response_model=AccountDetail)
async def disable_account(account_id: AccountId, conn: Conn, user: Annotated[User, allow("admin")]) -> dict[str, Any]:
    """Admin: disable an account and end its sessions."""
    account = await accounts.disable_account(conn, account_id)
    await audit.record(conn, user, "account.disable", f"account:{account_id}")
    return account


@router.post("/{account_id}/password-reset", response_model=OwnerLogin)
async def reset_password(
    account_id: AccountId, conn: Conn, passwords: PasswordsDep, user: Annotated[User, allow("admin")]
) -> dict[str, Any]:
    """Admin: a new one-time password for an account (changed at its next login)."""
    password = accounts.slip_password(12)
    username = await accounts.reset_password(conn, passwords, account_id, password)
    await audit.record(conn, user, "account.password_reset", f"account:{account_id}")
    return {"username": username, "initial_password": password}
