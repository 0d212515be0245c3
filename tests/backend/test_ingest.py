"""Ingest against a real broker and a real PostgreSQL: exactly once, nothing lost, bad input kept."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import psycopg

from protocol import topics
from tests import factories
from tests.engine import ENGINE


def wait_until(check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Poll check until it is true or fail after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def count(url: str, sql: str, *args: object) -> int:
    with psycopg.connect(url) as conn:
        return int(conn.execute(sql, args).fetchone()[0])  # type: ignore[index]


def ours(topic_prefix: str) -> str:
    """LIKE pattern for this test's station topics: the shared broker also hands the ingest other tests'
    retained messages (gateway statuses), rejected here as unknown stations."""
    return f"{topics.ROOT}/stations/{topic_prefix}-%"


def test_batches_are_stored_once_even_when_redelivered(ingest, publish, database_url, topic_prefix):
    station = f"{topic_prefix}-a"
    with psycopg.connect(database_url) as conn:
        factories.station(conn, station)
    first = factories.batch(station, 1, [1, 2, 3])
    topic = topics.station_topic(station, "sightings")
    publish(topic, first.to_json())
    publish(topic, first.to_json())  # what QoS 1 redelivery looks like
    publish(topic, factories.batch(station, 2, [4]).to_json())
    wait_until(lambda: count(database_url, "SELECT count(*) FROM sightings WHERE station_id = %s", station) >= 4)
    wait_until(lambda: ingest.counters.batches_repeated >= 1)
    assert count(database_url, "SELECT count(*) FROM sightings WHERE station_id = %s", station) == 4
    assert ingest.counters.batches_repeated == 1


def test_malformed_payload_is_kept_with_reason_and_valid_batches_still_land(
    ingest, publish, database_url, topic_prefix
):
    station = f"{topic_prefix}-b"
    with psycopg.connect(database_url) as conn:
        factories.station(conn, station)
    topic = topics.station_topic(station, "sightings")
    publish(topic, b"{not json")
    publish(topic, factories.batch(f"{topic_prefix}-other", 1, [9]).to_json())  # claims another station
    publish(topic, factories.batch(station, 1, [5, 6]).to_json())
    wait_until(lambda: count(database_url, "SELECT count(*) FROM sightings WHERE station_id = %s", station) >= 2)
    with psycopg.connect(database_url) as conn:
        rejects = conn.execute(
            "SELECT reason, raw FROM rejected_messages WHERE topic LIKE %s ORDER BY rejected_id", (ours(topic_prefix),)
        ).fetchall()
    assert len(rejects) == 2
    assert bytes(rejects[0][1]) == b"{not json"
    assert "does not match topic" in rejects[1][0]
    assert count(database_url, "SELECT count(*) FROM sightings WHERE station_id = %s", station) == 2


def test_stolen_chip_seen_raises_one_alarm_that_later_sightings_update(ingest, publish, database_url, topic_prefix):
    station = f"{topic_prefix}-c"
    with psycopg.connect(database_url) as conn:
        factories.station(conn, station)
        stolen = factories.bike(conn, 0xBEEF01)
        factories.bike(conn, 0xBEEF02)
        factories.theft(conn, stolen)
    topic = topics.station_topic(station, "sightings")
    publish(topic, factories.batch(station, 1, [0xBEEF01, 0xBEEF02]).to_json())
    publish(topic, factories.batch(station, 2, [0xBEEF01]).to_json())
    wait_until(lambda: count(database_url, "SELECT count(*) FROM sightings WHERE station_id = %s", station) >= 3)
    with psycopg.connect(database_url) as conn:
        alarms = conn.execute("SELECT kind, tag_id, sightings, state FROM alarms").fetchall()
    assert alarms == [("stolen_chip_seen", 0xBEEF01, 2, "active")]


def test_unknown_and_decommissioned_stations_are_refused_with_one_warning_per_station(
    ingest, publish, database_url, topic_prefix, caplog
):
    known, unknown, retired = f"{topic_prefix}-k", f"{topic_prefix}-u", f"{topic_prefix}-r"
    with psycopg.connect(database_url) as conn:
        factories.station(conn, known)
        factories.station(conn, retired)
        conn.execute("UPDATE stations SET lifecycle = 'decommissioned' WHERE station_id = %s", (retired,))
    caplog.set_level(logging.WARNING, logger="backend.ingest.stations")
    for seq in range(1, 6):
        publish(topics.station_topic(unknown, "sightings"), factories.batch(unknown, seq, [seq]).to_json())
    publish(topics.station_topic(retired, "sightings"), factories.batch(retired, 1, [7]).to_json())
    publish(topics.station_topic(known, "sightings"), factories.batch(known, 1, [8]).to_json())
    rejected = "SELECT count(*) FROM rejected_messages WHERE topic LIKE %s"
    wait_until(lambda: count(database_url, rejected, ours(topic_prefix)) >= 6)
    wait_until(lambda: count(database_url, "SELECT count(*) FROM sightings") >= 1)
    with psycopg.connect(database_url) as conn:
        reasons = [
            r[0]
            for r in conn.execute(
                "SELECT reason FROM rejected_messages WHERE topic LIKE %s ORDER BY rejected_id", (ours(topic_prefix),)
            )
        ]
        stored = conn.execute("SELECT station_id FROM sightings").fetchall()
        [every_unknown] = conn.execute(
            "SELECT count(*) FROM rejected_messages WHERE reason LIKE 'unknown station %'"
        ).fetchone() or [0]
    assert reasons == [f"unknown station {unknown}"] * 5 + [f"unknown station {retired}"]
    assert stored == [(known,)]
    assert ingest.counters.rejected["unknown station"] == every_unknown  # each one counted and kept
    warnings = [r.getMessage() for r in caplog.records if "refusing messages from station" in r.getMessage()]
    assert len([w for w in warnings if unknown in w]) == 1
    assert len([w for w in warnings if retired in w]) == 1


def test_a_station_registered_just_before_it_publishes_is_accepted(ingest, publish, database_url, topic_prefix):
    early, late = f"{topic_prefix}-e", f"{topic_prefix}-l"
    with psycopg.connect(database_url) as conn:
        factories.station(conn, early)
    publish(topics.station_topic(early, "sightings"), factories.batch(early, 1, [1]).to_json())
    stored = "SELECT count(*) FROM sightings WHERE station_id = %s"
    wait_until(lambda: count(database_url, stored, early) == 1)  # the cache is loaded now, without `late`
    with psycopg.connect(database_url) as conn:
        factories.station(conn, late)
    publish(topics.station_topic(late, "sightings"), factories.batch(late, 1, [2]).to_json())
    wait_until(lambda: count(database_url, stored, late) == 1)
    assert count(database_url, "SELECT count(*) FROM rejected_messages WHERE topic LIKE %s", ours(topic_prefix)) == 0


def test_known_stations_are_read_once_per_refresh_interval_not_per_message(database_url):
    from backend.ingest.stations import KnownStations

    now = [100.0]
    known = KnownStations(refresh_s=5, warn_every_s=60, clock=lambda: now[0])
    with psycopg.connect(database_url) as conn:
        factories.station(conn, "st-cache")
        for _ in range(100):
            assert known.refused(conn, {"st-cache"}) == set()
        assert known.refreshes == 1 and known.lookups == 0
        conn.execute("UPDATE stations SET lifecycle = 'decommissioned' WHERE station_id = 'st-cache'")
        assert known.refused(conn, {"st-cache"}) == set()  # still cached
        now[0] += 5
        assert known.refused(conn, {"st-cache", "st-nobody"}) == {"st-cache", "st-nobody"}
        assert known.refreshes == 2 and known.lookups == 1


def test_unknown_station_warning_repeats_only_after_a_minute(caplog):
    from backend.ingest.stations import KnownStations

    now = [0.0]
    known = KnownStations(clock=lambda: now[0])
    caplog.set_level(logging.WARNING, logger="backend.ingest.stations")
    for t in (0, 10, 59, 60, 61, 119, 120):
        now[0] = t
        known.warn("st-x", "bikeguard/v1/stations/st-x/sightings")
    known.warn("st-y", "bikeguard/v1/stations/st-y/status")
    assert [r.levelno for r in caplog.records] == [logging.WARNING] * 4
    assert sum("st-x" in r.getMessage() for r in caplog.records) == 3


def test_maintenance_creates_days_ahead_and_retention_drops_whole_old_days(database_url):
    from datetime import timedelta

    from backend.db.migrate import maintain
    from protocol.messages import utcnow

    with psycopg.connect(database_url) as conn:
        old = utcnow() - timedelta(days=40)
        conn.execute("SELECT bikeguard_ensure_partitions(%s::date, %s::date)", (old.date(), old.date()))
        conn.execute("INSERT INTO sightings VALUES (%s, %s, 'st-old', 1, 1, -60, 0, 0, 1)", (old, old))
    created, dropped = maintain(database_url, days_ahead=10, retention_days=30)
    # Plain PostgreSQL: days 8-10 ahead were missing and are made; TimescaleDB makes its chunks as rows come.
    # Either way the 40-day-old day (a partition, a chunk) goes.
    assert (created, dropped) == ((3, 1) if ENGINE == "postgresql" else (0, 1))
    assert count(database_url, "SELECT count(*) FROM sightings WHERE station_id = 'st-old'") == 0
