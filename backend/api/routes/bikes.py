"""Bikes: registration at the counter, life cycle, the owner's own bikes, theft reports, certificates, photos.

Owners reach only their own bikes: anyone else's is a 404, exactly as a bike that does not exist. What each
caller may see of a bike, its owner and its trajectory is backend.access's to say.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, File, Path, Query, Request, UploadFile
from fastapi.responses import Response

from backend import accounts, certificates, photos, trajectories
from backend.access import require_case_number, viewer_of
from backend.accounts import User
from backend.api.deps import Conn, PasswordsDep, PublicBaseUrl, Reads, RegistryDep, Settings, SignerDep, allow
from backend.api.routes.owners import create_owner
from backend.api.schemas import (
    ApiTime,
    ArmCreate,
    BikeCreate,
    BikePublic,
    BikeSearchResult,
    CertificatePublic,
    ChipReplacement,
    Deregistration,
    HistoryEntry,
    OwnerPublic,
    PlateChange,
    Refusal,
    RegistrationPublic,
    TheftReportCreate,
    TrajectoryPoint,
    TrajectorySummary,
    TransferConsentPublic,
    TransferCreate,
    TransferPublic,
)
from backend.registry import BikeDetails, InvalidValue, Registry, RegistryError, owner_username
from backend.settings import BackendSettings
from protocol.ids import TAG_ID_ANY_CASE_PATTERN, is_tag_text
from protocol.messages import parse_tag, utcnow

router = APIRouter(prefix="/api/bikes", tags=["bikes"])
# How far back an owner's bike list looks for where each bike was last seen.
_LAST_SEEN_DAYS = 30
BikeId = Annotated[int, Path(ge=1, le=2**63 - 1)]
Counter = Annotated[User, allow("clerk", "admin")]


async def _bike(conn: Conn, registry: Registry, user: User, bike_id: int) -> dict[str, Any]:
    """The bike as this user may see it: an owner only their own (else NotFound); clerks see its owner masked."""
    return await viewer_of(user).bike(conn, registry, bike_id)


async def _certificate(conn: Conn, bike_id: int, signer: SignerDep, base_url: str) -> dict[str, Any]:
    return certificates.public(await certificates.current(conn, bike_id), signer, base_url)


async def _publish_hotlist(conn: Conn, request: Request) -> None:
    await conn.commit()
    await request.app.state.publish_hotlist()


@router.post("", response_model=RegistrationPublic, status_code=201)
async def register_bike(
    body: BikeCreate,
    request: Request,
    conn: Conn,
    registry: RegistryDep,
    passwords: PasswordsDep,
    signer: SignerDep,
    base_url: PublicBaseUrl,
    settings: Settings,
    user: Counter,
) -> dict[str, Any]:
    """Clerk, admin: register a bike to an owner (new or existing), fit its chip, issue its certificate."""
    slip = None
    owner_id = body.owner_id
    if body.owner is not None:
        owner_id, slip = await create_owner(conn, registry, passwords, user, body.owner)
    assert owner_id is not None
    details = BikeDetails(body.plate, body.frame_number, body.motor_number, body.brand, body.model, body.colour)
    bike_id = await registry.register_bike(conn, user.actor, owner_id, details, parse_tag(body.tag_id), body.chip_kind)
    return {
        "bike": await _bike(conn, registry, user, bike_id),
        "owner": await registry.get_owner(conn, owner_id),
        "certificate": await _certificate(conn, bike_id, signer, base_url),
        "owner_login": slip,
    }


@router.get("", response_model=list[BikePublic])
async def list_bikes(
    conn: Conn,
    registry: RegistryDep,
    user: Annotated[User, allow("owner", "clerk", "admin", "police")],
    plate: str | None = Query(None, max_length=20),
    tag_id: str | None = Query(None, pattern=TAG_ID_ANY_CASE_PATTERN),
    frame_number: str | None = Query(None, max_length=40),
) -> list[dict[str, Any]]:
    """Owner: their bikes. Clerk, admin, police: bikes matching a plate, chip or frame number (one is needed);
    clerks and admins find deregistered bikes too (status says so), by frame number or a plate or chip they had."""
    viewer = viewer_of(user)
    if viewer.bike_owner is not None:
        found = await registry.find_bikes(conn, owner_id=viewer.bike_owner)
        now = utcnow()
        for bike in found:
            # Where it was last seen, never from before it became theirs (bike_window says since when).
            since, until = await viewer.bike_window(conn, bike, now - timedelta(days=_LAST_SEEN_DAYS), now, None)
            bike["last_seen"] = await trajectories.last_passage_of_bike(conn, bike["bike_id"], since, until)
    else:
        if plate is None and tag_id is None and frame_number is None:
            raise InvalidValue("give plate, tag_id or frame_number", "plate")
        found = await registry.find_bikes(
            conn,
            plate=plate,
            tag_id=parse_tag(tag_id) if tag_id else None,
            frame_number=frame_number.strip().upper() if frame_number else None,
            include_deregistered=viewer.finds_deregistered,
        )
    return await viewer.with_owners(conn, registry, found)


@router.get("/availability", response_model=dict[str, Refusal])
async def availability(
    conn: Conn,
    registry: RegistryDep,
    _user: Counter,
    plate: str | None = Query(None, max_length=20),
    tag_id: str | None = Query(None, pattern=TAG_ID_ANY_CASE_PATTERN),
    frame_number: str | None = Query(None, max_length=40),
    motor_number: str | None = Query(None, max_length=40),
) -> dict[str, dict[str, Any]]:
    """Clerk, admin: for each value given, what already holds it (free values are left out), as the clerk types:
    the message, its code and params (as in an error's body)."""
    values: dict[str, Any] = {
        "frame_number": frame_number.strip().upper() if frame_number else None,
        "motor_number": motor_number.strip().upper() if motor_number else None,
        "tag_id": parse_tag(tag_id) if tag_id else None,
    }
    refused: dict[str, RegistryError] = {}
    if plate:
        try:
            values["plate"] = registry.plate(plate)
        except InvalidValue as exc:
            refused["plate"] = exc
    refused = {**await registry.availability(conn, values), **refused}
    return {field: {"detail": str(exc), "code": exc.code, "params": exc.params} for field, exc in refused.items()}


@router.get("/search", response_model=list[BikeSearchResult], responses={403: {"description": "case number malformed"}})
async def search(
    conn: Conn,
    reads: Reads,
    registry: RegistryDep,
    settings: Settings,
    user: Annotated[User, allow("police", "admin")],
    q: str = Query(min_length=1, max_length=40),
    case_number: str | None = Query(None, max_length=40),
) -> list[dict[str, Any]]:
    """Police, admin: bikes whose plate, frame number or chip is q. Where a bike was last seen: a stolen one
    since the theft; any other, and every owner, only with a case number (audited)."""
    text = q.strip()
    case = require_case_number(case_number, "a bike's owner") if case_number else None
    found: dict[int, dict[str, Any]] = {}
    tag = parse_tag(text) if is_tag_text(text) else None
    for criteria in ({"plate": text}, {"frame_number": text.upper()}, {"tag_id": tag} if tag is not None else None):
        if criteria:
            for bike in await registry.find_bikes(conn, **criteria):
                found.setdefault(bike["bike_id"], bike)
    viewer = viewer_of(user, settings)
    return [
        {**await viewer.search_result(conn, reads, registry, bike, case, text), "photo_url": photos.latest_url(bike)}
        for bike in found.values()
    ]


@router.get("/stolen", response_model=list[BikeSearchResult])
async def stolen_bikes(
    conn: Conn,
    reads: Reads,
    registry: RegistryDep,
    settings: Settings,
    user: Annotated[User, allow("police", "admin")],
) -> list[dict[str, Any]]:
    """Police, admin: every bike reported stolen, latest report first, with where it was last seen since the theft
    (a bike no station has heard yet has none); no owner data. Audited."""
    found = await viewer_of(user, settings).stolen_bikes(conn, reads, registry)
    return [{**row, "photo_url": photos.latest_url(row["bike"])} for row in found]


@router.get("/{bike_id}", response_model=BikePublic)
async def get_bike(
    bike_id: BikeId,
    conn: Conn,
    registry: RegistryDep,
    user: Annotated[User, allow("owner", "clerk", "admin", "police")],
) -> dict[str, Any]:
    """Owner: their own bike. Clerk, admin: any bike with its owner masked. Police: any bike, no owner data."""
    return await _bike(conn, registry, user, bike_id)


@router.get("/{bike_id}/history", response_model=list[HistoryEntry])
async def history(
    bike_id: BikeId, conn: Conn, registry: RegistryDep, user: Annotated[User, allow("owner", "clerk", "admin")]
) -> list[dict[str, Any]]:
    """Owner (own bike), clerk, admin: every binding of owner, plate and chip, and theft reports, with who and when.

    An owner sees their own period only, and other owners as "another owner" (never by name or login); a clerk
    sees them masked.
    """
    return await viewer_of(user).bike_history(conn, registry, bike_id)


@router.get("/{bike_id}/owner", response_model=OwnerPublic, responses={403: {"description": "case number needed"}})
async def bike_owner(
    bike_id: BikeId,
    conn: Conn,
    registry: RegistryDep,
    user: Annotated[User, allow("police", "clerk", "admin")],
    case_number: str | None = Query(None, max_length=40),
) -> dict[str, Any]:
    """Police (with a case number), clerk, admin: the bike's owner (ID number masked). Audited."""
    viewer = viewer_of(user)
    case = viewer.case_for_person(case_number)
    bike = await viewer.check_bike(conn, registry, bike_id)
    return await viewer.read_owner(conn, registry, bike["owner_id"], case, bike_id=bike_id)


_CASE_NEEDED: dict[int | str, dict[str, Any]] = {403: {"description": "case number needed"}}
_WINDOW_H = 24


async def _trajectory_window(
    conn: Conn,
    registry: Registry,
    settings: BackendSettings,
    user: User,
    bike_id: int,
    since: datetime | None,
    until: datetime | None,
    case_number: str | None,
    **detail: str,
) -> tuple[datetime, datetime]:
    """The part of [since, until) of the bike's trajectory this user may see (default: the last 24 h), as
    access.Viewer.bike_window says (another owner's bike is a 404; police access is audited, with `detail`)."""
    until_at: datetime = until or utcnow()
    since_at: datetime = since or until_at - timedelta(hours=_WINDOW_H)  # ApiTime keeps this in the calendar
    viewer = viewer_of(user, settings)
    bike = await viewer.check_bike(conn, registry, bike_id)
    return await viewer.bike_window(conn, bike, since_at, until_at, case_number, **detail)


@router.get("/{bike_id}/trajectory", response_model=list[TrajectoryPoint], responses=_CASE_NEEDED)
async def trajectory(
    bike_id: BikeId,
    conn: Conn,
    reads: Reads,
    registry: RegistryDep,
    settings: Settings,
    user: Annotated[User, allow("owner", "police")],
    since: ApiTime | None = None,
    until: ApiTime | None = None,
    case_number: str | None = Query(None, max_length=40),
    limit: int = Query(1000, ge=1, le=10_000),
) -> list[dict[str, Any]]:
    """Owner: their bike since they own it. Police: a stolen bike since the theft; otherwise a case number
    is needed, and the access is audited."""
    since_at, until_at = await _trajectory_window(conn, registry, settings, user, bike_id, since, until, case_number)
    return await trajectories.of_bike(reads, bike_id, since_at, until_at, limit)


@router.get("/{bike_id}/trajectory/summary", response_model=TrajectorySummary, responses=_CASE_NEEDED)
async def trajectory_summary(
    bike_id: BikeId,
    conn: Conn,
    reads: Reads,
    registry: RegistryDep,
    settings: Settings,
    user: Annotated[User, allow("owner", "police")],
    since: ApiTime | None = None,
    until: ApiTime | None = None,
    case_number: str | None = Query(None, max_length=40),
) -> dict[str, Any]:
    """Owner, police (as for the trajectory): its stops with their dwell and the legs between them with
    distance, speed and heading, over the window actually shown; what the police console replays."""
    since_at, until_at = await _trajectory_window(
        conn, registry, settings, user, bike_id, since, until, case_number, view="summary"
    )
    found = await trajectories.bike_trajectory(reads, bike_id, since_at, until_at)
    return {**trajectories.to_summary(found), "since": since_at, "until": until_at}


@router.get(
    "/{bike_id}/trajectory.{fmt}",
    response_class=Response,
    responses={
        200: {
            "content": {media.split(";")[0]: {} for media in trajectories.EXPORT_MEDIA_TYPES.values()},
            "description": "a download: GPX, GeoJSON or CSV",
        },
        **_CASE_NEEDED,
    },
)
async def trajectory_export(
    bike_id: BikeId,
    fmt: Annotated[trajectories.ExportFormat, Path(description="gpx, geojson or csv")],
    conn: Conn,
    reads: Reads,
    registry: RegistryDep,
    settings: Settings,
    user: Annotated[User, allow("owner", "police")],
    since: ApiTime | None = None,
    until: ApiTime | None = None,
    case_number: str | None = Query(None, max_length=40),
) -> Response:
    """Owner, police (as for the trajectory): the trajectory as a GPX, GeoJSON or CSV file to download."""
    since_at, until_at = await _trajectory_window(
        conn, registry, settings, user, bike_id, since, until, case_number, view=fmt
    )
    found = await trajectories.bike_trajectory(reads, bike_id, since_at, until_at)
    name = trajectories.export_filename(bike_id, since_at, until_at, fmt)
    return Response(
        trajectories.export(found, fmt),
        media_type=trajectories.EXPORT_MEDIA_TYPES[fmt],
        headers={"Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"},
    )


@router.get("/{bike_id}/certificate", response_model=CertificatePublic)
async def certificate(
    bike_id: BikeId,
    conn: Conn,
    registry: RegistryDep,
    signer: SignerDep,
    base_url: PublicBaseUrl,
    user: Annotated[User, allow("owner", "clerk", "admin")],
) -> dict[str, Any]:
    """Owner (own bike), clerk, admin: the current certificate with its signed token and links."""
    await _bike(conn, registry, user, bike_id)
    return await _certificate(conn, bike_id, signer, base_url)


@router.post("/{bike_id}/photos", status_code=201, response_model=dict[str, int])
async def add_photo(
    bike_id: BikeId,
    conn: Conn,
    registry: RegistryDep,
    settings: Settings,
    user: Counter,
    photo: Annotated[UploadFile, File(description="JPEG or PNG")],
) -> dict[str, int]:
    """Clerk, admin: add a photo of the bike (JPEG or PNG, size limited by the settings)."""
    data = await photo.read(settings.photo_max_bytes + 1)
    if len(data) > settings.photo_max_bytes:
        raise InvalidValue(
            f"a photo may have at most {settings.photo_max_bytes} bytes",
            "photo",
            "photo_too_big",
            {"n": settings.photo_max_bytes},
        )
    kind, pixels = await asyncio.to_thread(photos.reencode, data)  # only pixels are kept and served
    return {"photo_id": await registry.add_photo(conn, user.actor, bike_id, kind, pixels)}


@router.get(
    "/{bike_id}/photos/{photo_id}",
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}, "image/png": {}}}},
)
async def get_photo(
    bike_id: BikeId,
    photo_id: Annotated[int, Path(ge=1, le=2**63 - 1)],
    conn: Conn,
    registry: RegistryDep,
    user: Annotated[User, allow("owner", "clerk", "admin", "police")],
) -> Response:
    """Owner (own bike), clerk, admin, police: one photo of the bike."""
    await _bike(conn, registry, user, bike_id)
    content_type, data = await registry.photo(conn, bike_id, photo_id)
    return Response(data, media_type=content_type, headers={"Cache-Control": "private, max-age=3600"})


