"""Strict at the edge: one JSON type per field, one meaning per value, in both the models and the ingest's row view."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Annotated, Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import AwareDatetime, ConfigDict, Field, TypeAdapter, ValidationError

from protocol.messages import (
    RFC3339_PATTERN,
    Alert,
    MessageError,
    SelfTestStep,
    SightingBatch,
    StationStatus,
    dumps,
    parse_batch_rows,
    parse_selftest,
)

SIGHTING: dict[str, Any] = {
    "tag_id": "0A1B2C3D",
    "first_seen_at": "2025-03-01T08:29:40Z",
    "last_seen_at": "2025-03-01T08:30:01.250000+00:00",
    "beacons": 12,
    "peak_rssi_dbm": -58,
    "antenna": 1,
    "flags": 4,
}


def batch(**changes: Any) -> dict[str, Any]:
    """A valid batch as JSON-ready values, some fields changed."""
    payload: dict[str, Any] = {
        "v": 1,
        "station_id": "st-001",
        "batch_seq": 7,
        "sent_at": "2025-03-01T08:30:05Z",
        "sightings": [SIGHTING],
    }
    payload.update(changes)
    return payload


# Both ways in: the model (alerts, statuses, the gateway's own tests) and the ingest's fast row view.
PARSERS: list[Callable[[bytes], object]] = [SightingBatch.parse, parse_batch_rows]


@pytest.mark.parametrize("parse", PARSERS, ids=["model", "rows"])
@pytest.mark.parametrize(
    ("changes", "where"),
    [
        ({"batch_seq": True}, "batch_seq"),
        ({"batch_seq": "11"}, "batch_seq"),
        ({"batch_seq": 12.0}, "batch_seq"),
        ({"sent_at": 1740817805}, "sent_at"),
        ({"sent_at": "1740817805"}, "sent_at"),
        ({"sent_at": "2025-03-01 08:30:05Z"}, "sent_at"),
        ({"sent_at": "2025-03-01T08:30Z"}, "sent_at"),
        ({"sent_at": "2025-03-01"}, "sent_at"),
        ({"sent_at": "2025-03-01T08:30:05.123456789Z"}, "sent_at"),
        ({"v": 1.0}, "v"),
        ({"v": True}, "v"),
        ({"sightings": [{**SIGHTING, "beacons": 3.0}]}, "sightings.0.beacons"),
        ({"sightings": [{**SIGHTING, "flags": False}]}, "sightings.0.flags"),
        ({"sightings": [{**SIGHTING, "first_seen_at": 1740817780.5}]}, "sightings.0.first_seen_at"),
    ],
)
def test_a_value_of_another_json_type_is_refused_with_where_it_is(
    parse: Callable[[bytes], object], changes: dict[str, Any], where: str
) -> None:
    raw = orjson.dumps(batch(**changes))
    with pytest.raises(MessageError) as info:
        parse(raw)
    assert info.value.reason.startswith(f"{where}:")
    assert info.value.raw == raw


def test_status_alert_and_selftest_are_strict_too() -> None:
    with pytest.raises(MessageError, match="^sent_at:"):
        StationStatus.parse(b'{"v":1,"station_id":"st-1","state":"online","sent_at":4102444800}')
    with pytest.raises(MessageError, match="^spool_depth:"):
        StationStatus.parse(b'{"v":1,"station_id":"st-1","state":"online","spool_depth":"3"}')
    with pytest.raises(MessageError, match="^v:"):
        Alert.parse(
            b'{"v":1.0,"station_id":"st-1","kind":"tamper","tag_id":"0A1B2C3D","seen_at":"2025-03-01T08:30:00Z",'
            b'"rssi_dbm":-50,"antenna":0}'
        )
    step = SelfTestStep(
        station_id="st-1", run_id="0123abcd", seq=1, name="serial", status="pass", message="ok", at=datetime.now(UTC)
    )
    raw = step.to_json().replace(b'"seq":1', b'"seq":true')
    with pytest.raises(MessageError, match=r"seq"):
        parse_selftest(raw)


def test_a_float_field_takes_a_json_integer_with_the_same_meaning() -> None:
    status = StationStatus.parse(b'{"v":1,"station_id":"st-1","state":"online","uptime_s":3}')
    assert status.uptime_s == 3.0


# Property: whatever JSON the schema accepts means what it says, and says it again the same way.

OFFSETS = st.integers(min_value=-14 * 60, max_value=14 * 60).map(lambda m: timezone(timedelta(minutes=m)))
INSTANTS = st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)).flatmap(
    lambda t: OFFSETS.map(lambda tz: t.astimezone(tz))
)


@st.composite
def rfc3339(draw: st.DrawFn) -> tuple[str, datetime]:
    """A time written in one of the accepted forms, with the instant it means."""
    at = draw(INSTANTS)
    digits = draw(st.sampled_from([0, 1, 3, 6]))
    at = (
        at.replace(microsecond=at.microsecond // 10 ** (6 - digits) * 10 ** (6 - digits))
        if digits
        else at.replace(microsecond=0)
    )
    text = at.strftime("%Y-%m-%dT%H:%M:%S")
    if digits:
        text += "." + f"{at.microsecond:06d}"[:digits]
    offset = at.utcoffset()
    assert offset is not None
    if offset == timedelta(0) and draw(st.booleans()):
        text += "Z"
    else:
        minutes = int(offset.total_seconds()) // 60
        sign = "-" if minutes < 0 else "+"
        text += f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
    return text, at


ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=5,
)


@settings(max_examples=300, deadline=None)
@given(
    seq=st.integers(min_value=0, max_value=2**62),
    sent=rfc3339(),
    firsts=st.lists(rfc3339(), min_size=0, max_size=4),
    beacons=st.integers(min_value=1, max_value=1_000_000),
    rssi=st.integers(min_value=-128, max_value=127),
)
def test_any_accepted_batch_round_trips_to_the_same_meaning(
    seq: int, sent: tuple[str, datetime], firsts: list[tuple[str, datetime]], beacons: int, rssi: int
) -> None:
    sightings = [
        {**SIGHTING, "first_seen_at": text, "last_seen_at": text, "beacons": beacons, "peak_rssi_dbm": rssi}
        for text, _ in firsts
    ]
    raw = orjson.dumps(batch(batch_seq=seq, sent_at=sent[0], sightings=sightings))
    rows = parse_batch_rows(raw)
    model = SightingBatch.parse(raw)
    assert rows["batch_seq"] == model.batch_seq == seq
    assert rows["sent_at"] == model.sent_at == sent[1]
    assert [s["first_seen_at"] for s in rows["sightings"]] == [at for _, at in firsts]
    again = SightingBatch.parse(model.to_json())
    assert again == model
    assert parse_batch_rows(dumps(rows)) == rows


@settings(max_examples=400, deadline=None)
@given(field=st.sampled_from(["batch_seq", "v"]), value=ANY_JSON)
def test_an_integer_field_accepts_only_a_json_integer_and_keeps_its_value(field: str, value: object) -> None:
    raw = json.dumps(batch(**{field: value})).encode()  # orjson stops at 64 bits; JSON does not
    try:
        rows = parse_batch_rows(raw)
    except MessageError:
        accepted = False
    else:
        accepted = True
        assert rows[field] == value and type(rows[field]) is int
    is_int = type(value) is int
    if field == "v":
        assert accepted == (is_int and value == 1)
    else:
        assert accepted == (is_int and 0 <= value < 2**63)  # type: ignore[operator]


@settings(max_examples=400, deadline=None)
@given(value=ANY_JSON | rfc3339().map(lambda pair: pair[0]) | st.from_regex(r"\A[0-9T:+.Z -]{8,32}\Z"))
def test_a_time_is_accepted_only_as_rfc3339_and_means_what_it_says(value: object) -> None:
    raw = json.dumps(batch(sent_at=value)).encode()
    try:
        rows = parse_batch_rows(raw)
    except MessageError:
        return
    assert isinstance(value, str) and re.match(RFC3339_PATTERN, value)
    assert rows["sent_at"] == datetime.fromisoformat(value)


# What pydantic's core alone makes of a string of the form: the meaning step _instant replaced, kept here to compare.
PYDANTIC_DATETIME: TypeAdapter[datetime] = TypeAdapter(
    Annotated[AwareDatetime, Field(strict=False)], config=ConfigDict(strict=False)
)
NEAR_RFC3339 = st.from_regex(
    r"\A[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?(Z|[+-][0-9]{2}:[0-9]{2})?\Z"
)


@settings(max_examples=1000, deadline=None)
@given(value=NEAR_RFC3339 | rfc3339().map(lambda pair: pair[0]))
def test_a_time_is_read_as_pydantic_reads_it(value: str) -> None:
    raw = json.dumps(batch(sent_at=value)).encode()
    try:
        ours: datetime | None = parse_batch_rows(raw)["sent_at"]
    except MessageError as exc:
        assert exc.reason.startswith("sent_at:")
        ours = None
    try:
        theirs: datetime | None = PYDANTIC_DATETIME.validate_json(json.dumps(value))
    except ValidationError:
        theirs = None
    if theirs is not None and not re.match(RFC3339_PATTERN, value):
        theirs = None  # the form step refuses it first
    assert ours == theirs
    if ours is not None and theirs is not None:
        assert ours.utcoffset() == theirs.utcoffset()


def test_times_carry_the_standard_librarys_timezone() -> None:
    # pydantic's own tzinfo answers each utcoffset() with a call into its core, which the ingest pays on every
    # comparison and in COPY; the standard library's answers in C.
    rows = parse_batch_rows(orjson.dumps(batch(sent_at="2025-03-01T16:30:05+08:00")))
    assert rows["sent_at"].tzinfo == timezone(timedelta(hours=8))
    assert type(rows["sightings"][0]["first_seen_at"].tzinfo) is timezone
    assert rows["sightings"][0]["first_seen_at"].tzinfo is UTC
    for offset_minutes in ("+00:60", "-03:75"):
        with pytest.raises(MessageError, match="^sent_at:"):
            parse_batch_rows(orjson.dumps(batch(sent_at=f"2025-03-01T08:30:05{offset_minutes}")))
