"""The registry: owners, bikes, chips and their one-to-one bindings, the bike's life cycle, theft reports.

The database holds the rules (unique plate, chip, frame and motor number; one current owner; history
written by triggers); this module asks it, checks the per-owner policy under a lock on the owner, and
turns a refusal into a message that says what already holds the value, naming a bike by its plate
but never a person.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, get_args

import psycopg
from psycopg.rows import dict_row

from backend import certificates, chip_keys
from backend.alarms.store import clear_for_recovered_bike
from backend.identity import IdentityError, mask_id_number, mask_mobile, mask_name, normalise_plate
from backend.notifications import outbox
from backend.settings import BackendSettings
from backend.vault import Vault, VaultError
from protocol.messages import format_tag, parse_tag, utcnow

Field = Literal["plate", "tag_id", "frame_number", "motor_number", "id_number", "owner", "bike"]

# The refusals the counter shows, each with a stable code: the API says them in English, and a page in another
# language words them itself from the code and the error's params (the values its words need).
ErrorCode = Literal[
    "plate_invalid",
    "plate_taken",
    "frame_taken",
    "motor_taken",
    "chip_fitted",
    "chip_retired",
    "taken",
    "owner_exists",
    "limit_reached",
    "lookup_throttled",
    "consent_needed",
    "consent_code_wrong",
    "consent_id_wrong",
    "same_owner",
    "same_chip",
    "same_plate",
    "bike_stolen",
    "bike_not_active",
    "photo_limit",
    "photo_too_big",
    "photo_too_many_pixels",
    "photo_not_image",
    # A v2 chip the programming cable could not key (backend.chip_keys.CableErrorCode).
    "v2_cable_unset",
    "v2_cable_silent",
    "v2_chip_other",
    "v2_chip_keyed",
    "v2_chip_refused",
    "v2_key_check_failed",
]
ERROR_CODES: tuple[str, ...] = get_args(ErrorCode)


class RegistryError(Exception):
    """Base of registry errors; `field` names the input the message is about, when there is one; `code` says which
    refusal it is (ERROR_CODES) and `params` the values in its message."""

    def __init__(
        self,
        message: str,
        field: str | None = None,
        code: ErrorCode | None = None,
        params: dict[str, str | int] | None = None,
    ) -> None:
        super().__init__(message)
        self.field = field
        self.code = code
        self.params = params or {}


class NotFound(RegistryError):
    """No such bike or owner (or not one the caller may see)."""


class Conflict(RegistryError):
    """A one-to-one rule would be broken, or the bike's state forbids the change; says what holds the value."""


class LimitReached(RegistryError):
    """The owner already holds as many active bikes as the policy allows."""


class ConsentRequired(RegistryError):
    """A transfer without the current owner's valid consent."""


class InvalidValue(RegistryError):
    """A value the local rules refuse (e.g. a plate not in the local pattern)."""


class ChipNotProgrammed(RegistryError):
    """A v2 chip could not be keyed on the programming cable; nothing was registered or fitted."""


class LookupThrottled(RegistryError):
    """An account made as many owner look-ups as an hour allows; carries how long to wait."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message, "id_number", "lookup_throttled", {"minutes": max(1, round(retry_after_s / 60))})
        self.retry_after_s = retry_after_s


# The first key of the advisory lock that makes one account's owner look-ups count one at a time.
_LOOKUP_LOCK = 0x1D5


@dataclass(frozen=True, slots=True)
class BikeDetails:
    """What identifies and describes a bike."""

    plate: str
    frame_number: str
    motor_number: str
    brand: str | None = None
    model: str | None = None
    colour: str | None = None


@dataclass(frozen=True, slots=True)
class OwnerDetails:
    """Who a new owner is (values already validated and normalised)."""

    name: str
    id_number: str
    mobile: str
    address: str


_BIKE_SELECT = """
    SELECT b.bike_id, b.plate, b.frame_number, b.motor_number, b.brand, b.model, b.colour, b.status, b.armed,
           b.owner_id, b.created_at AS registered_at, b.deregistered_at, c.tag_id, c.kind AS chip_kind,
           t.report_id IS NOT NULL AS stolen, t.stolen_at, t.place AS theft_place,
           t.circumstances AS theft_circumstances, t.police_report, t.reported_at AS theft_reported_at,
           coalesce((SELECT array_agg(p.photo_id ORDER BY p.photo_id) FROM bike_photos p
                     WHERE p.bike_id = b.bike_id), '{}') AS photo_ids, gone.former_plate
    FROM bikes b
    LEFT JOIN chips c ON c.bike_id = b.bike_id
    LEFT JOIN theft_reports t ON t.bike_id = b.bike_id AND t.recovered_at IS NULL
    LEFT JOIN LATERAL (SELECT x.plate AS former_plate FROM bike_bindings x
                       WHERE b.status <> 'active' AND x.bike_id = b.bike_id AND x.kind = 'plate'
                       ORDER BY x.valid_from DESC LIMIT 1) gone ON true