@router.post("/{bike_id}/arm", response_model=BikePublic)
async def arm(
    bike_id: BikeId, body: ArmCreate, conn: Conn, registry: RegistryDep, user: Annotated[User, allow("owner")]
) -> dict[str, Any]:
    """Owner: arm or disarm their bike (armed and seen moving raises an alarm for them)."""
    await registry.set_armed(conn, user.owner_id or 0, bike_id, body.armed)
    return await _bike(conn, registry, user, bike_id)


@router.post("/{bike_id}/theft", response_model=BikePublic, status_code=201, responses=_CASE_NEEDED)
async def report_stolen(
    bike_id: BikeId,
    body: TheftReportCreate,
    request: Request,
    conn: Conn,
    registry: RegistryDep,
    user: Annotated[User, allow("owner", "clerk", "police", "admin")],
    case_number: str | None = Query(None, max_length=40),
) -> dict[str, Any]:
    """Owner (own bike), clerk, police, admin: report the bike stolen; its chip goes on the hot list at once.

    Police file under a case number (the report's police_report unless one is given), audited with it."""
    viewer = viewer_of(user)
    case = viewer.case_for_theft_report(case_number)
    await _bike(conn, registry, user, bike_id)
    bike = await registry.report_stolen(
        conn, user.actor, bike_id, body.stolen_at, body.place, body.circumstances, body.police_report or case
    )
    await viewer.theft_reported(conn, bike, case)
    await _publish_hotlist(conn, request)
    return await _bike(conn, registry, user, bike_id)


