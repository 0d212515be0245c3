"""Chip cloned: a registered chip seen at a station it could not have reached since its previous passage.

Judged against each chip's last known position (chip_positions), which this detector also moves forward: one
COPY of a row per chip and one query per round, one primary-key lookup per chip whatever the size of `sightings`.
A chip's own passages within the round are judged against each other in memory (reading the places of their
stations when a chip passed two). It needs the database, so the ingest runs it off the hot path (about once a
second per worker).

With several ingest workers, two passages of one chip written at the same instant by two workers may not be
compared with each other; the clone's next passage is.
"""

from __future__ import annotations

import itertools
import math
from datetime import datetime
from typing import Any

import numpy as np
import psycopg

from backend.alarms.detector import Detector
from backend.alarms.evidence import Committed, Evidence, Passages
from backend.alarms.kinds import AlarmKind
from backend.alarms.watch_list import WatchList

KIND = AlarmKind.CHIP_CLONED
# A chip seen at two stations further apart than this plus what a bike rides in between is a clone; the slack
# covers the reading range of both stations.
SLACK_M = 200.0
_EARTH_RADIUS_M = 6_371_000
# A row of the round's chips (flush_chips): the chip, its earliest passage of the round (station, first and last seen)
# and its latest (the same, or three None, when it passed once).
_ChipRow = tuple[int, str, datetime, datetime, str | None, datetime | None, datetime | None]
# The round's chips, copied in, one row each (COPY is ten times cheaper than array parameters).
_ROUND_CHIPS = (
    "CREATE TEMP TABLE IF NOT EXISTS flush_chips (tag_id int8 NOT NULL, station_id text NOT NULL,"
    " first_seen_at timestamptz NOT NULL, last_seen_at timestamptz NOT NULL, latest_station_id text,"
    " latest_first_seen_at timestamptz, latest_last_seen_at timestamptz) ON COMMIT DELETE ROWS"
)
_ROUND_CHIP_TYPES = ["int8", "text", "timestamptz", "timestamptz", "text", "timestamptz", "timestamptz"]


def _distance_m(a_lat: str, a_lon: str, b_lat: str, b_lon: str) -> str:
    """SQL for the great-circle distance between two points (degrees), as _distance computes it."""
    return (
        f"2 * {_EARTH_RADIUS_M} * asin(sqrt(power(sin(radians({a_lat} - {b_lat}) / 2), 2)"
        f" + cos(radians({b_lat})) * cos(radians({a_lat})) * power(sin(radians({a_lon} - {b_lon}) / 2), 2)))"
    )


