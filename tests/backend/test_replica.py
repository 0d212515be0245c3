"""Heavy reads on a real streaming replica (pg_basebackup -R of the session's embedded server): served by the replica
while it is close enough behind, by the primary when it lags past the bound or is away, and /metrics says which."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from backend.api.app import create_app
from bikeguard.services import Postgres, start_replica
from protocol.messages import utcnow
from tests import factories
from tests.backend.conftest import Staff
from tests.conftest import AppRole

CASE = "C-2026-113"
WAIT_S = 60.0  # replication on a busy 2-core machine: seconds at worst; the tests poll, never sleep a fixed time


def _until(done: Callable[[], Any], what: str, timeout_s: float = WAIT_S) -> Any:
    """Poll until done() is truthy and return it; fail saying what was awaited."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if result := done():
            return result
        time.sleep(0.05)
    pytest.fail(f"{what}: not after {timeout_s:.0f} s")


@pytest.fixture
def replica(postgres_server: Postgres | None) -> Iterator[Postgres]:
    """A streaming replica of the session's server, stopped (and deleted) afterwards."""
    if postgres_server is None:
        pytest.skip("a replica is made of the embedded server; BIKEGUARD_TEST_DATABASE_URL names a server elsewhere")
    standby = start_replica(postgres_server)
    try:
        yield standby
    finally:
        standby.stop()


@pytest.fixture
def replica_database_url(replica: Postgres, database_url: str, app_role: AppRole) -> str:
    """The test's database on the replica, as the application role, once it has been replicated there."""
    dbname = psycopg.conninfo.conninfo_to_dict(database_url)["dbname"]

    def replicated() -> bool:
        with psycopg.connect(replica.url, autocommit=True) as conn:
            return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone() is not None

    _until(replicated, f"database {dbname} on the replica")
    return psycopg.conninfo.make_conninfo(replica.url, dbname=dbname, user=app_role.name, password=app_role.password)


def _app(database_url: str, replica_url: str, max_lag_s: float) -> TestClient:
    settings = factories.settings(
        database_url,
        database_replica_url=replica_url,
        database_replica_max_lag_s=max_lag_s,
        database_replica_check_s=0.1,
        database_replica_timeout_s=0.5,
    )
    return TestClient(create_app(settings, run_ingest=False))


def _metrics(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples = {}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for s in family.samples:
            samples[s.name, tuple(sorted(s.labels.items()))] = s.value
    return samples


def _reads(client: TestClient, served_by: str, reason: str) -> float:
    """How many heavy reads the app counted as served by `served_by` for `reason`."""
    key = ("bikeguard_database_reads_total", (("reason", reason), ("served_by", served_by)))
    return _metrics(client).get(key, 0.0)


def _pass(database_url: str, tag_hex: str, station_id: str) -> None:
    """One passage of the chip at the station, written on the primary as the ingest writes it."""
    first = utcnow()  # after the chip was fitted: its passages count from then
    with psycopg.connect(database_url) as conn:
        factories.station(conn, station_id)
        conn.execute(
            "INSERT INTO sightings VALUES (%s, %s, %s, %s, 3, -60, 0, 0, 1)",
            (first, first + timedelta(seconds=10), station_id, int(tag_hex, 16)),
        )


def _replayed(primary_url: str, replica: Postgres) -> None:
    """Wait until the replica has replayed everything the primary has written so far."""
    with psycopg.connect(primary_url, autocommit=True) as conn:
        row = conn.execute("SELECT pg_current_wal_lsn()").fetchone()
    assert row is not None

    def caught_up() -> bool:
        with psycopg.connect(replica.url, autocommit=True) as conn:
            done = conn.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (row[0],)).fetchone()
        return bool(done and done[0])

    _until(caught_up, "the replica replaying the primary's writes")


def _replay(replica: Postgres, paused: bool) -> None:
    with psycopg.connect(replica.url, autocommit=True) as conn:
        conn.execute("SELECT pg_wal_replay_pause()" if paused else "SELECT pg_wal_replay_resume()")


