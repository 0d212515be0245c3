"""MR7901 vendor station codec: golden vectors, round trip, splits, noise, flipped bits."""

from __future__ import annotations

import binascii
import json
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.frames import FrameError
from protocol.mr7901 import (
    MAX_DATA,
    MAX_LENGTH,
    Heartbeat,
    HeartbeatReply,
    Login,
    LoginReply,
    Message,
    Mr7901Decoder,
    Register,
    RegisterReply,
    TagRead,
    TagUpload,
    TagUploadReply,
    encode,
    heartbeat_reply,
    login_reply,
    register_reply,
    tag_upload_reply,
)

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).resolve().parents[2] / "hardware" / "mr7901_golden_vectors.json").read_text(encoding="utf-8")
)
PROPERTY = settings(max_examples=200, deadline=None)
LONGEST_FRAME = 2 + MAX_LENGTH + 2


def read_of(meaning: dict[str, Any]) -> TagRead:
    """The TagRead a vector's read describes."""
    read = TagRead(
        meaning["antenna"],
        meaning["tag_type"],
        int(meaning["tag_id"], 16),
        meaning["check"],
        meaning["carried_info"],
        meaning["status"],
        meaning["rssi_dbm"],
        datetime.fromisoformat(meaning["read_at_local"]),
    )
    assert read.alarm is meaning["alarm"]
    return read


def message_of(meaning: dict[str, Any]) -> Message:
    """The Message a vector's meaning describes."""
    head = (meaning["device_id"], meaning["sequence"])
    tail = (meaning["version"], meaning["security"])
    kind = meaning["type"]
    opaque: dict[str, type[Register | Login | Heartbeat | HeartbeatReply]] = {
        "register": Register,
        "login": Login,
        "heartbeat": Heartbeat,
        "heartbeat_reply": HeartbeatReply,
    }
    if kind in opaque:
        return opaque[kind](*head, bytes.fromhex(meaning["data"]), *tail)
    if kind == "register_reply":
        when = datetime.fromisoformat(meaning["server_time"])
        return RegisterReply(*head, meaning["result"], when, meaning["server_ip"], meaning["port"], *tail)
    if kind == "login_reply":
        return LoginReply(*head, meaning["result"], *tail)
    if kind == "tag_upload":
        return TagUpload(*head, tuple(read_of(r) for r in meaning["reads"]), *tail)
    assert kind == "tag_upload_reply"
    return TagUploadReply(*head, *tail)


def named(section: str) -> list[Any]:
    return [pytest.param(v, id=v["name"]) for v in VECTORS[section]]


@pytest.mark.parametrize("vector", named("valid"))
def test_valid_vector_decodes_to_exactly_its_meaning(vector: dict[str, Any]) -> None:
    decoder = Mr7901Decoder()
    assert decoder.feed(bytes.fromhex(vector["hex"])) == [message_of(vector["message"])]
    assert not decoder.rejected
    assert decoder.pending == 0
    assert {f"{t:04x}": n for t, n in decoder.unknown_tlvs.items()} == vector.get("unknown_tlvs", {})


@pytest.mark.parametrize("vector", named("valid"))
def test_valid_vector_encodes_back_to_its_bytes(vector: dict[str, Any]) -> None:
    # Unknown TLVs are dropped on decode, so such a vector re-encodes to its canonical form.
    expected = bytes.fromhex(vector.get("canonical_hex", vector["hex"]))
    assert encode(message_of(vector["message"])) == expected


@pytest.mark.parametrize("vector", named("valid"))
def test_valid_vector_length_and_crc_agree_with_the_spec(vector: dict[str, Any]) -> None:
    raw = bytes.fromhex(vector["hex"])
    assert int.from_bytes(raw[2:4], "big") == len(raw) - 4
    assert binascii.crc_hqx(raw[2:-2], 0xFFFF) == int.from_bytes(raw[-2:], "big")


@pytest.mark.parametrize("vector", named("valid"))
def test_valid_vector_decodes_when_fed_byte_by_byte(vector: dict[str, Any]) -> None:
    decoder = Mr7901Decoder()
    messages = [m for b in bytes.fromhex(vector["hex"]) for m in decoder.feed(bytes([b]))]
    assert messages == [message_of(vector["message"])]


@pytest.mark.parametrize("vector", named("invalid"))
def test_invalid_vector_is_rejected_for_its_reason(vector: dict[str, Any]) -> None:
    raw = bytes.fromhex(vector["hex"])
    decoder = Mr7901Decoder()
    assert decoder.feed(raw) == []
    assert dict(decoder.rejected) == {vector["reason"]: 1}
    error = decoder.recent_errors[-1]
    assert isinstance(error, FrameError)
    assert error.reason == vector["reason"]
    assert error.raw and error.raw in raw
    assert error.raw.hex(" ") in str(error)


