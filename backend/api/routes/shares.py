"""Owners' links that let someone else see where their bike is (backend/shares.py): made, listed, withdrawn."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Response

from backend import access, audit, shares
from backend.accounts import User
from backend.api.deps import Conn, PublicBaseUrl, RegistryDep, allow
from backend.api.schemas import ShareCreate, ShareCreated, SharePublic
from backend.registry import NotFound

router = APIRouter(prefix="/api/bikes", tags=["bikes"])
BikeId = Annotated[int, Path(ge=1, le=2**63 - 1)]
ShareId = Annotated[int, Path(ge=1, le=2**63 - 1)]
Owner = Annotated[User, allow("owner")]


async def _own_bike(conn: Conn, registry: RegistryDep, user: User, bike_id: int) -> int:
    """The owner's id, if the bike is theirs now (another owner's bike is a 404, as one that does not exist)."""
    await access.viewer_of(user).check_bike(conn, registry, bike_id)
    if user.owner_id is None or await access.owner_since(conn, user.owner_id, bike_id) is None:
        raise NotFound(f"no bike {bike_id}", "bike")
    return user.owner_id


@router.post("/{bike_id}/shares", response_model=ShareCreated, status_code=201)
async def create_share(
    bike_id: BikeId,
    body: ShareCreate,
    conn: Conn,
    registry: RegistryDep,
    user: Owner,
    base_url: PublicBaseUrl,
    response: Response,
) -> dict[str, Any]:
    """Owner: a link that shows where the bike is (never who owns it) for `days`, until withdrawn; shown once."""
    owner_id = await _own_bike(conn, registry, user, bike_id)
    token, share = await shares.create(conn, owner_id, bike_id, body.days, body.label)
    await audit.record(conn, user, "bike.share", f"bike:{bike_id}", None, share_id=share["share_id"], days=body.days)
    response.headers["Cache-Control"] = "no-store"
    return {**share, "url": f"{base_url.rstrip('/')}/shared/{token}"}


@router.get("/{bike_id}/shares", response_model=list[SharePublic])
async def list_shares(bike_id: BikeId, conn: Conn, registry: RegistryDep, user: Owner) -> list[dict[str, Any]]:
    """Owner: the bike's links they made, newest first (the links themselves are not shown again)."""
    return await shares.of_bike(conn, await _own_bike(conn, registry, user, bike_id), bike_id)


@router.delete("/{bike_id}/shares/{share_id}", status_code=204)
async def revoke_share(bike_id: BikeId, share_id: ShareId, conn: Conn, registry: RegistryDep, user: Owner) -> Response:
    """Owner: withdraw a link at once."""
    if not await shares.revoke(conn, await _own_bike(conn, registry, user, bike_id), bike_id, share_id):
        raise NotFound(f"no link {share_id} of bike {bike_id}", "share")
    await audit.record(conn, user, "bike.share_revoke", f"bike:{bike_id}", None, share_id=share_id)
    return Response(status_code=204)
