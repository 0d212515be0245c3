"""Store-and-forward on disk: every outgoing message is here before it is published.

SQLite in WAL mode. A message is deleted only once the broker has acknowledged it, so a crash,
a power cut or a dead uplink loses nothing; a message may be sent twice, which the contract
allows because `(station_id, batch_seq)` makes redelivery harmless. Alerts leave before
sightings whatever their age: they are the urgent ones.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY,
    priority INTEGER NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    sightings INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS outbox_order ON outbox (priority, id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS hotlist (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL,
    tags TEXT NOT NULL
);
"""


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
    """One spooled message waiting for its PUBACK."""

    id: int
    priority: Priority
    topic: str
    payload: bytes
    sightings: int


class Spool:
    """The on-disk outbox of one station, plus its batch counter and last hot list."""

    def __init__(self, path: Path, *, max_rows: int | None = None, first_batch_seq: int = 0) -> None:
        self.path = path
        self.max_rows = max_rows
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: we open transactions ourselves, so each put is one commit.
            self._db = sqlite3.connect(path, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit survives a power cut too, which is when a station loses data otherwise.
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            self._db.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('next_batch_seq', ?), ('dropped', 0)",
                (first_batch_seq,),
            )
            self._depth: int = self._db.execute("SELECT count(*) FROM outbox").fetchone()[0]
        except (OSError, sqlite3.Error) as exc:
            raise SpoolError(f"cannot open spool ({exc})", path) from exc

    def close(self) -> None:
        """Close the database file."""
        self._db.close()

    @property
    def depth(self) -> int:
        """Messages waiting to be acknowledged."""
        return self._depth

    @property
    def dropped(self) -> int:
        """Messages thrown away because the spool was full (kept across restarts)."""
        return self._meta("dropped")

    @property
    def next_batch_seq(self) -> int:
        """The batch_seq the next sightings batch will get."""
        return self._meta("next_batch_seq")

    def _meta(self, key: str) -> int:
        return int(self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0])

    def put_alert(self, topic: str, payload: bytes) -> None:
        """Spool one alert."""
        with self._transaction():
            self._insert(Priority.ALERT, topic, payload, 0)

    def put_sightings(self, topic: str, build: Callable[[int], bytes], count: int) -> int:
        """Spool one sightings batch: `build(batch_seq)` makes its payload; return the batch_seq."""
        # The counter moves in the same transaction as the insert: a crash between the two can
        # neither reuse a batch_seq nor leave a gap.
        with self._transaction():
            seq = self._meta("next_batch_seq")
            self._insert(Priority.SIGHTINGS, topic, build(seq), count)
            self._db.execute("UPDATE meta SET value = ? WHERE key = 'next_batch_seq'", (seq + 1,))
        return seq

    def _insert(self, priority: Priority, topic: str, payload: bytes, sightings: int) -> None:
        if self.max_rows is not None and self._depth >= self.max_rows:
            self._drop_oldest()
        self._db.execute(
            "INSERT INTO outbox (priority, topic, payload, sightings) VALUES (?, ?, ?, ?)",
            (int(priority), topic, payload, sightings),
        )
        self._depth += 1

    def _drop_oldest(self) -> None:
        # Full: the oldest sightings go first; alerts only when nothing else is left.
        row = self._db.execute("SELECT id, topic FROM outbox ORDER BY priority DESC, id LIMIT 1").fetchone()
        self._db.execute("DELETE FROM outbox WHERE id = ?", (row[0],))
        self._db.execute("UPDATE meta SET value = value + 1 WHERE key = 'dropped'")
        self._depth -= 1
        log.warning("spool %s full (%d rows): dropped message %d for %s", self.path, self.max_rows, *row)

    def peek(self, limit: int) -> list[Entry]:
        """The next messages to send, in send order, without removing them."""
        rows = self._db.execute(
            "SELECT id, priority, topic, payload, sightings FROM outbox ORDER BY priority, id LIMIT ?",
            (limit,),
        ).fetchall()
        return [Entry(r[0], Priority(r[1]), r[2], bytes(r[3]), r[4]) for r in rows]

    def ack(self, ids: Iterable[int]) -> None:
        """Remove messages the broker has acknowledged."""
        ids = list(ids)
        if not ids:
            return
        with self._transaction():
            deleted = 0
            for entry_id in ids:
                deleted += self._db.execute("DELETE FROM outbox WHERE id = ?", (entry_id,)).rowcount
        self._depth -= deleted

    def save_hotlist(self, version: int, tags: Iterable[int]) -> None:
        """Keep the hot list so a restarted station flags stolen chips before it reaches the broker."""
        text = ",".join(str(t) for t in sorted(tags))
        with self._transaction():
            self._db.execute(
                "INSERT INTO hotlist (id, version, tags) VALUES (1, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET version = excluded.version, tags = excluded.tags",
                (version, text),
            )

    def load_hotlist(self) -> tuple[int, list[int]] | None:
        """The last saved hot list as (version, tag ids), or None."""
        row = self._db.execute("SELECT version, tags FROM hotlist WHERE id = 1").fetchone()
        if row is None:
            return None
        return int(row[0]), [int(t) for t in row[1].split(",") if t]

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE … COMMIT; on any error ROLLBACK, and SQLite errors become SpoolError."""
        depth = self._depth
        try:
            self._db.execute("BEGIN IMMEDIATE")
            yield
            self._db.execute("COMMIT")
        except BaseException as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            self._depth = depth
            if isinstance(exc, sqlite3.Error):
                raise SpoolError(f"cannot write spool ({exc})", self.path) from exc
            raise
