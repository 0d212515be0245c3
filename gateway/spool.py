"""Store-and-forward on disk: every outgoing message is here before it is published.

SQLite in WAL mode. A sightings batch is deleted only once the backend has confirmed that it is
stored (a confirmation names its batch_seq); its PUBACK only marks it sent, with a time at which
it goes again if no confirmation has come by then (`resend_at`, on this process's monotonic clock;
a new process or connection makes every unconfirmed batch due at once). So a crash, a power cut, a
dead uplink or a broker that forgets what it acknowledged loses nothing. Alerts carry no id the
backend could confirm: they are deleted at their PUBACK. A message may be sent twice, which the
contract allows because `(station_id, batch_seq)` makes redelivery harmless. Alerts leave before
sightings whatever their age: they are the urgent ones.

The spool is bounded by the bytes of the payloads it holds (docs/spool.md). When a new message
does not fit, the oldest sightings batches are dropped first; alerts only make room for newer
alerts, never for sightings. Every drop is counted on disk and logged (rate-limited).

The same file checkpoints the aggregator's open passages, in the same transactions that spool
the sightings they close into, so a SIGKILL or a power cut loses no passage either.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum
from pathlib import Path
from typing import Literal

from gateway.aggregator import Passage, TagKey
from protocol.beacon_v2 import EID_BYTES
from protocol.frames import TagFlags

log = logging.getLogger(__name__)

MIB = 1024 * 1024
# About four days of a busy station (500 tags in range, bench/spool.py) and a few percent of
# an 8 GB SD card; docs/spool.md has the figures.
DEFAULT_MAX_BYTES = 512 * MIB

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY,
    priority INTEGER NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    sightings INTEGER NOT NULL DEFAULT 0,
    batch_seq INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    resend_at REAL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS hotlist (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL,
    tags TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS dropped_seqs (
    first_seq INTEGER PRIMARY KEY,
    last_seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS open_passages (
    tag_id INTEGER PRIMARY KEY,
    first_seen_at TEXT NOT NULL,
    last_seen_at TEXT NOT NULL,
    beacons INTEGER NOT NULL,
    peak_rssi_dbm INTEGER NOT NULL,
    antenna INTEGER NOT NULL,
    flags INTEGER NOT NULL,
    hotlist_alerted INTEGER NOT NULL,
    tamper_alerted INTEGER NOT NULL
);
-- A v2 chip's open passages, keyed by the ephemeral id it beacons (8 bytes), with the first and the latest beacon
-- as they were on the air: what the station knows of a v2 chip, never its key or its tag id.
CREATE TABLE IF NOT EXISTS open_passages_v2 (
    eid BLOB PRIMARY KEY,
    first_seen_at TEXT NOT NULL,
    last_seen_at TEXT NOT NULL,
    beacons INTEGER NOT NULL,
    peak_rssi_dbm INTEGER NOT NULL,
    antenna INTEGER NOT NULL,
    flags INTEGER NOT NULL,
    hotlist_alerted INTEGER NOT NULL,
    tamper_alerted INTEGER NOT NULL,
    first_heard BLOB NOT NULL,
    last_heard BLOB
);
-- The hot list's stolen v2 chips: their ephemeral ids per window, 8 bytes each, concatenated.
CREATE TABLE IF NOT EXISTS hotlist_eids (
    window_number INTEGER PRIMARY KEY,
    eids BLOB NOT NULL
);
"""

# Created after _migrate: they name columns a spool file of an older version gets there.
_INDEXES = """
CREATE INDEX IF NOT EXISTS outbox_order ON outbox (priority, id);
CREATE INDEX IF NOT EXISTS outbox_unsent ON outbox (priority, id) WHERE resend_at IS NULL;
CREATE INDEX IF NOT EXISTS outbox_resend ON outbox (resend_at) WHERE resend_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS outbox_batch_seq ON outbox (batch_seq) WHERE batch_seq IS NOT NULL;
CREATE INDEX IF NOT EXISTS outbox_sent ON outbox (attempts) WHERE attempts > 0;
"""

