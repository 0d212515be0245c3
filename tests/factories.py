"""Small factories for test data: rows written straight into the test's database, settings, request bodies."""

from __future__ import annotations

import itertools
from datetime import date, datetime, timedelta
from typing import Any

import psycopg
from argon2 import PasswordHasher

from backend.identity import check_character
from backend.settings import BackendSettings, random_secret_settings
from backend.vault import Vault
from protocol.messages import Sighting, SightingBatch, format_tag, utcnow

_plates = itertools.count(10000)
_people = itertools.count(1)
_serials = itertools.count(1)
_tags = itertools.count(0x7E000000)

# One set of keys for the whole run, so rows written here and the app under test agree.
SECRETS = random_secret_settings()
VAULT = Vault(SECRETS["id_encryption_key"].get_secret_value(), SECRETS["id_lookup_key"].get_secret_value())
PASSWORD = "correct horse battery"
# Cheap hashing for tests: the app verifies any argon2 hash by the parameters it carries.
_HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


def settings(database_url: str, **overrides: Any) -> BackendSettings:
    """Backend settings for a test: development mode, random secrets, cheap password hashing, no broker unless given."""
    values: dict[str, Any] = {
        # The app under test is served over plain HTTP (TestClient, uvicorn on 127.0.0.1): development mode, asked
        # for as a deployment must ask for it; the secrets are random all the same.
        "environment": "development",
        "database_url": database_url,
        **SECRETS,
        "password_time_cost": 1,
        "password_memory_kib": 1024,
        "mqtt_shared_group": None,
    }
    values.update(overrides)
    return BackendSettings(**values)


def id_number(n: int | None = None, born: date = date(1990, 5, 17)) -> str:
    """A valid resident ID number (GB 11643 check character included), different for each n."""
    n = next(_people) if n is None else n
    first17 = f"{330100 + (n // 1000) % 100:06d}{born:%Y%m%d}{n % 1000:03d}"
    return first17 + check_character(first17)


def mobile(n: int | None = None) -> str:
    """A valid mainland mobile number."""
    return f"138{(next(_people) if n is None else n) % 100_000_000:08d}"


def plate() -> str:
    """A fresh plate in the default local pattern."""
    return f"HZ-{next(_plates) % 100_000:05d}"


def serial(prefix: str) -> str:
    """A fresh frame or motor number."""
    return f"{prefix}{next(_serials):08d}"


def tag() -> str:
    """A fresh chip id (8 hex digits)."""
    return format_tag(next(_tags))


def owner_body(**overrides: Any) -> dict[str, Any]:
    """The `owner` part of a registration request, for a new person."""
    n = next(_people)
    body = {
        "name": "Wang Fang",
        "id_number": id_number(n),
        "mobile": mobile(n),
        "address": "1 West Lake Road",
        "create_account": True,
    }
    body.update(overrides)
    return body


def registration(**overrides: Any) -> dict[str, Any]:
    """A complete, valid POST /api/bikes body with a new owner (override owner= or owner_id= as needed)."""
    body: dict[str, Any] = {
        "owner": owner_body(),
        "plate": plate(),
        "frame_number": serial("FR"),
        "motor_number": serial("MT"),
        "brand": "Yadea",
        "model": "G5",
        "colour": "blue",
        "tag_id": tag(),
    }
    body.update(overrides)
    if "owner_id" in overrides:
        body.pop("owner", None)
    return body


def station(conn: psycopg.Connection, station_id: str, lat: float = 30.27, lon: float = 120.15) -> str:
    """A station at a position, registered as planned (so the ingest accepts what it sends); no-op if it exists."""
    conn.execute(
        "INSERT INTO stations (station_id, name, lat, lon) VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
        (station_id, f"Station {station_id}", lat, lon),
    )
    return station_id


def owner(conn: psycopg.Connection, name: str = "Li Wei") -> int:
    """An owner with a valid identity; returns the owner id."""
    n = next(_people)
    number = id_number(n)
    row = conn.execute(
        "INSERT INTO owners (name, id_number_hash, id_number_enc, mobile, address) VALUES (%s, %s, %s, %s, %s)"
        " RETURNING owner_id",
        (name, VAULT.lookup_hash(number), VAULT.encrypt(number), mobile(n), "2 Lake Street"),
    ).fetchone()
    return int(row[0])  # type: ignore[index]


def bike(
    conn: psycopg.Connection,
    tag_id: int,
    plate_number: str | None = None,
    owner_id: int | None = None,
    armed: bool = False,
) -> int:
    """A bike carrying chip tag_id, of a new owner or an existing one; returns the bike id."""
    owner_id = owner(conn) if owner_id is None else owner_id
    bike_id = conn.execute(
        "INSERT INTO bikes (plate, owner_id, frame_number, motor_number, armed) VALUES (%s, %s, %s, %s, %s)"
        " RETURNING bike_id",
        (plate_number or plate(), owner_id, serial("FR"), serial("MT"), armed),
    ).fetchone()[0]  # type: ignore[index]
    conn.execute("INSERT INTO chips (tag_id, bike_id) VALUES (%s, %s)", (tag_id, bike_id))
    return int(bike_id)


def theft(conn: psycopg.Connection, bike_id: int, stolen_at: datetime | None = None) -> None:
    """An open theft report for the bike."""
    conn.execute(
        "INSERT INTO theft_reports (bike_id, stolen_at) VALUES (%s, %s)",
        (bike_id, stolen_at or utcnow() - timedelta(minutes=5)),
    )


def account(
    conn: psycopg.Connection,
    role: str,
    username: str | None = None,
    password: str = PASSWORD,
    owner_id: int | None = None,
    must_change_password: bool = False,
) -> str:
    """An account of this role (an owner's needs owner_id); returns the username."""
    username = username or f"{role}{next(_people)}"
    conn.execute(
        "INSERT INTO accounts (username, password_hash, role, owner_id, display_name, must_change_password,"
        " created_by) VALUES (%s, %s, %s, %s, %s, %s, 'factory')",
        (username, _HASHER.hash(password), role, owner_id, f"{role.title()} {username}", must_change_password),
    )
    return username


def batch(station_id: str, seq: int, tags: list[int], at: datetime | None = None, flags: int = 0) -> SightingBatch:
    """A batch with one sighting per tag."""
    at = at or utcnow()
    return SightingBatch(
        station_id=station_id,
        batch_seq=seq,
        sent_at=at,
        sightings=[
            Sighting(
                tag_id=format_tag(t),
                first_seen_at=at - timedelta(seconds=5),
                last_seen_at=at,
                beacons=3,
                peak_rssi_dbm=-60,
                antenna=0,
                flags=flags,
            )
            for t in tags
        ],
    )


def count_hourly_passages(owner_url: str) -> None:
    """Count every hour of sightings into station_passages_hourly's materialised part, as its refresh does (the policy
    job on TimescaleDB, the maintenance on plain PostgreSQL) but over all of history: for tests that write history
    after the backend's last refresh, which a running system would count at its next."""
    with psycopg.connect(owner_url, autocommit=True) as conn:
        if conn.execute("SELECT to_regclass('station_passages_hourly_watermark')").fetchone() == (None,):
            conn.execute("CALL refresh_continuous_aggregate('station_passages_hourly', NULL, NULL)")
        else:
            conn.execute("SELECT bikeguard_refresh_passages_hourly(INTERVAL '100 years')")
