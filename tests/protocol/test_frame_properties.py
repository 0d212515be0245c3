"""Property tests for the reader frame codec: round trip, robustness, resynchronisation."""

from __future__ import annotations

import binascii

from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.frames import MAX_LEN, Beacon, Frame, FrameDecoder, ModuleStatus, TagFlags, crc16, encode

PROPERTY = settings(max_examples=200, deadline=None)
LONGEST_FRAME = 2 + 1 + MAX_LEN + 2

beacons = st.builds(
    Beacon,
    tag_id=st.integers(0, 0xFFFFFFFF),
    counter=st.integers(0, 0xFFFF),
    flags=st.integers(0, 7).map(TagFlags),
    rssi_dbm=st.integers(-128, 127),
    antenna=st.integers(0, 255),
)
statuses = st.builds(
    ModuleStatus,
    noise_floor_dbm=st.integers(-128, 127),
    firmware=st.integers(0, 0xFFFF),
    uptime_s=st.integers(0, 0xFFFFFFFF),
)
frames = st.one_of(beacons, statuses)


def feed_in_pieces(decoder: FrameDecoder, stream: bytes, cuts: list[int]) -> list[Frame]:
    """Feed `stream` cut at the given offsets; return every frame decoded."""
    out: list[Frame] = []
    start = 0
    for cut in sorted(set(cuts)) + [len(stream)]:
        out += decoder.feed(stream[start:cut])
        start = cut
    return out


def test_crc16_matches_the_ccitt_false_check_value() -> None:
    assert crc16(b"123456789") == 0x29B1


@PROPERTY
@given(st.binary(max_size=200))
def test_crc16_agrees_with_binascii_crc_hqx(data: bytes) -> None:
    assert crc16(data) == binascii.crc_hqx(data, 0xFFFF)


@PROPERTY
@given(frames)
def test_any_frame_round_trips_through_encode_and_decode(frame: Frame) -> None:
    raw = encode(frame)
    assert len(raw) == (15 if isinstance(frame, Beacon) else 13)
    decoder = FrameDecoder()
    assert decoder.feed(raw) == [frame]
    assert decoder.pending == 0 and not decoder.rejected


@PROPERTY
@given(beacons, st.integers(0, 255))
def test_reserved_flag_bits_are_ignored_on_decode(beacon: Beacon, raw_flags: int) -> None:
    sent = Beacon(beacon.tag_id, beacon.counter, raw_flags, beacon.rssi_dbm, beacon.antenna)  # type: ignore[arg-type]
    (decoded,) = FrameDecoder().feed(encode(sent))
    assert isinstance(decoded, Beacon)
    assert decoded.flags == TagFlags(raw_flags & 0x07)
    assert decoded == Beacon(beacon.tag_id, beacon.counter, TagFlags(raw_flags & 0x07), beacon.rssi_dbm, beacon.antenna)


@PROPERTY
@given(st.lists(st.binary(max_size=100), max_size=10))
def test_arbitrary_bytes_never_raise_and_never_pile_up(chunks: list[bytes]) -> None:
    decoder = FrameDecoder()
    for chunk in chunks:
        decoder.feed(chunk)
        # Only a started frame (or a trailing half sync) is ever held back.
        assert decoder.pending < LONGEST_FRAME


@PROPERTY
@given(
    st.lists(
        st.sampled_from([b"\xaa", b"\x55", b"\xaa\x55", b"\x00", b"\x0a", b"\x01", b"\x40", b"\x41"]).map(bytes),
        max_size=60,
    ).map(b"".join)
)
def test_sync_heavy_noise_never_raises(noise: bytes) -> None:
    decoder = FrameDecoder()
    for i in range(len(noise)):
        decoder.feed(noise[i : i + 1])
    assert decoder.pending < LONGEST_FRAME


@PROPERTY
@given(st.lists(frames, min_size=1, max_size=20), st.lists(st.integers(0, 20 * 15), max_size=30))
def test_frame_split_anywhere_decodes_the_same(sent: list[Frame], cuts: list[int]) -> None:
    stream = b"".join(encode(f) for f in sent)
    decoder = FrameDecoder()
    assert feed_in_pieces(decoder, stream, [c for c in cuts if c <= len(stream)]) == sent
    assert decoder.pending == 0 and not decoder.rejected


@PROPERTY
@given(
    st.lists(st.one_of(frames.map(encode), st.binary(max_size=20)), max_size=15).map(b"".join),
    st.lists(st.integers(0, 400), max_size=30),
)
def test_any_stream_split_anywhere_decodes_the_same_as_whole(stream: bytes, cuts: list[int]) -> None:
    whole = FrameDecoder()
    expected = whole.feed(stream)
    pieces = FrameDecoder()
    assert feed_in_pieces(pieces, stream, [c for c in cuts if c <= len(stream)]) == expected
    assert pieces.skipped_bytes == whole.skipped_bytes
    assert pieces.pending == whole.pending


@PROPERTY
@given(st.lists(st.tuples(st.binary(max_size=30), frames), min_size=1, max_size=10))
def test_every_frame_survives_garbage_before_it(pairs: list[tuple[bytes, Frame]]) -> None:
    stream = b"".join(garbage + encode(frame) for garbage, frame in pairs)
    # A sync inside the last garbage may claim up to a frame's length past the last frame;
    # trailing bytes let that candidate fail its CRC so the real frame behind it is found.
    stream += bytes(LONGEST_FRAME)
    assert FrameDecoder().feed(stream) == [frame for _, frame in pairs]


@PROPERTY
@given(st.lists(st.tuples(st.binary(min_size=1, max_size=30), frames), min_size=1, max_size=10), st.data())
def test_every_frame_survives_garbage_split_anywhere(pairs: list[tuple[bytes, Frame]], data: st.DataObject) -> None:
    stream = b"".join(garbage + encode(frame) for garbage, frame in pairs) + bytes(LONGEST_FRAME)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=20))
    decoder = FrameDecoder()
    assert feed_in_pieces(decoder, stream, cuts) == [frame for _, frame in pairs]
    assert decoder.skipped_bytes > 0


@PROPERTY
@given(frames, st.data(), st.lists(frames, min_size=6, max_size=6))
def test_a_flipped_bit_is_rejected_never_a_different_frame(
    frame: Frame, data: st.DataObject, after: list[Frame]
) -> None:
    raw = bytearray(encode(frame))
    bit = data.draw(st.integers(0, len(raw) * 8 - 1), label="bit")
    raw[bit // 8] ^= 1 << (bit % 8)
    decoder = FrameDecoder()
    assert decoder.feed(bytes(raw)) == []
    # Six following frames are longer than any length a flipped LEN byte can claim, so the
    # decoder must resynchronise and deliver exactly them.
    assert decoder.feed(b"".join(encode(f) for f in after)) == after
    assert sum(decoder.rejected.values()) >= 1


@PROPERTY
@given(frames, st.integers(1, 14))
def test_a_truncated_frame_waits_and_does_not_reject(frame: Frame, keep: int) -> None:
    raw = encode(frame)
    decoder = FrameDecoder()
    keep = min(keep, len(raw) - 1)
    assert decoder.feed(raw[:keep]) == []
    assert not decoder.rejected
    assert decoder.feed(raw[keep:]) == [frame]
