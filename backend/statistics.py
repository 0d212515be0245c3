"""Results a county reports (issue 16): thefts, recoveries, how soon stolen bikes are seen and found, where and when
thefts happen, the trend against the same period last year, and what is in service. Numbers only: no plate, name or
chip leaves this module.

Computed from small tables and indexed lookups, never a scan of sightings: the theft reports of the period
(theft_reports_reported) and, for each, its bike's stolen-chip alarms (alarms_stolen_chip_bike: the first sighting
after the report, an alarm before the recovery), and the home station the report keeps (found from its chip's
sightings of the 7 days before the theft when it was filed: bikeguard_home_station, migration 0028).
"""

from __future__ import annotations

import csv
import io
import math
import statistics as stats
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from psycopg.rows import dict_row

from backend.certificates import cjk_font

DEFAULT_DAYS = 30
MAX_DAYS = 3 * 366  # a period's reports are read one by one: bound the work a request may ask for
TOP_AREAS = 12  # stations listed by name (the plot shows them all)
LABELLED_AREAS = 8  # circles named on the plot (more would cover each other)
HOME_DAYS = 7  # a theft's home station: its chip's sightings of these days before it (migration 0028)
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

# One row per theft report of the period, no personal data: its times; the first sighting of its bike after the report
# (before its recovery and the period's end), which is the first passage of the stolen-chip alarm the ingest raised on
# it (a hot-listed chip's first passage raises one; later passages update it), found by one index probe instead of a
# search of sightings from the report onwards, day partition by day partition, for a bike never seen again; its home
# station, kept with the report when it was filed (migration 0028: where its chip was seen most often in the 7 days
# before the theft); and whether a stolen-chip alarm on the bike came before its recovery.
REPORTS_SQL = """
SELECT r.stolen_at, r.reported_at,
       CASE WHEN r.recovered_at < %(until)s THEN r.recovered_at END AS recovered_at,
       f.first_seen_at,
       r.home_station_id,
       r.recovered_at < %(until)s AND EXISTS (
           SELECT 1 FROM alarms a
           WHERE a.kind = 'stolen_chip_seen' AND a.bike_id = r.bike_id
             AND a.first_seen_at >= r.stolen_at AND a.first_seen_at <= r.recovered_at
       ) AS alarm_before_recovery
FROM theft_reports r
LEFT JOIN LATERAL (
    SELECT a.first_seen_at FROM alarms a
    WHERE a.kind = 'stolen_chip_seen' AND a.bike_id = r.bike_id
      AND a.first_seen_at >= r.reported_at AND a.first_seen_at < least(r.recovered_at, %(until)s)
    ORDER BY a.first_seen_at LIMIT 1
) f ON true
WHERE r.reported_at >= %(since)s AND r.reported_at < %(until)s
"""

THEFTS_SQL = """
SELECT count(*), count(*) FILTER (WHERE recovered_at < %(until)s)
FROM theft_reports WHERE reported_at >= %(since)s AND reported_at < %(until)s
"""

IN_SERVICE_SQL = """
SELECT (SELECT count(*) FROM stations WHERE lifecycle = 'active'),
       (SELECT count(*) FROM chips c JOIN bikes b USING (bike_id) WHERE c.retired_at IS NULL AND b.status = 'active')
"""


class StatisticsError(Exception):
    """Base of statistics errors."""


class PeriodInvalid(StatisticsError):
    """A period that ends before it starts, or is longer than MAX_DAYS."""

    def __init__(self, message: str, first: date | None = None, last: date | None = None) -> None:
        super().__init__(message)
        self.first = first
        self.last = last


@dataclass(frozen=True)
class Period:
    """Whole days, first to last inclusive, in the county's time zone."""

    first: date
    last: date
    zone: ZoneInfo

    @property
    def since(self) -> datetime:
        """The period's first moment."""
        return datetime.combine(self.first, time(), self.zone)

    @property
    def until(self) -> datetime:
        """The moment after the period's last day."""
        return datetime.combine(self.last + timedelta(days=1), time(), self.zone)

    @property
    def days(self) -> int:
        """How many days the period has."""
        return (self.last - self.first).days + 1

    def a_year_before(self) -> Period:
        """The same days one year earlier (29 February becomes the 28th)."""
        return Period(_year_before(self.first), _year_before(self.last), self.zone)


def _year_before(day: date) -> date:
    try:
        return day.replace(year=day.year - 1)
    except ValueError:  # 29 February
        return day.replace(year=day.year - 1, day=28)


