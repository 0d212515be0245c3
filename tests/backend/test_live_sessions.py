"""A live stream ends with the session it was opened under: signing out, expiry or a disabled account close it."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import psycopg
import pytest
from fastapi.testclient import TestClient

from backend.api.app import create_app
from tests import factories
from tests.backend.conftest import Caller, sign_in

SIGNED_OUT = b"event: signed-out"


@pytest.fixture
def client(database_url: str) -> Iterator[TestClient]:
    """The app with live streams that check their session every 0.1 s."""
    with TestClient(create_app(factories.settings(database_url, live_keepalive_s=0.1), run_ingest=False)) as c:
        yield c


def signed_in(client: TestClient, database_url: str, role: str) -> Caller:
    with psycopg.connect(database_url) as conn:
        username = factories.account(conn, role)
    return sign_in(client, username)


def watch(client: TestClient, caller: Caller, url: str, then: Callable[[], None], chunks: int = 60) -> list[bytes]:
    """Open the stream, call `then` once it is flowing, and return what arrived until it ended (or `chunks`)."""
    seen: list[bytes] = []
    with client.stream("GET", url, headers=caller.headers) as response:
        assert response.status_code == 200
        for chunk in response.iter_bytes():
            seen.append(chunk)
            if len(seen) == 2:
                then()
            if len(seen) >= chunks:
                break
    return seen


def test_signing_out_ends_the_police_live_feed(client: TestClient, database_url: str) -> None:
    police = signed_in(client, database_url, "police")
    seen = watch(client, police, "/api/live", lambda: police.post("/api/auth/logout"))
    assert seen[-1].startswith(SIGNED_OUT)  # the stream ended by itself, with the reason
    assert client.get("/api/live", headers=police.headers).status_code == 401


def test_an_expired_session_ends_the_feed(client: TestClient, database_url: str) -> None:
    police = signed_in(client, database_url, "police")

    def expire() -> None:
        with psycopg.connect(database_url) as conn:
            conn.execute("UPDATE sessions SET expires_at = now() - interval '1 second'")

    assert watch(client, police, "/api/live", expire)[-1].startswith(SIGNED_OUT)


def test_disabling_the_account_ends_the_installers_self_test_stream(client: TestClient, database_url: str) -> None:
    installer = signed_in(client, database_url, "installer")
    with psycopg.connect(database_url) as conn:
        factories.station(conn, "pole-1")

    def disable() -> None:
        with psycopg.connect(database_url) as conn:
            conn.execute("UPDATE accounts SET disabled_at = now() WHERE username = %s", (installer.username,))

    seen = watch(client, installer, "/api/stations/pole-1/selftests/live", disable)
    assert seen[0].startswith(b"event: ready") and seen[-1].startswith(SIGNED_OUT)


def test_a_valid_session_keeps_its_feed(client: TestClient, database_url: str) -> None:
    police = signed_in(client, database_url, "police")
    seen = watch(client, police, "/api/live", lambda: None, chunks=20)  # two seconds of keep-alives
    assert len(seen) == 20 and not any(chunk.startswith(SIGNED_OUT) for chunk in seen)
