"""Issue 11 #12: certificate links took their host from the request's Host header when public_base_url was unset.

A printed certificate's QR code then pointed wherever the request said it was sent to: a clerk's page fetched through
a hostile proxy, or a request with a forged Host, printed a link to the attacker's look-alike verify page.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from backend.api.app import create_app
from backend.settings import BackendSettings, random_secret_settings
from tests import factories
from tests.backend.conftest import Staff

PUBLIC = "https://bikes.example.gov"
EVIL = "evil.example"


@pytest.fixture
def production(database_url: str) -> Iterator[Staff]:
    """The app as deployed (production settings, its public address configured), with staff signed in."""
    settings = factories.settings(
        database_url, environment="production", public_base_url=PUBLIC, session_cookie_secure=False
    )
    with TestClient(create_app(settings, run_ingest=False)) as client:
        yield Staff(client, database_url)


def test_production_needs_the_public_address() -> None:
    with pytest.raises(ValidationError, match="BIKEGUARD_PUBLIC_BASE_URL"):
        BackendSettings(database_url="postgresql://x", environment="production", **random_secret_settings())
    with pytest.raises(ValidationError, match="BIKEGUARD_PUBLIC_BASE_URL"):
        BackendSettings(
            database_url="postgresql://x",
            environment="production",
            public_base_url="bikes.example.gov",
            **random_secret_settings(),
        )


def test_a_forged_host_header_never_reaches_a_certificate(production: Staff) -> None:
    done = production.register()
    bike_id = done["bike"]["bike_id"]
    assert done["certificate"]["verify_url"].startswith(f"{PUBLIC}/verify?token=")
    forged = {"Host": EVIL, "X-Forwarded-Host": EVIL}
    answers = [
        production.clerk.get(f"/api/bikes/{bike_id}/certificate", headers=forged).text,
        production.clerk.get(f"/bikes/{bike_id}/certificate", headers=forged).text,
    ]
    for text in answers:
        assert EVIL not in text
        assert re.search(re.escape(PUBLIC) + r"/verify\?token=", text)


def test_the_request_address_is_used_only_in_development(database_url: str) -> None:
    # On a developer's machine without a public address, the link follows the request (that is convenient there).
    with TestClient(create_app(factories.settings(database_url), run_ingest=False)) as client:
        done = Staff(client, database_url).register()
    assert done["certificate"]["verify_url"].startswith("http://testserver/verify?token=")
