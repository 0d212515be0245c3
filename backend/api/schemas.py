"""Request and response bodies, named by role (…Create, …Public)."""

from __future__ import annotations

import re
import zoneinfo
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Self

from pydantic import AfterValidator, AwareDatetime, BaseModel, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from backend import identity, stations
from protocol.ids import STATION_ID_PATTERN, VENDOR_DEVICE_ID_PATTERN
from protocol.messages import TagId

DbId = Annotated[int, Field(ge=1, le=2**63 - 1)]


def _checked(check: Callable[[str], str]) -> AfterValidator:
    """A validator whose message is the domain's own (no "Value error," prefix)."""

    def run(value: str) -> str:
        try:
            return check(value)
        except identity.IdentityError as exc:
            raise PydanticCustomError("invalid", str(exc)) from None

    return AfterValidator(run)


def _plain_text(value: str) -> str:
    text = value.strip()
    if any(ord(ch) < 32 and ch not in "\t\n\r" for ch in text):
        raise PydanticCustomError("invalid", "control characters are not allowed")
    if not text:
        raise PydanticCustomError("invalid", "this field cannot be blank")
    return text


# The times a request may name: wide enough for any record we hold, narrow enough that no window arithmetic
# (a default "24 h before until", a conversion to UTC) can leave the calendar and raise OverflowError.
EARLIEST_TIME = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_TIME = datetime(3000, 1, 1, tzinfo=UTC)


def _within_calendar(value: datetime) -> datetime:
    # Aware datetimes compare by their UTC instant without building it, so year 9999 at -12:00 compares safely.
    if not EARLIEST_TIME <= value < LATEST_TIME:
        raise PydanticCustomError(
            "time_out_of_range",
            "a time must be between {earliest} and {latest} (UTC)",
            {"earliest": EARLIEST_TIME.isoformat(), "latest": LATEST_TIME.isoformat()},
        )
    return value


# Every time a request carries (query parameters and bodies): with a timezone, and within the bounds above.
ApiTime = Annotated[AwareDatetime, AfterValidator(_within_calendar)]


# Free text: trimmed, not blank, no control characters, at most N characters.
_Plain = AfterValidator(_plain_text)
Text30 = Annotated[str, Field(min_length=1, max_length=30), _Plain]
Text50 = Annotated[str, Field(min_length=1, max_length=50), _Plain]
Text100 = Annotated[str, Field(min_length=1, max_length=100), _Plain]
Text200 = Annotated[str, Field(min_length=1, max_length=200), _Plain]
Text300 = Annotated[str, Field(min_length=1, max_length=300), _Plain]
Text2000 = Annotated[str, Field(min_length=1, max_length=2000), _Plain]


IdNumber = Annotated[
    str, Field(min_length=1, max_length=24, examples=["11010519491231002X"]), _checked(identity.normalise_id_number)
]
Mobile = Annotated[
    str, Field(min_length=1, max_length=24, examples=["13800138000"]), _checked(identity.normalise_mobile)
]
FrameNumber = Annotated[
    str,
    Field(min_length=1, max_length=40, examples=["LZX2024A0001"]),
    _checked(lambda v: identity.normalise_serial(v, "frame number")),
]
MotorNumber = Annotated[
    str,
    Field(min_length=1, max_length=40, examples=["MT48V-000123"]),
    _checked(lambda v: identity.normalise_serial(v, "motor number")),
]
Plate = Annotated[str, Field(min_length=1, max_length=20, examples=["HZ-12345"]), AfterValidator(_plain_text)]
Login = Annotated[str, Field(pattern=r"^[A-Za-z0-9._@-]{3,64}$")]


# ---- stations, sightings, alarms ----


class StationCreate(BaseModel):
    """A station to create or update."""

    station_id: str = Field(pattern=STATION_ID_PATTERN)
    name: Text200
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)


StationLifecycle = Literal["planned", "installed", "commissioned", "active", "decommissioned"]


class StationRegister(StationCreate):
    """A new station to register (as planned), with how it is mounted and its radio settings."""

    address: Text200 | None = None
    mount_height_m: float | None = Field(default=None, gt=0, le=100)
    antenna_bearing_deg: float | None = Field(default=None, ge=0, lt=360)
    radio_settings: dict[str, Any] = Field(default_factory=dict)
    heartbeat_interval_s: int = Field(default=30, ge=1, le=86400)
    mobile: bool = Field(default=False, description="a reader in a patrol car or a handheld: lat/lon follow its GPS")


