"""The GPS side of a mobile reader: reads NMEA 0183 sentences from a second serial port, keeps the latest fix.

A reader in a patrol car or a handheld is a station without a fixed place: each sighting carries where the reader
was. The receiver's port is read like the radio's (pyserial `serial_for_url` in a thread of its own, reopened with
backoff when it fails); its lines are parsed with pynmea2. $GPRMC and $GPGGA (any talker: GP, GN, GL…) give a fix;
a sentence that fails its checksum, does not parse or says "no fix" is counted by reason and the loop goes on.
The aggregator asks `position_at` for the fix at a beacon: the latest fix, if it is fresh enough, else None (the
sighting goes without a position and is counted).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Literal

import pynmea2
import serial

from protocol.messages import ReaderPosition, utcnow

log = logging.getLogger(__name__)

# NMEA 0183 runs at 4800 baud; most receivers today default to 9600.
GPS_BAUD_RATE = 9600
# A line longer than this is no NMEA sentence (they are at most 82 characters): dropped, counted.
LINE_MAX_BYTES = 256

RejectReason = Literal["checksum", "unparsable", "no_fix", "too_long"]


class GpsError(Exception):
    """The GPS side cannot go on (its reader thread died of a bug, not of a port error)."""


@dataclass(frozen=True, slots=True)
class Fix:
    """One GPS fix: where (degrees), the receiver's time of the fix, and when the gateway received it."""

    lat: float
    lon: float
    fix_at: datetime
    received_at: datetime

    def position(self) -> ReaderPosition:
        """The fix as the wire's reader position."""
        return ReaderPosition(lat=self.lat, lon=self.lon, fix_at=self.fix_at)


def _fix_time(stamp: time, day: date | None, received_at: datetime) -> datetime:
    """The fix's time in UTC: GGA has no date, so it takes the received day, the one before around midnight."""
    stamp = stamp.replace(tzinfo=None)
    if day is not None:
        return datetime.combine(day, stamp, UTC)
    at = datetime.combine(received_at.date(), stamp, UTC)
    if at - received_at > timedelta(hours=12):
        at -= timedelta(days=1)
    return at


def read_fix(line: str, received_at: datetime) -> Fix | RejectReason | None:
    """A fix from one NMEA line; a reason it was refused; or None for a valid sentence that is not a fix (GSV …)."""
    try:
        message = pynmea2.parse(line.strip(), check=True)
    except pynmea2.ChecksumError:
        return "checksum"
    except pynmea2.ParseError:
        return "unparsable"
    try:
        if isinstance(message, pynmea2.types.talker.RMC):
            if message.status != "A" or not message.lat:
                return "no_fix"
            at = _fix_time(message.timestamp, message.datestamp, received_at)
        elif isinstance(message, pynmea2.types.talker.GGA):
            if not message.gps_qual or not message.lat:
                return "no_fix"
            at = _fix_time(message.timestamp, None, received_at)
        else:
            return None
        lat, lon = float(message.latitude), float(message.longitude)
    # A field that passed the checksum but holds no number (pynmea2 parses fields lazily, on access).
    except (ValueError, TypeError):
        return "unparsable"
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        return "unparsable"
    return Fix(lat, lon, at, received_at)


