"""The heap of a long-running process: settled once it has started, then collected on a schedule rather than every
few hundred new objects. The vendor bridge (many stations' connections and spools) and the backend (its ingest
workers resolving v2 beacons) both run it; what it saves each is in docs/benchmarks.md ("Vendor bridge", "v2
resolution in the backend")."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import threading
import time

log = logging.getLogger(__name__)

# How long after start the heap is settled: by then the stations have opened their spools and connected.
SETTLE_AFTER_S = 10.0
# Once settled, the cyclic collector runs on a schedule rather than on allocation counts: a full collection this
# often, or sooner once this many more objects are tracked than after the last one (a storm of reconnects, say).
# A bridge's steady state makes next to no cyclic garbage (with gateway.mqtt's fixes for paho, 32 objects in 10 s at
# 1,000 stations, by gc.DEBUG_SAVEALL), so the collections Python starts by itself found nothing and cost every
# station's alerts their pauses: young ones every 0.3 s (up to 35 ms), middle ones every few seconds (40-57 ms) and a
# full one every 20-30 s (about 200 ms). Measured in docs/benchmarks.md, "Vendor bridge".
COLLECT_EVERY_S = 600.0
COLLECT_AFTER_OBJECTS = 500_000
_CHECK_EVERY_S = 1.0


async def settle(
    after_s: float = SETTLE_AFTER_S,
    *,
    collect_every_s: float = COLLECT_EVERY_S,
    collect_after_objects: int = COLLECT_AFTER_OBJECTS,
) -> None:
    """After `after_s`, collect the garbage once and freeze what lives on (modules, settings, spools, connections)
    out of the cyclic collector's sight; it is still freed when its last reference goes. Then, until cancelled, the
    collector runs only every `collect_every_s`, or once `collect_after_objects` more objects are tracked than after
    its last run; automatic collection is back on when cancelled.

    A full collection walks every object the collector tracks, on the event loop's thread: in a bridge of 500 vendor
    stations each took 65-230 ms (p50 176 ms), a dozen times a minute, and every station's uploads and alerts
    waited. Frozen, the same collections walk only what was made since (p50 49-79 ms, about half as often)."""
    await asyncio.sleep(after_s)
    gc.collect()
    gc.freeze()
    gc.disable()
    log.info(
        "heap settled: %d objects frozen out of the garbage collector's passes; it runs every %.0f s, or after %d more"
        " objects",
        gc.get_freeze_count(),
        collect_every_s,
        collect_after_objects,
    )
    try:
        last = time.monotonic()
        while True:
            await asyncio.sleep(min(_CHECK_EVERY_S, collect_every_s))
            # With automatic collection off, the youngest generation's count is the objects tracked since the last run.
            if time.monotonic() - last >= collect_every_s or gc.get_count()[0] >= collect_after_objects:
                gc.collect()
                last = time.monotonic()
    finally:
        gc.enable()


class SettlingThread:
    """`settle` for a process without an event loop of its own (an ingest worker process, a benchmark): run on a
    thread of its own until close(), which gives the collector back as it was."""

    def __init__(self, after_s: float = SETTLE_AFTER_S) -> None:
        self._loop = asyncio.new_event_loop()
        self._task = self._loop.create_task(settle(after_s))
        self._thread = threading.Thread(target=self._run, name="heap-settle", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            self._loop.run_until_complete(self._task)
        self._loop.close()

    def close(self) -> None:
        """Stop settling; automatic collection is back on."""
        self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(10)


class CollectorTime:
    """How long the cyclic garbage collector has run in this process, by generation, counted from `gc.callbacks`
    while installed (`with CollectorTime() as timer:`). The collector runs on whichever thread allocates: in the
    bridge, mostly its event loop's, where every station waits for it."""

    def __init__(self) -> None:
        self.seconds = [0.0] * 3  # by generation: 0 the youngest, 2 a full collection
        self.collections = [0] * 3
        self._started = 0.0

    def __enter__(self) -> CollectorTime:
        gc.callbacks.append(self._note)
        return self

    def __exit__(self, *_: object) -> None:
        gc.callbacks.remove(self._note)

    def _note(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        generation = info["generation"]
        self.seconds[generation] += time.perf_counter() - self._started
        self.collections[generation] += 1
