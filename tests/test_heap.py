"""protocol.heap: a long-running process's heap (the vendor bridge's, the backend's), settled once it has started, then
collected on a schedule."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
import weakref
from collections.abc import AsyncIterator

import pytest
from fastapi.testclient import TestClient

from backend.api.app import create_app
from bikeguard.services import Broker
from protocol import heap
from tests import factories
from tests.gateway.harness import eventually

pytestmark = pytest.mark.anyio


class _Node:
    """Something the cyclic garbage collector tracks."""

    other: _Node | None = None


def cycle() -> weakref.ref[_Node]:
    """A reference cycle nothing else refers to (only the collector frees it); a weak reference to it."""
    node = _Node()
    node.other = node
    return weakref.ref(node)


@contextlib.asynccontextmanager
async def settled(**schedule: float) -> AsyncIterator[asyncio.Task[None]]:
    """heap.settle running with `schedule`; the process's collector as it was afterwards."""
    thresholds = gc.get_threshold()
    task = asyncio.create_task(heap.settle(0, **schedule))  # type: ignore[arg-type]
    try:
        await eventually(lambda: not gc.isenabled(), what="the heap settled")
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        gc.unfreeze()
        gc.set_threshold(*thresholds)
        gc.enable()


async def test_settling_frees_the_startup_garbage_and_freezes_only_what_lives_on() -> None:
    kept = _Node()
    freed = cycle()
    async with settled():
        # Garbage frozen would never be freed: it is collected first.
        assert freed() is None
        # What lives on is out of the collector's passes, which walk only what is made afterwards.
        assert gc.get_freeze_count() > 0
        assert not any(o is kept for o in gc.get_objects())
        made_after = _Node()
        assert any(o is made_after for o in gc.get_objects())


async def test_once_settled_the_collector_runs_on_its_schedule_not_on_every_few_hundred_objects() -> None:
    async with settled(collect_every_s=0.3, collect_after_objects=10**9) as task:
        garbage = cycle()
        for _ in range(5000):  # ten times what starts a young collection by default
            _Node()
        assert garbage() is not None, "collected before its time"
        await eventually(lambda: garbage() is None, what="the scheduled collection")
    assert task.done() and gc.isenabled()  # stopped: Python collects by itself again


async def test_a_storm_of_new_objects_is_collected_before_its_time() -> None:
    async with settled(collect_every_s=3600, collect_after_objects=2000):
        garbage = [cycle() for _ in range(3000)]  # more than collect_after_objects tracked since the last run
        await eventually(lambda: all(g() is None for g in garbage), what="a collection brought forward")


def test_the_backend_process_settles_its_heap_and_gives_the_collector_back_when_it_stops(
    database_url: str, broker: Broker, topic_prefix: str
) -> None:
    """`bikeguard backend` passes settle_heap_s (bikeguard.cli): its ingest's flushes of v2 beacons set off full
    collections otherwise (docs/benchmarks.md)."""
    settings = factories.settings(database_url, mqtt_url=broker.url, mqtt_client_id=f"api-{topic_prefix}")
    assert gc.isenabled()
    with TestClient(create_app(settings, run_ingest=False, settle_heap_s=0.0)) as client:
        deadline = time.monotonic() + 10
        while gc.isenabled() and time.monotonic() < deadline:
            client.get("/api/health")  # the app's loop runs its tasks between requests
            time.sleep(0.05)
        assert not gc.isenabled(), "the backend's heap was not settled"
        assert client.get("/api/health").status_code == 200
    assert gc.isenabled()
