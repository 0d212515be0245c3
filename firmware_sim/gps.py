"""A simulated GPS receiver for a mobile reader: NMEA 0183 sentences ($GPRMC, $GPGGA) on a pty, along a route.

The gateway opens `SimulatedGps.port` (the pty's slave side) exactly as it would open the receiver's `/dev/ttyACM0`.
The receiver drives along a route of (lat, lon) points at a steady speed from the moment it starts, and writes one
RMC and one GGA sentence per interval with correct checksums; `fix` False makes it say "no fix" (a tunnel), and
`send_raw` puts any bytes on the line (a corrupted sentence).
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from types import TracebackType

from firmware_sim.radio import raw_pty
from firmware_sim.roads import path_to
from firmware_sim.town import Town

METRES_PER_DEGREE = 111_320.0
KNOTS_PER_MPS = 1.943844

LatLon = tuple[float, float]


def checksum(body: str) -> str:
    """The NMEA checksum of a sentence's body (between `$` and `*`): XOR of its bytes, two upper-case hex digits."""
    value = 0
    for byte in body.encode("ascii"):
        value ^= byte
    return f"{value:02X}"


def sentence(body: str) -> bytes:
    """A whole NMEA line: `$`, the body, `*`, its checksum and CR LF."""
    return f"${body}*{checksum(body)}\r\n".encode("ascii")


def _hms(at: datetime) -> str:
    """The time of day as NMEA writes it, hhmmss.ss (UTC)."""
    at = at.astimezone(UTC)
    return f"{at:%H%M%S}.{at.microsecond // 10_000:02d}"


def _angle(value: float, degree_digits: int, hemispheres: str) -> tuple[str, str]:
    """Degrees as NMEA writes them: (d)ddmm.mmmm and its hemisphere letter."""
    hemisphere = hemispheres[0] if value >= 0 else hemispheres[1]
    value = abs(value)
    degrees = int(value)
    minutes = (value - degrees) * 60
    return f"{degrees:0{degree_digits}d}{minutes:07.4f}", hemisphere


def rmc(
    lat: float, lon: float, at: datetime, *, speed_mps: float = 0.0, course_deg: float = 0.0, fix: bool = True
) -> bytes:
    """A $GPRMC line (recommended minimum: time, status, position, speed, course, date)."""
    if not fix:
        return sentence(f"GPRMC,{_hms(at)},V,,,,,,,{at.astimezone(UTC):%d%m%y},,,N")
    la, ns = _angle(lat, 2, "NS")
    lo, ew = _angle(lon, 3, "EW")
    knots = speed_mps * KNOTS_PER_MPS
    return sentence(
        f"GPRMC,{_hms(at)},A,{la},{ns},{lo},{ew},{knots:.1f},{course_deg:.1f},{at.astimezone(UTC):%d%m%y},,,A"
    )


def gga(lat: float, lon: float, at: datetime, *, fix: bool = True) -> bytes:
    """A $GPGGA line (fix data: time, position, quality, satellites)."""
    if not fix:
        return sentence(f"GPGGA,{_hms(at)},,,,,0,00,99.9,,M,,M,,")
    la, ns = _angle(lat, 2, "NS")
    lo, ew = _angle(lon, 3, "EW")
    return sentence(f"GPGGA,{_hms(at)},{la},{ns},{lo},{ew},1,08,0.9,12.0,M,7.0,M,,")


def _metres(a: LatLon, b: LatLon) -> float:
    """Distance in metres over a town (equirectangular)."""
    dy = (b[0] - a[0]) * METRES_PER_DEGREE
    dx = (b[1] - a[1]) * METRES_PER_DEGREE * math.cos(math.radians((a[0] + b[0]) / 2))
    return math.hypot(dx, dy)


