"""firmware_sim.programmer: a key goes into a simulated v2 chip over a pty, only its check value comes back, and the
chip then beacons with that key."""

from __future__ import annotations

import random
import secrets
import time
from collections.abc import Iterator

import pytest
import serial
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_sim.programmer import ChipOnCable
from protocol.beacon_v2 import ChipKey, key_check_value, window_of
from protocol.programming_cable import (
    CABLE_BAUD_RATE,
    CableDecoder,
    CableFrame,
    ChipRefusedError,
    Command,
    ErrorCode,
    Programmer,
    encode_cable,
)

EPOCH = 1_796_040_000


@pytest.fixture
def chip() -> Iterator[ChipOnCable]:
    with ChipOnCable(0x00C0FFEE) as on_cable:
        yield on_cable


def test_programmer_writes_a_key_the_tag_then_beacons_with(chip: ChipOnCable) -> None:
    key = secrets.token_bytes(16)
    with Programmer(chip.port) as programmer:
        assert programmer.info().keyed is False
        kcv = programmer.write_key(key, EPOCH)
        assert kcv == key_check_value(key) == programmer.key_check()
        info = programmer.info()
    assert (info.serial_number, info.keyed, info.firmware) == (0x00C0FFEE, True, 0x0200)
    tag = chip.tag(random.Random(1))
    beacons = tag.poll(30.0)
    assert beacons
    for beacon in beacons:
        assert beacon.window == window_of(EPOCH)
        assert ChipKey(key).open(beacon.window, beacon.air) == beacon.counter


def test_the_key_is_written_once_and_never_read_back(chip: ChipOnCable) -> None:
    key = secrets.token_bytes(16)
    # Everything the chip says goes through the pty; a second reader of its replies sees every byte.
    with Programmer(chip.port) as programmer:
        programmer.write_key(key, EPOCH)
        with pytest.raises(ChipRefusedError) as refused:
            programmer.write_key(secrets.token_bytes(16), EPOCH)
        assert refused.value.code == ErrorCode.ALREADY_KEYED
        for command in range(0x04, 0x80):  # every command the cable does not define, a "read key" among them
            with pytest.raises(ChipRefusedError) as unknown:
                programmer.request(command)
            assert unknown.value.code == ErrorCode.UNKNOWN_COMMAND
        assert programmer.key_check() == key_check_value(key)
    assert chip.refused.count(ErrorCode.UNKNOWN_COMMAND) == 0x7C
    assert key.hex() not in repr(chip) and key.hex() not in repr(chip.tag(random.Random(1)))


def test_replies_carry_no_key_bytes(chip: ChipOnCable) -> None:
    key = secrets.token_bytes(16)
    with serial.serial_for_url(chip.port, baudrate=CABLE_BAUD_RATE, timeout=0.05) as port:
        port.write(encode_cable(CableFrame(Command.WRITE_KEY, key + EPOCH.to_bytes(4, "big"))))
        port.write(encode_cable(CableFrame(Command.KEY_CHECK, b"")))
        port.write(encode_cable(CableFrame(Command.INFO, b"")))
        heard = b""
        deadline = time.monotonic() + 3.0
        while heard.count(b"\x5a\xa5") < 3 and time.monotonic() < deadline:
            heard += port.read(256)
    frames = CableDecoder().feed(heard)
    assert [f.command for f in frames] == [0x82, 0x83, 0x81]
    assert all(key[i : i + 3] not in heard for i in range(14))


def test_a_garbled_request_is_answered_with_bad_frame_and_the_next_one_works(chip: ChipOnCable) -> None:
    with serial.serial_for_url(chip.port, baudrate=CABLE_BAUD_RATE, timeout=0.05) as port:
        raw = bytearray(encode_cable(CableFrame(Command.INFO, b"")))
        raw[-1] ^= 0x01
        port.write(bytes(raw))
        decoder = CableDecoder()
        got: list[CableFrame] = []
        deadline = time.monotonic() + 3.0
        while not got and time.monotonic() < deadline:
            got += decoder.feed(port.read(64))
    assert got == [CableFrame(Command.ERROR, bytes([ErrorCode.BAD_FRAME]))]
    with Programmer(chip.port) as programmer:
        assert programmer.info().serial_number == 0x00C0FFEE


def test_key_check_of_a_blank_chip_is_refused(chip: ChipOnCable) -> None:
    with Programmer(chip.port) as programmer, pytest.raises(ChipRefusedError) as refused:
        programmer.key_check()
    assert refused.value.code == ErrorCode.NO_KEY


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=8))
def test_cable_decoder_never_raises_on_random_bytes(chunks: list[bytes]) -> None:
    decoder = CableDecoder()
    for chunk in chunks:
        decoder.feed(chunk)
    assert decoder.pending <= 2 + 2 + 32 + 2


def test_the_example_of_the_cable_document_byte_for_byte() -> None:
    key = bytes(range(16))
    assert encode_cable(CableFrame(Command.INFO, b"")) == bytes.fromhex("5aa5 01 00 2e3e")
    assert encode_cable(CableFrame(0x81, bytes.fromhex("00c0ffee 00 0200"))) == bytes.fromhex(
        "5aa5 81 07 00c0ffee 00 0200 2fb6"
    )
    assert encode_cable(CableFrame(Command.WRITE_KEY, key + (1_795_953_600).to_bytes(4, "big"))) == bytes.fromhex(
        "5aa5 02 14 000102030405060708090a0b0c0d0e0f 6b0c13c0 94c9"
    )
    assert key_check_value(key) == bytes.fromhex("5dea26")
    assert encode_cable(CableFrame(0x82, key_check_value(key))) == bytes.fromhex("5aa5 82 03 5dea26 4bc1")
    assert encode_cable(CableFrame(Command.ERROR, bytes([ErrorCode.ALREADY_KEYED]))) == bytes.fromhex(
        "5aa5 ff 01 04 704a"
    )
