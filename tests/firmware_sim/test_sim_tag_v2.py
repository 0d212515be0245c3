"""firmware_sim.tag_v2 and firmware_sim.clone: v2 tags with drifting clocks through the simulated radio module, and
what a clone attacker's replays and forgeries are."""

from __future__ import annotations

import random
import time

import pytest
import serial

from firmware_sim.clone import FORWARD_BIT, CloneAttacker, CloneError
from firmware_sim.radio import RadioModule
from firmware_sim.tag_v2 import TagV2, TagV2Error
from protocol.beacon_v2 import WINDOW_S, AirBeacon, ChipKey, MacError, heard, window_of
from protocol.frames import BAUD_RATE, Beacon, BeaconV2, Frame, FrameDecoder, TagFlags

EPOCH = 1_796_040_000.0  # 2026-12-01T00:00:00Z, the start of a window
KEY = bytes(range(16))


def read_frames(port: serial.Serial, decoder: FrameDecoder, count: int, timeout_s: float = 5.0) -> list[Frame]:
    out: list[Frame] = []
    deadline = time.monotonic() + timeout_s
    while len(out) < count and time.monotonic() < deadline:
        out += decoder.feed(port.read(4096))
    return out


def test_v2_tag_beacons_open_with_its_key_in_the_window_of_its_own_clock() -> None:
    tag = TagV2(7, KEY, random.Random(1), epoch_unix_s=EPOCH, clock_offset_s=-100.0, drift_ppm=50.0)
    chip = ChipKey(KEY)
    sent = tag.poll(3 * WINDOW_S)
    assert 900 < len(sent) < 2700
    assert [b.counter for b in sent] == list(range(len(sent)))
    for beacon in sent:
        assert beacon.window == window_of(EPOCH + beacon.sent_at_s - 100.0 + 50e-6 * beacon.sent_at_s)
        assert chip.open(beacon.window, beacon.air) == beacon.counter
    # The clock runs 100 s behind: it starts in the window before, and every change comes 100 s after the true one.
    assert sent[0].window == window_of(EPOCH) - 1
    changes = [b.sent_at_s for a, b in zip(sent, sent[1:], strict=False) if b.window != a.window]
    expected = [100.0, WINDOW_S + 100.0, 2 * WINDOW_S + 100.0]
    assert len(changes) == len(expected)
    assert all(0.0 <= at - true_at <= 3.0 for at, true_at in zip(changes, expected, strict=True))


def test_a_drifting_clock_moves_the_window_change_by_its_drift() -> None:
    months = 90 * 86_400
    tag = TagV2(7, KEY, random.Random(1), epoch_unix_s=EPOCH, drift_ppm=20.0)
    # 20 ppm over three months is 155.5 s ahead: the chip beacons the next window's eid that long before true time.
    assert tag.chip_unix_s(months) - (EPOCH + months) == pytest.approx(155.52)
    assert tag.window(months - 100) == window_of(EPOCH + months) != window_of(EPOCH + months - 100)


def test_v2_tag_flags_travel_in_the_clear_and_under_the_mac() -> None:
    tag = TagV2(7, KEY, random.Random(1), epoch_unix_s=EPOCH)
    tag.moving = True
    tag.tampered = True
    (beacon,) = tag.poll(tag.next_beacon_at_s)
    assert beacon.air.flags == TagFlags.MOTION | TagFlags.TAMPER
    assert ChipKey(KEY).verify(beacon.window, beacon.air)


def test_v2_tag_refuses_what_no_chip_has() -> None:
    with pytest.raises(TagV2Error):
        TagV2(1, KEY, random.Random(1), epoch_unix_s=EPOCH, counter=2**32)
    with pytest.raises(TagV2Error):
        TagV2(1, KEY, random.Random(1), epoch_unix_s=EPOCH, interval_s=0.5)
    assert KEY.hex() not in repr(TagV2(1, KEY, random.Random(1), epoch_unix_s=EPOCH))


def test_v2_and_v1_beacons_go_through_the_radio_module_as_their_own_frame_types() -> None:
    tag = TagV2(7, KEY, random.Random(1), epoch_unix_s=EPOCH)
    sent_v2 = [b.frame(-60 - i % 30, i % 2) for i, b in enumerate(tag.poll(60.0))]
    v1 = Beacon(0x12345678, 1, TagFlags(0), -60, 0)
    with RadioModule(status_interval_s=None, rng=random.Random(7)) as radio:
        radio.start(tick_s=0.002)
        with serial.serial_for_url(radio.port, baudrate=BAUD_RATE, timeout=0.05) as port:
            for frame in sent_v2:
                assert radio.hear(frame)
            assert radio.hear(v1)
            decoder = FrameDecoder()
            got = read_frames(port, decoder, len(sent_v2) + 1)
    assert got == [*sent_v2, v1]
    assert not decoder.rejected
    assert all(isinstance(f, BeaconV2) for f in got[:-1])


def test_a_replay_is_byte_identical_and_its_counter_does_not_move_forward() -> None:
    tag = TagV2(7, KEY, random.Random(1), epoch_unix_s=EPOCH)
    attacker = CloneAttacker(random.Random(2))
    first, second = tag.poll(6.5)[:2]
    attacker.capture(first.frame(-70, 0))
    replay = attacker.replay(first.air.eid)
    assert replay.to_bytes() == first.air.to_bytes()
    chip = ChipKey(KEY)
    # The MAC verifies; the counter is one the backend has already seen (the real chip has moved on).
    assert chip.open(first.window, replay) == first.counter < second.counter
    assert attacker.replays == 1


def test_a_forgery_keeps_the_eid_moves_the_counter_forward_and_fails_the_mac() -> None:
    tag = TagV2(7, KEY, random.Random(1), epoch_unix_s=EPOCH)
    attacker = CloneAttacker(random.Random(3))
    chip = ChipKey(KEY)
    beacons = tag.poll(600.0)
    for beacon in beacons:
        attacker.capture(beacon.air)
    eid = beacons[-1].air.eid
    for _ in range(200):
        forged = attacker.forge(eid, flags=TagFlags(0))
        assert forged.eid == eid
        sealed_step = int.from_bytes(forged.sealed_counter, "big") ^ int.from_bytes(beacons[-1].air.sealed_counter)
        assert sealed_step == FORWARD_BIT  # under the pad, the counter moved forward by 2**30
        assert not chip.verify(beacons[-1].window, forged)
        with pytest.raises(MacError):
            chip.open(beacons[-1].window, forged)
        assert AirBeacon.from_bytes(forged.to_bytes()) == forged
        assert heard(forged.frame(-50, 1)) == forged
    with pytest.raises(CloneError):
        attacker.forge(b"\x00" * 8)
    with pytest.raises(CloneError):
        attacker.replay(b"\x00" * 8)


def test_the_clone_cannot_follow_the_chip_into_the_next_window() -> None:
    tag = TagV2(7, KEY, random.Random(1), epoch_unix_s=EPOCH)
    attacker = CloneAttacker(random.Random(4))
    beacons = tag.poll(WINDOW_S + 30.0)
    for beacon in beacons[: len(beacons) // 2]:
        attacker.capture(beacon.air)
    later = beacons[-1]
    assert later.window == window_of(EPOCH) + 1
    assert later.air.eid not in attacker.captured
