"""v2 chips at the station: passages by ephemeral id, the beacons a sighting carries, the hot list's eids, the
checkpoint and the saved list, all without a chip key (the tests hold one only to make the beacons)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.aggregator import Aggregator
from gateway.hotlist import HotList, HotlistRefused, check_hotlist
from gateway.spool import Spool
from protocol.beacon_v2 import WINDOW_S, AirBeacon, ChipKey, window_of
from protocol.frames import BeaconV2, TagFlags
from protocol.messages import Alert, Hotlist, SightingBatch
from protocol.signing import generate_signing_key, public_key_of, read_public_key, read_signing_key, sign_hotlist
from tests.gateway.harness import beacon

# Two minutes before a window change, so a test can cross it.
W0 = 1_995_504
T0 = datetime.fromtimestamp((W0 + 1) * WINDOW_S - 120, UTC)
KEY = ChipKey(bytes(range(16)))
OTHER = ChipKey(bytes(range(16, 32)))


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def at(self, seconds: float) -> datetime:
        """Set the clock to T0 + seconds and return it."""
        self.now = T0 + timedelta(seconds=seconds)
        return self.now


def v2(
    clock: FakeClock, counter: int, rssi_dbm: int = -70, antenna: int = 0, flags: int = 0, key: ChipKey = KEY
) -> BeaconV2:
    """The frame of the beacon the chip sends now (its clock right), heard at `rssi_dbm` on `antenna`."""
    window = window_of(clock.now.timestamp())
    return key.seal(window, counter, TagFlags(flags)).frame(rssi_dbm, antenna)


def air(frame: BeaconV2) -> str:
    """The beacon's bytes on the air, as a sighting or alert carries them."""
    return AirBeacon(frame.eid, frame.sealed_counter, frame.flags, frame.mac).to_bytes().hex()


def aggregator(clock: FakeClock, hotlist: HotList | None = None) -> Aggregator:
    """An aggregator for station s1 on the fake clock (8 s gap, 60 s at most)."""
    return Aggregator("s1", hotlist or HotList(clock=clock), passage_gap_s=8, passage_max_s=60, clock=clock)


def test_beacons_of_one_eid_become_one_sighting_with_its_first_and_last_beacon_and_no_tag_id() -> None:
    clock = FakeClock()
    agg = aggregator(clock)
    frames = []
    for t, rssi, antenna, flags in [(0, -80, 0, TagFlags.MOTION), (2, -61, 1, 0), (4, -75, 0, TagFlags.LOW_BATTERY)]:
        clock.at(t)
        frames.append(v2(clock, counter=10 + t, rssi_dbm=rssi, antenna=antenna, flags=flags))
        assert agg.add_v2(frames[-1], clock.now) == []

    [sighting] = agg.close_due(clock.at(12))

    assert sighting.tag_id is None
    assert sighting.heard == [air(frames[0]), air(frames[2])]
    assert (sighting.beacons, sighting.peak_rssi_dbm, sighting.antenna) == (3, -61, 1)
    assert sighting.flags == TagFlags.MOTION | TagFlags.LOW_BATTERY
    assert (sighting.first_seen_at, sighting.last_seen_at) == (T0, T0 + timedelta(seconds=4))
    assert (agg.beacons_total, agg.beacons_v2_total) == (3, 3)
    # It is a sighting the contract takes, in a batch as the station sends it.
    batch = SightingBatch(station_id="s1", batch_seq=1, sent_at=clock.now, sightings=[sighting])
    assert SightingBatch.parse(batch.to_json()).sightings == [sighting]


def test_a_passage_of_one_beacon_carries_that_beacon_alone() -> None:
    clock = FakeClock()
    agg = aggregator(clock)
    frame = v2(clock, counter=3)
    agg.add_v2(frame, clock.now)
    [sighting] = agg.close_all()
    assert sighting.heard == [air(frame)]


def test_a_window_change_splits_the_passage_into_two_sightings_each_with_its_own_eids_beacons() -> None:
    clock = FakeClock()
    agg = aggregator(clock)
    frames = []
    for counter, t in ((1, 110), (2, 116), (3, 121), (4, 124), (5, 127)):  # the window changes at 120 s
        clock.at(t)
        frames.append(v2(clock, counter=counter))
        agg.add_v2(frames[-1], clock.now)
    before, after = frames[:2], frames[2:]
    assert before[0].eid != after[0].eid
    assert agg.open_count == 2  # one eid each: the station cannot know they are one chip

    sightings = sorted(agg.close_all(), key=lambda s: s.first_seen_at)

    assert [s.heard for s in sightings] == [[air(before[0]), air(before[1])], [air(after[0]), air(after[2])]]
    assert [s.beacons for s in sightings] == [2, 3]
    for s, eid in zip(sightings, (before[0].eid, after[0].eid), strict=True):
        assert s.heard is not None and all(bytes.fromhex(h)[1:9] == eid for h in s.heard)


