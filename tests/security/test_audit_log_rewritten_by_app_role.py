"""Issue 11, finding 7: the "append-only" audit log rewritten through the application's own database role.

The attack: with the credentials the backend connects with (anyone who reads its environment, or an SQL injection
anywhere in it), turn the audit log's append-only trigger off and delete the records of what was looked at, or
switch the session to replication mode (triggers do not fire) and rewrite who looked. That role used to own the
tables and be a superuser, so both worked. Now the schema belongs to an owner role that only migrations use; the
backend's role may read and append audit records and nothing more, and still creates partitions and drops old days
(through functions the owner made for exactly that).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from fastapi.testclient import TestClient

from backend.db.migrate import maintain
from tests.backend.conftest import Staff

# Each is tried on its own connection as the app's role; every one must be refused for want of privilege.
ATTACKS = {
    "disable the trigger, then delete": (
        "ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only",
        "DELETE FROM audit_log",
    ),
    "disable every trigger, then rewrite": (
        "ALTER TABLE audit_log DISABLE TRIGGER ALL",
        "UPDATE audit_log SET actor = 'nobody'",
    ),
    "replication mode, then rewrite": (
        "SET session_replication_role = replica",
        "UPDATE audit_log SET actor = 'nobody'",
    ),
    "update": ("UPDATE audit_log SET actor = 'nobody'",),
    "delete": ("DELETE FROM audit_log",),
    "truncate": ("TRUNCATE audit_log",),
    "drop the trigger": ("DROP TRIGGER audit_log_append_only ON audit_log",),
    "replace the trigger's function": (
        "CREATE OR REPLACE FUNCTION bikeguard_audit_append_only() RETURNS trigger LANGUAGE plpgsql"
        " AS $$ BEGIN RETURN OLD; END $$",
    ),
    "take the table over": ("ALTER TABLE audit_log OWNER TO CURRENT_USER",),
    "drop the table": ("DROP TABLE audit_log",),
    "make itself a superuser": ("ALTER ROLE CURRENT_USER SUPERUSER",),
}


def _audit_rows(url: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT audit_id, actor, action, subject FROM audit_log ORDER BY audit_id").fetchall()


@pytest.fixture
def app_database_url(app_client: TestClient) -> str:
    """What the running backend connects with: its own settings, not the test's idea of them."""
    return str(app_client.app.state.settings.database_url)  # type: ignore[attr-defined]


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_app_role_cannot_rewrite_the_audit_log(staff: Staff, app_database_url: str, attack: str) -> None:
    owner = staff.register()["owner"]
    assert staff.clerk.get(f"/api/owners/{owner['owner_id']}").status_code == 200
    before = _audit_rows(app_database_url)
    assert any(action == "owner.view" for _, _, action, _ in before)
    with psycopg.connect(app_database_url) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        for sql in ATTACKS[attack]:
            conn.execute(sql)
    assert _audit_rows(app_database_url) == before
    # The log still takes new records through the app.
    assert staff.clerk.get(f"/api/owners/{owner['owner_id']}").status_code == 200
    assert len(_audit_rows(app_database_url)) == len(before) + 1


def test_app_role_is_not_a_superuser_and_owns_nothing(app_database_url: str) -> None:
    with psycopg.connect(app_database_url) as conn:
        superuser = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
        owned = conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = current_schema() AND pg_has_role(current_user, c.relowner, 'USAGE')"
        ).fetchall()
    assert superuser == (False,)
    assert owned == []


def test_storage_maintenance_works_as_the_app_role(app_database_url: str) -> None:
    """Partitions ahead and retention by whole days need the tables' owner; the app gets them through the owner's
    functions, which do only that (on TimescaleDB, the app's inserts make chunks and retention drops them)."""
    old = datetime.now(UTC) - timedelta(days=40)
    with psycopg.connect(app_database_url) as conn:
        conn.execute("SELECT bikeguard_ensure_partitions(%s, %s)", (old.date(), old.date()))
        conn.execute("INSERT INTO sightings VALUES (%s, %s, 'st-old', 1, 1, -60, 0, 0, 1)", (old, old))
        partitioned = conn.execute("SELECT 1 FROM pg_partitioned_table WHERE partrelid = 'sightings'::regclass")
        days_made_ahead = partitioned.fetchone() is not None
    created, dropped = maintain(app_database_url, days_ahead=10, retention_days=30)
    assert dropped >= 1 and (created > 0 or not days_made_ahead)
    with psycopg.connect(app_database_url) as conn:
        assert conn.execute("SELECT count(*) FROM sightings WHERE station_id = 'st-old'").fetchone() == (0,)
        with pytest.raises(psycopg.errors.RaiseException, match="at least 1 day"):
            conn.execute("SELECT bikeguard_drop_old_sightings(0)")
