"""Station health: online or offline from its status and heartbeats, degraded when it hears far fewer
passages than it usually does at this time of day; plus the spool and radio figures its status reports, and the
batches the backend is missing from it, recovered or lost (backend.ingest.gaps)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row


@dataclass(frozen=True, slots=True)
class HealthRules:
    """When a station counts as offline or degraded."""

    # Offline after this many expected heartbeat intervals without a status.
    missed_heartbeats: float = 2.0
    # Degraded below this share of the station's usual passages for the same hour ...
    degraded_share: float = 0.25
    # ... where "usual" is the median of the same hour on each of the last `history_days` days (from the hourly
    # passage counts, station_passages_hourly),
    history_days: int = 7
    # and only counts when it is at least this (a quiet station's dips are noise).
    min_usual_passages: float = 20.0
    # A station whose hot list is older than the backend's current one for longer than this is stale: it does not
    # flag chips stolen since. Longer than a heartbeat interval, since the status says which list it holds.
    hotlist_grace_s: float = 300.0


_QUERY = """
WITH base AS (
    SELECT s.station_id, s.name, s.lat, s.lon, s.lifecycle, s.heartbeat_interval_s,
           s.vendor_protocol, s.vendor_device_id, s.time_zone, s.mobile, s.position_at,
           st.state AS status_state, st.received_at AS last_heartbeat_at, st.payload,
           coalesce(mk.batches_recovered, 0) AS batches_recovered, gp.batches_missing, gp.missing_since,
           gp.batches_lost, gp.gaps_not_issued, gp.last_lost_at, hl.hotlist_current, hl.hotlist_behind_since
    FROM stations s LEFT JOIN station_status st USING (station_id)
    LEFT JOIN batch_seq_marks mk USING (station_id)
    CROSS JOIN LATERAL (
        SELECT coalesce(sum(g.last_seq - g.first_seq + 1) FILTER (WHERE g.state = 'open'), 0) AS batches_missing,
               min(g.noticed_at) FILTER (WHERE g.state = 'open') AS missing_since,
               coalesce(sum(g.last_seq - g.first_seq + 1) FILTER (WHERE g.reason IN ('dropped', 'not_held')), 0)
                   AS batches_lost,
               count(*) FILTER (WHERE g.reason = 'not_issued') AS gaps_not_issued,
               max(g.closed_at) AS last_lost_at
        FROM batch_gaps g
        -- An open gap counts once it was asked for (past the grace period): before, the batch may only be late.
        WHERE g.station_id = s.station_id AND (g.state = 'lost' OR g.requests > 0)
    ) gp
    -- The hot list the station says it holds against the backend's latest; numeric: a station's report is not
    -- trusted to fit a bigint. Behind since the first list newer than the station's was issued.
    CROSS JOIN LATERAL (
        SELECT (SELECT max(version) FROM hotlist_versions) AS hotlist_current,
               (SELECT min(h.issued_at) FROM hotlist_versions h
                 WHERE h.version > (st.payload->>'hotlist_version')::numeric) AS hotlist_behind_since
    ) hl
    WHERE s.lifecycle <> 'decommissioned'
), recent AS (
    SELECT b.station_id,
           (SELECT count(*) FROM sightings x WHERE x.station_id = b.station_id
              AND x.first_seen_at >= %(now)s - interval '1 hour' AND x.first_seen_at < %(now)s) AS passages
    FROM base b
), windows AS (
    -- The last hour's window on each of the last days, over the two clock hours it overlaps: the first hour's share
    -- of the window weights its count, the next hour's the rest (exact for steady traffic).
    SELECT d, bikeguard_bucket(INTERVAL '1 hour', t0) AS first_hour,
           1 - extract(epoch FROM t0 - bikeguard_bucket(INTERVAL '1 hour', t0)) / 3600 AS first_share
    FROM generate_series(1, %(days)s) AS d,
         LATERAL (SELECT %(now)s - make_interval(days => d) - INTERVAL '1 hour' AS t0) AS t
), counted AS (
    -- From the hourly passage counts (a continuous aggregate on TimescaleDB), never a scan of days of sightings.
    SELECT w.d, h.station_id,
           sum(h.passages * CASE WHEN h.hour = w.first_hour THEN w.first_share ELSE 1 - w.first_share END) AS passages
    FROM station_passages_hourly h
    JOIN windows w ON h.hour IN (w.first_hour, w.first_hour + INTERVAL '1 hour')
    WHERE h.hour >= %(now)s - make_interval(days => %(days)s) - INTERVAL '2 hours'
      AND h.hour < %(now)s - INTERVAL '1 day' + INTERVAL '1 hour'
    GROUP BY w.d, h.station_id
), usual AS (
    SELECT b.station_id, percentile_cont(0.5) WITHIN GROUP (ORDER BY coalesce(c.passages, 0)) AS passages
    FROM base b CROSS JOIN generate_series(1, %(days)s) AS day
    LEFT JOIN counted c ON c.station_id = b.station_id AND c.d = day
    GROUP BY b.station_id
)
SELECT b.*, r.passages AS passages_last_hour, u.passages AS usual_passages
FROM base b JOIN recent r USING (station_id) JOIN usual u USING (station_id)
ORDER BY b.station_id
"""


def liveness(
    row: dict[str, Any], now: datetime, rules: HealthRules, heard_since: datetime | None = None
) -> tuple[bool, str | None]:
    """(online, why not) from a station's latest status; heard_since, when given, is when we began listening
    (a backend just started, a station just put in service): silence before it does not count."""
    last = row.get("last_heartbeat_at")
    interval = row["heartbeat_interval_s"]
    if row.get("status_state") == "offline" and last is not None:
        return False, "its last status says offline (the gateway lost its connection)"
    since = max((t for t in (last, heard_since) if t is not None), default=None)
    if since is not None and (now - since).total_seconds() <= rules.missed_heartbeats * interval:
        return True, None
    if last is None:
        return False, "never heard from"
    return False, f"no heartbeat for {(now - last).total_seconds():.0f} s (expected every {interval} s)"


# Why a station is unhealthy, as the codes `assess` gives beside its reasons (the installer page words each).
REASON_CODES: tuple[str, ...] = (
    "offline_status",
    "never_heard",
    "no_heartbeat",
    "fewer_passages",
    "batches_missing",
    "hotlist_behind",
    "hotlist_unissued",
)


def _liveness_code(row: dict[str, Any]) -> str:
    """Why liveness() found a station offline, as a code: the order of its tests."""
    if row.get("status_state") == "offline" and row.get("last_heartbeat_at") is not None:
        return "offline_status"
    return "never_heard" if row.get("last_heartbeat_at") is None else "no_heartbeat"


def assess(row: dict[str, Any], now: datetime, rules: HealthRules) -> dict[str, Any]:
    """One station's health from its registry row, latest status and passage counts."""
    payload = row.get("payload") or {}
    last = row.get("last_heartbeat_at")
    online, why = liveness(row, now, rules)
    health = "online" if online else "offline"
    reasons = [why] if why else []
    # The same reasons as codes, so a page words them in its own language (and its own time zone).
    codes = [_liveness_code(row)] if why else []
    usual = row.get("usual_passages")
    usual = float(usual) if usual is not None else None
    recent = int(row.get("passages_last_hour") or 0)
    # A mobile reader hears what it drives past: fewer passages than usual is where it went, not a fault.
    if (
        health == "online"
        and not row.get("mobile")
        and usual is not None
        and usual >= rules.min_usual_passages
        and recent < rules.degraded_share * usual
    ):
        health = "degraded"
        reasons.append(f"{recent} passages in the last hour, usually {usual:.0f} at this time")
        codes.append("fewer_passages")
    missing = int(row.get("batches_missing") or 0)
    since = row.get("missing_since")
    if missing and since is not None:
        reasons.append(
            f"{missing} batches missing since {since:%Y-%m-%d %H:%M:%S} UTC: asked its gateway to send them again"
        )
        codes.append("batches_missing")
    hotlist, lag = _hotlist_lag(payload.get("hotlist_version"), row, now, rules)
    if lag:
        reasons.append(lag)
        unissued = hotlist["hotlist_version"] > hotlist["hotlist_current"]
        codes.append("hotlist_unissued" if unissued else "hotlist_behind")
    return {
        "station_id": row["station_id"],
        "name": row["name"],
        "lat": row["lat"],
        "lon": row["lon"],
        "lifecycle": row["lifecycle"],
        "health": health,
        "reasons": reasons,
        "reason_codes": codes,
        "last_heartbeat_at": last,
        "heartbeat_interval_s": row["heartbeat_interval_s"],
        "passages_last_hour": recent,
        "usual_passages": usual,
        "spool_depth": payload.get("spool_depth"),
        "spool_dropped": payload.get("spool_dropped"),
        "noise_floor_dbm": payload.get("noise_floor_dbm"),
        "firmware": payload.get("firmware"),
        "batches_missing": missing,
        "missing_since": since,
        "batches_recovered": int(row.get("batches_recovered") or 0),
        "batches_lost": int(row.get("batches_lost") or 0),
        "gaps_not_issued": int(row.get("gaps_not_issued") or 0),
        "last_lost_at": row.get("last_lost_at"),
        **hotlist,
        # A vendor station (through the bridge) is judged like ours; the page says which kind it is.
        "vendor_protocol": row.get("vendor_protocol"),
        "vendor_device_id": row.get("vendor_device_id"),
        "time_zone": row.get("time_zone"),
        "mobile": bool(row.get("mobile")),
        "position_at": row.get("position_at"),
    }


