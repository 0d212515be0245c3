"""Schemathesis fuzzes the OpenAPI schema of the running backend as each role: no request may get a 5xx.

Run it alone with `pytest tests/backend/test_fuzz.py` (BIKEGUARD_FUZZ_EXAMPLES=200 for a longer run);
docs/counter.md shows the same `schemathesis run` command against any backend.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

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


@pytest.fixture
def backend(database_url: str) -> Iterator[str]:
    """The backend (no ingest) on a free port, with a few registered bikes for the fuzzer to find."""
    port = free_port()
    app = create_app(
        factories.settings(database_url, http_port=port, login_max_failures_per_address=10_000), run_ingest=False
    )
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


def test_no_request_to_the_api_gets_a_server_error(backend: str, database_url: str, tmp_path: Path) -> None:
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
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp_path)
        if done.returncode != 0:
            failures.append(f"--- as {role} (exit {done.returncode}):\n{done.stdout[-6000:]}\n{done.stderr[-2000:]}")
    assert failures == [], "\n".join(failures)
