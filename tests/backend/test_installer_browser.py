"""The installer page in headless Chromium; the pictures taken here are the ones in docs/installer.md."""

from __future__ import annotations

import asyncio
import base64
import re
import secrets
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import psycopg
import pytest
from psycopg.types.json import Jsonb

from backend import selftests
from backend.alarms import store
from backend.alarms.station_watch import offline_stations
from backend.api.app import create_app
from backend.provisioning import password_hash
from bikeguard.demo import town_roads_geojson
from bikeguard.services import Broker, free_port
from firmware_sim.town import Town
from gateway.selftest import Report, StepResult
from gateway.selftest.publisher import started_message, step_message, summary_message
from maps.words import words
from protocol.messages import SelfTestStep, SelfTestSummary, utcnow
from protocol.topics import SELFTEST, station_topic
from tests import factories
from tests.backend.test_ingest import wait_until
from tests.backend.test_pages_browser import _sign_in, server  # noqa: F401 - the fixture
from tests.browser import browser_page, console_errors, raw_keys, require_chromium, screenshot_path
from tests.serving import served


def _town(database_url: str) -> None:
    """A small town: most stations online, one offline (last will), one degraded, one never heard."""
    town = Town.generate(5, stations=8, bikes=10)
    now = utcnow()
    with psycopg.connect(database_url) as conn:
        for i, st in enumerate(town.stations):
            factories.station(conn, st.station_id, st.lat, st.lon)
            conn.execute("UPDATE stations SET name = %s WHERE station_id = %s", (st.name, st.station_id))
            if i == len(town.stations) - 1:
                continue  # never heard from
            state = "offline" if i == 1 else "online"
            conn.execute(
                "INSERT INTO station_status (station_id, state, reported_at, received_at, payload)"
                " VALUES (%s, %s, %s, %s, %s)",
                (
                    st.station_id,
                    state,
                    now,
                    now - timedelta(seconds=3 + i),
                    Jsonb(
                        {
                            "station_id": st.station_id,
                            "state": state,
                            "spool_depth": [0, 812, 3, 0, 0, 15, 0][i],
                            "spool_dropped": [0, 0, 0, 0, 0, 2, 0][i],
                            "noise_floor_dbm": -98 + i,
                            "firmware": "1.2",
                        }
                    ),
                ),
            )
        # Steady traffic of 40 an hour around this hour on each of the last days.
        usual = [
            (now - timedelta(days=d, minutes=1.5 * k), town.stations[2].station_id, 1000 + k)
            for d in range(1, 8)
            for k in range(-40, 80)
        ]
        usual += [
            (now - timedelta(minutes=m), st.station_id, m)
            for st in town.stations[:1] + town.stations[3:]
            for m in range(1, 30)
        ]
        usual += [(now - timedelta(minutes=m), town.stations[2].station_id, m) for m in range(1, 4)]
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO sightings (first_seen_at, last_seen_at, station_id, tag_id, beacons, peak_rssi_dbm,"
                " antenna, flags, batch_seq) VALUES (%s, %s, %s, %s, 1, -60, 0, 0, 1)",
                [(at, at, sid, tag) for at, sid, tag in usual],
            )
        # The backend misses batches of two stations: one offline with batches still to come (asked for), one whose
        # full spool dropped two (lost) after sending others that had gone missing (recovered).
        conn.execute(
            "INSERT INTO batch_gaps (station_id, first_seq, last_seq, noticed_at, requests, last_request_at)"
            " VALUES (%s, 120, 122, %s, 2, %s)",
            (town.stations[1].station_id, now - timedelta(minutes=3), now - timedelta(minutes=2)),
        )
        conn.execute(
            "INSERT INTO batch_gaps (station_id, first_seq, last_seq, noticed_at, state, requests, last_request_at,"
            " closed_at, reason) VALUES (%s, 40, 41, %s, 'lost', 1, %s, %s, 'dropped')",
            (town.stations[5].station_id, now - timedelta(hours=2), now - timedelta(hours=2), now - timedelta(hours=2)),
        )
        conn.execute(
            "INSERT INTO batch_seq_marks (station_id, checked_through, batches_recovered) VALUES (%s, 90, 5)",
            (town.stations[5].station_id,),
        )
        roads = town_roads_geojson(town)
        for f in roads["features"]:
            conn.execute(
                "INSERT INTO roads (name, geometry) VALUES (%s, %s)",
                ((f.get("properties") or {}).get("name"), Jsonb(f["geometry"])),
            )


