"""The storage engine under `sightings`: TimescaleDB (a hypertable, compressed and expired by policy jobs, counted per
station and hour by a continuous aggregate) or plain PostgreSQL (daily partitions, dropped and counted by the
backend's maintenance). One schema on both; this module chooses the engine of a new database and sets its policies."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

import psycopg

log = logging.getLogger(__name__)

Engine = Literal["timescaledb", "postgresql"]
EngineChoice = Literal["auto", "timescaledb", "postgresql"]

# How far back each refresh of the hourly passage counts reaches (sightings a station sends later than this, from a
# spool kept longer, are in `sightings` but not in the counts); the newest hours are counted from `sightings` itself.
PASSAGES_HOURLY_LOOKBACK = timedelta(days=3)


class StorageEngineError(Exception):
    """The database server cannot give the storage engine asked for; the message says what to change."""


@dataclass(frozen=True, slots=True)
class StoragePolicy:
    """What the owner chooses when migrating: the engine of a new database, and on TimescaleDB its policies."""

    engine: EngineChoice = "auto"
    compress_after_days: int = 7
    retention_days: int | None = None


def _timescaledb_state(conn: psycopg.Connection) -> tuple[bool, bool, bool]:
    """(installed in the server, preloaded by it, created in this database)."""
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'),"
        " 'timescaledb' = ANY (string_to_array(replace(current_setting('shared_preload_libraries'), ' ', ''), ',')),"
        " EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')"
    ).fetchone()
    assert row is not None
    return bool(row[0]), bool(row[1]), bool(row[2])


def current_engine(conn: psycopg.Connection) -> Engine | None:
    """The engine `sightings` is stored with, None before the migration that makes it."""
    if conn.execute("SELECT to_regclass('sightings')").fetchone() == (None,):
        return None
    partitioned = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_partitioned_table WHERE partrelid = 'sightings'::regclass)"
    ).fetchone()
    return "postgresql" if partitioned and partitioned[0] else "timescaledb"


def choose_engine(conn: psycopg.Connection, wanted: EngineChoice) -> Engine:
    """The engine this database uses: the one it already has, else the one asked for if the server can give it."""
    installed, preloaded, _ = _timescaledb_state(conn)
    existing = current_engine(conn)
    if existing is not None:
        if wanted not in ("auto", existing):
            raise StorageEngineError(
                f"this database already stores sightings with {existing}, and BIKEGUARD_STORAGE_ENGINE asks for"
                f" {wanted}: an engine is chosen once, when the database is made (see docs/operations.md)"
            )
        return existing
    if wanted == "postgresql":
        return "postgresql"
    if installed and preloaded:
        return "timescaledb"
    if wanted == "timescaledb" and not installed:
        raise StorageEngineError(
            "BIKEGUARD_STORAGE_ENGINE=timescaledb, but TimescaleDB is not installed in this PostgreSQL server:"
            " install it (docs/operations.md), or set BIKEGUARD_STORAGE_ENGINE=postgresql"
        )
    if installed:  # wanted "timescaledb" or "auto": the server has it, the operator most likely means to use it
        raise StorageEngineError(
            "TimescaleDB is installed in this PostgreSQL server but not preloaded, so it cannot be used: add"
            " shared_preload_libraries = 'timescaledb' to postgresql.conf and restart the server, or set"
            " BIKEGUARD_STORAGE_ENGINE=postgresql to store sightings in plain daily partitions (the engine is chosen"
            " once, when the database is made)"
        )
    return "postgresql"


def set_policies(conn: psycopg.Connection, policy: StoragePolicy) -> None:
    """On TimescaleDB, (re)set the compression and retention policies of `sightings` to the policy's ages and count
    the hourly passages older than the aggregate's policy reaches; plain PostgreSQL has no policies (the backend's
    maintenance drops old partitions and counts the hours)."""
    if current_engine(conn) != "timescaledb":
        return
    with conn.transaction():
        conn.execute("SELECT remove_compression_policy('sightings', if_exists => true)")
        conn.execute(
            "SELECT add_compression_policy('sightings', compress_after => make_interval(days => %s))",
            (policy.compress_after_days,),
        )
        conn.execute("SELECT remove_retention_policy('sightings', if_exists => true)")
        if policy.retention_days is not None:
            conn.execute(
                "SELECT add_retention_policy('sightings', drop_after => make_interval(days => %s))",
                (policy.retention_days,),
            )
    # The policy job recounts only its window (the last days); every hour before it is counted here, once (a
    # refresh of hours already counted and unchanged since costs nothing). Outside a transaction, as TimescaleDB
    # requires.
    conn.execute(
        "CALL refresh_continuous_aggregate('station_passages_hourly', NULL, now() - %s::interval)",
        (PASSAGES_HOURLY_LOOKBACK,),
    )
    log.info(
        "TimescaleDB policies: sightings compressed after %d days, dropped %s",
        policy.compress_after_days,
        f"after {policy.retention_days} days" if policy.retention_days else "never",
    )
