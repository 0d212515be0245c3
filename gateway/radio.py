"""The radio side: reads the module's serial port in a thread and hands frames to asyncio.

pyserial blocks, so one thread per port reads and decodes; decoded frames cross into the event
loop with `call_soon_threadsafe`. A port that fails (unplugged USB adapter, a pty whose other end
closed, a dropped socket://) is logged and reopened with backoff; the radio never raises out.
The station consumes its frames (`get`); the self-test observes the same radio (`take`, `wait_for`,
and what the port did: `opened`, `open_error`, `port_error`, `bytes_total`). Every byte run the decoder
refuses goes to the station's rejected-runs file (gateway/rejected_runs.py), written by a thread of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from itertools import islice
from typing import TypeVar, cast

import serial

from gateway.rejected_runs import RejectedRunsFile
from gateway.settings import GatewaySettings
from protocol.frames import Frame, FrameDecoder, FrameError
from protocol.messages import utcnow

log = logging.getLogger(__name__)

T = TypeVar("T")

# How many of the latest rejected runs the decoder keeps in memory (the self-test shows a few of them).
RECENT_ERRORS = 100


@dataclass(frozen=True, slots=True)
class Reception:
    """One decoded frame and when its bytes came off the port."""

    received_at: datetime
    frame: Frame


class RadioError(Exception):
    """The radio side cannot go on (its reader thread died of a bug, not of a port error)."""


class RejectLog:
    """Logs rejected byte runs with their hex, at most `limit` per `window_s`, then a summary."""

    def __init__(self, source: str, limit: int = 10, window_s: float = 10.0) -> None:
        self.source = source
        self.limit = limit
        self.window_s = window_s
        self._window_start = 0.0
        self._logged = 0
        self._suppressed = 0

    def __call__(self, error: FrameError) -> None:
        now = time.monotonic()
        if now - self._window_start >= self.window_s:
            if self._suppressed:
                log.warning("%s: %d more rejected runs not logged", self.source, self._suppressed)
            self._window_start, self._logged, self._suppressed = now, 0, 0
        if self._logged < self.limit:
            self._logged += 1
            log.warning("%s: rejected %s: %s", self.source, error.reason, error)
        else:
            self._suppressed += 1


class Radio:
    """One radio module on one serial port: `await run()` to read, `await get()` for frames."""

    def __init__(
        self,
        url: str,
        baud_rate: int,
        *,
        read_timeout_s: float = 0.2,
        reopen_min_s: float = 0.25,
        reopen_max_s: float = 10.0,
        queue_max: int = 10_000,
        clock: Callable[[], datetime] = utcnow,
        open_port: Callable[..., serial.SerialBase] = serial.serial_for_url,
        rejected_runs: RejectedRunsFile | None = None,
    ) -> None:
        self.url = url
        self.baud_rate = baud_rate
        self.read_timeout_s = read_timeout_s
        self.reopen_min_s = reopen_min_s
        self.reopen_max_s = reopen_max_s
        self.clock = clock
        self.open_port = open_port
        self.decoder = FrameDecoder()
        # Unbounded while one read is decoded, so that each of its rejected runs reaches the file however many
        # there are; cut back to RECENT_ERRORS after every read.
        self.decoder.recent_errors = deque()
        self.rejected_runs = rejected_runs
        self.opened = 0
        self.port_errors = 0
        self.dropped = 0
        self.bytes_total = 0
        self.open_error: OSError | ValueError | None = None  # why the port last failed to open
        self.port_error: OSError | None = None  # why an open port last failed
        self._queue: asyncio.Queue[Reception] = asyncio.Queue(maxsize=queue_max)
        self._news = asyncio.Event()  # set in the loop whenever frames arrive or the port opens or fails
        self._stop = threading.Event()
        self._reject_log = RejectLog(url)
        self._crash: BaseException | None = None

    @property
    def frames(self) -> int:
        """Valid frames decoded since start."""
        return self.decoder.frames

    @property
    def rejected(self) -> Counter[str]:
        """Rejected byte runs by reason (garbage, crc, bad_length, …)."""
        return self.decoder.rejected

    @property
    def rejected_total(self) -> int:
        """All rejected byte runs."""
        return sum(self.decoder.rejected.values())

    # A radio module does not keep what it sent: there is nothing to acknowledge (gateway.station.Receiver).
    acknowledges = False

    def spooled(self) -> None:
        """Nothing to do: the module is never told what is safe."""

    @property
    def on_air(self) -> bool:
        """Always: a station with a radio module is on the air while its gateway runs (a failing port shows in
        its counters and the self-test)."""
        return True

    @classmethod
    def of_station(
        cls,
        settings: GatewaySettings,
        *,
        clock: Callable[[], datetime] = utcnow,
        open_port: Callable[..., serial.SerialBase] = serial.serial_for_url,
    ) -> Radio:
        """The radio of the station these settings describe (for the gateway and its self-test alike)."""
        return cls(
            settings.serial_url,
            settings.baud_rate,
            read_timeout_s=settings.serial_read_timeout_s,
            reopen_min_s=settings.serial_reopen_min_s,
            reopen_max_s=settings.serial_reopen_max_s,
            clock=clock,
            open_port=open_port,
            rejected_runs=RejectedRunsFile(
                settings.rejected_runs_file,
                settings.station_id,
                max_bytes=settings.rejected_runs_max_bytes,
                run_max_bytes=settings.rejected_run_max_bytes,
            ),
        )

    async def get(self) -> Reception:
        """The next decoded frame."""
        return await self._queue.get()

    async def receive(self) -> list[Reception]:
        """The decoded frames waiting now, in order: at least one (waits for it)."""
        return [await self.get(), *self.take()]

    def take(self) -> list[Reception]:
        """Every decoded frame waiting now, without waiting."""
        taken: list[Reception] = []
        while not self._queue.empty():
            taken.append(self._queue.get_nowait())
        return taken

    async def wait_for(self, found: Callable[[], T | None], timeout_s: float | None) -> T | None:
        """Wait until found() gives something (returned) or timeout_s pass (None; None waits as long as it takes).

        found() is asked at once and again whenever frames arrive or the port opens or fails.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        while True:
            self._news.clear()  # before asking: news that comes while found() runs wakes the wait below
            result = found()
            if result is not None or (deadline is not None and loop.time() >= deadline):
                return result
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    await self._news.wait()

    async def run(self) -> None:
        """Read the port until cancelled; reopens it whenever it fails."""
        loop = asyncio.get_running_loop()
        self._stop.clear()
        self._crash = None
        if self.rejected_runs is not None:
            self.rejected_runs.start()
        # A thread of our own, not the default executor: with many stations in one process the
        # executor's few workers would all be stuck in blocking reads.
        thread = threading.Thread(target=self._thread_main, args=(loop,), name=f"radio {self.url}", daemon=True)
        thread.start()
        try:
            while thread.is_alive():
                await asyncio.sleep(0.5)
            raise RadioError(f"{self.url}: reader thread died") from self._crash
        finally:
            self._stop.set()
            while thread.is_alive():
                await asyncio.sleep(0.02)
            if self.rejected_runs is not None:
                # What the reader handed over is written before the radio counts as stopped.
                await asyncio.to_thread(self.rejected_runs.close)

    def _thread_main(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            self._read_forever(loop)
        except BaseException as exc:
            # A bug, not a port problem (those are handled below): hand it to run() to raise.
            self._crash = exc
            raise

    def _read_forever(self, loop: asyncio.AbstractEventLoop) -> None:
        delay = self.reopen_min_s
        while not self._stop.is_set():
            try:
                port = self.open_port(
                    self.url, baudrate=self.baud_rate, timeout=self.read_timeout_s, exclusive=True
                )  # a second reader would steal frames
            except (OSError, ValueError) as exc:  # SerialException is an OSError
                self.open_error = exc
                loop.call_soon_threadsafe(self._news.set)
                log.warning("%s: cannot open serial port (%s); retry in %.1f s", self.url, exc, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, self.reopen_max_s)
                continue
            self.opened += 1
            loop.call_soon_threadsafe(self._news.set)
            delay = self.reopen_min_s
            log.info("%s: serial port open at %d baud", self.url, self.baud_rate)
            try:
                self._read_port(port, loop)
                # A clean return means stop was asked for.
            except OSError as exc:
                self.port_errors += 1
                self.port_error = exc
                loop.call_soon_threadsafe(self._news.set)
                log.warning("%s: serial port failed (%s); reopening", self.url, exc)
                self._stop.wait(delay)
            finally:
                port.close()

    def _read_port(self, port: serial.SerialBase, loop: asyncio.AbstractEventLoop) -> None:
        decoder = self.decoder
        while not self._stop.is_set():
            # read(1) returns as soon as one byte is there (or at the timeout); then take the rest. Every pyserial
            # port class has in_waiting, though their base class does not declare it.
            data = port.read(max(1, cast(serial.Serial, port).in_waiting))
            if not data:
                continue
            self.bytes_total += len(data)
            received_at = self.clock()
            before = self.rejected_total
            frames = decoder.feed(data)
            new_rejects = self.rejected_total - before
            if new_rejects:
                self._rejected(new_rejects, received_at)
            if frames:
                loop.call_soon_threadsafe(self._deliver, [Reception(received_at, f) for f in frames])

    def _rejected(self, count: int, received_at: datetime) -> None:
        """Log (rate-limited) and keep (in the file) the last `count` rejected runs, then trim the decoder's list."""
        recent = self.decoder.recent_errors
        for error in islice(recent, len(recent) - count, None):
            self._reject_log(error)
            if self.rejected_runs is not None:
                self.rejected_runs.add(error, received_at)
        for _ in range(len(recent) - RECENT_ERRORS):
            recent.popleft()

    def _deliver(self, receptions: list[Reception]) -> None:
        self._news.set()
        for reception in receptions:
            try:
                self._queue.put_nowait(reception)
            except asyncio.QueueFull:
                # The loop is not keeping up; count it rather than grow without bound.
                self.dropped += 1
