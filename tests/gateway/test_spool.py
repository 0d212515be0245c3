"""The spool: nothing leaves it before its PUBACK, alerts go first, batch_seq survives restarts."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from gateway.spool import Priority, Spool, SpoolError


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


def test_a_full_spool_drops_the_oldest_sightings_first_and_counts_it(tmp_path: Path) -> None:
    path = tmp_path / "s.spool"
    spool = Spool(path, max_rows=3)
    spool.put_sightings("t", lambda seq: b"b%d" % seq, 1)
    spool.put_alert("a", b"alert")
    spool.put_sightings("t", lambda seq: b"b%d" % seq, 1)
    spool.put_sightings("t", lambda seq: b"b%d" % seq, 1)

    assert [e.payload for e in spool.peek(10)] == [b"alert", b"b1", b"b2"]
    assert spool.dropped == 1
    spool.close()
    assert Spool(path).dropped == 1


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
