"""The live map in headless Chromium: alarms arrive over SSE, trails are drawn, activity refreshes labels."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
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
    assert not [
        p for p in server.requests if not p.startswith(("/assets/leaflet/", "/assets/fonts/", "/api/")) and p != "/"
    ]


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


def _low_battery(town: dict[str, Any], station_id: str, seen_at: str) -> dict[str, Any]:
    """A low-battery alarm of a bike not reported stolen, as police see it: kind and station, no plate, no trail."""
    st = next(s for s in town["stations"] if s["station_id"] == station_id)
    return {
        "id": 90,
        "kind": "low_battery",
        "severity": "info",
        "state": "active",
        "tag_id": None,
        "plate": None,
        "details_hidden": True,
        "station_id": st["station_id"],
        "station_name": st["name"],
        "lat": st["lat"],
        "lon": st["lon"],
        "first_seen_at": seen_at,
        "last_seen_at": seen_at,
        "sightings": 1,
        "trail": [],
        "next_stations": [],
    }


def test_updates_of_an_alarm_without_a_trail_never_draw_one(
    town: dict[str, Any], map_server_factory: Callable[..., Any]
) -> None:
    # A bike not reported stolen, with a low battery, heard at one station and then another: the page must not join
    # the two into a trail (police would follow a bike that is not stolen, without a case number).
    require_chromium()
    server = map_server_factory(build_live_map(town["stations"], town["roads"], town["activity"], []), [])
    now = datetime.now(UTC).isoformat(timespec="seconds")
    with browser_page() as page:
        page.goto(f"{server.url}/")
        page.wait_for_selector("#bg-live-status.connected")
        for station in ("S-002", "S-009", "S-010"):
            server.send("alarm", _low_battery(town, station, now))
            page.wait_for_function(f"document.querySelector(\"[data-alarm-id='90']\")?.innerText.includes('{station}')")
        assert page.locator(TRAIL).count() == 1  # the (empty) polyline of the alarm, with no point on it
        assert (page.locator(TRAIL).get_attribute("d") or "M0 0") == "M0 0"
        assert page.locator(TRAIL_DOT).count() == 0
        assert "has-trail" not in (page.locator(".bg-alarm[data-alarm-id='90']").get_attribute("class") or "")
        assert console_errors(page) == []


def test_stolen_bikes_sort_first_each_with_a_trail_colour_of_its_own_and_the_history_behind_next(
    town: dict[str, Any], alarm_factory: Callable[..., dict[str, Any]], map_server_factory: Callable[..., Any]
) -> None:
    require_chromium()
    now = datetime.now(UTC)
    newest = now.isoformat(timespec="seconds")
    # A low battery heard just now, already on the page; stolen bikes seen a while ago arrive after it.
    server = map_server_factory(
        build_live_map(town["stations"], town["roads"], town["activity"], [_low_battery(town, "S-017", newest)]), []
    )
    first = alarm_factory(town, alarm_id=41, now=now - timedelta(minutes=2))
    second = alarm_factory(town, alarm_id=42, now=now - timedelta(minutes=1)) | {"plate": "HZ B·10442"}
    second["trail"] = [p | {"lat": p["lat"] + 0.002} for p in second["trail"]]
    second["next_stations"] = [
        n | {"based_on_moves": 3, "moves": 3, "probability": 0.6} for n in second["next_stations"][:1]
    ]
    with browser_page() as page:
        page.goto(f"{server.url}/")
        page.wait_for_selector("#bg-live-status.connected")
        server.send("alarm", first)
        server.send("alarm", second)
        page.locator(".bg-alarm[data-alarm-id='42']").wait_for()

        order = [li.get_attribute("data-alarm-id") for li in page.locator("#bg-alarm-list > li").all()]
        assert order == ["42", "41", "90"]  # critical first (newest first), the info card last though it is newer
        drawn = [
            t.get_attribute("stroke") for t in page.locator(TRAIL).all() if t.get_attribute("d") not in (None, "M0 0")
        ]
        assert len(drawn) == 2 and len(set(drawn)) == 2  # two stolen bikes, two colours
        cards = {
            alarm_id: page.locator(f".bg-alarm[data-alarm-id='{alarm_id}']").evaluate(
                "el => el.classList.contains('has-trail') && getComputedStyle(el).getPropertyValue('--trail').trim()"
            )
            for alarm_id in ("41", "42")
        }
        assert cards["41"] and cards["42"] and cards["41"] != cards["42"]
        assert {cards["41"], cards["42"]} == set(drawn)

        # "Likely next" says what it rests on: 31 of 48 moves is shown as such, 3 moves as few.
        assert "from 48 moves seen" in page.locator(".bg-alarm[data-alarm-id='41'] .bg-next-text").inner_text()
        few = page.locator(".bg-alarm[data-alarm-id='42'] .bg-next-text").inner_text()
        assert "60%" in few and "from 3 moves seen (few)" in few
        page.screenshot(path=str(screenshot_path("live-map-two-stolen.png")))
        assert console_errors(page) == []


def test_a_v2_chips_cloned_chip_alarm_shows_the_copy_heard_and_the_chips_own_beacon(
    town: dict[str, Any], alarm_factory: Callable[..., dict[str, Any]], map_server_factory: Callable[..., Any]
) -> None:
    """The evidence the ingest keeps with the alarm (backend/ingest/v2.py), in the popup, in both languages."""
    require_chromium()
    now = datetime.now(UTC)
    copy_at, own_at = now - timedelta(seconds=30), now - timedelta(seconds=90)
    hearing = {"counter": None, "window": 1995565, "payload_hex": "02" + "ab" * 17}
    clone = alarm_factory(town, alarm_id=77) | {
        "kind": "chip_cloned",
        "trail": [],
        "next_stations": [],
        "evidence": [
            {
                "verdict": "bad_mac",
                "offending": hearing | {"station_id": "S-010", "heard_at": copy_at.isoformat()},
                "previous": None,
            },
            {
                "verdict": "replay",
                "offending": hearing | {"station_id": "S-010", "heard_at": copy_at.isoformat(), "counter": 500},
                "previous": hearing | {"station_id": "S-002", "heard_at": own_at.isoformat(), "counter": 505},
            },
        ],
    }
    for lang, words in (
        (
            "en",
            ["Copy heard", "played at S-010", "counter 500", "heard at S-002", "counter 505", "without the chip's key"],
        ),
        ("zh", ["复制信号", "在 S-010 听到重放", "计数 500", "在 S-002 被听到", "计数 505", "无芯片密钥伪造"]),
    ):
        html = build_live_map(town["stations"], town["roads"], town["activity"], [], lang=lang)
        server = map_server_factory(html, town["activity"])
        with browser_page() as page:
            page.goto(f"{server.url}/")
            page.wait_for_selector("#bg-live-status.connected")
            server.send("alarm", clone)
            page.locator(".bg-alarm[data-alarm-id='77']").wait_for()
            page.locator(".bg-alarm-icon").first.click()
            popup = page.locator(".bg-popup")
            popup.wait_for()
            text = popup.inner_text()
            assert all(word in text for word in words), text
            # Leaflet fades a popup in: the picture once it is there.
            page.wait_for_function("() => getComputedStyle(document.querySelector('.leaflet-popup')).opacity === '1'")
            page.screenshot(path=str(screenshot_path(f"live-map-clone-evidence-{lang}.png")))
            assert console_errors(page) == []
