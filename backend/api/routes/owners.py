"""Owners at the counter: register, find by resident ID number, look up, issue a login."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path

from backend import accounts, audit
from backend.access import viewer_of
from backend.accounts import User
from backend.api.deps import Conn, PasswordsDep, RegistryDep, allow
from backend.api.schemas import OwnerCreate, OwnerCreated, OwnerLogin, OwnerLookup, OwnerMatch, OwnerPublic
from backend.registry import OwnerDetails, Registry, owner_username

router = APIRouter(prefix="/api/owners", tags=["owners"])
OwnerId = Annotated[int, Path(ge=1, le=2**63 - 1)]
Counter = Annotated[User, allow("clerk", "admin")]


async def create_owner(
    conn: Conn, registry: Registry, passwords: accounts.Passwords, user: User, body: OwnerCreate
) -> tuple[int, dict[str, str] | None]:
    """A new owner from the counter form and, if asked, their account: (owner id, login slip or None)."""
    owner_id = await registry.create_owner(
        conn, user.actor, OwnerDetails(body.name, body.id_number, body.mobile, body.address)
    )
    slip = None
    if body.create_account:
        slip = await accounts.issue_owner_login(
            conn, passwords, owner_id, body.login or owner_username(), body.name, user.actor
        )
    return owner_id, slip


@router.post("", response_model=OwnerCreated, status_code=201)
async def register_owner(
    body: OwnerCreate, conn: Conn, registry: RegistryDep, passwords: PasswordsDep, user: Counter
) -> dict[str, Any]:
    """Clerk, admin: register a person (refused if their resident ID number is already registered)."""
    owner_id, slip = await create_owner(conn, registry, passwords, user, body)
    return {"owner": await registry.get_owner(conn, owner_id), "owner_login": slip}


@router.post("/lookup", response_model=OwnerMatch, responses={429: {"description": "too many look-ups this hour"}})
async def lookup_owner(body: OwnerLookup, conn: Conn, registry: RegistryDep, user: Counter) -> dict[str, Any]:
    """Clerk, admin: the owner with this resident ID number (found by its keyed hash), or null.

    Every look-up is audited, a miss too (a run of misses is someone trying candidates), and an account may make
    at most owner_lookups_per_hour of them.
    """
    owner_id = await registry.lookup_owner(conn, user.account_id, body.id_number)
    await audit.record(
        conn, user, "owner.lookup", f"owner:{owner_id}" if owner_id else None, found=owner_id is not None
    )
    if owner_id is None:
        return {"owner": None}
    return {"owner": await registry.get_owner(conn, owner_id)}


@router.get("/{owner_id}", response_model=OwnerPublic)
async def get_owner(owner_id: OwnerId, conn: Conn, registry: RegistryDep, user: Counter) -> dict[str, Any]:
    """Clerk, admin: one owner (resident ID number masked); audited."""
    return await viewer_of(user).read_owner(conn, registry, owner_id, None)


@router.post("/{owner_id}/login", response_model=OwnerLogin)
async def issue_login(
    owner_id: OwnerId, conn: Conn, registry: RegistryDep, passwords: PasswordsDep, user: Counter
) -> dict[str, str]:
    """Clerk, admin: the owner's login slip: an account if they have none, else a new one-time password."""
    owner = await registry.get_owner(conn, owner_id)
    # A new account gets a generated name, never the mobile number (logins appear in history as who did what).
    username = owner["login"] or owner_username()
    slip = await accounts.issue_owner_login(conn, passwords, owner_id, username, owner["name"], user.actor)
    await audit.record(conn, user, "owner.login_issued", f"owner:{owner_id}")
    return slip
