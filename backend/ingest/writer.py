"""Writes what stations send into PostgreSQL: batches by COPY, once per (station_id, batch_seq)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from backend import alarms
from protocol.messages import Alert, StationStatus, parse_tag

_SIGHTING_COLUMNS = (
    "first_seen_at, last_seen_at, station_id, tag_id, beacons, peak_rssi_dbm, antenna, flags, batch_seq"
)
# TagFlags in a sighting's flags: battery low, case opened, the tag felt the bike move.
LOW_BATTERY_FLAG = 1
TAMPER_FLAG = 2
MOTION_FLAG = 4
# A chip seen at two stations further apart than this plus what a bike rides in between is a clone; the slack
# covers the reading range of both stations.
CLONE_SLACK_M = 200.0
_SIGHTING_TYPES = [
    "timestamptz", "timestamptz", "text", "int8", "int4", "int2", "int2", "int2", "int8",
]


@dataclass
class WriteResult:
    """What one write did: new and repeated batches, sightings stored, alarms raised or updated."""

    batches_new: int = 0
    batches_repeated: int = 0
    sightings: int = 0
    alerts_new: int = 0
    alarm_ids: list[int] = field(default_factory=list)
    # The new passages, for a cloned-chip check made later (write_batches with check_clones=False).
    passages: alarms.Passages = field(default_factory=alarms.Passages.empty)

    def add(self, other: WriteResult) -> None:
        """Fold another result into this one."""
        self.batches_new += other.batches_new
        self.batches_repeated += other.batches_repeated
        self.sightings += other.sightings
        self.alerts_new += other.alerts_new
        self.alarm_ids.extend(other.alarm_ids)
        self.passages.extend(other.passages)


def write_batches(
    conn: psycopg.Connection, batches: Iterable[dict[str, Any]], max_speed_kmh: float = 60.0,
    check_clones: bool = True,
) -> WriteResult:
    """Store sighting batches (as parse_batch_rows gives them) in the current transaction.

    A batch seen before changes nothing. Alarms: stolen chip seen, armed bike moving, tamper, low battery,
    and chip cloned (a chip at two stations faster than max_speed_kmh) - one query per kind per flush. With
    check_clones=False the new passages are handed back in the result instead, for a CloneCheck to judge later.

    The batch ids go in first with ON CONFLICT DO NOTHING; only the sightings of batches that
    were really new are then COPYed, so several workers and MQTT redeliveries stay exact.
    """
    unique: dict[tuple[str, int], dict[str, Any]] = {}
    received = 0
    for b in batches:
        unique.setdefault((b["station_id"], b["batch_seq"]), b)
        received += 1
    result = WriteResult()
    if not unique:
        return result
    with conn.cursor() as cur:
        rows = cur.execute(
            "INSERT INTO ingested_batches (station_id, batch_seq, sent_at, sightings)"
            " SELECT * FROM unnest(%s::text[], %s::int8[], %s::timestamptz[], %s::int4[])"
            " ON CONFLICT DO NOTHING RETURNING station_id, batch_seq",
            (
                [k[0] for k in unique],
                [k[1] for k in unique],
                [b["sent_at"] for b in unique.values()],
                [len(b["sightings"]) for b in unique.values()],
            ),
        ).fetchall()
        new = [unique[(r[0], r[1])] for r in rows]
        result.batches_new = len(new)
        result.batches_repeated = received - len(new)
        # One query per flush: chips of stolen or armed bikes. Per row only one dict lookup, as before.
        watched = alarms.watched_tags(cur)
        hits: list[alarms.Evidence] = []
        moving: list[alarms.Evidence] = []
        tampered: list[alarms.Evidence] = []
        low_battery: list[alarms.Evidence] = []
        # This flush's passages, column by column (no object per row): the cloned-chip check's input.
        tags: list[int] = []
        stations: list[str] = []
        firsts: list[datetime] = []
        lasts: list[datetime] = []
        with cur.copy(f"COPY sightings ({_SIGHTING_COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(_SIGHTING_TYPES)
            for b in new:
                station, seq = b["station_id"], b["batch_seq"]
                for s in b["sightings"]:
                    tag = int(s["tag_id"], 16)
                    copy.write_row((
                        s["first_seen_at"], s["last_seen_at"], station, tag, s["beacons"],
                        s["peak_rssi_dbm"], s["antenna"], s["flags"], seq,
                    ))
                    tags.append(tag)
                    stations.append(station)
                    firsts.append(s["first_seen_at"])
                    lasts.append(s["last_seen_at"])
                    if s["flags"] & TAMPER_FLAG:
                        tampered.append(alarms.Evidence(tag, station, s["first_seen_at"], s["last_seen_at"]))
                    if s["flags"] & LOW_BATTERY_FLAG:
                        low_battery.append(alarms.Evidence(tag, station, s["first_seen_at"], s["last_seen_at"]))
                    watch = watched.get(tag)
                    if watch is not None:
                        if watch.stolen_at is not None:
                            if s["last_seen_at"] >= watch.stolen_at:
                                hits.append(alarms.Evidence(tag, station, s["first_seen_at"], s["last_seen_at"]))
                        elif watch.armed and s["flags"] & MOTION_FLAG:
                            moving.append(alarms.Evidence(tag, station, s["first_seen_at"], s["last_seen_at"]))
                result.sightings += len(b["sightings"])
        # Only chips bound to a bike raise alarms: the queries below filter the evidence by the chips table.
        for kind, evidence in (("stolen_chip_seen", hits), ("armed_bike_moving", moving), ("tamper", tampered),
                               ("low_battery", low_battery)):
            result.alarm_ids += alarms.raise_alarms(cur, kind, alarms.SEVERITY[kind], evidence)
        passages = alarms.Passages(tags, stations, firsts, lasts)
        if check_clones:
            result.alarm_ids += alarms.raise_chips_cloned(cur, passages, max_speed_kmh, CLONE_SLACK_M)
        else:
            result.passages = passages
    return result


def write_alerts(conn: psycopg.Connection, alerts: Iterable[Alert]) -> WriteResult:
    """Store station alerts (idempotent); a stolen chip's hot-list hit and a tamper alert become alarms."""
    result = WriteResult()
    items = list(alerts)
    if not items:
        return result
    with conn.cursor() as cur:
        rows = cur.execute(
            "INSERT INTO station_alerts (station_id, kind, tag_id, seen_at, rssi_dbm, antenna)"
            " SELECT * FROM unnest(%s::text[], %s::text[], %s::int8[], %s::timestamptz[], %s::int2[], %s::int2[])"
            " ON CONFLICT DO NOTHING RETURNING station_id, kind, tag_id, seen_at",
            (
                [a.station_id for a in items], [a.kind for a in items], [parse_tag(a.tag_id) for a in items],
                [a.seen_at for a in items], [a.rssi_dbm for a in items], [a.antenna for a in items],
            ),
        ).fetchall()
        result.alerts_new = len(rows)
        stolen = alarms.stolen_tags(cur)
        hits = [
            alarms.Evidence(tag, station, seen_at, seen_at)
            for station, kind, tag, seen_at in rows
            if kind == "hotlist_hit" and tag in stolen and seen_at >= stolen[tag]
        ]
        tampered = [alarms.Evidence(tag, station, seen_at, seen_at)
                    for station, kind, tag, seen_at in rows if kind == "tamper"]
        result.alarm_ids = alarms.raise_alarms(cur, "stolen_chip_seen", alarms.SEVERITY["stolen_chip_seen"], hits)
        result.alarm_ids += alarms.raise_alarms(cur, "tamper", alarms.SEVERITY["tamper"], tampered)
    return result


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


