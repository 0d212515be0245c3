"""The daily hot sheet: exactly the bikes reported stolen in its 24 hours, with what police circulate and no owner;
for police and admins only; its PDF read back."""

from __future__ import annotations

import io
import re
from datetime import timedelta
from typing import Any

import psycopg
from PIL import Image
from pypdf import PdfReader

from protocol.messages import utcnow
from tests import factories
from tests.backend.conftest import Staff


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (60, 40), (200, 30, 30)).save(out, format="PNG")
    return out.getvalue()


def _stolen(staff: Staff, plate: str, reported_h_ago: float, **bike: Any) -> dict[str, Any]:
    """A bike registered, reported stolen by its owner, the report moved `reported_h_ago` hours into the past (the
    theft half an hour before it); the owner signed in is its "caller"."""
    done = staff.register(plate=plate, **bike)
    bike_id = done["bike"]["bike_id"]
    done["caller"] = staff.owner_of(done)
    assert done["caller"].post(f"/api/bikes/{bike_id}/theft", json={}).status_code == 201
    reported = utcnow() - timedelta(hours=reported_h_ago)
    with psycopg.connect(staff.database_url) as conn:
        conn.execute(
            "UPDATE theft_reports SET reported_at = %s, stolen_at = %s WHERE bike_id = %s",
            (reported, reported - timedelta(minutes=30), bike_id),
        )
    return done


def _plates(html: str) -> list[str]:
    return re.findall(r'data-plate="([^"]+)"', html)


def _pdf_text(pdf: bytes) -> str:
    # pypdf puts a NUL before each glyph of a CID font; what a viewer copies (pdftotext) has none.
    return "".join(p.extract_text() for p in PdfReader(io.BytesIO(pdf)).pages).replace("\x00", "")


def _seen(database_url: str, tag_hex: str, station_id: str, at: Any) -> None:
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "INSERT INTO sightings VALUES (%s, %s, %s, %s, 3, -60, 0, 0, 1)",
            (at, at + timedelta(seconds=20), station_id, int(tag_hex, 16)),
        )


def test_the_sheet_lists_exactly_the_bikes_reported_stolen_in_its_24_hours(staff: Staff) -> None:
    _stolen(staff, "HZ-61001", 23)  # in
    _stolen(staff, "HZ-61002", 25)  # out: reported before the window
    back = _stolen(staff, "HZ-61003", 2)
    staff.register(plate="HZ-61004")  # not stolen
    # Recovered an hour ago: no longer one to look for; named in the "already recovered" line instead.
    assert staff.police.post(f"/api/bikes/{back['bike']['bike_id']}/recovered").status_code == 200
    with psycopg.connect(staff.database_url) as conn:
        conn.execute(
            "UPDATE theft_reports SET recovered_at = %s WHERE bike_id = %s",
            (utcnow() - timedelta(hours=1), back["bike"]["bike_id"]),
        )

    r = staff.police.get("/hotsheet?lang=en")
    assert r.status_code == 200, r.text
    assert _plates(r.text) == ["HZ-61001"]
    recovered = re.search(r'class="bg-hs-recovered">(.*?)</p>', r.text, re.S)
    assert recovered is not None and "HZ-61003" in recovered.group(1)
    assert "HZ-61002" not in r.text and "HZ-61004" not in r.text

    # The sheet as it was 90 minutes ago: the recovered bike was still missing then, and the window reaches 25.5 h
    # back, so the one reported 25 h ago is on it; newest report first.
    earlier = (utcnow() - timedelta(minutes=90)).isoformat()
    r = staff.admin.get("/hotsheet", params={"at": earlier, "lang": "en"})
    assert r.status_code == 200, r.text
    assert _plates(r.text) == ["HZ-61003", "HZ-61001", "HZ-61002"]
    assert 'class="bg-hs-recovered"' not in r.text


