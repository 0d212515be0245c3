"""Trajectory replay in headless Chromium: from an alarm or a search on the live map, and on the standalone map."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from maps.live import build_live_map
from maps.trajectory import build_trajectory_map
from tests.browser import browser_page, console_errors, require_chromium, screenshot_path

BAR = ".bg-replay:not([hidden])"
STATE = "bikeguard_live.replay.state()"


def _search_reply(bike_id: int, tag_id: str, plate: str, stolen: bool) -> list[dict[str, Any]]:
    bike = {"bike_id": bike_id, "tag_id": tag_id, "plate": plate, "brand": "Yadea", "colour": "red", "stolen": stolen}
    return [{"bike": bike, "last_seen": None, "owner": None}]


def _marker_box(page: Any) -> tuple[float, float]:
    box = page.locator(".bg-replay-icon").bounding_box()
    assert box is not None
    return box["x"], box["y"]


def test_replaying_a_stolen_bikes_alarm_animates_its_route_and_offers_the_exports(
    town: dict[str, Any],
    alarm_factory: Callable[..., dict[str, Any]],
    trajectory_factory: Callable[..., dict[str, Any]],
    map_server_factory: Callable[..., Any],
) -> None:
    require_chromium()
    alarm, summary = alarm_factory(town), trajectory_factory(town)
    html = build_live_map(town["stations"], town["roads"], town["activity"], [alarm], user_name="Officer Chen")
    server = map_server_factory(html, town["activity"])
    server.api_replies = {
        ("GET", "/api/bikes/search"): _search_reply(7, alarm["tag_id"], alarm["plate"], stolen=True),
        ("GET", "/api/bikes/7/trajectory/summary"): summary,
    }

    with browser_page() as page:
        page.goto(f"{server.url}/")
        page.wait_for_selector("#bg-live-status.connected")
        page.locator(".bg-alarm[data-alarm-id='41'] button[data-replay-alarm]").click()
        page.wait_for_selector(f"{BAR} .bg-replay-slider")

        assert page.locator(".bg-replay-title").inner_text() == alarm["plate"]
        assert "5 stops" in page.locator(".bg-replay-meta").inner_text()
        assert page.locator(".bg-step").all_inner_texts() == ["1", "2", "3", "4", "5"]
        assert page.locator(".bg-replay-arrow").count() == 4
        assert page.locator(".bg-replay-tick").count() == 5
        status = page.locator(".bg-replay-status").text_content() or ""
        assert status.startswith("At") and summary["stops"][0]["station_name"] in status
        start_time = page.locator(".bg-replay-time b").inner_text()
        start_box = _marker_box(page)

        page.locator(".bg-replay-speeds button[data-speed='60']").click()
        page.locator(".bg-replay-play").click()
        page.wait_for_function(f"{STATE}.offset_s > 90")  # 1.5 s of play at 60x: on the way to stop 2
        page.locator(".bg-replay-play").click()  # pause

        state = page.evaluate(STATE)
        assert not state["playing"] and state["speed"] == 60
        assert page.locator(".bg-replay-time b").inner_text() != start_time
        assert _marker_box(page) != start_box
        assert page.locator("path.bg-replay-played").get_attribute("d") not in (None, "", "M0 0")

        # The slider jumps to any moment: half-way between stop 3 (S-009) and stop 4 (S-010).
        stops = summary["stops"]
        page.locator(".bg-replay-slider").fill(str(_mid_leg_s(stops, 2)))
        status = page.locator(".bg-replay-status").text_content() or ""
        assert "Moving" in status and stops[2]["station_name"] in status and stops[3]["station_name"] in status
        speed = round(summary["legs"][2]["speed_kmh"])
        assert f"{speed} km/h" in status and "heading E" in status
        assert page.evaluate(STATE)["leg"] == 2

        exports = {
            a.get_attribute("data-format"): a.get_attribute("href") for a in page.locator(".bg-replay-menu a").all()
        }
        assert sorted(exports) == ["csv", "geojson", "gpx"]
        gpx = urlsplit(exports["gpx"] or "")
        assert gpx.path == "/api/bikes/7/trajectory.gpx"
        assert parse_qs(gpx.query) == {"since": [summary["since"]], "until": [summary["until"]]}
        page.locator(".bg-replay-export summary").click()
        page.wait_for_timeout(900)  # the map's fly to the route
        page.screenshot(path=str(screenshot_path("replay.png")))
        assert console_errors(page) == []

    (call,) = [c for c in server.api_calls if c[1].startswith("/api/bikes/7/trajectory/summary")]
    assert set(parse_qs(urlsplit(call[1]).query)) == {"since", "until"}  # a stolen bike: no case number


def _mid_leg_s(stops: list[dict[str, Any]], leg: int) -> int:
    """Seconds from the first arrival to half-way along a leg."""
    from datetime import datetime

    t0 = datetime.fromisoformat(stops[0]["arrived_at"])
    left = datetime.fromisoformat(stops[leg]["left_at"])
    arrived = datetime.fromisoformat(stops[leg + 1]["arrived_at"])
    return round(((left - t0) + (arrived - left) / 2).total_seconds())


def test_a_searched_bike_not_stolen_is_replayed_only_with_a_case_number_and_closing_removes_it(
    town: dict[str, Any],
    trajectory_factory: Callable[..., dict[str, Any]],
    map_server_factory: Callable[..., Any],
) -> None:
    require_chromium()
    server = map_server_factory(build_live_map(town["stations"], town["roads"], town["activity"], []), [])
    server.api_replies = {
        ("GET", "/api/bikes/search"): _search_reply(9, "0A1B2C3D", "HZ-55555", stolen=False),
        ("GET", "/api/bikes/9/trajectory/summary"): trajectory_factory(town, bike_id=9),
    }

    with browser_page() as page:
        page.goto(f"{server.url}/")
        page.wait_for_selector("#bg-live-status.connected")
        page.fill("#bg-search-q", "HZ-55555")
        page.click("#bg-search button[type=submit]")
        replay_button = page.locator("#bg-search-result button[data-replay-result='0']")
        replay_button.wait_for()
        assert replay_button.is_disabled()  # whereabouts of a bike not stolen need a case number

        page.fill("#bg-search-case", "HZ-2026-1122")
        page.click("#bg-search button[type=submit]")
        page.wait_for_function(
            "document.querySelector(\"#bg-search-result button[data-replay-result='0']\")?.disabled === false"
        )
        page.locator("#bg-search-result button[data-replay-result='0']").click()
        page.wait_for_selector(f"{BAR} .bg-replay-slider")
        href = page.locator(".bg-replay-menu a[data-format='csv']").get_attribute("href") or ""
        assert parse_qs(urlsplit(href).query)["case_number"] == ["HZ-2026-1122"]

        page.locator(".bg-replay-close").click()
        page.wait_for_selector(".bg-replay", state="hidden")
        assert page.locator(".bg-step").count() == 0
        assert page.locator(".bg-replay-icon").count() == 0
        assert console_errors(page) == []

    (call,) = [c for c in server.api_calls if c[1].startswith("/api/bikes/9/trajectory/summary")]
    assert parse_qs(urlsplit(call[1]).query)["case_number"] == ["HZ-2026-1122"]


def test_a_refused_replay_says_why(
    town: dict[str, Any], alarm_factory: Callable[..., dict[str, Any]], map_server_factory: Callable[..., Any]
) -> None:
    require_chromium()
    alarm = alarm_factory(town)
    server = map_server_factory(build_live_map(town["stations"], town["roads"], town["activity"], [alarm]), [])
    server.api_replies = {("GET", "/api/bikes/search"): []}

    with browser_page() as page:
        page.goto(f"{server.url}/")
        page.locator("button[data-replay-alarm='41']").click()
        page.wait_for_selector(f"{BAR}.bad")
        assert "no bike carries chip 0A1B2C3D" in (page.locator(".bg-replay-status").text_content() or "")
        assert page.locator(".bg-replay-play").is_hidden()


def test_the_standalone_trajectory_map_plays_with_the_same_replay(
    town: dict[str, Any],
    trajectory_factory: Callable[..., dict[str, Any]],
    map_server_factory: Callable[..., Any],
    tmp_path: Path,
) -> None:
    require_chromium()
    summary = trajectory_factory(town)
    html = build_trajectory_map(summary, town["roads"], stations=town["stations"]).get_root().render()
    server = map_server_factory(html, [])

    with browser_page() as page:
        page.goto(f"{server.url}/")
        page.wait_for_selector(f"{BAR} .bg-replay-slider")
        assert page.locator(".bg-replay-title").inner_text() == "Bike 7"
        assert page.locator(".bg-step").count() == 5
        assert page.locator(".bg-replay-export").is_hidden()  # no server to export from
        before = page.locator(".bg-replay-time b").inner_text()
        page.locator(".bg-replay-speeds button[data-speed='600']").click()
        page.locator(".bg-replay-play").click()
        page.wait_for_function(
            "(t => t != null && t !== " + repr(before) + ")(document.querySelector('.bg-replay-time b')?.textContent)"
        )
        page.screenshot(path=str(tmp_path / "trajectory.png"))
        assert console_errors(page) == []
