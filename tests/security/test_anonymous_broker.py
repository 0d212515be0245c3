"""Issue 11, finding 1 (the brokers): anyone on the network could connect to the demo's and the tests' brokers.

No broker of ours lets in an anonymous client or a wrong password: not the tests' brokers, not the demo's. The demo's
broker is set up as production's is: the installer issues each station's password through the API, the broker's
password and ACL files are generated from the database and the broker reloads them. There a station's own
credentials cannot publish a hot list (neither as a message nor as its will) and cannot read another station's
topics. Both broker kinds are tried: Mosquitto, and the embedded amqtt broker, which reads the same files.
"""

from __future__ import annotations

import secrets
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import paho.mqtt.client as paho
import pytest

from bikeguard.services import Broker, connect_packet, mosquitto_path
from protocol import topics
from tests.backend.conftest import Staff
from tests.backend.test_station_registry import new_station
from tests.conftest import BROKER_KINDS

QUIET_S = 1.0  # how long a message that must not arrive is waited for


class Client:
    """A paho client as one MQTT user (or none), recording its CONNACK and what it receives."""

    def __init__(self, broker: Broker, username: str | None, password: str | None) -> None:
        self.codes: list[int] = []
        self.received: list[tuple[str, bytes]] = []
        self.subacks: list[list[int]] = []
        self._connack = threading.Event()
        self.client = paho.Client(
            paho.CallbackAPIVersion.VERSION2, client_id=f"attack-{uuid.uuid4().hex[:8]}", reconnect_on_failure=False
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.on_connect = self._on_connect
        self.client.on_message = lambda _c, _u, m: self.received.append((m.topic, m.payload))
        self.client.on_subscribe = lambda _c, _u, _m, codes, _p: self.subacks.append([c.value for c in codes])
        # The broker's address, not broker.url: this client brings its own credentials, or none.
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self._connack.wait(10)

    def _on_connect(self, _c: object, _u: object, _f: object, reason: paho.ReasonCode, _p: object) -> None:
        self.codes.append(reason.value)
        self._connack.set()

    @property
    def accepted(self) -> bool:
        return self.codes == [0]

    def subscribe(self, topic_filter: str) -> None:
        count = len(self.subacks)
        self.client.subscribe(topic_filter, qos=1)
        _wait(lambda: len(self.subacks) > count, f"the SUBACK for {topic_filter}")

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def topics(self) -> set[str]:
        return {topic for topic, _ in self.received}

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _wait(check: object, what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def _refused(broker: Broker, username: str | None, password: str | None) -> bool:
    client = Client(broker, username, password)
    client.close()
    assert client.codes, "no CONNACK at all"
    return not client.accepted


def test_test_brokers_refuse_anonymous_clients_and_wrong_passwords(broker: Broker) -> None:
    assert _refused(broker, None, None)
    assert _refused(broker, broker.username, "not the password")
    assert _refused(broker, "someone", broker.password)
    assert not _refused(broker, broker.username, broker.password)


@dataclass
class DemoBroker:
    """The demo's broker set-up for two stations a and b, with each one's issued password."""

    broker: Broker
    a: str
    b: str
    passwords: dict[str, str]

    def station(self, sid: str) -> Client:
        client = Client(self.broker, sid, self.passwords[sid])
        assert client.accepted, f"station {sid} was refused with its own password: {client.codes}"
        return client

    def backend(self) -> Client:
        client = Client(self.broker, self.broker.username, self.broker.password)
        assert client.accepted
        return client


@pytest.fixture(params=BROKER_KINDS)
def demo_broker(request: pytest.FixtureRequest, staff: Staff) -> Iterator[DemoBroker]:
    """The demo's broker, its files generated from the test's database after the installer issued two passwords."""
    from bikeguard import demo

    if request.param == "mosquitto" and mosquitto_path() is None:
        pytest.skip("mosquitto is not installed here (apt-get install mosquitto); CI installs it")
    sids = []
    for _ in range(2):
        r = staff.installer.post("/api/stations", json=new_station())
        assert r.status_code == 201, r.text
        sids.append(str(r.json()["station_id"]))
    backend_password = secrets.token_urlsafe(18)
    broker = demo.start_demo_broker(backend_password, request.param)
    try:
        issued = demo.issue_station_credentials(staff.installer, sids)
        demo.install_station_credentials(broker, staff.database_url, backend_password, issued)
        yield DemoBroker(broker, sids[0], sids[1], issued)
    finally:
        broker.stop()


def test_demo_broker_refuses_anonymous_clients_and_wrong_passwords(demo_broker: DemoBroker) -> None:
    broker = demo_broker.broker
    assert _refused(broker, None, None)
    assert _refused(broker, demo_broker.a, demo_broker.passwords[demo_broker.b])
    assert _refused(broker, demo_broker.a, "")
    assert not _refused(broker, demo_broker.a, demo_broker.passwords[demo_broker.a])


def _connect_with_will_and_vanish(broker: Broker, user: str, password: str, topic: str, payload: bytes) -> None:
    """Connect with a retained will on `topic`, then drop the connection without DISCONNECT, so the will would fire."""
    packet = connect_packet(f"will-{uuid.uuid4().hex[:8]}", user, password, will=(topic, payload), will_retain=True)
    with socket.create_connection((broker.host, broker.port), timeout=5) as sock:
        sock.sendall(packet)
        sock.recv(4)  # the CONNACK, accepted or not
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST on close


def test_station_credentials_cannot_publish_a_hot_list(demo_broker: DemoBroker) -> None:
    backend = demo_broker.backend()
    backend.subscribe(topics.HOTLIST)
    station = demo_broker.station(demo_broker.a)
    forged = b'{"v":1,"version":9223372036854775807,"tags":[]}'
    station.publish(topics.HOTLIST, forged, retain=True)
    _connect_with_will_and_vanish(
        demo_broker.broker, demo_broker.a, demo_broker.passwords[demo_broker.a], topics.HOTLIST, forged
    )
    time.sleep(QUIET_S)
    # The backend's own list goes through, so the silence above is the ACL's doing, not a deaf subscriber.
    backend.publish(topics.HOTLIST, b"the backend's list", retain=True)
    _wait(lambda: backend.received, "the backend's own hot list")
    time.sleep(0.2)
    assert backend.received == [(topics.HOTLIST, b"the backend's list")]
    newcomer = demo_broker.station(demo_broker.b)
    newcomer.subscribe(topics.HOTLIST)
    _wait(lambda: newcomer.received, "the retained hot list")
    assert newcomer.received == [(topics.HOTLIST, b"the backend's list")]
    backend.publish(topics.HOTLIST, b"", retain=True)
    for c in (backend, station, newcomer):
        c.close()


def test_station_credentials_cannot_read_another_stations_topics(demo_broker: DemoBroker) -> None:
    a, b = demo_broker.a, demo_broker.b
    station_b = demo_broker.station(b)
    station_b.publish(topics.station_topic(b, "status"), b"b's status", retain=True)
    backend = demo_broker.backend()
    # As the real backend does: amqtt 0.12.1 by itself handed each new client the retained messages of every
    # client's filters, this one's included.
    backend.subscribe(f"{topics.ROOT}/stations/+/status")
    spy = demo_broker.station(a)
    for topic_filter in (
        topics.station_topic(b, "status"),
        topics.station_topic(b, "sightings"),
        f"{topics.ROOT}/stations/+/status",
        f"{topics.ROOT}/stations/{b}/#",
        f"{topics.ROOT}/#",
        "#",
    ):
        spy.subscribe(topic_filter)
    spy.subscribe(topics.confirmations_topic(a))
    station_b.publish(topics.station_topic(b, "sightings"), b"b's batch")
    backend.publish(topics.command_topic(b, "selftest"), b"b's command")
    backend.publish(topics.confirmations_topic(b), b"b's confirmation")
    time.sleep(QUIET_S)
    # What is a's own still reaches it, so the silence above is the ACL's doing.
    backend.publish(topics.confirmations_topic(a), b"a's confirmation")
    _wait(lambda: spy.received, "a's own confirmation")
    time.sleep(0.2)
    assert spy.topics() == {topics.confirmations_topic(a)}
    station_b.publish(topics.station_topic(b, "status"), b"", retain=True)
    for c in (station_b, backend, spy):
        c.close()
