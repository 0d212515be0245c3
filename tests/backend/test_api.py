"""The HTTP API on a real database and broker: theft report → hot list, alarm life cycle, armed bike moving."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest
from fastapi.testclient import TestClient

from backend.api.app import create_app
from bikeguard.services import Broker
from protocol import topics
from protocol.messages import Hotlist
from tests import factories
from tests.backend.conftest import Staff
from tests.backend.test_ingest import wait_until


@pytest.fixture
def client(database_url: str, broker: Broker, topic_prefix: str) -> Iterator[TestClient]:
    """The app with its ingest running against the test's database and broker."""
    settings = factories.settings(
        database_url,
        mqtt_url=broker.url,
        mqtt_client_id=f"api-{topic_prefix}",
        mqtt_shared_group=f"api-{topic_prefix}" if broker.supports_shared_subscriptions else None,
    )
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture
def people(client: TestClient, database_url: str) -> Staff:
    """Signed-in staff on the app with its ingest."""
    return Staff(client, database_url)


class HotlistWatcher:
    """Collects hot-list messages from the broker, as a gateway gets them: each parsed, and its bytes."""

    def __init__(self, broker: Broker) -> None:
        self.lists: list[Hotlist] = []
        self.payloads: list[bytes] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.client.on_message = self._on_message
        self.client.username_pw_set(broker.username, broker.password)
        self.client.connect(broker.host, broker.port)
        self.client.subscribe(topics.HOTLIST, qos=1)
        self.client.loop_start()

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        # amqtt also hands a new subscriber retained messages of other clients' subscriptions.
        if msg.topic != topics.HOTLIST:
            return
        with self._lock:
            self.payloads.append(bytes(msg.payload))
            self.lists.append(Hotlist.parse(msg.payload))

    def latest(self) -> Hotlist | None:
        # The last one received: a retained list left on the shared broker by an earlier test's database
        # may carry a higher version than this test's.
        with self._lock:
            return self.lists[-1] if self.lists else None

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_theft_report_puts_chip_on_hot_list_and_recovery_takes_it_off(people: Staff, broker: Broker) -> None:
    watcher = HotlistWatcher(broker)
    try:
        done = people.register(tag_id="00C0FFEE")
        owner = people.owner_of(done)
        bike_id = done["bike"]["bike_id"]
        report = {"place": "West Lake", "circumstances": "lock cut", "police_report": "HZ-110-42"}
        r = owner.post(f"/api/bikes/{bike_id}/theft", json=report)
        assert r.status_code == 201, r.text
        assert r.json()["theft"]["police_report"] == "HZ-110-42"
        wait_until(lambda: (h := watcher.latest()) is not None and "00C0FFEE" in h.tags)
        stolen_version = watcher.latest().version  # type: ignore[union-attr]
        assert owner.post(f"/api/bikes/{bike_id}/theft", json={}).status_code == 409
        assert owner.post(f"/api/bikes/{bike_id}/recovered").status_code == 200
        wait_until(lambda: watcher.latest().version > stolen_version)  # type: ignore[union-attr]
        assert "00C0FFEE" not in watcher.latest().tags  # type: ignore[union-attr]
    finally:
        watcher.close()


def _publish(broker: Broker, batches: list[tuple[str, bytes]]) -> None:
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    pub.username_pw_set(broker.username, broker.password)
    pub.connect(broker.host, broker.port)
    pub.loop_start()
    for i, (station_id, payload) in enumerate(batches):
        pub.publish(topics.station_topic(station_id, "sightings"), payload, qos=1).wait_for_publish()
        time.sleep(0.05 * (i + 1))
    pub.disconnect()
    pub.loop_stop()


def test_alarm_appears_with_trail_and_goes_through_its_life_cycle(
    people: Staff, broker: Broker, topic_prefix: str
) -> None:
    stations = [
        {"station_id": f"{topic_prefix}-{i}", "name": f"Gate {i}", "lat": 30.27 + i / 1000, "lon": 120.15}
        for i in range(3)
    ]
    assert people.installer.put("/api/stations", json=stations).status_code == 200
    bike_id = people.register(plate="HZ-00004", tag_id="0BADCAFE")["bike"]["bike_id"]
    theft = people.police.post(f"/api/bikes/{bike_id}/theft", params={"case_number": "C-0004"}, json={})
    assert theft.status_code == 201
    _publish(broker, [(s["station_id"], factories.batch(s["station_id"], 1, [0x0BADCAFE]).to_json()) for s in stations])

    def trail_complete() -> bool:
        alarms = people.police.get("/api/alarms").json()
        return len(alarms) == 1 and len(alarms[0]["trail"]) == 3

    wait_until(trail_complete)
    alarm = people.police.get("/api/alarms").json()[0]
    assert alarm["kind"] == "stolen_chip_seen" and alarm["plate"] == "HZ-00004" and alarm["sightings"] == 3
    assert people.clerk.get("/api/alarms").status_code == 403
    ack = people.police.post(f"/api/alarms/{alarm['id']}/acknowledge")
    name = people.police.get("/api/auth/me").json()["display_name"]
    assert ack.json()["state"] == "acknowledged" and ack.json()["acknowledged_by"] == name
    assert people.police.post(f"/api/alarms/{alarm['id']}/acknowledge").status_code == 409
    assert people.police.post(f"/api/alarms/{alarm['id']}/clear").json()["state"] == "cleared"
    assert people.police.get("/api/alarms").json() == []
    assert people.police.get("/api/alarms/999999").status_code == 404


def test_armed_bike_seen_moving_raises_an_alarm_for_its_owner_only(
    people: Staff, broker: Broker, topic_prefix: str
) -> None:
    station = f"{topic_prefix}-arm"
    people.installer.put("/api/stations", json=[{"station_id": station, "name": "Gate", "lat": 30.2, "lon": 120.1}])
    armed, idle = people.register(tag_id="0A4A4A4A"), people.register(tag_id="0B4B4B4B")
    owner = people.owner_of(armed)
    assert owner.post(f"/api/bikes/{armed['bike']['bike_id']}/arm", json={"armed": True}).json()["armed"] is True
    _publish(
        broker,
        [
            (station, factories.batch(station, 1, [0x0A4A4A4A, 0x0B4B4B4B], flags=0).to_json()),  # parked: no motion
            (station, factories.batch(station, 2, [0x0A4A4A4A, 0x0B4B4B4B], flags=4).to_json()),  # both moving
        ],
    )
    wait_until(lambda: len(owner.get("/api/alarms").json()) == 1)
    alarm = owner.get("/api/alarms").json()[0]
    assert alarm["kind"] == "armed_bike_moving" and alarm["plate"] == armed["bike"]["plate"]
    assert alarm["sightings"] == 1 and alarm["station_id"] == station
    assert people.owner_of(idle).get("/api/alarms").json() == []
    assert people.police.get("/api/alarms").json() == []
    assert owner.post(f"/api/alarms/{alarm['id']}/clear").json()["state"] == "cleared"