class StationUpdate(BaseModel):
    """Registry fields of a station to change; those left out stay as they are."""

    name: Text200 | None = None
    lat: float | None = Field(default=None, ge=-90, le=90)
    lon: float | None = Field(default=None, ge=-180, le=180)
    address: Text200 | None = None
    mount_height_m: float | None = Field(default=None, gt=0, le=100)
    antenna_bearing_deg: float | None = Field(default=None, ge=0, lt=360)
    radio_settings: dict[str, Any] | None = None
    heartbeat_interval_s: int | None = Field(default=None, ge=1, le=86400)
    mobile: bool | None = None


class StationLifecycleChange(BaseModel):
    """A life-cycle step: the state the station moves to, and why."""

    state: StationLifecycle
    note: Text200 | None = None


def _time_zone(name: str) -> str:
    try:
        return stations.check_time_zone(name)
    except stations.VendorDeviceError as exc:
        raise PydanticCustomError("time_zone", str(exc)) from None


VendorProtocol = Literal["mr7901"]  # backend.stations.VENDOR_PROTOCOLS


class VendorDeviceRegister(BaseModel):
    """The vendor device a station is: the protocol it speaks to the bridge, the device id it sends in every frame
    (1-16 printable ASCII characters, unique across stations) and the IANA time zone its clock runs in."""

    protocol: VendorProtocol
    device_id: str = Field(pattern=VENDOR_DEVICE_ID_PATTERN)
    time_zone: Annotated[str, Field(min_length=1, max_length=64), AfterValidator(_time_zone)]


class StationHistoryEntry(BaseModel):
    """One life-cycle step of a station: from, to, who and when."""

    from_state: StationLifecycle | None
    to_state: StationLifecycle
    changed_by: str
    changed_at: datetime
    note: str | None


class RoadGeometry(BaseModel):
    """A road's centre line: [lon, lat] points."""

    type: Literal["LineString"]
    coordinates: list[tuple[Annotated[float, Field(ge=-180, le=180)], Annotated[float, Field(ge=-90, le=90)]]] = Field(
        min_length=2, max_length=10_000
    )


class RoadFeature(BaseModel):
    """One road."""

    type: Literal["Feature"] = "Feature"
    properties: dict[str, Any] | None = None
    geometry: RoadGeometry


class RoadsCreate(BaseModel):
    """The road network as a GeoJSON FeatureCollection of LineStrings."""

    type: Literal["FeatureCollection"] = "FeatureCollection"
    features: list[RoadFeature] = Field(max_length=100_000)


class StationPublic(BaseModel):
    """A station with its state."""

    station_id: str
    name: str
    lat: float
    lon: float
    state: Literal["online", "offline", "unknown"]
    last_status_at: datetime | None
    status: dict[str, Any] | None
    lifecycle: StationLifecycle = "active"
    address: str | None = None
    mount_height_m: float | None = None
    antenna_bearing_deg: float | None = None
    heartbeat_interval_s: int = 30
    # A vendor station (through the bridge): its protocol, device id and clock's time zone; None for ours.
    vendor_protocol: VendorProtocol | None = None
    vendor_device_id: str | None = None
    time_zone: str | None = None
    # A mobile reader: lat/lon are its last known position, from the GPS fix of position_at.
    mobile: bool = False
    position_at: datetime | None = None


class StationDetail(StationPublic):
    """A station's registry record, state and life-cycle history."""

    radio_settings: dict[str, Any]
    lifecycle_changed_at: datetime
    history: list[StationHistoryEntry]


class StationHealth(BaseModel):
    """A station's health: online, offline or degraded (with why), and what its status reports."""

    station_id: str
    name: str
    lat: float
    lon: float
    lifecycle: StationLifecycle
    health: Literal["online", "offline", "degraded"]
    reasons: list[str]
    # The reasons as codes, in the same order: offline_status, never_heard, no_heartbeat, fewer_passages,
    # batches_missing, hotlist_behind, hotlist_unissued.
    reason_codes: list[str]
    last_heartbeat_at: datetime | None
    heartbeat_interval_s: int
    passages_last_hour: int
    usual_passages: float | None
    spool_depth: int | None
    spool_dropped: int | None
    noise_floor_dbm: int | None
    firmware: str | None
    # Batches the backend asked the station for and has not got yet (since when); that came once asked; that the
    # station dropped or no longer held; gaps its spool never issued (it was replaced: losses of unknown size).
    batches_missing: int
    missing_since: datetime | None
    batches_recovered: int
    batches_lost: int
    gaps_not_issued: int
    last_lost_at: datetime | None
    # The hot list the station says it holds, the backend's current one, and whether the station lags (behind for
    # longer than the grace period, or holding a version the backend never issued).
    hotlist_version: int | None
    hotlist_current: int | None
    hotlist_stale: bool
    hotlist_behind_since: datetime | None
    vendor_protocol: VendorProtocol | None = None
    vendor_device_id: str | None = None
    time_zone: str | None = None
    # A mobile reader is judged without its usual passages (they depend on where it drives) and never for moving.
    mobile: bool = False
    position_at: datetime | None = None


