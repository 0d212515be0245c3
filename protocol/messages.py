"""MQTT payloads (contract v1): compact JSON, validated where they enter the backend.

Every message carries `v`; a receiver refuses versions it does not know. Times are
timezone-aware UTC in ISO 8601; tag ids are 8 upper-case hex digits (the chip's 32-bit id).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal, NotRequired, get_args

import orjson
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    TypeAdapter,
    ValidationError,
    model_validator,
    with_config,
)
from pydantic_core import CoreSchema, PydanticCustomError, core_schema
from typing_extensions import TypedDict

from protocol.ids import STATION_ID_PATTERN, TAG_ID_PATTERN, format_tag, parse_tag

VERSION: Final = 1

# format_tag and parse_tag live in protocol.ids; they stay importable from here with the messages they fill.
__all__ = [
    "VERSION",
    "COMMAND_MAX_ARGS",
    "COMMAND_MAX_BYTES",
    "COMMAND_NAMES",
    "COMMAND_TTL_MAX_S",
    "COMMAND_V",
    "Alert",
    "BatchRequest",
    "BatchesGone",
    "CommandName",
    "Confirmation",
    "GoneRange",
    "HOTLIST_EID_WINDOWS_MAX",
    "HOTLIST_V",
    "HOTLIST_VERSION_MAX",
    "Hotlist",
    "MessageError",
    "SelfTestStep",
    "SelfTestSummary",
    "SeqRange",
    "Sighting",
    "SightingBatch",
    "StationCommand",
    "StationStatus",
    "dumps",
    "format_tag",
    "parse_batch_rows",
    "parse_selftest",
    "parse_tag",
    "ReaderPosition",
    "utcnow",
]


class MessageError(ValueError):
    """A payload that does not match the contract; carries the raw bytes and the reason."""

    def __init__(self, reason: str, raw: bytes) -> None:
        super().__init__(reason)
        self.reason = reason
        self.raw = raw


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


# A pattern (checked in pydantic's Rust core) rather than a Python validator: ingest parses
# tens of thousands of these a second.
TagId = Annotated[str, Field(pattern=TAG_ID_PATTERN, description="8 upper-case hex digits")]
StationId = Annotated[str, Field(pattern=STATION_ID_PATTERN)]


# RFC 3339 with the `T`, seconds and at most microseconds (what a datetime holds). pydantic alone also takes
# "1764406800" (a Unix time in a string), a space for the `T` and a missing seconds field.
RFC3339_PATTERN: Final = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?(?:Z|[+-][0-9]{2}:[0-5][0-9])?$"
)


def _instant(text: str) -> datetime:
    """The aware datetime an RFC 3339 string (already matched by RFC3339_PATTERN) names.

    Read by the standard library rather than pydantic's core: its datetimes carry `datetime.UTC` (or a fixed
    `timezone`), which the ingest then compares, subtracts and hands to COPY at C speed, where pydantic's own tzinfo
    costs a Python call per offset asked (about a tenth of the ingest's time). Same values, same refusals
    (tests/protocol/test_protocol_strict.py compares both readings).
    """
    try:
        at = datetime.fromisoformat(text)
    except ValueError as exc:
        raise PydanticCustomError(
            "datetime_parsing", "Input should be a valid datetime, {error}", {"error": str(exc)}
        ) from exc
    if at.tzinfo is None:
        raise PydanticCustomError("timezone_aware", "Input should have timezone info")
    return at


class JsonForm:
    """Marks a field whose JSON value must have this form and then this meaning; objects built in Python are
    validated as the annotated type alone."""

    def __init__(self, form: CoreSchema, meaning: CoreSchema) -> None:
        self.form = form
        self.meaning = meaning

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.json_or_python_schema(
            json_schema=core_schema.chain_schema([self.form, self.meaning]), python_schema=handler(source)
        )


# One type, one meaning: a time is an RFC 3339 string with its offset, never a number; a version is the integer 1,
# never 1.0 or true (pydantic's Literal[1] takes both, even in strict mode). A time's meaning step reads the string
# the form step passed on (_instant).
Instant = Annotated[
    AwareDatetime,
    JsonForm(
        core_schema.str_schema(pattern=RFC3339_PATTERN, strict=True),
        core_schema.no_info_plain_validator_function(_instant),
    ),
]
Version = Annotated[Literal[1], JsonForm(core_schema.int_schema(strict=True), core_schema.literal_schema([VERSION]))]


# The forms a sighting row takes (AnySightingRow below).
_ROW_FORMS: Final = frozenset({"SightingRow", "SightingV2Row"})


def _message_error(exc: ValidationError, raw: bytes) -> MessageError:
    errors = exc.errors()
    first = errors[0]
    if first["type"] == "missing" and first["loc"][-2:] == ("SightingRow", "tag_id") and "heard" in first["input"]:
        # A v2 row is not a v1 row without its tag id: what is wrong is what its own form found.
        first = next((e for e in errors if "SightingV2Row" in e["loc"]), first)
    # A row's form names its errors (sightings.0.SightingRow.beacons): where it is, is without it.
    where = ".".join(str(p) for p in first["loc"] if p not in _ROW_FORMS) or "payload"
    return MessageError(f"{where}: {first['msg']} ({exc.error_count()} errors)", raw)


# Strict: one type, one meaning (no `true` or "11" or 12.0 for an integer); set on the schema rather than per call,
# so that the fields marked with JsonForm can still read their checked string as a datetime.
_CONFIG = ConfigDict(extra="ignore", frozen=True, strict=True)


class _Payload(BaseModel):
    """A message of the contract; each kind carries its own `v`."""

    model_config = _CONFIG

    @classmethod
    def parse(cls, raw: bytes):  # type: ignore[no-untyped-def]
        """Validate a payload; raise MessageError with the reason and the raw bytes."""
        try:
            message = cls.model_validate_json(raw)
        except ValidationError as exc:
            raise _message_error(exc, raw) from exc
        if "v" not in message.model_fields_set:
            raise MessageError("v: Field required (every message carries its version)", raw)
        return message

    def to_json(self) -> bytes:
        """The compact JSON payload."""
        return dumps(self.model_dump(mode="json"))


class _Message(_Payload):
    v: Version = VERSION


class ReaderPosition(BaseModel):
    """Where a mobile reader was when it heard the tag: its GPS fix (WGS 84 degrees) and the fix's own time.

    Added to v1 on purpose (issue 16) as an optional field of a sighting and an alert: a fixed station sends none,
    and a mobile reader without a fix sends none either.
    """

    model_config = _CONFIG

    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    fix_at: Instant


# A v2 chip's beacon as it was on the air (protocol.beacon_v2.AirBeacon): 18 bytes as 36 lower-case hex digits, its
# format version 02 first. A station cannot read which chip sent it; it forwards it for the backend to resolve.
AirBeaconHex = Annotated[str, Field(pattern=r"^02[0-9a-f]{34}$", description="a v2 beacon's 18 bytes, hex")]
# A v2 passage carries its first beacon and, when it has more than one, its last: the backend checks the MAC and the
# counter of both (a clone that replays one captured beacon over and over repeats its counter).
HEARD_MAX: Final = 2


class Sighting(BaseModel):
    """One passage of one tag at one station: what the gateway aggregates from its beacons.

    A v1 chip's passage names its `tag_id`; a v2 chip's names none (the station does not know it) and carries the
    passage's first and last beacons in `heard` instead, which the backend resolves to the chip (contract v1 with an
    optional field, as the reader position was added: a gateway that hears no v2 chip sends what it always did).
    """

    model_config = _CONFIG

    tag_id: TagId | None = None
    heard: list[AirBeaconHex] | None = Field(default=None, min_length=1, max_length=HEARD_MAX)
    first_seen_at: Instant
    last_seen_at: Instant
    beacons: int = Field(ge=1, le=1_000_000)
    peak_rssi_dbm: int = Field(ge=-128, le=127)
    antenna: int = Field(ge=0, le=255)
    flags: int = Field(ge=0, le=0xFF, description="TagFlags bits: 1 low battery, 2 tamper, 4 motion")
    position: ReaderPosition | None = Field(default=None, description="a mobile reader's fix at the peak beacon")

    @model_validator(mode="after")
    def _one_identity(self) -> Sighting:
        _check_identity(self.tag_id, self.heard)
        return self


def _check_identity(tag_id: str | None, heard: object) -> None:
    """A sighting or alert names its chip in exactly one way: a v1 tag id, or the v2 beacons heard."""
    if (tag_id is None) == (heard is None):
        raise ValueError("exactly one of tag_id (a v1 chip) and heard (a v2 chip's beacons) is required")


class SightingBatch(_Message):
    """A gateway's batch of closed sightings; (station_id, batch_seq) identifies it."""

    station_id: StationId
    batch_seq: int = Field(ge=0, le=2**63 - 1, description="fits the database's bigint")
    sent_at: Instant
    sightings: list[Sighting] = Field(max_length=10_000)

    def to_json(self) -> bytes:
        """The compact JSON payload; a sighting without a position carries no `position` key (as before issue 16)."""
        return dumps(self.model_dump(mode="json", exclude_none=True))


