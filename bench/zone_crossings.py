"""Zone crossings on the alarm hot path: what judging stolen chips' passages against zone borders adds to a round of
the ingest's on-commit alarm detection (backend.alarms.engine.raise_alarms with backend.zones.crossings).

A fresh database (the embedded PostgreSQL) with a grid of stations, registered chips of which some are stolen, and
zones of many corners over the town. Each round is `--passages` passages (a flush's worth) of which `--stolen` are of
stolen chips, each at a station next to its previous one (200 m on), judged and committed as the ingest does; rounds
alternate without zones (the machine's own cost of a round: the reference) and with them, and rounds without any
stolen chip are timed too.

Last line:  zone crossings: round p50 <X> ms with <Z> zones vs <Y> ms without (<D> ms more); per stolen passage <U> µs

Run: python bench/zone_crossings.py [--rounds 200] [--zones 50] [--passages 1000] [--stolen 20]
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
from ingest import register_chips  # bench/ingest.py, beside this
from psycopg.types.json import Jsonb

from backend.alarms import engine
from backend.alarms.evidence import Committed, Passages
from backend.db.migrate import migrate
from backend.db.storage import StoragePolicy
from backend.zones.crossings import ZoneCache
from bikeguard.services import default_engine, engine_preload, start_postgres

LAT0, LON0 = 30.20, 120.10
STEP_LAT, STEP_LON = 0.0018, 0.0021  # about 200 m


def _setup(url: str, stations: int, chips: int, stolen: int, zones: int, corners: int) -> list[int]:
    """Stations on a grid 200 m apart, chips on bikes (the first `stolen` stolen), zones as many-cornered rings."""
    side = math.isqrt(stations)
    tags = list(range(1, chips + 1))
    register_chips(url, tags)  # bench/ingest.py: each chip on a bike of its own owner
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO stations (station_id, name, lat, lon) VALUES (%s, %s, %s, %s)",
            [
                (f"st-{i}", f"Station {i}", LAT0 + (i // side) * STEP_LAT, LON0 + (i % side) * STEP_LON)
                for i in range(stations)
            ],
        )
        cur.execute(
            "INSERT INTO theft_reports (bike_id, stolen_at) SELECT bike_id, now() - interval '2 hours'"
            " FROM chips WHERE tag_id <= %s",
            (stolen,),
        )
        span_lat, span_lon = (side - 1) * STEP_LAT, (side - 1) * STEP_LON
        rng = random.Random(5)
        for z in range(zones):
            clat, clon = LAT0 + rng.random() * span_lat, LON0 + rng.random() * span_lon
            r = 0.002 + rng.random() * 0.004
            ring = [
                [clon + r * 1.2 * math.cos(2 * math.pi * k / corners), clat + r * math.sin(2 * math.pi * k / corners)]
                for k in range(corners)
            ]
            ring.append(ring[0])
            cur.execute(
                "INSERT INTO zones (name, geometry, created_by, updated_by) VALUES (%s, %s, 'bench', 'bench')",
                (f"Zone {z}", Jsonb({"type": "Polygon", "coordinates": [ring]})),
            )
        cur.execute("UPDATE zones_revision SET revision = revision + 1")
    return tags


def _round(
    tags: list[int], stolen: int, passages: int, stations: int, at: datetime, rng: random.Random, where: dict[int, int]
) -> Committed:
    """A flush's passages: each stolen chip one station further along the grid (`where` holds its station),
    the others anywhere."""
    side = math.isqrt(stations)
    moved = []
    for tag in range(1, stolen + 1):
        i = where.setdefault(tag, rng.randrange(side * side))
        row, col = divmod(i, side)
        row, col = rng.choice([(row + 1, col), (row - 1, col), (row, col + 1), (row, col - 1)])
        where[tag] = min(max(row, 0), side - 1) * side + min(max(col, 0), side - 1)
        moved.append(where[tag])
    others = rng.sample(tags[len(where) :], passages - stolen)
    p = Passages(
        list(range(1, stolen + 1)) + others,
        [f"st-{i}" for i in moved] + [f"st-{rng.randrange(side * side)}" for _ in others],
        [at - timedelta(seconds=5)] * passages,
        [at] * passages,
        [0] * passages,
    )
    return Committed(passages=p)


def main() -> None:
    """Time rounds with and without zones; print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--zones", type=int, default=50)
    parser.add_argument("--corners", type=int, default=64)
    parser.add_argument("--stations", type=int, default=400)
    parser.add_argument("--chips", type=int, default=5000)
    parser.add_argument("--passages", type=int, default=1000)
    parser.add_argument("--stolen", type=int, default=20)
    args = parser.parse_args()
    kind = default_engine()
    pg = start_postgres(preload=engine_preload(kind))
    try:
        name = f"bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        url = psycopg.conninfo.make_conninfo(pg.url, dbname=name)
        migrate(url, storage=StoragePolicy(kind))
        tags = _setup(url, args.stations, args.chips, args.stolen, args.zones, args.corners)
        rng = random.Random(7)
        cache = ZoneCache()
        where: dict[int, int] = {}
        times: dict[str, list[float]] = {"without": [], "with": [], "no stolen": []}
        at = datetime.now(UTC) - timedelta(minutes=100)
        with psycopg.connect(url, autocommit=True) as conn:
            for i in range(args.rounds * 2 + args.rounds // 4):
                at += timedelta(seconds=10)  # each stolen chip's next passage, elsewhere
                label = ("without", "with")[i % 2] if i < args.rounds * 2 else "no stolen"
                committed = _round(
                    tags, 0 if label == "no stolen" else args.stolen, args.passages, args.stations, at, rng, where
                )
                zones = None if label == "without" else cache
                t = time.perf_counter()
                with conn.transaction():
                    engine.raise_alarms(conn, committed, engine.ON_COMMIT, zones=zones)
                times[label].append(time.perf_counter() - t)
            crossings = conn.execute("SELECT count(*) FROM zone_crossings").fetchone()[0]  # type: ignore[index]
        p50 = {k: statistics.median(v) * 1000 for k, v in times.items()}
        extra = p50["with"] - p50["without"]
        print(
            f"engine {kind}; {args.stations} stations, {args.chips} chips ({args.stolen} stolen), "
            f"{args.zones} zones of {args.corners} corners; {args.passages} passages a round;"
            f" {crossings} crossings recorded"
        )
        print(f"round without stolen chips, zones cached: p50 {p50['no stolen']:.2f} ms")
        print(
            f"zone crossings: round p50 {p50['with']:.2f} ms with {args.zones} zones"
            f" vs {p50['without']:.2f} ms without ({extra:.2f} ms more);"
            f" per stolen passage {extra * 1000 / args.stolen:.0f} µs"
        )
    finally:
        pg.stop()


if __name__ == "__main__":
    main()
