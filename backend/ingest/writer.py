"""Writes what stations send into PostgreSQL: batches by COPY, once per (station_id, batch_seq).

The writer only writes; what it wrote that was new comes back as the passages and alerts the alarm engine
judges in the same transaction (backend.alarms.engine).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from backend.alarms.evidence import Committed, Passages, StationAlert
from backend.ingest import rejects
from protocol import topics
from protocol.messages import Alert, StationStatus, parse_tag

_SIGHTING_COLUMNS = "first_seen_at, last_seen_at, station_id, tag_id, beacons, peak_rssi_dbm, antenna, flags, batch_seq"
_SIGHTING_TYPES = [
    "timestamptz",
    "timestamptz",
    "text",
    "int8",
    "int4",
    "int2",
    "int2",
    "int2",
    "int8",
]
# A mobile reader's position at the sighting (migration 0026); fixed stations' rows leave them null.
_POSITION_COLUMNS = "reader_lat, reader_lon, reader_fix_at"
_POSITION_TYPES = ["float8", "float8", "timestamptz"]


@dataclass
class WriteResult:
    """What one write did: new and repeated batches, sightings and alerts stored, and what was new in them."""

    batches_new: int = 0
    batches_repeated: int = 0
    sightings: int = 0
    alerts_new: int = 0
    # v2 sightings written without a resolution to give them their tag ids: not stored.
    v2_unresolved: int = 0
    # Batches that reuse a stored (station_id, batch_seq) with other content: (topic, reason, raw bytes), to keep.
    conflicts: list[tuple[str, str, bytes]] = field(default_factory=list)
    # The new passages and alerts, for the alarm engine once the transaction committed.
    committed: Committed = field(default_factory=Committed)

    def add(self, other: WriteResult) -> None:
        """Fold another result into this one."""
        self.batches_new += other.batches_new
        self.batches_repeated += other.batches_repeated
        self.sightings += other.sightings
        self.alerts_new += other.alerts_new
        self.v2_unresolved += other.v2_unresolved
        self.conflicts.extend(other.conflicts)
        self.committed.extend(other.committed)


# Given the new batches, each one's sightings with its v2 chips' resolved to tag ids (backend.ingest.v2).
ResolveV2 = Callable[[psycopg.Connection, list[dict[str, Any]]], list[list[dict[str, Any]]]]


def write_batches(
    conn: psycopg.Connection, batches: Iterable[dict[str, Any]], resolve_v2: ResolveV2 | None = None
) -> WriteResult:
    """Store sighting batches (as parse_batch_rows gives them) in the current transaction.

    A batch seen before changes nothing. The batch ids go in first with ON CONFLICT DO NOTHING; only the
    sightings of batches that were really new are then COPYed (and handed back as passages), so several workers
    and MQTT redeliveries stay exact. A batch may carry its raw bytes as "payload" and their hash as
    "payload_sha256" (the ingest's validate() adds them): the same (station_id, batch_seq) with other content is
    then a conflict, handed back with its raw bytes to be kept, while the stored batch stays as it is.

    A v2 chip's sighting names no tag id: `resolve_v2` gives the new batches' sightings resolved, before any is
    written; without it, v2 sightings are not stored (counted in `v2_unresolved`).
    """
    received: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for b in batches:
        received.setdefault((b["station_id"], b["batch_seq"]), []).append(b)
    result = WriteResult()
    if not received:
        return result
    # In key order: two workers writing overlapping batches (a redelivery after a broker restart) lock their rows in
    # the same order, so one waits for the other instead of deadlocking.
    unique = {key: received[key][0] for key in sorted(received)}
    with conn.cursor() as cur:
        rows = cur.execute(
            "INSERT INTO ingested_batches (station_id, batch_seq, sent_at, sightings, payload_sha256)"
            " SELECT * FROM unnest(%s::text[], %s::int8[], %s::timestamptz[], %s::int4[], %s::bytea[])"
            " ON CONFLICT DO NOTHING RETURNING station_id, batch_seq",
            (
                [k[0] for k in unique],
                [k[1] for k in unique],
                [b["sent_at"] for b in unique.values()],
                [len(b["sightings"]) for b in unique.values()],
                [b.get("payload_sha256") for b in unique.values()],
            ),
        ).fetchall()
        new = [unique[(r[0], r[1])] for r in rows]
        result.batches_new = len(new)
        new = _resolved(conn, new, resolve_v2, result)
        _sort_repeats(cur, received, {(r[0], r[1]) for r in rows}, result)
        # The new passages, column by column (no object per row): what the alarm engine judges. Each column is built
        # by one comprehension per batch, cheaper than five appends per row.
        tags: list[int] = []
        stations: list[str] = []
        firsts: list[datetime] = []
        lasts: list[datetime] = []
        flags: list[int] = []
        # A mobile reader's batches (any sighting with a position) go by a COPY of their own after the others, so a
        # fixed station's rows cost no more than before issue 16.
        mobile: list[dict[str, Any]] = []
        with cur.copy(f"COPY sightings ({_SIGHTING_COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(_SIGHTING_TYPES)
            write_row = copy.write_row
            for b in new:
                station, seq, sightings = b["station_id"], b["batch_seq"], b["sightings"]
                if any("position" in s for s in sightings):
                    mobile.append(b)
                    continue
                batch_tags = [int(s["tag_id"], 16) for s in sightings]
                batch_firsts = [s["first_seen_at"] for s in sightings]
                batch_lasts = [s["last_seen_at"] for s in sightings]
                batch_flags = [s["flags"] for s in sightings]
                for s, first, last, tag, flag in zip(
                    sightings, batch_firsts, batch_lasts, batch_tags, batch_flags, strict=True
                ):
                    write_row((first, last, station, tag, s["beacons"], s["peak_rssi_dbm"], s["antenna"], flag, seq))
                tags += batch_tags
                stations += [station] * len(sightings)
                firsts += batch_firsts
                lasts += batch_lasts
                flags += batch_flags
                result.sightings += len(sightings)
        passages = Passages(tags, stations, firsts, lasts, flags)
        if mobile:
            result.sightings += _write_mobile(cur, mobile, passages)
        result.committed.passages.extend(passages)
    return result


def _resolved(
    conn: psycopg.Connection, batches: list[dict[str, Any]], resolve_v2: ResolveV2 | None, result: WriteResult
) -> list[dict[str, Any]]:
    """The batches with their sightings as the COPY takes them: every one with a tag id."""
    if resolve_v2 is not None:
        sightings = resolve_v2(conn, batches)
    else:
        sightings = [[s for s in b["sightings"] if "tag_id" in s] for b in batches]
        result.v2_unresolved += sum(len(b["sightings"]) - len(s) for b, s in zip(batches, sightings, strict=True))
    return [b if s is b["sightings"] else {**b, "sightings": s} for b, s in zip(batches, sightings, strict=True)]


def _write_mobile(cur: psycopg.Cursor[Any], batches: list[dict[str, Any]], passages: Passages) -> int:
    """COPY mobile readers' sightings with the reader's position at each; add them to `passages` (with positions)
    and move each mobile station's last known position on to its newest fix. Returns the sightings written."""
    written = 0
    latest: dict[str, dict[str, Any]] = {}
    with cur.copy(f"COPY sightings ({_SIGHTING_COLUMNS}, {_POSITION_COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(_SIGHTING_TYPES + _POSITION_TYPES)
        for b in batches:
            station, seq = b["station_id"], b["batch_seq"]
            for s in b["sightings"]:
                tag, at = int(s["tag_id"], 16), s.get("position")
                lat, lon, fix_at = (at["lat"], at["lon"], at["fix_at"]) if at else (None, None, None)
                copy.write_row(
                    (s["first_seen_at"], s["last_seen_at"], station, tag, s["beacons"], s["peak_rssi_dbm"])
                    + (s["antenna"], s["flags"], seq, lat, lon, fix_at)
                )
                passages.append(tag, station, s["first_seen_at"], s["last_seen_at"], s["flags"], at)
                if at and (station not in latest or at["fix_at"] > latest[station]["fix_at"]):
                    latest[station] = at
                written += 1
    _move_stations(cur, latest)
    return written


def _move_stations(cur: psycopg.Cursor[Any], latest: dict[str, dict[str, Any]]) -> None:
    """A mobile station's lat/lon are its last known position: moved on to a newer fix, never back to an older one
    (batches of a station may arrive out of order after an outage). A fixed station is never moved."""
    if not latest:
        return
    ids = sorted(latest)  # in key order, like the batches: concurrent workers lock the rows in one order
    cur.execute(
        "UPDATE stations s SET lat = p.lat, lon = p.lon, position_at = p.fix_at"
        " FROM unnest(%s::text[], %s::float8[], %s::float8[], %s::timestamptz[]) AS p(station_id, lat, lon, fix_at)"
        " WHERE s.station_id = p.station_id AND s.mobile AND (s.position_at IS NULL OR s.position_at < p.fix_at)",
        (
            ids,
            [latest[i]["lat"] for i in ids],
            [latest[i]["lon"] for i in ids],
            [latest[i]["fix_at"] for i in ids],
        ),
    )


def _sort_repeats(
    cur: psycopg.Cursor[Any],
    received: dict[tuple[str, int], list[dict[str, Any]]],
    new: set[tuple[str, int]],
    result: WriteResult,
) -> None:
    """Tell the batches that were not new apart: a redelivery (same content as the stored batch, or as the new one
    stored from this same write) or a conflict (other content)."""
    reference = {key: received[key][0].get("payload_sha256") for key in new}
    seen_before = [key for key in received if key not in new]
    if seen_before:
        reference.update(
            ((station, seq), bytes(digest) if digest is not None else None)
            for station, seq, digest in cur.execute(
                "SELECT station_id, batch_seq, payload_sha256 FROM ingested_batches"
                " WHERE (station_id, batch_seq) IN (SELECT * FROM unnest(%s::text[], %s::int8[]))",
                ([k[0] for k in seen_before], [k[1] for k in seen_before]),
            )
        )
    for key, same in received.items():
        stored = reference.get(key)
        for b in same[1:] if key in new else same:
            digest = b.get("payload_sha256")
            # Unknown on either side (a batch stored before hashes were kept, or written without its bytes): a
            # redelivery, as before.
            if stored is None or digest is None or digest == stored:
                result.batches_repeated += 1
            else:
                reason = rejects.conflict_reason(key[0], key[1], stored, digest)
                result.conflicts.append((topics.station_topic(key[0], "sightings"), reason, b.get("payload", b"")))


def write_alerts(conn: psycopg.Connection, alerts: Iterable[Alert]) -> WriteResult:
    """Store station alerts (idempotent); the new ones are handed back for the alarm engine. A v2 chip's alert is
    stored once resolved to its tag id (backend.ingest.v2); one still without a tag id is not this function's."""
    result = WriteResult()
    # In key order, like the batches: concurrent workers lock the same rows in one order.
    items = sorted(
        (a for a in alerts if a.tag_id is not None), key=lambda a: (a.station_id, a.kind, a.tag_id or "", a.seen_at)
    )
    if not items:
        return result
    with conn.cursor() as cur:
        rows = cur.execute(
            "INSERT INTO station_alerts"
            " (station_id, kind, tag_id, seen_at, rssi_dbm, antenna, reader_lat, reader_lon, reader_fix_at)"
            " SELECT * FROM unnest(%s::text[], %s::text[], %s::int8[], %s::timestamptz[], %s::int2[], %s::int2[],"
            " %s::float8[], %s::float8[], %s::timestamptz[])"
            " ON CONFLICT DO NOTHING RETURNING station_id, kind, tag_id, seen_at, reader_lat, reader_lon",
            (
                [a.station_id for a in items],
                [a.kind for a in items],
                [parse_tag(a.tag_id or "") for a in items],
                [a.seen_at for a in items],
                [a.rssi_dbm for a in items],
                [a.antenna for a in items],
                [a.position.lat if a.position else None for a in items],
                [a.position.lon if a.position else None for a in items],
                [a.position.fix_at if a.position else None for a in items],
            ),
        ).fetchall()
        result.alerts_new = len(rows)
        result.committed.alerts = [
            StationAlert(station, kind, int(tag), seen_at, lat, lon) for station, kind, tag, seen_at, lat, lon in rows
        ]
        _move_stations(cur, _latest_fixes(items))
    return result


def _latest_fixes(alerts: list[Alert]) -> dict[str, dict[str, Any]]:
    """Each station's newest fix among these alerts (a mobile reader's hot-list hit moves it on the map at once)."""
    latest: dict[str, dict[str, Any]] = {}
    for a in alerts:
        at = a.position
        if at is not None and (a.station_id not in latest or at.fix_at > latest[a.station_id]["fix_at"]):
            latest[a.station_id] = {"lat": at.lat, "lon": at.lon, "fix_at": at.fix_at}
    return latest


def write_status(conn: psycopg.Connection, status: StationStatus, received_at: datetime) -> None:
    """Keep the latest status a station published (an older one never overwrites a newer one)."""
    conn.execute(
        "INSERT INTO station_status (station_id, state, reported_at, received_at, payload)"
        " VALUES (%s, %s, %s, %s, %s)"
        " ON CONFLICT (station_id) DO UPDATE SET state = excluded.state, reported_at = excluded.reported_at,"
        " received_at = excluded.received_at, payload = excluded.payload"
        " WHERE station_status.reported_at IS NULL OR excluded.reported_at IS NULL"
        "    OR excluded.reported_at >= station_status.reported_at",
        (status.station_id, status.state, status.sent_at, received_at, Jsonb(status.model_dump(mode="json"))),
    )


def write_rejects(conn: psycopg.Connection, rejected: Iterable[tuple[str, str, bytes]], max_raw_bytes: int) -> int:
    """Keep messages that failed validation: (topic, reason, raw bytes), each with its kind (backend.ingest.rejects).

    The raw bytes are kept up to max_raw_bytes, with their full length: whoever can publish chooses the size, and
    the start of a message is what tells what it was.
    """
    items = [
        (topic, rejects.kind_of(reason), reason[: rejects.MAX_REASON_CHARS], raw[:max_raw_bytes], len(raw))
        for topic, reason, raw in rejected
    ]
    if items:
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO rejected_messages (topic, kind, reason, raw, raw_bytes) VALUES (%s, %s, %s, %s, %s)",
                items,
            )
    return len(items)
