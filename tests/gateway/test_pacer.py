"""gateway.pacer: many stations' background work in slices of the event loop's turns, so that what a connection
brings (a stolen chip's upload) is read after a slice of it, not after all of it."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import pytest

from gateway.pacer import Pacer

pytestmark = pytest.mark.anyio

Pace = Callable[[], AbstractAsyncContextManager[None]]


def _busy(seconds: float) -> None:
    """CPU work, as a batch tick's spool transaction is (not a wait the loop could use)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


async def _burst_then_read(pace: Pace, jobs: int = 300, job_s: float = 0.0005) -> tuple[int, list[int]]:
    """`jobs` background jobs ask for their slots at once (a burst of PUBACKs); the fifth one done makes a connection
    readable (an upload arrives). Returns how many jobs ran before the connection was read, and the order they ran."""
    loop = asyncio.get_running_loop()
    station, bridge = socket.socketpair()
    bridge.setblocking(False)
    done: list[int] = []
    read_after: list[int] = []

    def read() -> None:
        bridge.recv(100)
        read_after.append(len(done))
        loop.remove_reader(bridge)

    loop.add_reader(bridge, read)

    async def job(n: int) -> None:
        async with pace():
            _busy(job_s)
            done.append(n)
            if len(done) == 5:
                station.send(b"upload")

    try:
        await asyncio.gather(*(job(n) for n in range(jobs)))
    finally:
        loop.remove_reader(bridge)
        station.close()
        bridge.close()
    assert read_after, "the connection was never read"
    return read_after[0], done


async def test_a_connection_is_read_after_a_slice_of_a_burst_of_background_work_not_after_all_of_it() -> None:
    pacer = Pacer(slice_s=0.002)
    before_read, order = await _burst_then_read(pacer.slot)
    # A slice is about four of these jobs (0.5 ms each; the running mean starts lower, at 0.2 ms): the first ones
    # run at once, the next slice is started for the turn after, and then the connection is read. At most a few
    # slices' worth ran before the read, where without the pacer all 300 did (below).
    assert before_read <= 30
    assert order == list(range(300))  # every job ran, in the order it asked
    assert pacer.jobs == 300 and pacer.waiting == 0
    # The mean is of a job's own time (0.5 ms, more when the machine preempts it; a CI run saw 2.4 ms), not of the
    # time it waited for its slot (up to the whole burst, 150 ms).
    assert 0.0002 < pacer.job_s < 0.02


async def test_without_a_pacer_the_burst_runs_before_the_connection_is_read() -> None:
    # What the pacer is for: a lone station's process (no pacer) runs its few jobs as they come.
    before_read, order = await _burst_then_read(contextlib.nullcontext)
    assert before_read == 300 and order == list(range(300))


async def test_a_job_cancelled_while_it_waits_takes_no_slot_and_the_others_run_in_order() -> None:
    pacer = Pacer(slice_s=0.001)
    done: list[int] = []

    async def job(n: int) -> None:
        async with pacer.slot():
            _busy(0.0002)
            done.append(n)

    tasks = [asyncio.create_task(job(n)) for n in range(100)]
    await asyncio.sleep(0)  # every job has asked: the first few ran at once (a slice), the rest wait
    assert 80 < pacer.waiting < 100
    for n in range(10, 100, 10):
        tasks[n].cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    cancelled = [n for n, r in enumerate(results) if isinstance(r, asyncio.CancelledError)]
    assert cancelled == list(range(10, 100, 10))
    assert done == [n for n in range(100) if n not in cancelled]
    assert pacer.jobs == 91 and pacer.waiting == 0


async def test_a_job_that_fails_frees_its_slot() -> None:
    pacer = Pacer()

    async def failing() -> None:
        async with pacer.slot():
            raise RuntimeError("a spool that went away")

    with pytest.raises(RuntimeError, match="went away"):
        await failing()
    async with pacer.slot():
        pass
    assert pacer.jobs == 2 and pacer.waiting == 0


def test_a_slice_must_be_positive() -> None:
    with pytest.raises(ValueError, match="slice_s"):
        Pacer(slice_s=0)
