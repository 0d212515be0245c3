"""firmware_sim.radio: real frames on a real pty, paced like a 115200 baud line."""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections.abc import Iterator

import pytest
import serial

from firmware_sim.radio import PathLoss, RadioClosedError, RadioModule
from protocol.frames import BAUD_RATE, Beacon, Frame, FrameDecoder, ModuleStatus, TagFlags, encode

BYTES_PER_S = BAUD_RATE / 10


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def beacons(n: int, seed: int = 1) -> list[Beacon]:
    rng = random.Random(seed)
    return [
        Beacon(rng.getrandbits(32), i & 0xFFFF, TagFlags(rng.randrange(8)), rng.randint(-100, -30), rng.randrange(2))
        for i in range(n)
    ]


def read_frames(port: serial.Serial, decoder: FrameDecoder, count: int, timeout_s: float = 5.0) -> list[Frame]:
    """Read the port until `count` frames are decoded or time runs out."""
    out: list[Frame] = []
    deadline = time.monotonic() + timeout_s
    while len(out) < count and time.monotonic() < deadline:
        out += decoder.feed(port.read(4096))
    return out


@pytest.fixture
def radio() -> Iterator[RadioModule]:
    with RadioModule(status_interval_s=None, rng=random.Random(7)) as module:
        module.start(tick_s=0.002)
        yield module


def test_beacons_heard_arrive_on_the_pty_as_decodable_frames(radio: RadioModule) -> None:
    sent = beacons(50)
    with serial.serial_for_url(radio.port, baudrate=BAUD_RATE, timeout=0.05) as port:
        for beacon in sent:
            assert radio.hear(beacon)
        decoder = FrameDecoder()
        assert read_frames(port, decoder, len(sent)) == sent
    assert not decoder.rejected
    assert radio.stats.bytes_written == 15 * len(sent)
    assert radio.stats.bytes_dropped == 0


def test_any_frame_can_be_sent_and_bytes_are_written_unchanged(radio: RadioModule) -> None:
    # 0x03, 0x0d, 0x11, 0x7f would be mangled by a cooked tty (Ctrl-C, CR, XON, DEL): the pty is raw.
    status = ModuleStatus(-97, 0x0102, 3600)
    raw = bytes([0x03, 0x0D, 0x0A, 0x11, 0x13, 0x7F, 0x1C, 0x04])
    with serial.serial_for_url(radio.port, baudrate=BAUD_RATE, timeout=0.05) as port:
        radio.send(status)
        radio.send_raw(raw)
        radio.hear(Beacon(0xFFFFFFFF, 65535, TagFlags(7), -128, 1))
        got = b""
        deadline = time.monotonic() + 5
        while len(got) < 13 + len(raw) + 15 and time.monotonic() < deadline:
            got += port.read(4096)
    assert got == encode(status) + raw + encode(Beacon(0xFFFFFFFF, 65535, TagFlags(7), -128, 1))


def test_injected_garbage_is_skipped_and_every_frame_still_arrives() -> None:
    sent = beacons(200, seed=3)
    with RadioModule(status_interval_s=None, garbage_rate=0.5, rng=random.Random(11)) as radio:
        radio.start(tick_s=0.002)
        with serial.serial_for_url(radio.port, baudrate=BAUD_RATE, timeout=0.05) as port:
            for beacon in sent[:-6]:
                radio.hear(beacon)
            radio.garbage_rate = 0.0  # clean frames at the end let a false start inside garbage fail its CRC
            for beacon in sent[-6:]:
                radio.hear(beacon)
            decoder = FrameDecoder()
            assert read_frames(port, decoder, len(sent)) == sent
    assert radio.stats.garbage_injected > 50
    assert decoder.skipped_bytes > 0
    assert set(decoder.rejected) <= {"garbage", "bad_length", "crc", "unknown_type", "bad_payload"}


def test_corrupted_frames_are_rejected_and_the_rest_arrive_in_order() -> None:
    sent = beacons(200, seed=5)
    with RadioModule(status_interval_s=None, corrupt_rate=0.2, rng=random.Random(13)) as radio:
        radio.start(tick_s=0.002)
        with serial.serial_for_url(radio.port, baudrate=BAUD_RATE, timeout=0.05) as port:
            for beacon in sent[:-6]:
                radio.hear(beacon)
            radio.corrupt_rate = 0.0
            for beacon in sent[-6:]:
                radio.hear(beacon)
            decoder = FrameDecoder()
            expected = len(sent) - radio.stats.frames_corrupted
            got = read_frames(port, decoder, expected)
    assert radio.stats.frames_corrupted > 10
    assert len(got) == expected
    it = iter(sent)
    assert all(frame in it for frame in got)  # an ordered subsequence of what was sent
    assert sum(decoder.rejected.values()) >= radio.stats.frames_corrupted