@router.post("/{bike_id}/recovered", response_model=BikePublic, responses=_CASE_NEEDED)
async def mark_recovered(
    bike_id: BikeId,
    request: Request,
    conn: Conn,
    registry: RegistryDep,
    user: Annotated[User, allow("owner", "clerk", "police", "admin")],
    case_number: str | None = Query(None, max_length=40),
) -> dict[str, Any]:
    """Owner (own bike), clerk, police, admin: the bike is back; its chip leaves the hot list. Police: audited,
    under the case number given or the report's."""
    bike = await _bike(conn, registry, user, bike_id)
    await registry.mark_recovered(conn, user.actor, bike_id)
    await viewer_of(user).recovered(conn, bike, case_number)
    await _publish_hotlist(conn, request)
    return await _bike(conn, registry, user, bike_id)


@router.post("/{bike_id}/transfer-consent", response_model=TransferConsentPublic, status_code=201)
async def consent_to_transfer(
    bike_id: BikeId, conn: Conn, registry: RegistryDep, user: Annotated[User, allow("owner")]
) -> dict[str, Any]:
    """Owner: a one-time code that lets the counter hand this bike to someone else."""
    code, expires_at = await registry.consent_to_transfer(conn, user.owner_id or 0, bike_id)
    return {"code": code, "expires_at": expires_at}


