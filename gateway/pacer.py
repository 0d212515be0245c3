"""Background work of many stations in one event loop, a slice a turn: what their connections bring is read first.

The vendor bridge runs a thousand stations in one event loop. Besides reading their uploads, each station has work
that may wait a few milliseconds: its batch tick, its uplink's drain after a PUBACK, a confirmation from the backend.
At a thousand stations that is some 900 jobs a second of about 0.2 ms each, and they come in bursts (the broker's
PUBACKs and the backend's confirmations arrive for many stations at once). A turn of the loop then ran hundreds of
them, 40-130 ms, before it read the next upload, and a stolen chip's alert in that upload waited for them
(docs/benchmarks.md, "Vendor bridge").

With a `Pacer`, such a job takes a slot (`async with pacer.slot():`, around work that does not await). A turn of the
event loop runs up to `slice_s` of them as they come; the jobs beyond wait, and each later turn starts about a slice
of them (by their measured mean), which run at the start of the turn after it, ahead of what the connections brought
in it. So an upload waits for at most a slice or two of background work rather than a burst of it. The jobs start in
the order they asked, and none is dropped. A station alone in its process has no pacer.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from types import TracebackType

# What one turn of the loop gives background work: a stolen chip's upload waits for about this (and the reads ahead
# of it) before it is read.
SLICE_S = 0.002
# The first guess of a job's cost, before any was measured (a tick, drain or confirmation at 1,000 stations).
_FIRST_ESTIMATE_S = 0.0002
_SMOOTHING = 0.05  # of each job's own time in the running mean


class Pacer:
    """Runs background jobs up to `slice_s` a turn of the event loop, in the order they asked; the rest wait."""

    def __init__(self, slice_s: float = SLICE_S) -> None:
        if slice_s <= 0:
            raise ValueError("slice_s must be positive")
        self.slice_s = slice_s
        self.job_s = _FIRST_ESTIMATE_S  # the running mean of a job's time
        self.jobs = 0  # jobs done
        self.waited_s = 0.0  # the time jobs waited for their slots, in all
        self._left_s = slice_s  # what this turn's slice has left for a job that asks
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._turn_due = False

    @property
    def waiting(self) -> int:
        """Jobs waiting for a slot now."""
        return len(self._waiting)

    def slot(self) -> _Slot:
        """A job's slot: `async with pacer.slot(): ...` waits for it if the turn's slice is spent or others wait."""
        return _Slot(self)

    async def _take(self) -> float:
        """Wait for a slot if need be; the time the job starts."""
        if self._waiting or self._left_s <= 0:
            asked = time.perf_counter()
            granted = asyncio.get_running_loop().create_future()
            self._waiting.append(granted)
            self._turn_soon()
            await granted  # cancelled meanwhile: the turn skips it
            start = time.perf_counter()
            self.waited_s += start - asked
            return start
        return time.perf_counter()

    def _done(self, start: float) -> None:
        took = time.perf_counter() - start
        self.jobs += 1
        self.job_s += _SMOOTHING * (took - self.job_s)
        self._left_s -= took
        if self._left_s <= 0:
            self._turn_soon()  # a new slice next turn

    def _turn_soon(self) -> None:
        if not self._turn_due:
            self._turn_due = True
            asyncio.get_running_loop().call_soon(self._turn)

    def _turn(self) -> None:
        """A new turn's slice: the waiting jobs it holds started (they run at the start of the next turn, ahead of
        what the connections bring then, and no job that asks meanwhile overtakes them)."""
        self._turn_due = False
        starts = max(1, int(self.slice_s / max(self.job_s, 1e-6)))
        started = 0
        waiting = self._waiting
        while waiting and started < starts:
            granted = waiting.popleft()
            if not granted.done():  # a job cancelled while it waited takes no start
                granted.set_result(None)
                started += 1
        self._left_s = 0.0 if started else self.slice_s
        if waiting:
            self._turn_soon()


class _Slot:
    """`async with`: a job's slot from its pacer, and its time counted when it is done."""

    __slots__ = ("_pacer", "_start")

    def __init__(self, pacer: Pacer) -> None:
        self._pacer = pacer
        self._start = 0.0

    async def __aenter__(self) -> None:
        self._start = await self._pacer._take()

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._pacer._done(self._start)
