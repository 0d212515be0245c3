"""Gaps in a station's batch_seqs: noticed, asked for, and closed as filled or lost (docs/architecture.md).

Seqs are contiguous per station (its spool gives them out one after another, from the clock's milliseconds when
the spool is new), so a seq missing below a stored one is a batch the backend does not have. Every
`ingest_gap_check_s`, one ingest process at a time (a PostgreSQL advisory lock held by the round's transaction; the
others skip that round) runs a round:

1. advance: each station's mark (batch_seq_marks) moves over the batches stored above it, an index range per station
   and never the whole table; the holes it passes become open gaps (batch_gaps), noticed now;
2. fill: stored batches inside open gaps are cut out of them: recovered if the gap had been asked for, otherwise the
   batch was only late (ordinary out-of-order arrival) and nothing is said;
3. ask: gaps open for longer than the grace period are asked for (a BatchRequest to their station), again with a
   doubling wait while they stay open. The first request is when a gap counts as seen: logged and counted.

A station answers with the requested batches it no longer holds (BatchesGone); the flush that carries the answer
closes those parts of the asked-for gaps as lost, with the station's reason, unless they were stored meanwhile.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from backend.settings import BackendSettings
from protocol import topics
from protocol.messages import REQUEST_MAX_RANGES, BatchesGone, BatchRequest, SeqRange, utcnow

log = logging.getLogger(__name__)

Span = tuple[int, int]  # first and last batch_seq, both included

# Any fixed number, not the migrations' (backend.db.migrate): one gap check at a time across all ingest processes.
LOCK_ID = 0x0B1CE6A4E
# Stored batches read per station per round: a longer backlog (a station's spool draining) takes several rounds.
_ADVANCE_LIMIT = 10_000


@dataclass
class GapCounters:
    """What the gap check has seen since this process started; read by /metrics."""

    rounds: int = 0
    rounds_skipped: int = 0  # another ingest process held the check's lock
    gaps_seen: int = 0  # gaps open past the grace period, asked for the first time
    batch_requests: int = 0  # request messages published
    batches_recovered: int = 0  # asked-for batches that came
    batches_lost: int = 0  # asked-for batches their station dropped or no longer holds
    lost_by_reason: Counter[str] = field(default_factory=Counter)  # dropped, not_held
    # Per registered station (gaps are only ever opened for stored batches, so their number is bounded). Gaps, not
    # batches, where a gap's size says nothing: the seqs a replaced spool never issued are a jump of the clock.
    gaps_by_station: Counter[str] = field(default_factory=Counter)
    recovered_by_station: Counter[str] = field(default_factory=Counter)
    lost_by_station: Counter[str] = field(default_factory=Counter)
    not_issued_by_station: Counter[str] = field(default_factory=Counter)  # gaps closed as never issued


@dataclass(frozen=True, slots=True)
class Lost:
    """Batches of one station closed as lost, with the reason its gateway gave."""

    station_id: str
    first: int
    last: int
    reason: str

    @property
    def batches(self) -> int | None:
        """How many batches were lost; None when unknown (seqs a replaced spool never issued)."""
        return None if self.reason == "not_issued" else self.last - self.first + 1


@dataclass
class _Round:
    """What one round did, to count and log once it committed."""

    requests: list[BatchRequest] = field(default_factory=list)
    first_asked: list[tuple[str, Span, datetime]] = field(default_factory=list)
    recovered: Counter[str] = field(default_factory=Counter)


def subtract(span: Span, holes: Iterable[Span]) -> list[Span]:
    """The parts of `span` left once `holes` (sorted by their first seq; they may stick out of it) are cut out."""
    first, last = span
    left: list[Span] = []
    at = first
    for lo, hi in holes:
        if hi < at or lo > last:
            continue
        if lo > at:
            left.append((at, lo - 1))
        at = max(at, hi + 1)
    if at <= last:
        left.append((at, last))
    return left


# A station's mark starts just below its first stored batch: a spool starts its seqs at the clock in milliseconds, so
# there is nothing to miss before the first (one that comes later than a higher one is simply stored, never a gap).
_MARK_NEW_STATIONS = """
INSERT INTO batch_seq_marks (station_id, checked_through)
SELECT s.station_id, f.first - 1 FROM stations s
CROSS JOIN LATERAL (SELECT min(i.batch_seq) AS first FROM ingested_batches i WHERE i.station_id = s.station_id) f
WHERE f.first IS NOT NULL AND NOT EXISTS (SELECT 1 FROM batch_seq_marks m WHERE m.station_id = s.station_id)
ON CONFLICT DO NOTHING
"""

# The holes between the batches stored above each mark become open gaps; the marks move to the last batch read.
_ADVANCE = """
WITH fresh AS (
    SELECT m.station_id, b.batch_seq,
           coalesce(lag(b.batch_seq) OVER (PARTITION BY m.station_id ORDER BY b.batch_seq), m.checked_through) AS prev
    FROM batch_seq_marks m CROSS JOIN LATERAL (
        SELECT i.batch_seq FROM ingested_batches i
        WHERE i.station_id = m.station_id AND i.batch_seq > m.checked_through
        ORDER BY i.batch_seq LIMIT %(limit)s
    ) b
), holes AS (
    INSERT INTO batch_gaps (station_id, first_seq, last_seq, noticed_at)
    SELECT station_id, prev + 1, batch_seq - 1, %(now)s FROM fresh WHERE batch_seq > prev + 1
)
UPDATE batch_seq_marks m SET checked_through = f.top
FROM (SELECT station_id, max(batch_seq) AS top FROM fresh GROUP BY station_id) f
WHERE m.station_id = f.station_id
"""

# Every open gap, locked in one order before the round touches any: a flush closing lost gaps locks its stations'
# in the same order, so the two wait for each other but never deadlock.
_LOCK_OPEN = """
SELECT gap_id FROM batch_gaps WHERE state = 'open' ORDER BY station_id, first_seq FOR UPDATE
"""

# Open gaps with stored batches inside.
_FILLED = """
SELECT g.gap_id, g.station_id, g.first_seq, g.last_seq, g.noticed_at, g.requests, g.last_request_at
FROM batch_gaps g
WHERE g.state = 'open' AND EXISTS (
    SELECT 1 FROM ingested_batches i
    WHERE i.station_id = g.station_id AND i.batch_seq BETWEEN g.first_seq AND g.last_seq
)
ORDER BY g.station_id, g.first_seq
"""

_STORED_IN = """
SELECT batch_seq FROM ingested_batches WHERE station_id = %s AND batch_seq BETWEEN %s AND %s ORDER BY batch_seq
"""

# Asked for once open past the grace period, then again after the grace doubled per request, up to request_max_s.
_DUE = """
SELECT gap_id, station_id, first_seq, last_seq, noticed_at, requests FROM batch_gaps
WHERE state = 'open' AND noticed_at <= %(now)s - make_interval(secs => %(grace)s)
  AND (last_request_at IS NULL
       OR last_request_at <= %(now)s - make_interval(secs => least(%(grace)s * power(2, requests - 1), %(max)s)))
