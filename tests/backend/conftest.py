"""The backend app on the test's database, signed-in callers of each role, and an ingest worker on the test's broker."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
import pytest
from fastapi.testclient import TestClient
from httpx import Response

from backend.api.app import create_app
from backend.ingest.consumer import Ingest
from backend.settings import BackendSettings
from bikeguard.services import Broker
from tests import factories


class Caller:
    """Requests to the app as one signed-in account (its token as Bearer; no cookies shared)."""

    def __init__(self, client: TestClient, token: str | None, username: str = "", password: str = "") -> None:
        self.client = client
        self.username = username
        self.password = password
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def request(self, method: str, url: str, **kwargs: Any) -> Response:
        """Any request with this caller's token."""
        self.client.cookies.clear()
        return self.client.request(method, url, headers={**self.headers, **kwargs.pop("headers", {})}, **kwargs)

    def get(self, url: str, **kwargs: Any) -> Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> Response:
        return self.request("POST", url, **kwargs)

    def put(self, url: str, **kwargs: Any) -> Response:
        return self.request("PUT", url, **kwargs)


def sign_in(client: TestClient, username: str, password: str = factories.PASSWORD) -> Caller:
    """A Caller for this account (fails the test if the login is refused)."""
    client.cookies.clear()
    r = client.post("/api/auth/login", json={"username": username, "password": password, "token_in_body": True})
    assert r.status_code == 200, r.text
    client.cookies.clear()
    return Caller(client, r.json()["token"], username, password)


@pytest.fixture
def app_client(database_url: str) -> Iterator[TestClient]:
    """The app (API and pages, no MQTT ingest) on the test's own database."""
    with TestClient(create_app(factories.settings(database_url), run_ingest=False)) as client:
        yield client


class Staff:
    """One signed-in caller per staff role, and a way to make owners."""

    def __init__(self, client: TestClient, database_url: str) -> None:
        self.client = client
        self.database_url = database_url
        with psycopg.connect(database_url) as conn:
            names = {role: factories.account(conn, role) for role in ("admin", "clerk", "police", "installer")}
        self.admin = sign_in(client, names["admin"])
        self.clerk = sign_in(client, names["clerk"])
        self.police = sign_in(client, names["police"])
        self.installer = sign_in(client, names["installer"])
        self.anonymous = Caller(client, None)
        self._id_numbers: dict[int, str] = {}

    def register(self, **overrides: Any) -> dict[str, Any]:
        """Register a bike at the counter (as the clerk); returns the response body."""
        body = factories.registration(**overrides)
        r = self.clerk.post("/api/bikes", json=body)
        assert r.status_code == 201, r.text
        if "owner" in body:
            self._id_numbers[r.json()["owner"]["owner_id"]] = body["owner"]["id_number"]
        return r.json()  # type: ignore[no-any-return]

    def id_number_of(self, registration: dict[str, Any]) -> str:
        """The full resident ID number a registration's owner was registered with (the API never shows it)."""
        return self._id_numbers[registration["owner"]["owner_id"]]

    def owner_of(self, registration: dict[str, Any]) -> Caller:
        """The registered owner, signed in with their slip password, changed to factories.PASSWORD."""
        slip = registration["owner_login"]
        first = sign_in(self.client, slip["username"], slip["initial_password"])
        r = first.post(
            "/api/auth/password",
            json={"current_password": slip["initial_password"], "new_password": factories.PASSWORD},
        )
        assert r.status_code == 200, r.text
        return Caller(self.client, first.headers["Authorization"].split()[1], slip["username"], factories.PASSWORD)


@pytest.fixture
def staff(app_client: TestClient, database_url: str) -> Staff:
    """Admin, clerk, police and installer accounts, signed in."""
    return Staff(app_client, database_url)


@pytest.fixture
def ingest(database_url: str, broker: Broker, topic_prefix: str) -> Iterator[Ingest]:
    """A running ingest worker on the test's database and broker."""
    settings = BackendSettings(
        environment="development",
        database_url=database_url,
        mqtt_url=broker.url,
        mqtt_client_id=f"ingest-{topic_prefix}",
        mqtt_shared_group=f"ingest-{topic_prefix}" if broker.supports_shared_subscriptions else None,
        **factories.SECRETS,  # the vault the factories keep v2 chips' keys with
    )
    worker = Ingest(settings)
    worker.start()
    yield worker
    worker.stop()


@pytest.fixture
def publish(broker: Broker) -> Iterator[Callable[[str, bytes], None]]:
    """Publish a payload with QoS 1 and wait for the broker's acknowledgement."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.username_pw_set(broker.username, broker.password)
    client.connect(broker.host, broker.port)
    client.loop_start()

    def send(topic: str, payload: bytes) -> None:
        client.publish(topic, payload, qos=1).wait_for_publish(5)

    yield send
    client.disconnect()
    client.loop_stop()
