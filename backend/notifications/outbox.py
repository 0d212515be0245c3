"""The outbox: notification rows written by the very statement (or transaction) that records their event.

One row per (event, owner, channel) for each channel the owner chose (notification_preferences); the unique
event_key makes a redelivered batch or a repeated alarm update insert nothing. No query of its own on the ingest's
hot path: ALARM_CTE is a clause of the alarm-raising statement.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import psycopg

from backend.alarms.kinds import AlarmKind


class EventKind(StrEnum):
    """What an owner is told about; its value is stored in notifications.kind."""

    ARMED_BIKE_MOVING = "armed_bike_moving"
    STOLEN_CHIP_SEEN = "stolen_chip_seen"
    ALARM_CLEARED = "alarm_cleared"
    BIKE_RECOVERED = "bike_recovered"
    TRANSFER_REQUESTED = "transfer_requested"
    POSSIBLY_RECOVERED = "possibly_recovered"

    @property
    def urgent(self) -> bool:
        """Whether it is sent in the owner's quiet hours too (a stolen bike seen cannot wait for the morning)."""
        return self is EventKind.STOLEN_CHIP_SEEN


# Senders LISTEN here: a NOTIFY at the commit of new outbox rows wakes them (an alarm update that tells nobody,
# such as a low battery seen again, does not).
NOTIFY_CHANNEL = "bikeguard_notifications"

# The channels, as stored in notifications.channel and notification_preferences.channels (migration 0021).
CHANNELS = ("webpush", "sms", "email")

# Alarm kinds the owner is told about when they are raised (and cleared).
ALARM_EVENTS = (AlarmKind.STOLEN_CHIP_SEEN, AlarmKind.ARMED_BIKE_MOVING)


def _insert(source: str) -> str:
    """INSERT one outbox row per chosen channel for each event row of `source` (columns owner_id, event_key, kind,
    urgent, alarm_id, bike_id, facts)."""
    return (
        "INSERT INTO notifications (owner_id, event_key, kind, channel, urgent, alarm_id, bike_id, facts)"
        " SELECT ev.owner_id, ev.event_key, ev.kind, ch.channel, ev.urgent, ev.alarm_id, ev.bike_id, ev.facts"
        f" FROM ({source}) ev JOIN notification_preferences np ON np.owner_id = ev.owner_id"
        " CROSS JOIN LATERAL unnest(np.channels) AS ch(channel)"
        " ON CONFLICT (event_key, owner_id, channel) DO NOTHING"
    )


def _facts(plate: str, station: str, at: str) -> str:
    return (
        f"jsonb_build_object('plate', {plate}, 'station_id', {station},"
        f" 'station_name', (SELECT s.name FROM stations s WHERE s.station_id = {station}), 'at', {at})"
    )


# A clause for backend.alarms.store's raising statement, after its `raised` CTE (alarm_id, kind, bike_id,
# station_id, last_seen_at): an armed bike moving is told once per alarm; a stolen bike once per station it is
# seen at (so the owner hears where it goes, but not every passage).
ALARM_CTE = (
    ", told AS ("
    + _insert(
        "SELECT b.owner_id, CASE WHEN r.kind = 'stolen_chip_seen'"
        " THEN 'alarm:' || r.alarm_id || ':station:' || r.station_id ELSE 'alarm:' || r.alarm_id END AS event_key,"
        " r.kind, r.kind = 'stolen_chip_seen' AS urgent, r.alarm_id, r.bike_id, "
        + _facts("b.plate", "r.station_id", "r.last_seen_at")
        + " AS facts FROM raised r JOIN bikes b ON b.bike_id = r.bike_id"
        " WHERE r.kind IN ('stolen_chip_seen', 'armed_bike_moving')"
    )
    + " RETURNING 1)"
)
# A join for the raising statement's final SELECT that NOTIFYs the senders when `told` wrote anything (PostgreSQL
# delivers a repeated NOTIFY of one transaction once).
ALARM_WAKE = f"LEFT JOIN (SELECT pg_notify('{NOTIFY_CHANNEL}', '') FROM told LIMIT 1) AS woke ON true"


