"""The aggregator: beacons become one sighting per passage; stolen chips and tampering alert at once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from gateway.aggregator import Aggregator
from gateway.hotlist import HotList
from protocol.frames import TagFlags
from tests.gateway.harness import beacon

T0 = datetime(2025, 3, 1, 8, 0, 0, tzinfo=UTC)


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def at(self, seconds: float) -> datetime:
        """Set the clock to T0 + seconds and return it."""
        self.now = T0 + timedelta(seconds=seconds)
        return self.now


def aggregator(clock: FakeClock, hotlist: HotList | None = None, gap_s: float = 8, max_s: float = 60) -> Aggregator:
    """An aggregator for station s1 on the fake clock."""
    return Aggregator(
        "s1",
        hotlist if hotlist is not None else HotList(),
        passage_gap_s=gap_s,
        passage_max_s=max_s,
        clock=clock,
    )


def test_beacons_of_one_tag_become_one_sighting_with_peak_rssi_and_its_antenna() -> None:
    clock = FakeClock()
    agg = aggregator(clock)
    for t, rssi, antenna in [(0, -80, 0), (2, -61, 1), (4, -75, 0)]:
        agg.add(beacon(0xAB, rssi_dbm=rssi, antenna=antenna), clock.at(t))

    assert agg.close_due(clock.at(11.9)) == []
    [sighting] = agg.close_due(clock.at(12))

    assert sighting.tag_id == "000000AB"
    assert sighting.beacons == 3
    assert sighting.first_seen_at == T0
    assert sighting.last_seen_at == T0 + timedelta(seconds=4)
    assert (sighting.peak_rssi_dbm, sighting.antenna) == (-61, 1)
    assert agg.open_count == 0


def test_flags_are_or_ed_over_the_passage() -> None:
    clock = FakeClock()
    agg = aggregator(clock)
    agg.add(beacon(1, flags=TagFlags.LOW_BATTERY), clock.at(0))
    agg.add(beacon(1, flags=TagFlags.MOTION), clock.at(1))
    agg.add(beacon(1), clock.at(2))

    [sighting] = agg.close_all()

    assert sighting.flags == TagFlags.LOW_BATTERY | TagFlags.MOTION


def test_a_gap_longer_than_passage_gap_starts_a_new_passage() -> None:
    clock = FakeClock()
    agg = aggregator(clock, gap_s=8)
    agg.add(beacon(1), clock.at(0))
    agg.add(beacon(1), clock.at(7.9))
    agg.add(beacon(1), clock.at(16))  # 8.1 s after the last: the first passage is over

    first, second = agg.close_all()

    assert (first.beacons, first.last_seen_at) == (2, T0 + timedelta(seconds=7.9))
    assert (second.beacons, second.first_seen_at) == (1, T0 + timedelta(seconds=16))


def test_a_long_dwell_is_split_into_sightings_no_longer_than_passage_max() -> None:
    clock = FakeClock()
    agg = aggregator(clock, gap_s=8, max_s=10)
    for t in range(0, 25, 2):
        agg.add(beacon(1), clock.at(t))
    sightings = agg.close_all()

    assert [s.beacons for s in sightings] == [5, 5, 3]
    for s in sightings:
        assert s.last_seen_at - s.first_seen_at < timedelta(seconds=10)


def test_close_due_closes_a_passage_that_reached_passage_max_while_beacons_continue() -> None:
    clock = FakeClock()
    agg = aggregator(clock, gap_s=8, max_s=10)
    for t in (0, 4, 8):
        agg.add(beacon(1), clock.at(t))

    assert agg.close_due(clock.at(9.9)) == []
    [sighting] = agg.close_due(clock.at(10))

    assert sighting.beacons == 3
    assert agg.open_count == 0


def test_passages_of_different_tags_are_independent() -> None:
    clock = FakeClock()
    agg = aggregator(clock)
    agg.add(beacon(1, rssi_dbm=-50), clock.at(0))
    agg.add(beacon(2, rssi_dbm=-90), clock.at(1))
    agg.add(beacon(1, rssi_dbm=-60), clock.at(2))

    sightings = {s.tag_id: s for s in agg.close_all()}

    assert sightings["00000001"].beacons == 2
    assert sightings["00000002"].peak_rssi_dbm == -90


def test_first_beacon_of_a_hot_listed_tag_alerts_once_per_passage() -> None:
    clock = FakeClock()
    agg = aggregator(clock, HotList(7, [0xDEAD]))

    [alert] = agg.add(beacon(0xDEAD, rssi_dbm=-66, antenna=2), clock.at(0))
    assert (alert.kind, alert.tag_id, alert.hotlist_version) == ("hotlist_hit", "0000DEAD", 7)
    assert (alert.seen_at, alert.rssi_dbm, alert.antenna, alert.station_id) == (T0, -66, 2, "s1")
    assert agg.add(beacon(0xDEAD), clock.at(2)) == []
    assert agg.add(beacon(0xBEEF), clock.at(2)) == []

    agg.close_due(clock.at(20))
    [again] = agg.add(beacon(0xDEAD), clock.at(21))  # a new passage alerts again
    assert again.kind == "hotlist_hit"


def test_a_tag_hot_listed_mid_passage_alerts_at_its_next_beacon() -> None:
    clock = FakeClock()
    hotlist = HotList()
    agg = aggregator(clock, hotlist)
    assert agg.add(beacon(5), clock.at(0)) == []

    hotlist.offer(1, [5])

    [alert] = agg.add(beacon(5), clock.at(2))
    assert alert.kind == "hotlist_hit"


def test_tamper_alerts_the_first_time_it_is_seen_in_a_passage() -> None:
    clock = FakeClock()
    agg = aggregator(clock)
    assert agg.add(beacon(3), clock.at(0)) == []
    [alert] = agg.add(beacon(3, flags=TagFlags.TAMPER | TagFlags.MOTION), clock.at(1))
    assert (alert.kind, alert.hotlist_version) == ("tamper", None)
    assert agg.add(beacon(3, flags=TagFlags.TAMPER), clock.at(2)) == []


def test_stolen_and_tampered_chip_raises_both_alerts_from_one_beacon() -> None:
    clock = FakeClock()
    agg = aggregator(clock, HotList(1, [9]))
    alerts = agg.add(beacon(9, flags=TagFlags.TAMPER), clock.at(0))
    assert [a.kind for a in alerts] == ["hotlist_hit", "tamper"]


def test_beacon_time_defaults_to_the_clock() -> None:
    clock = FakeClock()
    agg = aggregator(clock)
    clock.at(3)
    agg.add(beacon(1))
    [sighting] = agg.close_all()
    assert sighting.first_seen_at == T0 + timedelta(seconds=3)
    assert agg.beacons_total == 1
