"""Where a broker is: host, port and credentials from an `mqtt://user:password@host:port` URL (`mqtts://` for TLS)."""

from __future__ import annotations

import re
from typing import NamedTuple
from urllib.parse import urlsplit

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 1883
DEFAULT_TLS_PORT = 8883
_PLAIN = ("mqtt", "tcp")
_TLS = ("mqtts", "ssl")
# What follows "scheme://user:" up to the last "@": a password, also one with an unescaped "/" or "@" in it.
_PASSWORD = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://[^:@/]*:).*@", re.DOTALL)


class MqttAddress(NamedTuple):
    """A broker's host and port and the credentials to give it (None when the URL has none)."""

    host: str
    port: int
    username: str | None
    password: str | None


class MqttUrlError(ValueError):
    """A broker URL that is not `mqtt://` (or `tcp://`) or `mqtts://` (or `ssl://`), or whose host or port is not
    valid. Its message shows the URL without its password."""


def redacted(url: str) -> str:
    """The URL with its password (if any) shown as ***: safe for a log line or an error message."""
    return _PASSWORD.sub(r"\1***@", url)


def mqtt_address(url: str) -> MqttAddress:
    """host, port, username, password from mqtt://user:pass@host:port (or mqtts://, whose port is 8883 by default)."""
    try:
        parts = urlsplit(url)
        port = parts.port  # a ValueError for a port out of range or not a number
    except ValueError:
        # Not the error's own text: it quotes the part it took for a port, which may be a piece of the password.
        raise MqttUrlError(
            f"MQTT URL {redacted(url)!r}: the host is malformed or the port is not a number from 0 to 65535"
        ) from None
    if parts.scheme not in _PLAIN + _TLS:
        raise MqttUrlError(f"MQTT URL must start with mqtt:// or mqtts:// : {redacted(url)!r}")
    port = port or (DEFAULT_TLS_PORT if parts.scheme in _TLS else DEFAULT_PORT)
    return MqttAddress(parts.hostname or DEFAULT_HOST, port, parts.username, parts.password)


def uses_tls(url: str) -> bool:
    """Whether the broker URL asks for TLS (mqtts:// or ssl://)."""
    return urlsplit(url).scheme in _TLS
