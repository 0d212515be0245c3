"""Real services for the tests: an embedded PostgreSQL (or BIKEGUARD_TEST_DATABASE_URL) and MQTT brokers."""

from __future__ import annotations

import contextlib
import os
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import NamedTuple

import psycopg
import pytest
from hypothesis import settings as hypothesis_settings

from bikeguard.services import Broker, Postgres, create_login_role, mosquitto_path, start_broker, start_postgres
from tests.engine import ENGINE, PRELOAD, STORAGE
from tests.gateway.harness import FakeModule, TcpHop

# No property test is timed: an example that a loaded machine (CI, a garbage collection) makes slower than Hypothesis's
# default 200 ms deadline is not a failure. Speed is measured in bench/.
hypothesis_settings.register_profile("bikeguard", deadline=None)
hypothesis_settings.load_profile("bikeguard")

# Every backend the tests make (in this process or another) makes its new databases on that engine.
os.environ["BIKEGUARD_STORAGE_ENGINE"] = ENGINE


def pytest_report_header() -> str:
    """Say which engine this run's databases use."""
    return f"storage engine: {ENGINE} (BIKEGUARD_TEST_TIMESCALEDB={os.environ.get('BIKEGUARD_TEST_TIMESCALEDB', '')})"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Postgres | None]:
    """The session's embedded PostgreSQL (preloading TimescaleDB when the suite runs on it), or None when
    BIKEGUARD_TEST_DATABASE_URL names a server elsewhere."""
    if os.environ.get("BIKEGUARD_TEST_DATABASE_URL"):
        yield None
        return
    pg = start_postgres(preload=PRELOAD)
    try:
        yield pg
    finally:
        pg.stop()


@pytest.fixture(scope="session")
def postgres_server_url(postgres_server: Postgres | None) -> str:
    """A PostgreSQL server: the one in BIKEGUARD_TEST_DATABASE_URL, or an embedded one of our own."""
    return postgres_server.url if postgres_server is not None else os.environ["BIKEGUARD_TEST_DATABASE_URL"]


def _with_dbname(url: str, dbname: str) -> str:
    return psycopg.conninfo.make_conninfo(url, dbname=dbname)


class AppRole(NamedTuple):
    """A LOGIN role for the backend, with its password."""

    name: str
    password: str


@pytest.fixture(scope="session")
def app_role(postgres_server_url: str) -> Iterator[AppRole]:
    """The application role the backend connects as (owning nothing), made once per session with a name of its own."""
    role = AppRole(f"bikeguard_app_{uuid.uuid4().hex[:8]}", secrets.token_urlsafe(16))
    create_login_role(postgres_server_url, role.name, role.password)
    try:
        yield role
    finally:
        with psycopg.connect(postgres_server_url, autocommit=True) as conn:
            conn.execute(f'DROP ROLE IF EXISTS "{role.name}"')


@pytest.fixture(scope="session")
def migrated_template(postgres_server_url: str, app_role: AppRole) -> Iterator[str]:
    """A database migrated once per session as the owner, its privileges granted to the application role; each
    test's database is a copy of it (much faster than migrating)."""
    from backend.db.migrate import migrate

    name = f"bikeguard_template_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    migrate(_with_dbname(postgres_server_url, name), app_role=app_role.name, storage=STORAGE)
    with psycopg.connect(postgres_server_url, autocommit=True) as conn:
        # Copying a database needs it to have no session. TimescaleDB's job scheduler keeps one in every database
        # with the extension and restarts it when a copy begins (so it can slip in before the copy): closed to new
        # connections, with the sessions it has ended, the template copies every time.
        conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
    try:
        yield name
    finally:
        with psycopg.connect(postgres_server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def _own_database(server_url: str, prefix: str, template: str | None = None) -> Iterator[str]:
    """A database of a test's own (a copy of template, or empty), as the server's superuser, dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    copy = f' TEMPLATE "{template}"' if template else ""
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"{copy}')
    try:
        yield _with_dbname(server_url, name)
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def empty_database(postgres_server_url: str) -> Iterator[str]:
    """A new database with nothing in it (as the server's superuser, who stands for the owner), dropped afterwards."""
    with _own_database(postgres_server_url, "bikeguard_empty") as url:
        yield url


@pytest.fixture
def database_owner_url(postgres_server_url: str, migrated_template: str) -> Iterator[str]:
    """A fresh, migrated database of this test's own (dropped afterwards), as the owner of its schema: only for
    what migrations may do (and test set-up that must go round the database's own rules)."""
    with _own_database(postgres_server_url, "bikeguard_test", migrated_template) as url:
        yield url


@pytest.fixture
def database_url(database_owner_url: str, app_role: AppRole) -> str:
    """The test's own database as the backend's application role: the tests work with no more privileges than the
    backend has."""
    return psycopg.conninfo.make_conninfo(database_owner_url, user=app_role.name, password=app_role.password)


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
