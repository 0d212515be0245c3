"""v2 chips in the ingest: each v2 sighting and alert resolved to its chip before anything stores it.

A station forwards a v2 passage's first and last beacons (`heard`, protocol.messages) without knowing the chip. For
each flush this module looks their eids up (backend.resolution); in a short transaction of its own it locks and loads
the states of the chips they may be from (chip_beacon_states, shared by every worker: a replay heard by a station
another worker serves is still compared with the highest counter accepted), resolves every beacon in the order it
was heard and writes the states back; then it hands the writer, in the flush's transaction, plain rows with their tag
ids. A sighting whose beacon is a replay or a forgery
is not the chip's passage: it raises a cloned-chip alarm with the evidence and is not stored. A beacon no active chip
sends (a chip of another county) is counted and the newest kept for inspection; such a beacon first makes the
worker look for chips fitted since its last look (an index probe) and resolve it again, so a chip fitted a minute
ago loses no passage.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool, PoolTimeout

from backend import chip_keys
from backend.alarms import store
from backend.alarms.evidence import Evidence
from backend.resolution import (
    ChipState,
    CloneEvidence,
    Hearing,
    Prepared,
    Resolution,
    ResolutionTable,
    Resolver,
    Verdict,
    join_window_splits,
)
from backend.vault import Vault, VaultError
from protocol.beacon_v2 import BeaconPayloadError, window_of
from protocol.messages import Alert, format_tag

log = logging.getLogger(__name__)

# Chips retired (a replaced chip, a deregistered bike) stop resolving within this long.
REFRESH_S: Final = 60.0
# Windows before the current one the table holds (12 bytes a chip each): beacons delivered this late (a station's
# uplink down for up to two hours) resolve at no extra cost; older ones need a table of their own window.
DEFAULT_PAST_WINDOWS: Final = 8
# Windows after the current one the table holds: one more than a beacon's lookup needs (the next window, a fast
# clock's), so that when the clock passes into the next window the table moves there in the background (a sort of
# a million eids, and every `ahead` windows a key schedule per chip: seconds) while flushes and alerts resolve with
# it as it is; a flush moves it itself only when it is more than a window behind.
AFTER_WINDOWS: Final = 2
# Tables of older windows kept for beacons delivered late, the least recently used dropped first.
LATE_TABLES: Final = 4
# The latest beacons no chip resolved, kept in memory for inspection.
UNKNOWN_KEPT: Final = 1000
# written_at is the fitting transaction's start, which may commit later: look back this far past the last refresh.
_COMMIT_SLACK_S: Final = 300.0

_STATE_COLUMNS: Final = 'tag_id, counter, heard_at, station_id, "window", payload, offset_lo_s, offset_hi_s, offset_at'
# The states as the resolver keeps them, times as seconds since the epoch (a datetime made and read back for each of
# two times a state, both ways, was a tenth of a flush's resolution).
_STATE_READ: Final = (
    "SELECT tag_id, counter, date_part('epoch', heard_at), station_id, \"window\", payload, offset_lo_s, offset_hi_s,"
    " date_part('epoch', offset_at) FROM chip_beacon_states WHERE tag_id = ANY(%s) ORDER BY tag_id FOR UPDATE"
)
_STATE_TYPES: Final = ["int8", "int8", "float8", "text", "int8", "bytea", "float8", "float8", "float8"]
# A flush's states on their way back (the rows are gone at commit).
_FLUSH_STATES: Final = (
    "CREATE TEMP TABLE IF NOT EXISTS flush_beacon_states_s (tag_id int8 NOT NULL, counter int8 NOT NULL,"
    ' heard_at float8 NOT NULL, station_id text NOT NULL, "window" int8 NOT NULL, payload bytea NOT NULL,'
    " offset_lo_s float8 NOT NULL, offset_hi_s float8 NOT NULL, offset_at float8 NOT NULL) ON COMMIT DELETE ROWS"
)


@dataclass(slots=True)
class _Beacon:
    """One beacon of a v2 sighting or alert, waiting for its verdict."""

    payload: bytes
    heard_at: datetime
    t: float  # heard_at as seconds since the epoch
    station_id: str
    window: int  # the window it was heard in (by the station's clock)
    resolution: Resolution | None = None
    prepared: Prepared | None = None  # parsed and looked up once, for the states to lock and then the verdict
    # The passage's first beacon when this, its last, is the same bytes: a chip never sends one counter twice, and a
    # radio module reports each transmission once (hardware/station.md), so it was played again on the air.
    repeats: _Beacon | None = None


@dataclass
class V2Counters:
    """What the resolution did since the worker started (by verdict, and what became of the sightings)."""

    beacons: Counter[str] = field(default_factory=Counter)  # by Verdict
    sightings_resolved: int = 0
    sightings_unknown: int = 0  # no active chip sends that eid: not stored
    sightings_cloned: int = 0  # a replayed or forged beacon: an alarm, not stored
    alerts_resolved: int = 0
    alerts_dropped: int = 0  # unknown or cloned
    keys_unreadable: int = 0  # chip keys the vault could not open (logged): those chips do not resolve
    late_tables: int = 0  # tables built for beacons heard before the windows held
    malformed: int = 0  # heard bytes that are not a v2 beacon (the row pattern makes this rare)
    refreshes: int = 0
    table_moves_background: int = 0  # the table moved to the next window by its background thread
    table_moves_in_flush: int = 0  # moved by a flush that found it more than a window behind (its start, a pause)


def _beacon(heard: str, at: datetime, station_id: str) -> _Beacon:
    """A beacon as a station forwards it (its bytes in hex), heard at `at` by `station_id`."""
    t = at.timestamp()
    return _Beacon(bytes.fromhex(heard), at, t, station_id, window_of(t))


def _heard_at(b: _Beacon) -> datetime:
    return b.heard_at


def _keep_evidence(conn: psycopg.Connection, evidence: list[CloneEvidence]) -> None:
    """Keep each piece of evidence with the open cloned-chip alarm it raised (a chip on no bike raises none)."""
    conn.execute(
        "INSERT INTO alarm_evidence (alarm_id, evidence)"
        " SELECT a.alarm_id, e.evidence FROM unnest(%s::int8[], %s::jsonb[]) AS e(tag_id, evidence)"
        " JOIN alarms a ON a.kind = 'chip_cloned' AND a.tag_id = e.tag_id AND a.state <> 'cleared'",
        ([e.tag_id for e in evidence], [Jsonb(e.as_dict()) for e in evidence]),
    )


class _Lane(threading.local):
    """One writer thread's resolvers over the shared tables: each holds the states of the chips its flush locked."""

    resolver: Resolver | None = None
    late: dict[int, Resolver]

    def __init__(self) -> None:
        self.late = {}


