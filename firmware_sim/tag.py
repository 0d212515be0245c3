"""A simulated tag: when it beacons and what each beacon says (pure logic, no I/O)."""

from __future__ import annotations

import random
from dataclasses import dataclass

from protocol.frames import TagFlags

MIN_INTERVAL_S = 1.0
MAX_INTERVAL_S = 3.0


@dataclass(frozen=True, slots=True)
class TagBeacon:
    """One transmission on the air, before any receiver adds RSSI and antenna."""

    tag_id: int
    counter: int
    flags: TagFlags
    sent_at_s: float


class Tag:
    """A beaconing chip; time is passed in as `now_s`, so the tag needs no clock of its own.

    The nominal interval (1-3 s) gets uniform jitter on every beacon, clamped to 1-3 s, so two
    tags that collide once drift apart. Battery falls a little per beacon; the low-battery flag
    is set below `low_battery_mv`.
    """

    def __init__(
        self,
        tag_id: int,
        rng: random.Random,
        *,
        interval_s: float = 2.0,
        jitter_s: float = 0.5,
        battery_mv: float = 3000.0,
        low_battery_mv: float = 2500.0,
        drain_mv_per_beacon: float = 0.0001,
        counter: int = 0,
        now_s: float = 0.0,
    ) -> None:
        if not 0 <= tag_id <= 0xFFFFFFFF:
            raise ValueError(f"tag id {tag_id} is not a 32-bit unsigned integer")
        if not MIN_INTERVAL_S <= interval_s <= MAX_INTERVAL_S:
            raise ValueError(f"beacon interval {interval_s} s outside {MIN_INTERVAL_S}-{MAX_INTERVAL_S} s")
        self.tag_id = tag_id
        self.interval_s = interval_s
        self.jitter_s = jitter_s
        self.battery_mv = battery_mv
        self.low_battery_mv = low_battery_mv
        self.drain_mv_per_beacon = drain_mv_per_beacon
        self.counter = counter & 0xFFFF
        self.moving = False
        self.tampered = False
        self._rng = rng
        # A random phase so tags switched on together do not beacon in lockstep.
        self.next_beacon_at_s = now_s + rng.uniform(0.0, interval_s)

    @property
    def flags(self) -> TagFlags:
        """The status bits the next beacon will carry."""
        flags = TagFlags(0)
        if self.battery_mv < self.low_battery_mv:
            flags |= TagFlags.LOW_BATTERY
        if self.tampered:
            flags |= TagFlags.TAMPER
        if self.moving:
            flags |= TagFlags.MOTION
        return flags

    def tamper(self) -> None:
        """Latch the tamper flag, as opening the case or cutting the mount does."""
        self.tampered = True

    def reset_tamper(self) -> None:
        """Clear the tamper latch (an installer's job)."""
        self.tampered = False

    def next_interval_s(self) -> float:
        """Draw the wait until the following beacon: nominal interval plus jitter, within 1-3 s."""
        wait = self.interval_s + self._rng.uniform(-self.jitter_s, self.jitter_s)
        return min(MAX_INTERVAL_S, max(MIN_INTERVAL_S, wait))

    def poll(self, now_s: float) -> list[TagBeacon]:
        """The beacons sent up to `now_s` since the last poll (usually none or one)."""
        sent: list[TagBeacon] = []
        while self.next_beacon_at_s <= now_s:
            sent.append(TagBeacon(self.tag_id, self.counter, self.flags, self.next_beacon_at_s))
            self.counter = (self.counter + 1) & 0xFFFF
            self.battery_mv = max(0.0, self.battery_mv - self.drain_mv_per_beacon)
            self.next_beacon_at_s += self.next_interval_s()
        return sent
