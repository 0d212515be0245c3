"""v2 beacons: how long the backend takes to build its resolution table, what the table costs in memory, and what
resolving and opening one beacon costs.

Builds `protocol.beacon_v2.eid_table` for N chips (random keys) over 3 windows (the current one and its neighbours),
then prints, beside it, the machine's floor measured in the same run: the same AES work as one encryptor over one
buffer (no per-chip key schedule) and the key schedules alone (one encryptor made per chip, nothing encrypted). The
table's memory is what its arrays take (sorted eids, their slots, the chip ids) and the process's resident memory
before and after. Then per beacon: an eid looked up in the table, and `ChipKey.open` (the CMAC check and the
counter's pad) with the chip's key ready.

Run: python bench/beacon_v2.py [--chips 1000000] [--windows 3] [--lookups 200000]
"""

from __future__ import annotations

import argparse
import os
import random
import time
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from protocol.beacon_v2 import ChipKey, eid_table, window_of
from protocol.frames import TagFlags


def rss_mb() -> float:
    """The process's resident memory now."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    """Measure and print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chips", type=int, default=1_000_000)
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--lookups", type=int, default=200_000)
    args = parser.parse_args()
    n, w = args.chips, args.windows
    rng = random.Random(17)
    raw = os.urandom(16 * n)
    chips = [(0x10000000 + i, raw[16 * i : 16 * i + 16]) for i in range(n)]
    now = window_of(time.time())
    windows = range(now - (w - 1) // 2, now - (w - 1) // 2 + w)

    rss_before = rss_mb()
    t0 = time.perf_counter()
    table = eid_table(chips, windows)
    build_s = time.perf_counter() - t0
    rss_after = rss_mb()
    print(
        f"eid table: {n:,} chips x {w} windows = {len(table):,} eids in {build_s:.2f} s "
        f"({len(table) / build_s:,.0f} eids/s), {table.collisions} colliding eids"
    )

    # The floor: the same number of AES blocks through one encryptor, and one key schedule per chip alone.
    t0 = time.perf_counter()
    Cipher(algorithms.AES(raw[:16]), modes.ECB()).encryptor().update(bytes(16 * n * w))
    aes_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _, key in chips:
        Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    schedule_s = time.perf_counter() - t0
    print(
        f"  floor in this run: the {n * w:,} AES blocks through one encryptor {aes_s:.3f} s; "
        f"{n:,} encryptors made (key schedules, nothing encrypted) {schedule_s:.2f} s"
    )

    table_mb = table.nbytes / 2**20
    print(
        f"  memory: {table_mb:.0f} MiB in the table's arrays ({table.nbytes / len(table):.0f} bytes/eid, chip ids "
        f"included); resident memory {rss_before:.0f} -> {rss_after:.0f} MiB (+{rss_after - rss_before:.0f})"
    )

    probe = [ChipKey(chips[rng.randrange(n)][1]).eid(rng.choice(windows)) for _ in range(1000)]
    probes = (probe * (args.lookups // len(probe) + 1))[: args.lookups]
    t0 = time.perf_counter()
    found = sum(1 for e in probes if table.lookup(e))
    lookup_us = (time.perf_counter() - t0) / len(probes) * 1e6
    assert found == len(probes)
    print(f"  lookup per beacon: {lookup_us:.2f} us")

    chip = ChipKey(chips[0][1])
    beacons = [chip.seal(now, i, TagFlags.MOTION) for i in range(1000)]
    t0 = time.perf_counter()
    for _ in range(args.lookups // 1000):
        for beacon in beacons:
            chip.open(now, beacon)
    open_us = (time.perf_counter() - t0) / (args.lookups // 1000 * 1000) * 1e6
    t0 = time.perf_counter()
    for _ in range(args.lookups // 1000):
        for _ in range(1000):
            ChipKey(chips[0][1])
    key_us = (time.perf_counter() - t0) / (args.lookups // 1000 * 1000) * 1e6
    print(
        f"  per beacon: ChipKey.open (CMAC check + counter pad) {open_us:.1f} us with the key ready; "
        f"readying a ChipKey {key_us:.1f} us"
    )
    print(f"v2 resolution table: {n:,} chips x {w} windows built in {build_s:.1f} s, {table_mb:.0f} MiB")


if __name__ == "__main__":
    main()
