"""Group commit for the spools of many stations in one process (the vendor bridge).

Each such spool commits without waiting for the disk (`Spool(fsync=False)`: SQLite writes its WAL and goes on).
Whatever must not happen before a commit is on disk (acknowledging a vendor station's upload, after which the
station forgets its reads) waits here instead: `after(path, then)`. One pass at a time puts every spool waited on
since the last pass on disk, on a thread of its own, and then runs what waited. So a second of a thousand stations
costs a few passes, off the event loop, where each station's own fsync'd commit stalled the loop for every station.

A pass is one `syncfs` of the spools' filesystem (Linux): every file on it written so far goes to disk at once,
with one journal commit. An fsync of each spool's WAL in turn cost the bridge of 1,000 stations 2-6 ms a file
(each a journal commit of its own, and a wait for the interpreter's lock on a core the event loop keeps busy):
passes of 120 spools took 0.3-0.7 s and every upload's acknowledgement waited for them (docs/benchmarks.md, "Vendor
bridge"). It also syncs whatever else was written to that filesystem; the spools belong on the gateway's own
disk. Where there is no `syncfs`, each spool's WAL is fsynced (`sync_spool_file`).

A WAL put on disk from another descriptor, or with its whole filesystem, is on disk as surely as one SQLite fsynced
itself (Linux syncs the file, not the descriptor, and reports a write-back error to the next sync that has not seen
it); SQLite still fsyncs the WAL and the database at each of its checkpoints, so what a checkpoint moved out of the
WAL is durable too. A process killed meanwhile loses nothing either: its writes are in the kernel's cache.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

# A list of spools to put on disk -> those that could not be (what waited on them does not run).
SyncPass = Callable[[Sequence[Path]], set[Path]]


def _libc_syncfs() -> Callable[[int], int] | None:
    """The C library's syncfs(fd), None where there is none (not Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function: Callable[[int], int] = libc.syncfs  # a foreign call: the interpreter's lock is released
    except (OSError, AttributeError):
        return None
    return function


_SYNCFS = _libc_syncfs()


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


def sync_filesystem(directory: Path) -> None:
    """Put on disk everything written so far to the filesystem holding `directory` (syncfs); OSError if it cannot."""
    if _SYNCFS is None:
        raise OSError(38, "syncfs is not available here")
    fd = os.open(directory, os.O_RDONLY)
    try:
        if _SYNCFS(fd) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, os.strerror(errno), str(directory))
    finally:
        os.close(fd)


def sync_spools(paths: Sequence[Path]) -> set[Path]:
    """Put the spools at `paths` on disk: one syncfs for the spools of each directory, or (without syncfs) an fsync
    of each spool's WAL; the paths that could not be, logged."""
    failed: set[Path] = set()
    if _SYNCFS is None:
        for path in paths:
            try:
                sync_spool_file(path)
            except OSError as exc:
                failed.add(path)
                log.warning("spool %s: cannot sync it to disk (%s): what waited on it is not done", path, exc)
        return failed
    by_directory: dict[Path, list[Path]] = {}
    for path in paths:
        by_directory.setdefault(path.parent, []).append(path)
    for directory, spools in by_directory.items():
        try:
            sync_filesystem(directory)
        except OSError as exc:
            failed.update(spools)
            log.warning("spools in %s: cannot sync them to disk (%s): what waited on them is not done", directory, exc)
    return failed


class SpoolSync:
    """`await run()` in the loop whose stations call `after`; passes until cancelled."""

    def __init__(self, sync: SyncPass = sync_spools) -> None:
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
            self.files_synced += len(waiting) - len(failed)
            self.errors += len(failed)
            for path, thens in waiting.items():
                if path not in failed:
                    for then in thens:
                        then()

    def _sync_all(self, paths: list[Path]) -> set[Path]:
        """The pass: the paths that could not be synced."""
        try:
            return self._sync(paths) & set(paths)
        # Deliberately broad, and only here: whatever else a pass raises fails that pass's spools, never the passes
        # after it, which every station's acknowledgements wait on. Cancellation is not an Exception.
        except Exception:
            log.exception("syncing %d spools failed: what waited on them is not done", len(paths))
            return set(paths)
