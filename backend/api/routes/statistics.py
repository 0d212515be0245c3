"""Results (issue 16): the statistics page, its CSV and one-page PDF, and the JSON the same figures come from.

Police and admins only; numbers with no personal data (backend.statistics). A period is whole days in the county's
time zone (`?from=2026-01-01&to=2026-01-31`, default the last 30 days); heavy reads go to the replica when one is set.
"""

from __future__ import annotations

import asyncio
from datetime import date
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import HTMLResponse, Response

from backend import statistics
from backend.accounts import Role, User
from backend.api.deps import OptionalUser, Reads, Settings, allow
from backend.api.routes.pages import gate, html_page, page_language
from backend.settings import BackendSettings
from backend.web import render
from backend.web.translations import MESSAGES
from protocol.messages import utcnow

router = APIRouter(tags=["statistics"])
_ROLES: tuple[Role, ...] = ("police", "admin")
From = Annotated[date | None, Query(alias="from", description="first day of the period (county time zone)")]
To = Annotated[date | None, Query(alias="to", description="last day of the period, inclusive")]


def _period(settings: BackendSettings, first: date | None, last: date | None) -> statistics.Period:
    zone = ZoneInfo(settings.statistics_timezone)
    return statistics.period(first, last, zone, utcnow().astimezone(zone).date())


async def _results(reads: Any, settings: BackendSettings, first: date | None, last: date | None) -> dict[str, Any]:
    """The figures for the period asked for; a period that cannot be is a 422 saying why."""
    try:
        chosen = _period(settings, first, last)
    except statistics.PeriodInvalid as exc:
        raise HTTPException(422, str(exc)) from exc
    return await statistics.compute(reads, chosen)


@router.get("/api/statistics")
async def statistics_json(
    reads: Reads,
    settings: Settings,
    user: Annotated[User, allow(*_ROLES)],
    first: From = None,
    last: To = None,
) -> dict[str, Any]:
    """Police, admin: the results for a period (default the last 30 days), numbers only."""
    return jsonable_encoder(await _results(reads, settings, first, last))  # type: ignore[no-any-return]


@router.get("/statistics", response_class=HTMLResponse, include_in_schema=False)
async def statistics_page(
    request: Request,
    reads: Reads,
    settings: Settings,
    user: OptionalUser,
    first: From = None,
    last: To = None,
    lang: str | None = None,
) -> Response:
    """Police, admin: the results page with its period chooser, charts, and CSV and PDF downloads."""
    chosen = page_language(request, lang)
    if refused := gate(request, user, _ROLES, chosen):
        return refused
    t = MESSAGES[chosen]
    error = None
    try:
        period = _period(settings, first, last)
    except statistics.PeriodInvalid:
        error = t["stats_period_invalid"]
        period = _period(settings, None, None)
    result = await statistics.compute(reads, period)
    plot = statistics.area_plot(result, await statistics.station_positions(reads))
    query = f"from={period.first.isoformat()}&to={period.last.isoformat()}&lang={chosen}"
    html = render(
        "statistics.html",
        chosen,
        user=user,
        config={},
        result=result,
        figures=statistics.figures(result, t, chosen),
        plot=plot,
        weekdays=statistics.WEEKDAYS,
        top_areas=result["by_area"][: statistics.TOP_AREAS],
        error=error,
        home_days=statistics.HOME_DAYS,
        csv_url=f"/statistics.csv?{query}",
        pdf_url=f"/statistics.pdf?{query}",
    )
    return html_page(html, chosen)


@router.get("/statistics.csv", include_in_schema=False)
async def statistics_csv(
    request: Request,
    reads: Reads,
    settings: Settings,
    user: OptionalUser,
    first: From = None,
    last: To = None,
    lang: str | None = None,
) -> Response:
    """Police, admin: the results for a period as CSV (UTF-8 with a byte-order mark, so spreadsheets read Chinese)."""
    chosen = page_language(request, lang)
    if refused := gate(request, user, _ROLES, chosen):
        return refused
    result = await _results(reads, settings, first, last)
    p = result["period"]
    body = "\ufeff" + statistics.to_csv(result, MESSAGES[chosen])
    name = f"bikeguard-results-{p['from']}-{p['to']}.csv"
    return Response(
        body.encode(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"},
    )


@router.get("/statistics.pdf", include_in_schema=False)
async def statistics_pdf(
    request: Request,
    reads: Reads,
    settings: Settings,
    user: OptionalUser,
    first: From = None,
    last: To = None,
    lang: str | None = None,
) -> Response:
    """Police, admin: the results for a period as a printable one-page PDF."""
    chosen = page_language(request, lang)
    if refused := gate(request, user, _ROLES, chosen):
        return refused
    result = await _results(reads, settings, first, last)
    zone = ZoneInfo(settings.statistics_timezone)
    pdf = await asyncio.to_thread(statistics.render_pdf, result, MESSAGES[chosen], chosen, utcnow().astimezone(zone))
    p = result["period"]
    name = f"bikeguard-results-{p['from']}-{p['to']}.pdf"
    return Response(
        pdf,
        media_type="application/pdf",
        headers={"Content-Disposition": f'inline; filename="{name}"', "Cache-Control": "no-store"},
    )
