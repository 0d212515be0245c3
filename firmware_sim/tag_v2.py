"""A simulated v2 tag: a key, a 32-bit counter and a clock of its own that drifts (hardware/tag-beacon.md, version 2).

Like `firmware_sim.tag.Tag` it is pure logic: time is passed in as `now_s` (simulation seconds). The chip's own clock
reads `epoch_unix_s + now_s` plus an offset at fitting plus a drift that grows with time, as a watch crystal does;
the window of its ephemeral id follows the chip's clock, not the true time, which is what the backend must tolerate.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

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