async def _wake(conn: psycopg.AsyncConnection[Any]) -> None:
    await conn.execute("SELECT pg_notify(%s, '')", (NOTIFY_CHANNEL,))


async def alarm_cleared(conn: psycopg.AsyncConnection[Any], alarm_id: int) -> None:
    """Tell the bike's owner that its alarm was cleared (in the caller's transaction, with the clearing)."""
    await conn.execute(
        _insert(
            "SELECT b.owner_id, 'alarm:' || a.alarm_id || ':cleared' AS event_key, 'alarm_cleared' AS kind,"
            " false AS urgent, a.alarm_id, a.bike_id, "
            + _facts("b.plate", "a.station_id", "a.cleared_at")
            + " || jsonb_build_object('alarm_kind', a.kind) AS facts"
            " FROM alarms a JOIN bikes b ON b.bike_id = a.bike_id"
            " WHERE a.alarm_id = %(alarm)s AND a.kind = ANY(%(kinds)s)"
        ),
        {"alarm": alarm_id, "kinds": [k.value for k in ALARM_EVENTS]},
    )
    await _wake(conn)


async def bike_recovered(conn: psycopg.AsyncConnection[Any], bike_id: int) -> None:
    """Tell the owner that their bike's theft report was closed (in the caller's transaction)."""
    await conn.execute(
        _insert(
            "SELECT b.owner_id, 'recovered:' || t.report_id AS event_key, 'bike_recovered' AS kind,"
            " false AS urgent, NULL::bigint AS alarm_id, b.bike_id, "
            + _facts("b.plate", "NULL::text", "t.recovered_at")
            + " AS facts FROM theft_reports t JOIN bikes b USING (bike_id)"
            " WHERE t.bike_id = %(bike)s AND t.recovered_at IS NOT NULL"
            " ORDER BY t.recovered_at DESC LIMIT 1"
        ),
        {"bike": bike_id},
    )
    await _wake(conn)


async def transfer_requested(conn: psycopg.AsyncConnection[Any], bike_id: int, owner_id: int, code_hash: bytes) -> None:
    """Tell the owner a transfer consent code was made for their bike (if it was not them, their login is known to
    someone else); in the caller's transaction."""
    await conn.execute(
        _insert(
            "SELECT c.owner_id, 'transfer:' || encode(c.code_hash, 'hex') AS event_key, 'transfer_requested' AS kind,"
            " false AS urgent, NULL::bigint AS alarm_id, b.bike_id, "
            + _facts("b.plate", "NULL::text", "c.created_at")
            + " || jsonb_build_object('expires_at', c.expires_at) AS facts"
            " FROM transfer_consents c JOIN bikes b USING (bike_id)"
            " WHERE c.code_hash = %(hash)s AND c.bike_id = %(bike)s AND c.owner_id = %(owner)s"
        ),
        {"hash": code_hash, "bike": bike_id, "owner": owner_id},
    )
    await _wake(conn)


async def possibly_recovered(conn: psycopg.AsyncConnection[Any], alarm_ids: list[int]) -> None:
    """Ask the owners of these 'possibly_recovered' alarms' bikes whether the bike is back (once per alarm; in the
    caller's transaction)."""
    await conn.execute(
        _insert(
            "SELECT b.owner_id, 'followup:' || a.alarm_id AS event_key, 'possibly_recovered' AS kind,"
            " false AS urgent, a.alarm_id, a.bike_id, "
            + _facts("b.plate", "a.station_id", "a.first_seen_at")
            + " AS facts FROM alarms a JOIN bikes b ON b.bike_id = a.bike_id"
            " WHERE a.alarm_id = ANY(%(alarms)s) AND a.kind = 'possibly_recovered'"
        ),
        {"alarms": alarm_ids},
    )
    await _wake(conn)
