"""protocol/mqtt_address.py: a broker's host, port and credentials from its URL."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gateway.settings import GatewaySettings
from protocol.mqtt_address import MqttAddress, MqttUrlError, mqtt_address, redacted, uses_tls


def test_url_with_credentials_gives_all_four_parts() -> None:
    assert mqtt_address("mqtt://gw:hunter2@broker:8883") == MqttAddress("broker", 8883, "gw", "hunter2")


def test_bare_url_defaults_to_the_standard_port_without_credentials() -> None:
    host, port, username, password = mqtt_address("mqtt://broker")
    assert (host, port, username, password) == ("broker", 1883, None, None)


def test_tcp_scheme_is_taken_too() -> None:
    assert mqtt_address("tcp://10.0.0.5:1884") == ("10.0.0.5", 1884, None, None)


def test_missing_host_means_this_machine() -> None:
    assert mqtt_address("mqtt://:1885").host == "127.0.0.1"


@pytest.mark.parametrize("url", ["http://broker", "broker:1883", "wss://broker", ""])
def test_other_schemes_are_refused(url: str) -> None:
    with pytest.raises(MqttUrlError, match="MQTT URL must start with mqtt://"):
        mqtt_address(url)


def test_url_error_is_a_value_error() -> None:
    # pydantic turns a ValueError from a settings validator into a validation error.
    assert issubclass(MqttUrlError, ValueError)


def test_mqtts_is_tls_on_port_8883_by_default() -> None:
    assert mqtt_address("mqtts://gw:pw@broker") == MqttAddress("broker", 8883, "gw", "pw")
    assert uses_tls("mqtts://broker:9883") and uses_tls("ssl://broker")
    assert not uses_tls("mqtt://broker:8883")


@pytest.mark.parametrize(
    ("url", "password"),
    [
        ("http://gw:hunter2@broker", "hunter2"),  # a wrong scheme
        ("mqtt://gw:hunter2@broker:99999", "hunter2"),  # a port out of range
        ("mqtt://gw:hunter2@broker:abc", "hunter2"),  # a port that is no number
        ("mqtt://gw:hunt/er@2@broker:abc", "hunt/er@2"),  # a password with an unescaped / and @
        ("mqtt://gw:hunter2@[::1:1883", "hunter2"),  # a broken IPv6 host
    ],
)
def test_a_bad_url_is_refused_without_showing_its_password(url: str, password: str) -> None:
    # An attack on the logs: an installer's typo must not put the broker password, or a piece of it, into an error
    # message, a log line or a settings error (which the gateway prints at start).
    with pytest.raises(MqttUrlError) as refused:
        mqtt_address(url)
    assert password[:4] not in str(refused.value) and "gw:***@" in str(refused.value)
    with pytest.raises(ValidationError) as invalid:
        GatewaySettings(station_id="st-001", serial_url="loop://", mqtt_url=url)
    assert password[:4] not in str(invalid.value)


def test_redacted_keeps_everything_but_the_password() -> None:
    assert redacted("mqtts://gw:hunter2@broker:8883") == "mqtts://gw:***@broker:8883"
    assert redacted("mqtt://broker:1883") == "mqtt://broker:1883"
    assert redacted("mqtt://gw@broker") == "mqtt://gw@broker"