class V2Resolution:
    """One ingest worker's resolution of v2 beacons: the table of eids (shared by its writer threads) and the chips'
    states, loaded from and kept in the database. Thread-safe: the sightings and the alerts writer each resolve with
    a resolver of their own, so a stolen chip's alert never waits for a flush of sightings to be resolved."""

    def __init__(
        self,
        vault: Vault,
        *,
        past_windows: int = DEFAULT_PAST_WINDOWS,
        clock: Callable[[], float] = time.time,
        states: ConnectionPool | None = None,
    ) -> None:
        self._vault = vault
        # Where a flush locks, judges and writes back its chips' states: in a short transaction of its own on a
        # connection of this pool, so that another flush of the same chips waits for that, not for this flush's
        # whole transaction. None: in the caller's transaction.
        self._states = states
        self._clock = clock
        self._past_windows = past_windows
        self._lock = threading.Lock()  # the tables and the keys: built, moved, changed by one thread at a time
        self._count_lock = threading.Lock()
        self._table: ResolutionTable | None = None
        # Tables of windows older than the table holds (a spool delivered after a long outage), newest used last.
        self._late: OrderedDict[int, ResolutionTable] = OrderedDict()
        self._lane = _Lane()
        self._active: set[int] = set()
        self._refreshed_at = 0.0  # by self._clock
        self._since: datetime | None = None  # the database's time of the last refresh
        self._mover: threading.Thread | None = None  # moving the table to the next window, while it runs
        self._unknown: deque[tuple[str, datetime, bytes]] = deque(maxlen=UNKNOWN_KEPT)
        self.counters = V2Counters()

    @property
    def chips(self) -> int:
        """How many v2 chips resolve now."""
        return len(self._active)

    @property
    def table_bytes(self) -> int:
        """Memory of the resolution table (0 before it is built)."""
        return self._table.nbytes if self._table else 0

    @property
    def states_held(self) -> int:
        """Chip states this thread's resolver holds between flushes (the database keeps them all): only the chips
        whose clocks run far off."""
        resolver = self._lane.resolver
        return len(resolver.chips) if resolver else 0

    def unknown(self) -> list[tuple[str, datetime, bytes]]:
        """The latest beacons no chip resolved, for inspection: (station, heard at, bytes on the air)."""
        return list(self._unknown)

    def prepare(self, pool: ConnectionPool) -> None:
        """Build the table ahead of the first v2 beacon (a worker's start: seconds for a million chips), so that no
        flush waits for it; a database that is away leaves it to the first v2 beacon."""
        try:
            with pool.connection() as conn:
                self._refresh(conn)
        except (psycopg.Error, PoolTimeout) as exc:
            log.warning("v2 resolution not built at start (%s); it is built at the first v2 beacon", exc)

    # the keys

    def _refresh(self, conn: psycopg.Connection) -> ResolutionTable:
        """The table, built at the worker's start and kept current: chips fitted or retired since, the windows
        moved to the current one."""
        with self._lock:
            now = self._clock()
            table = self._table
            if table is None:
                at = self._db_now(conn)
                keys = self._decrypted(conn.execute(chip_keys.ACTIVE_KEYS).fetchall())
                table = self._table = ResolutionTable(
                    keys, window_of(now), before=self._past_windows, after=AFTER_WINDOWS
                )
                self._active = {tag for tag, _ in keys}
                self._since, self._refreshed_at = at, now
                self.counters.refreshes += 1
                log.info("v2 resolution built for %d chips (%d bytes)", len(keys), table.nbytes)
            elif now - self._refreshed_at >= REFRESH_S and not self._moving():
                self._pick_up_changes(conn, table)  # while the table moves, at the next flush: it would wait for it
                self._refreshed_at = now
                self.counters.refreshes += 1
            current = window_of(now)
            if table.centre == current or self._moving():
                return table
            if current == table.centre + 1:
                self._mover = threading.Thread(
                    target=self._move, args=(table, current), name="v2-table-move", daemon=True
                )
                self._mover.start()
                return table
            table.advance(current)
            self.counters.table_moves_in_flush += 1
            return table

    def _moving(self) -> bool:
        return self._mover is not None and self._mover.is_alive()

    def _move(self, table: ResolutionTable, window: int) -> None:
        """The table moved to `window`, on a thread of its own: readers go on with the windows it holds."""
        started = time.perf_counter()
        try:
            table.advance(window)
        except Exception:  # the next flush tries again (and a flush more than a window on moves it itself)
            log.exception("v2 resolution could not move to window %d", window)
            return
        with self._count_lock:
            self.counters.table_moves_background += 1
        log.info("v2 resolution moved to window %d in %.2f s", window, time.perf_counter() - started)

    def _resolver(self, table: ResolutionTable) -> Resolver:
        """This thread's resolver over the current table."""
        lane = self._lane
        if lane.resolver is None or lane.resolver.table is not table:
            lane.resolver = Resolver(table)
        return lane.resolver

    def _resolvers(self, resolver: Resolver, beacons: list[_Beacon]) -> list[Resolver]:
        """For each beacon the resolver whose windows hold the window it was heard in: this thread's, or for a
        beacon delivered later than the past windows reach, one over a table of the heard window's own (built
        once, sharing the chips' states)."""
        oldest = resolver.table.windows.start + 1  # a beacon's lookup also looks in the window before its own
        return [resolver if b.window >= oldest else self._late_resolver(resolver, b.window) for b in beacons]

    def _late_resolver(self, resolver: Resolver, w: int) -> Resolver:
        table = self._late_table(resolver.table, w)
        late = self._lane.late.get(w)
        if late is None or late.table is not table:
            late = self._lane.late[w] = Resolver(table)
        late.chips = resolver.chips  # one state per chip, whichever window its beacon was heard in
        return late

    def _late_table(self, current: ResolutionTable, w: int) -> ResolutionTable:
        with self._lock:
            table = self._late.get(w)
            if table is None:
                started = time.perf_counter()
                table = self._late[w] = current.around(w)
                log.info(
                    "v2 beacons heard in window %d, older than the %d windows held: resolved with a table of their"
                    " own (%d chips, built in %.1f s)",
                    w,
                    len(current.windows),
                    len(current),
                    time.perf_counter() - started,
                )
                self.counters.late_tables += 1
                while len(self._late) > LATE_TABLES:
                    self._late.popitem(last=False)
            self._late.move_to_end(w)
            return table

    def _db_now(self, conn: psycopg.Connection) -> datetime:
        row = conn.execute("SELECT now()").fetchone()
        assert row is not None
        at: datetime = row[0]
        return at

    def _pick_up_changes(self, conn: psycopg.Connection, table: ResolutionTable) -> int:
        """Add the chips fitted and retire the chips retired since the last look; returns how many were fitted."""
        at = self._db_now(conn)
        since = datetime.fromtimestamp((self._since or at).timestamp() - _COMMIT_SLACK_S, UTC)
        rows = conn.execute(
            "SELECT tag_id, key_ciphertext FROM chip_keys WHERE greatest(written_at, retired_at) > %s", (since,)
        ).fetchall()
        fitted = self._decrypted([(t, blob) for t, blob in rows if blob is not None and int(t) not in self._active])
        retired = [int(t) for t, blob in rows if blob is None and int(t) in self._active]
        if fitted:
            table.add_chips(fitted)
            self._active.update(t for t, _ in fitted)
        for tag in retired:
            table.retire(tag)
            self._active.discard(tag)
        if fitted or retired:
            log.info("v2 resolution: %d chips fitted, %d retired since the last look", len(fitted), len(retired))
            self._late.clear()  # built without these changes: rebuilt when a late beacon needs one
        self._since = at
        return len(fitted)

    def _decrypted(self, rows: list[tuple[Any, Any]]) -> list[tuple[int, bytes]]:
        """(tag id, key) of the rows whose key the vault opens; a key that does not open (the vault's key changed,
        a row copied from another chip) is logged and counted, and its chip does not resolve: the others still do."""
        keys: list[tuple[int, bytes]] = []
        for tag, blob in rows:
            try:
                keys.append((int(tag), self._vault.decrypt_chip_key(int(tag), bytes(blob))))
            except VaultError as exc:
                self.counters.keys_unreadable += 1
                log.error("v2 chip %s does not resolve: %s", format_tag(int(tag)), exc)
        return keys

    # the states

    def _load_states(
        self, conn: psycopg.Connection, resolver: Resolver, beacons: list[_Beacon], skip: AbstractSet[int] = frozenset()
    ) -> set[int]:
        """Lock and load the states of the chips `beacons` may be from (but those in `skip`, already loaded and
        perhaps moved on in this flush); returns their tag ids."""
        tags: set[int] = set()
        # By resolver (a late beacon's is one over its own window's table), to prepare each one's beacons at once.
        groups: dict[int, tuple[Resolver, list[_Beacon]]] = {}
        for b, r in zip(beacons, self._resolvers(resolver, beacons), strict=True):
            groups.setdefault(id(r), (r, []))[1].append(b)
        for r, group in groups.values():
            prepared = r.prepare_all([b.payload for b in group], [b.heard_at for b in group], [b.window for b in group])
            for b, p in zip(group, prepared, strict=True):
                b.prepared = p
                if p is not None:
                    tags.update([c.tag_id for c in p.candidates])  # one chip for the usual beacon, whose MAC opened
        tags -= skip
        if not tags:
            return tags
        rows = conn.execute(_STATE_READ, (sorted(tags),)).fetchall()
        states: dict[int, ChipState | None] = dict.fromkeys(tags)
        for tag, counter, heard_at, station, window, payload, lo, hi, offset_at in rows:
            if counter is None:
                continue  # the row its fitting made (migration 0032): never heard yet
            states[tag] = ChipState(counter, heard_at, station, window, bytes(payload), lo, hi, offset_at)
        resolver.load(states)
        return tags

    def _save_states(self, conn: psycopg.Connection, resolver: Resolver, tags: set[int]) -> None:
        states = [(tag, resolver.chips[tag]) for tag in sorted(tags) if tag in resolver.chips]
        if not states:
            return
        # By COPY into a temporary table, then one upsert: array parameters cost a Python call per element. The
        # temporary rows live until this commits (or the flush's transaction does).
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(_FLUSH_STATES)
            cur.execute("DELETE FROM flush_beacon_states_s")  # empty unless called twice in one transaction
            with cur.copy(f"COPY flush_beacon_states_s ({_STATE_COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(_STATE_TYPES)
                for tag, s in states:
                    copy.write_row(
                        (
                            tag,
                            s.counter,
                            s.heard_at,
                            s.station_id,
                            s.window,
                            s.payload,
                            s.offset_lo_s,
                            s.offset_hi_s,
                            s.offset_at,
                        )
                    )
            cur.execute(
                f"INSERT INTO chip_beacon_states ({_STATE_COLUMNS})"
                ' SELECT tag_id, counter, to_timestamp(heard_at), station_id, "window", payload, offset_lo_s,'
                " offset_hi_s, to_timestamp(offset_at) FROM flush_beacon_states_s"
                " ORDER BY tag_id"
                " ON CONFLICT (tag_id) DO UPDATE SET counter = EXCLUDED.counter, heard_at = EXCLUDED.heard_at,"
                ' station_id = EXCLUDED.station_id, "window" = EXCLUDED."window", payload = EXCLUDED.payload,'
                " offset_lo_s = EXCLUDED.offset_lo_s, offset_hi_s = EXCLUDED.offset_hi_s,"
                " offset_at = EXCLUDED.offset_at"
                " WHERE chip_beacon_states.counter IS NULL OR EXCLUDED.counter >= chip_beacon_states.counter"
            )

    def _judge(self, conn: psycopg.Connection, beacons: list[_Beacon]) -> list[Evidence]:
        """Resolve `beacons` in the order they were heard, with the chips' shared states locked; raise the
        cloned-chip alarms their evidence proves (in `conn`'s transaction).

        With a pool for the states, they are locked, judged and written back in a transaction of their own that
        commits before the flush's does, so two flushes of the same chips (two workers', or an alert's and the
        sightings') queue for the judging only, not for each other's COPY and commit; and no flush's transaction
        holds a state's lock while its states wait for another's. Should the flush then fail,
        its beacons come again (the broker redelivers what was not acknowledged) and are judged against states
        that already hold them: a beacon heard before the one accepted is consistent and the accepted one a
        duplicate of itself (Resolver), so the same rows are stored and no alarm is raised. Its commit need not
        wait for the disk: the flush's commit (an alerts flush's wait for the disk after it), later in the same
        log, does."""
        if self._states is None:
            return self._raise(conn, self._judge_states(conn, beacons))
        with self._states.connection() as states, states.transaction():
            states.execute("SET LOCAL synchronous_commit = off")
            evidence = self._judge_states(states, beacons)
        return self._raise(conn, evidence)

    def _raise(self, conn: psycopg.Connection, evidence: list[CloneEvidence]) -> list[Evidence]:
        if evidence:
            with conn.cursor() as cur:
                store.raise_evidence(cur, [e.as_alarm() for e in evidence])
            _keep_evidence(conn, evidence)
        return [e.as_alarm() for e in evidence]

    def _judge_states(self, conn: psycopg.Connection, beacons: list[_Beacon]) -> list[CloneEvidence]:
        """Resolve `beacons` in the order they were heard, with the chips' states locked in `conn`'s transaction and
        written back; returns the clone evidence found. Beacons no chip sends make the worker look for chips fitted
        since (an index probe), and resolve again if there are: a chip's first passage, a minute after its fitting,
        is not lost."""
        resolver = self._resolver(self._refresh(conn))
        tags = self._load_states(conn, resolver, beacons)
        self._resolve(resolver, beacons)
        unknown = [b for b in beacons if b.resolution is not None and b.resolution.verdict is Verdict.UNKNOWN]
        if unknown and self._look_again(conn, resolver.table):
            for b in unknown:
                b.resolution = b.prepared = None  # looked up before the chips just fitted were in the table
            tags |= self._load_states(conn, resolver, unknown, skip=tags)
            self._resolve(resolver, unknown)
        for b in beacons:
            if b.repeats is not None:
                self._judge_repeat(b)
        evidence: list[CloneEvidence] = []
        with self._count_lock:
            for b in beacons:
                r = b.resolution
                if r is None:
                    self.counters.malformed += 1
                    continue
                self.counters.beacons[r.verdict] += 1
                if r.verdict is Verdict.UNKNOWN:
                    self._unknown.append((b.station_id, b.heard_at, b.payload))
                if r.evidence is not None:
                    log.warning("cloned v2 chip %s: %s", format_tag(r.evidence.tag_id), r.evidence.as_dict())
                    evidence.append(r.evidence)
        self._save_states(conn, resolver, tags)
        resolver.forget(tags)  # the database keeps them: this thread's memory holds one flush's chips, not a county's
        return evidence

    @staticmethod
    def _judge_repeat(b: _Beacon) -> None:
        """A passage's last beacon that repeats its first is a replay, even where either alone passes (the same
        transmission heard at a second station within seconds is a duplicate, not an alarm)."""
        r, first = b.resolution, b.repeats
        if r is None or first is None or r.tag_id is None or r.evidence is not None or r.window is None:
            return
        offending = Hearing(b.station_id, b.heard_at, r.counter, r.window, b.payload)
        earlier = Hearing(first.station_id, first.heard_at, r.counter, r.window, first.payload)
        evidence = CloneEvidence(r.tag_id, Verdict.REPLAY, offending, earlier)
        b.resolution = r._replace(verdict=Verdict.REPLAY, evidence=evidence)

    def _look_again(self, conn: psycopg.Connection, table: ResolutionTable) -> int:
        with self._lock:
            return self._pick_up_changes(conn, table)

    def _resolve(self, resolver: Resolver, beacons: list[_Beacon]) -> None:
        beacons = sorted(beacons, key=_heard_at)
        for b, r in zip(beacons, self._resolvers(resolver, beacons), strict=True):
            try:
                b.resolution = r.resolve(b.payload, b.heard_at, b.station_id, b.prepared, b.t)
            except BeaconPayloadError:
                b.resolution = None

    # what the ingest calls

    def resolve_sightings(self, conn: psycopg.Connection, batches: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
        """Each batch's sightings with its v2 ones resolved: given their tag id, joined where a window change
        split a passage, and left out when unknown or cloned (counted; a clone's alarm raised). A batch without v2
        sightings comes back as it was (the same list)."""
        wanted = [(b, [s for s in b["sightings"] if "heard" in s]) for b in batches]
        if not any(v2 for _, v2 in wanted):
            return [b["sightings"] for b in batches]
        passages: list[tuple[dict[str, Any], list[_Beacon]]] = []
        for b, v2 in wanted:
            for s in v2:
                heard = s["heard"]
                times = (s["first_seen_at"], s["last_seen_at"])
                beacons = [_beacon(h, at, b["station_id"]) for h, at in zip(heard, times, strict=False)]
                if len(beacons) == 2 and beacons[0].payload == beacons[1].payload:
                    beacons[1].repeats = beacons[0]
                passages.append((s, beacons))
        self._judge(conn, [b for _, beacons in passages for b in beacons])
        rows = {id(s): self._row(s, beacons) for s, beacons in passages}
        out: list[list[dict[str, Any]]] = []
        for b, v2 in wanted:
            if not v2:
                out.append(b["sightings"])
                continue
            plain = [s for s in b["sightings"] if "heard" not in s]
            out.append(plain + join_window_splits(r for s in v2 if (r := rows[id(s)]) is not None))
        return out

    def _row(self, sighting: dict[str, Any], beacons: list[_Beacon]) -> dict[str, Any] | None:
        """The sighting as the writer stores it (with its station, its chip's tag id and the window its beacons
        resolved in), or None when it is not the chip's passage (counted)."""
        tag_id: int | None = None
        passes = True  # every beacon resolved, ok or a duplicate, all to one chip
        for b in beacons:
            r = b.resolution
            if r is None:
                passes = False
                continue
            if r.evidence is not None:
                self.counters.sightings_cloned += 1
                return None
            if r.verdict is not Verdict.OK and r.verdict is not Verdict.DUPLICATE:
                passes = False
            elif tag_id is None:
                tag_id = r.tag_id
            elif r.tag_id != tag_id:
                passes = False
        last = beacons[-1].resolution
        if not passes or tag_id is None or last is None:
            self.counters.sightings_unknown += 1
            return None
        self.counters.sightings_resolved += 1
        row = dict(sighting)
        del row["heard"]
        row["tag_id"] = format_tag(tag_id)
        row["window"] = last.window
        row["station_id"] = beacons[0].station_id
        return row

    def resolve_alerts(self, conn: psycopg.Connection, alerts: Iterable[Alert]) -> list[Alert]:
        """The alerts with the v2 ones given their chip's tag id; an alert whose beacon resolves to no chip, or is
        a replay or forgery (its alarm raised), is left out and counted. v1 alerts pass as they are."""
        alerts = list(alerts)
        v2 = [(a, _beacon(a.heard, a.seen_at, a.station_id)) for a in alerts if a.heard is not None]
        if not v2:
            return alerts
        self._judge(conn, [b for _, b in v2])
        resolved: dict[int, Alert] = {}
        for a, b in v2:
            r = b.resolution
            if r is None or r.tag_id is None or r.verdict not in (Verdict.OK, Verdict.DUPLICATE):
                self.counters.alerts_dropped += 1
                continue
            self.counters.alerts_resolved += 1
            resolved[id(a)] = a.model_copy(update={"tag_id": format_tag(r.tag_id)})
        return [resolved[id(a)] if a.heard is not None else a for a in alerts if a.heard is None or id(a) in resolved]
