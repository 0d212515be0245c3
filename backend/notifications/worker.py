"""The sender: takes due outbox rows (FOR UPDATE SKIP LOCKED, so any number of workers share them), sends each through
its channel, and records what happened: sent, or tried again later with exponential backoff, or failed for good.

A row taken is marked 'sending' in a committed transaction before the provider is asked. A worker that dies mid-send
leaves it so; after notify_lease_s another worker sends it again with the same idempotency key, which the provider
uses to drop the repeat where the channel has such a key (docs/owner.md says, per channel, what "once" means).
Quiet hours are judged when a row comes due: a row that is not urgent waits for their end.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import psycopg
from psycopg.rows import dict_row

from backend.notifications.channels import ChannelError, Channels, Outgoing, PushSubscription, Sent
from backend.notifications.outbox import NOTIFY_CHANNEL
from backend.notifications.texts import render
from backend.settings import BackendSettings

log = logging.getLogger(__name__)

_CLAIM = """
    UPDATE notifications n SET state = 'sending', claimed_at = now(), attempts = n.attempts + 1
    FROM (SELECT notification_id FROM notifications
          WHERE (state = 'pending' AND due_at <= now())
             OR (state = 'sending' AND claimed_at < now() - make_interval(secs => %(lease)s))
          ORDER BY due_at LIMIT %(batch)s FOR UPDATE SKIP LOCKED) due
    WHERE n.notification_id = due.notification_id
    RETURNING n.notification_id, n.owner_id, n.kind, n.channel, n.urgent, n.facts, n.attempts
"""

_CONTEXT = """
    SELECT np.owner_id, np.email, coalesce(np.sms_number, o.mobile) AS sms_number, np.language, np.time_zone,
           np.quiet_start, np.quiet_end,
           coalesce((SELECT array_agg(ARRAY[s.subscription_id::text, s.endpoint, s.p256dh, s.auth])
                     FROM push_subscriptions s WHERE s.owner_id = np.owner_id), '{}') AS subscriptions
    FROM notification_preferences np JOIN owners o USING (owner_id)
    WHERE np.owner_id = ANY(%s)
"""


def quiet_until(now: datetime, start: time | None, end: time | None, time_zone: str) -> datetime | None:
    """When the owner's quiet hours [start, end) that hold at `now` end, or None when `now` is not in them."""
    if start is None or end is None or start == end:
        return None
    try:
        zone = ZoneInfo(time_zone)
    except (ZoneInfoNotFoundError, ValueError):
        zone = ZoneInfo("UTC")
    local = now.astimezone(zone)
    t = local.time().replace(tzinfo=None)
    inside = start <= t < end if start < end else (t >= start or t < end)
    if not inside:
        return None
    day = local.date() if t < end else local.date() + timedelta(days=1)
    return datetime.combine(day, end, tzinfo=zone)


@dataclass(frozen=True, slots=True)
class _Claimed:
    notification_id: int
    owner_id: int
    kind: str
    channel: str
    urgent: bool
    facts: dict[str, Any]
    attempts: int


