"""An owner's notification choices, Web Push devices and recent notifications: read and written for that owner only.

Every function takes the owner id of the signed-in owner (never one from the request), so no id an owner could guess
reaches another owner's rows.
"""

from __future__ import annotations

import base64
from typing import Any

import psycopg
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from psycopg.rows import dict_row

from backend.identity import mask_mobile
from backend.settings import BackendSettings

_DEFAULTS: dict[str, Any] = {
    "channels": [],
    "email": None,
    "sms_number": None,
    "language": "zh",
    "quiet_start": None,
    "quiet_end": None,
    "time_zone": "Asia/Shanghai",
}


def available_channels(settings: BackendSettings) -> list[str]:
    """The channels this deployment has a provider for."""
    return [
        c
        for c, configured in (
            ("webpush", settings.vapid_private_key is not None),
            ("sms", bool(settings.sms_gateway_url)),
            ("email", bool(settings.smtp_host)),
        )
        if configured
    ]


def vapid_public_key(settings: BackendSettings) -> str | None:
    """The VAPID public key (base64url, uncompressed point) for the portal's pushManager.subscribe."""
    if settings.vapid_private_key is None:
        return None
    text = settings.vapid_private_key.get_secret_value().strip()
    if "BEGIN" in text:
        key = serialization.load_pem_private_key(text.encode(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
    else:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        key = ec.derive_private_key(int.from_bytes(raw, "big"), ec.SECP256R1())
    point = key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return base64.urlsafe_b64encode(point).rstrip(b"=").decode()


async def get(conn: psycopg.AsyncConnection[Any], settings: BackendSettings, owner_id: int) -> dict[str, Any]:
    """The owner's choices (defaults when they made none), what is available and how many devices push."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT np.channels, np.email, np.sms_number, np.language,"
            " to_char(np.quiet_start, 'HH24:MI') AS quiet_start, to_char(np.quiet_end, 'HH24:MI') AS quiet_end,"
            " np.time_zone"
            " FROM notification_preferences np WHERE np.owner_id = %s",
            (owner_id,),
        )
        row = await cur.fetchone() or dict(_DEFAULTS)
        await cur.execute(
            "SELECT o.mobile, (SELECT count(*) FROM push_subscriptions s WHERE s.owner_id = o.owner_id) AS devices"
            " FROM owners o WHERE o.owner_id = %s",
            (owner_id,),
        )
        owner = await cur.fetchone() or {"mobile": None, "devices": 0}
    return {
        **row,
        "available": available_channels(settings),
        "registered_mobile_masked": mask_mobile(owner["mobile"]) if owner["mobile"] else None,
        "push_devices": int(owner["devices"]),
    }


async def put(conn: psycopg.AsyncConnection[Any], owner_id: int, prefs: dict[str, Any]) -> None:
    """Replace the owner's choices."""
    await conn.execute(
        "INSERT INTO notification_preferences AS np (owner_id, channels, email, sms_number, language, quiet_start,"
        " quiet_end, time_zone) VALUES (%(owner)s, %(channels)s, %(email)s, %(sms_number)s, %(language)s,"
        " %(quiet_start)s::time, %(quiet_end)s::time, %(time_zone)s)"
        " ON CONFLICT (owner_id) DO UPDATE SET channels = excluded.channels, email = excluded.email,"
        " sms_number = excluded.sms_number, language = excluded.language, quiet_start = excluded.quiet_start,"
        " quiet_end = excluded.quiet_end, time_zone = excluded.time_zone, updated_at = now()",
        {"owner": owner_id, **prefs},
    )


async def subscribe(conn: psycopg.AsyncConnection[Any], owner_id: int, endpoint: str, p256dh: str, auth: str) -> None:
    """Keep a device's Web Push subscription for the owner. The endpoint is the device's secret: a device that
    subscribes again (another owner signed in on it) now pushes to whoever subscribed last."""
    await conn.execute(
        "INSERT INTO push_subscriptions (owner_id, endpoint, p256dh, auth) VALUES (%s, %s, %s, %s)"
        " ON CONFLICT (endpoint) DO UPDATE SET owner_id = excluded.owner_id, p256dh = excluded.p256dh,"
        " auth = excluded.auth, created_at = now()",
        (owner_id, endpoint, p256dh, auth),
    )


async def unsubscribe(conn: psycopg.AsyncConnection[Any], owner_id: int, endpoint: str) -> None:
    """Forget one of the owner's devices (a device of someone else's is left alone)."""
    await conn.execute("DELETE FROM push_subscriptions WHERE owner_id = %s AND endpoint = %s", (owner_id, endpoint))


async def recent(conn: psycopg.AsyncConnection[Any], owner_id: int, limit: int = 50) -> list[dict[str, Any]]:
    """The owner's latest notifications with their delivery state, newest first."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT notification_id, kind, channel, state, facts->>'plate' AS plate,"
            " facts->>'station_name' AS station_name, (facts->>'at')::timestamptz AS event_at, created_at, sent_at,"
            " attempts, due_at, last_error"
            " FROM notifications WHERE owner_id = %s ORDER BY created_at DESC, notification_id DESC LIMIT %s",
            (owner_id, limit),
        )
        return await cur.fetchall()
