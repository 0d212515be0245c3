"""`bikeguard map`: standalone HTML files that open from disk with nothing else running."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import psycopg

from bikeguard.map_command import main
from protocol.messages import utcnow
from tests import factories
from tests.browser import browser_page, chromium_path, console_errors, screenshot


def _loads_nothing_from_elsewhere(html: str) -> bool:
    # Leaflet's own script carries a link to its home page in the attribution; nothing is loaded from it.
    return (
        not re.search(r"<(?:script|link|img)[^>]+(?:src|href)=[\"']?(?:https?:)?//", html)
        and "bikeguard-inline" not in html
    )


def test_coverage_map_of_a_simulated_town_is_one_self_contained_file(tmp_path: Path, capsys):
    out = tmp_path / "coverage.html"
    assert main(["coverage", "--town-seed", "7", "--suggest", "3", "--out", str(out)]) == 0
    html = out.read_text()
    assert _loads_nothing_from_elsewhere(html)
    assert "suggested site 3" in capsys.readouterr().out
    if chromium_path():
        assert screenshot(out.as_uri(), tmp_path / "coverage.png", wait_for=".bg-site") == []


def test_trajectory_map_from_the_database(database_url: str, tmp_path: Path, capsys):
    now = utcnow()
    with psycopg.connect(database_url) as conn:
        for i, sid in enumerate(("st-a", "st-b", "st-c")):
            factories.station(conn, sid, lat=30.27 + i / 1000)
            at = now - timedelta(minutes=30 - i * 5)
            conn.execute(
                "INSERT INTO sightings VALUES (%s, %s, %s, 48879, 3, -60, 0, 4, 1)",
                (at, at + timedelta(seconds=20), sid),
            )
    out = tmp_path / "t.html"
    assert main(["--database-url", database_url, "trajectory", "--tag", "0000beef", "--out", str(out)]) == 0
    assert "3 stops, 3 passages" in capsys.readouterr().out
    html = out.read_text()
    assert _loads_nothing_from_elsewhere(html) and html.count('"station_name": "Station st-') == 3
    if chromium_path():  # the replay draws the numbered stops from the file alone
        with browser_page() as page:
            page.goto(out.as_uri())
            page.wait_for_selector(".bg-replay .bg-replay-slider")
            assert page.locator(".bg-step").all_inner_texts() == ["1", "2", "3"]
            assert "3 stops" in page.locator(".bg-replay-meta").inner_text()
            assert console_errors(page) == []
