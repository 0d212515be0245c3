"""The embedded services the demo, the tests and the benchmarks start (bikeguard.services)."""

from __future__ import annotations

import psycopg
import pytest

from bikeguard.services import ServiceError, start_postgres


def test_an_embedded_server_preloads_every_library_it_is_asked_for(tmp_path):
    # Profiling a TimescaleDB server with pg_stat_statements needs two: the server once refused to start, reading
    # "pg_prewarm, pg_stat_statements" as the name of one library.
    pg = start_postgres(tmp_path / "pg", preload=("pg_prewarm", "pg_stat_statements"))
    try:
        with psycopg.connect(pg.url) as conn:
            assert conn.execute("SHOW shared_preload_libraries").fetchone() == ("pg_prewarm, pg_stat_statements",)
            conn.execute("CREATE EXTENSION pg_stat_statements")  # which works only when it was preloaded
            assert conn.execute("SELECT count(*) > 0 FROM pg_stat_statements").fetchone() == (True,)
    finally:
        pg.stop()


def test_a_library_the_server_does_not_have_is_named_and_the_server_is_not_left_running(tmp_path):
    with pytest.raises(ServiceError, match="no_such_library is not installed in the embedded PostgreSQL") as refused:
        start_postgres(tmp_path / "pg", preload=("no_such_library",))
    assert "timescaledb/install" not in str(refused.value)  # that installer is for TimescaleDB only
    assert not (tmp_path / "pg" / "postmaster.pid").exists()
