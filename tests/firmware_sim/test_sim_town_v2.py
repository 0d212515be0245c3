"""v2 chips in the simulated town: keyed at the counter through the real cable code, carried onto their bikes, heard
by the stations as v2 frames only (never their tag ids), kept in a file only their owner reads."""

from __future__ import annotations

import random
import stat
import time
from pathlib import Path

import pytest
import serial

from backend.chip_keys import program_chip
from firmware_sim.programmer import ChipOnCable
from firmware_sim.runner import SimRunner, fit_v2_chips
from firmware_sim.tag_v2 import ChipMemory, TagV2Error, read_chips, write_chips
from firmware_sim.town import Town, TownError, v2_bikes
from protocol.beacon_v2 import WINDOW_S, ChipKey, heard, window_of
from protocol.frames import BAUD_RATE, Beacon, BeaconV2, FrameDecoder

KEY = bytes(range(16))


def test_share_of_v2_bikes_is_the_same_pick_for_the_same_seed() -> None:
    town = Town.generate(3, stations=4, bikes=40)
    picked = v2_bikes(town, 0.1)
    assert len(picked) == 4
    assert [b.bike_no for b in picked] == [b.bike_no for b in v2_bikes(Town.generate(3, stations=4, bikes=40), 0.1)]
    assert v2_bikes(town, 0.0) == []
    for share in (-0.1, 1.5):
        with pytest.raises(TownError, match="between 0 and 1"):
            v2_bikes(town, share)


def test_a_chip_keyed_at_the_counter_beacons_on_its_bike_what_the_backend_resolves() -> None:
    town = Town.generate(5, stations=6, bikes=30, pause_s=(0.0, 1.0), riding_fraction=1.0)
    bike = v2_bikes(town, 0.05)[0]
    with ChipOnCable(bike.tag_id) as chip:
        programmed = program_chip(chip.port, bike.tag_id)  # the backend's side of the cable, as at the counter
        memory = chip.memory()
    assert memory.key == programmed.key  # the key the backend stores is the one the chip beacons with
    assert programmed.key.hex() not in repr(memory)
    fit_v2_chips(town, [memory], random.Random(1))
    assert bike.chip_kind == "v2" and bike.tag_id == memory.serial

    key = ChipKey(programmed.key)
    now = time.time()
    windows = {window_of(now) + d for d in (-1, 0, 1)}  # its clock is at most seconds off
    v2_frames: list[BeaconV2] = []
    v1_ids: set[int] = set()
    for _ in range(120):
        for frames in town.step(5.0).values():
            v2_frames += [f for f in frames if isinstance(f, BeaconV2)]
            v1_ids |= {f.tag_id for f in frames if isinstance(f, Beacon)}
    assert v2_frames, "no station heard the v2 bike in ten simulated minutes"
    assert bike.tag_id not in v1_ids
    assert len(v1_ids) > 10  # the v1 bikes beacon as before
    for frame in v2_frames:
        window = next(w for w in windows if key.eid(w) == frame.eid)
        key.open(window, heard(frame))  # MacError if the beacon were not this chip's


def test_vendor_stations_hear_the_v1_beacons_only() -> None:
    town = Town.generate(5, stations=3, bikes=60, pause_s=(0.0, 1.0), riding_fraction=1.0)
    fit_v2_chips(town, [ChipMemory(b.tag_id, KEY, 0.0) for b in v2_bikes(town, 0.5)], random.Random(2))
    heard_by: dict[str, list[object]] = {s.station_id: [] for s in town.stations}

    class Listener:
        def __init__(self, station_id: str) -> None:
            self.station_id = station_id

        def hear(self, beacon: Beacon) -> bool:
            heard_by[self.station_id].append(beacon)
            return True

    listeners = {sid: Listener(sid) for sid in heard_by}
    with SimRunner(town, speedup=60.0, listeners=listeners) as runner:
        deadline = time.monotonic() + 20
        while runner.beacons_heard < 200 and time.monotonic() < deadline:
            time.sleep(0.05)
    got = [b for beacons in heard_by.values() for b in beacons]
    assert len(got) >= 200
    assert all(isinstance(b, Beacon) for b in got)
    assert {b.tag_id for b in got if isinstance(b, Beacon)}.isdisjoint(b.tag_id for b in v2_bikes(town, 0.5))