# The round's chips that are judged (judged): each with its position from before this round, looked up by key; a
# chip with a position was registered when it got it, and only a chip without one is looked up in the registry (a
# scalar subquery, row by row, so the planner never answers it by hashing the whole registry: 300-500 ms a round for
# a million chips, docs/benchmarks.md, "the cloned-chip round hashed the whole registry"). A chip retired after it got
# a position keeps it and moves it, and raises nothing: the alarm store counts only chips bound to a bike. Its latest
# passage of the round becomes its position (moved), unless the stored one is later (a station's late batches). What
# the evidence reads of chip_positions is from before the move, as in any statement with a WITH ... INSERT. Evidence:
# the chip's earliest passage of the round, at a station further from its stored position than a bike could ride in
# the time between them. (Its passages within the round were judged against each other before: _pairs_too_fast.)
_EVIDENCE = f"""
    WITH judged AS MATERIALIZED (
        SELECT f.*, cp.station_id AS prev_station_id, cp.first_seen_at AS prev_first_seen_at,
               cp.last_seen_at AS prev_last_seen_at
        FROM flush_chips f
        LEFT JOIN chip_positions cp ON cp.tag_id = f.tag_id
        WHERE cp.tag_id IS NOT NULL OR (SELECT c.bike_id IS NOT NULL FROM chips c WHERE c.tag_id = f.tag_id)
    ), moved AS (
        INSERT INTO chip_positions AS cp (tag_id, station_id, first_seen_at, last_seen_at)
        SELECT j.tag_id, coalesce(j.latest_station_id, j.station_id),
               coalesce(j.latest_first_seen_at, j.first_seen_at), coalesce(j.latest_last_seen_at, j.last_seen_at)
        FROM judged j
        ORDER BY j.tag_id
        ON CONFLICT (tag_id) DO UPDATE SET station_id = excluded.station_id,
            first_seen_at = excluded.first_seen_at, last_seen_at = excluded.last_seen_at
        WHERE excluded.first_seen_at >= cp.first_seen_at
    )
    SELECT p.tag_id, p.station_id, least(p.prev_last_seen_at, p.first_seen_at) AS first_seen_at,
           greatest(p.prev_last_seen_at, p.first_seen_at) AS last_seen_at
    FROM judged p
    JOIN stations a ON a.station_id = p.station_id
    JOIN stations b ON b.station_id = p.prev_station_id
    WHERE p.prev_station_id <> p.station_id
      AND (p.first_seen_at, p.last_seen_at) >= (p.prev_first_seen_at, p.prev_last_seen_at)
      -- A mobile reader's registry position is only where it last was, not where it heard this chip: its passages
      -- are not judged here (a patrol car driving on would make every chip it saw look cloned).
      AND NOT a.mobile AND NOT b.mobile
      AND {_distance_m("a.lat", "a.lon", "b.lat", "b.lon")}
          > %(slack_m)s + %(max_speed_mps)s
              * greatest(extract(epoch FROM p.first_seen_at - p.prev_last_seen_at)::float8, 0)
"""


def _distance(a: tuple[float, float], b: tuple[float, float]) -> float:
    """The great-circle distance in metres between two (lat, lon) points in degrees, as the round's query has it."""
    (a_lat, a_lon), (b_lat, b_lon) = a, b
    return (
        2
        * _EARTH_RADIUS_M
        * math.asin(
            math.sqrt(
                math.sin(math.radians(a_lat - b_lat) / 2) ** 2
                + math.cos(math.radians(b_lat))
                * math.cos(math.radians(a_lat))
                * math.sin(math.radians(a_lon - b_lon) / 2) ** 2
            )
        )
    )


def _round_chips(p: Passages) -> tuple[list[_ChipRow], list[tuple[int, int, int]]]:
    """One row per chip of the round (its earliest passage, and its latest when it had more than one), and each
    chip's consecutive passages in time order at two stations, as (chip, the earlier passage, the later one): the
    pairs to judge against each other. In real traffic a chip passes about once a round, and its row is its passage.

    In arrays, for a round of tens of thousands of passages: sorted by chip, then by the time each began (passages
    that began at the same instant stay in the order they came)."""
    tag_ids, station_ids, firsts, lasts = p.tag_ids, p.station_ids, p.first_seen_at, p.last_seen_at
    n = len(tag_ids)
    tags = np.fromiter(tag_ids, np.int64, n)
    order = np.argsort(tags, kind="stable")
    chips = tags[order]
    same_chip = chips[1:] == chips[:-1]
    if not same_chip.any():  # each chip passed once: its row is its passage
        nothing = itertools.repeat(None)  # endless: the passages' columns set the length
        return list(zip(tag_ids, station_ids, firsts, lasts, nothing, nothing, nothing, strict=False)), []
    order = np.lexsort((np.array(list(map(datetime.timestamp, firsts))), tags))
    chips = tags[order]
    same_chip = chips[1:] == chips[:-1]
    # Each chip's run of passages in `order`: its first position and its last.
    starts = np.flatnonzero(np.concatenate(([True], ~same_chip)))
    ends = np.concatenate((starts[1:], [n])) - 1
    earliest, latest = order[starts].tolist(), order[ends].tolist()
    # Column by column (a chip that passed once has its passage as its latest too).
    rows: list[_ChipRow] = list(
        zip(
            [tag_ids[i] for i in earliest],
            [station_ids[i] for i in earliest],
            [firsts[i] for i in earliest],
            [lasts[i] for i in earliest],
            [station_ids[i] for i in latest],
            [firsts[i] for i in latest],
            [lasts[i] for i in latest],
            strict=True,
        )
    )
    stations = np.array(station_ids, dtype=object)[order]
    moved_on = np.flatnonzero(same_chip & (stations[1:] != stations[:-1]))
    pairs = [(tag_ids[a], a, b) for a, b in zip(order[moved_on].tolist(), order[moved_on + 1].tolist(), strict=True)]
    return rows, pairs


