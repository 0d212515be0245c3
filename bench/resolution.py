"""v2 resolution in the backend: building and advancing the resolution table, its memory, and resolve() per beacon.

For N chips (random keys, as backend.chip_keys.active_v2_keys gives them) it measures, with the machine's floor
beside each figure in the same run:

- the build of `backend.resolution.ResolutionTable` over 3 windows with nothing computed ahead, and with `--ahead`
  windows computed ahead on the same key schedules; floor: one AES key schedule per chip alone;
- advancing one window: from the windows computed ahead (a sort, no AES), and with nothing ahead (a key schedule
  per chip again); and, for comparison, keeping every chip's encryptor alive instead (measured on a sample, then
  scaled: the memory that would take and an eid per kept encryptor);
- the table's memory (`ResolutionTable.nbytes`, and the process's resident memory before and after);
- `Resolver.resolve` per beacon (clocks ±2 minutes off): beacons/s on one core, p50 and p99 µs, with the chips'
  keys not yet cached (chips seen for the first time in a while) and cached (chips seen again); floor: one AES-CMAC
  with the key ready.

Run: python bench/resolution.py [--chips 1000000] [--ahead 8] [--resolves 100000]
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import statistics
import threading
import time
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from backend.resolution import Resolution, ResolutionTable, Resolver, Verdict
from protocol.beacon_v2 import WINDOW_S, ChipKey, window_of
from protocol.frames import TagFlags

# The v1 ingest's figure (docs/benchmarks.md, bench/ingest.py, 2026-11-29): 83,000 sightings/s on this machine kind,
# about 12 µs a sighting, everything included.
V1_INGEST_PER_SIGHTING_US = 1e6 / 83_000


def rss_mb() -> float:
    """The process's resident memory now."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def timed(label: str, fn: object) -> float:
    """Run fn() once and print how long it took."""
    assert callable(fn)
    t0 = time.perf_counter()
    fn()
    s = time.perf_counter() - t0
    print(f"  {label}: {s:.2f} s")
    return s


def beacons(chips: list[tuple[int, bytes]], count: int, centre: int, rng: random.Random) -> list[tuple[float, bytes]]:
    """`count` beacons of random chips heard in the window `centre`, their clocks up to 2 minutes off."""
    out = []
    for i in range(count):
        _, key = chips[rng.randrange(len(chips))]
        heard = centre * WINDOW_S + rng.uniform(0, WINDOW_S)
        window = window_of(heard + rng.uniform(-120, 120))
        out.append((heard, ChipKey(key).seal(window, 1_000 + i, TagFlags.MOTION).to_bytes()))
    return out


def _resolve_timed(resolver: Resolver, beacon: tuple[float, bytes]) -> tuple[float, Resolution]:
    """One beacon (heard at, bytes) resolved: how long it took, and the resolution."""
    at = datetime.fromtimestamp(beacon[0], UTC)
    t0 = time.perf_counter()
    r = resolver.resolve(beacon[1], at, "S1")
    return time.perf_counter() - t0, r


def run_resolves(resolver: Resolver, heard: list[tuple[float, bytes]], label: str) -> None:
    """Resolve each beacon, time each call, print the rate and the percentiles."""
    times: list[float] = []
    ok = 0
    for beacon in heard:
        took, r = _resolve_timed(resolver, beacon)
        times.append(took)
        ok += r.verdict is Verdict.OK
    total = sum(times)
    q = statistics.quantiles(times, n=100)
    print(
        f"  resolve(), {label}: {len(heard) / total:,.0f} beacons/s on one core, p50 {q[49] * 1e6:.1f} µs,"
        f" p99 {q[98] * 1e6:.1f} µs ({ok:,} of {len(heard):,} ok)"
    )


def resolves_beside(table: ResolutionTable, heard: list[tuple[float, bytes]], move_to: int | None, label: str) -> None:
    """resolve() timed call by call while a thread moves `table` to the window `move_to` (as backend.ingest.v2 moves
    it when the clock passes into the next window), or, with None, for as long with nothing moving; prints the move's
    time (what a flush waited for when it moved the table itself) and the resolves' percentiles meanwhile."""
    times: list[float] = []
    resolver = Resolver(table)
    started = time.perf_counter()
    mover = None
    if move_to is not None:
        mover = threading.Thread(target=table.advance, args=(move_to,), name="move")
        mover.start()
    i = 0
    while mover.is_alive() if mover is not None else time.perf_counter() - started < 2.0:
        if i % len(heard) == 0:
            resolver = Resolver(table)  # every beacon once per resolver: none a replay of the last round
        times.append(_resolve_timed(resolver, heard[i % len(heard)])[0])
        i += 1
    took = time.perf_counter() - started
    q = statistics.quantiles(times, n=100) if len(times) > 1 else times * 99
    print(
        f"  {label}: {took:.2f} s, {len(times):,} resolves meanwhile: p50 {q[49] * 1e6:.0f} µs, p99 {q[98] * 1e6:.0f}"
        f" µs, longest {max(times) * 1e3:.1f} ms"
    )


