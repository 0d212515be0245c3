"""protocol/topics.py: the only place MQTT topic names are built and parsed."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.client import topic_matches_sub as paho_topic_matches_sub

from protocol.ids import IdError, check_station_id
from protocol.topics import (
    HOTLIST,
    STATION_KINDS,
    StationTopic,
    TopicError,
    command_topic,
    parse_station_topic,
    station_filter,
    station_topic,
    topic_matches,
)

station_ids = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,63}", fullmatch=True)

INVALID_IDS = [
    "",
    "ST-001",
    "st 001",
    "st/001",
    "st+",
    "st#",
    "-st",
    "_st",
    "st.001",
    "站-001",
    "a" * 65,
    "$share",
]


@pytest.mark.parametrize("kind", STATION_KINDS)
def test_station_topic_follows_the_contract(kind: str) -> None:
    assert station_topic("st-001", kind) == f"bikeguard/v1/stations/st-001/{kind}"


def test_command_topic_follows_the_contract() -> None:
    assert command_topic("st-001", "self-test") == "bikeguard/v1/stations/st-001/commands/self-test"


def test_hotlist_topic_follows_the_contract() -> None:
    assert HOTLIST == "bikeguard/v1/hotlist"


def test_unknown_station_topic_kind_is_refused() -> None:
    with pytest.raises(TopicError, match="kind"):
        station_topic("st-001", "commands")
    with pytest.raises(TopicError, match="kind"):
        station_filter("everything")


@pytest.mark.parametrize("station_id", INVALID_IDS)
def test_invalid_station_id_is_rejected_everywhere(station_id: str) -> None:
    with pytest.raises(IdError, match="invalid station id"):
        check_station_id(station_id)
    with pytest.raises(TopicError, match="invalid station id"):
        station_topic(station_id, "status")
    with pytest.raises(TopicError, match="invalid station id"):
        command_topic(station_id, "self-test")


def test_station_id_with_trailing_newline_is_rejected() -> None:
    with pytest.raises(IdError):
        check_station_id("st-001\n")
    with pytest.raises(TopicError):
        station_topic("st-001\n", "status")


def test_topic_error_is_a_value_error() -> None:
    assert issubclass(TopicError, ValueError)


@settings(max_examples=200, deadline=None)
@given(station_ids, st.sampled_from(STATION_KINDS))
def test_station_topic_parses_back_to_its_station_and_kind(station_id: str, kind: str) -> None:
    assert parse_station_topic(station_topic(station_id, kind)) == StationTopic(station_id, kind)


@pytest.mark.parametrize(
    "topic",
    [
        "bikeguard/v1/hotlist",
        "bikeguard/v1/stations/st-001",
        "bikeguard/v1/stations/st-001/commands/self-test",
        "bikeguard/v1/stations/st-001/sightings/extra",
        "bikeguard/v2/stations/st-001/sightings",
        "/bikeguard/v1/stations/st-001/sightings",
        "bikeguard/v1/stations/+/sightings",
        "bikeguard/v1/stations/ST-001/sightings",
        "bikeguard/v1/stations//status",
        "$share/bikeguard-ingest/bikeguard/v1/stations/st-001/sightings",
    ],
)
def test_non_station_topics_are_refused_by_the_parser(topic: str) -> None:
    with pytest.raises(TopicError):
        parse_station_topic(topic)


@pytest.mark.parametrize("kind", STATION_KINDS)
def test_station_filter_matches_every_station(kind: str) -> None:
    assert station_filter(kind) == f"bikeguard/v1/stations/+/{kind}"


def test_shared_filter_spreads_one_kind_over_a_worker_group() -> None:
    assert station_filter("sightings", "bikeguard-ingest") == (
        "$share/bikeguard-ingest/bikeguard/v1/stations/+/sightings"
    )


@pytest.mark.parametrize("kind", STATION_KINDS)
def test_filter_without_its_share_prefix_matches_built_topics(kind: str) -> None:
    pattern = station_filter(kind, "g").removeprefix("$share/g/").split("/")
    topic = station_topic("st-042", kind).split("/")
    assert len(pattern) == len(topic)
    assert all(p in ("+", t) for p, t in zip(pattern, topic, strict=True))


@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        ("bikeguard/v1/hotlist", "bikeguard/v1/hotlist", True),
        ("bikeguard/v1/hotlist", "bikeguard/v1/hotlist/x", False),
        ("bikeguard/v1/stations/+/confirmations", "bikeguard/v1/stations/st-1/confirmations", True),
        ("bikeguard/v1/stations/+/confirmations", "bikeguard/v1/stations/st-1/requests", False),
        ("bikeguard/v1/stations/+/confirmations", "bikeguard/v1/stations/confirmations", False),
        ("bikeguard/v1/stations/st-1/#", "bikeguard/v1/stations/st-1", True),  # # is the parent level too
        ("bikeguard/v1/stations/st-1/#", "bikeguard/v1/stations/st-1/commands/x", True),
        ("#", "$SYS/broker/uptime", False),  # $ topics only under a filter naming their first level
        ("+/broker/uptime", "$SYS/broker/uptime", False),
        ("$SYS/#", "$SYS/broker/uptime", True),
        ("a/+", "a/", True),  # an empty level is a level
        ("a/+", "a", False),
    ],
)
def test_a_topic_matches_a_filter_as_a_broker_decides(topic_filter: str, topic: str, expected: bool) -> None:
    assert topic_matches(topic_filter, topic) is expected
    assert paho_topic_matches_sub(topic_filter, topic) is expected  # the reference it replaces


@settings(max_examples=500, deadline=None)
@given(
    st.lists(st.sampled_from(["a", "b", "+", "", "$x"]), min_size=1, max_size=4),
    st.booleans(),
    st.lists(st.sampled_from(["a", "b", "", "$x"]), min_size=1, max_size=5),
)
def test_topic_matching_agrees_with_paho(levels: list[str], hash_last: bool, topic: list[str]) -> None:
    topic_filter = "/".join([*levels, "#"] if hash_last else levels)
    assert topic_matches(topic_filter, "/".join(topic)) == paho_topic_matches_sub(topic_filter, "/".join(topic))
