"""Where the heavy reads go: a read-only streaming replica while it answers and is close enough behind, else the
primary; /metrics says which served each read, and why.

The routes ask for a read connection (backend.api.deps.Reads) for what may be a little behind (trajectories, exports,
passages, the last-seen places in searches, station activity); everything else, and every write (audit records of
those very reads included), takes the request's primary connection. The replica's lag is measured in the background
every database_replica_check_s, so no request waits for it; a read that cannot get a replica connection in
database_replica_timeout_s is served by the primary and the replica counts as away until the next check finds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any, Literal, get_args

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from backend.settings import BackendSettings

log = logging.getLogger(__name__)

# Why a read went to the primary: no replica configured; the replica unreachable (or timing out); further behind than
# database_replica_max_lag_s; or the server named is not a standby at all (e.g. promoted: it no longer follows).
Fallback = Literal["no_replica", "replica_away", "replica_lagging", "not_a_standby"]
FALLBACKS: tuple[Fallback, ...] = get_args(Fallback)

# now() - pg_last_xact_replay_timestamp() alone grows on an idle primary (no new transaction to replay) without any
# real lag; so a standby that has replayed all the WAL it received, while its WAL receiver runs (streaming from the
# primary), is 0 s behind. When the receiver is gone the replica cannot know what it misses: the age of its last
# replayed transaction is the honest figure. NULL (nothing replayed yet, and not caught up) is unknown: too far.
_LAG_SQL = """
SELECT pg_is_in_recovery() AS standby,
       pg_last_wal_receive_lsn() IS NOT NULL
         AND pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn()
         AND EXISTS (SELECT FROM pg_stat_wal_receiver) AS caught_up,
       extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8 AS replayed_age_s
