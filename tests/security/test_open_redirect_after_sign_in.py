"""Issue 11, finding 8: `/login?next=/%5Cevil.example` (or `/%09/evil.example`) passed the server's "starts with
one slash" check, and login.js / password.js then sent the browser to evil.example, which browsers read as
`//evil.example` (a backslash is a slash to them, a tab is dropped). After signing in, or changing one's
password, the browser stays on our site, whatever `next` says."""

from __future__ import annotations

import time
from collections.abc import Iterator
from urllib.parse import quote, urlsplit

import psycopg
import pytest
from fastapi.testclient import TestClient

from backend.api.app import create_app
from bikeguard.services import free_port
from tests import factories
from tests.backend.conftest import Staff
from tests.browser import browser_page, console_errors, require_chromium
from tests.serving import served

# As an attacker writes them in a link; each decodes to something a browser reads as another host.
EVIL_NEXTS = (
    "/%5Cevil.example",
    "/%09/evil.example",
    "/%5C%5Cevil.example/home",
    "%2F%2Fevil.example",
    "/%0A/evil.example",
    "/%0D/evil.example",
    "/%20/evil.example",
    "https://evil.example/",
    "/%2F/evil.example",
    "/%E3%80%80/evil.example",
)


def _settled_url(page, before: str, timeout_s: float = 15) -> str:  # type: ignore[no-untyped-def]
    """The page's address once it has left `before` and finished loading (or `before` after the timeout)."""
    deadline = time.monotonic() + timeout_s
    while page.url == before and time.monotonic() < deadline:
        page.wait_for_timeout(100)
    page.wait_for_load_state("load")
    return str(page.url)


@pytest.mark.parametrize("evil", EVIL_NEXTS)
def test_signed_in_login_page_redirects_only_within_the_site(staff: Staff, evil: str) -> None:
    r = staff.clerk.get(f"/login?next={evil}", follow_redirects=False)
    assert r.status_code == 303, r.text
    location = r.headers["location"]
    assert location == "/home", f"next={evil} sent a signed-in user to {location!r}"


@pytest.mark.parametrize("evil", EVIL_NEXTS)
@pytest.mark.parametrize("page", ["login", "password"])
def test_sign_in_pages_hand_the_script_only_a_same_site_next(staff: Staff, evil: str, page: str) -> None:
    r = staff.clerk.get(f"/{page}?next={evil}")
    assert r.status_code == 200, r.text
    assert "evil.example" not in r.text, f"/{page}?next={evil} hands the page a next that leaves the site"


def test_ordinary_next_is_kept(staff: Staff) -> None:
    r = staff.clerk.get("/login?next=/counter%3Flang%3Den", follow_redirects=False)
    assert r.headers["location"] == "/counter?lang=en"


@pytest.fixture
def server(database_url: str) -> Iterator[str]:
    """The backend (API and pages, no ingest) served by uvicorn on a free port."""
    require_chromium()
    port = free_port()
    with served(create_app(factories.settings(database_url, http_port=port), run_ingest=False), port) as url:
        yield url


def _sign_in(page, username: str, password: str) -> None:  # type: ignore[no-untyped-def]
    page.wait_for_selector("#login-form")
    page.fill("#username", username)
    page.fill("#password", password)
    page.click("#login-submit")


@pytest.mark.parametrize("evil", ["/%5Cevil.example", "/%09/evil.example"])
def test_browser_stays_on_our_site_after_signing_in(server: str, database_url: str, evil: str) -> None:
    with psycopg.connect(database_url) as conn:
        clerk = factories.account(conn, "clerk")
    ours = urlsplit(server).netloc
    with browser_page() as page:
        page.goto(f"{server}/login?lang=en&next={evil}")
        before = page.url
        _sign_in(page, clerk, factories.PASSWORD)
        landed = _settled_url(page, before)
        assert urlsplit(landed).netloc == ours, f"signing in with next={evil} took the browser to {landed}"
        page.wait_for_selector("#register-form")  # the clerk's own page
        assert console_errors(page) == []


@pytest.mark.parametrize("evil", ["/%5Cevil.example", "/%09/evil.example"])
def test_browser_stays_on_our_site_after_changing_the_password(server: str, database_url: str, evil: str) -> None:
    with TestClient(create_app(factories.settings(database_url), run_ingest=False)) as client:
        staff = Staff(client, database_url)
        slip = staff.register()["owner_login"]
    ours = urlsplit(server).netloc
    with browser_page() as page:
        page.goto(f"{server}/login?lang=en")
        _sign_in(page, slip["username"], slip["initial_password"])
        page.wait_for_selector("#password-form")
        page.goto(f"{server}/password?lang=en&next={evil}")
        page.wait_for_selector("#password-form")
        page.fill("#current", slip["initial_password"])
        page.fill("#new", factories.PASSWORD)
        page.fill("#repeat", factories.PASSWORD)
        before = page.url
        page.click("#password-form button[type=submit]")
        landed = _settled_url(page, before)
        assert urlsplit(landed).netloc == ours, f"changing the password with next={evil} took the browser to {landed}"


@pytest.mark.parametrize("evil", ["/\\evil.example", "/\t/evil.example", "//evil.example", "/\\/evil.example"])
def test_the_pages_script_keeps_next_on_the_site(server: str, evil: str) -> None:
    """The script's own rule, for a next that did not come through the server's check."""
    with browser_page() as page:
        page.goto(f"{server}/login?lang=en")
        page.wait_for_selector("#login-form")
        assert page.evaluate("(next) => BG.samePath(next)", evil) == "/home"
        assert page.evaluate("(next) => BG.samePath(next)", "/counter?lang=en") == "/counter?lang=en"
        assert page.evaluate("(next) => BG.samePath(next)", quote("/portal")) == "/portal"