class Alert(_Message):
    """Something a station reports at once, not when the passage closes."""

    station_id: StationId
    kind: Literal["hotlist_hit", "tamper"]
    tag_id: TagId | None = None
    heard: AirBeaconHex | None = Field(default=None, description="a v2 chip's beacon that raised it, for the backend")
    seen_at: Instant
    rssi_dbm: int = Field(ge=-128, le=127)
    antenna: int = Field(ge=0, le=255)
    hotlist_version: int | None = None
    position: ReaderPosition | None = Field(default=None, description="a mobile reader's fix when it heard the tag")

    @model_validator(mode="after")
    def _one_identity(self) -> Alert:
        _check_identity(self.tag_id, self.heard)
        return self

    def to_json(self) -> bytes:
        """The compact JSON payload; without a position, no `position` key (as before issue 16), and only the one of
        `tag_id` and `heard` that names the chip."""
        return dumps(self.model_dump(mode="json", exclude_none=True))


# Bounds one confirmation message (about 14 bytes a seq); a flush that stored more is confirmed in several.
CONFIRMATION_MAX_SEQS: Final = 1000


class Confirmation(_Message):
    """The backend's word that these batches of one station are committed (new and repeated alike)."""

    station_id: StationId
    batch_seqs: list[Annotated[int, Field(ge=0)]] = Field(min_length=1, max_length=CONFIRMATION_MAX_SEQS)
    sent_at: AwareDatetime


