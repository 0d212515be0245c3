"""Handing an alarm to someone: police and admins only, recorded with who and when, announced by NOTIFY."""

from __future__ import annotations

import psycopg

from backend.alarms import engine
from backend.alarms.store import NOTIFY_CHANNEL
from backend.ingest import writer
from protocol.messages import parse_batch_rows
from tests import factories
from tests.backend.conftest import Staff


def _tamper_alarm(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        factories.station(conn, "st-1")
        factories.bike(conn, 0x5A5A01)
        with conn.transaction():
            result = writer.write_batches(
                conn, [parse_batch_rows(factories.batch("st-1", 1, [0x5A5A01], flags=2).to_json())]
            )
        return engine.raise_alarms(conn, result.committed, engine.ON_COMMIT)[0]


def test_police_assign_an_alarm_and_who_did_it_is_recorded_and_announced(staff: Staff, database_url: str) -> None:
    alarm_id = _tamper_alarm(database_url)
    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute(f"LISTEN {NOTIFY_CHANNEL}")
        r = staff.police.post(f"/api/alarms/{alarm_id}/assign", json={"assignee": "Officer Chen"})
        assert r.status_code == 200, r.text
        heard = [n.payload for n in listener.notifies(timeout=10, stop_after=1)]
    body = r.json()
    me = staff.police.get("/api/auth/me").json()["display_name"]
    assert body["assignee"] == "Officer Chen" and body["assigned_by"] == me and body["assigned_at"]
    assert body["state"] == "active"
    assert heard == [str(alarm_id)]
    assert staff.admin.post(f"/api/alarms/{alarm_id}/assign", json={"assignee": me}).json()["assignee"] == me


def test_only_police_and_admins_assign_and_not_a_cleared_alarm(staff: Staff, database_url: str) -> None:
    alarm_id = _tamper_alarm(database_url)
    assert staff.clerk.post(f"/api/alarms/{alarm_id}/assign", json={"assignee": "x"}).status_code == 403
    assert staff.anonymous.post(f"/api/alarms/{alarm_id}/assign", json={"assignee": "x"}).status_code == 401
    assert staff.police.post(f"/api/alarms/{alarm_id}/assign", json={"assignee": " "}).status_code == 422
    assert staff.police.post("/api/alarms/999999/assign", json={"assignee": "x"}).status_code == 404
    assert staff.police.post(f"/api/alarms/{alarm_id}/clear").status_code == 200
    assert staff.police.post(f"/api/alarms/{alarm_id}/assign", json={"assignee": "x"}).status_code == 409
