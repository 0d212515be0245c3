"""Run a town in real time: one simulated radio module (a pty) per station, on one background thread.

A thread rather than asyncio: the gateway and the demo may run their own event loops in the
same process, and the work per tick is a few hundred microseconds, so one plain thread keeps
the simulator independent of whichever loop (or none) the caller uses.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType, TracebackType
from typing import Protocol

from firmware_sim.clone import ShadowingClone, Strike
from firmware_sim.mr7901_station import VendorFleet, VendorStation
from firmware_sim.radio import RadioClosedError, RadioError, RadioModule
from firmware_sim.tag_v2 import ChipMemory, TagV2, read_chips
from firmware_sim.town import Bike, Town, TownError
from protocol.frames import Beacon, BeaconV2
from protocol.ids import format_tag

log = logging.getLogger(__name__)


class BeaconListener(Protocol):
    """What hears a station's beacons: a `RadioModule`, or e.g. a `VendorStation` (thread-safe `hear`)."""

    def hear(self, beacon: Beacon) -> bool:
        """Take one beacon the station heard; False if it was lost."""
        ...


class SimRunner:
    """Drives `town` at `speedup` times real time and writes what each station hears to its pty.

    Every `step_s` of wall time the town advances `step_s * speedup` seconds and the beacons
    heard go to the stations' radio modules; every `tick_s` each module releases what its
    115200 baud line has carried by then. The ptys exist from construction, so `ports` can be
    handed to gateways before `start`. Stations in `listeners` get no pty: their beacons go to
    the listener given (a vendor station, say), called from the simulation thread.
    """

    def __init__(
        self,
        town: Town,
        speedup: float = 1.0,
        *,
        step_s: float = 0.05,
        tick_s: float = 0.01,
        garbage_rate: float = 0.0,
        corrupt_rate: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        listeners: Mapping[str, BeaconListener] | None = None,
    ) -> None:
        listeners = dict(listeners or {})
        for station_id in listeners:
            town.station(station_id)  # TownError for a station the town does not have
        if speedup <= 0:
            raise ValueError(f"speedup must be positive, not {speedup}")
        self.town = town
        self.speedup = speedup
        self.step_s = step_s
        self.tick_s = tick_s
        self._clock = clock
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.radios: dict[str, RadioModule] = {}
        try:
            for station in town.stations:
                if station.station_id in listeners:
                    continue
                self.radios[station.station_id] = RadioModule(
                    garbage_rate=garbage_rate, corrupt_rate=corrupt_rate, clock=clock
                )
        except OSError:
            self._close_radios()
            raise
        self.ports: dict[str, str] = {sid: radio.port for sid, radio in self.radios.items()}
        self.listeners: dict[str, BeaconListener] = {**self.radios, **listeners}
        self.beacons_heard = 0
        self._shadow: ShadowingClone | None = None

    def __enter__(self) -> SimRunner:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """Whether the simulation thread is running."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the simulation thread; a stopped runner cannot start again (its ptys are closed)."""
        if self._stop.is_set():
            raise RadioClosedError("this runner was stopped and its ptys are closed; make a new one")
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="firmware-sim", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and close every pty (gateways reading them see end of file)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        self._close_radios()

    def steal(self, bike_no: int, *, tamper: bool = False) -> Bike:
        """Trigger a theft: the bike rides off fast (and its tag reports tamper if asked)."""
        with self._lock:
            return self.town.theft(bike_no, tamper=tamper)

    def shadow(self, bike_no: int, rng: random.Random) -> ShadowingClone:
        """A clone attacker follows this v2 bike from now on, recording its beacons (see `clone_strike`)."""
        with self._lock:
            bike = self.town.bike(bike_no)
            if not isinstance(bike.tag, TagV2):
                raise TownError(f"bike {bike_no} carries a v1 chip: anyone can copy its number, no capture needed")
            tag, town = bike.tag, self.town

            def is_target(frame: BeaconV2) -> bool:
                # The attacker watches the bike; the simulation tells its beacons by the eids of the windows its
                # clock may be in (never used to make or check a beacon).
                w = tag.window(town.now_s)
                return frame.eid in tag.chip_key.eids(range(w - 1, w + 2))

            self._shadow = ShadowingClone(is_target, rng)
        return self._shadow

    def clone_strike(self) -> Strike | None:
        """The shadowing attacker plays a recorded beacon back, and sends a forged one, at a station on a pty other
        than where it recorded it; None before it recorded anything."""
        if self._shadow is None:
            return None
        strike = self._shadow.strike(sorted(self.radios))
        if strike is not None:
            for frame in strike.frames:
                self.radios[strike.station_id].hear(frame)
        return strike

    def _hand_over(self, station_id: str, beacons: list[Beacon | BeaconV2]) -> int:
        """Give a station's radio what it heard; a vendor station's reader knows no v2 format, so it hears v1 only."""
        radio = self.radios.get(station_id)
        if radio is not None:
            for beacon in beacons:
                radio.hear(beacon)
            return len(beacons)
        listener = self.listeners[station_id]
        v1 = [b for b in beacons if isinstance(b, Beacon)]
        for beacon in v1:
            listener.hear(beacon)
        return len(v1)

    def _close_radios(self) -> None:
        for radio in self.radios.values():
            radio.close()

    def _run(self) -> None:
        last = self._clock()
        next_step = last + self.step_s
        radios = list(self.radios.items())
        try:
            while not self._stop.wait(self.tick_s):
                now = self._clock()
                if now >= next_step:
                    with self._lock:
                        heard = self.town.step((now - last) * self.speedup)
                    last = now
                    # After a stall, do not try to catch up with a burst of short steps.
                    next_step = max(next_step + self.step_s, now)
                    for station_id, beacons in heard.items():
                        self.beacons_heard += self._hand_over(station_id, beacons)
                    if self._shadow is not None:
                        self._shadow.overhear(heard)
                for _, radio in radios:
                    radio.pump()
        except RadioError:
            if not self._stop.is_set():
                log.exception("simulated radio failed; the simulation stops")


