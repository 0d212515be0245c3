"""A generated day of v2 beacons resolved against 1,000,000 chips, clocks up to two minutes off (issue 17)."""

from __future__ import annotations

import random
from datetime import UTC, datetime

from backend.resolution import ResolutionTable, Resolver, Verdict
from protocol.beacon_v2 import WINDOW_S, ChipKey, window_of
from protocol.frames import TagFlags

CHIPS = 1_000_000
WATCHED = 1_000  # chips whose day is generated; the other 999,000 are there to be confused with
PASSAGES = 10  # a day's passages of each watched chip, each heard as its first and last beacon
DRIFT_S = 120.0
FIRST_TAG = 0x10000000


def test_every_beacon_of_a_day_resolves_to_its_chip_among_a_million_with_clocks_two_minutes_off() -> None:
    rng = random.Random(17)
    keys = rng.randbytes(16 * CHIPS)
    day_start = (window_of(datetime(2026, 11, 30, tzinfo=UTC).timestamp())) * WINDOW_S
    watched = rng.sample(range(CHIPS), WATCHED)
    beacons: list[tuple[float, int, bytes]] = []  # (true time heard, tag id, bytes on the air)
    for index in watched:
        key = ChipKey(keys[16 * index : 16 * (index + 1)])
        offset = rng.uniform(-DRIFT_S, DRIFT_S)  # the chip's clock minus true time
        counter = rng.randrange(10_000)
        starts = [rng.uniform(0, 86_400 - 60) for _ in range(PASSAGES)]
        # The chip counts on through the day: a later beacon always carries a higher counter.
        for t in sorted(day_start + t for s in starts for t in (s, s + rng.uniform(2, 40))):
            counter += rng.randrange(1, 20)
            flags = TagFlags.MOTION if rng.random() < 0.8 else TagFlags(0)
            beacons.append((t, FIRST_TAG + index, key.seal(window_of(t + offset), counter, flags).to_bytes()))
    beacons.sort()
    # Windows computed 23 ahead at each key schedule: a day is four builds and a sort per window.
    table = ResolutionTable(
        ((FIRST_TAG + i, keys[16 * i : 16 * (i + 1)]) for i in range(CHIPS)), window_of(day_start), ahead=23
    )
    resolver = Resolver(table)
    wrong: list[tuple[float, int, str, int | None]] = []
    for t, tag, payload in beacons:
        if window_of(t) != table.centre:
            resolver.advance(window_of(t))
        r = resolver.resolve(payload, datetime.fromtimestamp(t, UTC), "st-day")
        if r.verdict is not Verdict.OK or r.tag_id != tag:
            wrong.append((t - day_start, tag, r.verdict.value, r.tag_id))
    assert not wrong, f"{len(wrong)} of {len(beacons)} beacons did not resolve to their chip: {wrong[:5]}"
    assert len(beacons) == WATCHED * PASSAGES * 2
    assert table.windows.stop > window_of(day_start + 86_400 - 60), "the table went through the whole day"
