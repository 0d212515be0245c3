"""Gateway settings: env prefix, defaults, refusals, and secrets kept out of reprs."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.settings import GatewaySettings


def test_settings_come_from_env_with_the_gateway_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BIKEGUARD_GATEWAY_STATION_ID", "s-7")
    monkeypatch.setenv("BIKEGUARD_GATEWAY_SERIAL_URL", "socket://127.0.0.1:7000")
    monkeypatch.setenv("BIKEGUARD_GATEWAY_PASSAGE_GAP_S", "5")

    settings = GatewaySettings()

    assert (settings.station_id, settings.serial_url, settings.passage_gap_s) == ("s-7", "socket://127.0.0.1:7000", 5)
    assert (settings.baud_rate, settings.passage_max_s, settings.batch_max) == (115200, 60, 500)
    assert (settings.batch_interval_s, settings.status_interval_s) == (1.0, 30)
    assert settings.spool_file == Path("gateway-s-7.spool")
    assert (settings.spool_max_bytes, settings.passage_checkpoint_s) == (512 * 1024 * 1024, 10)
    assert settings.mqtt_endpoint == "127.0.0.1:1883"


def test_arguments_win_over_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BIKEGUARD_GATEWAY_STATION_ID", "from-env")
    settings = GatewaySettings(station_id="from-args", serial_url="/dev/ttyUSB0")
    assert settings.station_id == "from-args"


def test_mqtt_credentials_stay_out_of_reprs_and_logs() -> None:
    settings = GatewaySettings(station_id="s1", serial_url="/dev/null", mqtt_url="mqtt://gw:hunter2@broker:8883")
    assert settings.mqtt_address == ("broker", 8883, "gw", "hunter2")
    assert "hunter2" not in repr(settings)
    assert settings.mqtt_endpoint == "broker:8883"


@pytest.mark.parametrize(
    "bad",
    [
        {"station_id": "Upper Case"},
        {"mqtt_url": "http://broker"},
        {"passage_gap_s": 10, "passage_max_s": 5},
        {"batch_max": 0},
        {"spool_max_bytes": 64 * 1024},  # under 1 MiB: not even a few full batches
        {"passage_checkpoint_s": 0},
    ],
)
def test_settings_that_cannot_work_are_refused(bad: dict[str, object]) -> None:
    values: dict[str, object] = {"station_id": "s1", "serial_url": "/dev/null", **bad}
    with pytest.raises(ValidationError):
        GatewaySettings(**values)  # type: ignore[arg-type]
