"""Issue 11, finding 13: a "photo" made of a PNG signature followed by HTML was accepted and served without
`X-Content-Type-Options: nosniff` (a browser could sniff it as a page of our origin), and no page had a
Content-Security-Policy, so one injected script would have run with a signed-in user's rights. Photos are now
decoded and re-encoded (what is served is only pixels), and every response carries nosniff, a strict CSP with
`frame-ancestors 'none'`, and a Referrer-Policy. Every role's pages still work under that policy in Chromium."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from backend.api.app import create_app
from bikeguard.services import free_port
from tests import factories
from tests.backend.conftest import Staff
from tests.browser import browser_page, console_errors, require_chromium, screenshot_path
from tests.serving import served

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HTML = b"<html><body><script>fetch('/api/auth/me').then(r => r.text()).then(alert)</script></body></html>"


def _png(size: tuple[int, int] = (8, 6)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (20, 120, 200)).save(out, format="PNG")
    return out.getvalue()


def _upload(staff: Staff, bike_id: int, data: bytes, name: str = "bike.png") -> Any:
    return staff.clerk.post(f"/api/bikes/{bike_id}/photos", files={"photo": (name, data, "image/png")})


def test_png_signature_followed_by_html_is_refused(staff: Staff) -> None:
    bike_id = staff.register()["bike"]["bike_id"]
    r = _upload(staff, bike_id, PNG_SIGNATURE + HTML)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "photo" and "image" in r.json()["detail"]


def test_html_behind_a_real_image_is_not_served_back(staff: Staff) -> None:
    bike_id = staff.register()["bike"]["bike_id"]
    r = _upload(staff, bike_id, _png() + HTML)  # a valid PNG, then a page after its end
    assert r.status_code == 201, r.text
    shown = staff.clerk.get(f"/api/bikes/{bike_id}/photos/{r.json()['photo_id']}")
    assert shown.status_code == 200
    assert b"<script" not in shown.content and b"<html" not in shown.content
    assert Image.open(io.BytesIO(shown.content)).size == (8, 6)  # still the picture


def test_photos_are_served_with_nosniff(staff: Staff) -> None:
    bike_id = staff.register()["bike"]["bike_id"]
    photo_id = _upload(staff, bike_id, _png()).json()["photo_id"]
    shown = staff.clerk.get(f"/api/bikes/{bike_id}/photos/{photo_id}")
    assert shown.headers.get("x-content-type-options") == "nosniff"
    assert shown.headers["content-type"] in {"image/png", "image/jpeg"}


def _directives(policy: str) -> dict[str, list[str]]:
    parts = (d.split() for d in policy.split(";") if d.strip())
    return {words[0]: words[1:] for words in parts}


# The installer's page and the owner portal show these maps in frames of their own; no other site may frame them.
FRAMED_BY_OUR_PAGES = re.compile(r"/installer/map|/installer/coverage|/portal/bikes/[0-9]+/map|/shared/[\w-]+/map")


def _assert_protected(r: Any) -> None:
    where = f"{r.request.method} {r.request.url.path}"
    framing = ["'self'"] if FRAMED_BY_OUR_PAGES.fullmatch(r.request.url.path) else ["'none'"]
    assert r.headers.get("x-content-type-options") == "nosniff", where
    assert r.headers.get("referrer-policy") in {"no-referrer", "same-origin", "strict-origin"}, where
    policy = _directives(r.headers.get("content-security-policy", ""))
    assert policy.get("frame-ancestors") == framing, where
    assert policy.get("object-src") == ["'none'"], where
    assert policy.get("base-uri") == ["'none'"], where
    scripts = policy.get("script-src") or policy.get("default-src") or []
    assert scripts and "'unsafe-inline'" not in scripts and "'unsafe-eval'" not in scripts and "*" not in scripts, where


def test_every_page_and_api_response_carries_the_security_headers(staff: Staff) -> None:
    done = staff.register()
    bike_id = done["bike"]["bike_id"]
    owner = staff.owner_of(done)
    for caller, path in (
        (staff.anonymous, "/login"),
        (staff.anonymous, "/verify?token=x"),
        (staff.anonymous, "/api/health"),
        (staff.anonymous, "/api/auth/me"),
        (staff.anonymous, "/assets/web/common.js"),
        (staff.police, "/"),
        (staff.clerk, "/counter"),
        (staff.clerk, f"/bikes/{bike_id}/certificate"),
        (staff.installer, "/installer"),
        (staff.installer, "/installer/map"),
        (staff.installer, "/installer/coverage"),
        (owner, "/portal"),
        (owner, "/password"),
    ):
        _assert_protected(caller.get(path, follow_redirects=False))


def test_inline_scripts_carry_a_fresh_nonce(staff: Staff) -> None:
    first, second = staff.police.get("/"), staff.police.get("/")
    nonce = next(
        s[len("'nonce-") : -1]
        for s in _directives(first.headers["content-security-policy"])["script-src"]
        if s.startswith("'nonce-")
    )
    assert f'nonce="{nonce}"' in first.text and nonce not in second.text


@pytest.fixture
def server(database_url: str) -> Iterator[str]:
    """The backend (API and pages, no ingest) served by uvicorn on a free port."""
    require_chromium()
    port = free_port()
    with served(create_app(factories.settings(database_url, http_port=port), run_ingest=False), port) as url:
        yield url


def _visit(page, server: str, path: str, ready: str, picture: str) -> None:  # type: ignore[no-untyped-def]
    page.goto(f"{server}{path}", wait_until="load")
    page.wait_for_selector(ready)
    page.wait_for_timeout(500)
    page.screenshot(path=str(screenshot_path(f"csp-{picture}.png")))


def _signed_in(page, server: str, username: str, password: str = factories.PASSWORD) -> None:  # type: ignore[no-untyped-def]
    page.goto(f"{server}/login?lang=en", wait_until="load")
    page.fill("#username", username)
    page.fill("#password", password)
    page.click("#login-submit")
    page.wait_for_url(lambda url: "/login" not in url)
    page.wait_for_load_state("load")


def test_every_roles_pages_work_under_the_policy_in_chromium(server: str, database_url: str) -> None:
    with TestClient(create_app(factories.settings(database_url), run_ingest=False)) as client:
        staff = Staff(client, database_url)
        done = staff.register()
        owner = staff.owner_of(done)
        bike_id = done["bike"]["bike_id"]
        photo = staff.clerk.post(
            f"/api/bikes/{bike_id}/photos", files={"photo": ("b.png", _png((64, 48)), "image/png")}
        )
        assert photo.status_code == 201, photo.text
        names = {"police": staff.police.username, "clerk": staff.clerk.username, "installer": staff.installer.username}
    with psycopg.connect(database_url) as conn:
        factories.station(conn, "st-csp", 30.27, 120.15)
    visits = {
        "police": [("/", ".leaflet-container", "police-live")],
        "clerk": [
            ("/counter?lang=en", "#register-form", "clerk-counter"),
            (f"/bikes/{bike_id}/certificate?lang=en", "#certificate svg", "clerk-certificate"),
        ],
        "installer": [
            ("/installer?lang=en", "main", "installer-home"),
            ("/installer/map", ".leaflet-container", "installer-map"),
            ("/installer/coverage?lang=en", ".leaflet-container", "installer-coverage"),
        ],
        "owner": [("/portal?lang=en", "main", "owner-portal")],
    }
    for role, pages in visits.items():
        with browser_page() as page:
            page.goto(f"{server}/login?lang=en", wait_until="load")
            page.wait_for_selector("#login-form")
            _signed_in(page, server, owner.username if role == "owner" else names[role])
            for path, ready, picture in pages:
                _visit(page, server, path, ready, picture)
            # Chromium reports each blocked script, style or frame as a console error naming the policy.
            assert console_errors(page) == [], role
    with browser_page() as page:
        _visit(page, server, "/verify?lang=en&token=nothing", "main", "anyone-verify")
        assert console_errors(page) == []
