"""Real services for the tests: an embedded PostgreSQL (or BIKEGUARD_TEST_DATABASE_URL) and MQTT brokers."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import psycopg
import pytest

from bikeguard.services import Broker, mosquitto_path, start_broker, start_postgres
from tests.gateway.harness import FakeModule, TcpHop


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """A PostgreSQL server: the one in BIKEGUARD_TEST_DATABASE_URL, or an embedded one of our own."""
    given = os.environ.get("BIKEGUARD_TEST_DATABASE_URL")
    if given:
        yield given
        return
    pg = start_postgres()
    try:
        yield pg.url
    finally:
        pg.stop()


def _with_dbname(url: str, dbname: str) -> str:
    return psycopg.conninfo.make_conninfo(url, dbname=dbname)


@pytest.fixture(scope="session")
def migrated_template(postgres_server_url: str) -> Iterator[str]:
    """A database migrated once per session; each test's database is a copy of it (much faster than migrating)."""
    from backend.db.migrate import migrate

    name = f"bikeguard_template_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    migrate(_with_dbname(postgres_server_url, name))
    try:
        yield name
    finally:
        with psycopg.connect(postgres_server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def database_url(postgres_server_url: str, migrated_template: str) -> Iterator[str]:
    """A fresh, migrated database of this test's own, dropped afterwards."""
    name = f"bikeguard_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{migrated_template}"')
    url = _with_dbname(postgres_server_url, name)
    try:
        yield url
    finally:
        with psycopg.connect(postgres_server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


BROKER_KINDS = ["amqtt", pytest.param("mosquitto", marks=pytest.mark.mosquitto)]


@pytest.fixture(scope="session", params=BROKER_KINDS)
def broker(request: pytest.FixtureRequest) -> Iterator[Broker]:
    """A real MQTT broker, once embedded (amqtt) and once Mosquitto when it is installed."""
    if request.param == "mosquitto" and mosquitto_path() is None:
        if os.environ.get("CI"):
            pytest.fail("CI must test against Mosquitto: .ci/run installs it")
        pytest.skip("mosquitto is not installed here (apt-get install mosquitto); CI installs it")
    b = start_broker(request.param)
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def topic_prefix() -> str:
    """A station id unique to this test, so tests on one broker never see each other's messages."""
    return f"t{uuid.uuid4().hex[:10]}"


# Stations' radio side and uplink, for the gateway tests and the end-to-end fault tests.


@pytest.fixture
def anyio_backend() -> str:
    """The gateway is asyncio code."""
    return "asyncio"


@pytest.fixture
def module() -> Iterator[FakeModule]:
    """A fake radio module on a fresh pty."""
    m = FakeModule()
    yield m
    m.close()


@pytest.fixture
async def hop(broker: Broker) -> AsyncIterator[TcpHop]:
    """A TCP hop between a station and the test broker, closed at the end."""
    h = TcpHop(broker)
    yield h
    await h.cut()
