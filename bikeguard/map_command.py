"""`bikeguard map coverage|trajectory`: standalone HTML maps from the database (or a simulated town)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
from pydantic import AwareDatetime, TypeAdapter

from backend import coverage, stations, trajectories
from maps.assets import standalone_html
from protocol.ids import parse_tag
from protocol.messages import utcnow

_WHEN = TypeAdapter(AwareDatetime)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bikeguard map", description="write a standalone map as one HTML file")
    parser.add_argument("--database-url", help="default: BIKEGUARD_DATABASE_URL")
    parser.add_argument("--tile-url", help="tile server for a base map (default: roads only, works offline)")
    sub = parser.add_subparsers(dest="kind", required=True)
    cov = sub.add_parser("coverage", help="road coverage of the stations, gaps and suggested next sites")
    cov.add_argument("--out", type=Path, default=Path("coverage.html"))
    cov.add_argument("--range-m", type=float, default=coverage.DEFAULT_RANGE_M, help="read range of a station")
    cov.add_argument("--suggest", type=int, default=5, help="how many next sites to suggest")
    cov.add_argument("--town-seed", type=int, help="use a simulated town instead of the database")
    traj = sub.add_parser("trajectory", help="one chip's passages over a time range, numbered and replayable")
    traj.add_argument("--tag", required=True, help="the chip id, 8 hex digits")
    traj.add_argument("--since", help="ISO 8601 with a zone (default: 24 h before --until)")
    traj.add_argument("--until", help="ISO 8601 with a zone (default: now)")
    traj.add_argument("--out", type=Path, default=None, help="default: trajectory-<tag>.html")
    return parser


async def _from_database(url: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        return await stations.list_stations(conn), await stations.roads_geojson(conn)


def _coverage(args: argparse.Namespace, url: str | None) -> str:
    from maps.coverage import build_coverage_map

    if args.town_seed is not None:
        from bikeguard.demo import town_roads_geojson
        from firmware_sim.town import Town

        town = Town.generate(args.town_seed)
        sts: list[dict[str, Any]] = [
            {"station_id": s.station_id, "name": s.name, "lat": s.lat, "lon": s.lon, "state": "online"}
            for s in town.stations
        ]
        roads = town_roads_geojson(town)
    else:
        if not url:
            raise SystemExit("give --database-url (or BIKEGUARD_DATABASE_URL), or --town-seed")
        sts, roads = asyncio.run(_from_database(url))
    cov = coverage.compute(
        [coverage.StationSite(s["station_id"], s["lat"], s["lon"], range_m=args.range_m) for s in sts],
        coverage.roads_from_geojson(roads),
        suggest=args.suggest,
        new_range_m=args.range_m,
    )
    args.out.write_text(standalone_html(build_coverage_map(cov, sts, roads, tile_url=args.tile_url)), encoding="utf-8")
    lines = [
        f"road covered: {cov.share:.1%} of {cov.road_m / 1000:.1f} km; "
        f"{(cov.road_m - cov.covered_m) / 1000:.1f} km not heard by any station"
    ]
    lines += [
        f"  suggested site {i}: {s.lat:.6f}, {s.lon:.6f} (+{s.gain_m:.0f} m of road)"
        for i, s in enumerate(cov.suggestions, 1)
    ]
    return "\n".join(lines)


def _trajectory(args: argparse.Namespace, url: str | None) -> str:
    from maps.trajectory import build_trajectory_map

    if not url:
        raise SystemExit("give --database-url (or BIKEGUARD_DATABASE_URL)")
    tag = parse_tag(args.tag.upper())
    until = _WHEN.validate_python(args.until) if args.until else utcnow()
    since = _WHEN.validate_python(args.since) if args.since else until - timedelta(hours=24)

    async def load() -> tuple[trajectories.Trajectory, list[dict[str, Any]], dict[str, Any]]:
        async with await psycopg.AsyncConnection.connect(url) as conn:
            return (
                await trajectories.trajectory(conn, tag, since, until),
                await stations.list_stations(conn),
                await stations.roads_geojson(conn),
            )

    traj, sts, roads = asyncio.run(load())
    summary = trajectories.to_summary(traj)
    out = args.out or Path(f"trajectory-{args.tag.upper()}.html")
    out.write_text(
        standalone_html(build_trajectory_map(summary, roads, stations=sts, tile_url=args.tile_url)), encoding="utf-8"
    )
    args.out = out
    return f"{len(traj.stops)} stops, {sum(s.passages for s in traj.stops)} passages from {since} to {until}"


def main(argv: list[str]) -> int:
    """Entry point of `bikeguard map`."""
    import os

    args = _parser().parse_args(argv)
    url = args.database_url or os.environ.get("BIKEGUARD_DATABASE_URL")
    summary = _coverage(args, url) if args.kind == "coverage" else _trajectory(args, url)
    print(summary)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