# Bounds one request (about 40 bytes a range): the missing batches are asked for as ranges, so even a spool that
# dropped days of batches is asked in one message; more ranges than this wait for the next request.
REQUEST_MAX_RANGES: Final = 100
# Bounds one answer: each requested range may come back cut into several around the batches still held.
GONE_MAX_RANGES: Final = 1000
GoneReason = Literal["dropped", "not_issued", "not_held"]


class SeqRange(BaseModel):
    """The batch_seqs from `first` to `last`, both included."""

    model_config = _CONFIG

    first: int = Field(ge=0, le=2**63 - 1)
    last: int = Field(ge=0, le=2**63 - 1)

    @model_validator(mode="after")
    def _ordered(self) -> SeqRange:
        if self.last < self.first:
            raise ValueError(f"last {self.last} is before first {self.first}")
        return self


class BatchRequest(_Message):
    """The backend asks one station to send these batches again: it is missing them (docs/architecture.md)."""

    station_id: StationId
    ranges: list[SeqRange] = Field(min_length=1, max_length=REQUEST_MAX_RANGES)
    sent_at: Instant


class GoneRange(SeqRange):
    """Requested batches a station no longer holds: dropped (its spool was full), not_issued (its spool never gave
    these seqs out: it was replaced) or not_held (gone for another reason: confirmed, or dropped long ago)."""

    reason: GoneReason


class BatchesGone(_Message):
    """A station's answer to a BatchRequest: the requested batches it cannot send, and why (those it holds it sends)."""

    station_id: StationId
    ranges: list[GoneRange] = Field(min_length=1, max_length=GONE_MAX_RANGES)
    next_batch_seq: int = Field(ge=0, le=2**63 - 1, description="the seq its spool gives out next")
    sent_at: Instant


