"""Alarms: raised from sightings and alerts, one open alarm per (kind, subject), announced by NOTIFY."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from backend import prediction
from protocol.messages import format_tag

NOTIFY_CHANNEL = "bikeguard_alarms"


class AlarmError(Exception):
    """Base of alarm errors."""


class AlarmNotFound(AlarmError):
    """No alarm with that id."""


class AlarmStateError(AlarmError):
    """The transition is not allowed from the alarm's current state."""


@dataclass(frozen=True, slots=True)
class Evidence:
    """A stolen tag seen at a station between two times."""

    tag_id: int
    station_id: str
    first_seen_at: datetime
    last_seen_at: datetime


@dataclass(frozen=True, slots=True)
class Passages:
    """Many passages column by column (the ingest's hot path makes no object per row)."""

    tag_ids: list[int]
    station_ids: list[str]
    first_seen_at: list[datetime]
    last_seen_at: list[datetime]

    @classmethod
    def empty(cls) -> Passages:
        """No passages yet."""
        return cls([], [], [], [])

    def extend(self, other: Passages) -> None:
        """Append another's passages."""
        self.tag_ids.extend(other.tag_ids)
        self.station_ids.extend(other.station_ids)
        self.first_seen_at.extend(other.first_seen_at)
        self.last_seen_at.extend(other.last_seen_at)


@dataclass(frozen=True, slots=True)
class Watch:
    """Why the ingest watches a chip: its bike is stolen (since when), or armed by its owner."""

    stolen_at: datetime | None
    armed: bool


def watched_tags(cur: psycopg.Cursor[Any]) -> dict[int, Watch]:
    """Chips of bikes with an open theft report or armed by their owner: one query per flush."""
    # Two small index scans (open theft reports; armed bikes), never a pass over every chip.
    rows = cur.execute(
        "SELECT c.tag_id, t.stolen_at, false FROM theft_reports t JOIN chips c USING (bike_id)"
        " WHERE t.recovered_at IS NULL"
        " UNION ALL"
        " SELECT c.tag_id, NULL, true FROM bikes b JOIN chips c USING (bike_id) WHERE b.armed"
        " AND NOT EXISTS (SELECT 1 FROM theft_reports t WHERE t.bike_id = b.bike_id AND t.recovered_at IS NULL)"
    ).fetchall()
    return {int(r[0]): Watch(r[1], bool(r[2])) for r in rows}


def stolen_tags(cur: psycopg.Cursor[Any]) -> dict[int, datetime]:
    """Chips of bikes with an open theft report, with the time each was stolen."""
    rows = cur.execute(
        "SELECT c.tag_id, t.stolen_at FROM theft_reports t JOIN chips c USING (bike_id)"
        " WHERE t.recovered_at IS NULL"
    ).fetchall()
    return {int(r[0]): r[1] for r in rows}


# Severity of each kind the ingest raises about a tag.
SEVERITY: dict[str, str] = {
    "stolen_chip_seen": "critical",
    "chip_cloned": "critical",
    "armed_bike_moving": "warning",
    "tamper": "warning",
    "low_battery": "info",
    "station_offline": "warning",
}
# Kinds whose alarm carries the chip's trail of passages: a bike on the move.
TRAIL_KINDS = ("stolen_chip_seen", "chip_cloned", "armed_bike_moving")
# Kinds about a station rather than a chip: no personal data, so installers see them too.
STATION_KINDS = ("station_offline",)
# Who clears a station's alarm when it reports again (or leaves service).
STATION_BACK = "bikeguard (no longer offline)"