class StationActivity(BaseModel):
    """Passages at one station in a recent window."""

    station_id: str
    passages: int
    # A mobile reader's last known position and its fix time; None for a fixed station (its place never changes).
    lat: float | None = None
    lon: float | None = None
    position_at: datetime | None = None


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


class TrajectoryPoint(BaseModel):
    """Where a bike was seen: one passage with its station's position."""

    station_id: str
    lat: float
    lon: float
    first_seen_at: datetime
    last_seen_at: datetime
    tag_id: str


class TrajectoryStop(BaseModel):
    """A stay within range of one station: consecutive passages there merged, with the dwell."""

    station_id: str
    station_name: str
    lat: float
    lon: float
    arrived_at: datetime
    left_at: datetime
    dwell_s: float
    passages: int


class TrajectoryLeg(BaseModel):
    """The way from one stop to the next: straight-line distance, time, speed (None if the stops overlap), heading."""

    from_station: str
    to_station: str
    distance_m: float
    duration_s: float
    speed_kmh: float | None
    heading: str


class TrajectoryTotals(BaseModel):
    """A window's trip summary: distance between the stations passed, time on the way, time parked, stops."""

    distance_m: float
    moving_s: float
    parked_s: float
    stops: int


class TrajectorySummary(BaseModel):
    """A bike's trajectory over the window the caller may see: stops in time order and the legs between them."""

    bike_id: int
    tag_id: str | None = Field(description="the chip of the latest passage in the window")
    since: datetime
    until: datetime
    stops: list[TrajectoryStop]
    legs: list[TrajectoryLeg]
    totals: TrajectoryTotals


class TrailPoint(BaseModel):
    """Where an alarm's tag was seen."""

    station_id: str
    lat: float
    lon: float
    seen_at: datetime


class NextStation(BaseModel):
    """An interception point: a station a stolen bike is likely to pass next, how likely, and when."""

    station_id: str
    name: str
    lat: float
    lon: float
    probability: float = Field(description="share of the moves seen, with a share kept for stations not seen yet")
    eta_at: datetime
    eta_latest_at: datetime
    moves: int = Field(description="moves seen from the bike's station to this one")
    based_on_moves: int = Field(description="all moves seen from the bike's station: how much the estimate rests on")


class ZoneCrossingPublic(BaseModel):
    """A stolen bike entering or leaving a zone between two passages (backend.zones.crossings)."""

    zone_id: int | None = Field(description="null once the zone is deleted; its name stays")
    zone_name: str
    direction: Literal["entered", "left"]
    heading: str = Field(description="compass word of the line between the two stations: north, northeast, ...")
    crossed_at: datetime
    time_basis: Literal["interpolated", "passage"] = Field(
        description="interpolated along the line between the passages, or the time of the passage after the crossing"
    )
    from_station_id: str
    from_seen_at: datetime
    to_station_id: str
    to_seen_at: datetime
    lat: float
    lon: float


class AlarmAssign(BaseModel):
    """Who is to deal with an alarm (a name as the police know it)."""

    assignee: str = Field(min_length=1, max_length=100, pattern=r"\S")


class HearingPublic(BaseModel):
    """One beacon of a v2 chip as a station heard it: where, when, its counter (None when its MAC failed), its window
    and its bytes on the air."""

    station_id: str
    heard_at: datetime
    counter: int | None
    window: int
    payload_hex: str


class CloneEvidencePublic(BaseModel):
    """Why a v2 chip is believed cloned: `replay` (a genuine beacon heard again, its counter not moving forward) or
    `bad_mac` (a beacon its key did not make); the offending hearing and the chip's earlier one."""

    verdict: str
    offending: HearingPublic
    previous: HearingPublic | None