def detector(max_speed_kmh: float, slack_m: float = SLACK_M) -> Detector:
    """The cloned-chip detector for bikes no faster than max_speed_kmh, give or take slack_m."""

    def detect(cur: psycopg.Cursor[Any], committed: Committed, _watch: WatchList) -> list[Evidence]:
        """Passages (any order) of registered chips at a station they could not have reached since their previous
        passage; moves each chip's position to its latest passage."""
        p = committed.passages
        if not p.tag_ids:
            return []
        max_speed_mps = max_speed_kmh / 3.6
        rows, pairs = _round_chips(p)
        with cur.connection.transaction():  # the temporary rows live until this commits (or the outer transaction)
            # A round holds up to a second of passages (hundreds of thousands at full speed): its sort of the chips
            # stays in memory rather than spill to disk (the default work_mem is 4 MB).
            cur.execute("SET LOCAL work_mem = '64MB'")
            cur.execute(_ROUND_CHIPS)
            cur.execute("DELETE FROM flush_chips")  # empty unless called twice in one transaction
            with cur.copy("COPY flush_chips FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(_ROUND_CHIP_TYPES)
                for row in rows:
                    copy.write_row(row)
            # No ANALYZE (it cost a tenth of a round): never analyzed, the table is planned from its real size in pages
            # (at least 10), so a small round still looks its chips up by key instead of hashing every chip.
            found = cur.execute(_EVIDENCE, {"slack_m": slack_m, "max_speed_mps": max_speed_mps}).fetchall()
            evidence = _pairs_too_fast(cur, p, pairs, slack_m, max_speed_mps)
        return evidence + [Evidence(KIND, int(r[0]), r[1], r[2], r[3]) for r in found]

    return Detector(KIND, detect)


def _pairs_too_fast(
    cur: psycopg.Cursor[Any], p: Passages, pairs: list[tuple[int, int, int]], slack_m: float, max_speed_mps: float
) -> list[Evidence]:
    """Evidence from a round's own passages: a chip's consecutive passages (by index into p) at two fixed stations
    further apart than a bike could ride in the time between them, as the round's query judges a chip's first
    passage against its stored position. The stations' places are read only when there are pairs to judge."""
    if not pairs:
        return []
    wanted = sorted({p.station_ids[i] for _, a, b in pairs for i in (a, b)})
    places = {
        station: (lat, lon)
        for station, lat, lon, mobile in cur.execute(
            "SELECT station_id, lat, lon, mobile FROM stations WHERE station_id = ANY(%s)", (wanted,)
        )
        if not mobile
    }
    evidence = []
    for tag, a, b in pairs:
        here, there = places.get(p.station_ids[b]), places.get(p.station_ids[a])
        if here is None or there is None:
            continue
        gap_s = max((p.first_seen_at[b] - p.last_seen_at[a]).total_seconds(), 0.0)
        if _distance(here, there) > slack_m + max_speed_mps * gap_s:
            first, last = sorted((p.last_seen_at[a], p.first_seen_at[b]))
            evidence.append(Evidence(KIND, tag, p.station_ids[b], first, last))
    return evidence
