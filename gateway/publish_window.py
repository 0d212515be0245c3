"""The uplink's publish window: which spooled messages go now, which await their PUBACK, which may be deleted.

A sliding window: each PUBACK lets the next message go at once. Waiting for a whole window to be
acknowledged stalls on brokers that delay small writes (Mosquitto's default, no TCP_NODELAY): their
PUBACKs then wait for a TCP ACK that our next PUBLISH would carry. Acknowledged messages are handed
back for deletion in groups: one spool commit per message would cost an SD card more than the network.
Nothing leaves the spool unacknowledged, so what was in flight when a connection dropped is simply
read again, first, on the next one.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable

from gateway.spool import Entry

READ_AHEAD = 4  # windows of messages read from the spool at once


class PublishWindow:
    """Up to `size` messages awaiting PUBACK at once, in spool order; the rest read ahead, not yet sent."""

    def __init__(self, size: int, read_ahead: int = READ_AHEAD) -> None:
        if size < 1:
            raise ValueError(f"a publish window holds at least one message, not {size}")
        self.size = size
        self.read_ahead = read_ahead
        self._ahead: collections.deque[Entry] = collections.deque()
        self._in_flight: dict[int, Entry] = {}  # by spool id, in send order
        self._acked: list[Entry] = []

    @property
    def in_flight(self) -> list[Entry]:
        """Messages sent and awaiting their PUBACK, in send order."""
        return list(self._in_flight.values())

    @property
    def has_room(self) -> bool:
        """True while fewer than `size` messages await their PUBACK."""
        return len(self._in_flight) < self.size

    def needs_reading(self, spooled: bool) -> bool:
        """True if the spool should be read again: there is room, and something new came or nothing is ahead.

        Something new is read at once, so an alert spooled meanwhile overtakes the sightings read ahead.
        """
        return self.has_room and (spooled or not self._ahead)

    @property
    def read_limit(self) -> int:
        """How many messages to peek from the spool for `read` (what is in flight or acknowledged included)."""
        return self.read_ahead * self.size + len(self._in_flight) + len(self._acked)

    def read(self, entries: Iterable[Entry]) -> None:
        """Take the spool's next messages in send order; those already sent are skipped."""
        busy = self._in_flight.keys() | {e.id for e in self._acked}
        self._ahead = collections.deque(e for e in entries if e.id not in busy)

    def send(self) -> list[Entry]:
        """The messages to publish now (as many as there is room for); they count as in flight."""
        out: list[Entry] = []
        while self._ahead and self.has_room:
            entry = self._ahead.popleft()
            self._in_flight[entry.id] = entry
            out.append(entry)
        return out

    def acknowledge(self, entry: Entry) -> None:
        """The broker's PUBACK for a message in flight came."""
        if self._in_flight.pop(entry.id, None) is not None:
            self._acked.append(entry)

    def take_acknowledged(self, *, all_now: bool = False) -> list[Entry]:
        """Acknowledged messages to delete from the spool, in groups of half a window (or all, when nothing flies).

        all_now hands over every acknowledged message whatever their number (the connection is ending).
        """
        if not self._acked or not (all_now or len(self._acked) >= self.size // 2 or not self._in_flight):
            return []
        taken, self._acked = self._acked, []
        return taken

    def lost(self) -> list[Entry]:
        """The connection is gone: forget what was in flight or read ahead, and return what must be resent.

        Those messages stay in the spool; the next connection's window reads them again, first.
        """
        unacknowledged = list(self._in_flight.values())
        self._in_flight.clear()
        self._ahead.clear()
        return unacknowledged