def test_installer_sees_station_health_on_map_and_table_then_coverage(
    server: str,  # noqa: F811
    database_url: str,
    database_owner_url: str,
) -> None:
    _town(database_url)
    # The history was written after the backend's start: counted as its next refresh would count it.
    factories.count_hourly_passages(database_owner_url)
    with psycopg.connect(database_url) as conn:
        installer = factories.account(conn, "installer", "chen.jie")
        offline, dropping = (r[0] for r in conn.execute("SELECT station_id FROM batch_gaps ORDER BY state DESC"))
    with browser_page(1400, 1100) as page:
        page.goto(f"{server}/installer?lang=en")
        _sign_in(page, installer, factories.PASSWORD)
        page.wait_for_selector("#station-table")
        rows = page.locator("#station-table tbody tr")
        assert rows.count() == 8
        health = [page.inner_text(f"#station-table tbody tr:nth-child({i + 1}) .bg-health") for i in range(8)]
        assert sorted(set(health)) == ["degraded", "offline", "online"]
        assert page.inner_text(f"#station-table tr[data-station='{offline}'] .bg-batches") == "3 / 0 / 0"
        assert "3 batches missing since" in page.inner_text(f"#station-table tr[data-station='{offline}']")
        assert page.inner_text(f"#station-table tr[data-station='{dropping}'] .bg-batches") == "0 / 5 / 2"
        frame = page.frame_locator("#station-map")
        frame.locator("path.leaflet-interactive").first.wait_for()
        assert frame.locator("path.leaflet-interactive[fill='#ca8a04']").count() == 1  # the degraded one
        page.wait_for_timeout(300)
        page.screenshot(path=str(screenshot_path("installer.png")))
        page.click(".bg-tab[data-tab='coverage']")
        page.frame_locator("#coverage-map").locator(".bg-coverage-summary").wait_for()
        assert "Road covered" in page.frame_locator("#coverage-map").locator(".bg-coverage-summary").inner_text()
        # Beside each station: which one, and how much road it hears (not a passage count, which was always 0).
        labels = page.frame_locator("#coverage-map").locator(".bg-station-label").all_inner_texts()
        assert len(labels) == 8 and all(re.fullmatch(r"st-\d{3} · \d+ m", x) for x in labels), labels
        assert all(int(x.split("· ")[1][:-2]) > 100 for x in labels), labels  # each at an intersection
        assert "hears" in page.inner_text("#tab-coverage")
        page.screenshot(path=str(screenshot_path("installer-coverage.png")))
        page.click(".bg-lang[data-lang='zh']")
        page.wait_for_selector("#station-table")
        assert "基站与状态" in page.inner_text(".bg-tabs")
        assert console_errors(page) == []
        assert raw_keys(page) == []


def test_installer_acknowledges_and_clears_a_station_offline_alarm(server: str, database_url: str) -> None:  # noqa: F811
    _town(database_url)
    with psycopg.connect(database_url) as conn:
        installer = factories.account(conn, "installer", "wang.lei")
        # The station whose gateway sent its last will is in service: it raises the alarm.
        dark = conn.execute(
            "SELECT station_id, name FROM station_status JOIN stations USING (station_id) WHERE state = 'offline'"
        ).fetchone()
        conn.execute("UPDATE stations SET lifecycle = 'active' WHERE station_id = %s", (dark[0],))

    async def watch() -> None:
        async with await psycopg.AsyncConnection.connect(database_url) as conn:
            await store.sync_station_offline(conn, await offline_stations(conn, utcnow(), utcnow()))

    asyncio.run(watch())
    with browser_page(1400, 1100) as page:
        page.goto(f"{server}/installer?lang=en")
        _sign_in(page, installer, factories.PASSWORD)
        page.wait_for_selector("#station-alarms")
        item = page.locator(".bg-station-alarm")
        assert item.count() == 1 and dark[1] in item.inner_text() and "offline" in item.inner_text()
        page.click("[data-alarm-act='acknowledge']")
        page.wait_for_selector(".bg-station-alarm.acknowledged")
        assert "acknowledged by Installer wang.lei" in page.inner_text(".bg-station-alarm")
        page.screenshot(path=str(screenshot_path("installer-alarm.png")))
        page.click("[data-alarm-act='clear']")
        page.wait_for_selector("#station-table")
        page.wait_for_selector("#station-alarms", state="detached")  # no wait_for_function: the CSP forbids eval
        assert console_errors(page) == []
        assert raw_keys(page) == []
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT state, cleared_by FROM alarms WHERE kind = 'station_offline'").fetchall() == [
            ("cleared", "Installer wang.lei")
        ]


