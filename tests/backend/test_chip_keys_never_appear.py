"""A v2 chip's key is never shown: not by any route to any role (API answers, pages, exports, the certificate PDF),
not in the backend's logs, the audit log, or any database column but its own ciphertext."""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg import sql
from pypdf import PdfReader

from backend.api.app import create_app
from backend.chip_keys import active_v2_keys
from protocol.ids import parse_tag
from tests import factories
from tests.backend.conftest import Caller, Staff
from tests.backend.counter_cable import counter_cable

# Routes that stream until the client leaves: nothing to read to the end.
_STREAMS = {"/api/live", "/api/stations/{station_id}/selftests/live"}
_CASE = "HZ-2026-0042"


def _needles(secret: bytes) -> dict[str, bytes]:
    """The key as any answer, log line or column might carry it."""
    b64 = base64.b64encode(secret)
    return {
        "raw": secret,
        "hex": secret.hex().encode(),
        "HEX": secret.hex().upper().encode(),
        "spaced hex": secret.hex(" ").encode(),
        "base64": b64.rstrip(b"="),
        "base64url": base64.urlsafe_b64encode(secret).rstrip(b"="),
        "bytea": b"\\x" + secret.hex().encode(),
    }


def _found(haystack: bytes, needles: dict[str, bytes]) -> list[str]:
    return [name for name, needle in needles.items() if needle in haystack]