# Raise or update one open alarm per tag from evidence rows e(tag_id, station_id, first_seen_at, last_seen_at);
# only chips bound to a bike count. {evidence} is a SELECT producing those columns; {before} may define CTEs
# it uses (ending with a comma).
_UPSERT = """
    WITH {before} e AS ({evidence}), per_tag AS (
        SELECT tag_id, min(first_seen_at) AS first_seen_at, max(last_seen_at) AS last_seen_at,
               (array_agg(station_id ORDER BY last_seen_at DESC))[1] AS station_id, count(*) AS n
        FROM e GROUP BY tag_id
    ), raised AS (
        INSERT INTO alarms AS a (kind, severity, subject, tag_id, bike_id, station_id,
                                 first_seen_at, last_seen_at, sightings)
        SELECT %(kind)s, %(severity)s, 'tag:' || lpad(upper(to_hex(p.tag_id)), 8, '0'), p.tag_id,
               c.bike_id, p.station_id, p.first_seen_at, p.last_seen_at, p.n
        FROM per_tag p JOIN chips c USING (tag_id)
        WHERE c.bike_id IS NOT NULL
        ORDER BY p.tag_id
        ON CONFLICT (kind, subject) WHERE state <> 'cleared' DO UPDATE SET
            station_id = CASE WHEN excluded.last_seen_at >= a.last_seen_at
                              THEN excluded.station_id ELSE a.station_id END,
            first_seen_at = least(a.first_seen_at, excluded.first_seen_at),
            last_seen_at = greatest(a.last_seen_at, excluded.last_seen_at),
            sightings = a.sightings + excluded.sightings,
            updated_at = now()
        RETURNING alarm_id
    )
    SELECT alarm_id, pg_notify(%(channel)s, alarm_id::text) FROM raised
"""
_EVIDENCE_ROWS = (
    "SELECT * FROM unnest(%(tags)s::int8[], %(stations)s::text[], %(firsts)s::timestamptz[],"
    " %(lasts)s::timestamptz[]) AS e(tag_id, station_id, first_seen_at, last_seen_at)"
)
_EARTH_RADIUS_M = 6_371_000
# This flush's passages, copied in for the cloned-chip check: COPY is ten times cheaper than array parameters.
_FLUSH_PASSAGES = (
    "CREATE TEMP TABLE IF NOT EXISTS flush_passages (tag_id int8 NOT NULL, station_id text NOT NULL,"
    " first_seen_at timestamptz NOT NULL, last_seen_at timestamptz NOT NULL) ON COMMIT DELETE ROWS"
)
_FLUSH_PASSAGE_TYPES = ["int8", "text", "timestamptz", "timestamptz"]
# This flush's passages of registered chips (reg), and each such chip's latest one made its position (moved);
# what the evidence reads of chip_positions is from before the move, as in any statement with a WITH ... INSERT.
_REGISTERED_AND_MOVED = """
    reg AS MATERIALIZED (
        SELECT f.tag_id, f.station_id, f.first_seen_at, f.last_seen_at
        FROM flush_passages f JOIN chips c ON c.tag_id = f.tag_id AND c.bike_id IS NOT NULL
    ), moved AS (
        INSERT INTO chip_positions AS cp (tag_id, station_id, first_seen_at, last_seen_at)
        SELECT DISTINCT ON (r.tag_id) r.tag_id, r.station_id, r.first_seen_at, r.last_seen_at
        FROM reg r
        ORDER BY r.tag_id, r.first_seen_at DESC, r.last_seen_at DESC
        ON CONFLICT (tag_id) DO UPDATE SET station_id = excluded.station_id,
            first_seen_at = excluded.first_seen_at, last_seen_at = excluded.last_seen_at
        WHERE excluded.first_seen_at >= cp.first_seen_at
    ),
"""
# Consecutive passages of a registered chip - its position before this flush (chip_positions) and this flush's
# passages, in time order - at two stations further apart than a bike could ride in the time between them.
# Only a passage of this flush is judged; one primary-key lookup per chip, whatever the size of `sightings`.
_CLONED_EVIDENCE = f"""
    SELECT p.tag_id, p.station_id, least(p.prev_last_seen_at, p.first_seen_at) AS first_seen_at,
           greatest(p.prev_last_seen_at, p.first_seen_at) AS last_seen_at
    FROM (
        SELECT q.*, lag(q.station_id) OVER w AS prev_station_id, lag(q.last_seen_at) OVER w AS prev_last_seen_at
        FROM (
            SELECT r.*, true AS new FROM reg r
            UNION ALL
            SELECT cp.tag_id, cp.station_id, cp.first_seen_at, cp.last_seen_at, false FROM chip_positions cp
            WHERE cp.tag_id IN (SELECT tag_id FROM reg)
        ) q
        WINDOW w AS (PARTITION BY q.tag_id ORDER BY q.first_seen_at, q.last_seen_at)
    ) p
    JOIN stations a ON a.station_id = p.station_id
    JOIN stations b ON b.station_id = p.prev_station_id
    WHERE p.new AND p.prev_station_id <> p.station_id
      AND 2 * {_EARTH_RADIUS_M} * asin(sqrt(
              power(sin(radians(a.lat - b.lat) / 2), 2)
              + cos(radians(b.lat)) * cos(radians(a.lat)) * power(sin(radians(a.lon - b.lon) / 2), 2)))
          > %(slack_m)s + %(max_speed_mps)s
              * greatest(extract(epoch FROM p.first_seen_at - p.prev_last_seen_at)::float8, 0)
"""


