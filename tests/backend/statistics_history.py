"""A generated history for the results tests: stations, bikes, theft reports this year and last, recoveries, alarms
and sightings, written straight into the test's database, with the figures counted directly from what was generated."""

from __future__ import annotations

import random
import statistics as stats
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import psycopg

from tests import factories

ZONE = ZoneInfo("Asia/Shanghai")
PERIOD = (date(2026, 3, 1), date(2026, 3, 31))
LAST_YEAR = (date(2025, 3, 1), date(2025, 3, 31))
HOME_DAYS = 7
STATIONS = {  # station id: (name, lat, lon, in service)
    "st-a": ("West Lake Gate", 30.250, 120.150, True),
    "st-b": ("Wulin Square", 30.275, 120.165, True),
    "st-c": ("Qingchun Road", 30.262, 120.180, True),
    "st-d": ("Jianguo Bridge", 30.240, 120.190, True),
    "st-e": ("North Station", 30.300, 120.170, False),
}


@dataclass
class Report:
    """One generated theft report and what happened to its bike."""

    bike_id: int
    tag_id: int
    stolen_at: datetime
    reported_at: datetime
    recovered_at: datetime | None
    sightings: list[tuple[datetime, str]] = field(default_factory=list)
    alarms: list[tuple[str, datetime]] = field(default_factory=list)  # (kind, first seen)


@dataclass
class History:
    """What was written, and the plates (which must never appear in the results)."""

    reports: list[Report]
    plates: list[str]
    owner_names: list[str]


def _at(day: date, rng: random.Random) -> datetime:
    return datetime.combine(day, time(), ZONE) + timedelta(seconds=rng.uniform(0, 86400))


def _stolen_at(i: int, rng: random.Random) -> datetime:
    """Half of the thefts in the period (some at its edges), a quarter in last year's, the rest anywhere around."""
    if i % 4 in (0, 1):
        first, last = PERIOD
    elif i % 4 == 2:
        first, last = LAST_YEAR
    else:
        first, last = date(2025, 2, 1), date(2026, 4, 30)
    return _at(first + timedelta(days=rng.randrange((last - first).days + 1)), rng)


def generate(database_url: str, bikes: int = 64, seed: int = 16) -> History:
    """Write the history into the database; every report's bike its own, with a chip."""
    rng = random.Random(seed)
    reports: list[Report] = []
    plates: list[str] = []
    names: list[str] = []
    with psycopg.connect(database_url) as conn:
        for sid, (name, lat, lon, active) in STATIONS.items():
            factories.station(conn, sid, lat, lon)
            conn.execute(
                "UPDATE stations SET name = %s, lifecycle = %s WHERE station_id = %s",
                (name, "active" if active else "planned", sid),
            )
        for i in range(bikes):
            tag_id = 0x5A000000 + i
            plate = factories.plate()
            owner_name = f"Owner Zhou{i:03d}"
            bike_id = factories.bike(conn, tag_id, plate, factories.owner(conn, owner_name))
            plates.append(plate)
            names.append(owner_name)
            stolen_at = _stolen_at(i, rng)
            reported_at = stolen_at + timedelta(hours=rng.uniform(0.2, 8))
            recovered_at = reported_at + timedelta(hours=rng.uniform(2, 500)) if rng.random() < 0.6 else None
            report = Report(bike_id, tag_id, stolen_at, reported_at, recovered_at)
            _sightings(report, rng)
            _alarms(report, rng)
            reports.append(report)
        # A retired chip is not in service.
        conn.execute("INSERT INTO chips (tag_id, bike_id, retired_at) VALUES (%s, NULL, now())", (0x5AFFFFFF,))
        with conn.cursor().copy(
            "COPY sightings (first_seen_at, last_seen_at, station_id, tag_id, beacons, peak_rssi_dbm, antenna, flags,"
            " batch_seq) FROM STDIN"
        ) as copy:
            for r in reports:
                for at, sid in r.sightings:
                    copy.write_row((at, at + timedelta(seconds=8), sid, r.tag_id, 3, -60, 0, 0, 1))
        # Filed after the sightings before each theft are stored, as in life: a report keeps its home station then.
        for r in reports:
            conn.execute(
                "INSERT INTO theft_reports (bike_id, stolen_at, reported_at, recovered_at) VALUES (%s, %s, %s, %s)",
                (r.bike_id, r.stolen_at, r.reported_at, r.recovered_at),
            )
        for r in reports:
            for kind, at in r.alarms:
                conn.execute(
                    "INSERT INTO alarms (kind, severity, state, subject, tag_id, bike_id, station_id, first_seen_at,"
                    " last_seen_at) VALUES (%s, 'critical', 'cleared', %s, %s, %s, 'st-a', %s, %s)",
                    (kind, f"tag:{r.tag_id:08X}", r.tag_id, r.bike_id, at, at),
                )
    return History(reports, plates, names)