def period(first: date | None, last: date | None, zone: ZoneInfo, today: date) -> Period:
    """The period asked for: by default the last DEFAULT_DAYS days up to today; raises PeriodInvalid."""
    last = last or (today if first is None else min(today, first + timedelta(days=DEFAULT_DAYS - 1)))
    first = first or last - timedelta(days=DEFAULT_DAYS - 1)
    if first > last:
        raise PeriodInvalid(f"the period ends ({last}) before it starts ({first})", first, last)
    if (last - first).days + 1 > MAX_DAYS:
        raise PeriodInvalid(f"the period is longer than {MAX_DAYS} days ({first} to {last})", first, last)
    return Period(first, last, zone)


def _median_hours(deltas: list[timedelta]) -> float | None:
    return round(stats.median(d.total_seconds() for d in deltas) / 3600, 2) if deltas else None


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


async def _one(conn: psycopg.AsyncConnection[Any], sql: str, params: dict[str, Any]) -> tuple[Any, ...]:
    cur = await conn.execute(sql, params)
    row = await cur.fetchone()
    assert row is not None  # aggregates always answer one row
    return tuple(row)


async def compute(conn: psycopg.AsyncConnection[Any], p: Period) -> dict[str, Any]:
    """The results for a period, as the page, the API, the CSV and the PDF show them."""
    params = {"since": p.since, "until": p.until}
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(REPORTS_SQL, params)
        reports = await cur.fetchall()
    recovered = [r for r in reports if r["recovered_at"] is not None]
    seen = [r for r in reports if r["first_seen_at"] is not None]
    by_hour = [0] * 24
    by_weekday = [0] * 7
    homes: dict[str, int] = {}
    for r in reports:
        local = r["stolen_at"].astimezone(p.zone)
        by_hour[local.hour] += 1
        by_weekday[local.weekday()] += 1
        if r["home_station_id"] is not None:
            homes[r["home_station_id"]] = homes.get(r["home_station_id"], 0) + 1
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute("SELECT station_id, name, lat, lon FROM stations WHERE station_id = ANY(%s)", (list(homes),))
        places = {s["station_id"]: s for s in await cur.fetchall()}
    by_area = sorted(
        (
            {**places.get(sid, {"station_id": sid, "name": sid, "lat": None, "lon": None}), "thefts": n}
            for sid, n in homes.items()
        ),
        key=lambda a: (-a["thefts"], a["station_id"]),
    )
    before = p.a_year_before()
    last_thefts, last_recovered = await _one(conn, THEFTS_SQL, {"since": before.since, "until": before.until})
    stations_in_service, chips_in_service = await _one(conn, IN_SERVICE_SQL, {})
    thefts = len(reports)
    return {
        "period": {"from": p.first, "to": p.last, "days": p.days, "timezone": p.zone.key},
        "thefts_reported": thefts,
        "recovered": len(recovered),
        "recovered_share": _share(len(recovered), thefts),
        "recoveries_after_alarm": sum(1 for r in recovered if r["alarm_before_recovery"]),
        "seen_after_report": len(seen),
        "median_hours_to_first_sighting": _median_hours([r["first_seen_at"] - r["reported_at"] for r in seen]),
        "median_hours_to_recovery": _median_hours([r["recovered_at"] - r["reported_at"] for r in recovered]),
        "by_hour": by_hour,
        "by_weekday": by_weekday,
        "by_area": by_area,
        "without_home_station": thefts - sum(homes.values()),
        "last_year": {
            "from": before.first,
            "to": before.last,
            "thefts_reported": int(last_thefts),
            "recovered": int(last_recovered),
        },
        "thefts_change": round((thefts - last_thefts) / last_thefts, 4) if last_thefts else None,
        "stations_in_service": int(stations_in_service),
        "chips_in_service": int(chips_in_service),
    }


async def station_positions(conn: psycopg.AsyncConnection[Any]) -> list[tuple[float, float]]:
    """Where the stations not decommissioned stand (lat, lon), the background of the thefts-by-area plot."""
    cur = await conn.execute("SELECT lat, lon FROM stations WHERE lifecycle <> 'decommissioned'")
    return [(float(lat), float(lon)) for lat, lon in await cur.fetchall()]