class AlarmPublic(BaseModel):
    """An alarm with its trail, as shown to police (and to the owner of the bike)."""

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
    assigned_by: str | None = None
    assigned_at: datetime | None = None
    acknowledged_by: str | None
    acknowledged_at: datetime | None
    cleared_by: str | None
    cleared_at: datetime | None
    trail: list[TrailPoint]
    next_stations: list[NextStation] = []
    # The zone borders a stolen bike crossed, oldest first.
    crossings: list[ZoneCrossingPublic] = []
    # A v2 chip's cloned-chip alarm: the evidence of each replayed or forged beacon, newest first (one alarm, GET).
    evidence: list[CloneEvidencePublic] = []
    # Whether the alarm's bike has an open theft report.
    stolen: bool = False
    # For police: the alarm is about a bike not reported stolen, so its plate, chip and trail are left out; a case
    # number opens them (GET /api/alarms/{id}?case_number=…, audited).
    details_hidden: bool = False


# ---- accounts ----


class LoginCreate(BaseModel):
    """A username and password."""

    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=256)
    token_in_body: bool = Field(
        False, description="an API client's request for the token in the answer (the browser's sign-in never asks)"
    )


class AccountPublic(BaseModel):
    """An account, without its password."""

    account_id: int
    username: str
    role: str
    display_name: str
    owner_id: int | None
    must_change_password: bool


class AccountDetail(AccountPublic):
    """An account as an admin sees it."""

    created_at: datetime
    created_by: str
    disabled_at: datetime | None


class SessionPublic(BaseModel):
    """A new session, set as an HttpOnly cookie; the token for Authorization: Bearer only if asked for."""

    token: str | None = None
    expires_at: datetime
    account: AccountPublic


class PasswordChange(BaseModel):
    """The current password and a new one."""

    current_password: str = Field(min_length=1, max_length=256)
    new_password: str = Field(min_length=1, max_length=256)


class AccountCreate(BaseModel):
    """A staff account made by an admin; without a password, one is generated and returned once."""

    username: Login
    display_name: Text100
    role: Literal["clerk", "police", "installer", "admin"]
    password: str | None = Field(default=None, min_length=1, max_length=256)
    must_change_password: bool = True


class AccountCreated(BaseModel):
    """The new account, and its first password when it was generated."""

    account: AccountDetail
    initial_password: str | None


class OwnerLogin(BaseModel):
    """An owner's login as printed on the slip handed over at the counter."""

    username: str
    initial_password: str


# ---- owners ----


class OwnerCreate(BaseModel):
    """A new owner, identified at the counter with their resident ID card."""

    name: Text100
    id_number: IdNumber
    mobile: Mobile
    address: Text300
    create_account: bool = True
    login: Login | None = Field(default=None, description="the owner's username; a generated one if not given")

    @field_validator("login")
    @classmethod
    def _not_a_phone_number(cls, login: str | None) -> str | None:
        # A login appears in history records as who did what; a mobile number there is a person's number.
        if login is not None and re.fullmatch(r"\+?[0-9][0-9 .-]{5,}", login):
            raise ValueError("a login must not be a mobile (or other phone) number: leave it empty for a generated one")
        return login


class OwnerLookup(BaseModel):
    """Find an owner by resident ID number (sent in the body so it never lands in a URL log)."""

    id_number: IdNumber


class OwnerPublic(BaseModel):
    """An owner as the counter sees them: the resident ID number masked."""

    owner_id: int
    name: str
    id_number_masked: str | None
    mobile: str | None
    address: str | None
    registered_at: datetime
    login: str | None
    plates: list[str]
    max_bikes: int


class OwnerMatch(BaseModel):
    """The result of a lookup: the owner, or null when nobody has that resident ID number."""

    owner: OwnerPublic | None


class OwnerSummary(BaseModel):
    """The owner beside a bike: everything masked."""

    owner_id: int
    name_masked: str
    id_number_masked: str | None
    mobile_masked: str | None


class OwnerCreated(BaseModel):
    """A new owner and, when an account was made, the slip to hand over."""

    owner: OwnerPublic
    owner_login: OwnerLogin | None


# ---- bikes ----


