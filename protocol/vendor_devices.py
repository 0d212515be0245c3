"""The vendor bridge's devices file, as the backend writes each station's block and the bridge reads it
(gateway/vendor/devices.py): TOML, one `[[device]]` table per vendor station."""

from __future__ import annotations

import json

FIELDS = ("device_id", "station_id", "time_zone", "mqtt_url")


def device_block(device_id: str, station_id: str, time_zone: str, mqtt_url: str) -> str:
    """One station's `[[device]]` block."""
    values = (device_id, station_id, time_zone, mqtt_url)
    # A JSON string of ASCII is a TOML basic string: the same quotes and escapes (\" \\ \uXXXX).
    return "[[device]]\n" + "".join(
        f"{k} = {json.dumps(v, ensure_ascii=True)}\n" for k, v in zip(FIELDS, values, strict=True)
    )