"""


class Reads:
    """The replica's pool beside the primary's: the one place that decides whether a heavy read goes to the replica."""

    def __init__(self, settings: BackendSettings) -> None:
        self.max_lag_s = settings.database_replica_max_lag_s
        self.check_s = settings.database_replica_check_s
        self.timeout_s = settings.database_replica_timeout_s
        self._pool: AsyncConnectionPool | None = None
        if settings.database_replica_url:
            self._pool = AsyncConnectionPool(
                settings.database_replica_url,
                min_size=1,
                max_size=10,
                open=False,
                check=AsyncConnectionPool.check_connection,
                kwargs={"connect_timeout": max(1, math.ceil(self.timeout_s))},
                name="replica",
            )
        # Reads served, by (served_by, reason): ("replica", "within_max_lag") or ("primary", a Fallback).
        self.served: Counter[tuple[str, str]] = Counter()
        # As of the last check: the replica's lag in seconds (None: not measured), whether it answered, and why reads
        # go to the primary now (None: they go to the replica).
        self.lag_s: float | None = None
        self.up = False
        self.fallback: Fallback | None = "no_replica" if self._pool is None else "replica_away"
        self._watch: asyncio.Task[None] | None = None
        self._probe: asyncio.Task[None] | None = None
        # Tasks left to finish on their own (a connection the pool gives after its read stopped waiting, going back).
        self._late: set[asyncio.Task[Any]] = set()

    @property
    def configured(self) -> bool:
        """Whether a replica is set (BIKEGUARD_DATABASE_REPLICA_URL)."""
        return self._pool is not None

    async def open(self) -> None:
        """Start the replica's pool without waiting for it (an absent replica must not stop the backend), measure its
        lag once, and keep measuring it in the background."""
        if self._pool is None:
            return
        await self._pool.open(wait=False)
        await self.check()
        self._watch = asyncio.create_task(self._keep_checking(), name="replica-lag")

    async def close(self) -> None:
        """Stop measuring and close the replica's pool."""
        for task in (self._watch, self._probe):
            if task is not None:
                task.cancel()
                # A probe stuck on a server that does not answer takes psycopg's cancellation (up to 10 s) to end.
                await asyncio.wait({task}, timeout=self.timeout_s)
        if self._pool is not None:
            await self._pool.close()

    async def _keep_checking(self) -> None:
        while True:
            await asyncio.sleep(self.check_s)
            await self.check()

    async def check(self) -> None:
        """Measure the replica's lag now, waiting for it at most database_replica_timeout_s, and decide where reads go
        until the next check."""
        if self._probe is not None and not self._probe.done():
            return  # the last probe still waits for a server that does not answer: it stays away
        self._probe = asyncio.create_task(self._measure(), name="replica-probe")
        # Not asyncio.timeout: cancelling a query on a server that does not answer would itself wait for it.
        done, _ = await asyncio.wait({self._probe}, timeout=self.timeout_s)
        if not done:
            self._away(f"no answer in {self.timeout_s} s")

    async def _measure(self) -> None:
        assert self._pool is not None
        try:
            async with self._pool.connection(timeout=self.timeout_s) as conn:
                row = await (await conn.execute(_LAG_SQL)).fetchone()
        except (PoolTimeout, psycopg.Error) as exc:
            self._away(f"{type(exc).__name__}: {exc}")
            return
        assert row is not None
        standby, caught_up, replayed_age_s = row
        self.up = True
        self.lag_s = 0.0 if caught_up else (replayed_age_s if replayed_age_s is not None else math.inf)
        if not standby:
            self._decide("not_a_standby", "it is not in recovery: not a standby")
        elif self.lag_s > self.max_lag_s:
            self._decide("replica_lagging", f"{self.lag_s:.1f} s behind (BIKEGUARD_DATABASE_REPLICA_MAX_LAG_S)")
        else:
            self._decide(None, f"{self.lag_s:.1f} s behind")

    def _away(self, why: str) -> None:
        self.up = False
        self.lag_s = None
        self._decide("replica_away", why)

    def _decide(self, fallback: Fallback | None, why: str) -> None:
        if fallback != self.fallback:
            if fallback is None:
                log.info("heavy reads go to the replica again: %s", why)
            else:
                log.warning("heavy reads go to the primary (%s): %s", fallback, why)
        self.fallback = fallback

    @contextlib.asynccontextmanager
    async def connection(self, primary: psycopg.AsyncConnection[Any]) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A connection for a heavy read: the replica's (its transaction committed at the end), or `primary` (the
        request's own) when the replica may not serve it."""
        conn = None
        fallback = self.fallback
        if self._pool is not None and fallback is None:
            conn = await self._replica_connection(self._pool)
            fallback = None if conn is not None else "replica_away"
        if self._pool is None or conn is None:
            self.served["primary", fallback or "replica_away"] += 1
            yield primary
            return
        self.served["replica", "within_max_lag"] += 1
        try:
            async with conn:
                yield conn
        except psycopg.OperationalError as exc:
            # Lost in the middle of a read: this one fails, the next go to the primary until a check finds it again.
            self._away(f"{type(exc).__name__}: {exc}")
            raise
        finally:
            await self._pool.putconn(conn)

    async def _replica_connection(self, pool: AsyncConnectionPool) -> psycopg.AsyncConnection[Any] | None:
        """A replica connection within database_replica_timeout_s, or None (and the replica counts as away)."""
        # The pool checks the connection it gives with a query, which a server that does not answer never finishes:
        # the read goes on without it, and a connection it gives later goes back to the pool.
        taking = asyncio.create_task(pool.getconn(timeout=self.timeout_s), name="replica-connection")
        done, _ = await asyncio.wait({taking}, timeout=self.timeout_s)
        if not done:
            self._late.add(taking)
            taking.add_done_callback(self._give_back)
            self._away(f"no connection in {self.timeout_s} s")
            return None
        if isinstance(taking.exception(), PoolTimeout):
            self._away(f"no connection in {self.timeout_s} s")
            return None
        return taking.result()

    def _give_back(self, taking: asyncio.Task[psycopg.AsyncConnection[Any]]) -> None:
        self._late.discard(taking)
        if self._pool is not None and not taking.cancelled() and taking.exception() is None:
            returning = asyncio.create_task(self._pool.putconn(taking.result()), name="replica-connection-back")
            self._late.add(returning)
            returning.add_done_callback(self._late.discard)
