"""The two database roles: migrations as the schema's owner, the backend as an application role that owns nothing."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from backend.api.app import create_app
from backend.db.migrate import (
    AppRoleMissing,
    OwnerUrlMissing,
    SchemaOutOfDate,
    UnsafeAppRole,
    audit_log_power,
    migrate,
    migrate_as_owner,
    migration_files,
    pending_migrations,
    prepare_database,
)
from backend.settings import BackendSettings
from tests import factories
from tests.conftest import AppRole
from tests.engine import STORAGE


def _production(database_url: str, **overrides: Any) -> BackendSettings:
    return factories.settings(
        database_url, environment="production", public_base_url="https://bikes.example.gov", **overrides
    )


def _as(url: str, role: AppRole) -> str:
    return psycopg.conninfo.make_conninfo(url, user=role.name, password=role.password)


def test_backend_given_the_owner_url_migrates_and_grants_the_app_role(empty_database: str, app_role: AppRole) -> None:
    app_url = _as(empty_database, app_role)
    settings = _production(
        app_url, database_owner_url=empty_database, database_app_role=app_role.name, maintenance_interval_s=3600
    )
    with TestClient(create_app(settings, run_ingest=False)) as client:
        assert client.get("/api/ready").status_code == 200
    assert pending_migrations(app_url) == []
    assert audit_log_power(app_url) is None
    with psycopg.connect(app_url) as conn:
        conn.execute("INSERT INTO audit_log (actor, role, action) VALUES ('test', 'admin', 'test.append')")
    with psycopg.connect(app_url) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("DELETE FROM audit_log")


def test_production_backend_refuses_a_role_that_could_rewrite_the_audit_log(database_owner_url: str) -> None:
    with pytest.raises(UnsafeAppRole, match="could rewrite the audit log.*superuser"):
        prepare_database(_production(database_owner_url))


def test_development_backend_only_warns_of_such_a_role(
    database_owner_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    assert prepare_database(factories.settings(database_owner_url)) == []
    assert "could rewrite the audit log" in caplog.text


def test_production_backend_without_the_owner_url_refuses_a_schema_lacking_migrations(
    empty_database: str, app_role: AppRole
) -> None:
    with pytest.raises(SchemaOutOfDate, match="bikeguard db migrate"):
        prepare_database(_production(_as(empty_database, app_role)))


def test_migrating_in_production_needs_the_owner_url(database_url: str) -> None:
    with pytest.raises(OwnerUrlMissing, match="BIKEGUARD_DATABASE_OWNER_URL"):
        migrate_as_owner(_production(database_url))


def test_migrating_needs_the_app_role_to_exist(empty_database: str) -> None:
    with pytest.raises(AppRoleMissing, match="CREATE ROLE bikeguard_nobody"):
        migrate(empty_database, app_role="bikeguard_nobody", storage=STORAGE)


def test_app_role_reads_the_migrations_record_but_cannot_write_it(database_url: str) -> None:
    assert pending_migrations(database_url) == []
    with psycopg.connect(database_url) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("DELETE FROM schema_migrations WHERE version = %s", (migration_files()[-1][0],))


def test_app_role_name_is_a_plain_identifier() -> None:
    with pytest.raises(ValueError, match="not a plain role name"):
        factories.settings("dbname=x", database_app_role='app"; DROP TABLE audit_log; --')
