"""Group commit for the spools of many stations in one process (the vendor bridge).

Each such spool commits without waiting for the disk (`Spool(fsync=False)`: SQLite writes its WAL and goes on).
Whatever must not happen before a commit is on disk (acknowledging a vendor station's upload, after which the
station forgets its reads) waits here instead: `after(path, then)`. One pass at a time fsyncs the WAL of every spool
waited on since the last pass, on a thread of its own, and then runs what waited. So a second of a thousand stations
costs a few passes, off the event loop, where each station's own fsync'd commit stalled the loop for every station.

A WAL fsynced from another descriptor is on disk as surely as one SQLite fsynced itself (Linux syncs the file, not
the descriptor); SQLite still fsyncs the WAL and the database at each of its checkpoints, so what a checkpoint moved
out of the WAL is durable too. A process killed meanwhile loses nothing either: its writes are in the kernel's cache.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)


def sync_spool_file(path: Path) -> None:
    """Put on disk everything committed so far to the spool at `path` (its WAL; without one, nothing is pending)."""
    try:
        fd = os.open(f"{path}-wal", os.O_RDONLY)
    except FileNotFoundError:
        return  # no WAL: SQLite checkpointed and removed it at close, syncing the database as it did
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SpoolSync:
    """`await run()` in the loop whose stations call `after`; passes until cancelled."""

    def __init__(self, sync: Callable[[Path], None] = sync_spool_file) -> None:
        self._sync = sync
        self._waiting: dict[Path, list[Callable[[], None]]] = {}
        self._wake = asyncio.Event()
        self.passes = 0
        self.files_synced = 0
        self.errors = 0  # spools that could not be synced: what waited on them did not run (a vendor station resends)
        self.last_pass_s = 0.0

    def after(self, path: Path, then: Callable[[], None]) -> None:
        """Run `then` (on the loop) once everything committed to the spool at `path` so far is on disk."""
        self._waiting.setdefault(path, []).append(then)
        self._wake.set()

    async def run(self) -> None:
        """Sync and run what waited, one pass at a time, until cancelled."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            waiting, self._waiting = self._waiting, {}
            started = time.monotonic()
            failed = await asyncio.to_thread(self._sync_all, list(waiting))
            self.last_pass_s = time.monotonic() - started
            self.passes += 1
            for path, thens in waiting.items():
                if path not in failed:
                    for then in thens:
                        then()

    def _sync_all(self, paths: list[Path]) -> set[Path]:
        """Sync each spool; the paths that failed (logged and counted)."""
        failed: set[Path] = set()
        for path in paths:
            try:
                self._sync(path)
            except OSError as exc:
                failed.add(path)
                self.errors += 1
                log.warning("spool %s: cannot sync it to disk (%s): what waited on it is not done", path, exc)
            # Deliberately broad, and only here: whatever else one spool's sync raises fails that spool alone, never
            # the passes every other station's acknowledgements wait on. Cancellation is not an Exception.
            except Exception:
                failed.add(path)
                self.errors += 1
                log.exception("spool %s: its sync failed: what waited on it is not done", path)
            else:
                self.files_synced += 1
        return failed