def write_rejects(conn: psycopg.Connection, rejects: Iterable[tuple[str, str, bytes]]) -> int:
    """Keep messages that failed validation: (topic, reason, raw bytes)."""
    items = list(rejects)
    if items:
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO rejected_messages (topic, reason, raw) VALUES (%s, %s, %s)", items)
    return len(items)


class CloneCheck:
    """The cloned-chip check of one ingest worker, made every `interval_s` or `max_rows` passages rather than on
    every flush: its cost is mostly per query, and a clone's alarm may take a second where a stolen chip's may not.

    Passages are added after their flush committed; a check that fails on a lost database keeps them for the
    next try. If the worker stops between the two, those passages are not judged (the clone's next ones are).
    """

    def __init__(self, max_speed_kmh: float, interval_s: float = 1.0, max_rows: int = 20_000) -> None:
        self.max_speed_kmh = max_speed_kmh
        self.interval_s = interval_s
        self.max_rows = max_rows
        self.pending = alarms.Passages.empty()
        self._last = time.monotonic()

    def add(self, passages: alarms.Passages) -> None:
        """Passages of a committed flush."""
        self.pending.extend(passages)

    def due(self) -> bool:
        """Whether the pending passages should be judged now."""
        return bool(self.pending.tag_ids) and (
            len(self.pending.tag_ids) >= self.max_rows or time.monotonic() - self._last >= self.interval_s)

    def run(self, conn: psycopg.Connection) -> list[int]:
        """Judge the pending passages in a transaction of their own; the ids of the alarms raised or updated."""
        with conn.transaction(), conn.cursor() as cur:
            ids = alarms.raise_chips_cloned(cur, self.pending, self.max_speed_kmh, CLONE_SLACK_M)
        self.pending = alarms.Passages.empty()
        self._last = time.monotonic()
        return ids
