"""Request and response bodies, named by role (…Create, …Public)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, Field

from protocol.messages import TagId


class StationCreate(BaseModel):
    """A station to create or update."""

    station_id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    name: str = Field(min_length=1, max_length=200)
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)


class StationPublic(BaseModel):
    """A station with its state."""

    station_id: str
    name: str
    lat: float
    lon: float
    state: Literal["online", "offline", "unknown"]
    last_status_at: datetime | None
    status: dict[str, Any] | None


class StationActivity(BaseModel):
    """Passages at one station in a recent window."""

    station_id: str
    passages: int


class SightingPublic(BaseModel):
    """One passage of a tag at a station."""

    station_id: str
    tag_id: str
    first_seen_at: datetime
    last_seen_at: datetime
    beacons: int
    peak_rssi_dbm: int
    antenna: int
    flags: int


class TrailPoint(BaseModel):
    """Where an alarm's tag was seen."""

    station_id: str
    lat: float
    lon: float
    seen_at: datetime


class AlarmPublic(BaseModel):
    """An alarm with its trail, as shown to police."""

    id: int
    kind: str
    severity: str
    state: str
    tag_id: str | None
    plate: str | None
    station_id: str | None
    station_name: str | None
    lat: float | None
    lon: float | None
    first_seen_at: datetime
    last_seen_at: datetime
    sightings: int
    raised_at: datetime
    updated_at: datetime
    assignee: str | None
    acknowledged_by: str | None
    acknowledged_at: datetime | None
    cleared_by: str | None
    cleared_at: datetime | None
    trail: list[TrailPoint]


class AlarmAction(BaseModel):
    """Who acknowledges or clears an alarm."""

    by: str = Field(min_length=1, max_length=100)


class BikeCreate(BaseModel):
    """A bike registered with its owner and chip."""

    owner_name: str = Field(min_length=1, max_length=100)
    plate: str = Field(min_length=1, max_length=20)
    tag_id: TagId
    brand: str | None = Field(default=None, max_length=50)
    colour: str | None = Field(default=None, max_length=30)


class BikePublic(BaseModel):
    """A bike with its chip and theft state."""

    bike_id: int
    plate: str
    brand: str | None
    colour: str | None
    armed: bool
    tag_id: str | None
    stolen: bool
    stolen_at: datetime | None


class TheftReportCreate(BaseModel):
    """A theft report."""

    stolen_at: AwareDatetime | None = None
    place: str | None = Field(default=None, max_length=200)
    circumstances: str | None = Field(default=None, max_length=2000)
    police_report: str | None = Field(default=None, max_length=50)
