"""The storage engine under `sightings`, on whichever engine the suite runs (BIKEGUARD_TEST_TIMESCALEDB): the hourly
passage counts match a direct count, retention drops whole old days, compression (TimescaleDB) changes no trajectory,
and a server that has TimescaleDB without preloading it gets a clear refusal or the engine asked for."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

import psycopg
import pytest

from backend import trajectories
from backend.db.migrate import maintain, migrate, migrate_as_owner
from backend.db.storage import StorageEngineError, StoragePolicy, current_engine
from bikeguard.services import start_postgres, timescaledb_installed
from tests import factories
from tests.engine import ENGINE

DAY = datetime(2026, 3, 10, tzinfo=UTC)
COUNTS = (
    "SELECT station_id, bikeguard_bucket(INTERVAL '1 hour', first_seen_at) AS hour, count(*) FROM sightings"
    " GROUP BY 1, 2 ORDER BY 1, 2"
)


def insert(conn: psycopg.Connection, rows: list[tuple[datetime, str, int]]) -> None:
    """Sightings (first seen, station, tag), partitions made first on plain PostgreSQL."""
    days = sorted({at.date() for at, _, _ in rows})
    conn.execute("SELECT bikeguard_ensure_partitions(%s, %s)", (days[0], days[-1]))
    with conn.cursor().copy(
        "COPY sightings (first_seen_at, last_seen_at, station_id, tag_id, beacons, peak_rssi_dbm, antenna, flags,"
        " batch_seq) FROM STDIN"
    ) as copy:
        for at, station, tag in rows:
            copy.write_row((at, at + timedelta(seconds=4), station, tag, 2, -60, 0, 0, 1))


def traffic(start: datetime, hours: int, seed: int) -> list[tuple[datetime, str, int]]:
    """Random passages of 50 tags at 4 stations over `hours` hours from `start`."""
    rng = random.Random(seed)
    return [
        (start + timedelta(seconds=rng.uniform(0, hours * 3600)), f"st-{rng.randrange(4)}", rng.randrange(50))
        for _ in range(hours * 40)
    ]


def hourly(conn: psycopg.Connection) -> list[tuple[str, datetime, int]]:
    return [
        (s, h, int(n)) for s, h, n in conn.execute("SELECT * FROM station_passages_hourly ORDER BY station_id, hour")
    ]


def direct(conn: psycopg.Connection) -> list[tuple[str, datetime, int]]:
    return [(s, h, int(n)) for s, h, n in conn.execute(COUNTS)]


def test_database_is_made_on_the_engine_asked_for(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        assert current_engine(conn) == ENGINE


def test_hourly_passage_counts_match_a_direct_count_before_and_after_they_are_materialised(
    database_url: str, database_owner_url: str
) -> None:
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=40)
    with psycopg.connect(database_url, autocommit=True) as conn:
        insert(conn, traffic(start, 30, seed=1))
        assert hourly(conn) == direct(conn)  # nothing materialised yet: counted from sightings when read
    factories.count_hourly_passages(database_owner_url)
    with psycopg.connect(database_url, autocommit=True) as conn:
        assert hourly(conn) == direct(conn)
        # Hours after the materialised ones are counted from sightings as passages come.
        insert(conn, traffic(start + timedelta(hours=42), 2, seed=2))
        assert hourly(conn) == direct(conn)
        # A late batch for an hour already materialised shows once the hours are counted again.
        insert(conn, [(start + timedelta(hours=3, minutes=7), "st-late", 7)])
    factories.count_hourly_passages(database_owner_url)
    with psycopg.connect(database_url, autocommit=True) as conn:
        assert hourly(conn) == direct(conn)
        assert ("st-late", start + timedelta(hours=3), 1) in hourly(conn)


def test_hourly_counts_cover_history_older_than_the_refresh_window(database_url: str, database_owner_url: str) -> None:
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    with psycopg.connect(database_url, autocommit=True) as conn:
        insert(conn, traffic(now - timedelta(days=10), 3, seed=5) + traffic(now - timedelta(days=1), 3, seed=6))
    # As an upgrade does: migrate (TimescaleDB counts the hours before its policy's window), then the regular
    # refreshes (the policy job there, which recounts only the last days; the maintenance here).
    migrate(database_owner_url, storage=StoragePolicy(ENGINE))
    if ENGINE == "timescaledb":
        with psycopg.connect(database_owner_url, autocommit=True) as conn:
            job = conn.execute(
                "SELECT job_id FROM timescaledb_information.jobs"
                " WHERE proc_name = 'policy_refresh_continuous_aggregate'"
            ).fetchone()
            assert job is not None
            conn.execute("CALL run_job(%s)", (job[0],))
    else:
        maintain(database_url, days_ahead=2, retention_days=None)
    with psycopg.connect(database_url, autocommit=True) as conn:
        assert hourly(conn) == direct(conn)
        assert min(h for _, h, _ in hourly(conn)) == now - timedelta(days=10)


def test_backend_maintenance_keeps_the_hourly_counts_and_the_app_role_cannot_write_them(database_url: str) -> None:
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    with psycopg.connect(database_url, autocommit=True) as conn:
        insert(conn, traffic(now - timedelta(hours=20), 20, seed=3))
    maintain(database_url, days_ahead=2, retention_days=None)
    with psycopg.connect(database_url, autocommit=True) as conn:
        assert hourly(conn) == direct(conn)
        if ENGINE == "postgresql":
            counted_until = conn.execute("SELECT counted_until FROM station_passages_hourly_watermark").fetchone()
            assert counted_until == (now - timedelta(hours=1),)
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("INSERT INTO station_passages_hourly_counted VALUES ('st-forged', now(), 1000)")
        else:
            # The continuous aggregate's materialised rows belong to its owner; the role reads, never writes them.
            with pytest.raises(psycopg.errors.DatabaseError):
                conn.execute("INSERT INTO station_passages_hourly VALUES ('st-forged', now(), 1000)")


def test_retention_drops_whole_days_past_the_age_and_keeps_the_rest(database_url: str, database_owner_url: str) -> None:
    today = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    with psycopg.connect(database_url, autocommit=True) as conn:
        insert(conn, [(today - timedelta(days=40), "st-old", 1), (today - timedelta(days=2), "st-new", 1)])
    if ENGINE == "timescaledb":
        # The policy job, set from the settings when migrating, drops the chunks.
        with psycopg.connect(database_owner_url, autocommit=True) as conn:
            migrate(database_owner_url, storage=StoragePolicy(ENGINE, retention_days=30))
            job = conn.execute(
                "SELECT job_id, config->>'drop_after' FROM timescaledb_information.jobs"
                " WHERE proc_name = 'policy_retention' AND hypertable_name = 'sightings'"
            ).fetchone()
            assert job is not None and job[1] == "30 days"
            conn.execute("CALL run_job(%s)", (job[0],))
    else:
        maintain(database_url, days_ahead=2, retention_days=30)
    with psycopg.connect(database_url, autocommit=True) as conn:
        assert conn.execute("SELECT station_id FROM sightings").fetchall() == [("st-new",)]


def _trajectory(url: str, tag: int) -> trajectories.Trajectory:
    async def read() -> trajectories.Trajectory:
        async with await psycopg.AsyncConnection.connect(url) as conn:
            return await trajectories.trajectory(conn, tag, DAY - timedelta(days=1), DAY + timedelta(days=30))

    return asyncio.run(read())


def passages(t: trajectories.Trajectory) -> int:
    return sum(stop.passages for stop in t.stops)


@pytest.mark.skipif(ENGINE != "timescaledb", reason="plain PostgreSQL does not compress sightings (TimescaleDB does)")
def test_trajectory_over_compressed_and_uncompressed_chunks_is_the_same(
    database_url: str, database_owner_url: str
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        for i in range(4):
            factories.station(conn, f"st-{i}")
        insert(conn, traffic(DAY, 24 * 6, seed=4))
    before = {tag: _trajectory(database_url, tag) for tag in (3, 17, 42)}
    assert all(t.stops for t in before.values())
    with psycopg.connect(database_owner_url, autocommit=True) as conn:
        settings = dict(
            conn.execute(
                "SELECT attname, coalesce(segmentby_column_index, -orderby_column_index)::text ||"
                " CASE WHEN orderby_asc THEN ' asc' WHEN orderby_asc = false THEN ' desc' ELSE '' END"
                " FROM timescaledb_information.compression_settings WHERE hypertable_name = 'sightings'"
            ).fetchall()
        )
        assert settings == {"tag_id": "1", "first_seen_at": "-1 desc"}  # one batch per tag, newest first
        chunks = [
            r[0] for r in conn.execute("SELECT show_chunks('sightings', older_than => %s)", (DAY + timedelta(days=4),))
        ]
        assert len(chunks) == 4
        for chunk in chunks:
            conn.execute("SELECT compress_chunk(%s)", (chunk,))
        compressed = conn.execute(
            "SELECT count(*) FROM timescaledb_information.chunks WHERE hypertable_name = 'sightings' AND is_compressed"
        ).fetchone()
        assert compressed == (4,)
    assert {tag: _trajectory(database_url, tag) for tag in before} == before
    # A late passage still lands in a compressed day and shows in the trajectory.
    with psycopg.connect(database_url, autocommit=True) as conn:
        insert(conn, [(DAY + timedelta(hours=5, seconds=1), "st-1", 42)])
    assert passages(_trajectory(database_url, 42)) == passages(before[42]) + 1


@pytest.mark.skipif(ENGINE != "timescaledb", reason="plain PostgreSQL has no compression policy (TimescaleDB does)")
def test_compression_policy_takes_the_age_from_the_settings(database_owner_url: str) -> None:
    migrate(database_owner_url, storage=StoragePolicy(ENGINE, compress_after_days=3))
    with psycopg.connect(database_owner_url, autocommit=True) as conn:
        ages = conn.execute(
            "SELECT config->>'compress_after' FROM timescaledb_information.jobs"
            " WHERE proc_name = 'policy_compression' AND hypertable_name = 'sightings'"
        ).fetchall()
    assert ages == [("3 days",)]


@pytest.fixture(scope="module")
def server_without_timescaledb_preloaded() -> Iterator[str]:
    """An embedded server of our own that has TimescaleDB installed but does not preload it."""
    if not timescaledb_installed():
        pytest.skip(
            "TimescaleDB is not installed in the embedded PostgreSQL (../shared/timescaledb/install; CI installs it):"
            " the not-preloaded case needs it installed"
        )
    pg = start_postgres()
    try:
        yield pg.url
    finally:
        pg.stop()


def _new_database(server_url: str, name: str) -> str:
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return psycopg.conninfo.make_conninfo(server_url, dbname=name)


def test_timescaledb_installed_but_not_preloaded_is_refused_clearly(server_without_timescaledb_preloaded: str) -> None:
    url = _new_database(server_without_timescaledb_preloaded, "not_preloaded")
    for engine in ("auto", "timescaledb"):
        with pytest.raises(StorageEngineError, match="installed .* but not preloaded.*shared_preload_libraries"):
            migrate(url, storage=StoragePolicy(engine))  # type: ignore[arg-type]
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT to_regclass('sightings')").fetchone() == (None,)  # nothing half made
    settings = factories.settings(url, storage_engine="auto", database_owner_url=url)
    with pytest.raises(StorageEngineError, match="BIKEGUARD_STORAGE_ENGINE=postgresql"):
        migrate_as_owner(settings)


def test_plain_postgresql_can_be_chosen_where_timescaledb_is_not_preloaded(
    server_without_timescaledb_preloaded: str,
) -> None:
    url = _new_database(server_without_timescaledb_preloaded, "plain_chosen")
    migrate(url, storage=StoragePolicy("postgresql"))
    with psycopg.connect(url) as conn:
        assert current_engine(conn) == "postgresql"
        assert conn.execute("SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'").fetchone() == (0,)
    # Chosen once: asking for the other engine later is refused, not half applied.
    with pytest.raises(StorageEngineError, match="already stores sightings with postgresql"):
        migrate(url, storage=StoragePolicy("timescaledb"))


def test_the_other_engine_on_this_server(empty_database: str) -> None:
    if ENGINE == "timescaledb":  # a TimescaleDB server can still hold a database of plain partitions
        migrate(empty_database, storage=StoragePolicy("postgresql"))
        with psycopg.connect(empty_database) as conn:
            assert current_engine(conn) == "postgresql"
    else:  # this server does not preload TimescaleDB: asking for it is refused, saying why
        why = "not preloaded" if timescaledb_installed() else "not installed"
        with pytest.raises(StorageEngineError, match=why):
            migrate(empty_database, storage=StoragePolicy("timescaledb"))


def test_storage_maintenance_run_by_two_backends_at_once_is_refused_to_neither(database_url: str) -> None:
    """Every backend makes the coming days' partitions now and then, and a migration makes them too: two at the same
    moment each took a lock on the default partition that the other then waited for, and PostgreSQL refused one of
    them as a deadlock (a CI run saw it). Two callers making days in turn, as fast as they can."""
    first = datetime.now(UTC).date() - timedelta(days=400)
    barrier = threading.Barrier(2)
    refused: list[BaseException] = []

    def make(days: list[date]) -> None:
        try:
            with psycopg.connect(database_url, autocommit=True) as conn:
                barrier.wait(10)
                for day in days:
                    conn.execute("SELECT bikeguard_ensure_partitions(%s, %s)", (day, day))
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            refused.append(exc)

    days = [first + timedelta(days=i) for i in range(60)]
    callers = [threading.Thread(target=make, args=(days[i::2],)) for i in range(2)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join(60)
    assert refused == []
    if ENGINE == "postgresql":
        with psycopg.connect(database_url) as conn:
            made = conn.execute(
                "SELECT count(*) FROM pg_inherits WHERE inhparent = 'sightings'::regclass"
                " AND inhrelid::regclass::text BETWEEN %s AND %s",
                (f"sightings_{days[0]:%Y%m%d}", f"sightings_{days[-1]:%Y%m%d}"),
            ).fetchone()
        assert made == (len(days),)
