"""Chip cloned: a registered chip seen at a station it could not have reached since its previous passage.

Judged against each chip's last known position (chip_positions), which this detector also moves forward: one
COPY and one query per round, one primary-key lookup per chip whatever the size of `sightings`. It needs the
database, so the ingest runs it off the hot path (about once a second per worker).

With several ingest workers, two passages of one chip written at the same instant by two workers may not be
compared with each other; the clone's next passage is.
"""

from __future__ import annotations

from typing import Any

import psycopg

from backend.alarms.detector import Detector
from backend.alarms.evidence import Committed, Evidence
from backend.alarms.kinds import AlarmKind
from backend.alarms.watch_list import WatchList

KIND = AlarmKind.CHIP_CLONED
# A chip seen at two stations further apart than this plus what a bike rides in between is a clone; the slack
# covers the reading range of both stations.
SLACK_M = 200.0
_EARTH_RADIUS_M = 6_371_000
# The round's passages, copied in: COPY is ten times cheaper than array parameters.
_ROUND_PASSAGES = (
    "CREATE TEMP TABLE IF NOT EXISTS flush_passages (tag_id int8 NOT NULL, station_id text NOT NULL,"
    " first_seen_at timestamptz NOT NULL, last_seen_at timestamptz NOT NULL) ON COMMIT DELETE ROWS"
)
_ROUND_PASSAGE_TYPES = ["int8", "text", "timestamptz", "timestamptz"]
# The round's chips that are judged (judged): each distinct chip of the round with its position from before this
# round, looked up by key; a chip with a position was registered when it got it, and only a chip without one is looked
# up in the registry (one lookup per new chip, not one per passage: the registry lookup of every passage was a third of
# the round). Their passages and positions are put in time order per chip: one sort, which gives each passage its
# predecessor (lag) and each chip its latest passage (no lead), and that one becomes its position (moved) when it is
# one of this round's. What the evidence reads of chip_positions is from before the move, as in any statement with a
# WITH ... INSERT. Evidence: consecutive passages of a chip at two stations further apart than a bike could ride in the
# time between them; only a passage of this round is judged. A chip retired after it got a position keeps it and
# moves it, and raises nothing: the alarm store counts only chips bound to a bike. The registry check is a scalar
# subquery, evaluated row by row, so the planner never answers it by hashing the whole registry (300-500 ms a round
# for a million chips: docs/benchmarks.md, "the cloned-chip round hashed the whole registry").
_EVIDENCE = f"""
    WITH judged AS MATERIALIZED (
        SELECT d.tag_id, cp.station_id, cp.first_seen_at, cp.last_seen_at
        FROM (SELECT DISTINCT tag_id FROM flush_passages) d
        LEFT JOIN chip_positions cp ON cp.tag_id = d.tag_id
        WHERE cp.tag_id IS NOT NULL OR (SELECT c.bike_id IS NOT NULL FROM chips c WHERE c.tag_id = d.tag_id)
    ), ordered AS (
        SELECT q.*, lag(q.station_id) OVER w AS prev_station_id, lag(q.last_seen_at) OVER w AS prev_last_seen_at,
               lead(q.tag_id) OVER w IS NULL AS latest
        FROM (
            SELECT f.tag_id, f.station_id, f.first_seen_at, f.last_seen_at, true AS new
            FROM flush_passages f JOIN judged j ON j.tag_id = f.tag_id
            UNION ALL
            SELECT j.tag_id, j.station_id, j.first_seen_at, j.last_seen_at, false FROM judged j
            WHERE j.station_id IS NOT NULL
        ) q
        WINDOW w AS (PARTITION BY q.tag_id ORDER BY q.first_seen_at, q.last_seen_at)
    ), moved AS (
        INSERT INTO chip_positions AS cp (tag_id, station_id, first_seen_at, last_seen_at)
        SELECT o.tag_id, o.station_id, o.first_seen_at, o.last_seen_at FROM ordered o
        WHERE o.latest AND o.new
        ORDER BY o.tag_id
        ON CONFLICT (tag_id) DO UPDATE SET station_id = excluded.station_id,
            first_seen_at = excluded.first_seen_at, last_seen_at = excluded.last_seen_at
        WHERE excluded.first_seen_at >= cp.first_seen_at
    )
    SELECT p.tag_id, p.station_id, least(p.prev_last_seen_at, p.first_seen_at) AS first_seen_at,
           greatest(p.prev_last_seen_at, p.first_seen_at) AS last_seen_at
    FROM ordered p
    JOIN stations a ON a.station_id = p.station_id
    JOIN stations b ON b.station_id = p.prev_station_id
    WHERE p.new AND p.prev_station_id <> p.station_id
      -- A mobile reader's registry position is only where it last was, not where it heard this chip: its passages
      -- are not judged here (a patrol car driving on would make every chip it saw look cloned).
      AND NOT a.mobile AND NOT b.mobile
      AND 2 * {_EARTH_RADIUS_M} * asin(sqrt(
              power(sin(radians(a.lat - b.lat) / 2), 2)
              + cos(radians(b.lat)) * cos(radians(a.lat)) * power(sin(radians(a.lon - b.lon) / 2), 2)))
          > %(slack_m)s + %(max_speed_mps)s
              * greatest(extract(epoch FROM p.first_seen_at - p.prev_last_seen_at)::float8, 0)
"""


def detector(max_speed_kmh: float, slack_m: float = SLACK_M) -> Detector:
    """The cloned-chip detector for bikes no faster than max_speed_kmh, give or take slack_m."""

    def detect(cur: psycopg.Cursor[Any], committed: Committed, _watch: WatchList) -> list[Evidence]:
        """Passages (any order) of registered chips at a station they could not have reached since their previous
        passage; moves each chip's position to its latest passage."""
        p = committed.passages
        if not p.tag_ids:
            return []
        with cur.connection.transaction():  # the temporary rows live until this commits (or the outer transaction)
            # A round holds up to a second of passages (hundreds of thousands at full speed): their sorts stay in
            # memory rather than spill to disk (the default work_mem is 4 MB, about 40,000 passages).
            cur.execute("SET LOCAL work_mem = '64MB'")
            cur.execute(_ROUND_PASSAGES)
            cur.execute("DELETE FROM flush_passages")  # empty unless called twice in one transaction
            with cur.copy("COPY flush_passages FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(_ROUND_PASSAGE_TYPES)
                for row in zip(p.tag_ids, p.station_ids, p.first_seen_at, p.last_seen_at, strict=True):
                    copy.write_row(row)
            # No ANALYZE (it cost a tenth of a round): never analyzed, the table is planned from its real size in pages
            # (at least 10), so a small round still looks its chips up by key instead of hashing every chip.
            rows = cur.execute(_EVIDENCE, {"slack_m": slack_m, "max_speed_mps": max_speed_kmh / 3.6}).fetchall()
        return [Evidence(KIND, int(r[0]), r[1], r[2], r[3]) for r in rows]

    return Detector(KIND, detect)
