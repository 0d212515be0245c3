"""v2 beacons: the golden vectors, unlinkability across windows, the MAC, the codec and the reader frame (TYPE 0x11)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.cmac import CMAC
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.beacon_v2 import (
    AIR_BYTES,
    COUNTER_MAX,
    WINDOW_S,
    AirBeacon,
    BeaconPayloadError,
    ChipKey,
    ChipKeyError,
    MacError,
    eid_table,
    heard,
    key_check_value,
    window_of,
)
from protocol.frames import (
    BEACON_V2_FORMAT,
    Beacon,
    BeaconV2,
    FrameDecoder,
    FrameType,
    ModuleStatus,
    TagFlags,
    crc16,
    encode,
)

PROPERTY = settings(max_examples=200, deadline=None)
VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).resolve().parents[2] / "hardware" / "tag_v2_golden_vectors.json").read_text(encoding="utf-8")
)

keys = st.binary(min_size=16, max_size=16)
windows = st.integers(0, 2**40)
counters = st.integers(0, COUNTER_MAX)
tag_flags = st.integers(0, 7).map(TagFlags)


def named(section: str) -> list[Any]:
    return [pytest.param(v, id=v["name"]) for v in VECTORS[section]]


def flags_of(names: list[str]) -> TagFlags:
    flags = TagFlags(0)
    for name in names:
        flags |= TagFlags[name]
    return flags


def spec_derivation(key: bytes, window: int, counter: int, flags: int) -> dict[str, str]:
    """The v2 beacon computed straight from the words of hardware/tag-beacon.md, with no code of protocol.beacon_v2."""
    aes = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    w = window.to_bytes(8, "big")
    eid = aes.update(b"BGv2-eid" + w)[:8]
    pad = aes.update(b"BGv2-ctr" + w)[:4]
    subkey = aes.update(b"BGv2-mac-subkey\x00")
    kcv = aes.update(b"BGv2-key-check\x00\x00")[:3]
    sealed = (counter ^ int.from_bytes(pad, "big")).to_bytes(4, "big")
    body = b"\x02" + eid + sealed + bytes([flags])
    cmac = CMAC(algorithms.AES(subkey))
    cmac.update(b"BGv2-mac" + w + body)
    mac = cmac.finalize()[:4]
    return {
        "eid": eid.hex(),
        "counter_pad": pad.hex(),
        "mac_subkey": subkey.hex(),
        "key_check_value": kcv.hex(),
        "sealed_counter": sealed.hex(),
        "mac": mac.hex(),
        "payload": (body + mac).hex(),
    }


@pytest.mark.parametrize("vector", named("valid"))
def test_golden_vector_matches_a_derivation_written_from_the_spec(vector: dict[str, Any]) -> None:
    derived = spec_derivation(
        bytes.fromhex(vector["key"]), vector["window"], vector["counter"], int(flags_of(vector["flags"]))
    )
    for field, value in derived.items():
        assert value == vector[field].replace(" ", ""), field


@pytest.mark.parametrize("vector", named("valid"))
def test_golden_vector_seals_encodes_decodes_and_opens(vector: dict[str, Any]) -> None:
    assert window_of(datetime.fromisoformat(vector["time"]).timestamp()) == vector["window"]
    chip = ChipKey(bytes.fromhex(vector["key"]))
    assert chip.check_value.hex() == vector["key_check_value"] == key_check_value(bytes.fromhex(vector["key"])).hex()
    beacon = chip.seal(vector["window"], vector["counter"], flags_of(vector["flags"]))
    assert beacon.to_bytes() == bytes.fromhex(vector["payload"])
    assert AirBeacon.from_bytes(bytes.fromhex(vector["payload"])) == beacon
    frame = beacon.frame(vector["rssi_dbm"], vector["antenna"])
    assert encode(frame) == bytes.fromhex(vector["frame"])
    decoder = FrameDecoder()
    assert decoder.feed(bytes.fromhex(vector["frame"])) == [frame]
    assert not decoder.rejected
    assert chip.open(vector["window"], heard(frame)) == vector["counter"]


@pytest.mark.parametrize("vector", named("mac_fails"))
def test_golden_vector_that_must_fail_the_mac_fails_it(vector: dict[str, Any]) -> None:
    chip = ChipKey(bytes.fromhex(vector["key"]))
    beacon = AirBeacon.from_bytes(bytes.fromhex(vector["payload"]))
    assert not chip.verify(vector["window"], beacon)
    with pytest.raises(MacError):
        chip.open(vector["window"], beacon)


@pytest.mark.parametrize("vector", named("invalid_frames"))
def test_golden_invalid_v2_frame_is_rejected_for_its_reason(vector: dict[str, Any]) -> None:
    decoder = FrameDecoder()
    assert decoder.feed(bytes.fromhex(vector["hex"])) == []
    assert decoder.rejected == {vector["reason"]: 1}
    assert decoder.pending == 0


def test_one_chips_beacons_in_two_windows_share_no_field_an_outsider_can_link() -> None:
    # Beacons either side of a window change, with consecutive counters: what a follower would try to link.
    vector = VECTORS["valid"][0]
    chip = ChipKey(bytes.fromhex(vector["key"]))
    window = vector["window"]
    before = chip.seal(window, 1000, TagFlags.MOTION)
    after = chip.seal(window + 1, 1001, TagFlags.MOTION)
    assert before.eid != after.eid
    assert before.mac != after.mac
    # The counter travels sealed under a pad of its window: neither equal, nor one apart, nor the plain counter.
    sealed_before = int.from_bytes(before.sealed_counter, "big")
    sealed_after = int.from_bytes(after.sealed_counter, "big")
    assert sealed_after not in (sealed_before, sealed_before + 1)
    assert 1000 not in (sealed_before, sealed_after) and 1001 not in (sealed_before, sealed_after)
    # Only the format version and the (documented, shared by many chips) flags byte are equal.
    same = [i for i, (a, b) in enumerate(zip(before.to_bytes(), after.to_bytes(), strict=True)) if a == b]
    assert set(same) <= {0, 13}
    assert chip.open(window, before) == 1000 and chip.open(window + 1, after) == 1001


@PROPERTY
@given(keys, windows, counters)
def test_sealed_counters_of_two_windows_do_not_differ_by_the_step(key: bytes, window: int, counter: int) -> None:
    chip = ChipKey(key)
    a = int.from_bytes(chip.seal(window, counter % COUNTER_MAX, TagFlags(0)).sealed_counter, "big")
    b = int.from_bytes(chip.seal(window + 1, counter % COUNTER_MAX + 1, TagFlags(0)).sealed_counter, "big")
    # A pad collision (2**-32) would be a failure worth seeing; hypothesis never draws one by chance.
    assert (b - a) % 2**32 != 1
    assert chip.eid(window) != chip.eid(window + 1)


@PROPERTY
@given(keys, windows, counters, tag_flags, st.integers(-128, 127), st.integers(0, 255))
def test_any_beacon_round_trips_through_air_frame_and_open(
    key: bytes, window: int, counter: int, flags: TagFlags, rssi: int, antenna: int
) -> None:
    chip = ChipKey(key)
    beacon = chip.seal(window, counter, flags)
    assert len(beacon.to_bytes()) == AIR_BYTES
    assert beacon.eid == chip.eid(window) == chip.eids([window])[0]
    frames = FrameDecoder().feed(encode(beacon.frame(rssi, antenna)))
    assert len(frames) == 1 and isinstance(frames[0], BeaconV2)
    assert heard(frames[0]) == beacon
    assert chip.open(window, heard(frames[0])) == counter


@PROPERTY
@given(keys, windows, counters, tag_flags, st.data())
def test_a_flipped_bit_anywhere_fails_the_mac_or_the_codec(
    key: bytes, window: int, counter: int, flags: TagFlags, data: st.DataObject
) -> None:
    chip = ChipKey(key)
    raw = bytearray(chip.seal(window, counter, flags).to_bytes())
    bit = data.draw(st.integers(0, len(raw) * 8 - 1))
    raw[bit // 8] ^= 1 << (bit % 8)
    try:
        beacon = AirBeacon.from_bytes(bytes(raw))
    except BeaconPayloadError:
        assert bit // 8 == 0  # only the version byte is checked before the MAC
        return
    with pytest.raises(MacError):
        chip.open(window, beacon)


@PROPERTY
@given(st.binary(max_size=40))
def test_random_bytes_raise_nothing_but_the_codecs_own_error(raw: bytes) -> None:
    try:
        beacon = AirBeacon.from_bytes(raw)
    except BeaconPayloadError as exc:
        assert exc.raw == raw
        return
    assert beacon.to_bytes() == raw


@PROPERTY
@given(st.binary(max_size=30), st.lists(st.binary(max_size=40), max_size=6))
def test_random_v2_typed_frames_never_raise_in_the_stream_decoder(payload: bytes, noise: list[bytes]) -> None:
    head = bytes([len(payload) + 1, FrameType.BEACON_V2]) + payload
    stream = b"".join(noise) + b"\xaa\x55" + head + crc16(head).to_bytes(2, "big")
    decoder = FrameDecoder()
    for frame in decoder.feed(stream):
        assert isinstance(frame, BeaconV2 | Beacon | ModuleStatus)
    assert decoder.pending <= 2 + 1 + 64 + 2


def test_v1_and_v2_frames_interleave_in_one_stream_with_garbage_between() -> None:
    chip = ChipKey(bytes(range(16)))
    v2 = chip.seal(window_of(1_796_040_000), 7, TagFlags.TAMPER).frame(-70, 1)
    v1 = Beacon(0x12345678, 1, TagFlags(0), -60, 0)
    status = ModuleStatus(-97, 0x0102, 3600)
    stream = encode(v1) + b"\x00\xaa\x13" + encode(v2) + encode(status) + encode(v2)[:-1] + b"\x00" + encode(v1)
    decoder = FrameDecoder()
    out = [f for b in stream for f in decoder.feed(bytes([b]))]
    assert out == [v1, v2, status, v1]
    # Fed a byte at a time, the garbage is reported in as many runs as the held-back AA splits it into.
    assert decoder.rejected["crc"] == 1 and set(decoder.rejected) == {"garbage", "crc"}


def test_the_reader_frame_carries_the_air_payload_as_it_came() -> None:
    assert BEACON_V2_FORMAT.startswith(">B8s4sB4s") and AIR_BYTES == 18
    beacon = ChipKey(bytes(range(16))).seal(5, 9, TagFlags.MOTION)
    assert encode(beacon.frame(-60, 0))[4:-4] == beacon.to_bytes()


def test_v1_type_03_stays_unknown_to_this_decoder() -> None:
    # hardware/golden_vectors.json pins 0x03 as an unknown type; v2 beacons took 0x11 so that stays true.
    assert FrameDecoder().feed(bytes.fromhex("aa55 01 03 1e5d")) == []
    assert FrameType.BEACON_V2 == 0x11


def test_frame_with_a_wrong_sized_field_is_refused_on_encode() -> None:
    with pytest.raises(ValueError, match="expected"):
        encode(BeaconV2(b"\x00" * 7, b"\x00" * 4, TagFlags(0), b"\x00" * 4, -60, 0))


def test_a_key_of_the_wrong_size_is_refused_and_a_key_never_shows_in_its_repr() -> None:
    with pytest.raises(ChipKeyError):
        ChipKey(b"\x00" * 15)
    key = bytes(range(16))
    assert key.hex() not in repr(ChipKey(key))


def test_eid_table_resolves_every_chip_in_every_window_and_keeps_collisions() -> None:
    chips = [(1000 + i, bytes([i]) * 16) for i in range(50)]
    now = window_of(1_796_040_000)
    table = eid_table(chips, range(now - 1, now + 2))
    assert len(table) == 150 and table.collisions == 0
    for chip_id, key in chips:
        for window in (now - 1, now, now + 1):
            assert table.lookup(ChipKey(key).eid(window)) == [(chip_id, window)]
    assert table.lookup(ChipKey(b"\xff" * 16).eid(now)) == []
    assert table.nbytes == 50 * 8 + 150 * 8 + 150 * 4


def test_eid_table_keeps_every_chip_of_a_shared_eid() -> None:
    # Two chips on one eid (forced here with one key twice; 1 in ~10**7 windows for a million chips) are both
    # candidates, and so is a third chip's entry beside them.
    now = window_of(1_796_040_000)
    key = bytes(range(16))
    table = eid_table([(7, key), (8, bytes(16)), (9, key)], range(now, now + 2))
    assert table.lookup(ChipKey(key).eid(now)) == [(7, now), (9, now)]
    assert table.lookup(ChipKey(key).eid(now + 1)) == [(7, now + 1), (9, now + 1)]
    assert table.lookup(ChipKey(bytes(16)).eid(now + 1)) == [(8, now + 1)]
    assert table.collisions == 2 and len(table) == 6


def test_window_is_fifteen_minutes_from_the_epoch() -> None:
    assert WINDOW_S == 900
    assert window_of(0) == 0 and window_of(899.999) == 0 and window_of(900) == 1


v2_frames = st.builds(
    BeaconV2,
    eid=st.binary(min_size=8, max_size=8),
    sealed_counter=st.binary(min_size=4, max_size=4),
    flags=st.integers(0, 255).map(TagFlags),
    mac=st.binary(min_size=4, max_size=4),
    rssi_dbm=st.integers(-128, 127),
    antenna=st.integers(0, 255),
)
v1_frames = st.builds(
    Beacon,
    tag_id=st.integers(0, 0xFFFFFFFF),
    counter=st.integers(0, 0xFFFF),
    flags=st.integers(0, 7).map(TagFlags),
    rssi_dbm=st.integers(-128, 127),
    antenna=st.integers(0, 255),
)


@PROPERTY
@given(v2_frames, st.data(), st.lists(v2_frames, min_size=3, max_size=3))
def test_a_v2_frame_with_a_flipped_bit_is_rejected_never_a_different_frame(
    frame: BeaconV2, data: st.DataObject, after: list[BeaconV2]
) -> None:
    raw = bytearray(encode(frame))
    bit = data.draw(st.integers(0, len(raw) * 8 - 1))
    raw[bit // 8] ^= 1 << (bit % 8)
    decoder = FrameDecoder()
    assert decoder.feed(bytes(raw)) == []
    # Three following frames (78 bytes) outrun any length a flipped LEN byte can claim (at most 69 bytes of frame),
    # so the decoder must resynchronise and deliver exactly them.
    assert decoder.feed(b"".join(encode(f) for f in after)) == after
    assert sum(decoder.rejected.values()) >= 1


@PROPERTY
@given(st.lists(st.one_of(v1_frames, v2_frames), min_size=1, max_size=8), st.lists(st.integers(0, 400), max_size=10))
def test_a_mixed_v1_v2_stream_split_anywhere_decodes_to_what_was_sent(
    sent: list[Beacon | BeaconV2], cuts: list[int]
) -> None:
    stream = b"".join(encode(f) for f in sent)
    decoder = FrameDecoder()
    out = []
    start = 0
    for cut in [*sorted(set(cuts)), len(stream)]:
        out += decoder.feed(stream[start:cut])
        start = max(start, cut)
    assert out == sent
    assert not decoder.rejected and decoder.pending == 0
