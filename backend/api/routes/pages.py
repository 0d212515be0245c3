"""The web pages: sign-in, the live map (police), the counter (clerks), the owner portal, certificates.

A page needing a sign-in sends the browser to /login (and back afterwards); a signed-in account of the
wrong role gets a 403 page saying whose page it is; a bike that is not the owner's is a 404. Who passes and
what they see (bikes, alarms) is backend.access's to say, as for the API.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any, TypeVar
from urllib.parse import quote

from fastapi import APIRouter, Path, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from backend import access, certificates, coverage, photos, shares, station_health, stations, trajectories
from backend.accounts import Role, User
from backend.alarms import queries as alarms
from backend.alarms.kinds import STATION_KINDS
from backend.api.deps import Conn, OptionalUser, PublicBaseUrl, RegistryDep, Settings, SignerDep
from backend.api.middleware.headers import csp_nonce, with_nonce
from backend.api.schemas import ApiTime
from backend.identity import mask_mobile, mask_name
from backend.registry import Registry
from backend.settings import BackendSettings
from backend.web import LANG_COOKIE, choose_language, render
from backend.web.fonts import FONT_URL, chinese_font
from backend.web.translations import MESSAGES
from backend.zones import registry as zones
from maps.coverage import build_coverage_map
from maps.live import build_live_map
from maps.stations import build_station_map
from maps.trajectory import build_trajectory_map
from protocol.ids import STATION_ID_PATTERN
from protocol.messages import utcnow

router = APIRouter(tags=["pages"], include_in_schema=False)
DAY = timedelta(days=1)
LONG_AGO = timedelta(days=30)  # how far back "last seen" looks
BikeId = Annotated[int, Path(ge=1, le=2**63 - 1)]
_HOME: dict[str, str] = {
    "police": "/",
    "admin": "/",
    "clerk": "/counter",
    "owner": "/portal",
    "installer": "/installer",
}


def page_language(request: Request, lang: str | None) -> str:
    """The page's language: ?lang=, else the remembered choice, else the browser's."""
    return choose_language(lang, request.cookies.get(LANG_COOKIE), request.headers.get("accept-language"))


def html_page(html: str, lang: str, status: int = 200) -> HTMLResponse:
    """A rendered page, not cached, remembering its language."""
    return _remember_language(HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"}), lang)


R = TypeVar("R", bound=Response)


def _remember_language(response: R, lang: str) -> R:
    """The page's language kept in a cookie, so the next page (and the sign-in on the way) speaks it too."""
    response.set_cookie(LANG_COOKIE, lang, max_age=365 * 86400, samesite="lax", path="/")
    return response


def _redirect(url: str, lang: str) -> RedirectResponse:
    """To sign in (or change the password) first, in the language this page was asked in (`?lang=zh` on a link)."""
    return _remember_language(RedirectResponse(url, status_code=303), lang)


NEXT_MAX = 200  # characters of a sign-in's `next`: where the browser goes after it


def same_site_path(next_path: str) -> str:
    """`next_path` if it is a path on this site, else /home: where a page may send the browser after a sign-in.

    Browsers read a backslash as a slash and drop tabs and newlines, so `/\\evil.example` or `/<tab>/evil.example`
    leave the site; only printable ASCII without a backslash, one leading slash and no second one is kept.
    common.js's BG.samePath is the same rule, for the pages' scripts.
    """
    printable = all("!" <= ch <= "~" for ch in next_path) and "\\" not in next_path
    if printable and next_path.startswith("/") and not next_path.startswith("//"):
        return next_path
    return "/home"


def _map_page(request: Request, html: str, lang: str | None = None) -> HTMLResponse:
    """A folium map page (its scripts are inline), with this response's CSP nonce on them (and the language
    cookie, when the page is in a chosen language)."""
    response = HTMLResponse(with_nonce(html, csp_nonce(request)), headers={"Cache-Control": "no-store"})
    return response if lang is None else _remember_language(response, lang)


def gate(request: Request, user: User | None, roles: tuple[Role, ...], lang: str) -> Response | None:
    """None if the user may see the page; else where to go instead (sign in, change password, or a 403).

    After the sign-in the browser comes back to this very page, its query too (a statistics period, a replay's
    bike), unless that would not fit the sign-in page's `next` (then to the page alone)."""
    query = request.url.query
    here = quote(
        f"{request.url.path}?{query}" if query and len(request.url.path) + len(query) < NEXT_MAX else request.url.path
    )
    refusal = access.admission(user, roles)
    if refusal == "sign in" or user is None:
        return _redirect(f"/login?next={here}", lang)
    if refusal == "change password":
        return _redirect(f"/password?next={here}", lang)
    if refusal == "wrong role":
        t = MESSAGES[lang]
        text = t["forbidden_text"].format(role=t[f"role_{user.role}"], roles=", ".join(t[f"role_{r}"] for r in roles))
        html = render(
            "message.html", lang, user=user, config={}, title=t["forbidden_title"], text=text, home=_HOME[user.role]
        )
        return html_page(html, lang, 403)
    return None