@router.post("/{bike_id}/transfer", response_model=TransferPublic)
async def transfer(
    bike_id: BikeId,
    body: TransferCreate,
    request: Request,
    conn: Conn,
    registry: RegistryDep,
    passwords: PasswordsDep,
    signer: SignerDep,
    base_url: PublicBaseUrl,
    settings: Settings,
    user: Counter,
) -> dict[str, Any]:
    """Clerk, admin: hand the bike to a new owner, with the current owner's consent; history is kept."""
    slip = None
    new_owner_id = body.new_owner_id
    if body.new_owner is not None:
        new_owner_id, slip = await create_owner(conn, registry, passwords, user, body.new_owner)
    assert new_owner_id is not None
    await registry.transfer(
        conn,
        user.actor,
        bike_id,
        new_owner_id,
        consent_code=body.consent_code,
        old_owner_id_number=body.old_owner_id_number,
    )
    if slip is None and body.new_owner_id is not None:
        owner = await registry.get_owner(conn, new_owner_id)
        if owner["login"] is None:
            slip = await accounts.issue_owner_login(
                conn, passwords, new_owner_id, owner_username(), owner["name"], user.actor
            )
    return {
        "bike": await _bike(conn, registry, user, bike_id),
        "certificate": await _certificate(conn, bike_id, signer, base_url),
        "owner_login": slip,
    }