ORDER BY station_id, first_seq
"""

_MISSING_NOW = """
SELECT station_id, sum(last_seq - first_seq + 1) FROM batch_gaps
WHERE state = 'open' AND requests > 0 GROUP BY station_id
"""


def _replace(conn: psycopg.Connection, gap: tuple[Any, ...], open_parts: list[Span], lost: list[Lost]) -> None:
    """Put the open parts of a gap (keeping when it was noticed and asked for) and its lost parts in its place."""
    gap_id, station_id, _first, _last, noticed_at, requests, last_request_at = gap
    conn.execute("DELETE FROM batch_gaps WHERE gap_id = %s", (gap_id,))
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO batch_gaps (station_id, first_seq, last_seq, noticed_at, requests, last_request_at)"
            " VALUES (%s, %s, %s, %s, %s, %s)",
            [(station_id, lo, hi, noticed_at, requests, last_request_at) for lo, hi in open_parts],
        )
        cur.executemany(
            "INSERT INTO batch_gaps (station_id, first_seq, last_seq, noticed_at, state, requests, last_request_at,"
            " closed_at, reason) VALUES (%s, %s, %s, %s, 'lost', %s, %s, now(), %s)",
            [(station_id, x.first, x.last, noticed_at, requests, last_request_at, x.reason) for x in lost],
        )


def _stored_in(conn: psycopg.Connection, station_id: str, first: int, last: int) -> list[int]:
    return [r[0] for r in conn.execute(_STORED_IN, (station_id, first, last))]


def wait_for_round(conn: psycopg.Connection) -> None:
    """Wait for a gap round in progress (any process's) to end, and keep the next one from starting until the
    caller's transaction ends: its round lock, taken by a flush that carries stations' answers before it locks any
    row (a round never waits for a flush's rows, so the two cannot deadlock). A round cuts the batches stored into a
    gap out of it by deleting the gap and inserting its parts; an answer closed beside it locked the deleted gap,
    skipped it, and found its parts only after, so the station's answer was lost."""
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_ID,))


