"""Trajectory benchmark: one bike's 7-day trajectory from a table of at least 50 million sightings.

Fills `sightings` (once; kept for later runs in bench/out/ with the embedded server) with 100,000 tags
passing 500 stations over 8 days, then times `backend.trajectories.trajectory()` — the query and the
stop/leg computation the API uses — for random tags over a 7-day window. Beside it, the machine's floor
measured in the same run: a bare round trip (SELECT 1) and the server's own execution time of the same
query (EXPLAIN ANALYZE). Last line:

    trajectory: p95 <X> ms over <N> sightings

Run: python bench/trajectory.py [--rows 50000000] [--queries 300] [--database-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

from backend import trajectories
from backend.db.migrate import migrate
from bikeguard.services import start_postgres

TAGS = 100_000
STATIONS = 500
DAYS = 8
START = datetime(2026, 1, 5, tzinfo=UTC)
OUT = Path(__file__).resolve().parent / "out"


def fill(url: str, rows: int, chunk: int = 5_000_000) -> None:
    """Generate the sightings server-side, in chunks, with progress; indexes are built afterwards."""
    with psycopg.connect(url, autocommit=True) as conn:
        have = conn.execute("SELECT count(*) FROM sightings").fetchone()[0]  # type: ignore[index]
        if have >= rows:
            print(f"sightings already holds {have:,} rows", flush=True)
            return
        conn.execute("TRUNCATE sightings")
        conn.execute(
            "SELECT bikeguard_ensure_partitions(%s::date, %s::date)",
            (START.date(), (START + timedelta(days=DAYS)).date()),
        )
        conn.execute(
            "INSERT INTO stations (station_id, name, lat, lon)"
            " SELECT 'st-' || lpad(s::text, 3, '0'), 'Station ' || s,"
            "  30.20 + (s / 25) * 0.004 + random() * 0.001, 120.10 + (s %% 25) * 0.005 + random() * 0.001"
            " FROM generate_series(0, %s - 1) s ON CONFLICT DO NOTHING",
            (STATIONS,),
        )
        conn.execute("DROP INDEX IF EXISTS sightings_tag_time, sightings_station_time")
        per_tag_step_s = DAYS * 86400 / (rows / TAGS)
        t0 = time.perf_counter()
        for lo in range(0, rows, chunk):
            hi = min(rows, lo + chunk)
            conn.execute(
                "INSERT INTO sightings"
                " SELECT t.at, t.at + make_interval(secs => 2 + random() * 20),"
                "  'st-' || lpad((floor(random() * %(stations)s))::int::text, 3, '0'),"
                "  (i %% %(tags)s) + 1, 1 + (random() * 10)::int, -95 + (random() * 55)::int,"
                "  (random() > 0.5)::int, 0, i / 250"
                " FROM generate_series(%(lo)s::bigint, %(hi)s::bigint - 1) i,"
                " LATERAL (SELECT %(start)s::timestamptz"
                "   + make_interval(secs => (i / %(tags)s) * %(step)s + random() * %(step)s) AS at) t",
                {"stations": STATIONS, "tags": TAGS, "lo": lo, "hi": hi, "start": START, "step": per_tag_step_s},
            )
            done = hi
            rate = done / (time.perf_counter() - t0)
            print(f"  {done:,}/{rows:,} rows ({done / rows:.0%}), {rate:,.0f} rows/s", flush=True)
        print("  building indexes …", flush=True)
        conn.execute("CREATE INDEX sightings_tag_time ON sightings (tag_id, first_seen_at DESC)")
        conn.execute("CREATE INDEX sightings_station_time ON sightings (station_id, first_seen_at DESC)")
        conn.execute("VACUUM ANALYZE sightings")
        print(f"  filled in {time.perf_counter() - t0:.0f} s", flush=True)


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (0-100) by nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


async def measure(url: str, queries: int) -> tuple[list[float], list[float], list[float], int]:
    """Client-side trajectory latencies, round-trip floor and server execution times (ms); points per query."""
    rng = random.Random(7)
    client, floor, server = [], [], []
    points = 0
    async with await psycopg.AsyncConnection.connect(url) as conn:
        for _ in range(20):  # warm the connection and the catalogue
            await conn.execute("SELECT 1")
        for i in range(queries):
            tag = rng.randrange(1, TAGS + 1)
            since = START + timedelta(hours=rng.uniform(0, 24))
            until = since + timedelta(days=7)
            t = time.perf_counter()
            await conn.execute("SELECT 1")
            floor.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            traj = await trajectories.trajectory(conn, tag, since, until)
            client.append((time.perf_counter() - t) * 1000)
            points += sum(s.passages for s in traj.stops)
            if i % 10 == 0:
                cur = await conn.execute(
                    "EXPLAIN (ANALYZE, FORMAT JSON) SELECT x.station_id, s.name, s.lat, s.lon, x.first_seen_at,"
                    " x.last_seen_at FROM sightings x JOIN stations s USING (station_id)"
                    " WHERE x.tag_id = %s AND x.first_seen_at >= %s AND x.first_seen_at < %s"
                    " ORDER BY x.first_seen_at",
                    (tag, since, until),
                )
                plan = (await cur.fetchone())[0][0]  # type: ignore[index]
                server.append(plan["Execution Time"])
    return client, floor, server, points // queries


def main() -> int:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=50_000_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--database-url", default=None, help="a database to fill instead of the embedded one")
    args = parser.parse_args()
    pg = None
    if args.database_url:
        url = args.database_url
    else:
        OUT.mkdir(exist_ok=True)
        pg = start_postgres(OUT / "pg-trajectory")
        url = pg.url
    try:
        migrate(url)
        fill(url, args.rows)
        with psycopg.connect(url) as conn:
            total = conn.execute("SELECT count(*) FROM sightings").fetchone()[0]  # type: ignore[index]
            size = conn.execute(
                "SELECT pg_size_pretty(sum(pg_total_relation_size(c.oid))) FROM pg_inherits i"
                " JOIN pg_class c ON c.oid = i.inhrelid"
                " WHERE i.inhparent = 'sightings'::regclass"
            ).fetchone()[0]  # type: ignore[index]
        client, floor, server, points = asyncio.run(measure(url, args.queries))
        print(
            f"table: {total:,} sightings ({size}); {args.queries} trajectories of random tags over 7 days, "
            f"{points} passages each on average"
        )
        print(
            f"client p50 {statistics.median(client):.2f} ms, p95 {percentile(client, 95):.2f} ms, "
            f"p99 {percentile(client, 99):.2f} ms"
        )
        print(
            f"machine floor: round trip p50 {statistics.median(floor):.3f} ms; "
            f"server execution p50 {statistics.median(server):.2f} ms, p95 {percentile(server, 95):.2f} ms"
        )
        print(f"trajectory: p95 {percentile(client, 95):.1f} ms over {total:,} sightings")
        return 0
    finally:
        if pg:
            pg.stop()


if __name__ == "__main__":
    sys.exit(main())