def _sightings(r: Report, rng: random.Random) -> None:
    """Passages at home before the theft (none for some bikes), some elsewhere, some long before (outside the home
    window), some between the theft and its report, and some after the report (and after the recovery)."""
    home = rng.choice(sorted(STATIONS))
    if rng.random() < 0.8:
        for _ in range(rng.randint(3, 7)):
            r.sightings.append((r.stolen_at - timedelta(hours=rng.uniform(1, HOME_DAYS * 24 - 1)), home))
    for _ in range(rng.randint(0, 2)):
        r.sightings.append((r.stolen_at - timedelta(hours=rng.uniform(1, HOME_DAYS * 24 - 1)), rng.choice("abcde")))
    for _ in range(rng.randint(0, 3)):  # long before: not counted for the home station
        r.sightings.append((r.stolen_at - timedelta(days=rng.uniform(HOME_DAYS + 1, 40)), rng.choice("abcde")))
    if rng.random() < 0.3:  # between the theft and its report
        r.sightings.append((r.stolen_at + (r.reported_at - r.stolen_at) / 2, rng.choice("abcde")))
    for _ in range(rng.randint(0, 4)):
        r.sightings.append((r.reported_at + timedelta(hours=rng.uniform(0.1, 300)), rng.choice("abcde")))
    r.sightings = [(at, sid if sid.startswith("st-") else f"st-{sid}") for at, sid in r.sightings]


def _alarms(r: Report, rng: random.Random) -> None:
    """As the ingest raises them: a stolen-chip alarm at the bike's first passage after its report while it is stolen
    (none for a bike not seen again before its recovery); and noise that must not count: a stolen-chip alarm from
    before the theft (an earlier case), low batteries."""
    end = r.recovered_at or datetime.max.replace(tzinfo=ZONE)
    after = sorted(at for at, _ in r.sightings if r.reported_at <= at < end)
    if after:
        r.alarms.append(("stolen_chip_seen", after[0]))
    if rng.random() < 0.2:
        r.alarms.append(("stolen_chip_seen", r.stolen_at - timedelta(days=rng.uniform(30, 60))))
    if rng.random() < 0.3:
        r.alarms.append(("low_battery", r.stolen_at + timedelta(minutes=30)))


def _seen(r: Report) -> list[datetime]:
    return [at for at, _ in r.sightings]


def _bounds(first: date, last: date) -> tuple[datetime, datetime]:
    return datetime.combine(first, time(), ZONE), datetime.combine(last + timedelta(days=1), time(), ZONE)


def expected(history: History, first: date, last: date) -> dict[str, object]:
    """The figures counted directly from the generated history, one report at a time."""
    since, until = _bounds(first, last)
    ly_since, ly_until = _bounds(first.replace(year=first.year - 1), last.replace(year=last.year - 1))
    ours = [r for r in history.reports if since <= r.reported_at < until]
    recovered = [r for r in ours if r.recovered_at is not None and r.recovered_at < until]
    to_first: list[float] = []
    by_hour = [0] * 24
    by_weekday = [0] * 7
    homes: dict[str, int] = {}
    for r in ours:
        end = min(r.recovered_at or until, until)
        after = sorted(at for at, _ in r.sightings if r.reported_at <= at < end)
        if after:
            to_first.append((after[0] - r.reported_at).total_seconds() / 3600)
        local = r.stolen_at.astimezone(ZONE)
        by_hour[local.hour] += 1
        by_weekday[local.weekday()] += 1
        counts: dict[str, int] = {}
        for at, sid in r.sightings:
            if r.stolen_at - timedelta(days=HOME_DAYS) <= at < r.stolen_at:
                counts[sid] = counts.get(sid, 0) + 1
        if counts:
            home = min(counts, key=lambda s: (-counts[s], s))
            homes[home] = homes.get(home, 0) + 1
    last_year = [r for r in history.reports if ly_since <= r.reported_at < ly_until]
    return {
        "thefts_reported": len(ours),
        "recovered": len(recovered),
        "recoveries_after_alarm": sum(
            1 for r in recovered if any(r.reported_at <= at < r.recovered_at for at in _seen(r))
        ),
        "seen_after_report": len(to_first),
        "median_hours_to_first_sighting": round(stats.median(to_first), 2) if to_first else None,
        "median_hours_to_recovery": round(
            stats.median((r.recovered_at - r.reported_at).total_seconds() / 3600 for r in recovered),
            2,  # type: ignore[operator]
        )
        if recovered
        else None,
        "by_hour": by_hour,
        "by_weekday": by_weekday,
        "homes": homes,
        "last_year_thefts": len(last_year),
        "last_year_recovered": sum(1 for r in last_year if r.recovered_at is not None and r.recovered_at < ly_until),
    }