_COUNTERS = ("next_batch_seq", "bytes", "dropped_batches", "dropped_sightings", "dropped_alerts")
# Runs of dropped batch_seqs remembered, so that a backend asking for one hears it was dropped (not merely "not
# held"); drops take the oldest batches first, so a long outage is one run. The oldest runs are forgotten first.
_MAX_DROPPED_RUNS = 1000

# Times whose text a spool keeps (about a station's open passages' first and last times, a few times over).
_ISOFORMATS_KEPT = 512

GoneReason = Literal["dropped", "not_issued", "not_held"]


def _size(n: int) -> str:
    return f"{n / MIB:.1f} MiB" if n >= MIB else f"{n} B"


def resend_delay_s(attempts: int, timeout_s: float, max_s: float) -> float:
    """How long a batch sent `attempts` times waits for its confirmation: the timeout, doubled per attempt, capped."""
    return min(timeout_s * 2.0 ** max(attempts - 1, 0), max_s)


def _without(first: int, last: int, seqs: list[int]) -> Iterator[tuple[int, int]]:
    """The runs of first..last (both included) left once the sorted seqs are taken out."""
    return _without_runs(first, last, [(s, s) for s in seqs])


def _without_runs(first: int, last: int, runs: list[tuple[int, int]]) -> Iterator[tuple[int, int]]:
    """The runs of first..last left once the sorted, disjoint runs (clipped to it) are taken out."""
    at = first
    for lo, hi in runs:
        if lo > at:
            yield at, lo - 1
        at = max(at, hi + 1)
    if at <= last:
        yield at, last


class Priority(IntEnum):
    """Send order: lower first."""

    ALERT = 0
    SIGHTINGS = 1


class SpoolError(Exception):
    """The spool file cannot be opened or written; carries its path."""

    def __init__(self, message: str, path: Path) -> None:
        super().__init__(f"{message}: {path}")
        self.path = path


@dataclass(frozen=True, slots=True)
class Entry:
    """One spooled message waiting to be sent, or (a sightings batch) sent and waiting for its confirmation."""

    id: int
    priority: Priority
    topic: str
    payload: bytes
    sightings: int
    batch_seq: int | None = None
    attempts: int = 0


class DropLog:
    """Warns about drops at once, then at most once per `interval_s` with the counts in between."""

    def __init__(self, path: Path, interval_s: float = 60.0) -> None:
        self.path = path
        self.interval_s = interval_s
        self._logged_at = -float("inf")
        self._batches = self._sightings = self._alerts = 0

    def add(self, batches: int, sightings: int, alerts: int, spool: Spool) -> None:
        """Count one drop; log if the last warning is old enough."""
        self._batches += batches
        self._sightings += sightings
        self._alerts += alerts
        self.report(spool)

    def report(self, spool: Spool, *, force: bool = False) -> None:
        """Log the drops not yet logged, if any and if due (or forced)."""
        if not (self._batches or self._alerts):
            return
        now = time.monotonic()
        if not force and now - self._logged_at < self.interval_s:
            return
        since = "" if self._logged_at == -float("inf") else f" in the last {now - self._logged_at:.0f} s"
        log.warning(
            "spool %s full (%s of %s): dropped %d sightings batches (%d sightings) and %d alerts%s;"
            " %d sightings and %d alerts dropped in all",
            self.path,
            _size(spool.size_bytes),
            _size(spool.max_bytes),
            self._batches,
            self._sightings,
            self._alerts,
            since,
            spool.dropped_sightings,
            spool.dropped_alerts,
        )
        self._logged_at = now
        self._batches = self._sightings = self._alerts = 0


