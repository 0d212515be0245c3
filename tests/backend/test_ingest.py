"""Ingest against a real broker and a real PostgreSQL: exactly once, nothing lost, bad input kept."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import paho.mqtt.client as mqtt
import psycopg
import pytest

from backend.ingest.consumer import Ingest
from backend.settings import BackendSettings
from bikeguard.services import Broker
from protocol import topics
from tests import factories


@pytest.fixture
def ingest(database_url: str, broker: Broker, topic_prefix: str) -> Iterator[Ingest]:
    """A running ingest worker on the test's database and broker."""
    settings = BackendSettings(
        database_url=database_url, mqtt_url=broker.url, mqtt_client_id=f"ingest-{topic_prefix}",
        mqtt_shared_group=f"ingest-{topic_prefix}" if broker.supports_shared_subscriptions else None,
    )
    worker = Ingest(settings)
    worker.start()
    yield worker
    worker.stop()


@pytest.fixture
def publish(broker: Broker) -> Iterator[Callable[[str, bytes], None]]:
    """Publish a payload with QoS 1 and wait for the broker's acknowledgement."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.connect(broker.host, broker.port)
    client.loop_start()

    def send(topic: str, payload: bytes) -> None:
        client.publish(topic, payload, qos=1).wait_for_publish(5)

    yield send
    client.disconnect()
    client.loop_stop()


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


def test_batches_are_stored_once_even_when_redelivered(ingest, publish, database_url, topic_prefix):
    station = f"{topic_prefix}-a"
    first = factories.batch(station, 1, [1, 2, 3])
    topic = topics.station_topic(station, "sightings")
    publish(topic, first.to_json())
    publish(topic, first.to_json())  # what QoS 1 redelivery looks like
    publish(topic, factories.batch(station, 2, [4]).to_json())
    wait_until(lambda: ingest.counters.messages >= 3)
    assert count(database_url, "SELECT count(*) FROM sightings WHERE station_id = %s", station) == 4
    assert ingest.counters.batches_repeated == 1


def test_malformed_payload_is_kept_with_reason_and_valid_batches_still_land(
    ingest, publish, database_url, topic_prefix
):
    station = f"{topic_prefix}-b"
    topic = topics.station_topic(station, "sightings")
    publish(topic, b"{not json")
    publish(topic, factories.batch(f"{topic_prefix}-other", 1, [9]).to_json())  # claims another station
    publish(topic, factories.batch(station, 1, [5, 6]).to_json())
    wait_until(lambda: ingest.counters.messages >= 3)
    with psycopg.connect(database_url) as conn:
        rejects = conn.execute("SELECT reason, raw FROM rejected_messages ORDER BY rejected_id").fetchall()
    assert len(rejects) == 2
    assert bytes(rejects[0][1]) == b"{not json"
    assert "does not match topic" in rejects[1][0]
    assert count(database_url, "SELECT count(*) FROM sightings WHERE station_id = %s", station) == 2


def test_stolen_chip_seen_raises_one_alarm_that_later_sightings_update(
    ingest, publish, database_url, topic_prefix
):
    station = f"{topic_prefix}-c"
    with psycopg.connect(database_url) as conn:
        factories.station(conn, station)
        stolen = factories.bike(conn, 0xBEEF01)
        factories.bike(conn, 0xBEEF02)
        factories.theft(conn, stolen)
    topic = topics.station_topic(station, "sightings")
    publish(topic, factories.batch(station, 1, [0xBEEF01, 0xBEEF02]).to_json())
    publish(topic, factories.batch(station, 2, [0xBEEF01]).to_json())
    wait_until(lambda: ingest.counters.messages >= 2)
    with psycopg.connect(database_url) as conn:
        alarms = conn.execute("SELECT kind, tag_id, sightings, state FROM alarms").fetchall()
    assert alarms == [("stolen_chip_seen", 0xBEEF01, 2, "active")]


def test_maintenance_creates_days_ahead_and_retention_drops_whole_old_days(database_url):
    from datetime import timedelta

    from backend.db.migrate import maintain
    from protocol.messages import utcnow

    with psycopg.connect(database_url) as conn:
        if conn.execute("SELECT to_regclass('sightings_default')").fetchone()[0] is None:
            pytest.skip("TimescaleDB: chunks are made and dropped by TimescaleDB itself")
        old = utcnow() - timedelta(days=40)
        conn.execute("SELECT bikeguard_ensure_partitions(%s::date, %s::date)", (old.date(), old.date()))
        conn.execute(
            "INSERT INTO sightings VALUES (%s, %s, 'st-old', 1, 1, -60, 0, 0, 1)", (old, old)
        )
    created, dropped = maintain(database_url, days_ahead=10, retention_days=30)
    assert created == 3 and dropped == 1  # days 8-10 ahead were missing; the 40-day-old day goes
    assert count(database_url, "SELECT count(*) FROM sightings WHERE station_id = 'st-old'") == 0
