"""The counter and the owner portal in headless Chromium, as a clerk and an owner use them; the pictures
taken here are the ones in docs/counter.md and docs/owner.md."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import psycopg
import pytest

from backend.api.app import create_app
from bikeguard.services import free_port
from tests import factories
from tests.browser import browser_page, console_errors, raw_keys, require_chromium, screenshot_path
from tests.serving import served


@pytest.fixture
def server(database_url: str) -> Iterator[str]:
    """The backend (API and pages, no ingest) served by uvicorn on a free port."""
    require_chromium()
    port = free_port()
    with served(create_app(factories.settings(database_url, http_port=port), run_ingest=False), port) as url:
        yield url


def _clerk(database_url: str) -> str:
    with psycopg.connect(database_url) as conn:
        return factories.account(conn, "clerk", "zhang.min")


def _api_as(base: str, username: str, password: str = factories.PASSWORD) -> httpx.Client:
    body = {"username": username, "password": password, "token_in_body": True}
    token = httpx.post(f"{base}/api/auth/login", json=body).json()["token"]
    return httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30)


OWNER_PASSWORD = "my own secret 42"


def _owner_api(base: str, slip: dict[str, str]) -> httpx.Client:
    """The owner of a counter slip, signed in after replacing the slip's one-time password by OWNER_PASSWORD."""
    with _api_as(base, slip["username"], slip["initial_password"]) as first:
        body = {"current_password": slip["initial_password"], "new_password": OWNER_PASSWORD}
        assert first.post("/api/auth/password", json=body).status_code == 200
    return _api_as(base, slip["username"], OWNER_PASSWORD)


def _sign_in(page, username: str, password: str) -> None:  # type: ignore[no-untyped-def]
    page.wait_for_selector("#login-form")
    page.fill("#username", username)
    page.fill("#password", password)
    page.click("#login-submit")


