"""v2 resolution in the backend: the table, the verdicts (ok, unknown, bad_mac, replay, duplicate), clock offsets
learned, window splits joined. No database: the chips are (tag id, key) pairs as backend.chip_keys gives them."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import pytest

from backend.alarms.kinds import AlarmKind
from backend.resolution import (
    Candidate,
    ResolutionTable,
    Resolver,
    TableKeyError,
    Verdict,
    join_window_splits,
)
from backend.resolution import table as table_module
from backend.resolution.table import derive_eids
from firmware_sim.clone import CloneAttacker
from firmware_sim.tag_v2 import TagV2
from protocol.beacon_v2 import WINDOW_S, AirBeacon, BeaconPayloadError, ChipKey, window_of
from protocol.frames import TagFlags

# 2026-11-29T12:00:00Z, the golden vectors' time: the start of window 1995504.
T0 = 1_795_953_600.0
W0 = window_of(T0)


def chips(n: int, seed: int = 17) -> list[tuple[int, bytes]]:
    """n chips as backend.chip_keys.active_v2_keys gives them: (tag id, 16-byte key)."""
    rng = random.Random(seed)
    return [(0x10000 + i, rng.randbytes(16)) for i in range(n)]


def at(unix_s: float) -> datetime:
    return datetime.fromtimestamp(unix_s, UTC)


NO_FLAGS = TagFlags(0)


def beacon(key: bytes, unix_s: float, counter: int, flags: TagFlags = NO_FLAGS) -> bytes:
    """The payload a chip whose clock reads `unix_s` sends with `counter`."""
    return ChipKey(key).seal(window_of(unix_s), counter, flags).to_bytes()


@pytest.mark.parametrize("chunk", [table_module.DERIVE_CHUNK, 2])
def test_derived_eids_are_the_chips_own(chunk: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(table_module, "DERIVE_CHUNK", chunk)  # 2: five chips in three chunks
    pairs = chips(5)
    windows = range(W0 - 1, W0 + 3)
    eids = derive_eids(b"".join(k for _, k in pairs), windows)
    for row, (_, key) in zip(eids.tolist(), pairs, strict=True):
        assert [e.to_bytes(8, "big") for e in row] == ChipKey(key).eids(windows)
    assert derive_eids(b"", windows).shape == (0, len(windows))


def test_every_chip_is_found_in_every_window_held_and_nothing_else() -> None:
    pairs = chips(2000)
    table = ResolutionTable(pairs, W0)
    assert table.windows == range(W0 - 1, W0 + 2)
    for tag_id, key in pairs[::37]:
        for w in table.windows:
            found = table.lookup(ChipKey(key).eid(w))
            assert [(c.tag_id, c.window) for c in found] == [(tag_id, w)]
        assert table.lookup(ChipKey(key).eid(W0 + 2)) == []
    assert table.lookup(bytes(8)) == []


def test_a_bad_key_is_refused_naming_the_tag_not_the_key() -> None:
    with pytest.raises(TableKeyError, match="tag 7: a chip key is 16 bytes, not 3") as error:
        ResolutionTable([(7, b"abc")], W0)
    assert "abc" not in str(error.value)


def test_advance_takes_windows_computed_ahead_without_new_key_schedules() -> None:
    pairs = chips(500)
    table = ResolutionTable(pairs, W0, ahead=4)
    assert table.key_schedules == 500
    tag_id, key = pairs[123]
    for step in range(1, 5):
        table.advance(W0 + step)
        assert table.key_schedules == 500, "the eids of the next windows were computed with the first key schedules"
        assert table.windows == range(W0 + step - 1, W0 + step + 2)
        assert [c.tag_id for c in table.lookup(ChipKey(key).eid(W0 + step + 1))] == [tag_id]
        assert table.lookup(ChipKey(key).eid(W0 + step - 2)) == [], "the window that left is dropped"
    table.advance(W0 + 5)  # past what was computed ahead: one key schedule per chip again, for the next run
    assert table.key_schedules == 1000
    assert [c.tag_id for c in table.lookup(ChipKey(key).eid(W0 + 6))] == [tag_id]


def test_a_reader_keeps_finding_chips_while_a_builder_advances() -> None:
    pairs = chips(3000)
    table = ResolutionTable(pairs, W0, ahead=1)
    # The eid of a window held before and after every advance below (W0 + 1 stays in range from W0 to W0 + 2).
    probes = [(tag_id, ChipKey(key).eid(W0 + 1)) for tag_id, key in pairs[::100]]
    misses: list[int] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            for tag_id, eid in probes:
                if [c.tag_id for c in table.lookup(eid)] != [tag_id]:
                    misses.append(tag_id)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for to_window in (W0 + 1, W0 + 2, W0 + 1, W0 + 2):
            table.advance(to_window)
    finally:
        stop.set()
        reader.join()
    assert misses == []


def test_chips_fitted_later_resolve_and_retired_chips_do_not() -> None:
    pairs = chips(300)
    table = ResolutionTable(pairs, W0, ahead=2)
    ((new_tag, new_key),) = chips(1, seed=99)
    table.add_chips([(new_tag, new_key)])
    for w in table.windows:
        assert [c.tag_id for c in table.lookup(ChipKey(new_key).eid(w))] == [new_tag]
    table.advance(W0 + 2)  # from the windows computed ahead, which the new chip joined
    assert [c.tag_id for c in table.lookup(ChipKey(new_key).eid(W0 + 3))] == [new_tag]
    old_tag, old_key = pairs[5]
    table.retire(old_tag)
    assert table.lookup(ChipKey(old_key).eid(W0 + 2)) == []


def test_a_retired_chip_whose_clock_drifted_does_not_resolve_from_the_side_entries() -> None:
    pairs = chips(20)
    tag_id, key = pairs[2]
    table = ResolutionTable(pairs, W0)
    resolver = Resolver(table)
    # A chip 20 minutes fast: beacons of W0 + 1 then W0 + 2 (beyond the table) once its offset is learned.
    for k in range(6):
        t = T0 + 100 + k * 140
        assert resolver.resolve(beacon(key, t + 1200, k + 1), at(t), "S1").verdict is Verdict.OK
    assert resolver.offset_s(tag_id) == pytest.approx(1200, abs=150)
    assert resolver.resolve(beacon(key, T0 + 800 + 1200, 10), at(T0 + 800), "S1").window == W0 + 2
    table.retire(tag_id)
    assert resolver.resolve(beacon(key, T0 + 820 + 1200, 11), at(T0 + 820), "S1").verdict is Verdict.UNKNOWN


def test_a_beacon_resolves_to_its_chip_counter_flags_and_window() -> None:
    pairs = chips(1000)
    resolver = Resolver(ResolutionTable(pairs, W0))
    tag_id, key = pairs[400]
    payload = beacon(key, T0 + 100, 41, TagFlags.MOTION | TagFlags.LOW_BATTERY)
    r = resolver.resolve(payload, at(T0 + 101), "S1")
    assert (r.verdict, r.tag_id, r.counter, r.window) == (Verdict.OK, tag_id, 41, W0)
    assert r.flags == TagFlags.MOTION | TagFlags.LOW_BATTERY
    assert r.evidence is None and not r.is_alarm


def test_an_eid_no_chip_beacons_is_unknown_counted_and_kept() -> None:
    resolver = Resolver(ResolutionTable(chips(100), W0))
    ((_, stranger_key),) = chips(1, seed=5)
    payload = beacon(stranger_key, T0, 1)
    r = resolver.resolve(payload, at(T0), "S9")
    assert (r.verdict, r.tag_id, r.counter) == (Verdict.UNKNOWN, None, None)
    assert resolver.counts[Verdict.UNKNOWN] == 1
    assert list(resolver.unknown) == [("S9", at(T0), payload)]


def test_bytes_that_are_no_v2_beacon_raise_the_payload_error() -> None:
    resolver = Resolver(ResolutionTable(chips(10), W0))
    with pytest.raises(BeaconPayloadError):
        resolver.resolve(b"\x02" * 7, at(T0))


def test_a_forged_beacon_is_bad_mac_with_evidence_for_a_cloned_chip_alarm() -> None:
    pairs = chips(200)
    resolver = Resolver(ResolutionTable(pairs, W0))
    tag_id, key = pairs[17]
    tag = TagV2(tag_id, key, random.Random(1), epoch_unix_s=T0, interval_s=2.0)
    genuine = tag.poll(10.0)[-1]
    assert resolver.resolve(genuine.air.to_bytes(), at(T0 + 10), "S1").verdict is Verdict.OK
    clone = CloneAttacker(random.Random(2))
    clone.capture(genuine.air)
    forged = clone.forge(genuine.air.eid).to_bytes()
    r = resolver.resolve(forged, at(T0 + 300), "S7")
    assert (r.verdict, r.tag_id, r.counter) == (Verdict.BAD_MAC, tag_id, None)
    assert r.evidence is not None
    assert r.evidence.offending.station_id == "S7" and r.evidence.offending.payload == forged
    assert r.evidence.previous is not None and r.evidence.previous.counter == genuine.counter
    alarm = r.evidence.as_alarm()
    assert (alarm.kind, alarm.tag_id, alarm.station_id) == (AlarmKind.CHIP_CLONED, tag_id, "S7")
    assert (alarm.first_seen_at, alarm.last_seen_at) == (at(T0 + 10), at(T0 + 300))
    assert r.evidence.as_dict()["offending"]["payload_hex"] == forged.hex()
    # The forgery moved nothing: the chip's next genuine beacon is fine.
    assert resolver.chips[tag_id].counter == genuine.counter
    nxt = tag.poll(20.0)[-1]
    assert resolver.resolve(nxt.air.to_bytes(), at(T0 + 20), "S1").verdict is Verdict.OK


def test_a_replayed_beacon_elsewhere_later_is_a_replay_with_both_hearings() -> None:
    pairs = chips(200)
    resolver = Resolver(ResolutionTable(pairs, W0))
    tag_id, key = pairs[3]
    tag = TagV2(tag_id, key, random.Random(1), epoch_unix_s=T0)
    sent = tag.poll(60.0)
    clone = CloneAttacker(random.Random(2))
    for b in sent:
        clone.capture(b.air)
    last = sent[-1]
    assert resolver.resolve(last.air.to_bytes(), at(T0 + last.sent_at_s), "S1").verdict is Verdict.OK
    replayed = clone.replay(last.air.eid).to_bytes()
    r = resolver.resolve(replayed, at(T0 + 240), "S5")
    assert (r.verdict, r.tag_id, r.counter) == (Verdict.REPLAY, tag_id, last.counter)
    assert r.evidence is not None and r.evidence.previous is not None
    assert (r.evidence.previous.station_id, r.evidence.previous.counter) == ("S1", last.counter)
    assert (r.evidence.offending.station_id, r.evidence.offending.heard_at) == ("S5", at(T0 + 240))
    assert r.evidence.as_alarm().kind is AlarmKind.CHIP_CLONED
    # An older beacon of the same chip, sent again later, is a replay too.
    older = sent[0]
    assert resolver.resolve(older.air.to_bytes(), at(T0 + 300), "S6").verdict is Verdict.REPLAY
    assert resolver.counts[Verdict.REPLAY] == 2


def test_one_beacon_heard_by_two_stations_within_seconds_is_a_duplicate_not_an_alarm() -> None:
    pairs = chips(50)
    resolver = Resolver(ResolutionTable(pairs, W0), duplicate_s=10.0)
    tag_id, key = pairs[9]
    payload = beacon(key, T0 + 50, 77)
    assert resolver.resolve(payload, at(T0 + 50.0), "S1").verdict is Verdict.OK
    r = resolver.resolve(payload, at(T0 + 52.5), "S2")
    assert (r.verdict, r.tag_id, r.counter, r.evidence) == (Verdict.DUPLICATE, tag_id, 77, None)
    # The same bytes a minute later, elsewhere: a replay.
    assert resolver.resolve(payload, at(T0 + 110.0), "S3").verdict is Verdict.REPLAY


def test_an_older_beacon_heard_earlier_but_delivered_late_is_not_a_replay() -> None:
    pairs = chips(50)
    resolver = Resolver(ResolutionTable(pairs, W0))
    _, key = pairs[1]
    assert resolver.resolve(beacon(key, T0 + 200, 100), at(T0 + 200), "S1").verdict is Verdict.OK
    # A station's spool delivers what it heard at T0 + 100 (counter 50) only now.
    assert resolver.resolve(beacon(key, T0 + 100, 50), at(T0 + 100), "S2").verdict is Verdict.OK
    # One heard by a station whose clock is 3 s ahead of the first one's: still consistent.
    assert resolver.resolve(beacon(key, T0 + 198, 99), at(T0 + 203), "S3").verdict is Verdict.OK
    assert resolver.chips[pairs[1][0]].counter == 100
    # The same older counter heard well after the newer one: a replay.
    assert resolver.resolve(beacon(key, T0 + 198, 99), at(T0 + 260), "S4").verdict is Verdict.REPLAY


def test_when_two_chips_share_an_eid_the_mac_decides() -> None:
    pairs = chips(20)
    (decoy_tag, _), (tag_id, key) = pairs[0], pairs[1]

    class Colliding(ResolutionTable):
        """A table whose every lookup also answers a decoy chip first (a real collision is 1 in 10^13)."""

        def lookup(self, eid: bytes, windows: Iterable[int] | None = None) -> list[Candidate]:
            return [Candidate(decoy_tag, W0, 0), *super().lookup(eid, windows)]

    resolver = Resolver(Colliding(pairs, W0))
    r = resolver.resolve(beacon(key, T0, 5), at(T0), "S1")
    assert (r.verdict, r.tag_id, r.counter) == (Verdict.OK, tag_id, 5)


def test_a_chip_ten_minutes_fast_keeps_resolving_after_a_few_sightings() -> None:
    """With a table of the current window only, a chip 10 minutes fast beacons the next window for two thirds of
    each window; once its offset is learned its eids of those windows sit on the side."""
    pairs = chips(100)
    tag_id, key = pairs[42]
    table = ResolutionTable(pairs, W0, before=0, after=0)
    resolver = Resolver(table)
    tag = TagV2(tag_id, key, random.Random(3), epoch_unix_s=T0, clock_offset_s=600.0)
    verdicts: list[Verdict] = []
    beyond_table = 0
    for minute in range(0, 6 * 60, 3):  # a sighting every 3 minutes for 6 hours
        now = minute * 60.0 + 3.0
        table_window = window_of(T0 + now)
        if table_window != table.centre:
            resolver.advance(table_window)
        tag.next_beacon_at_s = now  # the beacons between sightings are heard by no station: not simulated
        sent = tag.poll(now)[-1]
        r = resolver.resolve(sent.air.to_bytes(), at(T0 + now), "S1")
        verdicts.append(r.verdict)
        beyond_table += r.window is not None and r.window not in table.windows
    assert set(verdicts[3:]) == {Verdict.OK}, verdicts
    assert beyond_table > 60, "two thirds of the sightings are of a window the table does not hold"
    offset = resolver.offset_s(tag_id)
    assert offset is not None and abs(offset - 600.0) < 60


def test_a_chip_drifting_to_forty_minutes_over_months_keeps_resolving() -> None:
    pairs = chips(100)
    tag_id, key = pairs[7]
    table = ResolutionTable(pairs, W0)
    resolver = Resolver(table)
    # 900 ppm: 40 minutes in a month, far beyond any crystal, to cover in 31 days what a real chip drifts in years.
    tag = TagV2(tag_id, key, random.Random(4), epoch_unix_s=T0, drift_ppm=900.0)
    for step in range(31 * 24 // 5):  # seen every 5 hours for a month, several times a visit
        for k in range(3):
            now = step * 5 * 3600.0 + k * 400.0 + 3.0
            # The table is advanced by its own builder (as a background thread does); the resolver follows it.
            table.advance(window_of(T0 + now))
            tag.next_beacon_at_s = now  # the beacons between visits are heard by no station: not simulated
            sent = tag.poll(now)[-1]
            r = resolver.resolve(sent.air.to_bytes(), at(T0 + now), "S1")
            assert r.verdict is Verdict.OK, (step, k, tag.chip_unix_s(now) - (T0 + now))
    offset = resolver.offset_s(tag_id)
    assert offset is not None and offset > 30 * 60


def test_passages_split_by_a_window_change_are_joined() -> None:
    t = at(T0)
    a = {
        "first_seen_at": t - timedelta(seconds=30),
        "last_seen_at": t - timedelta(seconds=1),
        "station_id": "S1",
        "tag_id": 7,
        "beacons": 15,
        "peak_rssi_dbm": -70,
        "antenna": 0,
        "flags": int(TagFlags.MOTION),
        "batch_seq": 4,
        "window": W0 - 1,
    }
    b = a | {
        "first_seen_at": t + timedelta(seconds=1),
        "last_seen_at": t + timedelta(seconds=20),
        "beacons": 10,
        "peak_rssi_dbm": -55,
        "antenna": 1,
        "flags": int(TagFlags.LOW_BATTERY),
        "batch_seq": 5,
        "window": W0,
    }
    other_station = a | {"station_id": "S2"}
    v1_cut = {k: v for k, v in b.items() if k != "window"}  # a gateway's passage cut at its maximum length
    joined = join_window_splits([b, other_station, a])
    assert len(joined) == 2
    one = next(r for r in joined if r["station_id"] == "S1")
    assert (one["first_seen_at"], one["last_seen_at"]) == (a["first_seen_at"], b["last_seen_at"])
    assert (one["beacons"], one["peak_rssi_dbm"], one["antenna"]) == (25, -55, 1)
    assert one["flags"] == int(TagFlags.MOTION | TagFlags.LOW_BATTERY)
    assert one["batch_seq"] == 4
    assert len(join_window_splits([a, v1_cut])) == 2
    # Further apart than the passage gap: two passages.
    late = b | {"first_seen_at": t + timedelta(seconds=30), "last_seen_at": t + timedelta(seconds=40)}
    assert len(join_window_splits([a, late])) == 2


def test_resolution_never_prints_a_key() -> None:
    pairs = chips(3)
    table = ResolutionTable(pairs, W0)
    resolver = Resolver(table)
    text = repr(table.chip_key(0)) + repr(resolver.resolve(beacon(pairs[0][1], T0, 1), at(T0), "S1"))
    for _, key in pairs:
        assert key.hex() not in text and repr(key) not in text


def test_an_air_beacon_round_trip_keeps_its_window() -> None:
    _, key = chips(1)[0]
    payload = beacon(key, T0 + WINDOW_S, 3)
    assert AirBeacon.from_bytes(payload).eid == ChipKey(key).eid(W0 + 1)


def test_a_beacon_captured_an_hour_ago_and_played_now_is_a_replay_not_unknown() -> None:
    """Looked up near its time first (where every genuine beacon is), then in every window held: an old capture
    played back now is still found, and judged against its chip's counter."""
    pairs = chips(30)
    tag_id, key = pairs[7]
    resolver = Resolver(ResolutionTable(pairs, W0, before=8))
    hour_ago = T0 - 3600
    first = resolver.resolve(beacon(key, hour_ago, 100), at(hour_ago), "S1")
    assert (first.verdict, first.tag_id) == (Verdict.OK, tag_id)
    assert resolver.resolve(beacon(key, T0, 400), at(T0), "S1").verdict is Verdict.OK
    replayed = resolver.resolve(beacon(key, hour_ago, 100), at(T0 + 30), "S2")
    assert (replayed.verdict, replayed.tag_id) == (Verdict.REPLAY, tag_id)
    assert replayed.evidence is not None and replayed.evidence.previous is not None