class Sender:
    """Sends what the outbox holds through `channels`, under the settings' lease, batch and backoff."""

    def __init__(self, settings: BackendSettings, channels: Channels | None = None) -> None:
        self.settings = settings
        self.channels = channels or Channels(settings)

    def backoff(self, attempts: int) -> timedelta:
        """How long to wait before the next attempt after `attempts` failed ones."""
        s = self.settings
        return timedelta(seconds=min(s.notify_backoff_max_s, s.notify_backoff_s * 2 ** max(0, attempts - 1)))

    async def run_once(self, conn: psycopg.AsyncConnection[Any]) -> int:
        """Take one batch of due rows and send them; how many were taken (0: nothing was due)."""
        s = self.settings
        async with conn.transaction():
            cur = await conn.execute(_CLAIM, {"lease": s.notify_lease_s, "batch": s.notify_batch})
            claimed = [_Claimed(*row) for row in await cur.fetchall()]
        if not claimed:
            return 0
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(_CONTEXT, (sorted({c.owner_id for c in claimed}),))
            context = {row["owner_id"]: row for row in await cur.fetchall()}
        now = datetime.now().astimezone()
        due: list[tuple[_Claimed, Outgoing]] = []
        for c in claimed:
            prefs = context.get(c.owner_id)
            wait = (
                None
                if c.urgent or prefs is None
                else quiet_until(now, prefs["quiet_start"], prefs["quiet_end"], prefs["time_zone"])
            )
            if wait is not None:
                await self._defer(conn, c, wait)
            else:
                due.append((c, self._outgoing(c, prefs)))
        results = await asyncio.gather(*(asyncio.to_thread(self._send, out) for _, out in due))
        for (c, _), result in zip(due, results, strict=True):
            await self._record(conn, c, result)
        return len(claimed)

    def _outgoing(self, c: _Claimed, prefs: dict[str, Any] | None) -> Outgoing:
        prefs = prefs or {"language": "zh", "time_zone": "Asia/Shanghai", "subscriptions": []}
        return Outgoing(
            notification_id=c.notification_id,
            channel=c.channel,
            kind=c.kind,
            text=render(c.kind, c.facts, prefs["language"], prefs["time_zone"]),
            email=prefs.get("email"),
            sms_number=prefs.get("sms_number"),
            subscriptions=tuple(PushSubscription(int(i), e, p, a) for i, e, p, a in prefs["subscriptions"]),
        )

    def _send(self, out: Outgoing) -> Sent | ChannelError:
        try:
            return self.channels.send(out)
        except ChannelError as exc:
            return exc

    async def _defer(self, conn: psycopg.AsyncConnection[Any], c: _Claimed, until: datetime) -> None:
        await conn.execute(
            "UPDATE notifications SET state = 'pending', due_at = %s, attempts = attempts - 1, claimed_at = NULL"
            " WHERE notification_id = %s AND state = 'sending'",
            (until, c.notification_id),
        )

    async def _record(self, conn: psycopg.AsyncConnection[Any], c: _Claimed, result: Sent | ChannelError) -> None:
        gone = result.gone  # Web Push devices found unsubscribed
        async with conn.transaction():
            if gone:
                await conn.execute("DELETE FROM push_subscriptions WHERE subscription_id = ANY(%s)", (gone,))
            if isinstance(result, Sent):
                await conn.execute(
                    "UPDATE notifications SET state = 'sent', sent_at = now(), reference = %s, last_error = NULL"
                    " WHERE notification_id = %s",
                    (result.reference, c.notification_id),
                )
                return
            final = result.permanent or c.attempts >= self.settings.notify_max_attempts
            await conn.execute(
                "UPDATE notifications SET state = %s, due_at = now() + %s, last_error = %s, claimed_at = NULL"
                " WHERE notification_id = %s",
                ("failed" if final else "pending", self.backoff(c.attempts), str(result)[:500], c.notification_id),
            )
        log.warning("notification %d by %s: %s (attempt %d)", c.notification_id, c.channel, result, c.attempts)

    async def run(self) -> None:
        """Send until cancelled: woken when rows are written to the outbox (NOTIFY), else every notify_poll_s (rows
        that waited for quiet hours or a retry come due without a NOTIFY)."""
        s = self.settings
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(s.database_url, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    while True:
                        while await self.run_once(conn) >= s.notify_batch:
                            pass
                        # Drain what arrived; the next round looks at the outbox anyway.
                        async for _ in conn.notifies(timeout=s.notify_poll_s, stop_after=1):
                            pass
            except psycopg.Error:
                # The connection went, or a query failed: nothing is lost (rows taken stay 'sending' until the lease).
                log.exception("notification sender failed; starting again in %.0f s", s.notify_poll_s)
                await asyncio.sleep(s.notify_poll_s)
