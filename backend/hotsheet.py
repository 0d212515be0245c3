"""The daily hot sheet: the bikes reported stolen in the 24 hours before a moment, for the police's morning briefing.

Each bike with what police circulate (plate, brand, model, colour, a photo), where it was last seen since the theft
and its likeliest next stations (backend.prediction); never its owner. A report's window is its reported_at: a bike
stolen last week but reported this morning is news to the officers. A bike already recovered by the sheet's moment is
not one to look for: it leaves the list and is named in a short "already recovered" line instead, so an officer who
heard of the theft yesterday is not left wondering. The sheet at a past moment is the sheet as it was then.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from psycopg.rows import dict_row

from backend import audit, prediction
from backend.access import Refused, Viewer
from backend.certificates import cjk_font
from protocol.messages import format_tag

WINDOW = timedelta(hours=24)
NEXT_STATIONS = 3

# Theft reports filed in (at - window, at], the bike still registered, with what police circulate about it.
_REPORTS = """
SELECT t.report_id, t.bike_id, t.stolen_at, t.reported_at, t.recovered_at, b.plate, b.brand, b.model, b.colour,
       c.tag_id, (SELECT min(p.photo_id) FROM bike_photos p WHERE p.bike_id = t.bike_id) AS photo_id
FROM theft_reports t JOIN bikes b USING (bike_id) LEFT JOIN chips c ON c.bike_id = t.bike_id
WHERE t.reported_at > %(since)s AND t.reported_at <= %(at)s AND b.status = 'active'
ORDER BY t.reported_at DESC, t.report_id DESC
"""

# Each chip's latest passage in [since, at] and the stations of the few before it (where it came from).
_LAST_SEEN = """
SELECT r.i, x.station_id, x.station_name, x.seen_at, x.left_at, x.before
FROM unnest(%s::int8[], %s::timestamptz[], %s::timestamptz[]) WITH ORDINALITY AS r(tag_id, since, until, i)
CROSS JOIN LATERAL (
    SELECT (array_agg(s.station_id ORDER BY s.first_seen_at DESC))[1] AS station_id,
           (array_agg(st.name ORDER BY s.first_seen_at DESC))[1] AS station_name,
           (array_agg(s.first_seen_at ORDER BY s.first_seen_at DESC))[1] AS seen_at,
           (array_agg(s.last_seen_at ORDER BY s.first_seen_at DESC))[1] AS left_at,
           array_agg(s.station_id ORDER BY s.first_seen_at DESC) AS before
    FROM (SELECT * FROM sightings y WHERE y.tag_id = r.tag_id AND y.last_seen_at >= r.since
          AND y.first_seen_at >= r.since - interval '1 hour' AND y.first_seen_at <= r.until
          ORDER BY y.first_seen_at DESC LIMIT 5) s
    JOIN stations st USING (station_id)
    HAVING count(*) > 0) x