@pytest.mark.parametrize("vector", named("invalid"))
def test_invalid_vector_is_rejected_the_same_fed_byte_by_byte(vector: dict[str, Any]) -> None:
    decoder = Mr7901Decoder()
    assert [m for b in bytes.fromhex(vector["hex"]) for m in decoder.feed(bytes([b]))] == []
    assert vector["reason"] in decoder.rejected


@pytest.mark.parametrize("vector", named("streams"))
def test_stream_vector_yields_its_messages_and_counts_its_rejections(vector: dict[str, Any]) -> None:
    decoder = Mr7901Decoder()
    assert decoder.feed(bytes.fromhex(vector["hex"])) == [message_of(m) for m in vector["messages"]]
    assert dict(decoder.rejected) == vector["rejected"]


def test_golden_vectors_cover_every_rejection_reason() -> None:
    reasons = {v["reason"] for v in VECTORS["invalid"]}
    assert reasons == {"garbage", "bad_length", "crc", "unknown_command", "bad_payload"}


def test_golden_vectors_cover_every_message_kind_and_an_alarm_read() -> None:
    kinds = {v["message"]["type"] for v in VECTORS["valid"]}
    assert kinds == {
        "register",
        "register_reply",
        "login",
        "login_reply",
        "heartbeat",
        "heartbeat_reply",
        "tag_upload",
        "tag_upload_reply",
    }
    reads = [r for v in VECTORS["valid"] if v["message"]["type"] == "tag_upload" for r in v["message"]["reads"]]
    assert any(r["alarm"] and r["rssi_dbm"] < 0 for r in reads)
    assert {len(v["message"]["reads"]) for v in VECTORS["valid"] if v["message"]["type"] == "tag_upload"} >= {1, 3}


def test_replies_carry_the_requests_device_id_sequence_version_and_security() -> None:
    when = datetime(2026, 11, 29, 18, 10, 5)
    register = Register("MR7901-000123", 41, b"\x01", version=2, security=1)
    assert register_reply(register, 0, when, "10.0.0.1", 9000) == RegisterReply(
        "MR7901-000123", 41, 0, when, "10.0.0.1", 9000, 2, 1
    )
    assert login_reply(Login("A", 7), 1) == LoginReply("A", 7, 1)
    assert heartbeat_reply(Heartbeat("A", 8, b"\x00\x0e")) == HeartbeatReply("A", 8, b"\x00\x0e")
    assert tag_upload_reply(TagUpload("A", 9, ())) == TagUploadReply("A", 9)


@pytest.mark.parametrize(
    "message",
    [
        Login("", 1),
        Login("x" * 17, 1),
        Login("é", 1),
        Login("A", 2**32),
        LoginReply("A", 1, 256),
        HeartbeatReply("A", 1, bytes(MAX_DATA + 1)),
        RegisterReply("A", 1, 0, datetime(1999, 12, 31), "10.0.0.1", 9000),
        RegisterReply("A", 1, 0, datetime(2026, 1, 1), "10.0.0.1", 65536),
    ],
)
def test_encode_refuses_what_the_wire_cannot_carry(message: Message) -> None:
    with pytest.raises(ValueError):
        encode(message)


# --- properties ---------------------------------------------------------------------------------

device_ids = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=16)
sequences = st.integers(0, 0xFFFFFFFF)
u16 = st.integers(0, 0xFFFF)
times = st.datetimes(datetime(2000, 1, 1), datetime(2099, 12, 31, 23, 59, 59)).map(lambda t: t.replace(microsecond=0))
small_data = st.binary(max_size=40)
reads = st.builds(
    TagRead,
    antenna=st.integers(0, 255),
    tag_type=st.integers(0, 255),
    tag_id=sequences,
    check=st.integers(0, 255),
    carried_info=u16,
    status=st.integers(0, 255),
    rssi_dbm=st.integers(-128, 127),
    read_at_local=times,
)
messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(Register, device_ids, sequences, small_data, u16, u16),
    st.builds(
        RegisterReply,
        device_ids,
        sequences,
        st.integers(0, 255),
        times,
        st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=32),
        u16,
        u16,
        u16,
    ),
    st.builds(Login, device_ids, sequences, small_data, u16, u16),
    st.builds(LoginReply, device_ids, sequences, st.integers(0, 255), u16, u16),
    st.builds(Heartbeat, device_ids, sequences, small_data, u16, u16),
    st.builds(HeartbeatReply, device_ids, sequences, small_data, u16, u16),
    st.builds(TagUpload, device_ids, sequences, st.lists(reads, max_size=8).map(tuple), u16, u16),
    st.builds(TagUploadReply, device_ids, sequences, u16, u16),
)


def feed_in_pieces(decoder: Mr7901Decoder, stream: bytes, cuts: list[int]) -> list[Message]:
    """Feed `stream` cut at the given offsets; return every message decoded."""
    out: list[Message] = []
    start = 0
    for cut in sorted(set(cuts)) + [len(stream)]:
        out += decoder.feed(stream[start:cut])
        start = cut
    return out


