"""A clone attacker with a radio and no key: replays captured v2 beacons elsewhere and forges beacons for an eid.

What it can do is what a stranger can: listen (every beacon is on the air in the clear), send any bytes it likes. A
replay is the captured beacon byte for byte, so its MAC verifies but its counter does not move forward. A forgery
keeps a captured eid and moves the counter forward by flipping a high bit of the sealed counter (the pad is XORed,
so that flip passes straight through to the counter), but it cannot make the MAC: it sends random MAC bytes, right
once in 2**32 tries (hardware/tag-beacon.md, "Why each field has its size").
"""

from __future__ import annotations

import random

from protocol.beacon_v2 import MAC_BYTES, AirBeacon, heard
from protocol.frames import BeaconV2, TagFlags

# Bit 30 of the counter: a chip's real counter stays under 2**30 for 68 years at one beacon a second, so flipping
# it moves the counter forward by 2**30.
FORWARD_BIT = 1 << 30


class CloneError(ValueError):
    """Asked to replay or forge with nothing captured for that eid."""


class CloneAttacker:
    """Captures beacons it hears and sends replays and forgeries of them."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self.captured: dict[bytes, AirBeacon] = {}  # the latest beacon heard per eid
        self.replays = 0
        self.forgeries = 0

    def capture(self, beacon: AirBeacon | BeaconV2) -> AirBeacon:
        """Record a beacon heard on the air (or its reader frame); return it as an air beacon."""
        air = heard(beacon) if isinstance(beacon, BeaconV2) else beacon
        self.captured[air.eid] = air
        return air

    def replay(self, eid: bytes) -> AirBeacon:
        """The latest captured beacon of `eid`, unchanged: its MAC verifies, its counter does not move forward."""
        try:
            beacon = self.captured[eid]
        except KeyError:
            raise CloneError(f"nothing captured for eid {eid.hex()}") from None
        self.replays += 1
        return beacon

    def forge(self, eid: bytes, flags: TagFlags | None = None) -> AirBeacon:
        """A beacon for `eid` with its counter moved forward and a random MAC (the key is what the attacker lacks)."""
        try:
            beacon = self.captured[eid]
        except KeyError:
            raise CloneError(f"nothing captured for eid {eid.hex()}") from None
        sealed = (int.from_bytes(beacon.sealed_counter, "big") ^ FORWARD_BIT).to_bytes(4, "big")
        mac = self._rng.randbytes(MAC_BYTES)
        self.forgeries += 1
        return AirBeacon(eid, sealed, beacon.flags if flags is None else flags, mac, beacon.version)
