"""Trajectory benchmark: one bike's 7-day trajectory from a table of at least 50 million sightings.

Fills `sightings` (once; kept for later runs in bench/out/, one embedded server per storage engine) with 100,000
tags passing 500 stations over 8 days, in arrival order (each block of time holds every tag, so one tag's passages
lie on as many pages as it has passages), then times `backend.trajectories.trajectory()` — the query and the
stop/leg computation the API uses — for random tags over a 7-day window. Beside it, the machine's floor measured in
the same run: a bare round trip (SELECT 1) and the server's own planning and execution time of the same query for
another random tag (EXPLAIN ANALYZE, with the pages it read and the heap fetches it made). Last line, per state:

    trajectory (<engine>[, compressed]): p95 <X> ms over <N> sightings

--timescaledb stores the sightings in a TimescaleDB hypertable (the embedded server with TimescaleDB preloaded):
measured as filled, then with every chunk but the last day's compressed (as the compression policy would once they
are old enough), and measured again; a later run fills it again. Sizes: the partitions' total on plain PostgreSQL;
on TimescaleDB the hypertable's (hypertable_detailed_size) with the compressed chunks before and after compression.

Run: python bench/trajectory.py [--timescaledb [--compressed-only]] [--rows 50000000] [--queries 300]
                                [--database-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from backend import trajectories
from backend.db.migrate import migrate
from backend.db.storage import Engine, StoragePolicy, current_engine
from bikeguard.services import engine_preload, start_postgres

TAGS = 100_000
STATIONS = 500
DAYS = 8
START = datetime(2026, 1, 5, tzinfo=UTC)
OUT = Path(__file__).resolve().parent / "out"


def fill(url: str, engine: Engine, rows: int, keep_compressed: bool = False, chunk: int = 5_000_000) -> None:
    """Generate the sightings server-side, in chunks, with progress; the table's indexes are built afterwards. A
    hypertable an earlier run compressed is filled again: decompressing its chunks, which maintains every index row
    by row, took longer here (over 3 minutes a day's chunk) than a new fill; unless keep_compressed."""
    with psycopg.connect(url, autocommit=True) as conn:
        have = conn.execute("SELECT count(*) FROM sightings").fetchone()[0]  # type: ignore[index]
        compressed = engine == "timescaledb" and conn.execute(
            "SELECT number_compressed_chunks > 0 FROM hypertable_compression_stats('sightings')"
        ).fetchone() == (True,)
        if have >= rows and (keep_compressed or not compressed):
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
        # Whatever indexes the migrations gave the table, dropped for the load and built again the same way.
        indexes = conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema() AND tablename = 'sightings'"
        ).fetchall()
        for name, _ in indexes:
            conn.execute(f'DROP INDEX "{name}"')
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
            rate = hi / (time.perf_counter() - t0)
            print(f"  {hi:,}/{rows:,} rows ({hi / rows:.0%}), {rate:,.0f} rows/s", flush=True)
        for name, definition in indexes:
            print(f"  building index {name} …", flush=True)
            conn.execute(definition)
        conn.execute("VACUUM ANALYZE sightings")
        print(f"  filled in {time.perf_counter() - t0:.0f} s", flush=True)


def compress_older_chunks(url: str) -> None:
    """Compress every chunk before the generated data's last day, with progress, then analyze the table."""
    with psycopg.connect(url, autocommit=True) as conn:
        chunks = [
            r[0]
            for r in conn.execute(
                "SELECT format('%%I.%%I', chunk_schema, chunk_name) FROM timescaledb_information.chunks"
                " WHERE hypertable_name = 'sightings' AND NOT is_compressed AND range_end <= %s ORDER BY range_start",
                (START + timedelta(days=DAYS - 1),),
            )
        ]
        t0 = time.perf_counter()
        for n, chunk in enumerate(chunks, 1):
            conn.execute("SELECT compress_chunk(%s::regclass)", (chunk,))
            print(f"  compressed {n}/{len(chunks)} chunks ({time.perf_counter() - t0:.0f} s)", flush=True)
        conn.execute("ANALYZE sightings")


