"""The daily hot sheet's page and PDF (backend.hotsheet): police and admins only, in English and Chinese."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response

from backend import access, hotsheet
from backend.accounts import Role, User
from backend.api.deps import Conn, OptionalUser, Reads, RegistryDep, Settings
from backend.api.routes.pages import gate, html_page, page_language
from backend.web import render
from backend.web.translations import MESSAGES
from protocol.messages import utcnow

router = APIRouter(tags=["pages"], include_in_schema=False)
_ROLES: tuple[Role, ...] = ("police", "admin")
_PDF_LABELS = (
    "title",
    "window",
    "count",
    "none",
    "stolen_at",
    "reported_at",
    "chip",
    "last_seen",
    "not_seen",
    "next",
    "next_none",
    "eta",
    "no_photo",
    "recovered",
)


def _moment(at: str | None, time_zone: str) -> datetime | None:
    """The sheet's end: now, or `at` (ISO 8601; without an offset, in the county's time zone as the sheet prints
    times and the page's form sends them); None when it cannot be read."""
    if not at:
        return utcnow()
    try:
        moment = datetime.fromisoformat(at)
    except ValueError:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=ZoneInfo(time_zone))).astimezone(UTC)


async def _sheet(
    request: Request, conn: Conn, reads: Reads, settings: Settings, user: User | None, at: str | None, lang: str
) -> tuple[hotsheet.HotSheet | None, Response | None]:
    """The sheet, or the page to show instead (sign in, a 403, an unreadable time)."""
    if refused := gate(request, user, _ROLES, lang):
        return None, refused
    assert user is not None
    moment = _moment(at, settings.hotsheet_time_zone)
    if moment is None:
        t = MESSAGES[lang]
        html = render(
            "message.html", lang, user=user, config={}, title=t["hotsheet_title"], text=t["hotsheet_bad_time"]
        )
        return None, html_page(html, lang, 400)
    return await hotsheet.build(conn, reads, access.viewer_of(user, settings), moment), None


@router.get("/hotsheet", response_class=HTMLResponse)
async def hot_sheet_page(
    request: Request,
    conn: Conn,
    reads: Reads,
    settings: Settings,
    user: OptionalUser,
    at: str | None = Query(None, max_length=40),
    lang: str | None = None,
) -> Response:
    """Police, admin: the bikes reported stolen in the 24 hours up to now (or `at`), printable, no owner."""
    chosen = page_language(request, lang)
    sheet, instead = await _sheet(request, conn, reads, settings, user, at, chosen)
    if sheet is None:
        assert instead is not None
        return instead
    zone = settings.hotsheet_time_zone
    html = render(
        "hotsheet.html",
        chosen,
        user=user,
        config={},
        sheet=sheet,
        at_param=at or "",
        at_local=hotsheet.local(sheet.at, zone).replace(" ", "T"),
        local=lambda value: hotsheet.local(value, zone),
        time_zone=zone,
    )
    return html_page(html, chosen)


@router.get("/hotsheet.pdf")
async def hot_sheet_pdf(
    request: Request,
    conn: Conn,
    reads: Reads,
    registry: RegistryDep,
    settings: Settings,
    user: OptionalUser,
    at: str | None = Query(None, max_length=40),
    lang: str | None = None,
) -> Response:
    """Police, admin: the hot sheet as an A4 portrait PDF for the morning briefing, each bike with its photo."""
    chosen = page_language(request, lang)
    sheet, instead = await _sheet(request, conn, reads, settings, user, at, chosen)
    if sheet is None:
        assert instead is not None
        return instead
    t = MESSAGES[chosen]
    labels = {key: t[f"hotsheet_{key}"] for key in _PDF_LABELS}
    photos = {
        bike.bike_id: (await registry.photo(conn, bike.bike_id, bike.photo_id))[1]
        for bike in sheet.bikes
        if bike.photo_id is not None
    }
    pdf = await asyncio.to_thread(hotsheet.render_pdf, sheet, labels, photos, settings.hotsheet_time_zone)
    name = f"hotsheet-{sheet.at.strftime('%Y%m%d-%H%M')}.pdf"
    return Response(
        pdf,
        media_type="application/pdf",
        headers={"Content-Disposition": f'inline; filename="{name}"', "Cache-Control": "no-store"},
    )
