"""The reader's position on the wire (issue 16): optional on a sighting and an alert, validated strictly, and
messages without it (every message before issue 16, every fixed station's) read as before."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from protocol.messages import Alert, MessageError, ReaderPosition, Sighting, SightingBatch, parse_batch_rows

# As docs/architecture.md shows a batch, and as every gateway sent it before issue 16.
OLD_BATCH = (
    b'{"v": 1, "station_id": "st-006", "batch_seq": 1795369235123, "sent_at": "2026-11-22T17:14:56.100Z",'
    b' "sightings": [{"tag_id": "52D31E1B", "first_seen_at": "2026-11-22T17:14:41.2Z",'
    b' "last_seen_at": "2026-11-22T17:14:48.9Z", "beacons": 4, "peak_rssi_dbm": -61, "antenna": 1, "flags": 4}]}'
)
MOBILE_BATCH = (
    b'{"v": 1, "station_id": "patrol-1", "batch_seq": 7, "sent_at": "2026-11-22T17:14:56.100Z",'
    b' "sightings": [{"tag_id": "52D31E1B", "first_seen_at": "2026-11-22T17:14:41.2Z",'
    b' "last_seen_at": "2026-11-22T17:14:48.9Z", "beacons": 4, "peak_rssi_dbm": -61, "antenna": 1, "flags": 4,'
    b' "position": {"lat": 30.274123, "lon": 120.155987, "fix_at": "2026-11-22T17:14:45Z"}},'
    b' {"tag_id": "52D31E1C", "first_seen_at": "2026-11-22T17:14:41.2Z",'
    b' "last_seen_at": "2026-11-22T17:14:48.9Z", "beacons": 1, "peak_rssi_dbm": -80, "antenna": 0, "flags": 0}]}'
)


def test_an_old_batch_without_positions_reads_as_before_in_both_views() -> None:
    rows = parse_batch_rows(OLD_BATCH)
    assert "position" not in rows["sightings"][0]
    batch = SightingBatch.parse(OLD_BATCH)
    assert batch.sightings[0].position is None
    # And a fixed station's batch is written without the key: the bytes an old backend reads.
    assert b"position" not in batch.to_json()


def test_a_mobile_batch_carries_positions_on_the_sightings_that_have_a_fix() -> None:
    rows = parse_batch_rows(MOBILE_BATCH)
    first, second = rows["sightings"]
    assert first["position"]["lat"] == 30.274123 and first["position"]["fix_at"] == datetime(
        2026, 11, 22, 17, 14, 45, tzinfo=UTC
    )
    assert "position" not in second
    batch = SightingBatch.parse(MOBILE_BATCH)
    assert batch.sightings[0].position == ReaderPosition(
        lat=30.274123, lon=120.155987, fix_at=datetime(2026, 11, 22, 17, 14, 45, tzinfo=UTC)
    )
    assert SightingBatch.parse(batch.to_json()) == batch


@pytest.mark.parametrize(
    "position",
    [
        {"lat": 91.0, "lon": 120.0, "fix_at": "2026-11-22T17:14:45Z"},
        {"lat": 30.0, "lon": -180.5, "fix_at": "2026-11-22T17:14:45Z"},
        {"lat": "30.0", "lon": 120.0, "fix_at": "2026-11-22T17:14:45Z"},
        {"lat": 30.0, "lon": 120.0},
        {"lat": 30.0, "lon": 120.0, "fix_at": 1764406800},
        {"lat": 30.0, "lon": 120.0, "fix_at": "2026-11-22T17:14:45"},
        [30.0, 120.0],
    ],
)
def test_a_bad_position_is_refused_in_both_views(position: object) -> None:
    batch = orjson.loads(MOBILE_BATCH)
    batch["sightings"][0]["position"] = position
    raw = orjson.dumps(batch)
    with pytest.raises(MessageError, match="position"):
        parse_batch_rows(raw)
    with pytest.raises(MessageError, match="position"):
        SightingBatch.parse(raw)


def test_an_alert_carries_the_position_only_when_it_has_one() -> None:
    at = datetime(2026, 11, 22, 17, 14, 45, tzinfo=UTC)
    fixed = Alert(station_id="st-1", kind="hotlist_hit", tag_id="52D31E1B", seen_at=at, rssi_dbm=-60, antenna=0)
    assert b"position" not in fixed.to_json()
    assert Alert.parse(fixed.to_json()) == fixed
    mobile = fixed.model_copy(update={"position": ReaderPosition(lat=30.0, lon=120.0, fix_at=at)})
    assert Alert.parse(mobile.to_json()) == mobile


def test_a_sighting_model_without_position_equals_one_built_before_issue_16() -> None:
    fields = orjson.loads(OLD_BATCH)["sightings"][0]
    assert Sighting.model_validate_json(orjson.dumps(fields)).position is None
