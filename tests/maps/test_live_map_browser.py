"""The live map in headless Chromium: alarms arrive over SSE, trails are drawn, activity refreshes labels."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from maps.live import build_live_map
from tests.browser import browser_page, console_errors, require_chromium, screenshot_path

TRAIL = "path.bg-trail.leaflet-interactive"
TRAIL_DOT = "path.bg-trail-dot.leaflet-interactive"
HEADER_ANIMATING = (
    "document.getAnimations().some(a => a.effect && a.effect.target && a.effect.target.id === 'bg-header')"
)


def _polled_activity(town: dict[str, Any]) -> list[dict[str, Any]]:
    """What the activity endpoint answers: the built page's numbers, with S-001 now at 99."""
    return [a | {"passages": 99} if a["station_id"] == "S-001" else a for a in town["activity"]]


def _segments(path_d: str) -> int:
    return path_d.count("L") + 1


def test_alarm_from_live_feed_appears_in_panel_with_its_trail(
    town: dict[str, Any],
    alarm_factory: Callable[..., dict[str, Any]],
    tamper_alarm_factory: Callable[..., dict[str, Any]],
    map_server_factory: Callable[..., Any],
) -> None:
    require_chromium()
    html = build_live_map(town["stations"], town["roads"], town["activity"], [tamper_alarm_factory(town)])
    server = map_server_factory(html, _polled_activity(town))
    alarm = alarm_factory(town)

    with browser_page() as page:
        page.goto(f"{server.url}/")
        page.wait_for_selector("#bg-live-status.connected")
        page.wait_for_selector(".bg-station-label >> text=99")  # the first activity poll has landed
        trails_before = page.locator(TRAIL).count()
        dots_before = page.locator(TRAIL_DOT).count()

        server.send("alarm", alarm)
        item = page.locator(".bg-alarm[data-alarm-id='41']")
        item.wait_for()

        assert page.locator("#bg-alarm-list > li").first.get_attribute("data-alarm-id") == "41"
        text = item.inner_text()
        assert alarm["plate"] in text
        assert alarm["station_name"] in text
        assert "s ago" in text
        assert page.locator("#bg-alarm-count").inner_text() == "1"  # the tamper alarm is acknowledged
        assert page.locator(TRAIL).count() == trails_before + 1
        assert _segments(page.locator(TRAIL).last.get_attribute("d") or "") == 4
        assert page.locator(TRAIL_DOT).count() == dots_before + 4
        assert page.locator(".bg-alarm-icon.sev-critical").count() == 1
        assert page.locator(".bg-alarm-label", has_text=alarm["plate"]).count() == 1
        # Interception points: the likely next stations with their chance and expected arrival.
        assert page.locator("path.bg-next").count() == 2
        assert page.locator(".bg-next-label", has_text="62%").count() == 1
        assert "Next: " in text and "62%" in text

        page.wait_for_function(f"!({HEADER_ANIMATING})", timeout=10_000)
        page.screenshot(path=str(screenshot_path("live-map.png")))
        assert console_errors(page) == []

    assert "/api/stations/activity" in server.requests
    assert not [p for p in server.requests if not p.startswith(("/assets/leaflet/", "/api/")) and p != "/"]


def test_alarm_update_moves_the_marker_and_extends_the_trail_and_clearing_removes_it(
    town: dict[str, Any],
    alarm_factory: Callable[..., dict[str, Any]],
    map_server_factory: Callable[..., Any],
) -> None:
    require_chromium()
    server = map_server_factory(build_live_map(town["stations"], town["roads"], town["activity"], []), [])
    alarm = alarm_factory(town)
    now = datetime.now(UTC).isoformat(timespec="seconds")
    east = next(s for s in town["stations"] if s["station_id"] == "S-012")
    moved = alarm | {
        "station_id": east["station_id"],
        "station_name": east["name"],
        "lat": east["lat"],
        "lon": east["lon"],
        "sightings": 5,
        "trail": [{"station_id": east["station_id"], "lat": east["lat"], "lon": east["lon"], "seen_at": now}],
        "last_seen_at": now,
    }

    with browser_page() as page:
        page.goto(f"{server.url}/")
        page.wait_for_selector("#bg-live-status.connected")
        assert page.locator("#bg-no-alarms").is_visible()

        server.send("alarm", alarm)
        item = page.locator(".bg-alarm[data-alarm-id='41']")
        item.wait_for()
        server.send("alarm", moved)
        page.wait_for_function("document.querySelector(\"[data-alarm-id='41']\")?.innerText.includes('S-012')")

        assert page.locator("#bg-alarm-list > li").count() == 1
        assert "5 sightings" in item.inner_text()
        assert _segments(page.locator(TRAIL).get_attribute("d") or "") == 5
        assert page.locator(TRAIL_DOT).count() == 5

        server.send("alarm", moved | {"state": "cleared"})
        item.wait_for(state="detached")

        assert page.locator(TRAIL).count() == 0
        assert page.locator(".bg-alarm-icon").count() == 0
        assert page.locator("#bg-no-alarms").is_visible()
        assert page.locator("#bg-alarm-count").inner_text() == "0"
        assert console_errors(page) == []


