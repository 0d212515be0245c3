"""A simulated radio module: hears beacons and writes real serial frames to a pty at line speed.

The gateway opens `RadioModule.port` (the pty's slave side) exactly as it would open
`/dev/ttyUSB0`, e.g. with pyserial `serial_for_url(port, baudrate=115200)`.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import termios
import threading
import time
import tty
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

from protocol.frames import BAUD_RATE, Beacon, BeaconV2, Frame, ModuleStatus, encode

BITS_PER_BYTE = 10  # 8N1: start bit, 8 data bits, stop bit


class RadioError(Exception):
    """Base error of the simulated radio module."""


class RadioClosedError(RadioError):
    """The module's pty was closed; nothing more can be sent."""


@dataclass(frozen=True, slots=True)
class PathLoss:
    """Log-distance path loss with log-normal shadowing: the RSSI a station measures at a distance."""

    ref_rssi_dbm: float = -40.0  # at 1 m
    exponent: float = 2.7
    shadowing_db: float = 3.0
    range_m: float = 100.0

    def mean_rssi_dbm(self, distance_m: float) -> float:
        """The expected RSSI at a distance, without shadowing."""
        return self.ref_rssi_dbm - 10.0 * self.exponent * math.log10(max(distance_m, 1.0))

    def rssi_dbm(self, distance_m: float, rng: random.Random) -> int | None:
        """One measured RSSI (an i8), or None when the tag is out of range and not heard."""
        if distance_m > self.range_m:
            return None
        rssi = self.mean_rssi_dbm(distance_m) + rng.gauss(0.0, self.shadowing_db)
        return max(-128, min(127, round(rssi)))


@dataclass(slots=True)
class RadioStats:
    """What a module did; `frames_overflowed` and `bytes_dropped` are losses, never silent."""

    frames_queued: int = 0
    frames_overflowed: int = 0  # refused because the module's buffer (line backlog) was full
    bytes_written: int = 0
    bytes_dropped: int = 0  # went down the line while nobody read the pty
    status_frames: int = 0
    garbage_injected: int = 0
    frames_corrupted: int = 0


def raw_pty(baud_rate: int) -> tuple[int, int, str]:
    """A pty pair in raw mode at `baud_rate` (115200 if the system has no such speed): (master, slave, slave's path).
    The master does not block; a simulated device writes it, the software under test opens the path."""
    master, slave = os.openpty()
    try:
        # Raw mode before anyone opens the slave: the default line discipline would echo,
        # translate CR/LF and treat 0x03 as Ctrl-C in the bytes we write.
        tty.setraw(slave)
        attrs = termios.tcgetattr(slave)
        attrs[4] = attrs[5] = getattr(termios, f"B{baud_rate}", termios.B115200)
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
        os.set_blocking(master, False)
        return master, slave, os.ttyname(slave)
    except OSError:
        os.close(master)
        os.close(slave)
        raise


