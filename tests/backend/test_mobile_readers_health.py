"""The installer's view of a mobile reader: never degraded for hearing fewer passages than usual (that is where it
drove), marked mobile with its last fix on the installer page (en, zh) and in the health API."""

from __future__ import annotations

from datetime import timedelta

import psycopg

from backend.station_health import HealthRules, assess
from protocol.messages import utcnow
from tests import factories
from tests.backend.conftest import Staff


def _row(station_id: str, mobile: bool) -> dict[str, object]:
    now = utcnow()
    return {
        "station_id": station_id,
        "name": station_id,
        "lat": 30.0,
        "lon": 120.0,
        "lifecycle": "active",
        "heartbeat_interval_s": 30,
        "status_state": "online",
        "last_heartbeat_at": now,
        "payload": {},
        "usual_passages": 400,
        "passages_last_hour": 3,
        "mobile": mobile,
        "position_at": now if mobile else None,
    }


def test_fewer_passages_than_usual_degrade_a_fixed_station_and_not_a_mobile_reader() -> None:
    now = utcnow()
    fixed = assess(_row("st-1", mobile=False), now, HealthRules())
    patrol = assess(_row("patrol-1", mobile=True), now, HealthRules())
    assert fixed["health"] == "degraded" and fixed["reason_codes"] == ["fewer_passages"]
    assert patrol["health"] == "online" and patrol["reason_codes"] == [] and patrol["mobile"] is True


def test_installer_page_and_health_api_mark_the_mobile_reader(staff: Staff, database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        factories.station(conn, "st-north", 30.271, 120.150)
        factories.station(conn, "patrol-7", 30.262, 120.140)
        conn.execute(
            "UPDATE stations SET mobile = true, position_at = %s WHERE station_id = 'patrol-7'",
            (utcnow() - timedelta(minutes=2),),
        )
    en = staff.installer.get("/installer?lang=en").text
    assert en.count('data-kind="mobile"') == 1 and "Mobile reader" in en and "last position" in en
    assert "移动读卡器" in staff.installer.get("/installer?lang=zh").text
    health = {h["station_id"]: h for h in staff.installer.get("/api/stations/health").json()}
    assert health["patrol-7"]["mobile"] is True and health["patrol-7"]["position_at"]
    assert health["st-north"]["mobile"] is False and health["st-north"]["position_at"] is None
    # A fixed station is made mobile and back by the installer; fixed again, it has no fix time.
    r = staff.installer.request("PATCH", "/api/stations/st-north", json={"mobile": True})
    assert r.status_code == 200 and r.json()["mobile"] is True
    r = staff.installer.request("PATCH", "/api/stations/patrol-7", json={"mobile": False})
    assert r.status_code == 200 and r.json()["mobile"] is False and r.json()["position_at"] is None
    # Only installers and admins change it.
    assert staff.police.request("PATCH", "/api/stations/st-north", json={"mobile": False}).status_code == 403
    assert staff.clerk.request("PATCH", "/api/stations/st-north", json={"mobile": False}).status_code == 403
