"""The heap of a long-running gateway process with many stations (the vendor bridge)."""

from __future__ import annotations

import asyncio
import gc
import logging
import time

log = logging.getLogger(__name__)

# How long after start the heap is settled: by then the stations have opened their spools and connected.
SETTLE_AFTER_S = 10.0
# Objects the cyclic collector lets pile up before it looks at the youngest (Python's default is 700). A bridge of a
# thousand stations makes tens of thousands of short-lived objects a second (an upload's reads; paho's topic matcher
# leaves a cycle for every message received): at 700 the young collections ran about 70 times a second and promoted
# what lived a fraction of a second to the oldest generation, which brought a full collection (70-160 ms on the
# loop) every second or two. Measured by the bridge's own bikeguard_gateway_gc_seconds_total at 1,000 stations, the
# collector ran 6.2-6.8 % of the time at 700 and 4.8 % at 5,000, with a full collection about every 20 s
# (docs/benchmarks.md, "Vendor bridge"; the alerts' latency did not move beyond the run-to-run noise).
YOUNG_THRESHOLD = 5000


async def settle(after_s: float = SETTLE_AFTER_S) -> None:
    """After `after_s`, collect the garbage once and freeze what lives on (modules, settings, spools, connections)
    out of the cyclic collector's sight; it is still freed when its last reference goes. From then on, the youngest
    generation is collected every YOUNG_THRESHOLD objects rather than every 700.

    A full collection walks every object the collector tracks, on the event loop's thread: in a bridge of 500 vendor
    stations each took 65-230 ms (p50 176 ms), a dozen times a minute, and every station's uploads and alerts
    waited. Frozen, the same collections walk only what was made since (p50 49-79 ms, about half as often)."""
    await asyncio.sleep(after_s)
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
    log.info(
        "heap settled: %d objects frozen out of the garbage collector's passes, young ones collected every %d",
        gc.get_freeze_count(),
        YOUNG_THRESHOLD,
    )


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
