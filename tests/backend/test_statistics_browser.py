"""The results page through the real backend in headless Chromium, in English and Chinese: an officer signs in,
reads the period's figures and charts, chooses another period, and finds the CSV and PDF for it."""

from __future__ import annotations

import httpx
import psycopg
import pytest
from playwright.sync_api import expect

from backend.web.translations import MESSAGES
from tests import factories
from tests.backend import statistics_history as history
from tests.backend.test_pages_browser import _api_as, _sign_in, server  # noqa: F401 - server is a fixture
from tests.browser import browser_page, console_errors, raw_keys, screenshot_path


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_officer_reads_the_results_of_a_period_in_both_languages(
    server: str,  # noqa: F811 - the fixture imported above
    database_url: str,
    lang: str,
) -> None:
    t = MESSAGES[lang]
    generated = history.generate(database_url)
    with psycopg.connect(database_url) as conn:
        officer = factories.account(conn, "police", "officer.chen")
    with _api_as(server, officer) as api:
        want = api.get("/api/statistics", params={"from": "2026-03-01", "to": "2026-03-31"}).json()
        february = api.get("/api/statistics", params={"from": "2026-02-01", "to": "2026-02-28"}).json()

    with browser_page(1280, 1400) as page:
        page.goto(f"{server}/statistics?lang={lang}")
        _sign_in(page, officer, factories.PASSWORD)
        page.wait_for_selector("#stats-figures")  # back on the page after signing in: the last 30 days
        page.goto(f"{server}/statistics?from=2026-03-01&to=2026-03-31")  # in the language chosen before
        assert page.title().startswith(t["stats_title"])
        thefts = page.locator("[data-figure=thefts_reported] b")
        expect(thefts).to_have_text(str(want["thefts_reported"]))
        expect(page.locator("[data-figure=recovered] b")).to_have_text(str(want["recovered"]))
        share = f"{want['recovered_share'] * 100:.0f}%"
        expect(page.locator("[data-figure=recovered_share] b")).to_have_text(share)
        last_year = page.inner_text("[data-figure=thefts_reported] small")
        assert str(want["last_year"]["thefts_reported"]) in last_year
        # One bar per hour and per weekday that had a theft; the busiest home station first in the table.
        expect(page.locator("#stats-by-hour rect")).to_have_count(sum(1 for n in want["by_hour"] if n))
        expect(page.locator("#stats-by-weekday rect")).to_have_count(sum(1 for n in want["by_weekday"] if n))
        expect(page.locator("#stats-area-plot circle.bg-stats-circle")).to_have_count(len(want["by_area"]))
        first_row = page.locator("#stats-areas tbody tr").first
        expect(first_row).to_have_attribute("data-station", want["by_area"][0]["station_id"])
        for plate in generated.plates:
            assert plate not in page.content()
        assert raw_keys(page) == []
        assert console_errors(page) == []
        page.screenshot(path=str(screenshot_path(f"statistics-{lang}.png")), full_page=True)

        # Another period from the chooser: the figures and the downloads follow it.
        page.fill("#stats-from", "2026-02-01")
        page.fill("#stats-to", "2026-02-28")
        page.click("#stats-show")
        expect(thefts).to_have_text(str(february["thefts_reported"]))
        assert "2026-02-01" in page.inner_text("#stats-period-line")
        csv_url = page.get_attribute("#stats-csv", "href")
        pdf_url = page.get_attribute("#stats-pdf", "href")
        assert csv_url is not None and "from=2026-02-01&to=2026-02-28" in csv_url and f"lang={lang}" in csv_url
        assert pdf_url is not None and "from=2026-02-01&to=2026-02-28" in pdf_url
        # The browser's own session cookie fetches them.
        cookies = {c["name"]: c["value"] for c in page.context.cookies()}
        csv_text = httpx.get(f"{server}{csv_url}", cookies=cookies).content.decode("utf-8-sig")
        assert f"summary,thefts_reported,{february['thefts_reported']}," in csv_text
        pdf = httpx.get(f"{server}{pdf_url}", cookies=cookies)
        assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")
        assert console_errors(page) == []
