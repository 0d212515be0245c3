"""Issue 11, finding 6: police seeing where bikes that are not stolen are, without a case number.

The attack: a low-battery or tamper flag (a forged one costs a radio and a chip id) put a bike that is not
stolen, with its plate, at a station on the police alarm list and live feed, and a cloned-chip alarm carried the
chip's whole trail. Now, for a bike not reported stolen, police see the alarm's kind and station only; its plate,
chip and trail need a case number, and opening them is audited.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import orjson
import psycopg
import pytest

from backend.api.app import create_app
from bikeguard.services import free_port
from protocol import topics
from protocol.frames import TagFlags
from protocol.messages import utcnow
from tests import factories
from tests.backend.conftest import Caller, Staff
from tests.browser import browser_page, console_errors, require_chromium
from tests.serving import served

CASE = "HZ-2026-0906"
PERSONAL = ("plate", "tag_id")


def _wait_for(check: Callable[[], Any], timeout_s: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def _alarm_of(database_url: str, kind: str, tag_hex: str) -> int | None:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT alarm_id FROM alarms WHERE kind = %s AND tag_id = %s", (kind, int(tag_hex, 16))
        ).fetchone()
    return None if row is None else int(row[0])


@pytest.fixture
def sent(staff: Staff, ingest: Any, publish: Callable[[str, bytes], None], topic_prefix: str) -> dict[str, Any]:
    """Two bikes that are not stolen: one whose chip reports a low battery (its owner's bike at home), one whose
    chip is heard at two stations 10 km apart 10 s apart (a cloned-chip alarm, with a trail); and a stolen one whose
    chip reports a low battery."""
    near, far = f"{topic_prefix}-near", f"{topic_prefix}-far"
    with psycopg.connect(staff.database_url) as conn:
        factories.station(conn, near, 30.27, 120.15)
        factories.station(conn, far, 30.36, 120.15)
    quiet, cloned, stolen = (staff.register() for _ in range(3))
    theft = staff.clerk.post(f"/api/bikes/{stolen['bike']['bike_id']}/theft", json={})
    assert theft.status_code == 201, theft.text
    now = utcnow()
    low = int(TagFlags.LOW_BATTERY)
    for seq, (station, tags, at, flags) in enumerate(
        (
            (near, [quiet["bike"]["tag_id"], stolen["bike"]["tag_id"]], now, low),
            (near, [cloned["bike"]["tag_id"]], now - timedelta(seconds=10), 0),
            (far, [cloned["bike"]["tag_id"]], now, 0),
        ),
        start=1,
    ):
        batch = factories.batch(station, seq, [int(t, 16) for t in tags], at=at, flags=flags)
        publish(topics.station_topic(station, "sightings"), batch.to_json())
    ids = {
        "low_battery": _wait_for(lambda: _alarm_of(staff.database_url, "low_battery", quiet["bike"]["tag_id"])),
        "chip_cloned": _wait_for(lambda: _alarm_of(staff.database_url, "chip_cloned", cloned["bike"]["tag_id"])),
        "stolen_low_battery": _wait_for(lambda: _alarm_of(staff.database_url, "low_battery", stolen["bike"]["tag_id"])),
    }
    return {"ids": ids, "quiet": quiet, "cloned": cloned, "stolen": stolen, "near": near, "far": far}


def _listed(caller: Caller, alarm_id: int) -> dict[str, Any]:
    r = caller.get("/api/alarms")
    assert r.status_code == 200, r.text
    (alarm,) = [a for a in r.json() if a["id"] == alarm_id]
    return alarm  # type: ignore[no-any-return]


def test_police_see_only_kind_and_station_of_a_bike_that_is_not_stolen(staff: Staff, sent: dict[str, Any]) -> None:
    for kind, bike, station in (("low_battery", "quiet", "near"), ("chip_cloned", "cloned", "far")):
        alarm_id = sent["ids"][kind]
        for alarm in (_listed(staff.police, alarm_id), staff.police.get(f"/api/alarms/{alarm_id}").json()):
            assert alarm["kind"] == kind and alarm["station_id"] == sent[station]
            assert {k: alarm[k] for k in PERSONAL} == {"plate": None, "tag_id": None}, alarm
            assert alarm["trail"] == [] and alarm["next_stations"] == []
            assert alarm["details_hidden"] is True
            assert sent[bike]["bike"]["plate"] not in str(alarm) and sent[bike]["bike"]["tag_id"] not in str(alarm)
    # Taking the alarm answers with what police may see of it, no more.
    taken = staff.police.post(f"/api/alarms/{sent['ids']['low_battery']}/acknowledge").json()
    assert taken["state"] == "acknowledged" and taken["plate"] is None and taken["tag_id"] is None
    # Nor does the live map page carry it.
    page = staff.police.get("/")
    assert page.status_code == 200
    for bike in ("quiet", "cloned"):
        assert sent[bike]["bike"]["plate"] not in page.text and sent[bike]["bike"]["tag_id"] not in page.text


def test_a_case_number_opens_the_details_and_is_audited(staff: Staff, sent: dict[str, Any]) -> None:
    alarm_id = sent["ids"]["chip_cloned"]

    opened = staff.police.get(f"/api/alarms/{alarm_id}", params={"case_number": CASE})

    assert opened.status_code == 200, opened.text
    alarm = opened.json()
    assert alarm["plate"] == sent["cloned"]["bike"]["plate"] and alarm["tag_id"] == sent["cloned"]["bike"]["tag_id"]
    assert [p["station_id"] for p in alarm["trail"]] == [sent["near"], sent["far"]]
    assert alarm["details_hidden"] is False
    records = [a for a in staff.admin.get("/api/audit").json() if a["action"] == "alarm.view"]
    assert [(a["subject"], a["case_number"]) for a in records] == [(f"alarm:{alarm_id}", CASE)]
    bad = staff.police.get(f"/api/alarms/{alarm_id}", params={"case_number": "x"})
    assert bad.status_code == 403 and "case number" in bad.json()["detail"]


def test_a_stolen_bike_and_the_owners_own_alarm_stay_in_full(staff: Staff, sent: dict[str, Any]) -> None:
    stolen = _listed(staff.police, sent["ids"]["stolen_low_battery"])
    assert stolen["plate"] == sent["stolen"]["bike"]["plate"] and stolen["details_hidden"] is False
    mine = _listed(staff.owner_of(sent["quiet"]), sent["ids"]["low_battery"])
    assert mine["plate"] == sent["quiet"]["bike"]["plate"] and mine["tag_id"] == sent["quiet"]["bike"]["tag_id"]


def test_the_live_feed_shows_police_kind_and_station_only(
    staff: Staff, sent: dict[str, Any], publish: Callable[[str, bytes], None]
) -> None:
    quiet = sent["quiet"]["bike"]
    events: list[dict[str, Any]] = []
    with staff.client.stream("GET", "/api/live", headers=staff.police.headers) as stream:
        lines = stream.iter_lines()
        assert next(lines).startswith(": connected")
        # Another low-battery passage of the same chip updates its alarm, which the feed sends.
        batch = factories.batch(sent["near"], 4, [int(quiet["tag_id"], 16)], flags=int(TagFlags.LOW_BATTERY))
        publish(topics.station_topic(sent["near"], "sightings"), batch.to_json())
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(e["id"] == sent["ids"]["low_battery"] for e in events):
            line = next(lines)
            if line.startswith("data: "):
                events.append(orjson.loads(line[len("data: ") :]))

    (update,) = [e for e in events if e["id"] == sent["ids"]["low_battery"]]
    assert update["kind"] == "low_battery" and update["station_id"] == sent["near"]
    assert update["plate"] is None and update["tag_id"] is None and update["trail"] == []


@pytest.fixture
def served_app(database_url: str) -> Iterator[str]:
    """The backend (API and pages, no ingest) served by uvicorn on a free port, for the browser."""
    require_chromium()
    port = free_port()
    with served(create_app(factories.settings(database_url, http_port=port), run_ingest=False), port) as url:
        yield url


def test_the_live_map_shows_kind_and_station_and_opens_details_with_a_case_number(
    served_app: str, database_url: str
) -> None:
    with psycopg.connect(database_url) as conn:
        police = factories.account(conn, "police")
        station = factories.station(conn, "st-gate", 30.27, 120.15)
        tag = 0x7A3B0001
        bike_id = factories.bike(conn, tag, plate_number="HZ-60606")
        alarm_id = conn.execute(
            "INSERT INTO alarms (kind, severity, subject, tag_id, bike_id, station_id, first_seen_at, last_seen_at)"
            " VALUES ('tamper', 'warning', 'tag:7A3B0001', %s, %s, %s, now(), now()) RETURNING alarm_id",
            (tag, bike_id, station),
        ).fetchone()[0]  # type: ignore[index]
    with browser_page() as page:
        page.goto(f"{served_app}/login?next=/")
        page.fill("#username", police)
        page.fill("#password", factories.PASSWORD)
        page.click("#login-submit")
        item = page.locator(f".bg-alarm[data-alarm-id='{alarm_id}']")
        item.wait_for()
        text = item.inner_text()
        assert "Tamper" in text and "Station st-gate" in text and "not reported stolen" in text
        assert "HZ-60606" not in page.content() and "7A3B0001" not in page.content()

        item.locator("input[name=case_number]").fill(CASE)
        item.locator("button[type=submit]").click()
        page.locator(f".bg-alarm[data-alarm-id='{alarm_id}'] .bg-plate", has_text="HZ-60606").wait_for()

        assert "details opened under case " + CASE in page.inner_text("#bg-action-status")
        assert console_errors(page) == []
    with psycopg.connect(database_url) as conn:
        audited = conn.execute("SELECT subject, case_number FROM audit_log WHERE action = 'alarm.view'").fetchall()
    assert audited == [(f"alarm:{alarm_id}", CASE)]
