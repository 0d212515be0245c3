"""Schema migrations: plain SQL files applied in order, each once, recorded in schema_migrations; run as the schema's
owner, after which the application role (what the backend connects as) is granted what it needs and no more."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from importlib import resources

import psycopg
from psycopg import sql

from backend.db.storage import PASSAGES_HOURLY_LOOKBACK, StoragePolicy, choose_engine, set_policies
from backend.settings import BackendSettings

log = logging.getLogger(__name__)


class DatabaseRoleError(Exception):
    """The database's roles are not as the backend needs them; the message says what to do."""


class AppRoleMissing(DatabaseRoleError):
    """The application role to grant privileges to does not exist."""


class OwnerUrlMissing(DatabaseRoleError):
    """Migrating needs the owner's connection (BIKEGUARD_DATABASE_OWNER_URL) and it is not set."""


class SchemaOutOfDate(DatabaseRoleError):
    """The database lacks migrations and the backend was not given the owner's connection to apply them."""


class UnsafeAppRole(DatabaseRoleError):
    """The backend's database role could rewrite the audit log (a superuser, or the tables' owner)."""


DEFAULT_STORAGE = StoragePolicy()

# Any fixed number works; it keeps two workers starting together from migrating at once.
_LOCK_ID = 0x0B1CE6A4D


def migration_files() -> list[tuple[str, str]]:
    """(version, sql) for every migration shipped with the backend, in order."""
    folder = resources.files("backend.db") / "migrations"
    files = sorted((p for p in folder.iterdir() if p.name.endswith(".sql")), key=lambda p: p.name)
    return [(p.name.removesuffix(".sql"), p.read_text(encoding="utf-8")) for p in files]


def migrate(
    database_url: str,
    partition_days_ahead: int = 7,
    app_role: str | None = None,
    storage: StoragePolicy = DEFAULT_STORAGE,
) -> list[str]:
    """As the schema's owner: apply the migrations not yet applied (a new database on the storage engine chosen),
    create partitions ahead, set the engine's policies and, with app_role, grant that role the application's
    privileges. Returns what was applied."""
    applied: list[str] = []
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_ID,))
        try:
            engine = choose_engine(conn, storage.engine)
            conn.execute("SELECT set_config('bikeguard.storage_engine', %s, false)", (engine,))  # read by 0002
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
            set_policies(conn, storage)
            if app_role is not None:
                grant_app_role(conn, app_role)
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
    """Create the coming days' partitions, count the hours passed into the hourly passages and drop days past
    retention (TimescaleDB's policy jobs do the last two there): (created, dropped)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        created = ensure_partitions(conn, days_ahead)
        refresh_passages_hourly(conn)
        dropped = 0
        if retention_days is not None:
            row = conn.execute("SELECT bikeguard_drop_old_sightings(%s)", (retention_days,)).fetchone()
            dropped = int(row[0]) if row else 0
    return created, dropped


def refresh_passages_hourly(conn: psycopg.Connection) -> None:
    """Count the hours passed into station_passages_hourly (plain PostgreSQL; a no-op on TimescaleDB, where the
    continuous aggregate's policy job does it)."""
    conn.execute("SELECT bikeguard_refresh_passages_hourly(%s)", (PASSAGES_HOURLY_LOOKBACK,))


def grant_app_role(conn: psycopg.Connection, app_role: str) -> None:
    """Give the application role what the backend needs on every table of the schema, as its owner: read and write
    everything, except the audit log (read and append only) and the migrations record (read only); never TRUNCATE,
    TRIGGER or REFERENCES; the sequences; the two maintenance functions. Tables created later by the owner (new days'
    partitions among them) get the same by default. Run after every migration, so a new table is never left out."""
    if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (app_role,)).fetchone() is None:
        raise AppRoleMissing(
            f"the application role {app_role!r} (BIKEGUARD_DATABASE_APP_ROLE) does not exist: create it"
            f" (CREATE ROLE {app_role} LOGIN PASSWORD '...', see docs/operations.md), then migrate again"
        )
    row = conn.execute("SELECT current_schema(), current_user").fetchone()
    assert row is not None
    schema, owner = sql.Identifier(row[0]), row[1]
    if app_role == owner:
        raise DatabaseRoleError(
            f"the application role {app_role!r} is the role migrating (the schema's owner): the backend must connect"
            " as a role of its own, or it could rewrite the audit log; see docs/operations.md"
        )
    role = sql.Identifier(app_role)
    with conn.transaction():
        for statement in (
            "GRANT USAGE ON SCHEMA {schema} TO {role}",
            "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {role}",
            "REVOKE UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER ON audit_log FROM {role}, PUBLIC",
            "REVOKE INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER ON schema_migrations FROM {role}, PUBLIC",
            "GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {schema} TO {role}",
            "GRANT EXECUTE ON FUNCTION bikeguard_ensure_partitions(date, date), bikeguard_drop_old_sightings(integer),"
            " bikeguard_refresh_passages_hourly(interval) TO {role}",
            "ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {role}",
            "ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} GRANT USAGE, SELECT ON SEQUENCES TO {role}",
        ):
            conn.execute(sql.SQL(statement).format(schema=schema, role=role))
        # The hourly counts are the maintenance function's to write (plain PostgreSQL; TimescaleDB's are its own).
        for table in ("station_passages_hourly_counted", "station_passages_hourly_watermark"):
            if conn.execute("SELECT to_regclass(%s)", (table,)).fetchone() != (None,):
                conn.execute(sql.SQL("REVOKE INSERT, UPDATE, DELETE ON {} FROM {}").format(sql.Identifier(table), role))
    log.info("privileges granted to the application role %s", app_role)