def close_lost(conn: psycopg.Connection, answers: Iterable[BatchesGone]) -> list[Lost]:
    """Close as lost the asked-for open gaps (or their parts) that the stations' answers name, unless stored meanwhile;
    in the caller's transaction (the flush that carries the answers), which has waited for the gap round first
    (wait_for_round). Returns what was closed."""
    named: dict[str, list[tuple[int, int, str]]] = {}
    for answer in answers:
        named.setdefault(answer.station_id, []).extend((r.first, r.last, r.reason) for r in answer.ranges)
    if not named:
        return []
    gaps = conn.execute(
        "SELECT gap_id, station_id, first_seq, last_seq, noticed_at, requests, last_request_at FROM batch_gaps"
        " WHERE state = 'open' AND requests > 0 AND station_id = ANY(%s) ORDER BY station_id, first_seq FOR UPDATE",
        (sorted(named),),
    ).fetchall()
    closed: list[Lost] = []
    for gap in gaps:
        station_id, first, last = gap[1], gap[2], gap[3]
        overlapping = [(lo, hi, why) for lo, hi, why in named[station_id] if lo <= last and hi >= first]
        if not overlapping:
            continue
        stored = [(s, s) for s in _stored_in(conn, station_id, first, last)]
        lost = [
            Lost(station_id, lo, hi, why)
            for a_lo, a_hi, why in sorted(overlapping)
            for lo, hi in subtract((max(first, a_lo), min(last, a_hi)), stored)
        ]
        if not lost:
            continue
        _replace(conn, gap, subtract((first, last), [(x.first, x.last) for x in lost]), lost)
        closed += lost
    return closed


