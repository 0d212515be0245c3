"""hardware/golden_vectors.json: literal frames must decode to their meaning and encode back to their bytes."""

from __future__ import annotations

import binascii
import json
from pathlib import Path
from typing import Any

import pytest

from protocol.frames import Beacon, Frame, FrameDecoder, ModuleStatus, TagFlags, crc16, encode

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).resolve().parents[2] / "hardware" / "golden_vectors.json").read_text(encoding="utf-8")
)


def frame_of(meaning: dict[str, Any]) -> Frame:
    """The Frame a vector's meaning describes."""
    if meaning["type"] == "beacon":
        flags = TagFlags(0)
        for name in meaning["flags"]:
            flags |= TagFlags[name]
        return Beacon(int(meaning["tag_id"], 16), meaning["counter"], flags, meaning["rssi_dbm"], meaning["antenna"])
    assert meaning["type"] == "module_status"
    return ModuleStatus(meaning["noise_floor_dbm"], meaning["firmware"], meaning["uptime_s"])


def named(section: str) -> list[Any]:
    return [pytest.param(v, id=v["name"]) for v in VECTORS[section]]


@pytest.mark.parametrize("vector", named("valid"))
def test_valid_vector_decodes_to_exactly_its_meaning(vector: dict[str, Any]) -> None:
    decoder = FrameDecoder()
    frames = decoder.feed(bytes.fromhex(vector["hex"]))
    assert frames == [frame_of(vector["frame"])]
    assert type(frames[0]) is type(frame_of(vector["frame"]))
    assert not decoder.rejected
    assert decoder.pending == 0


@pytest.mark.parametrize("vector", named("valid"))
def test_valid_vector_encodes_back_to_its_bytes(vector: dict[str, Any]) -> None:
    # Reserved flag bits are dropped on decode, so such a vector re-encodes to its canonical form.
    expected = bytes.fromhex(vector.get("canonical_hex", vector["hex"]))
    assert encode(frame_of(vector["frame"])) == expected


@pytest.mark.parametrize("vector", named("valid"))
def test_valid_vector_crc_agrees_with_an_independent_crc(vector: dict[str, Any]) -> None:
    raw = bytes.fromhex(vector["hex"])
    assert crc16(raw[2:-2]) == binascii.crc_hqx(raw[2:-2], 0xFFFF) == int.from_bytes(raw[-2:], "big")


@pytest.mark.parametrize("vector", named("valid"))
def test_valid_vector_decodes_when_fed_byte_by_byte(vector: dict[str, Any]) -> None:
    decoder = FrameDecoder()
    frames = [f for b in bytes.fromhex(vector["hex"]) for f in decoder.feed(bytes([b]))]
    assert frames == [frame_of(vector["frame"])]


@pytest.mark.parametrize("vector", named("invalid"))
def test_invalid_vector_is_rejected_for_its_reason(vector: dict[str, Any]) -> None:
    raw = bytes.fromhex(vector["hex"])
    decoder = FrameDecoder()
    assert decoder.feed(raw) == []
    assert dict(decoder.rejected) == {vector["reason"]: 1}
    error = decoder.recent_errors[-1]
    assert error.reason == vector["reason"]
    assert error.raw and error.raw in raw
    assert error.raw.hex(" ") in str(error)


@pytest.mark.parametrize("vector", named("invalid"))
def test_invalid_vector_is_rejected_the_same_fed_byte_by_byte(vector: dict[str, Any]) -> None:
    decoder = FrameDecoder()
    frames = [f for b in bytes.fromhex(vector["hex"]) for f in decoder.feed(bytes([b]))]
    assert frames == []
    assert vector["reason"] in decoder.rejected


@pytest.mark.parametrize("vector", named("streams"))
def test_stream_vector_yields_its_frames_and_counts_its_rejections(vector: dict[str, Any]) -> None:
    decoder = FrameDecoder()
    assert decoder.feed(bytes.fromhex(vector["hex"])) == [frame_of(m) for m in vector["frames"]]
    assert dict(decoder.rejected) == vector["rejected"]


def test_golden_vectors_cover_every_rejection_reason() -> None:
    reasons = {v["reason"] for v in VECTORS["invalid"]}
    assert reasons == {"crc", "bad_length", "unknown_type", "bad_payload", "garbage"}


def test_golden_vectors_cover_the_extremes() -> None:
    beacons = [v["frame"] for v in VECTORS["valid"] if v["frame"]["type"] == "beacon"]
    assert {"00000000", "FFFFFFFF"} <= {b["tag_id"] for b in beacons}
    assert {-128, -30, 127} <= {b["rssi_dbm"] for b in beacons}
    assert {0, 65535} <= {b["counter"] for b in beacons}
    assert {frozenset(b["flags"]) for b in beacons} >= {
        frozenset(),
        frozenset({"MOTION"}),
        frozenset({"LOW_BATTERY", "TAMPER"}),
        frozenset({"LOW_BATTERY", "TAMPER", "MOTION"}),
    }