class StationStatus(_Message):
    """A gateway's retained status; the last will is the same with state 'offline'."""

    station_id: StationId
    state: Literal["online", "offline"]
    sent_at: Instant | None = None
    firmware: str | None = None
    uptime_s: float | None = None
    beacons_total: int | None = None
    frames_rejected: int | None = None
    sightings_published: int | None = None
    spool_depth: int | None = None
    spool_dropped: int | None = None
    spool_unconfirmed: int | None = None
    hotlist_version: int | None = None
    noise_floor_dbm: int | None = None


# The hot list is message version 2: v1 lists were unsigned, and a gateway takes no unsigned list.
HOTLIST_V: Final = 2
# Versions are the issuing clock in milliseconds (migration 0006) plus the lists issued since: a version beyond what
# a double holds exactly, or more than a day ahead of its own issued_at, is not one the backend makes.
HOTLIST_VERSION_MAX: Final = 2**53
HOTLIST_VERSION_AHEAD_MAX_MS: Final = 86_400_000
HotlistV = Annotated[Literal[2], JsonForm(core_schema.int_schema(strict=True), core_schema.literal_schema([HOTLIST_V]))]
# Stolen v2 chips' ephemeral ids (protocol/beacon_v2.py) for the windows ahead: window number (decimal, as JSON keys
# are text) → 16 lower-case hex digits per eid. A station matches the eids a chip beacons without knowing its key.
HOTLIST_EID_WINDOWS_MAX: Final = 16
WindowNumber = Annotated[str, Field(pattern=r"^(0|[1-9][0-9]{0,19})$")]
EphemeralId = Annotated[str, Field(pattern=r"^[0-9a-f]{16}$")]


class Hotlist(_Payload):
    """The stolen-chip list the backend pushes to every gateway (retained), signed by the backend (Ed25519)."""

    v: HotlistV = HOTLIST_V
    version: int = Field(ge=0, le=HOTLIST_VERSION_MAX)
    issued_at: Instant
    tags: list[TagId]
    eids: dict[WindowNumber, list[EphemeralId]] | None = Field(default=None, max_length=HOTLIST_EID_WINDOWS_MAX)
    signature: str = Field(
        default="", pattern=r"^[A-Za-z0-9_-]*$", max_length=100, description="base64url Ed25519 of signed_bytes()"
    )

    @model_validator(mode="after")
    def _version_from_its_clock(self) -> Hotlist:
        issued_ms = int(self.issued_at.timestamp() * 1000)
        if self.version > issued_ms + HOTLIST_VERSION_AHEAD_MAX_MS:
            raise ValueError(f"version {self.version} is more than a day ahead of issued_at {self.issued_at}")
        return self

    def signed_bytes(self) -> bytes:
        """What the signature covers: every field but the signature, in one canonical form."""
        issued_at = self.issued_at.astimezone(UTC).isoformat(timespec="microseconds")
        signed = f"bikeguard-hotlist/{self.v}\n{self.version}\n{issued_at}\n{','.join(self.tags)}"
        if self.eids is not None:
            # Only a list that carries eids signs them, so a list signed before they existed still verifies.
            windows = sorted(self.eids, key=int)
            signed += "\neids\n" + "\n".join(f"{w}:{','.join(self.eids[w])}" for w in windows)
        return signed.encode()

    def eids_by_window(self) -> dict[int, list[bytes]]:
        """The stolen v2 chips' ephemeral ids per window number (empty for a list without them)."""
        return {int(w): [bytes.fromhex(e) for e in eids] for w, eids in (self.eids or {}).items()}

    def to_json(self) -> bytes:
        """The compact JSON payload; a list without eids has no `eids` key, byte for byte what it was before."""
        return dumps(self.model_dump(mode="json", exclude={"eids"} if self.eids is None else None))