def test_officer_acknowledges_assigns_and_finds_a_bike_from_the_map(
    town: dict[str, Any],
    alarm_factory: Callable[..., dict[str, Any]],
    map_server_factory: Callable[..., Any],
) -> None:
    require_chromium()
    alarm = alarm_factory(town)
    html = build_live_map(town["stations"], town["roads"], town["activity"], [alarm], user_name="Officer Chen")
    server = map_server_factory(html, town["activity"])
    where = town["stations"][3]
    server.api_replies = {
        ("POST", "/api/alarms/41/acknowledge"): alarm | {"state": "acknowledged", "acknowledged_by": "Officer Chen"},
        ("POST", "/api/alarms/41/assign"): alarm | {"state": "acknowledged", "assignee": "Officer Chen"},
        ("GET", "/api/bikes/search"): [
            {
                "bike": {"bike_id": 7, "plate": "HZ-77777", "brand": "Yadea", "colour": "red", "stolen": True},
                "last_seen": {
                    "station_id": where["station_id"],
                    "station_name": where["name"],
                    "lat": where["lat"],
                    "lon": where["lon"],
                    "seen_at": datetime.now(UTC).isoformat(),
                },
                "owner": None,
            }
        ],
    }

    with browser_page() as page:
        page.goto(f"{server.url}/")
        page.wait_for_selector("#bg-live-status.connected")
        card = page.locator(".bg-alarm[data-alarm-id='41']")
        assert float(card.evaluate("el => getComputedStyle(el).opacity")) == 1

        card.locator("button[data-act='acknowledge']").click()
        page.wait_for_selector(".bg-alarm.acknowledged[data-alarm-id='41']")
        assert float(card.evaluate("el => getComputedStyle(el).opacity")) < 0.7  # dimmed
        assert card.locator("button[data-act='acknowledge']").is_disabled()
        assert page.locator("#bg-alarm-count").inner_text() == "0"

        page.locator(".bg-alarm-icon").first.click()  # the popup carries the same buttons
        page.locator(".bg-popup button[data-act='assign']").click()
        page.wait_for_selector(".bg-alarm[data-alarm-id='41'] .bg-assignee")
        assert "Officer Chen" in card.inner_text()

        page.fill("#bg-search-q", "hz-77777")
        page.click("#bg-search button")
        page.wait_for_selector(".bg-found-label")
        assert "HZ-77777" in page.locator("#bg-search-result").inner_text()
        assert where["name"] in page.locator("#bg-search-result").inner_text()
        page.wait_for_timeout(1200)  # the fly to the last station
        page.screenshot(path=str(screenshot_path("live-map-actions.png")))
        assert console_errors(page) == []

    assert [(m, p, b) for m, p, b in server.api_calls if m == "POST"] == [
        ("POST", "/api/alarms/41/acknowledge", None),
        ("POST", "/api/alarms/41/assign", {"assignee": "Officer Chen"}),
    ]
    assert ("GET", "/api/bikes/search?q=hz-77777", None) in server.api_calls


def test_station_offline_alarm_names_the_station_and_no_bike(
    town: dict[str, Any],
    alarm_factory: Callable[..., dict[str, Any]],
    map_server_factory: Callable[..., Any],
) -> None:
    require_chromium()
    server = map_server_factory(build_live_map(town["stations"], town["roads"], town["activity"], []), [])
    station = town["stations"][0]
    since = datetime.now(UTC).isoformat(timespec="seconds")
    offline = alarm_factory(town) | {
        "id": 77,
        "kind": "station_offline",
        "severity": "warning",
        "tag_id": None,
        "plate": None,
        "station_id": station["station_id"],
        "station_name": station["name"],
        "lat": station["lat"],
        "lon": station["lon"],
        "first_seen_at": since,
        "last_seen_at": since,
        "sightings": 0,
        "trail": [],
        "next_stations": [],
    }
    with browser_page() as page:
        page.goto(f"{server.url}/")
        page.wait_for_selector("#bg-live-status.connected")
        server.send("alarm", offline)
        item = page.locator(".bg-alarm[data-alarm-id='77']")
        item.wait_for()
        text = item.inner_text()
        assert "Station offline" in text and station["name"] in text and "last heard" in text
        assert "Tag" not in text and "no plate" not in text and "Replay" not in text
        assert page.locator(".bg-alarm-label", has_text=station["name"]).count() == 1
        assert console_errors(page) == []


def test_a_feed_that_says_signed_out_stops_and_offers_to_sign_in_again(
    town: dict[str, Any], map_server_factory: Callable[..., Any]
) -> None:
    require_chromium()
    server = map_server_factory(build_live_map(town["stations"], town["roads"], town["activity"], []), town["activity"])

    with browser_page() as page:
        page.goto(f"{server.url}/")
        page.wait_for_selector("#bg-live-status.connected")
        server.send("signed-out", {})

        page.wait_for_selector("#bg-live-status.signed-out")
        assert page.locator("#bg-live-status span").inner_text() == "Live feed: signed out"
        again = page.locator("#bg-live-status a")
        assert again.inner_text() == "Sign in again"
        assert again.get_attribute("href") == "/login?next=%2F"
        page.wait_for_timeout(1500)  # no reconnecting: the page does not retry a session that ended
        assert page.locator("#bg-live-status.signed-out").count() == 1
        assert server.requests.count("/api/live") == 1
        assert console_errors(page) == []
