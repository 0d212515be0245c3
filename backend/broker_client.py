"""The backend's MQTT clients (the ingest workers, the hot-list publisher): one way to make them.

Credentials from BIKEGUARD_MQTT_URL, TLS for an mqtts:// URL (the broker's CA, and a client certificate when the
broker asks for one), TCP_NODELAY so that acknowledgements and confirmations leave at once, and every message to the
one `on_message` without paho's per-topic matching (protocol.mqtt_socket.one_callback).
"""

from __future__ import annotations

import ssl
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from backend.settings import BackendSettings
from protocol.mqtt_address import mqtt_address, uses_tls
from protocol.mqtt_socket import no_delay, one_callback


def broker_client(settings: BackendSettings, client_id: str, **options: Any) -> tuple[mqtt.Client, tuple[str, int]]:
    """A paho client for the configured broker, and the (host, port) to connect it to."""
    host, port, user, password = mqtt_address(settings.mqtt_url)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, **options)
    if user:
        client.username_pw_set(user, password)
    if uses_tls(settings.mqtt_url):
        client.tls_set(
            ca_certs=str(settings.mqtt_ca_file) if settings.mqtt_ca_file else None,
            certfile=str(settings.mqtt_cert_file) if settings.mqtt_cert_file else None,
            keyfile=str(settings.mqtt_key_file) if settings.mqtt_key_file else None,
            cert_reqs=ssl.CERT_REQUIRED,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
    client.reconnect_delay_set(0.5, 30)  # type: ignore[arg-type]  # paho waits float seconds; its hint says int
    client.on_socket_open = lambda _c, _u, sock: no_delay(sock)
    one_callback(client)
    return client, (host, port)