class Spool:
    """The on-disk outbox of one station, plus its batch counter, open passages, last hot list and the seq of the
    last command it took."""

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        first_batch_seq: int = 0,
        drop_log_interval_s: float = 60.0,
        fsync: bool = True,
    ) -> None:
        """`fsync=False`: no commit waits for the disk; what is committed is on it only once `sync_spools`
        (gateway.spool_sync) has put this path on disk after the commit. For many stations in one process, whose owner
        syncs their spools together before acting on them (the vendor bridge acknowledges an upload only then)."""
        if max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        self.path = path
        self.max_bytes = max_bytes
        self.fsync = fsync
        self._drop_log = DropLog(path, drop_log_interval_s)
        self._depth = 0
        self._unconfirmed = 0  # batches sent at least once (attempts > 0), kept as they change
        # The text of the times checkpointed lately: a passage's first_seen_at is written again at every checkpoint
        # of it, and an upload's reads share their times (isoformat was half of a vendor station's checkpoint).
        self._isoformats: dict[datetime, str] = {}
        self._counters: dict[str, int] = {}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: we open transactions ourselves, so each put is one commit.
            self._db = sqlite3.connect(path, isolation_level=None)
            # One cursor for every statement: Connection.execute makes a cursor a statement, and (Python 3.11) the
            # connection keeps a weak reference to each until its next 200th; a bridge of 500 spools held some
            # 44,000 of them, which the garbage collector then walked through at every full collection.
            self._sql = self._db.cursor()
            self._sql.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit survives a power cut too, which is when a station loses data otherwise. NORMAL (fsync
            # False) only writes the WAL at commit: the owner fsyncs it (and SQLite still syncs at each checkpoint).
            self._sql.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
            self._db.executescript(_SCHEMA)
            with self._transaction():
                self._migrate()
                # A new process: what was sent and not confirmed goes again at once.
                self._sql.execute("UPDATE outbox SET resend_at = NULL WHERE resend_at IS NOT NULL")
            self._db.executescript(_INDEXES)
            with self._transaction():
                # The first seq of a new spool file, so that it can tell a backend asking for an older one that it
                # never gave that seq out (an older file, replaced, did). Unknown for files made before this.
                self._sql.execute(
                    "INSERT INTO meta (key, value) SELECT 'first_batch_seq', ?"
                    " WHERE NOT EXISTS (SELECT 1 FROM meta WHERE key = 'next_batch_seq')",
                    (first_batch_seq,),
                )
                self._sql.execute(
                    "INSERT OR IGNORE INTO meta (key, value) VALUES ('next_batch_seq', ?),"
                    " ('dropped_batches', 0), ('dropped_sightings', 0), ('dropped_alerts', 0)",
                    (first_batch_seq,),
                )
                # The byte count is kept up to date on disk: summing a full spool would read all of it.
                self._sql.execute(
                    "INSERT OR IGNORE INTO meta (key, value)"
                    " SELECT 'bytes', coalesce(sum(length(payload)), 0) FROM outbox"
                )
            self._depth = self._sql.execute("SELECT count(*) FROM outbox").fetchone()[0]
            # Counted once, on its partial index; then kept as batches are sent, confirmed and dropped.
            self._unconfirmed = self._sql.execute("SELECT count(*) FROM outbox WHERE attempts > 0").fetchone()[0]
            row = self._sql.execute("SELECT value FROM meta WHERE key = 'first_batch_seq'").fetchone()
            self.first_batch_seq: int | None = None if row is None else int(row[0])
            self._counters = dict(
                self._sql.execute(
                    f"SELECT key, value FROM meta WHERE key IN ({','.join('?' * len(_COUNTERS))})", _COUNTERS
                ).fetchall()
            )
        except (OSError, sqlite3.Error) as exc:
            raise SpoolError(f"cannot open spool ({exc})", path) from exc

    def _migrate(self) -> None:
        """Bring a spool file of an older version to this one, in place: its waiting batches get their batch_seq."""
        columns = {row[1] for row in self._sql.execute("PRAGMA table_info(outbox)")}
        if "batch_seq" in columns:
            return
        self._sql.execute("ALTER TABLE outbox ADD COLUMN batch_seq INTEGER")
        self._sql.execute("ALTER TABLE outbox ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0")
        self._sql.execute("ALTER TABLE outbox ADD COLUMN resend_at REAL")
        # The payload is the batch as published, so its batch_seq is in it.
        self._sql.execute(
            "UPDATE outbox SET batch_seq = json_extract(CAST(payload AS TEXT), '$.batch_seq') WHERE priority = ?",
            (int(Priority.SIGHTINGS),),
        )
        log.info("spool %s: upgraded in place (batches now wait for the backend's confirmation)", self.path)

    def close(self) -> None:
        """Log any drops not yet logged and close the database file."""
        self._drop_log.report(self, force=True)
        self._db.close()

    @property
    def depth(self) -> int:
        """Messages held: alerts until their PUBACK, sightings batches until the backend confirms them."""
        return self._depth

    @property
    def unconfirmed(self) -> int:
        """Sightings batches sent at least once and not yet confirmed by the backend (kept, not counted: a scrape of
        a thousand stations' /metrics counted it in each spool, 25-35 ms on the bridge's event loop)."""
        return self._unconfirmed

    @property
    def size_bytes(self) -> int:
        """Payload bytes held (what max_bytes bounds)."""
        return self._counters["bytes"]

    @property
    def dropped(self) -> int:
        """Sightings and alerts thrown away because the spool was full (kept across restarts)."""
        return self.dropped_sightings + self.dropped_alerts

    @property
    def dropped_batches(self) -> int:
        """Sightings batches thrown away because the spool was full."""
        return self._counters["dropped_batches"]

    @property
    def dropped_sightings(self) -> int:
        """Sightings in the batches thrown away."""
        return self._counters["dropped_sightings"]

    @property
    def dropped_alerts(self) -> int:
        """Alerts thrown away (only ever to make room for newer alerts)."""
        return self._counters["dropped_alerts"]

    @property
    def next_batch_seq(self) -> int:
        """The batch_seq the next sightings batch will get."""
        return self._counters["next_batch_seq"]

    def _bump(self, key: str, by: int) -> None:
        self._sql.execute("UPDATE meta SET value = value + ? WHERE key = ?", (by, key))
        self._counters[key] += by

    def put_alert(self, topic: str, payload: bytes) -> None:
        """Spool one alert."""
        with self._transaction():
            self._insert(Priority.ALERT, topic, payload, 0)

    def put_sightings(self, topic: str, build: Callable[[int], bytes], count: int) -> int | None:
        """Spool one sightings batch: `build(batch_seq)` makes its payload; return the batch_seq.

        None means the batch itself was dropped: the spool is full of alerts.
        """
        # The counter moves in the same transaction as the insert: a crash between the two can
        # neither reuse a batch_seq nor leave a gap.
        with self._transaction():
            seq = self.next_batch_seq
            if not self._insert(Priority.SIGHTINGS, topic, build(seq), count, seq):
                return None
            self._bump("next_batch_seq", 1)
        return seq

    def _insert(
        self, priority: Priority, topic: str, payload: bytes, sightings: int, batch_seq: int | None = None
    ) -> bool:
        if not self._make_room(len(payload), priority):
            self._count_drop(priority, sightings)
            return False
        self._sql.execute(
            "INSERT INTO outbox (priority, topic, payload, sightings, batch_seq) VALUES (?, ?, ?, ?, ?)",
            (int(priority), topic, payload, sightings, batch_seq),
        )
        self._depth += 1
        self._bump("bytes", len(payload))
        return True

    def _make_room(self, size: int, priority: Priority) -> bool:
        """Drop the oldest sightings, then (for a new alert only) the oldest alerts, until `size` fits."""
        if size > self.max_bytes:
            return False  # it would not fit in an empty spool: keep what is there
        victims = (Priority.SIGHTINGS,) if priority == Priority.SIGHTINGS else (Priority.SIGHTINGS, Priority.ALERT)
        for victim in victims:
            while self.size_bytes + size > self.max_bytes:
                # One priority at a time, so the (priority, id) index serves the scan.
                rows = self._sql.execute(
                    "SELECT id, length(payload), sightings, batch_seq, attempts > 0 FROM outbox WHERE priority = ?"
                    " ORDER BY id LIMIT 64",
                    (int(victim),),
                ).fetchall()
                if not rows:
                    break
                for entry_id, entry_size, entry_sightings, entry_seq, sent in rows:
                    if self.size_bytes + size <= self.max_bytes:
                        break
                    self._sql.execute("DELETE FROM outbox WHERE id = ?", (entry_id,))
                    self._depth -= 1
                    self._unconfirmed -= sent
                    self._bump("bytes", -entry_size)
                    self._count_drop(victim, entry_sightings)
                    if entry_seq is not None:
                        self._remember_dropped(entry_seq)
        return self.size_bytes + size <= self.max_bytes

    def _count_drop(self, priority: Priority, sightings: int) -> None:
        if priority == Priority.ALERT:
            self._bump("dropped_alerts", 1)
            self._drop_log.add(0, 0, 1, self)
        else:
            self._bump("dropped_batches", 1)
            self._bump("dropped_sightings", sightings)
            self._drop_log.add(1, sightings, 0, self)

    def _remember_dropped(self, seq: int) -> None:
        """Add a dropped batch_seq to the run it follows (or start one), forgetting the oldest runs past the bound."""
        row = self._sql.execute(
            "SELECT first_seq FROM dropped_seqs WHERE last_seq = ? ORDER BY first_seq DESC LIMIT 1", (seq - 1,)
        ).fetchone()
        if row is not None:
            self._sql.execute("UPDATE dropped_seqs SET last_seq = ? WHERE first_seq = ?", (seq, row[0]))
            return
        self._sql.execute("INSERT OR REPLACE INTO dropped_seqs (first_seq, last_seq) VALUES (?, ?)", (seq, seq))
        self._sql.execute(
            "DELETE FROM dropped_seqs WHERE first_seq NOT IN"
            " (SELECT first_seq FROM dropped_seqs ORDER BY first_seq DESC LIMIT ?)",
            (_MAX_DROPPED_RUNS,),
        )

    def request(self, ranges: Iterable[tuple[int, int]]) -> tuple[int, list[tuple[int, int, GoneReason]]]:
        """The backend is missing these batches (ranges of batch_seqs, both ends included): those still here are due
        again at once; return how many, and the rest as (first, last, why) ranges: dropped (the spool was full),
        not_issued (this spool never gave the seq out: it is newer than the one that did, or the seq is yet to come)
        or not_held (confirmed, or dropped before runs were remembered)."""
        held = 0
        gone: list[tuple[int, int, GoneReason]] = []
        start = self.first_batch_seq if self.first_batch_seq is not None else 0
        with self._transaction():
            for requested_first, last in ranges:
                if requested_first < start:
                    gone.append((requested_first, min(last, start - 1), "not_issued"))
                first = max(requested_first, start)
                below = min(last, self.next_batch_seq - 1)
                if below >= first:
                    seqs = [
                        int(r[0])
                        for r in self._sql.execute(
                            "SELECT batch_seq FROM outbox WHERE batch_seq BETWEEN ? AND ? ORDER BY batch_seq",
                            (first, below),
                        )
                    ]
                    self._sql.execute(
                        "UPDATE outbox SET resend_at = NULL WHERE batch_seq BETWEEN ? AND ? AND resend_at IS NOT NULL",
                        (first, below),
                    )
                    held += len(seqs)
                    for lo, hi in _without(first, below, seqs):
                        gone += self._why_gone(lo, hi)
                if last >= self.next_batch_seq:
                    gone.append((max(first, self.next_batch_seq), last, "not_issued"))
        return held, gone

    def _why_gone(self, first: int, last: int) -> list[tuple[int, int, GoneReason]]:
        """Cut a range of seqs this spool gave out and no longer holds into the runs it dropped and the rest."""
        runs = self._sql.execute(
            "SELECT max(first_seq, ?), min(last_seq, ?) FROM dropped_seqs WHERE first_seq <= ? AND last_seq >= ?"
            " ORDER BY first_seq",
            (first, last, last, first),
        ).fetchall()
        dropped: list[tuple[int, int, GoneReason]] = [(int(lo), int(hi), "dropped") for lo, hi in runs]
        rest: list[tuple[int, int, GoneReason]] = [
            (lo, hi, "not_held") for lo, hi in _without_runs(first, last, [(lo, hi) for lo, hi, _ in dropped])
        ]
        return sorted([*dropped, *rest])

    def report_drops(self) -> None:
        """Log the drops since the last warning, if the warning interval has passed."""
        self._drop_log.report(self)

    def peek(self, limit: int, now: float | None = None) -> list[Entry]:
        """The next messages to send, in send order, without removing them: those never sent (or made due again)
        and the sent ones whose confirmation is overdue at `now` (time.monotonic() by default)."""
        now = time.monotonic() if now is None else now
        columns = "id, priority, topic, payload, sightings, batch_seq, attempts"
        # Two queries, each served by its partial index, so batches waiting for a confirmation are never scanned.
        rows = self._sql.execute(
            f"SELECT {columns} FROM outbox WHERE resend_at IS NULL ORDER BY priority, id LIMIT ?", (limit,)
        ).fetchall()
        rows += self._sql.execute(
            f"SELECT {columns} FROM outbox WHERE resend_at IS NOT NULL AND resend_at <= ? ORDER BY resend_at LIMIT ?",
            (now, limit),
        ).fetchall()
        rows.sort(key=lambda r: (r[1], r[0]))
        return [Entry(r[0], Priority(r[1]), r[2], bytes(r[3]), r[4], r[5], r[6]) for r in rows[:limit]]

    def next_resend_at(self, now: float | None = None) -> float | None:
        """When the next sent batch falls overdue after `now` (monotonic), or None if none is waiting for that."""
        now = time.monotonic() if now is None else now
        row = self._sql.execute("SELECT min(resend_at) FROM outbox WHERE resend_at > ?", (now,)).fetchone()
        return None if row[0] is None else float(row[0])

    def ack(self, ids: Iterable[int]) -> None:
        """Remove messages for good (ids already gone are ignored)."""
        ids = list(ids)
        if not ids:
            return
        with self._transaction():
            self._delete(f"id IN ({','.join('?' * len(ids))})", ids)

    def _delete(self, where: str, args: list[int]) -> tuple[int, int]:
        """Delete the matching messages; return how many, and the sightings they held."""
        rows = self._sql.execute(
            f"DELETE FROM outbox WHERE {where} RETURNING length(payload), sightings, attempts > 0", args
        ).fetchall()
        self._depth -= len(rows)
        self._unconfirmed -= sum(sent for _, _, sent in rows)
        self._bump("bytes", -sum(size for size, _, _ in rows))
        return len(rows), sum(n for _, n, _ in rows)

    def mark_sent(self, entries: Iterable[Entry], *, timeout_s: float, max_s: float, now: float | None = None) -> None:
        """The broker acknowledged these: delete the alerts; keep the sightings batches, due again unless confirmed
        within resend_delay_s of their attempts (ids already gone, say confirmed meanwhile, are ignored)."""
        now = time.monotonic() if now is None else now
        alerts: list[int] = []
        sent: list[tuple[int, float, int]] = []
        for e in entries:
            if e.batch_seq is None:
                alerts.append(e.id)
            else:
                sent.append((e.attempts + 1, now + resend_delay_s(e.attempts + 1, timeout_s, max_s), e.id))
        with self._transaction(durable=False):
            self.ack(alerts)
            # Those sent before first, then those sent for the first time (counted): each row is updated once, and
            # an entry peeked before it was sent again (a late PUBACK) is counted by what the file holds.
            if sent:
                self._sql.executemany(
                    "UPDATE outbox SET attempts = ?, resend_at = ? WHERE id = ? AND attempts > 0", sent
                )
                self._sql.executemany(
                    "UPDATE outbox SET attempts = ?, resend_at = ? WHERE id = ? AND attempts = 0", sent
                )
                self._unconfirmed += self._sql.rowcount

    def confirm(self, batch_seqs: Iterable[int]) -> tuple[int, int]:
        """The backend has stored these batches: delete them; return how many were still here, and their sightings."""
        seqs = list(batch_seqs)
        if not seqs:
            return 0, 0
        with self._transaction(durable=False):
            return self._delete(f"batch_seq IN ({','.join('?' * len(seqs))})", seqs)

    def resend_all(self) -> None:
        """Make every sent, unconfirmed batch due at once (a new connection: the broker may have lost them)."""
        with self._transaction(durable=False):
            self._sql.execute("UPDATE outbox SET resend_at = NULL WHERE resend_at IS NOT NULL")

    def save_passages(self, upsert: Iterable[Passage], delete: Iterable[TagKey]) -> None:
        """Checkpoint open passages: write (replace) some, forget others by tag id or ephemeral id."""
        gone = list(delete)
        sql = self._sql
        # Only the statements with rows: a vendor station checkpoints every upload, mostly one table's rows.
        if gone_v1 := [(t,) for t in gone if isinstance(t, int)]:
            sql.executemany("DELETE FROM open_passages WHERE tag_id = ?", gone_v1)
        if gone_v2 := [(t,) for t in gone if isinstance(t, bytes)]:
            sql.executemany("DELETE FROM open_passages_v2 WHERE eid = ?", gone_v2)
        v1: list[tuple[object, ...]] = []
        v2: list[tuple[object, ...]] = []
        iso = self._isoformats
        if len(iso) > _ISOFORMATS_KEPT:
            iso.clear()
        for p in upsert:
            # Keyed by the instant: a station's times are all UTC, so one instant has one text.
            first, last = p.first_seen_at, p.last_seen_at
            row = (
                p.tag,
                iso.get(first) or iso.setdefault(first, first.isoformat()),
                iso.get(last) or iso.setdefault(last, last.isoformat()),
                p.beacons,
                p.peak_rssi_dbm,
                p.antenna,
                int(p.flags),
                p.hotlist_alerted,
                p.tamper_alerted,
            )
            if isinstance(p.tag, int):
                v1.append(row)
            else:
                v2.append((*row, p.first_heard, p.last_heard))
        if v1:
            sql.executemany("INSERT OR REPLACE INTO open_passages VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", v1)
        if v2:
            sql.executemany("INSERT OR REPLACE INTO open_passages_v2 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", v2)

    def load_passages(self) -> list[Passage]:
        """The open passages as last checkpointed, v1 and v2 chips', oldest first."""
        columns = "first_seen_at, last_seen_at, beacons, peak_rssi_dbm, antenna, flags, hotlist_alerted, tamper_alerted"
        rows = self._sql.execute(
            f"SELECT tag_id, {columns}, NULL, NULL FROM open_passages"
            f" UNION ALL SELECT eid, {columns}, first_heard, last_heard FROM open_passages_v2 ORDER BY 2"
        ).fetchall()
        return [
            Passage(
                tag=r[0],
                first_seen_at=datetime.fromisoformat(r[1]),
                last_seen_at=datetime.fromisoformat(r[2]),
                beacons=r[3],
                peak_rssi_dbm=r[4],
                antenna=r[5],
                flags=TagFlags(r[6]),
                hotlist_alerted=bool(r[7]),
                tamper_alerted=bool(r[8]),
                first_heard=r[9],
                last_heard=r[10],
            )
            for r in rows
        ]

    def save_hotlist(
        self, version: int, tags: Iterable[int], eids: Mapping[int, Iterable[bytes]] | None = None
    ) -> None:
        """Keep the hot list (stolen v1 tag ids, stolen v2 chips' eids per window) so a restarted station flags
        stolen chips before it reaches the broker."""
        text = ",".join(str(t) for t in sorted(tags))
        with self._transaction():
            self._sql.execute(
                "INSERT INTO hotlist (id, version, tags) VALUES (1, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET version = excluded.version, tags = excluded.tags",
                (version, text),
            )
            self._sql.execute("DELETE FROM hotlist_eids")
            self._sql.executemany(
                "INSERT INTO hotlist_eids (window_number, eids) VALUES (?, ?)",
                ((w, b"".join(sorted(e))) for w, e in (eids or {}).items()),
            )

    def load_hotlist(self) -> tuple[int, list[int]] | None:
        """The last saved hot list as (version, tag ids), or None."""
        row = self._sql.execute("SELECT version, tags FROM hotlist WHERE id = 1").fetchone()
        if row is None:
            return None
        return int(row[0]), [int(t) for t in row[1].split(",") if t]

    def load_hotlist_eids(self) -> dict[int, list[bytes]]:
        """The last saved hot list's ephemeral ids by window (empty when it had none)."""
        return {
            int(window): [blob[i : i + EID_BYTES] for i in range(0, len(blob), EID_BYTES)]
            for window, blob in self._sql.execute("SELECT window_number, eids FROM hotlist_eids ORDER BY window_number")
        }

    def save_command_seq(self, seq: int) -> None:
        """Keep the seq of the last command taken, so a restarted station still refuses a replay of an older one."""
        with self._transaction():
            self._sql.execute(
                "INSERT INTO meta (key, value) VALUES ('command_seq', ?)"
                " ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value)",
                (seq,),
            )

    def load_command_seq(self) -> int:
        """The seq of the last command taken (0: none yet)."""
        row = self._sql.execute("SELECT value FROM meta WHERE key = 'command_seq'").fetchone()
        return 0 if row is None else int(row[0])

    @contextlib.contextmanager
    def atomic(self) -> Iterator[None]:
        """Group several writes (puts, passage checkpoints) into one transaction: all or none."""
        with self._transaction():
            yield

    @contextlib.contextmanager
    def _transaction(self, *, durable: bool = True) -> Iterator[None]:
        """BEGIN IMMEDIATE … COMMIT; on any error ROLLBACK, and SQLite errors become SpoolError.

        Inside an open transaction it only joins it: the outermost one commits or rolls back. durable=False commits
        without an fsync, for bookkeeping whose loss in a power cut only makes a batch or alert go again (the
        backend takes a batch once, by its seq): the WAL stays consistent, and the next durable commit carries it.
        A station commits its spool several times a second, and the fsyncs are what a bridge of many waits on.
        """
        if self._db.in_transaction:
            yield
            return
        depth, unconfirmed, counters = self._depth, self._unconfirmed, dict(self._counters)
        switch = not durable and self.fsync  # a spool without fsync commits NORMAL throughout
        if switch:
            self._sql.execute("PRAGMA synchronous=NORMAL")
        try:
            self._sql.execute("BEGIN IMMEDIATE")
            yield
            self._sql.execute("COMMIT")
        except BaseException as exc:
            if self._db.in_transaction:
                self._sql.execute("ROLLBACK")
            self._depth, self._unconfirmed, self._counters = depth, unconfirmed, counters
            if isinstance(exc, sqlite3.Error):
                raise SpoolError(f"cannot write spool ({exc})", self.path) from exc
            raise
        finally:
            if switch:
                self._sql.execute("PRAGMA synchronous=FULL")
