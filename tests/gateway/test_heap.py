"""gateway.heap: a long-running bridge's heap, settled once its stations have started."""

from __future__ import annotations

import gc
import weakref

import pytest

from gateway import heap

pytestmark = pytest.mark.anyio


class _Node:
    """Something the cyclic garbage collector tracks."""

    other: _Node | None = None


async def test_settling_frees_the_startup_garbage_and_freezes_only_what_lives_on() -> None:
    kept = _Node()
    garbage = _Node()
    garbage.other = garbage  # a cycle: only the collector frees it
    freed = weakref.ref(garbage)
    del garbage
    thresholds = gc.get_threshold()
    try:
        await heap.settle(0)
        # Garbage frozen would never be freed: it is collected first.
        assert freed() is None
        # What lives on is out of the collector's passes, which walk only what is made afterwards.
        assert gc.get_freeze_count() > 0
        assert not any(o is kept for o in gc.get_objects())
        made_after = _Node()
        assert any(o is made_after for o in gc.get_objects())
        # The young generation is collected less often, not never: a cycle made now is still freed by its pass.
        assert gc.get_threshold()[0] == heap.YOUNG_THRESHOLD
        cycle = _Node()
        cycle.other = cycle
        cycle_freed = weakref.ref(cycle)
        del cycle
        gc.collect(0)
        assert cycle_freed() is None
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
