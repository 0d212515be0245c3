"""The HTTP API on a real database and broker: registry, theft report → hot list, alarms life cycle."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest
from fastapi.testclient import TestClient

from backend.api.app import create_app
from backend.settings import BackendSettings
from bikeguard.services import Broker
from protocol import topics
from protocol.messages import Hotlist
from tests import factories
from tests.backend.test_ingest import wait_until


@pytest.fixture
def client(database_url: str, broker: Broker, topic_prefix: str) -> Iterator[TestClient]:
    """The app with its ingest running against the test's database and broker."""
    settings = BackendSettings(
        database_url=database_url, mqtt_url=broker.url, mqtt_client_id=f"api-{topic_prefix}",
        mqtt_shared_group=f"api-{topic_prefix}" if broker.supports_shared_subscriptions else None,
    )
    with TestClient(create_app(settings)) as c:
        yield c


class HotlistWatcher:
    """Collects hot-list messages from the broker."""

    def __init__(self, broker: Broker) -> None:
        self.lists: list[Hotlist] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.subscribe(topics.HOTLIST, qos=1)
        self.client.loop_start()

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.lists.append(Hotlist.parse(msg.payload))

    def latest(self) -> Hotlist | None:
        with self._lock:
            return max(self.lists, key=lambda h: h.version, default=None)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_theft_report_puts_chip_on_hot_list_and_recovery_takes_it_off(client, broker):
    watcher = HotlistWatcher(broker)
    try:
        r = client.post("/api/bikes", json={"owner_name": "Wang Fang", "plate": "HZ-00001", "tag_id": "00C0FFEE"})
        assert r.status_code == 201, r.text
        assert client.post("/api/bikes/HZ-00001/theft", json={"place": "West Lake"}).status_code == 201
        wait_until(lambda: (h := watcher.latest()) is not None and "00C0FFEE" in h.tags)
        stolen_version = watcher.latest().version  # type: ignore[union-attr]
        assert client.post("/api/bikes/HZ-00001/recovered").status_code == 200
        wait_until(lambda: watcher.latest().version > stolen_version)  # type: ignore[union-attr]
        assert "00C0FFEE" not in watcher.latest().tags  # type: ignore[union-attr]
    finally:
        watcher.close()


def test_registry_refuses_a_chip_or_plate_already_bound(client):
    body = {"owner_name": "Zhao Lei", "plate": "HZ-00002", "tag_id": "0000ABCD"}
    assert client.post("/api/bikes", json=body).status_code == 201
    again = client.post("/api/bikes", json={**body, "plate": "HZ-00003"})
    assert again.status_code == 409 and "chip 0000ABCD" in again.json()["detail"]
    assert client.post("/api/bikes", json={**body, "tag_id": "0000ABCE"}).status_code == 409
    assert client.get("/api/bikes/HZ-99999").status_code == 404


def test_alarm_appears_with_trail_and_goes_through_its_life_cycle(client, broker, topic_prefix):
    stations = [
        {"station_id": f"{topic_prefix}-{i}", "name": f"Gate {i}", "lat": 30.27 + i / 1000, "lon": 120.15}
        for i in range(3)
    ]
    assert client.put("/api/stations", json=stations).status_code == 200
    client.post("/api/bikes", json={"owner_name": "Chen Jie", "plate": "HZ-00004", "tag_id": "0BADCAFE"})
    client.post("/api/bikes/HZ-00004/theft", json={})
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    pub.connect(broker.host, broker.port)
    pub.loop_start()
    for i, s in enumerate(stations):
        batch = factories.batch(s["station_id"], 1, [0x0BADCAFE])
        pub.publish(topics.station_topic(s["station_id"], "sightings"), batch.to_json(), qos=1).wait_for_publish()
        time.sleep(0.05 * (i + 1))
    pub.disconnect()
    pub.loop_stop()

    def trail_complete() -> bool:
        alarms = client.get("/api/alarms").json()
        return len(alarms) == 1 and len(alarms[0]["trail"]) == 3

    wait_until(trail_complete)
    alarm = client.get("/api/alarms").json()[0]
    assert alarm["kind"] == "stolen_chip_seen" and alarm["plate"] == "HZ-00004" and alarm["sightings"] == 3
    ack = client.post(f"/api/alarms/{alarm['id']}/acknowledge", json={"by": "officer 1024"})
    assert ack.json()["state"] == "acknowledged" and ack.json()["acknowledged_by"] == "officer 1024"
    assert client.post(f"/api/alarms/{alarm['id']}/acknowledge", json={"by": "x"}).status_code == 409
    assert client.post(f"/api/alarms/{alarm['id']}/clear", json={"by": "officer 1024"}).json()["state"] == "cleared"
    assert client.get("/api/alarms").json() == []
    assert client.get("/api/alarms/999999").status_code == 404