def sizes(conn: psycopg.Connection, engine: Engine) -> str:
    """The table's size on disk, indexes included: every partition on plain PostgreSQL; on TimescaleDB the whole
    hypertable, and its compressed chunks' size before and after compression."""
    if engine == "postgresql":
        row = conn.execute(
            "SELECT pg_size_pretty(sum(pg_total_relation_size(relid))), count(*)"
            " FROM pg_partition_tree('sightings') WHERE isleaf"
        ).fetchone()
        assert row is not None
        return f"{row[0]} in {row[1]} partitions"
    total = conn.execute(
        "SELECT pg_size_pretty(total_bytes), pg_size_pretty(index_bytes) FROM hypertable_detailed_size('sightings')"
    ).fetchone()
    stats = conn.execute(
        "SELECT total_chunks, number_compressed_chunks, pg_size_pretty(before_compression_total_bytes),"
        " pg_size_pretty(after_compression_total_bytes) FROM hypertable_compression_stats('sightings')"
    ).fetchone()
    assert total is not None and stats is not None
    compressed = (
        f"; {stats[1]} of {stats[0]} chunks compressed: {stats[2]} before, {stats[3]} after"
        if stats[1]
        else f"; none of {stats[0]} chunks compressed"
    )
    return f"{total[0]} with {total[1]} of indexes{compressed}"


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (0-100) by nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


@dataclass
class Figures:
    """What one measurement found, in milliseconds unless named otherwise."""

    client: list[float] = field(default_factory=list)
    floor: list[float] = field(default_factory=list)
    planning: list[float] = field(default_factory=list)
    execution: list[float] = field(default_factory=list)
    build: list[float] = field(default_factory=list)
    pages: list[int] = field(default_factory=list)
    heap_fetches: list[int] = field(default_factory=list)
    scans: Counter[str] = field(default_factory=Counter)
    passages: int = 0
    plans: str = ""


def _walk(plan: dict[str, Any], figures: Figures) -> int:
    """Table pages visited under a plan node (index-only scans' heap fetches, bitmap scans' heap blocks); scan kinds
    counted."""
    if "Relation Name" in plan:
        figures.scans[plan["Node Type"]] += 1
    visited = int(plan.get("Heap Fetches", 0) + plan.get("Exact Heap Blocks", 0) + plan.get("Lossy Heap Blocks", 0))
    return visited + sum(_walk(child, figures) for child in plan.get("Plans", []))


async def measure(url: str, queries: int) -> Figures:
    """Time `trajectory()` for random tags; every tenth query, the floor for another tag beside it."""
    rng = random.Random(7)
    figures = Figures()
    passages = 0
    async with await psycopg.AsyncConnection.connect(url) as conn:
        for _ in range(20):  # warm the connection and the catalogue
            await conn.execute("SELECT 1")
        for i in range(queries):
            tag = rng.randrange(1, TAGS + 1)
            since = START + timedelta(hours=rng.uniform(0, 24))
            until = since + timedelta(days=7)
            t = time.perf_counter()
            await conn.execute("SELECT 1")
            figures.floor.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            traj = await trajectories.trajectory(conn, tag, since, until)
            figures.client.append((time.perf_counter() - t) * 1000)
            passages += sum(s.passages for s in traj.stops)
            if i % 10 == 0:
                await _floor(conn, rng.randrange(1, TAGS + 1), since, until, figures)
        cur = await conn.execute(
            "SELECT coalesce(sum(generic_plans), 0), coalesce(sum(custom_plans), 0) FROM pg_prepared_statements"
        )
        generic, custom = await cur.fetchone()  # type: ignore[misc]
        figures.plans = f"{generic} generic and {custom} custom plans of the prepared statements"
    figures.passages = passages // max(1, queries)
    return figures