def area_plot(
    result: dict[str, Any], positions: list[tuple[float, float]], width: int = 640, height: int = 400
) -> dict[str, Any]:
    """The thefts-by-area plot in SVG coordinates: the stations as dots, each home station a circle whose area grows
    with its thefts (and its colour deepens), drawn in an equirectangular projection fitted to the stations."""
    located = [a for a in result["by_area"] if a["lat"] is not None]
    points = positions + [(a["lat"], a["lon"]) for a in located]
    if not points:
        return {"width": width, "height": height, "dots": [], "circles": []}
    margin = 28
    lat_lo, lat_hi = min(p[0] for p in points), max(p[0] for p in points)
    lon_lo, lon_hi = min(p[1] for p in points), max(p[1] for p in points)
    squeeze = math.cos(math.radians((lat_lo + lat_hi) / 2))  # a degree of longitude is shorter away from the equator
    span_x = max((lon_hi - lon_lo) * squeeze, 1e-6)
    span_y = max(lat_hi - lat_lo, 1e-6)
    scale = min((width - 2 * margin) / span_x, (height - 2 * margin) / span_y)
    off_x = (width - span_x * scale) / 2
    off_y = (height - span_y * scale) / 2

    def xy(lat: float, lon: float) -> tuple[float, float]:
        return round(off_x + (lon - lon_lo) * squeeze * scale, 1), round(height - off_y - (lat - lat_lo) * scale, 1)

    most = max((a["thefts"] for a in located), default=1)
    circles = []
    named = {a["station_id"] for a in located[:LABELLED_AREAS]}  # by_area is busiest first
    for a in sorted(located, key=lambda a: a["thefts"]):  # the largest drawn last, on top
        x, y = xy(a["lat"], a["lon"])
        weight = a["thefts"] / most
        circles.append(
            {
                "x": x,
                "y": y,
                "r": round(4 + 20 * math.sqrt(weight), 1),
                "opacity": round(0.35 + 0.5 * weight, 2),
                "thefts": a["thefts"],
                "name": a["name"],
                "station_id": a["station_id"],
                "labelled": a["station_id"] in named,
            }
        )
    dots = [xy(lat, lon) for lat, lon in positions]
    return {"width": width, "height": height, "dots": dots, "circles": circles}


def _value(value: Any) -> str:
    if value is None:
        return ""
    return value.isoformat() if isinstance(value, date) else str(value)


SUMMARY_KEYS = (
    "thefts_reported",
    "recovered",
    "recovered_share",
    "recoveries_after_alarm",
    "seen_after_report",
    "median_hours_to_first_sighting",
    "median_hours_to_recovery",
    "without_home_station",
    "thefts_change",
    "stations_in_service",
    "chips_in_service",
)


def to_csv(result: dict[str, Any], labels: dict[str, str]) -> str:
    """The results as CSV (section, item, value, label): machine-readable items, labels in the page's language."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(["section", "item", "value", "label"])
    for key in ("from", "to", "days", "timezone"):
        writer.writerow(["period", key, _value(result["period"][key]), labels[f"stats_period_{key}"]])
    for key in SUMMARY_KEYS:
        writer.writerow(["summary", key, _value(result[key]), labels[f"stats_{key}"]])
    for key in ("from", "to", "thefts_reported", "recovered"):
        writer.writerow(["last_year", key, _value(result["last_year"][key]), labels[f"stats_last_year_{key}"]])
    for hour, n in enumerate(result["by_hour"]):
        writer.writerow(["hour", hour, n, f"{hour:02d}:00"])
    for day, n in zip(WEEKDAYS, result["by_weekday"], strict=True):
        writer.writerow(["weekday", day, n, labels[f"stats_day_{day}"]])
    for a in result["by_area"]:
        writer.writerow(["area", a["station_id"], a["thefts"], a["name"]])
    return out.getvalue()


def _number(value: Any, lang: str) -> str:
    """A figure as the page and the PDF print it."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.1f}"
    return f"{value:,}" if lang == "en" else str(value)


def figures(result: dict[str, Any], labels: dict[str, str], lang: str) -> list[tuple[str, str, str]]:
    """The key figures as (item, label, text), in the order the page and the PDF show them."""
    share = result["recovered_share"]
    change = result["thefts_change"]
    hours = labels["stats_hours"]
    first = result["median_hours_to_first_sighting"]
    found = result["median_hours_to_recovery"]
    rows = [
        ("thefts_reported", _number(result["thefts_reported"], lang)),
        ("recovered", _number(result["recovered"], lang)),
        ("recovered_share", "–" if share is None else f"{share * 100:.0f}%"),
        ("recoveries_after_alarm", _number(result["recoveries_after_alarm"], lang)),
        ("median_hours_to_first_sighting", "–" if first is None else hours.format(n=f"{first:.1f}")),
        ("median_hours_to_recovery", "–" if found is None else hours.format(n=f"{found:.1f}")),
        ("thefts_change", "–" if change is None else f"{change * 100:+.0f}%"),
        ("stations_in_service", _number(result["stations_in_service"], lang)),
        ("chips_in_service", _number(result["chips_in_service"], lang)),
    ]
    return [(key, labels[f"stats_{key}"], text) for key, text in rows]