# What the backend may tell a station to do (docs/architecture.md, "Commands to stations"): status publishes its
# status now; resend sends every sightings batch the backend has not confirmed again now.
CommandName = Literal["status", "resend"]
COMMAND_NAMES: Final[tuple[str, ...]] = get_args(CommandName)
COMMAND_NAME_PATTERN: Final = r"^[a-z][a-z0-9_]{0,31}$"
COMMAND_V: Final = 1
# A command is small: a larger payload is refused before it is parsed, and a command lives at most an hour.
COMMAND_MAX_BYTES: Final = 4096
COMMAND_MAX_ARGS: Final = 16
COMMAND_TTL_MAX_S: Final = 3600
CommandV = Annotated[Literal[1], JsonForm(core_schema.int_schema(strict=True), core_schema.literal_schema([COMMAND_V]))]
CommandArg = Annotated[str, Field(max_length=200)]


class StationCommand(_Payload):
    """Something the backend tells one station to do, signed by the backend (Ed25519) like the hot list.

    `seq` grows with every command the backend issues (a database sequence started at the clock in milliseconds);
    a station takes a command only if its seq is above the last one it took, so a captured command cannot be
    replayed, and only between `issued_at` and `expires_at`.
    """

    v: CommandV = COMMAND_V
    station_id: StationId
    name: str = Field(pattern=COMMAND_NAME_PATTERN, description="one of COMMAND_NAMES (a station refuses others)")
    args: dict[Annotated[str, Field(pattern=COMMAND_NAME_PATTERN)], CommandArg] = Field(
        default_factory=dict, max_length=COMMAND_MAX_ARGS
    )
    seq: int = Field(ge=1, le=HOTLIST_VERSION_MAX, description="monotonic across every command the backend issues")
    issued_at: Instant
    expires_at: Instant
    signature: str = Field(
        default="", pattern=r"^[A-Za-z0-9_-]*$", max_length=100, description="base64url Ed25519 of signed_bytes()"
    )

    @model_validator(mode="after")
    def _lifetime(self) -> StationCommand:
        lifetime_s = (self.expires_at - self.issued_at).total_seconds()
        if not 0 < lifetime_s <= COMMAND_TTL_MAX_S:
            raise ValueError(f"expires_at must be after issued_at and at most {COMMAND_TTL_MAX_S} s after it")
        return self

    def signed_bytes(self) -> bytes:
        """What the signature covers: every field but the signature, in one canonical form (distinct from a hot
        list's, so no signature of one is ever valid for the other)."""
        args = orjson.dumps(self.args, option=orjson.OPT_SORT_KEYS).decode()
        issued_at = self.issued_at.astimezone(UTC).isoformat(timespec="microseconds")
        expires_at = self.expires_at.astimezone(UTC).isoformat(timespec="microseconds")
        fields = (f"bikeguard-command/{self.v}", self.station_id, self.name, str(self.seq), issued_at, expires_at, args)
        return "\n".join(fields).encode()


RunId = Annotated[str, Field(pattern=r"^[0-9a-f]{8,32}$", description="random per self-test run, lower-case hex")]


class SelfTestStep(_Message):
    """One completed step of a station's commissioning self-test; (station_id, run_id, seq) identifies it."""

    kind: Literal["step"] = "step"
    station_id: StationId
    run_id: RunId
    seq: int = Field(ge=1, le=99, description="the step's number in the run, from 1")
    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,31}$", description="e.g. serial, noise, test_tag, broker")
    title: str = Field(default="", max_length=200, description="what the step checks, in English")
    status: Literal["pass", "warn", "fail", "skip"] = Field(description="warn: passed, but read the advice")
    message: str = Field(max_length=2000, description="what the step found")
    advice: str = Field(default="", max_length=2000, description="what to check when it failed or warned")
    rssi_dbm: int | None = Field(default=None, ge=-128, le=127, description="the test tag's signal")
    noise_floor_dbm: int | None = Field(default=None, ge=-128, le=127)
    elapsed_s: float = Field(default=0.0, ge=0)
    at: Instant


class SelfTestStepStarted(_Message):
    """A self-test step that has begun (its result follows as a `step` with the same seq): a page shows what the
    station is doing now, e.g. waiting for the test tag. Added to v1 beside `step` and `summary`."""

    kind: Literal["started"] = "started"
    station_id: StationId
    run_id: RunId
    seq: int = Field(ge=1, le=99, description="the number its result will have")
    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")
    title: str = Field(default="", max_length=200)
    wait_s: float | None = Field(default=None, ge=0, le=3600, description="how long it waits at most, if it waits")
    at: Instant