def add_attack_options(parser: argparse.ArgumentParser) -> None:
    """--steal-kind and --clone-after, as the simulator and the demo (which passes them on) both take them."""
    parser.add_argument(
        "--steal-kind",
        choices=("v1", "v2", "any"),
        default="any",
        help="the kind of chip the stolen bike carries: v1, v2, or any (the town's pick among all bikes)",
    )
    parser.add_argument(
        "--clone-after",
        type=float,
        metavar="SECONDS",
        help="a clone attacker follows a parked v2 bike from the start and, after this many seconds, plays its latest "
        "beacon back and sends a forged one at another station (a 'chip cloned' alarm; needs v2 chips)",
    )


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m firmware_sim",
        description="Simulate a town's stations on ptys. The first stdout line is JSON: "
        '{"event": "ports", "ports": {station_id: pty path}, ...}.',
    )
    parser.add_argument("--seed", type=int, default=1, help="town seed (same seed, same town)")
    parser.add_argument("--stations", type=int, default=20)
    parser.add_argument("--bikes", type=int, default=200)
    parser.add_argument("--speedup", type=float, default=1.0, help="simulated seconds per wall-clock second")
    parser.add_argument(
        "--steal-after",
        type=float,
        metavar="SECONDS",
        help="steal one parked bike after this many seconds and print a JSON line about it",
    )
    parser.add_argument(
        "--garbage-rate",
        type=float,
        default=0.0,
        help="fraction of frames preceded by random bytes (exercises decoders)",
    )
    parser.add_argument(
        "--corrupt-rate", type=float, default=0.0, help="fraction of frames with one bit flipped (exercises decoders)"
    )
    parser.add_argument(
        "--vendor-server",
        metavar="HOST:PORT",
        help="run the --vendor-stations stations nearest the town's centre as MR7901 vendor stations connecting here "
        "instead of on ptys",
    )
    parser.add_argument("--vendor-stations", type=int, default=0, metavar="N")
    parser.add_argument("--vendor-time-zone", default="Asia/Shanghai", help="the vendor stations' local time zone")
    parser.add_argument(
        "--v2-chips",
        type=Path,
        metavar="FILE",
        help="v2 chips fitted at the counter (firmware_sim.tag_v2.write_chips): each goes on the bike whose chip has "
        "its serial and beacons v2 from the start",
    )
    add_attack_options(parser)
    parser.add_argument(
        "--duration", type=float, metavar="SECONDS", help="stop after this long (default: run until killed)"
    )
    args = parser.parse_args(argv)
    if args.v2_chips and args.speedup != 1.0:
        # A v2 chip's windows follow its clock, which runs on simulated time: sped up, no backend would resolve it.
        parser.error("--v2-chips needs --speedup 1 (a v2 chip's ephemeral ids follow true time)")
    if args.clone_after is not None and not args.v2_chips:
        parser.error("--clone-after needs --v2-chips (a v1 chip's number needs no capture to copy)")
    if args.vendor_stations and not args.vendor_server:
        parser.error("--vendor-stations needs --vendor-server HOST:PORT")
    if args.vendor_server:
        host, _, port = args.vendor_server.rpartition(":")
        if not host or not port.isdigit():
            parser.error(f"--vendor-server must be HOST:PORT, not {args.vendor_server!r}")
        args.vendor_host, args.vendor_port = host, int(port)
    return args


def vendor_device_ids(town: Town, count: int) -> dict[str, str]:
    """Which of the town's stations run as vendor stations: the `count` nearest its centre, device id
    `MR7901-<station id>`, keyed by station id (a bridge's devices file is written from this before they run)."""
    if not 0 <= count <= len(town.stations):
        raise TownError(f"{count} vendor stations asked for but the town has {len(town.stations)} stations")
    # Near the centre, where most rides pass: a station at the town's edge may hear no bike for minutes.
    picked = {
        s.station_id for s in sorted(town.stations, key=lambda s: (math.hypot(s.x_m, s.y_m), s.station_id))[:count]
    }
    return {s.station_id: f"MR7901-{s.station_id}" for s in town.stations if s.station_id in picked}


