"""Results (/statistics, its CSV, PDF and JSON) through the real backend on a generated history: the figures match
direct counts, last year's period gives the trend, only police and admins see them, and no personal data leaves."""

from __future__ import annotations

import csv
import io
from urllib.parse import parse_qs, urlsplit

import psycopg
import pytest
from pypdf import PdfReader

from backend.web.translations import MESSAGES
from tests import factories
from tests.backend import statistics_history as history
from tests.backend.conftest import Caller, Staff, sign_in

PERIOD = {"from": "2026-03-01", "to": "2026-03-31"}


@pytest.fixture
def generated(database_url: str) -> history.History:
    """The generated history."""
    return history.generate(database_url)


def _owner(staff: Staff) -> Caller:
    return staff.owner_of(staff.register())


def _pdf_text(pdf: bytes) -> str:
    reader = PdfReader(io.BytesIO(pdf))
    assert len(reader.pages) == 1
    # pypdf puts a NUL before each glyph of a CID font; what a viewer copies has none.
    return reader.pages[0].extract_text().replace("\x00", "")


def test_statistics_match_direct_counts_of_the_generated_history(staff: Staff, generated: history.History) -> None:
    want = history.expected(generated, *history.PERIOD)
    assert want["thefts_reported"] >= 20 and want["recovered"] >= 5 and want["recoveries_after_alarm"] >= 2
    assert want["last_year_thefts"] >= 10 and want["homes"]
    r = staff.police.get("/api/statistics", params=PERIOD)
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["period"] == {"from": "2026-03-01", "to": "2026-03-31", "days": 31, "timezone": "Asia/Shanghai"}
    for key in (
        "thefts_reported",
        "recovered",
        "recoveries_after_alarm",
        "seen_after_report",
        "median_hours_to_first_sighting",
        "median_hours_to_recovery",
        "by_hour",
        "by_weekday",
    ):
        assert got[key] == want[key], key
    assert got["recovered_share"] == round(want["recovered"] / want["thefts_reported"], 4)  # type: ignore[operator]
    assert {a["station_id"]: a["thefts"] for a in got["by_area"]} == want["homes"]
    assert got["without_home_station"] == want["thefts_reported"] - sum(want["homes"].values())  # type: ignore[attr-defined]
    names = {a["station_id"]: a["name"] for a in got["by_area"]}
    assert all(names[sid] == history.STATIONS[sid][0] for sid in names)
    # The trend against the same period last year.
    assert got["last_year"] == {
        "from": "2025-03-01",
        "to": "2025-03-31",
        "thefts_reported": want["last_year_thefts"],
        "recovered": want["last_year_recovered"],
    }
    change = (want["thefts_reported"] - want["last_year_thefts"]) / want["last_year_thefts"]  # type: ignore[operator]
    assert got["thefts_change"] == round(change, 4)
    # What is in service today: the active stations, the chips on registered bikes (not a retired one).
    assert got["stations_in_service"] == sum(1 for s in history.STATIONS.values() if s[3])
    assert got["chips_in_service"] == len(generated.reports)


def test_a_shorter_period_and_its_last_year_are_counted_alike(staff: Staff, generated: history.History) -> None:
    from datetime import date

    want = history.expected(generated, date(2026, 3, 10), date(2026, 3, 16))
    got = staff.admin.get("/api/statistics", params={"from": "2026-03-10", "to": "2026-03-16"}).json()
    assert got["thefts_reported"] == want["thefts_reported"]
    assert got["recovered"] == want["recovered"]
    assert got["by_weekday"] == want["by_weekday"]
    assert got["last_year"]["thefts_reported"] == want["last_year_thefts"]


def test_an_empty_period_has_no_shares_or_medians(staff: Staff, generated: history.History) -> None:
    got = staff.police.get("/api/statistics", params={"from": "2020-01-01", "to": "2020-01-31"}).json()
    assert got["thefts_reported"] == 0 and got["recovered_share"] is None and got["thefts_change"] is None
    assert got["median_hours_to_first_sighting"] is None and got["by_area"] == []
    page = staff.police.get("/statistics", params={"from": "2020-01-01", "to": "2020-01-31"})
    assert page.status_code == 200 and MESSAGES["en"]["stats_no_areas"] in page.text


def test_the_default_period_is_the_last_30_days(staff: Staff) -> None:
    got = staff.police.get("/api/statistics").json()
    assert got["period"]["days"] == 30
    r = staff.police.get("/statistics")
    assert r.status_code == 200 and f'value="{got["period"]["to"]}"' in r.text


