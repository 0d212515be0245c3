"""The ingest's time window covers a mobile reader's fix times: a fix far ahead (a receiver or clock gone wrong)
would freeze the reader's place, since it moves only to a newer fix."""

from __future__ import annotations

from datetime import timedelta

from backend.ingest.consumer import validate
from backend.ingest.window import TimeWindow
from protocol import topics
from protocol.messages import Alert, ReaderPosition, utcnow
from tests import factories


def test_a_fix_time_far_ahead_is_refused_like_any_time_of_a_station() -> None:
    now = utcnow()
    batch = factories.batch("patrol-1", 1, [0x61], at=now)
    topic = topics.station_topic("patrol-1", "sightings")
    for fix_at, refused in ((now - timedelta(seconds=2), False), (now + timedelta(days=365), True)):
        position = ReaderPosition(lat=30.0, lon=120.0, fix_at=fix_at)
        placed = batch.model_copy(update={"sightings": [batch.sightings[0].model_copy(update={"position": position})]})
        checked = validate(topic, placed.to_json(), TimeWindow())
        assert isinstance(checked, str) == refused, checked
        if refused:
            assert str(checked).startswith("time window: sightings.0.position.fix_at")
        alert = Alert(
            station_id="patrol-1",
            kind="hotlist_hit",
            tag_id="00000061",
            seen_at=now,
            rssi_dbm=-60,
            antenna=0,
            position=position,
        )
        checked = validate(topics.station_topic("patrol-1", "alerts"), alert.to_json(), TimeWindow())
        assert isinstance(checked, str) == refused, checked
