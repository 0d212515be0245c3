"""The live feed: alarm changes from PostgreSQL NOTIFY, fanned out to every connected viewer.

NOTIFY is sent in the same transaction that changes an alarm, so every API process sees every
change from every ingest worker, and never one that was rolled back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import orjson
import psycopg
from psycopg_pool import AsyncConnectionPool

from backend import access
from backend.alarms import queries, store

log = logging.getLogger(__name__)

# A round of alarm changes ends when no notification came for ROUND_QUIET_S, or at these limits.
ROUND_QUIET_S = 0.003
ROUND_MAX_WAIT_S = 0.05
ROUND_MAX_ALARMS = 500


class LiveFeed:
    """Listens for alarm changes and hands each subscriber the full alarm as JSON."""

    def __init__(self, database_url: str, pool: AsyncConnectionPool, queue_size: int = 1000) -> None:
        self._url = database_url
        self._pool = pool
        # Each viewer's queue, with the alarms it may see.
        self._subscribers: dict[asyncio.Queue[bytes], access.Scope] = {}
        self._queue_size = queue_size
        self._task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()
        self.dropped = 0

    def start(self) -> None:
        """Start listening in the background."""
        self._task = asyncio.create_task(self._listen(), name="live-feed")

    async def stop(self) -> None:
        """Stop listening."""
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _listen(self) -> None:
        backoff = 0.5
        pending: asyncio.Queue[int] = asyncio.Queue()
        publisher = asyncio.create_task(self._publish_from(pending), name="live-feed-publish")
        try:
            while True:
                try:
                    async with await psycopg.AsyncConnection.connect(self._url, autocommit=True) as conn:
                        await conn.execute(f"LISTEN {store.NOTIFY_CHANNEL}")
                        self.ready.set()
                        backoff = 0.5
                        async for note in conn.notifies():
                            pending.put_nowait(int(note.payload))
                except psycopg.OperationalError as exc:
                    self.ready.clear()
                    log.error("live feed lost the database, retrying in %.1f s: %s", backoff, exc)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 30)
        finally:
            publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await publisher

    async def _publish_from(self, pending: asyncio.Queue[int]) -> None:
        """Send alarm changes in rounds: everything notified meanwhile, each alarm once, the most severe first -
        so a stream of low-battery updates never holds a stolen chip's alarm back."""
        while True:
            ids = [await pending.get()]
            await self._gather_round(pending, ids)
            try:
                async with self._pool.connection() as conn:
                    changed = await queries.get_alarms(conn, list(dict.fromkeys(ids)))
            except psycopg.Error:
                log.exception("live feed could not read %d changed alarms; they are not sent", len(ids))
                continue
            for alarm in changed:
                self._send(alarm)

    @staticmethod
    async def _gather_round(pending: asyncio.Queue[int], ids: list[int]) -> None:
        """Add to `ids` what else is notified until the notifications stop coming for a moment (a commit's
        notifications reach us in several reads of the socket), at most 500 alarms or 50 ms."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ROUND_MAX_WAIT_S
        while len(ids) < ROUND_MAX_ALARMS:
            while not pending.empty() and len(ids) < ROUND_MAX_ALARMS:
                ids.append(pending.get_nowait())
            if len(ids) >= ROUND_MAX_ALARMS or loop.time() >= deadline:
                return
            await asyncio.sleep(ROUND_QUIET_S)
            if pending.empty():
                return

    def _send(self, alarm: dict[str, Any]) -> None:
        # Each viewer gets the alarm as its scope shows it: in full, or without the details of a bike not stolen.
        events: dict[bool, bytes] = {}
        for q, scope in list(self._subscribers.items()):
            if not scope.allows(alarm["kind"]):
                continue
            hidden = scope.hides_details(alarm)
            if hidden not in events:
                events[hidden] = b"event: alarm\ndata: " + orjson.dumps(scope.shown(alarm)) + b"\n\n"
            try:
                q.put_nowait(events[hidden])
            except asyncio.QueueFull:
                # A viewer that stopped reading loses events rather than holding up the others.
                self.dropped += 1

    async def events(self, scope: access.Scope, keepalive_s: float = 15.0) -> AsyncIterator[bytes]:
        """Server-sent events for one viewer: changes of the alarms of the kinds in scope (as the scope shows them),
        and a keep-alive comment.

        Owner scopes are not supported here (the feed filters by kind only)."""
        if scope.owner_id is not None:
            raise ValueError("the live feed does not filter by owner")
        q: asyncio.Queue[bytes] = asyncio.Queue(self._queue_size)
        self._subscribers[q] = scope
        try:
            yield b": connected\n\n"
            while True:
                try:
                    yield await asyncio.wait_for(q.get(), keepalive_s)
                except TimeoutError:
                    yield b": keep-alive\n\n"
        finally:
            self._subscribers.pop(q, None)

    @property
    def viewers(self) -> int:
        """How many viewers are connected."""
        return len(self._subscribers)