"""


@dataclass(slots=True)
class HotSheetBike:
    """One bike on the sheet: what police circulate, where it was last seen and where it may go next."""

    report_id: int
    bike_id: int
    plate: str
    brand: str | None
    model: str | None
    colour: str | None
    tag_id: str | None
    stolen_at: datetime
    reported_at: datetime
    photo_id: int | None
    last_station_id: str | None = None
    last_station_name: str | None = None
    last_seen_at: datetime | None = None
    next_stations: list[prediction.Interception] = field(default_factory=list)


@dataclass(slots=True)
class HotSheet:
    """The sheet for the 24 hours up to `at`: bikes still stolen then, and those already recovered by then."""

    since: datetime
    at: datetime
    bikes: list[HotSheetBike]
    recovered: list[dict[str, Any]]


async def build(
    conn: psycopg.AsyncConnection[Any], reads: psycopg.AsyncConnection[Any], viewer: Viewer, at: datetime
) -> HotSheet:
    """The hot sheet for the 24 hours up to `at`, for police and admins (Refused to anyone else); the reports are
    read and the reading audited on conn, passages and predictions read on reads (backend.db.replica)."""
    if viewer.user.role not in ("police", "admin"):
        raise Refused(f"a {viewer.user.role} may not see the hot sheet")
    since = at - WINDOW
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(_REPORTS, {"since": since, "at": at})
        rows = await cur.fetchall()
    bikes: list[tuple[HotSheetBike, int | None]] = []
    recovered = []
    for row in rows:
        if row["recovered_at"] is not None and row["recovered_at"] <= at:
            recovered.append({k: row[k] for k in ("bike_id", "plate", "reported_at", "recovered_at")})
            continue
        bikes.append(
            (
                HotSheetBike(
                    row["report_id"],
                    row["bike_id"],
                    row["plate"],
                    row["brand"],
                    row["model"],
                    row["colour"],
                    format_tag(row["tag_id"]) if row["tag_id"] is not None else None,
                    row["stolen_at"],
                    row["reported_at"],
                    row["photo_id"],
                ),
                row["tag_id"],
            )
        )
    await _where_seen(reads, viewer, bikes, at)
    await audit.record(conn, viewer.user, "bikes.hotsheet", None, None, at=at.isoformat(), bikes=len(bikes))
    return HotSheet(since, at, [b for b, _ in bikes], recovered)


async def _where_seen(
    reads: psycopg.AsyncConnection[Any], viewer: Viewer, bikes: list[tuple[HotSheetBike, int | None]], at: datetime
) -> None:
    """Fill in each chipped bike's last sighting (since the theft as police see it, up to `at`) and next stations."""
    chipped = [(b, tag) for b, tag in bikes if tag is not None]
    if not chipped:
        return
    cur = await reads.execute(
        _LAST_SEEN,
        (
            [tag for _, tag in chipped],
            [viewer.stolen_since(b.stolen_at, b.reported_at) for b, _ in chipped],
            [at] * len(chipped),
        ),
    )
    departures: list[tuple[HotSheetBike, prediction.Departure]] = []
    for i, station_id, station_name, seen_at, left_at, before in await cur.fetchall():
        bike = chipped[int(i) - 1][0]
        bike.last_station_id, bike.last_station_name, bike.last_seen_at = station_id, station_name, seen_at
        came_from = next((s for s in before if s != station_id), None)
        departures.append((bike, prediction.Departure(station_id, left_at, came_from)))
    found = await prediction.next_stations_of(reads, [d for _, d in departures], limit=NEXT_STATIONS)
    for (bike, _), stations in zip(departures, found, strict=True):
        bike.next_stations = stations


def local(value: datetime | None, time_zone: str) -> str:
    """A time as the sheet prints it, in the county's time zone: 2026-11-29 08:15 (or an em dash for none)."""
    return value.astimezone(ZoneInfo(time_zone)).strftime("%Y-%m-%d %H:%M") if value is not None else "—"