def _seen_on_the_replica(
    client: TestClient, database_url: str, replica: Postgres, station_id: str
) -> tuple[Staff, int, str]:
    """A bike registered, its passage at station_id replicated and read back: (staff, bike_id, tag)."""
    staff = Staff(client, database_url)
    done = staff.register()
    bike_id, tag = done["bike"]["bike_id"], done["bike"]["tag_id"]
    _pass(database_url, tag, station_id)
    _replayed(database_url, replica)
    assert _stations_seen(staff, bike_id) == [station_id]
    return staff, bike_id, tag


def _server_processes(replica: Postgres) -> list[psutil.Process]:
    """The replica's postmaster and its children."""
    postmaster = psutil.Process(int((replica.data_dir / "postmaster.pid").read_text().split()[0]))
    return [postmaster, *postmaster.children(recursive=True)]


def _stations_seen(staff: Staff, bike_id: int) -> list[str]:
    """The stations in the bike's trajectory over the last hour, as the police read it under a case number."""
    window = {"since": (utcnow() - timedelta(hours=1)).isoformat(), "until": utcnow().isoformat(), "case_number": CASE}
    r = staff.police.get(f"/api/bikes/{bike_id}/trajectory", params=window)
    assert r.status_code == 200, r.text
    return [p["station_id"] for p in r.json()]


def test_trajectory_is_read_on_the_replica_and_its_audit_written_on_the_primary(
    database_url: str, replica: Postgres, replica_database_url: str
) -> None:
    with _app(database_url, replica_database_url, max_lag_s=3600) as client:
        staff = Staff(client, database_url)
        done = staff.register()  # a write, with the replica set: a hot standby would refuse it
        bike_id, tag = done["bike"]["bike_id"], done["bike"]["tag_id"]
        _pass(database_url, tag, "st-rep-1")
        _replayed(database_url, replica)
        _replay(replica, paused=True)
        _pass(database_url, tag, "st-rep-2")  # on the primary only, while the replica replays nothing

        # Served by the replica (3600 s of lag allowed): it has the first passage and not the second; so has the
        # last-seen place of a police search (the bike found on the primary).
        assert _stations_seen(staff, bike_id) == ["st-rep-1"]
        found = staff.police.get("/api/bikes/search", params={"q": done["bike"]["plate"], "case_number": CASE}).json()
        assert [(b["bike"]["bike_id"], b["last_seen"]["station_id"]) for b in found] == [(bike_id, "st-rep-1")]
        assert _reads(client, "replica", "within_max_lag") == 2
        # The audit record of that very read was written on the primary, in the same request.
        audit = [a for a in staff.admin.get("/api/audit").json() if a["subject"] == f"bike:{bike_id}"]
        assert [(a["action"], a["case_number"]) for a in audit] == [("bike.trajectory", CASE)]

        _replay(replica, paused=False)
        _until(lambda: len(_stations_seen(staff, bike_id)) == 2, "the second passage on the replica")
        assert _reads(client, "primary", "replica_lagging") == 0
        assert _reads(client, "primary", "replica_away") == 0


def test_an_idle_primary_does_not_make_the_replica_lag(
    database_url: str, replica: Postgres, replica_database_url: str
) -> None:
    max_lag_s = 0.5
    with _app(database_url, replica_database_url, max_lag_s=max_lag_s) as client:
        staff = Staff(client, database_url)
        bike_id = staff.register()["bike"]["bike_id"]
        _replayed(database_url, replica)

        def idle_for() -> bool:
            # The age of the last transaction the replica replayed: what a naive lag figure would report.
            with psycopg.connect(replica.url, autocommit=True) as conn:
                row = conn.execute("SELECT extract(epoch FROM now() - pg_last_xact_replay_timestamp())").fetchone()
            return bool(row and row[0] is not None and float(row[0]) > 3 * max_lag_s)

        _until(idle_for, "no transaction replayed for a while")
        _stations_seen(staff, bike_id)  # a police read writes its audit record: the primary is busy again
        assert _reads(client, "replica", "within_max_lag") == 1
        assert _metrics(client)["bikeguard_database_replica_lag_seconds", ()] <= max_lag_s


