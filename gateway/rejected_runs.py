"""The rejected-runs file: every byte run the radio's decoder refused, kept on the station's disk for the installer.

One JSON object a line (`at`, `station_id`, `reason`, `detail`, `length`, `raw_hex`, `truncated`), appended by a
writer thread of its own so that a slow or full disk never holds up the serial reader: the reader hands runs over
through a bounded queue and counts what it could not hand over. The thread starts with the first run refused, so
a station whose line is clean (most of a vendor bridge's thousand) has none. The file is rotated to one previous file
(`<file>.1`) when it would pass its size bound, so the two together never hold much more than twice that.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO

import orjson

from protocol.frames import FrameError

log = logging.getLogger(__name__)

# The reader thread never waits for the writer: past this many runs waiting, new ones are counted and dropped.
QUEUE_MAX = 10_000
# How long the writer gathers runs after the first before writing them (a run reaches the file this much later).
COALESCE_S = 0.2
# At most one warning per this many seconds about runs that could not be written (a full disk stays full).
WARN_INTERVAL_S = 60.0


_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, now: datetime) -> datetime:
    """A `since` as the installer gives it: an ISO 8601 time (UTC unless it says otherwise) or an age such as
    `90s`, `30m`, `2h`, `7d` counted back from now; ValueError if it is neither."""
    text = text.strip()
    unit = _UNITS_S.get(text[-1:].lower())
    if unit is not None and text[:-1].isdigit():
        return now - timedelta(seconds=int(text[:-1]) * unit)
    try:
        at = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(f"since {text!r}: not a time (2026-11-29T10:00:00Z) nor an age (90s, 30m, 2h, 7d)") from exc
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def default_path(spool_file: Path, station_id: str) -> Path:
    """Where a station keeps its rejected runs unless told otherwise: beside its spool, named after it."""
    return spool_file.parent / f"rejected-runs-{station_id}.jsonl"


def previous_path(path: Path) -> Path:
    """The file a rotation moves `path` to."""
    return path.with_name(path.name + ".1")


@dataclass(frozen=True, slots=True)
class RejectedRun:
    """One byte run the decoder refused: when it came off the port, whose it was, why, and its bytes."""

    at: datetime
    station_id: str
    reason: str
    detail: str
    length: int
    raw_hex: str
    truncated: bool

    @classmethod
    def of(cls, error: FrameError, at: datetime, station_id: str, max_bytes: int) -> RejectedRun:
        """The record of a decoder error, its bytes cut to the first max_bytes."""
        raw = error.raw
        detail = str(error).removesuffix(f": {raw.hex(' ')}")
        return cls(at, station_id, error.reason, detail, len(raw), raw[:max_bytes].hex(), len(raw) > max_bytes)

    def to_json(self) -> bytes:
        """One line of the file (without its newline)."""
        return orjson.dumps(
            {
                "at": self.at,
                "station_id": self.station_id,
                "reason": self.reason,
                "detail": self.detail,
                "length": self.length,
                "raw_hex": self.raw_hex,
                "truncated": self.truncated,
            }
        )

    @classmethod
    def parse(cls, line: bytes) -> RejectedRun:
        """A line of the file back into a record; ValueError (orjson's, or a missing field) if it is not one."""
        data = orjson.loads(line)
        try:
            return cls(
                datetime.fromisoformat(data["at"]),
                str(data["station_id"]),
                str(data["reason"]),
                str(data["detail"]),
                int(data["length"]),
                str(data["raw_hex"]),
                bool(data["truncated"]),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a rejected run: {exc!r}") from exc


class RejectedRunsFile:
    """Appends rejected runs to one bounded file from a writer thread; `add` never blocks and never raises.

    `start()` to take runs, `add()` from the reader thread (the first starts the writer thread), `close()` to write
    what is queued and stop.
    Counters: `written`, `dropped` (the queue was full), `write_errors` (the disk refused: full, read-only, gone).
    """

    def __init__(self, path: Path, station_id: str, *, max_bytes: int, run_max_bytes: int) -> None:
        self.path = path
        self.station_id = station_id
        self.max_bytes = max_bytes
        self.run_max_bytes = run_max_bytes
        self.written = 0
        self.dropped = 0
        self.write_errors = 0
        self.rotations = 0
        self._queue: queue.Queue[RejectedRun | None] = queue.Queue(maxsize=QUEUE_MAX)
        self._thread: threading.Thread | None = None
        self._taking = False  # between start() and close(): a run added starts the writer if it is not running
        self._lock = threading.Lock()  # add() (the reader's thread) and close() (another) start and stop the writer
        self._file: IO[bytes] | None = None
        self._warned_at = -WARN_INTERVAL_S
        self._unwarned = 0

    @property
    def unsaved(self) -> int:
        """Runs that never reached the file: the writer was behind, or the disk refused them."""
        return self.dropped + self.write_errors

    @property
    def writing(self) -> bool:
        """Whether the writer thread runs (from the first run added after start() until close())."""
        return self._thread is not None

    def start(self) -> None:
        """Take runs from now on (again after close); the writer thread starts with the first, or now if runs
        added meanwhile wait."""
        self._taking = True
        if not self._queue.empty():
            self._start_writer()

    def add(self, error: FrameError, at: datetime) -> None:
        """Queue one rejected run for the file; counted in `dropped` if the writer is that far behind."""
        if self._thread is None and self._taking:
            self._start_writer()
        try:
            self._queue.put_nowait(RejectedRun.of(error, at, self.station_id, self.run_max_bytes))
        except queue.Full:
            self.dropped += 1

    def _start_writer(self) -> None:
        with self._lock:
            if self._thread is None and self._taking:
                self._thread = threading.Thread(
                    target=self._write_forever, name=f"rejected runs {self.path}", daemon=True
                )
                self._thread.start()

    def close(self) -> None:
        """Write what is queued, stop the writer thread and close the file (blocks until then)."""
        with self._lock:
            self._taking = False
            thread, self._thread = self._thread, None
        if thread is None:
            return
        # The stop mark waits for room like a run would not: close() is not the reader's path.
        self._queue.put(None)
        thread.join()

    def _write_forever(self) -> None:
        try:
            while (run := self._queue.get()) is not None:
                # A noisy line rejects runs in every read: gather them for a moment and write them in one wake of
                # this thread rather than one each (the thread switches cost more than the writes).
                time.sleep(COALESCE_S)
                lines = [run.to_json() + b"\n"]
                stop = False
                while not stop:
                    try:
                        more = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if more is None:
                        stop = True
                    else:
                        lines.append(more.to_json() + b"\n")
                self._write(lines)
                if stop:
                    return
        finally:
            self._close_file()

    def _write(self, lines: list[bytes]) -> None:
        """Append lines, rotating first whenever the next would pass max_bytes; a refused write is counted."""
        for line in lines:
            try:
                file = self._open()
                if file.tell() + len(line) > self.max_bytes and file.tell() > 0:
                    file = self._rotate()
                if file.write(line) != len(line):
                    raise OSError(f"short write to {self.path}")
                self.written += 1
            except OSError as exc:
                self._failed(exc)
                self._close_file()

    def _open(self) -> IO[bytes]:
        if self._file is None:
            # Unbuffered: each run is one write, so a refused one is known (and counted) at once.
            self._file = self.path.open("ab", buffering=0)
        return self._file

    def _rotate(self) -> IO[bytes]:
        self._close_file()
        os.replace(self.path, previous_path(self.path))
        self.rotations += 1
        return self._open()

    def _close_file(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            with contextlib.suppress(OSError):  # nothing is buffered: a failing close loses nothing
                file.close()

    def _failed(self, exc: OSError) -> None:
        self.write_errors += 1
        self._unwarned += 1
        now = time.monotonic()
        if now - self._warned_at >= WARN_INTERVAL_S:
            log.warning(
                "%s: rejected runs not written (%s); %d run(s) lost since the last warning",
                self.path,
                exc,
                self._unwarned,
            )
            self._warned_at, self._unwarned = now, 0


def read_runs(path: Path, *, since: datetime | None = None, station_id: str | None = None) -> Iterator[RejectedRun]:
    """The runs kept in a station's file and its previous one, oldest first; a line being written is skipped.

    Safe while the gateway writes and rotates: the current file is opened first, and the previous one is read
    only if it is not that same file (a rotation in between moved it).
    """
    with contextlib.ExitStack() as files:
        opened: list[IO[bytes]] = []
        for candidate in (path, previous_path(path)):
            with contextlib.suppress(FileNotFoundError):
                opened.append(files.enter_context(candidate.open("rb")))
        if len(opened) == 2 and os.fstat(opened[0].fileno()).st_ino == os.fstat(opened[1].fileno()).st_ino:
            opened.pop()
        for file in reversed(opened):
            for line in file:
                if not line.endswith(b"\n"):
                    break  # the writer has not finished this line
                try:
                    run = RejectedRun.parse(line)
                except ValueError:
                    continue  # a line cut by a full disk; the rest of the file is still worth reading
                if (since is None or run.at >= since) and (station_id is None or run.station_id == station_id):
                    yield run
