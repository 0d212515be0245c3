"""A clone attacker with a radio and no key: replays captured v2 beacons elsewhere and forges beacons for an eid.

What it can do is what a stranger can: listen (every beacon is on the air in the clear), send any bytes it likes. A
replay is the captured beacon byte for byte, so its MAC verifies but its counter does not move forward. A forgery
keeps a captured eid and moves the counter forward by flipping a high bit of the sealed counter (the pad is XORed,
so that flip passes straight through to the counter), but it cannot make the MAC: it sends random MAC bytes, right
once in 2**32 tries (hardware/tag-beacon.md, "Why each field has its size").
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from protocol.beacon_v2 import MAC_BYTES, AirBeacon, heard
from protocol.frames import Beacon, BeaconV2, TagFlags

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


@dataclass(frozen=True, slots=True)
class Strike:
    """What a shadowing clone attacker sends at one station: captured beacons played back, and one made up."""

    station_id: str
    frames: list[BeaconV2]
    captured_at: str  # the station where it recorded the beacon it plays back


class ShadowingClone:
    """A thief's receiver that follows one v2 bike around town, records its beacons as the stations hear them, then
    plays the latest back (several times, as one passage) and sends one forged beacon at a station elsewhere.

    It knows which beacons are the bike's because it watches the bike (in the simulation: `is_target` says so; the
    attacker never uses a key to make or check a beacon)."""

    def __init__(self, is_target: Callable[[BeaconV2], bool], rng: random.Random, *, replays: int = 3) -> None:
        self._is_target = is_target
        self._rng = rng
        self.attacker = CloneAttacker(rng)
        self.replays = replays
        self.last: tuple[str, AirBeacon] | None = None  # the station and the latest beacon recorded

    def overhear(self, heard_by_station: Mapping[str, Sequence[Beacon | BeaconV2]]) -> None:
        """Record the followed bike's beacons among what the stations heard in one step."""
        for station_id, frames in heard_by_station.items():
            for frame in frames:
                if isinstance(frame, BeaconV2) and self._is_target(frame):
                    self.last = (station_id, self.attacker.capture(frame))

    def strike(self, stations: Sequence[str]) -> Strike | None:
        """The frames to send at a station other than where the bike was last heard (None before anything was
        recorded, or with no other station): the recorded beacon `replays` times, then a forgery of its eid."""
        if self.last is None:
            return None
        captured_at, beacon = self.last
        elsewhere = [s for s in stations if s != captured_at]
        if not elsewhere:
            return None
        station_id = self._rng.choice(elsewhere)
        rssi = -50 - self._rng.randrange(20)
        frames = [self.attacker.replay(beacon.eid).frame(rssi, 0) for _ in range(self.replays)]
        frames.append(self.attacker.forge(beacon.eid).frame(rssi, 0))
        return Strike(station_id, frames, captured_at)