def test_reads_go_to_the_primary_while_the_replica_lags_past_the_bound(
    database_url: str, replica: Postgres, replica_database_url: str
) -> None:
    max_lag_s = 1.0
    with _app(database_url, replica_database_url, max_lag_s=max_lag_s) as client:
        staff = Staff(client, database_url)
        done = staff.register()
        bike_id, tag = done["bike"]["bike_id"], done["bike"]["tag_id"]
        _replayed(database_url, replica)
        _replay(replica, paused=True)
        _pass(database_url, tag, "st-lag-1")

        # The replica never replays the passage; it shows once the lag is past the bound: read on the primary.
        _until(lambda: _stations_seen(staff, bike_id) == ["st-lag-1"], "the passage read on the primary")
        metrics = _metrics(client)
        assert _reads(client, "primary", "replica_lagging") >= 1
        assert metrics["bikeguard_database_replica_fallback", (("reason", "replica_lagging"),)] == 1
        assert metrics["bikeguard_database_replica_lag_seconds", ()] > max_lag_s
        assert metrics["bikeguard_database_replica_up", ()] == 1

        _replay(replica, paused=False)
        _until(lambda: _metrics(client)["bikeguard_database_replica_lag_seconds", ()] <= max_lag_s, "caught up")
        served = _reads(client, "replica", "within_max_lag")
        assert _stations_seen(staff, bike_id) == ["st-lag-1"]
        assert _reads(client, "replica", "within_max_lag") == served + 1


def test_reads_go_to_the_primary_while_the_replica_is_away(
    database_url: str, replica: Postgres, replica_database_url: str
) -> None:
    with _app(database_url, replica_database_url, max_lag_s=3600) as client:
        staff, bike_id, tag = _seen_on_the_replica(client, database_url, replica, "st-away-1")
        assert _reads(client, "replica", "within_max_lag") == 1

        server = _server_processes(replica)
        replica.stop()
        assert not [p for p in server if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]

        _pass(database_url, tag, "st-away-2")
        assert _stations_seen(staff, bike_id) == ["st-away-1", "st-away-2"]
        assert _reads(client, "primary", "replica_away") >= 1
        assert _reads(client, "replica", "within_max_lag") == 1
        metrics = _metrics(client)
        assert metrics["bikeguard_database_replica_up", ()] == 0
        assert metrics["bikeguard_database_replica_fallback", (("reason", "replica_away"),)] == 1
        # Writes never needed it: registering goes on.
        staff.register()


def test_reads_go_to_the_primary_while_the_replica_does_not_answer(
    database_url: str, replica: Postgres, replica_database_url: str
) -> None:
    with _app(database_url, replica_database_url, max_lag_s=3600) as client:
        staff, bike_id, tag = _seen_on_the_replica(client, database_url, replica, "st-mute-1")

        server = _server_processes(replica)
        for p in server:  # frozen: connections stay open and nothing answers, as across a network gone quiet
            p.suspend()
        try:
            assert _stations_seen(staff, bike_id) == ["st-mute-1"]
            assert _reads(client, "primary", "replica_away") >= 1
            assert _metrics(client)["bikeguard_database_replica_up", ()] == 0
        finally:
            for p in server:
                p.resume()


def test_the_backend_starts_and_reads_with_its_replica_away(database_url: str, tmp_path: Path) -> None:
    nowhere = psycopg.conninfo.make_conninfo(database_url, host=str(tmp_path))  # a socket directory with no server
    with _app(database_url, nowhere, max_lag_s=3600) as client:
        staff = Staff(client, database_url)
        bike_id = staff.register()["bike"]["bike_id"]
        assert _stations_seen(staff, bike_id) == []
        assert _reads(client, "primary", "replica_away") == 1
        assert _metrics(client)["bikeguard_database_replica_up", ()] == 0


def test_without_a_replica_heavy_reads_are_counted_on_the_primary(app_client: TestClient, staff: Staff) -> None:
    bike_id = staff.register()["bike"]["bike_id"]
    assert _stations_seen(staff, bike_id) == []
    assert _reads(app_client, "primary", "no_replica") == 1
    assert not [key for key in _metrics(app_client) if key[0].startswith("bikeguard_database_replica_")]