def test_v1_and_v2_chips_aggregate_side_by_side() -> None:
    clock = FakeClock()
    agg = aggregator(clock)
    agg.add(beacon(0xAB), clock.at(0))
    agg.add_v2(v2(clock, counter=1), clock.now)
    agg.add_v2(v2(clock, counter=1, key=OTHER), clock.now)
    sightings = agg.close_all()
    assert sorted((s.tag_id or "", len(s.heard or [])) for s in sightings) == [("", 1), ("", 1), ("000000AB", 0)]
    assert (agg.beacons_total, agg.beacons_v2_total) == (3, 2)


def test_a_hot_listed_eid_alerts_at_its_first_beacon_with_that_beacon_and_the_lists_version() -> None:
    clock = FakeClock()
    window = window_of(T0.timestamp())
    hotlist = HotList(7, [0xDEAD], {window: [KEY.eid(window)], window + 1: [KEY.eid(window + 1)]}, clock=clock)
    agg = aggregator(clock, hotlist)
    first = v2(clock, counter=40, rssi_dbm=-60, antenna=1)

    [alert] = agg.add_v2(first, clock.now)

    assert (alert.kind, alert.tag_id, alert.heard) == ("hotlist_hit", None, air(first))
    assert (alert.hotlist_version, alert.rssi_dbm, alert.antenna, alert.station_id) == (7, -60, 1, "s1")
    assert Alert.parse(alert.to_json()) == alert
    assert b"tag_id" not in alert.to_json()
    assert agg.add_v2(v2(clock, counter=41), clock.at(2)) == []  # once a passage
    assert agg.add_v2(v2(clock, counter=1, key=OTHER), clock.now) == []  # another chip's eid is not listed
    # In the next window the chip beacons another eid, which the list carries too.
    [again] = agg.add_v2(v2(clock, counter=42), clock.at(125))
    assert again.kind == "hotlist_hit"


def test_a_tamper_flag_of_a_v2_chip_alerts_once_a_passage_with_the_beacon_that_carried_it() -> None:
    clock = FakeClock()
    agg = aggregator(clock)
    assert agg.add_v2(v2(clock, counter=1), clock.now) == []
    tampered = v2(clock, counter=2, flags=TagFlags.TAMPER)
    [alert] = agg.add_v2(tampered, clock.at(2))
    assert (alert.kind, alert.heard, alert.hotlist_version) == ("tamper", air(tampered), None)
    assert agg.add_v2(v2(clock, counter=3, flags=TagFlags.TAMPER), clock.at(4)) == []


def test_a_list_that_arrives_mid_passage_still_flags_the_eid_at_its_next_beacon() -> None:
    clock = FakeClock()
    hotlist = HotList(clock=clock)
    agg = aggregator(clock, hotlist)
    assert agg.add_v2(v2(clock, counter=1), clock.now) == []
    window = window_of(T0.timestamp())
    assert hotlist.offer(5, [], {window: [KEY.eid(window)]})
    [alert] = agg.add_v2(second := v2(clock, counter=2), clock.at(2))
    assert (alert.kind, alert.heard) == ("hotlist_hit", air(second))


def test_the_hot_list_keeps_the_eids_of_the_window_before_the_current_one_and_after_and_drops_older() -> None:
    clock = FakeClock()
    now = window_of(T0.timestamp())
    windows = range(now - 3, now + 3)
    hotlist = HotList(clock=clock)
    assert hotlist.offer(1, [], {w: [KEY.eid(w)] for w in windows})
    assert sorted(hotlist.eids) == [now - 1, now, now + 1, now + 2]
    assert KEY.eid(now - 1) in hotlist and KEY.eid(now - 2) not in hotlist
    assert not hotlist.drop_past_eids()  # nothing past yet

    clock.at(WINDOW_S)  # a window later
    assert hotlist.drop_past_eids()
    assert sorted(hotlist.eids) == [now, now + 1, now + 2]
    assert KEY.eid(now - 1) not in hotlist and KEY.eid(now) in hotlist
    assert (hotlist.version, hotlist.eid_count) == (1, 3)

    # A newer list replaces the eids as it replaces the tags.
    assert hotlist.offer(2, [0xBEEF])
    assert (hotlist.eids, hotlist.eid_count, 0xBEEF in hotlist) == ({}, 0, True)
    assert KEY.eid(now) not in hotlist


