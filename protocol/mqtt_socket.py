"""The MQTT connection's socket and paho client: what every client of ours sets on them."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from typing import Any


def no_delay(sock: Any) -> None:
    """Send small packets at once (TCP_NODELAY; paho leaves Nagle on).

    With Nagle, a small packet (a PUBACK, a confirmation, an alert) waits while an earlier one is unacknowledged,
    and the peer acknowledges late (delayed ACK, 40 ms on Linux): a station's drain ran at about 370 batches/s
    instead of thousands, and an alert could wait 40 ms behind a batch.
    """
    with contextlib.suppress(OSError, AttributeError):  # not TCP (a Unix socket), or already closed
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class NoTopicCallbacks:
    """paho's per-topic callbacks (`Client._on_message_filtered`), of which we have none: no message matches one,
    at no cost and without the garbage paho's own matcher makes for each message."""

    def iter_match(self, _topic: str) -> Iterator[Any]:
        return iter(())

    def __setitem__(self, _topic_filter: str, _callback: Any) -> None:
        raise NotImplementedError("our MQTT clients send every message to one callback: no per-topic ones")


def one_callback(client: Any) -> None:
    """Every message paho receives goes to `client.on_message`, without the per-topic matching (which we do not use:
    `message_callback_add`). paho matches each message anyway, and its matcher's recursive closure is a reference
    cycle per message: garbage for the cyclic collector, which at 1,000 vendor stations in one bridge (some 9,000
    objects a second) was most of what it found and so why it ran."""
    if not hasattr(client, "_on_message_filtered"):
        raise RuntimeError("paho no longer has _on_message_filtered: see protocol/mqtt_socket.py, one_callback")
    client._on_message_filtered = NoTopicCallbacks()