def test_each_bike_shows_what_police_circulate_with_its_last_sighting_and_next_stations_but_no_owner(
    staff: Staff,
) -> None:
    with psycopg.connect(staff.database_url) as conn:
        for i, sid in enumerate(("st-a", "st-b", "st-c")):
            factories.station(conn, sid, lat=30.27 + i / 1000)
        # History behind the prediction: from st-b, bikes went on to st-c.
        start = utcnow() - timedelta(hours=3)
        for tag in range(6):
            for j, sid in enumerate(("st-a", "st-b", "st-c")):
                at = start + timedelta(seconds=tag * 600 + j * 60)
                conn.execute(
                    "INSERT INTO sightings VALUES (%s, %s, %s, %s, 3, -60, 0, 4, 1)",
                    (at, at + timedelta(seconds=10), sid, 0x7000 + tag),
                )
        conn.execute("SELECT bikeguard_refresh_transitions(14, make_interval(mins => 30))")
    owner = factories.owner_body(name="Zhou Xiaoming", mobile="13912345678")
    done = _stolen(staff, "HZ-62001", 1, brand="Emma", model="A3", colour="red", owner=owner)
    bike_id, tag = done["bike"]["bike_id"], done["bike"]["tag_id"]
    assert staff.clerk.post(f"/api/bikes/{bike_id}/photos", files={"photo": ("b.png", _png(), "image/png")}).is_success
    _seen(staff.database_url, tag, "st-c", utcnow() - timedelta(hours=3))  # before the theft: not where it was seen
    _seen(staff.database_url, tag, "st-a", utcnow() - timedelta(minutes=20))
    _seen(staff.database_url, tag, "st-b", utcnow() - timedelta(minutes=10))

    r = staff.police.get("/hotsheet?lang=en")
    assert r.status_code == 200
    section = r.text.split('data-plate="HZ-62001"')[1].split("</section>")[0]
    assert "Emma · A3 · red" in section
    assert f"/api/bikes/{bike_id}/photos/" in section
    last = re.search(r'class="bg-hs-last">(.*?)</dd>', section, re.S)
    assert last is not None and "Station st-b" in last.group(1) and "(st-b)" in last.group(1)
    nexts = re.search(r'class="bg-hs-next">(.*?)</dd>', section, re.S)
    assert nexts is not None and "(st-c)" in nexts.group(1)
    for personal in ("Zhou", "13912345678", done["owner_login"]["username"]):
        assert personal not in r.text
    # The photo the page shows opens to the police (a stolen bike's).
    photo = re.search(r'src="(/api/bikes/\d+/photos/\d+)"', section)
    assert photo is not None and staff.police.get(photo.group(1)).status_code == 200

    pdf = staff.police.get("/hotsheet.pdf?lang=en")
    assert pdf.status_code == 200 and pdf.headers["content-type"] == "application/pdf"
    reader = PdfReader(io.BytesIO(pdf.content))
    assert reader.pages[0].mediabox.width == 595.28 and reader.pages[0].mediabox.height == 841.89  # A4 portrait
    text = _pdf_text(pdf.content)
    assert "Daily hot sheet" in text and "HZ-62001" in text and "Emma · A3 · red" in text
    assert "Station st-b (st-b)" in text and "Station st-c (st-c)" in text
    assert "Zhou" not in text and "13912345678" not in text
    assert len(reader.pages[0].images) == 1  # the bike's photo, embedded

    zh = staff.police.get("/hotsheet.pdf?lang=zh")
    zh_text = _pdf_text(zh.content)
    assert "每日被盗车辆通报" in zh_text and "HZ-62001" in zh_text and "最后出现" in zh_text


def test_an_empty_window_says_so_and_many_bikes_run_onto_more_pages(staff: Staff) -> None:
    r = staff.police.get("/hotsheet.pdf?lang=en")
    assert "No bike was reported stolen in these 24 hours." in _pdf_text(r.content)
    for n in range(6):
        _stolen(staff, f"HZ-6300{n}", 1 + n / 10)
    pdf = staff.police.get("/hotsheet.pdf?lang=en").content
    assert len(PdfReader(io.BytesIO(pdf)).pages) == 2  # four blocks to a page
    assert all(f"HZ-6300{n}" in _pdf_text(pdf) for n in range(6))


def test_only_police_and_admins_get_the_sheet_and_each_reading_is_audited(staff: Staff) -> None:
    done = _stolen(staff, "HZ-64001", 1)
    owner = done["caller"]
    for path in ("/hotsheet", "/hotsheet.pdf"):
        for caller in (owner, staff.clerk, staff.installer):
            r = caller.get(path)
            assert r.status_code == 403, (path, caller.username)
            assert "HZ-64001" not in r.text
        r = staff.anonymous.get(path, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/login")
        assert staff.police.get(path).status_code == 200
        assert staff.admin.get(path).status_code == 200
    with psycopg.connect(staff.database_url) as conn:
        row = conn.execute("SELECT count(*) FROM audit_log WHERE action = 'bikes.hotsheet'").fetchone()
    assert row is not None and row[0] == 4


def test_a_time_that_cannot_be_read_is_refused_in_words(staff: Staff) -> None:
    r = staff.police.get("/hotsheet", params={"at": "yesterday", "lang": "en"})
    assert r.status_code == 400 and "2026-11-29T08:00" in r.text
