"""A simulated v2 tag: a key, a 32-bit counter and a clock of its own that drifts (hardware/tag-beacon.md, version 2).

Like `firmware_sim.tag.Tag` it is pure logic: time is passed in as `now_s` (simulation seconds). The chip's own clock
reads `epoch_unix_s + now_s` plus an offset at fitting plus a drift that grows with time, as a watch crystal does;
the window of its ephemeral id follows the chip's clock, not the true time, which is what the backend must tolerate.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from firmware_sim.tag import MAX_INTERVAL_S, MIN_INTERVAL_S
from protocol.beacon_v2 import COUNTER_MAX, AirBeacon, ChipKey, window_of
from protocol.frames import BeaconV2, TagFlags


class TagV2Error(ValueError):
    """A v2 tag set up with values no chip has."""


@dataclass(frozen=True, slots=True)
class TagBeaconV2:
    """One v2 transmission on the air, with the window the chip's clock put it in (which only the chip knows)."""

    air: AirBeacon
    counter: int
    window: int
    sent_at_s: float

    def frame(self, rssi_dbm: int, antenna: int) -> BeaconV2:
        """The reader frame a radio module writes on hearing it."""
        return self.air.frame(rssi_dbm, antenna)


class TagV2:
    """A beaconing v2 chip. `clock_offset_s` is where its clock stood against true time at `now_s` = 0;
    `drift_ppm` how fast it runs away (20 ppm is 1.7 s a day, 52 s a month; a cold or hot crystal far more).

    The key is kept only in the chip's `ChipKey` (whose repr shows its check value, never the key).
    """

    def __init__(
        self,
        serial: int,
        key: bytes,
        rng: random.Random,
        *,
        epoch_unix_s: float,
        clock_offset_s: float = 0.0,
        drift_ppm: float = 0.0,
        interval_s: float = 2.0,
        jitter_s: float = 0.5,
        counter: int = 0,
        now_s: float = 0.0,
    ) -> None:
        if not MIN_INTERVAL_S <= interval_s <= MAX_INTERVAL_S:
            raise TagV2Error(f"beacon interval {interval_s} s outside {MIN_INTERVAL_S}-{MAX_INTERVAL_S} s")
        if not 0 <= counter <= COUNTER_MAX:
            raise TagV2Error(f"counter {counter} is not a 32-bit unsigned number")
        self.serial = serial
        self.chip_key = ChipKey(key)
        self.epoch_unix_s = epoch_unix_s
        self.clock_offset_s = clock_offset_s
        self.drift_ppm = drift_ppm
        self.interval_s = interval_s
        self.jitter_s = jitter_s
        self.counter = counter
        self.moving = False
        self.tampered = False
        self.low_battery = False
        self._rng = rng
        self.next_beacon_at_s = now_s + rng.uniform(0.0, interval_s)

    def __repr__(self) -> str:
        return f"TagV2(serial={self.serial}, {self.chip_key!r}, counter={self.counter})"

    @property
    def tag_id(self) -> int:
        """The printed serial: the registry's identity of the chip, never on the air."""
        return self.serial

    def tamper(self) -> None:
        """Latch the tamper flag, as opening the case or cutting the mount does."""
        self.tampered = True

    @property
    def flags(self) -> TagFlags:
        """The status bits the next beacon will carry (in the clear: stations act on them without a key)."""
        flags = TagFlags(0)
        if self.low_battery:
            flags |= TagFlags.LOW_BATTERY
        if self.tampered:
            flags |= TagFlags.TAMPER
        if self.moving:
            flags |= TagFlags.MOTION
        return flags

    def chip_unix_s(self, now_s: float) -> float:
        """What the chip's own clock reads at simulation time `now_s`."""
        return self.epoch_unix_s + now_s + self.clock_offset_s + self.drift_ppm * 1e-6 * now_s

    def window(self, now_s: float) -> int:
        """The window the chip beacons in at `now_s`, by its own clock."""
        return window_of(self.chip_unix_s(now_s))

    def next_interval_s(self) -> float:
        """The wait until the following beacon: nominal interval plus jitter, within 1-3 s."""
        wait = self.interval_s + self._rng.uniform(-self.jitter_s, self.jitter_s)
        return min(MAX_INTERVAL_S, max(MIN_INTERVAL_S, wait))

    def poll(self, now_s: float) -> list[TagBeaconV2]:
        """The beacons sent up to `now_s` since the last poll (usually none or one)."""
        sent: list[TagBeaconV2] = []
        while self.next_beacon_at_s <= now_s:
            at = self.next_beacon_at_s
            window = self.window(at)
            # A counter that reached its top stays there (after centuries): the backend then sees no progress.
            sent.append(TagBeaconV2(self.chip_key.seal(window, self.counter, self.flags), self.counter, window, at))
            self.counter = min(COUNTER_MAX, self.counter + 1)
            self.next_beacon_at_s += self.next_interval_s()
        return sent


@dataclass(frozen=True, slots=True)
class ChipMemory:
    """What a fitted v2 chip holds: its serial, its key and when its clock was set. The simulation's way to carry a
    chip keyed at the counter (firmware_sim.programmer) onto a bike in the town's process; a real chip goes on the
    bike itself, and no real chip gives its key out."""

    serial: int
    key: bytes
    clock_set_unix_s: float

    def __repr__(self) -> str:
        # The key is never printed, also not by a traceback's locals.
        return f"ChipMemory(serial={self.serial}, kcv={ChipKey(self.key).check_value.hex()})"

    def tag(
        self, rng: random.Random, *, epoch_unix_s: float, clock_offset_s: float = 0.0, drift_ppm: float = 0.0
    ) -> TagV2:
        """The chip beaconing, with simulation time 0 at `epoch_unix_s` (true time), its clock `clock_offset_s` off."""
        return TagV2(
            self.serial, self.key, rng, epoch_unix_s=epoch_unix_s, clock_offset_s=clock_offset_s, drift_ppm=drift_ppm
        )


def write_chips(path: Path, chips: list[ChipMemory]) -> None:
    """Keep fitted chips in a file only its owner may read (the demo hands them to the town's process this way)."""
    path.touch(mode=0o600)
    rows = [{"serial": c.serial, "key": c.key.hex(), "clock_set_unix_s": c.clock_set_unix_s} for c in chips]
    path.write_text(json.dumps(rows), encoding="utf-8")


def read_chips(path: Path) -> list[ChipMemory]:
    """The chips write_chips kept; TagV2Error names what is wrong in a file that is not such a list."""
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
        return [ChipMemory(int(r["serial"]), bytes.fromhex(r["key"]), float(r["clock_set_unix_s"])) for r in rows]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TagV2Error(f"{path} is not a list of fitted v2 chips: {exc}") from exc