def test_a_period_that_cannot_be_is_refused_with_its_reason(staff: Staff) -> None:
    r = staff.police.get("/api/statistics", params={"from": "2026-03-31", "to": "2026-03-01"})
    assert r.status_code == 422 and "before it starts" in r.json()["detail"]
    r = staff.police.get("/api/statistics", params={"from": "2020-01-01", "to": "2026-03-01"})
    assert r.status_code == 422 and "longer than" in r.json()["detail"]
    assert staff.police.get("/statistics.csv", params={"from": "2026-03-31", "to": "2026-03-01"}).status_code == 422
    assert staff.police.get("/api/statistics", params={"from": "2026-02-30"}).status_code == 422
    # The page says so and shows the last 30 days instead.
    page = staff.police.get("/statistics", params={"from": "2026-03-31", "to": "2026-03-01", "lang": "zh"})
    assert page.status_code == 200 and MESSAGES["zh"]["stats_period_invalid"] in page.text


@pytest.mark.parametrize("url", ["/statistics", "/statistics.csv", "/statistics.pdf", "/api/statistics"])
def test_only_police_and_admins_see_the_results(staff: Staff, url: str) -> None:
    owner = _owner(staff)
    for caller in (staff.police, staff.admin):
        assert caller.get(url, params=PERIOD).status_code == 200
    for caller in (owner, staff.clerk, staff.installer):
        r = caller.get(url, params=PERIOD)
        assert r.status_code == 403, (caller.username, r.status_code)
        # (a refusal page carries every word of the catalogue for its scripts, but no figure)
        assert '"by_hour"' not in r.text and 'id="stats-figures"' not in r.text and "section,item" not in r.text
    r = staff.anonymous.get(url, params=PERIOD, follow_redirects=False)
    if url.startswith("/api/"):
        assert r.status_code == 401
    else:  # a page sends the browser to sign in first, and back to the same period after it
        assert r.status_code == 303 and r.headers["location"].startswith("/login?next=")
        back = parse_qs(urlsplit(r.headers["location"]).query)["next"][0]
        assert urlsplit(back).path == url and parse_qs(urlsplit(back).query) == {k: [v] for k, v in PERIOD.items()}


def test_an_account_that_must_change_its_password_sees_no_results(app_client: object, database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        name = factories.account(conn, "police", must_change_password=True)
    caller = sign_in(app_client, name)  # type: ignore[arg-type]
    assert caller.get("/api/statistics").status_code == 403
    r = caller.get("/statistics", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/password")


def test_no_plate_name_or_chip_leaves_in_any_form(staff: Staff, generated: history.History) -> None:
    bodies = [
        staff.police.get("/api/statistics", params=PERIOD).text,
        staff.police.get("/statistics", params=PERIOD).text,
        staff.police.get("/statistics.csv", params=PERIOD).content.decode("utf-8-sig"),
        _pdf_text(staff.police.get("/statistics.pdf", params=PERIOD).content),
    ]
    for body in bodies:
        for plate in generated.plates:
            assert plate not in body
        for name in generated.owner_names:
            assert name not in body
        for report in generated.reports[:10]:
            assert f"{report.tag_id:08X}" not in body.upper()


def test_csv_reads_back_as_the_same_figures(staff: Staff, generated: history.History) -> None:
    got = staff.police.get("/api/statistics", params=PERIOD).json()
    r = staff.police.get("/statistics.csv", params={**PERIOD, "lang": "zh"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert "2026-03-01-2026-03-31.csv" in r.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(r.content.decode("utf-8-sig"))))
    summary = {row["item"]: row for row in rows if row["section"] == "summary"}
    assert int(summary["thefts_reported"]["value"]) == got["thefts_reported"]
    assert int(summary["recovered"]["value"]) == got["recovered"]
    assert float(summary["median_hours_to_recovery"]["value"]) == got["median_hours_to_recovery"]
    assert summary["thefts_reported"]["label"] == MESSAGES["zh"]["stats_thefts_reported"]
    assert [int(row["value"]) for row in rows if row["section"] == "hour"] == got["by_hour"]
    assert [int(row["value"]) for row in rows if row["section"] == "weekday"] == got["by_weekday"]
    areas = {row["item"]: int(row["value"]) for row in rows if row["section"] == "area"}
    assert areas == {a["station_id"]: a["thefts"] for a in got["by_area"]}
    last = {row["item"]: row["value"] for row in rows if row["section"] == "last_year"}
    assert int(last["thefts_reported"]) == got["last_year"]["thefts_reported"]


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_pdf_is_one_page_with_the_figures_in_the_language(staff: Staff, generated: history.History, lang: str) -> None:
    got = staff.police.get("/api/statistics", params=PERIOD).json()
    r = staff.police.get("/statistics.pdf", params={**PERIOD, "lang": lang})
    assert r.status_code == 200 and r.headers["content-type"] == "application/pdf"
    text = _pdf_text(r.content)
    t = MESSAGES[lang]
    for key in ("stats_title", "stats_thefts_reported", "stats_by_hour", "stats_by_weekday", "stats_by_area"):
        assert t[key] in text, key
    assert "2026-03-01" in text and "2026-03-31" in text
    assert f"{got['recovered_share'] * 100:.0f}%" in text
    top = got["by_area"][0]
    assert top["name"] in text and top["station_id"] in text