@pytest.fixture
def fitted(
    database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> Iterator[tuple[Staff, dict[str, Any], bytes]]:
    """A v2 chip fitted at the counter (a new owner with a login), seen at a station, every log record captured: the
    staff, the registration, and the chip's key as the resolution reads it."""
    caplog.set_level(logging.DEBUG)
    with counter_cable(tmp_path) as cable:
        settings = factories.settings(database_url, counter_programmer_url=cable.port)
        with TestClient(create_app(settings, run_ingest=False)) as client:
            staff = Staff(client, database_url)
            tag = factories.tag()
            cable.put(parse_tag(tag))
            registration = staff.register(tag_id=tag, chip_kind="v2")
            with psycopg.connect(database_url) as conn:
                [(_, key)] = active_v2_keys(conn, client.app.state.registry.vault)  # type: ignore[attr-defined]
                factories.station(conn, "st-keys-1")
                conn.execute(
                    "INSERT INTO sightings (first_seen_at, last_seen_at, station_id, tag_id, beacons, peak_rssi_dbm,"
                    " antenna, flags, batch_seq) VALUES (now(), now(), 'st-keys-1', %s, 9, -61, 1, 0, 1)",
                    (parse_tag(tag),),
                )
            yield staff, registration, key


def _paths(client: TestClient, values: dict[str, str]) -> Iterator[str]:
    """Every GET route of the app, its path parameters filled in (a download route once per format)."""
    for included in client.app.routes:  # type: ignore[attr-defined]
        for route in getattr(getattr(included, "original_router", None), "routes", ()):
            if "GET" not in getattr(route, "methods", set()) or route.path in _STREAMS:
                continue
            if "{fmt}" in route.path:
                for fmt in ("gpx", "geojson", "csv"):
                    yield route.path.replace("{fmt}", fmt).format(**values)
            else:
                yield route.path.format(**values)


def _answers(caller: Caller, paths: list[str], query: str) -> Iterator[tuple[str, bytes]]:
    for path in paths:
        r = caller.get(f"{path}?{query}")
        yield path, r.content
        if r.headers.get("content-type", "").startswith("application/pdf"):
            text = "".join(page.extract_text() for page in PdfReader(io.BytesIO(r.content)).pages)
            yield path + " (text)", text.replace("\x00", "").encode()


def test_no_route_shows_the_key_to_anyone(
    fitted: tuple[Staff, dict[str, Any], bytes], caplog: pytest.LogCaptureFixture
) -> None:
    staff, registration, key = fitted
    bike = registration["bike"]
    owner = staff.owner_of(registration)
    values = {
        "bike_id": str(bike["bike_id"]),
        "owner_id": str(registration["owner"]["owner_id"]),
        "station_id": "st-keys-1",
        "photo_id": "1",
        "alarm_id": "1",
        "token": "x",
    }
    paths = list(_paths(staff.client, values))
    assert "/api/bikes/{bike_id}/trajectory.gpx".format(**values) in paths
    query = f"tag_id={bike['tag_id']}&plate={bike['plate']}&q={bike['plate']}&case_number={_CASE}"
    needles = _needles(key)
    seen = 0
    for who, caller in (
        ("owner", owner),
        ("clerk", staff.clerk),
        ("police", staff.police),
        ("installer", staff.installer),
        ("admin", staff.admin),
        ("anonymous", staff.anonymous),
    ):
        for path, content in _answers(caller, paths, query):
            seen += len(content)
            assert _found(content, needles) == [], f"{who} GET {path}"
    # The answers that matter most said something: the chip, its kind, the exports and the certificate.
    [found] = staff.clerk.get(f"/api/bikes?tag_id={bike['tag_id']}").json()
    assert found["chip_kind"] == "v2"
    assert bike["tag_id"] in owner.get(f"/api/bikes/{bike['bike_id']}/trajectory.csv").text
    pdf = owner.get(f"/bikes/{bike['bike_id']}/certificate.pdf")
    assert pdf.status_code == 200
    assert bike["plate"] in PdfReader(io.BytesIO(pdf.content)).pages[0].extract_text().replace("\x00", "")
    assert seen > 100_000
    logged = "\n".join(
        f"{r.getMessage()} {r.args!r} {r.exc_text or ''}" for r in [*caplog.get_records("setup"), *caplog.records]
    )
    assert "programmed" in logged  # the fitting was logged, by its check value
    assert _found(logged.encode(), needles) == []


def test_no_column_but_the_ciphertext_holds_the_key(fitted: tuple[Staff, dict[str, Any], bytes]) -> None:
    staff, _, key = fitted
    needles = _needles(key)
    with psycopg.connect(staff.database_url) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT table_name FROM information_schema.tables"
                " WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'"
            )
        ]
        assert "audit_log" in tables and "chip_keys" in tables
        for table in tables:
            columns = [
                r[0]
                for r in conn.execute(
                    "SELECT column_name FROM information_schema.columns"
                    " WHERE table_schema = current_schema() AND table_name = %s",
                    (table,),
                )
                if (table, r[0]) != ("chip_keys", "key_ciphertext")
            ]
            rows = conn.execute(
                sql.SQL("SELECT {} FROM {}").format(
                    sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in columns),
                    sql.Identifier(table),
                )
            ).fetchall()
            text = "\n".join(" ".join(str(v) for v in row) for row in rows).encode()
            assert _found(text, needles) == [], table
            assert _found(text.lower(), {"hex": key.hex().encode()}) == [], table
        # The ciphertext is not the key either.
        [(blob,)] = conn.execute("SELECT key_ciphertext FROM chip_keys").fetchall()
        assert key not in bytes(blob)


def test_audit_log_of_the_fitting_names_no_key(fitted: tuple[Staff, dict[str, Any], bytes]) -> None:
    staff, registration, key = fitted
    # Everything police do about the bike goes to the audit log: read it after they looked.
    bike_id = registration["bike"]["bike_id"]
    staff.police.get(f"/api/bikes/{bike_id}/owner?case_number={_CASE}")
    answer = staff.admin.get("/api/audit")
    assert answer.status_code == 200
    with psycopg.connect(staff.database_url) as conn:
        rows = conn.execute("SELECT to_jsonb(a)::text FROM audit_log a").fetchall()
    assert rows
    text = ("\n".join(r[0] for r in rows) + answer.text).encode()
    assert _found(text, _needles(key)) == []
    assert _found(text.lower(), {"hex": key.hex().encode()}) == []
