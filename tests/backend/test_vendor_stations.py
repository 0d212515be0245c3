"""Vendor (MR7901) stations: the installer registers a station's vendor device, and its credentials come with the
`[[device]]` block of the bridge's devices file."""

from __future__ import annotations

import tomllib
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from backend import provisioning
from bikeguard.cli import main as cli
from gateway.vendor.devices import load_devices
from tests.backend.conftest import Staff
from tests.backend.test_station_registry import new_station


def _station(staff: Staff) -> str:
    r = staff.installer.post("/api/stations", json=new_station())
    assert r.status_code == 201, r.text
    return str(r.json()["station_id"])


def _device_id() -> str:
    return f"MR7901-{uuid.uuid4().hex[:6].upper()}"


def _vendor(device_id: str, time_zone: str = "Asia/Shanghai") -> dict[str, str]:
    return {"protocol": "mr7901", "device_id": device_id, "time_zone": time_zone}


def _vendor_columns(database_url: str, station_id: str) -> tuple[Any, ...] | None:
    with psycopg.connect(database_url) as conn:
        return conn.execute(
            "SELECT vendor_protocol, vendor_device_id, time_zone FROM stations WHERE station_id = %s", (station_id,)
        ).fetchone()


def test_installer_registers_replaces_and_removes_a_vendor_device(staff: Staff) -> None:
    sid = _station(staff)
    ours = staff.installer.get(f"/api/stations/{sid}").json()
    assert (ours["vendor_protocol"], ours["vendor_device_id"], ours["time_zone"]) == (None, None, None)
    device = _device_id()
    r = staff.installer.put(f"/api/stations/{sid}/vendor-device", json=_vendor(device))
    assert r.status_code == 200, r.text
    assert (r.json()["vendor_protocol"], r.json()["vendor_device_id"], r.json()["time_zone"]) == (
        "mr7901",
        device,
        "Asia/Shanghai",
    )
    # The same in every view of the station: its record, the list and its health.
    assert staff.police.get(f"/api/stations/{sid}").json()["vendor_device_id"] == device
    listed = {s["station_id"]: s for s in staff.installer.get("/api/stations").json()}
    assert listed[sid]["vendor_device_id"] == device and listed[sid]["time_zone"] == "Asia/Shanghai"
    health = {s["station_id"]: s for s in staff.installer.get("/api/stations/health").json()}
    assert health[sid]["vendor_protocol"] == "mr7901" and health[sid]["health"] == "offline"

    replaced = _device_id()
    r = staff.admin.put(f"/api/stations/{sid}/vendor-device", json=_vendor(replaced, "Asia/Urumqi"))
    assert r.status_code == 200, r.text
    assert _vendor_columns(staff.database_url, sid) == ("mr7901", replaced, "Asia/Urumqi")

    r = staff.installer.request("DELETE", f"/api/stations/{sid}/vendor-device")
    assert r.status_code == 200, r.text
    assert (r.json()["vendor_protocol"], r.json()["vendor_device_id"], r.json()["time_zone"]) == (None, None, None)
    assert _vendor_columns(staff.database_url, sid) == (None, None, None)
    # The device id is free again: another station may take it.
    other = _station(staff)
    assert staff.installer.put(f"/api/stations/{other}/vendor-device", json=_vendor(replaced)).status_code == 200

    audit = [a for a in staff.admin.get("/api/audit").json() if a["subject"] == f"station:{sid}"]
    assert sorted(a["action"] for a in audit) == [
        "station.vendor_device_remove",
        "station.vendor_device_set",
        "station.vendor_device_set",
    ]


