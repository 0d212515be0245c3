"""The ingest's lanes: a taker sleeps until an item comes or the lane closes, and finishes what is left."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

from backend.alarms.evidence import Committed, Passages
from backend.ingest.lanes import DeferredPassages, Lane


def _passages(n: int) -> Committed:
    at = datetime.now(UTC)
    return Committed(Passages(list(range(n)), ["st-1"] * n, [at] * n, [at] * n, [0] * n))


def test_a_taker_sleeps_until_an_item_comes_and_gets_them_in_order():
    lane: Lane[int] = Lane()
    got: list[int | None] = []
    taker = threading.Thread(target=lambda: got.extend([lane.take(), lane.take()]))
    taker.start()
    time.sleep(0.1)
    assert got == [] and taker.is_alive()
    lane.put(1)
    lane.put(2)
    taker.join(5)
    assert got == [1, 2]


def test_take_until_a_deadline_gives_up_then_and_a_closed_lane_is_drained_first():
    lane: Lane[int] = Lane()
    assert lane.take(time.monotonic() + 0.05) is None
    assert lane.take_now() is None
    lane.put(7)
    lane.close()
    assert lane.take() == 7
    assert lane.take() is None  # closed and empty: no waiting


def test_closing_wakes_a_sleeping_taker():
    lane: Lane[int] = Lane()
    got: list[int | None] = [0]
    taker = threading.Thread(target=lambda: got.__setitem__(0, lane.take()))
    taker.start()
    time.sleep(0.05)
    lane.close()
    taker.join(5)
    assert not taker.is_alive() and got == [None]


def test_deferred_passages_are_handed_out_when_enough_gathered_or_when_due_and_all_once_closed():
    deferred = DeferredPassages(interval_s=60.0, max_rows=10)
    deferred.add(_passages(4))
    deferred.add(_passages(6))
    due = deferred.take()  # ten: enough, long before the interval
    assert due is not None and len(due) == 10
    deferred.add(_passages(3))
    deferred.close()
    last = deferred.take()  # closed: at once, not in a minute
    assert last is not None and len(last) == 3
    assert deferred.take() is None


def test_deferred_passages_wait_for_their_interval():
    deferred = DeferredPassages(interval_s=0.3, max_rows=1000)
    started = time.monotonic()
    deferred.add(_passages(1))
    due = deferred.take()
    assert due is not None and len(due) == 1
    assert time.monotonic() - started >= 0.25


def test_a_full_lane_makes_the_giver_wait_until_the_taker_makes_room():
    lane: Lane[int] = Lane(max_items=2)
    assert lane.put(1) and lane.put(2)
    third = threading.Thread(target=lane.put, args=(3,))
    third.start()
    time.sleep(0.1)
    assert third.is_alive() and len(lane) == 2  # waiting: the broker keeps the backlog, not our memory
    assert lane.take_now() == 1
    third.join(5)
    assert not third.is_alive() and [lane.take_now(), lane.take_now()] == [2, 3]


def test_closing_a_full_lane_releases_a_waiting_giver_so_stop_cannot_hang_on_it():
    lane: Lane[int] = Lane(max_items=1)
    lane.put(1)
    given: list[bool] = []
    giver = threading.Thread(target=lambda: given.append(lane.put(2)))
    giver.start()
    time.sleep(0.05)
    lane.close()
    giver.join(5)
    # Refused, not queued: unacknowledged, the message is the broker's to redeliver.
    assert not giver.is_alive() and given == [False]
    assert lane.take() == 1 and lane.take() is None
