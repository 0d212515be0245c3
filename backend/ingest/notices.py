"""Warnings about one station (or one of its topics), at most one per interval, however many messages it sends."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

# Forget the oldest when this many stations have been warned about: a flood of made-up ids cannot grow it forever.
_MAX_STATIONS = 10_000


class StationNotices:
    """Says whether a station is due a warning (once per every_s each); shared by threads, hence the lock."""

    def __init__(self, every_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.every_s = every_s
        self._clock = clock
        self._warned_at: dict[str, float] = {}
        self._lock = threading.Lock()

    def due(self, station_id: str) -> bool:
        """True (and remembered) when the station was not warned about in the last every_s."""
        with self._lock:
            now = self._clock()
            last = self._warned_at.get(station_id)
            if last is not None and now - last < self.every_s:
                return False
            self._warned_at[station_id] = now
            if len(self._warned_at) > _MAX_STATIONS:
                for sid, _ in sorted(self._warned_at.items(), key=lambda kv: kv[1])[: _MAX_STATIONS // 2]:
                    del self._warned_at[sid]
            return True