def _shanghai(at: datetime) -> str:
    """A moment as Chromium words it for zh-CN in Asia/Shanghai (toLocaleString, 24-hour clock)."""
    local = at.astimezone(ZoneInfo("Asia/Shanghai"))
    return f"{local.year}/{local.month}/{local.day} {local:%H:%M:%S}"


def test_installer_in_shanghai_reads_station_times_in_local_time_and_chinese(server: str, database_url: str) -> None:  # noqa: F811
    _town(database_url)
    with psycopg.connect(database_url) as conn:
        installer = factories.account(conn, "installer", "li.na")
        dark = conn.execute("SELECT station_id, received_at FROM station_status WHERE state = 'offline'").fetchone()
        conn.execute("UPDATE stations SET lifecycle = 'active' WHERE station_id = %s", (dark[0],))
        noticed = conn.execute("SELECT noticed_at FROM batch_gaps WHERE station_id = %s", (dark[0],)).fetchone()[0]

    async def watch() -> None:
        async with await psycopg.AsyncConnection.connect(database_url) as conn:
            await store.sync_station_offline(conn, await offline_stations(conn, utcnow(), utcnow()))

    asyncio.run(watch())
    with psycopg.connect(database_url) as conn:
        first_seen = conn.execute("SELECT first_seen_at FROM alarms WHERE kind = 'station_offline'").fetchone()[0]
    with browser_page(1400, 1100) as page:
        page.context.new_cdp_session(page).send("Emulation.setTimezoneOverride", {"timezoneId": "Asia/Shanghai"})
        page.goto(f"{server}/installer?lang=zh")
        _sign_in(page, installer, factories.PASSWORD)
        page.wait_for_selector("#station-table")
        row = page.locator(f"#station-table tr[data-station='{dark[0]}']")
        assert _shanghai(dark[1]) in row.inner_text()
        assert row.locator(".bg-reason[data-reason='batches_missing']").inner_text() == (
            f"自 {_shanghai(noticed)} 起缺少 3 个批次：已请求网关重新发送"
        )
        assert (
            row.locator(".bg-reason[data-reason='offline_status']").inner_text()
            == "最后一次状态为离线（网关断开了连接）"
        )
        assert f"最后一次收到 {_shanghai(first_seen)}" in page.inner_text(".bg-station-alarm")
        assert "UTC" not in page.inner_text("main")
        page.screenshot(path=str(screenshot_path("installer-zh.png")))
        assert console_errors(page) == []
        assert raw_keys(page) == []


def _password_matches(stored: str, password: str) -> bool:
    """Whether `password` is the one behind a Mosquitto-style hash ($7$iterations$salt$digest)."""
    _, _, iterations, salt, _ = stored.split("$")
    return password_hash(password, base64.b64decode(salt), int(iterations)) == stored


def _register_on_the_map(page, station_id: str, name: str) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """Open the form, click the station map to place the station, name it and register it."""
    page.click("#register-details summary")
    page.fill("#reg-id", station_id)
    page.frame_locator("#station-map").locator(".leaflet-container").click(position={"x": 160, "y": 120})
    page.frame_locator("#station-map").locator(".bg-new-station").wait_for()  # the new station's pin
    lat, lon = float(page.input_value("#reg-lat")), float(page.input_value("#reg-lon"))
    page.fill("#reg-name", name)
    page.click("#register-submit")
    return lat, lon