class RadioModule:
    """One station's radio module on a pty pair; a context manager that closes both fds.

    Frames are queued by `hear`/`send` and released by `pump` no earlier than a real
    115200 baud line would have finished carrying them, in chunks. Call `pump` often
    (every few ms) yourself, or let `start` run a pacing thread that does.
    Writes are non-blocking: when nobody reads the pty and its buffer is full, the bytes are
    dropped and counted in `stats.bytes_dropped`, as a real serial line would lose them.
    """

    def __init__(
        self,
        *,
        baud_rate: int = BAUD_RATE,
        firmware: int = 0x0102,
        noise_floor_dbm: int = -97,
        status_interval_s: float | None = 10.0,
        garbage_rate: float = 0.0,
        corrupt_rate: float = 0.0,
        buffer_s: float = 0.5,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.baud_rate = baud_rate
        self.firmware = firmware
        self.noise_floor_dbm = noise_floor_dbm
        self.status_interval_s = status_interval_s
        self.garbage_rate = garbage_rate
        self.corrupt_rate = corrupt_rate
        self.buffer_s = buffer_s
        self.stats = RadioStats()
        self._byte_s = BITS_PER_BYTE / baud_rate
        self._rng = rng or random.Random()
        self._clock = clock
        self._lock = threading.Lock()
        # (time the last byte has crossed the line, bytes), in line order.
        self._line: deque[tuple[float, bytes]] = deque()
        self._line_free_at = 0.0
        self._started_at = clock()
        self._next_status_at = self._started_at
        self._next_drain_at = self._started_at
        self._pacer: threading.Thread | None = None
        self._stop = threading.Event()
        self._master, self._slave, self.port = raw_pty(baud_rate)
        self.closed = False

    def __enter__(self) -> RadioModule:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RadioModule(port={self.port!r}, closed={self.closed})"

    def hear(self, beacon: Beacon | BeaconV2) -> bool:
        """Report a beacon (v1, or v2 as frame TYPE 0x11) heard on the air; False if the buffer was full and it was
        lost."""
        return self.send(beacon)

    def send(self, frame: Frame) -> bool:
        """Queue one frame for the line (maybe garbled, if injection is on); False if dropped."""
        data = encode(frame)
        rng = self._rng
        if self.corrupt_rate and rng.random() < self.corrupt_rate:
            bit = rng.randrange(len(data) * 8)
            flipped = bytearray(data)
            flipped[bit // 8] ^= 1 << (bit % 8)
            data = bytes(flipped)
            self.stats.frames_corrupted += 1
        if self.garbage_rate and rng.random() < self.garbage_rate:
            data = rng.randbytes(rng.randint(1, 16)) + data
            self.stats.garbage_injected += 1
        return self.send_raw(data)

    def send_raw(self, data: bytes) -> bool:
        """Queue raw bytes for the line as one unit; False if the buffer was full and they were lost."""
        with self._lock:
            if self.closed:
                raise RadioClosedError(f"radio module on {self.port} is closed")
            now = self._clock()
            start = max(self._line_free_at, now)
            if start - now > self.buffer_s:
                self.stats.frames_overflowed += 1
                return False
            self._line_free_at = start + len(data) * self._byte_s
            self._line.append((self._line_free_at, data))
            self.stats.frames_queued += 1
            return True

    def _status(self, now: float) -> ModuleStatus:
        noise = self.noise_floor_dbm + self._rng.randint(-2, 2)
        return ModuleStatus(noise, self.firmware, int(now - self._started_at) & 0xFFFFFFFF)

    def pump(self) -> int:
        """Write every byte the line has finished carrying by now; return how many were written."""
        if self.closed:
            return 0
        now = self._clock()
        with self._lock:
            status_due = self.status_interval_s is not None and now >= self._next_status_at
            if status_due:
                self._next_status_at = now + (self.status_interval_s or 0.0)
        if status_due and self.send(self._status(now)):
            self.stats.status_frames += 1
        with self._lock:
            if self.closed:
                return 0
            line = self._line
            ready: list[bytes] = []
            while line and line[0][0] <= now:
                ready.append(line.popleft()[1])
            if now >= self._next_drain_at:
                self._next_drain_at = now + 1.0
                self._drain_host_writes()
            if not ready:
                return 0
            chunk = b"".join(ready)
            try:
                written = os.write(self._master, chunk)
            except BlockingIOError:
                written = 0
            except OSError as exc:
                raise RadioClosedError(f"writing to {self.port} failed: {exc}") from exc
            # The line does not wait for the host: what the pty cannot take now is lost.
            self.stats.bytes_written += written
            self.stats.bytes_dropped += len(chunk) - written
            return written

    def _drain_host_writes(self) -> None:
        """Discard what the host wrote to the port, so a chatty host can never block on us."""
        with contextlib.suppress(OSError):  # BlockingIOError: nothing (more) to read
            while os.read(self._master, 4096):
                pass

    def flush(self, timeout_s: float = 5.0) -> None:
        """Pump until everything queued has crossed the line (for tests and orderly shutdown)."""
        deadline = self._clock() + timeout_s
        while self._line and self._clock() < deadline:
            self.pump()
            time.sleep(min(0.002, max(0.0, self._line_free_at - self._clock())))
        self.pump()

    def start(self, tick_s: float = 0.005) -> None:
        """Pump from a background thread every `tick_s` until `stop` or `close`."""
        if self._pacer is not None:
            return
        self._stop.clear()
        self._pacer = threading.Thread(target=self._run, args=(tick_s,), name=f"radio {self.port}", daemon=True)
        self._pacer.start()

    def _run(self, tick_s: float) -> None:
        while not self._stop.wait(tick_s):
            try:
                self.pump()
            except RadioClosedError:
                return

    def stop(self) -> None:
        """Stop the pacing thread, if one runs."""
        self._stop.set()
        if self._pacer is not None and self._pacer is not threading.current_thread():
            self._pacer.join(timeout=2.0)
        self._pacer = None

    def close(self) -> None:
        """Stop pacing and close both ends of the pty; a reader of the port then sees end of file."""
        self.stop()
        with self._lock:
            if self.closed:
                return
            self.closed = True
            self._line.clear()
            for fd in (self._master, self._slave):
                with contextlib.suppress(OSError):
                    os.close(fd)
