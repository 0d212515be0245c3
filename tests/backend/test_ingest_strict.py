"""Strict at the edge, through a real broker and PostgreSQL: one type per field, times in a window around the receive
time, and a reused batch_seq with other content kept as a conflict (the stored batch unchanged)."""

from __future__ import annotations

import hashlib
import logging
from datetime import datetime, timedelta

import orjson
import psycopg
import pytest

from backend.ingest import writer
from backend.ingest.consumer import Ingest, validate
from backend.ingest.rejects import KINDS, kind_of
from backend.ingest.window import TimeWindow
from protocol import topics
from protocol.messages import Alert, StationStatus, utcnow
from tests import factories
from tests.backend.test_ingest import count, ours, wait_until


def rejects_of(database_url: str, topic_prefix: str) -> list[tuple[str, str, bytes]]:
    """This test's rejected messages: (kind, reason, raw), oldest first."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT kind, reason, raw FROM rejected_messages WHERE topic LIKE %s ORDER BY rejected_id",
            (ours(topic_prefix),),
        ).fetchall()
    return [(kind, reason, bytes(raw)) for kind, reason, raw in rows]


def tampered(station: str, seq: int, **changes: object) -> bytes:
    """A valid batch of one sighting as JSON, with some of its top-level fields replaced."""
    payload = orjson.loads(factories.batch(station, seq, [0xA1]).to_json())
    payload.update(changes)
    return orjson.dumps(payload)


def test_values_of_another_json_type_are_refused_with_their_reason(ingest, publish, database_url, topic_prefix):
    station = f"{topic_prefix}-t"
    with psycopg.connect(database_url) as conn:
        factories.station(conn, station)
    topic = topics.station_topic(station, "sightings")
    at = utcnow().isoformat()
    bad = [
        (tampered(station, 1, batch_seq=True), "batch_seq:"),
        (tampered(station, 2, batch_seq="11"), "batch_seq:"),
        (tampered(station, 3, batch_seq=12.0), "batch_seq:"),
        (tampered(station, 4, sent_at=int(utcnow().timestamp())), "sent_at:"),
        (tampered(station, 5, v=1.0), "v:"),
    ]
    for raw, _ in bad:
        publish(topic, raw)
    publish(topic, tampered(station, 6, sent_at=at))  # the same batch, well formed, still lands
    wait_until(lambda: len(rejects_of(database_url, topic_prefix)) >= len(bad))
    wait_until(lambda: count(database_url, "SELECT count(*) FROM sightings WHERE station_id = %s", station) == 1)
    rejects = rejects_of(database_url, topic_prefix)
    assert [(kind, raw) for kind, _, raw in rejects] == [("invalid", raw) for raw, _ in bad]
    for (_, reason, _), (_, where) in zip(rejects, bad, strict=True):
        assert reason.startswith(where)
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT batch_seq FROM ingested_batches WHERE station_id = %s", (station,)).fetchall() == [
            (6,)
        ]
    assert ingest.counters.rejected["invalid"] >= len(bad)


def test_sightings_and_statuses_far_in_the_future_are_refused_with_the_reason(
    ingest, publish, database_url, topic_prefix, caplog
):
    station = f"{topic_prefix}-f"
    caplog.set_level(logging.WARNING, logger="backend.ingest.consumer")
    with psycopg.connect(database_url) as conn:
        factories.station(conn, station)
    sightings = topics.station_topic(station, "sightings")
    now = utcnow()
    payload = orjson.loads(factories.batch(station, 1, [0xB1]).to_json())
    payload["sightings"][0]["last_seen_at"] = "9999-12-31T23:59:59Z"
    year_9999 = orjson.dumps(payload)
    year_2100 = factories.batch(station, 2, [0xB2], at=datetime(2100, 1, 1, tzinfo=now.tzinfo)).to_json()
    status_2099 = StationStatus(station_id=station, state="online", sent_at=datetime(2099, 6, 1, tzinfo=now.tzinfo))
    publish(sightings, year_9999)
    publish(sightings, year_2100)
    publish(topics.station_topic(station, "status"), status_2099.to_json())
    publish(sightings, factories.batch(station, 3, [0xB3]).to_json())  # a clock that is right
    wait_until(lambda: len(rejects_of(database_url, topic_prefix)) >= 3)
    wait_until(lambda: count(database_url, "SELECT count(*) FROM sightings WHERE station_id = %s", station) == 1)
    rejects = rejects_of(database_url, topic_prefix)
    assert [kind for kind, _, _ in rejects] == ["time window"] * 3
    assert rejects[0][1] == (
        "time window: sightings.0.last_seen_at 9999-12-31T23:59:59+00:00 is more than 300 s after the receive time"
    )
    assert rejects[1][1].startswith("time window: sent_at 2100-01-01T00:00:00+00:00 is more than 300 s after")
    assert rejects[2][1].startswith("time window: sent_at 2099-06-01T00:00:00+00:00 is more than 300 s after")
    assert [raw for _, _, raw in rejects] == [year_9999, year_2100, status_2099.to_json()]
    assert count(database_url, "SELECT count(*) FROM station_status WHERE station_id = %s", station) == 0
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT tag_id FROM sightings WHERE station_id = %s", (station,)).fetchall() == [(0xB3,)]
    assert ingest.counters.rejected["time window"] >= 3
    # A clock gone wrong sends all the time: one warning per topic a minute, every message kept and counted.
    warned = [r.getMessage() for r in caplog.records if "time window: " in r.getMessage() and station in r.getMessage()]
    assert len(warned) == 2


def test_a_spooled_sighting_days_old_is_stored_and_one_older_than_the_window_is_refused(
    ingest, publish, database_url, topic_prefix
):
    station = f"{topic_prefix}-o"
    with psycopg.connect(database_url) as conn:
        factories.station(conn, station)
    topic = topics.station_topic(station, "sightings")
    now = utcnow()
    publish(topic, factories.batch(station, 1, [0xC1], at=now - timedelta(days=4)).to_json())  # a weekend's outage
    publish(topic, factories.batch(station, 2, [0xC2], at=now - timedelta(days=91)).to_json())
    wait_until(lambda: len(rejects_of(database_url, topic_prefix)) >= 1)
    wait_until(lambda: count(database_url, "SELECT count(*) FROM sightings WHERE station_id = %s", station) == 1)
    [(kind, reason, _)] = rejects_of(database_url, topic_prefix)
    assert kind == "time window" and "is more than 90 days before the receive time" in reason


def test_a_redelivered_batch_is_harmless_and_a_conflicting_one_is_kept_while_the_stored_one_stays(
    ingest: Ingest, publish, database_url, topic_prefix, caplog
):
    station = f"{topic_prefix}-c"
    with psycopg.connect(database_url) as conn:
        factories.station(conn, station)
    topic = topics.station_topic(station, "sightings")
    caplog.set_level(logging.WARNING, logger="backend.ingest.consumer")
    original = factories.batch(station, 1, [0xD1, 0xD2]).to_json()
    publish(topic, original)
    wait_until(lambda: count(database_url, "SELECT count(*) FROM sightings WHERE station_id = %s", station) == 2)
    publish(topic, original)  # a redelivery: byte for byte the same
    wait_until(lambda: ingest.counters.batches_repeated >= 1)
    others = [factories.batch(station, 1, [0xEE]).to_json(), factories.batch(station, 1, [0xEF]).to_json()]
    for other in others:
        publish(topic, other)
    wait_until(lambda: len(rejects_of(database_url, topic_prefix)) >= 2)
    rejects = rejects_of(database_url, topic_prefix)
    assert [(kind, raw) for kind, _, raw in rejects] == [("conflict", raw) for raw in others]
    assert rejects[0][1].startswith(f"conflict: batch_seq 1 of station {station} is already stored with other content")
    with psycopg.connect(database_url) as conn:
        tags = conn.execute("SELECT tag_id FROM sightings WHERE station_id = %s ORDER BY tag_id", (station,)).fetchall()
        [stored_hash] = conn.execute(
            "SELECT payload_sha256 FROM ingested_batches WHERE station_id = %s", (station,)
        ).fetchone() or [None]
    assert tags == [(0xD1,), (0xD2,)]
    assert bytes(stored_hash) == hashlib.sha256(original).digest()
    assert ingest.counters.batches_repeated == 1
    assert ingest.counters.batches_conflicting == 2
    assert ingest.counters.rejected["conflict"] == 2
    warnings = [r.getMessage() for r in caplog.records if r.getMessage().startswith("conflict: ")]
    assert len(warnings) == 1  # once per station per minute, each conflict kept and counted


def test_two_contents_for_one_batch_seq_in_one_write_keep_the_first_and_the_other_as_a_conflict(database_url):
    station = "st-conflict"
    topic = topics.station_topic(station, "sightings")
    first, other = factories.batch(station, 5, [0x51]).to_json(), factories.batch(station, 5, [0x52]).to_json()
    checked = [validate(topic, raw) for raw in (first, other, first)]
    batches = [c[1] for c in checked if not isinstance(c, str)]
    with psycopg.connect(database_url) as conn, conn.transaction():
        factories.station(conn, station)
        result = writer.write_batches(conn, batches)  # type: ignore[arg-type]
    assert (result.batches_new, result.batches_repeated, result.sightings) == (1, 1, 1)
    [(conflict_topic, reason, raw)] = result.conflicts
    assert (conflict_topic, raw, kind_of(reason)) == (topic, other, "conflict")


@pytest.mark.parametrize(
    ("shift", "refused"),
    [(timedelta(minutes=4), False), (timedelta(minutes=6), True), (-timedelta(days=89), False)],
)
def test_the_window_is_measured_from_the_receive_time(shift: timedelta, refused: bool) -> None:
    station = "st-window"
    raw = factories.batch(station, 1, [0x61], at=utcnow() + shift).to_json()
    checked = validate(topics.station_topic(station, "sightings"), raw, TimeWindow())
    assert isinstance(checked, str) == refused
    if refused:
        assert kind_of(checked) == "time window"  # type: ignore[arg-type]


def test_every_reject_reason_the_ingest_writes_has_a_kind_from_the_fixed_set() -> None:
    station = "st-kinds"
    topic = topics.station_topic(station, "sightings")
    reasons = [
        validate(topic, b"{not json"),
        validate(topics.station_topic("other", "sightings"), factories.batch(station, 1, [1]).to_json()),
        validate(topic, factories.batch(station, 1, [1], at=utcnow() + timedelta(days=1)).to_json()),
        validate(f"{topics.ROOT}/stations/BAD ID/sightings", b"{}"),
    ]
    assert [kind_of(r) for r in reasons if isinstance(r, str)] == [
        "invalid",
        "station mismatch",
        "time window",
        "topic",
    ]
    assert set(KINDS) == {
        "invalid",
        "topic",
        "station mismatch",
        "unknown station",
        "time window",
        "conflict",
        "database",
    }


def test_an_alert_from_a_clock_ahead_is_refused_and_a_last_will_without_a_time_passes() -> None:
    station = "st-alert"
    alert = Alert(
        station_id=station,
        kind="tamper",
        tag_id="0A1B2C3D",
        seen_at=utcnow() + timedelta(hours=1),
        rssi_dbm=-50,
        antenna=0,
    )
    refused = validate(topics.station_topic(station, "alerts"), alert.to_json())
    assert isinstance(refused, str) and refused.startswith("time window: seen_at ")
    will = StationStatus(station_id=station, state="offline")
    assert not isinstance(validate(topics.station_topic(station, "status"), will.to_json()), str)


def test_the_window_behind_is_the_shorter_of_the_age_limit_and_the_retention_period(database_url: str) -> None:
    base = factories.settings(database_url)
    assert TimeWindow.of(base).behind == timedelta(days=90)
    short = base.model_copy(update={"retention_days": 30, "ingest_max_clock_skew_s": 60.0})
    assert TimeWindow.of(short) == TimeWindow(ahead=timedelta(seconds=60), behind=timedelta(days=30))