@router.post("/{bike_id}/chip", response_model=BikePublic)
async def replace_chip(
    bike_id: BikeId, body: ChipReplacement, conn: Conn, registry: RegistryDep, user: Counter
) -> dict[str, Any]:
    """Clerk, admin: fit a new chip; the old one is retired for good; a new certificate is issued."""
    await registry.replace_chip(conn, user.actor, bike_id, parse_tag(body.tag_id), body.reason, body.chip_kind)
    return await _bike(conn, registry, user, bike_id)


@router.post("/{bike_id}/plate", response_model=BikePublic)
async def change_plate(
    bike_id: BikeId, body: PlateChange, conn: Conn, registry: RegistryDep, user: Counter
) -> dict[str, Any]:
    """Clerk, admin: a new plate (the old one is released); a new certificate is issued."""
    await registry.change_plate(conn, user.actor, bike_id, body.plate, body.reason)
    return await _bike(conn, registry, user, bike_id)


@router.post("/{bike_id}/deregister", response_model=BikePublic)
async def deregister(
    bike_id: BikeId, body: Deregistration, conn: Conn, registry: RegistryDep, user: Counter
) -> dict[str, Any]:
    """Clerk, admin: the bike is scrapped or exported: plate released, chip retired, certificate void."""
    await registry.deregister(conn, user.actor, bike_id, body.status, body.note)
    return await _bike(conn, registry, user, bike_id)
