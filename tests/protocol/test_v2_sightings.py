"""A v2 chip's passage and alert on the wire: the beacons heard instead of a tag id (protocol/messages.py)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from protocol.messages import Alert, MessageError, SightingBatch, parse_batch_rows

BEACON = "02" + "5a" * 8 + "01020304" + "00" + "a1b2c3d4"
V1: dict[str, Any] = {
    "tag_id": "00C0FFEE",
    "first_seen_at": "2026-11-30T08:00:00Z",
    "last_seen_at": "2026-11-30T08:00:06Z",
    "beacons": 4,
    "peak_rssi_dbm": -61,
    "antenna": 1,
    "flags": 0,
}
V2: dict[str, Any] = {k: v for k, v in V1.items() if k != "tag_id"} | {"heard": [BEACON, BEACON[:-2] + "ff"]}


def batch(*sightings: dict[str, Any]) -> bytes:
    return orjson.dumps(
        {"v": 1, "station_id": "st-1", "batch_seq": 3, "sent_at": "2026-11-30T08:00:10Z", "sightings": list(sightings)}
    )


def test_v1_and_v2_sightings_travel_in_one_batch_and_both_parsers_read_them_alike() -> None:
    raw = batch(V1, V2)
    rows = parse_batch_rows(raw)["sightings"]
    assert rows[0]["tag_id"] == "00C0FFEE" and "heard" not in rows[0]
    assert rows[1]["heard"] == V2["heard"] and "tag_id" not in rows[1]
    model = SightingBatch.parse(raw)
    assert [s.tag_id for s in model.sightings] == ["00C0FFEE", None]
    assert model.sightings[1].heard == V2["heard"]
    assert orjson.loads(model.to_json())["sightings"] == [V1, V2]  # each names its chip in its one way


@pytest.mark.parametrize(
    ("sighting", "where"),
    [
        ({k: v for k, v in V2.items() if k != "heard"}, "sightings.0.tag_id"),  # names no chip at all
        (V2 | {"heard": []}, "sightings.0.heard"),
        (V2 | {"heard": [BEACON] * 3}, "sightings.0.heard"),  # the first and the last beacon, no more
        (V2 | {"heard": ["01" + BEACON[2:]]}, "sightings.0.heard.0"),  # not format version 2
        (V2 | {"heard": [BEACON.upper()]}, "sightings.0.heard.0"),
        (V2 | {"heard": [BEACON + "00"]}, "sightings.0.heard.0"),
    ],
)
def test_a_v2_sighting_that_is_not_one_is_refused_with_where_it_is(sighting: dict[str, Any], where: str) -> None:
    raw = batch(sighting)
    with pytest.raises(MessageError) as info:
        parse_batch_rows(raw)
    assert info.value.reason.startswith(f"{where}:") or info.value.reason.startswith(f"{where}.")


def test_the_model_refuses_a_sighting_with_both_a_tag_id_and_beacons() -> None:
    with pytest.raises(MessageError, match="exactly one of tag_id"):
        SightingBatch.parse(batch(V2 | {"tag_id": "00C0FFEE"}))


def test_a_v2_alert_carries_the_beacon_that_raised_it_and_no_tag_id() -> None:
    alert = Alert.parse(
        orjson.dumps(
            {
                "v": 1,
                "station_id": "st-1",
                "kind": "hotlist_hit",
                "heard": BEACON,
                "seen_at": "2026-11-30T08:00:00Z",
                "rssi_dbm": -60,
                "antenna": 0,
                "hotlist_version": 9,
            }
        )
    )
    assert alert.tag_id is None and alert.heard == BEACON
    assert "tag_id" not in orjson.loads(alert.to_json())
    with pytest.raises(ValueError, match="exactly one of tag_id"):
        Alert(station_id="st-1", kind="tamper", seen_at=alert.seen_at, rssi_dbm=-60, antenna=0)