def render_pdf(sheet: HotSheet, labels: dict[str, str], photos: dict[int, bytes], time_zone: str) -> bytes:
    """The sheet as an A4 portrait PDF, one bike per block (four to a page), each with its photo (`photos`: bike id
    → JPEG or PNG bytes) and no owner. Raises GlyphMissing when the font cannot show a character of the text."""
    from fpdf import FPDF

    pdf = FPDF(orientation="P", unit="mm", format="A4")
    pdf.set_auto_page_break(False)
    family = "sheet"
    text = cjk_font(pdf, family)

    def header() -> float:
        pdf.add_page()
        pdf.set_font(family, size=16)
        pdf.set_text_color(0, 0, 0)
        pdf.set_xy(12, 10)
        pdf.cell(186, 9, text(labels["title"]))
        pdf.set_font(family, size=9)
        pdf.set_text_color(90, 90, 90)
        pdf.set_xy(12, 19)
        window = f"{local(sheet.since, time_zone)} – {local(sheet.at, time_zone)} ({time_zone})"
        pdf.cell(186, 5, text(f"{labels['window']}: {window}   {labels['count']}: {len(sheet.bikes)}"))
        pdf.set_draw_color(30, 64, 175)
        pdf.set_line_width(0.6)
        pdf.line(12, 26, 198, 26)
        return 30.0

    block_h, y = 60.0, header()
    if not sheet.bikes:
        pdf.set_xy(12, y)
        pdf.set_font(family, size=12)
        pdf.cell(186, 8, text(labels["none"]))
        y += 12
    for bike in sheet.bikes:
        if y + block_h > 282:
            y = header()
        _block(pdf, family, text, bike, labels, photos.get(bike.bike_id), time_zone, y, block_h)
        y += block_h + 4
    if sheet.recovered:
        if y + 14 > 287:
            y = header()
        pdf.set_xy(12, y)
        pdf.set_font(family, size=9)
        pdf.set_text_color(60, 60, 60)
        done = ", ".join(f"{r['plate']} ({local(r['recovered_at'], time_zone)})" for r in sheet.recovered)
        pdf.multi_cell(186, 4.5, text(f"{labels['recovered']}: {done}"))
    return bytes(pdf.output())


def _block(
    pdf: Any,
    family: str,
    text: Any,
    bike: HotSheetBike,
    labels: dict[str, str],
    photo: bytes | None,
    time_zone: str,
    y: float,
    height: float,
) -> None:
    """One bike's block: its photo on the left, its facts, last sighting and next stations on the right."""
    pdf.set_draw_color(180, 180, 180)
    pdf.set_line_width(0.3)
    pdf.rect(12, y, 186, height)
    if photo is not None:
        pdf.image(io.BytesIO(photo), x=14, y=y + 2, w=56, h=height - 4, keep_aspect_ratio=True)
    else:
        pdf.set_xy(14, y + height / 2 - 3)
        pdf.set_font(family, size=9)
        pdf.set_text_color(140, 140, 140)
        pdf.cell(56, 6, text(labels["no_photo"]), align="C")
    x = 74
    pdf.set_xy(x, y + 3)
    pdf.set_text_color(153, 27, 27)
    pdf.set_font(family, size=18)
    pdf.cell(120, 9, text(bike.plate))
    pdf.set_text_color(0, 0, 0)
    pdf.set_font(family, size=11)
    pdf.set_xy(x, y + 13)
    pdf.cell(120, 6, text(" · ".join(v for v in (bike.brand, bike.model, bike.colour) if v) or "—"))
    rows = [
        (labels["stolen_at"], local(bike.stolen_at, time_zone)),
        (labels["reported_at"], local(bike.reported_at, time_zone)),
        (labels["chip"], bike.tag_id or "—"),
        (
            labels["last_seen"],
            f"{bike.last_station_name} ({bike.last_station_id}), {local(bike.last_seen_at, time_zone)}"
            if bike.last_station_id
            else labels["not_seen"],
        ),
        (labels["next"], _next_line(bike, labels, time_zone)),
    ]
    line_y = y + 21
    for key, value in rows:
        pdf.set_xy(x, line_y)
        pdf.set_font(family, size=8)
        pdf.set_text_color(90, 90, 90)
        pdf.cell(28, 5.5, text(key))
        pdf.set_font(family, size=9.5)
        pdf.set_text_color(0, 0, 0)
        pdf.multi_cell(94, 5.5, text(value))
        line_y = max(line_y + 6.5, pdf.get_y() + 1)


def _next_line(bike: HotSheetBike, labels: dict[str, str], time_zone: str) -> str:
    if not bike.next_stations:
        return labels["next_none"]
    return "\n".join(
        f"{s.name} ({s.station_id}) {round(s.probability * 100)} % · {labels['eta']} {local(s.eta_at, time_zone)[11:]}"
        for s in bike.next_stations
    )