_ICON = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32"><circle cx="16" cy="16" r="14" fill="#1d4ed8"/>'
    '<circle cx="12" cy="12" r="5" fill="#93c5fd"/></svg>'
)


@router.get("/favicon.ico")
async def favicon() -> Response:
    """Anyone: the tab icon."""
    return Response(_ICON, media_type="image/svg+xml", headers={"Cache-Control": "public, max-age=86400"})


@router.get(FONT_URL)
async def chinese_font_file() -> Response:
    """Anyone: the pages' Chinese web font (backend.web.fonts), for browsers without a Chinese font of their own."""
    font = await asyncio.to_thread(chinese_font)
    return Response(font, media_type="font/otf", headers={"Cache-Control": "public, max-age=604800"})


@router.get("/", response_class=HTMLResponse)
async def live_map(
    request: Request, conn: Conn, settings: Settings, user: OptionalUser, lang: str | None = None
) -> Response:
    """Police, admin: the live map: stations, recent passages, active alarms with their trails."""
    chosen = page_language(request, lang)
    if refused := gate(request, user, ("police", "admin"), chosen):
        return refused
    assert user is not None
    html = build_live_map(
        jsonable_encoder(await stations.list_stations(conn)),
        await stations.roads_geojson(conn),
        jsonable_encoder(await stations.activity(conn, 10)),
        jsonable_encoder(await alarms.list_alarms(conn, scope=access.alarm_scope(user))),
        stolen_url="/api/bikes/stolen",
        zones=jsonable_encoder(await zones.list_zones(conn)),
        zone_editor_url="/police/zones",
        tile_url=settings.tile_url,
        tile_attribution=settings.tile_attribution,
        user_name=user.display_name or user.username,
        lang=chosen,
    )
    return _map_page(request, html, chosen)


@router.get("/police/zones", response_class=HTMLResponse)
async def zone_editor(
    request: Request, conn: Conn, settings: Settings, user: OptionalUser, lang: str | None = None
) -> Response:
    """Police, admin: the zone editor: draw zones on the map by clicking their corners, rename and delete them."""
    chosen = page_language(request, lang)
    if refused := gate(request, user, ("police", "admin"), chosen):
        return refused
    config = {
        "zones_url": "/api/zones",
        "zones": jsonable_encoder(await zones.list_zones(conn)),
        "stations": [
            {"station_id": s["station_id"], "name": s["name"], "lat": s["lat"], "lon": s["lon"]}
            for s in await stations.list_stations(conn)
        ],
        "roads": await stations.roads_geojson(conn),
        "tile_url": settings.tile_url,
        "tile_attribution": settings.tile_attribution or "Base map: local tile server",
        "min_vertices": 3,
        "max_vertices": zones.MAX_VERTICES,
    }
    return html_page(render("zones.html", chosen, user=user, config=config), chosen)


@router.get("/login", response_class=HTMLResponse)
async def login_page(
    request: Request, user: OptionalUser, lang: str | None = None, next: str = Query("/home", max_length=NEXT_MAX)
) -> Response:  # noqa: A002 - the usual name
    """Anyone: the sign-in form (a signed-in user goes straight on)."""
    chosen = page_language(request, lang)
    target = same_site_path(next)
    if user is not None and access.admission(user, ()) is None:
        return RedirectResponse(target if target != "/login" else "/home", status_code=303)
    return html_page(render("login.html", chosen, user=None, config={"next": target}), chosen)


@router.get("/password", response_class=HTMLResponse)
async def password_page(
    request: Request,
    user: OptionalUser,
    settings: Settings,
    lang: str | None = None,
    next: str = Query("/home", max_length=NEXT_MAX),
) -> Response:  # noqa: A002
    """Any signed-in account: choose a new password (forced after a first sign-in with a one-time one)."""
    chosen = page_language(request, lang)
    if user is None:
        return RedirectResponse("/login?next=/password", status_code=303)
    target = same_site_path(next)
    return html_page(
        render("password.html", chosen, user=user, config={"next": target, "min_length": settings.password_min_length}),
        chosen,
    )


