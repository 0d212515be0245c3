"""Several ingest workers on one shared subscription, each in a process of its own: the work is shared, every batch
is stored once, and a worker process that dies or loses the backend's process is seen to."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import psutil
import psycopg
import pytest
from pydantic import ValidationError

from backend.ingest.process import WorkerProcess
from backend.ingest.workers import IngestWorkers, client_ids
from backend.settings import BackendSettings
from bikeguard.services import Broker, start_broker
from protocol import topics
from protocol.messages import Alert, utcnow
from tests import factories
from tests.backend.test_provisioning import require_mosquitto


def test_more_than_one_worker_needs_a_shared_subscription(database_url: str) -> None:
    with pytest.raises(ValidationError, match="BIKEGUARD_INGEST_WORKERS=2 needs BIKEGUARD_MQTT_SHARED_GROUP"):
        BackendSettings(environment="development", database_url=database_url, ingest_workers=2, mqtt_shared_group="")


def test_the_first_worker_keeps_the_configured_client_id() -> None:
    # A deployment going from one worker to several keeps its broker session (and what is queued in it).
    assert client_ids("bikeguard-backend", 3) == ["bikeguard-backend", "bikeguard-backend-2", "bikeguard-backend-3"]


@pytest.fixture(scope="module")
def mosquitto() -> Iterator[Broker]:
    """Mosquitto: the embedded broker has no shared subscriptions, so it runs one worker (settings refuse more)."""
    require_mosquitto()
    broker = start_broker("mosquitto")
    yield broker
    broker.stop()


@pytest.mark.mosquitto
def test_two_workers_share_the_traffic_and_store_each_batch_once_even_when_sent_twice(
    database_url: str, mosquitto: Broker, topic_prefix: str
) -> None:
    broker = mosquitto
    stations = [f"{topic_prefix}-{n}" for n in range(4)]
    with psycopg.connect(database_url) as conn:
        for station in stations:
            factories.station(conn, station)
    settings = BackendSettings(
        environment="development",
        database_url=database_url,
        mqtt_url=broker.url,
        mqtt_client_id=f"ingest-{topic_prefix}",
        mqtt_shared_group=f"ingest-{topic_prefix}",
        ingest_workers=2,
    )
    workers = IngestWorkers(settings)
    workers.start()
    publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    publisher.username_pw_set(broker.username, broker.password)
    publisher.connect(broker.host, broker.port)
    publisher.loop_start()

    def publish(topic: str, payload: bytes) -> None:
        publisher.publish(topic, payload, qos=1).wait_for_publish(5)

    try:
        assert workers.broker_connected
        # Every batch twice, as a gateway resends one whose confirmation is late: the copies may reach different
        # workers at the same moment, and both write it.
        expected = set()
        for seq in range(1, 101):
            for station in stations:
                tag = seq * 100 + stations.index(station)
                payload = factories.batch(station, seq, [tag]).to_json()
                expected.add((station, tag))
                publish(topics.station_topic(station, "sightings"), payload)
                publish(topics.station_topic(station, "sightings"), payload)
        deadline = time.monotonic() + 30
        while workers.counters.batches_new + workers.counters.batches_repeated < 800:
            assert time.monotonic() < deadline, f"only {workers.counters} after 30 s"
            time.sleep(0.05)
        per_worker = [w.counters.messages for w in workers.workers]
    finally:
        publisher.disconnect()
        publisher.loop_stop()
        workers.stop()
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT station_id, tag_id, count(*) FROM sightings WHERE station_id LIKE %s GROUP BY 1, 2",
            (f"{topic_prefix}-%",),
        ).fetchall()
    assert {(station, tag) for station, tag, _ in rows} == expected
    assert all(n == 1 for _, _, n in rows), "a batch stored twice"
    assert workers.counters.batches_new == 400 and workers.counters.batches_repeated == 400
    assert all(n > 0 for n in per_worker), f"one worker did all the work: {per_worker}"
    assert sum(per_worker) == 800 and workers.counters.messages == 800
    assert workers.counters.batches_confirmed == 800  # each copy confirmed: the gateway may wait for either


@pytest.fixture
def two_workers(database_url: str, mosquitto: Broker, topic_prefix: str) -> Iterator[IngestWorkers]:
    """Two ingest workers, started (each in a process of its own); stopped at the end whatever the test did."""
    settings = BackendSettings(
        environment="development",
        database_url=database_url,
        mqtt_url=mosquitto.url,
        mqtt_client_id=f"ingest-{topic_prefix}",
        mqtt_shared_group=f"ingest-{topic_prefix}",
        ingest_workers=2,
    )
    workers = IngestWorkers(settings)
    workers.start()
    try:
        yield workers
    finally:
        workers.stop()


def _wait_gone(worker: WorkerProcess, what: str) -> None:
    deadline = time.monotonic() + 30
    while worker.alive:
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.mark.mosquitto
def test_several_workers_run_each_in_a_process_of_its_own(two_workers: IngestWorkers) -> None:
    # As threads of one process they took turns under its interpreter lock: each worker now has its own.
    pids = two_workers.pids()
    assert len(set(pids)) == 2 and os.getpid() not in pids
    assert two_workers.broker_connected
    threads = two_workers.threads()
    assert threads["ingest-writer-1"] and threads["ingest-writer-2"] and all(threads.values()), threads
    two_workers.stop()
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in pids)


@pytest.mark.mosquitto
def test_a_dead_worker_process_shows_in_health_and_the_others_stop_cleanly(two_workers: IngestWorkers) -> None:
    dead = two_workers.workers[1]
    assert isinstance(dead, WorkerProcess) and dead.pid is not None
    os.kill(dead.pid, signal.SIGKILL)
    _wait_gone(dead, "SIGKILL did not end the worker")
    threads = two_workers.threads()
    # What /api/health/ingest and /metrics show: the process and its threads are gone, the broker is not ours.
    assert threads["ingest-process-2"] is False and threads["ingest-writer-2"] is False
    assert threads["ingest-writer-1"] is True
    assert two_workers.broker_connected is False
    started = time.monotonic()
    two_workers.stop()
    assert time.monotonic() - started < 15


@pytest.mark.mosquitto
def test_a_worker_process_stops_when_the_backend_process_is_gone(two_workers: IngestWorkers) -> None:
    orphan = two_workers.workers[0]
    assert isinstance(orphan, WorkerProcess)
    # The backend's end of the pipe closes, as when its process dies: the worker finishes and goes.
    orphan._conn.close()
    _wait_gone(orphan, "the worker outlived the backend's process")


@pytest.mark.mosquitto
def test_with_worker_processes_the_backend_process_takes_the_alerts_and_they_the_sightings(
    two_workers: IngestWorkers, mosquitto: Broker, database_url: str, topic_prefix: str
) -> None:
    # A stolen chip's alert waits for no worker resolving a flush: the backend's own process takes every alert.
    station = f"{topic_prefix}-alerts"
    with psycopg.connect(database_url) as conn:
        factories.station(conn, station)
    publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    publisher.username_pw_set(mosquitto.username, mosquitto.password)
    publisher.connect(mosquitto.host, mosquitto.port)
    publisher.loop_start()
    try:
        for n in range(10):
            alert = Alert(
                station_id=station, kind="tamper", tag_id=f"{n + 1:08X}", seen_at=utcnow(), rssi_dbm=-60, antenna=0
            )
            publisher.publish(topics.station_topic(station, "alerts"), alert.to_json(), qos=1).wait_for_publish(5)
            batch = factories.batch(station, n + 1, [n + 1])
            publisher.publish(topics.station_topic(station, "sightings"), batch.to_json(), qos=1).wait_for_publish(5)
        deadline = time.monotonic() + 30
        while two_workers.counters.alerts < 10 or two_workers.counters.batches_new < 10:
            assert time.monotonic() < deadline, f"only {two_workers.counters} after 30 s"
            time.sleep(0.05)
    finally:
        publisher.disconnect()
        publisher.loop_stop()
    assert two_workers.alerts is not None and two_workers.alerts.counters.alerts == 10
    assert [f.counters.alerts for f in two_workers.figures()] == [0, 0]
    assert sum(f.counters.batches_new for f in two_workers.figures()) == 10
    assert two_workers.alerts.counters.batches_new == 0
    assert set(two_workers.queued()) == {"sightings", "alerts"}
