"""Stations as the backend knows them: registry and life cycle, latest status, recent passages; the road map."""

from __future__ import annotations

import functools
import re
from typing import Any
from zoneinfo import available_timezones

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from protocol.ids import VENDOR_DEVICE_ID_PATTERN

# The life cycle, in order; a station moves one step forward at a time, or to decommissioned from anywhere.
LIFECYCLE: tuple[str, ...] = ("planned", "installed", "commissioned", "active", "decommissioned")
_REGISTRY_FIELDS = (
    "name",
    "lat",
    "lon",
    "address",
    "mount_height_m",
    "antenna_bearing_deg",
    "radio_settings",
    "heartbeat_interval_s",
    # A mobile reader (issue 16): a station without a fixed place, whose lat/lon the ingest moves to its last fix.
    "mobile",
)
_COLUMNS = (
    "s.station_id, s.name, s.lat, s.lon, s.address, s.mount_height_m, s.antenna_bearing_deg, s.radio_settings,"
    " s.heartbeat_interval_s, s.lifecycle, s.lifecycle_changed_at, s.vendor_protocol, s.vendor_device_id, s.time_zone,"
    " s.mobile, s.position_at"
)
# The vendor protocols the bridge speaks (stations.vendor_protocol).
VENDOR_PROTOCOLS: tuple[str, ...] = ("mr7901",)
_VENDOR_DEVICE_ID = re.compile(VENDOR_DEVICE_ID_PATTERN)


class StationError(Exception):
    """Base of the station registry's errors."""


class StationNotFound(StationError):
    """No station has this id."""

    def __init__(self, station_id: str) -> None:
        super().__init__(f"no station {station_id}")
        self.station_id = station_id


class StationExists(StationError):
    """A station with this id is already registered."""

    def __init__(self, station_id: str) -> None:
        super().__init__(f"station {station_id} is already registered")
        self.station_id = station_id


class LifecycleError(StationError):
    """A life-cycle step that is not allowed from the station's current state."""

    def __init__(self, station_id: str, current: str, target: str) -> None:
        allowed = next_states(current)
        super().__init__(
            f"station {station_id} is {current}: it cannot become {target}"
            + (f" (allowed: {', '.join(allowed)})" if allowed else " (decommissioned is final)")
        )
        self.station_id, self.current, self.target = station_id, current, target


