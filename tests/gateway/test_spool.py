"""The spool: nothing leaves it before its PUBACK (a sightings batch: before the backend confirms it), alerts go
first, batch_seq survives restarts, drops are counted."""

from __future__ import annotations

import contextlib
import logging
import random
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.aggregator import Passage
from gateway.spool import Entry, Priority, Spool, SpoolError, resend_delay_s
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


def test_puts_and_checkpoints_stay_fsynced_after_bookkeeping_commits_that_are_not(tmp_path: Path) -> None:
    # PUBACK and confirmation bookkeeping commits without an fsync (losing it only resends); everything else must
    # still reach the disk at its commit, which is what a station's checkpoint relies on (a bridge's spools, made
    # without fsync, are synced together instead: tests/gateway/test_spool_sync.py).
    spool = Spool(tmp_path / "s.spool")
    spool.put_sightings("sightings", lambda seq: b"batch %d" % seq, 1)
    spool.mark_sent(spool.peek(1), timeout_s=10, max_s=60)
    spool.confirm([0])
    spool.resend_all()
    with pytest.raises(SpoolError), spool.atomic():
        spool.put_alert("alerts", b"x")
        spool._db.execute("SELECT * FROM no_such_table")
    spool.confirm([5])

    assert spool._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


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


def batch(seq: int) -> bytes:
    """A sightings batch payload as the station builds it (JSON carrying its batch_seq)."""
    return b'{"v":1,"station_id":"S1","batch_seq":%d,"sightings":[]}' % seq