class BikeCreate(BaseModel):
    """A bike registered to an existing owner (owner_id) or a new one (owner), with its chip fitted."""

    owner_id: DbId | None = None
    owner: OwnerCreate | None = None
    plate: Plate
    frame_number: FrameNumber
    motor_number: MotorNumber
    brand: Text50 | None = None
    model: Text50 | None = None
    colour: Text30 | None = None
    tag_id: TagId
    chip_kind: Literal["v1", "v2"] = Field(
        default="v1", description="v2: a key is made and written to the chip on the counter's programming cable"
    )

    @model_validator(mode="after")
    def _one_owner(self) -> Self:
        if (self.owner_id is None) == (self.owner is None):
            raise ValueError("give either owner_id (an owner already registered) or owner (a new one)")
        return self


class TheftPublic(BaseModel):
    """An open theft report."""

    stolen_at: datetime
    place: str | None
    circumstances: str | None
    police_report: str | None
    reported_at: datetime


class LastSeenPublic(BaseModel):
    """Where a bike's chip last passed a station."""

    station_id: str
    station_name: str
    lat: float
    lon: float
    seen_at: datetime


class BikePublic(BaseModel):
    """A bike with its chip and theft state (and its owner, masked, for those who may see it)."""

    bike_id: int
    plate: str | None
    frame_number: str | None
    motor_number: str | None
    brand: str | None
    model: str | None
    colour: str | None
    status: Literal["active", "scrapped", "exported"]
    armed: bool
    tag_id: str | None
    chip_kind: Literal["v1", "v2"] | None = Field(
        default=None, description="v1 beacons its tag id; v2 beacons ephemeral ids only the backend can resolve"
    )
    stolen: bool
    stolen_at: datetime | None
    theft: TheftPublic | None
    registered_at: datetime
    deregistered_at: datetime | None
    former_plate: str | None = Field(default=None, description="a deregistered bike's last plate (now released)")
    photo_ids: list[int]
    owner: OwnerSummary | None = None
    last_seen: LastSeenPublic | None = Field(
        default=None, description="the owner's own bikes: where it was last seen since it became theirs"
    )


class Refusal(BaseModel):
    """Why a value is refused, as an error's body says it: the message (English), its stable code and the values in
    it, for a page that words it in its own language."""

    detail: str
    code: str | None
    params: dict[str, str | int]


class BikeSearchResult(BaseModel):
    """A bike found by plate, frame number or chip, where it was last seen, and its owner only with a case."""

    bike: BikePublic
    last_seen: LastSeenPublic | None
    owner: OwnerPublic | None = None
    photo_url: str | None = Field(default=None, description="the bike's latest photo, to recognise it in the street")


class CertificatePublic(BaseModel):
    """The bike's current certificate: its number and the signed token its QR code carries."""

    certificate_id: int
    bike_id: int
    issued_at: datetime
    token: str
    verify_url: str
    page_url: str
    pdf_url: str


class RegistrationPublic(BaseModel):
    """What the counter hands over: the bike, its owner, the certificate, and the owner's login slip."""

    bike: BikePublic
    owner: OwnerPublic
    certificate: CertificatePublic
    owner_login: OwnerLogin | None


class TransferCreate(BaseModel):
    """A change of owner: the new owner (existing or new) and the current owner's consent."""

    new_owner_id: DbId | None = None
    new_owner: OwnerCreate | None = None
    consent_code: str | None = Field(
        default=None, min_length=1, max_length=20, description="made by the current owner in the portal"
    )
    old_owner_id_number: IdNumber | None = Field(
        default=None, description="the current owner at the counter: their resident ID number, as on the card"
    )

    @model_validator(mode="after")
    def _one_new_owner(self) -> Self:
        if (self.new_owner_id is None) == (self.new_owner is None):
            raise ValueError("give either new_owner_id (an owner already registered) or new_owner (a new one)")
        return self


class TransferPublic(BaseModel):
    """The bike under its new owner, the new certificate, and the new owner's slip if an account was made."""

    bike: BikePublic
    certificate: CertificatePublic
    owner_login: OwnerLogin | None


class ShareCreate(BaseModel):
    """A link for someone else to see where the bike is: how long it lasts, and who it is for (the owner's note)."""

    days: int = Field(default=7, ge=1, le=30)
    label: Text100 | None = None


class SharePublic(BaseModel):
    """One of the owner's links to their bike (never the link itself after it was made)."""

    share_id: int
    label: str | None
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None


class ShareCreated(SharePublic):
    """A new link, shown once: whoever has it sees where the bike is until it expires or is withdrawn."""

    url: str