class Gps:
    """One GPS receiver on one serial port: `await run()` in a thread of its own; `position_at` for the fix."""

    def __init__(
        self,
        url: str,
        baud_rate: int = GPS_BAUD_RATE,
        *,
        fix_max_age_s: float = 10.0,
        read_timeout_s: float = 0.5,
        reopen_min_s: float = 0.25,
        reopen_max_s: float = 10.0,
        clock: Callable[[], datetime] = utcnow,
        open_port: Callable[..., serial.SerialBase] = serial.serial_for_url,
    ) -> None:
        self.url = url
        self.baud_rate = baud_rate
        self.fix_max_age = timedelta(seconds=fix_max_age_s)
        self.read_timeout_s = read_timeout_s
        self.reopen_min_s = reopen_min_s
        self.reopen_max_s = reopen_max_s
        self.clock = clock
        self.open_port = open_port
        self.latest: Fix | None = None
        self.fixes = 0
        self.ignored = 0  # valid sentences that are not fixes (satellites in view, course …)
        self.rejected: Counter[str] = Counter()
        self.port_errors = 0
        self._stop = threading.Event()
        self._crash: BaseException | None = None

    @property
    def rejected_total(self) -> int:
        """Sentences refused, all reasons."""
        return sum(self.rejected.values())

    def position_at(self, at: datetime) -> ReaderPosition | None:
        """The reader's position at `at`: the latest fix received at most fix_max_age before it, else None."""
        fix = self.latest
        if fix is None or abs(at - fix.received_at) > self.fix_max_age:
            return None
        return fix.position()

    def feed_line(self, raw: bytes) -> None:
        """Take one line off the port (also what the tests feed)."""
        if len(raw) > LINE_MAX_BYTES:
            self._reject("too_long", raw)
            return
        text = raw.decode("ascii", errors="replace")
        if not text.strip():
            return
        found = read_fix(text, self.clock())
        if isinstance(found, Fix):
            self.latest = found
            self.fixes += 1
        elif found is None:
            self.ignored += 1
        else:
            self._reject(found, raw)

    def _reject(self, reason: RejectReason, raw: bytes) -> None:
        self.rejected[reason] += 1
        # No fix is the receiver's normal state in a tunnel or a garage: counted, logged only at debug.
        level = logging.DEBUG if reason == "no_fix" else logging.WARNING
        if self.rejected[reason] <= 10 or self.rejected[reason] % 1000 == 0:
            log.log(
                level, "%s: NMEA sentence refused (%s, %d so far): %r", self.url, reason, self.rejected[reason], raw
            )

    async def run(self) -> None:
        """Read the port until cancelled (the reading happens in a thread; pyserial blocks)."""
        self._stop.clear()
        self._crash = None
        thread = threading.Thread(target=self._thread_main, name=f"gps {self.url}", daemon=True)
        thread.start()
        try:
            while thread.is_alive():
                await asyncio.sleep(0.5)
            # The station's supervisor restarts the station, as for a radio whose reader died.
            raise GpsError(f"{self.url}: GPS reader thread died") from self._crash
        finally:
            self._stop.set()
            while thread.is_alive():
                await asyncio.sleep(0.02)

    def _thread_main(self) -> None:
        try:
            self._read_forever()
        except BaseException as exc:
            # A bug, not a port problem (those are handled below): hand it to run() to raise.
            self._crash = exc
            raise

    def _read_forever(self) -> None:
        delay = self.reopen_min_s
        while not self._stop.is_set():
            try:
                port = self.open_port(self.url, baudrate=self.baud_rate, timeout=self.read_timeout_s, exclusive=True)
            except (OSError, ValueError) as exc:  # SerialException is an OSError
                log.warning("%s: cannot open the GPS port (%s); retry in %.1f s", self.url, exc, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, self.reopen_max_s)
                continue
            delay = self.reopen_min_s
            log.info("%s: GPS port open at %d baud", self.url, self.baud_rate)
            try:
                self._read_port(port)
            except OSError as exc:
                self.port_errors += 1
                log.warning("%s: GPS port failed (%s); reopening", self.url, exc)
                self._stop.wait(delay)
            finally:
                port.close()

    def _read_port(self, port: serial.SerialBase) -> None:
        pending = b""
        while not self._stop.is_set():
            data = port.read(max(1, getattr(port, "in_waiting", 0)))
            if not data:
                continue
            pending += data
            *lines, pending = pending.split(b"\n")
            for line in lines:
                self.feed_line(line)
            if len(pending) > LINE_MAX_BYTES:
                self._reject("too_long", pending[:LINE_MAX_BYTES])
                pending = b""
