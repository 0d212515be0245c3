"""Issue 11, finding 10: the sign-in returned the session token in its JSON as well as in the HttpOnly cookie (one
script in the page could read it), and a state-changing request carried by the cookie from another site's page
passed (SameSite was the only defence). The browser's sign-in gets no token in its JSON; an API client asks for
one explicitly; and a state-changing request authenticated by the cookie from another Origin is a 403 that says
why."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests import factories
from tests.backend.conftest import Staff

FOREIGN = "https://evil.example"


def _browser_login(client: TestClient, username: str) -> dict[str, object]:
    """What the sign-in page posts (login.js): username and password, nothing more; the cookie stays in the client."""
    client.cookies.clear()
    r = client.post("/api/auth/login", json={"username": username, "password": factories.PASSWORD})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def test_the_browsers_sign_in_gets_no_token_in_its_json(staff: Staff, app_client: TestClient) -> None:
    body = _browser_login(app_client, staff.police.username)
    assert body.get("token") is None, "the session token is readable by any script on the page"
    assert "bikeguard_session" in app_client.cookies  # the browser's session is the HttpOnly cookie
    assert app_client.get("/api/auth/me").json()["username"] == staff.police.username
    app_client.cookies.clear()


def test_an_api_client_asks_for_its_token_explicitly(staff: Staff, app_client: TestClient) -> None:
    app_client.cookies.clear()
    r = app_client.post(
        "/api/auth/login",
        json={"username": staff.police.username, "password": factories.PASSWORD, "token_in_body": True},
    )
    assert r.status_code == 200, r.text
    token = r.json()["token"]
    app_client.cookies.clear()
    assert app_client.get("/api/auth/me", headers={"Authorization": f"Bearer {token}"}).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [{"Origin": FOREIGN}, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"}, {"Origin": "http://testserver.evil"}],
)
def test_a_cookie_request_from_another_site_is_refused(
    staff: Staff, app_client: TestClient, headers: dict[str, str]
) -> None:
    done = staff.register()
    owner = staff.owner_of(done)
    bike_id = done["bike"]["bike_id"]
    _browser_login(app_client, owner.username)
    r = app_client.post(f"/api/bikes/{bike_id}/arm", json={"armed": True}, headers=headers)
    assert r.status_code == 403, r.text
    assert "site" in r.json()["detail"], r.text  # says why: a request from another site
    assert app_client.get(f"/api/bikes/{bike_id}").json()["armed"] is False
    r = app_client.post("/api/auth/logout", headers=headers)
    assert r.status_code == 403, r.text
    assert app_client.get("/api/auth/me").status_code == 200  # still signed in
    app_client.cookies.clear()


def test_a_cookie_request_from_our_own_pages_passes(staff: Staff, app_client: TestClient) -> None:
    done = staff.register()
    owner = staff.owner_of(done)
    bike_id = done["bike"]["bike_id"]
    _browser_login(app_client, owner.username)
    same = {"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"}
    r = app_client.post(f"/api/bikes/{bike_id}/arm", json={"armed": True}, headers=same)
    assert r.status_code == 200, r.text
    assert app_client.get(f"/api/bikes/{bike_id}", headers={"Origin": FOREIGN}).status_code == 200  # reading is safe
    app_client.cookies.clear()


def test_a_bearer_request_is_not_bound_to_an_origin(staff: Staff) -> None:
    """A bearer token is not ambient: a page on another site cannot make the browser send it."""
    done = staff.register()
    owner = staff.owner_of(done)
    r = owner.post(f"/api/bikes/{done['bike']['bike_id']}/arm", json={"armed": True}, headers={"Origin": FOREIGN})
    assert r.status_code == 200, r.text


def test_a_cross_site_sign_in_is_refused(staff: Staff, app_client: TestClient) -> None:
    """Login CSRF: another site signing the browser in to the attacker's account."""
    app_client.cookies.clear()
    r = app_client.post(
        "/api/auth/login",
        json={"username": staff.police.username, "password": factories.PASSWORD},
        headers={"Origin": FOREIGN},
    )
    assert r.status_code == 403 and "site" in r.json()["detail"], r.text
    app_client.cookies.clear()
