"""The ingest's lanes between threads: its threads sleep until there is work (or they are told to stop), and
never wake up just to look."""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Generic, TypeVar

from backend.alarms.evidence import Committed

T = TypeVar("T")


class Lane(Generic[T]):
    """Items handed from one thread to another, in order; closing it lets the taker finish what is left.

    With `max_items`, put() waits while the lane is full: the giver (paho's network thread) stops reading from the
    broker, which stops sending once its in-flight window of unacknowledged messages is full, so a backlog stays at
    the broker and not in memory here."""

    def __init__(self, max_items: int | None = None) -> None:
        self.max_items = max_items
        self._items: deque[T] = deque()
        lock = threading.Lock()
        self._ready = threading.Condition(lock)
        self._room = threading.Condition(lock)
        self._closed = False

    def __len__(self) -> int:
        with self._ready:
            return len(self._items)

    def put(self, item: T) -> bool:
        """Hand one item over, waiting while the lane is full; False (the item not taken) once it is closed."""
        with self._ready:
            while self.max_items is not None and len(self._items) >= self.max_items and not self._closed:
                self._room.wait()
            if self._closed and self.max_items is not None and len(self._items) >= self.max_items:
                return False
            self._items.append(item)
            self._ready.notify()
            return True

    def close(self) -> None:
        """No more items will come: take() returns None once the lane is empty."""
        with self._ready:
            self._closed = True
            self._ready.notify_all()
            self._room.notify_all()  # a giver waiting for room must not wait for ever: stop() would hang on it

    def take(self, until: float | None = None) -> T | None:
        """The next item, waiting for it until the monotonic time `until` (None: as long as the lane is open);
        None if none came in time or the lane is closed and empty."""
        with self._ready:
            while not self._items and not self._closed:
                if until is None:
                    self._ready.wait()
                elif not self._ready.wait(until - time.monotonic()):
                    break
            return self._pop()

    def take_now(self) -> T | None:
        """The next item if one is there, without waiting."""
        with self._ready:
            return self._pop()

    def _pop(self) -> T | None:
        if not self._items:
            return None
        self._room.notify()
        return self._items.popleft()


class DeferredPassages:
    """Committed passages waiting for the detectors that judge many flushes at once: handed out when `max_rows`
    have gathered or `interval_s` after the last round, whichever comes first (all of them once closed)."""

    def __init__(self, interval_s: float, max_rows: int) -> None:
        self.interval_s = interval_s
        self.max_rows = max_rows
        self._pending = Committed()
        self._last_round = time.monotonic()
        self._ready = threading.Condition()
        self._closed = False

    def add(self, committed: Committed) -> None:
        """Passages of a committed flush (or of a round that could not be judged, to try again)."""
        if not len(committed):
            return
        with self._ready:
            self._pending.extend(committed)
            self._ready.notify()

    def close(self) -> None:
        """No more passages will come: take() hands out what is left at once, then None."""
        with self._ready:
            self._closed = True
            self._ready.notify_all()

    def take(self) -> Committed | None:
        """The next round's passages, waiting until they are due; None once closed and empty."""
        with self._ready:
            while True:
                if len(self._pending):
                    wait_s = self._last_round + self.interval_s - time.monotonic()
                    if self._closed or len(self._pending) >= self.max_rows or wait_s <= 0:
                        due, self._pending = self._pending, Committed()
                        self._last_round = time.monotonic()
                        return due
                    self._ready.wait(wait_s)
                elif self._closed:
                    return None
                else:
                    self._ready.wait()