@router.get("/home")
async def home(user: OptionalUser) -> Response:
    """Anyone: on to the page for the signed-in role, or to sign in."""
    refusal = access.admission(user, ())
    if refusal == "sign in" or user is None:
        return RedirectResponse("/login", status_code=303)
    if refusal == "change password":
        return RedirectResponse("/password", status_code=303)
    return RedirectResponse(_HOME[user.role], status_code=303)


@router.get("/installer", response_class=HTMLResponse)
async def installer(
    request: Request,
    conn: Conn,
    user: OptionalUser,
    lang: str | None = None,
    station: str | None = Query(None, pattern=STATION_ID_PATTERN),
) -> Response:
    """Installer, admin: the open station alarms, stations on a map coloured by health, their table, a station's
    self-test as it runs (`?station=st-017#selftest`), and the road coverage."""
    chosen = page_language(request, lang)
    if refused := gate(request, user, ("installer", "admin"), chosen):
        return refused
    assert user is not None
    health = await station_health.station_health(conn, utcnow())
    open_alarms = await alarms.list_alarms(conn, scope=access.alarm_scope(user, only_kinds=STATION_KINDS))
    return html_page(
        render(
            "installer.html",
            chosen,
            user=user,
            config={"selftest_station": station},
            stations=health,
            alarms=open_alarms,
        ),
        chosen,
    )


@router.get("/installer/map", response_class=HTMLResponse)
async def installer_map(
    request: Request, conn: Conn, settings: Settings, user: OptionalUser, lang: str | None = None
) -> Response:
    """Installer, admin: the station map, each station coloured by its health (shown inside /installer)."""
    chosen = page_language(request, lang)
    if refused := gate(request, user, ("installer", "admin"), chosen):
        return refused
    health = await station_health.station_health(conn, utcnow())
    drawn = [{**h, "state": h["health"]} for h in jsonable_encoder(health)]
    activity = [{"station_id": h["station_id"], "passages": h["passages_last_hour"]} for h in health]
    m = build_station_map(
        drawn,
        await stations.roads_geojson(conn),
        activity=activity,
        tile_url=settings.tile_url,
        tile_attribution=settings.tile_attribution,
        lang=chosen,
        period="hour",
    )
    return _map_page(request, m.get_root().render())


def _coverage_html(sts: list[dict[str, Any]], roads: dict[str, Any], settings: BackendSettings, lang: str) -> str:
    sites = [
        coverage.StationSite(
            s["station_id"],
            s["lat"],
            s["lon"],
            antennas=() if s.get("antenna_bearing_deg") is None else (coverage.Antenna(s["antenna_bearing_deg"]),),
        )
        for s in sts
    ]
    cov = coverage.compute(sites, coverage.roads_from_geojson(roads))
    m = build_coverage_map(
        cov, sts, roads, tile_url=settings.tile_url, tile_attribution=settings.tile_attribution, lang=lang
    )
    return str(m.get_root().render())


@router.get("/installer/coverage", response_class=HTMLResponse)
async def installer_coverage(
    request: Request, conn: Conn, settings: Settings, user: OptionalUser, lang: str | None = None
) -> Response:
    """Installer, admin: road coverage of the stations in service, with suggested next sites."""
    chosen = page_language(request, lang)
    if refused := gate(request, user, ("installer", "admin"), chosen):
        return refused
    sts = [s for s in jsonable_encoder(await stations.list_stations(conn)) if s["lifecycle"] != "decommissioned"]
    html = await asyncio.to_thread(_coverage_html, sts, await stations.roads_geojson(conn), settings, chosen)
    return _map_page(request, html)


@router.get("/counter", response_class=HTMLResponse)
async def counter(
    request: Request, user: OptionalUser, settings: Settings, base_url: PublicBaseUrl, lang: str | None = None
) -> Response:
    """Clerk, admin: the registration counter."""
    chosen = page_language(request, lang)
    if refused := gate(request, user, ("clerk", "admin"), chosen):
        return refused
    config = {
        "plate_pattern": settings.plate_pattern,
        "plate_example": settings.plate_example,
        "max_bikes": settings.max_bikes_per_owner,
        "login_url": f"{base_url.rstrip('/')}/login",  # printed on owners' slips, as certificates print /verify
    }
    return html_page(render("counter.html", chosen, user=user, config=config), chosen)