def test_a_sent_batch_stays_until_confirmed_and_an_alert_leaves_at_its_puback(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.spool")
    spool.put_alert("alerts", b"alert")
    seqs = [spool.put_sightings("sightings", batch, 2) for _ in range(3)]
    assert seqs == [0, 1, 2]

    spool.mark_sent(spool.peek(10), timeout_s=30, max_s=600, now=100.0)

    assert (spool.depth, spool.unconfirmed) == (3, 3)
    assert spool.peek(10, now=100.0) == []  # waiting for their confirmation, not to be sent
    assert spool.confirm([0, 2, 77]) == (2, 4)  # a seq not (or no longer) here is ignored
    assert [e.batch_seq for e in spool.peek(10, now=200.0)] == [1]
    assert (spool.depth, spool.unconfirmed, spool.size_bytes) == (1, 1, len(batch(1)))


def test_an_unconfirmed_batch_falls_due_after_the_timeout_doubling_per_attempt_up_to_the_cap(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.spool")
    spool.put_sightings("sightings", batch, 1)
    sent_at = 1000.0
    for attempt, wait_s in enumerate([30, 60, 120, 120], start=1):
        [entry] = spool.peek(10, now=sent_at)
        assert entry.attempts == attempt - 1
        spool.mark_sent([entry], timeout_s=30, max_s=120, now=sent_at)
        assert spool.peek(10, now=sent_at + wait_s - 0.001) == []
        assert spool.next_resend_at(now=sent_at) == sent_at + wait_s
        sent_at += wait_s
    assert [resend_delay_s(n, 30, 120) for n in (1, 2, 3, 4, 9)] == [30, 60, 120, 120, 120]


def test_a_new_connection_or_process_makes_every_unconfirmed_batch_due_at_once(tmp_path: Path) -> None:
    path = tmp_path / "s.spool"
    spool = Spool(path)
    for _ in range(2):
        spool.put_sightings("sightings", batch, 1)
    spool.mark_sent(spool.peek(10), timeout_s=30, max_s=600, now=0.0)
    assert spool.peek(10, now=1.0) == []

    spool.resend_all()
    assert [e.attempts for e in spool.peek(10, now=1.0)] == [1, 1]

    spool.mark_sent(spool.peek(10), timeout_s=30, max_s=600, now=0.0)
    spool.close()
    again = Spool(path)
    assert [(e.batch_seq, e.attempts) for e in again.peek(10, now=1.0)] == [(0, 2), (1, 2)]
    assert again.unconfirmed == 2


def test_a_confirmation_before_the_puback_is_handled_leaves_nothing_behind(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.spool")
    spool.put_sightings("sightings", batch, 1)
    entries = spool.peek(10)
    assert spool.confirm([0]) == (1, 1)
    spool.mark_sent(entries, timeout_s=30, max_s=600)
    assert (spool.depth, spool.unconfirmed, spool.peek(10)) == (0, 0, [])


# The outbox as spool files of the version before confirmations have it.
_OLD_OUTBOX = """
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY,
    priority INTEGER NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    sightings INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX outbox_order ON outbox (priority, id);
CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


def test_a_spool_file_of_the_version_before_confirmations_is_upgraded_in_place_and_keeps_its_batches(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.spool"
    with sqlite3.connect(path) as old:
        old.executescript(_OLD_OUTBOX)
        old.executemany(
            "INSERT INTO outbox (priority, topic, payload, sightings) VALUES (?, ?, ?, ?)",
            [(1, "sightings", batch(41), 3), (0, "alerts", b"alert", 0), (1, "sightings", batch(42), 5)],
        )
        old.execute("INSERT INTO meta VALUES ('next_batch_seq', 43), ('bytes', ?)", (2 * len(batch(41)) + 5,))
    old.close()

    spool = Spool(path)

    assert [(e.priority, e.batch_seq, e.attempts) for e in spool.peek(10)] == [
        (Priority.ALERT, None, 0),
        (Priority.SIGHTINGS, 41, 0),
        (Priority.SIGHTINGS, 42, 0),
    ]
    assert (spool.depth, spool.next_batch_seq) == (3, 43)
    assert spool.confirm([41, 42]) == (2, 8)
    assert spool.put_sightings("sightings", batch, 1) == 43
    spool.close()
    assert Spool(path).depth == 2


def test_requested_batches_still_held_fall_due_at_once_and_the_others_are_named_with_why(tmp_path: Path) -> None:
    # Room for four 10-byte batches: putting seqs 0-9 drops 0-5, oldest first.
    spool = Spool(tmp_path / "s.spool", max_bytes=40)
    for _ in range(10):
        spool.put_sightings("t", lambda seq: b"batch %04d" % seq, 1)
    assert spool.dropped_batches == 6
    sent = spool.peek(10)
    spool.mark_sent(sent, timeout_s=600, max_s=600, now=0.0)
    assert spool.peek(10, now=1.0) == []  # waiting for confirmations
    spool.confirm([7])  # the backend has 7

    held, gone = spool.request([(2, 3), (5, 8), (10, 12)])

    assert held == 2  # 6 and 8
    assert [e.batch_seq for e in spool.peek(10, now=1.0)] == [6, 8]
    assert gone == [(2, 3, "dropped"), (5, 5, "dropped"), (7, 7, "not_held"), (10, 12, "not_issued")]
    assert spool.depth == 3  # nothing deleted: the held batches wait for their confirmation again


def test_runs_of_dropped_batch_seqs_survive_a_restart_and_seqs_before_them_are_not_held(tmp_path: Path) -> None:
    path = tmp_path / "s.spool"
    spool = Spool(path, max_bytes=20)
    for _ in range(5):
        spool.put_sightings("t", lambda seq: b"batch %04d" % seq, 1)
    spool.confirm([3, 4])
    spool.close()

    again = Spool(path, max_bytes=20)

    assert again.request([(0, 4)]) == (0, [(0, 2, "dropped"), (3, 4, "not_held")])
    assert again.request([(9, 9)]) == (0, [(9, 9, "not_issued")])


def test_seqs_before_a_new_spool_files_first_were_never_issued_by_it(tmp_path: Path) -> None:
    # A replaced spool starts at the clock in milliseconds: what the backend misses from the old one is not here.
    spool = Spool(tmp_path / "s.spool", first_batch_seq=1000)
    spool.put_sightings("t", lambda seq: b"batch %d" % seq, 1)

    assert spool.request([(990, 1000)]) == (1, [(990, 999, "not_issued")])
    assert spool.request([(5, 7)]) == (0, [(5, 7, "not_issued")])
    spool.close()
    assert Spool(tmp_path / "s.spool", first_batch_seq=5000).first_batch_seq == 1000  # kept, not the new clock


def test_the_unconfirmed_count_follows_what_the_spool_holds_through_any_mix_of_operations(tmp_path: Path) -> None:
    # The count is kept as the spool changes (a scrape of 1,000 stations' /metrics counted it in each spool file on
    # the event loop: 25-35 ms); here it must always equal what the file holds, drops, stale PUBACKs, confirmations,
    # requests, rollbacks and restarts included.
    rng = random.Random(7)
    path = tmp_path / "s.spool"
    spool = Spool(path, max_bytes=6000)

    def in_file() -> int:
        with contextlib.closing(sqlite3.connect(path)) as db:
            return int(db.execute("SELECT count(*) FROM outbox WHERE attempts > 0").fetchone()[0])

    stale: list[Entry] = []
    for step in range(800):
        op = rng.randrange(9)
        if op == 0:
            put_batch(spool, rng.randint(50, 900))  # the spool fills: the oldest batches, sent or not, are dropped
        elif op == 1:
            spool.put_alert("alerts", b"alert %d" % step)
        elif op in (2, 3):
            spool.mark_sent(spool.peek(rng.randint(1, 6), now=step), timeout_s=2, max_s=8, now=step)
        elif op == 4:
            spool.confirm(rng.sample(range(max(spool.next_batch_seq, 1)), k=min(3, max(spool.next_batch_seq, 1))))
        elif op == 5:
            first = rng.randrange(max(spool.next_batch_seq, 1))
            spool.request([(first, first + rng.randint(0, 4))])
        elif op == 6:
            spool.resend_all()
        elif op == 7:
            # PUBACKs of entries peeked a while ago: confirmed, dropped or sent again meanwhile.
            spool.mark_sent(stale, timeout_s=2, max_s=8, now=step)
            stale = spool.peek(rng.randint(1, 6), now=step)
        else:
            with pytest.raises(RuntimeError), spool.atomic():
                spool.mark_sent(spool.peek(3, now=step), timeout_s=2, max_s=8, now=step)
                raise RuntimeError("the station failed half-way")
        if step % 97 == 0:
            spool.close()
            spool = Spool(path, max_bytes=6000)
        assert spool.unconfirmed == in_file(), f"step {step}, operation {op}"
    assert spool.unconfirmed > 0 and spool.dropped_batches > 0  # the walk went where it should
    spool.close()