def raise_alarms(cur: psycopg.Cursor[Any], kind: str, severity: str, hits: list[Evidence]) -> list[int]:
    """Raise or update one open alarm of this kind per tag bound to a bike; NOTIFY each at commit.

    One query whatever the number of hits; returns the alarm ids.
    """
    if not hits:
        return []
    return _upsert(cur, _EVIDENCE_ROWS, kind, severity, {
        "tags": [h.tag_id for h in hits], "stations": [h.station_id for h in hits],
        "firsts": [h.first_seen_at for h in hits], "lasts": [h.last_seen_at for h in hits],
    })


def raise_chips_cloned(cur: psycopg.Cursor[Any], passages: Passages, max_speed_kmh: float,
                       slack_m: float) -> list[int]:
    """Raise 'chip cloned' for registered chips in these passages (this flush's, any order) seen at a station
    they could not have reached since their previous passage (at max_speed_kmh, give or take slack_m), then
    remember each chip's latest passage; one COPY and one query.

    With several ingest workers, two passages of one chip written at the same instant by two workers may not be
    compared with each other; the clone's next passage is.
    """
    if not passages.tag_ids:
        return []
    with cur.connection.transaction():  # the temporary rows live until this commits (or the outer transaction)
        cur.execute(_FLUSH_PASSAGES)
        cur.execute("DELETE FROM flush_passages")  # empty unless called twice in one transaction
        with cur.copy("COPY flush_passages FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(_FLUSH_PASSAGE_TYPES)
            for row in zip(passages.tag_ids, passages.station_ids, passages.first_seen_at, passages.last_seen_at,
                           strict=True):
                copy.write_row(row)
        # Its real size, so that a small flush looks its chips up by key instead of hashing every chip.
        cur.execute("ANALYZE flush_passages")
        return _upsert(cur, _CLONED_EVIDENCE, "chip_cloned", SEVERITY["chip_cloned"],
                       {"slack_m": slack_m, "max_speed_mps": max_speed_kmh / 3.6}, before=_REGISTERED_AND_MOVED)


def _upsert(cur: psycopg.Cursor[Any], evidence: str, kind: str, severity: str, params: dict[str, Any],
            before: str = "") -> list[int]:
    rows = cur.execute(
        _UPSERT.replace("{before}", before).replace("{evidence}", evidence),
        {**params, "kind": kind, "severity": severity, "channel": NOTIFY_CHANNEL},
    ).fetchall()
    return [int(r[0]) for r in rows]


async def sync_station_offline(conn: psycopg.AsyncConnection[Any], offline: dict[str, tuple[datetime, str]]) -> None:
    """Raise one 'station offline' alarm per outage of a station in `offline` (id → since when, why), and clear
    the open ones of stations that reported since (or left service); NOTIFY each change. An outage whose alarm
    someone cleared by hand is not raised again; a new outage (a later `since`) is. Safe with several workers."""
    ids, sinces = list(offline), [offline[s][0] for s in offline]
    async with conn.transaction():
        await conn.execute(
            "WITH raised AS ("
            " INSERT INTO alarms AS a (kind, severity, subject, station_id, first_seen_at, last_seen_at, sightings)"
            " SELECT 'station_offline', %(severity)s, 'station:' || o.station_id, o.station_id, o.since, o.since, 0"
            " FROM unnest(%(ids)s::text[], %(sinces)s::timestamptz[]) AS o(station_id, since)"
            " WHERE NOT EXISTS (SELECT 1 FROM alarms x WHERE x.kind = 'station_offline'"
            "  AND x.subject = 'station:' || o.station_id AND x.first_seen_at >= o.since)"
            " ORDER BY o.station_id"
            " ON CONFLICT (kind, subject) WHERE state <> 'cleared' DO NOTHING RETURNING alarm_id)"
            " SELECT pg_notify(%(channel)s, alarm_id::text) FROM raised",
            {"severity": SEVERITY["station_offline"], "ids": ids, "sinces": sinces, "channel": NOTIFY_CHANNEL},
        )
        await conn.execute(
            "WITH back AS ("
            " UPDATE alarms a SET state = 'cleared', cleared_by = %(who)s, cleared_at = now(), updated_at = now()"
            " FROM stations s LEFT JOIN station_status st USING (station_id)"
            " WHERE a.kind = 'station_offline' AND a.state <> 'cleared' AND s.station_id = a.station_id"
            "  AND NOT (a.station_id = ANY(%(ids)s))"
            # It reported since the outage began, or it is no longer in service: evidence, not just our view
            # (a worker that has only just started does not yet count silence).
            "  AND ((st.state = 'online' AND st.received_at > a.first_seen_at)"
            "       OR s.lifecycle NOT IN ('commissioned', 'active'))"
            " RETURNING a.alarm_id)"
            " SELECT pg_notify(%(channel)s, alarm_id::text) FROM back",
            {"who": STATION_BACK, "ids": ids, "channel": NOTIFY_CHANNEL},
        )


_ALARM_SELECT = """
    SELECT a.alarm_id AS id, a.kind, a.severity, a.state, a.tag_id, b.plate, a.station_id,
           s.name AS station_name, s.lat, s.lon, a.first_seen_at, a.last_seen_at, a.sightings,
           a.raised_at, a.updated_at, a.assignee, a.assigned_by, a.assigned_at, a.acknowledged_by, a.acknowledged_at,
           a.cleared_by, a.cleared_at
    FROM alarms a
    LEFT JOIN bikes b USING (bike_id)
    LEFT JOIN stations s ON s.station_id = a.station_id
"""


async def _trail(conn: psycopg.AsyncConnection[Any], alarm: dict[str, Any], limit: int) -> list[dict[str, Any]]:
    """The alarm's tag's passages since the alarm began, oldest first, with station positions; only for the kinds
    about a bike on the move (a low battery or a tamper has no trail to follow)."""
    if alarm["tag_id"] is None or alarm["kind"] not in TRAIL_KINDS:
        return []
    cur = await conn.execute(
        "SELECT * FROM (SELECT x.station_id, st.lat, st.lon, x.first_seen_at AS seen_at"
        " FROM sightings x JOIN stations st USING (station_id)"
        " WHERE x.tag_id = %s AND x.first_seen_at >= %s - interval '1 minute'"
        " ORDER BY x.first_seen_at DESC LIMIT %s) t ORDER BY seen_at",
        (alarm["tag_id"], alarm["first_seen_at"], limit),
    )
    trail = [dict(zip(("station_id", "lat", "lon", "seen_at"), r, strict=True)) for r in await cur.fetchall()]
    # The hot-list alert may be newer than any closed passage: end the trail where it was last seen.
    if alarm["lat"] is not None and (not trail or trail[-1]["station_id"] != alarm["station_id"]):
        trail.append({"station_id": alarm["station_id"], "lat": alarm["lat"], "lon": alarm["lon"],
                      "seen_at": alarm["last_seen_at"]})
    return trail


def _public(alarm: dict[str, Any]) -> dict[str, Any]:
    alarm = dict(alarm)
    if alarm["tag_id"] is not None:
        alarm["tag_id"] = format_tag(alarm["tag_id"])
    return alarm


@dataclass(frozen=True, slots=True)
class Scope:
    """Which alarms a viewer may see: one owner's bikes (since they own them), only some kinds, or all but some."""

    owner_id: int | None = None
    hidden_kinds: tuple[str, ...] = ()
    only_kinds: tuple[str, ...] | None = None

    def allows(self, kind: str) -> bool:
        """Whether alarms of this kind are in scope (the owner rule aside)."""
        return kind not in self.hidden_kinds and (self.only_kinds is None or kind in self.only_kinds)

    def sql(self) -> tuple[str, list[Any]]:
        """A WHERE fragment (starting with AND) and its parameters."""
        where, params = "", list[Any]()
        if self.hidden_kinds:
            where += " AND NOT (a.kind = ANY(%s))"
            params.append(list(self.hidden_kinds))
        if self.only_kinds is not None:
            where += " AND a.kind = ANY(%s)"
            params.append(list(self.only_kinds))
        if self.owner_id is not None:
            where += (
                " AND EXISTS (SELECT 1 FROM bike_bindings ob WHERE ob.bike_id = a.bike_id AND ob.kind = 'owner'"
                " AND ob.valid_to IS NULL AND ob.owner_id = %s AND a.raised_at >= ob.valid_from)"
            )
            params.append(self.owner_id)
        return where, params


EVERYTHING = Scope()
# An armed bike moving is its owner's business: it shows where a bike that is not stolen is.
OWNER_ONLY_KINDS = ("armed_bike_moving",)
POLICE = Scope(hidden_kinds=OWNER_ONLY_KINDS)
INSTALLERS = Scope(only_kinds=STATION_KINDS)


async def get_alarm(
    conn: psycopg.AsyncConnection[Any], alarm_id: int, trail_limit: int = 50, scope: Scope = EVERYTHING
) -> dict[str, Any]:
    """One alarm with its trail; raises AlarmNotFound (also when the scope does not allow it)."""
    where, params = scope.sql()
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(_ALARM_SELECT + " WHERE a.alarm_id = %s" + where, (alarm_id, *params))
        row = await cur.fetchone()
    if row is None:
        raise AlarmNotFound(f"no alarm {alarm_id}")
    trail = await _trail(conn, row, trail_limit)
    return {**_public(row), "trail": trail, "next_stations": await _next_stations(conn, row, trail)}


_SEVERITY_ORDER = {"critical": 0, "warning": 1, "info": 2}


async def get_alarms(conn: psycopg.AsyncConnection[Any], alarm_ids: list[int]) -> list[dict[str, Any]]:
    """Several alarms (those that exist), each as get_alarm gives it, the most severe first: one query for all,
    then a trail only for those that have one."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(_ALARM_SELECT + " WHERE a.alarm_id = ANY(%s)", (alarm_ids,))
        rows = await cur.fetchall()
    rows.sort(key=lambda r: (_SEVERITY_ORDER.get(r["severity"], 3), alarm_ids.index(r["id"])))
    out = []
    for row in rows:
        trail = await _trail(conn, row, 50)
        out.append({**_public(row), "trail": trail, "next_stations": await _next_stations(conn, row, trail)})
    return out


async def _next_stations(
    conn: psycopg.AsyncConnection[Any], alarm: dict[str, Any], trail: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Interception points for a stolen bike on the move: its likeliest next stations and when."""
    if alarm["kind"] != "stolen_chip_seen" or alarm["state"] == "cleared" or alarm["station_id"] is None:
        return []
    came_from = next((p["station_id"] for p in reversed(trail) if p["station_id"] != alarm["station_id"]), None)
    found = await prediction.next_stations(conn, alarm["station_id"], alarm["last_seen_at"], came_from)
    return [{"station_id": n.station_id, "name": n.name, "lat": n.lat, "lon": n.lon,
             "probability": round(n.probability, 3), "eta_at": n.eta_at, "eta_latest_at": n.eta_latest_at}
            for n in found]


async def list_alarms(
    conn: psycopg.AsyncConnection[Any], states: tuple[str, ...] = ("active", "acknowledged"), limit: int = 200,
    scope: Scope = EVERYTHING,
) -> list[dict[str, Any]]:
    """Alarms in the given states the scope allows, most recently seen first, each with its trail."""
    where, params = scope.sql()
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            _ALARM_SELECT + " WHERE a.state = ANY(%s)" + where + " ORDER BY a.last_seen_at DESC LIMIT %s",
            (list(states), *params, limit),
        )
        rows = await cur.fetchall()
    out = []
    for r in rows:
        trail = await _trail(conn, r, 50)
        out.append({**_public(r), "trail": trail, "next_stations": await _next_stations(conn, r, trail)})
    return out


