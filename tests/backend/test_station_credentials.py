"""Station MQTT passwords kept in the database as hashes, and Mosquitto's files generated from the stations."""

from __future__ import annotations

import asyncio
import base64
import stat
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import psycopg
import pytest

from backend import provisioning
from bikeguard.cli import main as cli
from bikeguard.services import start_broker
from protocol import topics
from protocol.signing import generate_signing_key, public_key_of
from tests import factories
from tests.backend.conftest import Staff
from tests.backend.test_ingest import wait_until
from tests.backend.test_provisioning import require_mosquitto, subscribe_and_wait
from tests.backend.test_station_registry import new_station

BACKEND_PASSWORD = "backend secret for the broker"


def _station(staff: Staff) -> str:
    r = staff.installer.post("/api/stations", json=new_station())
    assert r.status_code == 201, r.text
    return str(r.json()["station_id"])


def _issue(staff: Staff, station_id: str) -> str:
    r = staff.installer.post(f"/api/stations/{station_id}/credentials")
    assert r.status_code == 201, r.text
    return str(r.json()["password"])


def _broker_files(database_url: str, out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BIKEGUARD_DATABASE_URL", database_url)
    monkeypatch.setenv("BIKEGUARD_ENVIRONMENT", "development")
    monkeypatch.setenv("BIKEGUARD_BROKER_BACKEND_PASSWORD", BACKEND_PASSWORD)
    assert cli(["broker", "files", "--out", str(out)]) == 0


def test_installer_and_admin_issue_a_password_shown_once(staff: Staff) -> None:
    sid = _station(staff)
    r = staff.installer.post(f"/api/stations/{sid}/credentials")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["station_id"] == body["username"] == sid
    assert len(body["password"]) >= 20 and body["issued_at"]
    # The station takes only hot lists signed by this backend: it is given the public half with its password.
    assert body["hotlist_public_key"] == public_key_of(factories.SECRETS["hotlist_signing_key"].get_secret_value())
    assert r.headers["cache-control"] == "no-store"
    assert staff.admin.post(f"/api/stations/{sid}/credentials").status_code == 201
    audit = staff.admin.get("/api/audit").json()
    assert [a["subject"] for a in audit if a["action"] == "station.credentials_issue"] == [f"station:{sid}"] * 2


def test_police_clerk_owner_and_strangers_may_not_issue_or_see_credentials(staff: Staff) -> None:
    sid = _station(staff)
    owner = staff.owner_of(staff.register())
    for caller in (staff.police, staff.clerk, owner):
        assert caller.post(f"/api/stations/{sid}/credentials").status_code == 403
        assert caller.get(f"/api/stations/{sid}/credentials").status_code == 403
    assert staff.anonymous.post(f"/api/stations/{sid}/credentials").status_code == 401
    with psycopg.connect(staff.database_url) as conn:
        assert conn.execute("SELECT count(*) FROM station_credentials").fetchone() == (0,)


def test_password_is_stored_only_as_its_mosquitto_hash(staff: Staff) -> None:
    sid = _station(staff)
    password = _issue(staff, sid)
    with psycopg.connect(staff.database_url) as conn:
        rows = conn.execute("SELECT * FROM station_credentials").fetchall()
    assert len(rows) == 1 and not any(password in str(v) for v in rows[0])
    (stored,) = [v for v in rows[0] if isinstance(v, str) and v.startswith("$7$")]
    _, _, iterations, salt, _ = stored.split("$")
    assert provisioning.password_hash(password, base64.b64decode(salt), int(iterations)) == stored


def test_rotation_replaces_the_password_and_keeps_who_and_when(staff: Staff) -> None:
    sid = _station(staff)
    _issue(staff, sid)
    assert staff.admin.post(f"/api/stations/{sid}/credentials").status_code == 201
    history = staff.installer.get(f"/api/stations/{sid}/credentials").json()
    assert [(h["issued_by"], h["revoked_by"]) for h in history] == [
        (f"admin:{staff.admin.username}", None),
        (f"installer:{staff.installer.username}", f"admin:{staff.admin.username}"),
    ]
    assert history[1]["revoked_at"] and history[0]["issued_at"] >= history[1]["issued_at"]
    assert all("hash" not in key and "password" not in key for h in history for key in h)


def test_unknown_station_is_404_and_decommissioned_station_is_409(staff: Staff) -> None:
    assert staff.installer.post("/api/stations/st-none/credentials").status_code == 404
    assert staff.installer.get("/api/stations/st-none/credentials").status_code == 404
    sid = _station(staff)
    staff.installer.post(f"/api/stations/{sid}/lifecycle", json={"state": "decommissioned"})
    r = staff.installer.post(f"/api/stations/{sid}/credentials")
    assert r.status_code == 409 and "decommissioned" in r.json()["detail"]


def test_broker_files_hold_stations_with_a_password_and_not_decommissioned_ones(database_url: str) -> None:
    backend_hash = provisioning.password_hash(BACKEND_PASSWORD)

    async def run() -> tuple[str, str]:
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            for sid in ("st-kept", "st-gone", "st-none"):
                await conn.execute(
                    "INSERT INTO stations (station_id, name, lat, lon) VALUES (%s, %s, 30, 120)", (sid, sid)
                )
            await provisioning.issue_credentials(conn, "st-kept", "test")
            await provisioning.issue_credentials(conn, "st-gone", "test")
            await conn.execute("UPDATE stations SET lifecycle = 'decommissioned' WHERE station_id = 'st-gone'")
            with pytest.raises(provisioning.StationDecommissioned):
                await provisioning.issue_credentials(conn, "st-gone", "test")
            await conn.execute(
                "INSERT INTO stations (station_id, name, lat, lon) VALUES (%s, %s, 30, 120)",
                ("bikeguard-backend", "named like the backend"),
            )
            await provisioning.issue_credentials(conn, "bikeguard-backend", "test")
            with pytest.raises(provisioning.BackendUserClash):
                await provisioning.broker_files(conn, "bikeguard-backend", backend_hash)
            return await provisioning.broker_files(conn, "backend", backend_hash)

    passwd, acl = asyncio.run(run())
    assert sorted(line.split(":")[0] for line in passwd.splitlines()) == ["backend", "bikeguard-backend", "st-kept"]
    assert f"backend:{backend_hash}" in passwd.splitlines()
    assert "user st-kept" in acl and "st-gone" not in acl and "st-none" not in acl


def test_station_credentials_command_prints_the_password_once_with_the_gateway_settings(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BIKEGUARD_DATABASE_URL", database_url)
    monkeypatch.setenv("BIKEGUARD_ENVIRONMENT", "development")
    key = generate_signing_key()
    monkeypatch.setenv("BIKEGUARD_HOTLIST_SIGNING_KEY", key)
    with psycopg.connect(database_url) as conn:
        sid = factories.station(conn, f"st-{uuid.uuid4().hex[:8]}")
    assert cli(["station", "credentials", sid, "--broker", "broker.example:1883"]) == 0
    out = capsys.readouterr().out
    password = out.splitlines()[1].strip()
    assert f"BIKEGUARD_GATEWAY_STATION_ID={sid}" in out
    assert f"BIKEGUARD_GATEWAY_MQTT_URL=mqtt://{sid}:{password}@broker.example:1883" in out
    assert f"BIKEGUARD_GATEWAY_HOTLIST_PUBLIC_KEY={public_key_of(key)}" in out
    with psycopg.connect(database_url) as conn:
        (issued_by,) = conn.execute(
            "SELECT issued_by FROM station_credentials WHERE station_id = %s", (sid,)
        ).fetchone() or (None,)
    assert issued_by and issued_by.startswith("command line")
    assert cli(["station", "credentials", "st-none"]) == 1
    assert "no station st-none" in capsys.readouterr().err


def test_station_signing_key_command_prints_a_key_and_its_public_half(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["station", "signing-key"]) == 0
    lines = dict(line.strip().split("=", 1) for line in capsys.readouterr().out.splitlines() if "=" in line)
    assert lines["BIKEGUARD_GATEWAY_HOTLIST_PUBLIC_KEY"] == public_key_of(lines["BIKEGUARD_HOTLIST_SIGNING_KEY"])


def test_broker_files_command_writes_private_files(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _broker_files(database_url, tmp_path / "mosquitto", monkeypatch)
    for name in ("passwd", "acl"):
        assert stat.S_IMODE((tmp_path / "mosquitto" / name).stat().st_mode) == 0o600
    assert (tmp_path / "mosquitto" / "passwd").read_text().startswith("bikeguard-backend:$7$")
    assert "SIGHUP" in capsys.readouterr().out
    assert cli(["broker", "files", "--out", str(tmp_path), "--backend-hash", "clear text"]) == 1


class _Station:
    """A paho client as one MQTT user, recording CONNACK codes and disconnects."""

    def __init__(self, port: int, user: str, password: str) -> None:
        self.codes: list[int] = []
        self.disconnected = threading.Event()
        self.received: list[str] = []
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"{user}-{uuid.uuid4().hex[:6]}", reconnect_on_failure=False
        )
        self.client.username_pw_set(user, password)
        self.client.on_connect = lambda _c, _u, _f, reason, _p: self.codes.append(reason.value)
        self.client.on_disconnect = lambda *_a: self.disconnected.set()
        self.client.on_message = lambda _c, _u, m: self.received.append(m.topic)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        wait_until(lambda: bool(self.codes), 15)

    @property
    def accepted(self) -> bool:
        return self.codes == [0]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _accepted(port: int, user: str, password: str) -> bool:
    station = _Station(port, user, password)
    station.close()
    return station.accepted


@pytest.mark.mosquitto
def test_mosquitto_with_files_from_the_database_follows_rotation_and_decommissioning(
    staff: Staff, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_mosquitto()
    a, b = _station(staff), _station(staff)
    password_a, password_b = _issue(staff, a), _issue(staff, b)
    _broker_files(staff.database_url, tmp_path, monkeypatch)
    broker = start_broker("mosquitto", passwords=(tmp_path / "passwd").read_text(), acl=(tmp_path / "acl").read_text())

    def regenerate_and_reload() -> None:
        _broker_files(staff.database_url, tmp_path, monkeypatch)
        broker.install((tmp_path / "passwd").read_text(), (tmp_path / "acl").read_text())  # and SIGHUP

    try:
        backend = _Station(broker.port, "bikeguard-backend", BACKEND_PASSWORD)
        assert backend.accepted
        subscribe_and_wait(
            backend.client, [(topics.station_filter("sightings"), 1), (topics.station_topic(a, topics.SELFTEST), 1)]
        )
        station_a = _Station(broker.port, a, password_a)
        assert station_a.accepted and not _accepted(broker.port, a, password_b)
        for topic in (
            topics.station_topic(b, "sightings"),
            topics.station_topic(a, "sightings"),
            topics.station_topic(a, topics.SELFTEST),
        ):
            station_a.client.publish(topic, b"{}", qos=1).wait_for_publish(5)
        wait_until(lambda: topics.station_topic(a, topics.SELFTEST) in backend.received)
        time.sleep(0.3)
        assert sorted(backend.received) == sorted(
            [topics.station_topic(a, "sightings"), topics.station_topic(a, topics.SELFTEST)]
        )  # not as b

        new_password_a = _issue(staff, a)
        assert _accepted(broker.port, a, password_a)  # the broker knows nothing until its files are regenerated
        regenerate_and_reload()
        assert station_a.disconnected.wait(15)  # Mosquitto drops a client whose password is no longer valid
        assert not _accepted(broker.port, a, password_a)
        assert _accepted(broker.port, a, new_password_a)

        station_b = _Station(broker.port, b, password_b)
        assert station_b.accepted
        assert staff.installer.post(f"/api/stations/{b}/lifecycle", json={"state": "decommissioned"}).status_code == 200
        regenerate_and_reload()
        assert station_b.disconnected.wait(15)
        assert not _accepted(broker.port, b, password_b)
        assert _accepted(broker.port, "bikeguard-backend", BACKEND_PASSWORD)
        for c in (backend, station_a, station_b):
            c.close()
    finally:
        broker.stop()