class TransferConsentPublic(BaseModel):
    """The code the owner gives the counter to consent to a transfer."""

    code: str
    expires_at: datetime


class ChipReplacement(BaseModel):
    """A new chip for the bike; the old one is retired."""

    tag_id: TagId
    reason: Text200 | None = None
    chip_kind: Literal["v1", "v2"] = Field(
        default="v1", description="v2: a key is made and written to the chip on the counter's programming cable"
    )


class PlateChange(BaseModel):
    """A new plate for the bike."""

    plate: Plate
    reason: Text200 | None = None


class Deregistration(BaseModel):
    """The bike leaves the registry."""

    status: Literal["scrapped", "exported"]
    note: Text200 | None = None


class ArmCreate(BaseModel):
    """Arm or disarm."""

    armed: bool


class HistoryEntry(BaseModel):
    """One binding (owner, plate, chip) or theft report in a bike's history."""

    kind: Literal["owner", "plate", "chip", "theft"]
    value: str | None
    valid_from: datetime
    valid_to: datetime | None
    bound_by: str
    reason: str | None
    unbound_by: str | None
    end_reason: str | None


class TheftReportCreate(BaseModel):
    """A theft report."""

    stolen_at: ApiTime | None = None
    place: Text200 | None = None
    circumstances: Text2000 | None = None
    police_report: Text50 | None = None


class VerificationPublic(BaseModel):
    """Whether a certificate is genuine and current, and nothing more."""

    genuine: bool
    current: bool


class AuditEntry(BaseModel):
    """One audit record."""

    audit_id: int
    at: datetime
    account_id: int | None
    actor: str
    role: str
    action: str
    subject: str | None
    case_number: str | None
    detail: dict[str, Any]


# ---- owners' notifications (issue 15) ----

Channel = Literal["email", "sms", "webpush"]
# Printable characters only (what the database's check and every mail server accept), one @ and a dotted domain.
Email = Annotated[str, Field(min_length=3, max_length=254, pattern=r"^[!-?A-~]{1,64}@[!-?A-~]{1,189}\.[!-?A-~]{1,60}$")]


class NotificationPreferences(BaseModel):
    """What an owner wants to be told outside the page, and how; theirs alone to read and change."""

    channels: list[Channel] = Field(default_factory=list, max_length=3)
    email: Email | None = None
    sms_number: Mobile | None = None
    language: Literal["zh", "en"] = "zh"
    quiet_start: str | None = Field(default=None, pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$", examples=["22:00"])
    quiet_end: str | None = Field(default=None, pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$", examples=["07:00"])
    time_zone: Annotated[str, Field(min_length=1, max_length=64)] = "Asia/Shanghai"

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if (self.quiet_start is None) != (self.quiet_end is None):
            raise PydanticCustomError("quiet_hours", "quiet hours need both a start and an end")
        if "email" in self.channels and not self.email:
            raise PydanticCustomError("email_needed", "choosing e-mail needs an e-mail address")
        self.channels = sorted(set(self.channels), key=["webpush", "sms", "email"].index)
        return self

    @field_validator("time_zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise PydanticCustomError("time_zone", "not a known time zone (an IANA name like Asia/Shanghai)") from None
        return value


class NotificationPreferencesPublic(NotificationPreferences):
    """The owner's choices, with what the deployment offers and the number SMS goes to when none is given."""

    available: list[Channel]
    registered_mobile_masked: str | None
    push_devices: int


class PushKeys(BaseModel):
    """A subscription's keys, base64url: the browser's P-256 public key (65 bytes) and its auth secret (16 bytes)."""

    p256dh: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{86,87}={0,2}$")]
    auth: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{21,22}={0,2}$")]


class PushSubscriptionCreate(BaseModel):
    """A browser's Web Push subscription (PushSubscription.toJSON())."""

    endpoint: Annotated[str, Field(min_length=10, max_length=2048, pattern=r"^https?://[!-~]+$")]
    keys: PushKeys


class PushKeyPublic(BaseModel):
    """The VAPID public key the portal subscribes with (null: Web Push is not configured)."""

    public_key: str | None


class NotificationPublic(BaseModel):
    """One notification to the owner and how far it got."""

    notification_id: int
    kind: str
    channel: Channel
    state: Literal["pending", "sending", "sent", "failed"]
    plate: str | None
    station_name: str | None
    event_at: datetime | None
    created_at: datetime
    sent_at: datetime | None
    attempts: int
    due_at: datetime
    last_error: str | None