_TRANSITIONS = {
    "acknowledge": ("acknowledged", ("active",), "acknowledged_by", "acknowledged_at"),
    "clear": ("cleared", ("active", "acknowledged"), "cleared_by", "cleared_at"),
}


async def transition(conn: psycopg.AsyncConnection[Any], alarm_id: int, action: str, who: str) -> None:
    """Acknowledge or clear an alarm, recording who and when; NOTIFY the change."""
    new_state, allowed, by_col, at_col = _TRANSITIONS[action]
    async with conn.transaction():
        cur = await conn.execute("SELECT state FROM alarms WHERE alarm_id = %s FOR UPDATE", (alarm_id,))
        row = await cur.fetchone()
        if row is None:
            raise AlarmNotFound(f"no alarm {alarm_id}")
        if row[0] not in allowed:
            raise AlarmStateError(f"alarm {alarm_id} is {row[0]}; cannot {action} it")
        await conn.execute(
            f"UPDATE alarms SET state = %s, {by_col} = %s, {at_col} = now(), updated_at = now()"
            " WHERE alarm_id = %s",
            (new_state, who, alarm_id),
        )
        await conn.execute("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, str(alarm_id)))


async def assign(conn: psycopg.AsyncConnection[Any], alarm_id: int, assignee: str, who: str) -> None:
    """Hand an open alarm to someone, recording who did and when; NOTIFY the change."""
    async with conn.transaction():
        cur = await conn.execute("SELECT state FROM alarms WHERE alarm_id = %s FOR UPDATE", (alarm_id,))
        row = await cur.fetchone()
        if row is None:
            raise AlarmNotFound(f"no alarm {alarm_id}")
        if row[0] == "cleared":
            raise AlarmStateError(f"alarm {alarm_id} is cleared; cannot assign it")
        await conn.execute(
            "UPDATE alarms SET assignee = %s, assigned_by = %s, assigned_at = now(), updated_at = now()"
            " WHERE alarm_id = %s",
            (assignee, who, alarm_id),
        )
        await conn.execute("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, str(alarm_id)))