class VendorDeviceError(StationError):
    """A vendor device that cannot be registered as given: bad protocol, device id or time zone."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


class VendorDeviceTaken(StationError):
    """The vendor device id already belongs to another station."""

    def __init__(self, device_id: str, holder: str) -> None:
        super().__init__(f"vendor device {device_id} is already registered to station {holder}: remove it there first")
        self.device_id, self.holder = device_id, holder
        # For pages that word the refusal in their own language (the body's code and params).
        self.code = "vendor_device_taken"
        self.params = {"device_id": device_id, "station_id": holder}


class VendorStationDecommissioned(StationError):
    """A decommissioned station takes no vendor device."""

    def __init__(self, station_id: str) -> None:
        super().__init__(f"station {station_id} is decommissioned: it takes no vendor device")
        self.station_id = station_id


@functools.cache
def _time_zones() -> frozenset[str]:
    # The IANA names in the tz database (ZoneInfo alone also opens "posix/…", "right/…" and other files there);
    # "localtime" is the machine's own zone, not a place: the bridge's machine may be set to another.
    return frozenset(available_timezones() - {"localtime"})


def check_time_zone(name: str) -> str:
    """Return the name if it is an IANA time zone zoneinfo knows (e.g. Asia/Shanghai); raise VendorDeviceError."""
    if name not in _time_zones():
        raise VendorDeviceError(f"unknown time zone {name!r}: give an IANA name such as Asia/Shanghai", "time_zone")
    return name


def check_vendor_device(protocol: str, device_id: str, time_zone: str) -> None:
    """Raise VendorDeviceError unless the protocol is known, the device id is 1-16 printable ASCII characters
    (no space) and the time zone is an IANA name."""
    if protocol not in VENDOR_PROTOCOLS:
        raise VendorDeviceError(
            f"unknown vendor protocol {protocol!r} (known: {', '.join(VENDOR_PROTOCOLS)})", "protocol"
        )
    if _VENDOR_DEVICE_ID.fullmatch(device_id) is None:
        raise VendorDeviceError(
            f"invalid device id {device_id!r}: 1-16 printable ASCII characters, no spaces", "device_id"
        )
    check_time_zone(time_zone)


def next_states(current: str) -> tuple[str, ...]:
    """The states a station in `current` may move to: the next step, or decommissioned."""
    if current == "decommissioned":
        return ()
    step = LIFECYCLE[LIFECYCLE.index(current) + 1]
    return (step,) if step == "decommissioned" else (step, "decommissioned")


async def upsert_stations(
    conn: psycopg.AsyncConnection[Any], stations: list[dict[str, Any]], actor: str = "api"
) -> int:
    """Create or update stations by id (name and position); new ones are registered as active (in service)."""
    async with conn.transaction(), conn.cursor() as cur:
        await cur.executemany(
            "INSERT INTO stations (station_id, name, lat, lon, lifecycle)"
            " VALUES (%(station_id)s, %(name)s, %(lat)s, %(lon)s, 'active')"
            " ON CONFLICT (station_id) DO UPDATE SET name = excluded.name, lat = excluded.lat, lon = excluded.lon",
            stations,
        )
        await cur.execute(
            "INSERT INTO station_lifecycle_history (station_id, from_state, to_state, changed_by, note)"
            " SELECT s.station_id, NULL, s.lifecycle, %s, 'registered in bulk' FROM stations s"
            " WHERE s.station_id = ANY(%s) AND NOT EXISTS"
            "  (SELECT 1 FROM station_lifecycle_history h WHERE h.station_id = s.station_id)",
            (actor, [st["station_id"] for st in stations]),
        )
    return len(stations)


async def register_station(conn: psycopg.AsyncConnection[Any], station: dict[str, Any], actor: str) -> dict[str, Any]:
    """Register a new station as planned, with its mounting and radio settings."""
    values = {k: station.get(k) for k in _REGISTRY_FIELDS}
    values["radio_settings"] = Jsonb(values["radio_settings"] or {})
    values["heartbeat_interval_s"] = values["heartbeat_interval_s"] or 30
    values["mobile"] = bool(values["mobile"])
    async with conn.transaction():
        cur = await conn.execute(
            "INSERT INTO stations (station_id, " + ", ".join(_REGISTRY_FIELDS) + ", lifecycle)"
            " VALUES (%(station_id)s, " + ", ".join(f"%({k})s" for k in _REGISTRY_FIELDS) + ", 'planned')"
            " ON CONFLICT (station_id) DO NOTHING RETURNING station_id",
            {**values, "station_id": station["station_id"]},
        )
        if await cur.fetchone() is None:
            raise StationExists(station["station_id"])
        await conn.execute(
            "INSERT INTO station_lifecycle_history (station_id, from_state, to_state, changed_by)"
            " VALUES (%s, NULL, 'planned', %s)",
            (station["station_id"], actor),
        )
    return await get_station(conn, station["station_id"])


async def update_station(
    conn: psycopg.AsyncConnection[Any], station_id: str, changes: dict[str, Any]
) -> dict[str, Any]:
    """Change a station's registry fields (only those given); its life cycle changes by change_lifecycle."""
    required = ("name", "lat", "lon", "heartbeat_interval_s", "mobile")
    values = {k: v for k, v in changes.items() if k in _REGISTRY_FIELDS and not (v is None and k in required)}
    if "radio_settings" in values:
        values["radio_settings"] = Jsonb(values["radio_settings"] or {})
    # A reader that becomes fixed keeps the place it was given (or last reported), with no fix time any more.
    extra = ", position_at = NULL" if values.get("mobile") is False else ""
    if values:
        cur = await conn.execute(
            "UPDATE stations SET "
            + ", ".join(f"{k} = %({k})s" for k in values)
            + extra
            + " WHERE station_id = %(station_id)s RETURNING station_id",
            {**values, "station_id": station_id},
        )
        if await cur.fetchone() is None:
            raise StationNotFound(station_id)
    return await get_station(conn, station_id)


async def change_lifecycle(
    conn: psycopg.AsyncConnection[Any], station_id: str, target: str, actor: str, note: str | None = None
) -> dict[str, Any]:
    """Move a station one step forward in its life cycle (or to decommissioned), recording who and when."""
    async with conn.transaction():
        cur = await conn.execute("SELECT lifecycle FROM stations WHERE station_id = %s FOR UPDATE", (station_id,))
        row = await cur.fetchone()
        if row is None:
            raise StationNotFound(station_id)
        current = row[0]
        if target not in next_states(current):
            raise LifecycleError(station_id, current, target)
        await conn.execute(
            "UPDATE stations SET lifecycle = %s, lifecycle_changed_at = now() WHERE station_id = %s",
            (target, station_id),
        )
        await conn.execute(
            "INSERT INTO station_lifecycle_history (station_id, from_state, to_state, changed_by, note)"
            " VALUES (%s, %s, %s, %s, %s)",
            (station_id, current, target, actor, note),
        )
    return await get_station(conn, station_id)