def test_a_device_id_registered_to_another_station_is_refused_with_409(staff: Staff) -> None:
    first, second = _station(staff), _station(staff)
    device = _device_id()
    assert staff.installer.put(f"/api/stations/{first}/vendor-device", json=_vendor(device)).status_code == 200
    r = staff.installer.put(f"/api/stations/{second}/vendor-device", json=_vendor(device))
    assert r.status_code == 409, r.text
    assert r.json()["detail"] == (
        f"vendor device {device} is already registered to station {first}: remove it there first"
    )
    assert r.json()["code"] == "vendor_device_taken"
    assert r.json()["params"] == {"device_id": device, "station_id": first}
    assert _vendor_columns(staff.database_url, second) == (None, None, None)
    # Registering it again where it is (a new time zone) is a replacement, not a clash.
    r = staff.installer.put(f"/api/stations/{first}/vendor-device", json=_vendor(device, "Europe/Berlin"))
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (_vendor("MR7901-1", "Mars/Olympus_Mons"), "time_zone"),
        (_vendor("MR7901-1", ""), "time_zone"),
        (_vendor("MR7901-1", "../../etc/passwd"), "time_zone"),
        (_vendor("MR7901-1", "localtime"), "time_zone"),  # the machine's own zone: the bridge's may differ
        (_vendor("MR7901-1", "posix/Asia/Shanghai"), "time_zone"),  # a file under zoneinfo, not an IANA name
        (_vendor("MR7901 1"), "device_id"),  # a space
        (_vendor(""), "device_id"),
        (_vendor("A" * 17), "device_id"),  # the frame holds 16 bytes
        (_vendor("MR7901-é"), "device_id"),  # not ASCII
        ({**_vendor("MR7901-1"), "protocol": "jt808"}, "protocol"),
        ({"protocol": "mr7901", "device_id": "MR7901-1"}, "time_zone"),
    ],
)
def test_a_bad_time_zone_device_id_or_protocol_is_refused_with_422(
    staff: Staff, body: dict[str, str], field: str
) -> None:
    sid = _station(staff)
    r = staff.installer.put(f"/api/stations/{sid}/vendor-device", json=body)
    assert r.status_code == 422, r.text
    assert [e["loc"][-1] for e in r.json()["detail"]] == [field]
    assert _vendor_columns(staff.database_url, sid) == (None, None, None)


def test_an_unknown_station_is_404_and_a_decommissioned_one_takes_no_device(staff: Staff) -> None:
    assert staff.installer.put("/api/stations/st-none/vendor-device", json=_vendor(_device_id())).status_code == 404
    assert staff.installer.request("DELETE", "/api/stations/st-none/vendor-device").status_code == 404
    sid = _station(staff)
    r = staff.installer.post(f"/api/stations/{sid}/lifecycle", json={"state": "decommissioned"})
    assert r.status_code == 200, r.text
    r = staff.installer.put(f"/api/stations/{sid}/vendor-device", json=_vendor(_device_id()))
    assert r.status_code == 409 and "decommissioned" in r.json()["detail"]
    assert _vendor_columns(staff.database_url, sid) == (None, None, None)


def test_owner_police_clerk_and_strangers_cannot_register_or_remove_a_vendor_device(staff: Staff) -> None:
    sid = _station(staff)
    device = _device_id()
    assert staff.installer.put(f"/api/stations/{sid}/vendor-device", json=_vendor(device)).status_code == 200
    owner = staff.owner_of(staff.register())
    for caller in (owner, staff.police, staff.clerk):
        # Pointing a station's device id elsewhere would hand its reads (and its bikes' positions) to another place.
        assert caller.put(f"/api/stations/{sid}/vendor-device", json=_vendor(_device_id())).status_code == 403
        assert caller.request("DELETE", f"/api/stations/{sid}/vendor-device").status_code == 403
    assert staff.anonymous.put(f"/api/stations/{sid}/vendor-device", json=_vendor(_device_id())).status_code == 401
    assert staff.anonymous.request("DELETE", f"/api/stations/{sid}/vendor-device").status_code == 401
    assert _vendor_columns(staff.database_url, sid) == ("mr7901", device, "Asia/Shanghai")


def test_credentials_of_a_vendor_station_carry_the_bridge_devices_file_block(staff: Staff) -> None:
    sid = _station(staff)
    device = _device_id()
    assert staff.installer.put(f"/api/stations/{sid}/vendor-device", json=_vendor(device)).status_code == 200
    r = staff.installer.post(f"/api/stations/{sid}/credentials")
    assert r.status_code == 201, r.text
    body = r.json()
    assert r.headers["cache-control"] == "no-store"
    parsed = tomllib.loads(body["bridge_device_entry"])
    assert parsed == {
        "device": [
            {
                "device_id": device,
                "station_id": sid,
                "time_zone": "Asia/Shanghai",
                # The backend cannot know the broker's address as the bridge reaches it: the installer fills it in.
                "mqtt_url": f"mqtt://{sid}:{body['password']}@<broker-host>:1883",
            }
        ]
    }


