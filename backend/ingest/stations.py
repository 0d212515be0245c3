"""Which stations the ingest accepts messages from: registered and not decommissioned, cached for a few seconds.

One query every refresh interval instead of one per message (which also notices decommissioned stations).
An id missing from the cache is looked up by primary key, once per flush for all the missing ids together,
so a station registered a moment before its first message is never refused, and messages from stations
that are not registered cost one small indexed query per flush, not a reload.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import psycopg

from backend.ingest.notices import StationNotices

log = logging.getLogger(__name__)

UNKNOWN_REASON = "unknown station"


class KnownStations:
    """The ids of registered, not decommissioned stations, refreshed from the database when stale.

    Shared by the ingest's writer threads (sightings and alerts lanes), hence the lock.
    """

    def __init__(
        self, refresh_s: float = 5.0, warn_every_s: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.refresh_s = refresh_s
        self.warn_every_s = warn_every_s
        self._clock = clock
        self._ids: frozenset[str] = frozenset()
        self._loaded_at: float | None = None
        self._notices = StationNotices(warn_every_s, clock)
        self.refreshes = 0
        self.lookups = 0
        self._lock = threading.Lock()

    def refresh(self, conn: psycopg.Connection) -> None:
        """Reload the ids now."""
        rows = conn.execute("SELECT station_id FROM stations WHERE lifecycle <> 'decommissioned'").fetchall()
        self._ids = frozenset(r[0] for r in rows)
        self._loaded_at = self._clock()
        self.refreshes += 1

    def refused(self, conn: psycopg.Connection, station_ids: set[str]) -> set[str]:
        """Those of station_ids that may not send (not registered, or decommissioned)."""
        with self._lock:
            return self._refused(conn, station_ids)

    def _refused(self, conn: psycopg.Connection, station_ids: set[str]) -> set[str]:
        if self._loaded_at is None or self._clock() - self._loaded_at >= self.refresh_s:
            self.refresh(conn)
        missing = station_ids - self._ids
        if not missing:
            return set()
        self.lookups += 1
        found = {
            r[0]
            for r in conn.execute(
                "SELECT station_id FROM stations WHERE station_id = ANY(%s) AND lifecycle <> 'decommissioned'",
                (sorted(missing),),
            ).fetchall()
        }
        self._ids |= found
        return missing - found

    def reason(self, station_id: str) -> str:
        """The reject reason kept with a message from a station that is not accepted."""
        return f"{UNKNOWN_REASON} {station_id}"

    def warn(self, station_id: str, topic: str) -> None:
        """One WARNING per station per warn_every_s, however many messages it sends."""
        if not self._notices.due(station_id):
            return
        log.warning(
            "refusing messages from station %s (on %s): not registered, or decommissioned; register it"
            " (POST /api/stations) before its gateway publishes. Kept in rejected_messages; next warning"
            " for it in %.0f s at the earliest",
            station_id,
            topic,
            self.warn_every_s,
        )
