"""The ingest confirms to each station the batches it has committed, new and repeated alike, and nothing else."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import paho.mqtt.client as mqtt
import psycopg
import pytest

from backend.ingest import consumer
from bikeguard.services import Broker
from protocol import topics
from protocol.messages import Confirmation, utcnow
from tests import factories
from tests.backend.test_provisioning import provisioned_mosquitto, require_mosquitto


class Confirmations:
    """What the backend confirms to some stations, as their gateways receive it."""

    def __init__(self) -> None:
        self.received: list[Confirmation] = []
        self.subscribed = threading.Event()
        self._lock = threading.Lock()

    def seqs(self, station_id: str) -> list[int]:
        """Every batch_seq confirmed to one station, in arrival order, repeats included."""
        with self._lock:
            return [seq for c in self.received if c.station_id == station_id for seq in c.batch_seqs]

    def wait(self, check: Callable[[], bool], timeout_s: float = 10.0) -> None:
        """Wait until check() holds (or fail)."""
        deadline = time.monotonic() + timeout_s
        while not check():
            assert time.monotonic() < deadline, "confirmations did not come in time"
            time.sleep(0.05)


@pytest.fixture
def confirmations(broker: Broker, topic_prefix: str) -> Iterator[Confirmations]:
    """Subscribe, as the test's stations would, to their confirmations topics."""
    seen = Confirmations()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"confirmed-{topic_prefix}")

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        if msg.topic.startswith(f"{topics.ROOT}/stations/{topic_prefix}-"):
            with seen._lock:
                seen.received.append(Confirmation.parse(bytes(msg.payload)))

    client.on_message = on_message
    client.on_subscribe = lambda *_: seen.subscribed.set()
    client.username_pw_set(broker.username, broker.password)
    client.connect(broker.host, broker.port)
    client.loop_start()
    client.subscribe(f"{topics.ROOT}/stations/+/{topics.CONFIRMATIONS}", qos=1)
    assert seen.subscribed.wait(10)
    yield seen
    client.disconnect()
    client.loop_stop()


def test_committed_batches_are_confirmed_to_their_station_and_a_repeat_is_confirmed_again(
    ingest, publish, database_url, topic_prefix, confirmations
):
    station, other = f"{topic_prefix}-a", f"{topic_prefix}-b"
    with psycopg.connect(database_url) as conn:
        factories.station(conn, station)
        factories.station(conn, other)
    first = factories.batch(station, 1, [1, 2]).to_json()
    publish(topics.station_topic(station, "sightings"), first)
    publish(topics.station_topic(other, "sightings"), factories.batch(other, 7, [3]).to_json())
    confirmations.wait(lambda: confirmations.seqs(station) == [1] and confirmations.seqs(other) == [7])

    publish(topics.station_topic(station, "sightings"), first)  # the gateway resends: its confirmation was lost
    publish(topics.station_topic(station, "sightings"), factories.batch(station, 2, [4]).to_json())

    confirmations.wait(lambda: sorted(confirmations.seqs(station)) == [1, 1, 2])
    assert ingest.counters.batches_repeated == 1
    assert ingest.counters.batches_confirmed == 4
    assert all(c.station_id in (station, other) for c in confirmations.received)


def test_refused_batches_are_not_confirmed(ingest, publish, database_url, topic_prefix, confirmations):
    station, unknown = f"{topic_prefix}-c", f"{topic_prefix}-unknown"
    with psycopg.connect(database_url) as conn:
        factories.station(conn, station)
    topic = topics.station_topic(station, "sightings")
    publish(topic, b'{"v": 1, "station_id": "' + station.encode() + b'", "batch_seq": 5, "sightings": "no"}')
    publish(topic, factories.batch(f"{topic_prefix}-other", 6, [9]).to_json())  # claims another station
    publish(topics.station_topic(unknown, "sightings"), factories.batch(unknown, 8, [9]).to_json())
    publish(topic, factories.batch(station, 9, [5]).to_json())

    confirmations.wait(lambda: confirmations.seqs(station) == [9])
    time.sleep(0.3)  # what else would have been confirmed with it
    assert confirmations.seqs(station) == [9]
    assert confirmations.seqs(unknown) == confirmations.seqs(f"{topic_prefix}-other") == []


def test_a_flush_of_many_batches_is_confirmed_in_bounded_messages(
    ingest, publish, database_url, topic_prefix, confirmations, monkeypatch
):
    monkeypatch.setattr(consumer, "CONFIRMATION_MAX_SEQS", 2)
    station = f"{topic_prefix}-d"
    with psycopg.connect(database_url) as conn:
        factories.station(conn, station)
    for seq in range(7):
        publish(topics.station_topic(station, "sightings"), factories.batch(station, seq, [seq + 1]).to_json())

    confirmations.wait(lambda: sorted(confirmations.seqs(station)) == list(range(7)))
    assert all(len(c.batch_seqs) <= 2 for c in confirmations.received)
    assert ingest.counters.confirmations >= 4


@pytest.mark.mosquitto
def test_with_generated_acl_only_the_backend_confirms_and_a_station_hears_only_its_own(tmp_path):
    require_mosquitto()
    broker, passwords = provisioned_mosquitto(tmp_path, ["st-a", "st-b"])
    clients: list[mqtt.Client] = []

    def connect(user: str) -> mqtt.Client:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{user}-confirm")
        client.username_pw_set(user, passwords[user])
        client.connect(broker.host, broker.port)
        client.loop_start()
        clients.append(client)
        return client

    try:
        heard: list[tuple[str, list[int]]] = []
        st_a = connect("st-a")
        subscribed = threading.Event()
        st_a.on_subscribe = lambda *_: subscribed.set()
        st_a.on_message = lambda _c, _u, m: heard.append((m.topic, Confirmation.parse(m.payload).batch_seqs))
        # Its own confirmations, and (refused by the ACL, so never delivered) another station's.
        st_a.subscribe([(topics.confirmations_topic("st-a"), 1), (topics.confirmations_topic("st-b"), 1)])
        assert subscribed.wait(10)

        def confirmation(station_id: str, seq: int) -> bytes:
            return Confirmation(station_id=station_id, batch_seqs=[seq], sent_at=utcnow()).to_json()

        # Another station forging a confirmation would make st-a drop an unstored batch: refused.
        connect("st-b").publish(topics.confirmations_topic("st-a"), confirmation("st-a", 666), qos=1).wait_for_publish(
            5
        )
        backend = connect("bikeguard-backend")
        backend.publish(topics.confirmations_topic("st-b"), confirmation("st-b", 2), qos=1).wait_for_publish(5)
        backend.publish(topics.confirmations_topic("st-a"), confirmation("st-a", 1), qos=1).wait_for_publish(5)

        deadline = time.monotonic() + 10
        while not heard and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        assert heard == [(topics.confirmations_topic("st-a"), [1])]
    finally:
        for client in clients:
            client.disconnect()
            client.loop_stop()
        broker.stop()
