"""Migration 0026 (mobile readers) on a database that already holds sightings: on TimescaleDB with its older chunks
compressed, on plain PostgreSQL with its partitions; the old rows read back with no reader position, new rows take
one, and a trajectory through compressed and uncompressed chunks places a mobile reader's passage at the reader."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import psycopg
import pytest

from backend import trajectories
from backend.db import migrate as migrations
from tests import factories
from tests.backend.test_storage_engine import DAY, insert, traffic
from tests.conftest import STORAGE
from tests.engine import ENGINE

MOBILE_MIGRATION = "0026_mobile_readers"


def test_0026_applies_over_existing_and_compressed_sightings(
    empty_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    everything = migrations.migration_files()
    before = [(v, sql) for v, sql in everything if v < MOBILE_MIGRATION]
    monkeypatch.setattr(migrations, "migration_files", lambda: before)
    migrations.migrate(empty_database, storage=STORAGE)
    with psycopg.connect(empty_database, autocommit=True) as conn:
        for i in range(4):
            factories.station(conn, f"st-{i}")
        insert(conn, traffic(DAY, 24 * 4, seed=7))
        if ENGINE == "timescaledb":
            chunks = [
                r[0]
                for r in conn.execute("SELECT show_chunks('sightings', older_than => %s)", (DAY + timedelta(days=3),))
            ]
            assert chunks
            for chunk in chunks:
                # (the compression policy may have begun on these old days already)
                conn.execute("SELECT compress_chunk(%s, if_not_compressed => true)", (chunk,))
            compressed = conn.execute(
                "SELECT count(*) FROM timescaledb_information.chunks WHERE hypertable_name = 'sightings'"
                " AND is_compressed"
            ).fetchone()
            assert compressed is not None and compressed[0] >= len(chunks)
        stored = conn.execute("SELECT count(*) FROM sightings").fetchone()
    monkeypatch.setattr(migrations, "migration_files", lambda: everything)
    assert MOBILE_MIGRATION in migrations.migrate(empty_database, storage=STORAGE)

    with psycopg.connect(empty_database, autocommit=True) as conn:
        # The old rows, compressed or not, are all there, without a reader position.
        assert conn.execute("SELECT count(*) FROM sightings WHERE reader_lat IS NULL").fetchone() == stored
        conn.execute("UPDATE stations SET mobile = true WHERE station_id = 'st-3'")
        at = DAY + timedelta(days=4, hours=1)  # after all the traffic: the last stop
        conn.execute(
            "INSERT INTO sightings (first_seen_at, last_seen_at, station_id, tag_id, beacons, peak_rssi_dbm, antenna,"
            " flags, batch_seq, reader_lat, reader_lon, reader_fix_at)"
            " VALUES (%s, %s, 'st-3', 17, 3, -60, 0, 0, 2, 30.5, 120.5, %s)",
            (at, at + timedelta(seconds=5), at),
        )
        assert conn.execute("SELECT mobile, position_at FROM stations WHERE station_id = 'st-0'").fetchone() == (
            False,
            None,
        )

    async def trajectory() -> trajectories.Trajectory:
        async with await psycopg.AsyncConnection.connect(empty_database) as conn:
            return await trajectories.trajectory(conn, 17, DAY - timedelta(days=1), DAY + timedelta(days=5))

    t = asyncio.run(trajectory())
    assert (t.stops[-1].station_id, t.stops[-1].lat, t.stops[-1].lon) == ("st-3", 30.5, 120.5)
    assert len(t.stops) > 2  # the passages before, from the compressed chunks too