async def set_vendor_device(
    conn: psycopg.AsyncConnection[Any], station_id: str, protocol: str, device_id: str, time_zone: str
) -> dict[str, Any]:
    """Register (or replace) the vendor device a station is: the protocol it speaks, the device id it sends and the
    time zone its clock runs in."""
    check_vendor_device(protocol, device_id, time_zone)
    try:
        async with conn.transaction():
            cur = await conn.execute(
                "UPDATE stations SET vendor_protocol = %s, vendor_device_id = %s, time_zone = %s"
                " WHERE station_id = %s RETURNING lifecycle",
                (protocol, device_id, time_zone, station_id),
            )
            row = await cur.fetchone()
            if row is None:
                raise StationNotFound(station_id)
            if row[0] == "decommissioned":
                raise VendorStationDecommissioned(station_id)
    except psycopg.errors.UniqueViolation:
        cur = await conn.execute("SELECT station_id FROM stations WHERE vendor_device_id = %s", (device_id,))
        holder = await cur.fetchone()
        raise VendorDeviceTaken(device_id, holder[0] if holder else "(another)") from None
    return await get_station(conn, station_id)


async def remove_vendor_device(conn: psycopg.AsyncConnection[Any], station_id: str) -> str | None:
    """Make a station one of ours again (no vendor device); returns the device id it had, if any."""
    cur = await conn.execute(
        "UPDATE stations s SET vendor_protocol = NULL, vendor_device_id = NULL, time_zone = NULL"
        " FROM stations old WHERE old.station_id = s.station_id AND s.station_id = %s RETURNING old.vendor_device_id",
        (station_id,),
    )
    row = await cur.fetchone()
    if row is None:
        raise StationNotFound(station_id)
    removed: str | None = row[0]
    return removed


async def get_station(conn: psycopg.AsyncConnection[Any], station_id: str) -> dict[str, Any]:
    """One station's registry record, its latest status and its life-cycle history (oldest first)."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"SELECT {_COLUMNS}, coalesce(st.state, 'unknown') AS state, st.received_at AS last_status_at,"
            " st.payload AS status FROM stations s LEFT JOIN station_status st USING (station_id)"
            " WHERE s.station_id = %s",
            (station_id,),
        )
        station = await cur.fetchone()
        if station is None:
            raise StationNotFound(station_id)
        await cur.execute(
            "SELECT from_state, to_state, changed_by, changed_at, note FROM station_lifecycle_history"
            " WHERE station_id = %s ORDER BY changed_at, history_id",
            (station_id,),
        )
        station["history"] = await cur.fetchall()
    return station


async def list_stations(conn: psycopg.AsyncConnection[Any]) -> list[dict[str, Any]]:
    """Every station with its registry record and state: online/offline from its retained status, unknown if never
    heard."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"SELECT {_COLUMNS}, coalesce(st.state, 'unknown') AS state,"
            " st.received_at AS last_status_at, st.payload AS status"
            " FROM stations s LEFT JOIN station_status st USING (station_id) ORDER BY s.station_id"
        )
        return await cur.fetchall()


async def activity(conn: psycopg.AsyncConnection[Any], minutes: int) -> list[dict[str, Any]]:
    """Passages per station in the last `minutes` (counts only: no tag is named); a mobile reader's with its last
    known position and fix time (the live map moves it there), a fixed station's with none."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT s.station_id, count(x.tag_id) AS passages, CASE WHEN s.mobile THEN s.lat END AS lat,"
            " CASE WHEN s.mobile THEN s.lon END AS lon, s.position_at FROM stations s"
            " LEFT JOIN sightings x ON x.station_id = s.station_id"
            "  AND x.first_seen_at >= now() - make_interval(mins => %s)"
            " GROUP BY s.station_id ORDER BY s.station_id",
            (minutes,),
        )
        return await cur.fetchall()


async def replace_roads(conn: psycopg.AsyncConnection[Any], roads: dict[str, Any]) -> int:
    """Replace the road network with a GeoJSON FeatureCollection of LineStrings."""
    features = roads.get("features", [])
    async with conn.transaction():
        await conn.execute("DELETE FROM roads")
        async with conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO roads (name, geometry) VALUES (%s, %s)",
                [((f.get("properties") or {}).get("name"), Jsonb(f["geometry"])) for f in features],
            )
    return len(features)


async def roads_geojson(conn: psycopg.AsyncConnection[Any]) -> dict[str, Any]:
    """The road network as a GeoJSON FeatureCollection."""
    cur = await conn.execute("SELECT name, geometry FROM roads ORDER BY road_id")
    return {
        "type": "FeatureCollection",
        "features": [
            {"type": "Feature", "properties": {"name": name}, "geometry": geometry}
            for name, geometry in await cur.fetchall()
        ],
    }
