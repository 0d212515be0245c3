"""Accounts and sessions: password login, expiry, rate limiting, staff made by admins, owners at the counter,
and every API route declaring who may call it."""

from __future__ import annotations

import psycopg
import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from backend.api.app import create_app
from backend.api.deps import Allow
from tests import factories
from tests.backend.conftest import Caller, Staff, sign_in


def test_password_is_stored_as_an_argon2id_hash(staff: Staff) -> None:
    with psycopg.connect(staff.database_url) as conn:
        hashes = [r[0] for r in conn.execute("SELECT password_hash FROM accounts")]
    assert hashes and all(h.startswith("$argon2id$") for h in hashes)
    assert not any(factories.PASSWORD in h for h in hashes)


def test_wrong_password_and_unknown_user_get_the_same_answer(staff: Staff, app_client: TestClient) -> None:
    wrong = app_client.post("/api/auth/login", json={"username": staff.clerk.username, "password": "nope"})
    unknown = app_client.post("/api/auth/login", json={"username": "nobody", "password": "nope"})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json() == {"detail": "wrong username or password"}


def test_repeated_failed_logins_are_throttled_even_with_the_right_password(database_url: str) -> None:
    with TestClient(create_app(factories.settings(database_url, login_max_failures=3), run_ingest=False)) as client:
        staff = Staff(client, database_url)
        for _ in range(3):
            assert (
                client.post("/api/auth/login", json={"username": staff.clerk.username, "password": "guess"}).status_code
                == 401
            )
        r = client.post("/api/auth/login", json={"username": staff.clerk.username, "password": factories.PASSWORD})
        assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0
        # Another account is not locked out by it.
        assert (
            client.post(
                "/api/auth/login", json={"username": staff.police.username, "password": factories.PASSWORD}
            ).status_code
            == 200
        )


def test_expired_session_is_refused(staff: Staff) -> None:
    assert staff.clerk.get("/api/auth/me").status_code == 200
    with psycopg.connect(staff.database_url) as conn:
        conn.execute("UPDATE sessions SET expires_at = now() - interval '1 second'")
    r = staff.clerk.get("/api/auth/me")
    assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
    assert "expired" in r.json()["detail"]


def test_invalid_or_missing_token_is_refused(staff: Staff, app_client: TestClient) -> None:
    assert Caller(app_client, "not-a-token").get("/api/bikes?plate=HZ-00001").status_code == 401
    assert staff.anonymous.get("/api/bikes?plate=HZ-00001").status_code == 401
    assert staff.anonymous.get("/api/stations").status_code == 401


def test_session_expiry_follows_the_setting(database_url: str) -> None:
    with TestClient(create_app(factories.settings(database_url, session_ttl_s=60), run_ingest=False)) as client:
        staff = Staff(client, database_url)
        with psycopg.connect(database_url) as conn:
            left = conn.execute("SELECT max(expires_at - created_at) FROM sessions").fetchone()[0]  # type: ignore[index]
        assert left.total_seconds() == pytest.approx(60, abs=2)
        assert staff.clerk.get("/api/auth/me").json()["role"] == "clerk"


def test_logout_ends_the_session(staff: Staff) -> None:
    assert staff.police.post("/api/auth/logout").status_code == 204
    assert staff.police.get("/api/auth/me").status_code == 401


def test_cookie_session_works_for_pages_and_is_http_only(staff: Staff, app_client: TestClient) -> None:
    app_client.cookies.clear()
    r = app_client.post("/api/auth/login", json={"username": staff.police.username, "password": factories.PASSWORD})
    cookie = r.headers["set-cookie"]
    assert "bikeguard_session=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert app_client.get("/api/auth/me").json()["username"] == staff.police.username
    app_client.cookies.clear()


def test_only_an_admin_creates_staff_accounts_which_must_change_their_password(staff: Staff) -> None:
    body = {"username": "zhang.min", "display_name": "Zhang Min", "role": "clerk"}
    assert staff.clerk.post("/api/accounts", json=body).status_code == 403
    r = staff.admin.post("/api/accounts", json=body)
    assert r.status_code == 201, r.text
    first = r.json()["initial_password"]
    assert r.json()["account"]["must_change_password"] is True
    new = sign_in(staff.client, "zhang.min", first)
    refused = new.get("/api/bikes?plate=HZ-00001")
    assert refused.status_code == 403 and "change your password" in refused.json()["detail"]
    weak = new.post("/api/auth/password", json={"current_password": first, "new_password": "short"})
    assert weak.status_code == 422
    ok = new.post("/api/auth/password", json={"current_password": first, "new_password": "a much longer secret"})
    assert ok.status_code == 200 and ok.json()["must_change_password"] is False
    assert new.get("/api/bikes?plate=HZ-00001").status_code == 200
    taken = staff.admin.post("/api/accounts", json=body)
    assert taken.status_code == 409


def test_owner_account_is_made_at_the_counter_and_must_change_its_password(staff: Staff) -> None:
    done = staff.register()
    slip = done["owner_login"]
    first = sign_in(staff.client, slip["username"], slip["initial_password"])
    assert first.get("/api/auth/me").json()["must_change_password"] is True
    assert first.get("/api/bikes").status_code == 403
    changed = first.post(
        "/api/auth/password", json={"current_password": slip["initial_password"], "new_password": factories.PASSWORD}
    )
    assert changed.status_code == 200
    assert [b["plate"] for b in first.get("/api/bikes").json()] == [done["bike"]["plate"]]


def test_disabled_account_loses_its_sessions(staff: Staff) -> None:
    me = staff.police.get("/api/auth/me").json()
    assert staff.admin.post(f"/api/accounts/{me['account_id']}/disable").status_code == 200
    assert staff.police.get("/api/auth/me").status_code == 401


def test_every_api_route_declares_who_may_call_it(app_client: TestClient) -> None:
    undeclared = []
    api_routes = [r for r in _api_routes(app_client.app.routes) if r.path.startswith("/api")]  # type: ignore[attr-defined]
    for route in api_routes:
        rules = [d.call for d in _all_dependencies(route.dependant) if isinstance(d.call, Allow)]
        if len(rules) != 1:
            undeclared.append(f"{sorted(route.methods)} {route.path}: {len(rules)} rules")
    # FastAPI 0.165 keeps an included router whole (its routes are not copied onto the app): a walk that finds no
    # route checks nothing, as this test once did without failing.
    assert len(api_routes) > 50
    assert undeclared == []


def _api_routes(routes):  # type: ignore[no-untyped-def]
    """Every APIRoute, also those inside routers the app keeps whole (FastAPI's included routers)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _api_routes(inner.routes)


def _all_dependencies(dependant):  # type: ignore[no-untyped-def]
    for d in dependant.dependencies:
        yield d
        yield from _all_dependencies(d)