@router.get("/portal", response_class=HTMLResponse)
async def portal(request: Request, user: OptionalUser, lang: str | None = None) -> Response:
    """Owner: my bikes and alerts."""
    chosen = page_language(request, lang)
    if refused := gate(request, user, ("owner",), chosen):
        return refused
    return html_page(render("portal.html", chosen, user=user, config={}), chosen)


@router.get("/portal/bikes/{bike_id}/map", response_class=HTMLResponse)
async def portal_bike_map(
    request: Request,
    bike_id: BikeId,
    conn: Conn,
    registry: RegistryDep,
    settings: Settings,
    user: OptionalUser,
    since: ApiTime | None = None,
    until: ApiTime | None = None,
    lang: str | None = None,
) -> Response:
    """Owner: their bike's trail over [since, until) (default: the last 24 h) on the map, never from before it became
    theirs (shown inside /portal); another owner's bike is a 404."""
    chosen = page_language(request, lang)
    if refused := gate(request, user, ("owner",), chosen):
        return refused
    assert user is not None
    until_at = until or utcnow()
    viewer = access.viewer_of(user, settings)
    bike = await viewer.check_bike(conn, registry, bike_id)
    since_at, until_at = await viewer.bike_window(conn, bike, since or until_at - timedelta(hours=24), until_at, None)
    found = await trajectories.bike_trajectory(conn, bike_id, since_at, until_at)
    return await _trail_map(request, conn, settings, found, bike["plate"] or f"#{bike_id}", chosen)