def test_installer_registers_a_station_on_the_map_marks_it_installed_and_issues_its_password(
    server: str,  # noqa: F811
    database_url: str,
) -> None:
    _town(database_url)
    with psycopg.connect(database_url) as conn:
        installer = factories.account(conn, "installer", "zhou.qiang")
        lat_min, lat_max, lon_min, lon_max = conn.execute(
            "SELECT min(lat), max(lat), min(lon), max(lon) FROM stations"
        ).fetchone()
    with browser_page(1400, 1100) as page:
        page.context.grant_permissions(["clipboard-read", "clipboard-write"])
        page.goto(f"{server}/installer?lang=en")
        _sign_in(page, installer, factories.PASSWORD)
        page.frame_locator("#station-map").locator("path.leaflet-interactive").first.wait_for()
        page.click("#register-details summary")
        page.click("#register-submit")  # nothing filled in: each field says what it needs
        assert page.inner_text('.bg-msg[data-for="reg-name"]') == "Give the station a name"
        assert "click the map" in page.inner_text('.bg-msg[data-for="reg-lat"]')
        page.fill("#reg-id", "St 9")
        page.click("#register-submit")
        assert "lower-case letters" in page.inner_text('.bg-msg[data-for="reg-id"]')
        page.click("#register-details summary")  # closed again: _register_on_the_map opens it

        lat, lon = _register_on_the_map(page, "st-101", "Jiefang Rd / Wensan St")
        page.wait_for_selector("#register-done:not([hidden])")
        assert page.inner_text("#register-done") == (
            "✓ Station st-101 is registered as planned. Next: issue its MQTT password, mount it, then mark it"
            " installed and run its self-test."
        )
        row = page.locator("#station-table tr[data-station='st-101']")
        assert row.locator(".bg-lifecycle").inner_text() == "planned"
        with psycopg.connect(database_url) as conn:
            stored = conn.execute(
                "SELECT name, lat, lon, lifecycle FROM stations WHERE station_id = 'st-101'"
            ).fetchone()
        assert stored == ("Jiefang Rd / Wensan St", lat, lon, "planned")
        assert lat_min - 0.01 < lat < lat_max + 0.01 and lon_min - 0.01 < lon < lon_max + 0.01  # where it was clicked
        page.screenshot(path=str(screenshot_path("installer-registered.png")))

        row.locator("[data-inst-act='install']").click()
        page.wait_for_selector("#station-table tr[data-station='st-101'] .bg-inst-note.ok")
        assert row.locator(".bg-lifecycle").inner_text() == "installed"
        assert row.locator(".bg-inst-note").inner_text() == "✓ marked installed: run its self-test"
        assert row.locator("[data-inst-act='install']").count() == 0

        row.locator("[data-inst-act='credentials']").click()
        assert page.inner_text("#cred-title") == "MQTT password for st-101"
        assert "replaces the station's current one" in page.inner_text("#cred-confirm")
        page.click("#cred-issue")
        page.wait_for_selector("#cred-shown:not([hidden])")
        password = page.inner_text("#cred-password")
        assert page.inner_text("#cred-username") == "st-101" and len(password) >= 20
        assert "Shown only once." in page.inner_text(".bg-inst-once")
        assert "cannot be shown again" in page.inner_text(".bg-inst-once")
        page.click("[data-copy='cred-password']")
        page.wait_for_selector("[data-copy='cred-password']:has-text('Copied')")
        assert page.evaluate("navigator.clipboard.readText()") == password
        page.screenshot(path=str(screenshot_path("installer-credentials.png")))
        with psycopg.connect(database_url) as conn:
            hashes = conn.execute(
                "SELECT password_hash, issued_by FROM station_credentials WHERE station_id = 'st-101'"
            ).fetchall()
        assert len(hashes) == 1 and _password_matches(hashes[0][0], password)
        assert hashes[0][1] == "installer:zhou.qiang"
        page.click("#cred-close")
        assert not page.is_visible("#credentials-dialog")
        assert page.inner_text("#cred-password") == "" and password not in page.content()  # gone from the page
        assert console_errors(page) == []
        assert raw_keys(page) == []


