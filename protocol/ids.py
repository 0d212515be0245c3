"""Station, tag and vendor device ids: their patterns are written here and nowhere else, with the checks built on them.

A station id is what its topics carry: 1-64 of lower-case letters, digits, '-' and '_', starting with a letter
or digit (so it can never be an MQTT wildcard, a `$share` prefix or a path). A tag id is the chip's 32-bit id
as the 8 upper-case hex digits printed on it and sent on the wire; people may type it in either case.

The patterns are anchored so pydantic and FastAPI (which search, not match) can take them as they are.
"""

from __future__ import annotations

import re

STATION_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
TAG_ID_PATTERN = r"^[0-9A-F]{8}$"  # on the wire: upper case only
TAG_ID_ANY_CASE_PATTERN = r"^[0-9A-Fa-f]{8}$"  # as typed into a form or a query
# A vendor station's device id (MR7901: sent in every frame): 1-16 printable ASCII characters, no space.
VENDOR_DEVICE_ID_PATTERN = r"^[!-~]{1,16}$"

# fullmatch, because re's `$` also matches before a trailing newline.
_STATION_ID = re.compile(STATION_ID_PATTERN)
_TAG_ID_ANY_CASE = re.compile(TAG_ID_ANY_CASE_PATTERN)


class IdError(ValueError):
    """A station or tag id that does not follow its pattern."""


def is_station_id(text: str) -> bool:
    """Whether the text is a valid station id."""
    return _STATION_ID.fullmatch(text) is not None


def check_station_id(station_id: str) -> str:
    """Return the station id if it is lower-case letters, digits, '-' or '_' (1-64 chars); raise IdError."""
    if not is_station_id(station_id):
        raise IdError(f"invalid station id {station_id!r}: use 1-64 of a-z 0-9 - _")
    return station_id


def is_tag_text(text: str) -> bool:
    """Whether the text is 8 hex digits, in either case: something parse_tag takes."""
    return _TAG_ID_ANY_CASE.fullmatch(text) is not None


def format_tag(tag_id: int) -> str:
    """A chip's 32-bit id as the 8 hex digits printed on it and sent on the wire."""
    return f"{tag_id:08X}"


def parse_tag(text: str) -> int:
    """The 32-bit id from 8 hex digits (either case); raises IdError otherwise."""
    if not is_tag_text(text):
        raise IdError(f"tag id {text!r} must be 8 hex digits")
    return int(text, 16)