ShareToken = Annotated[str, Path(min_length=16, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


def _share_gone(user: User | None, lang: str) -> HTMLResponse:
    t = MESSAGES[lang]
    html = render("message.html", lang, user=user, config={}, title=t["share_gone_title"], text=t["share_gone_text"])
    return html_page(html, lang, 404)


async def _shared(
    conn: Conn, registry: Registry, token: str
) -> tuple[dict[str, Any], dict[str, Any], trajectories.Trajectory] | None:
    """The share a link opens, its bike and the bike's last 24 hours as the share shows them; None if it opens none."""
    share = await shares.resolve(conn, token)
    if share is None:
        return None
    now = utcnow()
    day = await trajectories.bike_trajectory(conn, share["bike_id"], *shares.window(share, now - DAY, now))
    return share, await registry.get_bike(conn, share["bike_id"]), day


@router.get("/shared/{token}", response_class=HTMLResponse)
async def shared_bike(
    request: Request,
    token: ShareToken,
    conn: Conn,
    registry: RegistryDep,
    user: OptionalUser,
    lang: str | None = None,
) -> Response:
    """Anyone with an owner's link (backend/shares.py): where the bike was last seen and its last 24 hours on the map;
    never its owner's data. A link unknown, expired, withdrawn or of a bike sold since is a 404 page."""
    chosen = page_language(request, lang)
    found = await _shared(conn, registry, token)
    if found is None:
        return _share_gone(user, chosen)
    share, bike, day = found
    now = utcnow()
    last = await trajectories.last_passage_of_bike(conn, share["bike_id"], *shares.window(share, now - LONG_AGO, now))
    shown = {k: bike[k] for k in ("plate", "brand", "model", "colour", "stolen")}
    html = render(
        "shared.html",
        chosen,
        user=user,
        config={},
        bike=shown,
        last_seen=last,
        totals=trajectories.totals(day),
        expires_at=share["expires_at"],
        map_url=f"/shared/{token}/map?lang={chosen}",
    )
    response = html_page(html, chosen)
    response.headers["Cache-Control"] = "no-store"
    return response


@router.get("/shared/{token}/map", response_class=HTMLResponse)
async def shared_bike_map(
    request: Request,
    token: ShareToken,
    conn: Conn,
    registry: RegistryDep,
    settings: Settings,
    user: OptionalUser,
    lang: str | None = None,
) -> Response:
    """The shared bike's last 24 hours on the map (shown inside /shared/{token})."""
    chosen = page_language(request, lang)
    found = await _shared(conn, registry, token)
    if found is None:
        return _share_gone(user, chosen)
    _share, bike, day = found
    return await _trail_map(request, conn, settings, day, bike["plate"] or "", chosen)


async def _trail_map(
    request: Request, conn: Conn, settings: BackendSettings, found: trajectories.Trajectory, title: str, lang: str
) -> HTMLResponse:
    m = build_trajectory_map(
        trajectories.to_summary(found),
        await stations.roads_geojson(conn),
        title=title,
        lang=lang,
        tile_url=settings.tile_url,
        tile_attribution=settings.tile_attribution,
    )
    return _map_page(request, m.get_root().render())


@dataclass(frozen=True)
class _CertificateView:
    """What a certificate shows: its record, the rows (owner data masked) and where its QR code points."""

    cert: dict[str, Any]
    rows: list[tuple[str, str | None]]
    verify_url: str
    bike: dict[str, Any]


async def _certificate_view(
    conn: Conn, registry: RegistryDep, user: User, bike_id: int, lang: str, signer: SignerDep, base_url: str
) -> _CertificateView:
    bike = await access.viewer_of(user).check_bike(conn, registry, bike_id)
    cert = await certificates.current(conn, bike_id)
    t = MESSAGES[lang]
    rows = [
        (t["plate"], cert["plate"]),
        (
            f"{t['brand']} / {t['model']} / {t['colour']}",
            " · ".join(v for v in (cert["brand"], cert["model"], cert["colour"]) if v),
        ),
        (t["frame"], cert["frame_number"]),
        (t["motor"], cert["motor_number"]),
        (t["chip"], cert["tag_id"]),
        (t["owner_name"], mask_name(cert["owner_name"])),
        (t["owner_id"], registry.masked_id_number(cert["id_number_enc"])),
        (t["owner_mobile"], mask_mobile(cert["mobile"]) if cert["mobile"] else None),
        (t["registered_on"], cert["registered_at"].strftime("%Y-%m-%d")),
    ]
    return _CertificateView(cert, rows, certificates.verify_url(base_url, signer.token(cert["certificate_id"])), bike)


@router.get("/bikes/{bike_id}/certificate", response_class=HTMLResponse)
async def certificate_page(
    bike_id: BikeId,
    request: Request,
    conn: Conn,
    registry: RegistryDep,
    signer: SignerDep,
    base_url: PublicBaseUrl,
    user: OptionalUser,
    lang: str | None = None,
) -> Response:
    """Owner (own bike), clerk, admin: the printable certificate with masked owner data and its QR code."""
    chosen = page_language(request, lang)
    if refused := gate(request, user, ("owner", "clerk", "admin"), chosen):
        return refused
    assert user is not None
    view = await _certificate_view(conn, registry, user, bike_id, chosen, signer, base_url)
    html = render(
        "certificate.html",
        chosen,
        user=user,
        config={},
        qr_svg=certificates.qr_svg(view.verify_url),
        cert=view.cert,
        rows=view.rows,
        verify_url=view.verify_url,
        photo_url=photos.latest_url(view.bike),
    )
    return html_page(html, chosen)


@router.get("/bikes/{bike_id}/certificate.pdf")
async def certificate_pdf(
    bike_id: BikeId,
    request: Request,
    conn: Conn,
    registry: RegistryDep,
    signer: SignerDep,
    base_url: PublicBaseUrl,
    user: OptionalUser,
    lang: str | None = None,
) -> Response:
    """Owner (own bike), clerk, admin: the certificate as a one-page PDF."""
    chosen = page_language(request, lang)
    if refused := gate(request, user, ("owner", "clerk", "admin"), chosen):
        return refused
    assert user is not None
    view = await _certificate_view(conn, registry, user, bike_id, chosen, signer, base_url)
    t = MESSAGES[chosen]
    labels = {"title": t["cert_title"], "number": t["cert_number"], "issued": t["cert_issued"], "scan": t["cert_scan"]}
    number = view.cert["certificate_id"]
    photo = None
    if view.bike["photo_ids"]:
        photo = (await registry.photo(conn, bike_id, view.bike["photo_ids"][-1]))[1]
    pdf = await asyncio.to_thread(
        certificates.render_pdf,
        {"certificate_id": number, "issued_at": view.cert["issued_at"], "rows": view.rows},
        labels,
        view.verify_url,
        photo,
    )
    return Response(
        pdf,
        media_type="application/pdf",
        headers={"Content-Disposition": f'inline; filename="certificate-{number}.pdf"', "Cache-Control": "no-store"},
    )


@router.get("/verify", response_class=HTMLResponse)
async def verify_page(
    request: Request,
    conn: Conn,
    signer: SignerDep,
    user: OptionalUser,
    token: str = Query("", max_length=100),
    lang: str | None = None,
) -> Response:
    """Anyone: is this certificate genuine and current (what its QR code opens)."""
    chosen = page_language(request, lang)
    result = await certificates.verify(conn, signer, token) if token else {"genuine": False, "current": False}
    return html_page(render("verify.html", chosen, user=user, config={}, result=result), chosen)
