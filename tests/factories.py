"""Small factories for test data, written straight into the test's database."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta

import psycopg

from protocol.messages import Sighting, SightingBatch, format_tag, utcnow

_plates = itertools.count(10000)


def station(conn: psycopg.Connection, station_id: str, lat: float = 30.27, lon: float = 120.15) -> str:
    """A station at a position."""
    conn.execute(
        "INSERT INTO stations (station_id, name, lat, lon) VALUES (%s, %s, %s, %s)",
        (station_id, f"Station {station_id}", lat, lon),
    )
    return station_id


def bike(conn: psycopg.Connection, tag_id: int, plate: str | None = None, owner: str = "Li Wei") -> int:
    """An owner with one bike carrying chip tag_id; returns the bike id."""
    owner_id = conn.execute("INSERT INTO owners (name) VALUES (%s) RETURNING owner_id", (owner,)).fetchone()[0]
    bike_id = conn.execute(
        "INSERT INTO bikes (plate, owner_id) VALUES (%s, %s) RETURNING bike_id",
        (plate or f"HZ-{next(_plates)}", owner_id),
    ).fetchone()[0]
    conn.execute("INSERT INTO chips (tag_id, bike_id) VALUES (%s, %s)", (tag_id, bike_id))
    return int(bike_id)


def theft(conn: psycopg.Connection, bike_id: int, stolen_at: datetime | None = None) -> None:
    """An open theft report for the bike."""
    conn.execute(
        "INSERT INTO theft_reports (bike_id, stolen_at) VALUES (%s, %s)",
        (bike_id, stolen_at or utcnow() - timedelta(minutes=5)),
    )


def batch(station_id: str, seq: int, tags: list[int], at: datetime | None = None) -> SightingBatch:
    """A batch with one sighting per tag."""
    at = at or utcnow()
    return SightingBatch(
        station_id=station_id, batch_seq=seq, sent_at=at,
        sightings=[
            Sighting(tag_id=format_tag(t), first_seen_at=at - timedelta(seconds=5), last_seen_at=at,
                     beacons=3, peak_rssi_dbm=-60, antenna=0, flags=0)
            for t in tags
        ],
    )