def _signed(key: str, eids: dict[str, list[str]] | None) -> Hotlist:
    message = Hotlist(version=1_764_410_400_000, issued_at=T0, tags=["0000BEEF"], eids=eids)
    return sign_hotlist(message, read_signing_key(key))


def test_a_signed_list_with_eids_is_taken_and_one_with_an_eid_changed_or_added_is_refused() -> None:
    key = generate_signing_key()
    public = read_public_key(public_key_of(key))
    window = window_of(T0.timestamp())
    eids = {str(window): [KEY.eid(window).hex()], str(window + 1): [KEY.eid(window + 1).hex()]}
    message = _signed(key, eids)

    taken = check_hotlist(message.to_json(), public, max_bytes=4096, max_tags=10)
    hotlist = HotList(clock=FakeClock())
    assert hotlist.offer_message(taken)
    assert KEY.eid(window) in hotlist and KEY.eid(window + 1) in hotlist and 0xBEEF in hotlist

    changed = {str(window): [OTHER.eid(window).hex()], str(window + 1): eids[str(window + 1)]}
    added = {**eids, str(window + 2): [OTHER.eid(window + 2).hex()]}
    for forged in (changed, added, None):
        payload = message.model_copy(update={"eids": forged}).to_json()
        with pytest.raises(HotlistRefused) as info:
            check_hotlist(payload, public, max_bytes=4096, max_tags=10)
        assert info.value.reason == "bad_signature"
    # Signed, but with more eids in a window than a list may hold tags.
    crowded = _signed(key, {str(window): [KEY.eid(window).hex(), OTHER.eid(window).hex()]})
    with pytest.raises(HotlistRefused) as crowd:
        check_hotlist(crowded.to_json(), public, max_bytes=4096, max_tags=1)
    assert crowd.value.reason == "too_many_tags"
    # Signed, but for a window no chip will see (and no spool could keep).
    beyond = _signed(key, {str(2**64): [KEY.eid(window).hex()]})
    with pytest.raises(HotlistRefused) as far:
        check_hotlist(beyond.to_json(), public, max_bytes=4096, max_tags=10)
    assert far.value.reason == "invalid"


def test_the_spool_keeps_the_lists_eids_and_a_restart_takes_them_back(tmp_path: Path) -> None:
    clock = FakeClock()
    window = window_of(T0.timestamp())
    eids = {window: [KEY.eid(window), OTHER.eid(window)], window + 1: [KEY.eid(window + 1)]}
    spool = Spool(tmp_path / "s.spool")
    assert spool.load_hotlist_eids() == {}
    spool.save_hotlist(9, [0xBEEF], eids)
    spool.close()

    again = Spool(tmp_path / "s.spool")
    assert again.load_hotlist() == (9, [0xBEEF])
    saved = again.load_hotlist_eids()
    assert {w: sorted(e) for w, e in saved.items()} == {w: sorted(e) for w, e in eids.items()}
    hotlist = HotList(clock=clock)
    assert hotlist.offer(9, [0xBEEF], saved)
    assert KEY.eid(window) in hotlist
    again.save_hotlist(10, [])  # a list without eids leaves none behind
    assert again.load_hotlist_eids() == {}


def test_open_v2_passages_are_checkpointed_with_their_beacons_and_restored_to_go_on(tmp_path: Path) -> None:
    clock = FakeClock()
    agg = aggregator(clock)
    first, second = v2(clock, counter=1, rssi_dbm=-80), v2(clock, counter=2, rssi_dbm=-60, antenna=1)
    agg.add_v2(first, clock.at(0))
    agg.add_v2(second, clock.at(2))
    agg.add(beacon(7), clock.now)
    spool = Spool(tmp_path / "s.spool")
    with spool.atomic():
        spool.save_passages(agg.open_passages.values(), [])
    spool.close()

    restored = Spool(tmp_path / "s.spool").load_passages()
    assert sorted(restored, key=lambda p: isinstance(p.tag, bytes)) == sorted(
        agg.open_passages.values(), key=lambda p: isinstance(p.tag, bytes)
    )
    after = aggregator(clock)
    after.restore(restored)
    third = v2(clock, counter=3)
    after.add_v2(third, clock.at(4))
    v2_sighting = next(s for s in after.close_all() if s.tag_id is None)
    assert v2_sighting.heard == [air(first), air(third)]
    assert (v2_sighting.beacons, v2_sighting.peak_rssi_dbm, v2_sighting.antenna) == (3, -60, 1)

    # Forgetting a passage by its eid removes it, and only it.
    spool = Spool(tmp_path / "s.spool")
    with spool.atomic():
        spool.save_passages([], [first.eid])
    assert [p.tag for p in spool.load_passages()] == [7]
