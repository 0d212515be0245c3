"""firmware_sim.tag: beacon timing, counter, battery and flags of a simulated chip."""

from __future__ import annotations

import random

import pytest

from firmware_sim.tag import Tag, TagBeacon
from protocol.frames import TagFlags


def run(tag: Tag, seconds: float, dt: float = 0.1) -> list[TagBeacon]:
    sent: list[TagBeacon] = []
    t = 0.0
    while t < seconds:
        t += dt
        sent += tag.poll(t)
    return sent


def test_beacon_intervals_stay_within_one_to_three_seconds_with_jitter() -> None:
    tag = Tag(0x0A1B2C3D, random.Random(1), interval_s=2.0, jitter_s=1.5)
    sent = run(tag, 600.0)
    gaps = [b.sent_at_s - a.sent_at_s for a, b in zip(sent, sent[1:], strict=False)]
    assert all(1.0 <= g <= 3.0 for g in gaps)
    assert len({round(g, 3) for g in gaps}) > 50  # jittered, not a fixed period
    assert 1.8 < sum(gaps) / len(gaps) < 2.2


def test_counter_counts_up_and_wraps_at_sixteen_bits() -> None:
    tag = Tag(1, random.Random(2), counter=65534)
    counters = [b.counter for b in run(tag, 12.0)]
    assert counters[:4] == [65534, 65535, 0, 1]


def test_low_battery_flag_rises_under_the_threshold() -> None:
    tag = Tag(1, random.Random(3), battery_mv=2503.0, low_battery_mv=2500.0, drain_mv_per_beacon=1.0)
    flags = [b.flags for b in run(tag, 30.0)]
    assert TagFlags.LOW_BATTERY not in flags[0]
    assert TagFlags.LOW_BATTERY in flags[-1]
    assert tag.battery_mv < 2500.0


def test_motion_flag_follows_the_bike_and_tamper_latches() -> None:
    tag = Tag(1, random.Random(4), battery_mv=3000.0)
    assert tag.flags == TagFlags(0)
    tag.moving = True
    assert tag.flags == TagFlags.MOTION
    tag.tamper()
    tag.moving = False
    assert tag.flags == TagFlags.TAMPER
    assert all(b.flags == TagFlags.TAMPER for b in run(tag, 10.0))
    tag.reset_tamper()
    assert tag.flags == TagFlags(0)


def test_same_random_seed_gives_the_same_beacons() -> None:
    assert run(Tag(9, random.Random(5)), 60.0) == run(Tag(9, random.Random(5)), 60.0)


def test_a_long_poll_gap_returns_every_beacon_missed() -> None:
    tag = Tag(1, random.Random(6), interval_s=1.0, jitter_s=0.0)
    assert len(tag.poll(10.0)) in (10, 11)


@pytest.mark.parametrize(("tag_id", "interval_s"), [(-1, 2.0), (2**32, 2.0), (1, 0.5), (1, 3.5)])
def test_impossible_tag_settings_are_refused(tag_id: int, interval_s: float) -> None:
    with pytest.raises(ValueError):
        Tag(tag_id, random.Random(), interval_s=interval_s)
