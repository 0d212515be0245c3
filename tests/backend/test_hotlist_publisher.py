"""The hot list is the API's to publish, with a client of its own: a backend that does not ingest publishes it."""

from __future__ import annotations

from fastapi.testclient import TestClient

from backend.api.app import create_app
from bikeguard.services import Broker
from tests import factories
from tests.backend.conftest import Staff
from tests.backend.test_api import HotlistWatcher
from tests.backend.test_ingest import wait_until


def test_a_backend_without_ingest_publishes_the_retained_hot_list_with_a_stolen_chip(
    database_url: str, broker: Broker, topic_prefix: str
) -> None:
    settings = factories.settings(database_url, mqtt_url=broker.url, mqtt_client_id=f"api-{topic_prefix}")
    with TestClient(create_app(settings, run_ingest=False)) as client:
        assert client.app.state.ingest is None  # type: ignore[attr-defined]
        people = Staff(client, database_url)
        done = people.register(tag_id="00D1CE01")
        owner = people.owner_of(done)
        report = {"place": "Gu Lou", "circumstances": "taken from the rack", "police_report": "HZ-110-77"}
        r = owner.post(f"/api/bikes/{done['bike']['bike_id']}/theft", json=report)
        assert r.status_code == 201, r.text
        # Subscribed only now: what arrives is the list the broker retained.
        watcher = HotlistWatcher(broker)
        try:
            wait_until(lambda: (h := watcher.latest()) is not None and "00D1CE01" in h.tags)
        finally:
            watcher.close()
