"""Issue 11 #11: an install left with the default settings used three secrets anyone can read in our source.

The ID encryption, ID lookup and certificate signing keys defaulted to a placeholder and the environment defaulted to
development, which accepts it: anyone could mint certificate tokens that verify as genuine on such an install.
"""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest
from pydantic import ValidationError

from backend.settings import DEFAULT_SECRET, BackendSettings
from bikeguard.services import free_port


def _environment_without_settings(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BIKEGUARD_")}
    return {**env, **settings}


def test_the_backend_refuses_to_start_with_the_placeholder_secrets(database_url: str) -> None:
    port = free_port()
    env = _environment_without_settings(BIKEGUARD_DATABASE_URL=database_url, BIKEGUARD_HTTP_PORT=str(port))
    backend = subprocess.Popen(
        [sys.executable, "-m", "bikeguard.cli", "backend", "--no-ingest"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _, stderr = backend.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        # Still running: it serves, signing certificate tokens with a key anyone can read in our source.
        served = httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=5).status_code
        backend.kill()
        backend.communicate()
        pytest.fail(f"the backend started with the placeholder secrets (GET /api/health: {served})")
    assert backend.returncode == 2
    assert "BIKEGUARD_ID_ENCRYPTION_KEY must be set to a random string" in stderr
    assert "BIKEGUARD_ENVIRONMENT=development" in stderr
    assert "Traceback" not in stderr


def test_placeholder_secrets_need_development_mode_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("BIKEGUARD_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("BIKEGUARD_DATABASE_URL", "postgresql://localhost/bikeguard")
    with pytest.raises(ValidationError, match="BIKEGUARD_CERTIFICATE_SIGNING_KEY|BIKEGUARD_ID_ENCRYPTION_KEY"):
        BackendSettings()  # type: ignore[call-arg]  # database_url comes from the environment
    monkeypatch.setenv("BIKEGUARD_ENVIRONMENT", "production")
    with pytest.raises(ValidationError, match="placeholder"):
        BackendSettings()  # type: ignore[call-arg]
    monkeypatch.setenv("BIKEGUARD_ENVIRONMENT", "development")
    assert BackendSettings().certificate_signing_key.get_secret_value() == DEFAULT_SECRET  # type: ignore[call-arg]


def test_a_refused_setting_never_echoes_the_secrets_given(monkeypatch: pytest.MonkeyPatch) -> None:
    # A key too short is refused; the error (which a supervisor or a library may log whole) names it, never shows
    # it or the other secrets and passwords given beside it.
    for name in list(os.environ):
        if name.startswith("BIKEGUARD_"):
            monkeypatch.delenv(name)
    secrets = {
        "BIKEGUARD_DATABASE_URL": "postgresql://app:db-pass-0n3@localhost/bikeguard",
        "BIKEGUARD_MQTT_URL": "mqtt://backend:mqtt-pass-tw0@broker:1883",
        "BIKEGUARD_ID_ENCRYPTION_KEY": "short-k3y",
        "BIKEGUARD_ENVIRONMENT": "production",
    }
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as refused:
        BackendSettings()  # type: ignore[call-arg]  # database_url comes from the environment
    text = str(refused.value)
    assert "BIKEGUARD_ID_ENCRYPTION_KEY" in text and "too short" in text
    for leaked in ("db-pass-0n3", "mqtt-pass-tw0", "short-k3y"):
        assert leaked not in text
