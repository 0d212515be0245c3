"""MQTT topic names: the only place they are built or parsed (DESIGN §3)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from protocol.ids import IdError, check_station_id

ROOT = "bikeguard/v1"
HOTLIST = f"{ROOT}/hotlist"
SELFTEST = "selftest"  # each step of a commissioning self-test, as it completes (gateway → backend)
GONE = "gone"  # the requested batches a gateway no longer holds, and why (gateway → backend)
STATION_KINDS = ("sightings", "alerts", "status", SELFTEST, GONE)
CONFIRMATIONS = "confirmations"  # the batch_seqs the backend has stored (backend → gateway; not a station kind)
REQUESTS = "requests"  # the batch_seqs the backend is missing, to send again (backend → gateway; not a station kind)

_STATION_TOPIC = re.compile(rf"{ROOT}/stations/([^/]+)/({'|'.join(STATION_KINDS)})")


class TopicError(ValueError):
    """A topic or station id that does not follow the contract."""


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Whether `topic` falls under a subscription filter, as a broker decides (MQTT 3.1.1 section 4.7): `+` is one
    level, `#` (last) this level and all below it, and a topic starting with `$` only under a filter that names its
    first level. paho's topic_matches_sub says the same, but builds a matcher whose closure is a reference cycle for
    each call: garbage for the cyclic collector, for every message a station receives."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    levels = topic.split("/")
    wanted = topic_filter.split("/")
    for i, level in enumerate(wanted):
        if level == "#":
            return True
        if i >= len(levels) or (level != "+" and level != levels[i]):
            return False
    return len(levels) == len(wanted)


def _station(station_id: str) -> str:
    """The station id as a topic level; an invalid one is a TopicError, with protocol.ids' reason."""
    try:
        return check_station_id(station_id)
    except IdError as exc:
        raise TopicError(str(exc)) from exc


def station_topic(station_id: str, kind: str) -> str:
    """`bikeguard/v1/stations/{id}/{kind}` for kind in sightings, alerts, status, selftest, gone."""
    if kind not in STATION_KINDS:
        raise TopicError(f"unknown station topic kind {kind!r}")
    return f"{ROOT}/stations/{_station(station_id)}/{kind}"


def confirmations_topic(station_id: str) -> str:
    """`bikeguard/v1/stations/{id}/confirmations`: backend to one gateway, the batch_seqs it has stored."""
    return f"{ROOT}/stations/{_station(station_id)}/{CONFIRMATIONS}"


def requests_topic(station_id: str) -> str:
    """`bikeguard/v1/stations/{id}/requests`: backend to one gateway, the batch_seqs it is missing."""
    return f"{ROOT}/stations/{_station(station_id)}/{REQUESTS}"


def command_topic(station_id: str, name: str) -> str:
    """`bikeguard/v1/stations/{id}/commands/{name}`: backend to one gateway."""
    return f"{ROOT}/stations/{_station(station_id)}/commands/{name}"


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
    return StationTopic(_station(m.group(1)), m.group(2))
