"""A generated day of 100,000 v2 chips with clocks up to 2 minutes off: every beacon resolves to its own chip.

(1,000,000 chips are measured by bench/resolution.py; at 100,000 the test runs in well under a minute.)
"""

from __future__ import annotations

import random
from datetime import UTC, datetime

from backend.resolution import ResolutionTable, Resolver, Verdict
from protocol.beacon_v2 import WINDOW_S, ChipKey, window_of
from protocol.frames import TagFlags

CHIPS = 100_000
SIGHTINGS_PER_CHIP = 2
DRIFT_S = 120.0
DAY_START = 1_795_910_400.0  # 2026-11-29T00:00:00Z


def test_every_beacon_of_a_day_resolves_to_its_chip_with_clocks_two_minutes_off() -> None:
    rng = random.Random(20261129)
    keys = [(0x200000 + i, rng.randbytes(16)) for i in range(CHIPS)]
    # Each chip is heard a few times at random moments of the day; its clock is off by up to ±2 minutes, so near
    # every window change it beacons the neighbouring window of the one the station's clock reads.
    heard: list[tuple[float, int, bytes]] = []
    for tag_id, key in keys:
        chip = ChipKey(key)
        offset_s = rng.uniform(-DRIFT_S, DRIFT_S)
        times = sorted(DAY_START + rng.uniform(0, 86_400) for _ in range(SIGHTINGS_PER_CHIP))
        for t in times:
            counter = int((t - DAY_START) * 1000)  # moves forward between any two beacons of the chip
            flags = TagFlags.MOTION if counter % 3 else TagFlags(0)
            heard.append((t, tag_id, chip.seal(window_of(t + offset_s), counter, flags).to_bytes()))
    heard.sort()
    # One key schedule per chip for the whole day (ahead=96): the test then measures resolution, not rebuilds.
    table = ResolutionTable(keys, window_of(DAY_START), ahead=96)
    resolver = Resolver(table)
    wrong: list[tuple[int, object, object]] = []
    near_window_change = 0
    for t, tag_id, payload in heard:
        if window_of(t) != table.centre:
            resolver.advance(window_of(t))
        r = resolver.resolve(payload, datetime.fromtimestamp(t, UTC), "S1")
        if r.verdict is not Verdict.OK or r.tag_id != tag_id:
            wrong.append((tag_id, r.verdict, r.tag_id))
        near_window_change += r.window != window_of(t)
    assert wrong == []
    assert resolver.counts[Verdict.OK] == CHIPS * SIGHTINGS_PER_CHIP
    # About 2 × 60 s / 900 s of the beacons were sent in a neighbouring window: the drift was really exercised.
    expected = CHIPS * SIGHTINGS_PER_CHIP * (DRIFT_S / 2) / WINDOW_S
    assert 0.8 * expected < near_window_change < 1.2 * expected
