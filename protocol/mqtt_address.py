"""Where a broker is: host, port and credentials from an `mqtt://user:password@host:port` URL."""

from __future__ import annotations

from typing import NamedTuple
from urllib.parse import urlsplit

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 1883


class MqttAddress(NamedTuple):
    """A broker's host and port and the credentials to give it (None when the URL has none)."""

    host: str
    port: int
    username: str | None
    password: str | None


class MqttUrlError(ValueError):
    """A broker URL that is not `mqtt://` (or `tcp://`)."""


def mqtt_address(url: str) -> MqttAddress:
    """host, port, username, password from mqtt://user:pass@host:port."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "tcp"):
        raise MqttUrlError(f"MQTT URL must start with mqtt:// : {url!r}")
    return MqttAddress(parts.hostname or DEFAULT_HOST, parts.port or DEFAULT_PORT, parts.username, parts.password)
