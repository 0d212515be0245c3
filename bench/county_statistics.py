"""Results benchmark: the statistics of a year for a county of 50,000 chipped bikes answer in under a second.

Fills an embedded server (once; kept for later runs in bench/out/, one per storage engine) with a county: 300 stations
in service, 50,000 owners, bikes and chips, two years of theft reports (2,500 a year: the year measured and the one
before it, for the trend), 40 % of them recovered within a month, a stolen-chip alarm for half of the stolen bikes
among 100,000 alarms of other kinds, the stolen bikes' sightings (each seen at its home station and elsewhere in the
30 days before its theft, and after its report), and a background of other bikes' passages at every station all year
(--background rows, 10 million by default) — generated server-side and loaded with the indexes dropped, then built
again as the migrations made them. Then times `backend.statistics.compute()` — what the page, the API, the CSV and
the PDF use — for the year's period. Beside it, the machine's floor measured in the same run: a bare round trip
(SELECT 1), and the server's own execution time (EXPLAIN ANALYZE) of the per-report query. Last line:

    statistics (<engine>): p95 <X> ms for a year of <N> theft reports, target < 1000 ms

Run: python bench/county_statistics.py [--timescaledb] [--background 10000000] [--queries 30] [--database-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics as stats
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg

from backend import statistics
from backend.db.migrate import migrate
from backend.db.storage import Engine, StoragePolicy, current_engine
from bikeguard.services import engine_preload, start_postgres

BIKES = 50_000
STATIONS = 300
THEFTS_PER_YEAR = 2_500
ZONE = ZoneInfo("Asia/Shanghai")
FIRST = date(2025, 12, 1)  # the year measured: FIRST to LAST; the year before it holds last year's reports
LAST = date(2026, 11, 30)
START = datetime.combine(FIRST - timedelta(days=365), datetime.min.time(), ZONE)  # the generated history's start
END = datetime.combine(LAST + timedelta(days=1), datetime.min.time(), ZONE)
OUT = Path(__file__).resolve().parent / "out"
TARGET_MS = 1000.0


def _registry(conn: psycopg.Connection) -> None:
    """Stations, owners, bikes and chips (the triggers record each binding, as for bikes registered at a counter)."""
    conn.execute(
        "INSERT INTO stations (station_id, name, lat, lon, lifecycle)"
        " SELECT 'st-' || lpad(s::text, 3, '0'), 'Station ' || s, 30.20 + (s / 20) * 0.006, 120.10 + (s %% 20) * 0.007,"
        " 'active' FROM generate_series(0, %s - 1) s",
        (STATIONS,),
    )
    conn.execute(
        "INSERT INTO owners (owner_id, name, id_number_hash, id_number_enc, mobile, address)"
        " SELECT i, 'Owner ' || i, sha256(('id' || i)::bytea), sha256(('enc' || i)::bytea),"
        " '138' || lpad(i::text, 8, '0'), 'Road ' || i FROM generate_series(1, %s) i",
        (BIKES,),
    )
    conn.execute(
        "INSERT INTO bikes (bike_id, plate, owner_id, frame_number, motor_number)"
        " SELECT i, 'HZ-' || lpad(i::text, 5, '0'), i, 'FR' || i, 'MT' || i FROM generate_series(1, %s) i",
        (BIKES,),
    )
    conn.execute("INSERT INTO chips (tag_id, bike_id) SELECT i, i FROM generate_series(1, %s) i", (BIKES,))
    conn.execute("SELECT setval('owners_owner_id_seq', %s), setval('bikes_bike_id_seq', %s)", (BIKES, BIKES))


def _thefts_and_alarms(conn: psycopg.Connection) -> None:
    """Two years of theft reports on distinct bikes (bike i stolen in year i // THEFTS_PER_YEAR), their recoveries,
    a stolen-chip alarm for half of them, and alarms of other kinds around them."""
    conn.execute(
        "INSERT INTO theft_reports (bike_id, stolen_at, reported_at, recovered_at)"
        " SELECT i, s.at, s.at + make_interval(secs => 600 + random() * 6 * 3600),"
        "  CASE WHEN random() < 0.4 THEN s.at + make_interval(secs => 7 * 3600 + random() * 30 * 86400) END"
        " FROM generate_series(1, 2 * %(n)s) i,"
        " LATERAL (SELECT %(start)s::timestamptz + make_interval(days => ((i - 1) / %(n)s) * 365)"
        "   + make_interval(secs => random() * 365 * 86400) AS at) s",
        {"n": THEFTS_PER_YEAR, "start": START},
    )
    conn.execute(
        "INSERT INTO alarms (kind, severity, state, subject, tag_id, bike_id, station_id, first_seen_at, last_seen_at)"
        " SELECT 'stolen_chip_seen', 'critical', 'cleared', 'tag:' || to_hex(r.bike_id), r.bike_id, r.bike_id,"
        "  'st-' || lpad((r.bike_id %% %(stations)s)::text, 3, '0'), a.at, a.at"
        " FROM theft_reports r, LATERAL (SELECT r.reported_at + (coalesce(r.recovered_at, r.reported_at"
        "   + INTERVAL '10 days') - r.reported_at) * random() AS at) a WHERE r.bike_id %% 2 = 0",
        {"stations": STATIONS},
    )
    conn.execute(
        "INSERT INTO alarms (kind, severity, state, subject, station_id, first_seen_at, last_seen_at)"
        " SELECT (ARRAY['station_offline', 'low_battery', 'tamper'])[1 + i %% 3], 'warning', 'cleared',"
        "  'station:st-' || lpad((i %% %(stations)s)::text, 3, '0'), 'st-' || lpad((i %% %(stations)s)::text, 3, '0'),"
        "  t.at, t.at FROM generate_series(1, 100000) i,"
        " LATERAL (SELECT %(start)s::timestamptz + make_interval(secs => random() * 730 * 86400) AS at) t",
        {"stations": STATIONS, "start": START},
    )


def _sightings(conn: psycopg.Connection, background: int, chunk: int = 5_000_000) -> None:
    """The measured year's stolen bikes' passages (home station 120 times and elsewhere 30 times in the 30 days before
    the theft, 20 after the report), then the background of every bike all year, in chunks with progress."""
    conn.execute(
        "INSERT INTO sightings SELECT p.at, p.at + INTERVAL '8 seconds', p.station_id, r.bike_id, 3, -60, 0, 0, 0"
        " FROM theft_reports r, LATERAL ("
        "   SELECT r.stolen_at - make_interval(secs => random() * 30 * 86400) AS at,"
        "     'st-' || lpad(CASE WHEN k <= 120 THEN r.bike_id %% %(stations)s"
        "       ELSE floor(random() * %(stations)s)::bigint END::text, 3, '0') AS station_id"
        "   FROM generate_series(1, 150) k"
        "   UNION ALL SELECT r.reported_at + make_interval(secs => random() * 20 * 86400),"
        "     'st-' || lpad(floor(random() * %(stations)s)::int::text, 3, '0') FROM generate_series(1, 20)"
        " ) p WHERE r.reported_at >= %(first)s",
        {"stations": STATIONS, "first": END - timedelta(days=365)},
    )
    seconds = (END - START).total_seconds()
    t0 = time.perf_counter()
    for lo in range(0, background, chunk):
        hi = min(background, lo + chunk)
        conn.execute(
            "INSERT INTO sightings SELECT t.at, t.at + INTERVAL '8 seconds',"
            "  'st-' || lpad(floor(random() * %(stations)s)::int::text, 3, '0'),"
            "  1 + floor(random() * %(bikes)s)::bigint, 3, -60, 0, 0, i / 250"
            " FROM generate_series(%(lo)s::bigint, %(hi)s::bigint - 1) i,"
            " LATERAL (SELECT %(start)s::timestamptz + make_interval(secs => random() * %(seconds)s + i * 0) AS at) t",
            {"stations": STATIONS, "bikes": BIKES, "lo": lo, "hi": hi, "start": START, "seconds": seconds},
        )
        print(
            f"  {hi:,}/{background:,} background sightings, {hi / (time.perf_counter() - t0):,.0f} rows/s", flush=True
        )


def fill(url: str, background: int) -> None:
    """Generate the county once (a filled database is kept for later runs)."""
    with psycopg.connect(url, autocommit=True) as conn:
        if conn.execute("SELECT count(*) FROM bikes").fetchone() == (BIKES,):
            print("the county is already generated", flush=True)
            return
        t0 = time.perf_counter()
        conn.execute("SELECT bikeguard_ensure_partitions(%s::date, %s::date)", (START.date(), END.date()))
        _registry(conn)
        _thefts_and_alarms(conn)
        print(f"  registry, {2 * THEFTS_PER_YEAR:,} theft reports and alarms in {time.perf_counter() - t0:.0f} s")
        indexes = conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema() AND tablename = 'sightings'"
        ).fetchall()
        for name, _ in indexes:
            conn.execute(f'DROP INDEX "{name}"')
        _sightings(conn, background)
        for name, definition in indexes:
            print(f"  building index {name} …", flush=True)
            # A partitioned table's index reads "ON ONLY sightings": built so, it would cover no partition.
            conn.execute(definition.replace(" ON ONLY ", " ON "))
        # The reports were generated before their sightings: each finds its home station now, as it does when it is
        # filed (migration 0028 does the same, once, for the reports filed before it).
        t1 = time.perf_counter()
        conn.execute(
            "UPDATE theft_reports SET home_station_id = bikeguard_home_station(bike_id, stolen_at, reported_at)"
        )
        print(f"  home stations of {2 * THEFTS_PER_YEAR:,} reports in {time.perf_counter() - t1:.1f} s", flush=True)
        conn.execute("VACUUM ANALYZE")
    print(f"  filled in {time.perf_counter() - t0:.0f} s", flush=True)


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (0-100) by nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


async def _explained_ms(conn: psycopg.AsyncConnection[Any], sql: str, params: dict[str, Any]) -> float:
    cur = await conn.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", params)
    row = await cur.fetchone()
    assert row is not None
    return float(row[0][0]["Execution Time"])


async def measure(url: str, queries: int) -> dict[str, Any]:
    """Time compute() for the year; every fifth time, the floor beside it."""
    period = statistics.Period(FIRST, LAST, ZONE)
    params = {"since": period.since, "until": period.until}
    client: list[float] = []
    trip: list[float] = []
    reports_ms: list[float] = []
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        t = time.perf_counter()
        result = await statistics.compute(conn, period)
        first_ms = (time.perf_counter() - t) * 1000
        for i in range(queries):
            t = time.perf_counter()
            await conn.execute("SELECT 1")
            trip.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            result = await statistics.compute(conn, period)
            client.append((time.perf_counter() - t) * 1000)
            if i % 5 == 0:
                reports_ms.append(await _explained_ms(conn, statistics.REPORTS_SQL, params))
    return {
        "result": result,
        "first": first_ms,
        "client": client,
        "trip": trip,
        "reports": reports_ms,
    }


def main() -> int:
    """Fill, measure and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--background", type=int, default=10_000_000, help="other bikes' sightings over the year")
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--timescaledb", action="store_true", help="store the sightings in a TimescaleDB hypertable")
    parser.add_argument("--database-url", default=None, help="a database (as its owner) instead of the embedded one")
    args = parser.parse_args()
    wanted: Engine = "timescaledb" if args.timescaledb else "postgresql"
    pg = None
    if args.database_url:
        url = args.database_url
    else:
        pg = start_postgres(
            OUT / ("pg-statistics" if wanted == "postgresql" else "pg-statistics-timescaledb"),
            preload=engine_preload(wanted),
        )
        url = pg.url
    try:
        # No compression of the generated year behind the bench's back: the policy's age is set beyond it.
        beyond = (datetime.now(UTC) - START).days + 400
        migrate(url, storage=StoragePolicy(wanted, compress_after_days=beyond))
        with psycopg.connect(url) as conn:
            engine = current_engine(conn)
        assert engine is not None
        fill(url, args.background)
        with psycopg.connect(url) as conn:
            sightings = conn.execute("SELECT count(*) FROM sightings").fetchone()[0]  # type: ignore[index]
            server = conn.execute(
                "SELECT current_setting('server_version'), current_setting('shared_buffers')"
            ).fetchone()
        f = asyncio.run(measure(url, args.queries))
        r = f["result"]
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"PostgreSQL {server[0]}, shared_buffers {server[1]}; load average {load}")  # type: ignore[index]
        print(
            f"county ({engine}): {BIKES:,} bikes, {STATIONS} stations, {sightings:,} sightings;"
            f" year {FIRST} to {LAST}: {r['thefts_reported']:,} thefts, {r['recovered']:,} recovered,"
            f" {r['recoveries_after_alarm']:,} after an alarm, {len(r['by_area'])} home stations,"
            f" last year {r['last_year']['thefts_reported']:,}"
        )
        c = f["client"]
        print(
            f"  compute(): first {f['first']:.0f} ms; then p50 {stats.median(c):.0f} ms,"
            f" p95 {percentile(c, 95):.0f} ms, p99 {percentile(c, 99):.0f} ms over {len(c)} runs"
        )
        print(
            f"  machine floor: round trip p50 {stats.median(f['trip']):.3f} ms; server execution p50 of the per-report"
            f" query {stats.median(f['reports']):.0f} ms, p95 {percentile(f['reports'], 95):.0f} ms"
        )
        print(
            f"statistics ({engine}): p95 {percentile(c, 95):.0f} ms for a year of {r['thefts_reported']:,} theft"
            f" reports, target < {TARGET_MS:.0f} ms",
            flush=True,
        )
        return 0
    finally:
        if pg:
            pg.stop()


if __name__ == "__main__":
    sys.exit(main())
