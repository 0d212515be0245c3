"""Gateway aggregator benchmark: what one beacon costs the station's aggregator, v1 chips beside v2 chips.

A busy intersection's beacons (--tags v1 tags and as many v2 chips in range, each heard every 2 s for a minute, so
passages stay open and are updated as at a real station) go through `gateway.aggregator.Aggregator` in-process:
`add` for the v1 beacons, `add_v2` for the v2 ones (whose passage also keeps the first and latest beacon's air bytes).
The figure is nanoseconds a beacon (best of --repeat runs), and the beacons per second one core could aggregate,
beside the limit measured in the same run: the most frames of each kind the serial line carries at its baud rate,
and the frame decoder's own speed on those frames.

    aggregator: v1 <N> ns a beacon (<R> beacons/s of one core), v2 <N2> ns (<R2>/s); serial line max <L1> v1 /
    <L2> v2 frames/s; decoder <D1> v1 / <D2> v2 frames/s

Run: python bench/aggregator.py [--tags 500] [--repeat 15]
"""

from __future__ import annotations

import argparse
import secrets
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

from firmware_sim.radio import BITS_PER_BYTE
from gateway.aggregator import Aggregator
from gateway.hotlist import HotList
from protocol.beacon_v2 import ChipKey, window_of
from protocol.frames import BAUD_RATE, Beacon, BeaconV2, Frame, FrameDecoder, TagFlags, encode

START = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
ROUNDS = 30  # each tag heard 30 times, 2 s apart: a minute, within one passage


def beacons_v1(tags: int) -> list[Beacon]:
    """Every v1 tag's beacons, round after round."""
    return [Beacon(t, r, TagFlags(0), -70 + r % 7, r % 2) for r in range(ROUNDS) for t in range(tags)]


def beacons_v2(tags: int) -> list[BeaconV2]:
    """Every v2 chip's beacons in one window, round after round (each chip with a key of its own)."""
    window = window_of(START.timestamp())
    keys = [ChipKey(secrets.token_bytes(16)) for _ in range(tags)]
    return [k.seal(window, r, TagFlags(0)).frame(-70 + r % 7, r % 2) for r in range(ROUNDS) for k in keys]


def best_ns(add: Callable[[Aggregator, Frame, datetime], object], frames: Sequence[Frame], repeat: int) -> float:
    """The best time a beacon over `repeat` runs, each a fresh aggregator over all the frames."""
    step = timedelta(seconds=2.0 * ROUNDS / len(frames))  # each tag every 2 s
    times = [START + step * i for i in range(len(frames))]
    best = float("inf")
    for _ in range(repeat):
        aggregator = Aggregator("st-bench", HotList(), passage_gap_s=8.0, passage_max_s=120.0, clock=lambda: START)
        t = time.perf_counter()
        for frame, at in zip(frames, times, strict=True):
            add(aggregator, frame, at)
        best = min(best, time.perf_counter() - t)
    return best / len(frames) * 1e9


def decoder_fps(frames: Sequence[Frame]) -> float:
    """Frames a second the reader-frame decoder takes from a stream of these frames (best of 3)."""
    stream = b"".join(encode(f) for f in frames)
    best = float("inf")
    for _ in range(3):
        decoder = FrameDecoder()
        t = time.perf_counter()
        for start in range(0, len(stream), 4096):
            decoder.feed(stream[start : start + 4096])
        best = min(best, time.perf_counter() - t)
    return len(frames) / best


def main() -> None:
    """Measure and print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tags", type=int, default=500, help="v1 tags in range, and as many v2 chips")
    parser.add_argument("--repeat", type=int, default=15, help="runs; the best counts")
    args = parser.parse_args()
    v1, v2 = beacons_v1(args.tags), beacons_v2(args.tags)

    def add_v1(a: Aggregator, f: Frame, at: datetime) -> object:
        assert isinstance(f, Beacon)
        return a.add(f, at)

    def add_v2(a: Aggregator, f: Frame, at: datetime) -> object:
        assert isinstance(f, BeaconV2)
        return a.add_v2(f, at)

    # Interleaved, so that a machine busy with other work slows both alike.
    ns_v1 = ns_v2 = float("inf")
    for _ in range(3):
        ns_v1 = min(ns_v1, best_ns(add_v1, v1, args.repeat))
        ns_v2 = min(ns_v2, best_ns(add_v2, v2, args.repeat))
    line_bytes_s = BAUD_RATE / BITS_PER_BYTE
    line_v1, line_v2 = line_bytes_s / len(encode(v1[0])), line_bytes_s / len(encode(v2[0]))
    dec_v1, dec_v2 = decoder_fps(v1), decoder_fps(v2)
    print(
        f"aggregator: v1 {ns_v1:,.0f} ns a beacon ({1e9 / ns_v1:,.0f} beacons/s of one core),"
        f" v2 {ns_v2:,.0f} ns ({1e9 / ns_v2:,.0f}/s); serial line max {line_v1:,.0f} v1 / {line_v2:,.0f} v2 frames/s;"
        f" decoder {dec_v1:,.0f} v1 / {dec_v2:,.0f} v2 frames/s ({args.tags} tags of each kind, {ROUNDS} beacons each)"
    )


if __name__ == "__main__":
    main()
