"""Schemathesis hooks for tests/backend/test_fuzz.py (loaded through SCHEMATHESIS_HOOKS): requests at the ends of
what the types hold, so the fuzz finds the 500s that ordinary values never reach (issue 11).

- every `date-time` is drawn from the whole calendar, year 1 to 9999, with offsets from -12:00 to +14:00 and
  fractions of 0 to 9 digits, beside the hand-picked ends (0001-01-01 at +14:00, 9999-12-31 at -12:00, the
  Unix epoch, 2038, the API's own limits);
- one value of a query, path or JSON body (nested ones too) may be swapped for an extreme of its type: integers
  past 32, 53, 63 and 64 bits and their negatives, floats at the ends of a double, strings of thousands of
  characters (bodies: fifty thousand), arrays of as many items as the URL holds (bodies: 500), times at the
  ends of the calendar in any string.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import schemathesis
from hypothesis import strategies as st

EXTREME_TIMES = (
    "0001-01-01T00:00:00Z",
    "0001-01-01T00:00:00+14:00",
    "0001-01-01T00:00:00-12:00",
    "9999-12-31T23:59:59Z",
    "9999-12-31T23:59:59-12:00",
    "9999-12-31T23:59:59.999999999+14:00",
    "1970-01-01T00:00:00Z",
    "1969-12-31T23:59:59.999999Z",
    "1970-01-01T00:00:00+14:00",
    "2038-01-19T03:14:08Z",
    "2999-12-31T23:59:59.999999-12:00",
    "3000-01-01T00:00:00Z",
    "2026-11-29T12:00:00.123456789+05:45",
)
EXTREME_INTEGERS = (
    0,
    -1,
    2**31 - 1,
    2**31,
    -(2**31) - 1,
    2**53 + 1,
    2**63 - 1,
    2**63,
    -(2**63) - 1,
    2**64,
    10**30,
    -(10**30),
)
EXTREME_FLOATS = (1.7976931348623157e308, -1.7976931348623157e308, 5e-324, -0.0, 9.3e18, -9.3e18)
# Extremes that reach the application: what is refused before it (tests/security/test_oversized_and_slow_requests.py)
# would only cost the run time. A query or path travels in the request head, which the server refuses past
# BIKEGUARD_HTTP_MAX_HEADER_BYTES (16 KiB) by closing the connection: one extreme value of a URL stays well within
# it. A JSON body is refused past 64 KiB with a 413: its long strings and big arrays stay within that.
URL_BUDGET = 8000
LONG_IN_URL = (1000, 4000, 5000)  # 5000 digits: past the 4300 Python's int() takes from a string
LONG_IN_BODY = (1000, 5000, 50_000)
BIG_ARRAY_IN_BODY = (500,)


def _offset(minutes: int) -> str:
    if minutes == 0:
        return "Z"
    sign = "+" if minutes > 0 else "-"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


@st.composite
def _any_time(draw: st.DrawFn) -> str:
    """An RFC 3339 date-time anywhere in years 1 to 9999, at any offset from -12:00 to +14:00."""
    year = draw(st.integers(1, 9999))
    month = draw(st.integers(1, 12))
    day = draw(st.integers(1, 28))
    hour, minute, second = draw(st.integers(0, 23)), draw(st.integers(0, 59)), draw(st.integers(0, 59))
    digits = draw(st.integers(0, 9))
    fraction = (
        ""
        if digits == 0
        else "." + "".join(draw(st.lists(st.sampled_from("0123456789"), min_size=digits, max_size=digits)))
    )
    offset = _offset(draw(st.integers(-12 * 60, 14 * 60)))
    return f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}{fraction}{offset}"


schemathesis.openapi.format("date-time", st.one_of(st.sampled_from(EXTREME_TIMES), _any_time()))


class _Sizes:
    """How long the extremes of one place (URL or body) are."""

    def __init__(self, strings: tuple[int, ...], arrays: tuple[int, ...] | None) -> None:
        self.strings = strings
        self.arrays = arrays  # None: as many items as URL_BUDGET holds for this parameter

    def array_lengths(self, key: str, item: Any) -> tuple[int, ...]:
        """The lengths of an array of `item`s under `key`."""
        if self.arrays is not None:
            return self.arrays
        # A repeated query parameter: key=item& for each item.
        return (max(1, URL_BUDGET // (len(quote(str(key))) + len(quote(str(item))) + 2)),)


URL = _Sizes(LONG_IN_URL, None)
BODY = _Sizes(LONG_IN_BODY, BIG_ARRAY_IN_BODY)


def _extreme(key: str, value: Any, sizes: _Sizes) -> st.SearchStrategy[Any]:
    """An extreme of the value's type (strings, arrays and nested objects as long as `sizes` says)."""
    if isinstance(value, bool) or value is None:
        return st.sampled_from((*EXTREME_INTEGERS, "x" * sizes.strings[0]))
    if isinstance(value, int):
        return st.sampled_from(EXTREME_INTEGERS)
    if isinstance(value, float):
        return st.sampled_from(EXTREME_FLOATS)
    if isinstance(value, str):
        return st.sampled_from([c * n for n in sizes.strings for c in "x9"] + list(EXTREME_TIMES))
    if isinstance(value, list):
        item = value[0] if value else 0
        return st.sampled_from([[item] * n for n in sizes.array_lengths(key, item)])
    if isinstance(value, dict):
        return _one_extreme(value, sizes)
    return st.just(value)


def _one_extreme(values: dict[str, Any] | None, sizes: _Sizes) -> st.SearchStrategy[dict[str, Any] | None]:
    """The values as generated, or with one of them (perhaps nested) swapped for an extreme of its type."""
    if not values:  # an operation without parameters of this kind
        return st.just(values)
    keys = sorted(values, key=str)
    swapped = st.sampled_from(keys).flatmap(
        lambda key: _extreme(key, values[key], sizes).map(lambda extreme: {**values, key: extreme})
    )
    return st.one_of(st.just(values), swapped)


@schemathesis.hook
def flatmap_query(
    context: schemathesis.HookContext, query: dict[str, Any] | None
) -> st.SearchStrategy[dict[str, Any] | None]:
    """Query parameters at the ends of their types."""
    return _one_extreme(query, URL)


@schemathesis.hook
def flatmap_path_parameters(
    context: schemathesis.HookContext, path_parameters: dict[str, Any] | None
) -> st.SearchStrategy[dict[str, Any] | None]:
    """Path parameters at the ends of their types."""
    return _one_extreme(path_parameters, URL)


@schemathesis.hook
def flatmap_body(context: schemathesis.HookContext, body: Any) -> st.SearchStrategy[Any]:
    """JSON bodies with fields (and the body itself, when it is an array) at the ends of their types."""
    if isinstance(body, dict):
        return _one_extreme(body, BODY)
    if isinstance(body, list):
        return st.one_of(st.just(body), _extreme("", body, BODY))
    return st.just(body)
