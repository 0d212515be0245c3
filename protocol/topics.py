"""MQTT topic names: the only place they are built or parsed (DESIGN §3)."""

from __future__ import annotations

import re
from dataclasses import dataclass

ROOT = "bikeguard/v1"
HOTLIST = f"{ROOT}/hotlist"
SELFTEST = "selftest"  # each step of a commissioning self-test, as it completes (gateway → backend)
STATION_KINDS = ("sightings", "alerts", "status", SELFTEST)

_STATION_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_STATION_TOPIC = re.compile(rf"{ROOT}/stations/([^/]+)/({'|'.join(STATION_KINDS)})")


class TopicError(ValueError):
    """A topic or station id that does not follow the contract."""


def check_station_id(station_id: str) -> str:
    """Return the station id if it is lower-case letters, digits, '-' or '_' (1-64 chars)."""
    if not _STATION_ID.fullmatch(station_id):
        raise TopicError(f"invalid station id {station_id!r}: use 1-64 of a-z 0-9 - _")
    return station_id


def station_topic(station_id: str, kind: str) -> str:
    """`bikeguard/v1/stations/{id}/{kind}` for kind in sightings, alerts, status, selftest."""
    if kind not in STATION_KINDS:
        raise TopicError(f"unknown station topic kind {kind!r}")
    return f"{ROOT}/stations/{check_station_id(station_id)}/{kind}"


def command_topic(station_id: str, name: str) -> str:
    """`bikeguard/v1/stations/{id}/commands/{name}`: backend to one gateway."""
    return f"{ROOT}/stations/{check_station_id(station_id)}/commands/{name}"


def station_filter(kind: str, shared_group: str | None = None) -> str:
    """Subscription filter for one kind from every station, shared when a group is given."""
    if kind not in STATION_KINDS:
        raise TopicError(f"unknown station topic kind {kind!r}")
    topic = f"{ROOT}/stations/+/{kind}"
    return f"$share/{shared_group}/{topic}" if shared_group else topic


@dataclass(frozen=True, slots=True)
class StationTopic:
    """A parsed station topic."""

    station_id: str
    kind: str


def parse_station_topic(topic: str) -> StationTopic:
    """Parse a station topic into its station id and kind, or raise TopicError."""
    m = _STATION_TOPIC.fullmatch(topic)
    if not m:
        raise TopicError(f"not a station topic: {topic!r}")
    return StationTopic(check_station_id(m.group(1)), m.group(2))