@PROPERTY
@given(messages)
def test_any_message_round_trips_through_encode_and_decode(message: Message) -> None:
    raw = encode(message)
    assert int.from_bytes(raw[2:4], "big") == len(raw) - 4
    assert binascii.crc_hqx(raw[2:-2], 0xFFFF) == int.from_bytes(raw[-2:], "big")
    decoder = Mr7901Decoder()
    assert decoder.feed(raw) == [message]
    assert decoder.pending == 0 and not decoder.rejected


@PROPERTY
@given(st.lists(messages, min_size=1, max_size=8), st.data())
def test_a_stream_split_anywhere_decodes_the_same_messages(sent: list[Message], data: st.DataObject) -> None:
    stream = b"".join(encode(m) for m in sent)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=30), label="cuts")
    decoder = Mr7901Decoder()
    assert feed_in_pieces(decoder, stream, cuts) == sent
    assert decoder.pending == 0 and not decoder.rejected


@PROPERTY
@given(
    st.lists(st.one_of(messages.map(encode), st.binary(max_size=40)), max_size=10).map(b"".join),
    st.lists(st.integers(0, 2000), max_size=30),
)
def test_any_stream_split_anywhere_decodes_the_same_as_whole(stream: bytes, cuts: list[int]) -> None:
    whole = Mr7901Decoder()
    expected = whole.feed(stream)
    pieces = Mr7901Decoder()
    assert feed_in_pieces(pieces, stream, [c for c in cuts if c <= len(stream)]) == expected
    # A run of garbage cut by a read is reported once per piece; every other rejection is counted the same.
    assert pieces.rejected - Counter(garbage=pieces.rejected["garbage"]) == whole.rejected - Counter(
        garbage=whole.rejected["garbage"]
    )
    assert pieces.skipped_bytes == whole.skipped_bytes
    assert pieces.pending == whole.pending


@PROPERTY
@given(st.lists(st.binary(max_size=200), max_size=10))
def test_random_bytes_never_raise_and_never_pile_up(chunks: list[bytes]) -> None:
    decoder = Mr7901Decoder()
    for chunk in chunks:
        decoder.feed(chunk)
        assert decoder.pending < LONGEST_FRAME
    if any(chunks):
        assert decoder.rejected or decoder.pending or decoder.frames


@PROPERTY
@given(
    st.lists(
        st.sampled_from([b"\x55", b"\xaa", b"\x55\xaa", b"\x00", b"\x1c", b"\x00\x1c", b"\xff", b"\x80\x04"]),
        max_size=80,
    ).map(b"".join)
)
def test_sync_heavy_noise_never_raises(noise: bytes) -> None:
    decoder = Mr7901Decoder()
    for i in range(len(noise)):
        decoder.feed(noise[i : i + 1])
    assert decoder.pending < LONGEST_FRAME


@PROPERTY
@given(st.lists(st.tuples(st.binary(max_size=30), messages), min_size=1, max_size=6))
def test_every_message_survives_garbage_before_it(pairs: list[tuple[bytes, Message]]) -> None:
    # A sync inside the last garbage may claim up to the longest frame past the last message; trailing
    # bytes let that candidate fail its CRC so the real frame behind it is found.
    stream = b"".join(garbage + encode(message) for garbage, message in pairs) + bytes(LONGEST_FRAME)
    assert Mr7901Decoder().feed(stream) == [message for _, message in pairs]


@PROPERTY
@given(messages, st.data(), messages)
def test_a_flipped_bit_is_rejected_and_the_next_frame_still_decodes(
    message: Message, data: st.DataObject, after: Message
) -> None:
    raw = bytearray(encode(message))
    bit = data.draw(st.integers(0, len(raw) * 8 - 1), label="bit")
    raw[bit // 8] ^= 1 << (bit % 8)
    decoder = Mr7901Decoder()
    assert decoder.feed(bytes(raw)) == []
    # A flipped length may claim up to the longest frame: padding past it makes that candidate fail
    # its CRC (or bytes run out), after which the decoder must find the next real frame.
    assert decoder.feed(bytes(LONGEST_FRAME) + encode(after)) == [after]
    if bit >= 4 * 8:
        # Past the sync and length, the frame is whole and only its CRC can tell.
        assert decoder.rejected["crc"] == 1
    assert sum(decoder.rejected.values()) >= 1


@PROPERTY
@given(messages, st.integers(1, 200))
def test_a_truncated_frame_waits_and_does_not_reject(message: Message, keep: int) -> None:
    raw = encode(message)
    keep = min(keep, len(raw) - 1)
    decoder = Mr7901Decoder()
    assert decoder.feed(raw[:keep]) == []
    assert not decoder.rejected
    assert decoder.feed(raw[keep:]) == [message]