def test_pacing_never_outruns_a_115200_baud_line(radio: RadioModule) -> None:
    sent = beacons(300)  # 4500 bytes: 0.39 s of line time
    line_s = 15 * len(sent) / BYTES_PER_S
    with serial.serial_for_url(radio.port, baudrate=BAUD_RATE, timeout=0.01) as port:
        start = time.monotonic()
        for beacon in sent:
            radio.hear(beacon)
        received = 0
        while received < 15 * len(sent) and time.monotonic() - start < 10:
            received += len(port.read(4096))
            # Bytes may arrive late (in chunks), never before the line could have carried them.
            assert received <= (time.monotonic() - start) * BYTES_PER_S + 15
        elapsed = time.monotonic() - start
    assert received == 15 * len(sent)
    assert line_s * 0.95 <= elapsed < line_s + 3.0


def test_more_than_the_line_can_carry_is_refused_and_counted() -> None:
    clock = FakeClock()
    with RadioModule(status_interval_s=None, buffer_s=0.1, clock=clock) as radio:
        accepted = [radio.hear(b) for b in beacons(200)]  # 0.26 s of line time at once
    assert not all(accepted)
    assert radio.stats.frames_overflowed == accepted.count(False) > 0
    assert 70 <= accepted.count(True) <= 80  # 0.1 s of buffer = 768 frames/s x 0.1 s


def test_unread_pty_never_blocks_the_writer_and_drops_are_counted() -> None:
    clock = FakeClock()
    with RadioModule(status_interval_s=None, buffer_s=60.0, clock=clock) as radio:
        for beacon in beacons(4000):  # 60 KB: more than a pty holds
            radio.hear(beacon)
        clock.now += 60.0
        start = time.monotonic()
        radio.pump()
        radio.pump()
        assert time.monotonic() - start < 5.0  # a blocking write would hang here for good
    assert radio.stats.bytes_dropped > 0
    assert radio.stats.bytes_written + radio.stats.bytes_dropped == 15 * 4000


def test_module_status_is_sent_at_start_and_every_ten_seconds() -> None:
    clock = FakeClock()
    with RadioModule(clock=clock, firmware=0x0102, noise_floor_dbm=-97) as radio:
        fd = os.open(radio.port, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
        try:
            decoder = FrameDecoder()
            got: list[Frame] = []
            for _ in range(21):  # 0..20 s in 1 s steps
                radio.pump()
                clock.now += 0.5
                radio.pump()  # releases what was queued half a second ago
                clock.now += 0.5
                with contextlib.suppress(BlockingIOError):  # nothing released this second
                    got += decoder.feed(os.read(fd, 4096))
        finally:
            os.close(fd)
    assert [type(f) for f in got] == [ModuleStatus] * 3
    statuses = [f for f in got if isinstance(f, ModuleStatus)]
    assert [s.uptime_s for s in statuses] == [0, 10, 20]
    assert all(s.firmware == 0x0102 and -99 <= s.noise_floor_dbm <= -95 for s in statuses)
    assert radio.stats.status_frames == 3


def test_closed_module_refuses_to_send() -> None:
    with RadioModule() as radio:
        port = radio.port
    assert radio.closed
    assert radio.pump() == 0
    with pytest.raises(RadioClosedError, match=port):
        radio.hear(beacons(1)[0])


def test_rssi_falls_with_distance_and_stops_at_the_range() -> None:
    loss = PathLoss()
    rng = random.Random(1)
    assert loss.mean_rssi_dbm(1.0) == -40.0
    assert loss.mean_rssi_dbm(0.1) == -40.0
    assert -95 < loss.mean_rssi_dbm(100.0) < -93
    means = [loss.mean_rssi_dbm(d) for d in (1, 5, 10, 30, 60, 100)]
    assert means == sorted(means, reverse=True)
    assert loss.rssi_dbm(100.1, rng) is None
    samples = [loss.rssi_dbm(50.0, rng) for _ in range(500)]
    assert all(isinstance(s, int) and -128 <= s <= 127 for s in samples)
    mean = sum(s for s in samples if s is not None) / len(samples)
    assert abs(mean - loss.mean_rssi_dbm(50.0)) < 1.0
    assert PathLoss(ref_rssi_dbm=200.0).rssi_dbm(1.0, rng) == 127