def migrate_as_owner(settings: BackendSettings) -> list[str]:
    """`bikeguard db migrate`: migrate with BIKEGUARD_DATABASE_OWNER_URL and grant BIKEGUARD_DATABASE_APP_ROLE its
    privileges. In development only, without an owner URL, BIKEGUARD_DATABASE_URL's role migrates (and owns)."""
    if settings.database_owner_url is None:
        if settings.environment != "development":
            raise OwnerUrlMissing(
                "BIKEGUARD_DATABASE_OWNER_URL is not set: migrations run as the schema's owner, which the backend's"
                " own role (BIKEGUARD_DATABASE_URL) must not be; see docs/operations.md"
            )
        log.warning(
            "BIKEGUARD_DATABASE_OWNER_URL is not set: migrating as BIKEGUARD_DATABASE_URL's role, which then owns the"
            " schema and could rewrite the audit log (development only)"
        )
        return migrate(settings.database_url, settings.partition_days_ahead, storage=storage_policy(settings))
    return migrate(
        settings.database_owner_url.get_secret_value(),
        settings.partition_days_ahead,
        settings.database_app_role,
        storage_policy(settings),
    )


def storage_policy(settings: BackendSettings) -> StoragePolicy:
    """The storage engine and policies the settings ask for."""
    return StoragePolicy(settings.storage_engine, settings.sighting_compress_after_days, settings.retention_days)


def pending_migrations(database_url: str) -> list[str]:
    """The migrations this database lacks (all of them when it has none), read with any role that may read."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        try:
            done = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
        except psycopg.errors.UndefinedTable:
            done = set()
    return [version for version, _ in migration_files() if version not in done]


def audit_log_power(database_url: str) -> str | None:
    """What lets this URL's role rewrite the audit log (a superuser, the owner of its tables), or None."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT current_user, r.rolsuper,"
            " EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = to_regclass('audit_log')"
            " AND pg_has_role(current_user, c.relowner, 'MEMBER'))"
            " FROM pg_roles r WHERE r.rolname = current_user"
        ).fetchone()
    assert row is not None
    user, superuser, owner = row
    if superuser:
        return f"role {user!r} is a superuser"
    if owner:
        return f"role {user!r} owns the audit log"
    return None


def prepare_database(settings: BackendSettings) -> list[str]:
    """At the backend's start: migrate when given the owner's URL (or, in development, when migrations are missing);
    otherwise insist the schema is current. Then refuse, in production, a role that could rewrite the audit log."""
    applied: list[str] = []
    if settings.database_owner_url is not None:
        applied = migrate_as_owner(settings)
    elif missing := pending_migrations(settings.database_url):
        if settings.environment != "development":
            raise SchemaOutOfDate(
                f"the database lacks {len(missing)} migrations ({', '.join(missing)}): run `bikeguard db migrate`"
                " with BIKEGUARD_DATABASE_OWNER_URL set, or give the backend BIKEGUARD_DATABASE_OWNER_URL to migrate"
                " on start; see docs/operations.md"
            )
        applied = migrate_as_owner(settings)
    power = audit_log_power(settings.database_url)
    if power is not None:
        if settings.environment != "development":
            raise UnsafeAppRole(
                f"BIKEGUARD_DATABASE_URL connects as a role that could rewrite the audit log ({power}): connect as"
                f" the application role ({settings.database_app_role}) and migrate with BIKEGUARD_DATABASE_OWNER_URL;"
                " see docs/operations.md"
            )
        log.warning("the backend's database %s and could rewrite the audit log (development only)", power)
    return applied
