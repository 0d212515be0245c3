"""Background work of many stations in one event loop, a slice a turn: what their connections bring is read first.

The vendor bridge runs a thousand stations in one event loop. Besides reading their uploads, each station has work
that may wait a few milliseconds: its batch tick, its uplink's drain after a PUBACK, a confirmation from the backend.
At a thousand stations that is some 900 jobs a second of about 0.2 ms each, and they come in bursts (the broker's
PUBACKs and the backend's confirmations arrive for many stations at once). A turn of the loop then ran hundreds of
them, 40-130 ms, before it read the next upload, and a stolen chip's alert in that upload waited for them
(docs/benchmarks.md, "Vendor bridge").

With a `Pacer`, such a job waits for its slot (`async with pacer.slot():`, around work that does not await). Each
turn of the event loop starts about `slice_s` worth of the jobs waiting (by their measured mean); they run at the
start of the next turn, ahead of what the connections brought in it, so an upload waits for at most a slice of them.
A job starts a turn or more after it asked (microseconds while the loop is idle), in the order the jobs asked, and
none is dropped. A station alone in its process has no pacer.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator

# What one turn of the loop gives background work: a stolen chip's upload waits for at most about this (and the
# reads ahead of it) before it is read.
SLICE_S = 0.002
# The first guess of a job's cost, before any was measured (a tick, drain or confirmation at 1,000 stations).
_FIRST_ESTIMATE_S = 0.0002
_SMOOTHING = 0.05  # of each job's own time in the running mean


class Pacer:
    """Starts the waiting background jobs `slice_s` worth a turn of the event loop, in the order they asked."""

    def __init__(self, slice_s: float = SLICE_S) -> None:
        if slice_s <= 0:
            raise ValueError("slice_s must be positive")
        self.slice_s = slice_s
        self.job_s = _FIRST_ESTIMATE_S  # the running mean of a job's time
        self.jobs = 0  # jobs done
        self.waited_s = 0.0  # the time they waited for their slots, in all
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._turn_due = False

    @property
    def waiting(self) -> int:
        """Jobs waiting for a slot now."""
        return len(self._waiting)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Wait for this job's turn, then run the body (which should not await) and count its time."""
        asked = time.perf_counter()
        granted = asyncio.get_running_loop().create_future()
        self._waiting.append(granted)
        if not self._turn_due:
            self._turn_due = True
            asyncio.get_running_loop().call_soon(self._turn)
        await granted  # cancelled meanwhile: the turn skips it
        start = time.perf_counter()
        self.waited_s += start - asked
        try:
            yield
        finally:
            took = time.perf_counter() - start
            self.jobs += 1
            self.job_s += _SMOOTHING * (took - self.job_s)

    def _turn(self) -> None:
        """Once a turn of the loop while jobs wait: start the slice's worth (they run at the start of the next turn,
        before what the connections bring then, and this runs again right after them)."""
        starts = max(1, int(self.slice_s / max(self.job_s, 1e-6)))
        waiting = self._waiting
        while waiting and starts:
            granted = waiting.popleft()
            if not granted.done():  # a job cancelled while it waited takes no start
                granted.set_result(None)
                starts -= 1
        self._turn_due = bool(waiting)
        if waiting:
            asyncio.get_running_loop().call_soon(self._turn)
