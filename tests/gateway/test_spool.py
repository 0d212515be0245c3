"""The spool: nothing leaves it before its PUBACK, alerts go first, batch_seq survives restarts, drops are counted."""

from __future__ import annotations

import logging
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.aggregator import Passage
from gateway.spool import Priority, Spool, SpoolError
from protocol.frames import TagFlags

T0 = datetime(2025, 3, 1, 8, 0, 0, 123456, tzinfo=UTC)


def test_alerts_leave_before_sightings_and_each_kind_in_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.spool")
    spool.put_sightings("sightings", lambda seq: b"batch %d" % seq, 3)
    spool.put_alert("alerts", b"alert 1")
    spool.put_sightings("sightings", lambda seq: b"batch %d" % seq, 2)
    spool.put_alert("alerts", b"alert 2")

    assert [e.payload for e in spool.peek(10)] == [b"alert 1", b"alert 2", b"batch 0", b"batch 1"]
    assert [e.priority for e in spool.peek(10)] == [Priority.ALERT] * 2 + [Priority.SIGHTINGS] * 2
    assert [e.sightings for e in spool.peek(10)] == [0, 0, 3, 2]
    assert spool.depth == 4


def test_a_message_leaves_the_spool_only_when_acknowledged(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.spool")
    spool.put_alert("alerts", b"a")
    spool.put_alert("alerts", b"b")
    first, second = spool.peek(10)

    spool.ack([first.id])

    assert spool.peek(10) == [second]
    assert spool.depth == 1


def test_unacknowledged_messages_and_batch_seq_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "s.spool"
    spool = Spool(path)
    assert spool.put_sightings("t", lambda seq: b"%d" % seq, 1) == 0
    assert spool.put_sightings("t", lambda seq: b"%d" % seq, 1) == 1
    spool.ack(e.id for e in spool.peek(10))
    spool.put_alert("alerts", b"pending")
    spool.close()

    again = Spool(path)

    assert [e.payload for e in again.peek(10)] == [b"pending"]
    assert again.depth == 1
    assert again.put_sightings("t", lambda seq: b"%d" % seq, 1) == 2


def test_the_spool_file_is_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "s.spool"
    Spool(path).close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_failed_payload_build_spools_nothing_and_uses_no_batch_seq(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.spool")

    def broken(seq: int) -> bytes:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        spool.put_sightings("t", broken, 1)

    assert spool.depth == 0
    assert spool.next_batch_seq == 0


def put_batch(spool: Spool, size: int, sightings: int = 1) -> int | None:
    """Spool a sightings batch whose payload is `size` bytes."""
    return spool.put_sightings("t", lambda seq: b"b%d;" % seq + b"x" * (size - len(b"b%d;" % seq)), sightings)


def test_a_full_spool_drops_the_oldest_sightings_batches_first_and_counts_it(tmp_path: Path) -> None:
    path = tmp_path / "s.spool"
    spool = Spool(path, max_bytes=1000)
    put_batch(spool, 300, sightings=10)
    spool.put_alert("a", b"alert")
    put_batch(spool, 300, sightings=20)
    put_batch(spool, 300, sightings=30)
    assert (spool.depth, spool.size_bytes, spool.dropped) == (4, 905, 0)

    put_batch(spool, 400, sightings=40)  # needs two of the oldest batches to go

    assert [e.payload[:3] for e in spool.peek(10)] == [b"ale", b"b2;", b"b3;"]
    assert (spool.depth, spool.size_bytes) == (3, 705)
    assert (spool.dropped_batches, spool.dropped_sightings, spool.dropped_alerts) == (2, 30, 0)
    assert spool.dropped == 30
    spool.close()
    again = Spool(path, max_bytes=1000)
    assert (again.dropped_batches, again.dropped_sightings, again.size_bytes, again.depth) == (2, 30, 705, 3)


def test_alerts_make_room_only_for_alerts_and_a_batch_that_cannot_fit_is_dropped_itself(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.spool", max_bytes=100)
    put_batch(spool, 40, sightings=5)
    spool.put_alert("a", b"1" * 40)
    spool.put_alert("a", b"2" * 40)  # the batch goes, not an alert
    assert [e.priority for e in spool.peek(10)] == [Priority.ALERT, Priority.ALERT]
    assert (spool.dropped_sightings, spool.dropped_alerts) == (5, 0)

    seq = spool.next_batch_seq
    assert put_batch(spool, 40, sightings=7) is None  # only alerts left: the new batch is the one dropped
    assert spool.next_batch_seq == seq
    assert (spool.dropped_batches, spool.dropped_sightings) == (2, 12)

    spool.put_alert("a", b"3" * 40)  # a newer alert may push out the oldest one
    assert [e.payload[:1] for e in spool.peek(10)] == [b"2", b"3"]
    assert (spool.dropped_alerts, spool.dropped) == (1, 13)


def test_a_message_bigger_than_the_whole_spool_is_dropped_without_dropping_others(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.spool", max_bytes=100)
    put_batch(spool, 60, sightings=1)
    assert put_batch(spool, 101, sightings=9) is None
    assert (spool.depth, spool.dropped_sightings) == (1, 9)


def test_acknowledged_messages_free_their_bytes(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.spool", max_bytes=1000)
    put_batch(spool, 300)
    put_batch(spool, 200)
    first, _ = spool.peek(2)
    spool.ack([first.id, 12345])  # an id already gone (dropped meanwhile) is ignored
    assert (spool.depth, spool.size_bytes) == (1, 200)


def test_drops_are_logged_at_once_then_summed_up_at_most_once_per_interval(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = Spool(tmp_path / "s.spool", max_bytes=100, drop_log_interval_s=3600)
    with caplog.at_level(logging.WARNING, logger="gateway.spool"):
        for _ in range(2):
            put_batch(spool, 60, sightings=4)
        assert len(caplog.records) == 1
        assert "dropped 1 sightings batches (4 sightings) and 0 alerts;" in caplog.text
        for _ in range(3):
            put_batch(spool, 60, sightings=4)
        spool.report_drops()  # not due yet
        assert len(caplog.records) == 1

        spool.close()  # what was not logged yet is logged on the way out

    assert len(caplog.records) == 2
    assert "dropped 3 sightings batches (12 sightings) and 0 alerts in the last" in caplog.records[1].getMessage()
    assert "16 sightings and 0 alerts dropped in all" in caplog.records[1].getMessage()


def test_open_passages_are_checkpointed_with_the_batches_that_close_them_atomically(tmp_path: Path) -> None:
    path = tmp_path / "s.spool"
    spool = Spool(path)
    one = Passage(1, T0, T0 + timedelta(seconds=2), 3, -50, 1, TagFlags.MOTION, hotlist_alerted=True)
    two = Passage(0xFFFFFFFF, T0, T0, 1, -90, 0, TagFlags(0))
    spool.save_passages([one, two], [])
    with pytest.raises(RuntimeError), spool.atomic():
        put_batch(spool, 10)
        spool.save_passages([], [1])
        raise RuntimeError("crash before commit")
    assert (spool.load_passages(), spool.depth) == ([one, two], 0)

    with spool.atomic():
        put_batch(spool, 10)
        spool.save_passages([], [1])
    spool.close()

    again = Spool(path)
    assert again.load_passages() == [two]
    assert again.depth == 1


def test_the_hot_list_is_kept_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "s.spool"
    spool = Spool(path)
    assert spool.load_hotlist() is None
    spool.save_hotlist(4, [3, 1])
    spool.save_hotlist(5, [0xDEADBEEF])
    spool.close()

    assert Spool(path).load_hotlist() == (5, [0xDEADBEEF])


def test_an_unusable_spool_path_raises_spool_error_with_the_path(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(SpoolError) as info:
        Spool(blocker / "s.spool")
    assert info.value.path == blocker / "s.spool"