async def _floor(conn: psycopg.AsyncConnection[Any], tag: int, since: datetime, until: datetime, f: Figures) -> None:
    """The server's own time for the trajectory query of a tag not read before (EXPLAIN ANALYZE), and the Python
    stop/leg computation over its passages."""
    params = (tag, since, until, 20_000)
    cur = await conn.execute(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {trajectories.TRAJECTORY_SQL}", params)
    explained = (await cur.fetchone())[0][0]  # type: ignore[index]
    f.planning.append(explained["Planning Time"])
    f.execution.append(explained["Execution Time"])
    root = explained["Plan"]  # its buffer counts include every node's under it
    f.pages.append(root.get("Shared Hit Blocks", 0) + root.get("Shared Read Blocks", 0))
    f.heap_fetches.append(_walk(root, f))
    rows = await (await conn.execute(trajectories.TRAJECTORY_SQL, params)).fetchall()
    t = time.perf_counter()
    trajectories.build(tag, rows)
    f.build.append((time.perf_counter() - t) * 1000)


def report(label: str, total: int, size: str, queries: int, f: Figures) -> None:
    """Print one measurement's figures, its floor beside it."""
    print(
        f"table ({label}): {total:,} sightings, {size}; {queries} trajectories of random tags over 7 days,"
        f" {f.passages} passages each on average"
    )
    print(
        f"  client p50 {statistics.median(f.client):.2f} ms, p95 {percentile(f.client, 95):.2f} ms,"
        f" p99 {percentile(f.client, 99):.2f} ms"
    )
    print(
        f"  machine floor: round trip p50 {statistics.median(f.floor):.3f} ms; server planning p50"
        f" {statistics.median(f.planning):.2f} ms, execution p50 {statistics.median(f.execution):.2f} ms,"
        f" p95 {percentile(f.execution, 95):.2f} ms"
    )
    scans = ", ".join(f"{n} {kind}" for kind, n in f.scans.most_common())
    print(
        f"  per query: {statistics.median(f.pages):.0f} pages read, {statistics.median(f.heap_fetches):.0f} heap"
        f" pages visited (medians); stops and legs in Python p50 {statistics.median(f.build):.2f} ms; scans: {scans};"
        f" {f.plans}"
    )
    print(f"trajectory ({label}): p95 {percentile(f.client, 95):.1f} ms over {total:,} sightings", flush=True)


def run(url: str, engine: Engine, rows: int, queries: int, compressed_only: bool = False) -> None:
    """Fill, measure and print; on TimescaleDB measure uncompressed (unless compressed_only), then compress the
    older chunks and measure again."""
    fill(url, engine, rows, keep_compressed=compressed_only)
    states = [(engine, False)] if engine == "postgresql" else [(engine, False), (f"{engine}, compressed", True)]
    if compressed_only:
        states = states[1:]
    for label, compressed in states:
        if compressed:
            compress_older_chunks(url)
        with psycopg.connect(url) as conn:
            total = conn.execute("SELECT count(*) FROM sightings").fetchone()[0]  # type: ignore[index]
            size = sizes(conn, engine)
            server = conn.execute(
                "SELECT current_setting('server_version'), current_setting('shared_buffers')"
            ).fetchone()
        figures = asyncio.run(measure(url, queries))
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"PostgreSQL {server[0]}, shared_buffers {server[1]}; load average {load}")  # type: ignore[index]
        report(label, total, size, queries, figures)


def main() -> int:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=50_000_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--timescaledb", action="store_true", help="store the sightings in a TimescaleDB hypertable")
    parser.add_argument(
        "--compressed-only",
        action="store_true",
        help="with --timescaledb: measure only with the older chunks compressed, keeping a table already compressed",
    )
    parser.add_argument("--database-url", default=None, help="a database to fill instead of the embedded one")
    args = parser.parse_args()
    wanted: Engine = "timescaledb" if args.timescaledb else "postgresql"
    pg = None
    if args.database_url:
        url = args.database_url
    else:
        # One data directory per engine, each kept filled for later runs.
        pg = start_postgres(
            OUT / ("pg-trajectory" if wanted == "postgresql" else "pg-trajectory-timescaledb"),
            preload=engine_preload(wanted),
        )
        url = pg.url
    try:
        # The bench compresses the chunks itself, between its two measurements: TimescaleDB's compression policy is
        # set to an age beyond the generated days (months old), or its job, started at once by each migration's
        # new policy, would compress them behind the bench's back.
        beyond = (datetime.now(UTC) - START).days + DAYS
        migrate(url, storage=StoragePolicy(wanted, compress_after_days=beyond))
        with psycopg.connect(url) as conn:
            engine = current_engine(conn)
        assert engine is not None
        run(url, engine, args.rows, args.queries, args.compressed_only)
        return 0
    finally:
        if pg:
            pg.stop()


if __name__ == "__main__":
    sys.exit(main())