def test_installer_on_a_phone_registers_and_issues_a_password_in_chinese(server: str, database_url: str) -> None:  # noqa: F811
    _town(database_url)
    with psycopg.connect(database_url) as conn:
        installer = factories.account(conn, "installer", "zhao.min")
    with browser_page(390, 844) as page:
        page.goto(f"{server}/installer?lang=zh")
        _sign_in(page, installer, factories.PASSWORD)
        page.frame_locator("#station-map").locator("path.leaflet-interactive").first.wait_for()
        _register_on_the_map(page, "st-001", "重复编号")  # taken: the server says so, in Chinese
        page.wait_for_selector('.bg-msg.bad[data-for="reg-id"]')
        assert page.inner_text('.bg-msg[data-for="reg-id"]') == "基站 st-001 已登记：请换一个编号"
        _fits_a_phone(page)
        page.screenshot(path=str(screenshot_path("installer-phone-register-zh.png")), full_page=True)
        page.fill("#reg-id", "st-102")
        page.fill("#reg-name", "解放路 / 文三路")
        page.click("#register-submit")
        page.wait_for_selector("#register-done:not([hidden])")
        assert page.inner_text("#register-done").startswith("✓ 基站 st-102 已登记为规划中。")
        row = page.locator("#station-table tr[data-station='st-102']")
        assert row.locator(".bg-lifecycle").inner_text() == "规划中"
        row.locator("[data-inst-act='install']").click()
        page.wait_for_selector("#station-table tr[data-station='st-102'] .bg-inst-note.ok")
        assert row.locator(".bg-lifecycle").inner_text() == "已安装"
        row.locator("[data-inst-act='credentials']").click()
        assert page.inner_text("#cred-title") == "st-102 的 MQTT 密码"
        page.click("#cred-issue")
        page.wait_for_selector("#cred-shown:not([hidden])")
        assert page.inner_text(".bg-inst-once").startswith("仅显示一次。")
        assert page.inner_text("[data-copy='cred-password']") == "复制"
        _fits_a_phone(page)
        page.screenshot(path=str(screenshot_path("installer-phone-credentials-zh.png")))
        assert console_errors(page) == []
        assert raw_keys(page) == []


# The self-test view: steps published into the broker appear while the page is open.


@pytest.fixture
def server_with_ingest(database_url: str, broker: Broker, topic_prefix: str) -> Iterator[str]:
    """The backend with its MQTT ingest on the test broker, served by uvicorn on a free port."""
    require_chromium()
    port = free_port()
    settings = factories.settings(
        database_url,
        http_port=port,
        mqtt_url=broker.url,
        mqtt_client_id=f"ingest-{topic_prefix}",
        mqtt_shared_group=f"ingest-{topic_prefix}" if broker.supports_shared_subscriptions else None,
        live_keepalive_s=0.5,
    )
    with served(create_app(settings), port) as url:
        yield url


SID = "st-008"
NOISE_ADVICE = (
    "interference: move the antenna away from other transmitters and switching electronics on the pole (the LTE "
    "router and its antenna, LED street-light drivers, the traffic-signal controller, power supplies), keep its coax "
    "away from mains cables, check that connectors are tight and the cable shield is grounded; then run the "
    "self-test again"
)
WEAK_ADVICE = (
    "weak signal: -81 dBm at arm's length is below -75 dBm, which means a bad antenna connection: check the coax "
    "connector on antenna port 0, the cable for kinks or water, and the surge arrester"
)


def _run(results: list[StepResult]) -> list[SelfTestStep | SelfTestSummary]:
    """What a gateway publishes for these results: each step as the gateway words it, then the summary."""
    run_id, started = secrets.token_hex(8), utcnow()
    messages: list[SelfTestStep | SelfTestSummary] = [
        step_message(SID, run_id, i + 1, r, started + timedelta(seconds=2 * i)) for i, r in enumerate(results)
    ]
    report = Report(SID, started, started + timedelta(seconds=2 * len(results)), results, run_id)
    return [*messages, summary_message(report)]


def _first_visit() -> list[StepResult]:
    """The first visit: interference on the pole, a weak test tag, and no --backend."""
    return [
        StepResult("serial", True, "/dev/ttyUSB0 open at 115200 baud 8N1"),
        StepResult(
            "module",
            True,
            "firmware 1.2, up 0 h 03 min (first status after 4.1 s; 3 frames, rejected: none)",
            elapsed_s=4.1,
        ),
        StepResult("noise", False, "-62 dBm, above the -85 dBm limit", NOISE_ADVICE, {"noise_floor_dbm": -62}),
        StepResult(
            "test_tag",
            True,
            "0A1B2C3D at -81 dBm on antenna 0 after 3.1 s (2 beacons)",
            WEAK_ADVICE,
            {"rssi_dbm": -81},
            elapsed_s=3.1,
        ),
        StepResult("clock", True, "NTP synchronised (chrony, offset +0.002 s); hot list issued 2 h 41 min earlier"),
        StepResult(
            "broker",
            True,
            "connected to broker.example:1883 as user 'st-008' in 44 ms; hot list version 118, 37 tags (0.5 kB)",
        ),
        StepResult(
            "heartbeat", True, "online status on bikeguard/v1/stations/st-008/status read back from the broker in 39 ms"
        ),
        StepResult("backend", None, "skipped: no --backend given"),
    ]