def test_credentials_of_our_own_station_carry_no_devices_file_block(staff: Staff) -> None:
    sid = _station(staff)
    r = staff.installer.post(f"/api/stations/{sid}/credentials")
    assert r.status_code == 201, r.text
    assert r.json()["bridge_device_entry"] is None


def test_devices_file_block_escapes_quotes_and_backslashes_in_a_device_id() -> None:
    issued = provisioning.IssuedCredentials(
        "st-0042", "pw-x_Y", datetime(2026, 11, 29, tzinfo=UTC), vendor_device_id='A"B\\C#=[x]', time_zone="UTC"
    )
    entry = provisioning.bridge_device_entry(issued, "broker.example:1883")
    assert entry is not None
    assert tomllib.loads(entry)["device"] == [
        {
            "device_id": 'A"B\\C#=[x]',
            "station_id": "st-0042",
            "time_zone": "UTC",
            "mqtt_url": "mqtt://st-0042:pw-x_Y@broker.example:1883",
        }
    ]
    ours = provisioning.IssuedCredentials("st-0043", "pw", datetime(2026, 11, 29, tzinfo=UTC))
    assert provisioning.bridge_device_entry(ours, "broker.example:1883") is None


def test_station_credentials_command_prints_the_devices_file_block_of_a_vendor_station(
    staff: Staff, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BIKEGUARD_DATABASE_URL", staff.database_url)
    monkeypatch.setenv("BIKEGUARD_ENVIRONMENT", "development")
    sid = _station(staff)
    device = _device_id()
    assert staff.installer.put(f"/api/stations/{sid}/vendor-device", json=_vendor(device)).status_code == 200
    assert cli(["station", "credentials", sid, "--broker", "broker.example:1883"]) == 0
    out = capsys.readouterr().out
    password = out.splitlines()[1].strip()
    block = out[out.index("[[device]]") :].split("\n\n")[0]
    assert tomllib.loads(block)["device"] == [
        {
            "device_id": device,
            "station_id": sid,
            "time_zone": "Asia/Shanghai",
            "mqtt_url": f"mqtt://{sid}:{password}@broker.example:1883",
        }
    ]
    assert "BIKEGUARD_GATEWAY_STATION_ID" not in out  # a vendor station runs no gateway of ours
    assert "restart the bridge" in out


def test_database_keeps_the_three_vendor_columns_all_set_or_all_null(database_url: str) -> None:
    sid = f"st-{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database_url) as conn:
        conn.execute("INSERT INTO stations (station_id, name, lat, lon) VALUES (%s, 'x', 30, 120)", (sid,))
        conn.commit()
        for columns in (
            "vendor_protocol = 'mr7901', vendor_device_id = 'MR-1'",  # no time zone
            "vendor_protocol = 'mr7901', vendor_device_id = 'MR 1', time_zone = 'UTC'",  # a space
            "vendor_protocol = 'other', vendor_device_id = 'MR-1', time_zone = 'UTC'",
        ):
            with pytest.raises(psycopg.errors.CheckViolation):
                conn.execute(f"UPDATE stations SET {columns} WHERE station_id = %s", (sid,))  # type: ignore[arg-type]
            conn.rollback()


def test_the_bridge_loads_the_blocks_the_backend_gives_once_the_broker_is_filled_in(
    staff: Staff, tmp_path: Path
) -> None:
    blocks, expected = [], {}
    for zone in ("Asia/Shanghai", "Asia/Urumqi"):
        sid, device = _station(staff), _device_id()
        assert staff.installer.put(f"/api/stations/{sid}/vendor-device", json=_vendor(device, zone)).status_code == 200
        r = staff.installer.post(f"/api/stations/{sid}/credentials")
        assert r.status_code == 201, r.text
        # What the installer does with the page's block: the broker's address in place of the placeholder.
        blocks.append(r.json()["bridge_device_entry"].replace(provisioning.BROKER_PLACEHOLDER, "broker.example:1883"))
        expected[device] = (sid, zone, f"mqtt://{sid}:{r.json()['password']}@broker.example:1883")
    devices_file = tmp_path / "devices.toml"
    devices_file.write_text("\n".join(blocks), encoding="utf-8")
    loaded = {
        d.device_id: (d.station_id, d.time_zone.key, d.mqtt_url.get_secret_value()) for d in load_devices(devices_file)
    }
    assert loaded == expected