class SelfTestSummary(_Message):
    """The end of a self-test run: passed when no step failed. Its seq follows the last step's."""

    kind: Literal["summary"] = "summary"
    station_id: StationId
    run_id: RunId
    seq: int = Field(ge=2, le=100)
    result: Literal["passed", "failed"]
    steps: int = Field(ge=1, le=99, description="how many steps the run had (seq 1 to steps)")
    counts: dict[Literal["pass", "warn", "fail", "skip"], Annotated[int, Field(ge=0, le=99)]]
    started_at: Instant
    finished_at: Instant

    @model_validator(mode="after")
    def _adds_up(self) -> SelfTestSummary:
        if self.seq != self.steps + 1:
            raise ValueError(f"seq {self.seq} must follow the last step's ({self.steps})")
        if sum(self.counts.values()) != self.steps:
            raise ValueError(f"counts add up to {sum(self.counts.values())}, not to the {self.steps} steps")
        return self


SelfTestMessage = SelfTestStepStarted | SelfTestStep | SelfTestSummary
_SELFTEST: TypeAdapter[SelfTestMessage] = TypeAdapter(Annotated[SelfTestMessage, Field(discriminator="kind")])


def parse_selftest(raw: bytes) -> SelfTestMessage:
    """Validate a payload of the selftest topic (a step begun, a step's result or the run's summary, by `kind`)."""
    try:
        message = _SELFTEST.validate_json(raw)
    except ValidationError as exc:
        raise _message_error(exc, raw) from exc
    if "v" not in message.model_fields_set:
        raise MessageError("v: Field required (every message carries its version)", raw)
    return message


def _rows_of(model: type[BaseModel], name: str, **override: Any) -> Any:
    """The same fields and constraints as `model`, as a TypedDict: validated without building objects. An override
    gives a field another type, or leaves it out when it is None."""
    fields: dict[str, Any] = {
        n: Annotated[(f.annotation, *f.metadata)] if f.metadata else f.annotation for n, f in model.model_fields.items()
    }
    fields.update(override)
    fields = {n: t for n, t in fields.items() if t is not None}
    return with_config(ConfigDict(strict=True))(TypedDict(name, fields))  # type: ignore[operator]


PositionRow = _rows_of(ReaderPosition, "PositionRow")
# A fixed station's sightings have no `position` key at all: nothing more to validate on the hot path. A v1 row has
# its tag id and no `heard`; a v2 row the other way round (the rows' two forms of Sighting._one_identity).
SightingRow = _rows_of(Sighting, "SightingRow", tag_id=TagId, heard=None, position=NotRequired[PositionRow | None])
SightingV2Row = _rows_of(
    Sighting,
    "SightingV2Row",
    tag_id=None,
    heard=Annotated[list[AirBeaconHex], Field(min_length=1, max_length=HEARD_MAX)],
    position=NotRequired[PositionRow | None],
)


# Left to right: a v1 row (every row of a station without v2 chips) is validated once, at no more cost than before.
AnySightingRow = Annotated[SightingRow | SightingV2Row, Field(union_mode="left_to_right")]  # type: ignore[valid-type]
SightingBatchRows = _rows_of(
    SightingBatch,
    "SightingBatchRows",
    sightings=Annotated[list[AnySightingRow], Field(max_length=10_000)],
)
_BATCH_ROWS: TypeAdapter[Any] = TypeAdapter(SightingBatchRows)


def parse_batch_rows(raw: bytes) -> dict[str, Any]:
    """Validate a sightings batch exactly as SightingBatch does, into plain dicts (the ingest's hot path).

    Building a model object per sighting costs five times the validation itself.
    """
    try:
        batch: dict[str, Any] = _BATCH_ROWS.validate_json(raw)
    except ValidationError as exc:
        raise _message_error(exc, raw) from exc
    return batch


def dumps(obj: object) -> bytes:
    """Compact JSON bytes (orjson: UTC datetimes as ISO 8601)."""
    return orjson.dumps(obj)
