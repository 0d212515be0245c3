"""Schemathesis fuzzes the OpenAPI schema of the running backend as each role: no request may get a 5xx.

Its values include the extremes (tests/backend/fuzz_extremes.py, loaded as schemathesis hooks): date-times from
year 1 to 9999 at every offset, integers past 64 bits, very long strings, big arrays.
Run it alone with `pytest tests/backend/test_fuzz.py` (BIKEGUARD_FUZZ_EXAMPLES=200 for a longer run);
docs/counter.md shows the same `schemathesis run` command against any backend.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from starlette.types import ASGIApp, Receive, Scope, Send

from backend.api.app import create_app
from bikeguard.services import free_port
from tests import factories
from tests.serving import served

# Signing out or disabling oneself would only end the run's own session early; the live feeds are
# endless streams (every request would wait for the timeout).
EXCLUDED = (
    "/api/auth/logout",
    "/api/accounts/{account_id}/disable",
    "/api/live",
    "/api/stations/{station_id}/selftests/live",
)
# Clerks reissue owners' passwords and admins everyone's, which ends those sessions: they go last.
ORDER = ("owner", "police", "installer", "clerk", "admin")
EXTREMES = Path(__file__).with_name("fuzz_extremes.py")


# What the extremes look like in a URL once encoded: the fuzz must have sent each of them (the hooks took).
EXTREMES_SEEN = {
    "year 1": re.compile(rb"=0001-01-01T"),
    "year 9999": re.compile(rb"=9999-12-31T"),
    "an offset of -12:00": re.compile(rb"-12%3A00"),
    "an integer past 64 bits": re.compile(rb"(?:=|/)-?[0-9]{20,}(?:&|/|$)"),
    "a string of 4000 characters": re.compile(rb"(?:=|/)(?:x{4000}|9{4000})"),
}


class ExtremesSeen:
    """ASGI middleware: notes which of EXTREMES_SEEN arrived in a request's path or query."""

    def __init__(self, app: ASGIApp, seen: set[str]) -> None:
        self.app = app
        self.seen = seen

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            url = scope.get("raw_path", b"") + b"?" + scope.get("query_string", b"")
            self.seen.update(what for what, pattern in EXTREMES_SEEN.items() if pattern.search(url))
        await self.app(scope, receive, send)


@pytest.fixture
def seen() -> set[str]:
    """The extremes the backend received."""
    return set()


@pytest.fixture
def backend(database_url: str, seen: set[str]) -> Iterator[str]:
    """The backend (no ingest) on a free port, with a few registered bikes for the fuzzer to find."""
    port = free_port()
    app = create_app(
        factories.settings(database_url, http_port=port, login_max_failures_per_address=10_000), run_ingest=False
    )
    app.add_middleware(ExtremesSeen, seen=seen)
    with served(app, port) as url:
        yield url


def _token(base: str, username: str, password: str = factories.PASSWORD) -> str:
    r = httpx.post(f"{base}/api/auth/login", json={"username": username, "password": password, "token_in_body": True})
    assert r.status_code == 200, r.text
    return str(r.json()["token"])


def _schemathesis() -> list[str]:
    found = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or shutil.which("schemathesis")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("CI must run the fuzzing: schemathesis comes with the test extra (pip install -e '.[test]')")
        pytest.skip("schemathesis is not installed (pip install -e '.[test]')")
    return [found]


def test_no_request_to_the_api_gets_a_server_error(
    backend: str, database_url: str, tmp_path: Path, seen: set[str]
) -> None:
    with psycopg.connect(database_url) as conn:
        names = {role: factories.account(conn, role) for role in ("admin", "clerk", "police", "installer")}
    clerk = _token(backend, names["clerk"])
    slips = []
    for _ in range(3):
        r = httpx.post(
            f"{backend}/api/bikes", json=factories.registration(), headers={"Authorization": f"Bearer {clerk}"}
        )
        assert r.status_code == 201, r.text
        slips.append(r.json()["owner_login"])
    owner = _token(backend, slips[0]["username"], slips[0]["initial_password"])
    httpx.post(
        f"{backend}/api/auth/password",
        headers={"Authorization": f"Bearer {owner}"},
        json={"current_password": slips[0]["initial_password"], "new_password": factories.PASSWORD},
    )
    tokens = {role: _token(backend, name) for role, name in names.items()} | {"owner": owner}

    examples = os.environ.get("BIKEGUARD_FUZZ_EXAMPLES", "15")
    failures = []
    for role in ORDER:
        token = tokens[role]
        cmd = [
            *_schemathesis(),
            "run",
            f"{backend}/openapi.json",
            "--checks",
            "not_a_server_error",
            "--header",
            f"Authorization: Bearer {token}",
            "--max-examples",
            examples,
            "--seed",
            "1",
            # One worker: with two, hypothesis describing schemathesis' filter lambdas calls ast.parse from two
            # threads at once, which CPython 3.11 does not survive ("AST constructor recursion depth mismatch").
            "--workers",
            "1",
            "--generation-database",
            "none",
            "--no-color",
            "--phases",
            "examples,coverage,fuzzing",
            *[a for path in EXCLUDED for a in ("--exclude-path", path)],
        ]
        env = os.environ | {"SCHEMATHESIS_HOOKS": str(EXTREMES)}
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp_path, env=env)
        if done.returncode != 0:
            failures.append(f"--- as {role} (exit {done.returncode}):\n{done.stdout[-6000:]}\n{done.stderr[-2000:]}")
    assert failures == [], "\n".join(failures)
    assert seen == set(EXTREMES_SEEN), f"the fuzz never sent {set(EXTREMES_SEEN) - seen}"