class GapWatch:
    """The periodic gap check of one ingest process, and the count of what its flushes closed as lost."""

    def __init__(
        self, settings: BackendSettings, pool: ConnectionPool, publish: Callable[[str, bytes], object]
    ) -> None:
        self.grace_s = settings.ingest_gap_grace_s
        self.check_s = settings.ingest_gap_check_s
        self.request_max_s = settings.ingest_gap_request_max_s
        self.counters = GapCounters()
        # Batches asked for and still missing, per station, as of the last round (any process's): a gauge.
        self.missing_now: dict[str, int] = {}
        self._pool = pool
        self._publish = publish
        self._lock = threading.Lock()
        self._wake = threading.Event()

    def run(self, stopping: threading.Event) -> None:
        """Check every check_s (or when woken) until `stopping` is set."""
        while True:
            self._wake.wait(self.check_s)
            self._wake.clear()
            if stopping.is_set():
                return
            self.round()

    def wake(self) -> None:
        """Run a round now (stop() wakes the thread so it sees it should end)."""
        self._wake.set()

    def round(self, now: datetime | None = None) -> bool:
        """One check; False when another process held the lock or the database is away."""
        now = utcnow() if now is None else now
        try:
            with self._pool.connection() as conn:
                with conn.transaction():
                    done = self._checked(conn, now)
                self.missing_now = {sid: int(n) for sid, n in conn.execute(_MISSING_NOW)}
        except psycopg.OperationalError as exc:
            log.error("gap check postponed, the database is unavailable: %s", exc)
            return False
        with self._lock:
            if done is None:
                self.counters.rounds_skipped += 1
                return False
            self.counters.rounds += 1
        for request in done.requests:
            self._publish(topics.requests_topic(request.station_id), request.to_json())
        self._count(done, now)
        return True

    def _checked(self, conn: psycopg.Connection, now: datetime) -> _Round | None:
        locked = conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (LOCK_ID,)).fetchone()
        if locked is None or not locked[0]:
            return None
        done = _Round()
        conn.execute(_MARK_NEW_STATIONS)
        conn.execute(_ADVANCE, {"limit": _ADVANCE_LIMIT, "now": now})
        conn.execute(_LOCK_OPEN)
        for gap in conn.execute(_FILLED).fetchall():
            station_id, first, last, requests = gap[1], gap[2], gap[3], gap[5]
            stored = _stored_in(conn, station_id, first, last)
            _replace(conn, gap, subtract((first, last), [(s, s) for s in stored]), [])
            if requests > 0:
                done.recovered[station_id] += len(stored)
        conn.execute(
            "UPDATE batch_seq_marks m SET batches_recovered = m.batches_recovered + r.n"
            " FROM unnest(%s::text[], %s::int8[]) AS r(station_id, n) WHERE m.station_id = r.station_id",
            (list(done.recovered), list(done.recovered.values())),
        )
        self._ask(conn, now, done)
        return done

    def _ask(self, conn: psycopg.Connection, now: datetime, done: _Round) -> None:
        """Ask for the gaps that are due, at most REQUEST_MAX_RANGES per station a round (the rest wait a round)."""
        due: dict[str, list[tuple[Any, ...]]] = {}
        for gap in conn.execute(_DUE, {"now": now, "grace": self.grace_s, "max": self.request_max_s}):
            ranges = due.setdefault(gap[1], [])
            if len(ranges) < REQUEST_MAX_RANGES:
                ranges.append(gap)
        asked: list[int] = []
        for station_id, gaps in due.items():
            done.requests.append(
                BatchRequest(station_id=station_id, ranges=[SeqRange(first=g[2], last=g[3]) for g in gaps], sent_at=now)
            )
            done.first_asked += [(station_id, (g[2], g[3]), g[4]) for g in gaps if g[5] == 0]
            asked += [g[0] for g in gaps]
        conn.execute(
            "UPDATE batch_gaps SET requests = requests + 1, last_request_at = %s WHERE gap_id = ANY(%s)", (now, asked)
        )

    def _count(self, done: _Round, now: datetime) -> None:
        with self._lock:
            c = self.counters
            c.batch_requests += len(done.requests)
            for station_id, _span, _noticed in done.first_asked:
                c.gaps_seen += 1
                c.gaps_by_station[station_id] += 1
            for station_id, n in done.recovered.items():
                c.batches_recovered += n
                c.recovered_by_station[station_id] += n
        for station_id, (first, last), noticed in done.first_asked:
            log.warning(
                "station %s: batches %s missing for %.0f s (its later batches are stored); asked its gateway for them",
                station_id,
                _seqs(first, last),
                (now - noticed).total_seconds(),
            )
        for station_id, n in done.recovered.items():
            log.info("station %s: %d of its missing batches came once asked for", station_id, n)

    def counted(self, lost: list[Lost]) -> None:
        """Count and log what a committed flush closed as lost."""
        if not lost:
            return
        with self._lock:
            c = self.counters
            for x in lost:
                if x.batches is None:
                    c.not_issued_by_station[x.station_id] += 1
                    continue
                c.batches_lost += x.batches
                c.lost_by_reason[x.reason] += x.batches
                c.lost_by_station[x.station_id] += x.batches
        for x in lost:
            log.warning("station %s: batches %s %s", x.station_id, _seqs(x.first, x.last), _REASONS[x.reason])


_REASONS = {
    "dropped": "lost: its gateway dropped them, its spool was full",
    "not_held": "lost: its gateway no longer holds them (dropped before it kept a record of drops)",
    "not_issued": "never issued by its gateway's spool: the spool was replaced (or the seqs are yet to come), and"
    " whatever the old one had not sent is lost, how many batches is unknown",
}


def _seqs(first: int, last: int) -> str:
    return str(first) if first == last else f"{first}-{last}"