class Route:
    """A path of (lat, lon) points driven at a steady speed; `at(t)` is where the reader is t seconds in."""

    def __init__(self, points: list[LatLon], speed_mps: float) -> None:
        if len(points) < 2:
            raise ValueError(f"a route needs at least two points, not {len(points)}")
        if speed_mps <= 0:
            raise ValueError(f"speed must be positive, not {speed_mps}")
        self.points = points
        self.speed_mps = speed_mps
        self.legs = [_metres(a, b) for a, b in zip(points, points[1:], strict=False)]
        self.length_m = sum(self.legs)

    @property
    def duration_s(self) -> float:
        """How long the drive takes; after it the reader waits at the last point."""
        return self.length_m / self.speed_mps

    def at(self, elapsed_s: float) -> tuple[LatLon, float]:
        """The position `elapsed_s` seconds into the drive (clamped to its ends) and the course in degrees."""
        left = max(0.0, elapsed_s) * self.speed_mps
        for (a, b), leg in zip(zip(self.points, self.points[1:], strict=False), self.legs, strict=True):
            if left <= leg and leg > 0:
                f = left / leg
                course = math.degrees(math.atan2((b[1] - a[1]) * math.cos(math.radians(a[0])), b[0] - a[0])) % 360
                return (a[0] + (b[0] - a[0]) * f, a[1] + (b[1] - a[1]) * f), course
            left -= leg
        return self.points[-1], 0.0


def town_route(town: Town, from_station: str, to_station: str) -> list[LatLon]:
    """The shortest road path between two of a town's stations, as (lat, lon) points (a patrol along the roads)."""
    network = town.network

    def node_of(station_id: str) -> int:
        station = town.station(station_id)  # stations stand at intersections: the nearest node is its own
        return min(range(len(network.nodes)), key=lambda n: math.dist(network.nodes[n], (station.x_m, station.y_m)))

    source, target = node_of(from_station), node_of(to_station)
    _, prev = network.shortest_paths(source)
    nodes = path_to(prev, source, target)
    if len(nodes) < 2:
        raise ValueError(f"no road from {from_station} to {to_station}")
    points: list[tuple[float, float]] = []
    for u, v in zip(nodes, nodes[1:], strict=False):
        edge = network.edge_points(u, v)
        points.extend(edge if not points else edge[1:])
    return [network.projection.to_latlon(x, y) for x, y in points]


class SimulatedGps:
    """A GPS receiver on a pty pair driving a route; a context manager that closes both fds."""

    def __init__(
        self,
        route: Route,
        *,
        interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.route = route
        self.interval_s = interval_s
        self.fix = True
        self.sentences_written = 0
        self._clock = clock
        self._wall_clock = wall_clock
        self._started_at = clock()
        self.started_at = wall_clock()  # the UTC time the drive began: route time of a fix is fix_at - started_at
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._master, self._slave, self.port = raw_pty(9600)
        self.closed = False

    def __enter__(self) -> SimulatedGps:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def position(self) -> LatLon:
        """Where the receiver is now on its route."""
        return self.route.at(self._clock() - self._started_at)[0]

    def restart_route(self) -> None:
        """Start the drive from the route's first point now."""
        self._started_at = self._clock()
        self.started_at = self._wall_clock()

    def send_raw(self, data: bytes) -> None:
        """Put bytes on the line as they are (a corrupted or foreign sentence); dropped when nobody reads."""
        with self._lock, contextlib.suppress(BlockingIOError, OSError):
            os.write(self._master, data)

    def tick(self) -> None:
        """Write the sentences of this moment: RMC then GGA."""
        (lat, lon), course = self.route.at(self._clock() - self._started_at)
        at = self._wall_clock()
        speed = self.route.speed_mps if self._clock() - self._started_at < self.route.duration_s else 0.0
        self.send_raw(rmc(lat, lon, at, speed_mps=speed, course_deg=course, fix=self.fix))
        self.send_raw(gga(lat, lon, at, fix=self.fix))
        self.sentences_written += 2
        # Nobody reads what a real line carries once it is gone: drain what the host wrote to us (nothing, usually).
        with contextlib.suppress(BlockingIOError, OSError):
            os.read(self._master, 4096)

    def start(self) -> None:
        """Write a fix every interval_s in a thread of its own until stop()."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="simulated gps", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.tick()
            self._stop.wait(self.interval_s)

    def stop(self) -> None:
        """Stop the writing thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def close(self) -> None:
        """Stop and close both ends of the pty."""
        if self.closed:
            return
        self.stop()
        self.closed = True
        os.close(self._master)
        os.close(self._slave)
