"""Schema migrations: plain SQL files applied in order, each once, recorded in schema_migrations."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from importlib import resources

import psycopg

log = logging.getLogger(__name__)

# Any fixed number works; it keeps two workers starting together from migrating at once.
_LOCK_ID = 0x0B1CE6A4D


def migration_files() -> list[tuple[str, str]]:
    """(version, sql) for every migration shipped with the backend, in order."""
    folder = resources.files("backend.db") / "migrations"
    files = sorted((p for p in folder.iterdir() if p.name.endswith(".sql")), key=lambda p: p.name)
    return [(p.name.removesuffix(".sql"), p.read_text(encoding="utf-8")) for p in files]


def migrate(database_url: str, partition_days_ahead: int = 7) -> list[str]:
    """Apply the migrations not yet applied; create partitions ahead. Returns what was applied."""
    applied: list[str] = []
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_ID,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
            for version, sql in migration_files():
                if version in done:
                    continue
                with conn.transaction():
                    conn.execute(sql)  # our own files, not user input
                    conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
                log.info("applied migration %s", version)
                applied.append(version)
            ensure_partitions(conn, partition_days_ahead)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_ID,))
    return applied


def ensure_partitions(conn: psycopg.Connection, days_ahead: int) -> int:
    """Daily sighting partitions from yesterday to days_ahead (no-op on TimescaleDB)."""
    today = datetime.now(UTC).date()
    row = conn.execute(
        "SELECT bikeguard_ensure_partitions(%s, %s)", (today - timedelta(days=1), today + timedelta(days=days_ahead))
    ).fetchone()
    return int(row[0]) if row else 0


def maintain(database_url: str, days_ahead: int, retention_days: int | None) -> tuple[int, int]:
    """Create the coming days' partitions and drop days past retention: (created, dropped)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        created = ensure_partitions(conn, days_ahead)
        dropped = 0
        if retention_days is not None:
            row = conn.execute("SELECT bikeguard_drop_old_sightings(%s)", (retention_days,)).fetchone()
            dropped = int(row[0]) if row else 0
    return created, dropped