def main() -> None:
    """Measure and print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chips", type=int, default=1_000_000)
    parser.add_argument("--ahead", type=int, default=8)
    parser.add_argument("--resolves", type=int, default=100_000)
    args = parser.parse_args()
    n = args.chips
    rng = random.Random(17)
    raw = rng.randbytes(16 * n)
    chips = [(0x10000000 + i, raw[16 * i : 16 * i + 16]) for i in range(n)]
    centre = window_of(time.time())
    print(f"{n:,} chips, windows {centre - 1}..{centre + 1}, load average {os.getloadavg()[0]:.1f}")

    print("floor:")
    sample = min(n, 100_000)
    t0 = time.perf_counter()
    for i in range(sample):
        Cipher(algorithms.AES(raw[16 * i : 16 * i + 16]), modes.ECB()).encryptor()
    schedule_us = (time.perf_counter() - t0) / sample * 1e6
    print(f"  one AES key schedule (an encryptor made): {schedule_us:.1f} µs; {n:,}: {schedule_us * n / 1e6:.1f} s")

    print("build:")
    gc.collect()
    rss0 = rss_mb()
    table: ResolutionTable | None = None

    def build_bare() -> None:
        nonlocal table
        table = ResolutionTable(chips, centre, ahead=0)

    bare_s = timed(f"{n:,} chips x 3 windows, nothing ahead", build_bare)
    assert table is not None
    rss1 = rss_mb()
    print(
        f"  memory: {table.nbytes / 2**20:.0f} MiB in the table ({table.nbytes / (3 * n):.1f} bytes an eid, keys and"
        f" tag ids included); resident +{rss1 - rss0:.0f} MiB; build = {bare_s / (schedule_us * n / 1e6):.2f} x the"
        " key schedules alone"
    )
    timed("advance one window with nothing ahead (a key schedule per chip)", partial(table.advance, centre + 1))
    print("resolve() beside a move of the table on another thread (backend.ingest.v2 moves it so; a flush once waited")
    print("for the whole move):")
    during = beacons(chips, 20_000, centre + 1, random.Random(3))
    resolves_beside(table, during, None, "nothing moving, for comparison")
    resolves_beside(table, during, centre + 2, "moving one window with nothing ahead (a key schedule per chip)")
    table = None
    gc.collect()

    rss2 = rss_mb()
    ahead: ResolutionTable | None = None

    def build_ahead() -> None:
        nonlocal ahead
        ahead = ResolutionTable(chips, centre, ahead=args.ahead)

    timed(f"{n:,} chips x 3 windows + {args.ahead} ahead", build_ahead)
    assert ahead is not None
    print(
        f"  memory: {ahead.nbytes / 2**20:.0f} MiB with {args.ahead} windows ahead (8 bytes a chip a window);"
        f" resident +{rss_mb() - rss2:.0f} MiB"
    )
    timed("advance one window from the windows ahead (a sort, no AES)", partial(ahead.advance, centre + 1))
    timed("advance one more window", partial(ahead.advance, centre + 2))
    during = beacons(chips, 20_000, centre + 2, random.Random(4))
    resolves_beside(ahead, during, None, "resolve() with nothing moving, for comparison")
    resolves_beside(ahead, during, centre + 3, "resolve() beside a move from the windows ahead on another thread")

    print(f"keeping every chip's encryptor instead (measured on {sample:,}, scaled to {n:,}):")
    gc.collect()
    rss3 = rss_mb()
    kept = [Cipher(algorithms.AES(raw[16 * i : 16 * i + 16]), modes.ECB()).encryptor() for i in range(sample)]
    per_encryptor = (rss_mb() - rss3) * 2**20 / sample
    block = b"BGv2-eid" + (centre + 2).to_bytes(8, "big")
    t0 = time.perf_counter()
    for enc in kept:
        enc.update(block)
    eid_us = (time.perf_counter() - t0) / sample * 1e6
    print(
        f"  {per_encryptor:,.0f} bytes an encryptor: {per_encryptor * n / 2**20:,.0f} MiB for {n:,};"
        f" an eid per kept encryptor {eid_us:.2f} µs: {eid_us * n / 1e6:.1f} s a window before sorting"
    )
    del kept

    print("resolve (table at the centre window again, ahead as above):")
    ahead.advance(centre)
    heard = beacons(chips, args.resolves, centre, rng)
    resolver = Resolver(ahead)
    run_resolves(resolver, heard, "chips' keys not cached (each chip's first beacon in a while)")
    # Chips seen lately: their ChipKeys are in the table's cache (65,536 by default), as a trip's chips are when
    # they pass one station after another. A first round caches them; a fresh resolver then times new beacons.
    recent = chips[: min(n, 50_000)]
    warm = Resolver(ahead)
    for t, payload in beacons(recent, len(recent), centre, random.Random(5)):
        warm.resolve(payload, datetime.fromtimestamp(t, UTC), "S0")
    run_resolves(Resolver(ahead), beacons(recent, args.resolves, centre, random.Random(6)), "chips' keys cached")
    key = ChipKey(chips[0][1])
    sealed = key.seal(centre, 7, TagFlags(0))
    t0 = time.perf_counter()
    for _ in range(20_000):
        key.verify(centre, sealed)
    cmac_us = (time.perf_counter() - t0) / 20_000 * 1e6
    print(f"  floor: one AES-CMAC check with the key ready {cmac_us:.1f} µs; the v1 ingest's whole per-sighting cost")
    print(f"  (83,000 sightings/s, docs/benchmarks.md) is {V1_INGEST_PER_SIGHTING_US:.1f} µs")


if __name__ == "__main__":
    main()