def vendor_stations(
    town: Town, count: int, host: str, port: int, time_zone: str = "Asia/Shanghai"
) -> dict[str, VendorStation]:
    """The town's vendor stations (`vendor_device_ids`) connecting to host:port, keyed by station id."""
    return {
        sid: VendorStation(host, port, device_id, time_zone=time_zone)
        for sid, device_id in vendor_device_ids(town, count).items()
    }


# How far a fitted chip's clock is off when the town starts, and how fast it drifts: a watch crystal's.
V2_CLOCK_OFFSET_S = 5.0
V2_DRIFT_PPM = 20.0


def fit_v2_chips(town: Town, chips: list[ChipMemory], rng: random.Random) -> None:
    """Put each fitted v2 chip on its bike, beaconing from now with a clock a few seconds off that drifts a little."""
    now_s = time.time()
    for chip in chips:
        town.fit_v2(
            chip,
            epoch_unix_s=now_s,
            clock_offset_s=rng.uniform(-V2_CLOCK_OFFSET_S, V2_CLOCK_OFFSET_S),
            drift_ppm=rng.uniform(-V2_DRIFT_PPM, V2_DRIFT_PPM),
        )
    if chips:
        log.info("%d bikes carry v2 chips", len(chips))


def _shadow(runner: SimRunner, args: argparse.Namespace) -> Bike | None:
    """With --clone-after, the v2 bike a clone attacker follows: the second nearest a station of those parked (the
    nearest is the thief's), so the copy and the theft are two stories."""
    if args.clone_after is None:
        return None
    parked = runner.town.parked_near_stations("v2")
    if not parked:
        log.warning("no parked v2 bike for the clone attacker to follow: no clone")
        return None
    bike = parked[min(1, len(parked) - 1)]
    runner.shadow(bike.bike_no, random.Random(args.seed + 1))
    log.info("a clone attacker follows bike %s (v2 chip %s)", bike.plate, format_tag(bike.tag_id))
    return bike


def _strike(runner: SimRunner, bike: Bike) -> bool:
    """The clone attacker strikes if it has recorded a beacon of the bike; says whether it did."""
    strike = runner.clone_strike()
    if strike is None:
        return False
    _emit(
        {
            "event": "clone",
            "at": datetime.now(UTC).isoformat(),
            "bike_no": bike.bike_no,
            "plate": bike.plate,
            "tag_id": format_tag(bike.tag_id),
            "station_id": strike.station_id,
            "captured_at": strike.captured_at,
            "frames": len(strike.frames),
        }
    )
    return True


def _emit(event: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(event, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> int:
    """Run a simulated town until killed; print the station→pty map, then one line per theft."""
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    town = Town.generate(args.seed, stations=args.stations, bikes=args.bikes)
    if args.v2_chips:
        fit_v2_chips(town, read_chips(args.v2_chips), random.Random(args.seed))
    vendors = (
        vendor_stations(town, args.vendor_stations, args.vendor_host, args.vendor_port, args.vendor_time_zone)
        if args.vendor_server
        else {}
    )
    fleet = VendorFleet(list(vendors.values()))
    runner = SimRunner(
        town, args.speedup, garbage_rate=args.garbage_rate, corrupt_rate=args.corrupt_rate, listeners=vendors
    )
    done = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    previous = signal.signal(signal.SIGTERM, _on_signal)
    started = time.monotonic()
    try:
        vendor_ids = {sid: v.device_id for sid, v in vendors.items()}
        _emit({"event": "ports", "seed": args.seed, "ports": runner.ports, "vendor_stations": vendor_ids})
        fleet.start()
        shadowed = _shadow(runner, args)
        runner.start()
        stolen = args.steal_after is None
        while not done.is_set():
            elapsed = time.monotonic() - started
            if args.duration is not None and elapsed >= args.duration:
                break
            if shadowed is not None and elapsed >= args.clone_after and _strike(runner, shadowed):
                shadowed = None
            if not stolen and elapsed >= args.steal_after:
                stolen = True
                bike = runner.steal(town.bike_to_steal(None if args.steal_kind == "any" else args.steal_kind).bike_no)
                _emit(
                    {
                        "event": "theft",
                        "at": datetime.now(UTC).isoformat(),
                        "bike_no": bike.bike_no,
                        "plate": bike.plate,
                        "tag_id": format_tag(bike.tag_id),
                        "owner": bike.owner,
                        "lat": round(bike.lat, 6),
                        "lon": round(bike.lon, 6),
                    }
                )
            done.wait(0.1)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        runner.stop()
        fleet.stop()
    log.info("stopped after %.0f s; %d beacons heard", time.monotonic() - started, runner.beacons_heard)
    return 0