"""


def _bike_out(row: dict[str, Any]) -> dict[str, Any]:
    row = dict(row)
    if row["tag_id"] is not None:
        row["tag_id"] = format_tag(row["tag_id"])
    row["theft"] = None
    if row.pop("stolen"):
        row["theft"] = {
            "stolen_at": row["stolen_at"],
            "place": row["theft_place"],
            "circumstances": row["theft_circumstances"],
            "police_report": row["police_report"],
            "reported_at": row["theft_reported_at"],
        }
    row["stolen"] = row["theft"] is not None
    for k in ("theft_place", "theft_circumstances", "police_report", "theft_reported_at"):
        row.pop(k)
    return row


async def _act_as(conn: psycopg.AsyncConnection[Any], actor: str, reason: str | None) -> None:
    """Name who makes the changes in this transaction, and why, for the history triggers."""
    await conn.execute(
        "SELECT set_config('bikeguard.actor', %s, true), set_config('bikeguard.reason', %s, true)",
        (actor, reason or ""),
    )


# Letters and digits nobody confuses on a printed slip.
_USERNAME_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"


def owner_username() -> str:
    """A new owner's login name for the slip: random, so that it tells nobody their mobile number (usernames appear
    in history records as who did what)."""
    return "bg-" + "".join(secrets.choice(_USERNAME_ALPHABET) for _ in range(8))


def _code_hash(code: str) -> bytes:
    return hashlib.sha256(code.strip().upper().encode()).digest()


class Registry:
    """Registry operations under the settings' policy (plate pattern, bikes per owner) and keys."""

    def __init__(self, settings: BackendSettings, vault: Vault) -> None:
        self.settings = settings
        self.vault = vault
        # One programming cable: two fittings at once would talk over each other on its one line.
        self._cable = asyncio.Lock()

    # ---- values ----

    def plate(self, value: str) -> str:
        """The plate in canonical form; raises InvalidValue when it does not match the local pattern."""
        try:
            return normalise_plate(value, self.settings.plate_pattern, self.settings.plate_example)
        except IdentityError as exc:
            raise InvalidValue(str(exc), "plate", "plate_invalid", {"example": self.settings.plate_example}) from None

    async def _holder(
        self, conn: psycopg.AsyncConnection[Any], field: str, value: Any, except_bike: int | None = None
    ) -> Conflict | None:
        """The refusal naming what already holds a plate, chip, frame or motor number, or None if it is free."""
        if field == "tag_id":
            cur = await conn.execute(
                "SELECT c.retired_at, b.plate, b.bike_id FROM chips c LEFT JOIN bikes b ON b.bike_id = c.bike_id"
                " WHERE c.tag_id = %s",
                (value,),
            )
            row = await cur.fetchone()
            if row is None:
                return None
            retired_at, plate, bike_id = row
            chip = format_tag(value)
            if retired_at is not None:
                return Conflict(
                    f"chip {chip} was retired on {retired_at:%Y-%m-%d} and cannot be fitted again",
                    field,
                    "chip_retired",
                    {"tag_id": chip, "date": f"{retired_at:%Y-%m-%d}"},
                )
            if bike_id is not None and bike_id != except_bike:
                return Conflict(
                    f"chip {chip} is already fitted to bike {plate}",
                    field,
                    "chip_fitted",
                    {"tag_id": chip, "plate": plate},
                )
            return None
        column = {"plate": "plate", "frame_number": "frame_number", "motor_number": "motor_number"}[field]
        cur = await conn.execute(
            f"SELECT bike_id, plate FROM bikes WHERE {column} = %s AND status = 'active'"
            " AND bike_id IS DISTINCT FROM %s",
            (value, except_bike),
        )
        row = await cur.fetchone()
        if row is None:
            return None
        if field == "plate":
            return Conflict(
                f"plate {value} is already registered to another bike (#{row[0]})",
                field,
                "plate_taken",
                {"plate": value, "bike_id": row[0]},
            )
        serials: dict[str, tuple[str, ErrorCode]] = {
            "frame_number": ("frame number", "frame_taken"),
            "motor_number": ("motor number", "motor_taken"),
        }
        label, code = serials[field]
        return Conflict(
            f"{label} {value} is already registered to bike {row[1]}", field, code, {"value": value, "plate": row[1]}
        )

    async def availability(self, conn: psycopg.AsyncConnection[Any], values: dict[str, Any]) -> dict[str, Conflict]:
        """For each given field (plate, tag_id, frame_number, motor_number), what holds it; free fields omitted."""
        out: dict[str, Conflict] = {}
        for field, value in values.items():
            if value is None:
                continue
            refusal = await self._holder(conn, field, value)
            if refusal:
                out[field] = refusal
        return out

    async def _refuse_taken(
        self, conn: psycopg.AsyncConnection[Any], values: dict[str, Any], except_bike: int | None = None
    ) -> None:
        for field, value in values.items():
            refusal = await self._holder(conn, field, value, except_bike)
            if refusal:
                raise refusal

    async def _explain(
        self, conn: psycopg.AsyncConnection[Any], exc: psycopg.errors.UniqueViolation, values: dict[str, Any]
    ) -> Conflict:
        """The Conflict for a unique violation the database raised (a race the pre-check did not see)."""
        name = exc.diag.constraint_name or ""
        for field, marker in (
            ("plate", "plate"),
            ("tag_id", "chip"),
            ("frame_number", "frame"),
            ("motor_number", "motor"),
            ("id_number", "id_number"),
        ):
            if marker in name and field in values:
                if field == "id_number":
                    return Conflict(
                        "an owner with this resident ID number is already registered", field, "owner_exists"
                    )
                return await self._holder(conn, field, values[field]) or Conflict(
                    f"{field.replace('_', ' ')} is already registered", field, "taken", {"value": str(values[field])}
                )
        return Conflict("the registry refused the change: a one-to-one rule would be broken")

    # ---- owners ----

    async def find_owner(self, conn: psycopg.AsyncConnection[Any], id_number: str) -> int | None:
        """The owner with this (normalised) resident ID number, found by its keyed hash."""
        cur = await conn.execute(
            "SELECT owner_id FROM owners WHERE id_number_hash = %s", (self.vault.lookup_hash(id_number),)
        )
        row = await cur.fetchone()
        return int(row[0]) if row else None

    async def lookup_owner(self, conn: psycopg.AsyncConnection[Any], account_id: int, id_number: str) -> int | None:
        """find_owner for a person at the counter, at most owner_lookups_per_hour per account; raises LookupThrottled.

        The count is of the account's `owner.lookup` audit records (every look-up, hit or miss, is one), so the
        caller records this one in the same transaction; the lock makes parallel look-ups count one at a time.
        """
        await conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (_LOOKUP_LOCK, account_id))
        cur = await conn.execute(
            "SELECT count(*), min(at) FROM audit_log"
            " WHERE at > now() - interval '1 hour' AND account_id = %s AND action = 'owner.lookup'",
            (account_id,),
        )
        made, oldest = await cur.fetchone()  # type: ignore[misc]
        if made >= self.settings.owner_lookups_per_hour:
            wait_s = max(1, int((oldest + timedelta(hours=1) - utcnow()).total_seconds()) + 1)
            raise LookupThrottled(
                f"{made} owner look-ups in the last hour, the most one account may make"
                f" (BIKEGUARD_OWNER_LOOKUPS_PER_HOUR); try again in {max(1, round(wait_s / 60))} min",
                wait_s,
            )
        return await self.find_owner(conn, id_number)

    async def create_owner(self, conn: psycopg.AsyncConnection[Any], actor: str, owner: OwnerDetails) -> int:
        """A new owner; raises Conflict when one with this resident ID number exists."""
        existing = await self.find_owner(conn, owner.id_number)
        if existing is not None:
            raise Conflict(
                f"an owner with this resident ID number is already registered (owner #{existing}):"
                " use the existing record",
                "id_number",
                "owner_exists",
            )
        try:
            async with conn.transaction():
                cur = await conn.execute(
                    "INSERT INTO owners (name, id_number_hash, id_number_enc, mobile, address, created_by)"
                    " VALUES (%s, %s, %s, %s, %s, %s) RETURNING owner_id",
                    (
                        owner.name,
                        self.vault.lookup_hash(owner.id_number),
                        self.vault.encrypt(owner.id_number),
                        owner.mobile,
                        owner.address,
                        actor,
                    ),
                )
                return int((await cur.fetchone())[0])  # type: ignore[index]
        except psycopg.errors.UniqueViolation as exc:
            raise Conflict(
                "an owner with this resident ID number is already registered", "id_number", "owner_exists"
            ) from exc

    def masked_id_number(self, blob: bytes | None) -> str | None:
        """The masked resident ID number from its encrypted form."""
        if blob is None:
            return None
        try:
            return mask_id_number(self.vault.decrypt(blob))
        except VaultError:
            return "(cannot be decrypted with the configured key)"

    async def get_owner(self, conn: psycopg.AsyncConnection[Any], owner_id: int) -> dict[str, Any]:
        """An owner with the resident ID number masked, and their active bikes' plates; raises NotFound."""
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "SELECT o.owner_id, o.name, o.id_number_enc, o.mobile, o.address, o.created_at AS registered_at,"
                " a.username AS login,"
                " coalesce((SELECT array_agg(b.plate ORDER BY b.bike_id) FROM bikes b"
                "           WHERE b.owner_id = o.owner_id AND b.status = 'active'), '{}') AS plates"
                " FROM owners o LEFT JOIN accounts a ON a.owner_id = o.owner_id WHERE o.owner_id = %s",
                (owner_id,),
            )
            row = await cur.fetchone()
        if row is None:
            raise NotFound(f"no owner {owner_id}", "owner")
        row["id_number_masked"] = self.masked_id_number(row.pop("id_number_enc"))
        row["max_bikes"] = self.settings.max_bikes_per_owner
        return row

    async def owner_summary(self, conn: psycopg.AsyncConnection[Any], owner_id: int) -> dict[str, Any]:
        """An owner as shown beside a bike: masked name, ID and mobile."""
        owner = await self.get_owner(conn, owner_id)
        return {
            "owner_id": owner_id,
            "name_masked": mask_name(owner["name"]),
            "id_number_masked": owner["id_number_masked"],
            "mobile_masked": mask_mobile(owner["mobile"]) if owner["mobile"] else None,
        }

    async def _lock_owner_within_limit(self, conn: psycopg.AsyncConnection[Any], owner_id: int) -> None:
        """Lock the owner (so two counters cannot both add the last allowed bike) and check the limit."""
        cur = await conn.execute("SELECT 1 FROM owners WHERE owner_id = %s FOR UPDATE", (owner_id,))
        if await cur.fetchone() is None:
            raise NotFound(f"no owner {owner_id}", "owner")
        cur = await conn.execute(
            "SELECT plate FROM bikes WHERE owner_id = %s AND status = 'active' ORDER BY bike_id", (owner_id,)
        )
        plates = [r[0] for r in await cur.fetchall()]
        limit = self.settings.max_bikes_per_owner
        if len(plates) >= limit:
            raise LimitReached(
                f"this owner already holds {len(plates)} active bike{'s' if len(plates) != 1 else ''}"
                f" ({', '.join(plates)}); the limit is {limit} per person",
                "owner",
                "limit_reached",
                {"n": len(plates), "plates": ", ".join(plates), "limit": limit},
            )

    # ---- bikes ----

    async def register_bike(
        self,
        conn: psycopg.AsyncConnection[Any],
        actor: str,
        owner_id: int,
        bike: BikeDetails,
        tag_id: int,
        chip_kind: chip_keys.ChipKind = "v1",
    ) -> int:
        """Register a bike to an owner with its chip fitted (a v2 chip keyed on the cable) and a certificate issued;
        all or nothing."""
        plate = self.plate(bike.plate)
        values = {
            "plate": plate,
            "frame_number": bike.frame_number,
            "motor_number": bike.motor_number,
            "tag_id": tag_id,
        }
        try:
            async with conn.transaction():
                await _act_as(conn, actor, "registration")
                await self._lock_owner_within_limit(conn, owner_id)
                await self._refuse_taken(conn, values)
                cur = await conn.execute(
                    "INSERT INTO bikes (plate, owner_id, frame_number, motor_number, brand, model, colour, created_by)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING bike_id",
                    (plate, owner_id, bike.frame_number, bike.motor_number, bike.brand, bike.model, bike.colour, actor),
                )
                bike_id = int((await cur.fetchone())[0])  # type: ignore[index]
                await self._fit_chip(conn, bike_id, tag_id, chip_kind)
                await certificates.issue(conn, bike_id, actor)
                if chip_kind == "v2":
                    await self._key_chip(conn, tag_id)
        except psycopg.errors.UniqueViolation as exc:
            raise await self._explain(conn, exc, values) from exc
        return bike_id

    async def _fit_chip(
        self, conn: psycopg.AsyncConnection[Any], bike_id: int, tag_id: int, kind: chip_keys.ChipKind
    ) -> None:
        cur = await conn.execute(
            "INSERT INTO chips (tag_id, bike_id, kind) VALUES (%s, %s, %s)"
            " ON CONFLICT (tag_id) DO UPDATE SET bike_id = excluded.bike_id, kind = excluded.kind, fitted_at = now()"
            " WHERE chips.bike_id IS NULL AND chips.retired_at IS NULL RETURNING tag_id",
            (tag_id, bike_id, kind),
        )
        if await cur.fetchone() is None:
            raise await self._holder(conn, "tag_id", tag_id) or Conflict(
                f"chip {format_tag(tag_id)} is taken", "tag_id", "taken", {"value": format_tag(tag_id)}
            )

    async def _key_chip(self, conn: psycopg.AsyncConnection[Any], tag_id: int) -> None:
        """Key the v2 chip on the cable and keep its key, as the last step of the caller's transaction: every check
        the database makes has passed by then, so a refusal never leaves a keyed chip (keyed once, for good)
        without a bike."""
        try:
            async with self._cable:
                chip = await asyncio.to_thread(
                    chip_keys.program_chip,
                    self.settings.counter_programmer_url,
                    tag_id,
                    timeout_s=self.settings.counter_programmer_timeout_s,
                )
        except chip_keys.CableError as exc:
            raise ChipNotProgrammed(str(exc), "tag_id", exc.code, exc.params) from exc
        await chip_keys.store_key(conn, self.vault, chip)

    async def get_bike(
        self, conn: psycopg.AsyncConnection[Any], bike_id: int, owner_id: int | None = None, active_only: bool = False
    ) -> dict[str, Any]:
        """A bike with its chip, photos and theft state; with owner_id, only if it is that owner's. NotFound."""
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                _BIKE_SELECT + " WHERE b.bike_id = %s AND (%s::int8 IS NULL OR (b.owner_id = %s"
                " AND b.status = 'active')) AND (NOT %s OR b.status = 'active')",
                (bike_id, owner_id, owner_id, active_only),
            )
            row = await cur.fetchone()
        if row is None:
            raise NotFound(f"no bike {bike_id}", "bike")
        return _bike_out(row)

    async def find_bikes(
        self,
        conn: psycopg.AsyncConnection[Any],
        *,
        plate: str | None = None,
        tag_id: int | None = None,
        frame_number: str | None = None,
        owner_id: int | None = None,
        include_deregistered: bool = False,
        limit: int = 50,
    ) -> list[dict[str, Any]]:
        """Active bikes matching every given criterion exactly; with include_deregistered, deregistered ones too
        (after the active), found by frame number or by a plate or chip they had (their plate is released and
        their chip retired)."""
        if plate is not None:
            try:
                plate = self.plate(plate)
            except InvalidValue:
                return []
        params = {
            "plate": plate,
            "tag": tag_id,
            "frame": frame_number,
            "owner": owner_id,
            "all": include_deregistered,
            "limit": limit,
        }
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                _BIKE_SELECT + " WHERE (%(all)s OR b.status = 'active')"
                " AND (%(plate)s::text IS NULL OR b.plate = %(plate)s OR (%(all)s AND b.status <> 'active'"
                "      AND b.bike_id IN (SELECT x.bike_id FROM bike_bindings x"
                "                        WHERE x.kind = 'plate' AND x.plate = %(plate)s)))"
                " AND (%(tag)s::int8 IS NULL OR c.tag_id = %(tag)s OR (%(all)s AND b.status <> 'active'"
                "      AND b.bike_id IN (SELECT x.bike_id FROM bike_bindings x"
                "                        WHERE x.kind = 'chip' AND x.tag_id = %(tag)s)))"
                " AND (%(frame)s::text IS NULL OR b.frame_number = %(frame)s)"
                " AND (%(owner)s::int8 IS NULL OR b.owner_id = %(owner)s)"
                " ORDER BY b.status <> 'active', b.bike_id LIMIT %(limit)s",
                params,
            )
            return [_bike_out(r) for r in await cur.fetchall()]

    async def stolen_bikes(self, conn: psycopg.AsyncConnection[Any], limit: int = 1000) -> list[dict[str, Any]]:
        """Registered bikes with an open theft report, the latest reported first."""
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                _BIKE_SELECT + " WHERE b.status = 'active' AND t.report_id IS NOT NULL"
                " ORDER BY t.reported_at DESC, b.bike_id LIMIT %s",
                (limit,),
            )
            return [_bike_out(r) for r in await cur.fetchall()]

    async def _active_bike(
        self, conn: psycopg.AsyncConnection[Any], bike_id: int, allow_stolen: bool = False
    ) -> dict[str, Any]:
        """Lock an active bike for a life-cycle change; refuse a stolen one unless allowed."""
        cur = await conn.execute("SELECT 1 FROM bikes WHERE bike_id = %s AND status = 'active' FOR UPDATE", (bike_id,))
        if await cur.fetchone() is None:
            raise NotFound(f"no active bike {bike_id}", "bike", "bike_not_active", {"bike_id": bike_id})
        bike = await self.get_bike(conn, bike_id)
        if bike["stolen"] and not allow_stolen:
            raise Conflict(
                f"bike {bike['plate']} is reported stolen: mark it recovered first",
                "bike",
                "bike_stolen",
                {"plate": bike["plate"]},
            )
        return bike

    async def history(self, conn: psycopg.AsyncConnection[Any], bike_id: int) -> list[dict[str, Any]]:
        """Every binding of the bike (owner, plate, chip) and its theft reports, oldest first, with who and when."""
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "SELECT x.kind, x.owner_id, o.name AS owner_name, x.plate, x.tag_id, x.valid_from, x.valid_to,"
                " x.bound_by, x.reason, x.unbound_by, x.end_reason"
                " FROM bike_bindings x LEFT JOIN owners o USING (owner_id) WHERE x.bike_id = %s"
                " UNION ALL"
                " SELECT 'theft', NULL, NULL, NULL, NULL, t.stolen_at, t.recovered_at, coalesce(t.reported_by, ''),"
                " 'reported stolen', t.recovered_by, CASE WHEN t.recovered_at IS NOT NULL THEN 'recovered' END"
                " FROM theft_reports t WHERE t.bike_id = %s"
                " ORDER BY valid_from, kind",
                (bike_id, bike_id),
            )
            rows = await cur.fetchall()
        for r in rows:
            if r["tag_id"] is not None:
                r["tag_id"] = format_tag(r["tag_id"])
        return rows

    async def transfer(
        self,
        conn: psycopg.AsyncConnection[Any],
        actor: str,
        bike_id: int,
        new_owner_id: int,
        *,
        consent_code: str | None = None,
        old_owner_id_number: str | None = None,
    ) -> None:
        """Hand the bike to a new owner with the current owner's consent; the old certificate is superseded.

        Consent is either the code the owner made in the portal, or the owner at the counter with their
        resident ID card (the clerk types its number, which must match the current owner's).
        """
        async with conn.transaction():
            await _act_as(conn, actor, "transfer")
            bike = await self._active_bike(conn, bike_id)
            old_owner = int(bike["owner_id"])
            if new_owner_id == old_owner:
                raise Conflict("the bike already belongs to this owner", "owner", "same_owner")
            await self._check_consent(conn, bike_id, old_owner, consent_code, old_owner_id_number)
            await self._lock_owner_within_limit(conn, new_owner_id)
            await conn.execute(
                "UPDATE bikes SET owner_id = %s, armed = false WHERE bike_id = %s", (new_owner_id, bike_id)
            )
            await conn.execute(
                "UPDATE transfer_consents SET used_at = now() WHERE bike_id = %s AND used_at IS NULL", (bike_id,)
            )
            await certificates.issue(conn, bike_id, actor)

    async def _check_consent(
        self, conn: psycopg.AsyncConnection[Any], bike_id: int, owner_id: int, code: str | None, id_number: str | None
    ) -> None:
        if id_number:
            cur = await conn.execute("SELECT id_number_hash FROM owners WHERE owner_id = %s", (owner_id,))
            row = await cur.fetchone()
            if row and row[0] is not None and secrets.compare_digest(bytes(row[0]), self.vault.lookup_hash(id_number)):
                return
            raise ConsentRequired(
                "the resident ID number given is not the current owner's", "old_owner_id_number", "consent_id_wrong"
            )
        if code:
            cur = await conn.execute(
                "SELECT 1 FROM transfer_consents WHERE code_hash = %s AND bike_id = %s AND owner_id = %s"
                " AND used_at IS NULL AND expires_at > now()",
                (_code_hash(code), bike_id, owner_id),
            )
            if await cur.fetchone():
                return
            raise ConsentRequired("the consent code is wrong, used or expired", "consent_code", "consent_code_wrong")
        raise ConsentRequired(
            "the current owner must consent: a consent code from the owner portal, or the owner's resident ID"
            " number checked at the counter",
            "consent_code",
            "consent_needed",
        )

    async def consent_to_transfer(
        self, conn: psycopg.AsyncConnection[Any], owner_id: int, bike_id: int
    ) -> tuple[str, datetime]:
        """A one-time code with which the owner consents to hand this bike over, and when it expires."""
        await self.get_bike(conn, bike_id, owner_id=owner_id)
        code = "".join(secrets.choice("ACDEFGHJKLMNPQRTUVWXY346789") for _ in range(8))
        expires_at = utcnow() + timedelta(seconds=self.settings.transfer_consent_ttl_s)
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO transfer_consents (code_hash, bike_id, owner_id, expires_at) VALUES (%s, %s, %s, %s)",
                (_code_hash(code), bike_id, owner_id, expires_at),
            )
            await outbox.transfer_requested(conn, bike_id, owner_id, _code_hash(code))
        return code, expires_at

    async def replace_chip(
        self,
        conn: psycopg.AsyncConnection[Any],
        actor: str,
        bike_id: int,
        tag_id: int,
        reason: str | None = None,
        chip_kind: chip_keys.ChipKind = "v1",
    ) -> None:
        """Fit a new chip (a v2 chip keyed on the cable): the old one is retired (never to be fitted again) with its
        key; a new certificate is issued."""
        try:
            async with conn.transaction():
                await _act_as(conn, actor, reason or "chip replacement")
                bike = await self._active_bike(conn, bike_id)
                if bike["tag_id"] is not None and parse_tag(bike["tag_id"]) == tag_id:
                    raise Conflict(
                        f"chip {format_tag(tag_id)} is already this bike's chip",
                        "tag_id",
                        "same_chip",
                        {"tag_id": format_tag(tag_id)},
                    )
                await self._refuse_taken(conn, {"tag_id": tag_id})
                await conn.execute(
                    "UPDATE chips SET bike_id = NULL, retired_at = now(), retired_reason = %s WHERE bike_id = %s",
                    (reason or "replaced", bike_id),
                )
                await self._fit_chip(conn, bike_id, tag_id, chip_kind)
                await certificates.issue(conn, bike_id, actor)
                if chip_kind == "v2":
                    await self._key_chip(conn, tag_id)
        except psycopg.errors.UniqueViolation as exc:
            raise await self._explain(conn, exc, {"tag_id": tag_id}) from exc

    async def change_plate(
        self, conn: psycopg.AsyncConnection[Any], actor: str, bike_id: int, plate: str, reason: str | None = None
    ) -> None:
        """Give the bike a new plate (the old one is released); a new certificate is issued."""
        plate = self.plate(plate)
        try:
            async with conn.transaction():
                await _act_as(conn, actor, reason or "plate change")
                bike = await self._active_bike(conn, bike_id)
                if bike["plate"] == plate:
                    raise Conflict(
                        f"plate {plate} is already this bike's plate", "plate", "same_plate", {"plate": plate}
                    )
                await self._refuse_taken(conn, {"plate": plate})
                await conn.execute("UPDATE bikes SET plate = %s WHERE bike_id = %s", (plate, bike_id))
                await certificates.issue(conn, bike_id, actor)
        except psycopg.errors.UniqueViolation as exc:
            raise await self._explain(conn, exc, {"plate": plate}) from exc

    async def deregister(
        self,
        conn: psycopg.AsyncConnection[Any],
        actor: str,
        bike_id: int,
        status: Literal["scrapped", "exported"],
        note: str | None = None,
    ) -> None:
        """Take the bike off the registry: plate released, chip retired, certificate no longer current."""
        async with conn.transaction():
            await _act_as(conn, actor, f"deregistered: {status}" + (f" ({note})" if note else ""))
            await self._active_bike(conn, bike_id)
            await conn.execute(
                "UPDATE chips SET bike_id = NULL, retired_at = now(), retired_reason = %s WHERE bike_id = %s",
                (f"bike {status}", bike_id),
            )
            await conn.execute(
                "UPDATE bikes SET status = %s, plate = NULL, armed = false, deregistered_at = now() WHERE bike_id = %s",
                (status, bike_id),
            )
            await conn.execute(
                "UPDATE transfer_consents SET used_at = now() WHERE bike_id = %s AND used_at IS NULL", (bike_id,)
            )
            await certificates.supersede(conn, bike_id)

    async def set_armed(
        self, conn: psycopg.AsyncConnection[Any], owner_id: int, bike_id: int, armed: bool
    ) -> dict[str, Any]:
        """Arm or disarm the owner's bike (an armed bike seen moving raises an alarm for the owner)."""
        await self.get_bike(conn, bike_id, owner_id=owner_id)
        await conn.execute("UPDATE bikes SET armed = %s WHERE bike_id = %s", (armed, bike_id))
        return await self.get_bike(conn, bike_id)

    # ---- theft ----

    async def report_stolen(
        self,
        conn: psycopg.AsyncConnection[Any],
        actor: str,
        bike_id: int,
        stolen_at: datetime | None = None,
        place: str | None = None,
        circumstances: str | None = None,
        police_report: str | None = None,
    ) -> dict[str, Any]:
        """Open a theft report (the chip goes on the hot list); refused if one is already open."""
        bike = await self.get_bike(conn, bike_id, active_only=True)
        when = stolen_at or utcnow()
        if when > utcnow() + timedelta(minutes=5):
            raise InvalidValue("the time of the theft is in the future", "stolen_at")
        try:
            async with conn.transaction():
                await conn.execute(
                    "INSERT INTO theft_reports (bike_id, stolen_at, place, circumstances, police_report, reported_by)"
                    " VALUES (%s, %s, %s, %s, %s, %s)",
                    (bike_id, when, place, circumstances, police_report, actor),
                )
        except psycopg.errors.UniqueViolation as exc:
            raise Conflict(f"bike {bike['plate']} is already reported stolen", "bike") from exc
        return await self.get_bike(conn, bike_id)

    async def mark_recovered(self, conn: psycopg.AsyncConnection[Any], actor: str, bike_id: int) -> dict[str, Any]:
        """Close the bike's open theft report (its chip leaves the hot list)."""
        bike = await self.get_bike(conn, bike_id)
        async with conn.transaction():
            cur = await conn.execute(
                "UPDATE theft_reports SET recovered_at = now(), recovered_by = %s"
                " WHERE bike_id = %s AND recovered_at IS NULL",
                (actor, bike_id),
            )
            if cur.rowcount == 0:
                raise Conflict(f"bike {bike['plate']} is not reported stolen", "bike")
            # Its "stolen chip seen" alarm ends with the theft: off the police map and the owner's alerts.
            await clear_for_recovered_bike(conn, bike_id, f"{actor} (bike recovered)")
            await outbox.bike_recovered(conn, bike_id)
        return await self.get_bike(conn, bike_id)

    # ---- photos ----

    async def add_photo(
        self, conn: psycopg.AsyncConnection[Any], actor: str, bike_id: int, content_type: str, data: bytes
    ) -> int:
        """Keep a photo of the bike; refused past the per-bike count."""
        await self.get_bike(conn, bike_id, active_only=True)
        cur = await conn.execute("SELECT count(*) FROM bike_photos WHERE bike_id = %s", (bike_id,))
        if int((await cur.fetchone())[0]) >= self.settings.photos_per_bike:  # type: ignore[index]
            raise Conflict(
                f"a bike has at most {self.settings.photos_per_bike} photos",
                "photo",
                "photo_limit",
                {"n": self.settings.photos_per_bike},
            )
        cur = await conn.execute(
            "INSERT INTO bike_photos (bike_id, content_type, data, uploaded_by) VALUES (%s, %s, %s, %s)"
            " RETURNING photo_id",
            (bike_id, content_type, data, actor),
        )
        return int((await cur.fetchone())[0])  # type: ignore[index]

    async def photo(self, conn: psycopg.AsyncConnection[Any], bike_id: int, photo_id: int) -> tuple[str, bytes]:
        """(content type, bytes) of one photo of the bike; raises NotFound."""
        cur = await conn.execute(
            "SELECT content_type, data FROM bike_photos WHERE bike_id = %s AND photo_id = %s", (bike_id, photo_id)
        )
        row = await cur.fetchone()
        if row is None:
            raise NotFound(f"no photo {photo_id} of bike {bike_id}", "photo")
        return row[0], bytes(row[1])