def _hotlist_lag(
    held: Any, row: dict[str, Any], now: datetime, rules: HealthRules
) -> tuple[dict[str, Any], str | None]:
    """The station's hot list against the current one (its version, the current, whether it is stale), and why it
    is stale."""
    current = row.get("hotlist_current")
    behind_since = row.get("hotlist_behind_since")
    version = held if isinstance(held, int) else None
    stale, reason = False, None
    if version is not None and current is not None:
        if version > current:
            # Not a version the backend issued: a list forged before lists were signed, or another backend's.
            stale, reason = (
                True,
                f"holds hot list version {version}, which the backend never issued (current {current})",
            )
        elif behind_since is not None and (now - behind_since).total_seconds() > rules.hotlist_grace_s:
            stale = True
            reason = (
                f"hot list version {version} is behind the current {current} since"
                f" {behind_since:%Y-%m-%d %H:%M:%S} UTC: it does not flag chips stolen since (check its"
                " BIKEGUARD_GATEWAY_HOTLIST_PUBLIC_KEY and its hotlist_rejected metric)"
            )
    fields = {
        "hotlist_version": version,
        "hotlist_current": current,
        "hotlist_stale": stale,
        "hotlist_behind_since": behind_since if version is not None else None,
    }
    return fields, reason


async def station_health(
    conn: psycopg.AsyncConnection[Any], now: datetime, rules: HealthRules = HealthRules()
) -> list[dict[str, Any]]:
    """Every station in service (not decommissioned) with its health at `now`."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(_QUERY, {"now": now, "days": rules.history_days})
        return [assess(row, now, rules) for row in await cur.fetchall()]