def _first_sign_in(page, slip: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    """An owner's first sign-in with the counter slip, replacing its one-time password by OWNER_PASSWORD."""
    _sign_in(page, slip["username"], slip["initial_password"])
    page.wait_for_selector("#password-form")
    page.fill("#current", slip["initial_password"])
    page.fill("#new", OWNER_PASSWORD)
    page.fill("#repeat", OWNER_PASSWORD)
    page.click("#password-form button")


def _message(page, field: str) -> str:  # type: ignore[no-untyped-def]
    return page.inner_text(f'.bg-msg[data-for="{field}"]')


def test_clerk_registers_owner_bike_and_chip_with_messages_as_they_type(server: str, database_url: str) -> None:
    clerk = _clerk(database_url)
    with _api_as(server, clerk) as api:
        taken = api.post("/api/bikes", json=factories.registration(plate="HZ-20001")).json()["bike"]
    body = factories.registration(
        plate="HZ-20002", frame_number="LZXE2024A0815", motor_number="MT48V-22093", tag_id="5EC0FFEE"
    )
    owner = body["owner"]
    with browser_page(1400, 1000) as page:
        page.goto(f"{server}/counter?lang=en")
        _sign_in(page, clerk, factories.PASSWORD)
        page.wait_for_selector("#register-form")

        number = owner["id_number"]
        wrong = number[:17] + ("0" if number[17] != "0" else "1")
        page.type("#id_number", number[:9])
        assert _message(page, "id_number") == "9 of 18 characters"
        page.fill("#id_number", "")
        page.type("#id_number", wrong)
        assert "check digit does not match" in _message(page, "id_number")
        page.fill("#id_number", number)
        page.wait_for_selector("#owner-new:not([hidden])")
        assert _message(page, "id_number") == "Valid ID number"

        page.type("#name", owner["name"])
        page.type("#mobile", "1380013")
        assert "11 digits" in _message(page, "mobile")
        page.fill("#mobile", owner["mobile"])
        page.type("#address", owner["address"])

        page.type("#plate", "HZ-2000")
        assert "local pattern" in _message(page, "plate")
        page.type("#plate", "1")  # HZ-20001: the format is right, but it is taken
        page.wait_for_selector(
            "[data-for=plate]:has-text('already')"
        )  # selectors, not wait_for_function: the CSP forbids eval
        assert _message(page, "plate") == f"plate HZ-20001 is already registered to another bike (#{taken['bike_id']})"
        page.fill("#plate", "")
        page.type("#plate", "hz-20002")
        page.wait_for_selector("[data-for=plate]:text-is('Available')")

        page.type("#frame_number", body["frame_number"])
        page.type("#motor_number", body["motor_number"])
        page.fill("#brand", "Yadea")
        page.fill("#model", "G5")
        page.fill("#colour", "blue")
        page.type("#tag_id", taken["tag_id"])
        page.wait_for_selector("[data-for=tag_id]:has-text('already fitted')")
        assert _message(page, "tag_id") == f"chip {taken['tag_id']} is already fitted to bike HZ-20001"
        page.screenshot(path=str(screenshot_path("counter-validation.png")))
        page.fill("#tag_id", "")
        page.type("#tag_id", body["tag_id"])
        page.wait_for_selector("[data-for=tag_id]:text-is('Available')")
        page.screenshot(path=str(screenshot_path("counter-register.png")))

        page.click("#register-submit")
        page.wait_for_selector("#register-done:not([hidden])")
        assert page.inner_text("#done-plate") == "HZ-20002"
        assert page.inner_text("#slip-user").startswith("bg-")  # generated, never the mobile number
        assert len(page.inner_text("#slip-password")) == 10
        page.screenshot(path=str(screenshot_path("counter-done.png")))

        bike_href = page.get_attribute("#done-print", "href")
        page.goto(f"{server}{bike_href}?lang=en")
        page.wait_for_selector("#certificate svg")
        assert "HZ-20002" in page.inner_text("#certificate") and "W*** F***" in page.inner_text("#certificate")
        page.screenshot(path=str(screenshot_path("certificate.png")), full_page=True)
        assert console_errors(page) == []
        assert raw_keys(page) == []


def test_counter_speaks_chinese_with_the_same_checks(server: str, database_url: str) -> None:
    clerk = _clerk(database_url)
    with browser_page(1400, 900) as page:
        page.goto(f"{server}/login?lang=zh&next=/counter")
        assert page.inner_text("h1") == "登录"
        _sign_in(page, clerk, factories.PASSWORD)
        page.wait_for_selector("#register-form")
        assert page.inner_text("h1") == "登记窗口"
        number = factories.id_number()
        page.type("#id_number", number[:17] + ("0" if number[17] != "0" else "1"))
        assert _message(page, "id_number") == "校验码不符：有字符输错了。"
        page.type("#plate", "AB")
        assert _message(page, "plate") == "不符合本地号牌格式（例如 HZ-12345）。"
        page.screenshot(path=str(screenshot_path("counter-zh.png")))
        assert console_errors(page) == []
        assert raw_keys(page) == []


def test_clerk_finds_a_bike_replaces_its_chip_and_sees_the_history(server: str, database_url: str) -> None:
    clerk = _clerk(database_url)
    with _api_as(server, clerk) as api:
        bike = api.post("/api/bikes", json=factories.registration(plate="HZ-30003")).json()["bike"]
    with browser_page(1400, 1000) as page:
        page.goto(f"{server}/counter?lang=en")
        _sign_in(page, clerk, factories.PASSWORD)
        page.click("[data-tab=services]")
        page.fill("#find", "hz-30003")
        page.click("#find-form button")
        page.wait_for_selector(".bg-bike")
        page.click(".bg-bike details:has(form[data-op=chip]) summary")
        page.fill("form[data-op=chip] [name=tag_id]", "6A6A6A6A")
        page.fill("form[data-op=chip] [name=reason]", "chip damaged")
        page.click("form[data-op=chip] button")
        page.wait_for_selector(".bg-bike .bg-facts:has-text('6A6A6A6A')")
        page.click(".bg-bike details.bg-history summary")
        page.wait_for_selector(".bg-history-table table")
        history = page.inner_text(".bg-history-table")
        assert bike["tag_id"] in history and "6A6A6A6A" in history and "chip damaged" in history
        page.screenshot(path=str(screenshot_path("counter-services.png")))
        assert console_errors(page) == []
        assert raw_keys(page) == []


def test_owner_signs_in_with_the_slip_arms_and_reports_the_bike_stolen(server: str, database_url: str) -> None:
    clerk = _clerk(database_url)
    with _api_as(server, clerk) as api:
        done = api.post("/api/bikes", json=factories.registration(plate="HZ-40004")).json()
    slip = done["owner_login"]
    with psycopg.connect(database_url) as conn:
        factories.station(conn, "st-gate", 30.27, 120.15)
        conn.execute(
            "INSERT INTO alarms (kind, severity, subject, tag_id, bike_id, station_id, first_seen_at, last_seen_at)"
            " VALUES ('armed_bike_moving', 'warning', 'tag:x', %s, %s, 'st-gate', now(), now())",
            (int(done["bike"]["tag_id"], 16), done["bike"]["bike_id"]),
        )
    with browser_page(1300, 950) as page:
        page.goto(f"{server}/portal?lang=en")
        _sign_in(page, slip["username"], slip["initial_password"])
        page.wait_for_selector("#password-form")  # a one-time password must be replaced first
        page.screenshot(path=str(screenshot_path("owner-first-login.png")))
        page.fill("#current", slip["initial_password"])
        page.fill("#new", "my own secret 42")
        page.fill("#repeat", "my own secret 4")
        assert _message(page, "repeat") == "The two new passwords differ."
        page.fill("#repeat", "my own secret 42")
        page.click("#password-form button")
        page.wait_for_selector(".bg-bike")
        assert "HZ-40004" in page.inner_text(".bg-bike")
        page.wait_for_selector("#alarms li")
        assert "Your armed bike is moving" in page.inner_text("#alarms")

        page.click(".bg-bike button[data-act=arm]")
        page.wait_for_selector(".bg-bike.armed")
        page.screenshot(path=str(screenshot_path("owner-portal.png")))

        page.click(".bg-bike details[data-key=theft] summary")
        page.fill("[name=place]", "Wulin Square bike park")
        page.fill("[name=circumstances]", "Lock cut while I was shopping")
        page.fill("[name=police_report]", "HZ-110-2024-0815")
        page.screenshot(path=str(screenshot_path("owner-report.png")))
        page.click("form[data-act=theft] button")
        page.wait_for_selector(".bg-bike.stolen")
        assert "Reported stolen" in page.inner_text(".bg-bike")
        page.screenshot(path=str(screenshot_path("owner-stolen.png")))
        assert console_errors(page) == []
        assert raw_keys(page) == []

    with _api_as(server, slip["username"], "my own secret 42") as owner:
        assert owner.get(f"/api/bikes/{done['bike']['bike_id']}").json()["theft"]["police_report"] == "HZ-110-2024-0815"


def test_pages_send_strangers_to_sign_in_and_others_to_a_403(server: str, database_url: str) -> None:
    clerk = _clerk(database_url)
    for path in ("/", "/counter", "/portal"):
        r = httpx.get(f"{server}{path}", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == f"/login?next={path}"
    with _api_as(server, clerk) as api:
        token = api.headers["Authorization"].removeprefix("Bearer ")
        assert httpx.get(f"{server}/", cookies={"bikeguard_session": token}).status_code == 403
    with browser_page() as page:
        page.goto(f"{server}/")
        _sign_in(page, clerk, factories.PASSWORD)
        # The sign-in card is a .bg-card too: wait for the answer, not for any card.
        page.wait_for_selector(".bg-card >> text=this page is for")
        assert "this page is for: police, admin" in page.inner_text(".bg-card")


def test_verify_page_shows_the_answer_to_anyone(server: str, database_url: str) -> None:
    clerk = _clerk(database_url)
    with _api_as(server, clerk) as api:
        token = api.post("/api/bikes", json=factories.registration()).json()["certificate"]["token"]
    with browser_page(900, 600) as page:
        page.goto(f"{server}/verify?token={token}&lang=en")
        assert page.get_attribute("#verify-result", "data-state") == "ok"
        page.screenshot(path=str(screenshot_path("verify.png")))
        page.goto(f"{server}/verify?token=BG1.AAAAAAAAAAE.forged&lang=en")
        assert page.get_attribute("#verify-result", "data-state") == "bad"


def _alarm(database_url: str, kind: str, severity: str, bike: dict[str, Any]) -> int:
    with psycopg.connect(database_url) as conn:
        factories.station(conn, "st-gate", 30.27, 120.15)
        row = conn.execute(
            "INSERT INTO alarms (kind, severity, subject, tag_id, bike_id, station_id, first_seen_at, last_seen_at)"
            " VALUES (%s, %s, %s, %s, %s, 'st-gate', now(), now()) RETURNING alarm_id",
            (kind, severity, f"tag:{bike['tag_id']}", int(bike["tag_id"], 16), bike["bike_id"]),
        ).fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.parametrize(
    ("lang", "words"),
    [
        ("en", ("chip battery is low", "tampered with", "copy of your bike's chip")),
        ("zh", ("芯片电量低", "芯片被人拆动", "复制了您车辆的芯片")),
    ],
)
def test_owner_reads_every_alert_kind_in_their_language(
    server: str, database_url: str, lang: str, words: tuple[str, ...]
) -> None:
    clerk = _clerk(database_url)
    with _api_as(server, clerk) as api:
        done = api.post("/api/bikes", json=factories.registration(plate="HZ-40005")).json()
    for kind, severity in (("low_battery", "info"), ("tamper", "warning"), ("chip_cloned", "critical")):
        _alarm(database_url, kind, severity, done["bike"])
    with browser_page(1300, 950) as page:
        page.goto(f"{server}/portal?lang={lang}")
        _sign_in(page, done["owner_login"]["username"], done["owner_login"]["initial_password"])
        page.wait_for_selector("#password-form")
        page.fill("#current", done["owner_login"]["initial_password"])
        page.fill("#new", "my own secret 42")
        page.fill("#repeat", "my own secret 42")
        page.click("#password-form button")
        page.wait_for_selector("#alarms li >> nth=2")
        alerts = page.inner_text("#alarms")
        assert all(w in alerts for w in words), alerts
        assert "alarm_" not in alerts
        page.screenshot(path=str(screenshot_path(f"owner-alerts-{lang}.png")))
        assert console_errors(page) == []
        assert raw_keys(page) == []


def test_marking_a_bike_recovered_ends_its_stolen_alarm_for_owner_and_police(server: str, database_url: str) -> None:
    clerk = _clerk(database_url)
    with psycopg.connect(database_url) as conn:
        police = factories.account(conn, "police", "officer.li")
    with _api_as(server, clerk) as api:
        done = api.post("/api/bikes", json=factories.registration(plate="HZ-40006")).json()
    slip, bike = done["owner_login"], done["bike"]
    with _owner_api(server, slip) as owner:
        assert owner.post(f"/api/bikes/{bike['bike_id']}/theft", json={}).status_code == 201
    stolen = _alarm(database_url, "stolen_chip_seen", "critical", bike)
    low = _alarm(database_url, "low_battery", "info", bike)
    with browser_page(1300, 950) as page:
        page.goto(f"{server}/portal?lang=en")
        _sign_in(page, slip["username"], "my own secret 42")
        page.wait_for_selector("#alarms li >> nth=1")
        assert "Your stolen bike was seen" in page.inner_text("#alarms")
        page.click(".bg-bike button[data-act=recovered]")
        page.wait_for_selector(".bg-bike:not(.stolen)")
        # A function, not an expression: polling an expression evals it, which the page's CSP forbids (CI caught it
        # once the list took a moment to redraw).
        page.wait_for_function("() => document.querySelectorAll('#alarms li').length === 1")
        alerts = page.inner_text("#alarms")
        assert "Your stolen bike was seen" not in alerts and "battery is low" in alerts
        assert console_errors(page) == []
        assert raw_keys(page) == []
    with _api_as(server, police) as officer:
        answer = officer.get(f"/api/alarms/{stolen}").json()
        assert answer["state"] == "cleared" and "bike recovered" in answer["cleared_by"]
        assert stolen not in [a["id"] for a in officer.get("/api/alarms").json()]
        assert officer.get(f"/api/alarms/{low}").json()["state"] == "active"  # about the chip, not the theft


def test_owner_changes_their_password_from_the_link_on_every_page(server: str, database_url: str) -> None:
    clerk = _clerk(database_url)
    with _api_as(server, clerk) as api:
        slip = api.post("/api/bikes", json=factories.registration(plate="HZ-40007")).json()["owner_login"]
    _owner_api(server, slip).close()
    with browser_page(1300, 900) as page:
        page.goto(f"{server}/portal?lang=zh")
        _sign_in(page, slip["username"], "my own secret 42")
        page.wait_for_selector(".bg-bike")
        page.click("#bg-change-password")
        page.wait_for_selector("#password-form")
        assert "当前密码" in page.inner_text("#password-form") and "一次性" not in page.inner_text("#password-form")
        page.fill("#current", "my own secret 42")
        page.fill("#new", "a newer secret 43")
        page.fill("#repeat", "a newer secret 43")
        page.click("#password-form button")
        page.wait_for_selector(".bg-bike")
        assert console_errors(page) == []
        assert raw_keys(page) == []
    with _api_as(server, slip["username"], "a newer secret 43") as owner:
        assert owner.get("/api/bikes").status_code == 200


def _fonts_of(page, selector: str) -> set[str]:  # type: ignore[no-untyped-def]
    """The fonts Chromium drew an element's text with (DevTools' "rendered fonts")."""
    cdp = page.context.new_cdp_session(page)
    cdp.send("DOM.enable")
    cdp.send("CSS.enable")
    root = cdp.send("DOM.getDocument")["root"]["nodeId"]
    node = cdp.send("DOM.querySelector", {"nodeId": root, "selector": selector})["nodeId"]
    return {f["familyName"] for f in cdp.send("CSS.getPlatformFontsForNode", {"nodeId": node})["fonts"]}


def test_chinese_words_are_drawn_with_a_chinese_font_on_a_machine_that_has_none(server: str, database_url: str) -> None:
    # This machine's Chromium has no Chinese font (CI installs none): every Chinese word must come from the font the
    # backend serves, also the words the sign-in page drew while that font was still on its way.
    font = httpx.get(f"{server}/assets/fonts/bikeguard-cjk-sc.otf")
    assert font.status_code == 200 and font.headers["content-type"] == "font/otf" and len(font.content) > 10**6
    clerk = _clerk(database_url)
    with browser_page(1300, 500) as page:
        page.goto(f"{server}/counter?lang=zh")
        _sign_in(page, clerk, factories.PASSWORD)
        page.wait_for_selector("#register-form")
        page.evaluate("document.fonts.ready.then(() => true)")
        for selector in (".bg-brand", ".bg-lang.current", ".bg-top h1", "legend"):
            assert "Noto Sans CJK SC" in _fonts_of(page, selector), selector
        page.screenshot(path=str(screenshot_path("counter-start-zh.png")))
        assert console_errors(page) == []


@pytest.mark.parametrize(
    ("lang", "words"),
    [("en", ("Last seen at Station st-west", "km between stations", "parked")), ("zh", ("最后出现", "公里", "停放"))],
)
def test_owner_sees_where_the_bike_is_and_its_day_on_the_map(
    server: str, database_url: str, database_owner_url: str, lang: str, words: tuple[str, ...]
) -> None:
    clerk = _clerk(database_url)
    with _api_as(server, clerk) as api:
        done = api.post("/api/bikes", json=factories.registration(plate=f"HZ-4100{len(lang)}")).json()
    tag = int(done["bike"]["tag_id"], 16)
    with psycopg.connect(database_owner_url) as conn:
        # Registered two hours ago, as if: bindings are history the application cannot rewrite, the test can.
        conn.execute("ALTER TABLE bike_bindings DISABLE TRIGGER USER")
        conn.execute(
            "UPDATE bike_bindings SET valid_from = valid_from - interval '2 hours' WHERE bike_id = %s",
            (done["bike"]["bike_id"],),
        )
        conn.execute("ALTER TABLE bike_bindings ENABLE TRIGGER USER")
        for i, station_id in enumerate(("st-east", "st-mid", "st-west")):
            factories.station(conn, station_id, 30.270, 120.170 - 0.0115 * i)
        # A ride this past hour: parked 10 min, 5 min west, 4 min on, parked 20 min.
        for station_id, start_min, end_min in (("st-east", 60, 50), ("st-mid", 45, 44), ("st-west", 40, 20)):
            conn.execute(
                "INSERT INTO sightings (first_seen_at, last_seen_at, station_id, tag_id, beacons, peak_rssi_dbm,"
                " antenna, flags, batch_seq) VALUES (now() - make_interval(mins => %s),"
                " now() - make_interval(mins => %s), %s, %s, 3, -60, 0, 0, 1)",
                (start_min, end_min, station_id, tag),
            )
    # The portal shows the day of the owner's own clock: a browser whose day began less than the ride's hour ago would
    # rightly show the ride on the day before.
    with browser_page(1300, 1300, timezone_id=_zone_where_the_past_hour_is_today()) as page:
        page.goto(f"{server}/portal?lang={lang}")
        _first_sign_in(page, done["owner_login"])
        page.wait_for_selector(".bg-bike .bg-where")
        page.click(".bg-bike details[data-key=where] summary")
        page.wait_for_selector(".bg-trip:not(:empty)")
        frame = page.frame_locator("iframe.bg-trail")
        frame.locator(".leaflet-container").wait_for()
        text = page.inner_text(".bg-bike")
        assert all(w in text for w in words), text
        page.wait_for_timeout(500)  # the tiles-free base map and the route settle
        page.screenshot(path=str(screenshot_path(f"owner-where-{lang}.png")))
        assert console_errors(page) == []
        assert raw_keys(page) == []


@pytest.mark.parametrize(
    ("lang", "words"), [("en", ("A bike shared with you", "Last seen")), ("zh", ("与您共享的车辆", "最后出现"))]
)
def test_owner_shares_the_bike_with_a_link_a_family_member_opens(
    server: str, database_url: str, lang: str, words: tuple[str, ...]
) -> None:
    clerk = _clerk(database_url)
    with _api_as(server, clerk) as api:
        done = api.post("/api/bikes", json=factories.registration(plate=f"HZ-4200{len(lang)}")).json()
    with psycopg.connect(database_url) as conn:
        factories.station(conn, "st-gate", 30.27, 120.15)
        conn.execute(
            "INSERT INTO sightings (first_seen_at, last_seen_at, station_id, tag_id, beacons, peak_rssi_dbm, antenna,"
            " flags, batch_seq) VALUES (clock_timestamp(), clock_timestamp(), 'st-gate', %s, 3, -60, 0, 0, 1)",
            (int(done["bike"]["tag_id"], 16),),
        )
    with browser_page(1300, 1100) as page:
        page.goto(f"{server}/portal?lang={lang}")
        _first_sign_in(page, done["owner_login"])
        page.wait_for_selector(".bg-bike")
        page.click(".bg-bike details[data-key=share] summary")
        page.fill(".bg-share-form [name=label]", "Xiao Mei")
        page.click(".bg-share-form button")
        page.wait_for_selector(".bg-share-url")
        page.wait_for_selector(".bg-shares li button")
        assert "Xiao Mei" in page.inner_text(".bg-shares")
        url = page.input_value(".bg-share-url")
        page.screenshot(path=str(screenshot_path(f"owner-share-{lang}.png")))
        assert console_errors(page) == []
        assert raw_keys(page) == []
    with browser_page(900, 1000) as page:  # someone else's browser: no account, no cookie
        page.goto(f"{url}?lang={lang}")
        page.wait_for_selector("#shared-bike")
        page.frame_locator("iframe.bg-trail").locator(".leaflet-container").wait_for()
        text = page.inner_text("#shared-bike")
        assert all(w in page.inner_text("body") for w in words), text
        assert done["owner"]["name"] not in page.content()
        page.screenshot(path=str(screenshot_path(f"shared-bike-{lang}.png")))
        assert console_errors(page) == []
        assert raw_keys(page) == []


def _zone_where_the_past_hour_is_today() -> str:
    """A time zone whose clock is past 01:15 now (one of three, eight and five hours apart, always is)."""
    for zone in ("Asia/Shanghai", "Europe/London", "America/New_York"):
        local = datetime.now(ZoneInfo(zone))
        if local.hour * 60 + local.minute >= 75:
            return zone
    raise AssertionError("no zone past 01:15")
