"""The MQTT connection's socket: what every client of ours sets on it."""

from __future__ import annotations

import contextlib
import socket
from typing import Any


def no_delay(sock: Any) -> None:
    """Send small packets at once (TCP_NODELAY; paho leaves Nagle on).

    With Nagle, a small packet (a PUBACK, a confirmation, an alert) waits while an earlier one is unacknowledged,
    and the peer acknowledges late (delayed ACK, 40 ms on Linux): a station's drain ran at about 370 batches/s
    instead of thousands, and an alert could wait 40 ms behind a batch.
    """
    with contextlib.suppress(OSError, AttributeError):  # not TCP (a Unix socket), or already closed
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
