"""A stolen chip's alert is not held up by a backlog of sightings batches (an outage's spools draining at once, v2
beacons arriving faster than they resolve): it comes on a broker connection of its own, through the real broker and
database; nor by the sightings' log on its way to the disk: its alarm is shown at its commit, and the alert is
acknowledged once that commit is on the disk."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest

from backend.ingest import consumer
from backend.ingest.consumer import Ingest
from backend.settings import BackendSettings
from bikeguard.services import Broker
from protocol import topics
from protocol.messages import Alert, format_tag, utcnow
from tests import factories
from tests.backend.test_ingest import count, wait_until


@contextmanager
def sightings_held(database_url: str) -> Iterator[None]:
    """The sightings' writes wait (their batch ids' table locked by another session, as a long lock or a slow disk
    holds a writer) while anything else still writes."""
    with psycopg.connect(database_url) as conn, conn.transaction():
        conn.execute("LOCK TABLE ingested_batches IN EXCLUSIVE MODE")
        yield


def _settings(database_url: str, broker: Broker, name: str, **extra: object) -> BackendSettings:
    """A worker of its own on the test's broker (its own shared group where the broker has them)."""
    return factories.settings(
        database_url,
        mqtt_url=broker.url,
        mqtt_client_id=name,
        mqtt_shared_group=name if broker.supports_shared_subscriptions else None,
        **extra,
    )


def _stolen_chip_heard(station: str, tag: int) -> bytes:
    """The station's alert that a chip on its hot list is heard now."""
    alert = Alert(
        station_id=station,
        kind="hotlist_hit",
        tag_id=format_tag(tag),
        seen_at=utcnow(),
        rssi_dbm=-58,
        antenna=0,
        hotlist_version=1,
    )
    return alert.to_json()


def test_a_stolen_chips_alert_raises_its_alarm_while_a_backlog_of_sightings_waits(
    database_url: str, broker: Broker, topic_prefix: str, publish
) -> None:
    settings = _settings(
        database_url,
        broker,
        f"backlog-{topic_prefix}",
        ingest_max_queued_messages=2,  # the sightings' lane is full at once: paho's reader waits for room
        ingest_flush_rows=1,
    )
    station, tag = f"{topic_prefix}-b", 0x5B0001
    with psycopg.connect(database_url) as conn:
        factories.station(conn, station)
        factories.theft(conn, factories.bike(conn, tag))
    ingest = Ingest(settings)
    ingest.start()
    try:
        assert ingest.broker_connected
        batches = topics.station_topic(station, "sightings")
        with sightings_held(database_url):
            for seq in range(1, 21):
                publish(batches, factories.batch(station, seq, [0x5B1000 + seq]).to_json())
            wait_until(lambda: ingest.queued()["sightings"] == 2)  # full: the rest waits at the broker
            publish(topics.station_topic(station, "alerts"), _stolen_chip_heard(station, tag))
            # The alarm is raised while the sightings still wait (with one connection, it waited behind them).
            wait_until(lambda: count(database_url, "SELECT count(*) FROM alarms WHERE tag_id = %s", tag) == 1)
            assert count(database_url, "SELECT count(*) FROM sightings WHERE station_id = %s", station) == 0
        # Let go, the backlog is stored, each batch once, and every message acknowledged on its own connection.
        wait_until(lambda: count(database_url, "SELECT count(*) FROM sightings WHERE station_id = %s", station) == 20)
        with psycopg.connect(database_url) as conn:
            alarm = conn.execute("SELECT kind, station_id FROM alarms WHERE tag_id = %s", (tag,)).fetchall()
        assert alarm == [("stolen_chip_seen", station)]
        assert ingest.counters.batches_new == 20 and ingest.counters.alerts == 1
    finally:
        ingest.stop()


def test_an_alarm_is_shown_before_its_commit_reaches_the_disk_and_written_again_if_the_server_is_lost_meanwhile(
    database_url: str, broker: Broker, topic_prefix: str, publish, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(database_url, broker, f"disk-{topic_prefix}")
    station, tag = f"{topic_prefix}-d", 0x5D0001
    with psycopg.connect(database_url) as conn:
        factories.station(conn, station)
        factories.theft(conn, factories.bike(conn, tag))
    # The first wait for the disk is held, then fails as it would if the server went away before the log reached
    # the disk (the alarm committed without waiting for it may then be lost); the next one waits for real.
    held, waits = threading.Event(), []
    wait_for_disk = consumer._wait_for_disk

    def lost_once(conn: psycopg.Connection) -> None:
        waits.append(conn)
        if len(waits) == 1:
            held.wait(10)
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        wait_for_disk(conn)

    monkeypatch.setattr(consumer, "_wait_for_disk", lost_once)
    ingest = Ingest(settings)
    ingest.start()
    try:
        publish(topics.station_topic(station, "alerts"), _stolen_chip_heard(station, tag))
        wait_until(lambda: len(waits) == 1)
        # Committed and visible while its commit is not known to be on the disk.
        assert count(database_url, "SELECT count(*) FROM alarms WHERE tag_id = %s", tag) == 1
        held.set()
        # Written again (the same rows: nothing doubled), and the disk waited for.
        wait_until(lambda: len(waits) == 2 and ingest.counters.db_retries == 1)
        assert count(database_url, "SELECT count(*) FROM alarms WHERE tag_id = %s", tag) == 1
        assert count(database_url, "SELECT count(*) FROM station_alerts WHERE station_id = %s", station) == 1
        # Counted once: one message, one flush, the one alert that the first write stored.
        wait_until(lambda: ingest.counters.messages == 1)
        assert (ingest.counters.flushes, ingest.counters.alerts) == (1, 1)
    finally:
        ingest.stop()