def _after_the_fix() -> list[StepResult]:
    """Back on the pole with the antenna moved and the connector redone: every step passes."""
    return [
        StepResult("serial", True, "/dev/ttyUSB0 open at 115200 baud 8N1"),
        StepResult(
            "module",
            True,
            "firmware 1.2, up 0 h 41 min (first status after 6.2 s; 4 frames, rejected: none)",
            elapsed_s=6.2,
        ),
        StepResult("noise", True, "-97 dBm (limit -85 dBm)", data={"noise_floor_dbm": -97}),
        StepResult(
            "test_tag",
            True,
            "0A1B2C3D at -58 dBm on antenna 1 after 2.4 s (1 beacon)",
            data={"rssi_dbm": -58},
            elapsed_s=2.4,
        ),
        StepResult("clock", True, "NTP synchronised (chrony, offset +0.001 s); the backend's clock agrees to 0.3 s"),
        StepResult(
            "broker",
            True,
            "connected to broker.example:1883 as user 'st-008' in 41 ms; hot list version 118, 37 tags (0.5 kB)",
        ),
        StepResult(
            "heartbeat", True, "online status on bikeguard/v1/stations/st-008/status read back from the broker in 38 ms"
        ),
        StepResult(
            "backend",
            True,
            "the backend shows st-008 online with our heartbeat (received 0.2 s after we sent it, by its clock)",
            elapsed_s=1.2,
        ),
    ]


def _lifecycle(database_url: str) -> str:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT lifecycle FROM stations WHERE station_id = %s", (SID,)).fetchone()
    assert row is not None
    return str(row[0])


def test_installer_watches_a_self_test_step_by_step_and_the_station_become_commissioned(
    server_with_ingest: str,
    database_url: str,
    publish: Callable[[str, bytes], None],
) -> None:
    _town(database_url)
    with psycopg.connect(database_url) as conn:
        installer = factories.account(conn, "installer", "chen.jie")
        offline, dropping = (r[0] for r in conn.execute("SELECT station_id FROM batch_gaps ORDER BY state DESC"))
        conn.execute("UPDATE stations SET lifecycle = 'active' WHERE station_id <> %s", (SID,))
        conn.execute("UPDATE stations SET lifecycle = 'installed' WHERE station_id = %s", (SID,))
    topic = station_topic(SID, SELFTEST)
    first = _run(_first_visit())
    for m in first:
        publish(topic, m.to_json())
    wait_until(lambda: _count(database_url, first[0].run_id) == 8)
    second = _run(_after_the_fix())

    with browser_page(1400, 1100) as page:
        page.goto(f"{server_with_ingest}/installer?lang=en")
        _sign_in(page, installer, factories.PASSWORD)
        page.wait_for_selector("#station-table")
        page.click(f"#station-table tr[data-station='{SID}'] .bg-selftest-link")
        page.wait_for_selector("#selftest-live.on")
        page.wait_for_selector(f".bg-run[data-run='{first[0].run_id}'] .bg-step-fail")
        assert page.inner_text("#selftest-lifecycle") == "installed"
        assert page.inner_text(".bg-run .bg-run-badge") == "FAILED"
        noise = page.locator(".bg-run .bg-step[data-seq='3']")
        assert "noise floor -62 dBm" in noise.inner_text() and "What to check: interference" in noise.inner_text()
        assert "test tag -81 dBm" in page.inner_text(".bg-run .bg-step[data-seq='4']")
        assert "The station stays installed" in page.inner_text(".bg-run .bg-banner")

        for i, m in enumerate(second[:-1]):  # the steps, one at a time, while the page is open
            publish(topic, m.to_json())
            page.wait_for_selector(
                f".bg-run[data-run='{second[0].run_id}'] .bg-step[data-seq='{i + 1}'][data-status='pass']"
            )
            if i == 3:
                assert page.inner_text(".bg-run .bg-run-badge") == "RUNNING…"
                assert page.inner_text(".bg-run .bg-step-next") == "5. Clock is in sync\nrunning…"
                assert page.locator(".bg-run .bg-step-wait").count() == 4
                assert page.inner_text(".bg-run-counts") == "4 of 8 steps"
                page.screenshot(path=str(screenshot_path("installer-selftest-running.png")))
        assert _lifecycle(database_url) == "installed"  # no summary yet
        publish(topic, second[-1].to_json())
        page.wait_for_selector("#selftest-lifecycle.bg-lc-commissioned")
        page.wait_for_selector(".bg-run .bg-run-commissioned")
        assert _lifecycle(database_url) == "commissioned"
        assert page.inner_text(".bg-run .bg-run-badge") == "PASSED"
        assert page.inner_text(".bg-run-counts") == "8 passed"
        assert page.inner_text(".bg-run .bg-run-commissioned") == (
            "✓ The station is commissioned: this self-test passed (installed → commissioned)."
        )
        assert page.text_content(f"#station-table tr[data-station='{SID}'] .bg-lifecycle") == "commissioned"
        assert page.locator(".bg-runs-earlier details").count() == 1
        page.click(".bg-runs-earlier summary")
        page.wait_for_timeout(1600)  # the arrival highlights fade
        page.screenshot(path=str(screenshot_path("installer-selftest.png")), full_page=True)

        page.goto(f"{server_with_ingest}/installer?lang=zh&station={SID}#selftest")
        page.wait_for_selector("#selftest-live.on")
        page.wait_for_selector(".bg-run .bg-step[data-seq='8']")
        assert page.inner_text(".bg-tab[data-tab='selftest']") == "自检"
        assert page.inner_text(".bg-run .bg-step[data-seq='4'] b") == "4. 读到测试标签"
        assert page.inner_text("#selftest-lifecycle") == "已调试"

        with psycopg.connect(database_url) as conn:  # signed out on another device: the stream ends too
            conn.execute("UPDATE sessions SET revoked_at = now()")
        page.wait_for_selector("#selftest-live a[href='/login?next=%2Finstaller%23selftest']")
        assert page.inner_text("#selftest-live") == "已退出登录：请重新登录"
        assert console_errors(page) == []
        assert raw_keys(page) == []


