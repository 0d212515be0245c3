"""The owner's notifications: their choices, Web Push devices, and what was sent to them (issue 15)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from backend import audit
from backend.accounts import User
from backend.api.deps import Conn, Settings, allow
from backend.api.schemas import (
    NotificationPreferences,
    NotificationPreferencesPublic,
    NotificationPublic,
    PushKeyPublic,
    PushSubscriptionCreate,
)
from backend.notifications import preferences
from backend.registry import InvalidValue

router = APIRouter(prefix="/api/me/notifications", tags=["notifications"])
Owner = Annotated[User, allow("owner")]


def _owner_id(user: User) -> int:
    assert user.owner_id is not None  # an owner account always has its owner
    return user.owner_id


@router.get("", response_model=list[NotificationPublic])
async def recent(conn: Conn, user: Owner, limit: Annotated[int, Query(ge=1, le=200)] = 50) -> list[dict[str, Any]]:
    """Owner: their latest notifications and how far each got ("sent by SMS 12:03")."""
    return await preferences.recent(conn, _owner_id(user), limit)


@router.get("/preferences", response_model=NotificationPreferencesPublic)
async def get_preferences(conn: Conn, settings: Settings, user: Owner) -> dict[str, Any]:
    """Owner: their channels, addresses and quiet hours, and the channels this deployment offers."""
    return await preferences.get(conn, settings, _owner_id(user))


@router.put("/preferences", response_model=NotificationPreferencesPublic)
async def put_preferences(body: NotificationPreferences, conn: Conn, settings: Settings, user: Owner) -> dict[str, Any]:
    """Owner: choose channels, addresses and quiet hours (a stolen-bike alert ignores quiet hours)."""
    owner_id = _owner_id(user)
    offered = preferences.available_channels(settings)
    missing = [c for c in body.channels if c not in offered]
    if missing:
        raise InvalidValue(f"this deployment does not send by {', '.join(missing)}", "channels")
    async with conn.transaction():
        await preferences.put(conn, owner_id, body.model_dump())
        await audit.record(conn, user, "notifications.preferences", f"owner:{owner_id}", channels=body.channels)
    return await preferences.get(conn, settings, owner_id)


@router.get("/push-key", response_model=PushKeyPublic)
async def push_key(settings: Settings, _user: Owner) -> dict[str, Any]:
    """Owner: the VAPID public key to subscribe this device to Web Push with."""
    return {"public_key": preferences.vapid_public_key(settings)}


@router.post("/push-subscriptions", status_code=204)
async def subscribe(body: PushSubscriptionCreate, conn: Conn, user: Owner) -> Response:
    """Owner: this device (the portal installed as a web app) receives their notifications by Web Push."""
    await preferences.subscribe(conn, _owner_id(user), body.endpoint, body.keys.p256dh, body.keys.auth)
    return Response(status_code=204)


@router.post("/push-subscriptions/delete", status_code=204)
async def unsubscribe(body: PushSubscriptionCreate, conn: Conn, user: Owner) -> Response:
    """Owner: this device no longer receives their notifications."""
    await preferences.unsubscribe(conn, _owner_id(user), body.endpoint)
    return Response(status_code=204)