def render_pdf(result: dict[str, Any], labels: dict[str, str], lang: str, generated_at: datetime) -> bytes:
    """A one-page A4 report: the period, the key figures, thefts by hour and weekday as bars, the top areas.

    Raises GlyphMissing when the font cannot show a character of the text.
    """
    from fpdf import FPDF

    pdf = FPDF(orientation="P", unit="mm", format="A4")
    pdf.set_auto_page_break(False)
    pdf.add_page()
    family = "report"
    text = cjk_font(pdf, family)

    p = result["period"]
    pdf.set_font(family, size=20)
    pdf.set_xy(15, 14)
    pdf.cell(180, 10, text(labels["stats_title"]))
    pdf.set_font(family, size=10)
    pdf.set_text_color(80, 80, 80)
    pdf.set_xy(15, 25)
    period_text = labels["stats_period_line"].format(first=p["from"], last=p["to"], days=p["days"], zone=p["timezone"])
    pdf.cell(180, 6, text(period_text))
    pdf.set_xy(15, 31)
    last = result["last_year"]
    pdf.cell(
        180,
        6,
        text(labels["stats_last_year_line"].format(first=last["from"], last=last["to"], n=last["thefts_reported"])),
    )
    y: float = 42
    for i, (_, label, value) in enumerate(figures(result, labels, lang)):
        x = 15 + (i % 2) * 92
        row_y = y + (i // 2) * 14
        pdf.set_draw_color(210, 214, 220)
        pdf.rect(x, row_y, 88, 12)
        pdf.set_xy(x + 3, row_y + 1)
        pdf.set_font(family, size=8)
        pdf.set_text_color(90, 90, 90)
        pdf.cell(82, 4, text(label))
        pdf.set_xy(x + 3, row_y + 5.5)
        pdf.set_font(family, size=13)
        pdf.set_text_color(0, 0, 0)
        pdf.cell(82, 6, text(value))
    y = 42 + 5 * 14 + 6
    hours = [f"{h}" if h % 3 == 0 else "" for h in range(24)]
    y = _bars(pdf, family, text, labels["stats_by_hour"], result["by_hour"], hours, y)
    days = [labels[f"stats_day_{d}"] for d in WEEKDAYS]
    y = _bars(pdf, family, text, labels["stats_by_weekday"], result["by_weekday"], days, y + 4)
    pdf.set_xy(15, y + 4)
    pdf.set_font(family, size=11)
    pdf.set_text_color(0, 0, 0)
    pdf.cell(180, 6, text(labels["stats_by_area"]))
    y += 11
    pdf.set_font(family, size=9)
    for a in result["by_area"][:TOP_AREAS]:
        pdf.set_xy(15, y)
        pdf.cell(120, 5, text(f"{a['name']}  ({a['station_id']})"))
        pdf.cell(30, 5, text(str(a["thefts"])), align="R")
        y += 5
    if not result["by_area"]:
        pdf.set_xy(15, y)
        pdf.cell(180, 5, text(labels["stats_no_areas"]))
    pdf.set_xy(15, 282)
    pdf.set_font(family, size=7)
    pdf.set_text_color(110, 110, 110)
    pdf.cell(180, 4, text(labels["stats_pdf_footer"].format(at=generated_at.strftime("%Y-%m-%d %H:%M %Z"))))
    return bytes(pdf.output())


def _bars(pdf: Any, family: str, text: Any, title: str, counts: list[int], names: list[str], y: float) -> float:
    """A bar chart 180 mm wide from y; returns where it ends."""
    pdf.set_xy(15, y)
    pdf.set_font(family, size=11)
    pdf.set_text_color(0, 0, 0)
    pdf.cell(180, 6, text(title))
    top, height = y + 8, 28
    most = max(counts) or 1
    step = 180 / len(counts)
    pdf.set_fill_color(29, 78, 216)
    pdf.set_font(family, size=7)
    pdf.set_text_color(80, 80, 80)
    for i, n in enumerate(counts):
        h = height * n / most
        x = 15 + i * step
        if n:
            pdf.rect(x + step * 0.15, top + height - h, step * 0.7, h, style="F")
            pdf.set_xy(x, top + height - h - 4)
            pdf.cell(step, 4, text(str(n)), align="C")
        pdf.set_xy(x, top + height + 0.5)
        pdf.cell(step, 4, text(names[i]), align="C")
    return top + height + 5