def test_the_thief_takes_a_bike_of_the_kind_asked_for() -> None:
    town = Town.generate(5, stations=4, bikes=30)
    fit_v2_chips(town, [ChipMemory(b.tag_id, KEY, 0.0) for b in v2_bikes(town, 0.3)], random.Random(3))
    assert town.bike_to_steal("v1").chip_kind == "v1"
    assert town.bike_to_steal("v2").chip_kind == "v2"
    town.theft(town.bike_to_steal("v2"), tamper=True)  # a v2 chip latches tamper as a v1 chip does


def test_fitted_chips_are_kept_in_a_file_only_their_owner_reads(tmp_path: Path) -> None:
    chips = [ChipMemory(0x00C0FFEE, KEY, WINDOW_S * 2_000_000.0), ChipMemory(7, bytes(16), 1.5)]
    path = tmp_path / "v2-chips.json"
    write_chips(path, chips)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_chips(path) == chips
    assert KEY.hex() not in repr(chips)
    path.write_text('[{"serial": 1}]', encoding="utf-8")
    with pytest.raises(TagV2Error, match="not a list of fitted v2 chips"):
        read_chips(path)
    with pytest.raises(TownError, match="no bike in this town carries chip 00000007"):
        Town.generate(1, stations=2, bikes=3).fit_v2(chips[1], epoch_unix_s=time.time())


def test_a_clone_attacker_follows_a_v2_bike_and_plays_its_beacon_back_at_another_station() -> None:
    """What the demo's --clone-after does: the recorded beacon, byte for byte, several times, then one forged beacon of
    its eid, all on another station's pty; nothing keyed by the attacker verifies but the replays."""
    town = Town.generate(5, stations=4, bikes=12, pause_s=(0.0, 1.0))
    memories = [ChipMemory(b.tag_id, bytes([i]) * 16, time.time()) for i, b in enumerate(v2_bikes(town, 0.5))]
    fit_v2_chips(town, memories, random.Random(1))
    target = town.parked_near_stations("v2")[0]
    with SimRunner(town, step_s=0.02) as runner:
        shadow = runner.shadow(target.bike_no, random.Random(2))
        with pytest.raises(TownError, match="v1 chip"):
            runner.shadow(next(b for b in town.bikes if b.chip_kind == "v1").bike_no, random.Random(2))
        deadline = time.monotonic() + 30
        while shadow.last is None:
            assert time.monotonic() < deadline, "the attacker recorded nothing of a bike parked by a station"
            time.sleep(0.05)
        strike = runner.clone_strike()
        assert strike is not None and strike.station_id != strike.captured_at
        with serial.serial_for_url(runner.ports[strike.station_id], baudrate=BAUD_RATE, timeout=0.05) as port:
            decoder = FrameDecoder()
            frames: list[BeaconV2] = []
            until = time.monotonic() + 10
            while time.monotonic() < until and len(frames) < 4:
                frames += [f for f in decoder.feed(port.read(4096)) if isinstance(f, BeaconV2)]
    key = ChipKey(next(m.key for m in memories if m.serial == target.tag_id))
    captured = shadow.last[1]
    replays = [f for f in frames if heard(f) == captured]
    assert len(replays) == 3, "the recorded beacon, byte for byte, three times"
    forged = [heard(f) for f in frames if heard(f) != captured]
    assert len(forged) == 1 and forged[0].eid == captured.eid
    window = next(
        w for w in range(window_of(time.time()) - 2, window_of(time.time()) + 3) if key.eid(w) == captured.eid
    )
    assert key.verify(window, captured) and not key.verify(window, forged[0])