def _count(database_url: str, run_id: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT count(*) FROM station_selftest_steps WHERE run_id = %s", (run_id,)).fetchone()
    return int(row[0]) if row else 0


# A phone at the pole: 390 px wide, every tab.

# Elements whose right edge passes the viewport (a map's own tiles and panes are clipped by the map, not the page).
_OVERFLOW = """() => {
  const width = document.documentElement.clientWidth;
  const out = [];
  for (const el of document.querySelectorAll("body *")) {
    const box = el.getBoundingClientRect();
    if (box.width === 0 || box.height === 0) continue;
    if (box.right > width + 0.5) out.push(el.tagName.toLowerCase() + (el.id ? "#" + el.id : "") +
      (el.className && typeof el.className === "string" ? "." + el.className.trim().split(/\\s+/).join(".") : "") +
      " right=" + Math.round(box.right));
  }
  return {scroll: document.documentElement.scrollWidth, out: out.slice(0, 20)};
}"""


def _fits_a_phone(page) -> None:  # type: ignore[no-untyped-def]
    seen = page.evaluate(_OVERFLOW)
    assert seen["out"] == [] and seen["scroll"] <= 390, seen


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_installer_page_fits_a_390_px_phone_on_every_tab(server: str, database_url: str, lang: str) -> None:  # noqa: F811
    _town(database_url)
    with psycopg.connect(database_url) as conn:
        installer = factories.account(conn, "installer", f"phone.{lang}")
        conn.execute("UPDATE stations SET lifecycle = 'active'")
        first = conn.execute("SELECT min(station_id) FROM stations").fetchone()[0]
        with conn.transaction():  # a run with long advice, as the ingest stores it, for the self-test tab
            selftests.write(conn, [m.model_copy(update={"station_id": first}) for m in _run(_first_visit())])
    with browser_page(390, 844) as page:
        page.goto(f"{server}/installer?lang={lang}")
        _sign_in(page, installer, factories.PASSWORD)
        page.wait_for_selector("#station-table")
        page.frame_locator("#station-map").locator("path.leaflet-interactive").first.wait_for()
        page.wait_for_timeout(300)
        _fits_a_phone(page)
        page.screenshot(path=str(screenshot_path(f"installer-phone-stations-{lang}.png")), full_page=True)
        page.click(".bg-tab[data-tab='selftest']")
        page.wait_for_selector("#selftest-live.on")
        page.wait_for_selector(".bg-run .bg-step-advice")
        _fits_a_phone(page)
        page.screenshot(path=str(screenshot_path(f"installer-phone-selftest-{lang}.png")), full_page=True)
        page.click(".bg-tab[data-tab='coverage']")
        page.frame_locator("#coverage-map").locator(".bg-coverage-summary").wait_for()
        page.wait_for_timeout(300)
        _fits_a_phone(page)
        page.screenshot(path=str(screenshot_path(f"installer-phone-coverage-{lang}.png")), full_page=True)
        # The maps inside the page speak its language too: the coverage summary and the stations' state labels.
        w = words(lang)
        summary = page.frame_locator("#coverage-map").locator(".bg-coverage-summary").inner_text()
        assert w["cov_road_covered"] in summary and w["cov_key_uncovered"] in summary
        assert console_errors(page) == []
        assert raw_keys(page) == []


def test_installer_sees_each_self_test_step_as_it_starts_waiting_for_the_test_tag(
    server_with_ingest: str,
    database_url: str,
    publish: Callable[[str, bytes], None],
) -> None:
    _town(database_url)
    with psycopg.connect(database_url) as conn:
        installer = factories.account(conn, "installer", "sun.li")
        conn.execute("UPDATE stations SET lifecycle = 'installed' WHERE station_id = %s", (SID,))
    topic, run_id, started = station_topic(SID, SELFTEST), secrets.token_hex(8), utcnow()
    results = _after_the_fix()

    def begin(seq: int, wait_s: float | None = None) -> None:
        """What the gateway publishes as step `seq` begins."""
        at = started + timedelta(seconds=2 * seq)
        publish(topic, started_message(SID, run_id, seq, results[seq - 1].name, at, wait_s).to_json())

    def finish(seq: int) -> None:
        at = started + timedelta(seconds=2 * seq + 1)
        publish(topic, step_message(SID, run_id, seq, results[seq - 1], at).to_json())

    with browser_page(1400, 1100) as page:
        page.goto(f"{server_with_ingest}/installer?lang=en")
        _sign_in(page, installer, factories.PASSWORD)
        page.wait_for_selector("#station-table")
        page.goto(f"{server_with_ingest}/installer?lang=en&station={SID}#selftest")
        page.wait_for_selector("#selftest-live.on")
        page.wait_for_selector("#selftest-empty:not([hidden])")
        assert page.inner_text("#selftest-empty").startswith("No self-test from this station yet.")
        begin(1)  # the serial port is being opened: the run shows at once, not after its first result
        page.wait_for_selector(f".bg-run[data-run='{run_id}'] .bg-step-next[data-step='serial']")
        assert page.is_hidden("#selftest-empty")
        assert page.inner_text(".bg-run .bg-run-badge") == "RUNNING…"
        assert page.inner_text(".bg-run .bg-step-next") == "1. Serial port opens\nrunning…"
        for seq in (1, 2, 3):
            finish(seq)
            begin(seq + 1, 30.0 if seq == 3 else None)
        page.wait_for_selector(".bg-run .bg-step[data-seq='3'][data-status='pass']")
        page.wait_for_selector(".bg-run .bg-step-next[data-step='test_tag']")
        assert page.locator(".bg-run .bg-step[data-status='pass']").count() == 3
        assert page.inner_text(".bg-run .bg-step-next") == (
            "4. Test tag is read\nwaiting for the test tag… hold it at arm's length from the antenna (up to 30 s)"
        )
        page.wait_for_timeout(1500)  # the arrival highlights fade
        page.screenshot(path=str(screenshot_path("installer-selftest-waiting-tag.png")))

        page.goto(f"{server_with_ingest}/installer?lang=zh&station={SID}#selftest")  # opened again mid-step
        page.wait_for_selector("#selftest-live.on")
        page.wait_for_selector(".bg-run .bg-step-next[data-step='test_tag']")
        assert page.inner_text(".bg-run .bg-step-next") == "4. 读到测试标签\n等待测试标签……请将其举在距天线一臂远处"
        begin(4, 30.0)  # word from the gateway again: how long it waits
        page.wait_for_selector(".bg-run .bg-step-next:has-text('最多 30 秒')")
        finish(4)
        begin(5)
        page.wait_for_selector(".bg-run .bg-step-next[data-step='clock']")
        assert page.inner_text(".bg-run .bg-step-next") == "5. 时钟同步\n进行中…"
        assert console_errors(page) == []
        assert raw_keys(page) == []
