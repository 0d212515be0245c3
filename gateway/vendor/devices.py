"""The bridge's devices file: which vendor device id is which Bikeguard station, its clock's time zone and its
broker credentials. The installer pastes each `[[device]]` block the backend gives when it issues the station's
credentials (docs/installer.md)."""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import SecretStr

from protocol.ids import IdError, check_station_id
from protocol.mqtt_address import mqtt_address
from protocol.mr7901 import DEVICE_ID_SIZE
from protocol.vendor_devices import FIELDS, device_block


class DevicesFileError(ValueError):
    """The devices file cannot be used; says which device entry and field is wrong."""


@dataclass(frozen=True, slots=True)
class VendorDevice:
    """One vendor station the bridge serves."""

    device_id: str
    station_id: str
    time_zone: ZoneInfo
    mqtt_url: SecretStr


def _device(entry: object, where: str) -> VendorDevice:
    if not isinstance(entry, dict):
        raise DevicesFileError(f"{where}: not a table")
    missing = [name for name in FIELDS if not isinstance(entry.get(name), str)]
    if missing:
        raise DevicesFileError(f"{where}: missing or not text: {', '.join(missing)}")
    unknown = sorted(set(entry) - set(FIELDS))
    if unknown:
        raise DevicesFileError(f"{where}: unknown fields: {', '.join(unknown)}")
    device_id = entry["device_id"]
    if not (0 < len(device_id) <= DEVICE_ID_SIZE and all(0x21 <= ord(c) <= 0x7E for c in device_id)):
        raise DevicesFileError(f"{where}: device_id {device_id!r} is not 1-{DEVICE_ID_SIZE} printable ASCII characters")
    try:
        station_id = check_station_id(entry["station_id"])
        time_zone = ZoneInfo(entry["time_zone"])
    except (IdError, ZoneInfoNotFoundError, ValueError) as exc:
        raise DevicesFileError(f"{where}: {exc}") from exc
    try:
        mqtt_address(entry["mqtt_url"])
    except ValueError:
        # Not the error's text: it would repeat the URL, password and all.
        raise DevicesFileError(f"{where}: mqtt_url is not an mqtt:// or mqtts:// URL with a valid port") from None
    return VendorDevice(device_id, station_id, time_zone, SecretStr(entry["mqtt_url"]))


def load_devices(path: Path) -> list[VendorDevice]:
    """The devices of the file, each device id and station once; DevicesFileError says what is wrong."""
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise DevicesFileError(f"{path}: {exc}") from exc
    entries = document.get("device", [])
    if not isinstance(entries, list):
        raise DevicesFileError(f"{path}: `device` must be [[device]] tables")
    devices = [_device(entry, f"{path}, device {i + 1}") for i, entry in enumerate(entries)]
    for name in ("device_id", "station_id"):
        seen: set[str] = set()
        for device in devices:
            value = getattr(device, name)
            if value in seen:
                raise DevicesFileError(f"{path}: {name} {value!r} is listed twice")
            seen.add(value)
    return devices


def devices_toml(devices: Sequence[VendorDevice]) -> str:
    """The devices file (TOML) that `load_devices` reads back as `devices`: one [[device]] block each."""
    return "\n".join(
        device_block(d.device_id, d.station_id, d.time_zone.key, d.mqtt_url.get_secret_value()) for d in devices
    )
