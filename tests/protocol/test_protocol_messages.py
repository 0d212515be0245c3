"""protocol/messages.py: payloads validate at the edge; failures carry a readable reason and the raw bytes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest

from protocol.messages import (
    VERSION,
    Alert,
    Hotlist,
    MessageError,
    Sighting,
    SightingBatch,
    StationStatus,
    dumps,
    parse_tag,
    utcnow,
)

NOW = datetime(2025, 3, 1, 8, 30, tzinfo=UTC)


def batch_payload(**changes: object) -> dict[str, object]:
    """A valid sighting batch as the gateway sends it, with some fields changed."""
    payload: dict[str, object] = {
        "v": 1,
        "station_id": "st-001",
        "batch_seq": 7,
        "sent_at": "2025-03-01T08:30:05Z",
        "sightings": [
            {
                "tag_id": "0A1B2C3D",
                "first_seen_at": "2025-03-01T08:29:40Z",
                "last_seen_at": "2025-03-01T08:30:01.250000+00:00",
                "beacons": 12,
                "peak_rssi_dbm": -58,
                "antenna": 1,
                "flags": 4,
            }
        ],
    }
    payload.update(changes)
    return payload


def test_valid_sighting_batch_parses() -> None:
    batch = SightingBatch.parse(orjson.dumps(batch_payload()))
    assert batch.v == VERSION == 1
    assert batch.station_id == "st-001" and batch.batch_seq == 7
    (s,) = batch.sightings
    assert s.tag_id == "0A1B2C3D" and parse_tag(s.tag_id) == 0x0A1B2C3D
    assert s.first_seen_at == datetime(2025, 3, 1, 8, 29, 40, tzinfo=UTC)
    assert s.last_seen_at.utcoffset() == timedelta(0)
    assert (s.beacons, s.peak_rssi_dbm, s.antenna, s.flags) == (12, -58, 1, 4)


def test_sighting_batch_round_trips_through_its_json() -> None:
    batch = SightingBatch.parse(orjson.dumps(batch_payload()))
    assert SightingBatch.parse(batch.to_json()) == batch


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    batch = SightingBatch.parse(orjson.dumps(batch_payload(gateway_build="2.1.0")))
    assert batch.batch_seq == 7


def test_valid_alert_status_and_hotlist_parse() -> None:
    alert = Alert(
        station_id="st-002",
        kind="hotlist_hit",
        tag_id="FFFFFFFF",
        seen_at=NOW,
        rssi_dbm=-128,
        antenna=0,
        hotlist_version=3,
    )
    assert Alert.parse(alert.to_json()) == alert
    status = StationStatus(station_id="st-002", state="offline")
    assert StationStatus.parse(status.to_json()) == status
    hotlist = Hotlist(version=12, issued_at=NOW, tags=["00000000", "0A1B2C3D"])
    assert Hotlist.parse(hotlist.to_json()) == hotlist


@pytest.mark.parametrize("raw", [b"", b"{", b"not json", b'{"v": 1,}', b"\xff\xfe"])
def test_bad_json_is_a_message_error_with_the_raw_bytes(raw: bytes) -> None:
    with pytest.raises(MessageError) as info:
        SightingBatch.parse(raw)
    assert info.value.raw == raw
    assert info.value.reason and str(info.value) == info.value.reason


@pytest.mark.parametrize("version", [0, 2, "1", None])
def test_unknown_version_is_refused(version: object) -> None:
    raw = orjson.dumps(batch_payload(v=version))
    with pytest.raises(MessageError) as info:
        SightingBatch.parse(raw)
    assert info.value.reason.startswith("v:")
    assert info.value.raw == raw


@pytest.mark.parametrize("tag_id", ["0A1B2C3", "0A1B2C3D0", "GGGGGGGG", "", "-0000001", "0x123456", 123])
def test_bad_tag_id_is_refused_with_where_it_is(tag_id: object) -> None:
    sightings = batch_payload()["sightings"]
    assert isinstance(sightings, list)
    raw = orjson.dumps(batch_payload(sightings=[{**sightings[0], "tag_id": tag_id}]))
    with pytest.raises(MessageError) as info:
        SightingBatch.parse(raw)
    assert info.value.reason.startswith("sightings.0.tag_id:")
    assert info.value.raw == raw


def test_bad_tag_id_in_alert_and_hotlist_is_refused() -> None:
    with pytest.raises(MessageError, match="tag_id"):
        Alert.parse(
            b'{"v":1,"station_id":"st-1","kind":"tamper","tag_id":"XYZ","seen_at":"2025-03-01T08:30:00Z",'
            b'"rssi_dbm":-50,"antenna":0}'
        )
    with pytest.raises(MessageError, match="tags"):
        Hotlist.parse(b'{"v":2,"version":1,"issued_at":"2025-03-01T08:30:00Z","tags":["12345678","nope"]}')


@pytest.mark.parametrize(
    ("version", "issued_at", "reason"),
    [
        (2**63 - 1, "2026-11-29T10:00:00Z", "version"),
        (2**63, "2026-11-29T10:00:00Z", "version"),
        (2**53 + 1, "2026-11-29T10:00:00Z", "version"),
        (-1, "2026-11-29T10:00:00Z", "version"),
        # More than a day ahead of its own clock (versions are that clock in milliseconds, migration 0006).
        (1_764_410_400_000 + 86_400_001, "2025-11-29T10:00:00Z", "ahead"),
    ],
)
def test_hotlist_version_beyond_what_the_backend_makes_is_refused(version: int, issued_at: str, reason: str) -> None:
    raw = orjson.dumps({"v": 2, "version": version, "issued_at": issued_at, "tags": []})
    with pytest.raises(MessageError, match=reason):
        Hotlist.parse(raw)


def test_unsigned_hotlist_of_contract_v1_is_refused_and_signature_covers_every_field() -> None:
    with pytest.raises(MessageError, match="v: Input should be 2"):
        Hotlist.parse(b'{"v":1,"version":1,"issued_at":"2025-03-01T08:30:00Z","tags":[]}')
    hotlist = Hotlist(version=12, issued_at=NOW, tags=["0000BEEF", "00C0FFEE"])
    assert Hotlist.parse(hotlist.to_json()).signed_bytes() == hotlist.signed_bytes()
    for change in ({"version": 13}, {"tags": ["0000BEEF"]}, {"issued_at": NOW.replace(second=1)}):
        assert hotlist.model_copy(update=change).signed_bytes() != hotlist.signed_bytes()


@pytest.mark.parametrize("field", ["sent_at"])
def test_naive_datetime_is_refused(field: str) -> None:
    raw = orjson.dumps(batch_payload(**{field: "2025-03-01T08:30:05"}))
    with pytest.raises(MessageError) as info:
        SightingBatch.parse(raw)
    assert info.value.reason.startswith(f"{field}:")
    assert "timezone" in info.value.reason.lower()
    assert info.value.raw == raw


def test_naive_datetime_inside_a_sighting_is_refused() -> None:
    sightings = batch_payload()["sightings"]
    assert isinstance(sightings, list)
    raw = orjson.dumps(batch_payload(sightings=[{**sightings[0], "first_seen_at": "2025-03-01T08:29:40"}]))
    with pytest.raises(MessageError, match=r"sightings\.0\.first_seen_at"):
        SightingBatch.parse(raw)


@pytest.mark.parametrize(
    ("changes", "where"),
    [
        ({"station_id": "ST 1"}, "station_id"),
        ({"batch_seq": -1}, "batch_seq"),
        ({"sightings": "none"}, "sightings"),
    ],
)
def test_out_of_contract_fields_are_refused_with_their_name(changes: dict[str, object], where: str) -> None:
    with pytest.raises(MessageError, match=f"^{where}"):
        SightingBatch.parse(orjson.dumps(batch_payload(**changes)))


def test_error_reason_counts_every_problem() -> None:
    with pytest.raises(MessageError, match=r"\(4 errors\)"):
        SightingBatch.parse(b'{"v":1}')


def test_sighting_rssi_outside_an_i8_is_refused() -> None:
    with pytest.raises(ValueError):
        Sighting(
            tag_id="0A1B2C3D", first_seen_at=NOW, last_seen_at=NOW, beacons=1, peak_rssi_dbm=-129, antenna=0, flags=0
        )


def test_utcnow_is_timezone_aware_utc() -> None:
    assert utcnow().utcoffset() == timedelta(0)


def test_dumps_is_compact_json() -> None:
    assert dumps({"v": 1, "at": NOW}) == b'{"v":1,"at":"2025-03-01T08:30:00+00:00"}'
