"""protocol/ids.py: the one place station and tag ids are checked, formatted and parsed."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import messages
from protocol.ids import (
    STATION_ID_PATTERN,
    TAG_ID_ANY_CASE_PATTERN,
    TAG_ID_PATTERN,
    IdError,
    check_station_id,
    format_tag,
    is_station_id,
    is_tag_text,
    parse_tag,
)


@pytest.mark.parametrize("station_id", ["st-001", "0", "a" * 64, "north_gate-2"])
def test_valid_station_ids_pass_unchanged(station_id: str) -> None:
    assert check_station_id(station_id) == station_id and is_station_id(station_id)


@pytest.mark.parametrize("station_id", ["", "ST-001", "-st", "_st", "st.001", "st/001", "st+", "a" * 65, "st-001\n"])
def test_invalid_station_ids_are_refused_with_the_rule(station_id: str) -> None:
    assert not is_station_id(station_id)
    with pytest.raises(IdError, match="invalid station id .*use 1-64 of a-z 0-9 - _"):
        check_station_id(station_id)


def test_id_error_is_a_value_error() -> None:
    assert issubclass(IdError, ValueError)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 0xFFFFFFFF))
def test_tag_id_formats_to_eight_hex_digits_and_back(tag_id: int) -> None:
    text = format_tag(tag_id)
    assert len(text) == 8 and text == text.upper()
    assert parse_tag(text) == tag_id


def test_tag_id_extremes_format_as_printed_on_the_chip() -> None:
    assert format_tag(0) == "00000000"
    assert format_tag(0xFFFFFFFF) == "FFFFFFFF"


def test_parse_tag_takes_either_case() -> None:
    assert parse_tag("0a1b2c3d") == parse_tag("0A1B2C3D") == 0x0A1B2C3D
    assert is_tag_text("0a1b2c3d")


@pytest.mark.parametrize("text", ["1234567", "123456789", "GGGGGGGG"])
def test_parse_tag_refuses_what_is_not_eight_hex_digits(text: str) -> None:
    with pytest.raises(ValueError):
        parse_tag(text)


@pytest.mark.parametrize("text", ["-0000001", "+1234567", "0x123456", "1_234567", " 1234567", "٣٣٣٣٣٣٣٣", "1234567A\n"])
def test_parse_tag_refuses_int_literal_tricks(text: str) -> None:
    with pytest.raises(IdError):
        parse_tag(text)
    assert not is_tag_text(text)


def test_the_wire_pattern_is_the_upper_case_half_of_what_people_may_type() -> None:
    assert re.fullmatch(TAG_ID_PATTERN, "0A1B2C3D") and not re.fullmatch(TAG_ID_PATTERN, "0a1b2c3d")
    assert re.fullmatch(TAG_ID_ANY_CASE_PATTERN, "0a1b2c3d")


def test_patterns_are_anchored_for_pydantic_and_fastapi() -> None:
    # pydantic and FastAPI search with a pattern; unanchored, "xst-001" would pass as a station id.
    for pattern in (STATION_ID_PATTERN, TAG_ID_PATTERN, TAG_ID_ANY_CASE_PATTERN):
        assert pattern.startswith("^") and pattern.endswith("$")


def test_messages_take_their_id_patterns_from_protocol_ids() -> None:
    assert messages.format_tag is format_tag and messages.parse_tag is parse_tag
    with pytest.raises(messages.MessageError, match="station_id"):
        messages.StationStatus.parse(b'{"v":1,"station_id":"xst-001!","state":"online"}')
